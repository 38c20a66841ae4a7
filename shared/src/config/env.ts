import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { z } from 'zod';
import { ConfigError } from '../errors/index.js';
import type { RedisConfig, RedisNode } from '../redis/connection.js';
import type { TracingConfig } from '../tracing/index.js';
import { formatIssues } from './zod-errors.js';

/**
 * The one place that reads environment variables. Each component gets a typed,
 * validated options object; docs/configuration.md lists every variable.
 */

const int = (def: number, min = 0) => z.coerce.number().int().min(min).default(def);
const logLevel = z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info');

const common = {
  /** Redis to use. Default `redis://127.0.0.1:6379`. */
  REDIS_URL: z.string().url().default('redis://127.0.0.1:6379'),
  /** Sentinels (`host:port,host:port`): the primary is the one they name REDIS_SENTINEL_NAME. */
  REDIS_SENTINELS: z.string().optional(),
  REDIS_SENTINEL_NAME: z.string().min(1).default('mymaster'),
  REDIS_SENTINEL_USERNAME: z.string().optional(),
  REDIS_SENTINEL_PASSWORD: z.string().optional(),
  /** Seed nodes of a Redis Cluster (`host:port,host:port`). */
  REDIS_CLUSTER_NODES: z.string().optional(),
  /** ACL user and password of the data nodes (credentials in REDIS_URL take precedence). */
  REDIS_USERNAME: z.string().optional(),
  REDIS_PASSWORD: z.string().optional(),
  /** TLS to Redis without a `rediss://` URL (sentinel, cluster). */
  REDIS_TLS: z
    .enum(['true', 'false', '1', '0'])
    .default('false')
    .transform((v) => v === 'true' || v === '1'),
  /** PEM files: the CA that signed the servers' certificates; a client certificate and key (mutual TLS). */
  REDIS_TLS_CA: z.string().optional(),
  REDIS_TLS_CERT: z.string().optional(),
  REDIS_TLS_KEY: z.string().optional(),
  /** Prefix of every Redis key. Default `llm`. */
  KEY_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_.-]+$/)
    .default('llm'),
  LOG_LEVEL: logLevel,
  /** OTLP/HTTP traces endpoint; setting it (or OTEL_EXPORTER_OTLP_ENDPOINT) turns tracing on. */
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: z.string().url().optional(),
  /** OTLP/HTTP base endpoint; traces go to `<it>/v1/traces`. */
  OTEL_EXPORTER_OTLP_ENDPOINT: z.string().url().optional(),
  /** `service.name` of the spans. Default `llmux-<gateway|worker|controller>`. */
  OTEL_SERVICE_NAME: z.string().min(1).optional(),
  /** How long spans are batched before export. Default 5000 ms. */
  OTEL_BSP_SCHEDULE_DELAY: int(5000, 0),
};

/** Tracing settings from the standard OpenTelemetry variables; null (off) without an endpoint. */
function tracingOf(e: {
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?: string;
  OTEL_EXPORTER_OTLP_ENDPOINT?: string;
  OTEL_SERVICE_NAME?: string;
  OTEL_BSP_SCHEDULE_DELAY: number;
}): TracingConfig | null {
  const endpoint =
    e.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ??
    (e.OTEL_EXPORTER_OTLP_ENDPOINT ? `${e.OTEL_EXPORTER_OTLP_ENDPOINT.replace(/\/+$/, '')}/v1/traces` : undefined);
  if (!endpoint) return null;
  return { endpoint, serviceName: e.OTEL_SERVICE_NAME ?? null, scheduleDelayMs: e.OTEL_BSP_SCHEDULE_DELAY };
}

