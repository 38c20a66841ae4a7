import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { abortLoads, Load, pauseAcross, poll, queueDepth, report, secs, workerRunning, type Target } from './harness.js';

const FAST = { HEARTBEAT_INTERVAL_MS: '200', HEARTBEAT_TTL_MS: '1000', RECLAIM_INTERVAL_MS: '200', DRAIN_TIMEOUT_MS: '1000' };
/** Long streams of the dead gateway: 10,000 tokens at 15 ms run 150 s unless something stops them. */
const LONG_TOKENS = 10_000;
const ITL_MS = 15;
/** The dead gateway's requests must end within this long of its death (its liveness key lives 6 s; generous for a loaded machine). */
const CANCEL_BOUND_MS = 30_000;

/**
 * Two gateways in front of the same workers; one dies with SIGKILL while both
 * stream. The other gateway's clients must not notice. The dead gateway's
 * clients lose their connections with it; its requests must not run on for
 * nobody: the workers must cancel them and free their slots.
 */
describe('faults: a gateway killed -9 with two gateways', function () {
  this.timeout(240_000);
  let sys: TestSystem | undefined;

  after(async () => {
    await abortLoads();
    await sys?.stop();
  });

  it("the other gateway's clients are unaffected and the dead gateway's requests are cancelled", async () => {
    sys = await TestSystem.start({
      deployments: {
        models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 20, itlMs: ITL_MS, contextSize: 1_048_576 }, concurrency: 8 }],
      },
      workers: [{ env: { ...FAST, WORKER_ID: 'w0' } }, { env: { ...FAST, WORKER_ID: 'w1' } }],
      gatewayEnv: { GATEWAY_ID: 'gw-a' },
    });
    const b = await sys.addGateway({ GATEWAY_ID: 'gw-b' });
    const ports = await Promise.all(sys.workers.map(async (w) => (await w.ready()).metricsPort as number));
    const A: Target = { name: 'gw-a', url: sys.url, gatewayId: 'gw-a' };
    const B: Target = { name: 'gw-b', url: b.url, gatewayId: 'gw-b' };

    const onB = new Load(sys, { targets: [B], model: 'sim', clients: 6, maxTokens: (r) => r.between(40, 120) }).start();
    const onA = new Load(sys, {
      targets: [A],
      model: 'sim',
      clients: 6,
      requests: 6,
      maxTokens: LONG_TOKENS,
      clientTimeoutMs: 200_000,
    }).start();
    await onA.until('every stream of gw-a started', () => onA.records.filter((r) => r.tFirst).length === 6);
    await onB.until('20 completed on gw-b', () => onB.ended((r) => r.outcome === 'completed').length >= 20);
    const ridsA = onA.records.map((r) => r.rid!);

    const tKill = onB.mark('kill');
    onA.declareDead(A);
    sys.gateway.kill('SIGKILL');
    await sys.gateway.exited;
    const a = await onA.finished();
    // gw-a's requests end in Redis (their terminal event) while gw-b goes on serving.
    const ended = async () =>
      (await Promise.all(ridsA.map((rid) => sys!.redis.hget(sys!.keys.requestState('gw-a', rid), 'done')))).every(
        (d) => d === '1',
      );
    const stoppedMs = await poll("the dead gateway's requests ended", ended, CANCEL_BOUND_MS, 100)
      .then(() => Date.now() - tKill)
      .catch(() => NaN);
    await onB.until(
      '40 completed on gw-b that were sent after the kill',
      () => onB.ended((r) => r.t0 > tKill && r.outcome === 'completed').length >= 40,
    );
    const accountB = await onB.stop();
    const pauseB = pauseAcross(onB.records, tKill);
    // With gw-b idle, nothing may run on the workers: gw-a's slots were freed.
    const idle = await poll(
      'every engine slot free',
      async () => (await Promise.all(ports.map((p) => workerRunning(p)))).every((n) => n === 0),
      10_000,
      100,
    )
      .then(() => true)
      .catch(() => false);
    const cancelLogs = sys.workers.flatMap((w) =>
      w.logs.filter((l) => ridsA.includes(l.rid as string) && String(l.msg).includes('cancelled')),
    );
    const lastCancel = Math.max(...cancelLogs.map((l) => Number(l.time)));
    const doneLogs = sys.workers.flatMap((w) =>
      w.logs.filter((l) => l.msg === 'request done' && ridsA.includes(l.rid as string)),
    );
    const states = await Promise.all(ridsA.map((rid) => sys!.redis.hgetall(sys!.keys.requestState('gw-a', rid))));

    report('gateway kill -9: the other gateway (gw-b)', accountB, {
      'longest client pause across the kill': secs(pauseB.maxMs),
    });
    report('gateway kill -9: the dead gateway (gw-a)', a, {
      "dead gateway's requests ended in Redis after": secs(stoppedMs),
      'last cancellation logged by a worker after': secs(cancelLogs.length === ridsA.length ? lastCancel - tKill : NaN),
      'tokens they generated in all': states.reduce((n, s) => n + Number(s.tokens ?? 0), 0),
      'marked ended in Redis': states.filter((s) => s.done === '1').length,
    });

    expect(accountB.failures, accountB.failures.join('\n')).to.deep.equal([]);
    expect(accountB.completed, "every request of gw-b's clients completed").to.equal(accountB.sent);
    expect(a.cut, "gw-a's clients saw their connections cut").to.equal(6);
    expect(doneLogs, "gw-a's requests ran to their end for nobody").to.have.length(0);
    expect(idle, "gw-a's engine slots freed").to.equal(true);
    expect(
      stoppedMs,
      `gw-a's requests had not ended ${CANCEL_BOUND_MS / 1000} s after it died (generated ${states.map((s) => s.tokens).join(', ')} tokens): ` +
        'nothing cancels the requests of a dead gateway',
    ).to.be.at.most(CANCEL_BOUND_MS);
    expect(await queueDepth(sys, 'sim')).to.deep.include({ waiting: 0, pending: 0 });
  });
});
