import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { chatBody, k6Headers, k6Settings, plainBody, plainUrl, sseComplete } from '@llmux/load-tests';
import { ROOT } from '../helpers/models.js';
import { TestSystem } from '../helpers/system.js';

const run = promisify(execFile);
const K6_DIR = join(ROOT, 'load-tests/k6');
const scripts = readdirSync(K6_DIR).filter((f) => f.endsWith('.ts'));

/**
 * k6 cannot be installed here, so its scripts are checked the other ways:
 * type-checked against k6's own type definitions, read for the parts every
 * scenario needs, and their request bodies sent to a real gateway.
 */
describe('k6 load scripts', function () {
  it('ships the steady, ramp, spike and streaming scenarios', () => {
    expect(scripts.sort()).to.deep.equal(['ramp.ts', 'spike.ts', 'steady.ts', 'streaming.ts']);
  });

  it('type-check against @types/k6', async () => {
    const tsc = join(ROOT, 'node_modules/typescript/bin/tsc');
    const r = await run(process.execPath, [tsc, '-p', join(K6_DIR, 'tsconfig.json')]).catch((e: { stdout: string }) => e);
    expect(r.stdout, 'tsc output').to.equal('');
  });

  for (const f of scripts) {
    it(`${f}: options with thresholds, a default function, and the command to run it`, () => {
      const src = readFileSync(join(K6_DIR, f), 'utf8');
      expect(src).to.match(/export const options: Options = \{/);
      expect(src).to.match(/thresholds: \{[^}]*http_req_failed/s);
      expect(src).to.match(/export default function/);
      expect(src).to.include(`k6 run `);
      expect(src).to.include(`load-tests/k6/${f}`);
    });
  }

  describe('their requests against a real gateway', function () {
    let sys: TestSystem;
    before(async function () {
      sys = await TestSystem.start({
        deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 0, itlMs: 1 }, concurrency: 4 }] },
      });
    });
    after(async () => {
      await sys?.stop();
    });

    const settings = () => k6Settings({ BASE_URL: `${sys.url}/`, MODEL: 'sim', MAX_TOKENS: '6' });

    it('reads its settings from __ENV with defaults', () => {
      expect(k6Settings({})).to.deep.equal({
        baseUrl: 'http://127.0.0.1:8000',
        model: 'stories260K',
        apiKey: null,
        maxTokens: 64,
      });
      expect(k6Headers(k6Settings({ API_KEY: 'sk-x' })).authorization).to.equal('Bearer sk-x');
    });

    it('sends chat bodies the gateway accepts, streamed and not', async () => {
      const s = settings();
      const plain = await fetch(`${s.baseUrl}/v1/chat/completions`, {
        method: 'POST',
        headers: k6Headers(s),
        body: chatBody(s, 1, false),
      });
      expect(plain.status).to.equal(200);
      const json = (await plain.json()) as { object: string; usage: { completion_tokens: number } };
      expect(json.object).to.equal('chat.completion');
      expect(json.usage.completion_tokens).to.equal(6);
      const stream = await fetch(`${s.baseUrl}/v1/chat/completions`, {
        method: 'POST',
        headers: k6Headers(s),
        body: chatBody(s, 2, true),
      });
      expect(stream.status).to.equal(200);
      const body = await stream.text();
      expect(sseComplete(body)).to.equal(true);
      expect(sseComplete(body.slice(0, -20))).to.equal(false);
    });

    it('uses the plain route as the streaming scenario expects', async () => {
      const s = settings();
      const r = await fetch(plainUrl(s), {
        method: 'POST',
        headers: { ...k6Headers(s), 'content-type': 'text/plain' },
        body: plainBody(0),
      });
      expect(r.status).to.equal(200);
      expect((await r.text()).length).to.be.greaterThan(0);
    });
  });
});
