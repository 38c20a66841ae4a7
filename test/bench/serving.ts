/**
 * Benchmark of the serving layer, in one invocation:
 *
 *   1. Overhead: the same sim OpenAI-compatible server (50 tokens, 50 ms to
 *      the first, 20 ms apart) reached directly, through the whole system
 *      (private redis-server, one gateway, one worker agent with the `openai`
 *      engine pointed at the sim server) and through nginx, at 100, 500 and
 *      1,000 concurrent streams (closed loop, streaming). Latency, throughput,
 *      errors and the relay's CPU seconds per 1,000 tokens, with ratios
 *      against direct. With `taskset`, the relay processes run on CPU 1 and
 *      the load generator and sim server on CPU 0.
 *   2. Engine efficiency: the `llamacpp` engine on stories260K, in process
 *      (raw) against the whole system, aggregate tokens/s at 1, 4 and 8
 *      concurrent requests.
 *   3. Scale: 1,000 streams held through the whole system; the gateway's RSS
 *      before and while holding them.
 *
 * Prints markdown tables and writes a JSON result file.
 *
 *   npm run bench [-- --quick] [--seconds 10 --warmup 3 --levels 100,500,1000] [--cpu-prof] [--json FILE]
 *   npm run bench -- --help
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { EmbeddedRedis } from '@llmux/controller';
import { measure, summarize, type Sample, type Summary } from '@llmux/load-tests';
import { createRedis, DeploymentRegistry, freePort, Keys, parseDeployments, RequestQueue, type JobParams } from '@llmux/shared';
import { LlamaCppEngine } from '@llmux/worker-agent';
import { entryOf, onPath } from '../helpers/processes.js';
import { SIM_SERVER_MAIN } from '../helpers/sim-server.js';
import { ROOT, testModel } from '../helpers/models.js';

const USAGE = `usage: npm run bench -- [options]

  --quick                  a short smoke run (about a minute on a quiet machine): 1.5 s per level, short engine and scale parts
  --parts LIST             which parts to run, comma-separated: overhead,engine,scale (default: all)
  --seconds N              measured seconds per overhead level (default 10; quick 1.5)
  --warmup N               warm-up seconds before each measured window (default 3; quick 1)
  --levels LIST            concurrent streams of the overhead part (default 100,500,1000)
  --tokens N               tokens per request in the overhead part (default 50)
  --ttft-ms N              sim server time to first token (default 50)
  --itl-ms N               sim server time between tokens (default 20)
  --worker-concurrency N   the openai deployment's concurrency (default 1200)
  --engine-seconds N       measured seconds per engine level and mode (default 8; quick 1.5)
  --engine-levels LIST     concurrent requests of the engine part (default 1,4,8)
  --engine-tokens N        max_tokens of the engine part (default 128)
  --engine-rounds N        raw and system alternate in this many slices per level (default 4; quick 2)
  --scale-streams N        streams held in the scale part (default 1000)
  --scale-tokens N         tokens per request in the scale part (default 300; quick 100)
  --hold N                 seconds the scale part holds its streams (default 20; quick 2)
  --log-level L            LOG_LEVEL of the gateway and worker (default warn)
  --worker-env K=V         an environment variable for the worker agent (repeatable), e.g. CLAIM_POLICY=fifo
  --gateway-env K=V        an environment variable for the gateway (repeatable)
  --no-pin                 do not pin processes to CPUs even where taskset exists
  --cpu-prof               run the gateway and worker with --cpu-prof and print their top self-time functions
  --prof-dir DIR           where the profiles go (default test/artifacts/cpu-prof)
  --json FILE              the JSON result file (default test/artifacts/bench-serving.json)
  --help`;

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    parts: { type: 'string', default: 'overhead,engine,scale' },
    seconds: { type: 'string' },
    warmup: { type: 'string' },
    levels: { type: 'string', default: '100,500,1000' },
    tokens: { type: 'string', default: '50' },
    'ttft-ms': { type: 'string', default: '50' },
    'itl-ms': { type: 'string', default: '20' },
    'worker-concurrency': { type: 'string', default: '1200' },
    'engine-seconds': { type: 'string' },
    'engine-levels': { type: 'string', default: '1,4,8' },
    'engine-rounds': { type: 'string' },
    'engine-tokens': { type: 'string', default: '128' },
    'scale-streams': { type: 'string', default: '1000' },
    'scale-tokens': { type: 'string' },
    hold: { type: 'string' },
    'log-level': { type: 'string', default: 'warn' },
    'worker-env': { type: 'string', multiple: true, default: [] },
    'gateway-env': { type: 'string', multiple: true, default: [] },
    'no-pin': { type: 'boolean', default: false },
    'cpu-prof': { type: 'boolean', default: false },
    'prof-dir': { type: 'string' },
    json: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}

const QUICK = values.quick;
const num = (v: string | undefined, dflt: number, quick = dflt): number => {
  const n = v === undefined ? (QUICK ? quick : dflt) : Number(v);
  if (!Number.isFinite(n) || n <= 0) {
    console.error(`bench: expected a positive number, got ${v}\n\n${USAGE}`);
    process.exit(2);
  }
  return n;
};
const list = (v: string) => v.split(',').map((x) => num(x.trim(), 0));

const PARTS = new Set(values.parts.split(',').map((p) => p.trim()));
const SECONDS = num(values.seconds, 10, 1.5);
const WARMUP_S = num(values.warmup, 3, 1);
const LEVELS = list(values.levels);
const TOKENS = num(values.tokens, 50);
const TTFT_MS = num(values['ttft-ms'], 50);
const ITL_MS = num(values['itl-ms'], 20);
const WORKER_CONCURRENCY = num(values['worker-concurrency'], 1200);
const ENGINE_SECONDS = num(values['engine-seconds'], 8, 1.5);
const ENGINE_LEVELS = list(values['engine-levels']);
const ENGINE_ROUNDS = Math.round(num(values['engine-rounds'], 4, 2));
const ENGINE_TOKENS = num(values['engine-tokens'], 128);
const SCALE_STREAMS = num(values['scale-streams'], 1000);
const SCALE_TOKENS = num(values['scale-tokens'], 300, 100);
const HOLD_S = num(values.hold, 20, 2);
const LOG_LEVEL = values['log-level'];
const envPairs = (xs: string[]): Record<string, string> =>
  Object.fromEntries(
    xs.map((x) => {
      const eq = x.indexOf('=');
      if (eq <= 0) {
        console.error(`bench: expected KEY=VALUE, got ${x}\n\n${USAGE}`);
        process.exit(2);
      }
      return [x.slice(0, eq), x.slice(eq + 1)];
    }),
  );
const WORKER_ENV = envPairs(values['worker-env']);
const GATEWAY_ENV = envPairs(values['gateway-env']);
const CPU_PROF = values['cpu-prof'];
const PROF_DIR = resolve(values['prof-dir'] ?? join(ROOT, 'test/artifacts/cpu-prof'));
const JSON_FILE = resolve(values.json ?? join(ROOT, 'test/artifacts/bench-serving.json'));
const TIMEOUT_MS = 120_000;
/** How long one overhead request runs at best, ms. */
const REQUEST_MS = TTFT_MS + (TOKENS - 1) * ITL_MS;
const SIM_MODEL = 'sim';
const LLAMA_MODEL = 'stories260K';

