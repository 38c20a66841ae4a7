import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { TestSystem } from '../helpers/system.js';

/** Debian's Chromium (.ci/run installs it); a browser is never downloaded. */
const CHROMIUM = '/usr/bin/chromium';
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const SCREENSHOT = join(ROOT, 'test/artifacts/dashboard.png');
const OUTPUT_TOKENS = 40;
const CONCURRENCY = 8;

/** The snapshot `/dashboard/data` answers (the fields this suite reads). */
interface Snapshot {
  now: number;
  redis: { reachable: boolean; error: string | null };
  models: { name: string; queue: { waiting: number; pending: number; entriesRead: number } | null; tokens: number }[];
  workers: { id: string; capacity: number; inflight: number; stale: boolean }[] | null;
  counters: {
    tokens: number;
    requests: number;
    outcomes: Record<string, number>;
    ttft: { sum: number; count: number };
    e2e: { sum: number; count: number };
  };
}

/** The little of the DOM the page functions below use (this project compiles without the DOM library). */
interface El {
  textContent: string | null;
  getAttribute(name: string): string | null;
}
declare const document: {
  getElementById(id: string): El | null;
  querySelector(selector: string): El | null;
  body: { dataset: Record<string, string | undefined> };
};

/** Sum of a metric's samples in Prometheus text (all label sets). */
function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/**
 * The live status page in a real browser (Debian's Chromium driven by
 * playwright-core) against a real system: a sim deployment, one worker agent,
 * the gateway, and streaming clients sending requests the whole time.
 */
