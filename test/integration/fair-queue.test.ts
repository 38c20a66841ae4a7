import { EventEmitter, once } from 'node:events';
import { expect } from 'chai';
import {
  createBlockingRedis,
  createRedis,
  decodeJob,
  DeploymentRegistry,
  encodeJob,
  Keys,
  parseDeployments,
  RequestQueue,
  type Job,
  type Priority,
  type Redis,
} from '@llmux/shared';
import { entryOf, TestProcess, type LogLine } from '../helpers/processes.js';
import { startTestRedis, type TestRedis } from '../helpers/redis.js';

/**
 * Fair sharing between tenants and strict priorities in a model's queue,
 * against a real Redis: the enqueue and dispatch scripts, the queue's depth,
 * concurrent dispatchers, and real worker agents claiming through them.
 */
describe('fair queue', function () {
  let redis: TestRedis;
  let r: Redis;
  let keys: Keys;
  let queue: RequestQueue;
  let model: string;
  let n = 0;

  before(async () => {
    redis = await startTestRedis();
    keys = new Keys(redis.prefix);
    r = createRedis(redis.url, { name: 'fair-test' });
    await r.connect();
    queue = new RequestQueue(r, keys);
  });

  after(async () => {
    r?.disconnect();
    await redis?.stop();
  });

  // Each test has a model (so a queue) of its own.
  beforeEach(() => {
    model = `m${++n}`;
  });

  const job = (rid: string, tenant: string, priority: Priority = 'normal'): Job => ({
    rid,
    model,
    gw: 'gw',
    params: { kind: 'completion', prompt: 'x', maxTokens: 1 },
    enqueuedAt: Date.now(),
    deadline: Date.now() + 60_000,
    tenant,
    priority,
    retainMs: 0,
  });

  /** Enqueues `count` requests of a tenant, one after another (rids `<tenant>-<i>`). */
  async function enqueueMany(tenant: string, count: number, weight = 1, priority: Priority = 'normal'): Promise<void> {
    for (let i = 0; i < count; i++) {
      expect(await queue.enqueue(job(`${tenant}-${priority}-${i}`, tenant, priority), weight), 'staged').to.equal(null);
    }
  }

  /**
   * A request that went straight to the stream and that no worker has taken:
   * the state of a queue whose workers are all busy. Everything enqueued after
   * it is staged.
   */
  async function busyHead(): Promise<void> {
    expect(await queue.enqueue(job('head', 'head'))).to.be.a('string');
  }

  /** Dispatches and claims one request at a time, as a worker with one free slot does; returns the jobs in claim order. */
  async function drain(limit = Infinity, consumer = 'w'): Promise<Job[]> {
    const out: Job[] = [];
    while (out.length < limit) {
      await queue.dispatch(model, 1);
      const entries = await queue.claimNow(model, consumer, 1);
      if (entries.length === 0) break;
      for (const [id, fields] of entries) {
        out.push(decodeJob(fields));
        await queue.ack(model, id);
      }
    }
    return out;
  }

  const tenants = (jobs: Job[]) => jobs.map((j) => j.tenant);
  const count = (xs: string[], x: string) => xs.filter((y) => y === x).length;

  it('goes straight to the stream when nothing waits, and stages behind waiting work', async () => {
    const first = await queue.enqueue(job('a0', 'a'));
    expect(first, 'first request: an entry id').to.match(/^\d+-\d+$/);
    expect(await queue.enqueue(job('a1', 'a')), 'the first still waits: staged').to.equal(null);
    expect(await queue.staged(model)).to.equal(1);
    // One worker takes both: the first from the stream, the second dispatched for it.
    expect((await drain()).map((j) => j.rid)).to.deep.equal(['a0', 'a1']);
    expect(await queue.staged(model)).to.equal(0);
    // Idle again (everything taken): straight to the stream.
    expect(await queue.enqueue(job('a2', 'a'))).to.be.a('string');
  });

  it("interleaves a light tenant's requests with a flood enqueued before them", async () => {
    await busyHead();
    await enqueueMany('A', 100);
    await enqueueMany('B', 5);
    const order = await drain();
    expect(order[0]!.rid).to.equal('head');
    const t = tenants(order.slice(1));
    expect(t).to.have.length(105);
    // FIFO would dispatch B's five last (positions 100 to 104).
    const lastB = t.lastIndexOf('B');
    expect(lastB, `B's last request dispatched at ${lastB}: ${t.slice(0, 12).join(' ')}`).to.be.lessThan(10);
    expect(count(t, 'B')).to.equal(5);
  });

  it('shares by weight: 2:1 weights give 2:1 dispatches while both are backlogged', async () => {
    await busyHead();
    await enqueueMany('A', 60, 2);
    await enqueueMany('B', 60, 1);
    const t = tenants((await drain(61)).slice(1));
    const a = count(t, 'A');
    expect(a, `A's share of the first 60: ${t.join(' ')}`).to.be.within(39, 41);
    // Every window of 6 holds 4 of A's and 2 of B's, give or take one.
    for (let i = 0; i + 6 <= t.length; i += 6) expect(count(t.slice(i, i + 6), 'A')).to.be.within(3, 5);
  });

  it('serves priorities strictly: a high request enqueued last goes first, low ones go last', async () => {
    await busyHead();
    await enqueueMany('L', 5, 1, 'low');
    await enqueueMany('A', 20, 1, 'normal');
    await enqueueMany('B', 20, 1, 'normal');
    await enqueueMany('H', 1, 1, 'high');
    const order = (await drain()).slice(1);
    expect(order[0]!.rid).to.equal('H-high-0');
    expect(order.slice(-5).map((j) => j.priority)).to.deep.equal(Array(5).fill('low'));
    // Within the normal level, A and B alternate although A was enqueued first.
    expect(count(tenants(order.slice(1, 11)), 'B')).to.equal(5);
  });

  it('a tenant that was idle banks no credit: it rejoins at the clock', async () => {
    await busyHead();
    await enqueueMany('B', 1);
    await enqueueMany('A', 40);
    const first = tenants((await drain(21)).slice(1));
    expect(count(first, 'B')).to.equal(1);
    // A alone for a while: B's last tag is far behind the clock. Now B floods too.
    for (let i = 0; i < 10; i++) await queue.enqueue(job(`B-late-${i}`, 'B'));
    const next = tenants(await drain(10));
    // With banked credit B would take all ten; without, the two alternate.
    expect(count(next, 'B'), next.join(' ')).to.be.within(4, 6);
  });

  it('counts staged requests as waiting in depth; claimed ones as pending', async () => {
    await busyHead();
    await enqueueMany('A', 4);
    await enqueueMany('B', 3);
    expect(await queue.staged(model)).to.equal(7);
    expect(await queue.depth(model)).to.include({ waiting: 8, pending: 0 });
    // A worker takes three (the head and two dispatched) and runs them.
    for (let i = 0; i < 3; i++) {
      await queue.dispatch(model, 1);
      expect(await queue.claimNow(model, 'w', 1)).to.have.length(1);
    }
    const d = await queue.depth(model);
    expect(d).to.include({ waiting: 5, pending: 3 });
    expect(d.entriesRead, 'staged requests are delivered through the stream').to.equal(3);
  });

  it('dispatches only up to the target: the stream holds a short head, the rest stays staged', async () => {
    await busyHead();
    await enqueueMany('A', 10);
    // The head already waits in the stream: a target of 1 moves nothing.
    expect(await queue.dispatch(model, 1)).to.deep.equal({ moved: 0, staged: 10 });
    expect(await queue.dispatch(model, 4)).to.deep.equal({ moved: 3, staged: 7 });
    expect(await r.xlen(keys.requests(model))).to.equal(4);
  });

  it('still runs entries written before tenants existed, ahead of staged ones', async () => {
    await busyHead();
    await enqueueMany('A', 2);
    // An older gateway's entry: no tenant, priority or retention fields.
    const now = Date.now();
    await r.xadd(keys.requests(model), '*', ...['rid', 'old', 'model', model, 'gw', 'gw', 'kind', 'completion'],
      ...['params', JSON.stringify({ kind: 'completion', prompt: 'x', maxTokens: 1 }), 'ts', String(now), 'deadline', String(now + 60_000)]); // prettier-ignore
    const order = await drain();
    expect(order.map((j) => j.rid)).to.deep.equal(['head', 'old', 'A-normal-0', 'A-normal-1']);
    expect(order[1]).to.include({ tenant: 'default', priority: 'normal', retainMs: 0 });
  });

  it('keeps every field byte for byte through staging', async () => {
    await busyHead();
    const text = 'quotes " \\ / tab\t nul\u0000 é 😀 {braces} [1,2]';
    const j = {
      ...job('odd', 'A'),
      params: { kind: 'chat' as const, messages: [{ role: 'user' as const, content: text }], maxTokens: 3 },
    };
    expect(await queue.enqueue(j)).to.equal(null);
    const got = (await drain()).find((x) => x.rid === 'odd')!;
    expect(got).to.deep.equal(j);
  });

  it('loses and duplicates nothing: 500 requests, 4 concurrent dispatchers, enqueues racing them', async () => {
    const TOTAL = 500;
    const seen: string[] = [];
    const progress = new EventEmitter();
    let stop = false;
    // Each consumer is a worker: dispatch, then a blocking claim on a connection of its own, then ack.
    const consumer = async (name: string) => {
      const blocking = createBlockingRedis(redis.url, `fair-test:${name}`);
      await blocking.connect();
      try {
        while (!stop) {
          const count = 1 + (name.charCodeAt(1) % 3);
          await queue.dispatch(model, count);
          const entries = await queue.claim(blocking, model, name, count, 50);
          for (const [id, fields] of entries) {
            seen.push(decodeJob(fields).rid);
            await queue.ack(model, id);
            progress.emit('taken');
          }
        }
      } finally {
        blocking.disconnect();
      }
    };
    await queue.ensureGroup(model);
    const consumers = ['c0', 'c1', 'c2', 'c3'].map(consumer);
    const priorities: Priority[] = ['low', 'normal', 'high'];
    // Five tenants enqueue concurrently, each in order.
    await Promise.all(
      Array.from({ length: 5 }, async (_, t) => {
        for (let i = 0; i < TOTAL / 5; i++) await queue.enqueue(job(`t${t}-${i}`, `t${t}`, priorities[(t + i) % 3]!), 1 + t);
      }),
    );
    // Wait for the consumers to take everything; a stall (a lost request) fails instead of hanging.
    while (seen.length < TOTAL) {
      try {
        await once(progress, 'taken', { signal: AbortSignal.timeout(5000) });
      } catch {
        break;
      }
    }
    stop = true;
    await Promise.all(consumers);
    expect(seen.length, 'requests received').to.equal(TOTAL);
    expect(new Set(seen).size, 'distinct requests').to.equal(TOTAL);
    expect(await queue.staged(model)).to.equal(0);
    for (const p of priorities) expect(await r.zcard(keys.fairIndex(model, p)), `${p} index`).to.equal(0);
    expect(await r.xlen(keys.requests(model))).to.equal(0);
  });

  describe('with real worker agents', function () {
    const workers: TestProcess[] = [];

    afterEach(async () => {
      await Promise.allSettled(workers.splice(0).map((w) => w.stop()));
    });

    it('workers dispatch fairly and never sit idle while requests are staged', async () => {
      const deployments = parseDeployments({
        models: [{ name: model, engine: { type: 'sim', ttftMs: 5, itlMs: 2, outputTokens: 5 }, concurrency: 1 }],
      });
      await new DeploymentRegistry(r, keys).publish(deployments);
      await queue.ensureGroup(model);
      for (let i = 0; i < 2; i++) {
        const w = new TestProcess(`fair-worker-${i}`, entryOf('@llmux/worker-agent'), {
          REDIS_URL: redis.url,
          KEY_PREFIX: redis.prefix,
          WORKER_ID: `fw${i}`,
          WORKER_MODELS: model,
          LOG_LEVEL: 'info',
        });
        workers.push(w);
        await w.ready();
      }
      await busyHead();
      // Two idle workers: the head goes straight to one, the next to the other; the rest is staged.
      const rids: string[] = ['head'];
      for (let i = 0; i < 60; i++) rids.push(`A-${i}`);
      for (let i = 0; i < 5; i++) rids.push(`B-${i}`);
      await Promise.all(rids.slice(1).map((rid) => queue.enqueue(job(rid, rid[0]!))));
      await doneLines(workers, rids.length);
      const done = workers.map((w) => w.logs.filter(isDone));
      const all = done.flat();
      expect(all.map((l) => l.rid).sort(), 'each request done once').to.deep.equal([...rids].sort());
      // B's five started among the first 16 (FIFO: after A's sixty).
      const started = all.map((l) => ({ rid: String(l.rid), at: startedAt(l) })).sort((a, b) => a.at - b.at);
      const lastB = started.map((s) => s.rid[0]).lastIndexOf('B');
      expect(lastB, started.map((s) => s.rid).join(' ')).to.be.lessThan(16);
      // No worker idled while work waited: each next start follows the previous end closely
      // (a worker blocked on an empty stream with work staged would idle up to its 2 s block).
      for (const lines of done) {
        const runs = lines.map((l) => ({ start: startedAt(l), end: Number(l.time) })).sort((a, b) => a.start - b.start);
        for (let i = 1; i < runs.length; i++) {
          expect(runs[i]!.start - runs[i - 1]!.end, `gap before run ${i}`).to.be.lessThan(500);
        }
      }
      // A worker logs `request done` just before it acks the entry: a bounded poll of the queue for the last acks.
      let depth = await queue.depth(model);
      for (const until = Date.now() + 5000; depth.pending > 0 && Date.now() < until; depth = await queue.depth(model)) {
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(depth).to.include({ waiting: 0, pending: 0 });
    });

    it('a worker waiting on the stream dispatches when a peer claims, so a request staged meanwhile is not left waiting', async () => {
      const deployments = parseDeployments({
        models: [{ name: model, engine: { type: 'sim', ttftMs: 5, itlMs: 1 }, concurrency: 1 }],
      });
      await new DeploymentRegistry(r, keys).publish(deployments);
      await queue.ensureGroup(model);
      const w = new TestProcess('fair-worker-nudge', entryOf('@llmux/worker-agent'), {
        REDIS_URL: redis.url,
        KEY_PREFIX: redis.prefix,
        WORKER_ID: 'fw-nudge',
        WORKER_MODELS: model,
        LOG_LEVEL: 'debug',
      });
      workers.push(w);
      await w.ready();
      // The idle worker has just dispatched (nothing staged) and waits in XREADGROUP BLOCK (2 s).
      await untilBlocked(r, `worker:fw-nudge:claim:${model}`);
      // What the race leaves behind, made by hand: a request staged while the stream is empty
      // (a peer took the entry this worker's dispatch counted on, and a request was staged behind it).
      const j = job('staged', 'A');
      await r.rpush(keys.tenantQueue(model, 'normal', 'A'), JSON.stringify(encodeJob(j)));
      await r.zadd(keys.fairIndex(model, 'normal'), 0, 'A');
      await r.hincrby(keys.fairState(model), 'staged', 1);
      // The peer's claim, as every worker announces it.
      const at = Date.now();
      await r.publish(keys.loadChannel(model), 'peer 1.000000');
      const started = await w.waitForLog((l) => l.msg === 'request started' && l.rid === 'staged');
      // Without the dispatch this triggers, the request would wait for the block to end (~2 s).
      expect(Number(started.time) - at).to.be.lessThan(1000);
      expect(await queue.staged(model)).to.equal(0);
    });
  });
});

const isDone = (l: LogLine) => l.msg === 'request done';
/** When the worker started running the request: enqueue time plus its queue wait. */
const startedAt = (l: LogLine) => Number(l.time) - Number(l.ms);

/** Resolves once the workers together have logged `count` finished requests (each line waited for, not polled). */
async function doneLines(ws: TestProcess[], count: number): Promise<void> {
  const seen = new Set<LogLine>();
  for (;;) {
    for (const w of ws) for (const l of w.logs) if (isDone(l)) seen.add(l);
    if (seen.size >= count) return;
    await Promise.race(ws.map((w) => w.waitForLog((l) => isDone(l) && !seen.has(l))));
  }
}

/** Resolves once the named connection waits in a blocking command (CLIENT LIST flag `b`). */
async function untilBlocked(r: Redis, name: string): Promise<void> {
  for (;;) {
    const clients = String(await r.client('LIST')).split('\n');
    if (clients.some((c) => c.includes(` name=${name} `) && / flags=\S*b/.test(c))) return;
    await new Promise<void>((res) => setImmediate(res));
  }
}