const log = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// Machine, CPUs and pinning

function commandOutput(cmd: string, args: string[]): string | null {
  // Both streams: nginx -v prints its version on stderr.
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error) return null;
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
}

const NGINX = existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : onPath('nginx') ? 'nginx' : null;
const HAS_TASKSET = onPath('taskset');
const NCPU = cpus().length;
const PIN = !values['no-pin'] && HAS_TASKSET && NCPU >= 2;
/** The load generator and the sim server. */
const CLIENT_CPU = 0;
/** The relay: gateway, worker and redis-server, or nginx. */
const RELAY_CPU = 1;
const CLK_TCK = Number(commandOutput('getconf', ['CLK_TCK'])) || 100;
const ALL_CPUS = `0-${NCPU - 1}`;

/** Sets the CPU affinity of every thread of a running process. */
function pinPid(pid: number, cpuList: string): void {
  if (!PIN) return;
  execFileSync('taskset', ['-a', '-p', '-c', cpuList, String(pid)], { stdio: 'ignore' });
}

/** The command that starts `argv` on `cpu` (or anywhere when not pinning). */
function onCpu(cpu: number | null, argv: string[]): [string, string[]] {
  if (!PIN || cpu === null) return [argv[0]!, argv.slice(1)];
  return ['taskset', ['-c', String(cpu), ...argv]];
}

/** utime + stime of a process (all its threads), in seconds; 0 when it is gone. */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** Direct children of a process. */
function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    const out: number[] = [];
    for (const d of readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
        if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d));
      } catch {
        // gone
      }
    }
    return out;
  }
}

/** Resident set size of a process, bytes. */
function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** Busy and total jiffies of each CPU. */
function cpuTimes(): { busy: number; total: number }[] {
  const out: { busy: number; total: number }[] = [];
  for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const v = m[2]!.split(/\s+/).map(Number);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    out[Number(m[1])] = { busy: total - v[3]! - v[4]!, total };
  }
  return out;
}
const cpuBusy = (a: { busy: number; total: number }[], b: { busy: number; total: number }[]): number[] =>
  b.map((x, i) => (x.total - a[i]!.total > 0 ? (x.busy - a[i]!.busy) / (x.total - a[i]!.total) : 0));

// ---------------------------------------------------------------------------
// Child processes

/**
 * A child process started on a CPU (through taskset), with an IPC channel
 * when it is a Node module, its output read line by line (the last lines kept
 * for errors).
 */
class Child {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  /** Log lines at warn or above, counted by message. */
  readonly warnings = new Map<string, number>();
  readonly exited: Promise<void>;
  private readyResolve!: (m: Record<string, unknown>) => void;
  private readyReject!: (e: Error) => void;
  readonly readyP: Promise<Record<string, unknown>>;

  constructor(
    readonly name: string,
    argv: string[],
    opts: { cpu: number | null; env?: NodeJS.ProcessEnv; ipc: boolean; onLine?: (line: string) => void },
  ) {
    const [cmd, args] = onCpu(opts.cpu, argv);
    this.child = spawn(cmd, args, {
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe', ...(opts.ipc ? (['ipc'] as const) : [])],
    });
    this.readyP = new Promise((res, rej) => {
      this.readyResolve = res;
      this.readyReject = rej;
    });
    this.readyP.catch(() => {});
    this.child.on('message', (m: unknown) => {
      if ((m as { type?: string } | null)?.type === 'ready') this.readyResolve(m as Record<string, unknown>);
    });
    const keep = (line: string) => {
      if (line.startsWith('{')) {
        try {
          const l = JSON.parse(line) as { level?: number; msg?: string };
          if ((l.level ?? 0) >= 40) this.warnings.set(l.msg ?? '?', (this.warnings.get(l.msg ?? '?') ?? 0) + 1);
        } catch {
          // not a log line
        }
      }
      this.lines.push(line);
      if (this.lines.length > 40) this.lines.shift();
      opts.onLine?.(line);
    };
    createInterface({ input: this.child.stdout! }).on('line', keep);
    createInterface({ input: this.child.stderr! }).on('line', keep);
    this.exited = new Promise((res) => {
      this.child.once('exit', (code, signal) => {
        this.readyReject(new Error(`${name} exited (code ${code}, signal ${signal}):\n${this.lines.join('\n')}`));
        res();
      });
    });
  }

  /** A Node module of the project, forked with IPC. */
  static node(name: string, module: string, opts: { cpu: number | null; env?: NodeJS.ProcessEnv; execArgv?: string[] }): Child {
    return new Child(name, [process.execPath, ...(opts.execArgv ?? []), module], { ...opts, ipc: true });
  }

  ready(ms = 60_000): Promise<Record<string, unknown>> {
    return Promise.race([
      this.readyP,
      sleep(ms).then(() => {
        throw new Error(`${this.name} not ready after ${ms} ms:\n${this.lines.join('\n')}`);
      }),
    ]);
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', ms = 15_000): Promise<void> {
    if (!this.running) return;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), ms);
    await this.exited;
    clearTimeout(t);
  }
}

/** Everything started, so a failure or Ctrl-C stops it all. */
const cleanups: (() => Promise<void>)[] = [];
async function cleanupAll(): Promise<void> {
  while (cleanups.length > 0) await cleanups.pop()!().catch(() => {});
}
let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log(`${sig}: stopping`);
    void cleanupAll().then(() => process.exit(130));
  });
}

/** The sim OpenAI-compatible server, on the client CPU. */
async function startSim(): Promise<{ url: string; proc: Child }> {
  let url = '';
  const proc = new Child(
    'sim-server',
    [
      process.execPath,
      SIM_SERVER_MAIN,
      '--port',
      '0',
      '--ttft-ms',
      String(TTFT_MS),
      '--itl-ms',
      String(ITL_MS),
      '--capacity',
      '100000',
    ],
    {
      cpu: CLIENT_CPU,
      ipc: true,
      onLine: (l) => {
        const m = /^sim-server listening on (http:\/\/\S+)$/.exec(l);
        if (m) url = m[1]!;
      },
    },
  );
  cleanups.push(() => proc.stop());
  const deadline = Date.now() + 20_000;
  while (!url) {
    if (!proc.running || Date.now() > deadline) throw new Error(`sim-server did not start:\n${proc.lines.join('\n')}`);
    await sleep(20);
  }
  return { url, proc };
}

interface System {
  url: string;
  gateway: Child;
  worker: Child;
  redis: EmbeddedRedis;
  /** The relay's processes by name: gateway, worker, redis-server. */
  pids(): Record<string, number[]>;
  stop(): Promise<void>;
}

/** Warnings and errors the gateway and worker logged, by part and process, counted by message. */
const logWarnings: Record<string, Record<string, Record<string, number>>> = {};

