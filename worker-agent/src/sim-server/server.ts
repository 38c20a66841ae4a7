import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { simToken } from '../engines/sim.js';
import { StopMatcher } from '../engines/stop.js';
import { DEFAULT_SIM_SERVER_OPTIONS, type SimServerOptions } from './options.js';

/**
 * An OpenAI-compatible server that produces the sim engine's story with set
 * timing, and reports vLLM's load gauges on /metrics. It is the upstream the
 * `openai` and `vllm` engines are tested against, a stand-in for
 * `vllm serve`, and the "direct" baseline of benchmarks, so its per-token
 * path is one string concatenation and one `res.write`.
 *
 * Wire formats follow vLLM's (vLLM docs: "OpenAI-Compatible Server",
 * "Production Metrics"): chat chunks `chat.completion.chunk` with a first
 * `role` delta, completions chunks `text_completion`, a final chunk with
 * `finish_reason`, a usage chunk with `choices: []` when
 * `stream_options.include_usage` is set, then `data: [DONE]`; `GET /health`
 * answers 200 with an empty body.
 *
 * The story continues where the prompt leaves it: when the prompt (for a
 * chat, only with `continue_final_message`) ends with the story's first k
 * tokens, generation starts at token k. That is what makes a resumed request
 * continue the same text.
 */

const MAX_BODY = 16 * 1024 * 1024;

/** A request, from validation to its end. */
interface Gen {
  res: ServerResponse;
  chat: boolean;
  stream: boolean;
  includeUsage: boolean;
  /** Index in the story of the first token to produce. */
  start: number;
  /** Tokens this request may produce. */
  limit: number;
  /** Whether reaching `limit` is the story's end (stop) rather than max_tokens (length). */
  limitIsEnd: boolean;
  promptTokens: number;
  matcher: StopMatcher | null;
  /** Tokens produced. */
  n: number;
  text: string;
  id: string;
  created: number;
  /** Stream chunk framing around a JSON-encoded text. */
  pre: string;
  post: string;
  started: boolean;
  closed: boolean;
  timer: NodeJS.Timeout | NodeJS.Immediate | null;
}

/** JSON encodings of the story's tokens, computed once. */
const tokenJson = new Map<string, string>();
function jsonOf(text: string): string {
  let j = tokenJson.get(text);
  if (j === undefined) {
    j = JSON.stringify(text);
    if (tokenJson.size < 64) tokenJson.set(text, j);
  }
  return j;
}

/** Words of a text, the sim's prompt-token count. */
function words(text: string): number {
  let n = 0;
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const space = c === 32 || (c >= 9 && c <= 13) || c === 160;
    if (!space && !inWord) n++;
    inWord = !space;
  }
  return n;
}

/** The largest k such that `text` ends with the story's first k tokens (0 when none). */
export function storyOffset(text: string): number {
  let best = 0;
  let prefix = '';
  for (let k = 1; prefix.length < text.length; k++) {
    const last = simToken(k - 1);
    prefix += last;
    if (prefix.length > text.length) break;
    // Cheap test first: the prompt must end with the prefix's last token.
    if (text.endsWith(last) && text.endsWith(prefix)) best = k;
  }
  return best;
}

class BadRequest extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

interface ChatMessageIn {
  role: string;
  content: string;
}

function messageText(m: unknown, i: number): ChatMessageIn {
  const o = m as { role?: unknown; content?: unknown } | null;
  if (!o || typeof o !== 'object' || typeof o.role !== 'string') {
    throw new BadRequest(400, `messages[${i}] needs a role`, 'messages');
  }
  if (typeof o.content === 'string') return { role: o.role, content: o.content };
  if (o.content === null || o.content === undefined) return { role: o.role, content: '' };
  if (Array.isArray(o.content)) {
    let text = '';
    for (const p of o.content as { type?: unknown; text?: unknown }[]) {
      if (p?.type !== 'text' || typeof p.text !== 'string') {
        throw new BadRequest(400, `messages[${i}].content: only text parts are supported`, 'messages');
      }
      text += p.text;
    }
    return { role: o.role, content: text };
  }
  throw new BadRequest(400, `messages[${i}].content must be a string or a list of text parts`, 'messages');
}

