import { expect } from 'chai';

/** One sample of the Prometheus text format: `name{labels} value`. */
export interface MetricSample {
  labels: Record<string, string>;
  value: number;
}

/** The type a `# TYPE` line declares (`counter`, `gauge`, `histogram`, `summary`, `untyped`). */
export type MetricType = string;

/** A histogram series: cumulative buckets by upper bound (`+Inf` last), `_sum` and `_count`. */
export interface HistogramSeries {
  labels: Record<string, string>;
  buckets: { le: number; count: number }[];
  sum: number;
  count: number;
}

/**
 * A parsed `/metrics` body: samples by their name as written (histograms
 * give `<name>_bucket`, `<name>_sum` and `<name>_count`), and the declared
 * type of each metric family.
 */
export class Metrics extends Map<string, MetricSample[]> {
  readonly types = new Map<string, MetricType>();

  /** The samples of `name` whose labels include every label of `labels`. */
  all(name: string, labels: Record<string, string> = {}): MetricSample[] {
    return (this.get(name) ?? []).filter((s) => matches(s.labels, labels));
  }

  /** The sum of the samples of `name` that have `labels` (0 when there is none). */
  sample(name: string, labels: Record<string, string> = {}): number {
    return this.all(name, labels).reduce((n, s) => n + s.value, 0);
  }

  /** Every series of the histogram `name` (base name, without `_bucket`) that has `labels`. */
  histograms(name: string, labels: Record<string, string> = {}): HistogramSeries[] {
    const series = new Map<string, HistogramSeries>();
    const keyOf = (l: Record<string, string>) =>
      JSON.stringify(
        Object.entries(l)
          .filter(([k]) => k !== 'le')
          .sort(),
      );
    const get = (l: Record<string, string>) => {
      const key = keyOf(l);
      let h = series.get(key);
      if (!h) {
        const rest = { ...l };
        delete rest.le;
        h = { labels: rest, buckets: [], sum: NaN, count: NaN };
        series.set(key, h);
      }
      return h;
    };
    for (const s of this.all(`${name}_bucket`, labels)) {
      get(s.labels).buckets.push({ le: parseValue(s.labels.le ?? '') ?? NaN, count: s.value });
    }
    for (const s of this.all(`${name}_sum`, labels)) get(s.labels).sum = s.value;
    for (const s of this.all(`${name}_count`, labels)) get(s.labels).count = s.value;
    for (const h of series.values()) h.buckets.sort((a, b) => a.le - b.le);
    return [...series.values()];
  }

  /** The one histogram series of `name` with exactly `labels` (besides the constant ones), or an empty one. */
  histogram(name: string, labels: Record<string, string> = {}): HistogramSeries {
    const found = this.histograms(name, labels);
    expect(found.length, `${name} ${JSON.stringify(labels)}: at most one series`).to.be.at.most(1);
    return found[0] ?? { labels, buckets: [], sum: 0, count: 0 };
  }

  /** Names of the metric families declared with `# TYPE`. */
  families(): string[] {
    return [...this.types.keys()];
  }
}

function matches(have: Record<string, string>, want: Record<string, string>): boolean {
  for (const k in want) if (have[k] !== want[k]) return false;
  return true;
}

/**
 * Parses the Prometheus text exposition format (version 0.0.4): `# HELP` and
 * `# TYPE` lines, samples with optional labels (escaped `\\`, `\"`, `\n` in
 * values) and an optional timestamp, and `NaN`, `+Inf`, `-Inf` values (any case). A
 * line that does not parse fails the test: the gateway must write valid text.
 */
export function parseMetrics(text: string): Metrics {
  const out = new Metrics();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /^#\s+TYPE\s+(\S+)\s+(\S+)$/.exec(line);
      if (m) out.types.set(m[1]!, m[2]!);
      continue;
    }
    const { name, sample } = parseLine(line);
    let list = out.get(name);
    if (!list) out.set(name, (list = []));
    list.push(sample);
  }
  return out;
}

function parseLine(line: string): { name: string; sample: MetricSample } {
  const fail = (why: string): never => {
    throw new Error(`bad metrics line (${why}): ${line}`);
  };
  const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
  if (!nameMatch) fail('name');
  const name = nameMatch![0];
  let i = name.length;
  const labels: Record<string, string> = {};
  if (line[i] === '{') {
    i++;
    for (;;) {
      while (line[i] === ' ' || line[i] === ',') i++;
      if (line[i] === '}') {
        i++;
        break;
      }
      const key = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i));
      if (!key) fail('label name');
      i += key![0].length;
      if (line[i] !== '=' || line[i + 1] !== '"') fail('label =');
      i += 2;
      let value = '';
      for (;;) {
        const c = line[i];
        if (c === undefined) fail('unterminated label value');
        if (c === '"') break;
        if (c === '\\') {
          const n = line[i + 1];
          if (n === 'n') value += '\n';
          else if (n === '\\' || n === '"') value += n;
          else fail('escape');
          i += 2;
        } else {
          value += c;
          i++;
        }
      }
      i++;
      if (key![0] in labels) fail('repeated label');
      labels[key![0]] = value;
    }
  }
  const rest = line.slice(i).trim().split(/\s+/);
  if (rest.length < 1 || rest.length > 2) fail('value');
  const value = parseValue(rest[0]!);
  if (value === null) fail('value');
  return { name, sample: { labels, value: value! } };
}

/** A float as Prometheus reads it (Go's ParseFloat): `NaN` and `Inf` in any case (prom-client writes `Nan`). */
function parseValue(v: string): number | null {
  const lower = v.toLowerCase();
  if (lower === 'nan') return NaN;
  if (lower === '+inf' || lower === 'inf' || lower === '+infinity' || lower === 'infinity') return Infinity;
  if (lower === '-inf' || lower === '-infinity') return -Infinity;
  if (v === '' || !/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(v)) return null;
  return Number(v);
}

/** GETs `<baseUrl>/metrics` and parses it (checking the status and the content type). */
export async function scrape(baseUrl: string, path = '/metrics'): Promise<Metrics> {
  const res = await fetch(`${baseUrl}${path}`);
  const text = await res.text();
  expect(res.status, `GET ${path}: ${text.slice(0, 200)}`).to.equal(200);
  expect(res.headers.get('content-type') ?? '').to.match(/^text\/plain/);
  return parseMetrics(text);
}

/**
 * Checks every histogram of a scrape: buckets cumulative (never decreasing),
 * the last bound `+Inf`, its count equal to `_count`, and `_sum` present.
 */
export function expectValidHistograms(m: Metrics): void {
  for (const [family, type] of m.types) {
    if (type !== 'histogram') continue;
    for (const h of m.histograms(family)) {
      const what = `${family}${JSON.stringify(h.labels)}`;
      expect(h.buckets.length, `${what} has buckets`).to.be.greaterThan(0);
      for (let k = 1; k < h.buckets.length; k++) {
        expect(h.buckets[k]!.count, `${what} le=${h.buckets[k]!.le}`).to.be.at.least(h.buckets[k - 1]!.count);
      }
      expect(h.buckets.at(-1)!.le, `${what} ends with +Inf`).to.equal(Infinity);
      expect(h.buckets.at(-1)!.count, `${what} +Inf == _count`).to.equal(h.count);
      expect(Number.isFinite(h.sum), `${what} _sum`).to.equal(true);
    }
  }
}

/** The change of a sample between two scrapes. */
export function delta(before: Metrics, after: Metrics, name: string, labels: Record<string, string> = {}): number {
  return after.sample(name, labels) - before.sample(name, labels);
}
