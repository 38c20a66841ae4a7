export { Controller, type ControllerOptions } from './controller.js';
export * from './api.js';
export { EmbeddedRedis, ensureRedis, freePort, redisAnswers } from './local/embedded-redis.js';
export { Supervised, type SupervisedOptions, type ChildState } from './local/supervisor.js';
export { LocalFleet, type ProcessRecord } from './local/fleet.js';
export { LeaderLease } from './leader.js';
export { startAdminServer, readAdminTls, type AdminServer, type AdminServerOptions } from './admin/server.js';
export { AdminClient } from './admin/client.js';
export { Autoscaler, type AutoscalerOptions, type ScaleDecision } from './autoscaler.js';
