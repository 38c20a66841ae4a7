import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import {
  AbortError,
  backoffMs,
  Cancellation,
  ConfigError,
  createBlockingRedis,
  createRedis,
  decodeJob,
  deferred,
  delay,
  DeploymentRegistry,
  Keys,
  MalformedJobError,
  PromptTooLongError,
  ReplyWriter,
  RequestQueue,
  settleWithin,
  WorkerRegistry,
  type Deferred,
  type Deployment,
  type Job,
  type Logger,
  type Redis,
  type WorkerConfig,
  type WorkerStatus,
} from '@llmux/shared';
import { createEngine, type Engine } from './engines/index.js';
import { Flusher, RequestStream } from './request-stream.js';

export type AgentState = WorkerStatus['state'];

export interface WorkerAgentOptions {
  config: WorkerConfig;
  logger: Logger;
  /** Builds an engine for a deployment. Default: createEngine. */
  engineFactory?: (d: Deployment) => Promise<Engine>;
}

/** One served deployment: its engine, its claim loop and its load. */
interface Slot {
  deployment: Deployment;
  engine: Engine;
  /** Claimed and not yet finished. */
  inflight: number;
  blocking: Redis;
  /** Resolved when a request finishes, to wake a loop that waits for room. */
  wake: Deferred<void> | null;
  loop: Promise<void> | null;
}

/** Why a running request was aborted. */
type AbortReason = 'cancelled' | 'deadline' | 'shutdown';

interface Active {
  ctl: AbortController;
  job: Job;
  tokens: number;
}

/** How long one XREADGROUP blocks; bounds how long stopping a loop may take. */
const CLAIM_BLOCK_MS = 2000;

/**
 * The worker agent: serves some deployments with one engine each, claims
 * requests only while it has free slots, streams tokens back, heartbeats, and
 * drains on close().
 */
export class WorkerAgent extends EventEmitter {
  state: AgentState = 'starting';
  readonly id: string;
  private readonly keys: Keys;
  private readonly redis: Redis;
  private readonly sub: Redis;
  private readonly queue: RequestQueue;
  private readonly writer: ReplyWriter;
  private readonly cancellation: Cancellation;
  private readonly workers: WorkerRegistry;
  private readonly flusher: Flusher;
  private readonly slots = new Map<string, Slot>();
  private readonly active = new Map<string, Active>();
  private readonly runs = new Set<Promise<void>>();
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private readonly startedAt = Date.now();
  private closing: Promise<void> | null = null;
  private readonly log: Logger;

  constructor(private readonly opts: WorkerAgentOptions) {
    super();
    const c = opts.config;
    this.id = c.workerId;
    this.log = opts.logger.child({ worker: this.id });
    this.keys = new Keys(c.keyPrefix);
    this.redis = createRedis(c.redisUrl, { name: `worker:${this.id}` });
    this.sub = createRedis(c.redisUrl, { name: `worker:${this.id}:cancel` });
    this.queue = new RequestQueue(this.redis, this.keys);
    this.writer = new ReplyWriter(this.redis, this.keys, c.replyStreamMaxLen);
    this.cancellation = new Cancellation(this.redis, this.keys);
    this.workers = new WorkerRegistry(this.redis, this.keys);
    this.flusher = new Flusher(c.flushIntervalMs);
    for (const conn of [this.redis, this.sub]) conn.on('error', (err) => this.log.debug({ err }, 'redis error'));
  }

  private setState(state: AgentState): void {
    if (this.state === state) return;
    this.state = state;
    this.log.info({ state }, 'worker state');
    this.emit('state', state);
  }

