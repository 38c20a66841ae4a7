import {
  DEFAULT_TENANT,
  type Cancellation,
  type Job,
  type JobParams,
  type Logger,
  type Priority,
  type ReplyEvent,
  type RequestOutcome,
  type RequestQueue,
} from '@llmux/shared';
import { newTrack, type ModelSeries, type RequestMetrics, type RequestTrack } from './request-metrics.js';
import type { Sink } from './sinks.js';

/**
 * The worker's deadline is this much later than the gateway's, so the gateway
 * ends a request at its time limit (its own 504, then a cancel that frees the
 * engine slot) and the worker's deadline only backs it up, for a gateway that
 * died.
 */
export const WORKER_DEADLINE_GRACE_MS = 1000;

/** How a request ended, for whoever settles its token reservation. */
export interface Ending {
  /** Completion tokens delivered (the worker's count when it finished). */
  completionTokens: number;
  /** Known when the request finished normally. */
  promptTokens: number | null;
}

interface Pending {
  rid: string;
  model: string;
  sink: Sink;
  /** The sequence number the next event must carry. */
  nextSeq: number;
  timer: NodeJS.Timeout;
  timeoutMessage: string;
  tokens: number;
  onEnd?: (e: Ending) => void;
  /** Set while the client is gone and the request waits out its resume grace. */
  grace: NodeJS.Timeout | null;
  /** This model's metric children. */
  series: ModelSeries;
  track: RequestTrack;
  /** Admission time (`performance.now()`, ms). */
  startedAt: number;
  /** When the last tokens event was relayed (ms); 0 until the first one with text. */
  lastTokensAt: number;
}

/** Where a detached request's events go: nowhere (its output log keeps them). */
const NULL_SINK: Sink = { open() {}, tokens() {}, done() {}, error() {} };

export interface SubmitOptions {
  rid: string;
  model: string;
  params: JobParams;
  sink: Sink;
  timeoutMs: number;
  /** The message of the 504 sent when the time limit passes. */
  timeoutMessage?: string;
  tenant?: string;
  priority?: Priority;
  /** Output log retention after the deadline, ms (0: the worker's default). */
  retainMs?: number;
  /** Called once when the request ends, however it ends (not when the enqueue fails). */
  onEnd?: (e: Ending) => void;
  /** The tenant's fair-share weight. Default 1. */
  weight?: number;
  /** When the request was admitted (`performance.now()`, ms): latencies are measured from it. Default: now. */
  startedAt?: number;
  /** Counts the request's outcome once (shared with the error handler). Default: a track of its own. */
  track?: RequestTrack;
  /** W3C trace context of the request's span (tracing on). */
  traceparent?: string;
}

/**
 * Tracks this gateway's open requests and routes each event from the reply
 * stream to its request's sink, by request id, in sequence order. A request
 * ends exactly once: by its terminal event, its deadline, the client leaving,
 * or the gateway closing.
 */
export class Dispatcher {
  private readonly pending = new Map<string, Pending>();

  constructor(
    private readonly queue: RequestQueue,
    private readonly cancellation: Cancellation,
    private readonly gatewayId: string,
    private readonly log: Logger,
    private readonly metrics: RequestMetrics,
  ) {}

  get size(): number {
    return this.pending.size;
  }

  /** Whether the request is still open (registered and not ended). */
  has(rid: string): boolean {
    return this.pending.has(rid);
  }

  /**
   * Registers the request, then enqueues it (registering first means no early
   * event can be missed). Rejects if the enqueue fails; the sink is untouched.
   */
  async submit(o: SubmitOptions): Promise<void> {
    const now = Date.now();
    const job: Job = {
      rid: o.rid,
      model: o.model,
      gw: this.gatewayId,
      params: o.params,
      enqueuedAt: now,
      deadline: now + o.timeoutMs + WORKER_DEADLINE_GRACE_MS,
      tenant: o.tenant ?? DEFAULT_TENANT,
      priority: o.priority ?? 'normal',
      retainMs: o.retainMs ?? 0,
      ...(o.traceparent ? { traceparent: o.traceparent } : {}),
    };
    const timer = setTimeout(() => this.expire(o.rid), o.timeoutMs);
    const timeoutMessage = o.timeoutMessage ?? 'The request did not finish within its time limit (REQUEST_TIMEOUT_MS).';
    this.pending.set(o.rid, {
      rid: o.rid,
      model: o.model,
      sink: o.sink,
      nextSeq: 0,
      timer,
      timeoutMessage,
      tokens: 0,
      onEnd: o.onEnd,
      grace: null,
      series: this.metrics.series(o.model),
      track: o.track ?? newTrack(o.model),
      startedAt: o.startedAt ?? performance.now(),
      lastTokensAt: 0,
    });
    this.metrics.setOpenRequests(this.pending.size);
    try {
      await this.queue.enqueue(job, o.weight ?? 1);
    } catch (err) {
      clearTimeout(timer);
      this.pending.delete(o.rid);
      this.metrics.setOpenRequests(this.pending.size);
      throw err;
    }
  }

