import express, { type ErrorRequestHandler, type RequestHandler } from 'express';
import {
  ApiError,
  InvalidRequestError,
  NotFoundError,
  PayloadTooLargeError,
  RateLimitError,
  ServiceUnavailableError,
} from '@llmux/shared';
import { OverloadedError, retryAfterOf } from './admission/errors.js';
import type { GatewayContext } from './context.js';
import { dashboardRoutes } from './dashboard/routes.js';
import { sendError } from './relay/sinks.js';
import { healthRoutes } from './routes/health.js';
import { openaiRoutes } from './routes/openai.js';

/** Errors raised by express's body parsers carry a `type`. */
interface BodyParserError extends Error {
  type?: string;
  status?: number;
}

/** Maps anything thrown in a handler to an OpenAI error body with the right status. */
function toApiError(err: unknown, maxBodyBytes: number): ApiError | null {
  if (err instanceof ApiError) return err;
  const e = err as BodyParserError;
  switch (e?.type) {
    case 'entity.parse.failed':
      return new InvalidRequestError(
        'We could not parse the JSON body of your request. The body must be a valid JSON object.',
        null,
        'invalid_json',
      );
    case 'entity.too.large':
      return new PayloadTooLargeError(maxBodyBytes);
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return new ApiError(415, e.message, 'invalid_request_error', 'unsupported_encoding');
    case 'request.aborted':
    case 'request.size.invalid':
    case 'stream.encoding.set':
      return new InvalidRequestError(e.message, null, 'bad_body');
  }
  if (typeof e?.status === 'number' && e.status >= 400 && e.status < 500) {
    return new ApiError(e.status, e.message, 'invalid_request_error');
  }
  return null;
}

/** Builds the Express application: routes, 404s and error mapping. */
export function createApp(ctx: GatewayContext): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', 'simple');

  const notFound: RequestHandler = (req, res) => {
    sendError(res, new NotFoundError(`Invalid URL (${req.method} ${req.path})`, 'unknown_url'));
  };
  // Express would answer OPTIONS itself (200, the allowed methods as text). There is no CORS
  // support to offer, so OPTIONS gets the same 404 as any other method a route does not serve.
  app.use((req, res, next) => (req.method === 'OPTIONS' ? notFound(req, res, next) : next()));
  app.use(healthRoutes(ctx));
  app.use(openaiRoutes(ctx));
  app.use(dashboardRoutes(ctx));
  app.use(notFound);

  const onError: ErrorRequestHandler = (err, req, res, _next) => {
    const api = toApiError(err, ctx.config.maxBodyBytes);
    ctx.requestMetrics.failed(res, api, err); // outcome and rejection reason, by class and status
    if (!api) ctx.log.error({ err, method: req.method, path: req.path }, 'unhandled error');
    // Refusals while Redis is down or the gateway is full are logged once, as a state change, not per request.
    else if (api instanceof ServiceUnavailableError || api instanceof OverloadedError) {
      ctx.log.debug({ err: api.message, path: req.path }, 'request refused');
    } else if (api.status >= 500) ctx.log.warn({ err: api.message, path: req.path }, 'request failed');
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const out =
      api ?? new ApiError(500, 'The server had an error while processing your request.', 'server_error', 'internal_error');
    const headers: Record<string, string> = {};
    // A request too large for its key's limit cannot pass by waiting: no Retry-After for it.
    const never = out instanceof RateLimitError && out.retryAfterMs === undefined;
    const retryAfter = retryAfterOf(out) ?? ((out.status === 503 || out.status === 429) && !never ? 1 : undefined);
    if (retryAfter !== undefined) headers['retry-after'] = String(retryAfter);
    if (out.status === 401) headers['www-authenticate'] = 'Bearer';
    // The OpenAI SDKs prefer the exact wait.
    if (out instanceof RateLimitError && out.retryAfterMs !== undefined)
      headers['retry-after-ms'] = String(Math.ceil(out.retryAfterMs));
    sendError(res, out, headers);
  };
  app.use(onError);
  return app;
}
