import { TestSystem } from '../helpers/system.js';
import { Load, queueDepth, rssKiB, type Account, type Target } from './harness.js';

/**
 * The soak: a real gateway, two worker agents (sim engine) and a private
 * Redis under moderate constant load from closed-loop clients in this
 * process, sampled at a fixed period: gateway and worker RSS, Redis
 * `used_memory` and `DBSIZE`, claimed-but-unfinished entries (XPENDING) and
 * the queue's waiting requests. At the end the last third of the run is
 * compared with the middle third (the first third is warm-up), and the
 * per-request accounting of the harness applies to every request.
 *
 * Retention is shortened so that the run reaches its steady state within its
 * first third: finished requests' logs and records expire after
 * `retentionMs`, the request time limit is as short, and the reply stream is
 * capped at 5,000 entries. With the defaults (10 minutes of retention, a
 * 10-minute time limit, 100,000 reply events) the key count and Redis memory
 * would still be filling up at the end of a 10-minute run, and growth could
 * not be told from fill-up.
 */

export interface SoakOptions {
  minutes: number;
  /** Sampling period. Default 10 s. */
  sampleSeconds?: number;
  /** Concurrent clients. Default 8 (half of the 16 slots). */
  clients?: number;
  /** Where progress lines go. Default console.log. */
  log?: (line: string) => void;
}

export interface Sample {
  /** Seconds since the load started. */
  t: number;
  gatewayRssMiB: number;
  workerRssMiB: number[];
  redisUsedMiB: number;
  dbsize: number;
  /** Entries claimed by a worker and not finished (XPENDING). */
  pending: number;
  /** Requests waiting for a worker. */
  waiting: number;
  /** Requests completed in the period, per second. */
  rps: number;
}

export interface Check {
  what: string;
  ok: boolean;
  detail: string;
}

export interface SoakResult {
  account: Account;
  samples: Sample[];
  checks: Check[];
  ok: boolean;
  /** The figures as a Markdown table. */
  table: string;
  settings: string;
}

/** Allowed growth of the last third's mean over the middle third's. */
const FLAT = 0.15;
/** Runs at least this long (s) compare RSS by thirds; shorter ones hold it to RSS_BOUND_MIB. */
const LONG_ENOUGH_S = 240;
const RSS_BOUND_MIB = 128;

export async function runSoak(o: SoakOptions): Promise<SoakResult> {
  const log = o.log ?? ((l: string) => console.log(l));
  const runMs = o.minutes * 60_000;
  const every = (o.sampleSeconds ?? 10) * 1000;
  const retentionMs = Math.round(Math.min(60_000, Math.max(5_000, runMs / 6)));
  const timeLimitMs = Math.max(10_000, Math.min(30_000, retentionMs));
  const clients = o.clients ?? 8;
  const workerEnv = {
    LOG_LEVEL: 'warn',
    OUTPUT_RETENTION_MS: String(retentionMs),
    REPLY_STREAM_MAXLEN: '5000',
  };
  const settings =
    `2 workers x 8 slots (sim engine, ttft 20 ms, 10 ms a token), ${clients} closed-loop clients, 20-80 tokens a request; ` +
    `OUTPUT_RETENTION_MS ${retentionMs}, REQUEST_TIMEOUT_MS ${timeLimitMs}, RESUME_GRACE_MS 0, REPLY_STREAM_MAXLEN 5000; ` +
    `${o.minutes} min, a sample every ${every / 1000} s`;
  const sys = await TestSystem.start({
    deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 20, itlMs: 10 }, concurrency: 8 }] },
    workers: [{ env: { ...workerEnv, WORKER_ID: 'soak-w0' } }, { env: { ...workerEnv, WORKER_ID: 'soak-w1' } }],
    gatewayEnv: {
      GATEWAY_ID: 'soak-gw',
      LOG_LEVEL: 'warn',
      OUTPUT_RETENTION_MS: String(retentionMs),
      REQUEST_TIMEOUT_MS: String(timeLimitMs),
      RESUME_GRACE_MS: '0',
    },
  });
  let load: Load | undefined;
  try {
    const target: Target = { name: 'soak-gw', url: sys.url, gatewayId: 'soak-gw' };
    // Inline verification: each request's log is read as soon as it ends, well within its retention.
    load = new Load(sys, {
      targets: [target],
      model: 'sim',
      clients,
      maxTokens: (r) => r.between(20, 80),
      verify: 'inline',
    }).start();
    const t0 = Date.now();
    const samples: Sample[] = [];
    let lastDone = 0;
    let lastAt = t0;
    log(`soak: ${settings}`);
    while (Date.now() - t0 < runMs) {
      // The sampling period is the measurement itself, not a wait for the system.
      await new Promise((r) => setTimeout(r, Math.min(every, runMs - (Date.now() - t0))));
      const info = await sys.redis.info('memory');
      const used = Number(/^used_memory:(\d+)/m.exec(info)?.[1] ?? NaN);
      const depth = await queueDepth(sys, 'sim');
      const done = load.ended((r) => r.outcome === 'completed').length;
      const now = Date.now();
      const s: Sample = {
        t: Math.round((now - t0) / 1000),
        gatewayRssMiB: rssKiB(sys.gateway.pid) / 1024,
        workerRssMiB: sys.workers.map((w) => rssKiB(w.pid) / 1024),
        redisUsedMiB: used / 1024 / 1024,
        dbsize: await sys.redis.dbsize(),
        pending: depth.pending,
        waiting: depth.waiting,
        rps: (done - lastDone) / ((now - lastAt) / 1000),
      };
      lastDone = done;
      lastAt = now;
      samples.push(s);
      log(`  ${row(s)}`);
    }
    const account = await load.stop();
    const checks = judge(samples, account);
    const table = [
      '| t (s) | gateway RSS (MiB) | worker 0 RSS (MiB) | worker 1 RSS (MiB) | Redis used_memory (MiB) | DBSIZE | XPENDING | waiting | completed/s |',
      '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      ...samples.map((s) => `| ${row(s)} |`),
    ].join('\n');
    return { account, samples, checks, ok: checks.every((c) => c.ok), table, settings };
  } finally {
    await load?.abort();
    await sys.stop();
  }
}

