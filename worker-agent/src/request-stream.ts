import { FENCED, LOST, type EmitMode, type FinishReason, type ReplyEvent } from '@llmux/shared';

/** Where a request's events go: the fenced request log (RequestLog) in production. */
export interface EventWriter {
  /**
   * Sends one event as `token`; resolves with its seq, or FENCED /
   * ALREADY_ENDED / LOST. With `checked`, `ev.seq` is the number the event
   * must get; with `restore`, the number to take the request back at.
   */
  emit(gatewayId: string, token: string, ttlMs: number, ev: ReplyEvent, mode?: EmitMode): Promise<number>;
}

export interface RequestStreamOptions {
  rid: string;
  gatewayId: string;
  /** This attempt's owner token. */
  token: string;
  /** TTL of the request's state and output log in Redis while it runs. */
  ttlMs: number;
  /** Their TTL from the terminal event on (how long a finished request can be replayed). */
  retainMs: number;
  writer: EventWriter;
  flusher: Flusher;
  maxBatchTokens: number;
  /** Called once if Redis says another attempt owns the request now. */
  onFenced?: () => void;
  /**
   * The sequence number of this attempt's first event (`begin`'s seq). When
   * given, every event is sent `checked` against the number it must get, so
   * events Redis lost (a failover) are noticed (`lost`, `onLost`) instead of
   * the stream going on with a hole the client cannot see.
   */
  seq?: number;
  /** Called once if Redis lost events of this attempt, or the request's state. */
  onLost?: () => void;
}

/**
 * The worker's side of one request's token stream: batches text and sends it
 * through a shared Flusher, so many requests' events leave in one pipelined
 * write. Sequence numbers are assigned by Redis (the emit script), which also
 * refuses events from an attempt that no longer owns the request.
 */
export class RequestStream {
  private text = '';
  private tokens = 0;
  private sentFirst = false;
  private ended = false;
  /** True once Redis refused an event because another attempt owns the request. */
  fenced = false;
  /** The latest emit; Redis answers in order, so awaiting it covers every earlier one. */
  private last: Promise<unknown> = Promise.resolve();
  /** The first emit that failed, reported by the terminal event's promise. */
  private failure: unknown = null;
  /** True once Redis answered LOST: events of this attempt are gone from Redis. */
  lost = false;
  /** The number the next event must get (checked mode), or null (unchecked). */
  private nextSeq: number | null;

  constructor(private readonly o: RequestStreamOptions) {
    this.nextSeq = o.seq ?? null;
  }

  /** Checks every later event against the number it must get, starting at `seq` (`begin`'s). */
  expectFrom(seq: number): void {
    this.nextSeq = seq;
  }

  /** Whether an event could not be written (an error, or lost): what the client saw may have a hole. */
  get broken(): boolean {
    return this.lost || this.failure !== null;
  }

  /**
   * Ends a broken stream (see `broken`) with an error event the gateway
   * delivers whatever it saw: the event takes the request back at the number
   * after every event this attempt sent. Resolves when Redis has it; rejects
   * when it could not be written either.
   */
  recover(status: number, code: string, message: string): Promise<void> {
    this.ended = true;
    this.o.flusher.unmark(this);
    const seq = this.nextSeq ?? 0;
    const ev: ReplyEvent = { rid: this.o.rid, seq, type: 'error', status, code, message };
    return this.o.writer.emit(this.o.gatewayId, this.o.token, this.o.retainMs, ev, 'restore').then((r) => {
      if (r === FENCED) throw new Error('another attempt owns the request');
    });
  }

  get rid(): string {
    return this.o.rid;
  }

  /** Adds generated text. The first text leaves at once (time to first token); later text is batched. */
  push(text: string, tokens: number): void {
    if (this.ended) return;
    this.text += text;
    this.tokens += tokens;
    if (!this.sentFirst || this.tokens >= this.o.maxBatchTokens) this.flush();
    else this.o.flusher.mark(this);
  }

  /** Sends buffered text now. */
  flush(): void {
    if (this.ended || (this.text.length === 0 && this.tokens === 0)) return;
    this.sentFirst = true;
    this.send({ rid: this.o.rid, seq: 0, type: 'tokens', text: this.text, n: this.tokens });
    this.text = '';
    this.tokens = 0;
  }

