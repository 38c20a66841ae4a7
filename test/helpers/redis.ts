import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EmbeddedRedis, redisAnswers } from '@llmux/controller';

export interface TestRedis {
  url: string;
  /** A key prefix of this suite's own, so a shared server is never flushed or mixed. */
  prefix: string;
  stop(): Promise<void>;
  /** The private redis-server's pid (to pause it with SIGSTOP); undefined for a shared or container Redis. */
  readonly pid: number | undefined;
  /**
   * Starts a new, empty redis-server on the same port (stopping the running
   * one first, if any), and resolves once it answers. Only for the private
   * redis-server; a shared `REDIS_URL` or a container cannot be restarted.
   */
  restart(): Promise<void>;
}

function onPath(bin: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A redis-server this helper started itself, on a fixed port (for restarts). */
interface Server {
  readonly pid: number | undefined;
  stop(): Promise<void>;
}

/** Starts redis-server on `port`, as EmbeddedRedis does but on a port of the caller's choice. */
async function startOnPort(port: number): Promise<Server> {
  const dir = await mkdtemp(join(tmpdir(), 'llmux-test-redis-'));
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--loglevel', 'warning'],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let gone = false;
  void exited.then(() => (gone = true));
  const url = `redis://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  while (!(await redisAnswers(url, 200))) {
    if (gone || Date.now() > deadline) {
      child.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
      throw new Error(`redis-server did not start on port ${port}`);
    }
    // Bounded poll of a real endpoint, not a fixed wait.
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    pid: child.pid,
    async stop() {
      if (!gone) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The one way tests get Redis: `REDIS_URL` when set; else a private
 * redis-server on a free port, started and stopped by the suite; else a
 * testcontainers Redis where a Docker engine exists.
 */
export async function startTestRedis(): Promise<TestRedis> {
  const prefix = `t${randomBytes(4).toString('hex')}`;
  const cannotRestart = (what: string) => async () => {
    throw new Error(`cannot restart ${what}; restart() needs the private redis-server`);
  };
  if (process.env.REDIS_URL) {
    return { url: process.env.REDIS_URL, prefix, pid: undefined, stop: async () => {}, restart: cannotRestart('REDIS_URL') };
  }
  if (onPath('redis-server')) {
    const r = await EmbeddedRedis.start();
    const port = Number(new URL(r.url).port);
    let current: Server | null = r;
    return {
      url: r.url,
      prefix,
      get pid() {
        return current?.pid;
      },
      async stop() {
        const s = current;
        current = null;
        await s?.stop();
      },
      async restart() {
        const s = current;
        current = null;
        await s?.stop();
        current = await startOnPort(port);
      },
    };
  }
  if (onPath('docker')) {
    // Only where a Docker engine exists (none does on the CI machines).
    const { GenericContainer } = await import('testcontainers');
    const c = await new GenericContainer('redis:7').withExposedPorts(6379).start();
    return {
      url: `redis://${c.getHost()}:${c.getMappedPort(6379)}`,
      prefix,
      pid: undefined,
      stop: async () => void (await c.stop()),
      restart: cannotRestart('a container Redis'),
    };
  }
  throw new Error('no Redis for tests: set REDIS_URL, install redis-server, or run a Docker engine');
}
