import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { ControllerMetrics, GatewayMetrics, WorkerMetrics, createRegistry, type Registry } from '@llmux/shared';

/**
 * The Grafana dashboard and the Prometheus scrape config in docker/, checked
 * against the metrics contract (shared/src/metrics): every metric a panel
 * queries must be one the services export, with the labels it has, and every
 * latency histogram must be on the dashboard. No servers: the names come from
 * the real metric classes on fresh registries.
 */

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const read = (path: string) => readFileSync(`${ROOT}${path}`, 'utf8');

const DASHBOARD = 'docker/grafana/dashboards/llmux.json';
const PROMETHEUS = 'docker/prometheus/prometheus.yml';
const DATASOURCES = 'docker/grafana/provisioning/datasources/prometheus.yaml';
const PROVIDERS = 'docker/grafana/provisioning/dashboards/llmux.yaml';

// ---------------------------------------------------------------------------
// The contract: names, types and labels of what the services export.

interface Exported {
  type: string;
  labelNames: readonly string[];
}

/** Labels every series has: set by the process (service, instance) or by Prometheus (job). */
const COMMON_LABELS = ['service', 'instance', 'job'];

async function exportedMetrics(): Promise<{ all: Map<string, Exported>; contractHistograms: string[] }> {
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
const FUNCTIONS = new Set(
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
const AGGREGATORS = new Set(
  'sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio'.split(' '),
);
/** Keywords followed by a list of label names in parentheses (`group_left` and `group_right` may have none). */
const LABEL_LISTS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
/** Other keywords and literals. */
const KEYWORDS = new Set(['bool', 'and', 'or', 'unless', 'offset', 'atan2', 'inf', 'nan', 'start', 'end']);
/** Functions over counters (and histogram series). */
const COUNTER_FUNCTIONS = new Set(['rate', 'irate', 'increase', 'resets']);
/** Grafana's own variables. */
const GRAFANA_VARIABLES = new Set(['__rate_interval', '__interval', '__interval_ms', '__range', '__range_s', '__range_ms']);

type Token =
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
function variablesIn(s: string): string[] {
  return [...s.matchAll(/\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]/g)].map((m) => m[1] ?? m[2] ?? m[3] ?? '');
}

function tokenize(expr: string): Token[] {
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

interface MetricRef {
  name: string;
  /** Label names its selector matches on. */
  labels: string[];
  /** Functions and aggregations around it, innermost last. */
  within: string[];
}

interface Reading {
  metrics: MetricRef[];
  /** Label lists of by/without/on/ignoring/group_*, with the functions around them. */
  groupings: { keyword: string; labels: string[]; within: string[] }[];
  /** Grafana variables used. */
  variables: string[];
}

/** Reads a PromQL expression; throws on what it cannot read (an unknown function, a stray `{`). */
function readPromQL(expr: string): Reading {
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
function problemsOf(expr: string, exported: Map<string, Exported>): string[] {
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

// ---------------------------------------------------------------------------
// The dashboard's shape.

interface GridPos {
  x: number;
  y: number;
  w: number;
  h: number;
}
interface Target {
  refId?: string;
  expr?: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id?: number;
  type?: string;
  title?: string;
  gridPos?: GridPos;
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  fieldConfig?: { defaults?: { unit?: string } };
  collapsed?: boolean;
  panels?: Panel[];
}
interface Variable {
  name?: string;
  type?: string;
  query?: string | { query?: string };
  definition?: string;
  current?: { value?: unknown };
  datasource?: { type?: string; uid?: string };
}
interface Dashboard {
  uid?: string;
  title?: string;
  schemaVersion?: number;
  panels?: Panel[];
  templating?: { list?: Variable[] };
}

/** Every panel, rows' nested panels included. */
const allPanels = (d: Dashboard): Panel[] => (d.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]);
const queryPanels = (d: Dashboard) => allPanels(d).filter((p) => p.type !== 'row');
const exprsOf = (d: Dashboard) =>
  queryPanels(d).flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr ?? '' })));

