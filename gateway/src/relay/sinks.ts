import type { ServerResponse } from 'node:http';
import type { DoneEvent, FinishReason } from '@llmux/shared';
import { ApiError, type OpenAIErrorType } from '@llmux/shared';

/**
 * Where a request's events go: one implementation per response format. The
 * per-token path is plain string concatenation and one `res.write` per event;
 * JSON.stringify runs only on the text itself.
 */
export interface Sink {
  /** Called once when the request is admitted (enqueued), or when a resumed stream starts. */
  open(): void;
  /** `seq` is the event's sequence number (SSE event id `seq + 1`). */
  tokens(text: string, n: number, seq: number): void;
  /** `fromPart` skips the first parts of the end (a client resuming inside it). */
  done(ev: DoneEvent, fromPart?: number): void;
  /** `seq` is absent for errors the gateway itself raises (time limit, shutdown). */
  error(status: number, code: string, message: string, seq?: number): void;
}

export interface SinkContext {
  res: ServerResponse;
  /** Completion id (`chatcmpl-…` / `cmpl-…`), also the request id. */
  id: string;
  model: string;
  /** Unix seconds. */
  created: number;
  includeUsage: boolean;
  /** Response bytes Node may hold for a client that does not read; past it `onOverflow` runs. */
  maxBufferedBytes: number;
  /** The client reads too slowly: cancel the request and drop the connection. */
  onOverflow(buffered: number): void;
  /** A resumed stream: no opening chunk (the client has it). */
  resumed?: boolean;
}

/**
 * Writes a chunk, respecting the socket's backpressure: once `res.write`
 * reports a full buffer, the bytes Node holds for this response (its own
 * buffer and the socket's) may grow to `maxBufferedBytes`, not further.
 */
function writeBounded(c: SinkContext, chunk: string): void {
  if (c.res.write(chunk)) return;
  const buffered = c.res.writableLength;
  if (buffered > c.maxBufferedBytes) c.onOverflow(buffered);
}

const usageJson = (ev: DoneEvent) =>
  `{"prompt_tokens":${ev.promptTokens},"completion_tokens":${ev.completionTokens},"total_tokens":${ev.promptTokens + ev.completionTokens}}`;

export function errorType(status: number): OpenAIErrorType {
  if (status === 429) return 'rate_limit_error';
  if (status === 503) return 'service_unavailable_error';
  if (status === 504) return 'timeout_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}

/** Writes an OpenAI error body with a status (before any header was sent). */
export function sendError(res: ServerResponse, err: ApiError, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify(err.toBody());
  res.writeHead(err.status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    ...headers,
  });
  res.end(body);
}

const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
};

/**
 * Server-sent events with an `id` on each: `0` for the opening chunk, `seq + 1`
 * for the chunk of event `seq`, and `<seq + 1>.<k>` for the k-th extra part of
 * the end (usage chunk, `[DONE]`). A client that reconnects with the last id it
 * saw (`Last-Event-ID`) gets exactly the events after it.
 */
abstract class SseSink implements Sink {
  private opened = false;
  protected readonly prefix: string;
  protected readonly suffix: string;
  constructor(protected readonly c: SinkContext) {
    const usage = c.includeUsage ? ',"usage":null' : '';
    [this.prefix, this.suffix] = this.frame(usage);
  }

  /** The text before and after a chunk's JSON-encoded content. */
  protected abstract frame(usage: string): [string, string];
  protected abstract finalChunk(finish: FinishReason): string;
  protected abstract usageChunk(ev: DoneEvent): string;
  protected abstract firstChunk(): string | null;

  open(): void {
    this.opened = true;
    this.c.res.writeHead(200, { ...SSE_HEADERS, 'x-request-id': this.c.id });
    this.c.res.socket?.setNoDelay(true);
    const first = this.c.resumed ? null : this.firstChunk();
    this.c.res.write(first ? 'id: 0\n' + first : ': ok\n\n');
  }

  tokens(text: string, _n: number, seq: number): void {
    if (text) writeBounded(this.c, `id: ${seq + 1}\n${this.prefix}${JSON.stringify(text)}${this.suffix}`);
  }

  done(ev: DoneEvent, fromPart = 0): void {
    const parts = [this.finalChunk(ev.finish)];
    if (this.c.includeUsage) parts.push(this.usageChunk(ev));
    parts.push('data: [DONE]\n\n');
    const id = ev.seq + 1;
    let out = '';
    for (let k = fromPart; k < parts.length; k++) out += `id: ${k === 0 ? id : `${id}.${k}`}\n${parts[k]}`;
    this.c.res.end(out);
  }

  error(status: number, code: string, message: string, seq?: number): void {
    const err = new ApiError(status, message, errorType(status), code);
    // Ended before it was opened (a time limit shorter than the enqueue): a plain error response.
    if (!this.opened) sendError(this.c.res, err, { 'x-request-id': this.c.id });
    else this.c.res.end(`${seq === undefined ? '' : `id: ${seq + 1}\n`}data: ${JSON.stringify(err.toBody())}\n\n`);
  }
}

