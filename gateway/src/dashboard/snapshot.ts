import { E2E_BUCKETS, TTFT_BUCKETS, type Deployment, type GatewayMetrics, type prom, type WorkerStatus } from '@llmux/shared';
import type { GatewayContext } from '../context.js';

/** Longest the Redis readings of one snapshot may take; past it the snapshot says Redis is unreachable. */
export const REDIS_READ_TIMEOUT_MS = 500;
/**
 * A worker whose last heartbeat is older than this shows as stale. Workers
 * beat every second by default (HEARTBEAT_INTERVAL_MS) and count as dead
 * after 3 s (HEARTBEAT_TTL_MS), when their status key expires and they drop
 * out of the list.
 */
export const STALE_HEARTBEAT_MS = 2000;

/** A histogram's cumulative state: bucket bounds (finite, ascending) and cumulative counts; `count` is the +Inf bucket. */
export interface HistogramReading {
  sum: number;
  count: number;
  le: number[];
  cumulative: number[];
}

export interface ModelReading {
  name: string;
  aliases: string[];
  engine: string;
  /** Concurrent requests one replica serves. */
  concurrency: number;
  /** Queue depth; null when Redis could not be read. */
  queue: { waiting: number; pending: number; entriesRead: number } | null;
  /** This gateway's generated tokens for the model (cumulative). */
  tokens: number;
  /** This gateway's ended requests for the model (cumulative). */
  requests: number;
}

export interface WorkerReading {
  id: string;
  host: string;
  state: WorkerStatus['state'];
  models: string[];
  engines: Record<string, string>;
  capacity: number;
  inflight: number;
  /** Heartbeat time, ms since epoch (the worker's clock). */
  at: number;
  /** Age of the last heartbeat at `now`, ms. */
  ageMs: number;
  stale: boolean;
}

/** What `GET /dashboard/data` answers: readings at one moment; the page derives rates from two of them. */
export interface DashboardSnapshot {
  /** When the readings were taken, ms since epoch (the gateway's clock). */
  now: number;
  gateway: { id: string; startedAt: number; openRequests: number };
  redis: { reachable: boolean; error: string | null };
  staleAfterMs: number;
  models: ModelReading[];
  /** Live workers; null when Redis could not be read. */
  workers: WorkerReading[] | null;
  /** This gateway's cumulative counters (all models). */
  counters: {
    tokens: number;
    requests: number;
    /** Ended requests by outcome (ok, cancelled, rejected_429…). */
    outcomes: Record<string, number>;
    ttft: HistogramReading;
    e2e: HistogramReading;
  };
}

type Values = prom.MetricObjectWithValues<prom.MetricValue<string>>;

/** Sums a counter's values by one label (and in total). */
function sumBy(metric: Values, label: string): { total: number; by: Record<string, number> } {
  const by: Record<string, number> = {};
  let total = 0;
  for (const v of metric.values) {
    total += v.value;
    const key = v.labels[label];
    if (key !== undefined) by[String(key)] = (by[String(key)] ?? 0) + v.value;
  }
  return { total, by };
}

/** Adds up a histogram's series (one per model) into one cumulative reading. */
function histogramOf(metric: Values, bounds: number[]): HistogramReading {
  const cumulative = bounds.map(() => 0);
  let sum = 0;
  let count = 0;
  for (const v of metric.values) {
    const name = (v as { metricName?: string }).metricName ?? '';
    if (name.endsWith('_sum')) sum += v.value;
    else if (name.endsWith('_count')) count += v.value;
    else if (name.endsWith('_bucket')) {
      const i = bounds.indexOf(Number(v.labels.le));
      if (i >= 0) cumulative[i]! += v.value;
    }
  }
  return { sum, count, le: bounds, cumulative };
}

