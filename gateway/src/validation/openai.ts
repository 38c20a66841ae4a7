import { z } from 'zod';
import { formatPath, InvalidRequestError, type ChatMessage, type JobParams } from '@llmux/shared';

/**
 * Request validation for the OpenAI-compatible routes. Honoured fields are
 * typed and bounded; fields OpenAI defines but this server cannot honour are
 * refused with a 400 that names them; unknown fields are refused as OpenAI
 * does ("Unrecognized request argument supplied").
 */

const MAX_MESSAGES = 4096;
const MAX_CONTENT_PARTS = 1024;
const MAX_STOP = 16;
const MAX_STOP_CHARS = 512;
const MAX_TOKENS_CAP = 1_000_000;
/** Names, ids and other short strings. */
const MAX_NAME_CHARS = 256;
const MAX_METADATA_PAIRS = 16;
const SEED_BOUND = 2 ** 53;

/** Limits that depend on the gateway's configuration. */
export interface RequestLimits {
  /** Most characters of prompt text, all messages together (MAX_PROMPT_CHARS). */
  maxPromptChars: number;
}

export const DEFAULT_LIMITS: RequestLimits = { maxPromptChars: 1_000_000 };

const nullish = <T extends z.ZodType>(t: T) => t.nullable().optional();

const stopSchema = nullish(
  z.union([
    z.string().max(MAX_STOP_CHARS),
    z.array(z.string().min(1).max(MAX_STOP_CHARS)).max(MAX_STOP, `at most ${MAX_STOP} stop sequences`),
  ]),
);

const textPart = z.strictObject({ type: z.literal('text'), text: z.string() });
const contentSchema = z.union([
  z.string(),
  z
    .array(
      z
        .object({ type: z.string().max(MAX_NAME_CHARS) })
        .loose()
        .superRefine((p, ctx) => {
          if (p.type !== 'text')
            ctx.addIssue({ code: 'custom', message: `content parts of type "${p.type}" are not supported; send text` });
          else if (!textPart.safeParse(p).success)
            ctx.addIssue({ code: 'custom', message: 'a text part has a "text" string and nothing else' });
        }),
    )
    .max(MAX_CONTENT_PARTS, `at most ${MAX_CONTENT_PARTS} content parts`),
  z.null(),
]);

/** A defined, non-null value refused with `message`. */
const refusedIfSet = (message: string) => z.unknown().refine((v) => v === undefined || v === null, message);

/** OpenAI's message fields; any other field is refused, as OpenAI does. */
const messageSchema = z.strictObject({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: contentSchema.optional(),
  name: z.string().max(MAX_NAME_CHARS).optional(),
  tool_call_id: z.string().max(MAX_NAME_CHARS).optional(),
  refusal: nullish(z.string().max(MAX_NAME_CHARS * 64)),
  tool_calls: refusedIfSet('tool calls are not supported').optional(),
  function_call: refusedIfSet('tool calls are not supported').optional(),
  audio: refusedIfSet('audio is not supported').optional(),
});

/** Fields shared by both APIs. */
const sampling = {
  model: z.string().min(1).max(256),
  temperature: nullish(z.number().min(0).max(2)),
  top_p: nullish(z.number().min(0).max(1)),
  stop: stopSchema,
  seed: nullish(z.number().int().min(-SEED_BOUND).max(SEED_BOUND)),
  stream: nullish(z.boolean()),
  stream_options: nullish(z.object({ include_usage: z.boolean().optional() }).strict()),
  n: nullish(z.number().int().min(1).max(1, 'n > 1 is not supported; send one request per completion')),
  presence_penalty: nullish(z.number().min(-2).max(2)),
  frequency_penalty: nullish(z.number().min(-2).max(2)),
  max_tokens: nullish(z.number().int().min(1).max(MAX_TOKENS_CAP)),
  user: nullish(z.string().max(512)),
  logit_bias: nullish(z.record(z.string(), z.number()).refine((o) => Object.keys(o).length === 0, 'logit_bias is not supported')),
  logprobs: nullish(z.union([z.boolean(), z.number()]).refine((v) => !v, 'logprobs are not supported')),
  metadata: nullish(
    z
      .record(z.string().max(64), z.string().max(512))
      .refine((o) => Object.keys(o).length <= MAX_METADATA_PAIRS, `at most ${MAX_METADATA_PAIRS} metadata pairs`),
  ),
  store: nullish(z.boolean()),
  service_tier: nullish(z.string().max(32)),
};

const unsupported = (what: string) => nullish(z.any().refine((v) => v === undefined || v === null, `${what} are not supported`));

