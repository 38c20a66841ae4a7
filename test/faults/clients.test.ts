import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { slowReader } from '../helpers/http.js';
import { abortLoads, Load, report, rssKiB, type Target } from './harness.js';
import { burst, leavingClients } from './client-scenarios.js';

/**
 * Hostile clients under load: clients that leave at random moments, clients
 * that stop reading, and a burst of ten times what the system can hold.
 */
describe('faults: clients', function () {
  this.timeout(180_000);
  let sys: TestSystem | undefined;

  afterEach(async () => {
    await abortLoads();
    await sys?.stop();
    sys = undefined;
  });

  it('clients leaving at random moments: every engine slot freed, every per-request key expiring', async () => {
    await leavingClients({ requests: 400, clients: 16, maxTokens: 300 });
  });

  it('slow clients under load: gateway memory bounded, their requests cancelled, other clients unaffected', async () => {
    const MAX_BUFFERED = 64 * 1024;
    const FIREHOSE = `firehose-${'x'.repeat(119)}`;
    sys = await TestSystem.start({
      deployments: {
        models: [
          { name: 'sim', engine: { type: 'sim', ttftMs: 20, itlMs: 10 }, concurrency: 8 },
          { name: FIREHOSE, engine: { type: 'sim', ttftMs: 0, itlMs: 0, contextSize: 1_048_576 }, concurrency: 8 },
        ],
      },
      workers: [{ env: { FLUSH_INTERVAL_MS: '0', MAX_BATCH_TOKENS: '1' } }],
      gatewayEnv: { GATEWAY_ID: 'gw-slow', MAX_BUFFERED_BYTES: String(MAX_BUFFERED) },
    });
    const gwPid = sys.gateway.pid;
    const target: Target = { name: 'gw-slow', url: sys.url, gatewayId: 'gw-slow' };
    const load = new Load(sys, { targets: [target], model: 'sim', clients: 4, maxTokens: (r) => r.between(40, 120) }).start();
    await load.until('10 completed before the slow clients', () => load.ended((r) => r.outcome === 'completed').length >= 10);
    const before = rssKiB(gwPid);
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, rssKiB(gwPid))), 100);
    const WAVES = 3;
    const PER_WAVE = 8;
    let cut = 0;
    try {
      for (let w = 0; w < WAVES; w++) {
        const readers = await Promise.all(
          Array.from({ length: PER_WAVE }, () =>
            slowReader(sys!.url, {
              model: FIREHOSE,
              messages: [{ role: 'user', content: 'Once upon a time' }],
              stream: true,
              max_tokens: 1_000_000,
            }),
          ),
        );
        for (const r of readers) {
          await sys.gateway.waitForLog((l) => String(l.msg).startsWith('slow reader') && l.rid === r.rid);
          await sys.workers[0]!.waitForLog((l) => l.msg === 'request cancelled' && l.rid === r.rid);
          cut++;
        }
        for (const r of readers) r.socket.destroy();
        await Promise.all(readers.map((r) => r.closed));
      }
    } finally {
      clearInterval(sampler);
    }
    const after = rssKiB(gwPid);
    await load.until(
      '10 more completed after the slow clients',
      () => load.ended((r) => r.outcome === 'completed').length >= 10 + 10,
    );
    const a = await load.stop();
    report('slow clients', a, {
      'slow readers cut and cancelled': `${cut} of ${WAVES * PER_WAVE}`,
      'gateway RSS before': `${(before / 1024).toFixed(0)} MiB`,
      peak: `${(peak / 1024).toFixed(0)} MiB`,
      after: `${(after / 1024).toFixed(0)} MiB`,
    });
    expect(a.failures, a.failures.join('\n')).to.deep.equal([]);
    expect(a.completed, "the other clients' requests completed").to.equal(a.sent);
    expect(cut).to.equal(WAVES * PER_WAVE);
    // 24 streams of 1,000,000 tokens would be gigabytes unbounded; MAX_BUFFERED_BYTES keeps each one small.
    expect(peak - before, `gateway RSS ${before} KiB, peak ${peak} KiB`).to.be.below(96 * 1024);
    expect((await fetch(`${sys.url}/healthz`)).status).to.equal(200);
  });

  it('a burst of 10x capacity: fast 429s with Retry-After, no timeouts, admitted p99 within the SLO', async () => {
    await burst({ waves: 3 });
  });
});
