import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { PRIORITIES, TENANT_NAME, type ApiKeyRecord, type Deployment, type NewApiKey, type Priority } from '@llmux/shared';
import type { ClusterEvent, ModelScale, ProcessInfo, WorkerInfo } from '../api.js';
import { AdminCallError, AdminClient, type AdminClientOptions } from '../admin/client.js';
import { formatTable } from './table.js';

/** Exit codes: 0 done, 1 the command failed, 2 the command line is wrong. */
export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;

export const DEFAULT_ADDRESS = '127.0.0.1:50051';

export const USAGE = `usage: llmctl <command> [options]

commands:
  deployments                 list the deployments
  workers                     list the workers
  processes                   list the local processes (gateway, workers): restarts, last exit, uptime
  scale [<model> [replicas]]  show the scale table (of one model), or set a model's desired replicas
  apply <file>                validate and apply a deployments file (- reads stdin)
  drain <worker>              drain a worker: it stops claiming, finishes its requests and exits
  restart <worker>            restart a worker
  leader                      show which controller leads
  watch                       print cluster events as they happen, until Ctrl-C
  keys create --tenant <t> [key options]
                              issue an API key; its secret is printed once, store it then
  keys list                   list the API keys (never their secrets)
  keys revoke <id>            revoke an API key: its next request is refused

options:
  --address host:port  the controller's admin API (env LLMUX_ADMIN_ADDRESS, default ${DEFAULT_ADDRESS})
  --token <token>      admin token (env LLMUX_ADMIN_TOKEN)
  --tls                connect with TLS, trusting the system's CAs (env LLMUX_ADMIN_TLS=1)
  --ca <file>          connect with TLS, trusting this CA or self-signed certificate (env LLMUX_ADMIN_CA)
  --json               machine-readable output (watch: one JSON object per line)
  -h, --help           show this help

key options (keys create):
  --tenant <tenant>    the tenant the key belongs to (required; 1-64 of A-Z a-z 0-9 _ . -)
  --name <name>        a label for operators
  --rpm <n>            requests per minute (default unlimited)
  --tpm <n>            tokens per minute, prompt + completion (default unlimited)
  --weight <w>         the tenant's share in fair queueing, > 0 (default 1)
  --max-priority <p>   the highest priority its requests may ask for: low, normal, high (default normal)

exit codes: 0 ok, 1 error, 2 usage`;

/** Where the CLI writes, and what it reads from its environment. */
export interface CliIo {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  env: NodeJS.ProcessEnv;
  readStdin: () => Promise<string>;
  /** Registers a handler for Ctrl-C / SIGTERM (used by `watch`); returns its removal. */
  onInterrupt: (fn: () => void) => () => void;
}

class UsageError extends Error {}
class CliError extends Error {}

const ADDRESS_RE = /^(\[[0-9A-Fa-f:.]+\]|[^\s:[\]/]+):(\d{1,5})$/;

/** Runs llmctl with `argv` (no node and script); resolves with the exit code. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv, io.env);
  } catch (err) {
    if (err instanceof UsageError || (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')) {
      io.stderr(`llmctl: ${(err as Error).message}\n${USAGE}\n`);
      return EXIT_USAGE;
    }
    throw err;
  }
  if (parsed.help) {
    io.stdout(`${USAGE}\n`);
    return EXIT_OK;
  }
  let client: AdminClient | null = null;
  try {
    client = new AdminClient(await clientOptions(parsed));
    await execute(parsed, client, io);
    return EXIT_OK;
  } catch (err) {
    io.stderr(`llmctl: ${describe(err, parsed.address)}\n`);
    return EXIT_ERROR;
  } finally {
    client?.close();
  }
}

interface Parsed {
  command: string;
  args: string[];
  address: string;
  token: string | null;
  tls: boolean;
  ca: string | null;
  json: boolean;
  help: boolean;
  /** `keys create`: the key to issue. */
  newKey: NewApiKey | null;
}

const ARITY: Record<string, [min: number, max: number, names: string]> = {
  deployments: [0, 0, ''],
  workers: [0, 0, ''],
  processes: [0, 0, ''],
  scale: [0, 2, '[<model> [replicas]]'],
  apply: [1, 1, '<file>'],
  drain: [1, 1, '<worker>'],
  restart: [1, 1, '<worker>'],
  leader: [0, 0, ''],
  watch: [0, 0, ''],
  keys: [1, 2, 'create | list | revoke <id>'],
};

/** `keys <subcommand>`: its arguments after the subcommand. */
const KEYS_ARITY: Record<string, [min: number, max: number, names: string]> = {
  create: [0, 0, ''],
  list: [0, 0, ''],
  revoke: [1, 1, '<id>'],
};

