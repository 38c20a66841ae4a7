import express, { Router, type Request, type RequestHandler, type Response } from 'express';
import {
  ApiError,
  InvalidRequestError,
  newId,
  NotFoundError,
  ServiceUnavailableError,
  settleWithin,
  type Deployment,
  type JobParams,
  type Priority,
} from '@llmux/shared';
import { REQUEST_TIMEOUT_HEADER, requestDeadline, type RequestDeadline } from '../admission/deadline.js';
import { OverloadedError } from '../admission/errors.js';
import { ANONYMOUS_ADMISSION, estimatePromptTokens, PRIORITY_HEADER, resolvePriority } from '../admission/tenant.js';
import type { GatewayContext } from '../context.js';
import { parseLastEventId, type RequestMeta, type ResponseFormat, type ResumePoint } from '../relay/follower.js';
import { bodyFingerprint, IDEMPOTENCY_HEADER, idempotencyKeyOf } from '../relay/idempotency.js';
import { newTrack, trackOf, trackRequests } from '../relay/request-metrics.js';
import { traceRequest } from '../relay/trace.js';
import { ChatSseSink, CompletionSseSink, JsonSink, PlainTextSink, type Sink, type SinkContext } from '../relay/sinks.js';
import {
  parseChatRequest,
  parseCompletionRequest,
  parsePlainRequest,
  type ParsedRequest,
  type RequestLimits,
} from '../validation/openai.js';

/**
 * Looks the model up; 404 in OpenAI's words when it is not served, 503 when
 * the catalog cannot be read. The deployment's name labels the request's
 * metrics from then on (never the client's string).
 */
