import express, { Router, type Response } from 'express';
import {
  InvalidRequestError,
  newId,
  NotFoundError,
  ServiceUnavailableError,
  type Deployment,
  type JobParams,
} from '@llmux/shared';
import type { GatewayContext } from '../context.js';
import { ChatSseSink, CompletionSseSink, JsonSink, PlainTextSink, type Sink, type SinkContext } from '../relay/sinks.js';
import { parseChatRequest, parseCompletionRequest, parsePlainRequest, type ParsedRequest } from '../validation/openai.js';

/** Looks the model up; 404 in OpenAI's words when it is not served. */
async function deploymentFor(ctx: GatewayContext, model: string): Promise<Deployment> {
  const d = await ctx.catalog.resolve(model);
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

/**
 * Admits a valid request: enqueues it, opens the response, and ties the
 * client's disconnect to cancellation. Throws (before any byte is written)
 * when the queue cannot be reached.
 */
async function admit(
  ctx: GatewayContext,
  res: Response,
  d: Deployment,
  params: JobParams,
  makeSink: (c: SinkContext) => Sink,
  ridPrefix: string,
  includeUsage: boolean,
): Promise<void> {
  const rid = newId(ridPrefix);
  const sink = makeSink({ res, id: rid, model: d.name, created: Math.floor(Date.now() / 1000), includeUsage });
  const t0 = Date.now();
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
    await ctx.dispatcher.submit({ rid, model: d.name, params, sink, timeoutMs: ctx.config.requestTimeoutMs });
  } catch (err) {
    ctx.log.warn({ err, rid }, 'enqueue failed');
    throw new ServiceUnavailableError('The request queue is unreachable; retry shortly.');
  }
  if (gone) ctx.dispatcher.abandon(rid);
  else sink.open();
}

export function openaiRoutes(ctx: GatewayContext): Router {
  const router = Router();
  const json = express.json({ limit: ctx.config.maxBodyBytes, type: () => true, strict: true });
  const text = express.text({ limit: ctx.config.maxBodyBytes, type: () => true });

  router.post('/v1/chat/completions', json, async (req, res) => {
    const parsed = parseChatRequest(req.body);
    const d = await deploymentFor(ctx, parsed.model);
    const params = finalParams(d, parsed);
    const sink = parsed.stream ? (c: SinkContext) => new ChatSseSink(c) : (c: SinkContext) => new JsonSink(c, 'chat');
    await admit(ctx, res, d, params, sink, 'chatcmpl', parsed.includeUsage);
  });

  router.post('/v1/completions', json, async (req, res) => {
    const parsed = parseCompletionRequest(req.body);
    const d = await deploymentFor(ctx, parsed.model);
    const params = finalParams(d, parsed);
    const sink = parsed.stream ? (c: SinkContext) => new CompletionSseSink(c) : (c: SinkContext) => new JsonSink(c, 'completion');
    await admit(ctx, res, d, params, sink, 'cmpl', parsed.includeUsage);
  });

  // The plain route: POST /v1/chat/<model> with the prompt as the body; streams text.
  router.post('/v1/chat/*model', text, async (req, res) => {
    const model = (req.params as { model: string[] }).model.join('/');
    const parsed = parsePlainRequest(model, req.body, req.query);
    const d = await deploymentFor(ctx, model);
    const params = finalParams(d, parsed);
    await admit(ctx, res, d, params, (c) => new PlainTextSink(c), 'chatcmpl', false);
  });

  router.get('/v1/models', async (_req, res) => {
    await ctx.catalog.refresh().catch(() => {});
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
