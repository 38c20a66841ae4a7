import { get } from 'node:http';

/** The longest a single health probe may take: a live process answers `/healthz` in milliseconds. */
export const MAX_PROBE_TIMEOUT_MS = 1000;

/** The timeout of each probe for a given probe interval: the interval, at most 1 s. */
export function probeTimeoutMs(intervalMs: number): number {
  return Math.min(MAX_PROBE_TIMEOUT_MS, intervalMs);
}

/**
 * `GET url` on a fresh connection (no keep-alive, so a dead or hung process
 * is never hidden behind a pooled socket). Resolves on a 2xx answer read to
 * its end within `timeoutMs`; rejects with an Error whose message is a short
 * reason: `timeout`, the socket error's code (`ECONNREFUSED`,
 * `ECONNRESET`...), or `status <n>`.
 */
export function probeHttp(url: string, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    // `done` runs from the request's events and the timer only, never synchronously, so `timer` is set by then.
    const done = (reason: string | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      if (reason === null) resolve();
      else reject(new Error(reason));
    };
    const req = get(url, { agent: false, headers: { connection: 'close' } }, (res) => {
      const status = res.statusCode ?? 0;
      res.on('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
      res.on('end', () => done(status >= 200 && status < 300 ? null : `status ${status}`));
      res.resume();
    });
    req.on('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
    const timer = setTimeout(() => done('timeout'), timeoutMs);
  });
}
