import { watch as watchFile, type FSWatcher } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, resolve } from 'node:path';
import cron, { type ScheduledTask } from 'node-cron';
import {
  ApiKeys,
  ConfigError,
  createRedis,
  DeploymentRegistry,
  Keys,
  loadDeploymentsFile,
  parseDeployments,
  redisEnvOf,
  RequestQueue,
  WorkerRegistry,
  type ApiKeyRecord,
  type ControllerConfig,
  type CreatedApiKey,
  type Deployment,
  type DeploymentsFile,
  type Logger,
  type NewApiKey,
  type Redis,
  type RedisTarget,
  type WorkerStatus,
} from '@llmux/shared';
import {
  NotLeaderError,
  UnknownTargetError,
  type ApplyResult,
  type ClusterEvent,
  type ControllerApi,
  type ModelScale,
  type ProcessInfo,
  type WorkerInfo,
} from './api.js';
import { Autoscaler } from './autoscaler.js';
import { ControlJobs } from './control-jobs.js';
import { EventLog } from './events.js';
import { currentLeader, LeaderLease } from './leader.js';
import { LocalFleet, type ProcessRecord } from './local/fleet.js';
import { probeHttp, probeTimeoutMs } from './local/health.js';
import { Supervised, type ReadyMessage } from './local/supervisor.js';
import { FleetGauges } from './metrics.js';

const require = createRequire(import.meta.url);

/** Entry modules of the other processes, found through their packages. */
function entry(pkg: '@llmux/gateway' | '@llmux/worker-agent'): string {
  return require.resolve(pkg).replace(/index\.js$/, 'main.js');
}

export interface ControllerOptions {
  config: ControllerConfig;
  /** The Redis to use (the configured one, or a private one the entrypoint started): a URL or a full configuration. */
  redis: RedisTarget;
  logger: Logger;
  /** Environment for local children. Default process.env. */
  env?: NodeJS.ProcessEnv;
}

/**
 * The control plane. Every controller reads; the one holding the Redis lease
 * acts: it applies the deployments file (and watches it), runs the local
 * fleet (local mode) or sends control jobs (cluster mode), watches
 * heartbeats and hands a dead worker's requests back to the queue at once,
 * and runs the periodic tasks (health, autoscaling, stream trimming). All
 * state lives in Redis, so a standby that takes over loses nothing.
 */
export class Controller implements ControllerApi {
  readonly keys: Keys;
  readonly redis: Redis;
  private lease!: LeaderLease;
  private readonly registry: DeploymentRegistry;
  private readonly workers: WorkerRegistry;
  private readonly queue: RequestQueue;
  readonly events: EventLog;
  private fleet: LocalFleet | null = null;
  private gateway: Supervised | null = null;
  private readonly control: ControlJobs;
  private readonly autoscaler: Autoscaler;
  private readonly apiKeys: ApiKeys;
  /** Prometheus metrics: fleet and queue gauges read from Redis at scrape time, local restarts counted. */
  readonly metrics: FleetGauges;
  private tasks: ScheduledTask[] = [];
  private fileWatcher: FSWatcher | null = null;
  private fileTimer: NodeJS.Timeout | null = null;
  private deployments: Map<string, Deployment> = new Map();
  private readonly log: Logger;
  private adminAddress: string | null = null;
  private leading = false;
  /** Workers seen alive, to notice when one goes silent. */
  private known = new Set<string>();
  private closing: Promise<void> | null = null;
  private readonly env: NodeJS.ProcessEnv;

  constructor(private readonly o: ControllerOptions) {
    const c = o.config;
    this.env = o.env ?? process.env;
    this.log = o.logger.child({ controller: c.controllerId });
    this.keys = new Keys(c.keyPrefix);
    this.redis = createRedis(o.redis, { name: `controller:${c.controllerId}` });
    this.redis.on('error', (err) => this.log.debug({ err }, 'redis error'));
    this.registry = new DeploymentRegistry(this.redis, this.keys);
    this.workers = new WorkerRegistry(this.redis, this.keys);
    this.queue = new RequestQueue(this.redis, this.keys);
    this.events = new EventLog(this.redis, o.redis, this.keys, this.log);
    this.control = new ControlJobs(o.redis, this.keys, this.log);
    this.apiKeys = new ApiKeys(this.redis, this.keys);
    this.autoscaler = new Autoscaler({
      redis: this.redis,
      keys: this.keys,
      queue: this.queue,
      workers: this.workers,
      targetUtilization: c.targetUtilization,
      scaleDownAfterMs: c.scaleDownAfterMs,
      logger: this.log,
    });
    this.metrics = new FleetGauges({
      redis: this.redis,
      keys: this.keys,
      queue: this.queue,
      workers: this.workers,
      isLeader: () => this.isLeader(),
      id: c.controllerId,
    });
  }

