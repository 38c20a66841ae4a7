import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { testModel } from '../helpers/models.js';
import { story } from '../helpers/engines.js';
import { parseSse, post, streamedText, type ChatChunk, type SseEvent } from '../helpers/http.js';
import type { LogLine } from '../helpers/processes.js';

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}
const errorOf = (text: string) => (JSON.parse(text) as ErrorBody).error;

/**
 * Reads a streamed response event by event; with `stopAfter`, drops the
 * connection once that many events carrying text have arrived (a client whose
 * network went away), and returns what it had.
 */
async function readEvents(
  url: string,
  init: RequestInit,
  stopAfter?: number,
): Promise<{ status: number; rid: string | null; events: SseEvent[]; dropped: boolean }> {
  const ctl = new AbortController();
  const res = await fetch(url, { ...init, signal: ctl.signal });
  const rid = res.headers.get('x-request-id');
  const events: SseEvent[] = [];
  if (!res.body) return { status: res.status, rid, events, dropped: false };
  const decoder = new TextDecoder();
  let buf = '';
  let withText = 0;
  let dropped = false;
  try {
    for await (const chunk of res.body) {
      buf += decoder.decode(chunk as Uint8Array, { stream: true });
      let end: number;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end + 2);
        buf = buf.slice(end + 2);
        for (const ev of parseSse(block)) {
          events.push(ev);
          if (hasText(ev)) withText++;
        }
        if (stopAfter !== undefined && withText >= stopAfter) {
          dropped = true;
          ctl.abort();
          return { status: res.status, rid, events, dropped };
        }
      }
    }
  } catch (err) {
    if (!ctl.signal.aborted) throw err;
  }
  return { status: res.status, rid, events, dropped };
}

/** Whether an event is a chunk that carries generated text. */
function hasText(ev: SseEvent): boolean {
  if (ev.data === '[DONE]') return false;
  const c = JSON.parse(ev.data) as Partial<ChatChunk>;
  return Array.isArray(c.choices) && streamedText([ev]) !== '';
}

const json = (body: unknown, headers: Record<string, string> = {}): RequestInit => ({
  method: 'POST',
  headers: { 'content-type': 'application/json', ...headers },
  body: JSON.stringify(body),
});

/**
 * Idempotency-Key and Last-Event-ID resume, with real processes: the sim
 * engine where a request must still be running when the client comes back,
 * the llama.cpp engine on a real model where the engine's work is counted.
 */
