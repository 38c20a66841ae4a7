import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { post } from '../helpers/http.js';

/**
 * Request logs: JSON lines with the request id, model, worker and timings;
 * prompts and completions only when LOG_REQUEST_CONTENT is on.
 */
describe('request logs (real processes)', function () {
  let sys: TestSystem;

  before(async function () {
    sys = await TestSystem.start({
      deployments: {
        models: [
          { name: 'quiet', engine: { type: 'sim', ttftMs: 0, itlMs: 1 }, concurrency: 2 },
          { name: 'verbose', engine: { type: 'sim', ttftMs: 0, itlMs: 1 }, concurrency: 2 },
        ],
      },
      workers: [{ models: ['quiet'] }, { models: ['verbose'], env: { LOG_REQUEST_CONTENT: 'true' } }],
    });
  });

  after(async () => {
    await sys?.stop();
  });

  const ask = async (model: string, marker: string) => {
    const r = await post(`${sys.url}/v1/chat/completions`, {
      model,
      messages: [{ role: 'user', content: `Once ${marker}` }],
      max_tokens: 4,
    });
    expect(r.status).to.equal(200);
    return JSON.parse(r.text) as { id: string; choices: { message: { content: string } }[] };
  };

  it('logs request id, model, worker and timings, and never the prompt or the completion by default', async () => {
    const marker = 'zebra-quiet-7f3';
    const c = await ask('quiet', marker);
    const worker = sys.workers[0]!;
    const done = await worker.waitForLog((l) => l.msg === 'request done' && l.rid === c.id);
    expect(done).to.include({ model: 'quiet', worker: 'w0' });
    for (const k of ['ms', 'waitMs', 'tokens']) expect(done[k], k).to.be.a('number');
    const everything = [...worker.logs, ...sys.gateway.logs].map((l) => JSON.stringify(l)).join('\n');
    expect(everything).to.not.include(marker);
    expect(everything).to.not.include(c.choices[0]!.message.content);
  });

  it('logs prompt and completion with LOG_REQUEST_CONTENT=true', async () => {
    const marker = 'zebra-verbose-9c1';
    const c = await ask('verbose', marker);
    const done = await sys.workers[1]!.waitForLog((l) => l.msg === 'request done' && l.rid === c.id);
    expect(JSON.stringify(done.prompt)).to.include(marker);
    expect(done.completion).to.equal(c.choices[0]!.message.content);
  });
});