/** What `logRequests` reports: connections, admissions and request ends. */
export type SimServerEvent =
  | { event: 'connection' }
  | { event: 'admit'; id: string; state: 'running' | 'waiting' }
  | { event: 'end'; id: string; finish: 'stop' | 'length' | 'abort'; tokens: number };

export class SimServer {
  readonly opts: SimServerOptions;
  readonly server: Server;
  /** Requests generating (admitted, in prefill or decode). */
  running = 0;
  /** Requests waiting for a slot. */
  waiting = 0;
  private readonly queue: Gen[] = [];
  private qHead = 0;
  private promptTokensTotal = 0;
  private generationTokensTotal = 0;
  private readonly finished = { stop: 0, length: 0, abort: 0 };
  private readonly modelName: string;
  private readonly created = Math.floor(Date.now() / 1000);

  /** `onEvent` receives request events when `logRequests` is on. */
  constructor(
    opts: Partial<SimServerOptions> = {},
    private readonly onEvent: (e: SimServerEvent) => void = (e) => process.stdout.write(`${JSON.stringify(e)}\n`),
  ) {
    this.opts = { ...DEFAULT_SIM_SERVER_OPTIONS, ...opts };
    this.modelName = this.opts.model ?? 'sim';
    this.server = createServer({ noDelay: true, keepAliveTimeout: 65_000, headersTimeout: 66_000 }, (req, res) =>
      this.route(req, res),
    );
    if (this.opts.logRequests) this.server.on('connection', () => this.onEvent({ event: 'connection' }));
  }

