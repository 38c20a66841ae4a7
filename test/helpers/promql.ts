import { ControllerMetrics, GatewayMetrics, WorkerMetrics, createRegistry, type Registry } from '@llmux/shared';

/**
 * A PromQL reader and checker for the files in docker/ that query the
 * metrics contract (shared/src/metrics): the Grafana dashboard and the
 * Prometheus alert rules. It reads enough of PromQL to find the metrics an
 * expression names, the labels it selects and groups them by and the
 * functions around them, and says what is wrong with them against the
 * metrics the services export. No servers: the names come from the real
 * metric classes on fresh registries.
 */

// ---------------------------------------------------------------------------
// The contract: names, types and labels of what the services export.

export interface Exported {
  type: string;
  labelNames: readonly string[];
}

/** Labels every series has: set by the process (service, instance) or by Prometheus (job). */
export const COMMON_LABELS = ['service', 'instance', 'job'];

export async function exportedMetrics(): Promise<{ all: Map<string, Exported>; contractHistograms: string[] }> {
  const all = new Map<string, Exported>();
  const collect = async (registry: Registry) => {
    for (const m of await registry.getMetricsAsJSON()) {
      // prom-client's metric objects carry their label names; its typings do not declare them.
      const metric = registry.getSingleMetric(m.name) as unknown as { labelNames?: string[] } | undefined;
      all.set(m.name, { type: String(m.type), labelNames: metric?.labelNames ?? [] });
    }
  };
  const gateway = createRegistry('gateway', 'test-gateway');
  new GatewayMetrics(gateway);
  const worker = createRegistry('worker', 'test-worker');
  new WorkerMetrics(worker);
  const controller = createRegistry('controller', 'test-controller');
  new ControllerMetrics(controller);
  for (const r of [gateway, worker, controller]) await collect(r);

  // The process's default metrics (llmux_process_*, llmux_nodejs_*) come with every registry; the
  // histograms of the contract are the others.
  const bare = createRegistry('gateway', 'test-defaults');
  const defaults = new Set((await bare.getMetricsAsJSON()).map((m) => m.name));
  const contractHistograms = [...all].filter(([name, e]) => e.type === 'histogram' && !defaults.has(name)).map(([n]) => n);
  for (const r of [gateway, worker, controller, bare]) r.clear();
  return { all, contractHistograms };
}

// ---------------------------------------------------------------------------
// A small PromQL reader: enough to find the metric names of an expression, the
// labels it selects them by, and the functions around them.

/** PromQL functions (a name followed by `(`). */
export const FUNCTIONS = new Set(
  (
    'abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max clamp_min ' +
    'cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv ' +
    'double_exponential_smoothing exp floor histogram_avg histogram_count histogram_fraction histogram_quantile ' +
    'histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta increase info irate label_join ' +
    'label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi ' +
    'predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label ' +
    'sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year'
  ).split(' '),
);
/** Aggregation operators: a name followed by `(` or by `by`/`without`. */
export const AGGREGATORS = new Set(
  'sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio'.split(' '),
);
/** Keywords followed by a list of label names in parentheses (`group_left` and `group_right` may have none). */
export const LABEL_LISTS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
/** Other keywords and literals. */
export const KEYWORDS = new Set(['bool', 'and', 'or', 'unless', 'offset', 'atan2', 'inf', 'nan', 'start', 'end']);
/** Functions over counters (and histogram series). */
export const COUNTER_FUNCTIONS = new Set(['rate', 'irate', 'increase', 'resets']);
/** Grafana's own variables. */
export const GRAFANA_VARIABLES = new Set([
  '__rate_interval',
  '__interval',
  '__interval_ms',
  '__range',
  '__range_s',
  '__range_ms',
]);

export type Token =
  | { k: 'id' | 'num' | 'str' | 'op' | 'var' | '(' | ')' | ','; v: string }
  | { k: 'sel'; v: string; labels: string[] }
  | { k: 'range'; v: string; vars: string[] };

const IDENT = /[A-Za-z_:][A-Za-z0-9_:]*/y;
const NUMBER = /(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z0-9]*/y;
const STRING = /"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/y;
const VARIABLE = /\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]/y;
const MATCHER = /\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)\s*(,|$)/y;

const at = (re: RegExp, s: string, i: number) => {
  re.lastIndex = i;
  return re.exec(s);
};

/** Grafana variables named in a string (`$x`, `${x}`, `${x:fmt}`, `[[x]]`). */
export function variablesIn(s: string): string[] {
  return [...s.matchAll(/\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]/g)].map((m) => m[1] ?? m[2] ?? m[3] ?? '');
}