const gatewayEnv = z.object({
  ...common,
  /** HTTP port (0: any free port). Default 8000. */
  PORT: int(8000).pipe(z.number().max(65535)),
  /** Bind address. Default 127.0.0.1 (containers set 0.0.0.0). */
  HOST: z.string().default('127.0.0.1'),
  /** This gateway's id (names its reply stream). Default: host, pid and a random suffix. */
  GATEWAY_ID: z
    .string()
    .regex(/^[A-Za-z0-9_.-]+$/)
    .optional(),
  /** Largest accepted request body. Default 1 MiB. */
  MAX_BODY_BYTES: int(1_048_576, 1),
  /** A request still running after this long ends with a timeout error. Default 10 minutes. */
  REQUEST_TIMEOUT_MS: int(600_000, 1),
  /** How long SIGTERM lets open requests finish. Default 30000 ms. */
  DRAIN_TIMEOUT_MS: int(30_000, 0),
  /** Open requests (streams) this gateway holds at most; past it new ones get a 503 `overloaded`. Default 10000. */
  MAX_OPEN_REQUESTS: int(10_000, 1),
  /** Response bytes buffered for a client that does not read, per request, before the request is cancelled. Default 1 MiB. */
  MAX_BUFFERED_BYTES: int(1_048_576, 1024),
  /** Most characters of prompt text a request may carry (all messages together). Default 1000000. */
  MAX_PROMPT_CHARS: int(1_000_000, 1),
  /** `required`: every API request needs `Authorization: Bearer <key>` with a key created by `llmctl keys create`. Default `off`. */
  AUTH: z.enum(['off', 'required']).default('off'),
  /** How long an Idempotency-Key (and the output of its request) is kept. Default 3600000 ms (1 hour). */
  IDEMPOTENCY_TTL_MS: int(3_600_000, 1000),
  /** How long a finished request's events are kept for a client to replay or resume (Last-Event-ID). Default 600000 ms. */
  OUTPUT_RETENTION_MS: int(600_000, 1000),
  /** A request sent with an Idempotency-Key keeps running this long after its client went away, so a retry can attach. Default 30000 ms. */
  RESUME_GRACE_MS: int(30_000, 0),
});

const workerEnv = z.object({
  ...common,
  /** This agent's id (its consumer name). Default `<host>-<pid>`. */
  WORKER_ID: z
    .string()
    .regex(/^[A-Za-z0-9_.-]+$/)
    .optional(),
  /** Comma-separated deployment names to serve. Default: every deployment. */
  WORKER_MODELS: z.string().optional(),
  /** Engine replicas per served deployment on this node (a bigger node runs more); capacity is replicas x concurrency. Default 1. */
  ENGINE_REPLICAS: int(1, 1),
  /** Where `hf:` model sources are looked for and downloaded to. Default `./models`. (Plain paths are relative to the working folder.) */
  MODELS_DIR: z.string().default('models'),
  /** Base URL for `hf:` downloads. Default `https://huggingface.co`. */
  HF_ENDPOINT: z.string().url().default('https://huggingface.co'),
  /** Heartbeat period. Default 1000 ms. */
  HEARTBEAT_INTERVAL_MS: int(1000, 10),
  /** A worker whose heartbeat is older than this is dead and its requests are taken over. Default 3000 ms. */
  HEARTBEAT_TTL_MS: int(3000, 20),
  /** How often a worker with room looks for dead workers' requests to take over. Default 1000 ms. */
  RECLAIM_INTERVAL_MS: int(1000, 10),
  /** Attempts a request gets (first run, takeovers, hand-backs) before it ends with an error. Default 3. */
  MAX_ATTEMPTS: int(3, 1),
  /** How long a request's state and delivered text stay in Redis after its deadline. Default 600000 ms. */
  OUTPUT_RETENTION_MS: int(600_000, 1000),
  /** `least-loaded`: only the worker with the lowest load after claiming waits for new work. `fifo`: every worker with room does. */
  CLAIM_POLICY: z.enum(['least-loaded', 'fifo']).default('least-loaded'),
  /** Longest a token waits in the worker before it is sent. Default 15 ms. */
  FLUSH_INTERVAL_MS: int(15, 0),
  /** Tokens that force a send before the interval ends. Default 32. */
  MAX_BATCH_TOKENS: int(32, 1),
  /** How long SIGTERM waits for in-flight requests. Default 30000 ms. */
  DRAIN_TIMEOUT_MS: int(30_000, 0),
  /** Approximate cap on each reply stream's length. Default 100000 entries. */
  REPLY_STREAM_MAXLEN: int(100_000, 100),
  /** Log each request's prompt and completion with its `request done` line. Off by default: they are never logged otherwise. */
  LOG_REQUEST_CONTENT: z
    .enum(['true', 'false', '1', '0'])
    .default('false')
    .transform((v) => v === 'true' || v === '1'),
  /** Port of the agent's HTTP server (`/metrics`, `/healthz`); 0 picks a free one (logged, and in the worker status); `off` disables it. Default 0. */
  METRICS_PORT: z.union([z.literal('off'), z.coerce.number().int().min(0).max(65535)]).default(0),
  /** Bind address of that server. Default 127.0.0.1 (containers set 0.0.0.0). */
  METRICS_HOST: z.string().default('127.0.0.1'),
});

