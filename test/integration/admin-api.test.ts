import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { pino } from 'pino';
import { makeCerts, type TestCerts } from '../helpers/tls.js';
import {
  ConfigError,
  InvalidRequestError,
  parseDeployments,
  TENANT_NAME,
  type ApiKeyRecord,
  type CreatedApiKey,
  type Deployment,
  type NewApiKey,
} from '@llmux/shared';
import { freePort } from '@llmux/controller';
import type * as ApiModule from '../../controller/src/api.js';
import type * as ServerModule from '../../controller/src/admin/server.js';
import type * as ClientModule from '../../controller/src/admin/client.js';
import type { ApplyResult, ClusterEvent, ControllerApi, ModelScale, ProcessInfo, WorkerInfo } from '../../controller/src/api.js';

/**
 * The admin API end to end over real gRPC on loopback: the server, the typed
 * client and the llmctl CLI (as a child process). The controller behind the
 * server is StandInController below, a small in-memory ControllerApi standing
 * in for the real controller (built separately); nothing of the gRPC layer,
 * the client or the CLI is mocked.
 */

const require = createRequire(import.meta.url);
const CONTROLLER_DIST = dirname(require.resolve('@llmux/controller'));
const REPO = join(CONTROLLER_DIST, '..', '..');
const LLMCTL = join(CONTROLLER_DIST, 'cli', 'main.js');
const load = async <T>(rel: string) => (await import(pathToFileURL(join(CONTROLLER_DIST, rel)).href)) as T;
// The admin modules are not exported by @llmux/controller's index; load the compiled files directly.
const { NotLeaderError, UnknownTargetError } = await load<typeof ApiModule>('api.js');
const { startAdminServer } = await load<typeof ServerModule>('admin/server.js');
const { AdminClient, AdminCallError } = await load<typeof ClientModule>('admin/client.js');
type AdminServer = ServerModule.AdminServer;
type AdminClientT = ClientModule.AdminClient;

const execFileP = promisify(execFile);