/** Options only `keys create` takes. */
const KEY_OPTIONS = ['tenant', 'name', 'rpm', 'tpm', 'weight', 'max-priority'] as const;
type KeyOptions = Partial<Record<(typeof KEY_OPTIONS)[number], string>>;

function parse(argv: string[], env: NodeJS.ProcessEnv): Parsed {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      address: { type: 'string' },
      token: { type: 'string' },
      tls: { type: 'boolean' },
      ca: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      tenant: { type: 'string' },
      name: { type: 'string' },
      rpm: { type: 'string' },
      tpm: { type: 'string' },
      weight: { type: 'string' },
      'max-priority': { type: 'string' },
    },
  });
  const help = values.help ?? false;
  const [command = '', ...args] = positionals;
  const address = values.address ?? (env.LLMUX_ADMIN_ADDRESS || DEFAULT_ADDRESS);
  const parsed: Parsed = {
    command,
    args,
    address,
    token: values.token ?? (env.LLMUX_ADMIN_TOKEN || null),
    tls: values.tls ?? ['1', 'true'].includes(env.LLMUX_ADMIN_TLS ?? ''),
    ca: values.ca ?? (env.LLMUX_ADMIN_CA || null),
    json: values.json ?? false,
    help,
    newKey: null,
  };
  if (help) return parsed;
  if (!command) throw new UsageError('no command given');
  const arity = ARITY[command];
  if (!arity) throw new UsageError(`unknown command "${command}"`);
  const [min, max, names] = arity;
  if (args.length < min || args.length > max) {
    throw new UsageError(
      `${command} takes ${names ? names : 'no arguments'}${args.length > max ? ` (got ${args.join(' ')})` : ''}`,
    );
  }
  if (!ADDRESS_RE.test(address) || Number(ADDRESS_RE.exec(address)![2]) > 65535) {
    throw new UsageError(`--address must be host:port (got "${address}")`);
  }
  if (command === 'scale' && args[1] !== undefined && !/^\d+$/.test(args[1])) {
    throw new UsageError(`replicas must be a whole number >= 0 (got "${args[1]}")`);
  }
  const isCreate = command === 'keys' && args[0] === 'create';
  const stray = KEY_OPTIONS.find((o) => values[o] !== undefined);
  if (stray && !isCreate) throw new UsageError(`--${stray} is an option of keys create only`);
  if (command === 'keys') checkKeysArity(args);
  if (isCreate) parsed.newKey = parseNewKey(values);
  return parsed;
}

function checkKeysArity(args: string[]): void {
  const [sub = '', ...rest] = args;
  const arity = KEYS_ARITY[sub];
  if (!arity) throw new UsageError(`unknown keys command "${sub}" (create, list or revoke)`);
  const [min, max, names] = arity;
  if (rest.length < min || rest.length > max) {
    throw new UsageError(
      `keys ${sub} takes ${names ? names : 'no arguments'}${rest.length > max ? ` (got ${rest.join(' ')})` : ''}`,
    );
  }
}

/** The options of `keys create`, checked here so a typo is a usage error before any call. */
function parseNewKey(v: KeyOptions): NewApiKey {
  if (v.tenant === undefined) throw new UsageError('keys create needs --tenant <tenant>');
  if (!TENANT_NAME.test(v.tenant)) {
    throw new UsageError(`--tenant must be 1-64 characters of A-Z a-z 0-9 _ . - (got "${v.tenant}")`);
  }
  const perMinute = (opt: 'rpm' | 'tpm'): number | null => {
    const raw = v[opt];
    if (raw === undefined) return null;
    const n = Number(raw);
    if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < 1) {
      throw new UsageError(`--${opt} must be a whole number >= 1 (got "${raw}")`);
    }
    return n;
  };
  let weight: number | undefined;
  if (v.weight !== undefined) {
    weight = Number(v.weight);
    if (!/^(\d+\.?\d*|\.\d+)$/.test(v.weight) || !(weight > 0) || !Number.isFinite(weight)) {
      throw new UsageError(`--weight must be a number > 0 (got "${v.weight}")`);
    }
  }
  const priority = v['max-priority'];
  if (priority !== undefined && !(PRIORITIES as readonly string[]).includes(priority)) {
    throw new UsageError(`--max-priority must be one of ${PRIORITIES.join(', ')} (got "${priority}")`);
  }
  return {
    tenant: v.tenant,
    name: v.name,
    rpm: perMinute('rpm'),
    tpm: perMinute('tpm'),
    weight,
    maxPriority: priority as Priority | undefined,
  };
}

async function clientOptions(p: Parsed): Promise<AdminClientOptions> {
  let tls: AdminClientOptions['tls'] = null;
  if (p.ca) {
    try {
      tls = { ca: await readFile(p.ca) };
    } catch (err) {
      throw new CliError(`cannot read the CA file ${p.ca}: ${(err as Error).message}`);
    }
  } else if (p.tls) {
    tls = true;
  }
  return { address: p.address, token: p.token, tls };
}

