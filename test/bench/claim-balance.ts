/**
 * Benchmark: least-loaded claiming. Three sim workers of capacities 4, 8 and
 * 16 (1, 2 and 4 engine replicas of concurrency 4) under a steady open-loop
 * load at a fraction of total capacity; reports each worker's utilisation and
 * the queue wait, for the least-loaded policy and plain FIFO claiming side by
 * side in one run.
 *
 *   npm run bench:claiming [-- --seconds 30 --load 0.5]
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import type { WorkerStatus } from '@llmux/shared';
import { TestSystem } from '../helpers/system.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '30' },
    load: { type: 'string', default: '0.5' },
    'ttft-ms': { type: 'string', default: '20' },
    'itl-ms': { type: 'string', default: '5' },
  },
});
const SECONDS = Number(values.seconds);
const LOAD = Number(values.load);
const REPLICAS = [1, 2, 4];
const CONCURRENCY = 4;
// Short requests: many arrivals per second, so a 30 s window measures utilisation with little sampling noise.
const TTFT_MS = Number(values['ttft-ms']);
const ITL_MS = Number(values['itl-ms']);
const TOKENS = 50;
const SERVICE_S = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000;
const TOTAL_CAPACITY = REPLICAS.reduce((n, r) => n + r * CONCURRENCY, 0);
const RATE = (LOAD * TOTAL_CAPACITY) / SERVICE_S;

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

async function statuses(sys: TestSystem): Promise<Map<string, WorkerStatus>> {
  const ids = REPLICAS.map((_, i) => `w${i}`);
  const raw = await sys.redis.mget(ids.map((id) => sys.keys.worker(id)));
  return new Map(raw.map((v, i) => [ids[i]!, JSON.parse(v!) as WorkerStatus]));
}

/** Waits for every worker's next heartbeat, so the figures are fresh. */
async function freshStatuses(sys: TestSystem): Promise<Map<string, WorkerStatus>> {
  const before = await statuses(sys);
  for (;;) {
    await new Promise((r) => setTimeout(r, 100));
    const now = await statuses(sys);
    if ([...now].every(([id, s]) => s.at > before.get(id)!.at)) return now;
  }
}

interface Result {
  policy: string;
  util: { id: string; capacity: number; utilisation: number; requests: number }[];
  waits: number[];
  sent: number;
  errors: number;
}

async function run(policy: 'least-loaded' | 'fifo'): Promise<Result> {
  const sys = await TestSystem.start({
    deployments: {
      models: [
        { name: 'sim', engine: { type: 'sim', ttftMs: TTFT_MS, itlMs: ITL_MS, outputTokens: TOKENS }, concurrency: CONCURRENCY },
      ],
    },
    workers: REPLICAS.map((r, i) => ({ env: { WORKER_ID: `w${i}`, ENGINE_REPLICAS: String(r), CLAIM_POLICY: policy } })),
    gatewayEnv: { LOG_LEVEL: 'warn' },
  });
  try {
    let sent = 0;
    let errors = 0;
    const inflight = new Set<Promise<void>>();
    const one = async () => {
      try {
        const res = await fetch(`${sys.url}/v1/chat/completions`, {
          method: 'POST',
          body: JSON.stringify({ model: 'sim', messages: [{ role: 'user', content: 'go' }], max_tokens: TOKENS, stream: true }),
        });
        if (!(await res.text()).includes('[DONE]')) errors++;
      } catch {
        errors++;
      }
    };
    // Open loop: Poisson arrivals at RATE for warm-up + SECONDS, bounded.
    const warmupS = 3;
    const end = Date.now() + (warmupS + SECONDS) * 1000;
    let t0: Map<string, WorkerStatus> | null = null;
    let windowStart = 0;
    const warm = setTimeout(() => {
      windowStart = Date.now();
      void freshStatuses(sys).then((s) => (t0 = s));
    }, warmupS * 1000);
    let next = Date.now();
    while (Date.now() < end) {
      next += (-Math.log(1 - Math.random()) / RATE) * 1000;
      const wait = next - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      sent++;
      const p = one();
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
    }
    clearTimeout(warm);
    const t1 = await freshStatuses(sys);
    await Promise.all(inflight);
    const windowEnd = Date.now();
    const util = REPLICAS.map((_, i) => {
      const id = `w${i}`;
      const a = t0!.get(id)!;
      const b = t1.get(id)!;
      const w = sys.workers[i]!;
      const requests = w.logs.filter((l) => l.msg === 'request done' && (l.time as number) >= windowStart).length;
      return { id, capacity: b.capacity, utilisation: (b.busySlotMs - a.busySlotMs) / (b.capacity * (b.at - a.at)), requests };
    });
    const waits = sys.workers.flatMap((w) =>
      w.logs
        .filter((l) => l.msg === 'request done' && (l.time as number) >= windowStart && (l.time as number) <= windowEnd)
        .map((l) => l.waitMs as number),
    );
    return { policy, util, waits, sent, errors };
  } finally {
    await sys.stop();
  }
}

const results = [await run('least-loaded'), await run('fifo')];
console.log(
  `\nclaiming balance: sim workers of capacity ${REPLICAS.map((r) => r * CONCURRENCY).join(', ')} (total ${TOTAL_CAPACITY}), ` +
    `load ${LOAD} of capacity = ${RATE.toFixed(1)} req/s open loop for ${SECONDS}s after 3s warm-up; ` +
    `each request ${TOKENS} tokens, ${TTFT_MS} ms to first, ${ITL_MS} ms apart`,
);
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}\n`);
console.log(
  '| policy | util w0 (cap 4) | util w1 (cap 8) | util w2 (cap 16) | max - min | (max - min) / mean | queue wait p50 | queue wait p99 | sent | errors |',
);
console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const r of results) {
  const us = r.util.map((u) => u.utilisation);
  const mean = us.reduce((a, b) => a + b, 0) / us.length;
  const spread = (Math.max(...us) - Math.min(...us)) / mean;
  console.log(
    `| ${r.policy} | ${r.util.map((u) => `${(u.utilisation * 100).toFixed(1)}%`).join(' | ')} | ` +
      `${((Math.max(...us) - Math.min(...us)) * 100).toFixed(1)} pts | ${(spread * 100).toFixed(1)}% | ` +
      `${pct(r.waits, 50).toFixed(0)} ms | ${pct(r.waits, 99).toFixed(0)} ms | ${r.sent} | ${r.errors} |`,
  );
}
