import { WORKER_GROUP, type Keys, type Logger, type Redis } from '@llmux/shared';
import { QueueFullError } from './errors.js';

/** One reading of a model's queue. */
export interface QueueSample {
  /** Entries no worker has claimed yet. */
  waiting: number;
  /**
   * The group's `entries-read` counter: how many entries were ever delivered
   * to workers. Null when Redis cannot tell (no group yet, or Redis < 7).
   */
  entriesRead: number | null;
}

export type SampleFn = (model: string) => Promise<QueueSample>;

export interface QueueMonitorOptions {
  /** A cached depth older than this is refreshed (in the background) by the next admission. Default 200 ms. */
  refreshMs?: number;
  /** Interval between drain-rate samples. Default 1000 ms. */
  rateIntervalMs?: number;
  /** Weight of the newest drain-rate sample in the moving average. Default 0.5. */
  alpha?: number;
  /** Bounds of Retry-After, in seconds. Default 1 and 60. */
  minRetryAfterS?: number;
  maxRetryAfterS?: number;
  now?: () => number;
  log?: Logger;
}

interface ModelQueue {
  model: string;
  /** Waiting entries at the last reading. */
  waiting: number;
  /** When the last reading was taken (0: never). */
  fetchedAt: number;
  /** Requests this gateway admitted since the reading in flight (or the last one) was sent. */
  local: number;
  refreshing: Promise<void> | null;
  /** Drain rate in entries per second (moving average), null until measured. */
  rate: number | null;
  /** The reading the next drain-rate sample is measured from. */
  mark: { at: number; entriesRead: number; waiting: number } | null;
}

/** Retry-After for `queued` entries draining at `rate` per second: ceil(queued / rate), clamped. */
export function retryAfterSeconds(queued: number, rate: number | null, min = 1, max = 60): number {
  if (rate === null || !(rate > 0)) return max;
  return Math.min(max, Math.max(min, Math.ceil(queued / rate)));
}

/**
 * Per-model queue depth and drain rate, for admission. The depth is a cached
 * reading of the model's stream (refreshed at most every `refreshMs`, never
 * per request) plus the requests this gateway admitted since that reading was
 * sent, so a burst cannot overshoot the limit by more than what other gateways
 * admit in the same interval. The drain rate is the growth of the group's
 * `entries-read` counter (entries delivered to workers, by any gateway's
 * requests) between readings at least `rateIntervalMs` apart, averaged, and
 * counted only while the queue had work: every gateway measures the same
 * fleet-wide figure, at the cost of one reading per model per second.
 */
export class QueueMonitor {
  private readonly queues = new Map<string, ModelQueue>();
  private timer: NodeJS.Timeout | null = null;
  private readonly refreshMs: number;
  private readonly rateIntervalMs: number;
  private readonly alpha: number;
  private readonly minRetry: number;
  private readonly maxRetry: number;
  private readonly now: () => number;

  constructor(
    private readonly sample: SampleFn,
    private readonly opts: QueueMonitorOptions = {},
  ) {
    this.refreshMs = opts.refreshMs ?? 200;
    this.rateIntervalMs = opts.rateIntervalMs ?? 1000;
    this.alpha = opts.alpha ?? 0.5;
    this.minRetry = opts.minRetryAfterS ?? 1;
    this.maxRetry = opts.maxRetryAfterS ?? 60;
    this.now = opts.now ?? Date.now;
  }

  private queue(model: string): ModelQueue {
    let q = this.queues.get(model);
    if (!q) {
      q = { model, waiting: 0, fetchedAt: 0, local: 0, refreshing: null, rate: null, mark: null };
      this.queues.set(model, q);
    }
    return q;
  }

  /** Reads the model's queue now (one reading in flight per model). */
  refresh(model: string): Promise<void> {
    const q = this.queue(model);
    if (q.refreshing) return q.refreshing;
    const sentAt = this.now();
    // Admissions counted so far are in this reading (same connection, sent before it).
    const counted = q.local;
    q.refreshing = this.sample(model)
      .then((s) => {
        q.local = Math.max(0, q.local - counted);
        q.waiting = s.waiting;
        q.fetchedAt = sentAt;
        this.updateRate(q, s, sentAt);
      })
      .finally(() => {
        q.refreshing = null;
      });
    return q.refreshing;
  }

