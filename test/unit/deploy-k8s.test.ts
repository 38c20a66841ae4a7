import { expect } from 'chai';
import { readdirSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { parse as parseYaml } from 'yaml';
import {
  ControllerMetrics,
  createRegistry,
  loadControllerConfig,
  loadGatewayConfig,
  loadWorkerConfig,
  parseDeployments,
  type DeploymentsFile,
} from '@llmux/shared';
import {
  IMAGES,
  K8S_PACKAGES,
  ROOT,
  allowedEnv,
  exists,
  imageName,
  read,
  schemaProblems,
  unknownFieldProblems,
  yamlDocuments,
  type ImageInfo,
  type K8sObject,
} from './deploy-support.js';

/**
 * The Kubernetes manifests (docker/k8s), checked without a cluster: every
 * object of the kustomization, and every manifest in docs/deploy.md, is valid
 * against the schema of its kind generated from the Kubernetes OpenAPI
 * specification (kubernetes-models) or from KEDA's CRD
 * (@kubernetes-models/keda), and has no field its kind lacks (kubectl's
 * strict field validation); the kustomization's files exist; and the
 * objects agree with each other, with the deployments file, with the
 * metrics the controller exports and with what the services read.
 */

const K8S = 'docker/k8s';
const DOC = 'docs/deploy.md';

interface Kustomization {
  kind?: string;
  namespace?: string;
  resources?: string[];
  components?: string[];
  configMapGenerator?: { name: string; files?: string[] }[];
  images?: { name: string; newName?: string; newTag?: string }[];
}

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    secretKeyRef?: { name: string; key: string; optional?: boolean };
    configMapKeyRef?: { name: string; key: string };
    fieldRef?: { fieldPath: string };
  };
}
interface Probe {
  httpGet?: { path: string; port: string | number };
  tcpSocket?: { port: string | number };
}
interface Container {
  name: string;
  image: string;
  env?: EnvVar[];
  envFrom?: { secretRef?: { name: string; optional?: boolean }; configMapRef?: { name: string } }[];
  ports?: { name?: string; containerPort: number }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
  securityContext?: { allowPrivilegeEscalation?: boolean; runAsNonRoot?: boolean; capabilities?: { drop?: string[] } };
  volumeMounts?: { name: string; mountPath: string }[];
}
interface PodSpec {
  containers: Container[];
  terminationGracePeriodSeconds?: number;
  nodeSelector?: Record<string, string>;
  tolerations?: { key?: string; operator?: string; effect?: string }[];
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number };
  automountServiceAccountToken?: boolean;
  volumes?: { name: string; configMap?: { name: string }; secret?: { secretName: string } }[];
}
interface Workload extends K8sObject {
  spec: {
    replicas?: number;
    selector: { matchLabels: Record<string, string> };
    template: { metadata: { labels: Record<string, string> }; spec: PodSpec };
  };
}

/** A kustomization's objects, with its components', and the files it names. */
function build(dir: string): { objects: { file: string; object: K8sObject }[]; kustomizations: string[]; files: string[] } {
  const path = `${dir}/kustomization.yaml`;
  const k = parseYaml(read(path)) as Kustomization;
  const out = { objects: [] as { file: string; object: K8sObject }[], kustomizations: [path], files: [] as string[] };
  for (const r of [...(k.resources ?? []), ...(k.components ?? [])]) {
    const p = normalize(join(dir, r));
    if (exists(`${p}/kustomization.yaml`)) {
      const sub = build(p);
      out.objects.push(...sub.objects);
      out.kustomizations.push(...sub.kustomizations);
      out.files.push(...sub.files);
    } else {
      out.files.push(p);
      for (const object of yamlDocuments(p)) out.objects.push({ file: p, object: object as K8sObject });
    }
  }
  for (const g of k.configMapGenerator ?? []) for (const f of g.files ?? []) out.files.push(normalize(join(dir, f)));
  return out;
}

