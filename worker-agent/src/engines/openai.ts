import { Agent as HttpAgent, request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import {
  AbortError,
  EngineError,
  EngineUnavailableError,
  PromptTooLongError,
  type FinishReason,
  type JobParams,
  type Logger,
} from '@llmux/shared';
import type { Engine, GenerateResult, Resume, TextSink } from './types.js';
import { joinMessages } from './prompt.js';
import {
  decodeStreamData,
  isContextLengthError,
  parseErrorBody,
  SseDecoder,
  type StreamEvent,
  type UpstreamError,
  type Usage,
} from './sse.js';

export interface OpenAIEngineOptions {
  /** The upstream's API root, e.g. `http://host:8000/v1`; `/chat/completions` and `/completions` are appended. */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <apiKey>` when set. */
  apiKey?: string;
  /** The upstream's model name, sent as `model`. */
  model: string;
  /** Which upstream API to call; default: chats to `chat`, completions to `completions`. */
  api?: 'chat' | 'completions';
  /**
   * On a chat resume, ask the upstream to continue the final (assistant)
   * message instead of starting a new turn after it: sends
   * `continue_final_message: true, add_generation_prompt: false` (vLLM).
   */
  continueFinalMessage?: boolean;
  /** Tokens of prompt plus completion one request may use (reported for the gateway's checks). */
  contextSize: number;
  /** Concurrent requests; the connection pool keeps this many connections alive. */
  capacity: number;
  /** Give up (EngineUnavailableError) when the upstream sends nothing for this long, in ms. Unset: no limit. */
  requestTimeoutMs?: number;
  logger?: Logger;
}

/** Network error codes that mean the upstream as a whole is unreachable or went away. */
const RETRY_ON_REUSED = new Set(['ECONNRESET', 'EPIPE']);
const MAX_ERROR_BODY = 64 * 1024;

/**
 * Any OpenAI-compatible server as an engine: llama.cpp server, SGLang, TGI,
 * Ollama, vLLM, or another llmux gateway. Streams every request
 * (`stream: true` with `stream_options.include_usage`) over keep-alive
 * connections and passes each content delta on as it arrives. Stop sequences
 * are sent upstream as `stop`; the upstream applies them.
 *
 * Errors: a refused or reset connection, a 5xx, 408 or 429, a stream cut
 * short, an error object in the stream with a 5xx code, and the idle timeout
 * reject with EngineUnavailableError; other 4xx with EngineError (or
 * PromptTooLongError when the upstream says the context is exceeded).
 */
export class OpenAIEngine implements Engine {
  readonly capacity: number;
  readonly contextSize: number;
  private readonly agent: HttpAgent;
  private readonly requestFn: typeof httpRequest;
  private readonly host: string;
  private readonly port: string;
  private readonly prefix: string;
  private readonly protocol: string;
  private readonly baseHeaders: Record<string, string>;

  constructor(private readonly opts: OpenAIEngineOptions) {
    this.capacity = opts.capacity;
    this.contextSize = opts.contextSize;
    const url = new URL(opts.baseUrl);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new EngineError(`baseUrl must be http or https: ${opts.baseUrl}`);
    }
    this.protocol = url.protocol;
    this.host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    this.port = url.port;
    this.prefix = url.pathname.replace(/\/+$/, '');
    // Enough sockets for every slot, plus room for sockets of aborted requests still closing.
    const agentOpts = {
      keepAlive: true,
      maxSockets: opts.capacity + 8,
      maxFreeSockets: opts.capacity,
      scheduling: 'lifo' as const,
    };
    this.agent = url.protocol === 'https:' ? new HttpsAgent(agentOpts) : new HttpAgent(agentOpts);
    this.requestFn = url.protocol === 'https:' ? httpsRequest : httpRequest;
    this.baseHeaders = { 'content-type': 'application/json', accept: 'text/event-stream' };
    if (opts.apiKey) this.baseHeaders.authorization = `Bearer ${opts.apiKey}`;
  }

  get baseUrl(): string {
    return this.opts.baseUrl;
  }

  /** Checks the upstream answers `GET /models`; only logs when it does not (it may come up later). */
  async start(): Promise<void> {
    const log = this.opts.logger;
    if (!log) return;
    try {
      const res = await fetch(`${this.opts.baseUrl.replace(/\/+$/, '')}/models`, {
        headers: this.opts.apiKey ? { authorization: `Bearer ${this.opts.apiKey}` } : {},
        signal: AbortSignal.timeout(5000),
      });
      const text = await res.text();
      if (!res.ok) log.warn({ baseUrl: this.opts.baseUrl, status: res.status }, 'upstream /models answered an error');
      else if (!text.includes(JSON.stringify(this.opts.model)))
        log.warn({ baseUrl: this.opts.baseUrl, model: this.opts.model }, 'upstream does not list the model');
    } catch (err) {
      log.warn({ baseUrl: this.opts.baseUrl, err: (err as Error).message }, 'upstream not reachable yet');
    }
  }

  generate(params: JobParams, onText: TextSink, signal: AbortSignal, resume?: Resume): Promise<GenerateResult> {
    if (signal.aborted) return Promise.reject(new AbortError());
    const resumed = resume && (resume.text.length > 0 || resume.tokens > 0) ? resume : undefined;
    const resumedTokens = resumed?.tokens ?? 0;
    const maxTokens = params.maxTokens - resumedTokens;
    if (maxTokens <= 0) return Promise.resolve({ finishReason: 'length', promptTokens: 0, completionTokens: 0 });
    const { path, body } = this.buildRequest(params, maxTokens, resumed);
    return this.stream(path, JSON.stringify(body), onText, signal, resumedTokens, true);
  }

  /** The request body: the OpenAI fields, plus vLLM's continuation fields on a chat resume when enabled. */
  buildRequest(params: JobParams, maxTokens: number, resume?: Resume): { path: string; body: Record<string, unknown> } {
    const body: Record<string, unknown> = {
      model: this.opts.model,
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: maxTokens,
    };
    let path: string;
    const api = this.opts.api ?? (params.kind === 'chat' ? 'chat' : 'completions');
    if (api === 'chat') {
      path = '/chat/completions';
      const messages: { role: string; content: string }[] =
        params.kind === 'chat'
          ? (params.messages ?? []).map((m) => ({ role: m.role, content: m.content }))
          : [{ role: 'user', content: params.prompt ?? '' }];
      if (resume) {
        messages.push({ role: 'assistant', content: resume.text });
        if (this.opts.continueFinalMessage) {
          body.continue_final_message = true;
          body.add_generation_prompt = false;
        }
      }
      body.messages = messages;
    } else {
      path = '/completions';
      const prompt = params.kind === 'completion' ? (params.prompt ?? '') : joinMessages(params.messages ?? []);
      body.prompt = resume ? prompt + resume.text : prompt;
    }
    if (params.temperature !== undefined) body.temperature = params.temperature;
    if (params.topP !== undefined) body.top_p = params.topP;
    if (params.seed !== undefined) body.seed = params.seed;
    if (params.presencePenalty !== undefined) body.presence_penalty = params.presencePenalty;
    if (params.frequencyPenalty !== undefined) body.frequency_penalty = params.frequencyPenalty;
    if (params.stop && params.stop.length > 0) body.stop = params.stop;
    return { path, body };
  }

  /**
   * One streamed request. `retry`: a request that fails on a reused
   * keep-alive connection before any response (the server closed it while
   * idle) is sent once more on a fresh one.
   */
  private stream(
    path: string,
    payload: string,
    onText: TextSink,
    signal: AbortSignal,
    resumedTokens: number,
    retry: boolean,
  ): Promise<GenerateResult> {
    return new Promise<GenerateResult>((resolve, reject) => {
      const decoder = new SseDecoder();
      let settled = false;
      let gotResponse = false;
      let delivered = 0;
      let finish: string | null = null;
      let usage: Usage | null = null;
      let sawDone = false;
      let idle: NodeJS.Timeout | null = null;

      const req: ClientRequest = this.requestFn({
        protocol: this.protocol,
        hostname: this.host,
        port: this.port,
        path: this.prefix + path,
        method: 'POST',
        agent: this.agent,
        headers: { ...this.baseHeaders, 'content-length': Buffer.byteLength(payload) },
      });

      const cleanup = () => {
        settled = true;
        signal.removeEventListener('abort', onAbort);
        if (idle) clearTimeout(idle);
      };
      const fail = (err: Error, destroy = true) => {
        if (settled) return;
        cleanup();
        if (destroy) req.destroy();
        reject(signal.aborted ? new AbortError() : err);
      };
      const onAbort = () => fail(new AbortError());
      signal.addEventListener('abort', onAbort, { once: true });
      if (this.opts.requestTimeoutMs) {
        const ms = this.opts.requestTimeoutMs;
        idle = setTimeout(() => fail(new EngineUnavailableError(`the upstream sent nothing for ${ms} ms`)), ms);
      }

      const onData = (data: string) => {
        if (settled) return;
        let ev: StreamEvent;
        try {
          ev = decodeStreamData(data);
        } catch {
          fail(new EngineError(`the upstream sent a stream chunk that is not JSON: ${data.slice(0, 200)}`));
          return;
        }
        if (ev.kind === 'done') {
          sawDone = true;
          return;
        }
        if (ev.kind === 'error') {
          fail(streamError(ev.error));
          return;
        }
        if (ev.text.length > 0) {
          // One token per content chunk, unless the chunk carries a running usage count.
          const n = ev.usage ? Math.max(0, ev.usage.completionTokens - delivered) : 1;
          delivered += n;
          try {
            onText(ev.text, n);
          } catch (err) {
            fail(err as Error);
            return;
          }
        }
        if (ev.finishReason !== null) finish = ev.finishReason;
        if (ev.usage) usage = ev.usage;
      };

      const complete = () => {
        if (settled) return;
        if (!sawDone && finish === null) {
          fail(new EngineUnavailableError('the upstream ended the stream before the completion finished'));
          return;
        }
        if (finish === 'abort' || finish === 'error') {
          fail(new EngineUnavailableError(`the upstream ended the completion with finish_reason ${finish}`));
          return;
        }
        const completionTokens = usage ? Math.max(usage.completionTokens, delivered) : delivered;
        if (completionTokens > delivered) {
          // Tokens that produced no text of their own (held back, or merged into one chunk).
          try {
            onText('', completionTokens - delivered);
          } catch (err) {
            fail(err as Error);
            return;
          }
        }
        cleanup();
        const finishReason: FinishReason = finish === 'length' ? 'length' : 'stop';
        const promptTokens = usage ? Math.max(0, usage.promptTokens - resumedTokens) : 0;
        resolve({ finishReason, promptTokens, completionTokens });
      };

      req.on('response', (res: IncomingMessage) => {
        gotResponse = true;
        idle?.refresh();
        res.setEncoding('utf8');
        if (res.statusCode !== 200) {
          let body = '';
          res.on('data', (s: string) => {
            if (body.length < MAX_ERROR_BODY) body += s;
          });
          res.on('end', () => fail(httpError(res.statusCode ?? 0, body), false));
          res.on('error', () => fail(httpError(res.statusCode ?? 0, body)));
          return;
        }
        res.on('data', (s: string) => {
          idle?.refresh();
          decoder.push(s, onData);
        });
        res.on('end', () => {
          decoder.end(onData);
          complete();
        });
        res.on('error', (err: NodeJS.ErrnoException) =>
          fail(new EngineUnavailableError(`the upstream connection broke mid-stream: ${err.code ?? err.message}`)),
        );
        res.on('close', () => {
          if (!res.complete) fail(new EngineUnavailableError('the upstream connection closed mid-stream'));
        });
      });

      req.on('error', (err: NodeJS.ErrnoException) => {
        if (settled) return;
        if (retry && !gotResponse && req.reusedSocket && err.code && RETRY_ON_REUSED.has(err.code) && !signal.aborted) {
          cleanup();
          this.stream(path, payload, onText, signal, resumedTokens, false).then(resolve, reject);
          return;
        }
        fail(new EngineUnavailableError(`cannot reach the upstream at ${this.opts.baseUrl}: ${err.code ?? err.message}`));
      });

      req.end(payload);
    });
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }
}

/** Maps an HTTP error answer to the engine's error classes. */
export function httpError(status: number, body: string): EngineError {
  const e = parseErrorBody(body);
  const msg = `the upstream answered ${status}: ${e.message}`;
  if (status >= 500 || status === 408 || status === 429) return new EngineUnavailableError(msg);
  if (isContextLengthError(e)) return new PromptTooLongError(e.message);
  return new EngineError(msg);
}

/** Maps an error object sent inside a stream (vLLM sends the HTTP status it would have used as `code`). */
export function streamError(e: UpstreamError): EngineError {
  const status = typeof e.code === 'number' ? e.code : null;
  if ((status !== null && status >= 500) || /internal|server_error|unavailable|overloaded/i.test(e.type ?? '')) {
    return new EngineUnavailableError(`the upstream failed mid-stream: ${e.message}`);
  }
  if (isContextLengthError(e)) return new PromptTooLongError(e.message);
  return new EngineError(`the upstream refused the request mid-stream: ${e.message}`);
}