  get id(): string {
    return this.o.config.controllerId;
  }

  /**
   * Connects and starts competing for the lease, publishing `adminAddress`
   * with it. Resolves once this controller is leader (and has taken up the
   * work) or known to be a standby.
   */
  async start(adminAddress: string | null = null): Promise<'leader' | 'standby'> {
    this.adminAddress = adminAddress;
    await this.redis.connect();
    this.lease = new LeaderLease({
      redis: this.redis,
      keys: this.keys,
      id: this.o.config.controllerId,
      adminAddress,
      ttlMs: this.o.config.leaseTtlMs,
      logger: this.log,
    });
    const elected = new Promise<'leader'>((resolve) => this.lease.once('elected', () => resolve('leader')));
    this.lease.on('elected', () => void this.lead());
    this.lease.on('deposed', (reason: string) => void this.follow(reason));
    this.lease.start();
    const holder = await Promise.race([
      elected,
      new Promise<'standby'>((r) => setTimeout(() => r('standby'), Math.min(1000, this.o.config.leaseTtlMs))),
    ]);
    if (holder === 'leader') await this.leaderReady;
    return holder;
  }

  private leaderReadyResolve: (() => void) | null = null;
  /** Resolves when this controller, once elected, has applied the deployments and started its fleet. */
  readonly leaderReady = new Promise<void>((r) => (this.leaderReadyResolve = r));

  isLeader(): boolean {
    return this.leading && this.lease?.isLeader === true;
  }

  private async lead(): Promise<void> {
    this.leading = true;
    const c = this.o.config;
    this.events.record('leader', this.id, `controller ${this.id} leads (${c.mode} mode)`);
    try {
      const file = await this.loadFileOrPublished();
      await this.applyFile(file, false);
      if (c.mode === 'local') await this.startLocal();
      await this.reconcile();
      this.watchFile();
      const every = (ms: number) => (ms % 1000 === 0 && ms <= 59_000 ? `*/${ms / 1000} * * * * *` : null);
      this.schedule('health', every(c.healthIntervalMs), c.healthIntervalMs, () => this.healthTick());
      this.schedule('autoscale', every(c.autoscaleIntervalMs), c.autoscaleIntervalMs, () => this.autoscaleTick());
      this.schedule('trim', '*/30 * * * * *', 30_000, () => this.trimTick());
      this.schedule('stats', '*/10 * * * * *', 10_000, () => this.statsTick());
    } catch (err) {
      this.log.error({ err }, 'could not take up leadership');
    }
    this.leaderReadyResolve?.();
  }

  /**
   * Runs `fn` on a node-cron schedule, never overlapping itself. Periods that
   * are not whole seconds (tests) use a plain interval with the same guard.
   */
  private schedule(name: string, expr: string | null, ms: number, fn: () => Promise<void>): void {
    let running = false;
    const guarded = async () => {
      if (running || !this.isLeader()) return;
      running = true;
      try {
        await fn();
      } catch (err) {
        this.log.warn({ err, task: name }, 'periodic task failed');
      } finally {
        running = false;
      }
    };
    if (expr) {
      this.tasks.push(cron.schedule(expr, guarded, { name, noOverlap: true }));
    } else {
      const t = setInterval(() => void guarded(), ms);
      this.tasks.push({ stop: () => clearInterval(t) } as unknown as ScheduledTask);
    }
  }

  private async follow(reason: string): Promise<void> {
    if (!this.leading) return;
    this.leading = false;
    this.events.record('leader', this.id, `controller ${this.id} stepped down: ${reason}`);
    await this.stopActing();
  }

  private async stopActing(): Promise<void> {
    for (const t of this.tasks) await t.stop();
    this.tasks = [];
    this.fileWatcher?.close();
    this.fileWatcher = null;
    // Local children belong to the leader: the next leader starts its own.
    await Promise.allSettled([this.fleet?.stopAll(), this.gateway?.stop()]);
    this.fleet = null;
    this.gateway = null;
  }

