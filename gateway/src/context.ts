import type { GatewayConfig, GatewayMetrics, Logger, Redis, RequestQueue, Tracing, WorkerRegistry } from '@llmux/shared';
import type { QueueMonitor } from './admission/queue-monitor.js';
import type { RedisCircuit } from './admission/redis-circuit.js';
import type { TenantGate } from './admission/tenant.js';
import type { ModelCatalog } from './catalog.js';
import type { Dispatcher } from './relay/dispatcher.js';
import type { RequestFollowers } from './relay/follower.js';
import type { IdempotencyStore } from './relay/idempotency.js';
import type { RequestMetrics } from './relay/request-metrics.js';

/** What route handlers share: built once by the Gateway. */
export interface GatewayContext {
  config: GatewayConfig;
  log: Logger;
  redis: Redis;
  catalog: ModelCatalog;
  dispatcher: Dispatcher;
  workers: WorkerRegistry;
  /** Whether Redis can be used for admissions; 503 at once while it cannot. */
  circuit: RedisCircuit;
  /** Per-model queue depth and drain rate, for 429s. */
  queues: QueueMonitor;
  /** Serves requests from their output logs (idempotent repeats, resumes). */
  followers: RequestFollowers;
  idempotency: IdempotencyStore;
  /** OpenTelemetry tracing (no-op unless an OTLP endpoint is configured). */
  tracing: Tracing;
  /** Prometheus metrics of this gateway (`/metrics`). */
  metrics: GatewayMetrics;
  /** The request metrics' per-model children and counting rules. */
  requestMetrics: RequestMetrics;
  /** The models' queues (depth readings for the dashboard). */
  queue: RequestQueue;
  /** API keys and per-key limits (AUTH=required), or the one anonymous tenant. */
  tenants: TenantGate;
}