async function deploymentFor(ctx: GatewayContext, res: Response, model: string): Promise<Deployment> {
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
  const track = trackOf(res);
  if (track) track.model = d.name;
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

/** 503 `overloaded` once this gateway holds MAX_OPEN_REQUESTS open requests (its own and followed ones). */
function checkOpenRequests(ctx: GatewayContext): void {
  if (ctx.dispatcher.size + ctx.followers.size >= ctx.config.maxOpenRequests) throw new OverloadedError();
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

/** A validated request, ready for admission. */
interface Admission {
  d: Deployment;
  params: JobParams;
  deadline: RequestDeadline;
  format: ResponseFormat;
  includeUsage: boolean;
  ridPrefix: string;
  /** The route and body an Idempotency-Key repeat must match. */
  route: string;
  body: unknown;
  serviceTier?: unknown;
}

/** The sink that renders `format` (the same for the first client and for followers). */
function sinkFor(format: ResponseFormat, c: SinkContext): Sink {
  switch (format) {
    case 'chat-sse':
      return new ChatSseSink(c);
    case 'completion-sse':
      return new CompletionSseSink(c);
    case 'chat-json':
      return new JsonSink(c, 'chat');
    case 'completion-json':
      return new JsonSink(c, 'completion');
    case 'plain':
      return new PlainTextSink(c);
  }
}

const isSse = (f: ResponseFormat) => f === 'chat-sse' || f === 'completion-sse';

/** Sink context for a response; `onOverflow` cancels `rid` (a follower only stops following). */
function sinkContext(
  ctx: GatewayContext,
  res: Response,
  rid: string,
  meta: RequestMeta,
  resumed: boolean,
  onOverflow: () => void,
): SinkContext {
  return {
    res,
    id: rid,
    model: meta.model,
    created: meta.created,
    includeUsage: meta.includeUsage,
    maxBufferedBytes: ctx.config.maxBufferedBytes,
    resumed,
    onOverflow: (buffered) => {
      ctx.log.warn(
        { rid, model: meta.model, buffered, limit: ctx.config.maxBufferedBytes },
        'slow reader: response buffer over MAX_BUFFERED_BYTES; connection closed',
      );
      onOverflow();
      res.destroy();
    },
  };
}

/** Serves a request from another one's output log: an idempotent repeat, or a resume. */
function follow(ctx: GatewayContext, res: Response, rid: string, meta: RequestMeta, after: ResumePoint | null): void {
  checkOpenRequests(ctx);
  const sink = sinkFor(
    meta.format,
    sinkContext(ctx, res, rid, meta, after !== null, () => {}),
  );
  ctx.followers.follow({
    meta,
    rid,
    after,
    sink,
    res,
    timeoutMessage: 'The request did not finish within its time limit.',
  });
}

/**
 * Admits a valid request: authenticates and rate-limits its tenant, honours
 * an Idempotency-Key (a repeat is served from the first request's output log
 * and never runs the model again), checks the model's queue (429 when full),
 * enqueues, opens the response, and ties the client's disconnect and a slow
 * reader to cancellation. Throws (before any byte is written) when the
 * request is refused or the queue cannot be reached.
 */
async function serve(ctx: GatewayContext, req: Request, res: Response, a: Admission): Promise<void> {
  const { d, params, deadline } = a;
  const track = trackOf(res) ?? newTrack(d.name);
  track.model = d.name;
  const idemKey = idempotencyKeyOf(req.headers[IDEMPOTENCY_HEADER]);
  const resumeAt = lastEventId(req);
  checkOpenRequests(ctx);
  const promptTokens = estimatePromptTokens(promptChars(params));
  const admission = ctx.tenants.required
    ? await ctx.circuit.guard(
        () => ctx.tenants.admit(req.headers, { requests: 1, tokens: promptTokens + params.maxTokens }),
        'authentication',
      )
    : ANONYMOUS_ADMISSION;
  const { tenant } = admission;
  let priority: Priority;
  try {
    priority = resolvePriority(req.headers[PRIORITY_HEADER], a.serviceTier, tenant);
  } catch (err) {
    admission.settle(0);
    throw err;
  }
  const rid = newId(a.ridPrefix);
  const t0 = Date.now();
  const startedAt = performance.now();
  const meta: RequestMeta = {
    gw: ctx.config.gatewayId,
    model: d.name,
    tenant: tenant.name,
    format: a.format,
    created: Math.floor(t0 / 1000),
    includeUsage: a.includeUsage,
    deadline: t0 + deadline.timeoutMs,
  };
  const retainMs = idemKey ? ctx.config.idempotencyTtlMs : ctx.config.outputRetentionMs;
  if (idemKey) {
    const record = { body: bodyFingerprint(a.route, a.body), rid, meta };
    const claim = await ctx.circuit.guard(() => ctx.idempotency.claim(tenant.name, idemKey, record), 'idempotency');
    if (claim.status !== 'new') admission.settle(0); // nothing runs for this request
    if (claim.status === 'mismatch') {
      throw new ApiError(
        422,
        'This Idempotency-Key was already used with a different request body; use a new key for a new request.',
        'invalid_request_error',
        'idempotency_key_reused',
      );
    }
    if (claim.status === 'existing') {
      ctx.log.info({ rid: claim.record.rid, model: d.name }, 'idempotent repeat served from the first request');
      track.follower = true; // not a new request: the first one is counted
      follow(ctx, res, claim.record.rid, claim.record.meta, resumeAt);
      return;
    }
  }
  // Refused before it was enqueued: free the key for a retry and give the reservation back.
  const unclaim = () => {
    admission.settle(0);
    if (idemKey) ctx.idempotency.release(tenant.name, idemKey, rid).catch(() => {});
  };
  try {
    // Mostly answered from a cached reading: timed where the reading reaches Redis.
    await ctx.circuit.guard(() => ctx.queues.admit(d.name, d.maxQueue), 'queue reading', false);
  } catch (err) {
    unclaim();
    throw err;
  }
  let gone = false;
  const trace = traceRequest(ctx.tracing, { rid, model: d.name, tenant: tenant.name, priority, route: a.route, t0 });
  const sink = trace.wrap(
    sinkFor(
      a.format,
      sinkContext(ctx, res, rid, meta, false, () => ctx.dispatcher.abandon(rid)),
    ),
  );
  res.on('close', () => {
    if (res.writableFinished) return;
    gone = true;
    if (idemKey && ctx.config.resumeGraceMs > 0) {
      if (ctx.dispatcher.detach(rid, ctx.config.resumeGraceMs, () => ctx.followers.followed(meta.gw, rid))) {
        ctx.log.info({ rid, model: d.name, ms: Date.now() - t0 }, 'client disconnected; request kept for a retry to attach');
      }
    } else if (ctx.dispatcher.abandon(rid)) {
      ctx.log.info({ rid, model: d.name, ms: Date.now() - t0 }, 'client disconnected; request cancelled');
    }
  });
  res.on('finish', () => {
    ctx.log.info({ rid, model: d.name, status: res.statusCode, ms: Date.now() - t0 }, 'request finished');
  });
  // A client that left during the awaits above closed its socket before the handler existed.
  if (!res.socket || res.socket.destroyed) gone = true;
  // Streams and idempotent requests can be found again by id (resume, replay).
  if (idemKey || isSse(a.format)) {
    const ttl = deadline.timeoutMs + ctx.config.resumeGraceMs + retainMs;
    ctx.followers.saveMeta(rid, meta, ttl).catch((err: unknown) => ctx.log.warn({ err, rid }, 'could not save request meta'));
  }
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
          tenant: tenant.name,
          priority,
          weight: tenant.weight,
          retainMs,
          startedAt,
          track,
          traceparent: trace.traceparent,
          onEnd: (e) => {
            admission.settle((e.promptTokens ?? promptTokens) + e.completionTokens);
            trace.end(e);
          },
        }),
      'enqueue',
    );
  } catch (err) {
    trace.fail(err);
    ctx.queues.release(d.name);
    unclaim();
    // Timed out with the XADD still in flight: if it lands after all, the cancel mark stops it.
    // Not counted as cancelled: the error handler counts the 503.
    if (ctx.dispatcher.has(rid)) ctx.dispatcher.abandon(rid, null);
    ctx.log.warn({ err: (err as Error).message, rid, model: d.name }, 'enqueue failed');
    throw err instanceof ServiceUnavailableError
      ? err
      : new ServiceUnavailableError('The request queue is unreachable; retry shortly.');
  }
  trace.admitted();
  if (gone) {
    if (!idemKey) ctx.dispatcher.abandon(rid);
  }
  // Still open: not ended meanwhile by its time limit or an early terminal event.
  else if (ctx.dispatcher.has(rid)) sink.open();
}