async function execute(p: Parsed, client: AdminClient, io: CliIo): Promise<void> {
  const out = (human: string, json: unknown) => io.stdout(`${p.json ? JSON.stringify(json, null, 2) : human}\n`);
  switch (p.command) {
    case 'deployments': {
      const ds = await client.listDeployments();
      return out(deploymentsTable(ds), ds);
    }
    case 'workers': {
      const ws = await client.listWorkers();
      return out(workersTable(ws), ws);
    }
    case 'processes': {
      const ps = await client.listProcesses();
      return out(processesTable(ps), ps);
    }
    case 'scale': {
      const [model, replicas] = p.args;
      if (model !== undefined && replicas !== undefined) {
        const s = await client.scale(model, Number(replicas));
        return out(scaleTable([s]), s);
      }
      let rows = await client.listScale();
      if (model !== undefined) {
        rows = rows.filter((r) => r.model === model);
        if (rows.length === 0) throw new CliError(`unknown model "${model}"`);
      }
      return out(scaleTable(rows), model !== undefined ? rows[0] : rows);
    }
    case 'apply': {
      const file = p.args[0]!;
      let text: string;
      try {
        text = file === '-' ? await io.readStdin() : await readFile(file, 'utf8');
      } catch (err) {
        throw new CliError(`cannot read ${file}: ${(err as Error).message}`);
      }
      try {
        JSON.parse(text);
      } catch (err) {
        throw new CliError(`${file === '-' ? 'stdin' : file} is not valid JSON: ${(err as Error).message}`);
      }
      const r = await client.applyDeployments(text);
      const list = (xs: string[]) => (xs.length ? xs.join(', ') : 'none');
      const human =
        r.added.length + r.removed.length + r.changed.length === 0
          ? 'applied; no changes'
          : `applied: added ${list(r.added)}; removed ${list(r.removed)}; changed ${list(r.changed)}`;
      return out(human, r);
    }
    case 'drain':
    case 'restart': {
      const id = p.args[0]!;
      if (p.command === 'drain') await client.drainWorker(id);
      else await client.restartWorker(id);
      const verb = p.command === 'drain' ? 'draining' : 'restarting';
      return out(`${verb} worker ${id}`, { ok: true, action: p.command, worker: id });
    }
    case 'leader': {
      const info = await client.getLeader();
      const self = `the controller at ${p.address} is ${info.answeredByLeader ? 'the leader' : 'a standby'}`;
      const human = info.leader
        ? `leader ${info.leader.id} at ${info.leader.adminAddress ?? '(no admin address)'}; ${self}`
        : `no leader holds the lease; ${self}`;
      return out(human, info);
    }
    case 'watch':
      return watch(p, client, io);
    case 'keys':
      return keys(p, client, io);
  }
}

async function keys(p: Parsed, client: AdminClient, io: CliIo): Promise<void> {
  const out = (human: string, json: unknown) => io.stdout(`${p.json ? JSON.stringify(json, null, 2) : human}\n`);
  const [sub, id] = p.args;
  if (sub === 'list') {
    const ks = await client.listApiKeys();
    return out(keysTable(ks), ks);
  }
  if (sub === 'revoke') {
    await client.revokeApiKey(id!);
    return out(`revoked API key ${id}`, { ok: true, action: 'revoke', id });
  }
  const created = await client.createApiKey(p.newKey!);
  const warning =
    'Store the key now: it is shown only this once and cannot be recovered. If it is lost, revoke it and create another.';
  // With --json, stdout stays one JSON document; the warning still reaches the person at the terminal.
  if (p.json) io.stderr(`llmctl: ${warning}\n`);
  return out(`created API key ${created.id} (${describeKey(created.record)})\nkey: ${created.key}\n${warning}`, created);
}

const unlimited = (n: number | null) => (n === null ? 'unlimited' : String(n));

function describeKey(r: ApiKeyRecord): string {
  const name = r.name ? `, name "${r.name}"` : '';
  return `tenant ${r.tenant}${name}, rpm ${unlimited(r.rpm)}, tpm ${unlimited(r.tpm)}, weight ${r.weight}, max priority ${r.maxPriority}`;
}

export function keysTable(ks: ApiKeyRecord[]): string {
  return formatTable(
    ['ID', 'TENANT', 'NAME', 'RPM', 'TPM', 'WEIGHT', 'MAX PRIORITY', 'CREATED'],
    ks.map((k) => [
      k.id,
      k.tenant,
      k.name,
      unlimited(k.rpm),
      unlimited(k.tpm),
      k.weight,
      k.maxPriority,
      new Date(k.createdAt).toISOString().replace(/\.\d{3}Z$/, 'Z'),
    ]),
  );
}

