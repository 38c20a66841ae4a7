import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { EmbeddedRedis } from '@llmux/controller';

export interface TestRedis {
  url: string;
  /** A key prefix of this suite's own, so a shared server is never flushed or mixed. */
  prefix: string;
  stop(): Promise<void>;
}

function onPath(bin: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * The one way tests get Redis: `REDIS_URL` when set; else a private
 * redis-server on a free port, started and stopped by the suite; else a
 * testcontainers Redis where a Docker engine exists.
 */
export async function startTestRedis(): Promise<TestRedis> {
  const prefix = `t${randomBytes(4).toString('hex')}`;
  if (process.env.REDIS_URL) {
    return { url: process.env.REDIS_URL, prefix, stop: async () => {} };
  }
  if (onPath('redis-server')) {
    const r = await EmbeddedRedis.start();
    return { url: r.url, prefix, stop: () => r.stop() };
  }
  if (onPath('docker')) {
    // Only where a Docker engine exists (none does on the CI machines).
    const { GenericContainer } = await import('testcontainers');
    const c = await new GenericContainer('redis:7').withExposedPorts(6379).start();
    return { url: `redis://${c.getHost()}:${c.getMappedPort(6379)}`, prefix, stop: async () => void (await c.stop()) };
  }
  throw new Error('no Redis for tests: set REDIS_URL, install redis-server, or run a Docker engine');
}