/** Characters of prompt text: what the token reservation estimates from. */
function promptChars(p: JobParams): number {
  let n = p.prompt?.length ?? 0;
  for (const m of p.messages ?? []) n += m.content.length;
  return n;
}

/** The `Last-Event-ID` header (or `?after=`), or a 400. */
function lastEventId(req: Request): ResumePoint | null {
  const raw = req.headers['last-event-id'] ?? (typeof req.query.after === 'string' ? req.query.after : undefined);
  try {
    return parseLastEventId(Array.isArray(raw) ? raw[0] : raw);
  } catch (err) {
    throw new InvalidRequestError((err as Error).message, null, 'invalid_last_event_id');
  }
}

/**
 * GET /v1/chat/completions/:id (and /v1/completions/:id): a request's result
 * again while it runs or within its retention: as server-sent events from
 * after `Last-Event-ID` (or `?after=`) when asked for a stream (the header,
 * `?stream=true`, or `Accept: text/event-stream`), else as one JSON body when
 * it ends.
 */
async function resume(ctx: GatewayContext, req: Request, res: Response, kind: 'chat' | 'completion'): Promise<void> {
  const rid = (req.params as { id: string }).id;
  const after = lastEventId(req);
  checkOpenRequests(ctx);
  ctx.circuit.check();
  const { tenant } = ctx.tenants.required
    ? await ctx.circuit.guard(() => ctx.tenants.admit(req.headers, { requests: 1, tokens: 0 }), 'authentication')
    : ANONYMOUS_ADMISSION;
  const meta = await ctx.circuit.guard(() => ctx.followers.meta(rid), 'request lookup');
  const sameKind = meta !== null && meta.format !== 'plain' && meta.format.startsWith(kind);
  if (!meta || !sameKind || meta.tenant !== tenant.name) {
    throw new NotFoundError(`No request with id '${rid}' (unknown, another kind, or past its retention).`, 'request_not_found');
  }
  const track = trackOf(res);
  if (track) track.model = meta.model;
  const wantsStream =
    after !== null || req.query.stream === 'true' || String(req.headers.accept ?? '').includes('text/event-stream');
  const format: ResponseFormat = wantsStream ? `${kind}-sse` : `${kind}-json`;
  follow(ctx, res, rid, { ...meta, format }, wantsStream ? (after ?? null) : null);
}

