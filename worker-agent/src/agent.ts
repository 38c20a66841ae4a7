import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import {
  AbortError,
  backoffMs,
  Cancellation,
  blockedClientOf,
  ConfigError,
  createBlockingRedis,
  createRedis,
  createRegistry,
  decodeJob,
  deferred,
  delay,
  DeploymentRegistry,
  EngineUnavailableError,
  isCluster,
  Keys,
  MalformedJobError,
  PromptTooLongError,
  randomBase64url,
  RequestLog,
  RequestQueue,
  settleWithin,
  timeRedis,
  Tracing,
  unblockClient,
  WorkerMetrics,
  WorkerRegistry,
  type BlockedClient,
  type Deferred,
  type Deployment,
  type Job,
  type Logger,
  type Redis,
  type StreamEntries,
  type WorkerConfig,
  type WorkerStatus,
  type WORKER_OUTCOMES,
} from '@llmux/shared';
import { createEngine, type Engine } from './engines/index.js';
import type { Resume } from './engines/types.js';
import { ReplicaSet } from './engines/replicas.js';
import { decodeLoad, encodeLoad, LoadView } from './load-view.js';
import { Flusher, RequestStream } from './request-stream.js';
import { BatchingEventWriter } from './event-batcher.js';
import { traceAttempt } from './trace.js';
import { ControlWorker } from './control.js';
import { addDeadLetter, deadLetterReason } from './dead-letters.js';
import { startMetricsServer, TimedRequestLog, TimedRequestQueue, type MetricsServer } from './metrics.js';

export type AgentState = WorkerStatus['state'];

export interface WorkerAgentOptions {
  config: WorkerConfig;
  logger: Logger;
  /** Builds an engine for a deployment. Default: createEngine. */
  engineFactory?: (d: Deployment) => Promise<Engine>;
}

/** One served deployment: its engine, its claim loop and its load. */
interface Slot {
  model: string;
  deployment: Deployment;
  engine: Engine;
  /** Claimed and not yet finished. */
  inflight: number;
  /** Entry ids being run now; a pending entry of ours that is not here was left behind. */
  running: Set<string>;
  blocking: Redis;
  /** CLIENT ID of the blocking connection (and its node, on a cluster), to cut a wait short with CLIENT UNBLOCK. */
  blockingId: BlockedClient | null;
  /** True while the claim loop waits in XREADGROUP BLOCK. */
  blocked: boolean;
  /** Load messages received from peers; a change tells a claim that a peer may have claimed meanwhile (see `nudge`). */
  peerEvents: number;
  /** Resolved when a request finishes or a peer's load changes, to wake the claim loop. */
  wake: Deferred<void> | null;
  loop: Promise<void> | null;
  view: LoadView;
  lastScore: number;
  /** Being unloaded: claims nothing more. */
  closing: boolean;
  /**
   * Dead consumers whose entries the sweep found while this slot had no room.
   * The claim loop takes them over before it claims anything new, so a busy
   * survivor does not leave them behind the new arrivals.
   */
  takeoverDue: Set<string>;
}

/** How an attempt ended (`llmux_worker_requests_total`). */
type WorkerOutcome = (typeof WORKER_OUTCOMES)[number];

/** Why a running request was aborted. */
type AbortReason = 'cancelled' | 'gateway_gone' | 'deadline' | 'shutdown' | 'fenced' | 'lost';

interface Active {
  ctl: AbortController;
  job: Job;
  tokens: number;
}

/** How long one XREADGROUP blocks; bounds how long stopping a loop may take. */
const CLAIM_BLOCK_MS = 2000;
const CANCELLED_MESSAGE = 'The request was cancelled: its client went away.';
const GATEWAY_GONE_MESSAGE = 'The request was cancelled: its gateway is gone.';
/**
 * How often the agent checks that the gateways of its running requests are
 * alive (one EXISTS per distinct gateway, pipelined). With the gateway's key
 * TTL of 6 s, a dead gateway's requests stop 4 to 8 s after its last refresh.
 */
const GATEWAY_CHECK_INTERVAL_MS = 2000;

/** A worker that is not the least loaded looks for unclaimed work this often. */
const NOT_LEAST_POLL_MS = 25;
/** How often a worker whose engine cannot take work checks again. */
const ENGINE_RECHECK_MS = 100;
/** An entry must be idle this long before a takeover moves it (guards two workers taking the same one). */
const TAKEOVER_MIN_IDLE_MS = 1000;

/**
 * The worker agent: serves some deployments with one engine each, claims
 * requests only while it has free slots (least-loaded first across workers),
 * streams tokens back through the fenced request log, takes over the requests
 * of workers that died, heartbeats, and drains on close().
 */
