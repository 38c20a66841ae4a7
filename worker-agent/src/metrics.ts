import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  RequestLog,
  RequestQueue,
  timeRedis,
  type BeginResult,
  type DispatchResult,
  type EmitMode,
  type prom,
  type ReplyEvent,
  type StreamEntries,
} from '@llmux/shared';

/** The Redis operations a worker times (`op` of `llmux_redis_command_duration_seconds`): a small fixed set. */
export const WORKER_REDIS_OPS = ['begin', 'emit', 'dispatch', 'claim', 'ack', 'handback', 'takeover', 'heartbeat'] as const;
export type WorkerRedisOp = (typeof WORKER_REDIS_OPS)[number];

type Histogram = prom.Histogram<string>;

/** The request log with `begin` and `emit` timed. */
export class TimedRequestLog extends RequestLog {
  constructor(
    redis: ConstructorParameters<typeof RequestLog>[0],
    keys: ConstructorParameters<typeof RequestLog>[1],
    replyMaxLen: number,
    private readonly h: Histogram,
  ) {
    super(redis, keys, replyMaxLen);
  }

  override begin(gw: string, rid: string, token: string, maxAttempts: number, ttlMs: number): Promise<BeginResult> {
    return timeRedis(this.h, 'begin', () => super.begin(gw, rid, token, maxAttempts, ttlMs));
  }

  override emit(gw: string, token: string, ttlMs: number, ev: ReplyEvent, mode?: EmitMode): Promise<number> {
    return timeRedis(this.h, 'emit', () => super.emit(gw, token, ttlMs, ev, mode));
  }
}

/**
 * The request queue with the worker's round trips timed. The blocking claim
 * (XREADGROUP BLOCK) is not timed: its duration is the wait for work, not a
 * round trip; `claim` is the non-blocking one.
 */
export class TimedRequestQueue extends RequestQueue {
  constructor(
    redis: ConstructorParameters<typeof RequestQueue>[0],
    keys: ConstructorParameters<typeof RequestQueue>[1],
    private readonly h: Histogram,
  ) {
    super(redis, keys);
  }

  override dispatch(model: string, target: number): Promise<DispatchResult> {
    return timeRedis(this.h, 'dispatch', () => super.dispatch(model, target));
  }

  override claimNow(model: string, consumer: string, count: number): Promise<StreamEntries> {
    return timeRedis(this.h, 'claim', () => super.claimNow(model, consumer, count));
  }

  override ack(model: string, entryId: string): Promise<void> {
    return timeRedis(this.h, 'ack', () => super.ack(model, entryId));
  }

  override handBack(model: string, entryId: string, consumer: string, fields: readonly string[]): Promise<string | null> {
    return timeRedis(this.h, 'handback', () => super.handBack(model, entryId, consumer, fields));
  }

  override takeOver(model: string, from: string, to: string, count: number, minIdleMs: number): Promise<StreamEntries> {
    return timeRedis(this.h, 'takeover', () => super.takeOver(model, from, to, count, minIdleMs));
  }
}

export interface MetricsServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  registry: prom.Registry;
  /** Runs before each scrape, to set gauges read at scrape time. Given `timeoutMs`, it may resolve late; the scrape does not wait longer. */
  beforeScrape?: () => unknown;
  /** How long a scrape waits for `beforeScrape`; after it, the gauges keep their last values. Default 1000 ms. */
  beforeScrapeTimeoutMs?: number;
  /** `GET /healthz`: 200 when ready, else 503; the body is `{"status": <state>}`. Absent: no `/healthz`. */
  health?: () => { ready: boolean; status: string };
}

/** A running metrics server. */
export interface MetricsServer {
  readonly host: string;
  readonly port: number;
  /** `http://host:port/metrics` */
  readonly url: string;
  close(): Promise<void>;
}

/**
 * A small HTTP server (node:http) for Prometheus: `GET /metrics` in the
 * text format and, when asked, `GET /healthz` for readiness probes. Resolves
 * once it listens; rejects when it cannot bind (EADDRINUSE, EACCES).
 */
export function startMetricsServer(o: MetricsServerOptions): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    if (path === '/metrics') {
      void (async () => {
        try {
          if (o.beforeScrape) await settle(o.beforeScrape, o.beforeScrapeTimeoutMs ?? 1000);
          const body = await o.registry.metrics();
          res.writeHead(200, { 'content-type': o.registry.contentType }).end(req.method === 'HEAD' ? undefined : body);
        } catch (err) {
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${(err as Error).message}\n`);
        }
      })();
      return;
    }
    if (path === '/healthz' && o.health) {
      const h = o.health();
      res
        .writeHead(h.ready ? 200 : 503, { 'content-type': 'application/json', 'cache-control': 'no-store' })
        .end(req.method === 'HEAD' ? undefined : JSON.stringify({ status: h.status }));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  });
  // A scrape is a short request; never keep a slow client's socket forever.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 5_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      server.on('error', () => {});
      const port = (server.address() as AddressInfo).port;
      const host = o.host.includes(':') ? `[${o.host}]` : o.host;
      resolve({
        host: o.host,
        port,
        url: `http://${host}:${port}/metrics`,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}

/** Runs `fn` and waits for it at most `ms`; its failure or lateness is not the caller's. */
async function settle(fn: () => unknown, ms: number): Promise<void> {
  let t: NodeJS.Timeout | undefined;
  await Promise.race([
    (async () => fn())().catch(() => {}),
    new Promise<void>((r) => {
      t = setTimeout(r, ms);
    }),
  ]);
  clearTimeout(t);
}
