import type { Redis } from 'ioredis';
import { encodeEvent, type ReplyEvent } from '../protocol/events.js';
import type { Keys } from './keys.js';
import type { EmitMode } from './request-log.js';
import { scripts } from './scripts.js';

/** One event of a batch: what `RequestLog.emit` takes for one call. */
export interface BatchedEmit {
  token: string;
  ttlMs: number;
  ev: ReplyEvent;
  mode: EmitMode;
}

/**
 * Sends many events of one gateway in one script call (`emit-batch-1`, which
 * runs `emit-3` on each in order) and resolves with one result per event,
 * each what `RequestLog.emit` would have resolved with: the event's seq,
 * FENCED, ALREADY_ENDED or LOST. The events may belong to many requests; the
 * events of one request must be given in the order they are to be written.
 */
export async function emitBatch(
  redis: Redis,
  keys: Keys,
  replyMaxLen: number,
  gw: string,
  events: readonly BatchedEmit[],
): Promise<number[]> {
  const args: (string | number)[] = [keys.requestState(gw, ''), keys.requestLog(gw, '')];
  for (const { token, ttlMs, ev, mode } of events) {
    const fields = encodeEvent(ev);
    const text = ev.type === 'tokens' ? ev.text : '';
    const n = ev.type === 'tokens' ? ev.n : 0;
    const expect = mode === 'unchecked' ? '' : mode === 'restore' ? `!${ev.seq}` : String(ev.seq);
    // emit-3's arguments; encodeEvent starts with rid, <rid>, seq, <seq>: the script puts its own seq there.
    args.push(8 + fields.length - 4, token, Math.max(1, Math.round(ttlMs)), replyMaxLen, ev.type, text, n, ev.rid, expect);
    for (let i = 4; i < fields.length; i++) args.push(fields[i]!);
  }
  const r = (await scripts.emitBatch.run(redis, [keys.replies(gw)], args)) as unknown[];
  return r.map(Number);
}
