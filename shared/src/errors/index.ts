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
