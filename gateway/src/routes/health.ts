import { Router } from 'express';
import { ServiceUnavailableError } from '@llmux/shared';
import type { GatewayContext } from '../context.js';
import { sendError } from '../relay/sinks.js';

/** Resolves with `p`, or rejects after `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('timed out')), ms))),
  ]);
}

export function healthRoutes(ctx: GatewayContext): Router {
  const router = Router();

  /** Liveness: the process answers. */
  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  /** Readiness: Redis answers (so requests are admitted) and at least one worker is alive. */
  router.get('/readyz', async (_req, res) => {
    try {
      await within(ctx.redis.ping(), 1000);
    } catch {
      sendError(res, new ServiceUnavailableError('Redis is unreachable.'));
      return;
    }
    ctx.circuit.recordSuccess();
    const workers = await within(ctx.workers.live(), 1000).catch(() => []);
    const ready = workers.filter((w) => w.state === 'ready');
    if (ready.length === 0) {
      sendError(res, new ServiceUnavailableError('No worker agent is alive.'));
      return;
    }
    res.json({
      status: 'ready',
      workers: ready.length,
      models: [...new Set(ready.flatMap((w) => w.models))].sort(),
    });
  });

  /** Prometheus metrics of this gateway. */
  router.get('/metrics', async (_req, res) => {
    const body = await ctx.metrics.registry.metrics();
    res.setHeader('content-type', ctx.metrics.registry.contentType);
    res.end(body);
  });

  return router;
}