/** A private redis-server, the deployments published, one worker agent and one gateway, on the relay CPU. */
async function startSystem(label: string, deployments: unknown, pinned: boolean): Promise<System> {
  const redis = await EmbeddedRedis.start();
  cleanups.push(() => redis.stop());
  const cpu = pinned ? RELAY_CPU : null;
  pinPid(redis.pid!, pinned ? String(RELAY_CPU) : ALL_CPUS);
  const prefix = 'bench';
  const r = createRedis(redis.url, { name: 'bench' });
  await r.connect();
  try {
    const parsed = parseDeployments(deployments);
    await new DeploymentRegistry(r, new Keys(prefix)).publish(parsed);
    const queue = new RequestQueue(r, new Keys(prefix));
    for (const d of parsed.models) await queue.ensureGroup(d.name);
  } finally {
    r.disconnect();
  }
  const env = { REDIS_URL: redis.url, KEY_PREFIX: prefix, LOG_LEVEL, DRAIN_TIMEOUT_MS: '2000' };
  const prof = (who: string) => (CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', join(PROF_DIR, `${label}-${who}`)] : []);
  const worker = Child.node('worker', entryOf('@llmux/worker-agent'), {
    cpu,
    env: { ...env, WORKER_ID: 'bench-w0', ...WORKER_ENV },
    execArgv: prof('worker'),
  });
  cleanups.push(() => worker.stop());
  await worker.ready(120_000);
  const gateway = Child.node('gateway', entryOf('@llmux/gateway'), {
    cpu,
    env: { ...env, PORT: '0', ...GATEWAY_ENV },
    execArgv: prof('gateway'),
  });
  cleanups.push(() => gateway.stop());
  const ready = await gateway.ready();
  // Threads started before taskset took effect, if any.
  pinPid(gateway.pid, pinned ? String(RELAY_CPU) : ALL_CPUS);
  pinPid(worker.pid, pinned ? String(RELAY_CPU) : ALL_CPUS);
  return {
    url: String(ready.url),
    gateway,
    worker,
    redis,
    pids: () => ({ gateway: [gateway.pid], worker: [worker.pid], redis: [redis.pid!] }),
    async stop() {
      await Promise.all([gateway.stop(), worker.stop()]);
      await redis.stop();
      const w = { gateway: Object.fromEntries(gateway.warnings), worker: Object.fromEntries(worker.warnings) };
      if (Object.keys(w.gateway).length + Object.keys(w.worker).length > 0) logWarnings[label] = w;
    },
  };
}

interface Nginx {
  url: string;
  proc: Child;
  /** The master and its workers. */
  pids(): Record<string, number[]>;
  stop(): Promise<void>;
}

/** nginx as a streaming reverse proxy in front of `upstream`, on the relay CPU, from a config in a temporary folder. */
async function startNginx(upstream: string): Promise<Nginx> {
  const dir = await mkdtemp(join(tmpdir(), 'llmux-bench-nginx-'));
  await chmod(dir, 0o755);
  const port = await freePort();
  const up = new URL(upstream);
  const conf = `# generated by test/bench/serving.ts
worker_processes 1;
worker_rlimit_nofile 65536;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events {
  worker_connections 16384;
  multi_accept on;
}
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 65s;
  upstream sim {
    server ${up.hostname}:${up.port};
    keepalive 2048;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://sim;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
`;
  const confPath = join(dir, 'nginx.conf');
  await writeFile(confPath, conf);
  const proc = new Child('nginx', [NGINX!, '-p', dir, '-c', confPath, '-g', 'daemon off;'], { cpu: RELAY_CPU, ipc: false });
  const stop = async () => {
    await proc.stop('SIGTERM', 5000);
    await rm(dir, { recursive: true, force: true });
  };
  cleanups.push(stop);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (!proc.running) throw new Error(`nginx exited:\n${proc.lines.join('\n')}`);
    const ok = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) })
      .then((r) => r.status === 200)
      .catch(() => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`nginx did not answer:\n${proc.lines.join('\n')}`);
    await sleep(50);
  }
  return { url, proc, pids: () => ({ nginx: [proc.pid, ...childPids(proc.pid)] }), stop };
}

// ---------------------------------------------------------------------------
// Load: a closed loop with a ramp, a warm-up and a measured window

// The Agent of the undici that @llmux/load-tests uses, so `measure` gets its own kind of dispatcher.
const requireHere = createRequire(import.meta.url);
const loadTestsRequire = createRequire(requireHere.resolve('@llmux/load-tests'));
const { Agent } = (await import(pathToFileURL(loadTestsRequire.resolve('undici')).href)) as typeof import('undici');
type Dispatcher = Parameters<typeof measure>[0];
const newAgent = () => new Agent({ connections: null, pipelining: 0, keepAliveTimeout: 30_000 }) as unknown as Dispatcher;

interface LoopOptions {
  /** Full endpoint URL. */
  endpoint: string;
  body: (i: number) => Record<string, unknown>;
  concurrency: number;
  /** Clients start evenly spread over this long, so the closed loop is not one synchronized wave. */
  rampMs: number;
  /** The measured window starts this long after the first client. */
  warmupMs: number;
  measureMs: number;
  onWindowStart?: () => void;
  onWindowEnd?: () => void;
  /**
   * Abort the requests that started after the window once every request that
   * started before its end has ended, instead of letting them run out (a
   * short tail for --quick; on an overloaded path the run-out takes long).
   */
  cutTail?: boolean;
}

interface LoopResult {
  /** Requests that started inside the window (their latencies are the window's). */
  window: Sample[];
  windowMs: number;
  /** Tokens that arrived inside the window (chunk arrival times; a chunk's share of the request's tokens). */
  windowTokens: number;
  /** Requests that ended inside the window without an error. */
  windowCompleted: number;
  /** Every request of the run, warm-up and tail included, except those cut. */
  all: Sample[];
  /** Requests started after the window and aborted by `cutTail`. */
  cut: number;
}

/** Tokens of a request that arrived in [from, to) (ms from the run's start), spread evenly over its chunks. */
function tokensBetween(s: Sample, from: number, to: number): number {
  if (s.error !== null || s.ttft === null || s.tokens === 0) return 0;
  const chunks = 1 + s.itl.length;
  let t = s.start + s.ttft;
  let inside = t >= from && t < to ? 1 : 0;
  for (const gap of s.itl) {
    t += gap;
    if (t >= from && t < to) inside++;
  }
  return (s.tokens * inside) / chunks;
}

/**
 * `concurrency` clients, each sending its next streaming request when the
 * last ends, from the start of the ramp to the end of the window, and on
 * until every request that started inside the window has ended (so those
 * see the same load to their end). Uses the load generator's `measure`.
 */
