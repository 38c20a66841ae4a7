import { expect } from 'chai';
import { createRequire } from 'node:module';
import {
  ApiKeys,
  bullPrefix,
  CrossSlotError,
  emitBatch,
  encodeJob,
  hashTagOf,
  Keys,
  keySlot,
  RequestLog,
  RequestQueue,
  Script,
  scripts,
  WorkerRegistry,
  type Job,
  type Redis,
} from '@llmux/shared';

// ioredis's own slot function, to check ours against (a dependency of ioredis).
const require = createRequire(import.meta.url);
const calculateSlot = require('cluster-key-slot') as (key: string) => number;

interface Call {
  command: string;
  keys: string[];
  args: (string | number)[];
  script: string | null;
}

/** Every Script the system runs, by its Lua body (the tenancy scripts are loaded here the same way). */
const allScripts: Script[] = [...Object.values(scripts), new Script('key-admit-1'), new Script('key-settle-1')];
const scriptOf = (lua: string, sha: string) => allScripts.find((s) => s.lua === lua || s.sha === sha)?.name ?? null;

/**
 * A stand-in for an ioredis Cluster client: `isCluster` is true, so the
 * Script wrapper checks slots; it records every command with the keys it
 * names, and answers each script with a reply its caller can read.
 */
function fakeCluster(): { redis: Redis; calls: Call[] } {
  const calls: Call[] = [];
  const replies: Record<string, unknown> = {
    'enqueue-4': '1-0',
    'dispatch-5': [0, 0],
    'begin-2': ['ok', 0, 0, '', 1],
    'emit-3': 0,
    'emit-batch-1': [0, 0],
    'key-admit-1': ['unknown'],
  };
  const evalLike =
    (command: string) =>
    (bodyOrSha: string, numKeys: number, ...rest: (string | number)[]) => {
      const script = scriptOf(bodyOrSha, bodyOrSha);
      calls.push({ command, keys: rest.slice(0, numKeys).map(String), args: rest.slice(numKeys), script });
      return Promise.resolve(script && script in replies ? replies[script] : 1);
    };
  const target: Record<string | symbol, unknown> = {
    isCluster: true,
    slots: [] as string[][],
    eval: evalLike('eval'),
    evalsha: evalLike('evalsha'),
  };
  const redis = new Proxy(target, {
    get(t, prop) {
      if (prop in t) return t[prop];
      if (typeof prop !== 'string' || prop === 'then') return undefined;
      return (...args: unknown[]) => {
        calls.push({ command: prop, keys: [], args: args as (string | number)[], script: null });
        if (prop === 'zrange') return Promise.resolve(['w1', 'w2', 'w3']);
        if (prop === 'get') return Promise.resolve(null);
        return Promise.resolve(null);
      };
    },
  }) as unknown as Redis;
  return { redis, calls };
}

const job = (model: string, gw: string, tenant = 'acme'): Job => ({
  rid: `chatcmpl-${model}-1`,
  model,
  gw,
  params: { kind: 'chat', messages: [{ role: 'user', content: 'hi' }], maxTokens: 8 },
  enqueuedAt: Date.now(),
  deadline: Date.now() + 60_000,
  tenant,
  priority: 'normal',
  retainMs: 0,
});

