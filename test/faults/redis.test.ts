import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { abortLoads, firstServedAfter, Load, pauseAcross, poll, queueDepth, report, secs, type Target } from './harness.js';

/**
 * Redis restarted under load with the append-only file on: while it is down
 * every new request gets a 503 at once; when it is back the system recovers by
 * itself, and the requests that were queued before the restart are still
 * there and complete.
 */
describe('faults: Redis restarted with the append-only file on, under load', function () {
  this.timeout(240_000);
  let sys: TestSystem | undefined;

  afterEach(async () => {
    await abortLoads();
    await sys?.stop();
    sys = undefined;
  });

  for (const variant of [
    { name: 'clean restart (SIGTERM)', kill: false, fsync: 'everysec' as const },
    { name: 'crash (SIGKILL, appendfsync always)', kill: true, fsync: 'always' as const },
  ]) {
    it(`${variant.name}: 503s while down, full recovery, queued requests intact`, async () => {
      sys = await TestSystem.start({
        redis: { appendOnly: true, appendFsync: variant.fsync },
        // One worker with 4 slots and 12 clients: about 8 requests always wait in the queue.
        deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 20, itlMs: 15 }, concurrency: 4 }] },
        workers: [{ env: { WORKER_ID: 'w0' } }],
        gatewayEnv: { GATEWAY_ID: 'gw-aof' },
      });
      const target: Target = { name: 'gw-aof', url: sys.url, gatewayId: 'gw-aof' };
      const load = new Load(sys, {
        targets: [target],
        model: 'sim',
        clients: 12,
        maxTokens: (r) => r.between(40, 100),
        // An in-flight request whose state Redis lost would end at this deadline, explicitly.
        requestTimeoutS: 60,
        clientTimeoutMs: 90_000,
      }).start();
      await load.until('30 completed before the restart', () => load.ended((r) => r.outcome === 'completed').length >= 30);
      await poll('requests wait in the queue', async () => (await queueDepth(sys!, 'sim')).waiting >= 4, 30_000, 20);

      let tDown = 0;
      // The 12 clients wait on their open streams while Redis is down: new clients arrive meanwhile.
      const arrivals = new Load(sys, { targets: [target], model: 'sim', clients: 4, maxTokens: 20, clientTimeoutMs: 90_000 });
      await sys.testRedis.restart({
        kill: variant.kill,
        whileDown: async () => {
          tDown = load.mark('down');
          arrivals.start();
          // Down long enough that clients see it: 20 new requests refused with a 503.
          await arrivals.until(
            '20 requests refused with 503 while Redis is down',
            () => arrivals.ended((r) => r.status === 503).length >= 20,
            30_000,
          );
          load.mark('starting');
        },
      });
      const tUp = load.mark('up');
      const during = await arrivals.stop();
      // What was queued (admitted, no token yet) when Redis went down.
      const queuedAtDown = load.records.filter((r) => r.status === 200 && r.t0 < tDown && !(r.tFirst && r.tFirst < tDown));
      const streamingAtDown = load.records.filter((r) => r.status === 200 && r.tFirst !== undefined && r.tFirst < tDown);
      await load.until(
        '30 completed that were sent after the restart',
        () => load.ended((r) => r.t0 > tUp && r.outcome === 'completed').length >= 30,
      );
      const a = await load.stop();

      const downMs = tUp - tDown;
      // Answered before the new server was started: must be 503s. Later ones may be admitted.
      const tStarting = load.marks.get('starting')!;
      const wrongWhileDown = arrivals.records.filter((r) => r.tHead !== undefined && r.tHead < tStarting && r.status !== 503);
      const latency503 = arrivals.records.filter((r) => r.status === 503).map((r) => r.tHead! - r.t0);
      report(`Redis ${variant.name}`, a, {
        'down for': secs(downMs),
        'new requests while down': `${during.sent} (${Object.entries(during.errors)
          .map(([k, v]) => `${k}: ${v}`)
          .join(', ')})`,
        'slowest 503': secs(Math.max(0, ...latency503)),
        'first request served after restart': secs(firstServedAfter(load.records, tUp)),
        'queued at the restart': queuedAtDown.length,
        'of which completed': queuedAtDown.filter((r) => r.outcome === 'completed').length,
        'streaming at the restart': streamingAtDown.length,
        'of which completed ': streamingAtDown.filter((r) => r.outcome === 'completed').length,
        'longest client pause across the outage': secs(pauseAcross(load.records, tDown).maxMs),
      });
      expect(a.failures, a.failures.join('\n')).to.deep.equal([]);
      expect(
        wrongWhileDown.map((r) => `${r.status} ${r.outcome}`),
        'answers to new requests while Redis was down',
      ).to.deep.equal([]);
      expect(during.failures, during.failures.join('\n')).to.deep.equal([]);
      expect(Math.max(...latency503), '503s come at once').to.be.below(1500);
      expect(queuedAtDown.length, 'requests were queued at the restart').to.be.greaterThan(0);
      expect(
        queuedAtDown.filter((r) => r.outcome !== 'completed').map((r) => `${r.rid} ${r.outcome} ${r.code ?? ''}`),
        'requests queued before the restart completed after it',
      ).to.deep.equal([]);
      // Every admitted request completed: the outage cost new requests a 503, nothing else.
      expect(a.completed, 'admitted requests completed').to.equal(a.accepted);
      expect(await queueDepth(sys, 'sim')).to.deep.include({ waiting: 0, pending: 0 });
    });
  }
});
