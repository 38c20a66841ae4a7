import { EngineUnavailableError, type JobParams } from '@llmux/shared';
import type { Engine, GenerateResult, Resume, TextSink } from './types.js';

/**
 * Several replicas of one engine served as one: capacity adds up, and each
 * request goes to the replica with the most free room. A worker agent on a
 * bigger node runs more replicas (ENGINE_REPLICAS).
 */
export class ReplicaSet implements Engine {
  readonly contextSize: number;
  private readonly busy: number[];

  constructor(private readonly replicas: readonly Engine[]) {
    if (replicas.length === 0) throw new Error('a replica set needs at least one replica');
    this.contextSize = Math.min(...replicas.map((r) => r.contextSize));
    this.busy = replicas.map(() => 0);
  }

  /** A replica that is restarting or saturated by its own account takes nothing. */
  private static available(r: Engine): boolean {
    return (r.load?.() ?? 0) < 1;
  }

  /** The capacity of the replicas that can take work now. */
  get capacity(): number {
    return this.replicas.reduce((n, r) => n + (ReplicaSet.available(r) ? r.capacity : 0), 0);
  }

  /** The replicas' states, `ready` when all are ready, else e.g. `ready,restarting`. */
  get state(): string {
    const states = [...new Set(this.replicas.map((r) => r.state ?? 'ready'))];
    return states.join(',');
  }

  async start(): Promise<void> {
    await Promise.all(this.replicas.map((r) => r.start()));
  }

  async generate(params: JobParams, onText: TextSink, signal: AbortSignal, resume?: Resume): Promise<GenerateResult> {
    let best = -1;
    let room = 0;
    this.replicas.forEach((r, i) => {
      if (!ReplicaSet.available(r)) return;
      const free = r.capacity - this.busy[i]!;
      if (free > room) {
        room = free;
        best = i;
      }
    });
    if (best < 0) throw new EngineUnavailableError(`no replica of ${this.replicas.length} has room now`);
    this.busy[best]!++;
    try {
      return await this.replicas[best]!.generate(params, onText, signal, resume);
    } finally {
      this.busy[best]!--;
    }
  }

  /**
   * The capacity-weighted mean of the available replicas' own load figures
   * (null when none reports one); 1 when no replica can take work.
   */
  load(): number | null {
    let sum = 0;
    let weight = 0;
    let reported = false;
    for (const r of this.replicas) {
      if (!ReplicaSet.available(r)) continue;
      const l = r.load?.();
      if (l !== null && l !== undefined) reported = true;
      sum += (l ?? 0) * r.capacity;
      weight += r.capacity;
    }
    if (weight === 0) return 1;
    return reported ? sum / weight : null;
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.replicas.map((r) => r.close()));
  }
}