async function closedLoop(o: LoopOptions, state: { inFlight: number } = { inFlight: 0 }): Promise<LoopResult> {
  const agent = newAgent();
  const t0 = performance.now();
  const all: Sample[] = [];
  let winStart = Infinity;
  let winEnd = Infinity;
  /** Requests started inside the window and not ended yet. */
  let windowOpen = 0;
  /** Requests started before the window's end and not ended yet. */
  let beforeEndOpen = 0;
  let cutAt = Infinity;
  const cut: Sample[] = [];
  const maybeCut = () => {
    if (!o.cutTail || cutAt !== Infinity || performance.now() < winEnd || beforeEndOpen > 0) return;
    cutAt = performance.now();
    // Aborts what is in flight: each such request ends at once with an error, and is counted as cut.
    void (agent as unknown as { destroy(): Promise<void> }).destroy().catch(() => {});
  };
  let next = 0;
  const startT = setTimeout(() => {
    winStart = performance.now();
    o.onWindowStart?.();
  }, o.warmupMs);
  const endT = setTimeout(() => {
    winEnd = performance.now();
    o.onWindowEnd?.();
    maybeCut();
  }, o.warmupMs + o.measureMs);
  const going = () => performance.now() < winEnd || windowOpen > 0;
  const client = async (k: number) => {
    await sleep((o.rampMs * k) / o.concurrency);
    while (going()) {
      const now = performance.now();
      const inWindow = now >= winStart && now < winEnd;
      const beforeEnd = now < winEnd;
      state.inFlight++;
      if (inWindow) windowOpen++;
      if (beforeEnd) beforeEndOpen++;
      const s = await measure(
        agent,
        {
          url: o.endpoint,
          body: o.body(next++),
          stream: true,
          headers: {},
          timeoutMs: TIMEOUT_MS,
        },
        t0,
      );
      state.inFlight--;
      if (inWindow) windowOpen--;
      if (beforeEnd) beforeEndOpen--;
      if (!beforeEnd && s.error !== null && performance.now() >= cutAt) cut.push(s);
      else all.push(s);
      maybeCut();
    }
  };
  try {
    await Promise.all(Array.from({ length: o.concurrency }, (_, k) => client(k)));
  } finally {
    clearTimeout(startT);
    clearTimeout(endT);
    if (cutAt === Infinity) await agent.close();
  }
  const ws = winStart - t0;
  const we = winEnd - t0;
  return {
    window: all.filter((s) => s.start >= ws && s.start < we),
    windowMs: winEnd - winStart,
    windowTokens: all.reduce((n, s) => n + tokensBetween(s, ws, we), 0),
    windowCompleted: all.filter((s) => s.error === null && s.start + s.e2e >= ws && s.start + s.e2e < we).length,
    all,
    cut: cut.length,
  };
}

function errorsOf(samples: Sample[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of samples) if (s.error) out[s.error] = (out[s.error] ?? 0) + 1;
  return out;
}
const errorCount = (e: Record<string, number>) => Object.values(e).reduce((a, b) => a + b, 0);
const errorText = (e: Record<string, number>) =>
  errorCount(e) === 0
    ? '0'
    : `${errorCount(e)} (${Object.entries(e)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')})`;

// ---------------------------------------------------------------------------
// Part 1: overhead

type PathName = 'direct' | 'system' | 'nginx';

interface OverheadRow {
  streams: number;
  path: PathName;
  windowS: number;
  requests: number;
  ttft: Summary | null;
  itl: Summary | null;
  e2e: Summary | null;
  requestsPerS: number;
  tokensPerS: number;
  tokens: number;
  /** Every error of the run (warm-up and tail included), by kind. */
  errors: Record<string, number>;
  /** CPU seconds of the relay's processes in the window; null for direct. */
  relayCpuS: number | null;
  /** The same, by process (gateway, worker, redis; or nginx). */
  relayCpuByProcess: Record<string, number>;
  /** Requests started after the window and aborted at the end (--quick only). */
  cut: number;
  relayCpuPer1kTokens: number | null;
  /** Busy share of each CPU over the window. */
  cpuBusy: number[];
  vsDirect: { throughputPct: number; addedTtftP50Ms: number; addedTtftP99Ms: number } | null;
}

async function overheadLevel(
  path: PathName,
  base: string,
  streams: number,
  relayPids: () => Record<string, number[]>,
): Promise<OverheadRow> {
  let cpu0: Record<string, number> = {};
  let times0 = cpuTimes();
  const byProcess: Record<string, number> = {};
  let cpuS = 0;
  let busy: number[] = [];
  const cpuNow = () =>
    Object.fromEntries(Object.entries(relayPids()).map(([name, pids]) => [name, pids.reduce((n, p) => n + cpuSeconds(p), 0)]));
  const res = await closedLoop({
    endpoint: `${base}/v1/chat/completions`,
    body: (i) => ({
      model: SIM_MODEL,
      messages: [{ role: 'user', content: `Tell me a story, number ${i}.` }],
      max_tokens: TOKENS,
      stream: true,
      stream_options: { include_usage: true },
    }),
    concurrency: streams,
    rampMs: Math.min(WARMUP_S * 1000, REQUEST_MS),
    warmupMs: WARMUP_S * 1000,
    measureMs: SECONDS * 1000,
    cutTail: QUICK,
    onWindowStart: () => {
      cpu0 = cpuNow();
      times0 = cpuTimes();
    },
    onWindowEnd: () => {
      for (const [name, v] of Object.entries(cpuNow())) {
        byProcess[name] = v - (cpu0[name] ?? 0);
        cpuS += byProcess[name];
      }
      busy = cpuBusy(times0, cpuTimes());
    },
  });
  const ok = res.window.filter((s) => s.error === null);
  const tokens = res.windowTokens;
  const secs = res.windowMs / 1000;
  const relay = path === 'direct' ? null : cpuS;
  return {
    streams,
    path,
    windowS: Number(secs.toFixed(3)),
    requests: res.window.length,
    ttft: summarize(ok.map((s) => s.ttft).filter((v): v is number => v !== null)),
    itl: summarize(ok.flatMap((s) => s.itl)),
    e2e: summarize(ok.map((s) => s.e2e)),
    requestsPerS: res.windowCompleted / secs,
    tokensPerS: tokens / secs,
    tokens: Math.round(tokens),
    errors: errorsOf(res.all),
    relayCpuS: relay,
    relayCpuByProcess: byProcess,
    cut: res.cut,
    relayCpuPer1kTokens: relay === null || tokens === 0 ? null : (relay / tokens) * 1000,
    cpuBusy: busy,
    vsDirect: null,
  };
}

/** One request through a path, to check it works before measuring. */
async function probe(base: string, model: string, body: Record<string, unknown>, what: string): Promise<void> {
  const agent = newAgent();
  try {
    const s = await measure(
      agent,
      { url: `${base}/v1/chat/completions`, body: { model, ...body }, stream: true, headers: {}, timeoutMs: 30_000 },
      performance.now(),
    );
    if (s.error || s.tokens === 0) throw new Error(`probe through ${what} failed: ${s.error ?? 'no tokens'}`);
  } finally {
    await agent.close();
  }
}

