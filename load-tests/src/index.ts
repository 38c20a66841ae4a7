export * from './client.js';
export * from './run.js';
export * from './report.js';
export * from './stats.js';
export * from './k6-payloads.js';