export class WorkerAgent extends EventEmitter {
  state: AgentState = 'starting';
  readonly id: string;
  private readonly keys: Keys;
  private readonly redis: Redis;
  private readonly sub: Redis;
  private readonly queue: RequestQueue;
  private readonly log: RequestLog;
  private readonly cancellation: Cancellation;
  private readonly workers: WorkerRegistry;
  private readonly flusher: Flusher;
  /** Where every request's events go: many requests' events per script call. */
  private readonly events: BatchingEventWriter;
  private readonly slots = new Map<string, Slot>();
  private readonly slotByChannel = new Map<string, Slot>();
  private readonly runModel = new WeakMap<Promise<void>, string>();
  private factory: ((d: Deployment) => Promise<Engine>) | null = null;
  private control: ControlWorker | null = null;
  private readonly active = new Map<string, Active>();
  private readonly runs = new Set<Promise<void>>();
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private reclaimTimer: NodeJS.Timeout | null = null;
  private reclaiming = false;
  private gatewayTimer: NodeJS.Timeout | null = null;
  private checkingGateways = false;
  private readonly startedAt = Date.now();
  /** Integral of in-flight requests over time, for utilisation figures. */
  private busySlotMs = 0;
  private busySince = Date.now();
  private closing: Promise<void> | null = null;
  private readonly logger: Logger;
  /** Prometheus metrics of this agent, served on `/metrics` (see docs/metrics.md). */
  readonly metrics: WorkerMetrics;
  /** OpenTelemetry tracing (no-op unless an OTLP endpoint is configured). */
  private readonly tracing: Tracing;
  private metricsServer: MetricsServer | null = null;

  constructor(private readonly opts: WorkerAgentOptions) {
    super();
    const c = opts.config;
    this.id = c.workerId;
    this.logger = opts.logger.child({ worker: this.id });
    this.keys = new Keys(c.keyPrefix);
    this.metrics = new WorkerMetrics(createRegistry('worker', this.id));
    this.tracing = Tracing.start(opts.config.tracing, 'worker', this.id);
    this.redis = createRedis(c.redis, { name: `worker:${this.id}` });
    this.sub = createRedis(c.redis, { name: `worker:${this.id}:sub` });
    this.queue = new TimedRequestQueue(this.redis, this.keys, this.metrics.redisLatency);
    this.log = new TimedRequestLog(this.redis, this.keys, c.replyStreamMaxLen, this.metrics.redisLatency);
    this.cancellation = new Cancellation(this.redis, this.keys);
    this.workers = new WorkerRegistry(this.redis, this.keys);
    this.flusher = new Flusher(c.flushIntervalMs);
    this.events = new BatchingEventWriter(this.redis, this.keys, c.replyStreamMaxLen, this.metrics.redisLatency);
    for (const conn of [this.redis, this.sub]) conn.on('error', (err) => this.logger.debug({ err }, 'redis error'));
  }

  private setState(state: AgentState): void {
    if (this.state === state) return;
    this.state = state;
    this.logger.info({ state }, 'worker state');
    this.emit('state', state);
  }

