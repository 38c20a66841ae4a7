import express, { Router, type Request, type RequestHandler, type Response } from 'express';
import {
  InvalidRequestError,
  newId,
  NotFoundError,
  ServiceUnavailableError,
  settleWithin,
  type Deployment,
  type JobParams,
} from '@llmux/shared';
import { REQUEST_TIMEOUT_HEADER, requestDeadline, type RequestDeadline } from '../admission/deadline.js';
import { OverloadedError } from '../admission/errors.js';
import type { GatewayContext } from '../context.js';
import { ChatSseSink, CompletionSseSink, JsonSink, PlainTextSink, type Sink, type SinkContext } from '../relay/sinks.js';
import {
  parseChatRequest,
  parseCompletionRequest,
  parsePlainRequest,
  type ParsedRequest,
  type RequestLimits,
} from '../validation/openai.js';

/** Looks the model up; 404 in OpenAI's words when it is not served, 503 when the catalog cannot be read. */
async function deploymentFor(ctx: GatewayContext, model: string): Promise<Deployment> {
  const d =
    ctx.catalog.get(model) ??
    (await ctx.circuit
      .guard(() => ctx.catalog.resolve(model), 'model lookup')
      .catch((err: unknown) => {
        if (err instanceof ServiceUnavailableError) throw err;
        throw new ServiceUnavailableError('The model catalog cannot be read; retry shortly.');
      }));
  if (!d) {
    throw new NotFoundError(`The model '${model}' does not exist or you do not have access to it.`, 'model_not_found');
  }
  return d;
}

/** Fills in max_tokens and checks it against the model's context. */
function finalParams(d: Deployment, parsed: ParsedRequest): JobParams {
  const maxTokens = parsed.maxTokens ?? (parsed.params.kind === 'chat' ? d.defaultMaxTokens : 16);
  const context = d.engine.contextSize;
  if (maxTokens >= context) {
    const param = parsed.params.kind === 'chat' ? 'max_completion_tokens' : 'max_tokens';
    throw new InvalidRequestError(
      `max_tokens is too large: ${maxTokens}. This model's maximum context length is ${context} tokens.`,
      param,
      'context_length_exceeded',
    );
  }
  return { ...parsed.params, maxTokens };
}

/** 503 `overloaded` once this gateway holds MAX_OPEN_REQUESTS open requests. */
function checkOpenRequests(ctx: GatewayContext): void {
  if (ctx.dispatcher.size >= ctx.config.maxOpenRequests) throw new OverloadedError();
}

/**
 * Everything before the model's queue is touched: the time-limit header, the
 * open-request cap and the Redis circuit. Runs after validation, so a bad
 * request gets its 400 whatever the state of Redis.
 */
function preflight(ctx: GatewayContext, req: Request): RequestDeadline {
  const deadline = requestDeadline(req.headers[REQUEST_TIMEOUT_HEADER], ctx.config.requestTimeoutMs);
  checkOpenRequests(ctx);
  ctx.circuit.check();
  return deadline;
}

/**
 * Admits a valid request: checks the model's queue (429 when full), enqueues
 * the request, opens the response, and ties the client's disconnect and a slow
 * reader to cancellation. Throws (before any byte is written) when the request
 * is refused or the queue cannot be reached.
 */
