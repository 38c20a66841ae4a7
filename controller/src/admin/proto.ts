import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ApplyResult, ClusterEvent, ClusterEventKind, ModelScale, ProcessInfo, WorkerInfo } from '../api.js';
import type { ApiKeyRecord, Deployment, NewApiKey, Priority, WorkerStatus } from '@llmux/shared';

/**
 * The admin API's wire format: shared/proto/admin.proto, loaded at run time
 * with @grpc/proto-loader, and the conversions between its messages and the
 * types of controller/src/api.ts. The proto is the one definition; the
 * interfaces below describe what proto-loader produces with LOADER_OPTIONS
 * (camelCase fields, 64-bit integers as numbers, defaults filled in, absent
 * sub-messages as null, absent `optional` scalars as undefined).
 */

const require = createRequire(import.meta.url);

/** shared/proto/admin.proto, found through the @llmux/shared package (shared/dist/index.js -> shared/proto). */
export const ADMIN_PROTO_PATH = join(dirname(require.resolve('@llmux/shared')), '..', 'proto', 'admin.proto');

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** Trailing metadata key a standby sets on FAILED_PRECONDITION: the leader's admin address. */
export const LEADER_ADDRESS_KEY = 'llmux-leader-address';

let cached: grpc.ServiceClientConstructor | null = null;

/** The Admin service (its definition is `.service`; calling it with `new` makes a client). */
export function adminService(): grpc.ServiceClientConstructor {
  if (!cached) {
    const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(ADMIN_PROTO_PATH, LOADER_OPTIONS));
    const ns = (pkg.llmux as grpc.GrpcObject).admin as grpc.GrpcObject;
    cached = (ns.v1 as grpc.GrpcObject).Admin as grpc.ServiceClientConstructor;
  }
  return cached;
}

// ------------------------------------------------------------------ messages

export interface WireDeployment {
  name: string;
  json: string;
}
export interface WireWorkerStatus {
  id: string;
  host: string;
  pid: number;
  state: string;
  models: string[];
  engines: Record<string, string>;
  capacity: number;
  inflight: number;
  busySlotMs: number;
  startedAt: number;
  at: number;
  metricsPort?: number | null;
}
export interface WireWorkerProcess {
  pid?: number | null;
  state: string;
  restarts: number;
  lastExit?: string | null;
}
export interface WireWorkerInfo {
  id: string;
  alive: boolean;
  status: WireWorkerStatus | null;
  process: WireWorkerProcess | null;
}
export interface WireLocalProcess {
  kind: string;
  id: string;
  model: string;
  pid?: number | null;
  state: string;
  restarts: number;
  lastExit?: string | null;
  lastExitAt?: number | null;
  startedAt?: number | null;
  uptimeMs?: number | null;
}
export interface WireModelScale {
  model: string;
  desired: number;
  live: number;
  min: number;
  max: number;
  queued: number;
  pending: number;
}
export interface WireLeader {
  id: string;
  adminAddress?: string | null;
}
export interface WireClusterEvent {
  kind: string;
  at: number;
  subject: string;
  message: string;
}

export interface WireApiKey {
  id: string;
  tenant: string;
  name: string;
  rpm?: number | null;
  tpm?: number | null;
  weight: number;
  maxPriority: string;
  createdAt: number;
}

export type Empty = Record<string, never>;
export interface ListDeploymentsResponse {
  deployments: WireDeployment[];
}
export interface ListWorkersResponse {
  workers: WireWorkerInfo[];
}
export interface ListProcessesResponse {
  processes: WireLocalProcess[];
}
export interface ListScaleResponse {
  models: WireModelScale[];
}
export interface ApplyDeploymentsRequest {
  deploymentsJson: string;
}
export type ApplyDeploymentsResponse = ApplyResult;
export interface ScaleRequest {
  model: string;
  replicas: number;
}
export interface ScaleResponse {
  scale: WireModelScale | null;
}
export interface WorkerRequest {
  id: string;
}
export interface GetLeaderResponse {
  leader: WireLeader | null;
  answeredByLeader: boolean;
}

export interface CreateApiKeyRequest {
  tenant: string;
  name: string;
  rpm?: number | null;
  tpm?: number | null;
  weight?: number | null;
  maxPriority: string;
}
export interface CreateApiKeyResponse {
  key: string;
  record: WireApiKey | null;
}
export interface ListApiKeysResponse {
  keys: WireApiKey[];
}
export interface ApiKeyIdRequest {
  id: string;
}

/** What GetLeader tells: the leader, if any, and whether the controller that answered is it. */
export interface LeaderInfo {
  leader: { id: string; adminAddress: string | null } | null;
  answeredByLeader: boolean;
}

