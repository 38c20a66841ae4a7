import { expect } from 'chai';
import { Queue } from 'bullmq';
import { bullPrefix, createBullRedis, CrossSlotError, Keys, keySlot, loadGatewayConfig, scripts } from '@llmux/shared';
import { story } from '../helpers/engines.js';
import { failoverUnderTraffic, HaSystem, streamOnce, tally, TestRedisCluster, until, type Outcome } from '../helpers/redis-ha.js';

/** The slot ranges `redis-cli --cluster create` gives three masters. */
const RANGES = [
  [0, 5460],
  [5461, 10922],
  [10923, 16383],
];
const rangeOf = (slot: number) => RANGES.findIndex(([a, b]) => slot >= a! && slot <= b!);

/** A model name whose keys live on another master than the gateway's. */
function modelAwayFrom(prefix: string, gatewayId: string): string {
  const keys = new Keys(prefix);
  const gw = rangeOf(keySlot(keys.replies(gatewayId)));
  for (let i = 0; ; i++) if (rangeOf(keySlot(keys.requests(`sim${i}`))) !== gw) return `sim${i}`;
}

const BOUND_MS = 45_000;

/**
 * A real Redis Cluster (3 masters, 3 replicas, cluster-node-timeout 1 s) under
 * real gateway and worker-agent processes configured with REDIS_CLUSTER_NODES.
 * The model's keys and the gateway's keys sit on different masters, so every
 * request crosses two masters, and the master holding the gateway's reply
 * stream and request state is killed while streams run.
 */
describe('Redis Cluster: streaming across masters, and a master killed during traffic', function () {
  this.timeout(180_000);
  let cluster: TestRedisCluster;
  let sys: HaSystem;
  let model: string;
  const prefix = `t${Date.now().toString(36)}`;

  before(async () => {
    cluster = await TestRedisCluster.start();
    model = modelAwayFrom(prefix, 'gw-1');
    sys = await HaSystem.start({
      env: { REDIS_CLUSTER_NODES: cluster.seeds, KEY_PREFIX: prefix },
      deployments: { models: [{ name: model, engine: { type: 'sim', ttftMs: 10, itlMs: 40 }, concurrency: 16 }] },
      workers: 2,
      gatewayEnv: { REQUEST_TIMEOUT_MS: '30000' },
    });
  });

  after(async () => {
    await sys?.stop();
    await cluster?.stop();
  });

  it("keeps a model's keys and a gateway's keys each in one slot, on different masters", async () => {
    const modelOwner = await cluster.ownerOf(keySlot(sys.keys.requests(model)));
    const gwOwner = await cluster.ownerOf(keySlot(sys.keys.replies('gw-1')));
    expect(modelOwner.master.port).to.not.equal(gwOwner.master.port);
    // The script wrapper refuses a cross-slot call on the live cluster before Redis sees it.
    const mixed = [sys.keys.requestState('gw-1', 'r'), sys.keys.requestLog('gw-1', 'r'), sys.keys.requests(model)];
    const err = await scripts.emit.run(sys.redis, mixed, ['t', 1, 1, 'tokens', 'x', 1, 'r', '']).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(CrossSlotError);
  });

  it('streams concurrent requests with the exact text, through both workers', async () => {
    const outcomes = await Promise.all(Array.from({ length: 8 }, () => streamOnce(sys.url, model, 30, story(30), BOUND_MS)));
    expect(outcomes.map((o) => o.kind)).to.deep.equal(Array(8).fill('complete'));
    // Both workers served (least-loaded claiming spreads the burst), each one's heartbeat is readable.
    const served = await Promise.all(
      sys.workers.map((w) => w.waitForLogs((l) => l.msg === 'request done', 1).then(() => w.name)),
    );
    expect(served).to.have.length(2);
  });

  it('runs BullMQ control jobs over the cluster (hash-tagged queue prefix)', async () => {
    const name = sys.keys.controlQueue('w0');
    const conn = createBullRedis(loadGatewayConfig(sys.env).redis, 'test:control');
    conn.on('error', () => {});
    const q = new Queue(name, { connection: conn, prefix: bullPrefix(conn, name) });
    try {
      const job = await q.add('restart-engine', { model });
      const done = await sys.workers[0]!.waitForLog((l) => l.msg === 'control job done' && l.id === job.id);
      expect(done.job).to.equal('restart-engine');
    } finally {
      await q.close();
      conn.disconnect();
    }
    expect((await streamOnce(sys.url, model, 10, story(10), BOUND_MS)).kind).to.equal('complete');
  });

  it("kill -9 of the master holding the gateway's slot mid-stream: every request completes exactly or ends with an explicit error", async () => {
    const slot = keySlot(sys.keys.replies('gw-1'));
    const { master, replica } = await cluster.ownerOf(slot);
    expect(replica, 'the master has a replica').to.not.equal(null);
    let promotedMs = -1;
    const t0 = Date.now();
    const r = await failoverUnderTraffic({
      url: sys.url,
      model,
      inFlight: 12,
      tokens: 100,
      probeTokens: 10,
      expected: (n) => story(n),
      boundMs: BOUND_MS,
      fail: async () => {
        await master.kill();
        // The replica takes the slots over once the others judge the master failed (node timeout 1 s).
        await until('replica promoted', async () => (await cluster.ownerOf(slot)).master.port === replica!.port);
        await cluster.waitHealthy();
        promotedMs = Date.now() - t0;
      },
    });
    const all: Outcome[] = [...r.inFlight, ...r.probes];
    const lost = all.filter((o) => o.kind === 'lost');
    const figures = {
      inFlight: tally(r.inFlight),
      probes: tally(r.probes),
      promotedMs,
      recoveryMs: r.recoveryMs,
      lastEndMs: r.lastEndMs,
    };
    const codes = all.flatMap((o) => (o.kind === 'error' || o.kind === 'refused' ? [o.code] : []));
    process.stdout.write(`      cluster failover figures: ${JSON.stringify({ ...figures, codes })}\n`);
    expect(lost, JSON.stringify(lost)).to.deep.equal([]);
    // Errors are only the explicit kinds: refused at admission, or an error event.
    for (const o of all) {
      if (o.kind === 'refused') expect([503, 504]).to.include(o.status);
      if (o.kind === 'error') expect(['output_lost', 'deadline_exceeded', 'service_unavailable']).to.include(o.code);
    }
    expect(r.recoveryMs, 'a request completed after the failover').to.be.greaterThan(0);
    // Afterwards the system serves normally on the new topology.
    const after = await Promise.all(Array.from({ length: 6 }, () => streamOnce(sys.url, model, 20, story(20), BOUND_MS)));
    expect(after.map((o) => o.kind)).to.deep.equal(Array(6).fill('complete'));
  });
});
