export { Gateway, type GatewayOptions, type GatewayState } from './server.js';
export { createApp } from './app.js';
export * from './validation/openai.js';
export {
  QueueMonitor,
  redisQueueSampler,
  retryAfterSeconds,
  type QueueMonitorOptions,
  type QueueSample,
  type SampleFn,
} from './admission/queue-monitor.js';
export { requestDeadline, type RequestDeadline } from './admission/deadline.js';
export { QueueFullError, OverloadedError } from './admission/errors.js';
export { RedisCircuit } from './admission/redis-circuit.js';
