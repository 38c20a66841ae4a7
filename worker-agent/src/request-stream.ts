import type { FinishReason, ReplyEvent, ReplyWriter } from '@llmux/shared';

/**
 * The worker's side of one request's token stream: numbers events, batches
 * text, and sends through a shared Flusher so many requests' events leave in
 * one pipelined write.
 */
export class RequestStream {
  private seq = 0;
  private text = '';
  private tokens = 0;
  private sentFirst = false;
  private ended = false;
  /** The latest emit; Redis answers in order, so awaiting it covers every earlier one. */
  private last: Promise<unknown> = Promise.resolve();
  /** The first emit that failed, reported by the terminal event's promise. */
  private failure: unknown = null;

  constructor(
    readonly rid: string,
    private readonly gatewayId: string,
    private readonly writer: ReplyWriter,
    private readonly flusher: Flusher,
    private readonly maxBatchTokens: number,
  ) {}

  /** Adds generated text. The first text leaves at once (time to first token); later text is batched. */
  push(text: string, tokens: number): void {
    if (this.ended) return;
    this.text += text;
    this.tokens += tokens;
    if (!this.sentFirst || this.tokens >= this.maxBatchTokens) this.flush();
    else this.flusher.mark(this);
  }

  /** Sends buffered text now. */
  flush(): void {
    if (this.text.length === 0 && this.tokens === 0) return;
    this.sentFirst = true;
    this.send({ rid: this.rid, seq: this.seq++, type: 'tokens', text: this.text, n: this.tokens });
    this.text = '';
    this.tokens = 0;
  }

  /** Sends what is buffered and the `done` event; resolves when Redis has them. */
  done(finish: FinishReason, promptTokens: number, completionTokens: number): Promise<unknown> {
    return this.end({ rid: this.rid, seq: 0, type: 'done', finish, promptTokens, completionTokens });
  }

  /** Sends what is buffered and an `error` event; resolves when Redis has them. */
  fail(status: number, code: string, message: string): Promise<unknown> {
    return this.end({ rid: this.rid, seq: 0, type: 'error', status, code, message });
  }

  /** Drops buffered text without a terminal event (the client went away). */
  discard(): void {
    this.ended = true;
    this.flusher.unmark(this);
  }

  private end(ev: ReplyEvent): Promise<unknown> {
    if (!this.ended) {
      this.flush();
      this.flusher.unmark(this);
      this.ended = true;
      ev.seq = this.seq++;
      this.send(ev);
    }
    return this.last.then(() => {
      if (this.failure) throw this.failure;
    });
  }

  private send(ev: ReplyEvent): void {
    const p = this.writer.emit(this.gatewayId, ev);
    p.catch((err: unknown) => {
      this.failure ??= err;
    });
    this.last = p.catch(() => {});
  }
}

/**
 * One timer for all requests of a worker: every `intervalMs` it flushes the
 * streams that have buffered text, so a busy worker sends one batch of XADDs
 * per interval instead of one per token.
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