// --------------------------------------------------------------- conversions

export function deploymentToWire(d: Deployment): WireDeployment {
  return { name: d.name, json: JSON.stringify(d) };
}

export function deploymentFromWire(w: WireDeployment): Deployment {
  return JSON.parse(w.json) as Deployment;
}

export function workerToWire(w: WorkerInfo): WireWorkerInfo {
  return {
    id: w.id,
    alive: w.alive,
    status: w.status ? { ...w.status, models: [...w.status.models], engines: { ...w.status.engines } } : null,
    process: w.process
      ? { pid: w.process.pid, state: w.process.state, restarts: w.process.restarts, lastExit: w.process.lastExit }
      : null,
  };
}

export function workerFromWire(w: WireWorkerInfo): WorkerInfo {
  const s = w.status;
  const p = w.process;
  return {
    id: w.id,
    alive: w.alive,
    status: s
      ? {
          id: s.id,
          host: s.host,
          pid: s.pid,
          state: s.state as WorkerStatus['state'],
          models: s.models ?? [],
          engines: s.engines ?? {},
          capacity: s.capacity,
          inflight: s.inflight,
          busySlotMs: s.busySlotMs,
          startedAt: s.startedAt,
          at: s.at,
          // Absent stays absent (not null), as a heartbeat without a port has no field.
          ...(s.metricsPort != null ? { metricsPort: s.metricsPort } : {}),
        }
      : null,
    process: p ? { pid: p.pid ?? null, state: p.state, restarts: p.restarts, lastExit: p.lastExit ?? null } : null,
  };
}

/** Absent values (null) stay absent on the wire. */
export function processToWire(p: ProcessInfo): WireLocalProcess {
  return {
    kind: p.kind,
    id: p.id,
    model: p.model ?? '',
    pid: p.pid,
    state: p.state,
    restarts: p.restarts,
    lastExit: p.lastExit,
    lastExitAt: p.lastExitAt,
    startedAt: p.startedAt,
    uptimeMs: p.uptimeMs,
  };
}

export function processFromWire(w: WireLocalProcess): ProcessInfo {
  return {
    kind: w.kind === 'gateway' ? 'gateway' : 'worker',
    id: w.id,
    model: w.model || null,
    pid: w.pid ?? null,
    state: w.state,
    restarts: w.restarts,
    lastExit: w.lastExit ?? null,
    lastExitAt: w.lastExitAt ?? null,
    startedAt: w.startedAt ?? null,
    uptimeMs: w.uptimeMs ?? null,
  };
}

export function scaleToWire(s: ModelScale): WireModelScale {
  return { model: s.model, desired: s.desired, live: s.live, min: s.min, max: s.max, queued: s.queued, pending: s.pending };
}

export const scaleFromWire = scaleToWire;

export function eventToWire(e: ClusterEvent): WireClusterEvent {
  return { kind: e.kind, at: e.at, subject: e.subject ?? '', message: e.message ?? '' };
}

export function eventFromWire(e: WireClusterEvent): ClusterEvent {
  return { kind: e.kind as ClusterEventKind, at: e.at, subject: e.subject, message: e.message };
}

export function apiKeyToWire(r: ApiKeyRecord): WireApiKey {
  return {
    id: r.id,
    tenant: r.tenant,
    name: r.name,
    rpm: r.rpm,
    tpm: r.tpm,
    weight: r.weight,
    maxPriority: r.maxPriority,
    createdAt: r.createdAt,
  };
}

export function apiKeyFromWire(w: WireApiKey): ApiKeyRecord {
  return {
    id: w.id,
    tenant: w.tenant,
    name: w.name,
    rpm: w.rpm ?? null,
    tpm: w.tpm ?? null,
    weight: w.weight,
    maxPriority: w.maxPriority as Priority,
    createdAt: w.createdAt,
  };
}

/** Absent options stay absent on the wire, so the controller applies its defaults. */
export function newApiKeyToWire(o: NewApiKey): CreateApiKeyRequest {
  return { tenant: o.tenant, name: o.name ?? '', rpm: o.rpm, tpm: o.tpm, weight: o.weight, maxPriority: o.maxPriority ?? '' };
}

export function newApiKeyFromWire(r: CreateApiKeyRequest): NewApiKey {
  return {
    tenant: r.tenant,
    name: r.name,
    rpm: r.rpm ?? null,
    tpm: r.tpm ?? null,
    weight: r.weight ?? undefined,
    maxPriority: (r.maxPriority || undefined) as Priority | undefined,
  };
}
