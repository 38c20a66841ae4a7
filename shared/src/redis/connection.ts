import { readFileSync } from 'node:fs';
import type { ConnectionOptions as TlsOptions } from 'node:tls';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { keySlot } from './slots.js';

export { Redis, Cluster };

/** One Redis node (a sentinel, or a cluster seed node). */
export interface RedisNode {
  host: string;
  port: number;
}

/**
 * Where Redis is and how to reach it, built from the REDIS_* variables
 * (`shared/src/config/env.ts`). One of three modes:
 *
 * - standalone: `url` (`redis://` or `rediss://`, with credentials and a db
 *   number if wanted), the default;
 * - sentinel: `sentinels` and `sentinelName`; ioredis asks the sentinels for
 *   the current primary and follows failovers;
 * - cluster: `clusterNodes`, seed nodes of a Redis Cluster; ioredis learns the
 *   slot map from them and follows MOVED redirections and failovers.
 *
 * Credentials and TLS apply to the data nodes in every mode; in sentinel mode
 * the sentinels have credentials of their own and use TLS when the data nodes
 * do.
 */
export interface RedisConfig {
  /** Standalone: the server. Sentinel: only its db number is used. Cluster: not used. A `rediss:` scheme turns TLS on in every mode. */
  url: string;
  sentinels: RedisNode[] | null;
  /** The primary's name the sentinels monitor. */
  sentinelName: string;
  sentinelUsername: string | null;
  sentinelPassword: string | null;
  clusterNodes: RedisNode[] | null;
  /** ACL user and password of the data nodes. In standalone mode credentials in `url` take precedence. */
  username: string | null;
  password: string | null;
  /** null: plain TCP. Otherwise TLS, with PEM files (paths) when set. */
  tls: { ca: string | null; cert: string | null; key: string | null } | null;
}

/** A Redis to connect to: a full configuration, or just a URL (standalone). */
export type RedisTarget = RedisConfig | string;

/** The configuration of a plain URL: standalone, TLS when the scheme is `rediss:`. */
export function redisConfigOf(target: RedisTarget): RedisConfig {
  if (typeof target !== 'string') return target;
  return {
    url: target,
    sentinels: null,
    sentinelName: 'mymaster',
    sentinelUsername: null,
    sentinelPassword: null,
    clusterNodes: null,
    username: null,
    password: null,
    tls: target.startsWith('rediss:') ? { ca: null, cert: null, key: null } : null,
  };
}

export type RedisMode = 'standalone' | 'sentinel' | 'cluster';

export function redisMode(target: RedisTarget): RedisMode {
  const c = redisConfigOf(target);
  return c.clusterNodes ? 'cluster' : c.sentinels ? 'sentinel' : 'standalone';
}

/** Where Redis is, for logs and the ready line: never a password. */
export function describeRedis(target: RedisTarget): string {
  const c = redisConfigOf(target);
  const nodes = (ns: RedisNode[]) => ns.map((n) => `${n.host}:${n.port}`).join(',');
  if (c.clusterNodes) return `cluster ${nodes(c.clusterNodes)}${c.tls ? ' (TLS)' : ''}`;
  if (c.sentinels) return `sentinel ${c.sentinelName}@${nodes(c.sentinels)}${c.tls ? ' (TLS)' : ''}`;
  try {
    const u = new URL(c.url);
    if (u.password) u.password = '***';
    return u.toString().replace(/\/$/, '');
  } catch {
    return c.url;
  }
}

/**
 * The REDIS_* variables that describe `target`, for child processes: every
 * one of them, unset ones as undefined (which removes an inherited value), so
 * a child reaches exactly the Redis its parent uses.
 */
export function redisEnvOf(target: RedisTarget): Record<string, string | undefined> {
  const c = redisConfigOf(target);
  const nodes = (ns: RedisNode[] | null) => (ns ? ns.map((n) => `${n.host}:${n.port}`).join(',') : undefined);
  return {
    REDIS_URL: c.url,
    REDIS_SENTINELS: nodes(c.sentinels),
    REDIS_SENTINEL_NAME: c.sentinels ? c.sentinelName : undefined,
    REDIS_SENTINEL_USERNAME: c.sentinelUsername ?? undefined,
    REDIS_SENTINEL_PASSWORD: c.sentinelPassword ?? undefined,
    REDIS_CLUSTER_NODES: nodes(c.clusterNodes),
    REDIS_USERNAME: c.username ?? undefined,
    REDIS_PASSWORD: c.password ?? undefined,
    REDIS_TLS: c.tls && !c.url.startsWith('rediss:') ? 'true' : undefined,
    REDIS_TLS_CA: c.tls?.ca ?? undefined,
    REDIS_TLS_CERT: c.tls?.cert ?? undefined,
    REDIS_TLS_KEY: c.tls?.key ?? undefined,
  };
}

