import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { Keys, REJECTION_REASONS, REQUEST_OUTCOMES, UNKNOWN_MODEL, WORKER_OUTCOMES } from '@llmux/shared';
import {
  AGGREGATORS,
  COMMON_LABELS,
  exportedMetrics,
  matchersOf,
  problemsOf,
  readPromQL,
  type Exported,
} from '../helpers/promql.js';

/**
 * The Prometheus alert rules (docker/prometheus/alerts.yml) and their runbook
 * (docs/runbook.md), checked without a Prometheus (promtool is not at hand):
 * the rules' shape, every expression against the metrics contract
 * (shared/src/metrics) with the PromQL reader of test/helpers/promql.ts, the
 * label values the rules match on, and a runbook section for every alert
 * whose commands, Redis keys and dashboard panels exist.
 */

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const read = (path: string) => readFileSync(`${ROOT}${path}`, 'utf8');

const RULES = 'docker/prometheus/alerts.yml';
const PROMETHEUS = 'docker/prometheus/prometheus.yml';
const RUNBOOK = 'docs/runbook.md';
const DASHBOARD = 'docker/grafana/dashboards/llmux.json';
const LLMCTL = 'controller/dist/cli/main.js';

const SEVERITIES = ['critical', 'warning', 'info'];
const RULE_KEYS = ['alert', 'expr', 'for', 'keep_firing_for', 'labels', 'annotations'];
/** A Prometheus duration: `5m`, `1h30m`, `90s`. */
const DURATION = /^(?:\d+(?:ms|[smhdwy]))+$/;
/** Template functions the annotations may pipe `$value` through. */
const TEMPLATE_FUNCTIONS = new Set(['humanize', 'humanize1024', 'humanizeDuration', 'humanizePercentage', 'humanizeTimestamp']);

interface Rule {
  alert?: string;
  record?: string;
  expr?: unknown;
  for?: unknown;
  labels?: Record<string, unknown>;
  annotations?: Record<string, unknown>;
}
interface RuleFile {
  groups?: { name?: string; interval?: string; rules?: Rule[] }[];
}

