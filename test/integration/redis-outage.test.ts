import { expect } from 'chai';
import { DeploymentRegistry, RequestQueue } from '@llmux/shared';
import { TestSystem } from '../helpers/system.js';
import { parseSse, post, streamedText } from '../helpers/http.js';

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** Polls `check` every `everyMs` until it is true, for at most `withinMs`. */
async function until(what: string, check: () => Promise<boolean>, withinMs = 30_000, everyMs = 50): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${withinMs} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Redis goes away mid-test and comes back empty on the same port: while it is
 * gone every request gets a 503 (never a hang); when it is back the gateway,
 * its reply reader and the worker recover by themselves.
 */
describe('Redis outage (real Redis stopped and restarted, real processes, sim engine)', function () {
  let sys: TestSystem;
  const messages = [{ role: 'user', content: 'Once upon a time' }];

  before(async function () {
    sys = await TestSystem.start({
      deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 0, itlMs: 1 }, concurrency: 4 }] },
    });
  });

  after(async () => {
    await sys?.stop();
  });

  const chat = (body: Record<string, unknown>) => post(`${sys.url}/v1/chat/completions`, { model: 'sim', messages, ...body });

  it('serves before the outage', async () => {
    const r = await chat({ max_tokens: 8 });
    expect(r.status).to.equal(200);
  });

  it('answers 503 with Retry-After while Redis is down, on every route, and 400 for bad input still', async () => {
    await sys.testRedis.stop();
    const answers = await Promise.all([
      chat({ max_tokens: 8 }),
      chat({ max_tokens: 8, stream: true }),
      post(`${sys.url}/v1/completions`, { model: 'sim', prompt: 'x', max_tokens: 4 }),
      fetch(`${sys.url}/v1/chat/sim`, { method: 'POST', body: 'hello' }).then(async (r) => ({
        status: r.status,
        headers: r.headers,
        text: await r.text(),
      })),
      // Whether this model exists cannot be told without Redis: 503, not 404.
      chat({ model: 'not-published', max_tokens: 8 }),
    ]);
    for (const r of answers) {
      expect(r.status, r.text).to.equal(503);
      const e = (JSON.parse(r.text) as ErrorBody).error;
      expect(e).to.include({ type: 'service_unavailable_error', code: 'service_unavailable' });
      expect(Number(r.headers.get('retry-after'))).to.be.at.least(1);
    }
    // Many at once: all 503, none left hanging.
    const many = await Promise.all(Array.from({ length: 50 }, () => chat({ max_tokens: 8 })));
    expect(many.map((r) => r.status)).to.deep.equal(many.map(() => 503));
    // Input errors do not depend on Redis.
    const bad = await chat({ max_tokens: -1 });
    expect(bad.status).to.equal(400);
    expect((await fetch(`${sys.url}/healthz`)).status).to.equal(200);
    expect((await fetch(`${sys.url}/readyz`)).status).to.equal(503);
    // Models are listed from the gateway's cache.
    const models = (await (await fetch(`${sys.url}/v1/models`)).json()) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id)).to.include('sim');
  });

  it('recovers by itself when Redis is back on the same port, empty', async () => {
    await sys.testRedis.restart();
    // The controller publishes the deployments again at its start; here the test does.
    await new DeploymentRegistry(sys.redis, sys.keys).publish(sys.deployments);
    await new RequestQueue(sys.redis, sys.keys).ensureGroup('sim');
    // The worker beats again and the gateway's connections are back.
    await until('gateway ready', async () => (await fetch(`${sys.url}/readyz`)).status === 200);
    expect(sys.workers[0]!.running, 'the worker survived the outage').to.equal(true);
    expect(sys.gateway.running, 'the gateway survived the outage').to.equal(true);

    // Tokens come back through the reply reader, which resumed after its last id.
    const s = await chat({ max_tokens: 12, stream: true });
    expect(s.status).to.equal(200);
    const events = parseSse(s.text);
    expect(events.at(-1)!.data).to.equal('[DONE]');
    expect(streamedText(events).length).to.be.greaterThan(0);
    const j = await chat({ max_tokens: 6 });
    expect(j.status).to.equal(200);
    const c = await post(`${sys.url}/v1/completions`, { model: 'sim', prompt: 'x', max_tokens: 4 });
    expect(c.status).to.equal(200);
  });

  it('answers 503 when Redis stops answering without closing (SIGSTOP), and recovers on SIGCONT', async () => {
    const pid = sys.testRedis.pid!;
    process.kill(pid, 'SIGSTOP');
    try {
      // The connection still looks fine: the first request's enqueue runs into the time bound and opens the circuit.
      const first = await chat({ max_tokens: 8 });
      expect(first.status, first.text).to.equal(503);
      expect((JSON.parse(first.text) as ErrorBody).error.code).to.equal('service_unavailable');
      // The circuit is open now: the rest are refused without touching Redis.
      const rest = await Promise.all(Array.from({ length: 20 }, () => chat({ max_tokens: 8, stream: true })));
      expect(rest.map((r) => r.status)).to.deep.equal(rest.map(() => 503));
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await until('gateway ready', async () => (await fetch(`${sys.url}/readyz`)).status === 200);
    const ok = await chat({ max_tokens: 8, stream: true });
    expect(ok.status).to.equal(200);
    expect(parseSse(ok.text).at(-1)!.data).to.equal('[DONE]');
  });
});