  private async loadFileOrPublished(): Promise<DeploymentsFile> {
    try {
      return await loadDeploymentsFile(this.o.config.deploymentsFile);
    } catch (err) {
      const published = await this.registry.load();
      if (published.size === 0) throw err;
      this.log.warn({ err: (err as Error).message }, 'deployments file unusable; keeping the published deployments');
      return { models: [...published.values()] };
    }
  }

  /** Publishes a deployments document and works out what changed. */
  private async applyFile(file: DeploymentsFile, record = true): Promise<ApplyResult> {
    const before = await this.registry.load();
    await this.registry.publish(file);
    for (const d of file.models) await this.queue.ensureGroup(d.name);
    const after = new Map(file.models.map((d) => [d.name, d]));
    const result: ApplyResult = {
      added: [...after.keys()].filter((n) => !before.has(n)),
      removed: [...before.keys()].filter((n) => !after.has(n)),
      changed: [...after.keys()].filter((n) => before.has(n) && JSON.stringify(before.get(n)) !== JSON.stringify(after.get(n))),
    };
    this.deployments = after;
    // Desired replicas: keep what the autoscaler or an operator set, within the new bounds.
    const desired = await this.redis.hgetall(this.keys.desiredScale());
    const tx = this.redis.multi();
    for (const d of file.models) {
      const cur = desired[d.name] === undefined ? d.replicas.min : Number(desired[d.name]);
      tx.hset(this.keys.desiredScale(), d.name, String(Math.min(d.replicas.max, Math.max(d.replicas.min, cur))));
    }
    for (const n of result.removed) tx.hdel(this.keys.desiredScale(), n);
    await tx.exec();
    if (record && (result.added.length || result.removed.length || result.changed.length)) {
      this.events.record(
        'deployments-applied',
        'deployments',
        `added [${result.added.join(', ')}], removed [${result.removed.join(', ')}], changed [${result.changed.join(', ')}]`,
      );
    }
    return result;
  }

  /** Brings local workers (or, in cluster mode, nothing but the published figures) in line with the desired replicas. */
  private async reconcile(changed: string[] = []): Promise<void> {
    if (!this.fleet) return;
    const desired = await this.desiredMap();
    await this.fleet.reconcile(desired);
    // A changed deployment: its workers restart (draining, handing back) to pick it up.
    for (const model of changed) {
      for (const r of this.fleet.records().filter((p) => p.model === model)) this.fleet.restart(r.id);
    }
  }

  private async desiredMap(): Promise<Map<string, number>> {
    const raw = await this.redis.hgetall(this.keys.desiredScale());
    const out = new Map<string, number>();
    for (const d of this.deployments.values()) out.set(d.name, Number(raw[d.name] ?? d.replicas.min));
    return out;
  }

