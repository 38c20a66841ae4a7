import { expect } from 'chai';
import {
  ALREADY_ENDED,
  createRedis,
  emitBatch,
  FENCED,
  Keys,
  LOST,
  RequestLog,
  type BatchedEmit,
  type Redis,
  type ReplyEvent,
} from '@llmux/shared';
import { BatchingEventWriter } from '@llmux/worker-agent';
import { startTestRedis, type TestRedis } from '../helpers/redis.js';

const tokens = (rid: string, seq: number, text: string): ReplyEvent => ({ rid, seq, type: 'tokens', text, n: 1 });
const done = (rid: string, seq: number): ReplyEvent => ({
  rid,
  seq,
  type: 'done',
  finish: 'stop',
  promptTokens: 3,
  completionTokens: 2,
});

/**
 * emit-batch-1 against real Redis: many requests' events in one script call
 * must leave Redis exactly as the same events sent one emit-3 call at a time
 * do, and answer each event as emit-3 would.
 */
describe('batched emits (emit-batch-1)', () => {
  let server: TestRedis;
  let redis: Redis;
  let keys: Keys;

  before(async () => {
    server = await startTestRedis();
    redis = createRedis(server.url, { name: 'event-batch-test' });
    await redis.connect();
  });
  after(async () => {
    await redis?.quit();
    await server?.stop();
  });

  /** What Redis holds for a gateway: the reply stream's fields and each request's state and log. */
  async function snapshot(gw: string, rids: string[]) {
    const replies = ((await redis.xrange(keys.replies(gw), '-', '+')) as [string, string[]][]).map((e) => e[1]);
    const reqs: Record<string, unknown> = {};
    for (const rid of rids) {
      reqs[rid] = {
        state: await redis.hgetall(keys.requestState(gw, rid)),
        log: await redis.xrange(keys.requestLog(gw, rid), '-', '+'),
        ttl: (await redis.pttl(keys.requestState(gw, rid))) > 0,
      };
    }
    return { replies, reqs };
  }

  async function begin(gw: string, rid: string, token: string): Promise<number> {
    const r = await new RequestLog(redis, keys, 1000).begin(gw, rid, token, 3, 60_000);
    return r.status === 'done' ? -1 : r.seq;
  }

  /** Interleaved events of two requests, a stale writer, an event after the end and a lost one. */
  const script = (): BatchedEmit[] => [
    { token: 'a1', ttlMs: 60_000, ev: tokens('ra', 0, 'Hel'), mode: 'checked' },
    { token: 'b1', ttlMs: 60_000, ev: tokens('rb', 0, 'Once'), mode: 'checked' },
    { token: 'a1', ttlMs: 60_000, ev: tokens('ra', 1, 'lo'), mode: 'checked' },
    { token: 'stale', ttlMs: 60_000, ev: tokens('rb', 1, 'x'), mode: 'checked' },
    { token: 'b1', ttlMs: 60_000, ev: tokens('rb', 1, ' upon'), mode: 'checked' },
    { token: 'a1', ttlMs: 30_000, ev: done('ra', 2), mode: 'checked' },
    { token: 'a1', ttlMs: 60_000, ev: tokens('ra', 3, 'late'), mode: 'checked' },
    // Written before by an earlier run of the same call: answered with its number, not written again.
    { token: 'b1', ttlMs: 60_000, ev: tokens('rb', 1, ' upon'), mode: 'checked' },
    // Redis is behind what this writer expects: lost.
    { token: 'b1', ttlMs: 60_000, ev: tokens('rb', 5, '?'), mode: 'checked' },
    { token: 'c1', ttlMs: 60_000, ev: tokens('rc', 0, 'unchecked'), mode: 'unchecked' },
  ];
  const expected = [0, 0, 1, FENCED, 1, 2, ALREADY_ENDED, 1, LOST, 0];

  it('writes and answers exactly as one emit-3 call per event', async () => {
    keys = new Keys(`${server.prefix}a`);
    const one = 'gw-one';
    const many = 'gw-many';
    for (const gw of [one, many])
      for (const [rid, tok] of [
        ['ra', 'a1'],
        ['rb', 'b1'],
        ['rc', 'c1'],
      ] as const) {
        expect(await begin(gw, rid, tok)).to.equal(0);
      }
    const log = new RequestLog(redis, keys, 1000);
    const single: number[] = [];
    for (const e of script()) single.push(await log.emit(one, e.token, e.ttlMs, e.ev, e.mode));
    const batched = await emitBatch(redis, keys, 1000, many, script());
    expect(single).to.deep.equal(expected);
    expect(batched).to.deep.equal(expected);
    const a = await snapshot(one, ['ra', 'rb', 'rc']);
    const b = await snapshot(many, ['ra', 'rb', 'rc']);
    expect(b.reqs).to.deep.equal(a.reqs);
    expect(b.replies).to.deep.equal(a.replies);
    expect(b.replies.map((f) => f[f.indexOf(f.includes('text') ? 'text' : 'type') + 1])).to.deep.equal([
      'Hel',
      'Once',
      'lo',
      ' upon',
      'done',
      'unchecked',
    ]);
  });

  it('sends the events of one turn in one call per gateway and answers each event', async () => {
    keys = new Keys(`${server.prefix}b`);
    for (const [gw, rid] of [
      ['g1', 'r1'],
      ['g1', 'r2'],
      ['g2', 'r3'],
    ] as const)
      await begin(gw, rid, `t-${rid}`);
    const before = await scriptCalls();
    const writer = new BatchingEventWriter(redis, keys, 1000);
    const answers = await Promise.all([
      writer.emit('g1', 't-r1', 60_000, tokens('r1', 0, 'a'), 'checked'),
      writer.emit('g1', 't-r2', 60_000, tokens('r2', 0, 'b'), 'checked'),
      writer.emit('g2', 't-r3', 60_000, tokens('r3', 0, 'c'), 'checked'),
      writer.emit('g1', 't-r1', 60_000, tokens('r1', 1, 'd'), 'checked'),
      writer.emit('g1', 'not-the-owner', 60_000, tokens('r2', 1, 'e'), 'checked'),
    ]);
    expect(answers).to.deep.equal([0, 0, 0, 1, FENCED]);
    // One call for g1 and one for g2 (each call's first use sends the body with EVAL, later ones EVALSHA).
    expect((await scriptCalls()) - before).to.equal(2);
    const texts = ((await redis.xrange(keys.replies('g1'), '-', '+')) as [string, string[]][]).map((e) => e[1][7]);
    expect(texts).to.deep.equal(['a', 'b', 'd']);
  });

  it('rejects every event of a call that fails', async () => {
    keys = new Keys(`${server.prefix}c`);
    await begin('g1', 'r1', 't1');
    // A reply stream key of the wrong type makes XADD fail inside the script.
    await redis.set(keys.replies('g1'), 'not a stream');
    const writer = new BatchingEventWriter(redis, keys, 1000);
    const results = await Promise.allSettled([
      writer.emit('g1', 't1', 60_000, tokens('r1', 0, 'a'), 'checked'),
      writer.emit('g1', 't1', 60_000, tokens('r1', 1, 'b'), 'checked'),
    ]);
    expect(results.map((r) => r.status)).to.deep.equal(['rejected', 'rejected']);
    expect(String((results[0] as PromiseRejectedResult).reason)).to.match(/WRONGTYPE/);
  });

  async function scriptCalls(): Promise<number> {
    const info = await redis.info('commandstats');
    let n = 0;
    for (const m of info.matchAll(/cmdstat_(eval|evalsha):calls=(\d+)/g)) n += Number(m[2]);
    return n;
  }
});
