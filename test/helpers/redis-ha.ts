import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '@llmux/controller';
import {
  createRedis,
  delay,
  DeploymentRegistry,
  Keys,
  loadGatewayConfig,
  parseDeployments,
  RequestQueue,
  type Redis,
} from '@llmux/shared';
import { parseSse, streamedText, type ChatChunk } from './http.js';
import { entryOf, TestProcess } from './processes.js';
import type { TestCerts } from './tls.js';
export { makeCerts, type TestCerts } from './tls.js';

const run = promisify(execFile);

/** Access settings shared by every server of a test setup. */
export interface Access {
  /** `requirepass` of the data nodes (and `masterauth`). */
  password?: string;
  /** TLS: every server listens with TLS only (certificates from makeCerts). */
  tls?: TestCerts;
}

/** One redis-server (or sentinel) process started by these helpers. */
export class RedisProc {
  readonly exited: Promise<void>;
  running = true;
  constructor(
    readonly port: number,
    readonly child: ChildProcess,
    readonly role: string,
  ) {
    this.exited = new Promise((resolve) =>
      child.once('exit', () => {
        this.running = false;
        resolve();
      }),
    );
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** SIGKILL (a crash) and wait for the exit. */
  async kill(): Promise<void> {
    if (this.running) this.child.kill('SIGKILL');
    await this.exited;
  }

  async stop(): Promise<void> {
    if (this.running) this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
}

function startProc(args: string[], port: number, role: string): RedisProc {
  const child = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.resume();
  return new RedisProc(port, child, role);
}

function accessArgs(a: Access, port: number): string[] {
  const out: string[] = [];
  if (a.password) out.push('--requirepass', a.password, '--masterauth', a.password);
  if (a.tls) {
    out.push('--port', '0', '--tls-port', String(port), '--tls-replication', 'yes', '--tls-cluster', 'yes');
    out.push('--tls-cert-file', a.tls.serverCert, '--tls-key-file', a.tls.serverKey, '--tls-ca-cert-file', a.tls.ca);
    out.push('--tls-auth-clients', 'optional');
  } else out.push('--port', String(port));
  return out;
}

/** Runs redis-cli against `port` with the setup's access settings; resolves with its output. */
export async function cli(port: number, a: Access, ...args: string[]): Promise<string> {
  const pre = ['-h', '127.0.0.1', '-p', String(port), '--no-auth-warning'];
  if (a.password) pre.push('-a', a.password);
  if (a.tls) pre.push('--tls', '--cacert', a.tls.ca, '--cert', a.tls.clientCert, '--key', a.tls.clientKey);
  const { stdout } = await run('redis-cli', [...pre, ...args], { timeout: 10_000 });
  return stdout.trim();
}

/** Polls `check` until it returns a value (not null/false), at most `ms`; there is no event to wait on. */
export async function until<T>(what: string, check: () => Promise<T | null | false>, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown = null;
  for (;;) {
    try {
      const v = await check();
      if (v !== null && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms${last ? ` (${String(last)})` : ''}`);
    await delay(50);
  }
}

async function answers(port: number, a: Access): Promise<boolean> {
  try {
    return (await cli(port, a, 'PING')) === 'PONG';
  } catch {
    return false;
  }
}

/** A standalone redis-server with the given access settings, in a temporary folder. */
export class TestRedisServer {
  private constructor(
    readonly proc: RedisProc,
    readonly access: Access,
    private readonly dir: string,
  ) {}

  static async start(access: Access = {}, extra: string[] = []): Promise<TestRedisServer> {
    const port = await freePort();
    const dir = await mkdtemp(join(tmpdir(), 'llmux-test-redis-'));
    const proc = startProc(
      [...accessArgs(access, port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...extra],
      port,
      'standalone',
    );
    const s = new TestRedisServer(proc, access, dir);
    await until(`redis-server on ${port}`, () => answers(port, access), 10_000).catch(async (err: unknown) => {
      await s.stop();
      throw err;
    });
    return s;
  }

  get port(): number {
    return this.proc.port;
  }

  cli(...args: string[]): Promise<string> {
    return cli(this.port, this.access, ...args);
  }

  async stop(): Promise<void> {
    await this.proc.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** One node of a test cluster as CLUSTER NODES shows it. */
export interface ClusterNodeInfo {
  id: string;
  port: number;
  master: boolean;
  /** For a replica, its master's id. */
  masterId: string | null;
  /** For a master, its slot ranges (`0-5460`). */
  slots: string[];
}

/**
 * A real Redis Cluster on this machine: `masters` masters with one replica
 * each, every node a redis-server with cluster-enabled on a free port, in one
 * temporary folder. A short cluster-node-timeout (1 s) makes failover quick.
 */
export class TestRedisCluster {
  private constructor(
    readonly nodes: RedisProc[],
    readonly access: Access,
    private readonly dir: string,
  ) {}

  static async start(o: { masters?: number; access?: Access } = {}): Promise<TestRedisCluster> {
    const access = o.access ?? {};
    const count = (o.masters ?? 3) * 2;
    const dir = await mkdtemp(join(tmpdir(), 'llmux-test-cluster-'));
    const nodes: RedisProc[] = [];
    const c = new TestRedisCluster(nodes, access, dir);
    try {
      for (let i = 0; i < count; i++) {
        const port = await freePort();
        nodes.push(
          startProc(
            [
              ...accessArgs(access, port),
              '--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${port}.conf`),
              '--cluster-node-timeout', '1000', '--save', '', '--appendonly', 'no', '--dir', dir,
            ], // prettier-ignore
            port,
            'cluster',
          ),
        );
      }
      for (const n of nodes) await until(`cluster node ${n.port}`, () => answers(n.port, access), 10_000);
      await c.cli(
        nodes[0]!.port,
        '--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '1', '--cluster-yes',
      ); // prettier-ignore
      await c.waitHealthy();
    } catch (err) {
      await c.stop();
      throw err;
    }
    return c;
  }

  /** `host:port,…` of every node, for REDIS_CLUSTER_NODES. */
  get seeds(): string {
    return this.nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  }

  cli(port: number, ...args: string[]): Promise<string> {
    return cli(port, this.access, ...args);
  }

  /** The topology as a live node sees it. */
  async topology(): Promise<ClusterNodeInfo[]> {
    const live = this.nodes.find((n) => n.running)!;
    const out = await this.cli(live.port, 'CLUSTER', 'NODES');
    return out
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        const f = line.split(' ');
        const port = Number(/:(\d+)@/.exec(f[1]!)![1]);
        return {
          id: f[0]!,
          port,
          master: f[2]!.includes('master') && !f[2]!.includes('fail'),
          masterId: f[3] === '-' ? null : f[3]!,
          slots: f.slice(8),
        };
      });
  }

  /** Every live node reports cluster_state:ok, and every slot range has a master that is up. */
  async waitHealthy(ms = 30_000): Promise<void> {
    await until(
      'cluster healthy',
      async () => {
        for (const n of this.nodes.filter((x) => x.running)) {
          if (!(await this.cli(n.port, 'CLUSTER', 'INFO')).includes('cluster_state:ok')) return false;
        }
        const t = await this.topology();
        return t.filter((x) => x.master && x.slots.length > 0).length >= this.nodes.length / 2;
      },
      ms,
    );
  }

  /** The master serving `slot`, and its replica. */
  async ownerOf(slot: number): Promise<{ master: RedisProc; replica: RedisProc | null }> {
    const t = await this.topology();
    const m = t.find(
      (x) =>
        x.master &&
        x.slots.some((r) => {
          const [a, b] = r.split('-').map(Number);
          return slot >= a! && slot <= (b ?? a!);
        }),
    );
    if (!m) throw new Error(`no master serves slot ${slot}`);
    const r = t.find((x) => x.masterId === m.id);
    const proc = (port: number) => this.nodes.find((n) => n.port === port)!;
    return { master: proc(m.port), replica: r ? proc(r.port) : null };
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.stop()));
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * A real Sentinel setup on this machine: a primary, a replica and three
 * sentinels (`redis-server <conf> --sentinel`), quorum 2, a primary judged
 * down after 1 s.
 */
