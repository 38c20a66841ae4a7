import type { Sample } from './client.js';
import type { RunResult } from './run.js';
import { summarize, type Summary } from './stats.js';

export interface Report {
  /** What was run. */
  options: RunResult['options'];
  elapsedS: number;
  requests: { sent: number; ok: number; failed: number };
  throughput: { requestsPerS: number; tokensPerS: number };
  /** Milliseconds. */
  ttft: Summary | null;
  itl: Summary | null;
  e2e: Summary | null;
  errors: Record<string, number>;
}

/** The figures of a run, computed from its samples (successful requests only for latencies). */
export function buildReport(r: RunResult): Report {
  const ok = r.samples.filter((s) => s.error === null);
  const errors: Record<string, number> = {};
  for (const s of r.samples) if (s.error) errors[s.error] = (errors[s.error] ?? 0) + 1;
  const tokens = ok.reduce((n, s) => n + s.tokens, 0);
  const secs = r.elapsedMs / 1000;
  return {
    options: r.options,
    elapsedS: round(secs, 3),
    requests: { sent: r.samples.length, ok: ok.length, failed: r.samples.length - ok.length },
    throughput: { requestsPerS: round(ok.length / secs, 2), tokensPerS: round(tokens / secs, 1) },
    ttft: summarize(ok.map((s) => s.ttft).filter((v): v is number => v !== null)),
    itl: summarize(ok.flatMap((s) => s.itl)),
    e2e: summarize(ok.map((s) => s.e2e)),
    errors,
  };
}

const round = (v: number, d: number) => Number(v.toFixed(d));
const ms = (v: number | undefined) => (v === undefined ? '-' : v < 10 ? v.toFixed(2) : v.toFixed(1));

/** The report as a table for a terminal. */
export function formatReport(rep: Report): string {
  const rows: string[][] = [['', 'p50', 'p95', 'p99', 'max', 'mean', 'n']];
  for (const [name, s] of [
    ['TTFT ms', rep.ttft],
    ['ITL ms', rep.itl],
    ['e2e ms', rep.e2e],
  ] as [string, Summary | null][]) {
    rows.push([name, ms(s?.p50), ms(s?.p95), ms(s?.p99), ms(s?.max), ms(s?.mean), String(s?.count ?? 0)]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const table = rows.map((r) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
  const errs = Object.entries(rep.errors)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  return [
    `${rep.requests.sent} requests in ${rep.elapsedS} s: ${rep.requests.ok} ok, ${rep.requests.failed} failed${errs ? ` (${errs})` : ''}`,
    `${rep.throughput.requestsPerS} req/s, ${rep.throughput.tokensPerS} tokens/s`,
    ...table,
  ].join('\n');
}

/** Latency over time as an SVG scatter chart: TTFT and end-to-end of each request by its start time. */
export function latencyChart(samples: readonly Sample[], title: string): string {
  const W = 800;
  const H = 400;
  const pad = { l: 60, r: 20, t: 30, b: 40 };
  const ok = samples.filter((s) => s.error === null);
  const maxX = Math.max(1, ...samples.map((s) => s.start)) / 1000;
  const maxY = Math.max(1, ...ok.map((s) => s.e2e));
  const x = (t: number) => pad.l + (t / 1000 / maxX) * (W - pad.l - pad.r);
  const y = (v: number) => H - pad.b - (v / maxY) * (H - pad.t - pad.b);
  const dots = (get: (s: Sample) => number | null, color: string) =>
    ok
      .map((s) => {
        const v = get(s);
        return v === null ? '' : `<circle cx="${x(s.start).toFixed(1)}" cy="${y(v).toFixed(1)}" r="1.6" fill="${color}"/>`;
      })
      .join('');
  const failed = samples
    .filter((s) => s.error !== null)
    .map(
      (s) =>
        `<line x1="${x(s.start).toFixed(1)}" x2="${x(s.start).toFixed(1)}" y1="${H - pad.b}" y2="${H - pad.b + 6}" stroke="#c0392b"/>`,
    )
    .join('');
  const esc = (t: string) => t.replace(/[<&>]/g, (c) => ({ '<': '&lt;', '&': '&amp;', '>': '&gt;' })[c]!);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${pad.l}" y="18">${esc(title)}</text>`,
    `<line x1="${pad.l}" y1="${H - pad.b}" x2="${W - pad.r}" y2="${H - pad.b}" stroke="#333"/>`,
    `<line x1="${pad.l}" y1="${pad.t}" x2="${pad.l}" y2="${H - pad.b}" stroke="#333"/>`,
    `<text x="${W / 2}" y="${H - 8}" text-anchor="middle">request start (s), 0 to ${maxX.toFixed(1)}</text>`,
    `<text x="14" y="${H / 2}" transform="rotate(-90 14 ${H / 2})" text-anchor="middle">latency (ms), 0 to ${maxY.toFixed(0)}</text>`,
    dots((s) => s.e2e, '#2e86de'),
    dots((s) => s.ttft, '#e67e22'),
    failed,
    `<text x="${W - pad.r - 220}" y="18" fill="#e67e22">● TTFT</text><text x="${W - pad.r - 150}" y="18" fill="#2e86de">● end-to-end</text><text x="${W - pad.r - 60}" y="18" fill="#c0392b">| error</text>`,
    '</svg>',
  ].join('\n');
}