export interface ConnectionOptions {
  /**
   * Fail commands at once while disconnected instead of queueing them.
   * Request paths use this so clients get a fast 503, not a hang. Default false.
   */
  failFast?: boolean;
  /** Name shown by `CLIENT LIST`. */
  name?: string;
  /** One connection attempt only, bounded by this many ms (a probe). */
  probeMs?: number;
}

const backoff = (times: number) => Math.min(50 * 2 ** Math.min(times, 6), 2000);

function tlsOf(c: RedisConfig): TlsOptions | undefined {
  if (!c.tls) return undefined;
  const read = (path: string | null) => (path ? readFileSync(path) : undefined);
  const out: TlsOptions = {};
  const ca = read(c.tls.ca);
  const cert = read(c.tls.cert);
  const key = read(c.tls.key);
  if (ca) out.ca = ca;
  if (cert) out.cert = cert;
  if (key) out.key = key;
  return out;
}

/** Credentials and TLS of the data nodes, as ioredis options. */
function accessOf(c: RedisConfig): RedisOptions {
  const o: RedisOptions = {};
  if (c.username) o.username = c.username;
  if (c.password) o.password = c.password;
  const tls = tlsOf(c);
  if (tls) o.tls = tls;
  return o;
}

/**
 * The one way every process connects to Redis. `base` holds the options of
 * the connection's role (command or blocking); this adds the mode, the
 * credentials and TLS. A Cluster is returned typed as `Redis`: it offers the
 * same commands, and the few places that must know (CLIENT UNBLOCK, MGET
 * across slots, scripts) test `isCluster`.
 */
function connect(target: RedisTarget, base: RedisOptions, probeMs?: number): Redis {
  if (typeof target === 'string' && !target.startsWith('rediss:')) return new Redis(target, base);
  const c = redisConfigOf(target);
  if (c.clusterNodes) {
    const { enableAutoPipelining, enableOfflineQueue, lazyConnect, ...node } = base;
    const options: ClusterOptions = {
      lazyConnect,
      enableAutoPipelining,
      enableOfflineQueue,
      scaleReads: 'master',
      // While a failover is under way the slots of the lost primary answer CLUSTERDOWN or
      // not at all; commands are retried after these delays, up to maxRedirections times.
      retryDelayOnFailover: 200,
      retryDelayOnClusterDown: 200,
      retryDelayOnTryAgain: 100,
      maxRedirections: 32,
      clusterRetryStrategy: probeMs ? () => null : backoff,
      slotsRefreshTimeout: 2000,
      redisOptions: { ...node, ...accessOf(c) },
    };
    // URL parsing does not apply to a Cluster; its db is always 0.
    return new Cluster(c.clusterNodes, options) as unknown as Redis;
  }
  if (c.sentinels) {
    const tls = tlsOf(c);
    const db = (() => {
      try {
        const n = Number(new URL(c.url).pathname.slice(1));
        return Number.isInteger(n) && n > 0 ? n : 0;
      } catch {
        return 0;
      }
    })();
    return new Redis({
      ...base,
      ...accessOf(c),
      db,
      sentinels: c.sentinels,
      name: c.sentinelName,
      ...(c.sentinelUsername ? { sentinelUsername: c.sentinelUsername } : {}),
      ...(c.sentinelPassword ? { sentinelPassword: c.sentinelPassword } : {}),
      ...(tls ? { enableTLSForSentinelMode: true, sentinelTLS: tls } : {}),
      sentinelRetryStrategy: probeMs ? () => null : backoff,
      // Subscribe to the sentinels' +switch-master, so a failover is followed at once.
      failoverDetector: !probeMs,
      // A connection that still reaches a demoted primary: reconnect (through the sentinels) and resend.
      reconnectOnError: (err) => (err.message.startsWith('READONLY') ? 2 : false),
    });
  }
  return new Redis(c.url, { ...base, ...accessOf(c) });
}

/**
 * Creates a command connection to `target` with auto-pipelining on, so
 * commands issued in the same tick go out in one write. The client reconnects
 * forever with a capped backoff; callers await `connect()`.
 */
