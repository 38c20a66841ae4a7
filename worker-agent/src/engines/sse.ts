/**
 * The wire format of OpenAI-compatible streaming responses (OpenAI, vLLM,
 * llama.cpp server, SGLang, TGI's Messages API, Ollama, an llmux gateway):
 * server-sent events whose `data:` payloads are JSON chunks, ended by
 * `data: [DONE]`.
 *
 * Shapes handled, as vLLM documents them (vLLM docs: "OpenAI-Compatible
 * Server"):
 * - a chat chunk: `{"object":"chat.completion.chunk","choices":[{"index":0,
 *   "delta":{"role":"assistant","content":""},"finish_reason":null}]}`, then
 *   one chunk per content delta, the last with `finish_reason` set;
 * - a completions chunk: `{"object":"text_completion","choices":[{"index":0,
 *   "text":" the","finish_reason":null}]}`;
 * - the usage chunk sent when `stream_options.include_usage` is set:
 *   `{"choices":[],"usage":{"prompt_tokens":..,"completion_tokens":..,"total_tokens":..}}`;
 * - an error in the stream: `{"error":{"message","type","param","code"}}`, or
 *   the older top-level `{"object":"error","message","type","param","code"}`.
 */

/**
 * Splits an SSE byte stream (already decoded to text) into event payloads.
 * Feed it text as it arrives, cut anywhere: an event split across network
 * reads is held until its blank line arrives. Only `data:` fields matter
 * here; comments, `event:`, `id:` and `retry:` lines are skipped. Lines may
 * end in `\n` or `\r\n`.
 */
export class SseDecoder {
  private buf = '';
  /** Data of the event being read; null when it has no data line yet. */
  private data: string | null = null;

  /** Feeds text; calls `onData` with the data of each complete event. */
  push(text: string, onData: (data: string) => void): void {
    const buf = this.buf.length > 0 ? this.buf + text : text;
    let start = 0;
    for (;;) {
      const nl = buf.indexOf('\n', start);
      if (nl < 0) break;
      let end = nl;
      if (end > start && buf.charCodeAt(end - 1) === 13 /* \r */) end--;
      if (end === start) {
        // A blank line ends the event.
        if (this.data !== null) {
          const d = this.data;
          this.data = null;
          onData(d);
        }
      } else if (buf.startsWith('data:', start)) {
        let s = start + 5;
        if (buf.charCodeAt(s) === 32 /* space */) s++;
        const line = buf.slice(s, end);
        this.data = this.data === null ? line : this.data + '\n' + line;
      }
      start = nl + 1;
    }
    this.buf = start === 0 ? buf : buf.slice(start);
  }

  /**
   * At the end of the body: an event whose blank line never came is
   * delivered anyway (some servers end the body right after the last data
   * line).
   */
  end(onData: (data: string) => void): void {
    if (this.buf.length > 0) this.push('\n\n', onData);
    else if (this.data !== null) this.push('\n', onData);
    this.buf = '';
    this.data = null;
  }
}

/** Token counts an upstream reports. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
}

/** An error an upstream reported, in an HTTP error body or inside a stream. */
export interface UpstreamError {
  message: string;
  type: string | null;
  /** `code` as sent: vLLM sends the HTTP status as a number, OpenAI a string such as `context_length_exceeded`. */
  code: string | number | null;
  param: string | null;
}

/** One decoded stream event. */
export type StreamEvent =
  | { kind: 'done' }
  | { kind: 'error'; error: UpstreamError }
  | {
      kind: 'chunk';
      /** Text of the first choice's delta (chat) or text (completions); '' when none. */
      text: string;
      finishReason: string | null;
      usage: Usage | null;
    };

interface RawChunk {
  object?: unknown;
  error?: unknown;
  message?: unknown;
  choices?: { delta?: { content?: unknown } | null; text?: unknown; finish_reason?: unknown }[] | null;
  usage?: { prompt_tokens?: unknown; completion_tokens?: unknown } | null;
}

const DONE: StreamEvent = { kind: 'done' };

/**
 * Decodes the data of one SSE event of an OpenAI-compatible stream: one
 * JSON.parse of the chunk, nothing more. Throws SyntaxError on data that is
 * not JSON.
 */
export function decodeStreamData(data: string): StreamEvent {
  if (data === '[DONE]') return DONE;
  const c = JSON.parse(data) as RawChunk;
  if (c === null || typeof c !== 'object') throw new SyntaxError('stream chunk is not a JSON object');
  if (c.error !== undefined && c.error !== null) return { kind: 'error', error: toUpstreamError(c) };
  if (c.object === 'error') return { kind: 'error', error: toUpstreamError(c) };
  const choice = c.choices?.[0];
  let text = '';
  let finishReason: string | null = null;
  if (choice) {
    const t = choice.delta ? choice.delta.content : choice.text;
    if (typeof t === 'string') text = t;
    if (typeof choice.finish_reason === 'string') finishReason = choice.finish_reason;
  }
  let usage: Usage | null = null;
  const u = c.usage;
  if (u && typeof u.completion_tokens === 'number') {
    usage = {
      promptTokens: typeof u.prompt_tokens === 'number' ? u.prompt_tokens : 0,
      completionTokens: u.completion_tokens,
    };
  }
  return { kind: 'chunk', text, finishReason, usage };
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

/**
 * Reads an error object in any of the shapes OpenAI-compatible servers use:
 * `{"error":{"message",...}}` (OpenAI, newer vLLM, llama.cpp server),
 * `{"object":"error","message",...}` (older vLLM), `{"error":"text"}` (TGI),
 * `{"detail":...}` (FastAPI defaults).
 */
export function toUpstreamError(body: unknown): UpstreamError {
  const b = (body ?? {}) as Record<string, unknown>;
  const inner = b.error;
  const e = inner !== null && typeof inner === 'object' ? (inner as Record<string, unknown>) : b;
  let message = str(e.message) ?? str(inner) ?? null;
  if (message === null && b.detail !== undefined) message = typeof b.detail === 'string' ? b.detail : JSON.stringify(b.detail);
  const code = typeof e.code === 'string' || typeof e.code === 'number' ? e.code : null;
  return {
    message: message ?? JSON.stringify(body),
    type: str(e.type) ?? str(b.error_type),
    code,
    param: str(e.param),
  };
}

/** Parses an HTTP error body; text that is not JSON becomes the message. */
export function parseErrorBody(text: string): UpstreamError {
  try {
    return toUpstreamError(JSON.parse(text));
  } catch {
    return { message: text.trim().slice(0, 2000) || '(empty body)', type: null, code: null, param: null };
  }
}

const CONTEXT_RE = /context[ _-]?(length|window|size)|maximum input length|prompt is too long|too many tokens/i;

/**
 * Whether an upstream error says the prompt (plus max_tokens) does not fit
 * the model's context. OpenAI and newer vLLM send code
 * `context_length_exceeded`; llama.cpp server type `exceed_context_size_error`;
 * older vLLM only says so in the message ("This model's maximum context length
 * is N tokens. However, you requested M tokens ...", or "... the model's
 * context length is only N tokens ...").
 */
export function isContextLengthError(e: UpstreamError): boolean {
  if (e.code === 'context_length_exceeded' || e.type === 'exceed_context_size_error') return true;
  return CONTEXT_RE.test(e.message);
}
