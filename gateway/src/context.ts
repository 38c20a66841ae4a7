import type { GatewayConfig, Logger, Redis, WorkerRegistry } from '@llmux/shared';
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
}