  /** Sends what is buffered and the `done` event; resolves when Redis has them. */
  done(finish: FinishReason, promptTokens: number, completionTokens: number): Promise<void> {
    return this.end({ rid: this.o.rid, seq: 0, type: 'done', finish, promptTokens, completionTokens });
  }

  /**
   * Sends what is buffered and an `error` event; resolves when Redis has them.
   * With `dropBuffered`, text not sent yet is dropped and only the error goes
   * out (nobody reads the reply stream any more: its gateway is gone).
   */
  fail(status: number, code: string, message: string, dropBuffered = false): Promise<void> {
    if (dropBuffered) {
      this.text = '';
      this.tokens = 0;
    }
    return this.end({ rid: this.o.rid, seq: 0, type: 'error', status, code, message });
  }

  /** Drops buffered text without a terminal event (the client went away, or the request is handed on). */
  discard(): void {
    this.ended = true;
    this.o.flusher.unmark(this);
  }

  /** Resolves when every event sent so far has been answered by Redis. */
  settled(): Promise<unknown> {
    return this.last;
  }

  private end(ev: ReplyEvent): Promise<void> {
    if (!this.ended) {
      this.flush();
      this.o.flusher.unmark(this);
      this.ended = true;
      this.send(ev);
    }
    return this.last.then(() => {
      if (this.failure) throw this.failure;
    });
  }

  /**
   * A checked event that failed (an error: the connection dropped, a cluster
   * slot has no primary yet) or came back LOST is sent again, which checking
   * makes safe: Redis writes it once whatever happened to the first try.
   * First the stream's earlier events settle, so the retry cannot overtake
   * one of them (a client resends commands after a reconnect in no fixed
   * order, and an event that overtook its predecessor finds Redis behind:
   * LOST). LOST again after that is final; errors are retried with a backoff
   * for up to RETRY_MS, then the last error stands.
   */
  private async retry(attempt: () => Promise<number>, before: Promise<unknown>, err: unknown): Promise<number> {
    await before;
    const until = Date.now() + RETRY_MS;
    for (let i = 0; ; i++) {
      if (err !== null) await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** i, 1000)));
      try {
        return await attempt();
      } catch (e) {
        err = e;
        if (Date.now() > until) throw e;
      }
    }
  }

  private send(ev: ReplyEvent): void {
    const ttl = ev.type === 'tokens' ? this.o.ttlMs : this.o.retainMs;
    let p: Promise<void>;
    const then = (seq: number) => {
      if (seq === FENCED && !this.fenced) {
        this.fenced = true;
        this.ended = true;
        this.o.flusher.unmark(this);
        this.o.onFenced?.();
      } else if (seq === LOST && !this.lost) {
        this.lost = true;
        this.ended = true;
        this.o.flusher.unmark(this);
        this.o.onLost?.();
      }
    };
    if (this.nextSeq === null) p = this.o.writer.emit(this.o.gatewayId, this.o.token, ttl, ev).then(then);
    else {
      ev.seq = this.nextSeq++; // a fresh event object, built by flush() or end()
      const before = this.last;
      const attempt = () => this.o.writer.emit(this.o.gatewayId, this.o.token, ttl, ev, 'checked');
      p = attempt()
        .then(
          (seq) => (seq === LOST ? this.retry(attempt, before, null) : seq),
          (err: unknown) => this.retry(attempt, before, err),
        )
        .then(then);
    }
    p.catch((err: unknown) => {
      this.failure ??= err;
    });
    this.last = p.catch(() => {});
  }
}

/** How long a checked event is retried after an error (Redis failing over) before the stream counts as broken. */
const RETRY_MS = 15_000;

/**
 * One timer for all requests of a worker: every `intervalMs` it flushes the
 * streams that have buffered text, so a busy worker sends one batch of
 * events per interval instead of one per token.
 */
export class Flusher {
  private readonly dirty = new Set<RequestStream>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly intervalMs: number) {}

  mark(s: RequestStream): void {
    this.dirty.add(s);
    if (!this.timer) this.timer = setTimeout(() => this.flushAll(), this.intervalMs);
  }

  unmark(s: RequestStream): void {
    this.dirty.delete(s);
  }

  flushAll(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const s of this.dirty) s.flush();
    this.dirty.clear();
  }

  close(): void {
    this.flushAll();
  }
}