export function tokenize(expr: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < expr.length) {
    const c = expr[i]!;
    let m: RegExpExecArray | null;
    if (/\s/.test(c)) {
      i++;
    } else if (c === '{') {
      // Label matchers: name op "value", comma separated.
      let j = i + 1;
      while (j < expr.length && expr[j] !== '}') {
        const s = at(STRING, expr, j);
        j = s ? j + s[0].length : j + 1;
      }
      if (j >= expr.length) throw new Error(`unclosed { in ${expr}`);
      const body = expr.slice(i + 1, j);
      const labels: string[] = [];
      let k = 0;
      while (body.slice(k).trim() !== '') {
        const mm = at(MATCHER, body, k);
        if (!mm || mm[0].length === 0) throw new Error(`cannot read label matchers {${body}}`);
        labels.push(mm[1]!);
        k += mm[0].length;
      }
      tokens.push({ k: 'sel', v: body, labels });
      i = j + 1;
    } else if (c === '[' && expr[i + 1] !== '[') {
      const j = expr.indexOf(']', i);
      if (j < 0) throw new Error(`unclosed [ in ${expr}`);
      const body = expr.slice(i + 1, j);
      tokens.push({ k: 'range', v: body, vars: variablesIn(body) });
      i = j + 1;
    } else if ((m = at(VARIABLE, expr, i))) {
      tokens.push({ k: 'var', v: m[1] ?? m[2] ?? m[3] ?? '' });
      i += m[0].length;
    } else if ((m = at(STRING, expr, i))) {
      tokens.push({ k: 'str', v: m[0] });
      i += m[0].length;
    } else if (/[0-9.]/.test(c) && (m = at(NUMBER, expr, i))) {
      tokens.push({ k: 'num', v: m[0] });
      i += m[0].length;
    } else if ((m = at(IDENT, expr, i))) {
      tokens.push({ k: 'id', v: m[0] });
      i += m[0].length;
    } else if (c === '(' || c === ')' || c === ',') {
      tokens.push({ k: c, v: c });
      i++;
    } else {
      tokens.push({ k: 'op', v: c });
      i++;
    }
  }
  return tokens;
}

export interface MetricRef {
  name: string;
  /** Label names its selector matches on. */
  labels: string[];
  /** Functions and aggregations around it, innermost last. */
  within: string[];
}

export interface Reading {
  metrics: MetricRef[];
  /** Label lists of by/without/on/ignoring/group_*, with the functions around them. */
  groupings: { keyword: string; labels: string[]; within: string[] }[];
  /** Grafana variables used. */
  variables: string[];
}

/** Reads a PromQL expression; throws on what it cannot read (an unknown function, a stray `{`). */
export function readPromQL(expr: string): Reading {
  const tokens = tokenize(expr);
  const reading: Reading = { metrics: [], groupings: [], variables: [] };
  const stack: string[] = []; // one entry per open parenthesis: the function it calls, or '' for grouping
  let pending: string | null = null; // a function or aggregation waiting for its '('
  const around = () => stack.filter((f) => f !== '');
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    const next = tokens[i + 1];
    switch (t.k) {
      case 'id': {
        if (LABEL_LISTS.has(t.v)) {
          const labels: string[] = [];
          if (next?.k === '(') {
            let j = i + 2;
            for (; j < tokens.length && tokens[j]!.k !== ')'; j++) {
              const l = tokens[j]!;
              if (l.k === 'id') labels.push(l.v);
              else if (l.k !== ',') throw new Error(`unexpected ${l.v} in ${t.v} (...) of ${expr}`);
            }
            if (j >= tokens.length) throw new Error(`unclosed ${t.v} (...) in ${expr}`);
            i = j;
          } else if (t.v !== 'group_left' && t.v !== 'group_right') {
            throw new Error(`${t.v} without a label list in ${expr}`);
          }
          reading.groupings.push({ keyword: t.v, labels, within: around() });
        } else if (KEYWORDS.has(t.v)) {
          if (t.v === 'offset') i++; // its duration
        } else if (next?.k === '(' || (next?.k === 'id' && (next.v === 'by' || next.v === 'without'))) {
          if (!FUNCTIONS.has(t.v) && !AGGREGATORS.has(t.v)) throw new Error(`unknown function ${t.v} in ${expr}`);
          pending = t.v;
        } else {
          const labels = next?.k === 'sel' ? next.labels : [];
          reading.metrics.push({ name: t.v, labels, within: around() });
          if (next?.k === 'sel') i++;
        }
        break;
      }
      case 'sel':
        throw new Error(`label matchers without a metric name in ${expr}`);
      case 'range':
        reading.variables.push(...t.vars);
        break;
      case 'var':
        reading.variables.push(t.v);
        break;
      case '(':
        stack.push(pending ?? '');
        pending = null;
        break;
      case ')':
        if (stack.pop() === undefined) throw new Error(`unbalanced ) in ${expr}`);
        break;
      default:
        break;
    }
  }
  if (stack.length > 0) throw new Error(`unclosed ( in ${expr}`);
  for (const m of tokens) if (m.k === 'sel') reading.variables.push(...variablesIn(m.v));
  return reading;
}

