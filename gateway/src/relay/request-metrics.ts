import type { RequestHandler, Response } from 'express';
import {
  ApiError,
  RateLimitError,
  REQUEST_OUTCOMES,
  ServiceUnavailableError,
  UNKNOWN_MODEL,
  type GatewayMetrics,
  type RejectionReason,
  type RequestOutcome,
} from '@llmux/shared';
import { OverloadedError, QueueFullError } from '../admission/errors.js';

/** The prom-client children one model's requests use, resolved once per model (not per token). */
export interface ModelSeries {
  readonly ttft: { observe(v: number): void };
  readonly itl: { observe(v: number): void };
  readonly e2e: { observe(v: number): void };
  readonly promptTokens: { inc(v?: number): void };
  readonly generationTokens: { inc(v?: number): void };
  readonly outcomes: Readonly<Record<RequestOutcome, { inc(v?: number): void }>>;
}

/**
 * What the gateway knows about one client request, for counting it exactly
 * once in `llmux_requests_total`. Lives on `res.locals` from the moment the
 * route matches; the dispatcher and the error handler share it.
 */
export interface RequestTrack {
  /** The deployment's name once it is resolved, `_unknown` before (never the client's string). */
  model: string;
  /** A resume or an idempotent repeat: served from another request's output log, not a new request. */
  follower: boolean;
  /** Set when the request's outcome has been counted. */
  counted: boolean;
}

const TRACK = 'llmuxRequest';

/** The request's track, if its route counts requests. */
export function trackOf(res: Response): RequestTrack | undefined {
  return (res.locals as Record<string, RequestTrack | undefined>)[TRACK];
}

/** Middleware: the request is counted (`follower`: a resume, counted only when refused). Goes first on its route. */
export function trackRequests(follower: boolean): RequestHandler {
  return (_req, res, next) => {
    (res.locals as Record<string, RequestTrack>)[TRACK] = { model: UNKNOWN_MODEL, follower, counted: false };
    next();
  };
}

/** A track for a request that did not come through a route (tests, internal callers). */
export const newTrack = (model: string): RequestTrack => ({ model, follower: false, counted: false });

/** How a refused or failed request is counted. */
export interface Refusal {
  outcome: RequestOutcome;
  /** Null when the failure is not an admission refusal (a 5xx, a client gone). */
  reason: RejectionReason | null;
}

/** Errors raised by express's body parsers carry a `type`. */
const bodyErrorType = (err: unknown): unknown => (err as { type?: unknown } | null)?.type;

/** Maps an error answered by the error handler to its outcome and rejection reason, by class and status. */
export function classifyError(api: ApiError | null, raw: unknown): Refusal {
  // The client went away while sending its body: nobody reads the 400.
  if (bodyErrorType(raw) === 'request.aborted') return { outcome: 'cancelled', reason: null };
  if (!api) return { outcome: 'error', reason: null };
  if (api instanceof QueueFullError) return { outcome: 'rejected_429', reason: 'queue_full' };
  if (api instanceof RateLimitError || api.status === 429) return { outcome: 'rejected_429', reason: 'rate_limited' };
  if (api instanceof OverloadedError) return { outcome: 'rejected_503', reason: 'overloaded' };
  if (api instanceof ServiceUnavailableError || api.status === 503) {
    return { outcome: 'rejected_503', reason: 'redis_unavailable' };
  }
  if (api.status === 401) return { outcome: 'error', reason: 'unauthenticated' };
  if (api.status === 504) return { outcome: 'timeout', reason: null };
  if (api.status >= 400 && api.status < 500) return { outcome: 'error', reason: 'invalid_request' };
  return { outcome: 'error', reason: null };
}

/**
 * The gateway's side of the metrics contract: per-model children of the
 * contract's metrics, cached so the token path never builds a label object,
 * and the exactly-once rule of `llmux_requests_total`.
 */
export class RequestMetrics {
  private readonly models = new Map<string, ModelSeries>();

  constructor(readonly m: GatewayMetrics) {}

  /** The children for `model` (a deployment's name or `_unknown`). */
  series(model: string): ModelSeries {
    let s = this.models.get(model);
    if (!s) {
      const outcomes = {} as Record<RequestOutcome, { inc(v?: number): void }>;
      for (const o of REQUEST_OUTCOMES) outcomes[o] = this.m.requests.labels(model, o);
      s = {
        ttft: this.m.ttft.labels(model),
        itl: this.m.itl.labels(model),
        e2e: this.m.e2e.labels(model),
        promptTokens: this.m.promptTokens.labels(model),
        generationTokens: this.m.generationTokens.labels(model),
        outcomes,
      };
      this.models.set(model, s);
    }
    return s;
  }

  /** Counts how the request ended, once; followers are not new requests and are not counted. */
  ended(track: RequestTrack, outcome: RequestOutcome, series?: ModelSeries): void {
    if (track.counted || track.follower) return;
    track.counted = true;
    (series ?? this.series(track.model)).outcomes[outcome].inc();
  }

  /**
   * A request answered by the error handler: counts its rejection reason
   * (also for followers: a refused resume is a refusal) and, unless the
   * dispatcher counted it already, its outcome.
   */
  failed(res: Response, api: ApiError | null, raw: unknown): void {
    const track = trackOf(res);
    if (!track) return;
    const { outcome, reason } = classifyError(api, raw);
    if (reason) this.m.rejections.labels(track.model, reason).inc();
    this.ended(track, outcome);
  }

  setOpenRequests(n: number): void {
    this.m.openRequests.set(n);
  }

  setFollowers(n: number): void {
    this.m.followers.set(n);
  }
}
