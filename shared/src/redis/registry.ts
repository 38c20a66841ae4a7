import type { Redis } from 'ioredis';
import { deploymentSchema, type Deployment, type DeploymentsFile } from '../config/deployments.js';
import { getMany } from './connection.js';
import type { Keys } from './keys.js';

/** The deployments the controller published, as every process reads them. */
export class DeploymentRegistry {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
  ) {}

  /** Replaces the published deployments with `file`'s, in one transaction. */
  async publish(file: DeploymentsFile): Promise<void> {
    const key = this.keys.deployments();
    const tx = this.redis.multi().del(key);
    for (const d of file.models) tx.hset(key, d.name, JSON.stringify(d));
    await tx.exec();
  }

  /** All published deployments by name. Entries that fail validation are skipped. */
  async load(): Promise<Map<string, Deployment>> {
    const raw = await this.redis.hgetall(this.keys.deployments());
    const out = new Map<string, Deployment>();
    for (const [name, json] of Object.entries(raw)) {
      try {
        const d = deploymentSchema.safeParse(JSON.parse(json));
        if (d.success) out.set(name, d.data);
      } catch {
        // A hand-edited, broken entry: leave it out rather than fail every reader.
      }
    }
    return out;
  }
}

/** What a worker agent reports about itself on every heartbeat. */
export interface WorkerStatus {
  id: string;
  host: string;
  pid: number;
  state: 'starting' | 'ready' | 'draining' | 'stopped';
  /** Deployment names served. */
  models: string[];
  /** Each served deployment's engine state (`ready`, or a process engine's `starting`, `restarting`…). */
  engines: Record<string, string>;
  /** Concurrent requests the agent can run. */
  capacity: number;
  /** Requests running now. */
  inflight: number;
  /** Integral of in-flight requests over time since start, in request-milliseconds (utilisation = its rate / capacity). */
  busySlotMs: number;
  startedAt: number;
  /** Heartbeat time, ms since epoch. */
  at: number;
  /**
   * Port of the agent's HTTP server (`/metrics`, `/healthz`) on `host`; null
   * when it runs none (`METRICS_PORT=off`). Absent in statuses written by
   * agents older than the field: read it as unknown.
   */
  metricsPort?: number | null;
}

/** Worker heartbeats: a sorted set of last-beat times plus a status key with a TTL. */
export class WorkerRegistry {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
  ) {}

  async beat(status: WorkerStatus, ttlMs: number): Promise<void> {
    await Promise.all([
      this.redis.zadd(this.keys.workers(), String(status.at), status.id),
      this.redis.set(this.keys.worker(status.id), JSON.stringify(status), 'PX', ttlMs),
    ]);
  }

  async remove(workerId: string): Promise<void> {
    await Promise.all([this.redis.zrem(this.keys.workers(), workerId), this.redis.del(this.keys.worker(workerId))]);
  }

  /** Removes from the workers set every id whose status key has expired. */
  async prune(): Promise<void> {
    const ids = await this.redis.zrange(this.keys.workers(), '0', '-1');
    if (ids.length === 0) return;
    // Status keys of different workers live in different cluster slots: getMany splits there.
    const values = await getMany(
      this.redis,
      ids.map((id) => this.keys.worker(id)),
    );
    const dead = ids.filter((_, i) => values[i] === null);
    if (dead.length > 0) await this.redis.zrem(this.keys.workers(), ...dead);
  }

  /** Workers whose status key has not expired. */
  async live(): Promise<WorkerStatus[]> {
    const ids = await this.redis.zrange(this.keys.workers(), '0', '-1');
    if (ids.length === 0) return [];
    // Status keys of different workers live in different cluster slots: getMany splits there.
    const values = await getMany(
      this.redis,
      ids.map((id) => this.keys.worker(id)),
    );
    const out: WorkerStatus[] = [];
    for (const v of values) {
      if (!v) continue;
      try {
        out.push(JSON.parse(v) as WorkerStatus);
      } catch {
        // skip a corrupt status
      }
    }
    return out;
  }
}
