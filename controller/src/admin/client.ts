import * as grpc from '@grpc/grpc-js';
import type { ApiKeyRecord, CreatedApiKey, Deployment, NewApiKey } from '@llmux/shared';
import type { ApplyResult, ClusterEvent, ModelScale, ProcessInfo, WorkerInfo } from '../api.js';
import {
  adminService,
  apiKeyFromWire,
  deploymentFromWire,
  eventFromWire,
  LEADER_ADDRESS_KEY,
  newApiKeyToWire,
  processFromWire,
  scaleFromWire,
  workerFromWire,
  type CreateApiKeyResponse,
  type GetLeaderResponse,
  type LeaderInfo,
  type ListApiKeysResponse,
  type ListDeploymentsResponse,
  type ListProcessesResponse,
  type ListScaleResponse,
  type ListWorkersResponse,
  type ScaleResponse,
  type WireClusterEvent,
} from './proto.js';

export type { LeaderInfo };

export interface AdminClientTls {
  /** PEM of the CA (or the self-signed certificate) to trust; default: the system's roots. */
  ca?: string | Buffer | null;
  /** Name to check the certificate against, when it differs from the address's host. */
  serverName?: string;
}

export interface AdminClientOptions {
  /** `host:port` of a controller's admin API. */
  address: string;
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string | null;
  /** Connect with TLS (`true`: trust the system's roots); plaintext when absent. */
  tls?: AdminClientTls | true | null;
  /** Deadline of each unary call. Default 10000 ms. */
  timeoutMs?: number;
}

/** A failed admin call: the gRPC status, its message, and for FAILED_PRECONDITION the leader's address. */
export class AdminCallError extends Error {
  override name = 'AdminCallError';
  constructor(
    readonly code: grpc.status,
    readonly details: string,
    /** Set when a standby refused a change and named the leader. */
    readonly leaderAddress: string | null,
  ) {
    super(`${grpc.status[code] ?? code}: ${details}`);
  }

  /** The status name, e.g. `NOT_FOUND`. */
  get codeName(): string {
    return grpc.status[this.code] ?? String(this.code);
  }
}

function toCallError(err: unknown): AdminCallError | Error {
  const e = err as Partial<grpc.ServiceError> | null;
  if (!e || typeof e.code !== 'number') return err as Error;
  const leader = e.metadata?.get(LEADER_ADDRESS_KEY)[0];
  return new AdminCallError(e.code, e.details ?? e.message ?? '', typeof leader === 'string' ? leader : null);
}

type UnaryMethod = (
  req: object,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res?: unknown) => void,
) => grpc.ClientUnaryCall;

/** A watch stream: iterate it for events; `cancel()` (or leaving the loop) ends the call. */
export interface AdminWatch extends AsyncIterable<ClusterEvent> {
  cancel(): void;
}

/**
 * Typed client of a controller's admin API (shared/proto/admin.proto). Each
 * method rejects with AdminCallError carrying the gRPC status.
 */
export class AdminClient {
  private readonly client: grpc.Client;
  private readonly timeoutMs: number;

  constructor(private readonly opts: AdminClientOptions) {
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    const tls = opts.tls === true ? {} : opts.tls;
    const creds = tls
      ? grpc.credentials.createSsl(tls.ca ? (typeof tls.ca === 'string' ? Buffer.from(tls.ca) : tls.ca) : null)
      : grpc.credentials.createInsecure();
    const channelOptions: grpc.ChannelOptions = {
      // A long watch notices a controller that vanished.
      'grpc.keepalive_time_ms': 60_000,
      'grpc.keepalive_timeout_ms': 20_000,
    };
    if (tls && tls.serverName) channelOptions['grpc.ssl_target_name_override'] = tls.serverName;
    const Ctor = adminService();
    this.client = new Ctor(opts.address, creds, channelOptions);
  }