const controllerEnv = z.object({
  ...common,
  /** The launcher's own log level; its children get LOG_LEVEL when set, else `warn`. Default warn. */
  LOG_LEVEL: logLevel.unwrap().default('warn'),
  /** The deployments file. Default `./deployments.json`. */
  DEPLOYMENTS_FILE: z.string().default('deployments.json'),
  /**
   * `local`: start and supervise the gateway and worker agents on this machine.
   * `cluster`: agents run elsewhere under their own process manager; the
   * controller sends them control jobs and publishes desired replicas.
   */
  CONTROLLER_MODE: z.enum(['local', 'cluster']).default('local'),
  /** This controller's id. Default `<host>-<pid>`. */
  CONTROLLER_ID: z
    .string()
    .regex(/^[A-Za-z0-9_.-]+$/)
    .optional(),
  /** Leader lease TTL: a standby takes over at most this long after the leader dies. Default 5000 ms. */
  LEASE_TTL_MS: int(5000, 100),
  /** Admin API (gRPC) bind address. Default 127.0.0.1. */
  ADMIN_HOST: z.string().default('127.0.0.1'),
  /** Admin API port; 0 picks a free one; `off` disables it. Default 50051. */
  ADMIN_PORT: z.union([z.literal('off'), z.coerce.number().int().min(0).max(65535)]).default(50051),
  /** When set, admin calls must carry `authorization: Bearer <token>`. */
  ADMIN_TOKEN: z.string().min(8).optional(),
  /** PEM files: when both are set the admin API serves TLS. */
  ADMIN_TLS_CERT: z.string().optional(),
  ADMIN_TLS_KEY: z.string().optional(),
  /** This many exits of a local worker within CRASH_LOOP_WINDOW_MS stops its restarts. Default 5. */
  CRASH_LOOP_EXITS: int(5, 2),
  CRASH_LOOP_WINDOW_MS: int(60_000, 1000),
  /** Health check and hand-over period. Default 1000 ms. */
  HEALTH_INTERVAL_MS: int(1000, 50),
  /** Local mode: how often the controller probes the gateway's `GET /healthz` (timeout: this, at most 1 s). Default 2000 ms. */
  GATEWAY_HEALTH_INTERVAL_MS: int(2000, 50),
  /** Local mode: this many failed gateway probes in a row make it hung: SIGKILL, then the usual restart. Default 3. */
  GATEWAY_HEALTH_FAILURES: int(3, 1),
  /** Autoscaler period. Default 2000 ms. */
  AUTOSCALE_INTERVAL_MS: int(2000, 100),
  /** Scale down only after the lower figure has held this long. Default 30000 ms. */
  SCALE_DOWN_AFTER_MS: int(30_000, 0),
  /** Utilisation the autoscaler aims for. Default 0.75. */
  TARGET_UTILIZATION: z.coerce.number().gt(0).max(1).default(0.75),
  /** How long SIGTERM lets children drain (passed to them); they are killed 5 s later. Default 30000 ms. */
  DRAIN_TIMEOUT_MS: int(30_000, 0),
  /** Start a private redis-server when none answers at REDIS_URL. Default true. */
  EMBEDDED_REDIS: z
    .enum(['true', 'false', '1', '0'])
    .default('true')
    .transform((v) => v === 'true' || v === '1'),
  PORT: int(8000).pipe(z.number().max(65535)),
  HOST: z.string().default('127.0.0.1'),
  /** Port of the controller's `/metrics`; 0 picks a free one; `off` disables it. Default 9465. */
  METRICS_PORT: z.union([z.literal('off'), z.coerce.number().int().min(0).max(65535)]).default(9465),
  /** Bind address of `/metrics`. Default 127.0.0.1. */
  METRICS_HOST: z.string().default('127.0.0.1'),
});

