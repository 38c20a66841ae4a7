import type { Keys, Redis } from '@llmux/shared';

/** The dead-letter stream of a model keeps about this many entries (`XADD … MAXLEN ~`). */
export const DEAD_LETTER_MAXLEN = 10_000;
/** Each original field name and value is cut to this many characters, so the stream's memory stays bounded. */
export const DEAD_LETTER_VALUE_MAX = 65_536;
/** At most this many of the original field/value pairs are kept. */
export const DEAD_LETTER_MAX_PAIRS = 256;
/** Prefix of the original entry's fields in a dead letter (`f:rid`, `f:params`, …). */
export const ORIGINAL_FIELD_PREFIX = 'f:';

/** The field the dispatch script sets on a staged element it could not turn into an entry (see dispatch-5.lua). */
const STAGED_MARK = 'malformed';

export interface DeadLetter {
  /** Why the entry was refused: the validation error, or the dispatch script's reason for a staged element. */
  reason: string;
  /** The entry's id in the model's request stream. */
  entryId: string;
  worker: string;
  /** When it was dead-lettered, ms since epoch. */
  at: number;
  /** The entry's field/value pairs as read. */
  fields: readonly string[];
}

/** The value of the first field called `name`, if any. */
function fieldValue(fields: readonly string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
  return undefined;
}

/**
 * Why an entry is malformed: the dispatch script's reason for a staged
 * element that was no list of fields (the entry it made carries `malformed`
 * and no job fields), else the validation error.
 */
export function deadLetterReason(fields: readonly string[], validationError: string): string {
  const mark = fieldValue(fields, STAGED_MARK);
  return mark !== undefined && fieldValue(fields, 'rid') === undefined ? mark : validationError;
}

/**
 * The dead letter's field/value pairs: `reason`, `entry_id`, `worker`, `at`,
 * then the original pairs with their names prefixed by `f:` (in order,
 * duplicates kept), so `XRANGE` in redis-cli shows one per line. When names,
 * values or pairs had to be cut, `truncated` is `1` and `fields_total` the
 * original number of pairs.
 */
export function deadLetterFields(d: DeadLetter): string[] {
  const out = ['reason', d.reason, 'entry_id', d.entryId, 'worker', d.worker, 'at', String(d.at)];
  const total = Math.floor(d.fields.length / 2);
  let cut = total > DEAD_LETTER_MAX_PAIRS;
  const clip = (s: string) => {
    if (s.length <= DEAD_LETTER_VALUE_MAX) return s;
    cut = true;
    return s.slice(0, DEAD_LETTER_VALUE_MAX);
  };
  for (let i = 0; i < Math.min(total, DEAD_LETTER_MAX_PAIRS); i++) {
    out.push(ORIGINAL_FIELD_PREFIX + clip(d.fields[2 * i]!), clip(d.fields[2 * i + 1]!));
  }
  if (cut) out.push('truncated', '1', 'fields_total', String(total));
  return out;
}

/** Appends a dead letter to the model's dead-letter stream (capped); resolves with its id. */
export async function addDeadLetter(redis: Redis, keys: Keys, model: string, d: DeadLetter): Promise<string> {
  const id = await redis.xadd(keys.deadLetters(model), 'MAXLEN', '~', DEAD_LETTER_MAXLEN, '*', ...deadLetterFields(d));
  return String(id);
}
