import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ConfigError,
  describeRedis,
  freePort,
  redisAnswers,
  redisConfigOf,
  redisMode,
  type Logger,
  type RedisConfig,
  type RedisTarget,
} from '@llmux/shared';

export { redisAnswers };

/** A redis-server child process with no persistence, in a temporary folder. */
export class EmbeddedRedis {
  private constructor(
    readonly url: string,
    private readonly child: ChildProcess,
    private readonly dir: string,
  ) {}

  /** Starts `redis-server` on a free port and resolves once it answers. */
  static async start(bin = 'redis-server'): Promise<EmbeddedRedis> {
    const port = await freePort();
    const dir = await mkdtemp(join(tmpdir(), 'llmux-redis-'));
    const child = spawn(
      bin,
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--loglevel', 'warning'],
      // Its own process group: a terminal's Ctrl-C must not stop Redis before
      // the gateway and workers have drained; stop() ends it after them.
      { stdio: ['ignore', 'ignore', 'inherit'], detached: true },
    );
    const url = `redis://127.0.0.1:${port}`;
    const failed = new Promise<never>((_, reject) => {
      child.once('error', (err) => reject(new ConfigError(`cannot start ${bin}: ${err.message}`)));
      child.once('exit', (code) => reject(new ConfigError(`${bin} exited with code ${code} at start`)));
    });
    failed.catch(() => {});
    const deadline = Date.now() + 10_000;
    for (;;) {
      const up = await Promise.race([redisAnswers(url, 200), failed]);
      if (up) break;
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new ConfigError(`${bin} did not answer on port ${port} within 10 s`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    child.removeAllListeners('exit');
    return new EmbeddedRedis(url, child, dir);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Stops the server (SIGTERM, SIGKILL after 5 s) and removes its folder. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * The Redis to use: `target` if it answers; otherwise, when allowed and the
 * target is a plain local URL (no sentinels, no cluster, no credentials, no
 * TLS), a private redis-server started for this run.
 */
export async function ensureRedis(
  target: RedisTarget,
  opts: { allowEmbedded: boolean; logger: Logger },
): Promise<{ url: string; redis: RedisConfig; embedded: EmbeddedRedis | null }> {
  const c = redisConfigOf(target);
  const url = c.url;
  if (await redisAnswers(c)) return { url, redis: c, embedded: null };
  const where = describeRedis(c);
  if (redisMode(c) !== 'standalone') throw new ConfigError(`no Redis answers at ${where} (check the REDIS_* settings)`);
  const host = new URL(url).hostname;
  const local = ['127.0.0.1', 'localhost', '::1', '[::1]'].includes(host);
  const plain = !c.tls && !c.username && !c.password && !new URL(url).password;
  if (!opts.allowEmbedded || !local || !plain) {
    throw new ConfigError(`no Redis answers at ${where} (set REDIS_URL, or start redis-server)`);
  }
  const embedded = await EmbeddedRedis.start().catch((err: unknown) => {
    throw new ConfigError(
      `no Redis answers at ${url} and a private one could not be started (${(err as Error).message}); install redis-server or set REDIS_URL`,
    );
  });
  opts.logger.warn({ url: embedded.url }, `no Redis at ${url}; started a private redis-server at ${embedded.url}`);
  return { url: embedded.url, redis: redisConfigOf(embedded.url), embedded };
}
