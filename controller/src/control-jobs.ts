import { Queue } from 'bullmq';
import { bullPrefix, createBullRedis, type Keys, type Logger, type RedisTarget } from '@llmux/shared';

/** The control jobs a worker agent understands. */
export type ControlJobName = 'drain' | 'restart-engine' | 'load-model' | 'unload-model';

/**
 * Durable control jobs for worker agents that run elsewhere (cluster mode),
 * one BullMQ queue per worker, with retries and backoff, so the history can
 * be read in any BullMQ dashboard.
 */
export class ControlJobs {
  private readonly queues = new Map<string, Queue>();

  constructor(
    private readonly redis: RedisTarget,
    private readonly keys: Keys,
    private readonly log: Logger,
  ) {}

  private queue(workerId: string): Queue {
    let q = this.queues.get(workerId);
    if (!q) {
      const name = this.keys.controlQueue(workerId);
      const connection = createBullRedis(this.redis, `controller:control:${name}`);
      connection.on('error', () => {});
      // On a cluster the queue's keys need one slot: the prefix is a hash tag (the worker uses the same).
      q = new Queue(name, { connection, prefix: bullPrefix(connection, name) });
      q.on('error', (err) => this.log.warn({ err, workerId }, 'control queue error'));
      this.queues.set(workerId, q);
    }
    return q;
  }

  /** Sends a job; retried 3 times with exponential backoff from 1 s. Returns the job id. */
  async send(workerId: string, name: ControlJobName, data: Record<string, unknown>): Promise<string> {
    const job = await this.queue(workerId).add(name, data, {
      attempts: 3,
      backoff: { type: 'exponential', delay: 1000 },
      removeOnComplete: { count: 1000, age: 7 * 86_400 },
      removeOnFail: { count: 1000 },
    });
    this.log.info({ workerId, job: name, id: job.id }, 'control job sent');
    return job.id!;
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.queues.values()].map((q) => q.close()));
    this.queues.clear();
  }
}