export const chatRequestSchema = z.strictObject({
  ...sampling,
  messages: z.array(messageSchema).min(1, 'messages must not be empty').max(MAX_MESSAGES),
  max_completion_tokens: nullish(z.number().int().min(1).max(MAX_TOKENS_CAP)),
  top_logprobs: nullish(
    z
      .number()
      .int()
      .refine((v) => v === 0, 'top_logprobs are not supported'),
  ),
  response_format: nullish(
    z
      .object({ type: z.string().max(MAX_NAME_CHARS) })
      .loose()
      .refine((f) => f.type === 'text', 'only response_format {"type":"text"} is supported')
      .refine((f) => Object.keys(f).length === 1, 'response_format {"type":"text"} takes no other field'),
  ),
  tools: nullish(z.array(z.unknown()).max(0, 'tools are not supported')),
  tool_choice: nullish(z.literal('none', 'tool_choice is not supported')),
  parallel_tool_calls: nullish(z.boolean()),
  functions: unsupported('functions'),
  function_call: unsupported('function calls'),
  audio: unsupported('audio outputs'),
  modalities: nullish(z.array(z.literal('text', 'only the text modality is supported')).max(2)),
  prediction: unsupported('predicted outputs'),
  web_search_options: unsupported('web search options'),
  reasoning_effort: unsupported('reasoning_effort settings'),
});

export const completionRequestSchema = z.strictObject({
  ...sampling,
  prompt: z.union([
    z.string(),
    z
      .array(z.unknown())
      .length(1, 'batched prompts are not supported; send one prompt per request')
      .refine((a) => typeof a[0] === 'string', 'token-array prompts are not supported; send text'),
  ]),
  best_of: nullish(z.number().int().min(1).max(1, 'best_of > 1 is not supported')),
  echo: nullish(z.boolean().refine((v) => !v, 'echo is not supported')),
  suffix: unsupported('suffixes'),
});

export type ChatRequest = z.infer<typeof chatRequestSchema>;
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

/** What the gateway needs from a valid request besides the job parameters. */
export interface ParsedRequest {
  model: string;
  stream: boolean;
  includeUsage: boolean;
  /** The client's cap on generated tokens, if it gave one. */
  maxTokens: number | undefined;
  /** Job parameters but for maxTokens, which needs the deployment's default. */
  params: Omit<JobParams, 'maxTokens'>;
}

/** The value at a zod issue path inside the raw input, to tell "missing" from "wrong". */
function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v = input;
  for (const k of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return v;
}

function fail(error: z.ZodError, input: unknown): never {
  const issue = error.issues[0]!;
  if (issue.code === 'unrecognized_keys') {
    const where = formatPath(issue.path);
    const keys = issue.keys.map((k) => (where ? `${where}.${k}` : k));
    throw new InvalidRequestError(`Unrecognized request argument supplied: ${keys.join(', ')}`, keys[0] ?? null);
  }
  const param = formatPath(issue.path) || null;
  const message = issue.code === 'invalid_type' && valueAt(input, issue.path) === undefined ? 'is required' : issue.message;
  throw new InvalidRequestError(param ? `Invalid value for '${param}': ${message}` : message, param);
}

function requireObject(body: unknown): void {
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new InvalidRequestError('The request body must be a JSON object.');
  }
  refuseProtoKeys(body);
}

interface Node {
  value: unknown;
  key: PropertyKey;
  parent: Node | null;
}

/**
 * Refuses a `__proto__` key anywhere in the body. JSON.parse makes it an
 * ordinary own property, but the objects a schema builds from the input
 * assign it, which sets their prototype instead: such a key would slip past
 * the checks of open objects (records, content parts). No field of the API is
 * called that. The walk uses its own stack, so any nesting depth is safe.
 */
function refuseProtoKeys(body: object): void {
  const stack: Node[] = [{ value: body, key: '', parent: null }];
  while (stack.length > 0) {
    const node = stack.pop()!;
    const v = node.value;
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) stack.push({ value: v[i], key: i, parent: node });
      continue;
    }
    for (const key of Object.keys(v)) {
      if (key === '__proto__') {
        const path: PropertyKey[] = [key];
        for (let n: Node | null = node; n?.parent; n = n.parent) path.push(n.key);
        const name = formatPath(path.reverse());
        throw new InvalidRequestError(`Unrecognized request argument supplied: ${name}`, name);
      }
      stack.push({ value: (v as Record<string, unknown>)[key], key, parent: node });
    }
  }
}

function stopList(stop: string | string[] | null | undefined): string[] | undefined {
  if (stop === null || stop === undefined) return undefined;
  const list = typeof stop === 'string' ? [stop] : stop;
  return list.filter((s) => s.length > 0);
}