const overlaps = (a: GridPos, b: GridPos) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

describe('grafana dashboard and prometheus config', () => {
  let exported: Map<string, Exported>;
  let contractHistograms: string[];
  const dashboard = JSON.parse(read(DASHBOARD)) as Dashboard;
  const datasources = parseYaml(read(DATASOURCES)) as { datasources?: { uid?: string; type?: string; url?: string }[] };

  before(async () => {
    ({ all: exported, contractHistograms } = await exportedMetrics());
  });

  describe('the PromQL reader', () => {
    it('finds metric names, labels and the functions around them', () => {
      const r = readPromQL(
        'histogram_quantile(0.95, sum by (model, le) (rate(llmux_time_to_first_token_seconds_bucket{model=~"$model", op!="a,b}"}[$__rate_interval]))) / on (model) group_left sum(llmux_queue_depth) offset 5m',
      );
      expect(r.metrics).to.deep.equal([
        {
          name: 'llmux_time_to_first_token_seconds_bucket',
          labels: ['model', 'op'],
          within: ['histogram_quantile', 'sum', 'rate'],
        },
        { name: 'llmux_queue_depth', labels: [], within: ['sum'] },
      ]);
      expect(r.groupings.map((g) => [g.keyword, g.labels])).to.deep.equal([
        ['by', ['model', 'le']],
        ['on', ['model']],
        ['group_left', []],
      ]);
      expect(r.variables).to.have.members(['__rate_interval', 'model']);
      expect(readPromQL('sum(rate(llmux_requests_total[5m])) by (outcome)').metrics[0]!.within).to.deep.equal(['sum', 'rate']);
      expect(readPromQL('llmux_process_resident_memory_bytes').metrics.map((m) => m.name)).to.deep.equal([
        'llmux_process_resident_memory_bytes',
      ]);
    });

    it('accepts what the services export', () => {
      expect(
        problemsOf('sum by (model) (rate(llmux_requests_total{model=~"$model", outcome!="ok"}[5m]))', exported),
      ).to.deep.equal([]);
      expect(problemsOf('rate(llmux_process_cpu_user_seconds_total[1m])', exported)).to.deep.equal([]);
      expect(
        problemsOf(
          'rate(llmux_e2e_request_latency_seconds_sum[1m]) / rate(llmux_e2e_request_latency_seconds_count[1m])',
          exported,
        ),
      ).to.deep.equal([]);
    });

    it('rejects misspelt metrics, missing labels and misused types', () => {
      const bad = [
        'histogram_quantile(0.5, sum by (le) (rate(llmux_time_to_first_tokn_seconds_bucket[5m])))', // typo
        'rate(llmux_requests_totl[5m])', // typo
        'sum(rate(llmux_requests_total{reason="queue_full"}[5m]))', // no such label
        'sum by (tenant) (rate(llmux_requests_total[5m]))', // no such label
        'sum(llmux_requests_total)', // a counter without rate
        'rate(llmux_queue_depth[5m])', // a gauge under rate
        'histogram_quantile(0.5, sum by (model) (rate(llmux_time_to_first_token_seconds_bucket[5m])))', // le dropped
        'rate(llmux_time_to_first_token_seconds[5m])', // a histogram's base name
        'rate(llmux_requests_total_bucket[5m])', // not a histogram
        'histogram_quantil(0.5, rate(llmux_time_to_first_token_seconds_bucket[5m]))', // unknown function
        'sum(rate({__name__="llmux_requests_total"}[5m]))', // unreadable here
      ];
      for (const expr of bad) expect(problemsOf(expr, exported), expr).to.have.length.above(0);
    });
  });

  describe(`${DASHBOARD}`, () => {
    it('is identified and versioned', () => {
      expect(dashboard.uid).to.equal('llmux-overview');
      expect(dashboard.title).to.be.a('string').with.length.above(0);
      expect(dashboard.schemaVersion).to.be.within(36, 41);
    });

    it('has unique panel ids and titles, and a datasource, targets, a unit and a grid position on every panel', () => {
      const panels = allPanels(dashboard);
      expect(panels.length).to.be.greaterThan(10);
      const ids = panels.map((p) => p.id);
      for (const id of ids) expect(id).to.be.a('number');
      expect(
        ids.filter((id, i) => ids.indexOf(id) !== i),
        'panel ids repeated',
      ).to.deep.equal([]);
      const titles = queryPanels(dashboard).map((p) => p.title);
      expect(
        titles.filter((t, i) => titles.indexOf(t) !== i),
        'panel titles repeated',
      ).to.deep.equal([]);

      const dsVariables = new Set(
        (dashboard.templating?.list ?? []).filter((v) => v.type === 'datasource' && v.query === 'prometheus').map((v) => v.name),
      );
      const provisionedUids = new Set((datasources.datasources ?? []).map((d) => d.uid));
      const validDatasource = (ds: { type?: string; uid?: string } | undefined) => {
        if (ds?.type !== 'prometheus' || typeof ds.uid !== 'string') return false;
        const variable = /^\$\{(\w+)\}$|^\$(\w+)$/.exec(ds.uid);
        return variable ? dsVariables.has(variable[1] ?? variable[2]) : provisionedUids.has(ds.uid);
      };

      for (const p of panels) {
        const where = `panel ${p.id} "${p.title}"`;
        const g = p.gridPos;
        expect(g, `${where} gridPos`).to.be.an('object');
        for (const k of ['x', 'y', 'w', 'h'] as const) expect(Number.isInteger(g![k]), `${where} gridPos.${k}`).to.equal(true);
        expect(g!.x, where).to.be.at.least(0);
        expect(g!.y, where).to.be.at.least(0);
        expect(g!.w, where).to.be.at.least(1);
        expect(g!.h, where).to.be.at.least(1);
        expect(g!.x + g!.w, `${where} fits in 24 columns`).to.be.at.most(24);
        if (p.type === 'row') continue;
        expect(p.title, `${where} title`).to.be.a('string').with.length.above(0);
        expect(validDatasource(p.datasource), `${where} datasource ${JSON.stringify(p.datasource)}`).to.equal(true);
        expect(p.targets ?? [], `${where} targets`).to.have.length.above(0);
        const refIds = (p.targets ?? []).map((t) => t.refId);
        expect(new Set(refIds).size, `${where} refIds unique`).to.equal(refIds.length);
        for (const t of p.targets ?? []) {
          expect(t.expr, `${where} target ${t.refId} expr`).to.be.a('string').with.length.above(0);
          if (t.datasource) expect(validDatasource(t.datasource), `${where} target ${t.refId} datasource`).to.equal(true);
        }
        expect(p.fieldConfig?.defaults?.unit, `${where} unit`).to.be.a('string').with.length.above(0);
      }
    });

    it('has no overlapping panels', () => {
      // Panels of an expanded row are on the grid with everything else; a collapsed row's are laid out among themselves.
      const groups: Panel[][] = [dashboard.panels ?? []];
      for (const p of dashboard.panels ?? []) if (p.type === 'row' && p.collapsed) groups.push(p.panels ?? []);
      for (const group of groups) {
        for (let i = 0; i < group.length; i++) {
          for (let j = i + 1; j < group.length; j++) {
            const [a, b] = [group[i]!, group[j]!];
            expect(
              overlaps(a.gridPos!, b.gridPos!),
              `"${a.title}" ${JSON.stringify(a.gridPos)} overlaps "${b.title}" ${JSON.stringify(b.gridPos)}`,
            ).to.equal(false);
          }
        }
      }
    });

    it('has a model variable from label_values(llmux_requests_total, model), and uses only defined variables', () => {
      const variables = dashboard.templating?.list ?? [];
      const names = variables.map((v) => v.name);
      expect(new Set(names).size, 'variable names unique').to.equal(names.length);
      const model = variables.find((v) => v.name === 'model');
      expect(model, 'model variable').to.not.equal(undefined);
      const query = typeof model!.query === 'string' ? model!.query : model!.query?.query;
      expect(query).to.match(/^label_values\(\s*llmux_requests_total\s*,\s*model\s*\)$/);
      expect(exported.get('llmux_requests_total')?.labelNames).to.include('model');

      const defined = new Set([...names.filter((n): n is string => !!n), ...GRAFANA_VARIABLES]);
      for (const { panel, expr } of exprsOf(dashboard)) {
        for (const v of readPromQL(expr).variables) expect(defined.has(v), `"${panel}": $${v} is not defined`).to.equal(true);
      }
    });

    it('queries only exported metrics, by labels they have, with the functions their types take', () => {
      const problems = exprsOf(dashboard).flatMap(({ panel, expr }) => problemsOf(expr, exported).map((p) => `"${panel}": ${p}`));
      expect(problems).to.deep.equal([]);
    });

    it('shows every histogram of the contract as quantiles', () => {
      expect(contractHistograms).to.include.members([
        'llmux_time_to_first_token_seconds',
        'llmux_inter_token_latency_seconds',
        'llmux_e2e_request_latency_seconds',
        'llmux_request_queue_time_seconds',
        'llmux_redis_command_duration_seconds',
      ]);
      const quantiled = new Set(
        exprsOf(dashboard).flatMap(({ expr }) =>
          readPromQL(expr)
            .metrics.filter((m) => m.name.endsWith('_bucket') && m.within.includes('histogram_quantile'))
            .map((m) => m.name.slice(0, -'_bucket'.length)),
        ),
      );
      for (const h of contractHistograms) expect(quantiled.has(h), `${h} on the dashboard`).to.equal(true);
    });
  });

  describe('provisioning', () => {
    it('has a Prometheus datasource at http://prometheus:9090 with uid prometheus', () => {
      const ds = (datasources.datasources ?? []).find((d) => d.uid === 'prometheus');
      expect(ds, 'datasource with uid prometheus').to.not.equal(undefined);
      expect(ds!.type).to.equal('prometheus');
      expect(ds!.url).to.equal('http://prometheus:9090');
    });

    it('loads dashboards from /var/lib/grafana/dashboards', () => {
      const doc = parseYaml(read(PROVIDERS)) as { providers?: { type?: string; options?: { path?: string } }[] };
      expect(doc.providers).to.have.length.at.least(1);
      expect(doc.providers![0]!.type).to.equal('file');
      expect(doc.providers![0]!.options?.path).to.equal('/var/lib/grafana/dashboards');
    });
  });

  describe(`${PROMETHEUS}`, () => {
    interface ScrapeConfig {
      job_name?: string;
      metrics_path?: string;
      honor_labels?: boolean;
      static_configs?: { targets?: string[] }[];
    }
    const config = parseYaml(read(PROMETHEUS)) as { scrape_configs?: ScrapeConfig[] };
    const jobs = config.scrape_configs ?? [];
    const targetsOf = (job: ScrapeConfig) => (job.static_configs ?? []).flatMap((s) => s.targets ?? []);

    it('scrapes the gateway, the worker agents and the controller at /metrics', () => {
      const names = jobs.map((j) => j.job_name);
      expect(new Set(names).size, 'job names unique').to.equal(names.length);
      expect(jobs.flatMap(targetsOf)).to.have.members(['gateway:8000', 'worker-1:9464', 'worker-2:9464', 'controller:9465']);
      const byTarget = (t: string) => jobs.find((j) => targetsOf(j).includes(t))!;
      expect(byTarget('worker-1:9464')).to.equal(byTarget('worker-2:9464'));
      expect(byTarget('gateway:8000')).to.not.equal(byTarget('controller:9465'));
      for (const job of jobs) {
        expect(job.metrics_path ?? '/metrics', `${job.job_name} metrics_path`).to.equal('/metrics');
        // The processes label their series with their own `instance`; Prometheus must keep it.
        expect(job.honor_labels, `${job.job_name} honor_labels`).to.equal(true);
      }
    });
  });
});
