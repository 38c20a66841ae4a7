/**
 * A small reader of the Prometheus text exposition format, enough for the
 * gauges vLLM exposes on `/metrics` (vLLM docs: "Production Metrics").
 */

export interface PromSample {
  /** Metric name, colons included (`vllm:num_requests_running`). */
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * Parses Prometheus text: one sample per line, `name{label="value",...} value [timestamp]`.
 * `# HELP` / `# TYPE` comments and blank lines are skipped, label values may
 * hold escaped `\"`, `\\` and `\n`, and values may be `NaN`, `+Inf` or `-Inf`.
 * A line that does not parse is skipped.
 */
export function parsePrometheusText(text: string): PromSample[] {
  const out: PromSample[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.length === 0 || line.charCodeAt(0) === 35 /* # */) continue;
    const s = parseLine(line);
    if (s) out.push(s);
  }
  return out;
}

function parseLine(line: string): PromSample | null {
  let i = 0;
  while (i < line.length && line[i] !== '{' && line[i] !== ' ' && line[i] !== '\t') i++;
  const name = line.slice(0, i);
  if (name.length === 0) return null;
  const labels: Record<string, string> = {};
  if (line[i] === '{') {
    i++;
    for (;;) {
      while (line[i] === ' ' || line[i] === ',') i++;
      if (i >= line.length) return null;
      if (line[i] === '}') {
        i++;
        break;
      }
      const eq = line.indexOf('=', i);
      if (eq < 0 || line[eq + 1] !== '"') return null;
      const key = line.slice(i, eq).trim();
      let j = eq + 2;
      let value = '';
      while (j < line.length && line[j] !== '"') {
        if (line[j] === '\\' && j + 1 < line.length) {
          const n = line[j + 1];
          value += n === 'n' ? '\n' : n;
          j += 2;
        } else {
          value += line[j];
          j++;
        }
      }
      if (j >= line.length) return null;
      labels[key] = value;
      i = j + 1;
    }
  }
  const rest = line.slice(i).trim();
  const sp = rest.search(/\s/);
  const v = sp < 0 ? rest : rest.slice(0, sp);
  const value = parseValue(v);
  if (value === null) return null;
  return { name, labels, value };
}

function parseValue(v: string): number | null {
  if (v === 'NaN') return NaN;
  if (v === '+Inf' || v === 'Inf') return Infinity;
  if (v === '-Inf') return -Infinity;
  if (v.length === 0) return null;
  const n = Number(v);
  return Number.isNaN(n) ? null : n;
}

/** What the vLLM engine reads from `/metrics`; null for a metric not found. */
export interface VllmLoadMetrics {
  /** `vllm:num_requests_running`, summed over series (one per engine with data parallelism). */
  running: number | null;
  /** `vllm:num_requests_waiting`, summed over series. */
  waiting: number | null;
  /**
   * KV-cache use, 0..1 (1 means 100 percent): `vllm:kv_cache_usage_perc` in
   * newer vLLM, `vllm:gpu_cache_usage_perc` in older; the highest series.
   */
  kvCacheUsage: number | null;
}

/** Picks the load gauges out of vLLM's metrics, under both the older and the newer KV-cache names. */
export function vllmLoadMetrics(samples: readonly PromSample[]): VllmLoadMetrics {
  let running: number | null = null;
  let waiting: number | null = null;
  let kvNew: number | null = null;
  let kvOld: number | null = null;
  for (const s of samples) {
    if (!Number.isFinite(s.value)) continue;
    switch (s.name) {
      case 'vllm:num_requests_running':
        running = (running ?? 0) + s.value;
        break;
      case 'vllm:num_requests_waiting':
        waiting = (waiting ?? 0) + s.value;
        break;
      case 'vllm:kv_cache_usage_perc':
        kvNew = Math.max(kvNew ?? 0, s.value);
        break;
      case 'vllm:gpu_cache_usage_perc':
        kvOld = Math.max(kvOld ?? 0, s.value);
        break;
    }
  }
  return { running, waiting, kvCacheUsage: kvNew ?? kvOld };
}

/**
 * The engine's load, 0..1: the larger of KV-cache use and queued plus running
 * requests over `capacity`. Null when vLLM reported none of them.
 */
export function vllmLoad(m: VllmLoadMetrics, capacity: number): number | null {
  if (m.running === null && m.waiting === null && m.kvCacheUsage === null) return null;
  const queued = ((m.running ?? 0) + (m.waiting ?? 0)) / Math.max(1, capacity);
  return Math.min(1, Math.max(0, m.kvCacheUsage ?? 0, queued));
}
