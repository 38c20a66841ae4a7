import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  ApiKeys,
  Cancellation,
  createRegistry,
  GatewayMetrics,
  Tracing,
  createBlockingRedis,
  createRedis,
  DeploymentRegistry,
  Keys,
  ReplyReader,
  RequestQueue,
  settleWithin,
  timeRedis,
  WorkerRegistry,
  type GatewayConfig,
  type Logger,
  type Redis,
} from '@llmux/shared';
import { QueueMonitor, redisQueueSampler } from './admission/queue-monitor.js';
import { RedisCircuit } from './admission/redis-circuit.js';
import { createApp } from './app.js';
import { ModelCatalog } from './catalog.js';
import type { GatewayContext } from './context.js';
import { Dispatcher } from './relay/dispatcher.js';
import { RequestFollowers } from './relay/follower.js';
import { RequestMetrics } from './relay/request-metrics.js';
import { TenantGate } from './admission/tenant.js';
import { IdempotencyStore } from './relay/idempotency.js';

export interface GatewayOptions {
  config: GatewayConfig;
  logger: Logger;
}

export type GatewayState = 'starting' | 'ready' | 'closing' | 'closed';

/**
 * How often the gateway refreshes its liveness key (and its reply stream's
 * TTL), and the key's TTL. Workers cancel the requests of a gateway whose key
 * is gone, so the TTL spans a few refreshes: two refreshes can fail (a Redis
 * blip, a stalled event loop) before the gateway counts as dead. See "Dead
 * gateways" in docs/architecture.md.
 */
const ALIVE_INTERVAL_MS = 2000;
const ALIVE_TTL_MS = 6000;
/** The `known` key outlives every request the gateway admitted: its time limit plus this. */
const KNOWN_MARGIN_MS = 60_000;
/** A dead gateway's reply stream expires this long after its last refresh. */
const REPLY_STREAM_TTL_MS = 120_000;

/**
 * The HTTP gateway: validates and admits requests, enqueues them on their
 * model's stream, and relays token events from its own reply stream. Holds no
 * state another gateway could not rebuild from Redis.
 */
export class Gateway {
  state: GatewayState = 'starting';
  private readonly redis: Redis;
  private readonly blocking: Redis;
  private readonly reader: ReplyReader;
  private readonly ctx: GatewayContext;
  private readonly server: Server;
  private readonly keys: Keys;
  private aliveTimer: NodeJS.Timeout | null = null;
  private catalogTimer: NodeJS.Timeout | null = null;
  private closing: Promise<void> | null = null;
  private readonly log: Logger;

  constructor(private readonly opts: GatewayOptions) {
    const c = opts.config;
    this.log = opts.logger.child({ gateway: c.gatewayId });
    this.keys = new Keys(c.keyPrefix);
    this.redis = createRedis(c.redis, { failFast: true, name: `gateway:${c.gatewayId}` });
    this.blocking = createBlockingRedis(c.redis, `gateway:${c.gatewayId}:replies`);
    for (const conn of [this.redis, this.blocking]) conn.on('error', (err) => this.log.debug({ err }, 'redis error'));
    // Back after an outage (maybe an empty Redis): announce liveness before any request can be enqueued again.
    this.redis.on('ready', () => {
      if (this.state !== 'closed') void this.alive();
    });
    const queue = new RequestQueue(this.redis, this.keys);
    // A cancel mark must outlive any request it can cancel.
    const cancellation = new Cancellation(this.redis, this.keys, c.requestTimeoutMs + 60_000);
    const metrics = new GatewayMetrics(createRegistry('gateway', c.gatewayId));
    metrics.maxOpenRequests.set(c.maxOpenRequests);
    const requestMetrics = new RequestMetrics(metrics);
    const dispatcher = new Dispatcher(queue, cancellation, c.gatewayId, this.log, requestMetrics);
    const sampleQueue = redisQueueSampler(this.redis, this.keys);
    this.reader = new ReplyReader(this.blocking, this.keys.replies(c.gatewayId), {
      onEvent: (ev) => dispatcher.onEvent(ev),
      onError: (err) => this.log.warn({ err }, 'reply stream read failed'),
      onMalformed: (id) => this.log.warn({ id }, 'malformed reply event skipped'),
    });
    this.ctx = {
      config: c,
      log: this.log,
      redis: this.redis,
      catalog: new ModelCatalog(new DeploymentRegistry(this.redis, this.keys), this.log),
      dispatcher,
      workers: new WorkerRegistry(this.redis, this.keys),
      circuit: new RedisCircuit(this.redis, this.log, { latency: metrics.redisLatency }),
      // Admissions read the queue from a cache; the readings that reach Redis are timed here.
      queues: new QueueMonitor((model) => timeRedis(metrics.redisLatency, 'queue reading', () => sampleQueue(model)), {
        log: this.log,
      }),
      followers: new RequestFollowers(this.redis, this.keys, c.redis, this.log, (n) => requestMetrics.setFollowers(n)),
      idempotency: new IdempotencyStore(this.redis, this.keys, c.idempotencyTtlMs),
      metrics,
      requestMetrics,
      tracing: Tracing.start(c.tracing, 'gateway', c.gatewayId),
      queue,
      tenants: new TenantGate(c.auth === 'required' ? new ApiKeys(this.redis, this.keys) : null, (err) =>
        this.log.warn({ err }, 'could not settle a token reservation'),
      ),
    };
    this.server = createServer({ keepAliveTimeout: 65_000 }, createApp(this.ctx));
  }

