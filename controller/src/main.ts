import { ConfigError, createLogger, describeRedis, loadControllerConfig, type RedisConfig } from '@llmux/shared';
import { readAdminTls, startAdminServer, type AdminServer } from './admin/server.js';
import { Controller } from './controller.js';
import { ensureRedis, type EmbeddedRedis } from './local/embedded-redis.js';
import { startMetricsServer, type MetricsServer } from './metrics.js';

/**
 * Entrypoint of the controller and of `npm start`. In local mode it runs the
 * whole system on this machine (a private redis-server when none answers)
 * and prints one ready line with the URL and a curl example.
 */
async function main(): Promise<void> {
  const config = loadControllerConfig();
  const logger = createLogger('controller', config.logLevel);
  let redis: RedisConfig = config.redis;
  let embedded: EmbeddedRedis | null = null;
  if (config.mode === 'local') {
    ({ redis, embedded } = await ensureRedis(config.redis, { allowEmbedded: config.embeddedRedis, logger }));
  }
  const controller = new Controller({ config, redis, logger });
  let admin: AdminServer | null = null;
  let metrics: MetricsServer | null = null;

  let stopping: Promise<void> | null = null;
  const stop = (signal: string) => {
    if (stopping) return;
    process.stderr.write(`\nstopping (${signal})...\n`);
    stopping = (async () => {
      await controller.close().catch(() => {});
      await admin?.close().catch(() => {});
      await metrics?.close().catch(() => {});
      await embedded?.stop().catch(() => {});
    })().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));

  try {
    if (config.admin) {
      const tls = config.admin.tls ? await readAdminTls(config.admin.tls.cert, config.admin.tls.key) : null;
      admin = await startAdminServer(controller, {
        host: config.admin.host,
        port: config.admin.port,
        token: config.admin.token,
        tls,
        logger,
      });
    }
    if (config.metrics) {
      const { host, port } = config.metrics;
      try {
        metrics = await startMetricsServer({
          host,
          port,
          registry: controller.metrics.registry,
          beforeScrape: () => controller.metrics.refresh(),
        });
        logger.info({ port: metrics.port }, `metrics at ${metrics.url}`);
      } catch (err) {
        // A busy machine (another llmux, a node exporter on 9465) must not stop the start.
        logger.warn({ err: (err as Error).message, host, port }, 'cannot serve /metrics (METRICS_PORT); going on without it');
      }
    }
    const printReady = async () => {
      if (config.mode !== 'local') {
        process.stdout.write(
          `llmux controller ${controller.id} leads (cluster mode; admin ${admin?.address ?? 'off'}; metrics ${metrics?.url ?? 'off'})\n`,
        );
        return;
      }
      const url = await controller.localReady();
      const models = (await controller.listDeployments()).map((d) => d.name);
      const model = models[0] ?? 'MODEL';
      const body = JSON.stringify({ model, messages: [{ role: 'user', content: 'Once upon a time' }], stream: true });
      process.stdout.write(
        `llmux ready at ${url} (models: ${models.join(', ')}; redis: ${describeRedis(redis)}; admin: ${admin?.address ?? 'off'})\n` +
          `  try: curl -N ${url}/v1/chat/completions -d '${body}'\n` +
          `   or: curl -N ${url}/v1/chat/${model} -d 'Once upon a time'\n` +
          (metrics ? `  metrics: ${metrics.url} (gateway: ${url}/metrics)\n` : ''),
      );
    };
    const role = await controller.start(admin?.address ?? null);
    process.send?.({ type: 'ready', component: 'controller', role, admin: admin?.address ?? null });
    if (role === 'leader') await printReady();
    else {
      const leader = await controller.leader();
      process.stdout.write(`llmux controller ${controller.id} is a standby (leader: ${leader?.id ?? 'none yet'})\n`);
      await controller.leaderReady;
      if (!stopping) await printReady();
    }
  } catch (err) {
    if (stopping) return;
    const msg = err instanceof ConfigError ? err.message : ((err as Error)?.stack ?? String(err));
    process.stderr.write(`llmux failed to start: ${msg}\n`);
    await controller.close().catch(() => {});
    await admin?.close().catch(() => {});
    await metrics?.close().catch(() => {});
    await embedded?.stop().catch(() => {});
    process.exit(1);
  }
}

void main();