  private async startLocal(): Promise<void> {
    const c = this.o.config;
    const childEnv: NodeJS.ProcessEnv = {
      ...this.env,
      // Every REDIS_* variable, so a child reaches exactly this Redis (a private one: without credentials or TLS).
      ...redisEnvOf(this.o.redis),
      KEY_PREFIX: c.keyPrefix,
      LOG_LEVEL: this.env.LOG_LEVEL || 'warn',
      DRAIN_TIMEOUT_MS: String(c.drainTimeoutMs),
    };
    const killAfterMs = c.drainTimeoutMs + 5000;
    this.fleet = new LocalFleet({
      module: entry('@llmux/worker-agent'),
      // Each worker serves /metrics on a free port of its own (in its status), so several never collide.
      env: { ...childEnv, METRICS_PORT: c.metrics ? '0' : 'off' },
      idPrefix: c.controllerId,
      logger: this.log,
      killAfterMs,
      crashLoopExits: c.crashLoopExits,
      crashLoopWindowMs: c.crashLoopWindowMs,
    });
    // Each event is recorded after the process table in Redis shows it, so a watcher that sees the event reads a current table.
    this.fleet.on('exit', (e: { id: string; reason: string }) => {
      // Hand its requests back now: no need to wait for its heartbeat to lapse.
      void this.saveProcesses().then(() => this.handOver(e.id, `exited (${e.reason})`));
    });
    this.fleet.on('ready', (e: { id: string }) => {
      void this.saveProcesses().then(() => this.events.record('worker-up', e.id, `worker ${e.id} is ready`));
    });
    this.fleet.on('crash-loop', (e: { id: string }) => {
      void this.saveProcesses().then(() =>
        this.events.record('crash-loop', e.id, `worker ${e.id} keeps crashing; restarts stopped until an operator restarts it`),
      );
    });
    this.fleet.on('change', () => void this.saveProcesses());
    this.fleet.on('restart', () => this.metrics.restarted('worker'));
    const timeoutMs = probeTimeoutMs(c.gatewayHealthIntervalMs);
    const gateway = new Supervised({
      name: 'gateway',
      module: entry('@llmux/gateway'),
      env: { ...childEnv, PORT: String(c.port), HOST: c.host },
      logger: this.log,
      killAfterMs,
      crashLoopExits: c.crashLoopExits,
      crashLoopWindowMs: c.crashLoopWindowMs,
      // A gateway that exits is restarted; one that hangs (stopped, event loop stuck) is found by this probe.
      health: {
        probe: (ready) => probeHttp(`${String(ready.url)}/healthz`, timeoutMs),
        intervalMs: c.gatewayHealthIntervalMs,
        failures: c.gatewayHealthFailures,
      },
    });
    this.gateway = gateway;
    const id = this.gatewayId;
    gateway.on('state', () => void this.saveProcesses());
    gateway.on('ready', (m: ReadyMessage) => {
      void this.saveProcesses().then(() => this.events.record('gateway-up', id, `gateway is ready at ${String(m.url)}`));
    });
    // Counted once per restart, whatever ended the run (an exit, or the health check's SIGKILL).
    gateway.on('restart', (e: { reason: string; restartInMs: number }) => {
      this.metrics.restarted('gateway');
      void this.saveProcesses().then(() =>
        this.events.record('gateway-restarted', id, `gateway ended (${e.reason}); restarting in ${e.restartInMs} ms`),
      );
    });
    gateway.on('crash-loop', () => {
      void this.saveProcesses().then(() =>
        this.events.record('crash-loop', id, 'the gateway keeps crashing; restarts stopped until the controller is restarted'),
      );
    });
    gateway.start();
  }

  /** The local gateway's id in the process table. */
  private get gatewayId(): string {
    return `${this.o.config.controllerId}-gateway`;
  }

  /**
   * Local mode: resolves with the gateway's URL once the gateway and one
   * worker of every model that should run are ready.
   */
  async localReady(): Promise<string> {
    if (!this.gateway || !this.fleet) throw new Error('not running locally (standby, or cluster mode)');
    const fleet = this.fleet;
    const wanted = [...(await this.desiredMap())].filter(([, n]) => n > 0).map(([m]) => m);
    const waiting = new Set(wanted.filter((m) => !fleet.records().some((r) => r.model === m && r.state === 'ready')));
    const workers = new Promise<void>((resolve, reject) => {
      if (waiting.size === 0) return resolve();
      const onReady = (e: { model: string }) => {
        waiting.delete(e.model);
        if (waiting.size === 0) {
          fleet.off('ready', onReady);
          resolve();
        }
      };
      fleet.on('ready', onReady);
      fleet.once('crash-loop', (e: { id: string }) =>
        reject(new ConfigError(`worker ${e.id} crashed repeatedly at start; see its log above`)),
      );
    });
    const gw: ReadyMessage = await this.gateway.ready;
    await workers;
    return String(gw.url);
  }

  /** Writes the process table (`<p>:controller:processes`): the gateway's record and each worker's. */
  private async saveProcesses(): Promise<void> {
    if (!this.fleet && !this.gateway) return;
    const recs: ProcessRecord[] = this.fleet?.records() ?? [];
    if (this.gateway) recs.unshift({ kind: 'gateway', id: this.gatewayId, model: null, ...this.gateway.snapshot() });
    const tx = this.redis.multi().del(this.keys.localProcesses());
    for (const r of recs) tx.hset(this.keys.localProcesses(), r.id, JSON.stringify(r));
    await tx.exec().catch(() => {});
  }

  /** Puts a gone worker's requests back in the queue and forgets it. */
  private async handOver(workerId: string, why: string): Promise<void> {
    let moved = 0;
    for (const model of this.deployments.keys()) {
      moved += await this.queue.handOverFrom(model, workerId);
      await this.queue.deleteConsumerIfIdle(model, workerId);
    }
    await this.workers.remove(workerId);
    this.known.delete(workerId);
    this.events.record('worker-dead', workerId, `worker ${workerId} ${why}`);
    if (moved > 0)
      this.events.record('requests-handed-over', workerId, `${moved} request(s) of ${workerId} put back in the queue`);
  }