describe('live status page /dashboard (real browser, real system)', function () {
  let sys: TestSystem;
  let context: BrowserContext;
  let page: Page;
  let userDataDir = '';
  /** Set to stop the traffic loops; `traffic` resolves when they have ended. */
  let stopping = false;
  let traffic: Promise<void> = Promise.resolve();
  let completed = 0;
  const failures: string[] = [];
  /** Every URL the page fetched, and every error it reported. */
  const fetched: string[] = [];
  const pageErrors: string[] = [];

  before(async function () {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)`);
    sys = await TestSystem.start({
      deployments: {
        models: [
          {
            name: 'sim',
            aliases: ['sim-alias'],
            engine: { type: 'sim', ttftMs: 20, itlMs: 5, outputTokens: OUTPUT_TOKENS },
            concurrency: CONCURRENCY,
          },
        ],
      },
      // A longer heartbeat TTL keeps a paused worker listed (and shown as stale) for a while before it counts as dead.
      workers: [{ env: { WORKER_ID: 'w-dash', HEARTBEAT_TTL_MS: '10000' } }],
    });
    userDataDir = await mkdtemp(join(tmpdir(), 'llmux-chromium-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 960 },
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(20_000);
    page.on('request', (r) => fetched.push(r.url()));
    page.on('pageerror', (err) => pageErrors.push(`pageerror: ${err.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`);
    });
  });

  after(async function () {
    stopping = true;
    await traffic;
    await context?.close();
    await sys?.stop();
    if (userDataDir) await rm(userDataDir, { recursive: true, force: true });
  });

  /** One streaming chat completion, read to the end. */
  async function streamOne(): Promise<void> {
    const res = await fetch(`${sys.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'sim',
        stream: true,
        max_tokens: OUTPUT_TOKENS,
        messages: [{ role: 'user', content: 'Once upon a time' }],
      }),
    });
    const body = await res.text();
    if (res.status !== 200 || !body.includes('data: [DONE]')) failures.push(`${res.status}: ${body.slice(0, 200)}`);
    else completed++;
  }

  function startTraffic(loops: number): void {
    stopping = false;
    const loop = async () => {
      while (!stopping) await streamOne().catch((err: unknown) => failures.push(String(err)));
    };
    traffic = Promise.all(Array.from({ length: loops }, loop)).then(() => {});
  }

  async function data(): Promise<{ ms: number; status: number; body: Snapshot }> {
    const t0 = Date.now();
    const res = await fetch(`${sys.url}/dashboard/data`);
    return { ms: Date.now() - t0, status: res.status, body: (await res.json()) as Snapshot };
  }

  /** Waits (Playwright polling in the page) until `fn` holds; on timeout the error shows what the page displays. */
  async function until(what: string, fn: (arg: number) => boolean, arg = 0): Promise<void> {
    try {
      await page.waitForFunction(fn, arg);
    } catch (err) {
      const shown = await page
        .locator('body')
        .innerText()
        .catch(() => '(unreadable)');
      throw new Error(`waiting for ${what}: ${(err as Error).message}\npage shows:\n${shown}`, { cause: err });
    }
  }

  const text = (selector: string) => page.locator(selector).innerText();
  const updates = async () => Number(await page.locator('body').getAttribute('data-updates'));

  it('shows the model, the worker with its load, throughput and latency while traffic runs, and refreshes them', async () => {
    startTraffic(4);
    const res = await page.goto(`${sys.url}/dashboard`);
    expect(res?.status()).to.equal(200);
    expect(res?.headers()['content-security-policy']).to.include("default-src 'none'");

    // The model row, from the published deployments.
    const model = page.locator('tr[data-model="sim"]');
    await model.waitFor();
    expect(await model.locator('[data-field="name"]').innerText()).to.equal('sim');
    expect(await model.locator('[data-field="aliases"]').innerText()).to.equal('sim-alias');
    expect(await model.locator('[data-field="engine"]').innerText()).to.equal('sim');
    expect(await model.locator('[data-field="waiting"]').innerText()).to.match(/^\d+$/);
    expect(await model.locator('[data-field="running"]').innerText()).to.match(/^\d+$/);

    // The worker row: ready, its capacity (1 replica x concurrency 8), a fresh heartbeat.
    const worker = page.locator('tr[data-worker="w-dash"]');
    await worker.waitFor();
    expect(await worker.locator('[data-field="state"]').innerText()).to.equal('ready');
    expect(await worker.locator('[data-field="models"]').innerText()).to.equal('sim');
    expect(await worker.locator('[data-field="engines"]').innerText()).to.equal('sim: ready');
    expect(await worker.locator('[data-field="load"]').innerText()).to.match(new RegExp(`^\\d+ / ${CONCURRENCY}$`));
    expect(await worker.locator('[data-field="heartbeat"]').innerText()).to.match(/^\d+\.\d s ago$/);
    expect(await worker.getAttribute('data-stale')).to.equal(null);
    expect(await text('#worker-count')).to.equal('1 / 1');
    expect(await text('#status')).to.equal('live');

    // Throughput and latency appear once two snapshots with traffic between them are in.
    await until('non-zero throughput and dispatch rate', () => {
      const num = (id: string) => parseFloat(document.getElementById(id)?.textContent ?? '');
      const cell = (f: string) =>
        parseFloat(document.querySelector(`tr[data-model="sim"] [data-field="${f}"]`)?.textContent ?? '');
      return num('tok-rate') > 0 && num('req-rate') > 0 && cell('dispatched') > 0 && cell('tokens') > 0;
    });
    await until('a TTFT reading', () => /\d/.test(document.getElementById('ttft')?.textContent ?? ''));
    await until('an E2E reading', () => /\d/.test(document.getElementById('e2e')?.textContent ?? ''));
    // The sim engine waits 20 ms before its first token: TTFT p50 is at least that, and well under a second.
    expect(await text('#ttft')).to.match(/^\d+(\.\d)? ms \/ \d+(\.\d+)? m?s$/);
    const ttftP50 = parseFloat(await text('#ttft'));
    expect(ttftP50).to.be.within(15, 1000);
    // E2E: 20 ms + 40 tokens x 5 ms at least.
    const e2eText = await text('#e2e');
    const e2eP50 = parseFloat(e2eText) * (/^[\d.]+ ms/.test(e2eText) ? 1 : 1000);
    expect(e2eP50).to.be.within(150, 5000);
    // Tokens per request: every request streams OUTPUT_TOKENS tokens.
    const tok = parseFloat(await text('#tok-rate'));
    const req = parseFloat(await text('#req-rate'));
    expect(tok).to.be.greaterThan(req);

    // The charts have lines, and the numbers move between refreshes.
    await until('a tokens/s chart line', () =>
      (document.querySelector('#chart-tok svg path')?.getAttribute('d') ?? '').includes('L'),
    );
    const before = {
      n: await updates(),
      chart: await page.locator('#chart-tok svg path').getAttribute('d'),
      heartbeat: await worker.locator('[data-field="heartbeat"]').innerText(),
      updated: await text('#updated'),
    };
    await until('two more refreshes', (n) => Number(document.body.dataset.updates) >= n + 2, before.n);
    expect(await page.locator('#chart-tok svg path').getAttribute('d')).to.not.equal(before.chart);
    expect(await text('#updated')).to.not.equal(before.updated);
    expect(await worker.locator('[data-field="heartbeat"]').innerText()).to.match(/^\d+\.\d s ago$/);

    // A screenshot with some history in the charts.
    await until('eight more refreshes', (n) => Number(document.body.dataset.updates) >= n, before.n + 8);
    await mkdir(join(ROOT, 'test/artifacts'), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    expect(failures).to.deep.equal([]);
    expect(completed).to.be.greaterThan(0);
    // Everything the page loaded came from the gateway: no CDN, nothing from the internet.
    expect(fetched.filter((u) => !u.startsWith(sys.url) && !u.startsWith('data:'))).to.deep.equal([]);
    expect(fetched).to.include(`${sys.url}/dashboard/data`);
    expect(pageErrors).to.deep.equal([]);
  });

  it("reports this gateway's counters as /metrics has them, and the rates fall to zero when traffic stops", async () => {
    stopping = true;
    await traffic;
    const { status, body } = await data();
    expect(status).to.equal(200);
    const metrics = await (await fetch(`${sys.url}/metrics`)).text();
    expect(body.counters.outcomes.ok).to.equal(completed);
    expect(body.counters.requests).to.equal(metricSum(metrics, 'llmux_requests_total'));
    expect(body.counters.tokens).to.equal(metricSum(metrics, 'llmux_generation_tokens_total'));
    expect(body.counters.tokens).to.equal(completed * OUTPUT_TOKENS);
    expect(body.counters.ttft.count).to.equal(metricSum(metrics, 'llmux_time_to_first_token_seconds_count'));
    expect(body.counters.e2e.count).to.equal(completed);
    expect(body.counters.e2e.sum).to.be.closeTo(metricSum(metrics, 'llmux_e2e_request_latency_seconds_sum'), 1e-6);
    const sim = body.models.find((m) => m.name === 'sim')!;
    expect(sim.tokens).to.equal(body.counters.tokens);
    expect(sim.queue?.entriesRead).to.be.at.least(completed);
    expect(body.workers?.map((w) => [w.id, w.capacity, w.stale])).to.deep.equal([['w-dash', CONCURRENCY, false]]);

    await until(
      'tokens/s and requests/s back to 0',
      () =>
        document.getElementById('tok-rate')?.textContent === '0.0' && document.getElementById('req-rate')?.textContent === '0.0',
    );
    await until(
      'the worker idle',
      () => document.querySelector('tr[data-worker="w-dash"] [data-field="load"]')?.textContent === '0 / 8',
    );
    expect(pageErrors).to.deep.equal([]);
  });

  it('shows a worker whose heartbeat stopped as stale', async () => {
    const w = sys.workers[0]!;
    process.kill(w.pid, 'SIGSTOP');
    try {
      await page.locator('tr[data-worker="w-dash"][data-stale="true"]').waitFor();
      expect(await text('tr[data-worker="w-dash"] [data-field="heartbeat"]')).to.match(/^stale: \d+\.\d s ago$/);
      expect(await text('#worker-count')).to.equal('0 / 1');
      const { body } = await data();
      expect(body.workers?.[0]?.stale).to.equal(true);
    } finally {
      process.kill(w.pid, 'SIGCONT');
    }
    await page.locator('tr[data-worker="w-dash"]:not([data-stale])').waitFor();
    expect(await text('#worker-count')).to.equal('1 / 1');
  });

  it('answers at once with Redis down, and the page says Redis is unreachable', async function () {
    if (sys.testRedis.pid === undefined) this.skip(); // a shared Redis (REDIS_URL) cannot be stopped
    await sys.testRedis.stop();
    await until('the Redis unreachable status', () => document.getElementById('status')?.textContent === 'Redis unreachable');
    expect(await text('#workers tbody')).to.equal('Unknown: Redis is unreachable.');
    // The model is still listed (from the gateway's catalog), its queue unknown.
    expect(await text('tr[data-model="sim"] [data-field="waiting"]')).to.equal('?');
    const { ms, status, body } = await data();
    expect(status).to.equal(200);
    expect(ms).to.be.below(1000);
    expect(body.redis.reachable).to.equal(false);
    expect(body.workers).to.equal(null);
    expect(body.models.map((m) => [m.name, m.queue])).to.deep.equal([['sim', null]]);
    expect(body.counters.outcomes.ok).to.equal(completed);
    expect(pageErrors).to.deep.equal([]);
  });
});
