/**
 * Benchmark: fair sharing between tenants. Two real sim worker agents (one
 * deployment, 2 x concurrency 4 = 8 slots) against a private redis-server.
 * Tenant A sends 20 times the request rate of tenant B, at a total offered
 * load a bit above the fleet's capacity, so a queue forms. Reports B's queue
 * wait (p50, p95) and latency (queue wait + run) side by side, in one run:
 *
 *   1. B alone at its rate;
 *   2. B with A's flood, fair sharing (tenants A and B);
 *   3. the same flood as plain FIFO (every request under one tenant, so the
 *      staging list is a single FIFO).
 *
 * Requests are enqueued with RequestQueue.enqueue, as a gateway does, with
 * the tenant set; no HTTP. Queue wait is the worker-side time from enqueue to
 * start (`waitMs` of the worker's 'request done' line).
 *
 *   npm run bench:fairness [-- --seconds 20 --load 1.1]
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { createRedis, DeploymentRegistry, Keys, parseDeployments, RequestQueue, type Job } from '@llmux/shared';
import { entryOf, TestProcess, type LogLine } from '../helpers/processes.js';
import { startTestRedis } from '../helpers/redis.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '20' },
    load: { type: 'string', default: '1.1' },
    'ttft-ms': { type: 'string', default: '20' },
    'itl-ms': { type: 'string', default: '3' },
  },
});
const SECONDS = Number(values.seconds);
const WARMUP_S = 2;
const LOAD = Number(values.load);
const WORKERS = 2;
const CONCURRENCY = 4;
const TTFT_MS = Number(values['ttft-ms']);
const ITL_MS = Number(values['itl-ms']);
const TOKENS = 28;
const SERVICE_S = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000;
const CAPACITY = (WORKERS * CONCURRENCY) / SERVICE_S;
const TOTAL_RATE = LOAD * CAPACITY;
/** A sends 20 times B's rate. */
const B_RATE = TOTAL_RATE / 21;
const A_RATE = TOTAL_RATE - B_RATE;
const MODEL = 'sim';

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

const redis = await startTestRedis();
const keys = new Keys(redis.prefix);
const r = createRedis(redis.url, { name: 'bench' });
await r.connect();
const queue = new RequestQueue(r, keys);
await new DeploymentRegistry(r, keys).publish(
  parseDeployments({
    models: [
      { name: MODEL, engine: { type: 'sim', ttftMs: TTFT_MS, itlMs: ITL_MS, outputTokens: TOKENS }, concurrency: CONCURRENCY },
    ],
  }),
);
await queue.ensureGroup(MODEL);
const workers = Array.from(
  { length: WORKERS },
  (_, i) =>
    new TestProcess(`worker-${i}`, entryOf('@llmux/worker-agent'), {
      REDIS_URL: redis.url,
      KEY_PREFIX: redis.prefix,
      WORKER_ID: `w${i}`,
      LOG_LEVEL: 'info',
    }),
);

/** Finished requests by rid, fed from the workers' 'request done' lines as they arrive. */
const done = new Map<string, LogLine>();
const scanned = workers.map(() => 0);
function collect(): void {
  workers.forEach((w, i) => {
    for (; scanned[i]! < w.logs.length; scanned[i]!++) {
      const l = w.logs[scanned[i]!]!;
      if (l.msg === 'request done') done.set(String(l.rid), l);
    }
  });
}

/** Resolves once every rid is done, woken by each new 'request done' line. */
async function allDone(rids: string[]): Promise<void> {
  for (;;) {
    collect();
    if (rids.every((rid) => done.has(rid))) return;
    const known = new Set(done.values());
    await Promise.race(workers.map((w) => w.waitForLog((l) => l.msg === 'request done' && !known.has(l))));
  }
}

interface Scenario {
  name: string;
  aRate: number;
  /** FIFO baseline: every request goes under one tenant. */
  fifo: boolean;
}

interface Outcome {
  scenario: Scenario;
  waits: number[];
  latencies: number[];
  sent: { a: number; b: number };
  /** Requests of any tenant finished per second over the measured window. */
  throughput: number;
}