const root = parseYaml(read(`${K8S}/kustomization.yaml`)) as Kustomization;
const built = build(K8S);
const objects = built.objects.map((o) => o.object);
const byKind = <T extends K8sObject>(kind: string) => objects.filter((o) => o.kind === kind) as T[];
const deploymentsOf = (): DeploymentsFile => {
  const generator = root.configMapGenerator!.find((g) => g.name === 'llmux-deployments')!;
  return parseDeployments(JSON.parse(read(`${K8S}/${generator.files![0]!}`)), 'docker/k8s deployments');
};
const workloads = byKind<Workload>('Deployment');
const containersOf = (w: Workload) => w.spec.template.spec.containers;
const infoOf = (c: Container): ImageInfo => IMAGES[imageName(c.image)]!;
const componentOf = (w: Workload) => infoOf(containersOf(w)[0]!).component;
const envValue = (c: Container, name: string) => c.env?.find((e) => e.name === name)?.value;
const portNumber = (c: Container, port: string | number) =>
  typeof port === 'number' ? port : c.ports?.find((p) => p.name === port)?.containerPort;
/** Kubernetes quantities in bytes (Mi, Gi) or cores (m). */
const quantity = (q: string | number): number => {
  const m = /^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti)?$/.exec(String(q));
  if (!m) throw new Error(`quantity ${q}`);
  const unit = { m: 0.001, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 }[m[2] ?? ''] ?? 1;
  return Number(m[1]) * unit;
};
/** YAML blocks of docs/deploy.md that are Kubernetes objects. */
const docObjects = (): K8sObject[] =>
  [...read(DOC).matchAll(/```yaml\n([\s\S]*?)```/g)]
    .flatMap((m) => [...m[1]!.split(/^---$/m)].map((d) => parseYaml(d) as unknown))
    .filter((o): o is K8sObject => !!o && typeof o === 'object' && 'apiVersion' in o && 'kind' in o);
