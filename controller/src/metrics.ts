import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  ControllerMetrics,
  createRegistry,
  DeploymentRegistry,
  timeRedis,
  type Keys,
  type Redis,
  type Registry,
  type RequestQueue,
  type WorkerRegistry,
} from '@llmux/shared';

/** The Redis readings the controller times (`op` of `llmux_redis_command_duration_seconds`). */
export const CONTROLLER_REDIS_OPS = ['deployments', 'queue_depth', 'workers', 'scale'] as const;

export interface FleetGaugesOptions {
  redis: Redis;
  keys: Keys;
  queue: RequestQueue;
  workers: WorkerRegistry;
  /** Whether this controller holds the leader lease now. */
  isLeader: () => boolean;
  /** Controller id (the `instance` label). */
  id: string;
}

/**
 * The controller's metrics. The fleet and queue gauges are read from Redis
 * when Prometheus scrapes (`refresh`), so any controller, leader or standby,
 * serves current figures; a reading that fails or is slow leaves the last
 * values in place. The restart counter is fed by the local supervisor.
 */
export class FleetGauges {
  readonly metrics: ControllerMetrics;
  private readonly deployments: DeploymentRegistry;
  private inflight: Promise<void> | null = null;

  constructor(private readonly o: FleetGaugesOptions) {
    this.metrics = new ControllerMetrics(createRegistry('controller', o.id));
    this.deployments = new DeploymentRegistry(o.redis, o.keys);
  }

  get registry(): Registry {
    return this.metrics.registry;
  }

  /** Counts a restart of a local child by the supervisor. */
  restarted(kind: 'worker' | 'gateway'): void {
    this.metrics.workerRestarts.inc({ process: kind });
  }

  /**
   * Reads the queues, the workers and the desired replicas of every published
   * deployment and sets the gauges in one go (so a model removed from the
   * deployments disappears). Concurrent calls share one reading. Skipped
   * while Redis is not connected: the gauges keep their last values.
   */
  refresh(): Promise<void> {
    this.metrics.isLeader.set(this.o.isLeader() ? 1 : 0);
    if (this.o.redis.status !== 'ready') return Promise.resolve();
    this.inflight ??= this.read().finally(() => (this.inflight = null));
    return this.inflight;
  }

  private async read(): Promise<void> {
    const { redisLatency: h } = this.metrics;
    const [deployments, live, desired] = await Promise.all([
      timeRedis(h, 'deployments', () => this.deployments.load()),
      timeRedis(h, 'workers', () => this.o.workers.live()),
      timeRedis(h, 'scale', () => this.o.redis.hgetall(this.o.keys.desiredScale())),
    ]);
    const rows = await Promise.all(
      [...deployments.values()].map(async (d) => {
        const [depth, staged] = await timeRedis(h, 'queue_depth', () =>
          Promise.all([this.o.queue.depth(d.name), this.o.queue.staged(d.name)]),
        );
        return {
          model: d.name,
          depth: depth.waiting,
          // depth.waiting is staged + undelivered in the stream; the stream's part is the group's lag.
          lag: Math.max(0, depth.waiting - staged),
          pending: depth.pending,
          desired: Number(desired[d.name] ?? d.replicas.min),
          live: live.filter((w) => w.state === 'ready' && w.models.includes(d.name)).length,
          ttftSlo: d.slo?.ttftP95Ms,
          itlSlo: d.slo?.itlP95Ms,
          maxQueue: d.maxQueue,
        };
      }),
    );
    const m = this.metrics;
    for (const g of [
      m.queueDepth,
      m.queueLag,
      m.queuePending,
      m.desiredReplicas,
      m.liveWorkers,
      m.sloTtft,
      m.sloItl,
      m.maxQueue,
    ]) {
      g.reset();
    }
    for (const r of rows) {
      const model = { model: r.model };
      m.queueDepth.set(model, r.depth);
      m.queueLag.set(model, r.lag);
      m.queuePending.set(model, r.pending);
      m.desiredReplicas.set(model, r.desired);
      m.liveWorkers.set(model, r.live);
      m.maxQueue.set(model, r.maxQueue);
      // Objectives are exported only for deployments that declare them, so alert rules match only those.
      if (r.ttftSlo !== undefined) m.sloTtft.set(model, r.ttftSlo / 1000);
      if (r.itlSlo !== undefined) m.sloItl.set(model, r.itlSlo / 1000);
    }
    m.isLeader.set(this.o.isLeader() ? 1 : 0);
  }
}

/** A running metrics server. */
export interface MetricsServer {
  readonly port: number;
  /** `http://host:port/metrics` */
  readonly url: string;
  close(): Promise<void>;
}

export interface MetricsServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  registry: Registry;
  /** Runs before each scrape (to read gauges); the scrape waits for it at most `beforeScrapeTimeoutMs`. */
  beforeScrape?: () => Promise<unknown>;
  /** Default 1000 ms. */
  beforeScrapeTimeoutMs?: number;
}

/**
 * `GET /metrics` in Prometheus' text format on a node:http server. Resolves
 * once it listens; rejects when it cannot bind (EADDRINUSE, EACCES).
 */
export function startMetricsServer(o: MetricsServerOptions): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    void (async () => {
      try {
        if (o.beforeScrape)
          await within(
            o.beforeScrape().catch(() => {}),
            o.beforeScrapeTimeoutMs ?? 1000,
          );
        const body = await o.registry.metrics();
        res.writeHead(200, { 'content-type': o.registry.contentType }).end(req.method === 'HEAD' ? undefined : body);
      } catch (err) {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${(err as Error).message}\n`);
      }
    })();
  });
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

/** Waits for `p` at most `ms`. */
async function within(p: Promise<unknown>, ms: number): Promise<void> {
  let t: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise<void>((r) => (t = setTimeout(r, ms)))]);
  clearTimeout(t);
}
