import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { ApiError, ConfigError, isTransientRedisError, type Logger } from '@llmux/shared';
import { NotLeaderError, UnknownTargetError, type ControllerApi } from '../api.js';
import {
  adminService,
  apiKeyToWire,
  deploymentToWire,
  eventToWire,
  LEADER_ADDRESS_KEY,
  newApiKeyFromWire,
  processToWire,
  scaleToWire,
  workerToWire,
  type ApiKeyIdRequest,
  type ApplyDeploymentsRequest,
  type ApplyDeploymentsResponse,
  type CreateApiKeyRequest,
  type CreateApiKeyResponse,
  type Empty,
  type GetLeaderResponse,
  type ListApiKeysResponse,
  type ListDeploymentsResponse,
  type ListProcessesResponse,
  type ListScaleResponse,
  type ListWorkersResponse,
  type ScaleRequest,
  type ScaleResponse,
  type WireClusterEvent,
  type WorkerRequest,
} from './proto.js';

/** PEM certificate chain and private key for the admin server. */
export interface AdminTls {
  cert: string | Buffer;
  key: string | Buffer;
}

export interface AdminServerOptions {
  /** Address to bind (`127.0.0.1`, `0.0.0.0`, `::`...). */
  host: string;
  /** Port to bind; 0 picks a free one (read it back from `address`). */
  port: number;
  /** When set, every call must carry `authorization: Bearer <token>`. */
  token?: string | null;
  /** Serve TLS with this certificate and key; plaintext when absent. */
  tls?: AdminTls | null;
  logger: Logger;
  /** How long close() lets calls in flight finish before it cuts them. Default 5000 ms. */
  closeTimeoutMs?: number;
  /** A watcher with this many events not yet sent is too slow and its stream ends. Default 10000. */
  maxWatchBacklog?: number;
}

export interface AdminServer {
  /** `host:port` as bound (the port resolved when 0 was asked). */
  readonly address: string;
  readonly port: number;
  /** Stops serving: ends watch streams, lets unary calls finish, then cuts what is left. Idempotent. */
  close(): Promise<void>;
}

/** Reads a PEM certificate and key from files (ADMIN_TLS_CERT / ADMIN_TLS_KEY); a ConfigError names the one that fails. */
export async function readAdminTls(certFile: string, keyFile: string): Promise<AdminTls> {
  const read = async (file: string, what: string) => {
    try {
      return await readFile(file);
    } catch (err) {
      throw new ConfigError(`cannot read the admin TLS ${what} ${file}: ${(err as Error).message}`);
    }
  };
  return { cert: await read(certFile, 'certificate'), key: await read(keyFile, 'key') };
}

/** `host:port`, with brackets around an IPv6 host. */
export function joinHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/** An error that already has its gRPC status. */
class StatusError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
    readonly trailers?: grpc.Metadata,
  ) {
    super(message);
  }
}

/**
 * Serves the Admin service of shared/proto/admin.proto over gRPC on top of a
 * ControllerApi. It adds authentication and maps the API's errors to status
 * codes; the controller does the work.
 */
