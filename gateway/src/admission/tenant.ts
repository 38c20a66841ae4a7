import type { IncomingHttpHeaders } from 'node:http';
import {
  admissionError,
  API_KEY_FORMAT,
  AuthenticationError,
  DEFAULT_TENANT,
  InvalidRequestError,
  PRIORITIES,
  type AdmitCost,
  type ApiKeys,
  type Priority,
} from '@llmux/shared';

/** Who sent a request, and what its key allows. */
export interface Tenant {
  name: string;
  /** The API key's id (`key_…`), null when auth is off. */
  keyId: string | null;
  /** Fair-share weight in the model's queue. */
  weight: number;
  /** Highest priority its requests may ask for. */
  maxPriority: Priority;
}

/** Everyone, when auth is off: one tenant, which may use every priority. */
export const ANONYMOUS: Tenant = { name: DEFAULT_TENANT, keyId: null, weight: 1, maxPriority: 'high' };

export const PRIORITY_HEADER = 'x-priority';

/** OpenAI's `service_tier` values, as priorities: `flex` is cheap and slow, `priority` is fast. */
const SERVICE_TIERS: Record<string, Priority> = {
  auto: 'normal',
  default: 'normal',
  scale: 'normal',
  flex: 'low',
  priority: 'high',
};

const rank = (p: Priority) => PRIORITIES.indexOf(p);

/**
 * The request's priority: the `X-Priority` header (`low`, `normal`, `high`),
 * else the body's `service_tier`, else `normal`; capped at what the tenant's
 * key allows (a request asking for more gets the most it may have).
 */
export function resolvePriority(header: string | string[] | undefined, serviceTier: unknown, tenant: Tenant): Priority {
  let asked: Priority = 'normal';
  if (header !== undefined) {
    const v = Array.isArray(header) ? undefined : header.trim().toLowerCase();
    if (!PRIORITIES.includes(v as Priority)) {
      throw new InvalidRequestError('Invalid X-Priority header: send low, normal or high.', null, 'invalid_priority');
    }
    asked = v as Priority;
  } else if (typeof serviceTier === 'string') {
    const p = SERVICE_TIERS[serviceTier];
    if (!p) {
      throw new InvalidRequestError(
        `Invalid service_tier '${serviceTier}': send auto, default, flex or priority.`,
        'service_tier',
        'invalid_value',
      );
    }
    asked = p;
  }
  return rank(asked) > rank(tenant.maxPriority) ? tenant.maxPriority : asked;
}

/** An admitted request's tenant, and how to settle what it reserved. */
export interface TenantAdmission {
  tenant: Tenant;
  /** Settles the token reservation with the tokens really used (prompt + completion). Call once. */
  settle(tokens: number): void;
}

/** Every request when auth is off: nothing reserved, nothing to settle. */
export const ANONYMOUS_ADMISSION: TenantAdmission = { tenant: ANONYMOUS, settle: () => {} };

/** The bearer token of a request, or null. */
function bearerOf(headers: IncomingHttpHeaders): string | null {
  const h = headers.authorization;
  if (typeof h !== 'string') return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
  return m ? m[1]! : null;
}

/**
 * Authentication and per-key limits. With AUTH=off everyone is the one
 * `default` tenant and nothing is metered. With AUTH=required a request needs
 * a key made by `llmctl keys create`: `admit` authenticates it and reserves
 * one request and the request's most tokens (estimated prompt + max_tokens)
 * from its per-minute buckets in one atomic Redis script, so concurrent
 * requests cannot slip past a limit; `settle` gives back what was not used.
 */
export class TenantGate {
  constructor(
    private readonly keys: ApiKeys | null,
    private readonly onSettleError: (err: unknown) => void,
  ) {}

  get required(): boolean {
    return this.keys !== null;
  }

  /** Before the body is read: a missing or malformed key is a 401 at once. */
  precheck(headers: IncomingHttpHeaders): void {
    if (!this.keys) return;
    const secret = bearerOf(headers);
    if (secret === null || !API_KEY_FORMAT.test(secret)) throw new AuthenticationError(secret);
  }

  async admit(headers: IncomingHttpHeaders, cost: AdmitCost): Promise<TenantAdmission> {
    if (!this.keys) return ANONYMOUS_ADMISSION;
    const secret = bearerOf(headers);
    if (secret === null) throw new AuthenticationError(null);
    const r = await this.keys.admit(secret, cost);
    if (r.status !== 'ok') throw admissionError(r, cost, secret);
    const keys = this.keys;
    return {
      tenant: { name: r.record.tenant, keyId: r.record.id, weight: r.record.weight, maxPriority: r.record.maxPriority },
      settle: (tokens) => {
        keys.settle(r.reservation, Math.max(0, Math.round(tokens))).catch(this.onSettleError);
      },
    };
  }
}

/**
 * A prompt's tokens before any tokenizer has seen it: about 4 characters a
 * token for English text with the usual BPE vocabularies, rounded up. Only
 * reserved; the real count settles the bucket when the request ends.
 */
export function estimatePromptTokens(chars: number): number {
  return Math.ceil(chars / 4);
}
