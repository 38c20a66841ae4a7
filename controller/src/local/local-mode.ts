import { createRequire } from 'node:module';
import {
  ConfigError,
  createRedis,
  DeploymentRegistry,
  Keys,
  loadDeploymentsFile,
  RequestQueue,
  type ControllerConfig,
  type DeploymentsFile,
  type Logger,
} from '@llmux/shared';
import { ensureRedis, type EmbeddedRedis } from './embedded-redis.js';
import { Supervised, type ReadyMessage } from './supervisor.js';

const require = createRequire(import.meta.url);

/** Entry modules of the other processes, found through their packages. */
function entry(pkg: '@llmux/gateway' | '@llmux/worker-agent'): string {
  return require.resolve(pkg).replace(/index\.js$/, 'main.js');
}

export interface LocalSystem {
  url: string;
  redisUrl: string;
  deployments: DeploymentsFile;
  embeddedRedis: EmbeddedRedis | null;
  children: Supervised[];
  stop(): Promise<void>;
}

/** Resolves with the child's first ready message, or rejects if it exits first. */
function readyOrExit(child: Supervised, name: string): Promise<ReadyMessage> {
  return new Promise((resolve, reject) => {
    const onExit = (e: { code: number | null; signal: string | null }) => {
      reject(new ConfigError(`${name} exited during start (code ${e.code}, signal ${e.signal}); see its log above`));
    };
    child.once('exit', onExit);
    child.ready.then(
      (m) => {
        child.off('exit', onExit);
        resolve(m);
      },
      (err: unknown) => reject(err as Error),
    );
  });
}

/**
 * Runs the whole system on this machine: Redis (the configured one, or a
 * private redis-server), the published deployments, one worker agent and the
 * gateway, each a supervised child process.
 */
export async function startLocal(config: ControllerConfig, logger: Logger, env = process.env): Promise<LocalSystem> {
  const deployments = await loadDeploymentsFile(config.deploymentsFile);
  const { url: redisUrl, embedded } = await ensureRedis(config.redisUrl, { allowEmbedded: config.embeddedRedis, logger });
  const children: Supervised[] = [];
  const stop = async () => {
    await Promise.allSettled(children.map((c) => c.stop()));
    await embedded?.stop();
  };
  try {
    const keys = new Keys(config.keyPrefix);
    const redis = createRedis(redisUrl, { name: 'controller' });
    await redis.connect();
    await new DeploymentRegistry(redis, keys).publish(deployments);
    const queue = new RequestQueue(redis, keys);
    for (const d of deployments.models) await queue.ensureGroup(d.name);
    await redis.quit();
    logger.info({ models: deployments.models.map((m) => m.name) }, 'deployments published');

    const childEnv: NodeJS.ProcessEnv = {
      ...env,
      REDIS_URL: redisUrl,
      KEY_PREFIX: config.keyPrefix,
      LOG_LEVEL: env.LOG_LEVEL || 'warn',
    };
    // Children drain for DRAIN_TIMEOUT_MS on SIGTERM; they are killed a little after that.
    const killAfterMs = Number(env.DRAIN_TIMEOUT_MS || 30_000) + 5000;
    const worker = new Supervised({
      name: 'worker-agent',
      module: entry('@llmux/worker-agent'),
      env: { ...childEnv, WORKER_ID: env.WORKER_ID || `local-${process.pid}` },
      logger,
      killAfterMs,
    });
    const gateway = new Supervised({
      name: 'gateway',
      module: entry('@llmux/gateway'),
      env: { ...childEnv, PORT: String(config.port), HOST: config.host },
      logger,
      killAfterMs,
    });
    children.push(worker, gateway);
    worker.start();
    gateway.start();
    const [, gw] = await Promise.all([readyOrExit(worker, 'worker-agent'), readyOrExit(gateway, 'gateway')]);
    return { url: String(gw.url), redisUrl, deployments, embeddedRedis: embedded, children, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