  /** Notices workers whose heartbeat lapsed, hands their requests over, and restarts hung local ones. */
  private async healthTick(): Promise<void> {
    const live = await this.workers.live();
    const liveIds = new Set(live.map((w) => w.id));
    for (const id of liveIds) {
      if (!this.known.has(id)) this.known.add(id);
    }
    const registered = await this.redis.zrange(this.keys.workers(), '0', '-1');
    const silent = [...new Set([...registered, ...this.known])].filter((id) => !liveIds.has(id));
    for (const id of silent) {
      await this.handOver(id, 'stopped heartbeating');
      if (this.fleet?.killHung(id)) this.events.record('worker-restarted', id, `worker ${id} was hung; killed to restart it`);
    }
  }

  private async autoscaleTick(): Promise<void> {
    const decisions = await this.autoscaler.tick([...this.deployments.values()]);
    for (const d of decisions) this.events.record('scaled', d.model, `${d.model}: ${d.from} -> ${d.to} replicas (${d.reason})`);
    if (decisions.length > 0) await this.reconcile();
  }

  /** Rolls up each model's scale figures into `<p>:controller:stats` for dashboards and the CLI. */
  private async statsTick(): Promise<void> {
    const snap = await this.autoscaler.snapshot([...this.deployments.values()]);
    const tx = this.redis.multi().del(this.keys.controllerStats());
    for (const s of snap) tx.hset(this.keys.controllerStats(), s.model, JSON.stringify({ ...s, at: Date.now() }));
    await tx.exec();
  }

  /** Safety net: trims model streams of acked leftovers beyond a generous cap. */
  private async trimTick(): Promise<void> {
    for (const model of this.deployments.keys()) {
      const d = this.deployments.get(model)!;
      await this.redis.xtrim(this.keys.requests(model), 'MAXLEN', '~', Math.max(10_000, d.maxQueue * 10));
    }
  }

  private watchFile(): void {
    const path = resolve(this.o.config.deploymentsFile);
    try {
      // Watch the folder: editors replace the file rather than write it in place.
      this.fileWatcher = watchFile(dirname(path), (_ev, name) => {
        if (name !== basename(path)) return;
        if (this.fileTimer) clearTimeout(this.fileTimer);
        this.fileTimer = setTimeout(() => void this.reloadFile(), 200);
      });
      this.fileWatcher.on('error', () => {});
    } catch (err) {
      this.log.warn({ err, path }, 'cannot watch the deployments file; apply changes through the admin API');
    }
  }