function parse<T extends z.ZodType>(schema: T, env: NodeJS.ProcessEnv): z.infer<T> {
  // An empty variable means "not set", as in most shells' `VAR= cmd` usage.
  const set = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const r = schema.safeParse(set);
  if (!r.success) throw new ConfigError(`invalid environment: ${formatIssues(r.error.issues)}`);
  return r.data;
}

/** `host:port,host:port` as nodes; a ConfigError naming `name` when malformed. */
function nodesOf(name: string, v: string): RedisNode[] {
  const nodes = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(s);
      const port = m ? Number(m[2]) : NaN;
      if (!m || port < 1 || port > 65535) throw new ConfigError(`invalid environment: ${name}: "${s}" is not host:port`);
      return { host: m[1]!, port };
    });
  if (nodes.length === 0) throw new ConfigError(`invalid environment: ${name}: no host:port given`);
  return nodes;
}

type RedisEnv = {
  REDIS_URL: string;
  REDIS_SENTINELS?: string;
  REDIS_SENTINEL_NAME: string;
  REDIS_SENTINEL_USERNAME?: string;
  REDIS_SENTINEL_PASSWORD?: string;
  REDIS_CLUSTER_NODES?: string;
  REDIS_USERNAME?: string;
  REDIS_PASSWORD?: string;
  REDIS_TLS: boolean;
  REDIS_TLS_CA?: string;
  REDIS_TLS_CERT?: string;
  REDIS_TLS_KEY?: string;
};

/** The Redis connection settings (standalone, sentinel or cluster; credentials; TLS). */
function redisOf(e: RedisEnv): RedisConfig {
  if (e.REDIS_SENTINELS && e.REDIS_CLUSTER_NODES) {
    throw new ConfigError('invalid environment: REDIS_SENTINELS and REDIS_CLUSTER_NODES: set one or the other');
  }
  const tlsOn = e.REDIS_TLS || e.REDIS_URL.startsWith('rediss:');
  for (const name of ['REDIS_TLS_CA', 'REDIS_TLS_CERT', 'REDIS_TLS_KEY'] as const) {
    const path = e[name];
    if (!path) continue;
    if (!tlsOn) throw new ConfigError(`invalid environment: ${name}: needs REDIS_TLS=true or a rediss:// REDIS_URL`);
    if (!existsSync(path)) throw new ConfigError(`invalid environment: ${name}: no file at ${path}`);
  }
  if (!e.REDIS_TLS_CERT !== !e.REDIS_TLS_KEY) {
    throw new ConfigError('invalid environment: REDIS_TLS_CERT and REDIS_TLS_KEY: set both or neither');
  }
  return {
    url: e.REDIS_URL,
    sentinels: e.REDIS_SENTINELS ? nodesOf('REDIS_SENTINELS', e.REDIS_SENTINELS) : null,
    sentinelName: e.REDIS_SENTINEL_NAME,
    sentinelUsername: e.REDIS_SENTINEL_USERNAME ?? null,
    sentinelPassword: e.REDIS_SENTINEL_PASSWORD ?? null,
    clusterNodes: e.REDIS_CLUSTER_NODES ? nodesOf('REDIS_CLUSTER_NODES', e.REDIS_CLUSTER_NODES) : null,
    username: e.REDIS_USERNAME ?? null,
    password: e.REDIS_PASSWORD ?? null,
    tls: tlsOn ? { ca: e.REDIS_TLS_CA ?? null, cert: e.REDIS_TLS_CERT ?? null, key: e.REDIS_TLS_KEY ?? null } : null,
  };
}

