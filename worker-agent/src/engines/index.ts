import type { Deployment, Logger } from '@llmux/shared';
import { resolveModelSource } from '../models/resolve.js';
import { LlamaCppEngine } from './llamacpp.js';
import { OpenAIEngine } from './openai.js';
import { SimEngine } from './sim.js';
import type { Engine } from './types.js';
import { VllmEngine } from './vllm.js';

export type { Engine, GenerateResult, Resume, TextSink } from './types.js';
export { SimEngine, simToken, simPromptTokens } from './sim.js';
export { LlamaCppEngine } from './llamacpp.js';
export { OpenAIEngine, httpError, streamError, type OpenAIEngineOptions } from './openai.js';
export { VllmEngine, type VllmEngineOptions, type VllmState } from './vllm.js';
export { freePort } from '@llmux/shared';
export {
  SseDecoder,
  decodeStreamData,
  parseErrorBody,
  toUpstreamError,
  isContextLengthError,
  type StreamEvent,
  type UpstreamError,
  type Usage,
} from './sse.js';
export { parsePrometheusText, vllmLoadMetrics, vllmLoad, type PromSample, type VllmLoadMetrics } from './prometheus.js';
export { StopMatcher } from './stop.js';
export { joinMessages } from './prompt.js';

export interface EngineFactoryOptions {
  modelsDir: string;
  hfEndpoint: string;
  logger: Logger;
}

/** Builds (but does not start) the engine a deployment names. */
export async function createEngine(d: Deployment, opts: EngineFactoryOptions): Promise<Engine> {
  const e = d.engine;
  switch (e.type) {
    case 'llamacpp': {
      const modelPath = await resolveModelSource(d.source!, opts);
      return new LlamaCppEngine({
        modelPath,
        capacity: d.concurrency,
        threads: e.threads,
        contextSize: e.contextSize,
        chatTemplate: e.chatTemplate,
      });
    }
    case 'sim':
      return new SimEngine({
        capacity: d.concurrency,
        ttftMs: e.ttftMs,
        itlMs: e.itlMs,
        outputTokens: e.outputTokens,
        contextSize: e.contextSize,
      });
    case 'openai':
      return new OpenAIEngine({
        baseUrl: e.baseUrl,
        apiKey: e.apiKey,
        model: e.model ?? d.name,
        api: e.api,
        continueFinalMessage: e.continueFinalMessage,
        contextSize: e.contextSize,
        capacity: d.concurrency,
        requestTimeoutMs: e.requestTimeoutMs,
        logger: opts.logger.child({ model: d.name, engine: 'openai' }),
      });
    case 'vllm':
      return new VllmEngine({
        command: e.command,
        commandArgs: e.commandArgs,
        args: e.args,
        model: e.model ?? (d.source ? d.source.replace(/^hf:/, '') : d.name),
        port: e.port,
        healthTimeoutMs: e.healthTimeoutMs,
        metricsIntervalMs: e.metricsIntervalMs,
        contextSize: e.contextSize,
        capacity: d.concurrency,
        env: e.env,
        logger: opts.logger.child({ model: d.name }),
      });
  }
}
