import { expect } from 'chai';
import { ApiKeys, type CreatedApiKey } from '@llmux/shared';
import { TestSystem } from '../helpers/system.js';
import { post } from '../helpers/http.js';

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}
const errorOf = (text: string) => (JSON.parse(text) as ErrorBody).error;

/**
 * Tenants through the gateway with AUTH=required: API keys, per-key request
 * and token limits under concurrency, priorities bounded by the key, and
 * idempotency keys scoped to their tenant. Real Redis, real processes.
 */
describe('tenants: API keys, limits and priorities (real Redis, real processes, sim engine)', function () {
  let sys: TestSystem;
  let apiKeys: ApiKeys;

  before(async function () {
    sys = await TestSystem.start({
      deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 0, itlMs: 1 }, concurrency: 64 }] },
      gatewayEnv: { AUTH: 'required' },
    });
    apiKeys = new ApiKeys(sys.redis, sys.keys);
  });

  after(async () => {
    await sys?.stop();
  });

  const chatUrl = () => `${sys.url}/v1/chat/completions`;
  const body = (maxTokens: number, extra: Record<string, unknown> = {}) => ({
    model: 'sim',
    messages: [{ role: 'user', content: 'Once' }], // 4 characters: 1 token reserved for the prompt
    max_tokens: maxTokens,
    ...extra,
  });
  const bearer = (k: CreatedApiKey, extra: Record<string, string> = {}) => ({ authorization: `Bearer ${k.key}`, ...extra });
  const worker = () => sys.workers[0]!;

  it('answers 401 in OpenAI shape without a key, with a malformed, an unknown or a revoked key', async () => {
    const k = await apiKeys.create({ tenant: 'acme' });
    const ok = await post(chatUrl(), body(2), bearer(k));
    expect(ok.status).to.equal(200);
    const cases: Record<string, string>[] = [
      {},
      { authorization: 'Bearer nonsense' },
      { authorization: `Bearer sk-llmux-${'A'.repeat(32)}` },
      { authorization: `Basic ${k.key}` },
    ];
    for (const h of cases) {
      const r = await post(chatUrl(), body(2), h);
      expect(r.status, JSON.stringify(h)).to.equal(401);
      expect(errorOf(r.text)).to.include({ type: 'invalid_request_error', code: 'invalid_api_key' });
      expect(r.text, 'the key is never echoed whole').to.not.include(k.key);
    }
    const models = await fetch(`${sys.url}/v1/models`);
    expect(models.status).to.equal(401);
    await models.text();
    expect(await apiKeys.revoke(k.id)).to.equal(true);
    const revoked = await post(chatUrl(), body(2), bearer(k));
    expect(revoked.status).to.equal(401);
  });

  it('holds a tokens-per-minute limit with 50 concurrent requests from one key, and gives back what was not used', async () => {
    // Each request reserves 1 (prompt) + 90 (max_tokens) = 91 tokens: 910 a minute admit exactly 10 at once.
    // The bucket refills 910/60 ≈ 15 tokens a second: far less than one more request during the burst.
    const k = await apiKeys.create({ tenant: 'tpm', tpm: 910 });
    const answers = await Promise.all(Array.from({ length: 50 }, () => post(chatUrl(), body(90), bearer(k))));
    const ok = answers.filter((r) => r.status === 200);
    const limited = answers.filter((r) => r.status === 429);
    expect(ok.length + limited.length).to.equal(50);
    expect(ok).to.have.length(10);
    for (const r of limited) {
      expect(errorOf(r.text)).to.include({ type: 'rate_limit_error', code: 'rate_limit_exceeded' });
      expect(Number(r.headers.get('retry-after'))).to.be.at.least(1);
      expect(Number(r.headers.get('retry-after-ms'))).to.be.greaterThan(0);
    }
    const used = ok.reduce((n, r) => n + (JSON.parse(r.text) as { usage: { total_tokens: number } }).usage.total_tokens, 0);
    expect(used).to.be.at.most(910);

    // Settling: a request that stops after a few tokens gives back the rest of its
    // reservation at once, so the next one fits in a limit that held only one.
    const small = await apiKeys.create({ tenant: 'tpm-settle', tpm: 100 });
    const short = await post(chatUrl(), body(90, { stop: [' upon'] }), bearer(small));
    expect(short.status, short.text).to.equal(200);
    expect((JSON.parse(short.text) as { usage: { total_tokens: number } }).usage.total_tokens).to.be.below(10);
    const next = await post(chatUrl(), body(90), bearer(small));
    expect(next.status, next.text).to.equal(200);
    const third = await post(chatUrl(), body(90), bearer(small));
    expect(third.status).to.equal(429);
  });

  it('holds a requests-per-minute limit under concurrency', async () => {
    const k = await apiKeys.create({ tenant: 'rpm', rpm: 5 });
    const answers = await Promise.all(Array.from({ length: 8 }, () => post(chatUrl(), body(1), bearer(k))));
    expect(answers.filter((r) => r.status === 200)).to.have.length(5);
    const limited = answers.filter((r) => r.status === 429);
    expect(limited).to.have.length(3);
    expect(errorOf(limited[0]!.text).message).to.include('requests per minute');
  });

  it('refuses a request larger than the whole limit with request_too_large and no Retry-After', async () => {
    const k = await apiKeys.create({ tenant: 'small', tpm: 50 });
    const r = await post(chatUrl(), body(100), bearer(k));
    expect(r.status).to.equal(429);
    expect(errorOf(r.text).code).to.equal('request_too_large');
    expect(r.headers.get('retry-after')).to.equal(null);
  });

  it('bounds a request priority by what its key allows; refuses a bad X-Priority', async () => {
    const capped = await apiKeys.create({ tenant: 'capped', maxPriority: 'normal' });
    const vip = await apiKeys.create({ tenant: 'vip', maxPriority: 'high' });
    const asked = async (k: CreatedApiKey, h: Record<string, string>, extra: Record<string, unknown> = {}) => {
      const r = await post(chatUrl(), body(1, extra), bearer(k, h));
      expect(r.status, r.text).to.equal(200);
      const rid = (JSON.parse(r.text) as { id: string }).id;
      const line = await worker().waitForLog((l) => l.rid === rid && l.msg === 'request done');
      return [line.tenant, line.priority];
    };
    expect(await asked(capped, { 'x-priority': 'high' })).to.deep.equal(['capped', 'normal']);
    expect(await asked(vip, { 'x-priority': 'high' })).to.deep.equal(['vip', 'high']);
    expect(await asked(vip, {}, { service_tier: 'flex' })).to.deep.equal(['vip', 'low']);
    expect(await asked(vip, {}, { service_tier: 'priority' })).to.deep.equal(['vip', 'high']);
    const bad = await post(chatUrl(), body(1), bearer(vip, { 'x-priority': 'urgent' }));
    expect(bad.status).to.equal(400);
    expect(errorOf(bad.text).code).to.equal('invalid_priority');
  });

  it('scopes Idempotency-Keys and resumes to their tenant', async () => {
    const a = await apiKeys.create({ tenant: 'tenant-a' });
    const b = await apiKeys.create({ tenant: 'tenant-b' });
    const h = { 'idempotency-key': 'shared-key' };
    const ra = await post(chatUrl(), body(3), bearer(a, h));
    // The same key from another tenant is another request, even with another body.
    const rb = await post(chatUrl(), body(4), bearer(b, h));
    expect(ra.status).to.equal(200);
    expect(rb.status).to.equal(200);
    const ida = (JSON.parse(ra.text) as { id: string }).id;
    expect((JSON.parse(rb.text) as { id: string }).id).to.not.equal(ida);
    // Tenant b cannot read tenant a's completion.
    const peek = await fetch(`${chatUrl()}/${ida}`, { headers: bearer(b) });
    expect(peek.status).to.equal(404);
    await peek.text();
  });
});
