import { expect } from 'chai';
import { deferred, FENCED, type Deferred, type ReplyEvent } from '@llmux/shared';
import { Flusher, RequestStream, type EventWriter } from '@llmux/worker-agent';

interface Emitted {
  gw: string;
  token: string;
  ev: ReplyEvent;
  ack: Deferred<number>;
}

/**
 * A stand-in for the Redis request log that records what is emitted and, like
 * the emit script, numbers each request's events from 0. Each emit's answer
 * is settled by the test (or at once with `autoAck`); `fence` makes every
 * later emit answer FENCED, as Redis does once another attempt owns the request.
 */
class RecordingWriter implements EventWriter {
  readonly emitted: Emitted[] = [];
  private readonly seqs = new Map<string, number>();
  fence = false;
  constructor(private readonly autoAck = true) {}

  emit(gw: string, token: string, _ttlMs: number, ev: ReplyEvent): Promise<number> {
    const ack = deferred<number>();
    if (this.fence) {
      ack.resolve(FENCED);
      return ack.promise;
    }
    const seq = this.seqs.get(ev.rid) ?? 0;
    this.seqs.set(ev.rid, seq + 1);
    this.emitted.push({ gw, token, ev: { ...ev, seq }, ack });
    if (this.autoAck) ack.resolve(seq);
    return ack.promise;
  }

  get events(): ReplyEvent[] {
    return this.emitted.map((e) => e.ev);
  }
}

