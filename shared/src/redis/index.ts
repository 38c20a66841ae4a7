export * from './keys.js';
export * from './connection.js';
export * from './request-queue.js';
export * from './reply-stream.js';
export * from './cancellation.js';
export * from './registry.js';
export * from './scripts.js';
export * from './request-log.js';