/** Options common to every process. */
export interface CommonConfig {
  /** REDIS_URL as given (with sentinels or cluster nodes, see `redis`). */
  redisUrl: string;
  /** How to reach Redis: pass this, not `redisUrl`, to the connection factory. */
  redis: RedisConfig;
  keyPrefix: string;
  logLevel: string;
  /** OpenTelemetry tracing; null when off (the default). */
  tracing: TracingConfig | null;
}

export interface GatewayConfig extends CommonConfig {
  port: number;
  host: string;
  gatewayId: string;
  maxBodyBytes: number;
  requestTimeoutMs: number;
  drainTimeoutMs: number;
  maxOpenRequests: number;
  maxBufferedBytes: number;
  maxPromptChars: number;
  auth: 'off' | 'required';
  idempotencyTtlMs: number;
  resumeGraceMs: number;
  outputRetentionMs: number;
}

export interface WorkerConfig extends CommonConfig {
  workerId: string;
  models: string[] | null;
  engineReplicas: number;
  modelsDir: string;
  hfEndpoint: string;
  heartbeatIntervalMs: number;
  heartbeatTtlMs: number;
  reclaimIntervalMs: number;
  maxAttempts: number;
  outputRetentionMs: number;
  claimPolicy: 'least-loaded' | 'fifo';
  flushIntervalMs: number;
  maxBatchTokens: number;
  drainTimeoutMs: number;
  replyStreamMaxLen: number;
  /** null: no HTTP server. */
  metrics: { host: string; port: number } | null;
  logRequestContent: boolean;
}

export interface ControllerConfig extends CommonConfig {
  deploymentsFile: string;
  mode: 'local' | 'cluster';
  controllerId: string;
  leaseTtlMs: number;
  admin: { host: string; port: number; token: string | null; tls: { cert: string; key: string } | null } | null;
  crashLoopExits: number;
  crashLoopWindowMs: number;
  healthIntervalMs: number;
  /** Local mode: period of the gateway's liveness probe (`GET /healthz`). */
  gatewayHealthIntervalMs: number;
  /** Local mode: failed probes in a row after which the gateway is killed and restarted. */
  gatewayHealthFailures: number;
  autoscaleIntervalMs: number;
  scaleDownAfterMs: number;
  targetUtilization: number;
  drainTimeoutMs: number;
  embeddedRedis: boolean;
  port: number;
  host: string;
  /** null: no `/metrics`. */
  metrics: { host: string; port: number } | null;
}

const shortHost = () => hostname().replace(/[^A-Za-z0-9_.-]/g, '_');

export function loadGatewayConfig(env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  const e = parse(gatewayEnv, env);
  return {
    redisUrl: e.REDIS_URL,
    redis: redisOf(e),
    keyPrefix: e.KEY_PREFIX,
    logLevel: e.LOG_LEVEL,
    tracing: tracingOf(e),
    port: e.PORT,
    host: e.HOST,
    gatewayId: e.GATEWAY_ID ?? `${shortHost()}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`,
    maxBodyBytes: e.MAX_BODY_BYTES,
    requestTimeoutMs: e.REQUEST_TIMEOUT_MS,
    drainTimeoutMs: e.DRAIN_TIMEOUT_MS,
    maxOpenRequests: e.MAX_OPEN_REQUESTS,
    maxBufferedBytes: e.MAX_BUFFERED_BYTES,
    maxPromptChars: e.MAX_PROMPT_CHARS,
    auth: e.AUTH,
    idempotencyTtlMs: e.IDEMPOTENCY_TTL_MS,
    resumeGraceMs: e.RESUME_GRACE_MS,
    outputRetentionMs: e.OUTPUT_RETENTION_MS,
  };
}