export function createRedis(target: RedisTarget, opts: ConnectionOptions = {}): Redis {
  const options: RedisOptions = {
    lazyConnect: true,
    enableAutoPipelining: true,
    connectionName: opts.name,
    maxRetriesPerRequest: opts.failFast ? 0 : 20,
    enableOfflineQueue: !opts.failFast,
    retryStrategy: opts.probeMs ? () => null : backoff,
    ...(opts.probeMs ? { connectTimeout: opts.probeMs } : {}),
  };
  return connect(target, options, opts.probeMs);
}

/**
 * A second connection for blocking reads (`XREAD BLOCK`, `XREADGROUP BLOCK`):
 * a blocked connection cannot serve other commands, and closing it is how a
 * reader loop is broken.
 */
export function createBlockingRedis(target: RedisTarget, name?: string): Redis {
  return connect(target, {
    lazyConnect: true,
    connectionName: name,
    enableAutoPipelining: false,
    maxRetriesPerRequest: null,
    retryStrategy: backoff,
  });
}

/** A connection for BullMQ (which needs `maxRetriesPerRequest: null` and no auto-pipelining). */
export function createBullRedis(target: RedisTarget, name?: string): Redis {
  return connect(target, {
    lazyConnect: false,
    connectionName: name,
    enableAutoPipelining: false,
    maxRetriesPerRequest: null,
    retryStrategy: backoff,
  });
}

/** Whether a connection made by this module is a Redis Cluster client. */
export function isCluster(redis: Redis): boolean {
  return (redis as { isCluster?: boolean }).isCluster === true;
}

/**
 * The BullMQ key prefix of a queue. On a cluster every key of a queue must
 * share one slot, so the prefix is the queue's name as a hash tag (one slot
 * per queue, spread over the masters); elsewhere BullMQ's default, `bull`.
 */
export function bullPrefix(redis: Redis, queueName: string): string {
  return isCluster(redis) ? `{${queueName}}` : 'bull';
}

/** Whether a Redis answers PING at `target` within `timeoutMs` (one attempt, no retries). */
export async function redisAnswers(target: RedisTarget, timeoutMs = 1000): Promise<boolean> {
  const r = createRedis(target, { failFast: true, probeMs: timeoutMs });
  r.on('error', () => {});
  let timer: NodeJS.Timeout | undefined;
  try {
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('timeout')), timeoutMs * 2);
    });
    await Promise.race([
      (async () => {
        await r.connect();
        await r.ping();
      })(),
      deadline,
    ]);
    return true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    r.disconnect();
  }
}

/**
 * GET of many keys. One MGET on a single server; on a cluster, where the keys
 * may live in different slots (MGET across slots is refused), one GET each,
 * which auto-pipelining sends to each node in one write.
 */
export async function getMany(redis: Redis, keys: string[]): Promise<(string | null)[]> {
  if (keys.length === 0) return [];
  if (!isCluster(redis)) return redis.mget(keys);
  return Promise.all(keys.map((k) => redis.get(k)));
}

/** A blocking connection's client on the server, for CLIENT UNBLOCK: its id, and on a cluster its node. */
export interface BlockedClient {
  /** `host:port` of the cluster node; null on a single server. */
  node: string | null;
  id: number;
}

const nodeName = (r: Redis) => `${r.options.host}:${r.options.port}`;

/**
 * The client a blocking read of `key` on `blocking` will be, on the server:
 * `CLIENT ID` of the connection, sent on a cluster to the node that serves
 * the key's slot now. Null when the cluster's slot map is not known yet.
 */
export async function blockedClientOf(blocking: Redis, key: string): Promise<BlockedClient | null> {
  if (!isCluster(blocking)) return { node: null, id: Number(await blocking.client('ID')) };
  const cluster = blocking as unknown as Cluster;
  const node = cluster.slots[keySlot(key)]?.[0];
  const conn = node ? cluster.nodes('master').find((n) => nodeName(n) === node) : undefined;
  if (!node || !conn) return null;
  return { node, id: Number(await conn.client('ID')) };
}

/** Cuts a blocked read short (`CLIENT UNBLOCK`), sent from `redis` to the server (node) where it waits. */
export async function unblockClient(redis: Redis, target: BlockedClient): Promise<void> {
  if (target.node === null) {
    await redis.client('UNBLOCK', target.id);
    return;
  }
  const conn = (redis as unknown as Cluster).nodes('master').find((n) => nodeName(n) === target.node);
  if (conn) await conn.client('UNBLOCK', target.id);
}

/** Stream entries as ioredis returns them from XREAD/XREADGROUP. */
export type StreamEntries = [id: string, fields: string[]][];
export type XReadReply = [key: string, entries: StreamEntries][] | null;