async function admit(
  ctx: GatewayContext,
  res: Response,
  d: Deployment,
  params: JobParams,
  deadline: RequestDeadline,
  makeSink: (c: SinkContext) => Sink,
  ridPrefix: string,
  includeUsage: boolean,
): Promise<void> {
  checkOpenRequests(ctx);
  await ctx.circuit.guard(() => ctx.queues.admit(d.name, d.maxQueue), 'queue reading');
  const rid = newId(ridPrefix);
  const t0 = Date.now();
  const sink = makeSink({
    res,
    id: rid,
    model: d.name,
    created: Math.floor(t0 / 1000),
    includeUsage,
    maxBufferedBytes: ctx.config.maxBufferedBytes,
    onOverflow: (buffered) => {
      if (ctx.dispatcher.abandon(rid)) {
        ctx.log.warn(
          { rid, model: d.name, buffered, limit: ctx.config.maxBufferedBytes, ms: Date.now() - t0 },
          'slow reader: response buffer over MAX_BUFFERED_BYTES; request cancelled and connection closed',
        );
      }
      res.destroy();
    },
  });
  let gone = false;
  res.on('close', () => {
    if (res.writableFinished) return;
    gone = true;
    if (ctx.dispatcher.abandon(rid)) {
      ctx.log.info({ rid, model: d.name, ms: Date.now() - t0 }, 'client disconnected; request cancelled');
    }
  });
  res.on('finish', () => {
    ctx.log.info({ rid, model: d.name, status: res.statusCode, ms: Date.now() - t0 }, 'request finished');
  });
  try {
    await ctx.circuit.guard(
      () =>
        ctx.dispatcher.submit({
          rid,
          model: d.name,
          params,
          sink,
          timeoutMs: deadline.timeoutMs,
          timeoutMessage: deadline.message,
        }),
      'enqueue',
    );
  } catch (err) {
    ctx.queues.release(d.name);
    // Timed out with the XADD still in flight: if it lands after all, the cancel mark stops it.
    if (ctx.dispatcher.has(rid)) ctx.dispatcher.abandon(rid);
    ctx.log.warn({ err: (err as Error).message, rid, model: d.name }, 'enqueue failed');
    throw err instanceof ServiceUnavailableError
      ? err
      : new ServiceUnavailableError('The request queue is unreachable; retry shortly.');
  }
  if (gone) ctx.dispatcher.abandon(rid);
  // Still open: not ended meanwhile by its time limit or an early terminal event.
  else if (ctx.dispatcher.has(rid)) sink.open();
}

export function openaiRoutes(ctx: GatewayContext): Router {
  const router = Router();
  const json = express.json({ limit: ctx.config.maxBodyBytes, type: () => true, strict: true });
  const text = express.text({ limit: ctx.config.maxBodyBytes, type: () => true });
  const limits: RequestLimits = { maxPromptChars: ctx.config.maxPromptChars };
  // A gateway at its cap refuses before reading (and parsing) the body.
  const shed: RequestHandler = (_req, _res, next) => {
    checkOpenRequests(ctx);
    next();
  };

  router.post('/v1/chat/completions', shed, json, async (req, res) => {
    const parsed = parseChatRequest(req.body, limits);
    const deadline = preflight(ctx, req);
    const d = await deploymentFor(ctx, parsed.model);
    const params = finalParams(d, parsed);
    const sink = parsed.stream ? (c: SinkContext) => new ChatSseSink(c) : (c: SinkContext) => new JsonSink(c, 'chat');
    await admit(ctx, res, d, params, deadline, sink, 'chatcmpl', parsed.includeUsage);
  });

  router.post('/v1/completions', shed, json, async (req, res) => {
    const parsed = parseCompletionRequest(req.body, limits);
    const deadline = preflight(ctx, req);
    const d = await deploymentFor(ctx, parsed.model);
    const params = finalParams(d, parsed);
    const sink = parsed.stream ? (c: SinkContext) => new CompletionSseSink(c) : (c: SinkContext) => new JsonSink(c, 'completion');
    await admit(ctx, res, d, params, deadline, sink, 'cmpl', parsed.includeUsage);
  });

  // The plain route: POST /v1/chat/<model> with the prompt as the body; streams text.
  router.post('/v1/chat/*model', shed, text, async (req, res) => {
    const model = (req.params as { model: string[] }).model.join('/');
    const parsed = parsePlainRequest(model, req.body, req.query, limits);
    const deadline = preflight(ctx, req);
    const d = await deploymentFor(ctx, model);
    const params = finalParams(d, parsed);
    await admit(ctx, res, d, params, deadline, (c) => new PlainTextSink(c), 'chatcmpl', false);
  });

  router.get('/v1/models', async (_req, res) => {
    // Served from the cache when Redis is slow or down.
    if (ctx.circuit.isClosed) await settleWithin(ctx.catalog.refresh(), 1000);
    const data = ctx.catalog.list().flatMap((d) => [d.name, ...d.aliases].map((id) => modelObject(id)));
    res.json({ object: 'list', data });
  });

  router.get('/v1/models/*model', async (req, res) => {
    const model = (req.params as { model: string[] }).model.join('/');
    await deploymentFor(ctx, model);
    res.json(modelObject(model));
  });

  return router;
}

const STARTED = Math.floor(Date.now() / 1000);

function modelObject(id: string) {
  return { id, object: 'model', created: STARTED, owned_by: 'llmux' };
}