export function loadWorkerConfig(env: NodeJS.ProcessEnv = process.env): WorkerConfig {
  const e = parse(workerEnv, env);
  return {
    redisUrl: e.REDIS_URL,
    redis: redisOf(e),
    keyPrefix: e.KEY_PREFIX,
    logLevel: e.LOG_LEVEL,
    tracing: tracingOf(e),
    workerId: e.WORKER_ID ?? `${shortHost()}-${process.pid}`,
    models: e.WORKER_MODELS
      ? e.WORKER_MODELS.split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : null,
    engineReplicas: e.ENGINE_REPLICAS,
    modelsDir: e.MODELS_DIR,
    hfEndpoint: e.HF_ENDPOINT,
    heartbeatIntervalMs: e.HEARTBEAT_INTERVAL_MS,
    heartbeatTtlMs: e.HEARTBEAT_TTL_MS,
    reclaimIntervalMs: e.RECLAIM_INTERVAL_MS,
    maxAttempts: e.MAX_ATTEMPTS,
    outputRetentionMs: e.OUTPUT_RETENTION_MS,
    claimPolicy: e.CLAIM_POLICY,
    flushIntervalMs: e.FLUSH_INTERVAL_MS,
    maxBatchTokens: e.MAX_BATCH_TOKENS,
    drainTimeoutMs: e.DRAIN_TIMEOUT_MS,
    replyStreamMaxLen: e.REPLY_STREAM_MAXLEN,
    metrics: e.METRICS_PORT === 'off' ? null : { host: e.METRICS_HOST, port: e.METRICS_PORT },
    logRequestContent: e.LOG_REQUEST_CONTENT,
  };
}

export function loadControllerConfig(env: NodeJS.ProcessEnv = process.env): ControllerConfig {
  const e = parse(controllerEnv, env);
  return {
    redisUrl: e.REDIS_URL,
    redis: redisOf(e),
    keyPrefix: e.KEY_PREFIX,
    logLevel: e.LOG_LEVEL,
    tracing: tracingOf(e),
    deploymentsFile: e.DEPLOYMENTS_FILE,
    mode: e.CONTROLLER_MODE,
    controllerId: e.CONTROLLER_ID ?? `${shortHost()}-${process.pid}`,
    leaseTtlMs: e.LEASE_TTL_MS,
    admin:
      e.ADMIN_PORT === 'off'
        ? null
        : {
            host: e.ADMIN_HOST,
            port: e.ADMIN_PORT,
            token: e.ADMIN_TOKEN ?? null,
            tls: e.ADMIN_TLS_CERT && e.ADMIN_TLS_KEY ? { cert: e.ADMIN_TLS_CERT, key: e.ADMIN_TLS_KEY } : null,
          },
    crashLoopExits: e.CRASH_LOOP_EXITS,
    crashLoopWindowMs: e.CRASH_LOOP_WINDOW_MS,
    healthIntervalMs: e.HEALTH_INTERVAL_MS,
    gatewayHealthIntervalMs: e.GATEWAY_HEALTH_INTERVAL_MS,
    gatewayHealthFailures: e.GATEWAY_HEALTH_FAILURES,
    autoscaleIntervalMs: e.AUTOSCALE_INTERVAL_MS,
    scaleDownAfterMs: e.SCALE_DOWN_AFTER_MS,
    targetUtilization: e.TARGET_UTILIZATION,
    drainTimeoutMs: e.DRAIN_TIMEOUT_MS,
    embeddedRedis: e.EMBEDDED_REDIS,
    port: e.PORT,
    host: e.HOST,
    metrics: e.METRICS_PORT === 'off' ? null : { host: e.METRICS_HOST, port: e.METRICS_PORT },
  };
}