/** Checks the key of a request that costs nothing (listing models) when AUTH=required. */
async function authenticate(ctx: GatewayContext, req: Request): Promise<void> {
  if (!ctx.tenants.required) return;
  ctx.tenants.precheck(req.headers);
  await ctx.circuit.guard(() => ctx.tenants.admit(req.headers, { requests: 0, tokens: 0 }), 'authentication');
}

export function openaiRoutes(ctx: GatewayContext): Router {
  const router = Router();
  const json = express.json({ limit: ctx.config.maxBodyBytes, type: () => true, strict: true });
  const text = express.text({ limit: ctx.config.maxBodyBytes, type: () => true });
  const limits: RequestLimits = { maxPromptChars: ctx.config.maxPromptChars };
  // First on each route, so every refusal (401, 503 before the body, a body that does not parse) is counted.
  const request = trackRequests(false);
  const resumed = trackRequests(true);
  // A gateway at its cap refuses before reading (and parsing) the body.
  // A gateway at its cap, and a request without a well-formed key (AUTH=required), are refused before the body is read.
  const shed: RequestHandler = (req, _res, next) => {
    ctx.tenants.precheck(req.headers);
    checkOpenRequests(ctx);
    next();
  };

  router.post('/v1/chat/completions', request, shed, json, async (req, res) => {
    const parsed = parseChatRequest(req.body, limits);
    const deadline = preflight(ctx, req);
    const d = await deploymentFor(ctx, res, parsed.model);
    await serve(ctx, req, res, {
      d,
      params: finalParams(d, parsed),
      deadline,
      format: parsed.stream ? 'chat-sse' : 'chat-json',
      includeUsage: parsed.includeUsage,
      ridPrefix: 'chatcmpl',
      route: 'chat',
      body: req.body,
      serviceTier: (req.body as { service_tier?: unknown }).service_tier,
    });
  });

  router.post('/v1/completions', request, shed, json, async (req, res) => {
    const parsed = parseCompletionRequest(req.body, limits);
    const deadline = preflight(ctx, req);
    const d = await deploymentFor(ctx, res, parsed.model);
    await serve(ctx, req, res, {
      d,
      params: finalParams(d, parsed),
      deadline,
      format: parsed.stream ? 'completion-sse' : 'completion-json',
      includeUsage: parsed.includeUsage,
      ridPrefix: 'cmpl',
      route: 'completion',
      body: req.body,
      serviceTier: (req.body as { service_tier?: unknown }).service_tier,
    });
  });

  router.get('/v1/chat/completions/:id', resumed, shed, (req, res) => resume(ctx, req, res, 'chat'));
  router.get('/v1/completions/:id', resumed, shed, (req, res) => resume(ctx, req, res, 'completion'));

  // The plain route: POST /v1/chat/<model> with the prompt as the body; streams text.
  router.post('/v1/chat/*model', request, shed, text, async (req, res) => {
    const model = (req.params as { model: string[] }).model.join('/');
    const parsed = parsePlainRequest(model, req.body, req.query, limits);
    const deadline = preflight(ctx, req);
    const d = await deploymentFor(ctx, res, model);
    await serve(ctx, req, res, {
      d,
      params: finalParams(d, parsed),
      deadline,
      format: 'plain',
      includeUsage: false,
      ridPrefix: 'chatcmpl',
      route: `plain:${model}:${new URLSearchParams(req.query as Record<string, string>).toString()}`,
      body: req.body,
    });
  });

  router.get('/v1/models', async (req, res) => {
    await authenticate(ctx, req);
    // Served from the cache when Redis is slow or down.
    if (ctx.circuit.isClosed) await settleWithin(ctx.catalog.refresh(), 1000);
    const data = ctx.catalog.list().flatMap((d) => [d.name, ...d.aliases].map((id) => modelObject(id)));
    res.json({ object: 'list', data });
  });

  router.get('/v1/models/*model', async (req, res) => {
    await authenticate(ctx, req);
    const model = (req.params as { model: string[] }).model.join('/');
    await deploymentFor(ctx, res, model);
    res.json(modelObject(model));
  });

  return router;
}

const STARTED = Math.floor(Date.now() / 1000);

function modelObject(id: string) {
  return { id, object: 'model', created: STARTED, owned_by: 'llmux' };
}
