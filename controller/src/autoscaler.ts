import type { Deployment, Keys, Logger, Redis, RequestQueue, WorkerRegistry } from '@llmux/shared';
import type { ModelScale } from './api.js';

export interface AutoscalerOptions {
  redis: Redis;
  keys: Keys;
  queue: RequestQueue;
  workers: WorkerRegistry;
  /** Utilisation aimed for when sizing. */
  targetUtilization: number;
  /** A lower figure must hold this long before replicas are removed. */
  scaleDownAfterMs: number;
  logger: Logger;
  /** How long an operator's `scale` holds before the autoscaler may change it. Default 10 minutes. */
  operatorHoldMs?: number;
}

export interface ScaleDecision {
  model: string;
  from: number;
  to: number;
  reason: string;
}

/**
 * Desired replicas per model from the work in the system: requests running
 * plus requests waiting, over what one replica serves at the target
 * utilisation, within the deployment's min and max. Up at once; down only
 * after the lower figure held for `scaleDownAfterMs`; to zero when min is 0
 * and nothing ran for that long; back to one as soon as a request waits.
 * Deployments with min = max are not scaled. The result is the
 * `<p>:controller:scale` hash, which the local fleet follows and an external
 * scaler (KEDA, an HPA) can read.
 */
export class Autoscaler {
  private readonly lowSince = new Map<string, number>();
  /** Per model: the last `entries-read` reading and an EWMA of requests started per second. */
  private readonly drain = new Map<string, { read: number; at: number; rate: number | null }>();

  /** Updates and returns the model's measured drain rate (requests/s), null until measured. */
  private drainRate(model: string, entriesRead: number, now: number): number | null {
    const prev = this.drain.get(model);
    if (!prev || entriesRead < prev.read) {
      this.drain.set(model, { read: entriesRead, at: now, rate: prev?.rate ?? null });
      return prev?.rate ?? null;
    }
    const dt = (now - prev.at) / 1000;
    if (dt <= 0) return prev.rate;
    const sample = (entriesRead - prev.read) / dt;
    const rate = prev.rate === null ? sample : 0.5 * sample + 0.5 * prev.rate;
    this.drain.set(model, { read: entriesRead, at: now, rate });
    return rate;
  }

  constructor(private readonly o: AutoscalerOptions) {}

  private holdKey(model: string): string {
    return `${model}\u0000hold`;
  }

  async setDesired(model: string, n: number, by: 'operator' | 'autoscaler'): Promise<void> {
    const key = this.o.keys.desiredScale();
    await this.o.redis.hset(key, model, String(n));
    if (by === 'operator') {
      await this.o.redis.hset(key, this.holdKey(model), String(Date.now() + (this.o.operatorHoldMs ?? 600_000)));
    }
  }

  async snapshot(deployments: Deployment[]): Promise<ModelScale[]> {
    const [desired, live] = await Promise.all([this.o.redis.hgetall(this.o.keys.desiredScale()), this.o.workers.live()]);
    const out: ModelScale[] = [];
    for (const d of deployments) {
      const depth = await this.o.queue.depth(d.name);
      out.push({
        model: d.name,
        desired: Number(desired[d.name] ?? d.replicas.min),
        live: live.filter((w) => w.state === 'ready' && w.models.includes(d.name)).length,
        min: d.replicas.min,
        max: d.replicas.max,
        queued: depth.waiting,
        pending: depth.pending,
      });
    }
    return out;
  }

  /** One pass over the deployments; returns the changes made. */
  async tick(deployments: Deployment[]): Promise<ScaleDecision[]> {
    const decisions: ScaleDecision[] = [];
    const [desired, live] = await Promise.all([this.o.redis.hgetall(this.o.keys.desiredScale()), this.o.workers.live()]);
    const now = Date.now();
    for (const d of deployments) {
      const liveCount = live.filter((w) => w.state === 'ready' && w.models.includes(d.name)).length;
      if (d.replicas.min === d.replicas.max) continue;
      if (Number(desired[this.holdKey(d.name)] ?? 0) > now) continue;
      const cur = Number(desired[d.name] ?? d.replicas.min);
      const { waiting, pending, entriesRead } = await this.o.queue.depth(d.name);
      const rate = this.drainRate(d.name, entriesRead, now);
      const demand = waiting + pending;
      const perReplica = d.concurrency * this.o.targetUtilization;
      let need = Math.ceil(demand / perReplica);
      // Work waits: one more replica, but only once those asked for are up (they take seconds to start).
      if (waiting > 0) need = Math.max(need, liveCount >= cur ? Math.min(cur + 1, d.replicas.max) : cur, 1);
      // The SLO: the queue's expected wait (waiting / measured drain rate) adds to time to first token.
      const ttftSlo = d.slo?.ttftP95Ms;
      const expectedWaitMs = rate && rate > 0 ? (waiting / rate) * 1000 : waiting > 0 ? Infinity : 0;
      const sloAtRisk = ttftSlo !== undefined && waiting > 0 && expectedWaitMs > ttftSlo;
      if (sloAtRisk && liveCount >= cur) need = Math.max(need, Math.min(cur + 1, d.replicas.max));
      need = Math.min(d.replicas.max, Math.max(d.replicas.min, need));
      const reason =
        `${pending} running, ${waiting} waiting, ${d.concurrency} per replica at ${Math.round(this.o.targetUtilization * 100)}%` +
        (rate !== null ? `, draining ${rate.toFixed(1)}/s` : '') +
        (sloAtRisk
          ? `, expected queue wait ${Number.isFinite(expectedWaitMs) ? Math.round(expectedWaitMs) : '∞'} ms over the ${ttftSlo} ms TTFT SLO`
          : '');
      if (need > cur) {
        this.lowSince.delete(d.name);
        await this.setDesired(d.name, need, 'autoscaler');
        decisions.push({ model: d.name, from: cur, to: need, reason });
      } else if (need < cur) {
        const since = this.lowSince.get(d.name) ?? now;
        this.lowSince.set(d.name, since);
        if (now - since >= this.o.scaleDownAfterMs) {
          this.lowSince.delete(d.name);
          await this.setDesired(d.name, need, 'autoscaler');
          decisions.push({
            model: d.name,
            from: cur,
            to: need,
            reason: `${reason}, quiet for ${Math.round((now - since) / 1000)} s`,
          });
        }
      } else {
        this.lowSince.delete(d.name);
      }
    }
    return decisions;
  }
}
