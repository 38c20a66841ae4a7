#!/usr/bin/env node
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { buildReport, formatReport, latencyChart } from './report.js';
import { runLoad } from './run.js';

const USAGE = `npm run load -- [options]

  --url URL            gateway (default http://127.0.0.1:8000)
  --model NAME         model to ask (default stories260K)
  --concurrency N      clients (closed loop), or the in-flight cap with --rate (default 10)
  --rate R             open loop: R requests/s, Poisson arrivals
  --duration S         stop after S seconds (default 30 unless --requests is given)
  --requests N         stop after N requests
  --no-stream          non-streaming requests (default: streaming)
  --max-tokens N       max_tokens of each request (default 64)
  --prompts FILE       JSON array of prompts, used round-robin (default: a small built-in mix)
  --api-key KEY        sent as Authorization: Bearer KEY (or LLMUX_API_KEY)
  --timeout S          per-request timeout (default 120)
  --json FILE          write the report as JSON ("-" for stdout, then the table goes to stderr)
  --chart FILE         write latency over time as SVG
`;

const PROMPTS = [
  'Once upon a time',
  'Tell me a story about a cat who wanted to fly.',
  'Write two sentences about the sea.',
  'Lily and Ben went to the park. They saw a big dog and',
  'What is the best way to learn to read?',
];

function num(v: string | undefined, name: string, min: number): number | null {
  if (v === undefined) return null;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) {
    process.stderr.write(`--${name} must be a number >= ${min}\n${USAGE}`);
    process.exit(2);
  }
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      url: { type: 'string', default: 'http://127.0.0.1:8000' },
      model: { type: 'string', default: 'stories260K' },
      concurrency: { type: 'string' },
      rate: { type: 'string' },
      duration: { type: 'string' },
      requests: { type: 'string' },
      'no-stream': { type: 'boolean', default: false },
      'max-tokens': { type: 'string' },
      prompts: { type: 'string' },
      'api-key': { type: 'string' },
      timeout: { type: 'string' },
      json: { type: 'string' },
      chart: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const requests = num(values.requests, 'requests', 1);
  const duration = num(values.duration, 'duration', 0.1);
  const prompts = values.prompts
    ? (JSON.parse((await import('node:fs')).readFileSync(values.prompts, 'utf8')) as string[])
    : PROMPTS;
  const out = values.json === '-' ? process.stderr : process.stdout;
  const tty = process.stderr.isTTY;
  const result = await runLoad({
    url: values.url,
    model: values.model,
    concurrency: num(values.concurrency, 'concurrency', 1) ?? 10,
    rate: num(values.rate, 'rate', 0.001),
    durationMs: duration !== null ? duration * 1000 : requests === null ? 30_000 : null,
    requests,
    stream: !values['no-stream'],
    maxTokens: num(values['max-tokens'], 'max-tokens', 1) ?? 64,
    prompts,
    apiKey: values['api-key'] ?? process.env.LLMUX_API_KEY ?? null,
    timeoutMs: (num(values.timeout, 'timeout', 0.1) ?? 120) * 1000,
    onProgress: (p) => {
      const line = `${(p.elapsedMs / 1000).toFixed(0)} s: ${p.sent} sent, ${p.done} done, ${p.inFlight} in flight, ${p.errors} errors`;
      process.stderr.write(tty ? `\r${line}\x1b[K` : `${line}\n`);
    },
  });
  if (tty) process.stderr.write('\r\x1b[K');
  const report = buildReport(result);
  out.write(formatReport(report) + '\n');
  if (values.json) {
    const json = JSON.stringify(report, null, 2) + '\n';
    if (values.json === '-') process.stdout.write(json);
    else writeFileSync(values.json, json);
  }
  if (values.chart) {
    const title = `${values.model}: ${report.requests.sent} requests, ${report.throughput.requestsPerS} req/s`;
    writeFileSync(values.chart, latencyChart(result.samples, title));
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`load: ${(err as Error).message}\n`);
  process.exit(1);
});
