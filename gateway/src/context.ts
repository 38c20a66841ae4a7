import type { GatewayConfig, Logger, Redis, WorkerRegistry } from '@llmux/shared';
import type { QueueMonitor } from './admission/queue-monitor.js';
import type { RedisCircuit } from './admission/redis-circuit.js';
import type { ModelCatalog } from './catalog.js';
import type { Dispatcher } from './relay/dispatcher.js';

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
}
