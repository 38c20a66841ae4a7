import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { testModel } from '../helpers/models.js';
import { expectComplete, openStream, replyEvents, type OpenStream } from '../helpers/streams.js';
import { story } from '../helpers/engines.js';

const GATEWAY_ID = 'gw-failure';
/** Fast failure detection for tests: a worker silent for 1 s is dead. */
const FAST = { HEARTBEAT_INTERVAL_MS: '200', HEARTBEAT_TTL_MS: '1000', RECLAIM_INTERVAL_MS: '200', LOG_LEVEL: 'debug' };

/**
 * Worker failure is invisible to clients: real worker processes are killed,
 * paused and stopped mid-stream while real clients read their streams.
 */
describe('no lost request when a worker fails', function () {
  let sys: TestSystem;

  afterEach(async () => {
    await sys?.stop();
  });

  async function start(models: unknown[]): Promise<void> {
    sys = await TestSystem.start({
      deployments: { models },
      workers: [{ env: { ...FAST, WORKER_ID: 'w0' } }],
      gatewayEnv: { GATEWAY_ID },
    });
  }

  it('kill -9 with 20 streams in flight (sim and llama.cpp): all complete, exact and in sequence', async () => {
    await start([
      { name: 'sim', engine: { type: 'sim', ttftMs: 30, itlMs: 25 }, concurrency: 16 },
      { name: 'sim-slow', engine: { type: 'sim', ttftMs: 6000, itlMs: 25 }, concurrency: 4 },
      {
        name: 'tiny-random',
        source: await testModel('llama-2-tiny-random'),
        engine: { type: 'llamacpp', threads: 1, contextSize: 1024 },
        concurrency: 10,
      },
    ]);
    const w0 = sys.workers[0]!;
    const streams: OpenStream[] = [];
    for (let i = 0; i < 8; i++) streams.push(await openStream(sys.url, 'sim', 160));
    // These have not produced a token when the worker dies: they must rerun from the start.
    for (let i = 0; i < 2; i++) streams.push(await openStream(sys.url, 'sim-slow', 40));
    for (let i = 0; i < 10; i++) streams.push(await openStream(sys.url, 'tiny-random', 600, `Hi ${i}`));
    // Every request is running on w0, and the ones that produce tokens early have sent some.
    await w0.waitForLogs((l) => l.msg === 'request started', 20);
    await Promise.all(streams.filter((s) => s.model !== 'sim-slow').map((s) => s.firstText));
    const w1 = await sys.addWorker({ env: { ...FAST, WORKER_ID: 'w1' } });
    w0.kill('SIGKILL');
    await w0.exited;
    // What each request had delivered when w0 died.
    const deliveredAtKill = new Map<string, number>();
    for (const s of streams) deliveredAtKill.set(s.rid, (await replyEvents(sys, GATEWAY_ID, s.rid)).length);

    const texts = await Promise.all(streams.map((s) => expectComplete(sys, GATEWAY_ID, s)));
    streams.forEach((s, i) => {
      if (s.model === 'sim') expect(texts[i]).to.equal(story(160));
      if (s.model === 'sim-slow') expect(texts[i]).to.equal(story(40));
    });
    const finishedOnW0 = new Set(w0.logs.filter((l) => l.msg === 'request done').map((l) => l.rid));
    const resumed = new Map(w1.logs.filter((l) => l.msg === 'request resumed').map((l) => [l.rid as string, l]));
    let continued = 0;
    let rerun = 0;
    for (const s of streams) {
      if (finishedOnW0.has(s.rid)) continue;
      const r = resumed.get(s.rid);
      expect(r, `${s.rid} (${s.model}) taken over by w1`).to.not.equal(undefined);
      if (deliveredAtKill.get(s.rid) === 0) {
        // Nothing reached the client: a plain rerun from the first token.
        expect(r!.resumedTokens).to.equal(0);
        expect(r!.seq).to.equal(0);
        rerun++;
      } else if ((r!.resumedTokens as number) > 0) continued++;
    }
    expect(continued, 'requests continued mid-stream').to.be.greaterThan(0);
    expect(rerun, 'requests rerun from the start').to.be.greaterThan(0);
    // The dead worker's consumer and registration are cleared.
    await w1.waitForLog((l) => l.msg === 'dead worker cleared' && l.dead === 'w0');
  });

  it('a paused worker (SIGSTOP) is fenced: after SIGCONT it cannot write into a request it lost', async () => {
    await start([{ name: 'sim', engine: { type: 'sim', ttftMs: 10, itlMs: 20 }, concurrency: 4 }]);
    const w0 = sys.workers[0]!;
    const s = await openStream(sys.url, 'sim', 250);
    await s.firstText;
    const w1 = await sys.addWorker({ env: { ...FAST, WORKER_ID: 'w1' } });
    w0.kill('SIGSTOP');
    await w1.waitForLog((l) => l.msg === 'request resumed' && l.rid === s.rid);
    w0.kill('SIGCONT');
    await w0.waitForLog((l) => l.msg === 'request fenced: another worker took it over' && l.rid === s.rid);
    expect(await expectComplete(sys, GATEWAY_ID, s)).to.equal(story(250));
    expect(w0.running).to.equal(true);
  });

  it('SIGTERM drains: what does not finish by the deadline is handed back and continued elsewhere', async () => {
    sys = await TestSystem.start({
      deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 10, itlMs: 20 }, concurrency: 4 }] },
      workers: [{ env: { ...FAST, WORKER_ID: 'w0', DRAIN_TIMEOUT_MS: '300' } }],
      gatewayEnv: { GATEWAY_ID },
    });
    const w0 = sys.workers[0]!;
    const s = await openStream(sys.url, 'sim', 200);
    await s.firstText;
    const w1 = await sys.addWorker({ env: { ...FAST, WORKER_ID: 'w1' } });
    w0.kill('SIGTERM');
    await w0.waitForLog((l) => l.msg === 'request handed back' && l.rid === s.rid);
    expect((await w0.exited).code).to.equal(0);
    const resumed = await w1.waitForLog((l) => l.msg === 'request resumed' && l.rid === s.rid);
    expect(resumed.resumedTokens as number).to.be.greaterThan(0);
    expect(await expectComplete(sys, GATEWAY_ID, s)).to.equal(story(200));
  });
});
