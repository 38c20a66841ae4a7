import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Redis } from 'ioredis';
import { singleSlot } from './slots.js';

/**
 * A Lua script from shared/lua, run with EVALSHA (auto-pipelined like any
 * command) and sent in full with EVAL on a client's first use and when Redis
 * no longer knows it (after a restart). The file name ends in `-<numKeys>.lua`.
 *
 * On a Redis Cluster a script may touch only keys of one slot, and Redis
 * checks only the keys it is given. So on a cluster connection every call
 * checks that its keys, and the keys the script builds from its arguments
 * (`derivedKeys`), share one slot, and throws CrossSlotError before anything
 * is sent otherwise. Every script of the system is written so that they do:
 * a model's keys share the `{model}` tag, a gateway's the `{gateway id}` tag,
 * and no script mixes the two.
 */
export class Script {
  readonly sha: string;
  readonly numKeys: number;
  readonly lua: string;

  /**
   * `derivedKeys`: the names of keys the script builds inside Lua from its
   * arguments (for the slot check), one example per kind of key.
   */
  constructor(
    readonly name: string,
    readonly derivedKeys: (args: readonly (string | number)[]) => string[] = () => [],
  ) {
    this.lua = readFileSync(new URL(`../../lua/${name}.lua`, import.meta.url), 'utf8');
    this.sha = createHash('sha1').update(this.lua).digest('hex');
    const m = /-(\d+)$/.exec(name);
    if (!m) throw new Error(`script name ${name} must end in -<numKeys>`);
    this.numKeys = Number(m[1]);
  }

  /**
   * Per client, the servers it has sent this script to in full once (EVAL
   * loads it into that server's script cache): `''` for a single server, the
   * node (`host:port`) on a cluster, where each master has a cache of its own.
   */
  private readonly sent = new WeakMap<Redis, Set<string>>();

  /** The keys of a call, and those the script derives from its arguments, must share one slot. */
  slotOf(keys: readonly string[], args: readonly (string | number)[]): number | null {
    return singleSlot([...keys, ...this.derivedKeys(args)], `script ${this.name}`);
  }

  async run(redis: Redis, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    if (keys.length !== this.numKeys) throw new Error(`${this.name} takes ${this.numKeys} keys, got ${keys.length}`);
    let server = '';
    if ((redis as { isCluster?: boolean }).isCluster) {
      const slot = this.slotOf(keys, args);
      // The node serving the slot now, as ioredis knows it; unknown before the first slot map.
      server = (slot !== null && (redis as unknown as { slots: string[][] }).slots[slot]?.[0]) || '?';
    }
    let sent = this.sent.get(redis);
    if (!sent) this.sent.set(redis, (sent = new Set()));
    // The first call from a client sends the body: a NOSCRIPT retry would be a second round
    // trip, and a command sent meanwhile (a settle, then the next admit) could overtake it.
    if (!sent.has(server)) {
      sent.add(server);
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
  // The tenant lists: each priority's list key without the tenant (ARGV[6..8]) plus a tenant name.
  dispatch: new Script('dispatch-5', (args) => args.slice(5, 8).map((prefix) => `${prefix}tenant`)),
  deleteConsumerIfIdle: new Script('delete-consumer-if-idle-1'),
  leaseRenew: new Script('lease-renew-1'),
  leaseRelease: new Script('lease-release-1'),
};