let seq = 0;
function job(tenant: 'A' | 'B', fifo: boolean): Job {
  const now = Date.now();
  return {
    rid: `${tenant}-${++seq}`,
    model: MODEL,
    gw: 'bench',
    params: { kind: 'completion', prompt: 'go', maxTokens: TOKENS },
    enqueuedAt: now,
    deadline: now + 120_000,
    tenant: fifo ? 'shared' : tenant,
    priority: 'normal',
    retainMs: 0,
  };
}

/** Open-loop Poisson arrivals of one tenant until `end`; returns the rids sent and when. */
async function arrivals(tenant: 'A' | 'B', rate: number, end: number, fifo: boolean): Promise<{ rid: string; at: number }[]> {
  const sent: { rid: string; at: number }[] = [];
  if (rate <= 0) return sent;
  const pending: Promise<unknown>[] = [];
  let next = Date.now();
  for (;;) {
    next += (-Math.log(1 - Math.random()) / rate) * 1000;
    if (next >= end) break;
    const wait = next - Date.now();
    if (wait > 0) await new Promise((res) => setTimeout(res, wait));
    const j = job(tenant, fifo);
    sent.push({ rid: j.rid, at: j.enqueuedAt });
    pending.push(queue.enqueue(j, 1));
  }
  await Promise.all(pending);
  return sent;
}

async function run(scenario: Scenario): Promise<Outcome> {
  const start = Date.now();
  const from = start + WARMUP_S * 1000;
  const end = from + SECONDS * 1000;
  const [a, b] = await Promise.all([
    arrivals('A', scenario.aRate, end, scenario.fifo),
    arrivals('B', B_RATE, end, scenario.fifo),
  ]);
  await allDone([...a, ...b].map((s) => s.rid));
  const measuredB = b.filter((s) => s.at >= from).map((s) => done.get(s.rid)!);
  const finishedInWindow = [...a, ...b].filter((s) => {
    const t = Number(done.get(s.rid)!.time);
    return t >= from && t < end;
  }).length;
  return {
    scenario,
    waits: measuredB.map((l) => Number(l.waitMs)),
    latencies: measuredB.map((l) => Number(l.waitMs) + Number(l.ms)),
    sent: { a: a.length, b: b.length },
    throughput: finishedInWindow / SECONDS,
  };
}

try {
  await Promise.all(workers.map((w) => w.ready()));
  const outcomes: Outcome[] = [];
  for (const s of [
    { name: 'B alone', aRate: 0, fifo: false },
    { name: 'B + A flood, fair', aRate: A_RATE, fifo: false },
    { name: 'B + A flood, FIFO', aRate: A_RATE, fifo: true },
  ]) {
    outcomes.push(await run(s));
  }
  const alone = outcomes[0]!;
  console.log(
    `\nfairness: ${WORKERS} sim workers x concurrency ${CONCURRENCY} (${(WORKERS * CONCURRENCY).toString()} slots, ` +
      `~${CAPACITY.toFixed(0)} req/s at ${TOKENS} tokens, ${TTFT_MS} ms to first, ${ITL_MS} ms apart); ` +
      `offered ${TOTAL_RATE.toFixed(1)} req/s (load ${LOAD}) with the flood: A ${A_RATE.toFixed(1)} req/s, B ${B_RATE.toFixed(2)} req/s; ` +
      `Poisson arrivals, ${SECONDS} s measured after ${WARMUP_S} s warm-up per scenario`,
  );
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}\n`);
  console.log(
    '| scenario | B requests | B wait p50 | B wait p95 | B latency p50 | B latency p95 | B latency p95 / alone | B wait p95 / alone | finished req/s |',
  );
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const o of outcomes) {
    const ratio = (x: number, y: number) => (y > 0 ? `${(x / y).toFixed(2)}x` : 'n/a');
    console.log(
      `| ${o.scenario.name} | ${o.waits.length} | ${pct(o.waits, 50).toFixed(0)} ms | ${pct(o.waits, 95).toFixed(0)} ms | ` +
        `${pct(o.latencies, 50).toFixed(0)} ms | ${pct(o.latencies, 95).toFixed(0)} ms | ` +
        `${ratio(pct(o.latencies, 95), pct(alone.latencies, 95))} | ${ratio(pct(o.waits, 95), pct(alone.waits, 95))} | ` +
        `${o.throughput.toFixed(1)} |`,
    );
  }
} finally {
  await Promise.allSettled(workers.map((w) => w.stop()));
  r.disconnect();
  await redis.stop();
}
