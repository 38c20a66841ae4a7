import { createHash, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { AuthenticationError, InvalidRequestError, RateLimitError, type ApiError, type RateLimitName } from '../errors/index.js';
import { PRIORITIES, TENANT_NAME, type Priority } from '../protocol/job.js';
import type { Keys } from '../redis/keys.js';
import { Script } from '../redis/scripts.js';

/**
 * API keys and their per-key rate limits.
 *
 * A key is `sk-llmux-` and 32 random base62 characters. It is shown once, at
 * creation; Redis holds only its SHA-256, as the name of the key's hash
 * (`<p>:apikey:<sha256>`). That hash holds the key's record as plain fields
 * (readable with `HGETALL`) and the state of its two token buckets, so a
 * single-key script authenticates a request and reserves its cost in one
 * round trip, and stays in one slot on a Redis Cluster. `<p>:apikeys` maps
 * each key id (`key_` + the first 12 hex digits of the SHA-256) to the
 * SHA-256, for listing and revoking by id.
 *
 * Limits are token buckets refilled continuously: `rpm` counts requests, `tpm`
 * counts tokens. A request reserves its worst case (prompt + max_tokens) at
 * admission and settles the difference when it ends, so concurrent requests
 * can never overspend a key between admission and completion.
 */

/** Every key starts with this, so a leaked key is recognisable (secret scanners) and a typo fails fast. */
export const API_KEY_PREFIX = 'sk-llmux-';
/** The whole shape of a key this module issues. */
export const API_KEY_FORMAT = /^sk-llmux-[0-9A-Za-z]{32}$/;
const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const KEY_ID_FORMAT = /^key_[0-9a-f]{12}$/;
const MAX_NAME_CHARS = 200;

const admitScript = new Script('key-admit-1');
const settleScript = new Script('key-settle-1');

/** What `create` takes. Absent limits are unlimited. */
export interface NewApiKey {
  tenant: string;
  /** A label for operators (who holds it, what for). Default empty. */
  name?: string;
  /** Requests per minute; a whole number >= 1. Absent or null: unlimited. */
  rpm?: number | null;
  /** Tokens (prompt + completion) per minute; a whole number >= 1. Absent or null: unlimited. */
  tpm?: number | null;
  /** The tenant's share in weighted fair queueing; > 0. Default 1. */
  weight?: number;
  /** The highest priority the key's requests may ask for. Default `normal`. */
  maxPriority?: Priority;
}

/** A key as stored and listed: never the secret, never its hash. */
export interface ApiKeyRecord {
  /** `key_` + the first 12 hex digits of the key's SHA-256. */
  id: string;
  tenant: string;
  name: string;
  /** null: unlimited. */
  rpm: number | null;
  /** null: unlimited. */
  tpm: number | null;
  weight: number;
  maxPriority: Priority;
  /** ms since epoch. */
  createdAt: number;
}

export interface CreatedApiKey {
  id: string;
  /** The secret itself. Only this result ever holds it: show it once. */
  key: string;
  record: ApiKeyRecord;
}

/** What one call costs: one request, and the most tokens it may use (prompt + max_tokens). */
export interface AdmitCost {
  requests: number;
  tokens: number;
}

/** Tokens held for an admitted request until `settle`. Pass it back as it came. */
export interface Reservation {
  /** SHA-256 of the key (hex). */
  keyHash: string;
  /** Tokens reserved from the tpm bucket. */
  tokens: number;
  /** False when the key had no tpm limit: settling it costs no round trip. */
  metered: boolean;
}

export type AdmitResult =
  | { status: 'ok'; record: ApiKeyRecord; reservation: Reservation }
  /** No such key: never issued, revoked, or not shaped like a key at all. */
  | { status: 'unknown' }
  /** Not enough in a bucket now; `retryAfterMs` until every bucket holds enough (`limit`: the slowest). */
  | { status: 'limited'; limit: RateLimitName; retryAfterMs: number; capacity: number }
  /** The cost exceeds the whole per-minute limit: it can never pass. */
  | { status: 'too_large'; limit: RateLimitName; capacity: number };

/** SHA-256 of a key, hex: the name of its hash in Redis. */
export function hashApiKey(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** The key id for a key's SHA-256. */
export function apiKeyId(sha256: string): string {
  return `key_${sha256.slice(0, 12)}`;
}

/**
 * Issues, lists, revokes and admits API keys. One instance per process; every
 * method is safe to call concurrently.
 */
export class ApiKeys {
  /** Reservations settled by this instance, so a second settle of the same one does nothing. */
  private readonly settled = new WeakSet<Reservation>();

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
  ) {}

  /**
   * Issues a key. Throws InvalidRequestError (naming the field) for a bad
   * tenant, name, limit, weight or priority.
   */
  async create(opts: NewApiKey): Promise<CreatedApiKey> {
    const fields = validate(opts);
    // Ids are 48 bits of the hash: a clash is astronomically rare, but HSETNX makes it impossible.
    for (let attempt = 0; attempt < 5; attempt++) {
      const key = newSecret();
      const sha = hashApiKey(key);
      const id = apiKeyId(sha);
      // Index first: a crash in between leaves an index entry without a record (skipped by list,
      // removed by revoke), never a working key that cannot be listed or revoked.
      if ((await this.redis.hsetnx(this.keys.apiKeyIndex(), id, sha)) === 0) continue;
      const record: ApiKeyRecord = { id, createdAt: Date.now(), ...fields };
      await this.redis.hset(this.keys.apiKey(sha), toHash(record));
      return { id, key, record };
    }
    throw new Error('could not find a free API key id in 5 attempts');
  }

  /** Every key's record, oldest first. */
  async list(): Promise<ApiKeyRecord[]> {
    const index = await this.redis.hgetall(this.keys.apiKeyIndex());
    // Auto-pipelined: one write for all keys.
    const hashes = await Promise.all(Object.values(index).map((sha) => this.redis.hgetall(this.keys.apiKey(sha))));
    return hashes
      .filter((h) => Object.keys(h).length > 0)
      .map(fromHash)
      .sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** One key's record, or null if there is no such key. */
  async get(id: string): Promise<ApiKeyRecord | null> {
    if (!KEY_ID_FORMAT.test(id)) return null;
    const sha = await this.redis.hget(this.keys.apiKeyIndex(), id);
    if (!sha) return null;
    const h = await this.redis.hgetall(this.keys.apiKey(sha));
    return Object.keys(h).length > 0 ? fromHash(h) : null;
  }

  /**
   * Revokes a key: its next admission is refused. Requests already admitted
   * run on (their settle finds no key and changes nothing). False if there is
   * no such key.
   */
  async revoke(id: string): Promise<boolean> {
    if (!KEY_ID_FORMAT.test(id)) return false;
    const sha = await this.redis.hget(this.keys.apiKeyIndex(), id);
    if (!sha) return false;
    // The record first, so the key stops working even if the index update is lost.
    const [, removed] = await Promise.all([this.redis.del(this.keys.apiKey(sha)), this.redis.hdel(this.keys.apiKeyIndex(), id)]);
    return removed === 1;
  }

  /**
   * Authenticates `secret` and reserves `cost` against its limits: one
   * EVALSHA. A string not shaped like a key is `unknown` without a round trip.
   * On `ok`, the caller must `settle` the reservation when the request ends.
   */
  async admit(secret: string, cost: AdmitCost): Promise<AdmitResult> {
    checkCount('cost.requests', cost.requests);
    checkCount('cost.tokens', cost.tokens);
    if (!API_KEY_FORMAT.test(secret)) return { status: 'unknown' };
    const keyHash = hashApiKey(secret);
    const reply = (await admitScript.run(this.redis, [this.keys.apiKey(keyHash)], [cost.requests, cost.tokens])) as unknown[];
    switch (reply[0]) {
      case 'unknown':
        return { status: 'unknown' };
      case 'too_large':
        return { status: 'too_large', limit: reply[1] as RateLimitName, capacity: Number(reply[2]) };
      case 'limited':
        return {
          status: 'limited',
          limit: reply[1] as RateLimitName,
          retryAfterMs: Number(reply[2]),
          capacity: Number(reply[3]),
        };
      case 'ok': {
        const record = fromHash(pairs(reply[1] as string[]));
        return { status: 'ok', record, reservation: { keyHash, tokens: cost.tokens, metered: record.tpm !== null } };
      }
      default:
        throw new Error(`key-admit answered ${JSON.stringify(reply)}`);
    }
  }

  /**
   * Settles a reservation with the tokens the request really used: refunds
   * what it did not use (up to the bucket's capacity), or charges what it
   * used beyond the reservation. At most one round trip, none when there is
   * nothing to settle; a second settle of the same reservation does nothing.
   */
  async settle(reservation: Reservation, actualTokens: number): Promise<void> {
    checkCount('actualTokens', actualTokens);
    if (this.settled.has(reservation)) return;
    this.settled.add(reservation);
    const delta = reservation.tokens - actualTokens;
    if (!reservation.metered || delta === 0) return;
    await settleScript.run(this.redis, [this.keys.apiKey(reservation.keyHash)], [delta]);
  }
}

/**
 * The error a refused admission is sent as: 401 for an unknown key, 429
 * `request_too_large` or `rate_limit_exceeded` (with Retry-After) for a limit.
 */
export function admissionError(result: Exclude<AdmitResult, { status: 'ok' }>, cost: AdmitCost, secret: string): ApiError {
  if (result.status === 'unknown') return new AuthenticationError(secret);
  const requested = result.limit === 'rpm' ? cost.requests : cost.tokens;
  if (result.status === 'too_large') return RateLimitError.tooLarge(result.limit, result.capacity, requested);
  return RateLimitError.exceeded(result.limit, result.capacity, requested, result.retryAfterMs);
}

/** 32 base62 characters from the CSPRNG, without modulo bias (bytes >= 248 are dropped). */
function newSecret(): string {
  let out = '';
  while (out.length < 32) {
    for (const b of randomBytes(48)) {
      if (b < 248 && out.length < 32) out += BASE62[b % 62];
    }
  }
  return API_KEY_PREFIX + out;
}

function checkCount(what: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${what} must be a whole number >= 0 (got ${n})`);
}

type KeyFields = Omit<ApiKeyRecord, 'id' | 'createdAt'>;

/** Validates what `create` was given and fills in the defaults. */
function validate(o: NewApiKey): KeyFields {
  if (typeof o.tenant !== 'string' || !TENANT_NAME.test(o.tenant)) {
    throw new InvalidRequestError(
      `tenant must be 1-64 characters of A-Z a-z 0-9 _ . - (got ${JSON.stringify(o.tenant)})`,
      'tenant',
    );
  }
  const name = o.name ?? '';
  // eslint-disable-next-line no-control-regex
  if (typeof name !== 'string' || name.length > MAX_NAME_CHARS || /[\x00-\x1f\x7f]/.test(name)) {
    throw new InvalidRequestError(`name must be at most ${MAX_NAME_CHARS} characters, without control characters`, 'name');
  }
  const limit = (field: 'rpm' | 'tpm'): number | null => {
    const v = o[field];
    if (v === undefined || v === null) return null;
    if (!Number.isSafeInteger(v) || v < 1)
      throw new InvalidRequestError(`${field} must be a whole number >= 1 (got ${v})`, field);
    return v;
  };
  const weight = o.weight ?? 1;
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) {
    throw new InvalidRequestError(`weight must be a number > 0 (got ${weight})`, 'weight');
  }
  const maxPriority = o.maxPriority ?? 'normal';
  if (!PRIORITIES.includes(maxPriority)) {
    throw new InvalidRequestError(`maxPriority must be one of ${PRIORITIES.join(', ')} (got ${maxPriority})`, 'maxPriority');
  }
  return { tenant: o.tenant, name, rpm: limit('rpm'), tpm: limit('tpm'), weight, maxPriority };
}

/** The record as hash fields; an unlimited limit is absent (HSET it later to add one). */
function toHash(r: ApiKeyRecord): Record<string, string> {
  const h: Record<string, string> = {
    id: r.id,
    tenant: r.tenant,
    name: r.name,
    weight: String(r.weight),
    max_priority: r.maxPriority,
    created_at: String(r.createdAt),
  };
  if (r.rpm !== null) h.rpm = String(r.rpm);
  if (r.tpm !== null) h.tpm = String(r.tpm);
  return h;
}

/**
 * A record from its hash (bucket fields ignored). Hashes may be edited by hand
 * with redis-cli, so unreadable fields fall back: weight to 1, and the
 * priority to `low`, the least an unreadable key should be trusted with.
 */
function fromHash(h: Record<string, string>): ApiKeyRecord {
  const limit = (v: string | undefined) => (v === undefined || v === '' || !Number.isFinite(Number(v)) ? null : Number(v));
  const weight = Number(h.weight);
  const priority = h.max_priority as Priority;
  return {
    id: h.id ?? '',
    tenant: h.tenant ?? '',
    name: h.name ?? '',
    rpm: limit(h.rpm),
    tpm: limit(h.tpm),
    weight: Number.isFinite(weight) && weight > 0 ? weight : 1,
    maxPriority: PRIORITIES.includes(priority) ? priority : 'low',
    createdAt: Number(h.created_at) || 0,
  };
}

/** HGETALL's flat [field, value, ...] as an object. */
function pairs(flat: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]!] = flat[i + 1]!;
  return out;
}