async function readCounters(metrics: GatewayMetrics, ttftBounds: number[], e2eBounds: number[]) {
  const [tokens, requests, ttft, e2e, open] = await Promise.all([
    metrics.generationTokens.get(),
    metrics.requests.get(),
    metrics.ttft.get(),
    metrics.e2e.get(),
    metrics.openRequests.get(),
  ]);
  const tokensBy = sumBy(tokens, 'model');
  const requestsBy = sumBy(requests, 'model');
  return {
    open: sumBy(open, 'none').total,
    tokensByModel: tokensBy.by,
    requestsByModel: requestsBy.by,
    counters: {
      tokens: tokensBy.total,
      requests: requestsBy.total,
      outcomes: sumBy(requests, 'outcome').by,
      ttft: histogramOf(ttft, ttftBounds),
      e2e: histogramOf(e2e, e2eBounds),
    },
  };
}

/** Resolves with `p`, or rejects after `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms))),
  ]);
}

interface RedisReadings {
  depths: Map<string, { waiting: number; pending: number; entriesRead: number }>;
  workers: WorkerStatus[];
}

/**
 * Reads the queues and the workers from Redis: one depth reading per model
 * and one `live()` call, bounded in time. Nothing is sent while the circuit
 * is open (Redis known unreachable), so the page never waits on a dead
 * connection. A failure here does not trip the circuit: the dashboard only
 * reports, admissions decide for themselves.
 */
async function readRedis(ctx: GatewayContext, models: Deployment[]): Promise<RedisReadings> {
  if (!ctx.circuit.isClosed) throw new Error('circuit open');
  const [depths, workers] = await within(
    Promise.all([Promise.all(models.map((d) => ctx.queue.depth(d.name))), ctx.workers.live()]),
    REDIS_READ_TIMEOUT_MS,
  );
  return { depths: new Map(models.map((d, i) => [d.name, depths[i]!])), workers };
}

/**
 * Builds the snapshot function of one gateway. Concurrent calls (several
 * open pages) share one reading in flight; nothing is kept between readings.
 */
export function snapshotter(ctx: GatewayContext): () => Promise<DashboardSnapshot> {
  const startedAt = Math.round(Date.now() - process.uptime() * 1000);
  const ttftBounds = [...TTFT_BUCKETS];
  const e2eBounds = [...E2E_BUCKETS];
  let inFlight: Promise<DashboardSnapshot> | null = null;

  async function take(): Promise<DashboardSnapshot> {
    const models = [...ctx.catalog.list()].sort((a, b) => a.name.localeCompare(b.name));
    const [redis, local] = await Promise.all([
      readRedis(ctx, models).then(
        (r) => ({ ok: true as const, r }),
        (err: unknown) => ({ ok: false as const, error: err instanceof Error ? err.message : String(err) }),
      ),
      readCounters(ctx.metrics, ttftBounds, e2eBounds),
    ]);
    const now = Date.now();
    return {
      now,
      gateway: { id: ctx.config.gatewayId, startedAt, openRequests: local.open },
      redis: { reachable: redis.ok, error: redis.ok ? null : redis.error },
      staleAfterMs: STALE_HEARTBEAT_MS,
      models: models.map((d) => ({
        name: d.name,
        aliases: d.aliases,
        engine: d.engine.type,
        concurrency: d.concurrency,
        queue: redis.ok ? (redis.r.depths.get(d.name) ?? null) : null,
        tokens: local.tokensByModel[d.name] ?? 0,
        requests: local.requestsByModel[d.name] ?? 0,
      })),
      workers: redis.ok
        ? redis.r.workers
            .map((w) => {
              const ageMs = Math.max(0, now - w.at);
              return {
                id: w.id,
                host: w.host,
                state: w.state,
                models: w.models,
                engines: w.engines ?? {},
                capacity: w.capacity,
                inflight: w.inflight,
                at: w.at,
                ageMs,
                stale: ageMs > STALE_HEARTBEAT_MS,
              };
            })
            .sort((a, b) => a.id.localeCompare(b.id))
        : null,
      counters: local.counters,
    };
  }

  return () => {
    inFlight ??= take().finally(() => {
      inFlight = null;
    });
    return inFlight;
  };
}
