import { EngineError, type JobParams } from '@llmux/shared';
import type { Engine, GenerateResult, Resume, TextSink } from './types.js';

/**
 * Several replicas of one engine served as one: capacity adds up, and each
 * request goes to the replica with the most free room. A worker agent on a
 * bigger node runs more replicas (ENGINE_REPLICAS).
 */
export class ReplicaSet implements Engine {
  readonly capacity: number;
  readonly contextSize: number;
  private readonly busy: number[];

  constructor(private readonly replicas: readonly Engine[]) {
    if (replicas.length === 0) throw new Error('a replica set needs at least one replica');
    this.capacity = replicas.reduce((n, r) => n + r.capacity, 0);
    this.contextSize = Math.min(...replicas.map((r) => r.contextSize));
    this.busy = replicas.map(() => 0);
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
      const free = r.capacity - this.busy[i]!;
      if (free > room) {
        room = free;
        best = i;
      }
    });
    if (best < 0) throw new EngineError(`all ${this.capacity} slots of ${this.replicas.length} replicas are busy`);
    this.busy[best]!++;
    try {
      return await this.replicas[best]!.generate(params, onText, signal, resume);
    } finally {
      this.busy[best]!--;
    }
  }

  /** Capacity-weighted mean of the replicas' own load figures, when they all report one. */
  load(): number | null {
    let sum = 0;
    for (const r of this.replicas) {
      const l = r.load?.();
      if (l === null || l === undefined) return null;
      sum += l * r.capacity;
    }
    return sum / this.capacity;
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.replicas.map((r) => r.close()));
  }
}