  private async reloadFile(): Promise<void> {
    if (!this.isLeader()) return;
    try {
      const file = await loadDeploymentsFile(this.o.config.deploymentsFile);
      const r = await this.applyFile(file);
      await this.reconcile(r.changed);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'deployments file change not applied');
    }
  }

  // ---- ControllerApi ----

  private async requireLeader(): Promise<void> {
    if (!this.isLeader()) throw new NotLeaderError((await this.leader())?.adminAddress ?? null);
  }

  leader(): Promise<{ id: string; adminAddress: string | null } | null> {
    return currentLeader(this.redis, this.keys);
  }

  async listDeployments(): Promise<Deployment[]> {
    return [...(await this.registry.load()).values()];
  }

  async listWorkers(): Promise<WorkerInfo[]> {
    const [live, registered, procs] = await Promise.all([
      this.workers.live(),
      this.redis.zrange(this.keys.workers(), '0', '-1'),
      this.redis.hgetall(this.keys.localProcesses()),
    ]);
    const byId = new Map<string, WorkerInfo>();
    for (const s of live) byId.set(s.id, { id: s.id, alive: true, status: s, process: null });
    for (const id of registered) if (!byId.has(id)) byId.set(id, { id, alive: false, status: null, process: null });
    for (const [id, json] of Object.entries(procs)) {
      const r = JSON.parse(json) as ProcessRecord;
      if (r.kind === 'gateway') continue;
      const info = byId.get(id) ?? { id, alive: false, status: null as WorkerStatus | null, process: null };
      info.process = { pid: r.pid, state: r.state, restarts: r.restarts, lastExit: r.lastExit };
      byId.set(id, info);
    }
    return [...byId.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  async listProcesses(): Promise<ProcessInfo[]> {
    const raw = await this.redis.hgetall(this.keys.localProcesses());
    const now = Date.now();
    const out = Object.entries(raw).map(([id, json]): ProcessInfo => {
      const r = JSON.parse(json) as Partial<ProcessRecord>;
      const startedAt = r.pid != null && typeof r.startedAt === 'number' ? r.startedAt : null;
      return {
        kind: r.kind === 'gateway' ? 'gateway' : 'worker',
        id,
        model: r.model ?? null,
        pid: r.pid ?? null,
        state: r.state ?? 'unknown',
        restarts: r.restarts ?? 0,
        lastExit: r.lastExit ?? null,
        lastExitAt: r.lastExitAt ?? null,
        startedAt,
        uptimeMs: startedAt === null ? null : Math.max(0, now - startedAt),
      };
    });
    return out.sort((a, b) => (a.kind === b.kind ? a.id.localeCompare(b.id) : a.kind === 'gateway' ? -1 : 1));
  }

  async listScale(): Promise<ModelScale[]> {
    return this.autoscaler.snapshot([...(await this.registry.load()).values()]);
  }

  async applyDeployments(doc: unknown): Promise<ApplyResult> {
    await this.requireLeader();
    const file = parseDeployments(doc, 'deployments document');
    const r = await this.applyFile(file);
    await this.reconcile(r.changed);
    return r;
  }

  async scale(model: string, replicas: number): Promise<ModelScale> {
    await this.requireLeader();
    const d = this.deployments.get(model);
    if (!d) throw new UnknownTargetError(`no deployment named "${model}"`);
    if (!Number.isInteger(replicas) || replicas < d.replicas.min || replicas > d.replicas.max) {
      throw new ConfigError(
        `replicas for ${model} must be between ${d.replicas.min} and ${d.replicas.max} (its replicas.min/max)`,
      );
    }
    await this.autoscaler.setDesired(model, replicas, 'operator');
    this.events.record('scaled', model, `${model}: set to ${replicas} replicas by an operator`);
    await this.reconcile();
    return (await this.autoscaler.snapshot([d]))[0]!;
  }

  async drainWorker(id: string): Promise<void> {
    await this.requireLeader();
    const known = (await this.listWorkers()).some((w) => w.id === id);
    if (!known) throw new UnknownTargetError(`no worker named "${id}"`);
    this.events.record('draining', id, `worker ${id} is draining`);
    if (this.fleet?.has(id)) {
      this.fleet.restart(id); // SIGTERM: it drains and hands back; the supervisor brings a fresh one up
      return;
    }
    await this.control.send(id, 'drain', {});
  }

  async restartWorker(id: string): Promise<void> {
    await this.requireLeader();
    if (this.fleet?.restart(id)) {
      this.events.record('worker-restarted', id, `worker ${id} restarted by an operator`);
      return;
    }
    const known = (await this.listWorkers()).some((w) => w.id === id);
    if (!known) throw new UnknownTargetError(`no worker named "${id}"`);
    await this.control.send(id, 'restart-engine', {});
    this.events.record('worker-restarted', id, `restart of ${id}'s engine sent as a control job`);
  }

  async createApiKey(opts: NewApiKey): Promise<CreatedApiKey> {
    await this.requireLeader();
    const created = await this.apiKeys.create(opts);
    const r = created.record;
    // The event names the key by id only: the secret goes to the caller and nowhere else.
    this.events.record('api-key-created', r.tenant, `API key ${r.id}${r.name ? ` (${r.name})` : ''} issued to ${r.tenant}`);
    return created;
  }

  listApiKeys(): Promise<ApiKeyRecord[]> {
    return this.apiKeys.list();
  }

  async revokeApiKey(id: string): Promise<void> {
    await this.requireLeader();
    // Read first, for the event; an index entry without a record (a crashed create) is still removed.
    const record = await this.apiKeys.get(id);
    if (!(await this.apiKeys.revoke(id))) throw new UnknownTargetError(`no API key with id "${id}"`);
    const tenant = record?.tenant ?? '';
    this.events.record('api-key-revoked', tenant, `API key ${id}${tenant ? ` of ${tenant}` : ''} revoked`);
  }

  watch(onEvent: (ev: ClusterEvent) => void): () => void {
    return this.events.subscribe(onEvent);
  }

  /** Stops everything this controller runs and gives the lease up. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.leading = false;
      await this.stopActing();
      await this.lease?.stop();
      this.events.close();
      await this.control.close();
      await this.redis.quit().catch(() => this.redis.disconnect());
    })();
    return this.closing;
  }
}
