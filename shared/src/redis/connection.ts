import { Redis, type RedisOptions } from 'ioredis';

export { Redis };

export interface ConnectionOptions {
  /**
   * Fail commands at once while disconnected instead of queueing them.
   * Request paths use this so clients get a fast 503, not a hang. Default false.
   */
  failFast?: boolean;
  /** Name shown by `CLIENT LIST`. */
  name?: string;
}

/**
 * Creates an ioredis client for `url` with auto-pipelining on, so commands
 * issued in the same tick go out in one write. The client reconnects forever
 * with a capped backoff; callers await `connect()`.
 */
export function createRedis(url: string, opts: ConnectionOptions = {}): Redis {
  const options: RedisOptions = {
    lazyConnect: true,
    enableAutoPipelining: true,
    connectionName: opts.name,
    maxRetriesPerRequest: opts.failFast ? 0 : 20,
    enableOfflineQueue: !opts.failFast,
    retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 6), 2000),
  };
  return new Redis(url, options);
}

/**
 * A second connection for blocking reads (`XREAD BLOCK`, `XREADGROUP BLOCK`):
 * a blocked connection cannot serve other commands, and closing it is how a
 * reader loop is broken.
 */
export function createBlockingRedis(url: string, name?: string): Redis {
  return new Redis(url, {
    lazyConnect: true,
    connectionName: name,
    enableAutoPipelining: false,
    maxRetriesPerRequest: null,
    retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 6), 2000),
  });
}

/** Stream entries as ioredis returns them from XREAD/XREADGROUP. */
export type StreamEntries = [id: string, fields: string[]][];
export type XReadReply = [key: string, entries: StreamEntries][] | null;