/** The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

/** The anchors of a markdown file's headings (repeated headings get -1, -2, ... as on GitHub). */
function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  let fenced = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const h = !fenced && /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!h) continue;
    const base = slug(h[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

/** The `##` sections of a markdown file: heading text -> body. */
function sectionsOf(markdown: string): Map<string, string> {
  const sections = new Map<string, string>();
  let current: string | null = null;
  let fenced = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const h = !fenced && /^##\s+(.*?)\s*$/.exec(line);
    if (h) {
      current = h[1]!;
      sections.set(current, '');
    } else if (current !== null) {
      sections.set(current, `${sections.get(current)}${line}\n`);
    }
  }
  return sections;
}

/** Label values a rule may match on, per metric (`*` for any metric), besides what is checked elsewhere. */
function knownValues(jobs: string[]): Map<string, Map<string, readonly string[]>> {
  return new Map<string, Map<string, readonly string[]>>([
    ['llmux_requests_total', new Map([['outcome', REQUEST_OUTCOMES]])],
    ['llmux_worker_requests_total', new Map([['outcome', WORKER_OUTCOMES]])],
    ['llmux_admission_rejections_total', new Map([['reason', REJECTION_REASONS]])],
    // The controller's supervisor counts `worker` and `gateway` restarts (controller/src/metrics.ts).
    ['llmux_worker_restarts_total', new Map([['process', ['worker', 'gateway']]])],
    [
      '*',
      new Map<string, readonly string[]>([
        ['service', ['gateway', 'worker', 'controller']],
        ['job', jobs],
        // Rules hold for every deployment: the only model they may name is the one for unknown models.
        ['model', [UNKNOWN_MODEL]],
      ]),
    ],
  ]);
}

/** What is wrong with the label values one expression matches on; empty when nothing is. */
function valueProblems(expr: string, jobs: string[]): string[] {
  const known = knownValues(jobs);
  const problems: string[] = [];
  for (const m of matchersOf(expr)) {
    const base = m.metric.replace(/_(bucket|sum|count)$/, '');
    const values = known.get(m.metric)?.get(m.label) ?? known.get(base)?.get(m.label) ?? known.get('*')?.get(m.label);
    if (!values) continue;
    if (m.op === '=' || m.op === '!=') {
      if (!values.includes(m.value)) problems.push(`${m.metric}{${m.label}${m.op}"${m.value}"}: not one of ${values.join(', ')}`);
      continue;
    }
    const re = new RegExp(`^(?:${m.value})$`);
    if (!values.some((v) => re.test(v)))
      problems.push(`${m.metric}{${m.label}${m.op}"${m.value}"}: matches none of ${values.join(', ')}`);
    // A plain alternation names its values: each must be one.
    if (/^[\w|-]+$/.test(m.value)) {
      for (const v of m.value.split('|'))
        if (!values.includes(v))
          problems.push(`${m.metric}{${m.label}${m.op}"${m.value}"}: ${v} is not one of ${values.join(', ')}`);
    }
  }
  return problems;
}

/**
 * Labels an alert of this expression can carry, roughly: those it groups or
 * matches by, and all labels of a metric that no aggregation wraps.
 */
function outputLabels(expr: string, exported: Map<string, Exported>): Set<string> {
  const reading = readPromQL(expr);
  const labels = new Set<string>();
  for (const g of reading.groupings)
    if (g.keyword !== 'without' && g.keyword !== 'ignoring') for (const l of g.labels) labels.add(l);
  for (const ref of reading.metrics) {
    if (ref.within.some((f) => AGGREGATORS.has(f))) continue;
    const def = exported.get(ref.name) ?? exported.get(ref.name.replace(/_(bucket|sum|count)$/, ''));
    for (const l of [...(def?.labelNames ?? []), ...COMMON_LABELS, ...ref.labels]) labels.add(l);
  }
  return labels;
}

/** What is wrong with one annotation's Go template; empty when nothing is. */
function templateProblems(text: string, labels: Set<string>): string[] {
  const problems: string[] = [];
  if ((text.match(/\{\{/g) ?? []).length !== (text.match(/\}\}/g) ?? []).length) problems.push(`unbalanced {{ }} in ${text}`);
  for (const [, body] of text.matchAll(/\{\{(.*?)\}\}/g)) {
    const parts = body!.split('|').map((p) => p.trim());
    const head = parts[0]!;
    const label = /^\$labels\.(\w+)$/.exec(head);
    if (label) {
      if (!labels.has(label[1]!))
        problems.push(`$labels.${label[1]}: the alert has no such label (it has ${[...labels].join(', ')})`);
    } else if (head !== '$value') {
      problems.push(`{{${body}}}: only $value and $labels.<name> are used here`);
    }
    for (const f of parts.slice(1)) if (!TEMPLATE_FUNCTIONS.has(f)) problems.push(`{{${body}}}: unknown function ${f}`);
  }
  return problems;
}

/** The code of a markdown file: fenced blocks and inline code spans. */
function codeOf(markdown: string): string {
  const blocks = [...markdown.matchAll(/^```[^\n]*\n([\s\S]*?)^```/gm)].map((m) => m[1]!);
  const prose = markdown.replace(/^```[^\n]*\n[\s\S]*?^```/gm, '');
  const spans = [...prose.matchAll(/`([^`\n]+)`/g)].map((m) => m[1]!);
  return [...blocks, ...spans].join('\n');
}

/** The commands `llmctl --help` lists. */
function llmctlCommands(): Set<string> {
  const help = execFileSync(process.execPath, [`${ROOT}${LLMCTL}`, '--help'], { encoding: 'utf8' });
  const block = help.split(/^commands:$/m)[1]!.split(/^options:$/m)[0]!;
  return new Set([...block.matchAll(/^ {2}([a-z][a-z-]*)/gm)].map((m) => m[1]!));
}

/** A pattern for every key name of shared/src/redis/keys.ts (default prefix), arguments as wildcards. */
function keyPatterns(): RegExp[] {
  const keys = new Keys();
  const methods = Object.getOwnPropertyNames(Keys.prototype).filter((n) => n !== 'constructor');
  const HOLE = '\u0000';
  // A placeholder in the docs: a name (`stories260K`), `<worker id>`, or a glob `*`.
  const ARG = '(?:[A-Za-z0-9_.-]+|<[^>]+>|\\*)';
  return methods
    .map((name) => {
      const fn = (Keys.prototype as unknown as Record<string, (...args: string[]) => string>)[name]!;
      return fn.apply(
        keys,
        Array.from({ length: fn.length }, () => HOLE),
      );
    })
    .filter((key) => key.startsWith('llm:'))
    .map((key) => new RegExp(`^${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replaceAll(HOLE, ARG)}$`));
}

describe('alert rules and runbook', () => {
  let exported: Map<string, Exported>;
  const rulesText = read(RULES);
  const file = parseYaml(rulesText) as RuleFile;
  const rules = (file.groups ?? []).flatMap((g) => g.rules ?? []);
  const alerts = rules.filter((r) => typeof r.alert === 'string') as (Rule & { alert: string })[];
  const exprOf = (r: Rule) => String(r.expr);
  const config = parseYaml(read(PROMETHEUS)) as { rule_files?: string[]; scrape_configs?: { job_name?: string }[] };
  const jobs = (config.scrape_configs ?? []).map((j) => j.job_name ?? '');
  const runbook = read(RUNBOOK);
  const sections = sectionsOf(runbook);

  before(async () => {
    ({ all: exported } = await exportedMetrics());
    // Prometheus's own series of every scrape target (job and instance are common labels).
    exported.set('up', { type: 'gauge', labelNames: [] });
  });

  describe(`${RULES}`, () => {
    it(`is loaded by ${PROMETHEUS} (rule_files, relative to it)`, () => {
      expect(config.rule_files, 'rule_files').to.be.an('array').that.includes('alerts.yml');
      for (const f of config.rule_files ?? []) {
        expect(existsSync(`${ROOT}${dirname(PROMETHEUS)}/${f}`), `${f} next to ${PROMETHEUS}`).to.equal(true);
      }
    });

    it('has groups of alerting rules with unique names', () => {
      const groups = file.groups ?? [];
      expect(groups.length).to.be.at.least(1);
      const names = groups.map((g) => g.name);
      for (const n of names)
        expect(n)
          .to.be.a('string')
          .and.match(/^[a-z][a-z0-9-]*$/);
      expect(new Set(names).size, 'group names unique').to.equal(names.length);
      for (const g of groups) expect(g.rules ?? [], `group ${g.name} rules`).to.have.length.at.least(1);
      expect(rules.length, 'every rule is an alert').to.equal(alerts.length);
      const alertNames = alerts.map((a) => a.alert);
      expect(
        alertNames.filter((n, i) => alertNames.indexOf(n) !== i),
        'alert names repeated',
      ).to.deep.equal([]);
    });

    it('gives every alert an expression, a for, a severity, a summary, a description and a runbook section', () => {
      for (const r of alerts) {
        const where = `alert ${r.alert}`;
        expect(r.alert, where).to.match(/^Llmux[A-Z][A-Za-z0-9]*$/);
        for (const k of Object.keys(r)) expect(RULE_KEYS, `${where}: key ${k}`).to.include(k);
        expect(r.expr, `${where} expr`).to.be.a('string').with.length.above(0);
        expect(r.for, `${where} for`).to.be.a('string').and.match(DURATION);
        expect(r.for, `${where} for`).to.not.match(/^0+[a-z]+$/);
        expect(SEVERITIES, `${where} severity`).to.include(r.labels?.severity);
        for (const k of ['summary', 'description', 'runbook_url'])
          expect(r.annotations?.[k], `${where} annotations.${k}`).to.be.a('string').with.length.above(0);
        expect(r.annotations?.runbook_url, `${where} runbook_url`).to.equal(`${RUNBOOK}#${slug(r.alert)}`);
      }
    });

    it('queries only exported metrics, by labels they have, with the functions their types take', () => {
      const problems = alerts.flatMap((r) => problemsOf(exprOf(r), exported).map((p) => `${r.alert}: ${p}`));
      expect(problems).to.deep.equal([]);
    });

    it('matches only label values the services produce, and jobs of the scrape configuration', () => {
      const problems = alerts.flatMap((r) => valueProblems(exprOf(r), jobs).map((p) => `${r.alert}: ${p}`));
      expect(problems).to.deep.equal([]);
    });

    it('uses no Grafana variables, and ranges Prometheus can read', () => {
      for (const r of alerts) {
        expect(readPromQL(exprOf(r)).variables, `${r.alert}: Grafana variables`).to.deep.equal([]);
        for (const [, range] of exprOf(r).matchAll(/\[([^\]]*)\]/g))
          for (const part of range!.split(':')) if (part !== '') expect(part, `${r.alert}: range [${range}]`).to.match(DURATION);
      }
    });

    it('names in its annotations only labels the alert has', () => {
      const problems = alerts.flatMap((r) => {
        const labels = outputLabels(exprOf(r), exported);
        return ['summary', 'description'].flatMap((k) =>
          templateProblems(String(r.annotations?.[k]), labels).map((p) => `${r.alert} ${k}: ${p}`),
        );
      });
      expect(problems).to.deep.equal([]);
    });

    it('covers the SLOs, the queues, the fleet, the errors, Redis and the control plane', () => {
      const used = new Set(alerts.flatMap((r) => readPromQL(exprOf(r)).metrics.map((m) => m.name)));
      for (const name of [
        'llmux_time_to_first_token_seconds_bucket',
        'llmux_slo_ttft_p95_seconds',
        'llmux_inter_token_latency_seconds_bucket',
        'llmux_slo_itl_p95_seconds',
        'llmux_request_queue_time_seconds_bucket',
        'llmux_queue_depth',
        'llmux_queue_limit',
        'llmux_consumer_group_lag',
        'llmux_live_workers',
        'llmux_desired_replicas',
        'llmux_worker_restarts_total',
        'llmux_engine_restarts_total',
        'llmux_reclaims_total',
        'llmux_migrations_total',
        'llmux_requests_total',
        'llmux_worker_requests_total',
        'llmux_admission_rejections_total',
        'llmux_gateway_open_requests',
        'llmux_redis_command_duration_seconds_bucket',
        'llmux_controller_is_leader',
        'up',
      ])
        expect(used.has(name), `${name} in some alert`).to.equal(true);
      const reasons = new Set(
        alerts.flatMap((r) =>
          matchersOf(exprOf(r))
            .filter((m) => m.label === 'reason')
            .map((m) => m.value),
        ),
      );
      for (const reason of ['queue_full', 'rate_limited', 'overloaded', 'redis_unavailable'])
        expect(reasons.has(reason), `reason ${reason} in some alert`).to.equal(true);
      for (const s of SEVERITIES)
        expect(
          alerts.some((r) => r.labels?.severity === s),
          `a ${s} alert`,
        ).to.equal(true);
    });

    it('compares the SLO alerts with the SLO gauges, per model', () => {
      for (const [histogram, slo] of [
        ['llmux_time_to_first_token_seconds_bucket', 'llmux_slo_ttft_p95_seconds'],
        ['llmux_inter_token_latency_seconds_bucket', 'llmux_slo_itl_p95_seconds'],
      ] as const) {
        const rule = alerts.find((r) => {
          const names = readPromQL(exprOf(r)).metrics.map((m) => m.name);
          return names.includes(histogram) && names.includes(slo);
        });
        expect(rule, `an alert comparing ${histogram} with ${slo}`).to.not.equal(undefined);
        const reading = readPromQL(exprOf(rule!));
        const q = reading.metrics.find((m) => m.name === histogram)!;
        expect(q.within[0], `${rule!.alert}: p95 of ${histogram}`).to.equal('histogram_quantile');
        expect(exprOf(rule!)).to.match(/histogram_quantile\(\s*0\.95\s*,/);
        expect(
          reading.groupings.some((g) => g.keyword === 'on' && g.labels.includes('model')),
          `${rule!.alert} matches on model`,
        ).to.equal(true);
      }
    });

    it('catches mistakes (the checks can fail)', () => {
      const bad = [
        'histogram_quantile(0.95, sum by (model, le) (rate(llmux_time_to_first_token_second_bucket[5m])))', // typo
        'llmux_slo_ttft_p95_second > 1', // typo
        'sum by (model) (rate(llmux_requests_total{reason="queue_full"}[5m]))', // a label of another metric
        'increase(llmux_worker_restarts_total{model="x"}[10m]) > 3', // restarts are by process
        'llmux_worker_restarts_total > 3', // a counter without increase
        'deriv(llmux_engine_restarts_total[10m]) > 0', // a counter under deriv
        'rate(llmux_live_workers[5m]) == 0', // a gauge under rate
        'histogram_quantile(0.95, sum by (model) (rate(llmux_time_to_first_token_seconds_bucket[5m])))', // le dropped
      ];
      for (const expr of bad) expect(problemsOf(expr, exported), expr).to.have.length.above(0);
      expect(valueProblems('rate(llmux_requests_total{outcome=~"error|timout"}[5m])', jobs)).to.have.length.above(0);
      expect(valueProblems('rate(llmux_admission_rejections_total{reason="redis_down"}[1m])', jobs)).to.have.length.above(0);
      expect(valueProblems('up{job="llmux-gateways"} == 0', jobs)).to.have.length.above(0);
      expect(valueProblems('up{job=~"vllm-.*"} == 0', jobs)).to.have.length.above(0);
      expect(valueProblems('rate(llmux_worker_requests_total{outcome="rejected_429"}[5m])', jobs)).to.have.length.above(0);
      expect(valueProblems('llmux_live_workers{model="stories260K"} == 0', jobs)).to.have.length.above(0);
      expect(valueProblems('rate(llmux_requests_total{outcome=~"error|timeout", model!="_unknown"}[5m])', jobs)).to.deep.equal(
        [],
      );
      const byModel = outputLabels('sum by (model) (rate(llmux_requests_total[5m])) > 0', exported);
      expect(templateProblems('{{ $labels.model }} at {{ $value | humanizePercentage }}', byModel)).to.deep.equal([]);
      expect(templateProblems('{{ $labels.instance }}', byModel)).to.have.length.above(0);
      expect(templateProblems('{{ $value | humanise }}', byModel)).to.have.length.above(0);
    });
  });

  describe(`${RUNBOOK}`, () => {
    interface Panel {
      type?: string;
      title?: string;
      panels?: Panel[];
    }
    const panelTitles = new Set(
      ((JSON.parse(read(DASHBOARD)) as { panels?: Panel[] }).panels ?? [])
        .flatMap((p) => [p, ...(p.panels ?? [])])
        .filter((p) => p.type !== 'row')
        .map((p) => p.title ?? ''),
    );

    it('starts with how to use it and a table of every alert with its severity', () => {
      const headings = [...sections.keys()];
      expect(headings[0], 'first section').to.match(/^How to use this runbook$/i);
      const rows = new Map(
        [...runbook.matchAll(/^\|\s*\[(Llmux\w+)\]\(#([\w-]+)\)\s*\|\s*(\w+)\s*\|/gm)].map((m) => [
          m[1]!,
          { anchor: m[2]!, severity: m[3]! },
        ]),
      );
      expect([...rows.keys()], 'alerts in the table').to.have.members(alerts.map((a) => a.alert));
      for (const a of alerts) {
        expect(rows.get(a.alert)?.severity, `${a.alert} severity in the table`).to.equal(a.labels?.severity);
        expect(rows.get(a.alert)?.anchor, `${a.alert} link in the table`).to.equal(slug(a.alert));
      }
    });

    it('has a section for every alert, and none for an alert that does not exist', () => {
      const anchors = anchorsOf(runbook);
      for (const a of alerts) {
        expect(sections.has(a.alert), `## ${a.alert}`).to.equal(true);
        expect(anchors.has(String(a.annotations?.runbook_url).split('#')[1] ?? ''), `${a.alert} runbook_url anchor`).to.equal(
          true,
        );
      }
      const names = new Set(alerts.map((a) => a.alert));
      for (const h of sections.keys()) if (/^Llmux/.test(h)) expect(names.has(h), `## ${h} is not an alert`).to.equal(true);
    });

    it('says in each alert section what it means, how to confirm it with commands and a panel, and what to do', () => {
      for (const a of alerts) {
        const body = sections.get(a.alert) ?? '';
        for (const part of ['**What it means.**', '**How to confirm.**', '**What to do.**'])
          expect(body, `${a.alert}: ${part}`).to.include(part);
        expect(body, `${a.alert}: a command block`).to.match(/```sh\n[\s\S]*?```/);
        expect(/\bpanel\s+"[^"]+"|\/dashboard/i.test(body), `${a.alert}: a dashboard panel or /dashboard`).to.equal(true);
      }
    });

    it('names only dashboard panels that exist', () => {
      const named = [...runbook.matchAll(/\bpanel\s+"([^"]+)"/gi)].map((m) => m[1]!.replace(/\s+/g, ' '));
      expect(named.length).to.be.above(0);
      for (const title of named) expect(panelTitles.has(title), `panel "${title}" in ${DASHBOARD}`).to.equal(true);
    });

    it('uses only llmctl commands that exist', () => {
      const commands = llmctlCommands();
      expect(commands.size).to.be.above(5);
      const used = [...codeOf(runbook).matchAll(/\bllmctl[ \t]+([a-z][a-z-]*)/g)].map((m) => m[1]!);
      expect(used.length).to.be.above(0);
      for (const c of used) expect(commands.has(c), `llmctl ${c} (llmctl --help: ${[...commands].join(', ')})`).to.equal(true);
    });

    it('uses only Redis keys the system has', () => {
      const patterns = keyPatterns();
      const used = [...runbook.matchAll(/\bllm:(?:[^\s'"`<>),]|<[^>]+>)+/g)].map((m) => m[0].replace(/[.:;]+$/, ''));
      expect(used.length).to.be.above(0);
      for (const key of used)
        expect(
          patterns.some((p) => p.test(key)),
          `Redis key ${key} (shared/src/redis/keys.ts)`,
        ).to.equal(true);
    });

    it('links only to anchors and files that exist', () => {
      const own = anchorsOf(runbook);
      for (const [, target] of runbook.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^https?:/.test(target!)) continue;
        const [path, anchor] = target!.split('#') as [string, string | undefined];
        const file = path === '' ? RUNBOOK : `docs/${path}`;
        expect(existsSync(`${ROOT}${file}`), `link ${target}: ${file}`).to.equal(true);
        if (anchor === undefined || !file.endsWith('.md')) continue;
        const anchors = path === '' ? own : anchorsOf(read(file));
        expect(anchors.has(anchor), `link ${target}: #${anchor} in ${file}`).to.equal(true);
      }
    });

    it('is linked from the README and from docs/operations.md', () => {
      expect(read('README.md')).to.include('](docs/runbook.md)');
      expect(read('docs/operations.md')).to.include('](runbook.md)');
    });
  });
});
