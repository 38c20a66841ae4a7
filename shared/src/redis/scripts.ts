import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Redis } from 'ioredis';

/**
 * A Lua script from shared/lua, run with EVALSHA (auto-pipelined like any
 * command) and sent in full with EVAL on a client's first use and when Redis
 * no longer knows it (after a restart). The file name ends in `-<numKeys>.lua`.
 */
export class Script {
  readonly sha: string;
  readonly numKeys: number;
  readonly lua: string;

  constructor(readonly name: string) {
    this.lua = readFileSync(new URL(`../../lua/${name}.lua`, import.meta.url), 'utf8');
    this.sha = createHash('sha1').update(this.lua).digest('hex');
    const m = /-(\d+)$/.exec(name);
    if (!m) throw new Error(`script name ${name} must end in -<numKeys>`);
    this.numKeys = Number(m[1]);
  }

  /** Clients that have sent this script in full once (EVAL loads it into Redis's script cache). */
  private readonly sent = new WeakSet<Redis>();

  async run(redis: Redis, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    if (keys.length !== this.numKeys) throw new Error(`${this.name} takes ${this.numKeys} keys, got ${keys.length}`);
    // The first call from a client sends the body: a NOSCRIPT retry would be a second round
    // trip, and a command sent meanwhile (a settle, then the next admit) could overtake it.
    if (!this.sent.has(redis)) {
      this.sent.add(redis);
      return redis.eval(this.lua, this.numKeys, ...keys, ...args);
    }
    try {
      return await redis.evalsha(this.sha, this.numKeys, ...keys, ...args);
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      return redis.eval(this.lua, this.numKeys, ...keys, ...args);
    }
  }
}

/** Every script of the data plane, loaded once per process. */
export const scripts = {
  begin: new Script('begin-2'),
  emit: new Script('emit-3'),
  handback: new Script('handback-1'),
  enqueue: new Script('enqueue-4'),
  dispatch: new Script('dispatch-5'),
  deleteConsumerIfIdle: new Script('delete-consumer-if-idle-1'),
  leaseRenew: new Script('lease-renew-1'),
  leaseRelease: new Script('lease-release-1'),
};
