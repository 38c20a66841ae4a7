import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { Keys, RequestQueue, type WorkerStatus } from '@llmux/shared';
import { freePort } from '@llmux/controller';
import { entryOf, TestProcess, type LogLine } from '../helpers/processes.js';
import { startTestRedis, type TestRedis } from '../helpers/redis.js';
import { TestSystem } from '../helpers/system.js';
import { expectComplete, openStream, type OpenStream } from '../helpers/streams.js';
import { story } from '../helpers/engines.js';

/** One sample of the Prometheus text format. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text exposition format (comments skipped). */
function parseSamples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) throw new Error(`unparsable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    }
    const v = m[3]!;
    out.push({ name: m[1]!, labels, value: v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v) });
  }
  return out;
}

/** What one scrape returned. */
class Scrape {
  constructor(readonly samples: Sample[]) {}

  /** The samples of `name` whose labels include `labels`. */
  all(name: string, labels: Record<string, string> = {}): Sample[] {
    return this.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  }

  /** The sum of the matching samples; undefined when there is none. */
  get(name: string, labels: Record<string, string> = {}): number | undefined {
    const hits = this.all(name, labels);
    return hits.length === 0 ? undefined : hits.reduce((n, s) => n + s.value, 0);
  }
}

async function scrape(url: string): Promise<Scrape> {
  const res = await fetch(url);
  expect(res.status, `GET ${url}`).to.equal(200);
  expect(res.headers.get('content-type')).to.match(/^text\/plain; version=0\.0\.4/);
  return new Scrape(parseSamples(await res.text()));
}

/**
 * Scrapes until `done` holds: a bounded poll of a real endpoint, for figures
 * that settle just after what the test can wait on (a request is acked after
 * its client has the last event).
 */
async function scrapeUntil(url: string, done: (s: Scrape) => boolean, what: string, ms = 10_000): Promise<Scrape> {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = await scrape(url);
    if (done(s)) return s;
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Tokens of each stream's completion, from its usage chunk. */
async function streamedTokens(streams: OpenStream[]): Promise<number> {
  let n = 0;
  for (const s of streams) {
    const usage = /"completion_tokens":(\d+)/.exec(await s.body);
    n += Number(usage![1]);
  }
  return n;
}

const GATEWAY_ID = 'gw-metrics';
/** Fast failure detection: a worker silent for 1 s is dead. */
const FAST = { HEARTBEAT_INTERVAL_MS: '200', HEARTBEAT_TTL_MS: '1000', RECLAIM_INTERVAL_MS: '200' };

describe('metrics of worker agents', function () {
  let sys: TestSystem;

  afterEach(async () => {
    await sys?.stop();
  });

  it('serves /healthz and /metrics: outcomes, queue time, running, capacity and tokens match the traffic', async () => {
    sys = await TestSystem.start({
      deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 5, itlMs: 5 }, concurrency: 3 }] },
      workers: [{ env: { WORKER_ID: 'w0', ENGINE_REPLICAS: '2' } }],
      gatewayEnv: { GATEWAY_ID },
    });
    const w0 = sys.workers[0]!;
    const port = (await w0.ready()).metricsPort as number;
    expect(port).to.be.a('number').and.greaterThan(0);
    const logged = await w0.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('metrics at '));
    expect(logged.msg).to.equal(`metrics at http://127.0.0.1:${port}/metrics`);
    const status = JSON.parse((await sys.redis.get(sys.keys.worker('w0')))!) as WorkerStatus;
    expect(status.metricsPort).to.equal(port);
    const base = `http://127.0.0.1:${port}`;

    const health = await fetch(`${base}/healthz`);
    expect(health.status).to.equal(200);
    expect(await health.json()).to.deep.equal({ status: 'ready' });

    const idle = await scrape(`${base}/metrics`);
    expect(idle.get('llmux_worker_capacity', { model: 'sim' }), 'capacity = concurrency x replicas').to.equal(6);
    expect(idle.get('llmux_num_requests_running', { model: 'sim' })).to.equal(0);
    expect(idle.get('llmux_worker_capacity', { service: 'worker', instance: 'w0' })).to.equal(6);

    // One long stream: running while it runs.
    const long = await openStream(sys.url, 'sim', 400);
    await long.firstText;
    const during = await scrape(`${base}/metrics`);
    expect(during.get('llmux_num_requests_running', { model: 'sim' }), 'running mid-stream').to.equal(1);

    const streams = [long];
    for (let i = 0; i < 5; i++) streams.push(await openStream(sys.url, 'sim', 20 + i));
    const texts = await Promise.all(streams.map((s) => expectComplete(sys, GATEWAY_ID, s)));
    streams.forEach((s, i) => expect(texts[i]).to.equal(story(s.maxTokens)));

    const after = await scrapeUntil(
      `${base}/metrics`,
      (s) => s.get('llmux_worker_requests_total', { model: 'sim', outcome: 'ok' }) === streams.length,
      'six attempts counted ok',
    );
    expect(after.get('llmux_worker_requests_total', { model: 'sim' }), 'no other outcome').to.equal(streams.length);
    expect(after.get('llmux_request_queue_time_seconds_count', { model: 'sim' })).to.equal(streams.length);
    expect(after.get('llmux_request_queue_time_seconds_sum', { model: 'sim' })).to.be.at.least(0);
    expect(after.get('llmux_num_requests_running', { model: 'sim' }), 'running back to 0').to.equal(0);
    expect(after.get('llmux_worker_capacity', { model: 'sim' })).to.equal(6);
    expect(after.get('llmux_worker_generation_tokens_total', { model: 'sim' }), 'tokens generated = tokens streamed').to.equal(
      await streamedTokens(streams),
    );
    for (const name of ['llmux_reclaims_total', 'llmux_migrations_total', 'llmux_handbacks_total']) {
      expect(after.get(name, { model: 'sim' }) ?? 0, name).to.equal(0);
    }
    // Every attempt ran `begin` once, and at least one emit per event.
    expect(after.get('llmux_redis_command_duration_seconds_count', { op: 'begin' })).to.equal(streams.length);
    expect(after.get('llmux_redis_command_duration_seconds_count', { op: 'emit' })).to.be.at.least(2 * streams.length);
    expect(after.get('llmux_redis_command_duration_seconds_count', { op: 'ack' })).to.equal(streams.length);
    expect(after.get('llmux_process_resident_memory_bytes')).to.be.greaterThan(0);

    // Draining: not ready any more, while /metrics still answers.
    w0.kill('SIGTERM');
    await w0.waitForLog((l) => l.msg === 'worker state' && l.state === 'draining');
    const res = await fetch(`${base}/healthz`).catch(() => null);
    // The agent may have finished stopping already (nothing to drain); then nothing answers at all.
    if (res) expect(res.status).to.equal(503);
    expect((await w0.exited).code).to.equal(0);
    const gone = await fetch(`${base}/metrics`).then(
      () => 'answered',
      () => 'refused',
    );
    expect(gone, 'metrics server closed on shutdown').to.equal('refused');
  });

  it('kill -9 mid-stream: the survivor counts the takeovers, the continuations and only the tokens it generated', async () => {
    sys = await TestSystem.start({
      deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 5, itlMs: 20 }, concurrency: 4 }] },
      workers: [{ env: { ...FAST, WORKER_ID: 'w0' } }],
      gatewayEnv: { GATEWAY_ID },
    });
    const w0 = sys.workers[0]!;
    const streams = [await openStream(sys.url, 'sim', 200), await openStream(sys.url, 'sim', 220)];
    await Promise.all(streams.map((s) => s.firstText));
    const w1 = await sys.addWorker({ env: { ...FAST, WORKER_ID: 'w1' } });
    const port = (await w1.ready()).metricsPort as number;
    const url = `http://127.0.0.1:${port}/metrics`;
    const before = await scrape(url);
    expect(before.get('llmux_reclaims_total', { model: 'sim' }) ?? 0).to.equal(0);
    w0.kill('SIGKILL');
    await w0.exited;
    const resumed: LogLine[] = [];
    for (const s of streams) resumed.push(await w1.waitForLog((l) => l.msg === 'request resumed' && l.rid === s.rid));
    for (const s of streams) expect(await expectComplete(sys, GATEWAY_ID, s)).to.equal(story(s.maxTokens));

    const after = await scrapeUntil(
      url,
      (m) => m.get('llmux_worker_requests_total', { model: 'sim', outcome: 'ok' }) === 2,
      'both continuations counted ok',
    );
    expect(after.get('llmux_reclaims_total', { model: 'sim' }), 'takeovers').to.equal(2);
    expect(after.get('llmux_migrations_total', { model: 'sim' }), 'continued mid-stream').to.equal(2);
    // A continuation is not a first attempt: no queue time on the survivor.
    expect(after.get('llmux_request_queue_time_seconds_count', { model: 'sim' }) ?? 0).to.equal(0);
    const resumedTokens = resumed.reduce((n, l) => n + (l.resumedTokens as number), 0);
    expect(resumedTokens).to.be.greaterThan(0);
    expect(after.get('llmux_worker_generation_tokens_total', { model: 'sim' }), 'only the new tokens').to.equal(
      200 + 220 - resumedTokens,
    );
    expect(after.get('llmux_redis_command_duration_seconds_count', { op: 'takeover' })).to.be.at.least(1);
  });
});