describe('idempotent requests and resumable streams (real Redis, real processes)', function () {
  let sys: TestSystem;
  const GRACE_MS = 1500;
  const IDEM_TTL_MS = 120_000;
  const TOKENS = 60;

  before(async function () {
    const stories = await testModel('stories260K');
    sys = await TestSystem.start({
      deployments: {
        models: [
          // ~20 ms a token: a 60-token request runs ~1.2 s, long enough to come back while it runs.
          { name: 'sim-slow', engine: { type: 'sim', ttftMs: 0, itlMs: 20 }, concurrency: 8 },
          { name: 'stories', source: stories, engine: { type: 'llamacpp', threads: 1, contextSize: 1024 }, concurrency: 4 },
        ],
      },
      gatewayEnv: { RESUME_GRACE_MS: String(GRACE_MS), IDEMPOTENCY_TTL_MS: String(IDEM_TTL_MS) },
    });
  });

  after(async () => {
    await sys?.stop();
  });

  const chatUrl = () => `${sys.url}/v1/chat/completions`;
  const worker = () => sys.workers[0]!;
  const linesFor = (rid: string, msg: string) => worker().logs.filter((l: LogLine) => l.rid === rid && l.msg === msg);
  const simBody = (extra: Record<string, unknown> = {}) => ({
    model: 'sim-slow',
    messages: [{ role: 'user', content: 'Once' }],
    max_tokens: TOKENS,
    stream: true,
    ...extra,
  });

  it('puts an id on every streamed event: 0 for the opening chunk, then one per event, and parts of the end', async () => {
    const r = await readEvents(chatUrl(), json(simBody({ max_tokens: 5, stream_options: { include_usage: true } })));
    expect(r.status).to.equal(200);
    const ids = r.events.map((e) => e.id);
    expect(
      ids.every((id) => id !== undefined),
      'every event has an id',
    ).to.equal(true);
    expect(ids[0]).to.equal('0');
    const last = ids.at(-3)!;
    expect(ids.slice(-2)).to.deep.equal([`${last}.1`, `${last}.2`]);
    const numeric = ids.slice(0, -2).map(Number);
    for (let i = 1; i < numeric.length; i++) expect(numeric[i]).to.be.greaterThan(numeric[i - 1]!);
    expect(streamedText(r.events)).to.equal(story(5));
  });

  it('resumes a dropped stream with Last-Event-ID while it runs: the exact full text, nothing repeated', async () => {
    const body = simBody();
    const first = await readEvents(chatUrl(), json(body, { 'idempotency-key': 'resume-1' }), 5);
    expect(first.dropped, JSON.stringify(first.events)).to.equal(true);
    const rid = first.rid!;
    const lastId = first.events.at(-1)!.id!;
    const rest = await readEvents(`${chatUrl()}/${rid}`, { headers: { 'last-event-id': lastId } });
    expect(rest.status).to.equal(200);
    expect(rest.events.at(-1)!.data).to.equal('[DONE]');
    // The resumed part starts right after the last id the client saw.
    expect(Number(rest.events[0]!.id)).to.equal(Number(lastId) + 1);
    expect(streamedText(first.events) + streamedText(rest.events)).to.equal(story(TOKENS));
    const allIds = [...first.events, ...rest.events].map((e) => e.id);
    expect(new Set(allIds).size, 'no event twice').to.equal(allIds.length);
    // It ran once and to the end: the drop did not cancel it.
    await worker().waitForLog((l) => l.rid === rid && l.msg === 'request done');
    expect(linesFor(rid, 'request cancelled')).to.have.length(0);
  });

  it('replays a finished stream within its retention, from any point, including inside its end', async () => {
    const done = await readEvents(chatUrl(), json(simBody({ max_tokens: 8, stream_options: { include_usage: true } })));
    const rid = done.rid!;
    const whole = await readEvents(`${chatUrl()}/${rid}?stream=true`, { method: 'GET' });
    expect(whole.events.map((e) => e.data)).to.deep.equal(done.events.map((e) => e.data));
    const mid = await readEvents(`${chatUrl()}/${rid}`, { headers: { 'last-event-id': done.events[3]!.id! } });
    expect(mid.events.map((e) => e.data)).to.deep.equal(done.events.slice(4).map((e) => e.data));
    const finalId = done.events.at(-3)!.id!;
    const fromFinal = await readEvents(`${chatUrl()}/${rid}`, { headers: { 'last-event-id': finalId } });
    expect(fromFinal.events.map((e) => e.id)).to.deep.equal([`${finalId}.1`, `${finalId}.2`]);
    const usageId = done.events.at(-2)!.id!;
    const tail = await readEvents(`${chatUrl()}/${rid}?after=${usageId}`, { method: 'GET' });
    expect(tail.events.map((e) => e.data)).to.deep.equal(['[DONE]']);
    // After the very last event there is nothing left: the response ends at once.
    const none = await readEvents(`${chatUrl()}/${rid}`, { headers: { 'last-event-id': done.events.at(-1)!.id! } });
    expect(none.status).to.equal(200);
    expect(none.events).to.deep.equal([]);
    // Without a stream, the same request comes back as one chat.completion.
    const res = await fetch(`${chatUrl()}/${rid}`);
    const completion = (await res.json()) as { id: string; choices: { message: { content: string } }[] };
    expect(completion.id).to.equal(rid);
    expect(completion.choices[0]!.message.content).to.equal(story(8));
  });

  it('refuses resumes it cannot serve: unknown id, another API, a bad Last-Event-ID', async () => {
    const unknown = await fetch(`${chatUrl()}/chatcmpl-nope?stream=true`);
    expect(unknown.status).to.equal(404);
    expect(errorOf(await unknown.text()).code).to.equal('request_not_found');
    const done = await readEvents(chatUrl(), json(simBody({ max_tokens: 2 })));
    const other = await fetch(`${sys.url}/v1/completions/${done.rid}?stream=true`);
    expect(other.status).to.equal(404);
    await other.text();
    const bad = await fetch(`${chatUrl()}/${done.rid}`, { headers: { 'last-event-id': 'abc' } });
    expect(bad.status).to.equal(400);
    expect(errorOf(await bad.text()).code).to.equal('invalid_last_event_id');
  });

  it('runs an idempotent request once: a repeat gets the same completion and the engine is not called again', async () => {
    const body = {
      model: 'stories',
      messages: [{ role: 'user', content: 'Once upon a time' }],
      max_tokens: 32,
      temperature: 0.8,
    };
    const h = { 'idempotency-key': 'idem-once' };
    const a = await post(chatUrl(), body, h);
    const b = await post(chatUrl(), body, h);
    expect(a.status).to.equal(200);
    expect(b.status).to.equal(200);
    const ca = JSON.parse(a.text) as ChatChunk & { choices: { message: { content: string } }[] };
    const cb = JSON.parse(b.text) as typeof ca;
    expect(cb.id).to.equal(ca.id);
    expect(cb.choices[0]!.message.content).to.equal(ca.choices[0]!.message.content);
    expect(linesFor(ca.id, 'request done'), 'engine runs for the key').to.have.length(1);

    // Two repeats racing while nothing has run yet: still one engine run, both get the whole stream.
    const race = await Promise.all([
      readEvents(chatUrl(), json({ ...body, stream: true }, { 'idempotency-key': 'idem-race' })),
      readEvents(chatUrl(), json({ ...body, stream: true }, { 'idempotency-key': 'idem-race' })),
    ]);
    const ids = race.map((r) => (JSON.parse(r.events[0]!.data) as ChatChunk).id);
    expect(ids[0]).to.equal(ids[1]);
    expect(streamedText(race[0].events)).to.equal(streamedText(race[1].events));
    expect(race[0].events.at(-1)!.data).to.equal('[DONE]');
    await worker().waitForLog((l) => l.rid === ids[0] && l.msg === 'request done');
    expect(linesFor(ids[0]!, 'request done')).to.have.length(1);
  });

  it('refuses a key reused with another body (422), keeps keys for IDEMPOTENCY_TTL_MS, and runs again once one is gone', async () => {
    const body = { model: 'sim-slow', messages: [{ role: 'user', content: 'Once' }], max_tokens: 3 };
    const h = { 'idempotency-key': 'idem-ttl' };
    const first = await post(chatUrl(), body, h);
    expect(first.status).to.equal(200);
    const other = await post(chatUrl(), { ...body, max_tokens: 4 }, h);
    expect(other.status).to.equal(422);
    expect(errorOf(other.text).code).to.equal('idempotency_key_reused');
    const keys = await sys.redis.keys(`${sys.keys.prefix}:idem:*`);
    const ttls = await Promise.all(keys.map((k) => sys.redis.pttl(k)));
    for (const t of ttls) expect(t).to.be.within(1, IDEM_TTL_MS);
    // An expired key is a new key: the request runs again, under a new id.
    await sys.redis.del(...keys);
    const again = await post(chatUrl(), body, h);
    expect((JSON.parse(again.text) as ChatChunk).id).to.not.equal((JSON.parse(first.text) as ChatChunk).id);
  });

  it('refuses a malformed Idempotency-Key', async () => {
    const r = await post(chatUrl(), simBody({ stream: false, max_tokens: 1 }), { 'idempotency-key': 'x'.repeat(300) });
    expect(r.status).to.equal(400);
    expect(errorOf(r.text).code).to.equal('invalid_idempotency_key');
  });

  it('cancels a dropped idempotent request once its resume grace passes with nobody attached', async () => {
    const dropped = await readEvents(chatUrl(), json(simBody({ max_tokens: 400 }), { 'idempotency-key': 'grace-1' }), 1);
    const t = Date.now();
    const rid = dropped.rid!;
    await worker().waitForLog((l) => l.rid === rid && l.msg === 'request cancelled');
    expect(Date.now() - t, 'kept at least for the grace').to.be.at.least(GRACE_MS - 100);
    // Its log ends with the cancellation, so a late replay ends too instead of waiting.
    const late = await readEvents(`${chatUrl()}/${rid}`, { headers: { 'last-event-id': '0' } });
    expect(errorOf(late.events.at(-1)!.data).code).to.equal('cancelled');
    const past = await readEvents(`${chatUrl()}/${rid}`, { headers: { 'last-event-id': late.events.at(-1)!.id! } });
    expect(past.events).to.deep.equal([]);
  });

  it('does not cancel a dropped idempotent request while a retry follows it', async () => {
    const body = simBody({ max_tokens: 150 }); // ~3 s: longer than the grace
    const h = { 'idempotency-key': 'grace-2' };
    const dropped = await readEvents(chatUrl(), json(body, h), 2);
    const retry = await readEvents(chatUrl(), json(body, { ...h, 'last-event-id': dropped.events.at(-1)!.id! }));
    expect(streamedText(dropped.events) + streamedText(retry.events)).to.equal(story(150));
    expect(linesFor(dropped.rid!, 'request cancelled')).to.have.length(0);
  });
});
