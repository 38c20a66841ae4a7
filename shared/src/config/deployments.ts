import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { ConfigError } from '../errors/index.js';
import { formatIssues } from './zod-errors.js';

/**
 * Model names appear inside Redis keys (as a hash tag) and URLs, so braces,
 * whitespace and control characters are refused.
 */
export const modelNameSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$/, 'use letters, digits and . _ : / @ + - only');

/** In-process llama.cpp through node-llama-cpp, on CPU. */
export const llamacppEngineSchema = z
  .object({
    type: z.literal('llamacpp'),
    /** CPU threads for the context. Default 1: more threads than cores makes llama.cpp far slower. */
    threads: z.number().int().min(1).max(256).default(1),
    /** Context size per sequence, in tokens (llama.cpp works in multiples of 256). Default 2048. */
    contextSize: z.number().int().min(256).max(1_048_576).default(2048),
    /**
     * `auto`: render chats with the model's own template when its file has one,
     * else join the message texts (see docs/architecture.md). `none`: always join.
     * `chatml`: force the ChatML template (for models whose file lacks one).
     */
    chatTemplate: z.enum(['auto', 'none', 'chatml']).default('auto'),
  })
  .strict();

/** Deterministic fake tokens with configurable timing, for load tests of the serving layer. */
export const simEngineSchema = z
  .object({
    type: z.literal('sim'),
    /** Time to first token in ms. Default 50. */
    ttftMs: z.number().min(0).max(600_000).default(50),
    /** Delay between tokens in ms. Default 20. */
    itlMs: z.number().min(0).max(60_000).default(20),
    /** Tokens to produce when the request does not cap it lower; null: up to max_tokens. */
    outputTokens: z.number().int().min(1).max(1_000_000).nullable().default(null),
    /** Context size reported for validation. Default 4096. */
    contextSize: z.number().int().min(64).max(1_048_576).default(4096),
  })
  .strict();

/**
 * Any OpenAI-compatible server (llama.cpp server, SGLang, TGI, Ollama, vLLM,
 * another llmux gateway), reached over HTTP. Requests are streamed to it.
 */
export const openaiEngineSchema = z
  .object({
    type: z.literal('openai'),
    /** The server's API root, e.g. `http://host:8000/v1`. */
    baseUrl: z.url({ protocol: /^https?$/, error: 'must be an http or https URL' }),
    /** Sent as `Authorization: Bearer <apiKey>`. */
    apiKey: z.string().min(1).optional(),
    /** The server's name for the model. Default: the deployment's name. */
    model: z.string().min(1).optional(),
    /** `chat` or `completions`: the upstream API every request uses. Default: the request's own kind. */
    api: z.enum(['chat', 'completions']).optional(),
    /**
     * On a resumed chat, send `continue_final_message: true, add_generation_prompt: false`
     * so the server continues the partial answer (vLLM supports it). Default false.
     */
    continueFinalMessage: z.boolean().default(false),
    /** The model's context size, used by the gateway to validate `max_tokens`. Default 4096. */
    contextSize: z.number().int().min(64).max(1_048_576).default(4096),
    /** Give up on a server that sends nothing for this long, in ms (the request is retried elsewhere). Default: no limit. */
    requestTimeoutMs: z.number().int().min(100).max(86_400_000).optional(),
  })
  .strict();

/**
 * vLLM run by the worker agent: `<command> <commandArgs...> serve <model>
 * --host 127.0.0.1 --port <port> <args...>`, restarted when it exits.
 */
