import {
  createRedis,
  DeploymentRegistry,
  Keys,
  parseDeployments,
  RequestQueue,
  type DeploymentsFile,
  type Redis,
} from '@llmux/shared';
import { entryOf, TestProcess } from './processes.js';
import { startTestRedis, type TestRedis, type TestRedisOptions } from './redis.js';

export interface WorkerSpec {
  /** Deployments this worker serves (WORKER_MODELS). Default: all. */
  models?: string[];
  env?: NodeJS.ProcessEnv;
}

export interface SystemOptions {
  /** The deployments document, validated as the controller would. */
  deployments: unknown;
  workers?: WorkerSpec[];
  gatewayEnv?: NodeJS.ProcessEnv;
  /** How to run the private Redis (e.g. with the append-only file on). */
  redis?: TestRedisOptions;
}

/**
 * A real system for one suite: its own Redis, the deployments published, real
 * worker-agent and gateway processes. Nothing is mocked.
 */
export class TestSystem {
  workers: TestProcess[] = [];
  gateway!: TestProcess;
  /** Gateways started with addGateway(), stopped with the system. */
  readonly gateways: TestProcess[] = [];
  url = '';
  redis!: Redis;
  keys!: Keys;
  deployments!: DeploymentsFile;
  private constructor(readonly testRedis: TestRedis) {}

  static async start(opts: SystemOptions): Promise<TestSystem> {
    const sys = new TestSystem(await startTestRedis(opts.redis));
    try {
      await sys.init(opts);
    } catch (err) {
      await sys.stop();
      throw err;
    }
    return sys;
  }

  /** Environment shared by every process of this system. */
  get env(): NodeJS.ProcessEnv {
    return { REDIS_URL: this.testRedis.url, KEY_PREFIX: this.testRedis.prefix, LOG_LEVEL: 'info' };
  }

  private async init(opts: SystemOptions): Promise<void> {
    this.keys = new Keys(this.testRedis.prefix);
    this.redis = createRedis(this.testRedis.url, { name: 'test' });
    this.redis.on('error', () => {}); // a test may stop Redis on purpose
    await this.redis.connect();
    this.deployments = parseDeployments(opts.deployments);
    await new DeploymentRegistry(this.redis, this.keys).publish(this.deployments);
    const queue = new RequestQueue(this.redis, this.keys);
    for (const d of this.deployments.models) await queue.ensureGroup(d.name);
    for (const spec of opts.workers ?? [{}]) await this.addWorker(spec);
    this.gateway = new TestProcess('gateway', entryOf('@llmux/gateway'), { ...this.env, PORT: '0', ...opts.gatewayEnv });
    const ready = await this.gateway.ready();
    this.url = String(ready.url);
  }

  /** Starts one more worker agent and waits until it is ready. */
  async addWorker(spec: WorkerSpec = {}): Promise<TestProcess> {
    const n = this.workers.length;
    const env: NodeJS.ProcessEnv = { ...this.env, WORKER_ID: `w${n}`, ...spec.env };
    if (spec.models) env.WORKER_MODELS = spec.models.join(',');
    const w = new TestProcess(`worker-${n}`, entryOf('@llmux/worker-agent'), env);
    this.workers.push(w);
    await w.ready();
    return w;
  }

  /** Starts one more gateway on the same Redis and waits until it is ready; resolves with its URL. */
  async addGateway(env: NodeJS.ProcessEnv = {}): Promise<{ proc: TestProcess; url: string }> {
    const proc = new TestProcess(`gateway-${this.gateways.length + 1}`, entryOf('@llmux/gateway'), {
      ...this.env,
      PORT: '0',
      ...env,
    });
    this.gateways.push(proc);
    const ready = await proc.ready();
    return { proc, url: String(ready.url) };
  }

  async stop(): Promise<void> {
    await Promise.allSettled([
      ...(this.gateway ? [this.gateway.stop()] : []),
      ...this.gateways.map((g) => g.stop()),
      ...this.workers.map((w) => w.stop()),
    ]);
    this.redis?.disconnect();
    await this.testRedis.stop();
  }
}