export class TestRedisSentinel {
  readonly name = 'mymaster';
  private constructor(
    readonly data: RedisProc[],
    readonly sentinels: RedisProc[],
    readonly access: Access,
    private readonly dir: string,
  ) {}

  static async start(o: { access?: Access; sentinelPassword?: string } = {}): Promise<TestRedisSentinel> {
    const access = o.access ?? {};
    const dir = await mkdtemp(join(tmpdir(), 'llmux-test-sentinel-'));
    const data: RedisProc[] = [];
    const sentinels: RedisProc[] = [];
    const s = new TestRedisSentinel(data, sentinels, access, dir);
    try {
      const primary = await freePort();
      const replica = await freePort();
      for (const port of [primary, replica]) {
        const args = [...accessArgs(access, port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
        args.push('--dbfilename', `dump-${port}.rdb`, '--replica-announce-ip', '127.0.0.1');
        if (port === replica) args.push('--replicaof', '127.0.0.1', String(primary));
        data.push(startProc(args, port, port === primary ? 'primary' : 'replica'));
      }
      for (const n of data) await until(`redis-server ${n.port}`, () => answers(n.port, access), 10_000);
      await until('replica in sync', async () => (await s.cli(primary, 'INFO', 'replication')).includes('state=online'));
      for (let i = 0; i < 3; i++) {
        const port = await freePort();
        const conf = join(dir, `sentinel-${port}.conf`);
        const lines = [
          ...(access.tls
            ? [
                'port 0',
                `tls-port ${port}`,
                `tls-cert-file ${access.tls.serverCert}`,
                `tls-key-file ${access.tls.serverKey}`,
                `tls-ca-cert-file ${access.tls.ca}`,
                'tls-replication yes',
                'tls-auth-clients optional',
              ]
            : [`port ${port}`]),
          'bind 127.0.0.1',
          `dir ${dir}`,
          'sentinel announce-ip 127.0.0.1',
          `sentinel monitor ${s.name} 127.0.0.1 ${primary} 2`,
          `sentinel down-after-milliseconds ${s.name} 1000`,
          `sentinel failover-timeout ${s.name} 5000`,
          `sentinel parallel-syncs ${s.name} 1`,
          ...(access.password ? [`sentinel auth-pass ${s.name} ${access.password}`] : []),
          ...(o.sentinelPassword ? [`requirepass ${o.sentinelPassword}`] : []),
        ];
        await writeFile(conf, lines.join('\n') + '\n');
        sentinels.push(startProc([conf, '--sentinel'], port, 'sentinel'));
      }
      const sAccess: Access = { tls: access.tls, password: o.sentinelPassword };
      // Each sentinel knows the replica and the two other sentinels, so a failover can be agreed on.
      for (const sn of sentinels) {
        await until(`sentinel ${sn.port} ready`, async () => {
          const replicas = await cli(sn.port, sAccess, 'SENTINEL', 'REPLICAS', s.name);
          const peers = await cli(sn.port, sAccess, 'SENTINEL', 'SENTINELS', s.name);
          return replicas.includes(String(replica)) && peers.split('\n').filter((l) => l === 'name').length >= 2;
        });
      }
    } catch (err) {
      await s.stop();
      throw err;
    }
    return s;
  }

  /** `host:port,…` of the sentinels, for REDIS_SENTINELS. */
  get seeds(): string {
    return this.sentinels.map((n) => `127.0.0.1:${n.port}`).join(',');
  }

  cli(port: number, ...args: string[]): Promise<string> {
    return cli(port, this.access, ...args);
  }

  /** The port of the primary the first live sentinel names. */
  async primaryPort(sentinelAccess: Access = { tls: this.access.tls }): Promise<number> {
    const sn = this.sentinels.find((x) => x.running)!;
    const out = await cli(sn.port, sentinelAccess, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', this.name);
    return Number(out.split('\n')[1]);
  }

  proc(port: number): RedisProc {
    return this.data.find((n) => n.port === port)!;
  }

  async stop(): Promise<void> {
    await Promise.all([...this.sentinels, ...this.data].map((n) => n.stop()));
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * Gateway and worker-agent processes on a Redis reached through `env` (the
 * REDIS_* settings under test), with the deployments published through the
 * same connection factory the processes use.
 */
export class HaSystem {
  readonly workers: TestProcess[] = [];
  gateway!: TestProcess;
  url = '';
  readonly keys: Keys;
  private constructor(
    readonly redis: Redis,
    readonly env: NodeJS.ProcessEnv,
  ) {
    this.keys = new Keys(env.KEY_PREFIX);
  }

  static async start(o: {
    env: NodeJS.ProcessEnv;
    deployments: unknown;
    workers: number;
    gatewayEnv?: NodeJS.ProcessEnv;
    workerEnv?: NodeJS.ProcessEnv;
  }): Promise<HaSystem> {
    const env: NodeJS.ProcessEnv = { KEY_PREFIX: `t${randomBytes(4).toString('hex')}`, LOG_LEVEL: 'info', ...o.env };
    const redis = createRedis(loadGatewayConfig(env).redis, { name: 'test' });
    redis.on('error', () => {}); // a test fails Redis over on purpose
    const sys = new HaSystem(redis, env);
    try {
      await redis.connect();
      const file = parseDeployments(o.deployments);
      await new DeploymentRegistry(redis, sys.keys).publish(file);
      const queue = new RequestQueue(redis, sys.keys);
      for (const d of file.models) await queue.ensureGroup(d.name);
      for (let i = 0; i < o.workers; i++) {
        const w = new TestProcess(`worker-${i}`, entryOf('@llmux/worker-agent'), { ...env, WORKER_ID: `w${i}`, ...o.workerEnv });
        sys.workers.push(w);
        await w.ready();
      }
      sys.gateway = new TestProcess('gateway', entryOf('@llmux/gateway'), {
        ...env,
        PORT: '0',
        GATEWAY_ID: 'gw-1',
        ...o.gatewayEnv,
      });
      sys.url = String((await sys.gateway.ready()).url);
    } catch (err) {
      await sys.stop();
      throw err;
    }
    return sys;
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...(this.gateway ? [this.gateway.stop()] : []), ...this.workers.map((w) => w.stop())]);
    this.redis.disconnect();
  }
}

/** How one streamed request ended, as its client saw it. */
export type Outcome =
  /** [DONE], the full expected text and token count. */
  | { kind: 'complete'; rid: string }
  /** An HTTP error status before the stream started. */
  | { kind: 'refused'; rid: string | null; status: number; code: string }
  /** An SSE error event ended the stream. */
  | { kind: 'error'; rid: string; code: string }
  /** Anything else: a stream that stopped, wrong text, or no end within the bound. Must never happen. */
  | { kind: 'lost'; rid: string | null; why: string };

/**
 * One streamed completion from the sim model, read to its end or `boundMs`,
 * and judged: complete (exact text), refused, error, or lost.
 */
export async function streamOnce(
  url: string,
  model: string,
  maxTokens: number,
  expected: string,
  boundMs: number,
): Promise<Outcome> {
  const signal = AbortSignal.timeout(boundMs);
  let rid: string | null = null;
  try {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      signal,
      body: JSON.stringify({
        model,
        prompt: 'Once',
        max_tokens: maxTokens,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    rid = res.headers.get('x-request-id');
    const body = await res.text();
    if (res.status !== 200) {
      const code = (JSON.parse(body) as { error?: { code?: string } }).error?.code ?? '';
      return { kind: 'refused', rid, status: res.status, code };
    }
    return judge(rid, body, maxTokens, expected);
  } catch (err) {
    return { kind: 'lost', rid, why: signal.aborted ? `no end within ${boundMs} ms` : String(err) };
  }
}

/** Counts of outcomes, for the failover figures. */
export function tally(outcomes: Outcome[]): Record<Outcome['kind'], number> {
  const t = { complete: 0, refused: 0, error: 0, lost: 0 };
  for (const o of outcomes) t[o.kind]++;
  return t;
}

/**
 * Traffic through a failover: `inFlight` long streams opened first (each has
 * its first text before `fail` runs), then `fail()`, while a client keeps
 * sending one short request after another until one completes after the
 * failure (the recovery time). Returns every outcome and the figures.
 */
export async function failoverUnderTraffic(o: {
  url: string;
  model: string;
  inFlight: number;
  tokens: number;
  probeTokens: number;
  expected: (n: number) => string;
  boundMs: number;
  fail: () => Promise<void>;
}): Promise<{ inFlight: Outcome[]; probes: Outcome[]; recoveryMs: number; lastEndMs: number }> {
  const firsts: Promise<void>[] = [];
  const inFlight = Array.from({ length: o.inFlight }, () => {
    let first!: () => void;
    firsts.push(new Promise<void>((r) => (first = r)));
    return streamFirst(o.url, o.model, o.tokens, o.expected(o.tokens), o.boundMs, first);
  });
  await Promise.all(firsts);
  const t0 = Date.now();
  const failed = o.fail();
  const probes: Outcome[] = [];
  let recoveryMs = -1;
  const probing = (async () => {
    // After the failure is under way: until one request completes, and then a few more.
    let after = 0;
    while (Date.now() - t0 < o.boundMs && after < 5) {
      const r = await streamOnce(o.url, o.model, o.probeTokens, o.expected(o.probeTokens), o.boundMs);
      probes.push(r);
      if (r.kind === 'complete' && recoveryMs < 0) recoveryMs = Date.now() - t0;
      if (recoveryMs >= 0) after++;
      else if (r.kind !== 'complete') await delay(100); // a refused request answers at once; do not spin
    }
  })();
  let lastEndMs = 0;
  const ended = inFlight.map((p) => p.then((r) => ((lastEndMs = Math.max(lastEndMs, Date.now() - t0)), r)));
  await failed;
  await probing;
  return { inFlight: await Promise.all(ended), probes, recoveryMs, lastEndMs };
}

/** streamOnce that also reports its first text (`onFirst`, also called when it ends without any). */
async function streamFirst(
  url: string,
  model: string,
  n: number,
  expected: string,
  boundMs: number,
  onFirst: () => void,
): Promise<Outcome> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    signal: AbortSignal.timeout(boundMs),
    body: JSON.stringify({ model, prompt: 'Once', max_tokens: n, stream: true, stream_options: { include_usage: true } }),
  }).catch((err: unknown) => err as Error);
  if (res instanceof Error) {
    onFirst();
    return { kind: 'lost', rid: null, why: String(res) };
  }
  const rid = res.headers.get('x-request-id');
  if (res.status !== 200) {
    onFirst();
    return { kind: 'refused', rid, status: res.status, code: await res.text() };
  }
  let text = '';
  try {
    const reader = res.body!.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
      if (text.includes('"text":"')) onFirst();
    }
  } catch (err) {
    onFirst();
    return { kind: 'lost', rid, why: `read failed: ${String(err)}` };
  }
  onFirst();
  return judge(rid, text, n, expected);
}

function judge(rid: string | null, body: string, n: number, expected: string): Outcome {
  const events = parseSse(body);
  const err = events.map((e) => e.data).find((d) => d.startsWith('{"error"'));
  if (err) return { kind: 'error', rid: rid!, code: (JSON.parse(err) as { error: { code: string } }).error.code };
  if (events.at(-1)?.data !== '[DONE]')
    return { kind: 'lost', rid, why: `stream ended without [DONE] or an error (${events.length} events)` };
  const usage = (JSON.parse(events.at(-2)!.data) as ChatChunk).usage;
  const text = streamedText(events);
  if (text !== expected || usage?.completion_tokens !== n) {
    return {
      kind: 'lost',
      rid,
      why: `text or count differs: ${usage?.completion_tokens} tokens, ${text.length}/${expected.length} chars`,
    };
  }
  return { kind: 'complete', rid: rid! };
}
