import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { deferred } from '@llmux/shared';
import { TestSystem } from '../helpers/system.js';
import { entryOf, TestProcess } from '../helpers/processes.js';
import { parseSse, post, slowReader } from '../helpers/http.js';

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

const errorOf = (text: string) => (JSON.parse(text) as ErrorBody).error;
const messages = [{ role: 'user', content: 'Once upon a time' }];

/** The resident set size of a process, in KiB, from /proc/<pid>/status. */
function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/**
 * Admission and limits with real processes and the sim engine: per-model
 * queue limits (429 with a measured Retry-After), the per-gateway cap on open
 * requests, client time limits, and slow readers.
 */
describe('admission and limits (real Redis, real processes, sim engine)', function () {
  let sys: TestSystem;
  const MAX_QUEUE = 10;
  const MAX_BUFFERED = 64 * 1024;
  const FIREHOSE = `firehose-${'x'.repeat(119)}`;

  before(async function () {
    sys = await TestSystem.start({
      deployments: {
        models: [
          // One slot, ~0.3 s per 10-token request: about 3 requests a second drain.
          { name: 'slow', engine: { type: 'sim', ttftMs: 0, itlMs: 30 }, concurrency: 1, maxQueue: MAX_QUEUE },
          { name: 'long', engine: { type: 'sim', ttftMs: 0, itlMs: 50 }, concurrency: 4 },
          {
            // The model's name is in every chunk: a long one makes more bytes per token.
            name: FIREHOSE,
            engine: { type: 'sim', ttftMs: 0, itlMs: 0, contextSize: 1_048_576 },
            concurrency: 8,
          },
        ],
      },
      // One event per token, sent at once: the fastest stream the sim engine can make.
      workers: [{ env: { FLUSH_INTERVAL_MS: '0', MAX_BATCH_TOKENS: '1' } }],
      gatewayEnv: { MAX_BUFFERED_BYTES: String(MAX_BUFFERED) },
    });
  });

  after(async () => {
    await sys?.stop();
  });

  const chatUrl = () => `${sys.url}/v1/chat/completions`;

  /** Fires `n` requests at once; resolves when all are answered, and `settled(k)` when k of them are. */
  function burst(n: number, model: string) {
    let answered = 0;
    const waiters: { k: number; d: ReturnType<typeof deferred<void>> }[] = [];
    const all = Array.from({ length: n }, () =>
      post(chatUrl(), { model, messages, max_tokens: 10 }).then((r) => {
        answered++;
        for (const w of waiters) if (answered >= w.k) w.d.resolve();
        return r;
      }),
    );
    return {
      all: Promise.all(all),
      settled(k: number): Promise<void> {
        const d = deferred<void>();
        if (answered >= k) d.resolve();
        else waiters.push({ k, d });
        return d.promise;
      },
    };
  }

  it('answers 429 queue_full past maxQueue, with Retry-After from the measured drain rate', async () => {
    const first = burst(25, 'slow');
    const r1 = await first.all;
    const ok1 = r1.filter((r) => r.status === 200);
    const full1 = r1.filter((r) => r.status === 429);
    expect(ok1.length + full1.length, 'every answer is a 200 or a 429').to.equal(25);
    // maxQueue waiting, plus the one running, plus what a queue reading during the burst let in.
    expect(ok1.length).to.be.within(MAX_QUEUE, MAX_QUEUE + 3);
    for (const r of full1) {
      expect(errorOf(r.text)).to.include({ type: 'rate_limit_error', code: 'queue_full' });
      const retry = Number(r.headers.get('retry-after'));
      expect(Number.isInteger(retry) && retry >= 1 && retry <= 60, `Retry-After ${retry}`).to.equal(true);
    }
    // The queue drained for ~3 s: the gateway measured ~3 requests a second.
    // A full queue of 10 then means Retry-After ≈ 10 / 3 ≈ 4 s, not the 60 s of an unknown rate.
    const second = burst(25, 'slow');
    const r2 = await second.all;
    const full2 = r2.filter((r) => r.status === 429);
    expect(full2.length).to.be.greaterThan(0);
    const retries = full2.map((r) => Number(r.headers.get('retry-after')));

    for (const retry of retries) expect(retry, `Retry-After values ${retries.join(',')}`).to.be.within(1, 12);
    expect(Math.max(...retries), `Retry-After values ${retries.join(',')}`).to.be.at.least(2);
  });

  it('ends a request at its X-Request-Timeout with a 504, and cancels it on the worker', async () => {
    // Streaming: the error arrives as an SSE error event.
    const s = await fetch(chatUrl(), {
      method: 'POST',
      headers: { 'x-request-timeout': '0.5' },
      body: JSON.stringify({ model: 'long', messages, stream: true, max_tokens: 1000 }),
    });
    expect(s.status).to.equal(200);
    const rid = s.headers.get('x-request-id')!;
    const events = parseSse(await s.text());
    const last = JSON.parse(events.at(-1)!.data) as ErrorBody;
    expect(last.error).to.include({ type: 'timeout_error', code: 'deadline_exceeded' });
    expect(last.error.message).to.contain('X-Request-Timeout of 0.5 s');
    await sys.workers[0]!.waitForLog((l) => l.msg === 'request cancelled' && l.rid === rid);

    // Not streaming: a 504 status.
    const j = await post(chatUrl(), { model: 'long', messages, max_tokens: 1000 }, { 'x-request-timeout': '0.3' });
    expect(j.status).to.equal(504);
    expect(errorOf(j.text)).to.include({ type: 'timeout_error', code: 'deadline_exceeded' });
    const jrid = j.headers.get('x-request-id')!;
    await sys.workers[0]!.waitForLog((l) => l.msg === 'request cancelled' && l.rid === jrid);
  });

  it('refuses a malformed X-Request-Timeout and caps a large one at REQUEST_TIMEOUT_MS', async () => {
    for (const bad of ['abc', '-1', '0', '1e3', '0x10', 'NaN', 'Infinity', '1,5', '']) {
      const r = await post(chatUrl(), { model: 'long', messages, max_tokens: 2 }, { 'x-request-timeout': bad });
      expect(r.status, `X-Request-Timeout: ${bad}`).to.equal(400);
      expect(errorOf(r.text).code).to.equal('invalid_request_timeout');
    }
    const r = await post(chatUrl(), { model: 'long', messages, max_tokens: 2 }, { 'x-request-timeout': '99999999' });
    expect(r.status).to.equal(200);
  });

  it('caps open requests per gateway (MAX_OPEN_REQUESTS) with a 503 overloaded', async () => {
    const gw = new TestProcess('gateway-capped', entryOf('@llmux/gateway'), {
      ...sys.env,
      PORT: '0',
      MAX_OPEN_REQUESTS: '2',
    });
    try {
      const url = String((await gw.ready()).url);
      const ctl = new AbortController();
      const open = await Promise.all(
        [0, 1].map(() =>
          fetch(`${url}/v1/chat/completions`, {
            method: 'POST',
            body: JSON.stringify({ model: 'long', messages, stream: true, max_tokens: 1000 }),
            signal: ctl.signal,
          }),
        ),
      );
      for (const r of open) expect(r.status).to.equal(200);
      const refused = await post(`${url}/v1/chat/completions`, { model: 'long', messages, max_tokens: 2 });
      expect(refused.status).to.equal(503);
      expect(errorOf(refused.text)).to.include({ type: 'service_unavailable_error', code: 'overloaded' });
      expect(Number(refused.headers.get('retry-after'))).to.be.at.least(1);
      ctl.abort();
      await gw.waitForLogs((l) => l.msg === 'client disconnected; request cancelled', 2);
      const ok = await post(`${url}/v1/chat/completions`, { model: 'long', messages, max_tokens: 2 });
      expect(ok.status).to.equal(200);
    } finally {
      await gw.stop();
    }
  });

  it('cancels the request of a client that stops reading, and keeps its memory bounded', async () => {
    const gwPid = sys.gateway.pid;
    const before = rssKiB(gwPid);
    const readers = await Promise.all(
      Array.from({ length: 4 }, () =>
        slowReader(sys.url, {
          model: FIREHOSE,
          messages,
          stream: true,
          stream_options: { include_usage: true },
          max_tokens: 1_000_000,
        }),
      ),
    );
    for (const r of readers) {
      const cut = await sys.gateway.waitForLog((l) => String(l.msg).startsWith('slow reader') && l.rid === r.rid);
      expect(Number(cut.buffered)).to.be.greaterThan(MAX_BUFFERED);
      await sys.workers[0]!.waitForLog((l) => l.msg === 'request cancelled' && l.rid === r.rid);
    }
    const after = rssKiB(gwPid);
    for (const r of readers) r.socket.destroy();
    await Promise.all(readers.map((r) => r.closed));
    // Four streams of 1,000,000 tokens would be ~800 MB unbounded; the cap keeps the growth small.
    expect(after - before, `gateway RSS ${before} KiB -> ${after} KiB`).to.be.below(64 * 1024);
    expect((await fetch(`${sys.url}/healthz`)).status).to.equal(200);
  });
});
