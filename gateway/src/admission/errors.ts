import { ApiError } from '@llmux/shared';

/** An error that tells the client when to come back (the `Retry-After` header, in seconds). */
export interface RetryAfter {
  retryAfterSeconds: number;
}

export function retryAfterOf(err: unknown): number | undefined {
  const s = (err as Partial<RetryAfter> | null)?.retryAfterSeconds;
  return typeof s === 'number' && Number.isFinite(s) ? s : undefined;
}

/** 429: the model's queue holds `maxQueue` waiting requests or more. */
export class QueueFullError extends ApiError implements RetryAfter {
  override name = 'QueueFullError';
  constructor(
    model: string,
    readonly retryAfterSeconds: number,
  ) {
    super(429, `The queue of model '${model}' is full; retry after ${retryAfterSeconds} s.`, 'rate_limit_error', 'queue_full');
  }
}

/** 503: this gateway holds MAX_OPEN_REQUESTS open requests already. */
export class OverloadedError extends ApiError implements RetryAfter {
  override name = 'OverloadedError';
  constructor(readonly retryAfterSeconds = 1) {
    super(
      503,
      'This gateway has too many open requests (MAX_OPEN_REQUESTS); retry shortly or use another gateway.',
      'service_unavailable_error',
      'overloaded',
    );
  }
}
