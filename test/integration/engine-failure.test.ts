import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { SimServerProcess, story, vllmOnSimServer } from '../helpers/sim-server.js';
import { parseSse } from '../helpers/http.js';
import { expectComplete, openStream, replyEvents } from '../helpers/streams.js';

const GATEWAY_ID = 'gw-engine';

/**
 * Engine failures under a real worker agent: the engine's own process dies,
 * or every attempt at a request fails. Nothing is mocked: the engines talk
 * HTTP to real sim-server processes.
 */
describe('engine failures', function () {
  let sys: TestSystem | undefined;
  let upstream: SimServerProcess | undefined;

  afterEach(async () => {
    await sys?.stop();
    await upstream?.stop();
    sys = undefined;
    upstream = undefined;
  });

  it('an engine process killed mid-stream is restarted and its request continues without a seam', async () => {
    sys = await TestSystem.start({
      deployments: {
        models: [
          {
            name: 'gpu-model',
            engine: vllmOnSimServer(),
            concurrency: 4,
          },
        ],
      },
      gatewayEnv: { GATEWAY_ID },
    });
    const worker = sys.workers[0]!;
    const first = await worker.waitForLog((l) => l.msg === 'engine process started');
    const s = await openStream(sys.url, 'gpu-model', 300, 'Tell me');
    await s.firstText;
    process.kill(first.pid as number, 'SIGKILL');
    await worker.waitForLog((l) => l.msg === 'engine process exited');
    await worker.waitForLog((l) => l.msg === 'request handed back' && l.rid === s.rid);
    const resumed = await worker.waitForLog((l) => l.msg === 'request resumed' && l.rid === s.rid);
    expect(resumed.resumedTokens as number).to.be.greaterThan(0);
    // The sim server continues its story where the delivered text ends, so the seam is exact.
    expect(await expectComplete(sys, GATEWAY_ID, s)).to.equal(story(300));
    const restarted = worker.logs.filter((l) => l.msg === 'engine process started');
    expect(restarted.length).to.equal(2);
    expect(restarted[1]!.pid).to.not.equal(first.pid);
  });

  it('a request that fails on every attempt ends with an explicit error, streamed or not', async () => {
    upstream = await SimServerProcess.start(['--port', '0', '--ttft-ms', '0', '--itl-ms', '2', '--fail-after-tokens', '5']);
    sys = await TestSystem.start({
      deployments: {
        models: [
          { name: 'flaky', engine: { type: 'openai', baseUrl: `${upstream.url}/v1`, api: 'completions' }, concurrency: 2 },
        ],
      },
      workers: [{ env: { MAX_ATTEMPTS: '3' } }],
      gatewayEnv: { GATEWAY_ID },
    });
    const s = await openStream(sys.url, 'flaky', 100, 'Tell me');
    const events = parseSse(await s.body);
    const last = JSON.parse(events.at(-1)!.data) as { error: { code: string; type: string } };
    expect(last.error.code).to.equal('max_attempts_exceeded');
    expect(last.error.type).to.equal('service_unavailable_error');
    // Each attempt delivered its tokens once, in sequence, before the error: nothing lost or repeated.
    const evs = await replyEvents(sys, GATEWAY_ID, s.rid);
    expect(evs.map((e) => e.seq)).to.deep.equal(evs.map((_, i) => i));
    expect(evs.at(-1)!.type).to.equal('error');
    const streamed = evs.filter((e) => e.type === 'tokens').map((e) => (e.type === 'tokens' ? e.text : ''));
    expect(streamed.join('')).to.equal(story(15));
    expect(sys.workers[0]!.logs.filter((l) => l.msg === 'request handed back' && l.rid === s.rid)).to.have.length(3);

    const res = await fetch(`${sys.url}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: 'flaky', prompt: 'x', max_tokens: 100 }),
    });
    expect(res.status).to.equal(503);
    expect(((await res.json()) as { error: { code: string } }).error.code).to.equal('max_attempts_exceeded');
  });
});