/** `chat.completion.chunk` events, framed exactly as OpenAI does. */
export class ChatSseSink extends SseSink {
  private head(): string {
    return `{"id":"${this.c.id}","object":"chat.completion.chunk","created":${this.c.created},"model":${JSON.stringify(this.c.model)},"system_fingerprint":null,"choices":[`;
  }
  protected frame(usage: string): [string, string] {
    return [`data: ${this.head()}{"index":0,"delta":{"content":`, `},"logprobs":null,"finish_reason":null}]${usage}}\n\n`];
  }
  protected firstChunk(): string {
    const usage = this.c.includeUsage ? ',"usage":null' : '';
    return `data: ${this.head()}{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]${usage}}\n\n`;
  }
  protected finalChunk(finish: FinishReason): string {
    const usage = this.c.includeUsage ? ',"usage":null' : '';
    return `data: ${this.head()}{"index":0,"delta":{},"logprobs":null,"finish_reason":"${finish}"}]${usage}}\n\n`;
  }
  protected usageChunk(ev: DoneEvent): string {
    return `data: ${this.head()}],"usage":${usageJson(ev)}}\n\n`;
  }
}

/** `text_completion` events of the legacy completions API. */
export class CompletionSseSink extends SseSink {
  private head(): string {
    return `{"id":"${this.c.id}","object":"text_completion","created":${this.c.created},"model":${JSON.stringify(this.c.model)},"system_fingerprint":null,"choices":[`;
  }
  protected frame(usage: string): [string, string] {
    return [`data: ${this.head()}{"index":0,"text":`, `,"logprobs":null,"finish_reason":null}]${usage}}\n\n`];
  }
  protected firstChunk(): null {
    return null;
  }
  protected finalChunk(finish: FinishReason): string {
    const usage = this.c.includeUsage ? ',"usage":null' : '';
    return `data: ${this.head()}{"index":0,"text":"","logprobs":null,"finish_reason":"${finish}"}]${usage}}\n\n`;
  }
  protected usageChunk(ev: DoneEvent): string {
    return `data: ${this.head()}],"usage":${usageJson(ev)}}\n\n`;
  }
}

/** Non-streaming: collects the text and answers with one JSON body. */
export class JsonSink implements Sink {
  private text = '';
  constructor(
    private readonly c: SinkContext,
    private readonly kind: 'chat' | 'completion',
  ) {}

  open(): void {}

  tokens(text: string): void {
    this.text += text;
  }

  done(ev: DoneEvent): void {
    const usage = {
      prompt_tokens: ev.promptTokens,
      completion_tokens: ev.completionTokens,
      total_tokens: ev.promptTokens + ev.completionTokens,
    };
    const body =
      this.kind === 'chat'
        ? {
            id: this.c.id,
            object: 'chat.completion',
            created: this.c.created,
            model: this.c.model,
            system_fingerprint: null,
            choices: [
              {
                index: 0,
                message: { role: 'assistant', content: this.text, refusal: null },
                logprobs: null,
                finish_reason: ev.finish,
              },
            ],
            usage,
          }
        : {
            id: this.c.id,
            object: 'text_completion',
            created: this.c.created,
            model: this.c.model,
            system_fingerprint: null,
            choices: [{ index: 0, text: this.text, logprobs: null, finish_reason: ev.finish }],
            usage,
          };
    const json = JSON.stringify(body);
    this.c.res.writeHead(200, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(json),
      'x-request-id': this.c.id,
    });
    this.c.res.end(json);
  }

  error(status: number, code: string, message: string): void {
    sendError(this.c.res, new ApiError(status, message, errorType(status), code), { 'x-request-id': this.c.id });
  }
}

/**
 * The plain route: text as HTTP/1.1 chunked body. Headers wait for the first
 * token so an error before it still gets a real status; an error after it
 * cuts the connection, which chunked clients (curl) report as truncated.
 */
export class PlainTextSink implements Sink {
  private started = false;
  constructor(private readonly c: SinkContext) {}

  open(): void {}

  private start(): void {
    if (this.started) return;
    this.started = true;
    this.c.res.writeHead(200, {
      'content-type': 'text/plain; charset=utf-8',
      'cache-control': 'no-cache',
      'x-accel-buffering': 'no',
      'x-request-id': this.c.id,
    });
    this.c.res.socket?.setNoDelay(true);
  }

  tokens(text: string): void {
    if (!text) return;
    this.start();
    writeBounded(this.c, text);
  }

  done(): void {
    this.start();
    this.c.res.end();
  }

  error(status: number, code: string, message: string): void {
    if (this.started) {
      this.c.res.destroy();
      return;
    }
    sendError(this.c.res, new ApiError(status, message, errorType(status), code), { 'x-request-id': this.c.id });
  }
}