export async function startAdminServer(api: ControllerApi, opts: AdminServerOptions): Promise<AdminServer> {
  const log = opts.logger.child({ module: 'admin' });
  const closeTimeoutMs = opts.closeTimeoutMs ?? 5000;
  const maxBacklog = opts.maxWatchBacklog ?? 10_000;
  const expected = opts.token ? digest(`Bearer ${opts.token}`) : null;
  /** Open watch streams, each with the function that ends it. */
  const watches = new Set<(err: StatusError | null) => void>();

  /** Constant-time comparison of digests: equal length whatever the token sent. */
  const authenticate = (md: grpc.Metadata): void => {
    if (!expected) return;
    const values = md.get('authorization');
    const got = values.length === 1 && typeof values[0] === 'string' ? values[0] : '';
    if (!timingSafeEqual(digest(got), expected)) {
      throw new StatusError(
        grpc.status.UNAUTHENTICATED,
        got ? 'the admin token is wrong' : 'this controller needs an admin token (metadata authorization: Bearer <token>)',
      );
    }
  };

  const toStatus = (method: string, err: unknown): StatusError => {
    if (err instanceof StatusError) return err;
    if (err instanceof NotLeaderError) {
      const md = new grpc.Metadata();
      if (err.leaderAddress) md.set(LEADER_ADDRESS_KEY, err.leaderAddress);
      const msg = err.leaderAddress
        ? `not the leader; send changes to the leader at ${err.leaderAddress}`
        : 'not the leader, and no leader holds the lease right now; retry shortly';
      return new StatusError(grpc.status.FAILED_PRECONDITION, msg, md);
    }
    if (err instanceof UnknownTargetError) return new StatusError(grpc.status.NOT_FOUND, err.message);
    if (err instanceof ConfigError) return new StatusError(grpc.status.INVALID_ARGUMENT, err.message);
    if (err instanceof ApiError && err.status === 400) return new StatusError(grpc.status.INVALID_ARGUMENT, err.message);
    if (err instanceof ApiError && err.status === 404) return new StatusError(grpc.status.NOT_FOUND, err.message);
    if (err instanceof ApiError && err.status === 503) return new StatusError(grpc.status.UNAVAILABLE, err.message);
    if (isTransientRedisError(err)) {
      log.warn({ err, method }, 'admin call failed: Redis unavailable');
      return new StatusError(grpc.status.UNAVAILABLE, `Redis is unavailable: ${(err as Error).message}`);
    }
    log.error({ err, method }, 'admin call failed');
    return new StatusError(grpc.status.INTERNAL, `internal error in ${method}: ${(err as Error)?.message ?? String(err)}`);
  };

  const toServiceError = (e: StatusError): Partial<grpc.StatusObject> => ({
    code: e.code,
    details: e.message,
    metadata: e.trailers ?? new grpc.Metadata(),
  });

  /** A unary handler: authenticate, run, map the error. */
  function unary<Req, Res>(method: string, fn: (req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      const run = async () => {
        authenticate(call.metadata);
        return fn(call.request);
      };
      run().then(
        (res) => callback(null, res),
        (err: unknown) => {
          const status = toStatus(method, err);
          log.debug({ method, code: grpc.status[status.code], msg: status.message }, 'admin call refused');
          callback(toServiceError(status));
        },
      );
    };
  }

  const required = (name: string, v: string): string => {
    if (!v) throw new StatusError(grpc.status.INVALID_ARGUMENT, `${name} is required`);
    return v;
  };

  const handlers: grpc.UntypedServiceImplementation = {
    ListDeployments: unary<Empty, ListDeploymentsResponse>('ListDeployments', async () => ({
      deployments: (await api.listDeployments()).map(deploymentToWire),
    })),
    ListWorkers: unary<Empty, ListWorkersResponse>('ListWorkers', async () => ({
      workers: [...(await api.listWorkers())].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)).map(workerToWire),
    })),
    ListProcesses: unary<Empty, ListProcessesResponse>('ListProcesses', async () => ({
      processes: (await api.listProcesses()).map(processToWire),
    })),
    ListScale: unary<Empty, ListScaleResponse>('ListScale', async () => ({
      models: (await api.listScale()).map(scaleToWire),
    })),
    ApplyDeployments: unary<ApplyDeploymentsRequest, ApplyDeploymentsResponse>('ApplyDeployments', async (req) => {
      let doc: unknown;
      try {
        doc = JSON.parse(required('deployments_json', req.deploymentsJson));
      } catch (err) {
        if (err instanceof StatusError) throw err;
        throw new StatusError(grpc.status.INVALID_ARGUMENT, `deployments_json is not valid JSON: ${(err as Error).message}`);
      }
      const r = await api.applyDeployments(doc);
      return { added: r.added, removed: r.removed, changed: r.changed };
    }),
    Scale: unary<ScaleRequest, ScaleResponse>('Scale', async (req) => {
      required('model', req.model);
      if (!Number.isInteger(req.replicas) || req.replicas < 0) {
        throw new StatusError(grpc.status.INVALID_ARGUMENT, `replicas must be a whole number >= 0 (got ${req.replicas})`);
      }
      return { scale: scaleToWire(await api.scale(req.model, req.replicas)) };
    }),
    DrainWorker: unary<WorkerRequest, Empty>('DrainWorker', async (req) => {
      await api.drainWorker(required('id', req.id));
      log.info({ worker: req.id }, 'drain ordered through the admin API');
      return {};
    }),
    RestartWorker: unary<WorkerRequest, Empty>('RestartWorker', async (req) => {
      await api.restartWorker(required('id', req.id));
      log.info({ worker: req.id }, 'restart ordered through the admin API');
      return {};
    }),
    GetLeader: unary<Empty, GetLeaderResponse>('GetLeader', async () => {
      const leader = await api.leader();
      return {
        leader: leader ? { id: leader.id, adminAddress: leader.adminAddress ?? undefined } : null,
        answeredByLeader: api.isLeader(),
      };
    }),
    CreateApiKey: unary<CreateApiKeyRequest, CreateApiKeyResponse>('CreateApiKey', async (req) => {
      required('tenant', req.tenant);
      const created = await api.createApiKey(newApiKeyFromWire(req));
      // The id only: the secret is in the response and nowhere else.
      log.info({ id: created.id, tenant: created.record.tenant }, 'API key created through the admin API');
      return { key: created.key, record: apiKeyToWire(created.record) };
    }),
    ListApiKeys: unary<Empty, ListApiKeysResponse>('ListApiKeys', async () => ({
      keys: (await api.listApiKeys()).map(apiKeyToWire),
    })),
    RevokeApiKey: unary<ApiKeyIdRequest, Empty>('RevokeApiKey', async (req) => {
      await api.revokeApiKey(required('id', req.id));
      log.info({ id: req.id }, 'API key revoked through the admin API');
      return {};
    }),
    Watch: ((call: grpc.ServerWritableStream<Empty, WireClusterEvent>) => {
      try {
        authenticate(call.metadata);
      } catch (err) {
        call.emit('error', toServiceError(toStatus('Watch', err)));
        return;
      }
      let ended = false;
      let unsubscribe: (() => void) | null = null;
      const end = (err: StatusError | null) => {
        if (ended) return;
        ended = true;
        watches.delete(end);
        try {
          unsubscribe?.();
        } catch (e) {
          log.error({ err: e }, 'watch unsubscribe failed');
        }
        if (call.cancelled) return;
        if (err) call.emit('error', toServiceError(err));
        else call.end();
      };
      watches.add(end);
      call.on('cancelled', () => end(null));
      call.on('error', () => end(null));
      call.on('close', () => end(null));
      try {
        unsubscribe = api.watch((ev) => {
          if (ended) return;
          if (call.writableLength >= maxBacklog) {
            log.warn({ peer: call.getPeer() }, 'watcher too slow; ending its stream');
            end(new StatusError(grpc.status.RESOURCE_EXHAUSTED, `the watcher fell ${maxBacklog} events behind`));
            return;
          }
          call.write(eventToWire(ev));
        });
      } catch (err) {
        end(toStatus('Watch', err));
        return;
      }
      // The client may have gone while subscribing.
      if (ended) unsubscribe();
      log.debug({ peer: call.getPeer() }, 'watch opened');
    }) as grpc.handleServerStreamingCall<Empty, WireClusterEvent>,
  };

  const server = new grpc.Server({
    // Pings idle connections so a watcher whose host vanished is noticed and unsubscribed.
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
  });
  server.addService(adminService().service, handlers);
  const creds = opts.tls
    ? grpc.ServerCredentials.createSsl(
        null,
        [{ cert_chain: toBuffer(opts.tls.cert), private_key: toBuffer(opts.tls.key) }],
        false,
      )
    : grpc.ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(joinHostPort(opts.host, opts.port), creds, (err, p) => (err ? reject(err) : resolve(p)));
  }).catch((err: unknown) => {
    server.forceShutdown();
    throw new ConfigError(`cannot serve the admin API on ${joinHostPort(opts.host, opts.port)}: ${(err as Error).message}`);
  });
  const address = joinHostPort(opts.host, port);
  if (!opts.token && !isLoopback(opts.host)) {
    log.warn({ address }, 'the admin API is open to the network without a token; set ADMIN_TOKEN');
  }
  log.info({ address, tls: !!opts.tls, auth: !!opts.token }, 'admin API listening');

  let closing: Promise<void> | null = null;
  const close = () => {
    closing ??= (async () => {
      for (const end of [...watches]) end(new StatusError(grpc.status.UNAVAILABLE, 'the controller is shutting down'));
      const done = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), closeTimeoutMs);
      });
      const late = await Promise.race([done.then(() => false), timedOut]);
      clearTimeout(timer);
      if (late) {
        log.warn({ closeTimeoutMs }, 'admin calls still open at the deadline; cutting them');
        server.forceShutdown();
      }
      log.info({ address }, 'admin API closed');
    })();
    return closing;
  };
  return { address, port, close };
}

function toBuffer(v: string | Buffer): Buffer {
  return typeof v === 'string' ? Buffer.from(v) : v;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}