  /** Listens; resolves with the bound address. */
  listen(): Promise<{ host: string; port: number; url: string }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port, this.opts.host, () => {
        this.server.off('error', reject);
        const a = this.server.address() as AddressInfo;
        const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
        resolve({ host: a.address, port: a.port, url: `http://${host}:${a.port}` });
      });
    });
  }

  /** Stops listening and drops every connection. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private route(req: IncomingMessage, res: ServerResponse): void {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q >= 0 ? url.slice(0, q) : url;
    if (req.method === 'POST' && (path === '/v1/chat/completions' || path === '/v1/completions')) {
      this.readBody(req, res, (body) => this.generate(body, path === '/v1/chat/completions', res));
      return;
    }
    if (req.method === 'GET' && path === '/health') {
      res.writeHead(200, { 'content-length': '0' }).end();
      return;
    }
    if (req.method === 'GET' && path === '/metrics') {
      const text = this.metricsText();
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(text);
      return;
    }
    if (req.method === 'GET' && (path === '/v1/models' || path.startsWith('/v1/models/'))) {
      const card = {
        id: this.modelName,
        object: 'model',
        created: this.created,
        owned_by: this.opts.flavor === 'vllm' ? 'vllm' : 'llmux-sim',
        root: this.modelName,
        parent: null,
        max_model_len: this.opts.contextSize,
      };
      if (path === '/v1/models') {
        this.json(res, 200, { object: 'list', data: [card] });
      } else if (decodeURIComponent(path.slice('/v1/models/'.length)) === this.modelName) {
        this.json(res, 200, card);
      } else {
        this.error(res, new BadRequest(404, `The model \`${path.slice(11)}\` does not exist.`, 'model', 'model_not_found'));
      }
      return;
    }
    req.resume();
    this.error(res, new BadRequest(404, `Unknown route ${req.method} ${path}`, null, 'unknown_url'));
  }

  private readBody(req: IncomingMessage, res: ServerResponse, then: (body: unknown) => void): void {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= MAX_BODY) chunks.push(c);
    });
    req.on('end', () => {
      if (size > MAX_BODY) return this.error(res, new BadRequest(413, 'Request body too large'));
      let body: unknown;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch (err) {
        return this.error(res, new BadRequest(400, `Invalid JSON body: ${(err as Error).message}`));
      }
      try {
        then(body);
      } catch (err) {
        if (err instanceof BadRequest) this.error(res, err);
        else this.error(res, new BadRequest(500, (err as Error).message));
      }
    });
  }

  /** Validates a request, then admits it or queues it. Throws BadRequest. */
  private generate(raw: unknown, chat: boolean, res: ServerResponse): void {
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
      throw new BadRequest(400, 'The body must be a JSON object');
    const b = raw as Record<string, unknown>;
    if (this.opts.model !== null && b.model !== undefined && b.model !== this.opts.model) {
      throw new BadRequest(404, `The model \`${String(b.model)}\` does not exist.`, 'model', 'model_not_found');
    }
    let text: string;
    let canContinue: boolean;
    if (chat) {
      if (!Array.isArray(b.messages) || b.messages.length === 0) {
        throw new BadRequest(400, 'messages must be a non-empty list', 'messages');
      }
      const msgs = b.messages.map(messageText);
      const cont = b.continue_final_message === true;
      const addGen = b.add_generation_prompt !== false;
      if (cont && addGen) {
        throw new BadRequest(400, 'Cannot set both `continue_final_message` and `add_generation_prompt` to True.');
      }
      if (cont && msgs[msgs.length - 1]!.role !== 'assistant') {
        throw new BadRequest(400, '`continue_final_message` needs the last message to be from the assistant', 'messages');
      }
      text = msgs
        .map((m) => m.content)
        .filter((c) => c.length > 0)
        .join('\n\n');
      canContinue = cont;
    } else {
      let p = b.prompt;
      if (Array.isArray(p) && p.length === 1) p = p[0];
      if (typeof p !== 'string') throw new BadRequest(400, 'prompt must be a string', 'prompt');
      text = p;
      canContinue = true;
    }
    const start = canContinue ? storyOffset(text) : 0;
    let promptTokens = start;
    if (start > 0) {
      let prefixLen = 0;
      for (let k = 0; k < start; k++) prefixLen += simToken(k).length;
      promptTokens += words(text.slice(0, text.length - prefixLen));
    } else {
      promptTokens = words(text);
    }

    const mt = b.max_tokens ?? (chat ? b.max_completion_tokens : undefined);
    let maxTokens: number;
    if (mt === undefined || mt === null) {
      maxTokens = chat ? Math.max(1, this.opts.contextSize - promptTokens) : 16;
    } else if (typeof mt !== 'number' || !Number.isInteger(mt) || mt < 1) {
      throw new BadRequest(400, 'max_tokens must be an integer of at least 1', 'max_tokens');
    } else {
      maxTokens = mt;
    }
    if (promptTokens + maxTokens > this.opts.contextSize) {
      throw new BadRequest(
        400,
        `This model's maximum context length is ${this.opts.contextSize} tokens. However, you requested ` +
          `${promptTokens + maxTokens} tokens (${promptTokens} in the messages, ${maxTokens} in the completion). ` +
          'Please reduce the length of the messages or completion.',
        chat ? 'messages' : 'prompt',
        'context_length_exceeded',
      );
    }
    let stops: string[] = [];
    if (typeof b.stop === 'string') stops = [b.stop];
    else if (Array.isArray(b.stop) && b.stop.every((s) => typeof s === 'string')) stops = b.stop as string[];
    else if (b.stop !== undefined && b.stop !== null)
      throw new BadRequest(400, 'stop must be a string or a list of strings', 'stop');
    stops = stops.filter((s) => s.length > 0);
    if (b.stream !== undefined && b.stream !== null && typeof b.stream !== 'boolean') {
      throw new BadRequest(400, 'stream must be a boolean', 'stream');
    }
    const stream = b.stream === true;
    const so = b.stream_options as { include_usage?: unknown } | null | undefined;
    const includeUsage = stream && so !== null && typeof so === 'object' && so.include_usage === true;

    const storyLeft = this.opts.outputTokens === null ? Infinity : Math.max(0, this.opts.outputTokens - start);
    const limit = Math.min(maxTokens, storyLeft);
    const id = (chat ? 'chatcmpl-' : 'cmpl-') + randomUUID().replaceAll('-', '');
    const created = Math.floor(Date.now() / 1000);
    const head = `data: {"id":"${id}","object":"${chat ? 'chat.completion.chunk' : 'text_completion'}","created":${created},"model":${JSON.stringify(this.modelName)},"choices":[{"index":0,`;
    const g: Gen = {
      res,
      chat,
      stream,
      includeUsage,
      start,
      limit,
      limitIsEnd: storyLeft < maxTokens,
      promptTokens,
      matcher: stops.length > 0 ? new StopMatcher(stops) : null,
      n: 0,
      text: '',
      id,
      created,
      pre: chat ? `${head}"delta":{"content":` : `${head}"text":`,
      post: chat
        ? '},"logprobs":null,"finish_reason":null}]}\n\n'
        : ',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n',
      started: false,
      closed: false,
      timer: null,
    };
    this.promptTokensTotal += promptTokens;
    if (stream) {
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
      res.flushHeaders();
    }
    res.on('close', () => {
      if (g.closed) return;
      // The client left before the end.
      g.closed = true;
      this.finished.abort++;
      this.clearTimer(g);
      if (this.opts.logRequests) this.onEvent({ event: 'end', id: g.id, finish: 'abort', tokens: g.n });
      if (g.started) this.release();
      else this.waiting--;
    });
    const admit = this.running < this.opts.capacity;
    if (admit) this.begin(g);
    else {
      this.waiting++;
      this.queue.push(g);
    }
    if (this.opts.logRequests) this.onEvent({ event: 'admit', id, state: admit ? 'running' : 'waiting' });
  }

  private begin(g: Gen): void {
    g.started = true;
    this.running++;
    g.timer = setTimeout(() => this.step(g), this.opts.ttftMs);
  }

  /** Frees a slot and starts the next waiting request. */
  private release(): void {
    this.running--;
    while (this.running < this.opts.capacity && this.qHead < this.queue.length) {
      const next = this.queue[this.qHead]!;
      this.queue[this.qHead++] = undefined as unknown as Gen;
      if (this.qHead > 1024 && this.qHead * 2 > this.queue.length) {
        this.queue.splice(0, this.qHead);
        this.qHead = 0;
      }
      if (next.closed) continue;
      this.waiting--;
      this.begin(next);
    }
  }

  private clearTimer(g: Gen): void {
    if (g.timer === null) return;
    // A Timeout has refresh(); an Immediate does not.
    if (typeof (g.timer as NodeJS.Timeout).refresh === 'function') clearTimeout(g.timer as NodeJS.Timeout);
    else clearImmediate(g.timer as NodeJS.Immediate);
    g.timer = null;
  }

  /** Produces one token. */
  private step(g: Gen): void {
    g.timer = null;
    if (g.closed) return;
    if (g.n >= g.limit) return this.end(g, g.limitIsEnd ? 'stop' : 'length');
    const tok = simToken(g.start + g.n);
    g.n++;
    this.generationTokensTotal++;
    const out = g.matcher ? g.matcher.push(tok) : tok;
    const stopped = g.matcher !== null && g.matcher.stopped;
    if (g.stream) {
      let w = g.n === 1 && g.chat ? this.roleChunk(g) : '';
      if (out.length > 0) w += g.pre + jsonOf(out) + g.post;
      if (stopped) return this.end(g, 'stop', w);
      if (g.n >= g.limit) return this.end(g, g.limitIsEnd ? 'stop' : 'length', w);
      if (this.opts.failAfterTokens !== null && g.n >= this.opts.failAfterTokens) {
        // Fault injection: drop the connection mid-stream, once what was written has left.
        const socket = g.res.socket;
        g.res.write(w, () => socket?.destroy());
        return;
      }
      if (w.length > 0) g.res.write(w);
    } else {
      g.text += out;
      if (stopped) return this.end(g, 'stop');
      if (g.n >= g.limit) return this.end(g, g.limitIsEnd ? 'stop' : 'length');
    }
    const itl = this.opts.itlMs * (1 + this.opts.batchSlowdown * (this.running - 1));
    g.timer = itl > 0 ? setTimeout(() => this.step(g), itl) : setImmediate(() => this.step(g));
  }

  private roleChunk(g: Gen): string {
    return `data: {"id":"${g.id}","object":"chat.completion.chunk","created":${g.created},"model":${JSON.stringify(this.modelName)},"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n`;
  }

  /** Ends a request: the final chunk, usage and [DONE] (or the JSON body), in one write. */
  private end(g: Gen, finish: 'stop' | 'length', pending = ''): void {
    g.closed = true;
    this.finished[finish]++;
    if (this.opts.logRequests) this.onEvent({ event: 'end', id: g.id, finish, tokens: g.n });
    const rest = g.matcher ? g.matcher.flush() : '';
    const usage = { prompt_tokens: g.promptTokens, total_tokens: g.promptTokens + g.n, completion_tokens: g.n };
    const model = this.modelName;
    if (g.stream) {
      let w = pending;
      if (g.n === 0 && g.chat) w += this.roleChunk(g);
      if (rest.length > 0) w += g.pre + jsonOf(rest) + g.post;
      const choice = g.chat
        ? { index: 0, delta: {}, logprobs: null, finish_reason: finish, stop_reason: null }
        : { index: 0, text: '', logprobs: null, finish_reason: finish, stop_reason: null };
      const object = g.chat ? 'chat.completion.chunk' : 'text_completion';
      w += `data: ${JSON.stringify({ id: g.id, object, created: g.created, model, choices: [choice] })}\n\n`;
      if (g.includeUsage) {
        w += `data: ${JSON.stringify({ id: g.id, object, created: g.created, model, choices: [], usage })}\n\n`;
      }
      w += 'data: [DONE]\n\n';
      g.res.end(w);
    } else {
      const text = g.text + rest;
      const choice = g.chat
        ? { index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: finish, stop_reason: null }
        : { index: 0, text, logprobs: null, finish_reason: finish, stop_reason: null };
      const object = g.chat ? 'chat.completion' : 'text_completion';
      this.json(g.res, 200, { id: g.id, object, created: g.created, model, choices: [choice], usage });
    }
    this.release();
  }

  private json(res: ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
  }

  /** An error in the flavor's format: OpenAI's `{"error":{...}}`, or vLLM's `{"object":"error",...}`. */
  private error(res: ServerResponse, e: BadRequest): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (this.opts.flavor === 'vllm') {
      const type = e.status === 404 ? 'NotFoundError' : e.status >= 500 ? 'InternalServerError' : 'BadRequestError';
      this.json(res, e.status, { object: 'error', message: e.message, type, param: e.param, code: e.status });
    } else {
      const type = e.status >= 500 ? 'server_error' : 'invalid_request_error';
      this.json(res, e.status, { error: { message: e.message, type, param: e.param, code: e.code } });
    }
  }

  /** vLLM's load gauges and token counters, in the Prometheus text format. */
  metricsText(): string {
    const l = `{model_name=${JSON.stringify(this.modelName)}}`;
    const kv = this.running / this.opts.capacity;
    const fl = (n: number) => (Number.isInteger(n) ? `${n}.0` : String(n));
    const lines = [
      '# HELP vllm:num_requests_running Number of requests in model execution batches.',
      '# TYPE vllm:num_requests_running gauge',
      `vllm:num_requests_running${l} ${fl(this.running)}`,
      '# HELP vllm:num_requests_waiting Number of requests waiting to be processed.',
      '# TYPE vllm:num_requests_waiting gauge',
      `vllm:num_requests_waiting${l} ${fl(this.waiting)}`,
      `# HELP vllm:${this.opts.kvMetric} KV-cache usage. 1 means 100 percent usage.`,
      `# TYPE vllm:${this.opts.kvMetric} gauge`,
      `vllm:${this.opts.kvMetric}${l} ${fl(kv)}`,
      '# HELP vllm:prompt_tokens_total Number of prefill tokens processed.',
      '# TYPE vllm:prompt_tokens_total counter',
      `vllm:prompt_tokens_total${l} ${fl(this.promptTokensTotal)}`,
      '# HELP vllm:generation_tokens_total Number of generation tokens processed.',
      '# TYPE vllm:generation_tokens_total counter',
      `vllm:generation_tokens_total${l} ${fl(this.generationTokensTotal)}`,
      '# HELP vllm:request_success_total Count of successfully processed requests.',
      '# TYPE vllm:request_success_total counter',
    ];
    for (const r of ['stop', 'length', 'abort'] as const) {
      lines.push(
        `vllm:request_success_total{finished_reason="${r}",model_name=${JSON.stringify(this.modelName)}} ${fl(this.finished[r])}`,
      );
    }
    return lines.join('\n') + '\n';
  }
}