describe('metrics of the controller', function () {
  let redis: TestRedis;
  let dir: string;
  let file: string;
  let r: Redis;
  let keys: Keys;
  const procs: TestProcess[] = [];
  let blocker: Server | null = null;

  beforeEach(async () => {
    redis = await startTestRedis();
    r = new Redis(redis.url);
    keys = new Keys(redis.prefix);
    dir = await mkdtemp(join(tmpdir(), 'llmux-metrics-'));
    file = join(dir, 'deployments.json');
  });

  afterEach(async () => {
    await Promise.allSettled(procs.splice(0).map((p) => p.stop()));
    await new Promise<void>((done) => (blocker ? blocker.close(() => done()) : done()));
    blocker = null;
    r.disconnect();
    await redis.stop();
    await rm(dir, { recursive: true, force: true });
  });

  function controller(id: string, env: NodeJS.ProcessEnv): TestProcess {
    const proc = new TestProcess(id, entryOf('@llmux/controller'), {
      REDIS_URL: redis.url,
      KEY_PREFIX: redis.prefix,
      PORT: '0',
      ADMIN_PORT: '0',
      DEPLOYMENTS_FILE: file,
      CONTROLLER_ID: id,
      LOG_LEVEL: 'info',
      DRAIN_TIMEOUT_MS: '500',
      HEALTH_INTERVAL_MS: '200',
      // Default heartbeats (1 s, TTL 3 s): a busy machine must not make a worker look dead here.
      // No autoscaling while the test looks: the desired figures stay as published.
      AUTOSCALE_INTERVAL_MS: '600000',
      ...env,
    });
    procs.push(proc);
    return proc;
  }

  const readyLine = (p: TestProcess) => p.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('llmux ready at'));
  const event = (kind: string, subject: string) => (l: LogLine) =>
    l.component === 'controller' && l.event === kind && l.subject === subject;

  it('serves queue depth, lag, desired replicas, live workers, leadership and restarts; a standby serves them too', async () => {
    await writeFile(
      file,
      JSON.stringify({
        models: [
          { name: 'sim', engine: { type: 'sim', ttftMs: 5, itlMs: 5 }, concurrency: 2, replicas: { min: 2, max: 4 } },
          // Nobody serves it: what is enqueued waits.
          { name: 'queued', engine: { type: 'sim' }, replicas: { min: 0, max: 2 } },
        ],
      }),
    );
    const metricsPort = await freePort();
    const c1 = controller('c1', { METRICS_PORT: String(metricsPort) });
    await readyLine(c1);
    const url = `http://127.0.0.1:${metricsPort}/metrics`;
    const line = await c1.waitForLog((l) => typeof l.msg === 'string' && l.msg.trim().startsWith('metrics: '));
    expect(String(line.msg).trim()).to.match(
      new RegExp(`^metrics: ${url.replace(/\./g, '\\.')} \\(gateway: http://127\\.0\\.0\\.1:\\d+/metrics\\)$`),
    );

    // Both local workers run with a /metrics of their own, on different ports (not the controller's).
    await c1.waitForLogs((l) => l.component === 'controller' && l.event === 'worker-up', 2);
    const statuses = await Promise.all(
      ['c1-sim-0', 'c1-sim-1'].map(async (id) => JSON.parse((await r.get(keys.worker(id)))!) as WorkerStatus),
    );
    const ports = statuses.map((s) => s.metricsPort);
    expect(new Set(ports).size).to.equal(2);
    for (const p of ports) {
      expect(p).to.be.a('number').and.not.equal(metricsPort);
      expect((await fetch(`http://127.0.0.1:${p}/healthz`)).status).to.equal(200);
    }

    const queue = new RequestQueue(r, keys);
    for (let i = 0; i < 3; i++) {
      await queue.enqueue({
        rid: `q${i}`,
        model: 'queued',
        gw: 'nobody',
        params: { kind: 'completion', prompt: 'x', maxTokens: 1 },
        enqueuedAt: Date.now(),
        deadline: Date.now() + 600_000,
        tenant: 'default',
        priority: 'normal',
        retainMs: 0,
      });
    }
    const m = await scrapeUntil(url, (s) => s.get('llmux_live_workers', { model: 'sim' }) === 2, 'both workers live');
    // The first went straight to the stream (nothing waited); the other two were staged.
    expect(m.get('llmux_queue_depth', { model: 'queued' }), 'staged + undelivered').to.equal(3);
    expect(m.get('llmux_consumer_group_lag', { model: 'queued' }), 'undelivered in the stream').to.equal(1);
    expect(m.get('llmux_queue_pending', { model: 'queued' })).to.equal(0);
    expect(m.get('llmux_queue_depth', { model: 'sim' })).to.equal(0);
    expect(m.get('llmux_desired_replicas', { model: 'sim' })).to.equal(2);
    expect(m.get('llmux_desired_replicas', { model: 'queued' })).to.equal(0);
    expect(m.get('llmux_live_workers', { model: 'queued' })).to.equal(0);
    expect(m.get('llmux_controller_is_leader', { service: 'controller', instance: 'c1' })).to.equal(1);
    expect(m.get('llmux_redis_command_duration_seconds_count', { op: 'queue_depth' })).to.be.greaterThan(0);
    expect(m.get('llmux_worker_restarts_total') ?? 0).to.equal(0);

    // Read at scrape time: a new desired figure shows on the next scrape.
    await r.hset(keys.desiredScale(), 'queued', '2');
    expect((await scrape(url)).get('llmux_desired_replicas', { model: 'queued' })).to.equal(2);
    await r.hset(keys.desiredScale(), 'queued', '0');

    // A local worker killed: the supervisor restarts it, counted by process kind.
    const procTable = await r.hgetall(keys.localProcesses());
    const pid = (JSON.parse(procTable['c1-sim-1']!) as { pid: number }).pid;
    process.kill(pid, 'SIGKILL');
    await c1.waitForLogs(event('worker-up', 'c1-sim-1'), 2);
    const restarted = await scrape(url);
    expect(restarted.get('llmux_worker_restarts_total', { process: 'worker' })).to.equal(1);
    expect(restarted.get('llmux_worker_restarts_total', { process: 'gateway' }) ?? 0).to.equal(0);

    // A standby reads the same figures from Redis.
    const standbyPort = await freePort();
    const c2 = controller('c2', { METRICS_PORT: String(standbyPort) });
    expect((await c2.ready()).role).to.equal('standby');
    const s = await scrape(`http://127.0.0.1:${standbyPort}/metrics`);
    expect(s.get('llmux_controller_is_leader', { instance: 'c2' })).to.equal(0);
    expect(s.get('llmux_queue_depth', { model: 'queued' })).to.equal(3);
    expect(s.get('llmux_desired_replicas', { model: 'sim' })).to.equal(2);
  });

  it('a taken METRICS_PORT is a warning: the controller starts without /metrics', async () => {
    await writeFile(file, JSON.stringify({ models: [{ name: 'sim', engine: { type: 'sim' }, concurrency: 1 }] }));
    blocker = createServer();
    const taken = await new Promise<number>((resolve) =>
      blocker!.listen(0, '127.0.0.1', () => resolve((blocker!.address() as { port: number }).port)),
    );
    const c1 = controller('c1', { METRICS_PORT: String(taken) });
    const ready = await readyLine(c1);
    expect(String(ready.msg)).to.match(/^llmux ready at http:\/\/127\.0\.0\.1:\d+ /);
    const warn = c1.logs.find((l) => l.msg === 'cannot serve /metrics (METRICS_PORT); going on without it');
    expect(warn, 'warning logged').to.not.equal(undefined);
    expect(warn!.port).to.equal(taken);
    expect(c1.logs.some((l) => typeof l.msg === 'string' && l.msg.trim().startsWith('metrics: '))).to.equal(false);
    // Its worker still got a port of its own.
    await c1.waitForLog(event('worker-up', 'c1-sim-0'));
    const status = JSON.parse((await r.get(keys.worker('c1-sim-0')))!) as WorkerStatus;
    expect(status.metricsPort).to.be.a('number').and.not.equal(taken);
  });
});
