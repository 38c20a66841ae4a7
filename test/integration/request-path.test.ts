import { expect } from 'chai';
import { decodeEvent, type ReplyEvent, type WorkerStatus } from '@llmux/shared';
import { TestSystem } from '../helpers/system.js';
import { testModel } from '../helpers/models.js';
import { parseSse, post, streamedText, type ChatChunk } from '../helpers/http.js';

/**
 * The whole request path with real parts: gateway and worker-agent processes,
 * a private redis-server, and the llama.cpp engine on two small real models.
 */
describe('request path (real Redis, real processes, llama.cpp engine)', function () {
  let sys: TestSystem;
  const GATEWAY_ID = 'gw-path';

  before(async function () {
    const stories = await testModel('stories260K');
    const tiny = await testModel('llama-2-tiny-random');
    sys = await TestSystem.start({
      deployments: {
        models: [
          {
            name: 'stories',
            aliases: ['tinystories'],
            source: stories,
            engine: { type: 'llamacpp', threads: 1, contextSize: 1024 },
            concurrency: 4,
            defaultMaxTokens: 48,
          },
          {
            name: 'tiny-random',
            source: tiny,
            engine: { type: 'llamacpp', threads: 1, contextSize: 4096, chatTemplate: 'chatml' },
            concurrency: 4,
          },
        ],
      },
      gatewayEnv: { GATEWAY_ID },
    });
  });

  after(async () => {
    await sys?.stop();
  });

  const chat = (body: Record<string, unknown>) =>
    post(`${sys.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'Once upon a time' }], ...body });

  /** All events the workers wrote for one request, from the gateway's reply stream. */
  async function eventsFor(rid: string): Promise<ReplyEvent[]> {
    const entries = (await sys.redis.xrange(sys.keys.replies(GATEWAY_ID), '-', '+')) as [string, string[]][];
    return entries.map(([, f]) => decodeEvent(f)).filter((e): e is ReplyEvent => e !== null && e.rid === rid);
  }

  it('streams a chat completion framed as OpenAI does, with a usage chunk', async () => {
    const r = await chat({
      model: 'stories',
      stream: true,
      max_tokens: 24,
      temperature: 0,
      stream_options: { include_usage: true },
    });
    expect(r.status).to.equal(200);
    expect(r.headers.get('content-type')).to.match(/^text\/event-stream/);
    const events = parseSse(r.text);
    expect(events.at(-1)!.data).to.equal('[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data) as ChatChunk);
    const id = chunks[0]!.id;
    expect(id).to.match(/^chatcmpl-/);
    for (const c of chunks) {
      expect(c.id).to.equal(id);
      expect(c.object).to.equal('chat.completion.chunk');
      expect(c.model).to.equal('stories');
    }
    expect(chunks[0]!.choices[0]!.delta).to.deep.equal({ role: 'assistant', content: '' });
    const usage = chunks.at(-1)!;
    expect(usage.choices).to.deep.equal([]);
    expect(usage.usage!.completion_tokens).to.equal(24);
    expect(usage.usage!.total_tokens).to.equal(usage.usage!.prompt_tokens + 24);
    const final = chunks.at(-2)!;
    expect(final.choices[0]!.finish_reason).to.equal('length');
    expect(final.choices[0]!.delta).to.deep.equal({});
    const text = streamedText(events);
    expect(text.length).to.be.greaterThan(20);
    // Every token event the worker sent reached the client, in order, once.
    const evs = await eventsFor(id);
    expect(evs.map((e) => e.seq)).to.deep.equal(evs.map((_, i) => i));
    expect(evs.at(-1)!.type).to.equal('done');
    expect(
      evs
        .filter((e) => e.type === 'tokens')
        .map((e) => (e.type === 'tokens' ? e.text : ''))
        .join(''),
    ).to.equal(text);
  });

  it('answers a non-streaming chat completion with the same text as the stream and usage', async () => {
    const body = { model: 'stories', max_tokens: 30, temperature: 0 };
    const [streamed, whole] = await Promise.all([chat({ ...body, stream: true }), chat(body)]);
    expect(whole.status).to.equal(200);
    const json = JSON.parse(whole.text) as {
      object: string;
      choices: { message: { role: string; content: string }; finish_reason: string }[];
      usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
    };
    expect(json.object).to.equal('chat.completion');
    expect(json.choices[0]!.message.role).to.equal('assistant');
    expect(json.choices[0]!.message.content).to.equal(streamedText(parseSse(streamed.text)));
    expect(json.usage.completion_tokens).to.equal(30);
    expect(json.usage.prompt_tokens).to.be.greaterThan(0);
  });

  it('streams and answers legacy completions', async () => {
    const body = { model: 'stories', prompt: 'The cat', max_tokens: 12, temperature: 0 };
    const s = await post(`${sys.url}/v1/completions`, { ...body, stream: true });
    const events = parseSse(s.text);
    expect(events.at(-1)!.data).to.equal('[DONE]');
    const first = JSON.parse(events[0]!.data) as ChatChunk;
    expect(first.object).to.equal('text_completion');
    const w = await post(`${sys.url}/v1/completions`, body);
    const json = JSON.parse(w.text) as {
      choices: { text: string; finish_reason: string }[];
      usage: { completion_tokens: number };
    };
    expect(json.choices[0]!.text).to.equal(streamedText(events));
    expect(json.choices[0]!.finish_reason).to.equal('length');
    expect(json.usage.completion_tokens).to.equal(12);
  });

  it('defaults completions to 16 tokens and chats to the deployment default', async () => {
    const c = await post(`${sys.url}/v1/completions`, { model: 'stories', prompt: 'The dog', temperature: 0 });
    expect((JSON.parse(c.text) as { usage: { completion_tokens: number } }).usage.completion_tokens).to.equal(16);
    const ch = await chat({ model: 'stories', temperature: 0 });
    expect((JSON.parse(ch.text) as { usage: { completion_tokens: number } }).usage.completion_tokens).to.equal(48);
  });

  it('streams plain text with chunked encoding on POST /v1/chat/:model', async () => {
    const res = await fetch(`${sys.url}/v1/chat/stories?max_tokens=40&temperature=0`, {
      method: 'POST',
      body: 'Once upon a time',
    });
    expect(res.status).to.equal(200);
    expect(res.headers.get('content-type')).to.equal('text/plain; charset=utf-8');
    expect(res.headers.get('transfer-encoding')).to.equal('chunked');
    const text = await res.text();
    const ref = await chat({ model: 'stories', max_tokens: 40, temperature: 0 });
    expect(text).to.equal((JSON.parse(ref.text) as { choices: { message: { content: string } }[] }).choices[0]!.message.content);
  });

  it('serves two models at once, by name and by alias', async () => {
    const [a, b, c] = await Promise.all([
      chat({ model: 'stories', stream: true, max_tokens: 20 }),
      chat({ model: 'tiny-random', stream: true, max_tokens: 20 }),
      chat({ model: 'tinystories', max_tokens: 5 }),
    ]);
    for (const r of [a, b]) expect(parseSse(r.text).at(-1)!.data).to.equal('[DONE]');
    expect((JSON.parse(parseSse(b.text)[0]!.data) as ChatChunk).model).to.equal('tiny-random');
    expect((JSON.parse(c.text) as { model: string }).model).to.equal('stories');
    const models = (await (await fetch(`${sys.url}/v1/models`)).json()) as { data: { id: string }[] };
    expect(models.data.map((m) => m.id).sort()).to.deep.equal(['stories', 'tiny-random', 'tinystories']);
  });

  it('completes ten concurrent streams, each in exact sequence', async () => {
    // tiny-random never stops early, so every stream must carry exactly max_tokens tokens.
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        chat({ model: 'tiny-random', stream: true, max_tokens: 64, seed: i, stream_options: { include_usage: true } }),
      ),
    );
    for (const r of results) {
      expect(r.status).to.equal(200);
      const events = parseSse(r.text);
      expect(events.at(-1)!.data).to.equal('[DONE]');
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data) as ChatChunk);
      expect(chunks.at(-1)!.usage!.completion_tokens).to.equal(64);
      const evs = await eventsFor(chunks[0]!.id);
      expect(evs.map((e) => e.seq)).to.deep.equal(evs.map((_, i) => i));
      const tokenEvents = evs.filter((e) => e.type === 'tokens');
      expect(tokenEvents.reduce((n, e) => n + (e.type === 'tokens' ? e.n : 0), 0)).to.equal(64);
      expect(tokenEvents.map((e) => (e.type === 'tokens' ? e.text : '')).join('')).to.equal(streamedText(events));
    }
  });

  it('cancels the engine work when the client disconnects', async () => {
    const ctl = new AbortController();
    const res = await fetch(`${sys.url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: 'tiny-random', messages: [{ role: 'user', content: 'go' }], stream: true, max_tokens: 4000 }),
      signal: ctl.signal,
    });
    const rid = res.headers.get('x-request-id')!;
    const reader = res.body!.getReader();
    // Wait for real tokens (beyond the role chunk), then hang up.
    let seen = '';
    while (!seen.includes('"content":"', seen.indexOf('"content":""') + 12)) {
      const { value } = await reader.read();
      seen += new TextDecoder().decode(value);
    }
    ctl.abort();
    const worker = sys.workers[0]!;
    const line = await worker.waitForLog((l) => l.msg === 'request cancelled' && l.rid === rid);
    expect(line.tokens as number).to.be.greaterThan(0);
    expect(line.tokens as number).to.be.lessThan(4000);
    // The slot is free again: a new request is served.
    const after = await chat({ model: 'tiny-random', max_tokens: 3 });
    expect(after.status).to.equal(200);
  });

  it('heartbeats its models, capacity, load and engine state with a TTL', async () => {
    const raw = await sys.redis.get(sys.keys.worker('w0'));
    const status = JSON.parse(raw!) as WorkerStatus;
    expect(status.state).to.equal('ready');
    expect(status.models.sort()).to.deep.equal(['stories', 'tiny-random']);
    expect(status.engines).to.deep.equal({ stories: 'ready', 'tiny-random': 'ready' });
    expect(status.capacity).to.equal(8);
    // The figure of the last heartbeat, taken while earlier tests' requests may still have run.
    expect(status.inflight).to.be.within(0, status.capacity);
    expect(await sys.redis.pttl(sys.keys.worker('w0'))).to.be.within(1, 3000);
    expect(await sys.redis.zscore(sys.keys.workers(), 'w0')).to.not.equal(null);
  });

  it('leaves no request entries behind and gives per-request keys a TTL', async () => {
    for (const m of ['stories', 'tiny-random']) {
      expect(await sys.redis.xlen(sys.keys.requests(m))).to.equal(0);
    }
    const cancelKeys = await sys.redis.keys(`${sys.keys.prefix}:*:cancel:*`);
    expect(cancelKeys.length).to.be.greaterThan(0);
    for (const k of cancelKeys) expect(await sys.redis.pttl(k)).to.be.greaterThan(0);
    expect(await sys.redis.pttl(sys.keys.replies(GATEWAY_ID))).to.be.greaterThan(0);
  });
});
