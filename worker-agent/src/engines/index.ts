import type { Deployment, Logger } from '@llmux/shared';
import { resolveModelSource } from '../models/resolve.js';
import { LlamaCppEngine } from './llamacpp.js';
import { SimEngine } from './sim.js';
import type { Engine } from './types.js';

export type { Engine, GenerateResult, TextSink } from './types.js';
export { SimEngine, simToken, simPromptTokens } from './sim.js';
export { LlamaCppEngine } from './llamacpp.js';
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
  }
}
