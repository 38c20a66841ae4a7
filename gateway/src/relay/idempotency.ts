import { createHash } from 'node:crypto';
import { InvalidRequestError, type Keys, type Redis } from '@llmux/shared';
import type { RequestMeta } from './follower.js';

export const IDEMPOTENCY_HEADER = 'idempotency-key';

/** What an Idempotency-Key names: the request it started and how to render it. */
export interface IdempotencyRecord {
  /** sha256 of the route and the request body: a repeat must match it. */
  body: string;
  rid: string;
  meta: RequestMeta;
}

export type ClaimResult = { status: 'new' } | { status: 'existing'; record: IdempotencyRecord } | { status: 'mismatch' };

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Checks the header: 1-255 visible ASCII characters. Null when absent. */
export function idempotencyKeyOf(v: string | string[] | undefined): string | null {
  if (v === undefined) return null;
  const key = Array.isArray(v) ? v[0] : v;
  if (key === undefined || !/^[\x21-\x7e]{1,255}$/.test(key)) {
    throw new InvalidRequestError(
      'The Idempotency-Key header must be 1 to 255 visible ASCII characters.',
      null,
      'invalid_idempotency_key',
    );
  }
  return key;
}

/** The fingerprint a repeat must match: the route and the body as parsed. */
export function bodyFingerprint(route: string, body: unknown): string {
  return sha256(`${route}\n${typeof body === 'string' ? body : JSON.stringify(body)}`);
}

/**
 * Idempotency-Keys, per tenant, in Redis with a TTL: the first request with a
 * key claims it (SET NX, one round trip, so two racing repeats cannot both
 * start the model); a repeat with the same body gets the first request's
 * record and is served from its output log; one with another body is refused.
 */
export class IdempotencyStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly ttlMs: number,
  ) {}

  async claim(tenant: string, key: string, record: IdempotencyRecord): Promise<ClaimResult> {
    const k = this.keys.idempotency(tenant, sha256(key));
    const prior = (await this.redis.set(k, JSON.stringify(record), 'PX', this.ttlMs, 'NX', 'GET')) as string | null;
    if (prior === null) return { status: 'new' };
    let earlier: IdempotencyRecord;
    try {
      earlier = JSON.parse(prior) as IdempotencyRecord;
    } catch {
      return { status: 'mismatch' };
    }
    return earlier.body === record.body ? { status: 'existing', record: earlier } : { status: 'mismatch' };
  }

  /** Frees a key whose request was refused before it was enqueued, so a retry can run it. */
  async release(tenant: string, key: string, rid: string): Promise<void> {
    const k = this.keys.idempotency(tenant, sha256(key));
    const cur = await this.redis.get(k);
    if (cur && (JSON.parse(cur) as IdempotencyRecord).rid === rid) await this.redis.del(k);
  }
}
