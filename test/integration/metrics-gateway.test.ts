import { expect } from 'chai';
import { ApiKeys, REJECTION_REASONS, REQUEST_OUTCOMES, UNKNOWN_MODEL } from '@llmux/shared';
import { TestSystem } from '../helpers/system.js';
import { entryOf, TestProcess } from '../helpers/processes.js';
import { parseSse, post, type ChatChunk, type SseEvent } from '../helpers/http.js';
import { delta, expectValidHistograms, scrape, type Metrics } from '../helpers/metrics.js';
import { SimServerProcess } from '../helpers/sim-server.js';
import { replyEvents } from '../helpers/streams.js';

const GATEWAY_ID = 'gw-metrics';
const messages = [{ role: 'user', content: 'Once upon a time' }];

const REQUESTS = 'llmux_requests_total';
const REJECTIONS = 'llmux_admission_rejections_total';
const TTFT = 'llmux_time_to_first_token_seconds';
const ITL = 'llmux_inter_token_latency_seconds';
const E2E = 'llmux_e2e_request_latency_seconds';
const GENERATION = 'llmux_generation_tokens_total';
const PROMPT = 'llmux_prompt_tokens_total';
const OPEN = 'llmux_gateway_open_requests';
const FOLLOWERS = 'llmux_gateway_followers';
const REDIS = 'llmux_redis_command_duration_seconds';

/** The Redis operations the gateway times (a fixed set). */
const REDIS_OPS = ['enqueue', 'queue reading', 'authentication', 'idempotency', 'model lookup', 'request lookup'];

/** A streamed response read event by event, as it arrives. */
interface LiveStream {
  status: number;
  rid: string;
  events: SseEvent[];
  /** Resolves once a chunk with text has arrived. */
  firstText: Promise<void>;
  /** Resolves with every event when the response ends (or the client aborts). */
  done: Promise<SseEvent[]>;
  abort(): void;
}

function chunkText(ev: SseEvent): string {
  if (ev.data === '[DONE]') return '';
  const c = JSON.parse(ev.data) as Partial<ChatChunk>;
  return (c.choices ?? []).map((ch) => ch.delta?.content ?? ch.text ?? '').join('');
}

/** Opens a streamed request (POST, or GET for a resume) and reads it incrementally. */
async function stream(url: string, init: RequestInit): Promise<LiveStream> {
  const ctl = new AbortController();
  const res = await fetch(url, { ...init, signal: ctl.signal });
  const rid = res.headers.get('x-request-id') ?? '';
  const events: SseEvent[] = [];
  let onFirst!: () => void;
  const firstText = new Promise<void>((r) => (onFirst = r));
  const done = (async () => {
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of res.body!) {
        buf += decoder.decode(chunk as Uint8Array, { stream: true });
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          for (const ev of parseSse(buf.slice(0, end + 2))) {
            events.push(ev);
            if (chunkText(ev) !== '') onFirst();
          }
          buf = buf.slice(end + 2);
        }
      }
    } catch (err) {
      if (!ctl.signal.aborted) throw err;
    }
    return events;
  })();
  return { status: res.status, rid, events, firstText, done, abort: () => ctl.abort() };
}

const chatStream = (url: string, body: Record<string, unknown>, headers: Record<string, string> = {}) =>
  stream(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ messages, stream: true, stream_options: { include_usage: true }, ...body }),
  });

/** The usage chunk of a finished stream. */
function usageOf(events: SseEvent[]): { prompt_tokens: number; completion_tokens: number } {
  expect(events.at(-1)?.data).to.equal('[DONE]');
  const u = (JSON.parse(events.at(-2)!.data) as ChatChunk).usage;
  expect(u, 'usage chunk').to.be.an('object');
  return u!;
}

/**
 * The gateway's metrics, scraped from GET /metrics after real traffic through
 * real processes (sim engine, and an OpenAI-compatible sim server that
 * fails): latencies, outcomes, refusals, tokens, gauges and label hygiene.
 */
