/**
 * Benchmark: the autoscaler under a load step. A controller in local mode
 * runs a `sim` deployment (replicas 1..4, concurrency 4); the load steps from
 * 10% to 150% of one replica's capacity, holds, then stops. Reports the time
 * to scale up (decision and new worker ready), the queue wait p95 before the
 * step, right after it and once scaled, and whether it scales back down.
 *
 *   npm run bench:autoscale [-- --high-seconds 40 --quiet-seconds 25]
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { entryOf, TestProcess, type LogLine } from '../helpers/processes.js';
import { startTestRedis } from '../helpers/redis.js';

const { values } = parseArgs({
  options: {
    'low-seconds': { type: 'string', default: '15' },
    'high-seconds': { type: 'string', default: '40' },
    'quiet-seconds': { type: 'string', default: '25' },
  },
});
const LOW_S = Number(values['low-seconds']);
const HIGH_S = Number(values['high-seconds']);
const QUIET_S = Number(values['quiet-seconds']);
const CONCURRENCY = 4;
const TTFT_MS = 50;
const ITL_MS = 20;
const TOKENS = 50;
const SERVICE_S = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000;
const rate = (fraction: number) => (fraction * CONCURRENCY) / SERVICE_S;
const SCALE_DOWN_AFTER_MS = 10_000;

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

const redis = await startTestRedis();
const dir = await mkdtemp(join(tmpdir(), 'llmux-autoscale-'));
const file = join(dir, 'deployments.json');
await writeFile(
  file,
  JSON.stringify({
    models: [
      {
        name: 'sim',
        engine: { type: 'sim', ttftMs: TTFT_MS, itlMs: ITL_MS, outputTokens: TOKENS },
        concurrency: CONCURRENCY,
        replicas: { min: 1, max: 4 },
      },
    ],
  }),
);
const ctl = new TestProcess('controller', entryOf('@llmux/controller'), {
  REDIS_URL: redis.url,
  KEY_PREFIX: redis.prefix,
  PORT: '0',
  ADMIN_PORT: '0',
  DEPLOYMENTS_FILE: file,
  CONTROLLER_ID: 'bench',
  LOG_LEVEL: 'info',
  AUTOSCALE_INTERVAL_MS: '1000',
  SCALE_DOWN_AFTER_MS: String(SCALE_DOWN_AFTER_MS),
  DRAIN_TIMEOUT_MS: '2000',
});
try {
  const ready = await ctl.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('llmux ready at'));
  const url = /at (\S+) /.exec(String(ready.msg))![1]!;
  let errors = 0;
  const inflight = new Set<Promise<void>>();
  const one = async () => {
    try {
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        body: JSON.stringify({ model: 'sim', messages: [{ role: 'user', content: 'go' }], max_tokens: TOKENS, stream: true }),
      });
      if (!(await res.text()).includes('[DONE]')) errors++;
    } catch {
      errors++;
    }
  };
  /** Open-loop Poisson arrivals at `perSecond` for `seconds`. */
  const phase = async (perSecond: number, seconds: number) => {
    const end = Date.now() + seconds * 1000;
    let next = Date.now();
    while (Date.now() < end) {
      next += (-Math.log(1 - Math.random()) / perSecond) * 1000;
      const wait = next - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const p = one();
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
    }
  };
  const t0 = Date.now();
  await phase(rate(0.1), LOW_S);
  const step = Date.now();
  await phase(rate(1.5), HIGH_S);
  const stop = Date.now();
  await Promise.all(inflight);
  const scaledDown = await Promise.race([
    ctl.waitForLog((l) => l.event === 'scaled' && (l.time as number) > stop && /-> 1 replicas/.test(String(l.msg))),
    new Promise<null>((r) => setTimeout(() => r(null), (QUIET_S + SCALE_DOWN_AFTER_MS / 1000) * 1000)),
  ]);
  const up = ctl.logs.find((l) => l.event === 'scaled' && (l.time as number) > step);
  const upReady = ctl.logs.find((l) => l.event === 'worker-up' && (l.time as number) > step && l.subject !== 'bench-sim-0');
  const waits = (from: number, to: number) =>
    ctl.logs
      .filter((l: LogLine) => l.msg === 'request done' && (l.time as number) >= from && (l.time as number) < to)
      .map((l) => l.waitMs as number);
  const before = waits(t0 + 2000, step);
  const rightAfter = waits(step, upReady ? (upReady.time as number) : stop);
  const scaled = waits(upReady ? (upReady.time as number) + 2000 : stop, stop);
  const maxReplicas = Math.max(
    1,
    ...ctl.logs.filter((l) => l.event === 'scaled').map((l) => Number(/-> (\d+) replicas/.exec(String(l.msg))?.[1] ?? 1)),
  );
  console.log(
    `\nautoscaler: sim replicas 1..4 of concurrency ${CONCURRENCY}; load ${rate(0.1).toFixed(2)} req/s (10% of one replica) ` +
      `for ${LOW_S}s, then ${rate(1.5).toFixed(2)} req/s (150%) for ${HIGH_S}s, then none; ` +
      `autoscale tick 1 s, scale down after ${SCALE_DOWN_AFTER_MS / 1000} s quiet`,
  );
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}\n`);
  console.log('| figure | value |');
  console.log('| --- | ---: |');
  console.log(`| scale-up decision after the step | ${up ? (((up.time as number) - step) / 1000).toFixed(1) + ' s' : 'none'} |`);
  console.log(
    `| new worker ready after the step | ${upReady ? (((upReady.time as number) - step) / 1000).toFixed(1) + ' s' : 'none'} |`,
  );
  console.log(`| replicas at peak | ${maxReplicas} |`);
  console.log(`| queue wait p95 at 10% (${before.length} requests) | ${pct(before, 95).toFixed(0)} ms |`);
  console.log(
    `| queue wait p95 after the step, before the new worker (${rightAfter.length}) | ${pct(rightAfter, 95).toFixed(0)} ms |`,
  );
  console.log(`| queue wait p95 once scaled (${scaled.length}) | ${pct(scaled, 95).toFixed(0)} ms |`);
  console.log(
    `| scaled back to 1 after the load ended | ${scaledDown ? `yes, ${(((scaledDown.time as number) - stop) / 1000).toFixed(1)} s after` : 'no'} |`,
  );
  console.log(`| errors | ${errors} |`);
} finally {
  await ctl.stop();
  await redis.stop();
  await rm(dir, { recursive: true, force: true });
}
