import { InvalidRequestError } from '@llmux/shared';

export const REQUEST_TIMEOUT_HEADER = 'x-request-timeout';

/** A request's time limit and the words its 504 uses. */
export interface RequestDeadline {
  timeoutMs: number;
  /** The message of the 504 `deadline_exceeded` error when it passes. */
  message: string;
}

const SECONDS = /^(?:\d{1,12}(?:\.\d{1,9})?|\.\d{1,9})$/;

/**
 * The request's time limit: `X-Request-Timeout` (seconds, decimals allowed),
 * capped at REQUEST_TIMEOUT_MS; REQUEST_TIMEOUT_MS without the header. A value
 * that is not a positive number of seconds, or a repeated header, is a 400.
 */
export function requestDeadline(header: string | string[] | undefined, maxMs: number): RequestDeadline {
  const server = serverDeadline(maxMs);
  if (header === undefined) return server;
  const value = Array.isArray(header) ? null : header.trim();
  const seconds = value !== null && SECONDS.test(value) ? Number(value) : NaN;
  if (!(seconds > 0)) {
    throw new InvalidRequestError(
      'Invalid X-Request-Timeout header: send one positive number of seconds, such as 30 or 2.5.',
      null,
      'invalid_request_timeout',
    );
  }
  const ms = Math.max(1, Math.round(seconds * 1000));
  if (ms >= maxMs) return server;
  return { timeoutMs: ms, message: `The request did not finish within its X-Request-Timeout of ${formatSeconds(ms)}.` };
}

/** The server's limit, built once per value (every request without the header gets it). */
let lastServer: RequestDeadline | null = null;
function serverDeadline(maxMs: number): RequestDeadline {
  if (lastServer?.timeoutMs !== maxMs) {
    lastServer = {
      timeoutMs: maxMs,
      message: `The request did not finish within the server's time limit of ${formatSeconds(maxMs)} (REQUEST_TIMEOUT_MS).`,
    };
  }
  return lastServer;
}

function formatSeconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))} s`;
}
