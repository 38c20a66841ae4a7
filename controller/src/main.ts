import { ConfigError, createLogger, loadControllerConfig } from '@llmux/shared';
import { startLocal } from './local/local-mode.js';

/**
 * Entrypoint of `npm start`: in local mode, the whole system on this machine.
 * Prints one ready line with the URL and a curl example.
 */
async function main(): Promise<void> {
  const config = loadControllerConfig();
  const logger = createLogger('controller', config.logLevel);
  let stopping: Promise<void> | null = null;
  let system: Awaited<ReturnType<typeof startLocal>> | null = null;
  const stop = (signal: string) => {
    if (stopping) return;
    process.stderr.write(`\nstopping (${signal})...\n`);
    stopping = (system?.stop() ?? Promise.resolve()).then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));

  system = await startLocal(config, logger);
  if (stopping) return;
  const model = system.deployments.models[0]!.name;
  const body = JSON.stringify({ model, messages: [{ role: 'user', content: 'Once upon a time' }], stream: true });
  process.stdout.write(
    `llmux ready at ${system.url} (models: ${system.deployments.models.map((m) => m.name).join(', ')}; redis: ${system.redisUrl})\n` +
      `  try: curl -N ${system.url}/v1/chat/completions -d '${body}'\n` +
      `   or: curl -N ${system.url}/v1/chat/${model} -d 'Once upon a time'\n`,
  );
}

main().catch((err: unknown) => {
  const msg = err instanceof ConfigError ? err.message : ((err as Error)?.stack ?? String(err));
  process.stderr.write(`llmux failed to start: ${msg}\n`);
  process.exit(1);
});
