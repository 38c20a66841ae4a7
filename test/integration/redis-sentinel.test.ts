import { expect } from 'chai';
import { story } from '../helpers/engines.js';
import {
  cli,
  failoverUnderTraffic,
  HaSystem,
  streamOnce,
  tally,
  TestRedisSentinel,
  until,
  type Outcome,
} from '../helpers/redis-ha.js';

const BOUND_MS = 45_000;
const PASSWORD = 'data-secret-1';
const SENTINEL_PASSWORD = 'sentinel-secret-1';

/** Checks a failover's outcomes: none lost, errors only of the explicit kinds, a request completed after it. */
function expectNoneLost(
  name: string,
  r: { inFlight: Outcome[]; probes: Outcome[]; recoveryMs: number; lastEndMs: number },
  extra: object,
): void {
  const all = [...r.inFlight, ...r.probes];
  const codes = all.flatMap((o) => (o.kind === 'error' || o.kind === 'refused' ? [o.code] : []));
  const figures = {
    inFlight: tally(r.inFlight),
    probes: tally(r.probes),
    recoveryMs: r.recoveryMs,
    lastEndMs: r.lastEndMs,
    ...extra,
    codes,
  };
  process.stdout.write(`      ${name} figures: ${JSON.stringify(figures)}\n`);
  const lost = all.filter((o) => o.kind === 'lost');
  expect(lost, JSON.stringify(lost)).to.deep.equal([]);
  for (const o of all) {
    if (o.kind === 'refused') expect([503, 504]).to.include(o.status);
    if (o.kind === 'error') expect(['output_lost', 'deadline_exceeded', 'service_unavailable']).to.include(o.code);
  }
  expect(r.recoveryMs, 'a request completed after the failover').to.be.greaterThan(0);
}

/**
 * A real Sentinel setup (a primary, a replica, three sentinels, quorum 2,
 * down after 1 s), with passwords on the data nodes and on the sentinels,
 * under real gateway and worker-agent processes configured with
 * REDIS_SENTINELS. The primary is switched while streams run, twice: a
 * SENTINEL FAILOVER, then a kill -9 of the new primary.
 */
describe('Redis Sentinel: streaming through the sentinels, and failovers during traffic', function () {
  this.timeout(180_000);
  let sentinel: TestRedisSentinel;
  let sys: HaSystem;
  const sAccess = { password: SENTINEL_PASSWORD };

  before(async () => {
    sentinel = await TestRedisSentinel.start({ access: { password: PASSWORD }, sentinelPassword: SENTINEL_PASSWORD });
    sys = await HaSystem.start({
      env: {
        REDIS_SENTINELS: sentinel.seeds,
        REDIS_SENTINEL_NAME: sentinel.name,
        REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD,
        REDIS_PASSWORD: PASSWORD,
      },
      deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 10, itlMs: 40 }, concurrency: 16 }] },
      workers: 2,
      gatewayEnv: { REQUEST_TIMEOUT_MS: '30000' },
    });
  });

  after(async () => {
    await sys?.stop();
    await sentinel?.stop();
  });

  it('streams concurrent requests with the exact text, on the primary the sentinels name', async () => {
    const outcomes = await Promise.all(Array.from({ length: 6 }, () => streamOnce(sys.url, 'sim', 30, story(30), BOUND_MS)));
    expect(outcomes.map((o) => o.kind)).to.deep.equal(Array(6).fill('complete'));
    const primary = await sentinel.primaryPort(sAccess);
    expect(await sentinel.cli(primary, 'EXISTS', sys.keys.requests('sim'))).to.equal('1');
  });

  for (const how of ['SENTINEL FAILOVER', 'kill -9 of the primary'] as const) {
    it(`${how} mid-stream: every request completes exactly or ends with an explicit error`, async () => {
      const old = await sentinel.primaryPort(sAccess);
      let switchedMs = -1;
      const t0 = Date.now();
      const r = await failoverUnderTraffic({
        url: sys.url,
        model: 'sim',
        inFlight: 12,
        tokens: 100,
        probeTokens: 10,
        expected: (n) => story(n),
        boundMs: BOUND_MS,
        fail: async () => {
          if (how === 'SENTINEL FAILOVER') {
            await cli(sentinel.sentinels[0]!.port, sAccess, 'SENTINEL', 'FAILOVER', sentinel.name);
          } else await sentinel.proc(old).kill();
          await until('sentinels name a new primary', async () => (await sentinel.primaryPort(sAccess)) !== old);
          switchedMs = Date.now() - t0;
        },
      });
      expectNoneLost(how, r, { switchedMs, newPrimary: await sentinel.primaryPort(sAccess) });
      const after = await Promise.all(Array.from({ length: 6 }, () => streamOnce(sys.url, 'sim', 20, story(20), BOUND_MS)));
      expect(after.map((o) => o.kind)).to.deep.equal(Array(6).fill('complete'));
    });
  }
});