  get address(): string {
    return this.opts.address;
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.opts.token) md.set('authorization', `Bearer ${this.opts.token}`);
    return md;
  }

  private call<Res>(method: string, req: object): Promise<Res> {
    const fn = (this.client as unknown as Record<string, UnaryMethod>)[method]!;
    return new Promise<Res>((resolve, reject) => {
      fn.call(this.client, req, this.metadata(), { deadline: Date.now() + this.timeoutMs }, (err, res) =>
        err ? reject(toCallError(err)) : resolve(res as Res),
      );
    });
  }

  async listDeployments(): Promise<Deployment[]> {
    const res = await this.call<ListDeploymentsResponse>('ListDeployments', {});
    return res.deployments.map(deploymentFromWire);
  }

  async listWorkers(): Promise<WorkerInfo[]> {
    const res = await this.call<ListWorkersResponse>('ListWorkers', {});
    return res.workers.map(workerFromWire);
  }

  /** Local mode: the gateway and worker processes the leader supervises. */
  async listProcesses(): Promise<ProcessInfo[]> {
    const res = await this.call<ListProcessesResponse>('ListProcesses', {});
    return res.processes.map(processFromWire);
  }

  async listScale(): Promise<ModelScale[]> {
    const res = await this.call<ListScaleResponse>('ListScale', {});
    return res.models.map(scaleFromWire);
  }

  /** Applies a deployments document: JSON text is sent as it is (the server reports its errors), anything else is serialised. */
  async applyDeployments(doc: unknown): Promise<ApplyResult> {
    const deploymentsJson = typeof doc === 'string' ? doc : JSON.stringify(doc);
    const r = await this.call<ApplyResult>('ApplyDeployments', { deploymentsJson });
    return { added: r.added, removed: r.removed, changed: r.changed };
  }

  async scale(model: string, replicas: number): Promise<ModelScale> {
    const res = await this.call<ScaleResponse>('Scale', { model, replicas });
    if (!res.scale) throw new Error('Scale answered without a scale');
    return scaleFromWire(res.scale);
  }

  async drainWorker(id: string): Promise<void> {
    await this.call('DrainWorker', { id });
  }

  async restartWorker(id: string): Promise<void> {
    await this.call('RestartWorker', { id });
  }

  async getLeader(): Promise<LeaderInfo> {
    const res = await this.call<GetLeaderResponse>('GetLeader', {});
    return {
      leader: res.leader ? { id: res.leader.id, adminAddress: res.leader.adminAddress ?? null } : null,
      answeredByLeader: res.answeredByLeader,
    };
  }

  /** Issues an API key; the result holds the secret, which the controller keeps nowhere. */
  async createApiKey(opts: NewApiKey): Promise<CreatedApiKey> {
    const res = await this.call<CreateApiKeyResponse>('CreateApiKey', newApiKeyToWire(opts));
    if (!res.record) throw new Error('CreateApiKey answered without a record');
    return { id: res.record.id, key: res.key, record: apiKeyFromWire(res.record) };
  }

  async listApiKeys(): Promise<ApiKeyRecord[]> {
    const res = await this.call<ListApiKeysResponse>('ListApiKeys', {});
    return res.keys.map(apiKeyFromWire);
  }

  async revokeApiKey(id: string): Promise<void> {
    await this.call('RevokeApiKey', { id });
  }

  /**
   * Cluster events from now on. The iteration ends when `cancel()` is called
   * (or `signal` aborts, or the loop is left), and throws AdminCallError when
   * the server ends the stream with an error.
   */
  watch(opts: { signal?: AbortSignal } = {}): AdminWatch {
    const stream = (
      this.client as unknown as { Watch: (req: object, md: grpc.Metadata) => grpc.ClientReadableStream<WireClusterEvent> }
    ).Watch({}, this.metadata());
    let cancelled = false;
    const cancel = () => {
      if (cancelled) return;
      cancelled = true;
      stream.cancel();
    };
    // Until iteration starts, keep an early error from being unhandled.
    stream.on('error', () => {});
    if (opts.signal) {
      if (opts.signal.aborted) cancel();
      else opts.signal.addEventListener('abort', cancel, { once: true });
    }
    async function* events(): AsyncGenerator<ClusterEvent> {
      try {
        for await (const ev of stream as AsyncIterable<WireClusterEvent>) yield eventFromWire(ev);
      } catch (err) {
        if (cancelled) return;
        throw toCallError(err);
      } finally {
        cancel();
        opts.signal?.removeEventListener('abort', cancel);
      }
    }
    const it = events();
    // return() cancels first, so it also works before the first next() and while one is pending.
    const iterator: AsyncIterator<ClusterEvent> = {
      next: () => it.next(),
      return: (value?: unknown) => {
        cancel();
        return it.return(value);
      },
    };
    return { cancel, [Symbol.asyncIterator]: () => iterator };
  }

  /** Closes the channel; calls in flight fail. */
  close(): void {
    this.client.close();
  }
}