/** The PodDisruptionBudget whose selector picks a workload's pods. */
const pdbFor = (w: Workload) =>
  objects
    .filter((o) => o.kind === 'PodDisruptionBudget')
    .find((p) =>
      Object.entries((p.spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels).every(
        ([k, v]) => w.spec.template.metadata.labels[k] === v,
      ),
    );
const DEFAULT_DRAIN_MS = 30_000;
/** The worker agent's shutdown steps after its drain, at most (docs/configuration.md, fixed values). */
const WORKER_SHUTDOWN_S = 20;

describe(`Kubernetes manifests (${K8S})`, () => {
  describe('kustomization', () => {
    it('names files that exist, and every manifest in the folder is in it', () => {
      for (const f of built.files) expect(exists(f), f).to.equal(true);
      const onDisk = (dir: string): string[] =>
        readdirSync(`${ROOT}${dir}`, { withFileTypes: true }).flatMap((e) =>
          e.isDirectory() ? (e.name === 'helm' ? [] : onDisk(`${dir}/${e.name}`)) : [`${dir}/${e.name}`],
        );
      const manifests = onDisk(K8S).filter((f) => !built.kustomizations.includes(f));
      expect(manifests).to.have.members(built.files);
    });

    it('puts everything in the llmux namespace, which it creates', () => {
      expect(root.namespace).to.equal('llmux');
      expect(byKind('Namespace').map((n) => n.metadata?.name)).to.deep.equal(['llmux']);
    });

    it('enables KEDA as a component, and sets the tag of every llmux image it uses', () => {
      const keda = parseYaml(read(`${K8S}/keda/kustomization.yaml`)) as Kustomization;
      expect(keda.kind).to.equal('Component');
      expect(root.components).to.include('keda');
      const used = new Set(workloads.flatMap((w) => containersOf(w).map((c) => imageName(c.image))));
      expect((root.images ?? []).map((i) => i.name)).to.have.members([...used]);
      for (const image of used) expect(IMAGES[image], `${image} is built by docker/`).to.not.equal(undefined);
    });
  });

  describe(`every object is valid against its Kubernetes or KEDA schema (${K8S_PACKAGES})`, () => {
    for (const { file, object } of built.objects) {
      it(`${file}: ${object.kind} ${object.metadata?.name ?? ''}`, async () => {
        expect(await schemaProblems(object)).to.deep.equal([]);
      });
    }

    it('and has no field its kind lacks', function () {
      this.timeout(60_000); // a TypeScript program over the packages' declarations
      const problems = unknownFieldProblems(objects);
      const named = objects.map((o, i) => ({ object: `${o.kind} ${o.metadata?.name}`, problems: problems[i] }));
      expect(named.filter((n) => n.problems!.length > 0)).to.deep.equal([]);
    });
  });

  describe(`the manifests of ${DOC}`, () => {
    const docs = docObjects();
    it('include the HorizontalPodAutoscaler alternative to KEDA', () => {
      expect(docs.map((o) => `${o.apiVersion} ${o.kind}`)).to.include('autoscaling/v2 HorizontalPodAutoscaler');
    });
    it('are valid and have no unknown field', async function () {
      this.timeout(60_000);
      for (const o of docs) expect(await schemaProblems(o), `${o.kind} ${o.metadata?.name}`).to.deep.equal([]);
      expect(unknownFieldProblems(docs).flat()).to.deep.equal([]);
    });
  });

  describe('the checks themselves', () => {
    const gateway = workloads.find((w) => componentOf(w) === 'gateway')!;

    it('a wrong type and a missing required field are rejected by the schema', async () => {
      const broken = structuredClone(gateway);
      (broken.spec as Record<string, unknown>).replicas = 'two';
      delete (broken.spec.template.spec.containers[0] as Partial<Container>).name;
      const problems = (await schemaProblems(broken)).join(' ');
      expect(problems).to.match(/replicas must be integer/);
      expect(problems).to.match(/required property 'name'|required property name/);
    });

    it('a misspelt field is rejected by the field check', function () {
      this.timeout(60_000);
      const broken = structuredClone(gateway);
      const c = broken.spec.template.spec.containers[0] as unknown as Record<string, unknown>;
      c.readinesProbe = c.readinessProbe;
      delete c.readinessProbe;
      const [problems] = unknownFieldProblems([broken]);
      expect(problems!.join(' ')).to.include('readinesProbe');
    });

    it('a KEDA ScaledObject without a scale target, or with an unknown apiVersion, is rejected', async () => {
      const so = structuredClone(byKind('ScaledObject')[0]!);
      delete (so.spec as Record<string, unknown>).scaleTargetRef;
      expect((await schemaProblems(so)).join(' ')).to.include('scaleTargetRef');
      expect(await schemaProblems({ apiVersion: 'example.com/v1', kind: 'Thing' })).to.have.length(1);
    });
  });

  describe('workloads', () => {
    it('are the gateway, the controller and GPU worker agents, on the llmux images', () => {
      expect(workloads.map(componentOf).sort()).to.deep.equal(['controller', 'gateway', 'worker']);
      expect(infoOf(containersOf(workloads.find((w) => componentOf(w) === 'worker')!)[0]!).vllm).to.equal(true);
    });

    it('select their own pods, and Services select pods of a workload through a named port it has', () => {
      for (const w of workloads) {
        for (const [k, v] of Object.entries(w.spec.selector.matchLabels)) {
          expect(w.spec.template.metadata.labels[k], `${w.metadata?.name}: ${k}`).to.equal(v);
        }
      }
      for (const s of byKind('Service')) {
        const spec = s.spec as { selector: Record<string, string>; ports: { targetPort: string }[] };
        const w = workloads.find((x) =>
          Object.entries(spec.selector).every(([k, v]) => x.spec.template.metadata.labels[k] === v),
        );
        expect(w, `Service ${s.metadata?.name} selects a workload`).to.not.equal(undefined);
        for (const p of spec.ports) {
          expect(
            containersOf(w!).flatMap((c) => (c.ports ?? []).map((x) => x.name)),
            `${s.metadata?.name} ${p.targetPort}`,
          ).to.include(p.targetPort);
        }
      }
    });

    it('run as non-root without privilege escalation, with CPU and memory requests and limits', () => {
      for (const w of workloads) {
        const pod = w.spec.template.spec;
        expect(pod.securityContext?.runAsNonRoot, `${w.metadata?.name} runAsNonRoot`).to.equal(true);
        expect(pod.automountServiceAccountToken, `${w.metadata?.name}: no API token`).to.equal(false);
        for (const c of pod.containers) {
          expect(c.securityContext?.allowPrivilegeEscalation, `${c.name}`).to.equal(false);
          expect(c.securityContext?.capabilities?.drop, `${c.name}`).to.include('ALL');
          for (const r of ['cpu', 'memory']) {
            expect(c.resources?.requests?.[r], `${c.name} requests.${r}`).to.not.equal(undefined);
            expect(c.resources?.limits?.[r], `${c.name} limits.${r}`).to.not.equal(undefined);
            expect(quantity(c.resources!.limits![r]!), `${c.name} ${r}`).to.be.at.least(quantity(c.resources!.requests![r]!));
          }
        }
      }
    });

    it('set only environment variables their service reads, with values it accepts', () => {
      const loaders = { gateway: loadGatewayConfig, worker: loadWorkerConfig, controller: loadControllerConfig };
      for (const w of workloads) {
        for (const c of containersOf(w)) {
          const allowed = allowedEnv(infoOf(c));
          for (const e of c.env ?? []) expect(allowed.has(e.name), `${w.metadata?.name}: ${e.name}`).to.equal(true);
          const literal = Object.fromEntries((c.env ?? []).filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]));
          expect(() => loaders[infoOf(c).component](literal), `${w.metadata?.name}: its environment`).to.not.throw();
          // Redis settings come from a Secret (REDIS_URL, and Sentinel or TLS variables).
          expect(c.envFrom?.map((f) => f.secretRef?.name)).to.include('llmux-redis');
          expect(
            c.env?.some((e) => e.name.startsWith('REDIS_')),
            'no Redis setting outside the Secret',
          ).to.equal(false);
        }
      }
    });

    it('reference Secrets that docs/deploy.md says how to create, with the keys they use', () => {
      // Shell commands with their continuation lines joined.
      const doc = read(DOC).replace(/\\\n/g, ' ');
      const refs = workloads.flatMap((w) =>
        containersOf(w).flatMap((c) => [
          ...(c.env ?? []).flatMap((e) => (e.valueFrom?.secretKeyRef ? [e.valueFrom.secretKeyRef] : [])),
          ...(c.envFrom ?? []).flatMap((f) => (f.secretRef ? [{ ...f.secretRef, key: null }] : [])),
        ]),
      );
      expect(refs.map((r) => r.name)).to.include.members(['llmux-redis', 'llmux-admin']);
      for (const r of refs) {
        const create = new RegExp(`kubectl create secret generic ${r.name}\\b[^\\n]*`).exec(doc)?.[0];
        expect(create, `${DOC}: kubectl create secret generic ${r.name}`).to.not.equal(undefined);
        if (r.key) expect(create, `${r.name} has ${r.key}`).to.include(`--from-literal=${r.key}=`);
      }
    });

    it('the Secret keys docs/deploy.md puts in llmux-redis are variables every service reads', () => {
      // Shell commands with their continuation lines joined.
      const doc = read(DOC).replace(/\\\n/g, ' ');
      const creates = [...doc.matchAll(/kubectl create secret generic llmux-redis\b[^\n]*/g)].map((m) => m[0]);
      expect(creates).to.have.length.above(0);
      for (const create of creates) {
        for (const [, key] of create.matchAll(/--from-literal=([A-Z_][A-Z0-9_]*)=/g)) {
          for (const c of workloads.flatMap(containersOf))
            expect(allowedEnv(infoOf(c)).has(key!), `${key} for ${c.name}`).to.equal(true);
        }
      }
    });
  });

  describe('the gateway', () => {
    const w = workloads.find((x) => componentOf(x) === 'gateway')!;
    const c = containersOf(w)[0]!;

    it('listens on 0.0.0.0 at PORT, probed on /healthz there, and requires API keys', () => {
      expect(envValue(c, 'HOST')).to.equal('0.0.0.0');
      const port = Number(envValue(c, 'PORT'));
      for (const p of [c.readinessProbe!, c.livenessProbe!]) {
        expect(p.httpGet?.path).to.equal('/healthz');
        expect(portNumber(c, p.httpGet!.port)).to.equal(port);
      }
      expect(envValue(c, 'AUTH')).to.equal('required');
    });

    it('is scaled by a HorizontalPodAutoscaler (so it sets no replicas) from two pods up, with a PodDisruptionBudget', () => {
      expect(w.spec.replicas).to.equal(undefined);
      const hpa = byKind('HorizontalPodAutoscaler').find(
        (h) => (h.spec as { scaleTargetRef: { name: string } }).scaleTargetRef.name === w.metadata?.name,
      );
      expect(hpa, 'HorizontalPodAutoscaler').to.not.equal(undefined);
      expect((hpa!.spec as { minReplicas: number }).minReplicas).to.be.at.least(2);
      expect((pdbFor(w)?.spec as { minAvailable?: number } | undefined)?.minAvailable).to.equal(1);
    });

    it('holds at most MAX_OPEN_REQUESTS x MAX_BUFFERED_BYTES for slow clients, within its memory limit', () => {
      const held = Number(envValue(c, 'MAX_OPEN_REQUESTS')) * Number(envValue(c, 'MAX_BUFFERED_BYTES'));
      expect(held).to.be.above(0);
      expect(held).to.be.below(quantity(c.resources!.limits!.memory!));
    });

    it('leaves the endpoints before SIGTERM, and has time to drain', () => {
      const sleep = c.lifecycle?.preStop?.exec?.command;
      expect(sleep?.[0]).to.equal('sleep');
      const drain = Number(envValue(c, 'DRAIN_TIMEOUT_MS') ?? DEFAULT_DRAIN_MS) / 1000;
      expect(w.spec.template.spec.terminationGracePeriodSeconds).to.be.above(Number(sleep![1]) + drain);
    });
  });

  describe('the controller', () => {
    const w = workloads.find((x) => componentOf(x) === 'controller')!;
    const c = containersOf(w)[0]!;

    it('runs two replicas in cluster mode, each with its pod name as id, and a PodDisruptionBudget', () => {
      expect(w.spec.replicas).to.equal(2);
      expect(envValue(c, 'CONTROLLER_MODE')).to.equal('cluster');
      expect(c.env?.find((e) => e.name === 'CONTROLLER_ID')?.valueFrom?.fieldRef?.fieldPath).to.equal('metadata.name');
      expect((pdbFor(w)?.spec as { minAvailable?: number } | undefined)?.minAvailable).to.equal(1);
    });

    it('reads the deployments file from the generated ConfigMap, which is valid against the deployments schema', () => {
      const file = envValue(c, 'DEPLOYMENTS_FILE')!;
      const mount = c.volumeMounts?.find((m) => m.mountPath === dirname(file));
      expect(mount, `a volume at ${dirname(file)}`).to.not.equal(undefined);
      const volume = w.spec.template.spec.volumes?.find((v) => v.name === mount!.name);
      const generator = root.configMapGenerator?.find((g) => g.name === volume?.configMap?.name);
      expect(generator, 'from configMapGenerator').to.not.equal(undefined);
      expect(generator!.files!.map((f) => f.split('/').pop())).to.include(file.split('/').pop());
      expect(() => deploymentsOf()).to.not.throw();
    });

    it('has an admin token from a Secret, for the API and for llmctl in the pod', () => {
      for (const name of ['ADMIN_TOKEN', 'LLMUX_ADMIN_TOKEN']) {
        const ref = c.env?.find((e) => e.name === name)?.valueFrom?.secretKeyRef;
        expect(ref?.name, name).to.equal('llmux-admin');
        expect(ref?.optional ?? false, `${name} is required`).to.equal(false);
      }
    });

    it('serves /metrics on METRICS_PORT at 0.0.0.0 (for Prometheus and KEDA), through a Service', () => {
      expect(envValue(c, 'METRICS_HOST')).to.equal('0.0.0.0');
      const port = Number(envValue(c, 'METRICS_PORT'));
      expect(portNumber(c, 'metrics')).to.equal(port);
      expect(portNumber(c, c.livenessProbe!.httpGet!.port)).to.equal(port);
      expect(w.spec.template.metadata.labels).to.be.an('object');
      const annotations = (w.spec.template as { metadata: { annotations?: Record<string, string> } }).metadata.annotations;
      expect(annotations?.['prometheus.io/port']).to.equal(String(port));
    });
  });

  describe('the GPU workers', () => {
    const workers = workloads.filter((x) => componentOf(x) === 'worker');
    const deployments = deploymentsOf().models;

    for (const w of workers) {
      const c = containersOf(w)[0]!;
      const pod = w.spec.template.spec;
      const models = (envValue(c, 'WORKER_MODELS') ?? '').split(',');
      describe(`${w.metadata?.name}`, () => {
        it('serves vLLM models of the deployments file', () => {
          expect(models).to.have.length(1);
          const d = deployments.find((x) => x.name === models[0]);
          expect(d, `${models[0]} in the deployments file`).to.not.equal(undefined);
          expect(d!.engine.type).to.equal('vllm');
        });

        it('asks for one GPU on GPU nodes, with their taint tolerated', () => {
          expect(Number(c.resources?.limits?.['nvidia.com/gpu'])).to.equal(1);
          expect(c.resources?.requests?.['nvidia.com/gpu'] ?? 1).to.equal(c.resources?.limits?.['nvidia.com/gpu']);
          expect(pod.nodeSelector, 'nodeSelector').to.not.equal(undefined);
          expect(pod.tolerations?.some((t) => t.key === 'nvidia.com/gpu' && t.effect === 'NoSchedule')).to.equal(true);
        });

        it("is ready on the agent's /healthz at METRICS_PORT (0.0.0.0), with its pod name as worker id", () => {
          expect(envValue(c, 'METRICS_HOST')).to.equal('0.0.0.0');
          const port = Number(envValue(c, 'METRICS_PORT'));
          expect(c.readinessProbe?.httpGet?.path).to.equal('/healthz');
          expect(portNumber(c, c.readinessProbe!.httpGet!.port)).to.equal(port);
          // Liveness must not use /healthz: it answers 503 while a model loads and while draining.
          expect(c.livenessProbe?.httpGet?.path).to.equal('/metrics');
          expect(c.env?.find((e) => e.name === 'WORKER_ID')?.valueFrom?.fieldRef?.fieldPath).to.equal('metadata.name');
        });

        it("gets the time to drain on SIGTERM: DRAIN_TIMEOUT_MS plus the agent's shutdown steps", () => {
          const drain = Number(envValue(c, 'DRAIN_TIMEOUT_MS') ?? DEFAULT_DRAIN_MS) / 1000;
          const preStop = c.lifecycle?.preStop?.exec?.command;
          const sleep = preStop?.[0] === 'sleep' ? Number(preStop[1]) : 0;
          expect(pod.terminationGracePeriodSeconds).to.be.at.least(sleep + drain + WORKER_SHUTDOWN_S);
        });

        it('has a shared-memory volume for vLLM and a volume for the weights', () => {
          const mounts = new Map((c.volumeMounts ?? []).map((m) => [m.mountPath, m.name]));
          expect(mounts.has('/dev/shm')).to.equal(true);
          expect(mounts.has('/models')).to.equal(true);
        });

        it("is scaled by KEDA to the controller's desired replicas of its model, within the model's replicas", () => {
          expect(w.spec.replicas, 'no replicas: KEDA owns the count').to.equal(undefined);
          const so = byKind('ScaledObject').find(
            (s) => (s.spec as { scaleTargetRef: { name: string } }).scaleTargetRef.name === w.metadata?.name,
          );
          expect(so, 'a ScaledObject').to.not.equal(undefined);
          const spec = so!.spec as {
            minReplicaCount: number;
            maxReplicaCount: number;
            triggers: { type: string; metricType?: string; metadata: Record<string, string> }[];
          };
          const d = deployments.find((x) => x.name === models[0])!;
          expect(spec.minReplicaCount).to.equal(d.replicas.min);
          expect(spec.maxReplicaCount).to.equal(d.replicas.max);
          expect(spec.triggers).to.have.length(1);
          const t = spec.triggers[0]!;
          expect(t.type).to.equal('prometheus');
          expect(t.metricType ?? 'AverageValue').to.equal('AverageValue');
          expect(t.metadata.threshold).to.equal('1');
          const q = /^max\((\w+)\{model="([^"]+)"\}\)$/.exec(t.metadata.query!);
          expect(q, `query ${t.metadata.query}`).to.not.equal(null);
          expect(q![2]).to.equal(d.name);
          // The gauge the controller exports, labelled by model.
          const registry = createRegistry('controller', 'deploy-test');
          new ControllerMetrics(registry);
          const metric = registry.getSingleMetric(q![1]!) as unknown as { labelNames?: string[] } | undefined;
          registry.clear();
          expect(metric, `${q![1]} is exported by the controller`).to.not.equal(undefined);
          expect(q![1]).to.equal('llmux_desired_replicas');
          expect(metric!.labelNames).to.include('model');
        });

        it('has a PodDisruptionBudget that lets one pod go at a time', () => {
          expect((pdbFor(w)?.spec as { maxUnavailable?: number } | undefined)?.maxUnavailable).to.equal(1);
        });
      });
    }
  });

  describe('Redis (helm/redis-values.yaml for bitnami/redis)', () => {
    const values = parseYaml(read(`${K8S}/helm/redis-values.yaml`)) as {
      architecture: string;
      sentinel: { enabled: boolean };
      auth: { enabled: boolean };
      replica: { persistence: { enabled: boolean }; resources: { limits: { memory: string } } };
      commonConfiguration: string;
    };
    const config = new Map(
      values.commonConfiguration
        .split('\n')
        .map((l) => l.trim().split(/\s+/))
        .map(([k, ...v]) => [k!, v.join(' ')]),
    );

    it('runs with Sentinel, a password, persistence, AOF and noeviction', () => {
      expect(values.architecture).to.equal('replication');
      expect(values.sentinel.enabled).to.equal(true);
      expect(values.auth.enabled).to.equal(true);
      expect(values.replica.persistence.enabled).to.equal(true);
      expect(config.get('appendonly')).to.equal('yes');
      expect(config.get('maxmemory-policy')).to.equal('noeviction');
    });

    it('keeps maxmemory below the memory limit', () => {
      const maxmemory = /^(\d+)mb$/.exec(config.get('maxmemory') ?? '');
      expect(maxmemory).to.not.equal(null);
      expect(Number(maxmemory![1]) * 2 ** 20).to.be.below(quantity(values.replica.resources.limits.memory));
    });

    it(`is installed with the command of ${DOC}`, () => {
      expect(read(DOC)).to.include(`-f ${K8S}/helm/redis-values.yaml`);
    });
  });
});