export const vllmEngineSchema = z
  .object({
    type: z.literal('vllm'),
    /** The program to run. Default `vllm`. */
    command: z.string().min(1).default('vllm'),
    /** Arguments put before `serve` (e.g. a script, when `command` is an interpreter). Default []. */
    commandArgs: z.array(z.string()).default([]),
    /** Arguments put after `serve <model> --host 127.0.0.1 --port <port>`, e.g. `["--max-model-len", "8192"]`. Default []. */
    args: z.array(z.string()).default([]),
    /** The model vLLM serves (Hugging Face id or local path). Default: the deployment's `source` (without `hf:`), else its name. */
    model: z.string().min(1).optional(),
    /** Port vLLM listens on, on 127.0.0.1. 0 (default): a free port, picked at each start. */
    port: z.number().int().min(0).max(65_535).default(0),
    /** How long one start may take before `/health` answers 200, in ms. Default 600,000 (loading weights is slow). */
    healthTimeoutMs: z.number().int().min(100).max(86_400_000).default(600_000),
    /** How often `/metrics` is read for the engine's load, in ms. Default 1000. */
    metricsIntervalMs: z.number().int().min(50).max(600_000).default(1000),
    /** The model's context size, used by the gateway to validate `max_tokens`; keep it equal to vLLM's `--max-model-len`. Default 4096. */
    contextSize: z.number().int().min(64).max(1_048_576).default(4096),
    /** Extra environment variables for the vLLM process (e.g. `CUDA_VISIBLE_DEVICES`). */
    env: z.record(z.string(), z.string()).optional(),
  })
  .strict();

export const engineSchema = z.discriminatedUnion('type', [
  llamacppEngineSchema,
  simEngineSchema,
  openaiEngineSchema,
  vllmEngineSchema,
]);

export const deploymentSchema = z
  .object({
    /** The name clients pass as `model`. */
    name: modelNameSchema,
    /** Other names that route to this deployment. */
    aliases: z.array(modelNameSchema).default([]),
    /** Model weights: a local path, or `hf:<owner>/<repo>/<path>` downloaded into MODELS_DIR on first start. */
    source: z.string().min(1).optional(),
    engine: engineSchema,
    replicas: z
      .object({ min: z.number().int().min(0).default(1), max: z.number().int().min(1).default(1) })
      .strict()
      .default({ min: 1, max: 1 }),
    /** Concurrent requests one replica serves (sequences in one llama.cpp context). Default 4. */
    concurrency: z.number().int().min(1).max(4096).default(4),
    /** Queue length past which new requests are refused. Default 1000. */
    maxQueue: z.number().int().min(1).default(1000),
    /** `max_tokens` used when a chat request gives none. Default 512. */
    defaultMaxTokens: z.number().int().min(1).default(512),
    slo: z
      .object({ ttftP95Ms: z.number().positive().optional(), itlP95Ms: z.number().positive().optional() })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((d, ctx) => {
    if (d.engine.type === 'llamacpp' && !d.source) {
      ctx.addIssue({ code: 'custom', path: ['source'], message: 'the llamacpp engine needs a model source' });
    }
    if (d.replicas.min > d.replicas.max) {
      ctx.addIssue({ code: 'custom', path: ['replicas', 'min'], message: 'min must not exceed max' });
    }
  });

export const deploymentsFileSchema = z
  .object({ models: z.array(deploymentSchema).min(1, 'declare at least one model') })
  .strict()
  .superRefine((file, ctx) => {
    const seen = new Map<string, number>();
    file.models.forEach((m, i) => {
      for (const name of [m.name, ...m.aliases]) {
        const other = seen.get(name);
        if (other !== undefined) {
          ctx.addIssue({
            code: 'custom',
            path: ['models', i, 'name'],
            message: `"${name}" is already used by models[${other}]`,
          });
        }
        seen.set(name, i);
      }
    });
  });

export type Deployment = z.infer<typeof deploymentSchema>;
export type EngineSpec = z.infer<typeof engineSchema>;
export type DeploymentsFile = z.infer<typeof deploymentsFileSchema>;

/** Validates a parsed deployments document; throws ConfigError naming the bad fields. */
export function parseDeployments(doc: unknown, source = 'deployments'): DeploymentsFile {
  const result = deploymentsFileSchema.safeParse(doc);
  if (!result.success) throw new ConfigError(`${source} is invalid: ${formatIssues(result.error.issues)}`);
  return result.data;
}

/** Reads and validates a deployments JSON file. */
export async function loadDeploymentsFile(path: string): Promise<DeploymentsFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read deployments file ${path}: ${(err as Error).message} (set DEPLOYMENTS_FILE)`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`deployments file ${path} is not valid JSON: ${(err as Error).message}`);
  }
  return parseDeployments(doc, path);
}

/** The context size a deployment's engine accepts, in tokens. */
export function contextSizeOf(d: Deployment): number {
  return d.engine.contextSize;
}
