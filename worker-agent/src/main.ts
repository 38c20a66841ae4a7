import { createLogger, loadWorkerConfig } from '@llmux/shared';
import { WorkerAgent } from './agent.js';

/** Entrypoint: `node worker-agent/dist/main.js`. Signals are handled here only. */
async function main(): Promise<void> {
  const config = loadWorkerConfig();
  const logger = createLogger('worker-agent', config.logLevel);
  const agent = new WorkerAgent({ config, logger });
  agent.on('error', () => {}); // logged by the agent; a background failure must not end the process
  agent.on('drain-requested', () => stop('drain control job'));

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping');
    agent.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // Started by a supervisor over IPC: follow it down if it dies.
  process.on('disconnect', () => stop('parent gone'));

  try {
    await agent.start();
  } catch (err) {
    logger.fatal({ err }, 'worker agent failed to start');
    await agent.close().catch(() => {});
    process.exit(1);
  }
  const status = agent.status();
  logger.info({ models: status.models, capacity: status.capacity, metricsPort: status.metricsPort }, 'worker agent ready');
  process.send?.({
    type: 'ready',
    component: 'worker-agent',
    id: agent.id,
    models: status.models,
    metricsPort: status.metricsPort,
  });
}

void main();
