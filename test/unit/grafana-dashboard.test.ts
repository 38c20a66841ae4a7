import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { GRAFANA_VARIABLES, exportedMetrics, problemsOf, readPromQL, type Exported } from '../helpers/promql.js';

/**
 * The Grafana dashboard and the Prometheus scrape config in docker/, checked
 * against the metrics contract (shared/src/metrics): every metric a panel
 * queries must be one the services export, with the labels it has, and every
 * latency histogram must be on the dashboard. No servers: the names come from
 * the real metric classes on fresh registries. The PromQL reader and checker
 * are in test/helpers/promql.ts.
 */

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const read = (path: string) => readFileSync(`${ROOT}${path}`, 'utf8');

const DASHBOARD = 'docker/grafana/dashboards/llmux.json';
const PROMETHEUS = 'docker/prometheus/prometheus.yml';
const DATASOURCES = 'docker/grafana/provisioning/datasources/prometheus.yaml';
const PROVIDERS = 'docker/grafana/provisioning/dashboards/llmux.yaml';

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