describe('gateway metrics (real Redis, real processes, sim engine)', function () {
  let sys: TestSystem;
  let upstream: SimServerProcess;
  const FAIL_AFTER = 4;

  before(async function () {
    upstream = await SimServerProcess.start(['--ttft-ms', '0', '--itl-ms', '2', '--fail-after-tokens', String(FAIL_AFTER)]);
    sys = await TestSystem.start({
      deployments: {
        models: [
          { name: 'fast', aliases: ['fast-alias'], engine: { type: 'sim', ttftMs: 0, itlMs: 5 }, concurrency: 8 },
          { name: 'long', engine: { type: 'sim', ttftMs: 0, itlMs: 40 }, concurrency: 4 },
          // One slot and room for one waiting request: a burst overflows it.
          { name: 'tiny', engine: { type: 'sim', ttftMs: 0, itlMs: 30 }, concurrency: 1, maxQueue: 1 },
          // Fails after a few tokens on its only attempt: a worker error event after text.
          { name: 'flaky', engine: { type: 'openai', baseUrl: `${upstream.url}/v1`, api: 'chat' }, concurrency: 2 },
        ],
      },
      workers: [
        // One event per token, sent at once.
        { models: ['fast', 'long', 'tiny'], env: { FLUSH_INTERVAL_MS: '0', MAX_BATCH_TOKENS: '1' } },
        { models: ['flaky'], env: { MAX_ATTEMPTS: '1' } },
      ],
      gatewayEnv: { GATEWAY_ID },
    });
  });

  after(async () => {
    await sys?.stop();
    await upstream?.stop();
  });

  const chatUrl = () => `${sys.url}/v1/chat/completions`;

  it('counts streamed requests: outcome ok, TTFT, ITL and e2e per request, prompt and generation tokens', async () => {
    const before = await scrape(sys.url);
    const N = 5;
    // One through an alias: it is labelled with the deployment's name.
    const streams = await Promise.all(
      Array.from({ length: N }, (_, i) => chatStream(sys.url, { model: i === 0 ? 'fast-alias' : 'fast', max_tokens: 12 + i })),
    );
    const bodies = await Promise.all(streams.map((s) => s.done));
    let completion = 0;
    let prompt = 0;
    let textChunks = 0;
    for (const [i, events] of bodies.entries()) {
      expect(streams[i]!.status).to.equal(200);
      const u = usageOf(events);
      expect(u.completion_tokens).to.equal(12 + i);
      completion += u.completion_tokens;
      prompt += u.prompt_tokens;
      textChunks += events.filter((e) => chunkText(e) !== '').length;
    }
    // Every tokens event with text is one chunk; a non-streamed request counts the same way.
    const json = await post(chatUrl(), { model: 'fast', messages, max_tokens: 7 });
    expect(json.status).to.equal(200);
    const jsonUsage = (JSON.parse(json.text) as { usage: { prompt_tokens: number; completion_tokens: number } }).usage;
    const jsonEvents = (await replyEvents(sys, GATEWAY_ID, json.headers.get('x-request-id')!)).filter(
      (e) => e.type === 'tokens' && e.text !== '',
    ).length;

    const after = await scrape(sys.url);
    const fast = { model: 'fast' };
    expect(delta(before, after, REQUESTS, { ...fast, outcome: 'ok' })).to.equal(N + 1);
    expect(delta(before, after, REQUESTS, fast), 'no other outcome').to.equal(N + 1);
    expect(delta(before, after, `${TTFT}_count`, fast)).to.equal(N + 1);
    expect(delta(before, after, `${E2E}_count`, fast)).to.equal(N + 1);
    // ITL: one observation per tokens event after the first.
    expect(delta(before, after, `${ITL}_count`, fast)).to.equal(textChunks + jsonEvents - (N + 1));
    expect(delta(before, after, GENERATION, fast)).to.equal(completion + jsonUsage.completion_tokens);
    expect(delta(before, after, PROMPT, fast)).to.equal(prompt + jsonUsage.prompt_tokens);
    expect(prompt).to.be.greaterThan(0);
    // The sim engine sends a token every 5 ms: the mean gap is milliseconds, not seconds or zero.
    const itlMean = delta(before, after, `${ITL}_sum`, fast) / delta(before, after, `${ITL}_count`, fast);
    expect(itlMean).to.be.within(0.001, 0.5);
    // Each request's end comes after its first token.
    expect(delta(before, after, `${E2E}_sum`, fast)).to.be.greaterThan(delta(before, after, `${TTFT}_sum`, fast));
    expect(after.all(REQUESTS, { model: 'fast-alias' }), 'an alias is never a label').to.have.length(0);
    expect(after.sample(OPEN)).to.equal(0);
  });

  it('counts a stream the client dropped as cancelled, with the tokens it was sent', async () => {
    const before = await scrape(sys.url);
    const s = await chatStream(sys.url, { model: 'long', max_tokens: 1000 });
    expect(s.status).to.equal(200);
    await s.firstText;
    s.abort();
    await s.done;
    await sys.gateway.waitForLog((l) => l.msg === 'client disconnected; request cancelled' && l.rid === s.rid);
    const after = await scrape(sys.url);
    const long = { model: 'long' };
    expect(delta(before, after, REQUESTS, { ...long, outcome: 'cancelled' })).to.equal(1);
    expect(delta(before, after, REQUESTS, long)).to.equal(1);
    expect(delta(before, after, `${TTFT}_count`, long)).to.equal(1);
    expect(delta(before, after, `${E2E}_count`, long), 'e2e is for finished requests').to.equal(0);
    expect(delta(before, after, GENERATION, long)).to.be.at.least(1);
    expect(delta(before, after, PROMPT, long), 'prompt tokens come with the end').to.equal(0);
    expect(after.sample(OPEN)).to.equal(0);
  });

  it('counts a 504 at X-Request-Timeout as a timeout, streamed or not', async () => {
    const before = await scrape(sys.url);
    const s = await chatStream(sys.url, { model: 'long', max_tokens: 1000 }, { 'x-request-timeout': '0.3' });
    const events = await s.done;
    expect((JSON.parse(events.at(-1)!.data) as { error: { code: string } }).error.code).to.equal('deadline_exceeded');
    const j = await post(chatUrl(), { model: 'long', messages, max_tokens: 1000 }, { 'x-request-timeout': '0.2' });
    expect(j.status).to.equal(504);
    const after = await scrape(sys.url);
    expect(delta(before, after, REQUESTS, { model: 'long', outcome: 'timeout' })).to.equal(2);
    expect(delta(before, after, REQUESTS, { model: 'long' })).to.equal(2);
    expect(delta(before, after, `${E2E}_count`, { model: 'long' })).to.equal(0);
    expect(delta(before, after, REJECTIONS), 'a timeout is not a refusal').to.equal(0);
  });

  it('counts a worker error event after tokens as an error, with the tokens relayed before it', async () => {
    const before = await scrape(sys.url);
    const s = await chatStream(sys.url, { model: 'flaky', max_tokens: 50 });
    const events = await s.done;
    const last = JSON.parse(events.at(-1)!.data) as { error?: { code: string } };
    expect(last.error?.code).to.equal('max_attempts_exceeded');
    const relayed = (await replyEvents(sys, GATEWAY_ID, s.rid)).reduce((n, e) => n + (e.type === 'tokens' ? e.n : 0), 0);
    expect(relayed).to.be.at.least(1);
    const after = await scrape(sys.url);
    const flaky = { model: 'flaky' };
    expect(delta(before, after, REQUESTS, { ...flaky, outcome: 'error' })).to.equal(1);
    expect(delta(before, after, REQUESTS, flaky)).to.equal(1);
    expect(delta(before, after, GENERATION, flaky)).to.equal(relayed);
    expect(delta(before, after, `${TTFT}_count`, flaky)).to.equal(1);
    expect(delta(before, after, `${E2E}_count`, flaky)).to.equal(0);
  });

  it('counts a full queue (429) and refused input (400, 404) by reason, unknown models as _unknown', async () => {
    const before = await scrape(sys.url);
    const answers = await Promise.all(
      Array.from({ length: 8 }, () => post(chatUrl(), { model: 'tiny', messages, max_tokens: 3 })),
    );
    const full = answers.filter((r) => r.status === 429).length;
    const ok = answers.filter((r) => r.status === 200).length;
    expect(full + ok).to.equal(8);
    expect(full, 'the burst overflows a queue of 1').to.be.greaterThan(0);

    const bogus = `no-such-model-${Date.now()}`;
    const refused = [
      await post(chatUrl(), '{"model": "fast", "messages": ['), // unparseable
      await post(chatUrl(), { model: bogus, messages }), // 404 model_not_found
      await post(chatUrl(), { model: 'fast', messages }, { 'x-request-timeout': 'abc' }),
      await post(chatUrl(), { model: 'fast-alias', messages, max_tokens: 5000 }), // past the context: the deployment is known
    ];
    expect(refused.map((r) => r.status)).to.deep.equal([400, 404, 400, 400]);

    const after = await scrape(sys.url);
    expect(delta(before, after, REJECTIONS, { model: 'tiny', reason: 'queue_full' })).to.equal(full);
    expect(delta(before, after, REQUESTS, { model: 'tiny', outcome: 'rejected_429' })).to.equal(full);
    expect(delta(before, after, REQUESTS, { model: 'tiny', outcome: 'ok' })).to.equal(ok);
    expect(delta(before, after, REJECTIONS, { model: UNKNOWN_MODEL, reason: 'invalid_request' })).to.equal(3);
    expect(delta(before, after, REQUESTS, { model: UNKNOWN_MODEL, outcome: 'error' })).to.equal(3);
    expect(delta(before, after, REJECTIONS, { model: 'fast', reason: 'invalid_request' })).to.equal(1);
    expect(delta(before, after, REQUESTS, { model: 'fast', outcome: 'error' })).to.equal(1);
    expect(delta(before, after, REJECTIONS)).to.equal(full + 4);
    for (const [, samples] of after) {
      for (const s of samples) expect(Object.values(s.labels), 'a client string is never a label').to.not.include(bogus);
    }
  });

  it('counts 401, rate limits (429) and a full gateway (503) on a gateway with AUTH=required', async () => {
    const gw = new TestProcess('gateway-auth', entryOf('@llmux/gateway'), {
      ...sys.env,
      PORT: '0',
      AUTH: 'required',
      MAX_OPEN_REQUESTS: '1',
    });
    try {
      const url = String((await gw.ready()).url);
      const keys = new ApiKeys(sys.redis, sys.keys);
      const limited = await keys.create({ tenant: 'metrics-rpm', rpm: 1 });
      const open = await keys.create({ tenant: 'metrics-open' });
      const before = await scrape(url);
      const auth = (k: { key: string }) => ({ authorization: `Bearer ${k.key}` });

      expect((await post(`${url}/v1/chat/completions`, { model: 'fast', messages, max_tokens: 2 })).status).to.equal(401);
      const first = await post(`${url}/v1/chat/completions`, { model: 'fast', messages, max_tokens: 2 }, auth(limited));
      expect(first.status).to.equal(200);
      const second = await post(`${url}/v1/chat/completions`, { model: 'fast', messages, max_tokens: 2 }, auth(limited));
      expect(second.status).to.equal(429);

      const s = await chatStream(url, { model: 'long', max_tokens: 1000 }, auth(open));
      await s.firstText;
      const full = await post(`${url}/v1/chat/completions`, { model: 'fast', messages, max_tokens: 2 }, auth(open));
      expect(full.status).to.equal(503);
      const during = await scrape(url);
      expect(during.sample(OPEN)).to.equal(1);
      s.abort();
      await s.done;
      await gw.waitForLog((l) => l.msg === 'client disconnected; request cancelled' && l.rid === s.rid);

      const after = await scrape(url);
      expect(delta(before, after, REJECTIONS, { model: UNKNOWN_MODEL, reason: 'unauthenticated' })).to.equal(1);
      expect(delta(before, after, REJECTIONS, { model: 'fast', reason: 'rate_limited' })).to.equal(1);
      expect(delta(before, after, REJECTIONS, { model: UNKNOWN_MODEL, reason: 'overloaded' })).to.equal(1);
      expect(delta(before, after, REJECTIONS)).to.equal(3);
      expect(delta(before, after, REQUESTS, { model: UNKNOWN_MODEL, outcome: 'error' })).to.equal(1);
      expect(delta(before, after, REQUESTS, { model: 'fast', outcome: 'rejected_429' })).to.equal(1);
      expect(delta(before, after, REQUESTS, { model: UNKNOWN_MODEL, outcome: 'rejected_503' })).to.equal(1);
      expect(delta(before, after, REQUESTS, { model: 'fast', outcome: 'ok' })).to.equal(1);
      expect(delta(before, after, REQUESTS, { model: 'long', outcome: 'cancelled' })).to.equal(1);
      expect(delta(before, after, REQUESTS)).to.equal(5);
      expect(after.sample(OPEN)).to.equal(0);
      expect(after.sample(`${REDIS}_count`, { op: 'authentication' })).to.be.at.least(3);
    } finally {
      await gw.stop();
    }
  });

  it('shows open requests and followers while a stream runs, and does not count a resume as a request', async () => {
    const before = await scrape(sys.url);
    expect(before.sample(OPEN)).to.equal(0);
    expect(before.sample(FOLLOWERS)).to.equal(0);
    const a = await chatStream(sys.url, { model: 'long', max_tokens: 25 });
    await a.firstText;
    const during = await scrape(sys.url);
    expect(during.sample(OPEN)).to.equal(1);
    expect(during.sample(FOLLOWERS)).to.equal(0);

    // The same stream again, from its first event on, through the output log.
    const b = await stream(`${chatUrl()}/${a.rid}`, { headers: { 'last-event-id': '1' } });
    expect(b.status).to.equal(200);
    await b.firstText;
    const following = await scrape(sys.url);
    expect(following.sample(OPEN)).to.equal(1);
    expect(following.sample(FOLLOWERS)).to.equal(1);

    const [ea] = await Promise.all([a.done, b.done]);
    const after = await scrape(sys.url);
    expect(after.sample(OPEN)).to.equal(0);
    expect(after.sample(FOLLOWERS)).to.equal(0);
    expect(delta(before, after, REQUESTS, { model: 'long', outcome: 'ok' })).to.equal(1);
    expect(delta(before, after, REQUESTS), 'the resume is not a request').to.equal(1);
    expect(delta(before, after, GENERATION, { model: 'long' }), 'tokens counted once').to.equal(usageOf(ea).completion_tokens);
    expect(delta(before, after, `${TTFT}_count`)).to.equal(1);
    expect(after.sample(`${REDIS}_count`, { op: 'request lookup' })).to.be.at.least(1);
  });

  it('serves valid histograms and bounded labels only: models, outcomes, reasons and operations from fixed sets', async () => {
    const m: Metrics = await scrape(sys.url);
    expectValidHistograms(m);
    for (const name of [TTFT, ITL, E2E, REDIS]) expect(m.types.get(name)).to.equal('histogram');
    for (const name of [REQUESTS, REJECTIONS, GENERATION, PROMPT]) expect(m.types.get(name)).to.equal('counter');
    for (const name of [OPEN, FOLLOWERS]) expect(m.types.get(name)).to.equal('gauge');

    const models = new Set([...sys.deployments.models.map((d) => d.name), UNKNOWN_MODEL]);
    const allowed: Record<string, Set<string>> = {
      model: models,
      outcome: new Set(REQUEST_OUTCOMES),
      reason: new Set(REJECTION_REASONS),
      op: new Set(REDIS_OPS),
      service: new Set(['gateway']),
      instance: new Set([GATEWAY_ID]),
    };
    let checked = 0;
    for (const family of [TTFT, ITL, E2E, REQUESTS, REJECTIONS, GENERATION, PROMPT, OPEN, FOLLOWERS, REDIS]) {
      const names = m.types.get(family) === 'histogram' ? ['_bucket', '_sum', '_count'].map((x) => family + x) : [family];
      for (const name of names) {
        for (const s of m.all(name)) {
          checked++;
          for (const [k, v] of Object.entries(s.labels)) {
            if (k === 'le') continue;
            expect(allowed[k], `${name}: label ${k}`).to.not.equal(undefined);
            expect([...allowed[k]!], `${name}{${k}="${v}"}`).to.include(v);
            expect(v, 'never a request id').to.not.match(/^(chat)?cmpl-/);
          }
        }
      }
    }
    expect(checked).to.be.greaterThan(100);
    // The request path's Redis operations are timed: one enqueue for each request that was not refused.
    for (const op of ['enqueue', 'queue reading']) expect(m.sample(`${REDIS}_count`, { op }), op).to.be.greaterThan(0);
    expect(m.sample(`${REDIS}_count`, { op: 'enqueue' })).to.equal(m.sample(REQUESTS) - m.sample(REJECTIONS));
  });
});
