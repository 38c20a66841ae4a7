import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import type { Report } from '@llmux/load-tests';
import { ROOT } from '../helpers/models.js';
import { TestSystem } from '../helpers/system.js';

const run = promisify(execFile);

/** A report's figures must add up and its percentiles be ordered. */
function expectSane(rep: Report, expected: { sent?: number; tokensPerRequest: number }) {
  const { sent, ok, failed } = rep.requests;
  if (expected.sent !== undefined) expect(sent).to.equal(expected.sent);
  expect(ok + failed).to.equal(sent);
  expect(Object.values(rep.errors).reduce((a, b) => a + b, 0)).to.equal(failed);
  for (const s of [rep.ttft, rep.e2e, rep.itl]) {
    expect(s, 'latency summary').to.not.equal(null);
    expect(s!.min).to.be.at.most(s!.p50);
    expect(s!.p50).to.be.at.most(s!.p95);
    expect(s!.p95).to.be.at.most(s!.p99);
    expect(s!.p99).to.be.at.most(s!.max);
  }
  expect(rep.ttft!.count).to.equal(ok);
  expect(rep.e2e!.p50).to.be.at.least(rep.ttft!.p50);
  // Every request asked for (and the sim engine gave) exactly this many tokens.
  const tokens = rep.throughput.tokensPerS * rep.elapsedS;
  expect(tokens).to.be.closeTo(ok * expected.tokensPerRequest, ok * expected.tokensPerRequest * 0.01 + 1);
}

describe('load generator against the running system (real processes, sim engine)', function () {
  let sys: TestSystem;
  let dir: string;

  before(async function () {
    dir = mkdtempSync(join(tmpdir(), 'llmux-load-'));
    sys = await TestSystem.start({
      deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 5, itlMs: 2 }, concurrency: 16 }] },
    });
  });

  after(async () => {
    await sys?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('npm run load prints a table and writes a sane JSON report and an SVG chart', async () => {
    const json = join(dir, 'report.json');
    const chart = join(dir, 'chart.svg');
    const { stdout } = await run(
      process.execPath,
      [
        join(ROOT, 'load-tests/dist/cli.js'),
        ...['--url', sys.url, '--model', 'sim', '--concurrency', '6', '--requests', '60', '--max-tokens', '12'],
        ...['--json', json, '--chart', chart],
      ],
      { timeout: 60_000 },
    );
    expect(stdout, stdout).to.match(/60 requests in [\d.]+ s: 60 ok, 0 failed/);
    expect(stdout).to.match(/TTFT ms\s+[\d.]+\s+[\d.]+/);
    const rep = JSON.parse(readFileSync(json, 'utf8')) as Report;
    expectSane(rep, { sent: 60, tokensPerRequest: 12 });
    const svg = readFileSync(chart, 'utf8');
    expect(svg.startsWith('<svg')).to.equal(true);
    // Two dots (TTFT and end-to-end) per request.
    expect(svg.match(/<circle /g)).to.have.length(120);
  });

  it('counts errors by kind (unknown model: 404s) and runs open-loop at a rate for a bounded time', async () => {
    const bad = await run(
      process.execPath,
      [join(ROOT, 'load-tests/dist/cli.js'), '--url', sys.url, '--model', 'nope', '--requests', '5', '--json', '-'],
      { timeout: 60_000 },
    );
    const failed = JSON.parse(bad.stdout) as Report;
    expect(failed.requests).to.deep.equal({ sent: 5, ok: 0, failed: 5 });
    expect(failed.errors).to.deep.equal({ http_404: 5 });

    const { stdout } = await run(
      process.execPath,
      [
        join(ROOT, 'load-tests/dist/cli.js'),
        ...['--url', sys.url, '--model', 'sim', '--rate', '40', '--duration', '1.5', '--concurrency', '50'],
        ...['--max-tokens', '8', '--no-stream', '--json', '-'],
      ],
      { timeout: 60_000 },
    );
    const rep = JSON.parse(stdout) as Report;
    expect(rep.options.rate).to.equal(40);
    expect(rep.requests.failed).to.equal(0);
    // About 60 arrivals in 1.5 s at 40/s; Poisson, so a wide margin.
    expect(rep.requests.sent).to.be.within(25, 110);
    // Without a stream the "first token" is the whole answer: ITL is empty.
    expect(rep.itl).to.equal(null);
  });
});