async function partOverhead(simUrl: string): Promise<OverheadRow[]> {
  const sys = await startSystem(
    'overhead',
    {
      models: [
        {
          name: SIM_MODEL,
          engine: { type: 'openai', baseUrl: `${simUrl}/v1`, model: SIM_MODEL },
          concurrency: WORKER_CONCURRENCY,
          maxQueue: 100_000,
        },
      ],
    },
    true,
  );
  const nginx = NGINX ? await startNginx(simUrl) : null;
  if (!nginx) log('nginx not found: the nginx path is skipped');
  const paths: [PathName, string, () => Record<string, number[]>][] = [
    ['direct', simUrl, () => ({})],
    ['system', sys.url, () => sys.pids()],
    ...(nginx ? [['nginx', nginx.url, () => nginx.pids()] as [PathName, string, () => Record<string, number[]>]] : []),
  ];
  const probeBody = { messages: [{ role: 'user', content: 'hi' }], max_tokens: 5, stream: true };
  for (const [name, url] of paths) await probe(url, SIM_MODEL, probeBody, name);
  const rows: OverheadRow[] = [];
  try {
    for (const streams of LEVELS) {
      for (const [name, url, pids] of paths) {
        log(`overhead: ${streams} streams, ${name} (${WARMUP_S} s warm-up, ${SECONDS} s measured)`);
        const row = await overheadLevel(name, url, streams, pids);
        log(
          `  ${row.tokensPerS.toFixed(0)} tokens/s, TTFT p50 ${row.ttft?.p50.toFixed(1)} ms p99 ${row.ttft?.p99.toFixed(1)} ms, errors ${errorText(row.errors)}`,
        );
        rows.push(row);
        // Let closed connections and timers settle between runs.
        await sleep(200);
      }
      const direct = rows.find((r) => r.streams === streams && r.path === 'direct')!;
      for (const r of rows.filter((x) => x.streams === streams && x.path !== 'direct')) {
        r.vsDirect = {
          throughputPct: (r.tokensPerS / direct.tokensPerS) * 100,
          addedTtftP50Ms: (r.ttft?.p50 ?? NaN) - (direct.ttft?.p50 ?? NaN),
          addedTtftP99Ms: (r.ttft?.p99 ?? NaN) - (direct.ttft?.p99 ?? NaN),
        };
      }
    }
  } finally {
    await nginx?.stop();
    await sys.stop();
  }
  return rows;
}

// ---------------------------------------------------------------------------
// Part 2: engine efficiency (llamacpp, raw in process vs the whole system)

interface EngineRow {
  concurrency: number;
  mode: 'raw' | 'system';
  requests: number;
  tokens: number;
  tokensPerRequest: number;
  seconds: number;
  tokensPerS: number;
  errors: Record<string, number>;
  /** Time to the first text, and per request, ms. */
  ttft: Summary | null;
  e2e: Summary | null;
  ratio: number | null;
}

const ENGINE_PROMPT = 'Once upon a time';
const ENGINE_THREADS = 1;
const ENGINE_CONTEXT = 2048;
const ENGINE_CAPACITY = () => Math.max(...ENGINE_LEVELS);

/**
 * `concurrency` lanes back to back for `ms`; then what is in flight
 * finishes. Throughput is all tokens over the time until the last one ends.
 */
async function lanes(
  concurrency: number,
  ms: number,
  one: (i: number) => Promise<{ tokens: number; error: string | null; ttft: number | null; e2e: number }>,
): Promise<{ requests: number; tokens: number; seconds: number; errors: Record<string, number>; ttft: number[]; e2e: number[] }> {
  let next = 0;
  let tokens = 0;
  let requests = 0;
  const errors: Record<string, number> = {};
  const ttft: number[] = [];
  const e2e: number[] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() - t0 < ms) {
        const r = await one(next++);
        requests++;
        tokens += r.tokens;
        if (r.error) errors[r.error] = (errors[r.error] ?? 0) + 1;
        else {
          if (r.ttft !== null) ttft.push(r.ttft);
          e2e.push(r.e2e);
        }
      }
    }),
  );
  return { requests, tokens, seconds: (performance.now() - t0) / 1000, errors, ttft, e2e };
}

const engineParams = (i: number): JobParams => ({
  kind: 'completion',
  prompt: ENGINE_PROMPT,
  maxTokens: ENGINE_TOKENS,
  temperature: 1,
  seed: i,
});

async function partEngine(): Promise<EngineRow[]> {
  const modelPath = await testModel('stories260K');
  const raw = new LlamaCppEngine({
    modelPath,
    capacity: ENGINE_CAPACITY(),
    threads: ENGINE_THREADS,
    contextSize: ENGINE_CONTEXT,
    chatTemplate: 'auto',
  });
  await raw.start();
  const sys = await startSystem(
    'engine',
    {
      models: [
        {
          name: LLAMA_MODEL,
          source: modelPath,
          engine: { type: 'llamacpp', threads: ENGINE_THREADS, contextSize: ENGINE_CONTEXT },
          concurrency: ENGINE_CAPACITY(),
        },
      ],
    },
    false,
  );
  const rawOne = async (i: number) => {
    const started = performance.now();
    let first: number | null = null;
    const r = await raw.generate(
      engineParams(i),
      () => {
        first ??= performance.now() - started;
      },
      new AbortController().signal,
    );
    return { tokens: r.completionTokens, error: null, ttft: first, e2e: performance.now() - started };
  };
  const agent = newAgent();
  const sysOne = async (i: number) => {
    const p = engineParams(i);
    const s = await measure(
      agent,
      {
        url: `${sys.url}/v1/completions`,
        body: {
          model: LLAMA_MODEL,
          prompt: p.prompt,
          max_tokens: p.maxTokens,
          temperature: p.temperature,
          seed: p.seed,
          stream: true,
          stream_options: { include_usage: true },
        },
        stream: true,
        headers: {},
        timeoutMs: TIMEOUT_MS,
      },
      performance.now(),
    );
    return { tokens: s.error ? 0 : s.tokens, error: s.error, ttft: s.ttft, e2e: s.e2e };
  };
  const rows: EngineRow[] = [];
  try {
    // Warm-up: a second of each, so both have run the model before measuring.
    await lanes(ENGINE_CAPACITY(), QUICK ? 500 : 1000, rawOne);
    await lanes(ENGINE_CAPACITY(), QUICK ? 500 : 1000, sysOne);
    for (const c of ENGINE_LEVELS) {
      // Alternating slices (raw, system, system, raw, ...), so drifting load from other work on the machine hits both alike.
      const empty = () => ({
        requests: 0,
        tokens: 0,
        seconds: 0,
        errors: {} as Record<string, number>,
        ttft: [] as number[],
        e2e: [] as number[],
      });
      const acc = { raw: empty(), system: empty() };
      log(
        `engine: ${c} concurrent, raw and system alternating, ${ENGINE_ROUNDS} x ${(ENGINE_SECONDS / ENGINE_ROUNDS).toFixed(1)} s each`,
      );
      for (let round = 0; round < ENGINE_ROUNDS; round++) {
        const order = round % 2 === 0 ? (['raw', 'system'] as const) : (['system', 'raw'] as const);
        for (const mode of order) {
          const r = await lanes(c, (ENGINE_SECONDS * 1000) / ENGINE_ROUNDS, mode === 'raw' ? rawOne : sysOne);
          const a = acc[mode];
          a.requests += r.requests;
          a.tokens += r.tokens;
          a.seconds += r.seconds;
          for (const [k, v] of Object.entries(r.errors)) a.errors[k] = (a.errors[k] ?? 0) + v;
          a.ttft.push(...r.ttft);
          a.e2e.push(...r.e2e);
        }
      }
      for (const mode of ['raw', 'system'] as const) {
        const a = acc[mode];
        rows.push({
          concurrency: c,
          mode,
          requests: a.requests,
          tokens: a.tokens,
          tokensPerRequest: a.tokens / Math.max(1, a.requests),
          seconds: a.seconds,
          tokensPerS: a.tokens / a.seconds,
          errors: a.errors,
          ttft: summarize(a.ttft),
          e2e: summarize(a.e2e),
          ratio: mode === 'system' ? a.tokens / a.seconds / (acc.raw.tokens / acc.raw.seconds) : null,
        });
      }
      log(
        `  raw ${(acc.raw.tokens / acc.raw.seconds).toFixed(0)} tokens/s, system ${(acc.system.tokens / acc.system.seconds).toFixed(0)} tokens/s, ` +
          `errors ${errorText(acc.system.errors)}`,
      );
    }
  } finally {
    await agent.close();
    await sys.stop();
    await raw.close();
  }
  return rows;
}