/** What is wrong with the metrics of one expression, against the exported ones; empty when nothing is. */
export function problemsOf(expr: string, exported: Map<string, Exported>): string[] {
  const problems: string[] = [];
  let reading: Reading;
  try {
    reading = readPromQL(expr);
  } catch (err) {
    return [(err as Error).message];
  }
  if (reading.metrics.length === 0) problems.push(`no metric in ${expr}`);
  const labelsInExpr = new Set(COMMON_LABELS);
  for (const ref of reading.metrics) {
    let def = exported.get(ref.name);
    let series: 'plain' | 'bucket' | 'sum' | 'count' = 'plain';
    const suffix = /_(bucket|sum|count)$/.exec(ref.name);
    if (!def && suffix) {
      const base = exported.get(ref.name.slice(0, suffix.index));
      const fits = suffix[1] === 'bucket' ? base?.type === 'histogram' : base?.type === 'histogram' || base?.type === 'summary';
      if (base && fits) {
        def = base;
        series = suffix[1] as 'bucket' | 'sum' | 'count';
      }
    }
    if (!def) {
      problems.push(`${ref.name} is not an exported metric (in ${expr})`);
      continue;
    }
    if ((def.type === 'histogram' || def.type === 'summary') && series === 'plain') {
      problems.push(`${ref.name} is a ${def.type}: query its _bucket, _sum or _count (in ${expr})`);
    }
    const known = new Set([...def.labelNames, ...COMMON_LABELS, ...(series === 'bucket' ? ['le'] : [])]);
    for (const l of known) labelsInExpr.add(l);
    for (const l of ref.labels) if (!known.has(l)) problems.push(`${ref.name} has no label ${l} (in ${expr})`);
    const overCounter = ref.within.some((f) => COUNTER_FUNCTIONS.has(f));
    const counterLike = def.type === 'counter' || series !== 'plain';
    if (counterLike && !overCounter) problems.push(`${ref.name} is a counter: use rate() or increase() (in ${expr})`);
    if (!counterLike && overCounter) problems.push(`${ref.name} is a gauge: rate() and increase() do not apply (in ${expr})`);
    if (series === 'bucket' && !ref.within.includes('histogram_quantile') && !ref.within.includes('histogram_fraction')) {
      problems.push(`${ref.name} outside histogram_quantile (in ${expr})`);
    }
  }
  // Labels of unknown metrics are unknown: say nothing of the groupings then.
  if (problems.some((p) => p.includes('is not an exported metric'))) return problems;
  for (const g of reading.groupings) {
    for (const l of g.labels)
      if (!labelsInExpr.has(l)) problems.push(`${g.keyword} (${l}): no metric has label ${l} (in ${expr})`);
    const dropsLe = (g.keyword === 'by' && !g.labels.includes('le')) || (g.keyword === 'without' && g.labels.includes('le'));
    if (g.within.includes('histogram_quantile') && dropsLe) {
      problems.push(`aggregation inside histogram_quantile must keep le (in ${expr})`);
    }
  }
  return problems;
}

/** One label matcher of a selector: `metric{label op "value"}`. */
export interface Matcher {
  metric: string;
  label: string;
  op: '=' | '!=' | '=~' | '!~';
  /** The value, unquoted. */
  value: string;
}

/** The value of a PromQL string literal. */
function unquote(literal: string): string {
  if (literal.startsWith('`')) return literal.slice(1, -1);
  const body = literal.slice(1, -1);
  return body.replace(/\\(.)/g, (_, c: string) => ({ n: '\n', t: '\t', r: '\r' })[c] ?? c);
}

/** The label matchers of every selector in an expression, with the metric each belongs to. */
export function matchersOf(expr: string): Matcher[] {
  const tokens = tokenize(expr);
  const found: Matcher[] = [];
  for (let i = 0; i + 1 < tokens.length; i++) {
    const [t, sel] = [tokens[i]!, tokens[i + 1]!];
    if (t.k !== 'id' || sel.k !== 'sel') continue;
    for (let k = 0; sel.v.slice(k).trim() !== '';) {
      const m = at(MATCHER, sel.v, k)!;
      found.push({ metric: t.v, label: m[1]!, op: m[2] as Matcher['op'], value: unquote(m[3]!) });
      k += m[0].length;
    }
  }
  return found;
}
