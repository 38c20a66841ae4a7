export { WorkerAgent, type WorkerAgentOptions, type AgentState } from './agent.js';
export * from './engines/index.js';
export { resolveModelSource, parseHfSource } from './models/resolve.js';
export { RequestStream, Flusher, type EventWriter, type RequestStreamOptions } from './request-stream.js';
export { BatchingEventWriter } from './event-batcher.js';
export { SimServer, storyOffset, type SimServerEvent } from './sim-server/server.js';
export { parseSimServerArgs, DEFAULT_SIM_SERVER_OPTIONS, type SimServerOptions } from './sim-server/options.js';
export { ReplicaSet } from './engines/replicas.js';
export {
  DEAD_LETTER_MAXLEN,
  DEAD_LETTER_MAX_PAIRS,
  DEAD_LETTER_VALUE_MAX,
  ORIGINAL_FIELD_PREFIX,
  deadLetterFields,
} from './dead-letters.js';
