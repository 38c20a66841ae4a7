import type { Redis } from 'ioredis';
import { encodeEvent, type ReplyEvent } from '../protocol/events.js';
import type { Keys } from './keys.js';
import { scripts } from './scripts.js';

/** What `begin` tells an attempt. */
export type BeginResult =
  { status: 'ok' | 'exhausted'; seq: number; tokens: number; text: string; attempts: number } | { status: 'done' };

/** `emit` results besides a sequence number. */
export const FENCED = -1;
export const ALREADY_ENDED = -2;
/** Events this attempt wrote are gone from Redis (lost in a failover), or the request's state is. */
export const LOST = -3;

/**
 * How `emit` treats the event's `seq`: `unchecked` ignores it; `checked`
 * expects the event to get exactly that number (writes nothing and answers
 * LOST when Redis is behind, answers the number without writing again when
 * Redis is past it); `restore` first sets the request's next number to it
 * (after LOST, for the error event that ends the request).
 */
export type EmitMode = 'unchecked' | 'checked' | 'restore';

/**
 * A request's durable state and output, kept beside its gateway's reply
 * stream (same hash slot), and the only way workers write events: every event
 * goes out through one script that checks the writer still owns the request
 * and records the event, so a retry or a takeover resumes exactly after the
 * last delivered event and a stale owner can never write again.
 */
export class RequestLog {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly replyMaxLen: number,
  ) {}

  /** Makes `token` the request's owner and returns what earlier attempts delivered. */
  async begin(gw: string, rid: string, token: string, maxAttempts: number, ttlMs: number): Promise<BeginResult> {
    const r = (await scripts.begin.run(
      this.redis,
      [this.keys.requestState(gw, rid), this.keys.requestLog(gw, rid)],
      [token, maxAttempts, Math.max(1, Math.round(ttlMs))],
    )) as [string, number, number, string, number];
    if (r[0] === 'done') return { status: 'done' };
    return { status: r[0] as 'ok' | 'exhausted', seq: Number(r[1]), tokens: Number(r[2]), text: r[3], attempts: Number(r[4]) };
  }

  /**
   * Sends one event as `token`. The event's `seq` is assigned by Redis; the
   * caller's is the expected one in `checked` and `restore` mode (see
   * EmitMode). Resolves with the seq, FENCED, ALREADY_ENDED or LOST.
   */
  async emit(gw: string, token: string, ttlMs: number, ev: ReplyEvent, mode: EmitMode = 'unchecked'): Promise<number> {
    const fields = encodeEvent(ev);
    // encodeEvent starts with rid, <rid>, seq, <seq>: the script puts its own seq there.
    const rest = fields.slice(4);
    const text = ev.type === 'tokens' ? ev.text : '';
    const n = ev.type === 'tokens' ? ev.n : 0;
    const expect = mode === 'unchecked' ? '' : mode === 'restore' ? `!${ev.seq}` : String(ev.seq);
    const r = await scripts.emit.run(
      this.redis,
      [this.keys.requestState(gw, ev.rid), this.keys.requestLog(gw, ev.rid), this.keys.replies(gw)],
      [token, Math.max(1, Math.round(ttlMs)), this.replyMaxLen, ev.type, text, n, ev.rid, expect, ...rest],
    );
    return Number(r);
  }
}
