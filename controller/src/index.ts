export { startLocal, type LocalSystem } from './local/local-mode.js';
export { EmbeddedRedis, ensureRedis, freePort, redisAnswers } from './local/embedded-redis.js';
export { Supervised, type SupervisedOptions, type ChildState } from './local/supervisor.js';
