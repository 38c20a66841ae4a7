import { request } from 'node:http';
import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { testModel } from '../helpers/models.js';
import { post } from '../helpers/http.js';

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** Asserts an OpenAI error body and returns it. */
function errorBody(text: string): ErrorBody['error'] {
  const body = JSON.parse(text) as ErrorBody;
  expect(body).to.have.keys('error');
  expect(body.error).to.have.keys('message', 'type', 'param', 'code');
  expect(body.error.message.length).to.be.greaterThan(0);
  expect(body.error.type).to.be.a('string');
  return body.error;
}

/** Sends raw bytes with arbitrary headers (fetch would normalise some of them). */
function rawRequest(
  url: string,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: Buffer | string,
): Promise<{ status: number; text: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, method, path, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode!, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('bad input gets a clear 4xx in OpenAI error shape', function () {
  let sys: TestSystem;
  const MAX_BODY = 4096;

  before(async function () {
    sys = await TestSystem.start({
      deployments: {
        models: [
          {
            name: 'stories',
            source: await testModel('stories260K'),
            engine: { type: 'llamacpp', threads: 1, contextSize: 512 },
            concurrency: 2,
          },
        ],
      },
      gatewayEnv: { MAX_BODY_BYTES: String(MAX_BODY) },
    });
  });

  after(async () => {
    await sys?.stop();
  });

  const chatUrl = () => `${sys.url}/v1/chat/completions`;
  const messages = [{ role: 'user', content: 'hi' }];

  it('400 for a body that is not JSON', async () => {
    const r = await post(chatUrl(), '{"model": "stories", "messages": [');
    expect(r.status).to.equal(400);
    expect(errorBody(r.text)).to.include({ type: 'invalid_request_error', code: 'invalid_json' });
  });

  it('400 for JSON that is not an object, and for an empty body', async () => {
    for (const body of ['[]', '"text"', '42', 'null', '']) {
      const r = await post(chatUrl(), body);
      expect(r.status, body).to.equal(400);
      errorBody(r.text);
    }
  });

  it('400 naming the field for a schema violation', async () => {
    const cases: [unknown, string][] = [
      [{ model: 'stories' }, 'messages'],
      [{ messages }, 'model'],
      [{ model: 'stories', messages: [{ role: 'wizard', content: 'x' }] }, 'messages[0].role'],
      [{ model: 'stories', messages, temperature: 'hot' }, 'temperature'],
      [{ model: 'stories', messages, max_tokens: 0 }, 'max_tokens'],
      [{ model: 'stories', messages, top_p: 3 }, 'top_p'],
      [{ model: 'stories', messages, stream: 'yes' }, 'stream'],
      [{ model: 'stories', messages: [] }, 'messages'],
    ];
    for (const [body, param] of cases) {
      const r = await post(chatUrl(), body);
      expect(r.status, JSON.stringify(body)).to.equal(400);
      expect(errorBody(r.text).param, JSON.stringify(body)).to.equal(param);
    }
  });

  it('400 for options it cannot honour, and for unknown fields', async () => {
    const n = await post(chatUrl(), { model: 'stories', messages, n: 2 });
    expect(n.status).to.equal(400);
    expect(errorBody(n.text).param).to.equal('n');
    const tools = await post(chatUrl(), { model: 'stories', messages, tools: [{ type: 'function' }] });
    expect(tools.status).to.equal(400);
    expect(errorBody(tools.text).param).to.equal('tools');
    const unknown = await post(chatUrl(), { model: 'stories', messages, frobnicate: true });
    expect(unknown.status).to.equal(400);
    const e = errorBody(unknown.text);
    expect(e.message).to.match(/^Unrecognized request argument supplied: frobnicate/);
    expect(e.param).to.equal('frobnicate');
    const ctx = await post(chatUrl(), { model: 'stories', messages, max_tokens: 100_000 });
    expect(ctx.status).to.equal(400);
    expect(errorBody(ctx.text).code).to.equal('context_length_exceeded');
  });

  it('404 for an unknown model on every route', async () => {
    const a = await post(chatUrl(), { model: 'nope', messages });
    expect(a.status).to.equal(404);
    expect(errorBody(a.text).code).to.equal('model_not_found');
    const b = await post(`${sys.url}/v1/completions`, { model: 'nope', prompt: 'x' });
    expect(b.status).to.equal(404);
    const c = await fetch(`${sys.url}/v1/chat/nope`, { method: 'POST', body: 'hello' });
    expect(c.status).to.equal(404);
    errorBody(await c.text());
    const d = await fetch(`${sys.url}/v1/models/nope`);
    expect(d.status).to.equal(404);
  });

  it('404 for unknown URLs and methods', async () => {
    const a = await fetch(`${sys.url}/v1/nothing-here`);
    expect(a.status).to.equal(404);
    expect(errorBody(await a.text()).code).to.equal('unknown_url');
    const b = await fetch(chatUrl());
    expect(b.status).to.equal(404);
    errorBody(await b.text());
  });

  it('413 for a body over the configured limit', async () => {
    const r = await post(chatUrl(), { model: 'stories', messages: [{ role: 'user', content: 'x'.repeat(MAX_BODY * 2) }] });
    expect(r.status).to.equal(413);
    expect(errorBody(r.text).code).to.equal('request_too_large');
    const plain = await fetch(`${sys.url}/v1/chat/stories`, { method: 'POST', body: 'y'.repeat(MAX_BODY * 2) });
    expect(plain.status).to.equal(413);
  });

  it('400 on the plain route for an empty prompt or bad query options', async () => {
    const a = await fetch(`${sys.url}/v1/chat/stories`, { method: 'POST', body: '   ' });
    expect(a.status).to.equal(400);
    errorBody(await a.text());
    const b = await fetch(`${sys.url}/v1/chat/stories?max_tokens=lots`, { method: 'POST', body: 'hi' });
    expect(b.status).to.equal(400);
    expect(errorBody(await b.text()).param).to.equal('max_tokens');
    const c = await fetch(`${sys.url}/v1/chat/stories?bogus=1`, { method: 'POST', body: 'hi' });
    expect(c.status).to.equal(400);
  });

  it('4xx for broken encodings and charsets', async () => {
    const gz = await rawRequest(
      sys.url,
      'POST',
      '/v1/chat/completions',
      { 'content-type': 'application/json', 'content-encoding': 'gzip' },
      Buffer.from('not gzip at all'),
    );
    expect(gz.status).to.be.within(400, 499);
    errorBody(gz.text);
    const enc = await rawRequest(
      sys.url,
      'POST',
      '/v1/chat/completions',
      { 'content-type': 'application/json', 'content-encoding': 'made-up' },
      '{}',
    );
    expect(enc.status).to.equal(415);
    errorBody(enc.text);
    const cs = await rawRequest(
      sys.url,
      'POST',
      '/v1/chat/completions',
      { 'content-type': 'application/json; charset=klingon' },
      '{}',
    );
    expect(cs.status).to.equal(415);
    errorBody(cs.text);
  });

  it('is still healthy and serving after all of it', async () => {
    expect((await fetch(`${sys.url}/healthz`)).status).to.equal(200);
    const r = await post(chatUrl(), { model: 'stories', messages, max_tokens: 4 });
    expect(r.status).to.equal(200);
  });
});
