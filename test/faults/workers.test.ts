import { expect } from 'chai';
import { RequestQueue } from '@llmux/shared';
import { TestSystem } from '../helpers/system.js';
import { vllmOnSimServer } from '../helpers/sim-server.js';
import { abortLoads, Load, pauseAcross, poll, queueDepth, report, secs, workerRunning, type Target } from './harness.js';

/** Fast failure detection: a worker silent for 1 s is dead. */
const FAST = { HEARTBEAT_INTERVAL_MS: '200', HEARTBEAT_TTL_MS: '1000', RECLAIM_INTERVAL_MS: '200' };

/**
 * Worker and engine faults under load: closed-loop streaming clients run
 * while a worker agent is killed, its engine process is killed, or it is
 * paused and resumed. Every request must complete with exactly the story's
 * text, in sequence; none may be lost, repeated or fail.
 */
describe('faults: workers and engines under load', function () {
  this.timeout(180_000);
  let sys: TestSystem | undefined;

  afterEach(async () => {
    await abortLoads();
    await sys?.stop();
    sys = undefined;
  });

  const sim = { name: 'sim', engine: { type: 'sim', ttftMs: 20, itlMs: 15 }, concurrency: 8 };

  async function twoWorkers(gatewayId: string): Promise<{ sys: TestSystem; target: Target; ports: number[] }> {
    sys = await TestSystem.start({
      deployments: { models: [sim] },
      workers: [{ env: { ...FAST, WORKER_ID: 'w0' } }, { env: { ...FAST, WORKER_ID: 'w1' } }],
      gatewayEnv: { GATEWAY_ID: gatewayId },
    });
    const ports = await Promise.all(sys.workers.map(async (w) => (await w.ready()).metricsPort as number));
    return { sys, target: { name: gatewayId, url: sys.url, gatewayId }, ports };
  }

  /**
   * Kills w0 while both workers stream, with `clients` closed-loop clients.
   * Returns the account and how long it took until w0 held no pending entry.
   */
  async function killWorker(name: string, gatewayId: string, clients: number, takeoverBoundMs: number) {
    const { sys, target, ports } = await twoWorkers(gatewayId);
    const [w0, w1] = sys.workers as [(typeof sys.workers)[0], (typeof sys.workers)[0]];
    const load = new Load(sys, {
      targets: [target],
      model: 'sim',
      clients,
      maxTokens: (r) => r.between(40, 160),
      clientTimeoutMs: 120_000,
    }).start();
    await load.until('20 completed before the fault', () => load.ended((r) => r.outcome === 'completed').length >= 20);
    await poll('w0 runs at least 3 requests', async () => (await workerRunning(ports[0]!)) >= 3, 30_000, 20);
    const tKill = load.mark('kill');
    w0.kill('SIGKILL');
    await w0.exited;
    const queue = new RequestQueue(sys.redis, sys.keys);
    // Past the bound the scenario has failed; stopping the load then frees the survivor, which takes the rest.
    const takenOverMs = await poll(
      'w0 holds no pending entry',
      async () => !((await queue.pendingConsumers('sim')).get('w0')! > 0),
      takeoverBoundMs + 15_000,
      50,
    ).catch(() => NaN);
    if (Number.isFinite(takenOverMs)) {
      await load.until(
        '30 completed that were sent after the kill',
        () => load.ended((r) => r.t0 > tKill && r.outcome === 'completed').length >= 30,
      );
    }
    const a = await load.stop();
    const pause = pauseAcross(load.records, tKill);
    const resumed = w1.logs.filter((l) => l.msg === 'request resumed' && (l.time as number) >= tKill).length;
    const cleared = w1.logs.find((l) => l.msg === 'dead worker cleared' && l.dead === 'w0');
    const late = w1.logs.filter((l) => l.msg === 'request taken over' && (l.time as number) - tKill > 5000).length;
    const alreadyEnded = w1.logs.filter(
      (l) => l.msg === 'request had already ended; entry acked' && (l.time as number) >= tKill,
    ).length;
    report(name, a, {
      'taken over by w1': resumed,
      'entries taken over more than 5 s after the kill': late,
      'of which had already ended': alreadyEnded,
      "all of w0's entries taken over after": secs(takenOverMs),
      'dead worker cleared after': secs(cleared ? (cleared.time as number) - tKill : NaN),
      'longest client pause across the kill': secs(pause.maxMs),
      'median pause': secs(pause.p50Ms),
    });
    expect(a.failures, a.failures.join('\n')).to.deep.equal([]);
    expect(a.completed, 'every request completed').to.equal(a.sent);
    expect(resumed, 'requests w1 continued').to.be.greaterThan(0);
    expect(pause.maxMs, 'longest client pause across the kill').to.be.at.most(takeoverBoundMs);
    expect(takenOverMs, "time until w1 had taken all of w0's entries").to.be.at.most(takeoverBoundMs);
    expect(await queueDepth(sys, 'sim')).to.deep.include({ waiting: 0, pending: 0 });
  }

  it('worker agent killed -9 mid-stream, the survivor has room: nothing lost or repeated', async () => {
    // 6 clients: the survivor's 8 slots hold all of them.
    await killWorker('worker kill -9 (survivor has room)', 'gw-kill', 6, 10_000);
  });

  it('worker agent killed -9 mid-stream, the survivor saturated: its requests are still taken over promptly', async () => {
    // 12 clients: more than the survivor's 8 slots, so it never idles. Its takeover sweep
    // must still get w0's requests a slot, not leave them behind the new arrivals.
    await killWorker('worker kill -9 (survivor saturated)', 'gw-kill-sat', 12, 15_000);
  });

  it('engine process killed under load (vllm engine on the sim server): restarted, every request continues exactly', async () => {
    sys = await TestSystem.start({
      deployments: {
        models: [
          {
            name: 'gpu-model',
            engine: vllmOnSimServer(),
            concurrency: 8,
          },
        ],
      },
      gatewayEnv: { GATEWAY_ID: 'gw-engine' },
    });
    const worker = sys.workers[0]!;
    const port = (await worker.ready()).metricsPort as number;
    const first = await worker.waitForLog((l) => l.msg === 'engine process started');
    const target = { name: 'gw-engine', url: sys.url, gatewayId: 'gw-engine' };
    const load = new Load(sys, {
      targets: [target],
      model: 'gpu-model',
      clients: 6,
      maxTokens: (r) => r.between(60, 200),
    }).start();
    await load.until('15 completed before the fault', () => load.ended((r) => r.outcome === 'completed').length >= 15);
    await poll('the engine runs at least 3 requests', async () => (await workerRunning(port)) >= 3, 30_000, 20);
    const tKill = load.mark('kill');
    process.kill(first.pid as number, 'SIGKILL');
    await worker.waitForLog((l) => l.msg === 'engine process exited');
    await worker.waitForLogs((l) => l.msg === 'engine ready', 2);
    const readyMs = Date.now() - tKill;
    await load.until(
      '20 completed that were sent after the kill',
      () => load.ended((r) => r.t0 > tKill && r.outcome === 'completed').length >= 20,
    );
    const a = await load.stop();
    const pause = pauseAcross(load.records, tKill);
    const handedBack = worker.logs.filter((l) => l.msg === 'request handed back').length;
    report('engine process kill -9', a, {
      'handed back': handedBack,
      'engine ready again after': secs(readyMs),
      'longest client pause across the kill': secs(pause.maxMs),
    });
    expect(a.failures, a.failures.join('\n')).to.deep.equal([]);
    expect(a.completed, 'every request completed').to.equal(a.sent);
    expect(handedBack).to.be.greaterThan(0);
    const started = worker.logs.filter((l) => l.msg === 'engine process started');
    expect(started).to.have.length(2);
    expect(started[1]!.pid).to.not.equal(first.pid);
  });

  it('worker paused (SIGSTOP) then resumed (SIGCONT) under load: taken over, fenced, nothing repeated', async () => {
    const { sys, target, ports } = await twoWorkers('gw-stop');
    const [w0, w1] = sys.workers as [(typeof sys.workers)[0], (typeof sys.workers)[0]];
    const load = new Load(sys, { targets: [target], model: 'sim', clients: 8, maxTokens: (r) => r.between(80, 200) }).start();
    await load.until('20 completed before the fault', () => load.ended((r) => r.outcome === 'completed').length >= 20);
    await poll('w0 runs at least 3 requests', async () => (await workerRunning(ports[0]!)) >= 3, 30_000, 20);
    const tStop = load.mark('stop');
    w0.kill('SIGSTOP');
    let takenOverMs: number;
    try {
      // w1 has taken every entry w0 held.
      takenOverMs = await poll(
        'w0 holds no pending entry',
        async () => !((await new RequestQueue(sys.redis, sys.keys).pendingConsumers('sim')).get('w0')! > 0),
        30_000,
        50,
      );
    } finally {
      w0.kill('SIGCONT');
    }
    const tCont = load.mark('cont');
    await w0.waitForLog((l) => l.msg === 'request fenced: another worker took it over');
    // w0 is back: it beats, claims and serves again.
    await poll('w0 serves again', async () => (await workerRunning(ports[0]!)) >= 1, 30_000, 50);
    await load.until(
      '20 completed that were sent after SIGCONT',
      () => load.ended((r) => r.t0 > tCont && r.outcome === 'completed').length >= 20,
    );
    const a = await load.stop();
    const pause = pauseAcross(load.records, tStop);
    const fenced = w0.logs.filter((l) => l.msg === 'request fenced: another worker took it over').length;
    const resumed = w1.logs.filter((l) => l.msg === 'request resumed' && (l.time as number) >= tStop).length;
    report('worker SIGSTOP/SIGCONT', a, {
      'taken over by w1': resumed,
      'fenced on w0 after SIGCONT': fenced,
      'all of w0 taken over after': secs(takenOverMs),
      'longest client pause across the stop': secs(pause.maxMs),
    });
    expect(a.failures, a.failures.join('\n')).to.deep.equal([]);
    expect(a.completed, 'every request completed').to.equal(a.sent);
    expect(w0.running).to.equal(true);
    expect(await queueDepth(sys, 'sim')).to.deep.include({ waiting: 0, pending: 0 });
  });
});