  /** Connects, starts an engine per served deployment, then starts claiming. */
  async start(): Promise<void> {
    const c = this.opts.config;
    await Promise.all([this.redis.connect(), this.sub.connect()]);
    const published = await new DeploymentRegistry(this.redis, this.keys).load();
    const names = c.models ?? [...published.keys()];
    if (names.length === 0) throw new ConfigError('no deployments are published; start the controller first');
    const factory =
      this.opts.engineFactory ??
      ((d: Deployment) => createEngine(d, { modelsDir: c.modelsDir, hfEndpoint: c.hfEndpoint, logger: this.log }));
    for (const name of names) {
      const d = published.get(name);
      if (!d) throw new ConfigError(`WORKER_MODELS names "${name}", which is not in the deployments`);
      const engine = await factory(d);
      const t0 = Date.now();
      await engine.start();
      this.log.info({ model: name, engine: d.engine.type, capacity: engine.capacity, ms: Date.now() - t0 }, 'engine started');
      await this.queue.ensureGroup(name);
      const blocking = createBlockingRedis(c.redisUrl, `worker:${this.id}:claim:${name}`);
      blocking.on('error', (err) => this.log.debug({ err }, 'redis error'));
      await blocking.connect();
      this.slots.set(name, { deployment: d, engine, inflight: 0, blocking, wake: null, loop: null });
    }
    await this.cancellation.subscribe(this.sub, (rid) => this.active.get(rid)?.ctl.abort('cancelled' satisfies AbortReason));
    this.setState('ready');
    await this.heartbeat();
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), c.heartbeatIntervalMs);
    for (const [name, slot] of this.slots) slot.loop = this.claimLoop(name, slot);
  }

  /** The agent's status as its heartbeat reports it. */
  status(): WorkerStatus {
    let capacity = 0;
    let inflight = 0;
    for (const s of this.slots.values()) {
      capacity += s.engine.capacity;
      inflight += s.inflight;
    }
    return {
      id: this.id,
      host: hostname(),
      pid: process.pid,
      state: this.state,
      models: [...this.slots.keys()],
      capacity,
      inflight,
      startedAt: this.startedAt,
      at: Date.now(),
    };
  }

  private async heartbeat(): Promise<void> {
    try {
      await this.workers.beat(this.status(), this.opts.config.heartbeatTtlMs);
    } catch (err) {
      this.log.warn({ err }, 'heartbeat failed');
      this.emit('error', err);
    }
  }

  private async claimLoop(model: string, slot: Slot): Promise<void> {
    let failures = 0;
    while (this.state === 'ready') {
      const free = slot.engine.capacity - slot.inflight;
      if (free <= 0) {
        slot.wake = deferred();
        await slot.wake.promise;
        continue;
      }
      let entries: [string, string[]][];
      try {
        entries = await this.queue.claim(slot.blocking, model, this.id, free, CLAIM_BLOCK_MS);
        failures = 0;
      } catch (err) {
        if (this.state !== 'ready') break;
        this.log.warn({ err, model }, 'claim failed; retrying');
        await delay(backoffMs(failures++, 100, 2000));
        continue;
      }
      for (const [entryId, fields] of entries) {
        slot.inflight++;
        const run = this.run(model, slot, entryId, fields);
        this.runs.add(run);
        void run.finally(() => this.runs.delete(run));
      }
    }
  }

  private async run(model: string, slot: Slot, entryId: string, fields: string[]): Promise<void> {
    let job: Job;
    try {
      job = decodeJob(fields);
    } catch (err) {
      if (!(err instanceof MalformedJobError)) throw err;
      this.log.warn({ model, entryId, reason: err.message }, 'malformed request entry dropped');
      await this.finish(model, slot, entryId);
      return;
    }
    const log = this.log.child({ rid: job.rid, model });
    const c = this.opts.config;
    const stream = new RequestStream(job.rid, job.gw, this.writer, this.flusher, c.maxBatchTokens);
    const ctl = new AbortController();
    const active: Active = { ctl, job, tokens: 0 };
    this.active.set(job.rid, active);
    let deadlineTimer: NodeJS.Timeout | null = null;
    try {
      if (await this.cancellation.isCancelled(model, job.rid)) {
        stream.discard();
        log.info('request cancelled before start');
        return;
      }
      const left = job.deadline - Date.now();
      if (left <= 0) {
        await stream.fail(504, 'deadline_exceeded', 'The request waited in the queue past its deadline.');
        return;
      }
      deadlineTimer = setTimeout(() => ctl.abort('deadline' satisfies AbortReason), left);
      const t0 = Date.now();
      const result = await slot.engine.generate(
        job.params,
        (text, n) => {
          active.tokens += n;
          stream.push(text, n);
        },
        ctl.signal,
      );
      await stream.done(result.finishReason, result.promptTokens, result.completionTokens);
      log.info(
        { tokens: result.completionTokens, ms: Date.now() - t0, waitMs: t0 - job.enqueuedAt, finish: result.finishReason },
        'request done',
      );
    } catch (err) {
      const reason = ctl.signal.reason as AbortReason | undefined;
      if (err instanceof AbortError && reason === 'cancelled') {
        stream.discard();
        log.info({ tokens: active.tokens }, 'request cancelled');
      } else if (err instanceof AbortError && reason === 'deadline') {
        await stream.fail(504, 'deadline_exceeded', 'The request ran past its deadline.').catch(() => {});
      } else if (err instanceof AbortError) {
        await stream.fail(503, 'worker_shutdown', 'The worker shut down before the request finished; retry it.').catch(() => {});
      } else if (err instanceof PromptTooLongError) {
        await stream.fail(400, 'context_length_exceeded', err.message).catch(() => {});
      } else {
        log.error({ err }, 'request failed');
        await stream.fail(500, 'engine_error', `The engine failed: ${(err as Error).message}`).catch((e: unknown) => {
          log.error({ err: e }, 'could not send the error event');
        });
      }
    } finally {
      if (deadlineTimer) clearTimeout(deadlineTimer);
      this.active.delete(job.rid);
      await this.finish(model, slot, entryId);
    }
  }

  /** Acks the entry and frees its slot. */
  private async finish(model: string, slot: Slot, entryId: string): Promise<void> {
    try {
      await this.queue.ack(model, entryId);
    } catch (err) {
      this.log.warn({ err, model, entryId }, 'ack failed');
    }
    slot.inflight--;
    const wake = slot.wake;
    slot.wake = null;
    wake?.resolve();
  }

  /**
   * Drains and stops: no more claims, in-flight requests get `drainTimeoutMs`
   * to finish, then the rest are aborted with an explicit error event.
   * Idempotent; every step runs even if an earlier one fails.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const wasReady = this.state === 'ready';
    this.setState('draining');
    // Each step is guarded and bounded: Redis may be down while we stop.
    const step = async (what: string, fn: () => unknown, ms = 5000) => {
      const run = (async () => fn())().catch((err: unknown) => this.log.warn({ err }, `close: ${what} failed`));
      if (!(await settleWithin(run, ms))) this.log.warn(`close: ${what} did not finish within ${ms} ms`);
    };
    for (const slot of this.slots.values()) {
      slot.blocking.disconnect();
      slot.wake?.resolve();
    }
    await step('stop claim loops', () => Promise.all([...this.slots.values()].map((s) => s.loop)), CLAIM_BLOCK_MS);
    if (wasReady) await step('heartbeat', () => this.heartbeat(), 1000);
    if (this.runs.size > 0) {
      this.log.info({ inflight: this.runs.size }, 'draining in-flight requests');
      const drained = Promise.all(this.runs);
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), this.opts.config.drainTimeoutMs)));
      if ((await Promise.race([drained, timedOut])) === 'timeout') {
        this.log.warn({ inflight: this.active.size }, 'drain deadline passed; aborting the rest');
        for (const a of this.active.values()) a.ctl.abort('shutdown' satisfies AbortReason);
      }
      clearTimeout(timer);
      await step('finish requests', () => Promise.all(this.runs), 10_000);
    }
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.flusher.close();
    await step('deregister', () => this.workers.remove(this.id), 1000);
    for (const slot of this.slots.values()) await step('close engine', () => slot.engine.close());
    await step('quit redis', () => Promise.all([this.redis.quit(), this.sub.quit()]), 1000);
    this.redis.disconnect();
    this.sub.disconnect();
    this.setState('stopped');
  }
}
