import { Worker, type Job } from 'bullmq';
import { bullPrefix, createBullRedis, type Logger, type Redis, type RedisTarget } from '@llmux/shared';

/** What the control worker needs from the agent. */
export interface Controllable {
  loadModel(name: string): Promise<void>;
  unloadModel(name: string): Promise<void>;
  restartEngine(name?: string): Promise<void>;
  emit(event: 'drain-requested'): boolean;
}

/**
 * Runs the control jobs the controller sends this agent (cluster mode): one
 * BullMQ queue per agent. A job that throws is retried by BullMQ with the
 * controller's backoff; `drain` asks the process to stop (the entrypoint
 * owns the process) once the job is recorded as done.
 */
export class ControlWorker {
  private readonly worker: Worker;
  private readonly conn: Redis;

  constructor(agent: Controllable, redis: RedisTarget, queueName: string, log: Logger) {
    this.conn = createBullRedis(redis, `worker:control:${queueName}`);
    this.conn.on('error', () => {});
    this.worker = new Worker(
      queueName,
      async (job: Job) => {
        const model = typeof job.data?.model === 'string' ? job.data.model : undefined;
        log.info({ job: job.name, id: job.id, attempt: job.attemptsMade + 1, model }, 'control job');
        switch (job.name) {
          case 'drain':
            setImmediate(() => agent.emit('drain-requested'));
            return 'draining';
          case 'restart-engine':
            await agent.restartEngine(model);
            return 'restarted';
          case 'load-model':
            if (!model) throw new Error('load-model needs data.model');
            await agent.loadModel(model);
            return 'loaded';
          case 'unload-model':
            if (!model) throw new Error('unload-model needs data.model');
            await agent.unloadModel(model);
            return 'unloaded';
          default:
            throw new Error(`unknown control job "${job.name}"`);
        }
      },
      // On a cluster the queue's keys need one slot: the prefix is a hash tag (the controller uses the same).
      { connection: this.conn, concurrency: 1, prefix: bullPrefix(this.conn, queueName) },
    );
    this.worker.on('failed', (job, err) => log.warn({ job: job?.name, id: job?.id, err: err.message }, 'control job failed'));
    this.worker.on('completed', (job) => log.info({ job: job.name, id: job.id }, 'control job done'));
    this.worker.on('error', (err) => log.warn({ err }, 'control worker error'));
  }

  async close(): Promise<void> {
    await this.worker.close();
    this.conn.disconnect();
  }
}
