import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { Keys } from '@llmux/shared';
import { freePort } from '@llmux/controller';
import { entryOf, TestProcess, type LogLine } from '../helpers/processes.js';
import { startTestRedis, type TestRedis } from '../helpers/redis.js';
import { alive } from '../helpers/sim-server.js';
import { abortLoads, firstServedAfter, Load, poll, report, secs, type Target } from './harness.js';

interface Proc {
  id: string;
  kind?: string;
  pid: number;
  state: string;
  restarts: number;
}

/**
 * Two controllers in local mode over one Redis, the same gateway port for
 * both: the leader runs the fleet (a gateway, two workers), the standby waits.
 * The leader is killed with SIGKILL under load. Its children follow it down
 * (draining); the standby takes the lease and starts its own fleet, once: no
 * worker is restarted, twice started or left running. Clients keep one URL.
 */
describe('faults: the controller leader killed -9 under load', function () {
  this.timeout(180_000);
  let redis: TestRedis;
  let r: Redis;
  let dir: string;
  const procs: TestProcess[] = [];

  before(async () => {
    redis = await startTestRedis();
    r = new Redis(redis.url);
    dir = await mkdtemp(join(tmpdir(), 'llmux-faults-ctl-'));
  });

  after(async () => {
    await abortLoads();
    await Promise.allSettled(procs.map((p) => p.stop()));
    r?.disconnect();
    await redis?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('the standby takes over and serves on the same URL; every local worker started once', async () => {
    const keys = new Keys(redis.prefix);
    const file = join(dir, 'deployments.json');
    await writeFile(
      file,
      JSON.stringify({
        models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 10, itlMs: 10 }, concurrency: 8, replicas: { min: 2, max: 2 } }],
      }),
    );
    const port = String(await freePort());
    const env = (id: string): NodeJS.ProcessEnv => ({
      REDIS_URL: redis.url,
      KEY_PREFIX: redis.prefix,
      PORT: port,
      ADMIN_PORT: '0',
      DEPLOYMENTS_FILE: file,
      CONTROLLER_ID: id,
      LOG_LEVEL: 'info',
      LEASE_TTL_MS: '1500',
      DRAIN_TIMEOUT_MS: '2000',
      HEALTH_INTERVAL_MS: '200',
      HEARTBEAT_INTERVAL_MS: '200',
      HEARTBEAT_TTL_MS: '1000',
    });
    const c1 = new TestProcess('c1', entryOf('@llmux/controller'), env('c1'));
    procs.push(c1);
    const ready1 = await c1.waitForLog((l) => String(l.msg).startsWith('llmux ready at'));
    const url = /at (\S+) /.exec(String(ready1.msg))![1]!;
    const c2 = new TestProcess('c2', entryOf('@llmux/controller'), env('c2'));
    procs.push(c2);
    await c2.waitForLog((l) => String(l.msg).includes('is a standby'));

    const before = await processes(r, keys);
    expect([...before.keys()].sort()).to.deep.equal(['c1-gateway', 'c1-sim-0', 'c1-sim-1']);
    // The gateway id is not known up front: the harness reads each request's gateway from its record in Redis.
    const target: Target = { name: 'llmux', url, gatewayId: '' };
    const load = new Load(
      { redis: r, keys },
      { targets: [target], model: 'sim', clients: 6, maxTokens: (g) => g.between(30, 80) },
    ).start();
    await load.until('30 completed before the fault', () => load.ended((x) => x.outcome === 'completed').length >= 30);

    const tKill = load.mark('kill');
    c1.kill('SIGKILL');
    // The old leader's children follow it down (they drain): timed from the kill, in the background.
    const oldPids = [...before.values()].map((p) => p.pid);
    const gone = poll("c1's children exited", async () => oldPids.every((p) => !alive(p)), 30_000, 50).catch(() => NaN);
    const led = await c2.waitForLog((l) => String(l.msg).startsWith('llmux ready at'));
    const tLed = load.mark('led', Math.max(Date.now(), Number(led.time ?? 0)));
    const tookOverMs = tLed - tKill;
    await load.until(
      '30 completed that were sent after the new leader was ready',
      () => load.ended((x) => x.t0 > tLed && x.outcome === 'completed').length >= 30,
    );
    const a = await load.stop();

    // The old leader's children followed it down; none of them runs or was restarted.
    const goneMs = await gone;
    const after = await processes(r, keys);
    const events = (kind: string) => c2.logs.filter((l: LogLine) => l.component === 'controller' && l.event === kind);
    const registered = await r.zrange(keys.workers(), '0', '-1');
    const live: string[] = [];
    for (const id of registered) if (await r.exists(keys.worker(id))) live.push(id);
    report('controller leader kill -9', a, {
      'standby led and served after': secs(tookOverMs),
      'first request served after the kill': secs(firstServedAfter(load.records, tKill)),
      "old leader's children exited after": secs(goneMs),
      'restarts in the new fleet': [...after.values()].reduce((n, p) => n + p.restarts, 0),
    });
    expect(a.failures, a.failures.join('\n')).to.deep.equal([]);
    expect(a.duplicated + a.lost).to.equal(0);
    expect(tookOverMs, 'the standby led within 10 s').to.be.below(10_000);
    expect(goneMs, "c1's children exited within 30 s").to.be.below(30_000);
    expect([...after.keys()].sort(), 'one fleet: the new leader’s').to.deep.equal(['c2-gateway', 'c2-sim-0', 'c2-sim-1']);
    for (const p of after.values()) expect(p.restarts, `${p.id} restarts`).to.equal(0);
    expect(events('worker-restarted'), 'no worker restarted').to.deep.equal([]);
    expect(events('gateway-restarted'), 'no gateway restarted').to.deep.equal([]);
    expect(
      events('leader').filter((l) => l.subject === 'c2'),
      'c2 took the lead once',
    ).to.have.length(1);
    expect(live.sort(), 'live workers: the new fleet only').to.deep.equal(['c2-sim-0', 'c2-sim-1']);
    // Every explicit error is one a client can act on: a refused connection while no gateway listened, or a 503.
    for (const code of Object.keys(a.errors)) expect(code).to.match(/^(refused|503 |sse gateway_shutdown)/);
  });
});

async function processes(r: Redis, keys: Keys): Promise<Map<string, Proc>> {
  const raw = await r.hgetall(keys.localProcesses());
  return new Map(Object.entries(raw).map(([k, v]) => [k, JSON.parse(v) as Proc]));
}
