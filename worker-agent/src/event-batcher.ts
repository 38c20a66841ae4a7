import {
  emitBatch,
  timeRedis,
  type BatchedEmit,
  type EmitMode,
  type Keys,
  type prom,
  type Redis,
  type ReplyEvent,
} from '@llmux/shared';
import type { EventWriter } from './request-stream.js';

interface Queued extends BatchedEmit {
  resolve(seq: number): void;
  reject(err: unknown): void;
}

/** Most events one script call carries; bounds how long Redis runs one call. */
const MAX_EVENTS_PER_CALL = 256;

/**
 * An EventWriter that sends the events of many requests together: every
 * event handed to it during one turn of the event loop (the Flusher flushes
 * all streams in one loop, and the first texts of requests arrive in the same
 * poll phase) leaves in one `emit-batch-1` call per gateway, instead of one
 * `emit-3` call per event. Each event's promise resolves with what `emit-3`
 * gives it. Events of one request keep their order: they go to the same
 * gateway's batch in the order given, and batches leave in order on one
 * connection. When a call fails, every event in it rejects; RequestStream
 * resends checked events, which Redis writes once whatever happened before.
 */
export class BatchingEventWriter implements EventWriter {
  private queued = new Map<string, Queued[]>();
  private scheduled: NodeJS.Immediate | null = null;

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly replyMaxLen: number,
    /** Where each call is timed, as op `emit`. */
    private readonly latency?: prom.Histogram<string>,
  ) {}

  emit(gatewayId: string, token: string, ttlMs: number, ev: ReplyEvent, mode: EmitMode = 'unchecked'): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      let list = this.queued.get(gatewayId);
      if (!list) this.queued.set(gatewayId, (list = []));
      list.push({ token, ttlMs, ev, mode, resolve, reject });
      this.scheduled ??= setImmediate(() => this.send());
    });
  }

  /** Sends everything queued now (also run by the scheduled turn). */
  send(): void {
    if (this.scheduled) clearImmediate(this.scheduled);
    this.scheduled = null;
    const queued = this.queued;
    this.queued = new Map();
    for (const [gw, list] of queued) {
      for (let i = 0; i < list.length; i += MAX_EVENTS_PER_CALL) this.call(gw, list.slice(i, i + MAX_EVENTS_PER_CALL));
    }
  }

  private call(gw: string, items: Queued[]): void {
    const run = () => emitBatch(this.redis, this.keys, this.replyMaxLen, gw, items);
    (this.latency ? timeRedis(this.latency, 'emit', run) : run()).then(
      (results) => {
        for (let i = 0; i < items.length; i++) {
          const r = results[i];
          if (r === undefined || Number.isNaN(r)) items[i]!.reject(new Error('emit-batch-1 answered fewer results than events'));
          else items[i]!.resolve(r);
        }
      },
      (err: unknown) => {
        for (const item of items) item.reject(err);
      },
    );
  }
}