  /** Connects, starts an engine per served deployment, takes back its own leftovers, then starts claiming. */
  async start(): Promise<void> {
    const c = this.opts.config;
    // First, so a readiness probe gets 503 (not a refused connection) while the engines load.
    if (c.metrics) await this.startMetrics(c.metrics);
    await Promise.all([this.redis.connect(), this.sub.connect()]);
    const published = await new DeploymentRegistry(this.redis, this.keys).load();
    const names = c.models ?? [...published.keys()];
    if (names.length === 0) throw new ConfigError('no deployments are published; start the controller first');
    const factory =
      this.opts.engineFactory ??
      ((d: Deployment) => createEngine(d, { modelsDir: c.modelsDir, hfEndpoint: c.hfEndpoint, logger: this.logger }));
    this.factory = factory;
    this.sub.on('message', (channel: string, message: string) => {
      const slot = this.slotByChannel.get(channel);
      if (slot) this.onPeerLoad(slot, message);
    });
    for (const name of names) {
      const d = published.get(name);
      if (!d) throw new ConfigError(`WORKER_MODELS names "${name}", which is not in the deployments`);
      this.slots.set(name, await this.openSlot(d));
    }
    await this.cancellation.subscribe(this.sub, (rid) => this.active.get(rid)?.ctl.abort('cancelled' satisfies AbortReason));
    this.setState('ready');
    await this.heartbeat();
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), c.heartbeatIntervalMs);
    // Requests a previous run of this same worker id left pending are ours to finish.
    for (const slot of this.slots.values()) await this.reclaimFrom(slot, this.id, 0);
    this.reclaimTimer = setInterval(() => void this.reclaimDead(), c.reclaimIntervalMs);
    this.gatewayTimer = setInterval(() => void this.checkGateways(), GATEWAY_CHECK_INTERVAL_MS);
    for (const slot of this.slots.values()) {
      this.publishLoad(slot);
      slot.loop = this.claimLoop(slot);
    }
    this.control = new ControlWorker(this, c.redis, this.keys.controlQueue(this.id), this.logger);
  }

  /** Starts `/metrics` and `/healthz`; fails the start when the port cannot be bound. */
  private async startMetrics(at: { host: string; port: number }): Promise<void> {
    try {
      this.metricsServer = await startMetricsServer({
        host: at.host,
        port: at.port,
        registry: this.metrics.registry,
        beforeScrape: () => this.collectSlots(),
        health: () => ({ ready: this.state === 'ready', status: this.state }),
      });
    } catch (err) {
      throw new ConfigError(`cannot serve metrics on ${at.host}:${at.port} (METRICS_PORT): ${(err as Error).message}`);
    }
    this.logger.info({ port: this.metricsServer.port }, `metrics at ${this.metricsServer.url}`);
  }

  /** The metrics server's port, null when it runs none. */
  get metricsPort(): number | null {
    return this.metricsServer?.port ?? null;
  }

  /** Sets the gauges read at scrape time: each served model's running requests and slots, exact now. */
  private collectSlots(): void {
    const { running, capacity } = this.metrics;
    running.reset();
    capacity.reset();
    for (const s of this.slots.values()) {
      running.set({ model: s.model }, s.inflight);
      capacity.set({ model: s.model }, s.engine.capacity);
    }
  }

  /**
   * Starts a deployment's engine (ENGINE_REPLICAS replicas) and its claim
   * connection, and subscribes to its load channel. The claim loop is started
   * by the caller.
   */
  private async openSlot(d: Deployment): Promise<Slot> {
    const c = this.opts.config;
    const name = d.name;
    if (d.engine.type === 'vllm' && d.engine.port !== 0 && c.engineReplicas > 1) {
      throw new ConfigError(`deployment "${name}" fixes vllm port ${d.engine.port}; with ENGINE_REPLICAS > 1 set its port to 0`);
    }
    const replicas = await Promise.all(Array.from({ length: c.engineReplicas }, () => this.factory!(d)));
    replicas.forEach((r, i) => this.watchEngine(r, name, i));
    const engine = replicas.length === 1 ? replicas[0]! : new ReplicaSet(replicas);
    const t0 = Date.now();
    await engine.start();
    this.logger.info({ model: name, engine: d.engine.type, capacity: engine.capacity, ms: Date.now() - t0 }, 'engine started');
    await this.queue.ensureGroup(name);
    const blocking = createBlockingRedis(c.redis, `worker:${this.id}:claim:${name}`);
    blocking.on('error', (err) => this.logger.debug({ err }, 'redis error'));
    const slot: Slot = {
      model: name,
      deployment: d,
      engine,
      inflight: 0,
      running: new Set(),
      blocking,
      blockingId: null,
      blocked: false,
      peerEvents: 0,
      wake: null,
      loop: null,
      view: new LoadView(this.id, c.heartbeatTtlMs),
      lastScore: -1,
      closing: false,
      takeoverDue: new Set(),
    };
    // The id changes with every reconnect; CLIENT UNBLOCK needs the current one. (On a cluster
    // the node can change too: the id is looked up before each blocking read, see claimFair.)
    if (!isCluster(blocking)) {
      blocking.on('ready', () => {
        blockedClientOf(blocking, '').then(
          (b) => (slot.blockingId = b),
          () => (slot.blockingId = null),
        );
      });
    }
    await blocking.connect();
    const channel = this.keys.loadChannel(name);
    this.slotByChannel.set(channel, slot);
    await this.sub.subscribe(channel);
    return slot;
  }

  /** Starts serving a published deployment now (control job `load-model`). */
  async loadModel(name: string): Promise<void> {
    if (this.state !== 'ready') throw new Error(`worker is ${this.state}`);
    if (this.slots.has(name)) return;
    const d = (await new DeploymentRegistry(this.redis, this.keys).load()).get(name);
    if (!d) throw new ConfigError(`no published deployment named "${name}"`);
    const slot = await this.openSlot(d);
    this.slots.set(name, slot);
    await this.reclaimFrom(slot, this.id, 0);
    this.publishLoad(slot, true);
    slot.loop = this.claimLoop(slot);
    this.logger.info({ model: name }, 'model loaded');
    await this.heartbeat();
  }

  /**
   * Stops serving a deployment (control job `unload-model`): no more claims;
   * its requests get DRAIN_TIMEOUT_MS, then the rest are handed back.
   */
  async unloadModel(name: string): Promise<void> {
    const slot = this.slots.get(name);
    if (!slot) return;
    slot.closing = true;
    this.publishLoad(slot, true);
    slot.blocking.disconnect();
    this.wakeLoop(slot);
    await settleWithin(slot.loop ?? Promise.resolve(), CLAIM_BLOCK_MS);
    const mine = () => [...this.runs].filter((r) => this.runModel.get(r) === name);
    if (!(await settleWithin(Promise.all(mine()), this.opts.config.drainTimeoutMs))) {
      for (const a of this.active.values()) if (a.job.model === name) a.ctl.abort('shutdown' satisfies AbortReason);
      await settleWithin(Promise.all(mine()), 10_000);
    }
    await slot.engine.close().catch((err: unknown) => this.logger.warn({ err, model: name }, 'engine close failed'));
    const channel = this.keys.loadChannel(name);
    this.slotByChannel.delete(channel);
    await this.sub.unsubscribe(channel).catch(() => {});
    this.slots.delete(name);
    this.logger.info({ model: name }, 'model unloaded');
    await this.heartbeat();
  }

  /** Restarts the engines of one model, or of all (control job `restart-engine`): each drains and comes back. */
  async restartEngine(name?: string): Promise<void> {
    const names = name ? [name] : [...this.slots.keys()];
    for (const n of names) {
      if (!this.slots.has(n)) throw new ConfigError(`this worker does not serve "${n}"`);
      await this.unloadModel(n);
      await this.loadModel(n);
      this.metrics.engineRestarts.inc({ model: n });
    }
  }

  /** Logs the process events of engines that run one (vllm). */
  private watchEngine(engine: Engine, model: string, replica: number): void {
    if (!(engine instanceof EventEmitter)) return;
    const log = this.logger.child({ model, replica });
    engine.on('spawn', (e: object) => log.info(e, 'engine process started'));
    engine.on('ready', (e: object) => log.info(e, 'engine ready'));
    engine.on('exit', (e: object) => log.warn(e, 'engine process exited'));
    engine.on('restart', (e: object) => {
      log.warn(e, 'engine restart scheduled');
      this.metrics.engineRestarts.inc({ model });
    });
    engine.on('error', (err: unknown) => log.warn({ err }, 'engine error'));
  }

  /** Whether the engine can take work now (an engine restarting, or saturated by its own account, cannot). */
  private engineAvailable(slot: Slot): boolean {
    return (slot.engine.load?.() ?? 0) < 1;
  }

  /** The agent's status as its heartbeat reports it. */
  status(): WorkerStatus {
    let capacity = 0;
    let inflight = 0;
    for (const s of this.slots.values()) {
      capacity += s.engine.capacity;
      inflight += s.inflight;
    }
    this.accrueBusy();
    return {
      id: this.id,
      host: hostname(),
      pid: process.pid,
      state: this.state,
      models: [...this.slots.keys()],
      engines: Object.fromEntries([...this.slots.values()].map((s) => [s.model, s.engine.state ?? 'ready'])),
      capacity,
      inflight,
      busySlotMs: Math.round(this.busySlotMs),
      startedAt: this.startedAt,
      at: Date.now(),
      metricsPort: this.metricsPort,
    };
  }

  private accrueBusy(): void {
    const now = Date.now();
    let inflight = 0;
    for (const s of this.slots.values()) inflight += s.inflight;
    this.busySlotMs += inflight * (now - this.busySince);
    this.busySince = now;
  }

  private async heartbeat(): Promise<void> {
    try {
      await timeRedis(this.metrics.redisLatency, 'heartbeat', () =>
        this.workers.beat(this.status(), this.opts.config.heartbeatTtlMs),
      );
      for (const slot of this.slots.values()) this.publishLoad(slot, true);
    } catch (err) {
      this.logger.warn({ err }, 'heartbeat failed');
      this.emit('error', err);
    }
  }

  /**
   * The claim priority: (in-flight + 0.5) / capacity, or the engine's own load
   * figure when higher; Infinity when full or not claiming. The lowest score
   * waits for the next request. The half-request offset is the Sainte-Laguë
   * divisor from proportional apportionment: it hands out requests in
   * proportion to capacity without bias. Plain in-flight / capacity ties
   * often, and ties go to the worker that has waited longest, usually the
   * smallest; (in-flight + 1) / capacity favours the largest.
   */
  private score(slot: Slot): number {
    if (this.state !== 'ready' || slot.closing || slot.inflight >= slot.engine.capacity || !this.engineAvailable(slot))
      return Infinity;
    return Math.max((slot.inflight + 0.5) / slot.engine.capacity, slot.engine.load?.() ?? 0);
  }

  private publishLoad(slot: Slot, force = false): void {
    const score = this.score(slot);
    if (!force && score === slot.lastScore) return;
    slot.lastScore = score;
    this.redis.publish(this.keys.loadChannel(slot.model), encodeLoad(this.id, score)).catch(() => {});
  }

  private onPeerLoad(slot: Slot, message: string): void {
    const m = decodeLoad(message);
    if (!m || m.worker === this.id) return;
    slot.view.update(m.worker, m.score);
    slot.peerEvents++;
    // A peer became less loaded than us while we wait for work: step aside.
    if (slot.blocked && slot.blockingId !== null && !slot.view.isLeast(this.score(slot))) {
      unblockClient(this.redis, slot.blockingId).catch(() => {});
    } else if (slot.blocked) {
      this.nudge(slot);
    }
    this.wakeLoop(slot);
  }

  private wakeLoop(slot: Slot): void {
    const wake = slot.wake;
    slot.wake = null;
    wake?.resolve();
  }

  /**
   * Claims while the engine has room. Every claim is preceded by a dispatch
   * that moves staged requests into the stream in fair order (see
   * `claimFair`), and peers learn of every claim through the load channel
   * (see `nudge`).
   */
  private async claimLoop(slot: Slot): Promise<void> {
    const c = this.opts.config;
    let failures = 0;
    while (this.state === 'ready' && !slot.closing) {
      const free = slot.engine.capacity - slot.inflight;
      if (free <= 0) {
        slot.wake = deferred();
        await slot.wake.promise;
        continue;
      }
      if (!this.engineAvailable(slot)) {
        // Restarting or saturated: claim nothing until it recovers.
        slot.wake = deferred();
        const t = setTimeout(() => this.wakeLoop(slot), ENGINE_RECHECK_MS);
        await slot.wake.promise;
        clearTimeout(t);
        this.publishLoad(slot);
        continue;
      }
      let entries: StreamEntries;
      try {
        // A dead worker's requests, which clients are waiting on, go before new ones.
        if (slot.takeoverDue.size > 0 && !this.reclaiming && (await this.takeOverDue(slot)) > 0) continue;
        if (c.claimPolicy === 'fifo') {
          entries = await this.claimFair(slot, free, true);
        } else if (slot.view.isLeast(this.score(slot))) {
          // One at a time, so the next request goes to whoever is least loaded then.
          entries = await this.claimFair(slot, 1, true);
        } else {
          // Others are less loaded and wait for new work; take only what nobody took.
          slot.wake = deferred();
          const t = setTimeout(() => this.wakeLoop(slot), NOT_LEAST_POLL_MS);
          await slot.wake.promise;
          clearTimeout(t);
          if (this.state !== 'ready') break;
          entries = await this.claimFair(slot, 1, false);
        }
        failures = 0;
      } catch (err) {
        if (this.state !== 'ready') break;
        this.logger.warn({ err, model: slot.model }, 'claim failed; retrying');
        await delay(backoffMs(failures++, 100, 2000));
        continue;
      }
      const scoreBefore = slot.lastScore;
      for (const [entryId, fields] of entries) this.startRun(slot, entryId, fields, false);
      // Peers waiting on the stream hear of every claim (see nudge), even one that left our score as it was.
      if (entries.length > 0 && slot.lastScore === scoreBefore) this.publishLoad(slot, true);
    }
  }

  /**
   * Dispatches staged requests until `count` entries wait in the stream (in
   * fair order; handed-back entries already there count, so they go first),
   * then claims up to `count`, blocking on the claim connection or not. The
   * dispatch tops up rather than adds, so the stream's FIFO part stays short
   * and a later request of a higher priority or a less served tenant can still
   * go first.
   */
  private async claimFair(slot: Slot, count: number, block: boolean): Promise<StreamEntries> {
    const seen = slot.peerEvents;
    await this.queue.dispatch(slot.model, count);
    if (!block) return this.queue.claimNow(slot.model, this.id, count);
    if (isCluster(slot.blocking)) {
      // The node that serves the model's slot, and the connection's id there, may have changed (failover).
      slot.blockingId = await blockedClientOf(slot.blocking, this.keys.requests(slot.model)).catch(() => null);
    }
    slot.blocked = true;
    try {
      // A peer claimed while our dispatch was under way: the entry we saw waiting may be gone.
      if (slot.peerEvents !== seen) this.nudge(slot);
      return await this.queue.claim(slot.blocking, slot.model, this.id, count, CLAIM_BLOCK_MS);
    } finally {
      slot.blocked = false;
    }
  }

  /**
   * Runs one dispatch for a claim loop that waits in XREADGROUP, when a peer
   * claimed. The race it closes: our dispatch saw an entry waiting and moved
   * nothing, then a peer took that entry before our blocking read arrived, so
   * we would wait out the whole block while requests are staged. Every claim
   * is announced on the load channel after Redis ran it; the dispatch this
   * triggers moves one staged request (if the stream is empty), which Redis
   * hands to the blocked read at once. The claimer does not refill the stream
   * itself: that would keep one request committed ahead of everything staged
   * whenever the fleet is busy, and nobody waits then.
   */
  private nudge(slot: Slot): void {
    this.queue.dispatch(slot.model, 1).catch((err: unknown) => this.logger.debug({ err, model: slot.model }, 'dispatch failed'));
  }

  private startRun(slot: Slot, entryId: string, fields: string[], takeover: boolean): void {
    this.accrueBusy();
    slot.inflight++;
    slot.running.add(entryId);
    this.publishLoad(slot);
    const run = this.run(slot, entryId, fields, takeover);
    this.runModel.set(run, slot.model);
    this.runs.add(run);
    void run.finally(() => this.runs.delete(run));
  }

  /**
   * The periodic sweep: takes over the requests of consumers whose worker is
   * no longer alive, takes back its own pending entries that nothing runs (an
   * ack or hand-back that failed), and clears dead workers from the group and
   * the workers set.
   */
  private async reclaimDead(): Promise<void> {
    if (this.reclaiming || this.state !== 'ready') return;
    this.reclaiming = true;
    try {
      const live = new Set((await this.workers.live()).map((w) => w.id));
      for (const slot of this.slots.values()) {
        const pending = await this.queue.pendingConsumers(slot.model);
        if (pending.has(this.id)) await this.reclaimFrom(slot, this.id, TAKEOVER_MIN_IDLE_MS);
        for (const name of await this.queue.consumers(slot.model)) {
          if (name === this.id || live.has(name)) continue;
          if (pending.has(name) && (await this.reclaimFrom(slot, name, TAKEOVER_MIN_IDLE_MS)) < pending.get(name)!) {
            slot.takeoverDue.add(name);
          }
          if (await this.queue.deleteConsumerIfIdle(slot.model, name)) {
            slot.view.remove(name);
            this.logger.info({ model: slot.model, dead: name }, 'dead worker cleared');
          }
        }
      }
      await this.workers.prune();
    } catch (err) {
      this.logger.warn({ err }, 'reclaim sweep failed');
    } finally {
      this.reclaiming = false;
    }
  }

  /** Takes over up to the slot's free room of `consumer`'s pending entries; resolves with how many it started. */
  private async reclaimFrom(slot: Slot, consumer: string, minIdleMs: number): Promise<number> {
    const free = slot.engine.capacity - slot.inflight;
    // An engine that cannot take work would only burn the requests' attempts.
    if (free <= 0 || !this.engineAvailable(slot)) return 0;
    // Our own list includes the entries we are running; look past them.
    const count = consumer === this.id ? free + slot.running.size : free;
    const entries = await this.queue.takeOver(slot.model, consumer, this.id, count, minIdleMs);
    let started = 0;
    for (const [entryId, fields] of entries) {
      if (slot.running.has(entryId)) continue; // ours and running: only its idle time was reset
      this.logger.info({ model: slot.model, entryId, from: consumer }, 'request taken over');
      this.metrics.reclaims.inc({ model: slot.model });
      this.startRun(slot, entryId, fields, true);
      started++;
    }
    return started;
  }

  /**
   * Run by the claim loop when room frees: takes over the entries of dead
   * consumers that the sweep could not take for lack of room, ahead of new
   * requests. Resolves with how many it started.
   */
  private async takeOverDue(slot: Slot): Promise<number> {
    let started = 0;
    for (const name of slot.takeoverDue) started += await this.reclaimFrom(slot, name, TAKEOVER_MIN_IDLE_MS);
    const pending = await this.queue.pendingConsumers(slot.model);
    for (const name of slot.takeoverDue) if (!(pending.get(name)! > 0)) slot.takeoverDue.delete(name);
    return started;
  }

  /**
   * The requests among `reqs` whose gateway is gone and that nobody follows.
   * A gateway is gone when its `alive` key has expired while its `known` key
   * (which outlives every request it admitted) still exists; a gateway id
   * with neither key was never an llmux gateway this Redis knows (a test
   * harness, a script, keys lost with a Redis restart) and is left alone. A
   * request some client follows from another gateway (resume, idempotent
   * retry) runs on. The usual cost is one EXISTS per distinct gateway, sent in
   * one write (auto-pipelining); the other checks run only for a gateway whose
   * `alive` key is missing.
   */
  private async orphaned(reqs: readonly { gw: string; rid: string }[]): Promise<Set<string>> {
    const gws = [...new Set(reqs.map((r) => r.gw))];
    const alive = await Promise.all(gws.map((gw) => this.redis.exists(this.keys.gatewayAlive(gw))));
    const missing = new Set(gws.filter((_, i) => alive[i] === 0));
    if (missing.size === 0) return new Set();
    const suspects = reqs.filter((r) => missing.has(r.gw));
    const [known, followed] = await Promise.all([
      Promise.all([...missing].map(async (gw) => ((await this.redis.exists(this.keys.gatewayKnown(gw))) === 1 ? gw : null))),
      Promise.all(suspects.map((r) => this.redis.exists(this.keys.requestFollowers(r.gw, r.rid)))),
    ]);
    const gone = new Set(known.filter((gw) => gw !== null));
    return new Set(suspects.filter((r, i) => gone.has(r.gw) && followed[i] === 0).map((r) => r.rid));
  }

  /** Every GATEWAY_CHECK_INTERVAL_MS: cancels the running requests of gateways that are gone. */
  private async checkGateways(): Promise<void> {
    if (this.checkingGateways || this.active.size === 0) return;
    this.checkingGateways = true;
    try {
      const orphans = await this.orphaned([...this.active.values()].map((a) => ({ gw: a.job.gw, rid: a.job.rid })));
      for (const rid of orphans) this.active.get(rid)?.ctl.abort('gateway_gone' satisfies AbortReason);
    } catch (err) {
      this.logger.debug({ err }, 'gateway check failed');
    } finally {
      this.checkingGateways = false;
    }
  }

  /**
   * Moves a malformed entry to the model's dead-letter stream, then acks and
   * deletes it. If the dead letter cannot be written, the entry stays pending
   * under this worker, and the sweep takes it back and tries again.
   */
  private async deadLetter(slot: Slot, entryId: string, fields: string[], error: string): Promise<void> {
    const model = slot.model;
    const reason = deadLetterReason(fields, error);
    try {
      const id = await addDeadLetter(this.redis, this.keys, model, { reason, entryId, worker: this.id, at: Date.now(), fields });
      this.metrics.deadLetters.inc({ model });
      this.logger.warn({ model, entryId, deadLetter: id, reason }, 'malformed request entry moved to the dead-letter stream');
    } catch (err) {
      this.logger.warn({ err, model, entryId, reason }, 'could not write a dead letter; the entry stays pending');
      await this.finish(slot, entryId, 'leave');
      return;
    }
    await this.finish(slot, entryId, 'ack');
  }

  private async run(slot: Slot, entryId: string, fields: string[], takeover: boolean): Promise<void> {
    const model = slot.model;
    const c = this.opts.config;
    let job: Job;
    try {
      job = decodeJob(fields);
    } catch (err) {
      if (!(err instanceof MalformedJobError)) throw err;
      await this.deadLetter(slot, entryId, fields, err.message);
      return;
    }
    const log = this.logger.child({ rid: job.rid, model, tenant: job.tenant, priority: job.priority });
    const trace = traceAttempt(this.tracing, job, this.id, takeover);
    const token = `${this.id}:${randomBase64url(6)}`;
    const retainMs = job.retainMs || c.outputRetentionMs;
    const ttlMs = Math.max(0, job.deadline - Date.now()) + retainMs;
    const ctl = new AbortController();
    const active: Active = { ctl, job, tokens: 0 };
    const stream = new RequestStream({
      rid: job.rid,
      gatewayId: job.gw,
      token,
      ttlMs,
      retainMs,
      writer: this.events,
      flusher: this.flusher,
      maxBatchTokens: c.maxBatchTokens,
      onFenced: () => ctl.abort('fenced' satisfies AbortReason),
      onLost: () => ctl.abort('lost' satisfies AbortReason),
    });
    let outcome: 'ack' | 'handback' | 'leave' = 'ack';
    /** Counted once when the attempt settles; null: nothing ran (the request had already ended). */
    let ended: WorkerOutcome | null = null;
    let deadlineTimer: NodeJS.Timeout | null = null;
    this.active.set(job.rid, active);
    try {
      // One round trip before the engine starts: the checks read keys `begin` does not touch, and
      // `begin` runs whatever they say (a cancelled or orphaned request still ends its log), so
      // all three go out together.
      const [cancelled, orphaned, begun] = await Promise.all([
        this.cancellation.isCancelled(model, job.rid),
        this.orphaned([{ gw: job.gw, rid: job.rid }]),
        this.log.begin(job.gw, job.rid, token, c.maxAttempts, ttlMs),
      ]);
      // Every event is checked against the number it must get, so writes a Redis failover lost are noticed.
      if (begun.status !== 'done') stream.expectFrom(begun.seq);
      if (cancelled && begun.status !== 'done') {
        log.info('request cancelled before start');
        ended = 'cancelled';
        await stream.fail(499, 'cancelled', CANCELLED_MESSAGE);
        return;
      }
      if ((orphaned.size > 0 || ctl.signal.reason === 'gateway_gone') && begun.status !== 'done') {
        // Queued for a gateway that died: never run. The terminal event ends its output log.
        log.info({ gateway: job.gw, started: false }, 'gateway gone; request cancelled');
        ended = 'cancelled';
        await stream.fail(499, 'gateway_gone', GATEWAY_GONE_MESSAGE, true);
        return;
      }
      if (begun.status === 'done') {
        log.info('request had already ended; entry acked');
        return;
      }
      if (begun.status === 'exhausted') {
        log.warn({ attempts: begun.attempts }, 'request failed on every attempt');
        ended = 'error';
        await stream.fail(503, 'max_attempts_exceeded', `The request failed on all ${c.maxAttempts} attempts; retry it later.`);
        return;
      }
      if (begun.attempts === 1) this.metrics.queueTime.observe({ model }, Math.max(0, Date.now() - job.enqueuedAt) / 1000);
      const left = job.deadline - Date.now();
      if (left <= 0) {
        ended = 'timeout';
        await stream.fail(504, 'deadline_exceeded', 'The request waited in the queue past its deadline.');
        return;
      }
      deadlineTimer = setTimeout(() => ctl.abort('deadline' satisfies AbortReason), left);
      const resume: Resume | undefined = begun.tokens > 0 || begun.text ? { text: begun.text, tokens: begun.tokens } : undefined;
      if (begun.tokens > 0) this.metrics.migrations.inc({ model });
      if (resume || takeover)
        log.info({ attempt: begun.attempts, resumedTokens: begun.tokens, seq: begun.seq }, 'request resumed');
      else log.debug({ attempt: begun.attempts }, 'request started');
      const t0 = Date.now();
      // Prompts and completions are logged only when the operator asked for it (LOG_REQUEST_CONTENT).
      let content: string | null = c.logRequestContent ? begun.text : null;
      trace.generating(begun.attempts, begun.tokens);
      // The labelled child once per request, not a label lookup per token.
      const generated = this.metrics.generationTokens.labels({ model });
      const result = await slot.engine.generate(
        job.params,
        (text, n) => {
          active.tokens += n;
          generated.inc(n);
          if (content !== null) content += text;
          stream.push(text, n);
        },
        ctl.signal,
        resume,
      );
      const completionTokens = begun.tokens + result.completionTokens;
      await stream.done(result.finishReason, result.promptTokens, completionTokens);
      if (stream.fenced) throw new AbortError();
      ended = 'ok';
      log.info(
        {
          tokens: completionTokens,
          ms: Date.now() - t0,
          waitMs: t0 - job.enqueuedAt,
          finish: result.finishReason,
          attempt: begun.attempts,
          ...(content !== null ? { prompt: job.params.messages ?? job.params.prompt, completion: content } : {}),
        },
        'request done',
      );
    } catch (err) {
      const reason = ctl.signal.reason as AbortReason | undefined;
      if (stream.fenced || reason === 'fenced') {
        // Another worker owns it now; its entry is that worker's to ack.
        stream.discard();
        outcome = 'leave';
        ended = 'fenced';
        log.warn('request fenced: another worker took it over');
      } else if (stream.broken) {
        // Redis lost events of this attempt (writes a failed primary had not replicated), or could not
        // take one: the client may have a hole in its text. End it with an error it is sure to get.
        ended = 'error';
        log.warn({ lost: stream.lost, tokens: active.tokens, err }, 'request output lost in Redis; request ended with an error');
        await stream
          .recover(503, 'output_lost', 'Part of the response was lost when Redis failed over; retry the request.')
          .catch((e: unknown) => log.error({ err: e }, 'could not send the error event'));
      } else if (err instanceof AbortError && reason === 'cancelled') {
        // The terminal event ends the request's log, for anyone replaying it later.
        ended = 'cancelled';
        await stream.fail(499, 'cancelled', CANCELLED_MESSAGE).catch(() => {});
        log.info({ tokens: active.tokens }, 'request cancelled');
      } else if (err instanceof AbortError && reason === 'gateway_gone') {
        // Nobody reads the reply stream: drop unsent text; only the terminal event, which ends the log.
        ended = 'cancelled';
        await stream.fail(499, 'gateway_gone', GATEWAY_GONE_MESSAGE, true).catch(() => {});
        log.info({ gateway: job.gw, tokens: active.tokens, started: true }, 'gateway gone; request cancelled');
      } else if (err instanceof AbortError && reason === 'deadline') {
        ended = 'timeout';
        await stream.fail(504, 'deadline_exceeded', 'The request ran past its deadline.').catch(() => {});
      } else if ((err instanceof AbortError && reason === 'shutdown') || err instanceof EngineUnavailableError) {
        // Not the request's fault: flush what was generated, then give it to another attempt.
        stream.flush();
        await stream.settled();
        stream.discard();
        outcome = stream.fenced ? 'leave' : 'handback';
        ended = stream.fenced ? 'fenced' : 'handed_back';
        log.warn({ tokens: active.tokens, reason: reason ?? (err as Error).message }, 'request handed back');
      } else if (err instanceof PromptTooLongError) {
        ended = 'error';
        await stream.fail(400, 'context_length_exceeded', err.message).catch(() => {});
      } else {
        log.error({ err }, 'request failed');
        ended = 'error';
        await stream.fail(500, 'engine_error', `The engine failed: ${(err as Error).message}`).catch((e: unknown) => {
          log.error({ err: e }, 'could not send the error event');
        });
      }
    } finally {
      if (deadlineTimer) clearTimeout(deadlineTimer);
      this.active.delete(job.rid);
      await this.finish(slot, entryId, outcome, fields);
      if (ended) this.metrics.finished.inc({ model, outcome: ended });
      trace.end(ended ?? 'ended', active.tokens);
    }
  }

  /** Acks (or hands back, or leaves) the entry and frees its slot. */
  private async finish(slot: Slot, entryId: string, outcome: 'ack' | 'handback' | 'leave', fields?: string[]): Promise<void> {
    try {
      if (outcome === 'ack') await this.queue.ack(slot.model, entryId);
      else if (outcome === 'handback') {
        if ((await this.queue.handBack(slot.model, entryId, this.id, fields!)) === null) {
          this.logger.warn({ model: slot.model, entryId }, 'hand-back skipped: another worker holds the entry now');
        } else this.metrics.handbacks.inc({ model: slot.model });
      }
    } catch (err) {
      // The entry stays pending under this worker; a takeover (ours after a restart, or a peer's) finishes it.
      this.logger.warn({ err, model: slot.model, entryId, outcome }, 'could not settle the entry');
    }
    this.accrueBusy();
    slot.inflight--;
    slot.running.delete(entryId);
    this.publishLoad(slot);
    this.wakeLoop(slot);
  }

  /**
   * Drains and stops: no more claims; in-flight requests get `drainTimeoutMs`
   * to finish; the rest are handed back so another worker continues them.
   * Idempotent; every step runs even if an earlier one fails, and each step
   * that waits on Redis is bounded in time.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const wasReady = this.state === 'ready';
    this.setState('draining');
    const step = async (what: string, fn: () => unknown, ms = 5000) => {
      const run = (async () => fn())().catch((err: unknown) => this.logger.warn({ err }, `close: ${what} failed`));
      if (!(await settleWithin(run, ms))) this.logger.warn(`close: ${what} did not finish within ${ms} ms`);
    };
    if (this.reclaimTimer) clearInterval(this.reclaimTimer);
    await step('stop control jobs', () => this.control?.close(), 5000);
    for (const slot of this.slots.values()) {
      slot.blocking.disconnect();
      this.wakeLoop(slot);
      this.publishLoad(slot, true);
    }
    await step('stop claim loops', () => Promise.all([...this.slots.values()].map((s) => s.loop)), CLAIM_BLOCK_MS);
    if (wasReady) await step('heartbeat', () => this.heartbeat(), 1000);
    if (this.runs.size > 0) {
      this.logger.info({ inflight: this.runs.size }, 'draining in-flight requests');
      const drained = Promise.all(this.runs);
      if (!(await settleWithin(drained, this.opts.config.drainTimeoutMs))) {
        this.logger.warn({ inflight: this.active.size }, 'drain deadline passed; handing the rest back');
        for (const a of this.active.values()) a.ctl.abort('shutdown' satisfies AbortReason);
      }
      await step('finish requests', () => Promise.all(this.runs), 10_000);
    }
    if (this.gatewayTimer) clearInterval(this.gatewayTimer);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.flusher.close();
    await step('deregister', () => this.workers.remove(this.id), 1000);
    for (const slot of this.slots.values()) await step('close engine', () => slot.engine.close());
    await step('export traces', () => this.tracing.shutdown(), 2000);
    await step('quit redis', () => Promise.all([this.redis.quit(), this.sub.quit()]), 1000);
    this.redis.disconnect();
    this.sub.disconnect();
    this.setState('stopped');
    await step('close metrics', () => this.metricsServer?.close(), 1000);
  }
}