  /** Routes one event from the reply stream. */
  onEvent(ev: ReplyEvent): void {
    const p = this.pending.get(ev.rid);
    if (!p) return; // finished, cancelled or another incarnation's request
    if (ev.seq < p.nextSeq) {
      this.log.debug({ rid: ev.rid, seq: ev.seq }, 'duplicate event dropped');
      return;
    }
    if (ev.seq > p.nextSeq) this.log.warn({ rid: ev.rid, expected: p.nextSeq, got: ev.seq }, 'event sequence gap');
    p.nextSeq = ev.seq + 1;
    switch (ev.type) {
      case 'tokens':
        p.tokens += ev.n;
        p.sink.tokens(ev.text, ev.n, ev.seq);
        this.observeTokens(p, ev.text, ev.n);
        return;
      case 'done':
        p.series.e2e.observe((performance.now() - p.startedAt) / 1000);
        if (ev.promptTokens > 0) p.series.promptTokens.inc(ev.promptTokens);
        this.settle(p, 'ok', { completionTokens: ev.completionTokens, promptTokens: ev.promptTokens });
        p.sink.done(ev);
        return;
      case 'error':
        this.settle(p, errorOutcome(ev.code));
        p.sink.error(ev.status, ev.code, ev.message, ev.seq);
        return;
    }
  }

  /**
   * Time to first token at the first event with text; after it, the gap since
   * the previous tokens event divided by the event's tokens (workers batch
   * tokens, so this is the mean gap within a batch), once per event.
   */
  private observeTokens(p: Pending, text: string, n: number): void {
    if (n > 0) p.series.generationTokens.inc(n);
    if (p.lastTokensAt === 0) {
      if (text.length === 0) return;
      p.lastTokensAt = performance.now();
      p.series.ttft.observe((p.lastTokensAt - p.startedAt) / 1000);
    } else if (n > 0) {
      const now = performance.now();
      p.series.itl.observe((now - p.lastTokensAt) / 1000 / n);
      p.lastTokensAt = now;
    }
  }

  /**
   * The client went away (or read too slowly, or its resume grace is over):
   * forget the request and tell the worker to stop. False if it had already
   * ended. `outcome` null: the request is counted elsewhere (its enqueue failed).
   */
  abandon(rid: string, outcome: RequestOutcome | null = 'cancelled'): boolean {
    const p = this.pending.get(rid);
    if (!p) return false;
    this.settle(p, outcome);
    this.cancel(p);
    return true;
  }

  /**
   * The client went away from a request that may be resumed (it carries an
   * Idempotency-Key): it goes on without a sink for `graceMs`, then for as long
   * as `followed()` says a client follows it through its output log, and is
   * cancelled after that. False if it had already ended.
   */
  detach(rid: string, graceMs: number, followed: () => Promise<boolean>): boolean {
    const p = this.pending.get(rid);
    if (!p) return false;
    p.sink = NULL_SINK;
    const check = async () => {
      if (this.pending.get(rid) !== p) return;
      const yes = await followed().catch(() => false);
      if (this.pending.get(rid) !== p) return;
      if (yes) p.grace = setTimeout(() => void check(), graceMs);
      else if (this.abandon(rid)) this.log.info({ rid }, 'resume grace over with no client; request cancelled');
    };
    p.grace = setTimeout(() => void check(), graceMs);
    return true;
  }

  /** Ends every open request with an error (gateway shutting down). */
  failAll(status: number, code: string, message: string): void {
    for (const p of [...this.pending.values()]) {
      this.settle(p, 'error');
      this.cancel(p);
      p.sink.error(status, code, message);
    }
  }

  private expire(rid: string): void {
    const p = this.pending.get(rid);
    if (!p) return;
    this.settle(p, 'timeout');
    this.cancel(p);
    p.sink.error(504, 'deadline_exceeded', p.timeoutMessage);
  }

  private settle(p: Pending, outcome: RequestOutcome | null, ending?: Ending): void {
    clearTimeout(p.timer);
    if (p.grace) clearTimeout(p.grace);
    this.pending.delete(p.rid);
    this.metrics.setOpenRequests(this.pending.size);
    if (outcome) this.metrics.ended(p.track, outcome, p.series);
    try {
      p.onEnd?.(ending ?? { completionTokens: p.tokens, promptTokens: null });
    } catch (err) {
      this.log.warn({ err, rid: p.rid }, 'request end hook failed');
    }
  }

  private cancel(p: Pending): void {
    this.cancellation.cancel(p.model, p.rid).catch((err: unknown) => {
      this.log.warn({ err, rid: p.rid }, 'could not publish cancellation');
    });
  }
}

/** How an error event from a worker counts: its time limit, a cancellation, or an error. */
function errorOutcome(code: string): RequestOutcome {
  if (code === 'deadline_exceeded') return 'timeout';
  if (code === 'cancelled') return 'cancelled';
  return 'error';
}