  private updateRate(q: ModelQueue, s: QueueSample, at: number): void {
    if (s.entriesRead === null) {
      q.mark = null;
      return;
    }
    const m = q.mark;
    if (m && at - m.at < this.rateIntervalMs) return;
    q.mark = { at, entriesRead: s.entriesRead, waiting: s.waiting };
    if (!m) return;
    const delivered = s.entriesRead - m.entriesRead;
    if (delivered < 0) return; // the group was recreated (Redis restarted): start over from this reading
    // An idle queue says nothing about how fast workers drain it.
    if (delivered === 0 && m.waiting === 0 && s.waiting === 0) return;
    const rate = delivered / ((at - m.at) / 1000);
    q.rate = q.rate === null ? rate : this.alpha * rate + (1 - this.alpha) * q.rate;
  }

  /** Waiting entries as far as this gateway knows: the last reading plus its own admissions since. */
  waiting(model: string): number {
    const q = this.queues.get(model);
    return q ? q.waiting + q.local : 0;
  }

  /** The measured drain rate in entries per second, or null before there is one. */
  drainRate(model: string): number | null {
    return this.queues.get(model)?.rate ?? null;
  }

  /**
   * Admits one request of `model` or throws a 429 `queue_full`. Waits for a
   * reading only the first time a model is seen; later readings happen in the
   * background. An admitted request counts against the limit at once; call
   * `release` if it is not enqueued after all.
   */
  async admit(model: string, maxQueue: number): Promise<void> {
    const q = this.queue(model);
    if (q.fetchedAt === 0) await this.refresh(model);
    else if (this.now() - q.fetchedAt >= this.refreshMs && !q.refreshing) {
      this.refresh(model).catch((err: unknown) => this.opts.log?.debug({ err, model }, 'queue reading failed'));
    }
    const queued = q.waiting + q.local;
    if (queued >= maxQueue) throw new QueueFullError(model, retryAfterSeconds(queued, q.rate, this.minRetry, this.maxRetry));
    q.local++;
  }

  /** Gives back an admission whose enqueue failed. */
  release(model: string): void {
    const q = this.queues.get(model);
    if (q && q.local > 0) q.local--;
  }

  /** Reads the queues of `models()` every `rateIntervalMs`, so drain rates are known before a queue fills. */
  start(models: () => string[]): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      for (const model of models()) {
        this.refresh(model).catch((err: unknown) => this.opts.log?.debug({ err, model }, 'queue reading failed'));
      }
    }, this.rateIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}

/** Parses one XINFO GROUPS entry (a flat list of names and values). */
function groupInfo(raw: unknown[]): Record<string, unknown> {
  const info: Record<string, unknown> = {};
  for (let i = 0; i + 1 < raw.length; i += 2) info[String(raw[i])] = raw[i + 1];
  return info;
}

const num = (v: unknown): number | null => (v === null || v === undefined || v === '' ? null : Number(v));

/**
 * Reads a model's queue with `XINFO GROUPS` and `XLEN` (one pipelined write).
 * Waiting entries are the group's `lag` when Redis can tell it; otherwise the
 * stream's length minus the entries claimed and not yet acked (entries are
 * deleted when done, so the stream holds only waiting and running work). No
 * group yet: every entry is waiting.
 */
export function redisQueueSampler(redis: Redis, keys: Keys): SampleFn {
  return async (model) => {
    const key = keys.requests(model);
    const [groups, len, stagedRaw] = await Promise.all([
      (redis.xinfo('GROUPS', key) as Promise<unknown[][]>).catch((err: unknown) => {
        if (err instanceof Error && err.message.includes('no such key')) return [] as unknown[][];
        throw err;
      }),
      redis.xlen(key),
      // Requests staged for fair dispatch wait too, though they are not in the stream yet.
      redis.hget(keys.fairState(model), 'staged'),
    ]);
    const staged = Math.max(0, Number(stagedRaw ?? 0) || 0);
    const g = groups.map(groupInfo).find((i) => String(i.name) === WORKER_GROUP);
    if (!g) return { waiting: len + staged, entriesRead: null };
    const lag = num(g.lag);
    const pending = num(g.pending) ?? 0;
    const waiting = (lag !== null && Number.isFinite(lag) ? lag : Math.max(0, len - pending)) + staged;
    // A group that never delivered anything has read nothing, though Redis reports null then.
    const read = String(g['last-delivered-id']) === '0-0' ? 0 : num(g['entries-read']);
    return { waiting, entriesRead: read !== null && Number.isFinite(read) ? read : null };
  };
}
