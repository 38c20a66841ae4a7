import type { ApiKeyRecord, CreatedApiKey, Deployment, DeploymentsFile, NewApiKey, WorkerStatus } from '@llmux/shared';

/** A worker as the admin API shows it: its last heartbeat plus what the controller knows. */
export interface WorkerInfo {
  id: string;
  /** Alive: its heartbeat has not lapsed. */
  alive: boolean;
  /** The last heartbeat, null for a local worker that has not reported yet. */
  status: WorkerStatus | null;
  /** Local mode: the supervised process's state (starting, ready, backoff, crashloop, stopping, stopped). */
  process: { pid: number | null; state: string; restarts: number; lastExit: string | null } | null;
}

/**
 * A process a local-mode controller supervises (the gateway or a worker
 * agent), from the process table in Redis.
 */
export interface ProcessInfo {
  kind: 'gateway' | 'worker';
  /** `<controller id>-gateway`, or the worker's id. */
  id: string;
  /** The deployment a worker serves; null for the gateway. */
  model: string | null;
  /** Null while no process runs (backoff, crash loop, stopped). */
  pid: number | null;
  /** starting, ready, backoff, crashloop, stopping or stopped. */
  state: string;
  /** Restarts since the controller started it first. */
  restarts: number;
  /** How its last run ended (`exit code 1`, `signal SIGKILL`, `health check failed (3 x timeout)`); null if it has not exited. */
  lastExit: string | null;
  /** When the last run ended, ms since the epoch. */
  lastExitAt: number | null;
  /** When the running process started, ms since the epoch; null while none runs. */
  startedAt: number | null;
  /** How long the running process has run, as the answering controller reckons it; null while none runs. */
  uptimeMs: number | null;
}

/** One model's scaling picture. */
export interface ModelScale {
  model: string;
  /** Replicas (worker agents) the autoscaler or an operator wants. */
  desired: number;
  /** Live worker agents serving it. */
  live: number;
  min: number;
  max: number;
  /** Requests waiting for a worker. */
  queued: number;
  /** Requests claimed and not finished. */
  pending: number;
}

export type ClusterEventKind =
  | 'leader'
  | 'deployments-applied'
  | 'worker-up'
  | 'worker-dead'
  | 'worker-restarted'
  | 'crash-loop'
  | 'gateway-up'
  | 'gateway-restarted'
  | 'requests-handed-over'
  | 'scaled'
  | 'draining'
  | 'api-key-created'
  | 'api-key-revoked';

/** Something that happened in the cluster, as the watch stream delivers it. */
export interface ClusterEvent {
  kind: ClusterEventKind;
  /** ms since epoch. */
  at: number;
  /** The model or worker concerned, if any. */
  subject: string;
  /** Human-readable detail. */
  message: string;
}

export interface ApplyResult {
  added: string[];
  removed: string[];
  changed: string[];
}

/**
 * What the controller offers its admin API (gRPC) and CLI. Reads work on any
 * controller; changes are made by the leader and refused by a standby with
 * NotLeaderError naming the leader.
 */
export interface ControllerApi {
  isLeader(): boolean;
  /** The leader's id and admin address, if a leader holds the lease. */
  leader(): Promise<{ id: string; adminAddress: string | null } | null>;
  listDeployments(): Promise<Deployment[]>;
  listWorkers(): Promise<WorkerInfo[]>;
  /** Local mode: the processes the leader supervises (gateway first, then workers by id); empty in cluster mode. */
  listProcesses(): Promise<ProcessInfo[]>;
  listScale(): Promise<ModelScale[]>;
  /** Validates and applies a deployments document (as the file would hold it). */
  applyDeployments(doc: unknown): Promise<ApplyResult>;
  /** Sets a model's desired replicas (within its min and max) until the autoscaler next changes it. */
  scale(model: string, replicas: number): Promise<ModelScale>;
  /** Drains a worker: it stops claiming, finishes or hands back its requests, and exits. */
  drainWorker(id: string): Promise<void>;
  /** Restarts a worker (local mode: its process; cluster mode: a control job to its agent). */
  restartWorker(id: string): Promise<void>;
  /**
   * Issues an API key (see ApiKeys in @llmux/shared). The result is the only
   * place the secret ever appears. Invalid options: InvalidRequestError.
   */
  createApiKey(opts: NewApiKey): Promise<CreatedApiKey>;
  /** Every API key's record, oldest first; never a secret. */
  listApiKeys(): Promise<ApiKeyRecord[]>;
  /** Revokes an API key by id; UnknownTargetError if there is none. */
  revokeApiKey(id: string): Promise<void>;
  /** Subscribes to cluster events; returns the unsubscribe function. */
  watch(onEvent: (ev: ClusterEvent) => void): () => void;
}

/** A change was asked of a standby controller. */
export class NotLeaderError extends Error {
  override name = 'NotLeaderError';
  constructor(readonly leaderAddress: string | null) {
    super(`this controller is a standby; send changes to the leader${leaderAddress ? ` at ${leaderAddress}` : ''}`);
  }
}

/** The named worker or model does not exist. */
export class UnknownTargetError extends Error {
  override name = 'UnknownTargetError';
}

export type { ApiKeyRecord, CreatedApiKey, DeploymentsFile, NewApiKey };
