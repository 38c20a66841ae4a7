import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, redisAnswers } from '@llmux/controller';
import { onPath } from './processes.js';

export interface TestRedisOptions {
  /**
   * Run the private redis-server with the append-only file on
   * (`--appendonly yes --appendfsync <appendFsync>`), in a folder that
   * outlives restarts: `restart()` then brings the data back instead of
   * starting empty. Only for the private redis-server.
   */
  appendOnly?: boolean;
  /** `always`, `everysec` (Redis' default) or `no`. Default `everysec`. */
  appendFsync?: 'always' | 'everysec' | 'no';
}

export interface RestartOptions {
  /** Runs while the server is down (after it exited, before the new one starts), e.g. to watch clients get 503s. */
  whileDown?: () => Promise<void>;
  /** Stop with SIGKILL (a crash) instead of SIGTERM (a clean shutdown, which writes the append-only file out). */
  kill?: boolean;
}

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
   * With `appendOnly`, the new server loads the append-only file of the old
   * one, so it is not empty.
   */
  restart(opts?: RestartOptions): Promise<void>;
  /** Whether this server keeps its data across restarts (`appendOnly`). */
  readonly appendOnly: boolean;
}

/** A redis-server this helper started itself, on a fixed port (for restarts). */
interface Server {
  readonly pid: number | undefined;
  /** SIGTERM (SIGKILL with `kill`, or after 5 s) and wait; removes its folder unless the caller owns it. */
  stop(kill?: boolean): Promise<void>;
}

/**
 * Starts redis-server on `port`, as EmbeddedRedis does but on a port of the
 * caller's choice. With `persist`, it runs with the append-only file on in
 * `persist.dir`, which the caller owns (it is not removed on stop).
 */
async function startOnPort(port: number, persist?: { dir: string; fsync: string }): Promise<Server> {
  const dir = persist?.dir ?? (await mkdtemp(join(tmpdir(), 'llmux-test-redis-')));
  const aof = persist ? ['--appendonly', 'yes', '--appendfsync', persist.fsync] : ['--appendonly', 'no'];
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', ...aof, '--dir', dir, '--loglevel', 'warning'],
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
      if (!persist) await rm(dir, { recursive: true, force: true });
      throw new Error(`redis-server did not start on port ${port}`);
    }
    // Bounded poll of a real endpoint, not a fixed wait.
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    pid: child.pid,
    async stop(kill = false) {
      if (!gone) {
        child.kill(kill ? 'SIGKILL' : 'SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      if (!persist) await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The one way tests get Redis: `REDIS_URL` when set; else a private
 * redis-server on a free port, started and stopped by the suite; else a
 * testcontainers Redis where a Docker engine exists.
 */
export async function startTestRedis(opts: TestRedisOptions = {}): Promise<TestRedis> {
  const prefix = `t${randomBytes(4).toString('hex')}`;
  const cannotRestart = (what: string) => async () => {
    throw new Error(`cannot restart ${what}; restart() needs the private redis-server`);
  };
  if (opts.appendOnly) {
    if (!onPath('redis-server')) throw new Error('appendOnly needs redis-server on the PATH (a private server)');
    return startPrivate(prefix, opts.appendFsync ?? 'everysec');
  }
  if (process.env.REDIS_URL) {
    return {
      url: process.env.REDIS_URL,
      prefix,
      pid: undefined,
      appendOnly: false,
      stop: async () => {},
      restart: cannotRestart('REDIS_URL'),
    };
  }
  if (onPath('redis-server')) return startPrivate(prefix);
  if (onPath('docker')) {
    // Only where a Docker engine exists (none does on the CI machines).
    const { GenericContainer } = await import('testcontainers');
    const c = await new GenericContainer('redis:7').withExposedPorts(6379).start();
    return {
      url: `redis://${c.getHost()}:${c.getMappedPort(6379)}`,
      prefix,
      pid: undefined,
      appendOnly: false,
      stop: async () => void (await c.stop()),
      restart: cannotRestart('a container Redis'),
    };
  }
  throw new Error('no Redis for tests: set REDIS_URL, install redis-server, or run a Docker engine');
}

/**
 * A private redis-server on a free port; with `fsync`, the append-only file is
 * on, in a folder kept across restarts.
 */
async function startPrivate(prefix: string, fsync?: string): Promise<TestRedis> {
  const port = await freePort();
  const persist = fsync ? { dir: await mkdtemp(join(tmpdir(), 'llmux-test-redis-aof-')), fsync } : undefined;
  const removeDir = async () => {
    if (persist) await rm(persist.dir, { recursive: true, force: true });
  };
  let current: Server | null = null;
  try {
    current = await startOnPort(port, persist);
  } catch (err) {
    await removeDir();
    throw err;
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    prefix,
    appendOnly: persist !== undefined,
    get pid() {
      return current?.pid;
    },
    async stop() {
      const s = current;
      current = null;
      await s?.stop();
      await removeDir();
    },
    async restart(o: RestartOptions = {}) {
      const s = current;
      current = null;
      await s?.stop(o.kill);
      await o.whileDown?.();
      current = await startOnPort(port, persist);
    },
  };
}
