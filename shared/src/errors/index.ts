/**
 * Named error classes shared by every process. Callers test them with
 * `instanceof`, never by matching message text.
 */

/** The `type` field of an OpenAI error body. */
export type OpenAIErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'not_found_error'
  | 'rate_limit_error'
  | 'server_error'
  | 'service_unavailable_error'
  | 'timeout_error';

/** The body every HTTP error leaves in: `{"error":{"message","type","param","code"}}`. */
export interface OpenAIErrorBody {
  error: { message: string; type: OpenAIErrorType; param: string | null; code: string | null };
}

/** An error that maps to an HTTP status and an OpenAI error body. */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    message: string,
    readonly type: OpenAIErrorType,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
  }

  toBody(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400: the request is malformed or names an option the server does not support. */
export class InvalidRequestError extends ApiError {
  override name = 'InvalidRequestError';
  constructor(message: string, param: string | null = null, code: string | null = null) {
    super(400, message, 'invalid_request_error', code, param);
  }
}

/** 404: the model (or route) does not exist. */
export class NotFoundError extends ApiError {
  override name = 'NotFoundError';
  constructor(message: string, code: string | null = 'not_found') {
    super(404, message, 'invalid_request_error', code);
  }
}

/** 413: the body is larger than the configured limit. */
export class PayloadTooLargeError extends ApiError {
  override name = 'PayloadTooLargeError';
  constructor(limitBytes: number) {
    super(
      413,
      `Request body is larger than the limit of ${limitBytes} bytes (raise MAX_BODY_BYTES to accept more).`,
      'invalid_request_error',
      'request_too_large',
    );
  }
}

/**
 * 401: no API key, or one the server does not know (never issued, or revoked).
 * OpenAI's shape and wording, so SDKs show their usual message; the key is
 * masked to its first 6 and last 4 characters, as OpenAI does.
 */
export class AuthenticationError extends ApiError {
  override name = 'AuthenticationError';
  constructor(providedKey: string | null) {
    super(
      401,
      providedKey
        ? `Incorrect API key provided: ${maskApiKey(providedKey)}. Check the key, or ask the operator of this server for a valid one.`
        : "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
      'invalid_request_error',
      'invalid_api_key',
    );
  }
}

/**
 * A key as error messages and logs may show it: the first 6 and last 4
 * characters (`sk-llm...a1B2`). A short key shows as `***`, since 10 visible
 * characters would be most or all of it. Characters other than printable
 * ASCII become `?`, so a hostile header cannot put control codes in a body.
 */
export function maskApiKey(key: string): string {
  const safe = key.replace(/[^\x20-\x7e]/g, '?');
  return safe.length < 20 ? '***' : `${safe.slice(0, 6)}...${safe.slice(-4)}`;
}

/** The per-key limits a RateLimitError names. */
export type RateLimitName = 'rpm' | 'tpm';

const LIMIT_LABELS: Record<RateLimitName, string> = {
  rpm: 'requests per minute (RPM)',
  tpm: 'tokens per minute (TPM)',
};

/**
 * 429: an API key's requests-per-minute or tokens-per-minute limit.
 * `rate_limit_exceeded` carries `retryAfterSeconds` (the `Retry-After` header,
 * whole seconds, rounded up) and `retryAfterMs` (exact, for a `retry-after-ms`
 * header, which the OpenAI SDKs prefer). `request_too_large` has neither: the
 * request asks for more than the limit allows in a whole minute, so waiting
 * never helps. Build them with `exceeded` and `tooLarge`.
 */
export class RateLimitError extends ApiError {
  override name = 'RateLimitError';
  /** Set for `rate_limit_exceeded` only (see the class comment). */
  readonly retryAfterSeconds: number | undefined;

  private constructor(
    message: string,
    code: 'rate_limit_exceeded' | 'request_too_large',
    readonly limit: RateLimitName,
    readonly retryAfterMs: number | undefined,
  ) {
    super(429, message, 'rate_limit_error', code);
    if (retryAfterMs !== undefined) this.retryAfterSeconds = Math.max(1, Math.ceil(retryAfterMs / 1000));
  }

  /** The bucket holds less than the request needs; it will in `retryAfterMs`. */
  static exceeded(limit: RateLimitName, capacity: number, requested: number, retryAfterMs: number): RateLimitError {
    return new RateLimitError(
      `Rate limit reached for ${LIMIT_LABELS[limit]}: Limit ${capacity}, Requested ${requested}. ` +
        `Please try again in ${formatWait(retryAfterMs)}.`,
      'rate_limit_exceeded',
      limit,
      retryAfterMs,
    );
  }

  /** The request needs more than the whole limit: it can never pass. */
  static tooLarge(limit: RateLimitName, capacity: number, requested: number): RateLimitError {
    const fix = limit === 'tpm' ? 'The input or output tokens must be reduced' : 'The request must be split';
    return new RateLimitError(
      `Request too large for ${LIMIT_LABELS[limit]}: Limit ${capacity}, Requested ${requested}. ${fix} in order to run successfully.`,
      'request_too_large',
      limit,
      undefined,
    );
  }
}

/** A wait as OpenAI writes it: `450ms`, `3.2s` (rounded up, never shorter than the truth), `6m0s`. */
function formatWait(ms: number): string {
  if (ms < 1000) return `${Math.ceil(ms)}ms`;
  const tenths = Math.ceil(ms / 100);
  if (tenths < 600) return `${(tenths / 10).toFixed(1)}s`;
  const s = Math.ceil(ms / 1000);
  return `${Math.floor(s / 60)}m${s % 60}s`;
}

/** 503: a dependency (Redis) is unreachable; the client may retry. */
export class ServiceUnavailableError extends ApiError {
  override name = 'ServiceUnavailableError';
  constructor(
    message: string,
    readonly retryAfterSeconds = 1,
  ) {
    super(503, message, 'service_unavailable_error', 'service_unavailable');
  }
}

/** 504: the request passed its deadline before it finished. */
export class DeadlineExceededError extends ApiError {
  override name = 'DeadlineExceededError';
  constructor(message: string) {
    super(504, message, 'timeout_error', 'deadline_exceeded');
  }
}

/** The engine failed while generating; carried to the client as a server error. */
export class EngineError extends Error {
  override name = 'EngineError';
}

/** Thrown by engines when the request's AbortSignal fires. */
export class AbortError extends Error {
  override name = 'AbortError';
  constructor(message = 'The operation was aborted') {
    super(message);
  }
}

/** A configuration file or variable is invalid; the message says what to change. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Whether an error is a passing connection problem (worth retrying) rather than a bug. */
export function isTransientRedisError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as NodeJS.ErrnoException).code;
  if (code && ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH'].includes(code)) {
    return true;
  }
  // ioredis marks commands that could not be sent or were lost with a connection.
  return (
    err.name === 'MaxRetriesPerRequestError' ||
    err.message.startsWith('Connection is closed') ||
    err.message.includes("Stream isn't writeable") ||
    err.message.startsWith('LOADING')
  );
}

/** The prompt does not fit the model's context: the client's fault, sent as a 400. */
export class PromptTooLongError extends EngineError {
  override name = 'PromptTooLongError';
}

/**
 * The engine failed as a whole (its process died, it stopped answering), not
 * because of the request: the agent hands the request to another attempt.
 */
export class EngineUnavailableError extends EngineError {
  override name = 'EngineUnavailableError';
}