function row(s: Sample): string {
  return [
    s.t,
    s.gatewayRssMiB.toFixed(1),
    ...s.workerRssMiB.map((w) => w.toFixed(1)),
    s.redisUsedMiB.toFixed(2),
    s.dbsize,
    s.pending,
    s.waiting,
    s.rps.toFixed(1),
  ].join(' | ');
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

/** Flatness and accounting checks over the samples. */
export function judge(samples: Sample[], a: Account): Check[] {
  const checks: Check[] = [];
  const n = samples.length;
  const middle = samples.slice(Math.floor(n / 3), Math.floor((2 * n) / 3));
  const last = samples.slice(Math.floor((2 * n) / 3));
  const second = samples.slice(Math.floor(n / 2));
  const flat = (what: string, pick: (s: Sample) => number, slack = 0) => {
    const m = mean(middle.map(pick));
    const l = mean(last.map(pick));
    const ok = l <= m * (1 + FLAT) + slack;
    checks.push({
      what: `${what}: last third within ${FLAT * 100}% of the middle third`,
      ok,
      detail: `${m.toFixed(2)} -> ${l.toFixed(2)} (${m > 0 ? (((l - m) / m) * 100).toFixed(1) : 'n/a'}%)`,
    });
  };
  const notMonotonic = (what: string, pick: (s: Sample) => number) => {
    const xs = second.map(pick);
    const rising = xs.length > 2 && xs.every((x, i) => i === 0 || x > xs[i - 1]!);
    checks.push({ what: `${what}: no steady rise over the second half`, ok: !rising, detail: xs.join(', ') });
  };
  const rss: [string, (s: Sample) => number][] = [
    ['gateway RSS', (s) => s.gatewayRssMiB],
    ...(samples[0]?.workerRssMiB ?? []).map((_, i): [string, (s: Sample) => number] => [
      `worker ${i} RSS`,
      (s) => s.workerRssMiB[i]!,
    ]),
  ];
  for (const [what, pick] of rss) {
    if (samples.length > 0 && samples.at(-1)!.t >= LONG_ENOUGH_S) flat(what, pick);
    else {
      // V8's heap grows and is compacted in cycles of about 100 s under this load: a shorter run
      // sees part of one cycle, so its thirds cannot be compared. It is held to a bound instead.
      const first = pick(samples[0]!);
      const peak = Math.max(...samples.map(pick));
      checks.push({
        what: `${what}: peak within ${RSS_BOUND_MIB} MiB of the first sample (run too short to compare thirds)`,
        ok: peak - first <= RSS_BOUND_MIB,
        detail: `${first.toFixed(1)} -> peak ${peak.toFixed(1)}`,
      });
    }
  }
  flat('Redis used_memory', (s) => s.redisUsedMiB);
  // A few keys of slack: per-request keys come and go with the load.
  flat('DBSIZE', (s) => s.dbsize, 20);
  notMonotonic('DBSIZE', (s) => s.dbsize);
  notMonotonic('XPENDING', (s) => s.pending);
  notMonotonic('Redis used_memory', (s) => Math.round(s.redisUsedMiB * 100));
  const maxPending = Math.max(...samples.map((s) => s.pending));
  checks.push({ what: 'XPENDING never above the 16 slots', ok: maxPending <= 16, detail: `max ${maxPending}` });
  checks.push({
    what: 'every request completed exactly: none lost, repeated or failed',
    ok: a.lost === 0 && a.duplicated === 0 && a.completed === a.sent,
    detail: `sent ${a.sent}, completed ${a.completed}, errored ${a.erroredExplicitly}, lost ${a.lost}, duplicated ${a.duplicated}`,
  });
  return checks;
}
