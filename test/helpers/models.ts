import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { createLogger } from '@llmux/shared';
import { resolveModelSource } from '@llmux/worker-agent';

/** The repository root (tests are compiled to test/dist/…). */
export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const MODELS_DIR = join(ROOT, 'models');

/** Where each small test model is published, so a machine with internet can fetch it. */
const SOURCES = {
  stories260K: 'hf:ggml-org/models/tinyllamas/stories260K.gguf',
  'llama-2-tiny-random': 'hf:aladar/llama-2-tiny-random-GGUF/llama-2-tiny-random.gguf',
} as const;

export type TestModel = keyof typeof SOURCES;

/**
 * The local path of a small real model: found in models/ (CI copies them
 * there), else downloaded once through the same code the worker uses.
 */
export async function testModel(name: TestModel): Promise<string> {
  return resolveModelSource(SOURCES[name], {
    modelsDir: MODELS_DIR,
    hfEndpoint: process.env.HF_ENDPOINT ?? 'https://huggingface.co',
    logger: createLogger('test', 'warn'),
  });
}