// grpc status codes (from @grpc/grpc-js's status enum).
const Status = {
  OK: 0,
  CANCELLED: 1,
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  FAILED_PRECONDITION: 9,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

const LEADER_ADDRESS = '10.0.0.2:50051';

const DEPLOYMENTS_DOC = {
  models: [
    { name: 'alpha', aliases: ['a'], engine: { type: 'sim', ttftMs: 5 }, replicas: { min: 1, max: 4 } },
    { name: 'beta', engine: { type: 'openai', baseUrl: 'http://127.0.0.1:9/v1' }, concurrency: 2 },
  ],
};

const WORKERS: WorkerInfo[] = [
  {
    id: 'w1',
    alive: true,
    status: {
      id: 'w1',
      host: 'node-a',
      pid: 101,
      state: 'ready',
      models: ['alpha', 'beta'],
      engines: { alpha: 'ready', beta: 'starting' },
      capacity: 8,
      inflight: 3,
      busySlotMs: 12345.5,
      startedAt: 1_700_000_000_000,
      at: 1_700_000_001_234,
      metricsPort: 9464,
    },
    process: { pid: 101, state: 'ready', restarts: 2, lastExit: 'code 1' },
  },
  {
    id: 'w2-with-a-long-id',
    alive: false,
    status: null,
    process: { pid: null, state: 'backoff', restarts: 5, lastExit: 'signal SIGKILL' },
  },
  {
    id: 'w3',
    alive: true,
    status: {
      id: 'w3',
      host: 'node-b',
      pid: 7,
      state: 'draining',
      models: ['alpha'],
      engines: { alpha: 'ready' },
      capacity: 16,
      inflight: 12,
      busySlotMs: 0,
      startedAt: 1_700_000_000_500,
      at: 1_700_000_002_000,
    },
    process: null,
  },
];

/**
 * An in-memory ControllerApi with the contract's behaviour: changes refused
 * with NotLeaderError when not the leader, unknown targets refused with
 * UnknownTargetError, documents validated with parseDeployments (ConfigError),
 * and a subscriber list whose size tests can wait on.
 */
class StandInController implements ControllerApi {
  leading = true;
  leaderInfo: { id: string; adminAddress: string | null } | null = { id: 'ctl-a', adminAddress: LEADER_ADDRESS };
  deployments: Deployment[] = parseDeployments(DEPLOYMENTS_DOC).models;
  workers: WorkerInfo[] = structuredClone(WORKERS);
  scales: ModelScale[] = [
    { model: 'alpha', desired: 2, live: 1, min: 1, max: 4, queued: 7, pending: 3 },
    { model: 'beta', desired: 1, live: 1, min: 1, max: 1, queued: 0, pending: 0 },
  ];
  processes: ProcessInfo[] = [
    {
      kind: 'gateway',
      id: 'ctl-a-gateway',
      model: null,
      pid: 99,
      state: 'ready',
      restarts: 1,
      lastExit: 'health check failed (3 x timeout)',
      lastExitAt: 1_700_000_000_900,
      startedAt: 1_700_000_001_000,
      uptimeMs: 3_723_000,
    },
    {
      kind: 'worker',
      id: 'ctl-a-alpha-0',
      model: 'alpha',
      pid: null,
      state: 'backoff',
      restarts: 3,
      lastExit: 'signal SIGKILL',
      lastExitAt: 1_700_000_002_000,
      startedAt: null,
      uptimeMs: null,
    },
  ];
  drained: string[] = [];
  restarted: string[] = [];
  apiKeys: ApiKeyRecord[] = [];
  /** The options each createApiKey received, as the server decoded them. */
  keyRequests: NewApiKey[] = [];
  /** Set to make the next listWorkers fail with this error. */
  failListWorkers: Error | null = null;
  private readonly subscribers = new Set<(ev: ClusterEvent) => void>();
  private readonly changes = new EventEmitter();

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /** Resolves once the number of watch subscribers is `n` (now or later). */
  subscribersReach(n: number): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (this.subscribers.size !== n) return;
        this.changes.off('change', check);
        resolve();
      };
      this.changes.on('change', check);
      check();
    });
  }

  emit(ev: ClusterEvent): void {
    for (const fn of [...this.subscribers]) fn(ev);
  }

  private requireLeader(): void {
    if (!this.leading) throw new NotLeaderError(this.leaderInfo?.adminAddress ?? null);
  }

  private worker(id: string): WorkerInfo {
    const w = this.workers.find((x) => x.id === id);
    if (!w) throw new UnknownTargetError(`no worker "${id}"`);
    return w;
  }

  isLeader(): boolean {
    return this.leading;
  }
  async leader() {
    return this.leaderInfo;
  }
  async listDeployments() {
    return this.deployments;
  }
  async listWorkers() {
    if (this.failListWorkers) {
      const err = this.failListWorkers;
      this.failListWorkers = null;
      throw err;
    }
    return this.workers;
  }
  async listProcesses() {
    return this.processes;
  }
  async listScale() {
    return this.scales;
  }
  async applyDeployments(doc: unknown): Promise<ApplyResult> {
    this.requireLeader();
    const next = parseDeployments(doc).models;
    const before = new Map(this.deployments.map((d) => [d.name, JSON.stringify(d)]));
    const after = new Map(next.map((d) => [d.name, JSON.stringify(d)]));
    const result: ApplyResult = {
      added: [...after.keys()].filter((n) => !before.has(n)),
      removed: [...before.keys()].filter((n) => !after.has(n)),
      changed: [...after.keys()].filter((n) => before.has(n) && before.get(n) !== after.get(n)),
    };
    this.deployments = next;
    return result;
  }
  async scale(model: string, replicas: number): Promise<ModelScale> {
    this.requireLeader();
    const s = this.scales.find((x) => x.model === model);
    if (!s) throw new UnknownTargetError(`no model "${model}"`);
    if (replicas < s.min || replicas > s.max) {
      throw new ConfigError(`replicas: ${replicas} is outside ${model}'s range ${s.min}..${s.max}`);
    }
    s.desired = replicas;
    return s;
  }
  async drainWorker(id: string): Promise<void> {
    this.requireLeader();
    this.worker(id);
    this.drained.push(id);
  }
  async restartWorker(id: string): Promise<void> {
    this.requireLeader();
    this.worker(id);
    this.restarted.push(id);
  }
  async createApiKey(opts: NewApiKey): Promise<CreatedApiKey> {
    this.requireLeader();
    if (!TENANT_NAME.test(opts.tenant)) throw new InvalidRequestError(`tenant is invalid: ${opts.tenant}`, 'tenant');
    this.keyRequests.push(opts);
    const n = this.apiKeys.length;
    const record: ApiKeyRecord = {
      id: `key_${String(n).padStart(12, '0')}`,
      tenant: opts.tenant,
      name: opts.name ?? '',
      rpm: opts.rpm ?? null,
      tpm: opts.tpm ?? null,
      weight: opts.weight ?? 1,
      maxPriority: opts.maxPriority ?? 'normal',
      createdAt: 1_700_000_000_000 + n,
    };
    this.apiKeys.push(record);
    return { id: record.id, key: `sk-llmux-${String(n).padStart(32, 'k')}`, record };
  }
  async listApiKeys() {
    return this.apiKeys;
  }
  async revokeApiKey(id: string): Promise<void> {
    this.requireLeader();
    const before = this.apiKeys.length;
    this.apiKeys = this.apiKeys.filter((k) => k.id !== id);
    if (this.apiKeys.length === before) throw new UnknownTargetError(`no API key with id "${id}"`);
  }
  watch(onEvent: (ev: ClusterEvent) => void): () => void {
    this.subscribers.add(onEvent);
    this.changes.emit('change');
    return () => {
      this.subscribers.delete(onEvent);
      this.changes.emit('change');
    };
  }
}