describe('Redis Cluster slots', () => {
  it('computes the same slot as ioredis (cluster-key-slot) for plain, tagged and unusual keys', () => {
    const keys = [
      'llm:deployments',
      'llm:{sim}:requests',
      'llm:gw:{gw-1}:events',
      '{}',
      '{a}{b}',
      'x{',
      'x}{y',
      'llm:{модель}:requests',
      'llm:{🙂}:fair',
      '',
    ];
    for (let i = 0; i < 500; i++) keys.push(`k${i}:{t${i % 37}}:${'x'.repeat(i % 11)}`);
    for (const k of keys) expect(keySlot(k), k).to.equal(calculateSlot(k));
    expect(hashTagOf('llm:{sim}:q:normal:acme')).to.equal('sim');
    // An empty first tag means the whole key is hashed. Redis 7's CLUSTER KEYSLOT gives 7353 for this
    // key; cluster-key-slot goes on to the next `{` and gives 15725 (ioredis then follows a MOVED).
    expect(hashTagOf('a{}b{c}')).to.equal('a{}b{c}');
    expect(keySlot('a{}b{c}')).to.equal(7353);
  });

  it('runs every script with keys of one slot, from the code paths that call them', async () => {
    const { redis, calls } = fakeCluster();
    const keys = new Keys('llm');
    const models = ['sim', 'stories260K', 'a.model-with_chars'];
    const gateways = ['gw-1', 'host-123-abcdef'];
    const queue = new RequestQueue(redis, keys);
    const log = new RequestLog(redis, keys, 1000);
    for (const m of models) {
      for (const gw of gateways) {
        const j = job(m, gw);
        await queue.enqueue(j, 2);
        await log.begin(gw, j.rid, 'w1:tok', 3, 60_000);
        await log.emit(gw, 'w1:tok', 60_000, { rid: j.rid, seq: 0, type: 'tokens', text: 'x', n: 1 }, 'checked');
        await log.emit(
          gw,
          'w1:tok',
          60_000,
          { rid: j.rid, seq: 1, type: 'error', status: 503, code: 'c', message: 'm' },
          'restore',
        );
        await emitBatch(redis, keys, 1000, gw, [
          { token: 'w1:tok', ttlMs: 60_000, ev: { rid: j.rid, seq: 0, type: 'tokens', text: 'x', n: 1 }, mode: 'checked' },
          { token: 'w2:tok', ttlMs: 60_000, ev: { rid: `${j.rid}-2`, seq: 0, type: 'tokens', text: 'y', n: 1 }, mode: 'checked' },
        ]);
        await queue.handBack(m, '1-0', 'w1', encodeJob(j));
      }
      for (const p of ['low', 'normal', 'high'] as const) await queue.enqueue({ ...job(m, 'gw-1', 'other'), priority: p });
      await queue.dispatch(m, 3);
      await queue.deleteConsumerIfIdle(m, 'w-dead');
    }
    await scripts.leaseRenew.run(redis, [keys.controllerLease()], ['tok', 5000]);
    await scripts.leaseRelease.run(redis, [keys.controllerLease()], ['tok']);
    const apiKeys = new ApiKeys(redis, keys);
    await apiKeys.admit(`sk-llmux-${'A'.repeat(32)}`, { requests: 1, tokens: 10 });
    await apiKeys.settle({ keyHash: 'ab'.repeat(32), tokens: 10, metered: true }, 4);

    const scriptCalls = calls.filter((c) => c.script !== null);
    // Every script of the system was exercised.
    expect(new Set(scriptCalls.map((c) => c.script))).to.deep.equal(new Set(allScripts.map((s) => s.name)));
    for (const c of scriptCalls) {
      const slots = new Set(c.keys.map((k) => calculateSlot(k)));
      expect(slots.size, `${c.script} called with ${c.keys.join(', ')}`).to.equal(1);
      if (c.script === 'dispatch-5') {
        // The tenant lists the script builds from ARGV[6..8] are in the same slot as its keys.
        for (const prefix of c.args.slice(5, 8)) {
          expect(calculateSlot(`${prefix}acme`), String(prefix)).to.equal(calculateSlot(c.keys[0]!));
        }
      }
    }
  });

  it('refuses, before sending anything, a script call whose keys span slots', async () => {
    const { redis, calls } = fakeCluster();
    const keys = new Keys('llm');
    // A model's stream and a gateway's reply stream: different hash tags.
    const mixed = [keys.requestState('gw-1', 'r1'), keys.requestLog('gw-1', 'r1'), keys.requests('sim')];
    let err: unknown = null;
    await scripts.emit.run(redis, mixed, ['t', 1, 1, 'tokens', 'x', 1, 'r1', '']).catch((e: unknown) => (err = e));
    expect(err).to.be.instanceOf(CrossSlotError);
    expect((err as Error).message)
      .to.contain('emit-3')
      .and.contain('llm:{sim}:requests');
    // A derived key in another slot is refused too (a dispatch given another model's list prefix).
    const dispatchKeys = [
      keys.requests('a'),
      keys.fairState('a'),
      keys.fairIndex('a', 'high'),
      keys.fairIndex('a', 'normal'),
      keys.fairIndex('a', 'low'),
    ];
    err = null;
    await scripts.dispatch
      .run(redis, dispatchKeys, [
        'workers',
        1,
        'high',
        'normal',
        'low',
        keys.tenantQueue('b', 'high', ''),
        keys.tenantQueue('a', 'normal', ''),
        keys.tenantQueue('a', 'low', ''),
      ])
      .catch((e: unknown) => (err = e));
    expect(err).to.be.instanceOf(CrossSlotError);
    expect(calls.filter((c) => c.command === 'eval' || c.command === 'evalsha')).to.have.length(0);
  });

  it('reads worker statuses with one GET per key on a cluster, never a cross-slot MGET', async () => {
    const { redis, calls } = fakeCluster();
    const keys = new Keys('llm');
    expect(new Set(['w1', 'w2', 'w3'].map((w) => keySlot(keys.worker(w)))).size).to.be.greaterThan(1);
    await new WorkerRegistry(redis, keys).live();
    expect(calls.map((c) => c.command)).to.not.include('mget');
    expect(calls.filter((c) => c.command === 'get').map((c) => c.args[0])).to.deep.equal(
      ['w1', 'w2', 'w3'].map((w) => keys.worker(w)),
    );
  });

  it('gives BullMQ control queues a hash-tag prefix on a cluster, so each queue lives in one slot', () => {
    const { redis } = fakeCluster();
    const name = new Keys('llm').controlQueue('worker-1');
    const prefix = bullPrefix(redis, name);
    expect(prefix).to.equal(`{${name}}`);
    const bullKeys = [
      'wait',
      'active',
      'meta',
      'id',
      'events',
      'completed',
      'failed',
      'delayed',
      'prioritized',
      'marker',
      '1',
    ].map((k) => `${prefix}:${name}:${k}`);
    expect(new Set(bullKeys.map((k) => calculateSlot(k))).size).to.equal(1);
  });
});