async function watch(p: Parsed, client: AdminClient, io: CliIo): Promise<void> {
  const stream = client.watch();
  const off = io.onInterrupt(() => stream.cancel());
  try {
    for await (const ev of stream) io.stdout(`${p.json ? JSON.stringify(ev) : eventLine(ev)}\n`);
  } finally {
    off();
  }
}

export function eventLine(ev: ClusterEvent): string {
  return `${new Date(ev.at).toISOString()}  ${ev.kind.padEnd(20)}  ${(ev.subject || '-').padEnd(16)}  ${ev.message}`.trimEnd();
}

export function deploymentsTable(ds: Deployment[]): string {
  return formatTable(
    ['NAME', 'ALIASES', 'ENGINE', 'REPLICAS', 'CONCURRENCY', 'SOURCE'],
    ds.map((d) => [
      d.name,
      d.aliases?.join(','),
      d.engine?.type,
      d.replicas ? `${d.replicas.min}-${d.replicas.max}` : '',
      d.concurrency,
      d.source,
    ]),
  );
}

export function workersTable(ws: WorkerInfo[]): string {
  return formatTable(
    ['ID', 'ALIVE', 'STATE', 'MODELS', 'LOAD', 'ENGINES', 'METRICS PORT', 'RESTARTS', 'LAST EXIT'],
    ws.map((w) => {
      const s = w.status;
      // A supervised process that is not running normally says more than its last heartbeat.
      const processTrouble = w.process && !['starting', 'ready'].includes(w.process.state);
      return [
        w.id,
        w.alive ? 'yes' : 'no',
        processTrouble ? w.process!.state : (s?.state ?? w.process?.state),
        s?.models.join(','),
        s ? `${s.inflight}/${s.capacity}` : '',
        s
          ? Object.entries(s.engines)
              .map(([m, st]) => `${m}=${st}`)
              .join(',')
          : '',
        s?.metricsPort,
        w.process?.restarts,
        w.process?.lastExit,
      ];
    }),
  );
}

export function processesTable(ps: ProcessInfo[]): string {
  return formatTable(
    ['KIND', 'ID', 'PID', 'STATE', 'RESTARTS', 'LAST EXIT', 'UPTIME'],
    ps.map((p) => [p.kind, p.id, p.pid, p.state, p.restarts, p.lastExit, p.uptimeMs === null ? null : duration(p.uptimeMs)]),
  );
}

/** A duration for people: `12s`, `3m05s`, `2h03m`, `4d06h`. */
export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const two = (n: number) => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${two(s % 60)}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h${two(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86_400)}d${two(Math.floor((s % 86_400) / 3600))}h`;
}

export function scaleTable(rows: ModelScale[]): string {
  return formatTable(
    ['MODEL', 'DESIRED', 'LIVE', 'MIN', 'MAX', 'QUEUED', 'PENDING'],
    rows.map((r) => [r.model, r.desired, r.live, r.min, r.max, r.queued, r.pending]),
  );
}

/** One line saying what went wrong. */
function describe(err: unknown, address: string): string {
  const oneLine = (s: string) => s.replace(/\s*[\r\n]+\s*/g, ' ').trim();
  if (err instanceof AdminCallError) {
    const d = oneLine(err.details);
    switch (err.code) {
      case grpc.status.UNAVAILABLE: {
        const reason = connectReason(d);
        return reason
          ? `cannot reach the controller at ${address}: ${reason}`
          : `the controller at ${address} is unavailable: ${d}`;
      }
      case grpc.status.DEADLINE_EXCEEDED:
        return `the controller at ${address} did not answer in time: ${d}`;
      case grpc.status.UNAUTHENTICATED:
        return `${d} (pass --token or set LLMUX_ADMIN_TOKEN)`;
      case grpc.status.FAILED_PRECONDITION:
      case grpc.status.NOT_FOUND:
      case grpc.status.INVALID_ARGUMENT:
        return d;
      default:
        return `${err.codeName}: ${d}`;
    }
  }
  if (err instanceof CliError) return oneLine(err.message);
  return oneLine((err as Error)?.message ?? String(err));
}

const CONNECT_ERRORS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ETIMEDOUT: 'connection timed out',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'host name lookup failed',
};

/**
 * A short reason for a connection failure, from grpc-js's "No connection
 * established. Last error: Error: connect ECONNREFUSED ..."; null when the
 * details are not about connecting (the server itself answered UNAVAILABLE).
 */
function connectReason(details: string): string | null {
  const code = /\b(E[A-Z_]{3,})\b/.exec(details)?.[1];
  if (code && CONNECT_ERRORS[code]) return CONNECT_ERRORS[code];
  if (/connection|connect|resolution|handshake|tls|ssl|socket/i.test(details)) {
    return details.replace(/\s*Resolution note:\s*$/, '');
  }
  return null;
}
