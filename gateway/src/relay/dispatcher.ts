import {
  DEFAULT_TENANT,
  type Cancellation,
  type Job,
  type JobParams,
  type Logger,
  type Priority,
  type ReplyEvent,
  type RequestQueue,
} from '@llmux/shared';
import type { Sink } from './sinks.js';

/**
 * The worker's deadline is this much later than the gateway's, so the gateway
 * ends a request at its time limit (its own 504, then a cancel that frees the
 * engine slot) and the worker's deadline only backs it up, for a gateway that
 * died.
 */
export const WORKER_DEADLINE_GRACE_MS = 1000;

interface Pending {
  rid: string;
  model: string;
  sink: Sink;
  /** The sequence number the next event must carry. */
  nextSeq: number;
  timer: NodeJS.Timeout;
  timeoutMessage: string;
}

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
    };
    const timer = setTimeout(() => this.expire(o.rid), o.timeoutMs);
    const timeoutMessage = o.timeoutMessage ?? 'The request did not finish within its time limit (REQUEST_TIMEOUT_MS).';
    this.pending.set(o.rid, { rid: o.rid, model: o.model, sink: o.sink, nextSeq: 0, timer, timeoutMessage });
    try {
      await this.queue.enqueue(job);
    } catch (err) {
      clearTimeout(timer);
      this.pending.delete(o.rid);
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
        p.sink.tokens(ev.text, ev.n);
        return;
      case 'done':
        this.settle(p);
        p.sink.done(ev);
        return;
      case 'error':
        this.settle(p);
        p.sink.error(ev.status, ev.code, ev.message);
        return;
    }
  }

  /** The client went away: forget the request and tell the worker to stop. False if it had already ended. */
  abandon(rid: string): boolean {
    const p = this.pending.get(rid);
    if (!p) return false;
    this.settle(p);
    this.cancel(p);
    return true;
  }

  /** Ends every open request with an error (gateway shutting down). */
  failAll(status: number, code: string, message: string): void {
    for (const p of [...this.pending.values()]) {
      this.settle(p);
      this.cancel(p);
      p.sink.error(status, code, message);
    }
  }

  private expire(rid: string): void {
    const p = this.pending.get(rid);
    if (!p) return;
    this.settle(p);
    this.cancel(p);
    p.sink.error(504, 'deadline_exceeded', p.timeoutMessage);
  }

  private settle(p: Pending): void {
    clearTimeout(p.timer);
    this.pending.delete(p.rid);
  }

  private cancel(p: Pending): void {
    this.cancellation.cancel(p.model, p.rid).catch((err: unknown) => {
      this.log.warn({ err, rid: p.rid }, 'could not publish cancellation');
    });
  }
}
