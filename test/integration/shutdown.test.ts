import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { testModel } from '../helpers/models.js';
import { parseSse, streamedText, type ChatChunk } from '../helpers/http.js';

/** Two-phase shutdown of real processes: drain what is running, and never hang. */
describe('shutdown', function () {
  let sys: TestSystem;

  beforeEach(async function () {
    sys = await TestSystem.start({
      deployments: {
        models: [
          {
            name: 'tiny-random',
            source: await testModel('llama-2-tiny-random'),
            engine: { type: 'llamacpp', threads: 1, contextSize: 4096 },
            concurrency: 2,
          },
        ],
      },
    });
  });

  afterEach(async () => {
    await sys?.stop();
  });

  const longStream = () =>
    fetch(`${sys.url}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({
        model: 'tiny-random',
        prompt: 'Hi',
        max_tokens: 2000,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });

  it('a worker on SIGTERM finishes the request it is running, then exits 0', async () => {
    const res = await longStream();
    const rid = res.headers.get('x-request-id')!;
    const worker = sys.workers[0]!;
    await worker.waitForLog((l) => l.msg === 'worker state' && l.state === 'ready');
    const body = res.text();
    worker.kill('SIGTERM');
    const events = parseSse(await body);
    expect(events.at(-1)!.data).to.equal('[DONE]');
    const usage = JSON.parse(events.at(-2)!.data) as ChatChunk;
    expect(usage.usage!.completion_tokens).to.equal(2000);
    expect(streamedText(events).length).to.be.greaterThan(0);
    expect((await worker.exited).code).to.equal(0);
    expect(worker.logs.some((l) => l.msg === 'request done' && l.rid === rid)).to.equal(true);
  });

  it('a gateway on SIGTERM lets its open stream finish, then exits 0', async () => {
    const res = await longStream();
    const body = res.text();
    sys.gateway.kill('SIGTERM');
    const events = parseSse(await body);
    expect(events.at(-1)!.data).to.equal('[DONE]');
    expect((await sys.gateway.exited).code).to.equal(0);
  });

  it('gateway and worker still exit on SIGTERM when Redis is gone (no hang)', async () => {
    await sys.testRedis.stop();
    sys.gateway.kill('SIGTERM');
    sys.workers[0]!.kill('SIGTERM');
    // Nothing here kills them: a hang fails the test by its timeout.
    const [g, w] = await Promise.all([sys.gateway.exited, sys.workers[0]!.exited]);
    expect(g.code).to.equal(0);
    expect(w.code).to.equal(0);
  });
});
