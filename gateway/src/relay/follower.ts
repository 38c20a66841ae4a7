import {
  createBlockingRedis,
  ReplyReader,
  type Keys,
  type Logger,
  type Redis,
  type RedisTarget,
  type ReplyEvent,
} from '@llmux/shared';
import type { Sink } from './sinks.js';

/** How a request is rendered: which API, streamed or not. */
export type ResponseFormat = 'chat-sse' | 'completion-sse' | 'chat-json' | 'completion-json' | 'plain';

/**
 * What a gateway records (with a TTL) about a request that may be resumed or
 * replayed: where its output log lives and how to render it again.
 */
export interface RequestMeta {
  /** The gateway whose slot holds the request's log. */
  gw: string;
  model: string;
  tenant: string;
  format: ResponseFormat;
  /** Unix seconds, as in the original chunks. */
  created: number;
  includeUsage: boolean;
  /** Past this (ms since epoch) the request cannot still be running. */
  deadline: number;
}

/**
 * Where a client resumes: after the event with SSE id `n` (`n.part` inside the
 * end of the stream). `{ n: 0, part: null }` with `fromStart` replays everything.
 */
export interface ResumePoint {
  n: number;
  part: number | null;
}

/** Parses a `Last-Event-ID`; null when absent, throws on garbage. */
export function parseLastEventId(v: string | undefined): ResumePoint | null {
  if (v === undefined || v === '') return null;
  const m = /^(\d{1,9})(?:\.(\d))?$/.exec(v.trim());
  if (!m) throw new RangeError(`Last-Event-ID must be an event id from this stream (like "12"), not ${JSON.stringify(v)}`);
  return { n: Number(m[1]), part: m[2] === undefined ? null : Number(m[2]) };
}

/** A follower marks the request this long and refreshes the mark every third of it. */
const FOLLOW_MARK_MS = 6000;

export interface FollowOptions {
  meta: RequestMeta;
  rid: string;
  /** Replay from the start (attach) when null. */
  after: ResumePoint | null;
  sink: Sink;
  /** Ends the follow when the client goes away. */
  res: { on(event: 'close', fn: () => void): unknown; end(): unknown };
  timeoutMessage: string;
}

/**
 * Relays a request's events from its output log (`<p>:gw:{gw}:log:<rid>`,
 * written by the worker with every event) to another client: a retry that
 * repeats an Idempotency-Key, or a client that reconnects with Last-Event-ID.
 * Works from any gateway. Each follow holds one blocking connection while it
 * runs; follows are rare, and they count against the gateway's open-request cap.
 */
export class RequestFollowers {
  private open = 0;

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly redisTarget: RedisTarget,
    private readonly log: Logger,
    /** Told the number of follows after each change (the `llmux_gateway_followers` gauge). */
    private readonly onSize: (n: number) => void = () => {},
  ) {}

  get size(): number {
    return this.open;
  }

  async saveMeta(rid: string, meta: RequestMeta, ttlMs: number): Promise<void> {
    await this.redis.set(this.keys.requestMeta(rid), JSON.stringify(meta), 'PX', Math.max(1, Math.round(ttlMs)));
  }

  async meta(rid: string): Promise<RequestMeta | null> {
    const raw = await this.redis.get(this.keys.requestMeta(rid));
    if (!raw) return null;
    try {
      return JSON.parse(raw) as RequestMeta;
    } catch {
      return null;
    }
  }

  /** Whether some client follows the request now (its origin then keeps it running). */
  async followed(gw: string, rid: string): Promise<boolean> {
    return (await this.redis.exists(this.keys.requestFollowers(gw, rid))) === 1;
  }

  /** Opens the sink and relays events after `after` until the end, the client leaving, or the deadline. */
  follow(o: FollowOptions): void {
    const { meta, rid, after, sink } = o;
    const conn = createBlockingRedis(this.redisTarget, `gateway:follow:${rid}`);
    const markKey = this.keys.requestFollowers(meta.gw, rid);
    const mark = () => void this.redis.set(markKey, '1', 'PX', FOLLOW_MARK_MS).catch(() => {});
    mark();
    const markTimer = setInterval(mark, FOLLOW_MARK_MS / 3);
    this.open++;
    this.onSize(this.open);
    let ended = false;
    const end = () => {
      if (ended) return false;
      ended = true;
      this.open--;
      this.onSize(this.open);
      clearInterval(markTimer);
      clearTimeout(deadlineTimer);
      conn.disconnect();
      void reader.stop(0);
      return true;
    };
    // Read the event the client saw last again (the end has several parts, and
    // the client may have seen only some), then everything after it.
    const seen = after !== null && after.n > 0 ? after : null;
    const from = seen === null ? '0-0' : `${seen.n - 1}-0`;
    const onEvent = (ev: ReplyEvent) => {
      if (ended) return;
      const last = seen !== null && ev.seq + 1 === seen.n;
      switch (ev.type) {
        case 'tokens':
          if (!last) sink.tokens(ev.text, ev.n, ev.seq);
          return;
        case 'done':
          end();
          sink.done(ev, last ? (seen.part ?? 0) + 1 : 0);
          return;
        case 'error':
          end();
          // An error the client saw already: nothing is left to send.
          if (last) o.res.end();
          else sink.error(ev.status, ev.code, ev.message, ev.seq);
      }
    };
    const reader = new ReplyReader(conn, this.keys.requestLog(meta.gw, rid), {
      after: from,
      blockMs: 5000,
      onEvent,
      onError: (err) => {
        if (!ended) this.log.warn({ err, rid }, 'reading a request log failed; retrying');
      },
    });
    const deadlineTimer = setTimeout(
      () => {
        if (end()) sink.error(504, 'deadline_exceeded', o.timeoutMessage);
      },
      Math.max(0, meta.deadline - Date.now()),
    );
    o.res.on('close', () => end());
    sink.open();
    reader.start();
  }
}