/** Whether a promise has settled, checked after pending callbacks run. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 5; i++) await Promise.resolve();
  return done;
}

describe('RequestStream and Flusher', () => {
  // A long interval: the timer never fires during a test; tests flush explicitly.
  let flusher: Flusher;
  let writer: RecordingWriter;
  const open = (rid = 'r1', maxBatchTokens = 32, w = writer, onFenced?: () => void) =>
    new RequestStream({
      rid,
      gatewayId: 'gw-1',
      token: 'tok',
      ttlMs: 60_000,
      retainMs: 60_000,
      writer: w,
      flusher,
      maxBatchTokens,
      onFenced,
    });

  beforeEach(() => {
    flusher = new Flusher(3_600_000);
    writer = new RecordingWriter();
  });

  afterEach(() => {
    flusher.close();
  });

  it('sends the first text at once, to the request gateway', () => {
    const s = open();
    s.push('Once', 1);
    expect(writer.emitted).to.have.length(1);
    expect(writer.emitted[0]!.gw).to.equal('gw-1');
    expect(writer.events[0]).to.deep.equal({ rid: 'r1', seq: 0, type: 'tokens', text: 'Once', n: 1 });
  });

  it('batches later text until the flusher runs', () => {
    const s = open();
    s.push('Once', 1);
    s.push(' upon', 1);
    s.push(' a', 1);
    s.push(' time', 2);
    expect(writer.events).to.have.length(1);
    flusher.flushAll();
    expect(writer.events).to.deep.equal([
      { rid: 'r1', seq: 0, type: 'tokens', text: 'Once', n: 1 },
      { rid: 'r1', seq: 1, type: 'tokens', text: ' upon a time', n: 4 },
    ]);
    flusher.flushAll();
    expect(writer.events).to.have.length(2);
  });

  it('sends as soon as maxBatchTokens tokens are buffered', () => {
    const s = open('r1', 4);
    s.push('a', 1);
    s.push('b', 1);
    s.push('c', 1);
    s.push('d', 1);
    expect(writer.events).to.have.length(1);
    s.push('e', 1);
    expect(writer.events).to.have.length(2);
    expect(writer.events[1]).to.deep.equal({ rid: 'r1', seq: 1, type: 'tokens', text: 'bcde', n: 4 });
    s.push('f', 5);
    expect(writer.events[2]).to.deep.equal({ rid: 'r1', seq: 2, type: 'tokens', text: 'f', n: 5 });
    // Nothing is left buffered, so the flusher sends nothing more.
    flusher.flushAll();
    expect(writer.events).to.have.length(3);
  });

  it('carries tokens whose text is not yet complete', () => {
    // A token that ends inside a UTF-8 character arrives as empty text with a count.
    const s = open();
    s.push('', 1);
    s.push('é', 1);
    flusher.flushAll();
    const tokens = writer.events.filter((e) => e.type === 'tokens');
    expect(tokens.map((e) => (e.type === 'tokens' ? e.text : '')).join('')).to.equal('é');
    expect(tokens.reduce((n, e) => n + (e.type === 'tokens' ? e.n : 0), 0)).to.equal(2);
  });

  it('numbers events contiguously from 0 per request, across many flushes', () => {
    const a = open('ra');
    const b = open('rb');
    for (let i = 0; i < 20; i++) {
      a.push(`a${i}`, 1);
      if (i % 2 === 0) b.push(`b${i}`, 1);
      if (i % 3 === 0) flusher.flushAll();
    }
    void a.done('length', 3, 20);
    void b.done('length', 3, 10);
    for (const rid of ['ra', 'rb']) {
      const evs = writer.events.filter((e) => e.rid === rid);
      expect(evs.map((e) => e.seq)).to.deep.equal(evs.map((_, i) => i));
      expect(evs.at(-1)!.type).to.equal('done');
      expect(evs.filter((e) => e.type === 'done')).to.have.length(1);
    }
    const aText = writer.events
      .filter((e) => e.rid === 'ra' && e.type === 'tokens')
      .map((e) => (e.type === 'tokens' ? e.text : ''))
      .join('');
    expect(aText).to.equal(Array.from({ length: 20 }, (_, i) => `a${i}`).join(''));
  });

  it('done() sends buffered text before the terminal event', async () => {
    const s = open();
    s.push('Once', 1);
    s.push(' upon', 1);
    s.push(' a', 1);
    await s.done('stop', 7, 3);
    expect(writer.events).to.deep.equal([
      { rid: 'r1', seq: 0, type: 'tokens', text: 'Once', n: 1 },
      { rid: 'r1', seq: 1, type: 'tokens', text: ' upon a', n: 2 },
      { rid: 'r1', seq: 2, type: 'done', finish: 'stop', promptTokens: 7, completionTokens: 3 },
    ]);
  });

  it('done() with nothing generated sends only the terminal event', async () => {
    const s = open();
    await s.done('stop', 4, 0);
    expect(writer.events).to.deep.equal([
      { rid: 'r1', seq: 0, type: 'done', finish: 'stop', promptTokens: 4, completionTokens: 0 },
    ]);
  });

  it('fail() sends buffered text, then an error event', async () => {
    const s = open();
    s.push('a', 1);
    s.push('b', 1);
    await s.fail(500, 'engine_error', 'boom');
    expect(writer.events).to.deep.equal([
      { rid: 'r1', seq: 0, type: 'tokens', text: 'a', n: 1 },
      { rid: 'r1', seq: 1, type: 'tokens', text: 'b', n: 1 },
      { rid: 'r1', seq: 2, type: 'error', status: 500, code: 'engine_error', message: 'boom' },
    ]);
  });

  it('ends once: nothing is sent after the terminal event', async () => {
    const s = open();
    s.push('a', 1);
    await s.done('length', 1, 1);
    s.push('b', 1);
    flusher.flushAll();
    await s.done('length', 1, 2);
    await s.fail(500, 'x', 'y');
    expect(writer.events.map((e) => e.type)).to.deep.equal(['tokens', 'done']);
  });

  it('discard() drops buffered text and sends nothing more', async () => {
    const s = open();
    s.push('a', 1);
    s.push('b', 1);
    s.discard();
    flusher.flushAll();
    s.push('c', 1);
    flusher.flushAll();
    await s.done('stop', 1, 3);
    await s.fail(500, 'x', 'y');
    expect(writer.events).to.deep.equal([{ rid: 'r1', seq: 0, type: 'tokens', text: 'a', n: 1 }]);
  });

  it('discard() of one request leaves others flushing', () => {
    const a = open('ra');
    const b = open('rb');
    a.push('a0', 1);
    b.push('b0', 1);
    a.push('a1', 1);
    b.push('b1', 1);
    a.discard();
    flusher.flushAll();
    expect(writer.events.map((e) => `${e.rid}:${e.seq}`)).to.deep.equal(['ra:0', 'rb:0', 'rb:1']);
  });

  it('flusher.close() sends what is still buffered', () => {
    const s = open();
    s.push('a', 1);
    s.push('b', 1);
    flusher.close();
    expect(writer.events).to.have.length(2);
  });

  it('done() resolves only when the terminal event is acknowledged', async () => {
    const w = new RecordingWriter(false);
    const s = open('r1', 32, w);
    s.push('a', 1);
    s.push('b', 1);
    const finished = s.done('stop', 1, 2);
    expect(w.events.map((e) => e.type)).to.deep.equal(['tokens', 'tokens', 'done']);
    w.emitted[0]!.ack.resolve(0);
    w.emitted[1]!.ack.resolve(1);
    expect(await settled(finished)).to.equal(false);
    w.emitted[2]!.ack.resolve(2);
    expect(await settled(finished)).to.equal(true);
  });

  it('done() rejects when the terminal event cannot be written', async () => {
    const w = new RecordingWriter(false);
    const s = open('r1', 32, w);
    s.push('a', 1);
    const finished = s.done('length', 1, 1);
    w.emitted[0]!.ack.resolve(0);
    w.emitted[1]!.ack.reject(new Error('Connection is closed.'));
    let caught: unknown;
    await finished.catch((err: unknown) => (caught = err));
    expect(caught).to.be.instanceOf(Error);
    expect((caught as Error).message).to.equal('Connection is closed.');
  });
  it('stops at once and reports it when Redis says another attempt owns the request', async () => {
    let fencedCalls = 0;
    const s = open('r1', 32, writer, () => fencedCalls++);
    s.push('Once', 1);
    writer.fence = true;
    s.push(' upon', 1);
    flusher.flushAll();
    await s.settled();
    expect(s.fenced).to.equal(true);
    expect(fencedCalls).to.equal(1);
    s.push(' a time', 2);
    flusher.flushAll();
    await s.done('stop', 1, 4);
    expect(writer.events.map((e) => e.type)).to.deep.equal(['tokens']);
    expect(fencedCalls).to.equal(1);
  });
});