  /** Connects to Redis (or keeps trying in the background) and starts listening. */
  async start(): Promise<void> {
    const c = this.opts.config;
    try {
      await Promise.all([this.redis.connect(), this.blocking.connect()]);
    } catch (err) {
      this.log.warn({ err }, 'Redis is not reachable yet; requests get 503 until it is');
    }
    await this.alive();
    this.reader.start();
    await this.ctx.catalog.refresh().catch((err: unknown) => this.log.warn({ err }, 'could not load deployments'));
    this.catalogTimer = setInterval(() => this.ctx.catalog.refresh().catch(() => {}), 5000);
    // Drain rates are measured for every published model, whether or not this gateway has seen a request for it.
    this.ctx.queues.start(() => (this.ctx.circuit.isClosed ? this.ctx.catalog.list().map((d) => d.name) : []));
    this.aliveTimer = setInterval(() => void this.alive(), ALIVE_INTERVAL_MS);
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ port: c.port, host: c.host, backlog: 4096 }, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.state = 'ready';
    this.log.info({ url: this.url }, 'gateway listening');
  }

  /**
   * Refreshes the liveness keys, then the reply stream's TTL. `known` is set
   * before `alive` on the same connection, so a worker never sees `alive`
   * without `known`; both are sent in the calling tick, ahead of any enqueue
   * issued later.
   */
  private async alive(): Promise<void> {
    const c = this.opts.config;
    const id = c.gatewayId;
    const replies = this.keys.replies(id);
    try {
      const now = String(Date.now());
      await Promise.all([
        this.redis.set(this.keys.gatewayKnown(id), now, 'PX', c.requestTimeoutMs + KNOWN_MARGIN_MS),
        this.redis.set(this.keys.gatewayAlive(id), now, 'PX', ALIVE_TTL_MS),
      ]);
      // PEXPIRE does nothing on a missing key: create the stream empty first
      // (an entry added and trimmed away in one command), so it has a TTL from
      // the start, also after a Redis restart that lost it.
      if ((await this.redis.exists(replies)) === 0) await this.redis.xadd(replies, 'MAXLEN', '0', '*', 'init', '1');
      await this.redis.pexpire(replies, REPLY_STREAM_TTL_MS);
    } catch (err) {
      this.log.debug({ err }, 'liveness refresh failed');
    }
  }

  /** The base URL the gateway listens on. */
  get url(): string {
    const a = this.server.address() as AddressInfo | null;
    if (!a) return '';
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `http://${host}:${a.port}`;
  }

  get port(): number {
    return (this.server.address() as AddressInfo | null)?.port ?? 0;
  }

  /** Open requests. */
  get inflight(): number {
    return this.ctx.dispatcher.size;
  }

  /**
   * Stops accepting, lets open requests finish for up to `drainTimeoutMs`,
   * ends the rest with an error event, then closes connections. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.state = 'closing';
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const deadline = Date.now() + this.opts.config.drainTimeoutMs;
    while (this.ctx.dispatcher.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    this.ctx.dispatcher.failAll(503, 'gateway_shutdown', 'The gateway shut down before the request finished; retry it.');
    this.server.closeAllConnections();
    await closed;
    for (const t of [this.aliveTimer, this.catalogTimer]) if (t) clearInterval(t);
    this.ctx.queues.stop();
    this.ctx.circuit.close();
    this.blocking.disconnect();
    await this.reader.stop();
    await settleWithin(this.ctx.tracing.shutdown(), 2000);
    if (!(await settleWithin(this.redis.quit(), 1000))) this.redis.disconnect();
    this.state = 'closed';
  }
}
