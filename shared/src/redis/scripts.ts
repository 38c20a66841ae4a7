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
   * arguments (for the slot check), one example per kind of key. `lua`: the
   * body, when it is not read from `shared/lua/<name>.lua` (a script built
   * from another one).
   */
  constructor(
    readonly name: string,
    readonly derivedKeys: (args: readonly (string | number)[]) => string[] = () => [],
    lua?: string,
  ) {
    this.lua = lua ?? readFileSync(new URL(`../../lua/${name}.lua`, import.meta.url), 'utf8');
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

/**
 * emit-batch-1: many `emit-3` calls of one gateway in one script call (one
 * EVALSHA per flush instead of one per event). The body of emit-3 runs
 * unchanged, as a function, once per event in the order given, so each event
 * gets exactly what emit-3 would give it.
 *
 * KEYS[1]  the gateway's reply stream          <p>:gw:{gw}:events
 * ARGV[1]  request state key without the id    <p>:gw:{gw}:req:
 * ARGV[2]  request output log key without the id  <p>:gw:{gw}:log:
 * ARGV[3..] per event: the count c of its arguments, then its c emit-3
 *           arguments (ARGV[7] of those, the request id, completes the keys)
 *
 * Returns one emit-3 result per event. An error (a Redis error raised inside
 * emit-3) ends the call: events before it are written, the caller resends the
 * rest (checked events are safe to resend).
 */
function emitBatchLua(): string {
  const emit = readFileSync(new URL('../../lua/emit-3.lua', import.meta.url), 'utf8');
  return `local function emit_one(KEYS, ARGV)
${emit}
end
local stream, statePrefix, logPrefix = KEYS[1], ARGV[1], ARGV[2]
local out = {}
local i = 3
while i <= #ARGV do
  local c = tonumber(ARGV[i])
  local a = {}
  for j = 1, c do
    a[j] = ARGV[i + j]
  end
  out[#out + 1] = emit_one({ statePrefix .. a[7], logPrefix .. a[7], stream }, a)
  i = i + c + 1
end
return out
`;
}

/** Every script of the data plane, loaded once per process. */
export const scripts = {
  begin: new Script('begin-2'),
  emit: new Script('emit-3'),
  // The state and log keys of each event: the prefixes in ARGV[1..2] plus a request id.
  emitBatch: new Script('emit-batch-1', (args) => [`${args[0]}rid`, `${args[1]}rid`], emitBatchLua()),
  handback: new Script('handback-1'),
  enqueue: new Script('enqueue-4'),
  // The tenant lists: each priority's list key without the tenant (ARGV[6..8]) plus a tenant name.
  dispatch: new Script('dispatch-5', (args) => args.slice(5, 8).map((prefix) => `${prefix}tenant`)),
  deleteConsumerIfIdle: new Script('delete-consumer-if-idle-1'),
  leaseRenew: new Script('lease-renew-1'),
  leaseRelease: new Script('lease-release-1'),
};