// ---------------------------------------------------------------------------
// Part 3: scale

interface ScaleResult {
  streams: number;
  tokensPerRequest: number;
  holdS: number;
  requests: number;
  /** Requests started after the hold and aborted at the end (--quick only). */
  cut: number;
  errors: Record<string, number>;
  /** Client-side streams in flight during the hold. */
  openStreams: { min: number; mean: number; max: number };
  /** The gateway's own llmux_gateway_open_requests during the hold, when it could be read. */
  gatewayOpenRequests: { min: number; max: number } | null;
  gatewayRssBeforeMiB: number;
  gatewayRssHoldMiB: { median: number; max: number };
  workerRssBeforeMiB: number;
  workerRssHoldMiB: { median: number; max: number };
  kibPerStream: number;
  tokensPerS: number;
  /** What the streams would deliver if nothing but the sim server's timing held them back. */
  fullSpeedTokensPerS: number;
  /** Every successful request of the run. */
  ttft: Summary | null;
  e2e: Summary | null;
}

const MiB = 1024 * 1024;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor((s.length - 1) / 2)]!;
};

async function gatewayOpenRequests(url: string): Promise<number | null> {
  try {
    const text = await (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
    const m = /^llmux_gateway_open_requests(?:\{[^}]*\})?\s+(\S+)/m.exec(text);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

async function partScale(simUrl: string): Promise<ScaleResult> {
  const sys = await startSystem(
    'scale',
    {
      models: [
        {
          name: SIM_MODEL,
          engine: { type: 'openai', baseUrl: `${simUrl}/v1`, model: SIM_MODEL },
          concurrency: Math.max(WORKER_CONCURRENCY, SCALE_STREAMS + 100),
          maxQueue: 100_000,
        },
      ],
    },
    true,
  );
  try {
    for (let i = 0; i < 5; i++) {
      await probe(sys.url, SIM_MODEL, { messages: [{ role: 'user', content: 'hi' }], max_tokens: 5, stream: true }, 'system');
    }
    await sleep(1000);
    const gwBefore = rssBytes(sys.gateway.pid);
    const wBefore = rssBytes(sys.worker.pid);
    const requestMs = TTFT_MS + (SCALE_TOKENS - 1) * ITL_MS;
    const rampMs = Math.min(3000, requestMs);
    const gwRss: number[] = [];
    const wRss: number[] = [];
    const open: number[] = [];
    const gwOpen: number[] = [];
    const state = { inFlight: 0 };
    let sampler: NodeJS.Timeout | null = null;
    let scraper: NodeJS.Timeout | null = null;
    log(`scale: ${SCALE_STREAMS} streams of ${SCALE_TOKENS} tokens, ramp ${rampMs} ms, hold ${HOLD_S} s`);
    const res = await closedLoop(
      {
        endpoint: `${sys.url}/v1/chat/completions`,
        body: (i) => ({
          model: SIM_MODEL,
          messages: [{ role: 'user', content: `Tell me a long story, number ${i}.` }],
          max_tokens: SCALE_TOKENS,
          stream: true,
          stream_options: { include_usage: true },
        }),
        concurrency: SCALE_STREAMS,
        rampMs,
        warmupMs: rampMs + 1000,
        measureMs: HOLD_S * 1000,
        cutTail: QUICK,
        onWindowStart: () => {
          sampler = setInterval(() => {
            gwRss.push(rssBytes(sys.gateway.pid));
            wRss.push(rssBytes(sys.worker.pid));
            open.push(state.inFlight);
          }, 250);
          scraper = setInterval(() => {
            void gatewayOpenRequests(sys.url).then((n) => n !== null && gwOpen.push(n));
          }, 1000);
        },
        onWindowEnd: () => {
          if (sampler) clearInterval(sampler);
          if (scraper) clearInterval(scraper);
        },
      },
      state,
    );
    const ok = res.all.filter((s) => s.error === null);
    const errors = errorsOf(res.all);
    const gwMedian = median(gwRss);
    const meanOpen = open.reduce((a, b) => a + b, 0) / Math.max(1, open.length);
    const out: ScaleResult = {
      streams: SCALE_STREAMS,
      tokensPerRequest: SCALE_TOKENS,
      holdS: res.windowMs / 1000,
      requests: res.all.length,
      cut: res.cut,
      errors,
      openStreams: { min: Math.min(...open), mean: meanOpen, max: Math.max(...open) },
      gatewayOpenRequests: gwOpen.length > 0 ? { min: Math.min(...gwOpen), max: Math.max(...gwOpen) } : null,
      gatewayRssBeforeMiB: gwBefore / MiB,
      gatewayRssHoldMiB: { median: gwMedian / MiB, max: Math.max(...gwRss) / MiB },
      workerRssBeforeMiB: wBefore / MiB,
      workerRssHoldMiB: { median: median(wRss) / MiB, max: Math.max(...wRss) / MiB },
      kibPerStream: (gwMedian - gwBefore) / 1024 / Math.max(1, meanOpen),
      tokensPerS: res.windowTokens / (res.windowMs / 1000),
      fullSpeedTokensPerS: (SCALE_STREAMS * SCALE_TOKENS) / (requestMs / 1000),
      ttft: summarize(ok.map((s) => s.ttft).filter((v): v is number => v !== null)),
      e2e: summarize(ok.map((s) => s.e2e)),
    };
    log(
      `  gateway RSS ${out.gatewayRssBeforeMiB.toFixed(1)} -> ${out.gatewayRssHoldMiB.median.toFixed(1)} MiB, ` +
        `${out.kibPerStream.toFixed(1)} KiB per stream, errors ${errorText(errors)}`,
    );
    return out;
  } finally {
    await sys.stop();
  }
}

// ---------------------------------------------------------------------------
// CPU profiles: top self time

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

interface SelfTime {
  fn: string;
  ms: number;
  pct: number;
}

/**
 * Self time by function over the profiles of a folder, highest first: all
 * functions, and those of the project's own code (gateway, worker-agent,
 * shared). Idle time is left out; shares are of the busy time.
 */
async function topSelf(dir: string, n: number): Promise<{ all: SelfTime[]; project: SelfTime[]; busyMs: number }> {
  const self = new Map<string, number>();
  let total = 0;
  for (const f of existsSync(dir) ? readdirSync(dir).filter((x) => x.endsWith('.cpuprofile')) : []) {
    const p = JSON.parse(await readFile(join(dir, f), 'utf8')) as Profile;
    const byId = new Map(p.nodes.map((x) => [x.id, x]));
    for (let i = 0; i < p.samples.length; i++) {
      const cf = byId.get(p.samples[i]!)!.callFrame;
      const dt = (p.timeDeltas[i + 1] ?? 0) / 1000;
      if (cf.functionName === '(idle)') continue;
      const where = cf.url
        ? `${cf.url.replace(pathToFileURL(ROOT).href, '').replace(/^.*node_modules\//, '')}:${cf.lineNumber + 1}`
        : '';
      const key = `${cf.functionName || '(anonymous)'}${where ? ` ${where}` : ''}`;
      self.set(key, (self.get(key) ?? 0) + dt);
      total += dt;
    }
  }
  const sorted = [...self].sort((a, b) => b[1] - a[1]).map(([fn, ms]) => ({ fn, ms, pct: (ms / total) * 100 }));
  const ours = /^\S+ (gateway|worker-agent|shared)\/dist\//;
  return { all: sorted.slice(0, n), project: sorted.filter((x) => ours.test(x.fn)).slice(0, n), busyMs: total };
}

// ---------------------------------------------------------------------------
// Output

const f1 = (v: number | null | undefined) => (v === null || v === undefined || Number.isNaN(v) ? '-' : v.toFixed(1));
const f0 = (v: number | null | undefined) => (v === null || v === undefined || Number.isNaN(v) ? '-' : v.toFixed(0));
const f3 = (v: number | null | undefined) => (v === null || v === undefined || Number.isNaN(v) ? '-' : v.toFixed(3));
const signed = (v: number | undefined) => (v === undefined || Number.isNaN(v) ? '-' : `${v >= 0 ? '+' : ''}${v.toFixed(1)}`);

function table(head: string[], rows: string[][], align: ('l' | 'r')[]): string {
  return [
    `| ${head.join(' | ')} |`,
    `| ${align.map((a) => (a === 'l' ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n');
}

interface Target {
  target: string;
  figure: string;
  met: boolean | null;
}

// ---------------------------------------------------------------------------
// Main

const startedAt = new Date();
const load = loadavg();
const redisVersion = /v=(\S+)/.exec(commandOutput('redis-server', ['--version']) ?? '')?.[1] ?? 'unknown';
const nginxVersion = NGINX ? (/nginx\/(\S+)/.exec(commandOutput(NGINX, ['-v']) ?? '')?.[1] ?? 'unknown') : null;
const pinText = PIN
  ? `pinned with taskset: gateway, worker and redis-server (or nginx) on CPU ${RELAY_CPU}; load generator and sim server on CPU ${CLIENT_CPU} (overhead and scale parts; the engine part runs unpinned)`
  : `not pinned (${values['no-pin'] ? '--no-pin' : HAS_TASKSET ? `only ${NCPU} CPU` : 'taskset not found'}): every process runs on any CPU`;

console.log(`serving benchmark, ${startedAt.toISOString()}${QUICK ? ' (--quick)' : ''}`);
console.log(
  `machine: ${NCPU} x ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}, redis ${redisVersion}, nginx ${nginxVersion ?? 'not found'}`,
);
console.log(
  `load average at start: ${load.map((l) => l.toFixed(2)).join(', ')}${load[0]! > 1 ? ' (above 1.0: other work is running on this machine, figures are noisy)' : ''}`,
);
console.log(pinText);
console.log(
  `gateway and worker LOG_LEVEL=${LOG_LEVEL}${CPU_PROF ? `; --cpu-prof on (profiles in ${PROF_DIR}; figures carry the profiler's cost)` : ''}\n`,
);

if (CPU_PROF) await rm(PROF_DIR, { recursive: true, force: true });
// This process is the load generator: on the client CPU.
pinPid(process.pid, String(CLIENT_CPU));

const result: Record<string, unknown> = {
  date: startedAt.toISOString(),
  command: `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim(),
  machine: { cpus: NCPU, model: cpus()[0]?.model ?? null, node: process.version, redis: redisVersion, nginx: nginxVersion },
  loadAverageAtStart: load,
  pinned: PIN,
  pinning: pinText,
  options: {
    quick: QUICK,
    seconds: SECONDS,
    warmupS: WARMUP_S,
    levels: LEVELS,
    tokens: TOKENS,
    ttftMs: TTFT_MS,
    itlMs: ITL_MS,
    workerConcurrency: WORKER_CONCURRENCY,
    engineSeconds: ENGINE_SECONDS,
    engineLevels: ENGINE_LEVELS,
    engineTokens: ENGINE_TOKENS,
    scaleStreams: SCALE_STREAMS,
    scaleTokens: SCALE_TOKENS,
    holdS: HOLD_S,
    logLevel: LOG_LEVEL,
    cpuProf: CPU_PROF,
  },
};
const targets: Target[] = [];
let exitCode = 0;

try {
  const needSim = PARTS.has('overhead') || PARTS.has('scale');
  const sim = needSim ? await startSim() : null;

  if (PARTS.has('overhead')) {
    const rows = await partOverhead(sim!.url);
    result.overhead = rows;
    console.log(
      `## Overhead: sim server (${TOKENS} tokens, ${TTFT_MS} ms to the first, ${ITL_MS} ms apart), closed loop, streaming, ` +
        `${SECONDS} s measured after ${WARMUP_S} s warm-up\n`,
    );
    console.log(
      table(
        [
          'streams',
          'path',
          'TTFT p50 ms',
          'TTFT p99 ms',
          'e2e p50 ms',
          'e2e p99 ms',
          'req/s',
          'tokens/s',
          'errors',
          'relay CPU s per 1k tokens',
          'relay CPU (cores)',
          'relay CPU gateway / worker / redis',
          'CPU0 / CPU1 busy',
          'throughput vs direct',
          'added TTFT p50 ms',
          'added TTFT p99 ms',
        ],
        rows.map((r) => [
          String(r.streams),
          r.path,
          f1(r.ttft?.p50),
          f1(r.ttft?.p99),
          f0(r.e2e?.p50),
          f0(r.e2e?.p99),
          f0(r.requestsPerS),
          f0(r.tokensPerS),
          errorText(r.errors),
          f3(r.relayCpuPer1kTokens),
          r.relayCpuS === null ? '-' : (r.relayCpuS / r.windowS).toFixed(2),
          r.path === 'system' && r.relayCpuS
            ? ['gateway', 'worker', 'redis']
                .map((k) => `${f0(((r.relayCpuByProcess[k] ?? 0) / r.relayCpuS!) * 100)}%`)
                .join(' / ')
            : '-',
          r.cpuBusy.length >= 2 ? `${f0(r.cpuBusy[0]! * 100)}% / ${f0(r.cpuBusy[1]! * 100)}%` : '-',
          r.vsDirect ? `${r.vsDirect.throughputPct.toFixed(1)}%` : '-',
          signed(r.vsDirect?.addedTtftP50Ms),
          signed(r.vsDirect?.addedTtftP99Ms),
        ]),
        ['r', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
      ),
    );
    console.log('');
    const top = Math.max(...LEVELS);
    const at1000 = rows.find((r) => r.path === 'system' && r.streams === top);
    if (at1000?.vsDirect) {
      targets.push({
        target: `whole-system throughput at ${top} streams >= 95% of direct`,
        figure: `${at1000.vsDirect.throughputPct.toFixed(1)}%`,
        met: at1000.vsDirect.throughputPct >= 95,
      });
    }
    const at500 = rows.find((r) => r.path === 'system' && r.streams === 500);
    if (at500?.vsDirect) {
      targets.push({
        target: 'added TTFT p50 <= 5 ms at 500 streams',
        figure: `${signed(at500.vsDirect.addedTtftP50Ms)} ms`,
        met: at500.vsDirect.addedTtftP50Ms <= 5,
      });
      targets.push({
        target: 'added TTFT p99 <= 20 ms at 500 streams',
        figure: `${signed(at500.vsDirect.addedTtftP99Ms)} ms`,
        met: at500.vsDirect.addedTtftP99Ms <= 20,
      });
    }
    const sysErrors = rows.filter((r) => r.path === 'system').reduce((n, r) => n + errorCount(r.errors), 0);
    targets.push({ target: 'zero errors through the system (overhead part)', figure: String(sysErrors), met: sysErrors === 0 });
  }

  if (PARTS.has('engine')) {
    // The engine part runs unpinned: the engine's thread and the relay each get what the machine has.
    pinPid(process.pid, ALL_CPUS);
    const rows = await partEngine();
    pinPid(process.pid, String(CLIENT_CPU));
    result.engine = rows;
    console.log(
      `## Engine efficiency: llamacpp on ${LLAMA_MODEL} (threads ${ENGINE_THREADS}, max_tokens ${ENGINE_TOKENS}, ` +
        `temperature 1, seed per request), ${ENGINE_SECONDS} s per level, unpinned\n`,
    );
    console.log(
      table(
        [
          'concurrent',
          'mode',
          'requests',
          'tokens',
          'tokens per request',
          'TTFT p50 ms',
          'e2e p50 ms',
          'tokens/s',
          'errors',
          'system / raw',
        ],
        rows.map((r) => [
          String(r.concurrency),
          r.mode,
          String(r.requests),
          String(r.tokens),
          f1(r.tokensPerRequest),
          f1(r.ttft?.p50),
          f1(r.e2e?.p50),
          f0(r.tokensPerS),
          errorText(r.errors),
          r.ratio === null ? '-' : `${(r.ratio * 100).toFixed(1)}%`,
        ]),
        ['r', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'l', 'r'],
      ),
    );
    console.log('');
    for (const r of rows.filter((x) => x.ratio !== null)) {
      targets.push({
        target: `llamacpp through the system >= 90% of raw tokens/s at ${r.concurrency} concurrent`,
        figure: `${(r.ratio! * 100).toFixed(1)}%`,
        met: r.ratio! >= 0.9,
      });
    }
    const engErrors = rows.reduce((n, r) => n + errorCount(r.errors), 0);
    targets.push({ target: 'zero errors (engine part)', figure: String(engErrors), met: engErrors === 0 });
  }

  if (PARTS.has('scale')) {
    const s = await partScale(sim!.url);
    result.scale = s;
    console.log(
      `## Scale: ${s.streams} concurrent streams through the whole system (sim server, ${s.tokensPerRequest} tokens, ` +
        `${TTFT_MS} ms to the first, ${ITL_MS} ms apart), held ${s.holdS.toFixed(1)} s\n`,
    );
    console.log(
      table(
        ['figure', 'value'],
        [
          [
            'streams open during the hold (client side) min / mean / max',
            `${s.openStreams.min} / ${f0(s.openStreams.mean)} / ${s.openStreams.max}`,
          ],
          [
            'open requests reported by the gateway, min / max',
            s.gatewayOpenRequests ? `${s.gatewayOpenRequests.min} / ${s.gatewayOpenRequests.max}` : '-',
          ],
          ['requests (ramp, hold and tail)', String(s.requests)],
          ...(QUICK ? [['requests started after the hold, aborted at the end (--quick)', String(s.cut)]] : []),
          ['errors', errorText(s.errors)],
          ['tokens/s during the hold (at full speed)', `${f0(s.tokensPerS)} (${f0(s.fullSpeedTokensPerS)})`],
          ['TTFT p50 / p99, every request', `${f1(s.ttft?.p50)} / ${f1(s.ttft?.p99)} ms`],
          ['e2e p50 / p99, every request', `${f0(s.e2e?.p50)} / ${f0(s.e2e?.p99)} ms`],
          ['gateway RSS before', `${f1(s.gatewayRssBeforeMiB)} MiB`],
          ['gateway RSS while holding, median / max', `${f1(s.gatewayRssHoldMiB.median)} / ${f1(s.gatewayRssHoldMiB.max)} MiB`],
          ['gateway memory per open stream', `${f1(s.kibPerStream)} KiB`],
          ['worker RSS before / while holding (median)', `${f1(s.workerRssBeforeMiB)} / ${f1(s.workerRssHoldMiB.median)} MiB`],
        ],
        ['l', 'r'],
      ),
    );
    console.log('');
    targets.push({
      target: `${s.streams} streams held with zero errors`,
      figure: errorText(s.errors),
      met: errorCount(s.errors) === 0,
    });
  }

  await sim?.proc.stop();

  if (targets.length > 0) {
    console.log('## Targets\n');
    console.log(
      table(
        ['target', 'figure', 'met'],
        targets.map((t) => [t.target, t.figure, t.met === null ? '-' : t.met ? 'yes' : 'NO']),
        ['l', 'r', 'l'],
      ),
    );
    console.log('');
  }
  result.targets = targets;
  result.logWarnings = logWarnings;
  for (const [part, byProc] of Object.entries(logWarnings)) {
    for (const [proc, msgs] of Object.entries(byProc)) {
      for (const [msg, n] of Object.entries(msgs)) console.log(`log warning (${part}, ${proc}): ${n} x ${msg}`);
    }
  }

  if (CPU_PROF) {
    const profiles: Record<string, Awaited<ReturnType<typeof topSelf>>> = {};
    for (const d of existsSync(PROF_DIR) ? readdirSync(PROF_DIR).sort() : []) {
      const top = await topSelf(join(PROF_DIR, d), 20);
      profiles[d] = top;
      for (const [what, list] of [
        ['all functions', top.all],
        ['project code', top.project],
      ] as const) {
        console.log(`## Top self time, ${d}, ${what} (busy ${(top.busyMs / 1000).toFixed(1)} s; ${join(PROF_DIR, d)})\n`);
        console.log(
          table(
            ['function', 'self ms', 'share of busy'],
            list.map((t) => [t.fn.replaceAll('|', '\\|'), f0(t.ms), `${t.pct.toFixed(1)}%`]),
            ['l', 'r', 'r'],
          ),
        );
        console.log('');
      }
    }
    result.profiles = profiles;
  }
} catch (err) {
  console.error(`bench failed: ${(err as Error).stack ?? String(err)}`);
  exitCode = 1;
} finally {
  await cleanupAll();
}

result.finishedAt = new Date().toISOString();
await mkdir(dirname(JSON_FILE), { recursive: true });
await writeFile(JSON_FILE, JSON.stringify(result, null, 2) + '\n');
console.log(`results: ${JSON_FILE} (${((Date.now() - startedAt.getTime()) / 1000).toFixed(0)} s)`);
process.exit(exitCode);