function messageText(content: z.infer<typeof contentSchema> | undefined): string {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  return content.map((p) => String(p.text)).join('');
}

const opt = <T>(v: T | null | undefined): T | undefined => (v === null ? undefined : v);

/**
 * Refuses prompt text over MAX_PROMPT_CHARS. This is a plain size bound, not a
 * context check: a token can span any number of characters, so no character
 * count proves that a prompt cannot fit the model's context. The engine
 * checks that (400 `context_length_exceeded`).
 */
function checkPromptChars(chars: number, limits: RequestLimits, param: string | null): void {
  if (chars > limits.maxPromptChars) {
    throw new InvalidRequestError(
      `The prompt is ${chars} characters long; this server accepts at most ${limits.maxPromptChars} (MAX_PROMPT_CHARS).`,
      param,
      'prompt_too_long',
    );
  }
}

/** Validates a chat completion body. */
export function parseChatRequest(body: unknown, limits: RequestLimits = DEFAULT_LIMITS): ParsedRequest {
  requireObject(body);
  const r = chatRequestSchema.safeParse(body);
  if (!r.success) fail(r.error, body);
  const b = r.data;
  const messages: ChatMessage[] = b.messages.map((m) => ({ role: m.role, content: messageText(m.content) }));
  checkPromptChars(
    messages.reduce((n, m) => n + m.content.length, 0),
    limits,
    'messages',
  );
  return {
    model: b.model,
    stream: b.stream ?? false,
    includeUsage: b.stream_options?.include_usage ?? false,
    maxTokens: opt(b.max_completion_tokens) ?? opt(b.max_tokens),
    params: {
      kind: 'chat',
      messages,
      temperature: opt(b.temperature),
      topP: opt(b.top_p),
      stop: stopList(b.stop),
      seed: opt(b.seed),
      presencePenalty: opt(b.presence_penalty),
      frequencyPenalty: opt(b.frequency_penalty),
    },
  };
}

/** OpenAI's legacy completions default to 16 tokens. */
export const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;

export function parseCompletionRequest(body: unknown, limits: RequestLimits = DEFAULT_LIMITS): ParsedRequest {
  requireObject(body);
  const r = completionRequestSchema.safeParse(body);
  if (!r.success) fail(r.error, body);
  const b = r.data;
  const prompt = typeof b.prompt === 'string' ? b.prompt : (b.prompt[0] as string);
  checkPromptChars(prompt.length, limits, 'prompt');
  return {
    model: b.model,
    stream: b.stream ?? false,
    includeUsage: b.stream_options?.include_usage ?? false,
    maxTokens: opt(b.max_tokens) ?? COMPLETIONS_DEFAULT_MAX_TOKENS,
    params: {
      kind: 'completion',
      prompt,
      temperature: opt(b.temperature),
      topP: opt(b.top_p),
      stop: stopList(b.stop),
      seed: opt(b.seed),
      presencePenalty: opt(b.presence_penalty),
      frequencyPenalty: opt(b.frequency_penalty),
    },
  };
}

/** A query parameter as a number: an empty value is refused, not read as 0. */
const queryNumber = (n: z.ZodNumber) =>
  z
    .string()
    .max(32, 'must be a number')
    .regex(/^-?\d+(\.\d+)?$/, 'must be a number')
    .transform(Number)
    .pipe(n)
    .optional();

const plainQuerySchema = z.strictObject({
  max_tokens: queryNumber(z.number().int().min(1).max(MAX_TOKENS_CAP)),
  temperature: queryNumber(z.number().min(0).max(2)),
  top_p: queryNumber(z.number().min(0).max(1)),
  seed: queryNumber(z.number().int().min(-SEED_BOUND).max(SEED_BOUND)),
});

/**
 * The plain route: the body is the user's message as text; sampling options
 * may come as query parameters (`?max_tokens=64&temperature=0`).
 */
export function parsePlainRequest(
  model: string,
  body: unknown,
  query: unknown,
  limits: RequestLimits = DEFAULT_LIMITS,
): ParsedRequest {
  if (typeof body !== 'string' || body.trim().length === 0) {
    throw new InvalidRequestError('The request body must be the prompt as text, and must not be empty.');
  }
  checkPromptChars(body.length, limits, null);
  const q = plainQuerySchema.safeParse(query ?? {});
  if (!q.success) fail(q.error, query);
  return {
    model,
    stream: true,
    includeUsage: false,
    maxTokens: q.data.max_tokens,
    params: {
      kind: 'chat',
      messages: [{ role: 'user', content: body }],
      temperature: q.data.temperature,
      topP: q.data.top_p,
      seed: q.data.seed,
    },
  };
}
