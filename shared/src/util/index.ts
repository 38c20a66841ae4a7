import { randomBytes } from 'node:crypto';

/** A promise with its resolve and reject functions exposed. */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(err: unknown): void;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Random bytes drawn from the system in blocks, so an id costs no call into the system's generator of its own. */
const POOL_SIZE = 4096;
let pool = Buffer.alloc(0);
let poolAt = POOL_SIZE;

/** `n` (at most 4096) random bytes as base64url, from the pool. */
export function randomBase64url(n: number): string {
  if (poolAt + n > pool.length) {
    pool = randomBytes(POOL_SIZE);
    poolAt = 0;
  }
  const s = pool.toString('base64url', poolAt, poolAt + n);
  poolAt += n;
  return s;
}

/** A random id that is safe in Redis keys and URLs: `prefix-` and 16 base64url chars. */
export function newId(prefix: string): string {
  return `${prefix}-${randomBase64url(12)}`;
}

/** Resolves after `ms`, or rejects early when the signal aborts. Only for backoff, never in tests. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Exponential backoff with full jitter, capped. `attempt` starts at 0. */
export function backoffMs(attempt: number, baseMs = 100, maxMs = 10_000): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/**
 * Waits for `p`, but no longer than `ms`: for shutdown steps that talk to a
 * dependency that may be down. Resolves true if `p` settled in time.
 */
export async function settleWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([
      p.then(
        () => true,
        () => true,
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