/** A pino logger whose lines the test can read. */
function captureLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { logger, lines };
}

/** The rejection of `p`, failing if it resolves. */
async function callError(p: Promise<unknown>): Promise<ClientModule.AdminCallError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(AdminCallError);
    return err as ClientModule.AdminCallError;
  }
  throw new Error('expected the call to fail');
}

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The process environment without llmctl's own variables, so the host's settings do not leak in. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('LLMUX_ADMIN_')) delete env[k];
  return { ...env, ...extra };
}

/** Runs `node controller/dist/cli/main.js <args>` to its end. */
function llmctl(args: string[], opts: { env?: NodeJS.ProcessEnv; stdin?: string } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [LLMCTL, ...args], { env: cleanEnv(opts.env), stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(opts.stdin ?? '');
  });
}

/** A port nothing listens on: bound, then released. */
async function closedPort(): Promise<number> {
  return freePort();
}

describe('admin API and llmctl', function () {
  let api: StandInController;
  let server: AdminServer;
  let client: AdminClientT;
  let logs: ReturnType<typeof captureLogger>;
  const extra: { close(): unknown }[] = [];

  beforeEach(async () => {
    api = new StandInController();
    logs = captureLogger();
    server = await startAdminServer(api, { host: '127.0.0.1', port: 0, logger: logs.logger });
    client = new AdminClient({ address: server.address });
  });

  afterEach(async () => {
    client.close();
    for (const c of extra.splice(0)) await c.close();
    await server.close();
  });

  describe('every rpc round-trips its data', () => {
    it('binds a free port when asked for 0', () => {
      expect(server.port).to.be.greaterThan(0);
      expect(server.address).to.equal(`127.0.0.1:${server.port}`);
    });

    it('ListDeployments', async () => {
      const ds = await client.listDeployments();
      expect(ds).to.deep.equal(api.deployments);
      expect(ds[0]!.engine).to.deep.include({ type: 'sim', ttftMs: 5 });
    });

    it('ListWorkers, with and without a heartbeat or a process, sorted by id', async () => {
      api.workers.reverse();
      expect(await client.listWorkers()).to.deep.equal(WORKERS);
    });

    it('ListScale', async () => {
      expect(await client.listScale()).to.deep.equal(api.scales);
    });

    it('ListProcesses, running and not', async () => {
      expect(await client.listProcesses()).to.deep.equal(api.processes);
    });

    it('ApplyDeployments, from an object and from JSON text', async () => {
      const doc = {
        models: [
          { name: 'alpha', aliases: ['a'], engine: { type: 'sim', ttftMs: 9 }, replicas: { min: 1, max: 4 } },
          { name: 'gamma', engine: { type: 'sim' } },
        ],
      };
      expect(await client.applyDeployments(doc)).to.deep.equal({ added: ['gamma'], removed: ['beta'], changed: ['alpha'] });
      expect(api.deployments.map((d) => d.name)).to.deep.equal(['alpha', 'gamma']);
      expect(await client.applyDeployments(JSON.stringify(doc))).to.deep.equal({ added: [], removed: [], changed: [] });
    });

    it('Scale', async () => {
      const s = await client.scale('alpha', 3);
      expect(s).to.deep.equal({ model: 'alpha', desired: 3, live: 1, min: 1, max: 4, queued: 7, pending: 3 });
      expect(api.scales[0]!.desired).to.equal(3);
    });

    it('DrainWorker and RestartWorker', async () => {
      await client.drainWorker('w1');
      await client.restartWorker('w3');
      expect(api.drained).to.deep.equal(['w1']);
      expect(api.restarted).to.deep.equal(['w3']);
    });

    it('CreateApiKey, ListApiKeys and RevokeApiKey; absent options stay absent for the controller to default', async () => {
      const full = await client.createApiKey({
        tenant: 'acme',
        name: 'ci',
        rpm: 60,
        tpm: 90_000,
        weight: 2.5,
        maxPriority: 'high',
      });
      expect(full).to.deep.equal({
        id: 'key_000000000000',
        key: `sk-llmux-${'k'.repeat(31)}0`,
        record: {
          id: 'key_000000000000',
          tenant: 'acme',
          name: 'ci',
          rpm: 60,
          tpm: 90_000,
          weight: 2.5,
          maxPriority: 'high',
          createdAt: 1_700_000_000_000,
        },
      });
      const bare = await client.createApiKey({ tenant: 'beta' });
      expect(api.keyRequests).to.deep.equal([
        { tenant: 'acme', name: 'ci', rpm: 60, tpm: 90_000, weight: 2.5, maxPriority: 'high' },
        { tenant: 'beta', name: '', rpm: null, tpm: null, weight: undefined, maxPriority: undefined },
      ]);
      expect(bare.record).to.deep.include({ rpm: null, tpm: null, weight: 1, maxPriority: 'normal' });
      expect(await client.listApiKeys()).to.deep.equal([full.record, bare.record]);
      await client.revokeApiKey(full.id);
      expect(await client.listApiKeys()).to.deep.equal([bare.record]);
    });

    it('GetLeader: a leader, a standby, no leader', async () => {
      expect(await client.getLeader()).to.deep.equal({
        leader: { id: 'ctl-a', adminAddress: LEADER_ADDRESS },
        answeredByLeader: true,
      });
      api.leading = false;
      api.leaderInfo = { id: 'ctl-b', adminAddress: null };
      expect(await client.getLeader()).to.deep.equal({ leader: { id: 'ctl-b', adminAddress: null }, answeredByLeader: false });
      api.leaderInfo = null;
      expect(await client.getLeader()).to.deep.equal({ leader: null, answeredByLeader: false });
    });
  });

  describe('errors', () => {
    it('NotLeaderError -> FAILED_PRECONDITION naming the leader address', async () => {
      api.leading = false;
      for (const p of [client.scale('alpha', 2), client.drainWorker('w1'), client.applyDeployments(DEPLOYMENTS_DOC)]) {
        const err = await callError(p);
        expect(err.code).to.equal(Status.FAILED_PRECONDITION);
        expect(err.details).to.equal(`not the leader; send changes to the leader at ${LEADER_ADDRESS}`);
        expect(err.leaderAddress).to.equal(LEADER_ADDRESS);
      }
      expect(api.drained).to.deep.equal([]);
    });

    it('NotLeaderError with no leader -> FAILED_PRECONDITION saying so', async () => {
      api.leading = false;
      api.leaderInfo = null;
      const err = await callError(client.restartWorker('w1'));
      expect(err.code).to.equal(Status.FAILED_PRECONDITION);
      expect(err.details).to.match(/no leader holds the lease/);
      expect(err.leaderAddress).to.equal(null);
    });

    it('API key changes: a standby refuses them, an unknown id is NOT_FOUND, a bad tenant INVALID_ARGUMENT', async () => {
      const missing = await callError(client.revokeApiKey('key_000000000009'));
      expect(missing.code).to.equal(Status.NOT_FOUND);
      expect(missing.details).to.equal('no API key with id "key_000000000009"');
      expect((await callError(client.revokeApiKey(''))).details).to.equal('id is required');
      expect((await callError(client.createApiKey({ tenant: '' }))).details).to.equal('tenant is required');
      const bad = await callError(client.createApiKey({ tenant: 'no spaces' }));
      expect(bad.code).to.equal(Status.INVALID_ARGUMENT);
      expect(bad.details).to.equal('tenant is invalid: no spaces');
      api.leading = false;
      for (const p of [client.createApiKey({ tenant: 'acme' }), client.revokeApiKey('key_000000000000')]) {
        expect((await callError(p)).code).to.equal(Status.FAILED_PRECONDITION);
      }
      expect(api.apiKeys).to.deep.equal([]);
    });

    it('UnknownTargetError -> NOT_FOUND', async () => {
      const err = await callError(client.drainWorker('nope'));
      expect(err.code).to.equal(Status.NOT_FOUND);
      expect(err.details).to.equal('no worker "nope"');
      expect((await callError(client.scale('nope', 1))).code).to.equal(Status.NOT_FOUND);
    });

    it('an invalid deployments document -> INVALID_ARGUMENT naming the field', async () => {
      const bad = { models: [{ name: 'alpha', engine: { type: 'bogus' } }] };
      const err = await callError(client.applyDeployments(bad));
      expect(err.code).to.equal(Status.INVALID_ARGUMENT);
      expect(err.details).to.include('models[0].engine.type');
      const notJson = await callError(client.applyDeployments('{"models": ['));
      expect(notJson.code).to.equal(Status.INVALID_ARGUMENT);
      expect(notJson.details).to.match(/^deployments_json is not valid JSON/);
      expect(api.deployments.map((d) => d.name)).to.deep.equal(['alpha', 'beta']);
    });

    it('bad arguments -> INVALID_ARGUMENT', async () => {
      expect((await callError(client.drainWorker(''))).details).to.equal('id is required');
      expect((await callError(client.scale('', 1))).details).to.equal('model is required');
      expect((await callError(client.scale('alpha', -1))).code).to.equal(Status.INVALID_ARGUMENT);
      const range = await callError(client.scale('alpha', 9));
      expect(range.code).to.equal(Status.INVALID_ARGUMENT);
      expect(range.details).to.match(/^replicas: 9 is outside/);
    });

    it('a passing Redis connection error -> UNAVAILABLE', async () => {
      api.failListWorkers = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED' });
      const err = await callError(client.listWorkers());
      expect(err.code).to.equal(Status.UNAVAILABLE);
      expect(err.details).to.equal('Redis is unavailable: connect ECONNREFUSED 127.0.0.1:6379');
    });

    it('anything else -> INTERNAL, and the error is logged', async () => {
      api.failListWorkers = new TypeError('boom in the registry');
      const err = await callError(client.listWorkers());
      expect(err.code).to.equal(Status.INTERNAL);
      expect(err.details).to.include('boom in the registry');
      const line = logs.lines.find((l) => l.msg === 'admin call failed');
      expect(line, 'the error is logged').to.not.equal(undefined);
      expect(line!.method).to.equal('ListWorkers');
      expect((line!.err as { message: string }).message).to.equal('boom in the registry');
    });
  });

  describe('token', () => {
    let secured: AdminServer;
    const TOKEN = 's3cret-token';
    beforeEach(async () => {
      secured = await startAdminServer(api, { host: '127.0.0.1', port: 0, token: TOKEN, logger: logs.logger });
      extra.push(secured);
    });

    it('refuses a call without a token or with a wrong one, and accepts the right one', async () => {
      const none = new AdminClient({ address: secured.address });
      const wrong = new AdminClient({ address: secured.address, token: 'not-it' });
      const prefix = new AdminClient({ address: secured.address, token: TOKEN.slice(0, -1) });
      const right = new AdminClient({ address: secured.address, token: TOKEN });
      extra.push(none, wrong, prefix, right);
      for (const c of [none, wrong, prefix]) {
        expect((await callError(c.listWorkers())).code).to.equal(Status.UNAUTHENTICATED);
        expect((await callError(c.drainWorker('w1'))).code).to.equal(Status.UNAUTHENTICATED);
      }
      expect(api.drained).to.deep.equal([]);
      expect(await right.listWorkers()).to.deep.equal(WORKERS);
      await right.drainWorker('w1');
      expect(api.drained).to.deep.equal(['w1']);
    });

    it('refuses a watch without the token, and never subscribes it', async () => {
      const none = new AdminClient({ address: secured.address });
      extra.push(none);
      const err = await callError(
        (async () => {
          for await (const _ of none.watch()) throw new Error('no event expected');
        })(),
      );
      expect(err.code).to.equal(Status.UNAUTHENTICATED);
      expect(api.subscriberCount).to.equal(0);
    });
  });

  describe('watch', () => {
    const ev = (i: number): ClusterEvent => ({
      kind: i % 2 ? 'worker-up' : 'scaled',
      at: 1_700_000_000_000 + i,
      subject: `s${i}`,
      message: `event ${i}`,
    });

    it('delivers events in order, and unsubscribes when the client leaves the loop', async () => {
      const stream = client.watch();
      const it = stream[Symbol.asyncIterator]();
      await api.subscribersReach(1); // the call starts at watch()
      const first = it.next();
      const sent = Array.from({ length: 50 }, (_, i) => ev(i));
      for (const e of sent) api.emit(e);
      const got: ClusterEvent[] = [(await first).value as ClusterEvent];
      while (got.length < sent.length) got.push((await it.next()).value as ClusterEvent);
      expect(got).to.deep.equal(sent);
      await it.return!(undefined);
      await api.subscribersReach(0);
    });

    it('unsubscribes on cancel() while waiting for an event', async () => {
      const stream = client.watch();
      const done = (async () => {
        const got: ClusterEvent[] = [];
        for await (const e of stream) got.push(e);
        return got;
      })();
      await api.subscribersReach(1);
      api.emit(ev(1));
      stream.cancel();
      await api.subscribersReach(0);
      const got = await done;
      expect(got.length).to.be.at.most(1); // cancel may overtake the event
    });

    it('unsubscribes when the iterator is closed before its first event', async () => {
      const stream = client.watch();
      await api.subscribersReach(1);
      expect(await stream[Symbol.asyncIterator]().return!(undefined)).to.deep.equal({ done: true, value: undefined });
      await api.subscribersReach(0);
    });

    it('unsubscribes when the signal aborts', async () => {
      const ac = new AbortController();
      const done = (async () => {
        for await (const _ of client.watch({ signal: ac.signal })) ac.abort();
      })();
      await api.subscribersReach(1);
      api.emit(ev(2));
      await done;
      await api.subscribersReach(0);
    });

    it('close() ends open watches with UNAVAILABLE, unsubscribes them, and is idempotent', async () => {
      const done = callError(
        (async () => {
          for await (const _ of client.watch()) throw new Error('no event expected');
        })(),
      );
      await api.subscribersReach(1);
      await Promise.all([server.close(), server.close()]);
      await server.close();
      const err = await done;
      expect(err.code).to.equal(Status.UNAVAILABLE);
      expect(err.details).to.equal('the controller is shutting down');
      expect(api.subscriberCount).to.equal(0);
      expect((await callError(client.listWorkers())).code).to.equal(Status.UNAVAILABLE);
    });
  });

  describe('TLS', () => {
    let certs: TestCerts;
    before(async () => {
      // openssl is on Debian by default; without it this suite must fail, not skip.
      try {
        await execFileP('sh', ['-c', 'command -v openssl']);
      } catch {
        throw new Error(
          'openssl is not on PATH: the TLS test needs it to make a self-signed certificate (apt-get install openssl)',
        );
      }
      certs = await makeCerts();
    });
    after(async () => {
      if (certs) await rm(certs.dir, { recursive: true, force: true });
    });

    it('serves a call over TLS with a token, and llmctl --ca reaches it', async () => {
      const cert = await readFile(certs.serverCert);
      const key = await readFile(certs.serverKey);
      const ca = await readFile(certs.ca);
      const tlsServer = await startAdminServer(api, {
        host: '127.0.0.1',
        port: 0,
        token: 't',
        tls: { cert, key },
        logger: logs.logger,
      });
      extra.push(tlsServer);
      // By name: the certificate holds DNS:localhost and IP:127.0.0.1 (llmctl below uses the IP).
      const tlsClient = new AdminClient({ address: `localhost:${tlsServer.port}`, token: 't', tls: { ca } });
      const plain = new AdminClient({ address: tlsServer.address, token: 't', timeoutMs: 5000 });
      extra.push(tlsClient, plain);
      expect(await tlsClient.listScale()).to.deep.equal(api.scales);
      expect((await callError(plain.listScale())).code).to.equal(Status.UNAVAILABLE);

      const r = await llmctl(['leader', '--json', '--ca', certs.ca], {
        env: { LLMUX_ADMIN_ADDRESS: tlsServer.address, LLMUX_ADMIN_TOKEN: 't' },
      });
      expect(r.stderr).to.equal('');
      expect(r.code).to.equal(0);
      expect(JSON.parse(r.stdout)).to.deep.equal({
        leader: { id: 'ctl-a', adminAddress: LEADER_ADDRESS },
        answeredByLeader: true,
      });
    });
  });

  describe('llmctl', () => {
    it('keeps its shebang and runs through npm’s bin shim (npx llmctl)', async () => {
      expect((await readFile(LLMCTL, 'utf8')).split('\n')[0]).to.equal('#!/usr/bin/env node');
      // A fresh npm cache, as on a new clone: npx links the project's bin (and makes it executable) offline.
      const cache = await mkdtemp(join(tmpdir(), 'llmux-npx-'));
      try {
        const { stdout } = await execFileP('npx', ['--offline', '--yes', '--', 'llmctl', '--help'], {
          cwd: REPO,
          env: cleanEnv({ npm_config_cache: cache }),
        });
        expect(stdout).to.match(/^usage: llmctl <command>/);
        expect((await stat(LLMCTL)).mode & 0o111, 'executable').to.not.equal(0);
      } finally {
        await rm(cache, { recursive: true, force: true });
      }
    });

    it('workers --json prints the workers as JSON', async () => {
      const r = await llmctl(['workers', '--address', server.address, '--json']);
      expect(r.stderr).to.equal('');
      expect(r.code).to.equal(0);
      expect(JSON.parse(r.stdout)).to.deep.equal(WORKERS);
    });

    it('workers prints an aligned table', async () => {
      const r = await llmctl(['workers'], { env: { LLMUX_ADMIN_ADDRESS: server.address } });
      expect(r.code).to.equal(0);
      const lines = r.stdout.trimEnd().split('\n');
      expect(lines).to.have.length(4);
      const header = lines[0]!;
      expect(header.split(/\s{2,}/)).to.deep.equal([
        'ID',
        'ALIVE',
        'STATE',
        'MODELS',
        'LOAD',
        'ENGINES',
        'METRICS PORT',
        'RESTARTS',
        'LAST EXIT',
      ]);
      const at = (line: string, col: string) => line.slice(header.indexOf(col)).split(/\s{2,}/)[0];
      const row = (id: string) => lines.find((l) => l.startsWith(`${id} `))!;
      expect(at(row('w1'), 'ALIVE')).to.equal('yes');
      expect(at(row('w1'), 'STATE')).to.equal('ready');
      expect(at(row('w1'), 'MODELS')).to.equal('alpha,beta');
      expect(at(row('w1'), 'LOAD')).to.equal('3/8');
      expect(at(row('w1'), 'ENGINES')).to.equal('alpha=ready,beta=starting');
      expect(at(row('w1'), 'METRICS PORT')).to.equal('9464');
      expect(at(row('w3'), 'METRICS PORT')).to.equal('-');
      expect(at(row('w1'), 'RESTARTS')).to.equal('2');
      expect(at(row('w1'), 'LAST EXIT')).to.equal('code 1');
      expect(at(row('w2-with-a-long-id'), 'ALIVE')).to.equal('no');
      expect(at(row('w2-with-a-long-id'), 'STATE')).to.equal('backoff');
      expect(at(row('w2-with-a-long-id'), 'LOAD')).to.equal('-');
      expect(at(row('w2-with-a-long-id'), 'LAST EXIT')).to.equal('signal SIGKILL');
      expect(at(row('w3'), 'STATE')).to.equal('draining');
      expect(at(row('w3'), 'LOAD')).to.equal('12/16');
      expect(at(row('w3'), 'RESTARTS')).to.equal('-');
      for (const l of lines) expect(l).to.equal(l.trimEnd());
    });

    it('deployments, scale and leader print tables and lines', async () => {
      const d = await llmctl(['deployments', '--address', server.address]);
      expect(d.code).to.equal(0);
      expect(d.stdout.split('\n')[0]!.split(/\s{2,}/)).to.deep.equal([
        'NAME',
        'ALIASES',
        'ENGINE',
        'REPLICAS',
        'CONCURRENCY',
        'SOURCE',
      ]);
      expect(d.stdout.split('\n')[1]!.split(/\s{2,}/)).to.deep.equal(['alpha', 'a', 'sim', '1-4', '4', '-']);

      const s = await llmctl(['scale', '--address', server.address]);
      expect(s.code).to.equal(0);
      expect(
        s.stdout
          .trimEnd()
          .split('\n')
          .map((l) => l.split(/\s+/)),
      ).to.deep.equal([
        ['MODEL', 'DESIRED', 'LIVE', 'MIN', 'MAX', 'QUEUED', 'PENDING'],
        ['alpha', '2', '1', '1', '4', '7', '3'],
        ['beta', '1', '1', '1', '1', '0', '0'],
      ]);
      const one = await llmctl(['scale', 'beta', '--address', server.address, '--json']);
      expect(JSON.parse(one.stdout)).to.deep.equal(api.scales[1]);

      const set = await llmctl(['scale', 'alpha', '4', '--address', server.address]);
      expect(set.code).to.equal(0);
      expect(set.stdout.split('\n')[1]!.split(/\s+/)).to.deep.equal(['alpha', '4', '1', '1', '4', '7', '3']);
      expect(api.scales[0]!.desired).to.equal(4);

      const l = await llmctl(['leader', '--address', server.address]);
      expect(l.stdout).to.equal(`leader ctl-a at ${LEADER_ADDRESS}; the controller at ${server.address} is the leader\n`);
    });

    it('drain <id> and restart <id>', async () => {
      const r = await llmctl(['drain', 'w1', '--address', server.address]);
      expect(r).to.deep.equal({ code: 0, stdout: 'draining worker w1\n', stderr: '' });
      const j = await llmctl(['restart', 'w3', '--address', server.address, '--json']);
      expect(JSON.parse(j.stdout)).to.deep.equal({ ok: true, action: 'restart', worker: 'w3' });
      expect(api.drained).to.deep.equal(['w1']);
      expect(api.restarted).to.deep.equal(['w3']);
    });

    it('apply <file> and apply - (stdin); an invalid file exits 1 naming the field', async () => {
      const dir = await mkdtemp(join(tmpdir(), 'llmux-apply-'));
      try {
        const file = join(dir, 'deployments.json');
        await writeFile(
          file,
          JSON.stringify({ models: [...DEPLOYMENTS_DOC.models, { name: 'gamma', engine: { type: 'sim' } }] }),
        );
        const r = await llmctl(['apply', file, '--address', server.address]);
        expect(r).to.deep.equal({ code: 0, stdout: 'applied: added gamma; removed none; changed none\n', stderr: '' });
        const same = await llmctl(['apply', '-', '--address', server.address, '--json'], { stdin: await readFile(file, 'utf8') });
        expect(JSON.parse(same.stdout)).to.deep.equal({ added: [], removed: [], changed: [] });

        await writeFile(file, JSON.stringify({ models: [{ name: 'alpha', engine: { type: 'sim' }, concurrency: 0 }] }));
        const bad = await llmctl(['apply', file, '--address', server.address]);
        expect(bad.code).to.equal(1);
        expect(bad.stdout).to.equal('');
        expect(bad.stderr).to.match(/^llmctl: deployments is invalid: models\[0\]\.concurrency: [^\n]+\n$/);
        const missing = await llmctl(['apply', join(dir, 'nope.json'), '--address', server.address]);
        expect(missing.code).to.equal(1);
        expect(missing.stderr).to.match(/^llmctl: cannot read .*nope\.json: [^\n]+\n$/);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it('a change sent to a standby exits 1 naming the leader', async () => {
      api.leading = false;
      const r = await llmctl(['scale', 'alpha', '2', '--address', server.address]);
      expect(r).to.deep.equal({
        code: 1,
        stdout: '',
        stderr: `llmctl: not the leader; send changes to the leader at ${LEADER_ADDRESS}\n`,
      });
    });

    it('uses --token / LLMUX_ADMIN_TOKEN, and exits 1 without it', async () => {
      const secured = await startAdminServer(api, { host: '127.0.0.1', port: 0, token: 'tok', logger: logs.logger });
      extra.push(secured);
      const none = await llmctl(['workers', '--address', secured.address]);
      expect(none.code).to.equal(1);
      expect(none.stderr).to.match(
        /^llmctl: this controller needs an admin token .* \(pass --token or set LLMUX_ADMIN_TOKEN\)\n$/,
      );
      expect((await llmctl(['workers', '--address', secured.address, '--token', 'tok'])).code).to.equal(0);
      const env = { LLMUX_ADMIN_ADDRESS: secured.address, LLMUX_ADMIN_TOKEN: 'tok' };
      expect((await llmctl(['workers', '--json'], { env })).code).to.equal(0);
    });

    it('usage errors exit 2', async () => {
      for (const args of [
        [],
        ['frobnicate'],
        ['drain'],
        ['workers', 'extra'],
        ['workers', '--bogus'],
        ['scale', 'alpha', 'two'],
      ]) {
        const r = await llmctl([...args, '--address', server.address]);
        expect(r.code, args.join(' ')).to.equal(2);
        expect(r.stdout).to.equal('');
        expect(r.stderr).to.match(/^llmctl: [^\n]+\nusage: llmctl/);
      }
      const badAddress = await llmctl(['workers', '--address', 'no-port']);
      expect(badAddress.code).to.equal(2);
      expect(badAddress.stderr).to.match(/^llmctl: --address must be host:port/);
      const help = await llmctl(['--help']);
      expect(help.code).to.equal(0);
      expect(help.stdout).to.match(/^usage: llmctl/);
    });

    it('a refused connection exits 1 with a one-line message', async () => {
      const port = await closedPort();
      const r = await llmctl(['workers', '--address', `127.0.0.1:${port}`]);
      expect(r).to.deep.equal({
        code: 1,
        stdout: '',
        stderr: `llmctl: cannot reach the controller at 127.0.0.1:${port}: connection refused\n`,
      });
    });

    describe('watch', () => {
      let child: ChildProcess | null = null;
      afterEach(() => {
        child?.kill('SIGKILL');
        child = null;
      });

      /** Starts `llmctl watch`, waits until it is subscribed, and returns its stdout lines as they come. */
      async function startWatch(args: string[]) {
        child = spawn(process.execPath, [LLMCTL, 'watch', '--address', server.address, ...args], {
          env: cleanEnv(),
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        const c = child;
        const exited = new Promise<number | null>((resolve) => c.on('exit', (code) => resolve(code)));
        let stderr = '';
        c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
        const lines = createInterface({ input: c.stdout! })[Symbol.asyncIterator]();
        await api.subscribersReach(1);
        return { child: c, exited, lines, stderr: () => stderr };
      }

      it('--json prints one event per line in order, and Ctrl-C unsubscribes and exits 0', async () => {
        const w = await startWatch(['--json']);
        const sent: ClusterEvent[] = [
          { kind: 'worker-dead', at: 1_700_000_000_001, subject: 'w1', message: 'heartbeat lapsed' },
          { kind: 'requests-handed-over', at: 1_700_000_000_002, subject: 'w1', message: '3 requests to w3' },
          { kind: 'leader', at: 1_700_000_000_003, subject: '', message: 'ctl-a leads' },
        ];
        for (const e of sent) api.emit(e);
        const got: ClusterEvent[] = [];
        for (let i = 0; i < sent.length; i++) got.push(JSON.parse((await w.lines.next()).value as string) as ClusterEvent);
        expect(got).to.deep.equal(sent);
        w.child.kill('SIGINT');
        expect(await w.exited).to.equal(0);
        expect(w.stderr()).to.equal('');
        await api.subscribersReach(0);
      });

      it('prints readable lines; a killed llmctl is unsubscribed too', async () => {
        const w = await startWatch([]);
        api.emit({ kind: 'scaled', at: Date.UTC(2025, 0, 2, 3, 4, 5), subject: 'alpha', message: 'desired 2 -> 3' });
        const line = (await w.lines.next()).value as string;
        expect(line.split(/\s{2,}/)).to.deep.equal(['2025-01-02T03:04:05.000Z', 'scaled', 'alpha', 'desired 2 -> 3']);
        w.child.kill('SIGKILL');
        await w.exited;
        await api.subscribersReach(0);
      });

      it('exits 1 when the controller shuts down', async () => {
        const w = await startWatch([]);
        await server.close();
        expect(await w.exited).to.equal(1);
        expect(w.stderr()).to.equal(
          `llmctl: the controller at ${server.address} is unavailable: the controller is shutting down\n`,
        );
      });
    });
  });
});
