export { Gateway, type GatewayOptions, type GatewayState } from './server.js';
export { createApp } from './app.js';
export * from './validation/openai.js';
