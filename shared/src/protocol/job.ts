import { z } from 'zod';
import { formatIssues } from '../config/zod-errors.js';
import { TRACEPARENT } from '../tracing/index.js';

/**
 * A queued request as it sits in `llm:{model}:requests`. Fields are plain
 * strings so `XRANGE` in redis-cli or RedisInsight shows what is queued;
 * `params` is JSON.
 */

export const chatMessageSchema = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: z.string(),
});

export const jobParamsSchema = z.object({
  kind: z.enum(['chat', 'completion']),
  messages: z.array(chatMessageSchema).optional(),
  prompt: z.string().optional(),
  maxTokens: z.number().int().min(1),
  temperature: z.number().min(0).max(2).optional(),
  topP: z.number().min(0).max(1).optional(),
  stop: z.array(z.string()).optional(),
  seed: z.number().int().optional(),
  presencePenalty: z.number().min(-2).max(2).optional(),
  frequencyPenalty: z.number().min(-2).max(2).optional(),
});

export type ChatMessage = z.infer<typeof chatMessageSchema>;
export type JobParams = z.infer<typeof jobParamsSchema>;

/**
 * Scheduling priority. Strict between levels (every waiting `high` request of
 * a model is dispatched before any `normal` one); weighted fair sharing between
 * tenants within a level.
 */
export const PRIORITIES = ['low', 'normal', 'high'] as const;
export type Priority = (typeof PRIORITIES)[number];

/** Tenant names: API keys belong to one; `default` when auth is off. */
export const TENANT_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
export const DEFAULT_TENANT = 'default';

export interface Job {
  /** Request id, unique across the fleet; also the completion's `id`. */
  rid: string;
  /** Deployment name (aliases resolved by the gateway). */
  model: string;
  /** Gateway id whose reply stream receives the events. */
  gw: string;
  params: JobParams;
  /** Enqueue time, ms since epoch. */
  enqueuedAt: number;
  /** Time after which the work is useless, ms since epoch. */
  deadline: number;
  /** Who sent it (fair sharing is between tenants). */
  tenant: string;
  priority: Priority;
  /** How long the request's output log is kept after its deadline, ms (0: the worker's OUTPUT_RETENTION_MS). */
  retainMs: number;
  /** W3C trace context of the gateway's request span, when tracing is on. */
  traceparent?: string;
}

/** Flattens a job into XADD field/value pairs. */
export function encodeJob(job: Job): string[] {
  return [
    'rid', job.rid,
    'model', job.model,
    'gw', job.gw,
    'kind', job.params.kind,
    'params', JSON.stringify(job.params),
    'ts', String(job.enqueuedAt),
    'deadline', String(job.deadline),
    'tenant', job.tenant,
    'priority', job.priority,
    'retain', String(job.retainMs),
    ...(job.traceparent ? ['traceparent', job.traceparent] : []),
  ]; // prettier-ignore
}

/** Thrown when a stream entry is not a valid job (a buggy or hostile producer). */
export class MalformedJobError extends Error {
  override name = 'MalformedJobError';
}

const entrySchema = z.object({
  rid: z.string().min(1).max(200),
  model: z.string().min(1),
  gw: z.string().min(1).max(200),
  params: z.string(),
  ts: z.coerce.number().int(),
  deadline: z.coerce.number().int(),
  // Absent in entries written before tenants existed.
  tenant: z.string().regex(TENANT_NAME).default(DEFAULT_TENANT),
  priority: z.enum(PRIORITIES).default('normal'),
  retain: z.coerce.number().int().min(0).default(0),
  // A malformed trace context is dropped, not a reason to refuse the job.
  traceparent: z.string().optional().catch(undefined),
});

/** Parses XREADGROUP field/value pairs back into a job, validating everything. */
export function decodeJob(fields: readonly string[]): Job {
  const obj: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) obj[fields[i]!] = fields[i + 1]!;
  const e = entrySchema.safeParse(obj);
  if (!e.success) throw new MalformedJobError(formatIssues(e.error.issues));
  let raw: unknown;
  try {
    raw = JSON.parse(e.data.params);
  } catch {
    throw new MalformedJobError('params: not JSON');
  }
  const p = jobParamsSchema.safeParse(raw);
  if (!p.success) throw new MalformedJobError(formatIssues(p.error.issues, 'params'));
  return {
    rid: e.data.rid,
    model: e.data.model,
    gw: e.data.gw,
    params: p.data,
    enqueuedAt: e.data.ts,
    deadline: e.data.deadline,
    tenant: e.data.tenant,
    priority: e.data.priority,
    retainMs: e.data.retain,
    ...(e.data.traceparent && TRACEPARENT.test(e.data.traceparent) ? { traceparent: e.data.traceparent } : {}),
  };
}
