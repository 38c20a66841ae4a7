import { appendFileSync, readFileSync } from 'node:fs';
import { decodeEvent, RequestQueue, type ReplyEvent } from '@llmux/shared';
import type { RedisView } from '../helpers/streams.js';
import { story } from '../helpers/engines.js';
import { parseMetrics } from '../helpers/metrics.js';
import { Rng } from '../helpers/rng.js';

export { Rng };

/**
 * The accounting harness of the fault suite: closed-loop streaming clients
 * against a real system, and a request-by-request check of what each one
 * got. Every request a client sent ends in exactly one outcome:
 *
 * - `completed`: `[DONE]`, exactly the expected text (the sim engine's story),
 *   `completion_tokens` equal to `max_tokens`, SSE ids contiguous, and the
 *   request's output log in Redis agreeing (seq 0..n once each, one terminal
 *   event last, the same text);
 * - `error`: an explicit error after the stream opened (an SSE `error` event);
 * - `rejected`: an explicit error status before the stream opened (429, 503…);
 * - `refused`: the connection was refused or reset before any response, so
 *   nothing was accepted (a gateway that is down);
 * - `cut`: the stream opened and then the connection ended without a terminal
 *   event. This is `lost` unless the scenario declared that target dead
 *   (`load.declareDead`): a client of a gateway that died sees its socket close;
 * - `aborted`: the client left on purpose;
 * - `lost`: no answer within the client's time limit, or a stream that ended
 *   with `[DONE]` but missing text or tokens, or a gap in its ids;
 * - `duplicated`: an SSE id seen twice, or more text or tokens than expected.
 */

// ---------------------------------------------------------------- records

export interface Target {
  /** A short name for reports. */
  name: string;
  url: string;
  /** The gateway's id: its reply stream and its requests' logs are named by it. */
  gatewayId: string;
}

export type Outcome = 'completed' | 'error' | 'rejected' | 'refused' | 'cut' | 'aborted' | 'lost' | 'duplicated';

export interface RequestRecord {
  /** Order in which requests were sent, over all clients. */
  n: number;
  client: number;
  target: Target;
  maxTokens: number;
  /** Times (ms since epoch): sent, response head, first token, end. */
  t0: number;
  tHead?: number;
  tFirst?: number;
  tEnd?: number;
  status?: number;
  rid?: string;
  retryAfter?: string | null;
  /** The error code (from the body or the SSE error event), or the socket error. */
  code?: string;
  outcome?: Outcome;
  /** Why a request counts as lost or duplicated. */
  why?: string;
  /** Arrival time of each token chunk. */
  chunkTimes: number[];
  /** The gateway that served it, when the target's is not known (read from the request's record in Redis). */
  gatewayId?: string;
  /** Whether the output log in Redis was read and agreed (undefined: not checked yet). */
  verified?: boolean;
  /** The text and SSE ids the client got, kept until the record is verified. */
  text?: string;
  ids?: string[];
}

export interface Account {
  sent: number;
  /** Streams opened (HTTP 200). */
  accepted: number;
  completed: number;
  /** Explicit errors: SSE error events, error statuses and refused connections. */
  erroredExplicitly: number;
  lost: number;
  duplicated: number;
  /** Cut connections of targets declared dead (not counted as lost). */
  cut: number;
  aborted: number;
  /** Explicit errors by code (`429 queue_full`, `sse deadline_exceeded`, `refused ECONNREFUSED`…). */
  errors: Record<string, number>;
  /** Completed requests whose output log could not be read (expired): checked on the client side only. */
  unverified: number;
  /** The first lost and duplicated requests, explained. */
  failures: string[];
}

// ---------------------------------------------------------------- PRNG

// ---------------------------------------------------------------- load

/** When a client leaves its request on purpose. */
export type AbortPlan = { afterMs: number } | { afterChunks: number };

export interface LoadOptions {
  /** Client `c` sends to `targets[c % targets.length]` (or to `pickTarget`'s choice). */
  targets: Target[];
  pickTarget?: (client: number, n: number) => Target;
  model: string;
  /** Concurrent clients, each sending one request after the other. */
  clients: number;
  /** `max_tokens` of each request. */
  maxTokens: number | ((r: Rng) => number);
  /** The text a request must get (default: the sim engine's story). */
  expected?: (maxTokens: number) => string;
  /** Stop sending after this many requests in all (default: until stop()). */
  requests?: number;
  /** A client that has no end of its stream after this long gives up and counts the request lost. Default 60 s. */
  clientTimeoutMs?: number;
  /** `X-Request-Timeout` for every request, in seconds. */
  requestTimeoutS?: number;
  /** The plan for leaving a request on purpose (null: stay to the end). */
  abort?: (r: Rng, n: number) => AbortPlan | null;
  /** Pause of a client after an error status or a refused connection before its next request. Default 100 ms. */
  backoffMs?: number;
  /** Pause of a client between requests. Default 0. */
  thinkMs?: number;
  seed?: number;
  /**
   * `end`: read the output logs when stop() is called (default). `inline`:
   * read each one as soon as its stream ends (for runs whose retention is
   * shorter than the run).
   */
  verify?: 'end' | 'inline';
}

type Listener = () => void;

/** Every load not stopped yet, so a failed test can end its clients (`abortLoads`). */
const live = new Set<Load>();

/** Ends every load still running: no more requests, open ones aborted. For afterEach hooks. */
export async function abortLoads(): Promise<void> {
  await Promise.all([...live].map((l) => l.abort()));
}

/**
 * Closed-loop streaming clients. Each client sends a streaming completion,
 * reads it to the end (timing every chunk), records the outcome and sends the
 * next. `until()` waits on what the clients saw, not on time.
 */
export class Load {
  readonly records: RequestRecord[] = [];
  readonly marks = new Map<string, number>();
  private readonly dead = new Set<string>();
  private readonly rng: Rng;
  private readonly listeners = new Set<Listener>();
  private sending = true;
  private loops: Promise<void>[] = [];
  private sent = 0;
  private readonly inflight = new Set<RequestRecord>();
  private readonly verifications: Promise<void>[] = [];
  private readonly controllers = new Set<AbortController>();
  readonly seed: number;

  constructor(
    private readonly view: RedisView,
    private readonly o: LoadOptions,
  ) {
    this.seed = o.seed ?? Math.floor(Math.random() * 2 ** 31);
    this.rng = new Rng(this.seed);
  }

  /** Starts the clients. */
  start(): this {
    live.add(this);
    this.loops = Array.from({ length: this.o.clients }, (_, c) => this.client(c));
    return this;
  }

  /** Stops sending and aborts the open requests (their outcome stays unset); for a test that failed. */
  async abort(): Promise<void> {
    this.sending = false;
    for (const c of this.controllers) c.abort();
    await Promise.all(this.loops);
    live.delete(this);
  }

  /** Records the time of an event of the scenario (a fault, a recovery). */
  mark(name: string, at = Date.now()): number {
    this.marks.set(name, at);
    return at;
  }

  /** From now on, cut streams of this target are counted as `cut`, not `lost`: the gateway died. */
  declareDead(target: Target): void {
    this.dead.add(target.name);
  }

  /** Requests in flight now (optionally only those of one target). */
  inFlight(target?: Target): RequestRecord[] {
    return [...this.inflight].filter((r) => !target || r.target.name === target.name);
  }

  /** Requests with an outcome, optionally only those that match. */
  ended(match: (r: RequestRecord) => boolean = () => true): RequestRecord[] {
    return this.records.filter((r) => r.outcome !== undefined && match(r));
  }

  /** Resolves when `check` holds, looked at after every chunk and every end; rejects after `withinMs`. */
  until(what: string, check: () => boolean, withinMs = 60_000): Promise<void> {
    if (check()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.listeners.delete(listener);
        reject(new Error(`${what}: not within ${withinMs} ms (${this.progress()})`));
      }, withinMs);
      const listener = () => {
        if (!check()) return;
        clearTimeout(timer);
        this.listeners.delete(listener);
        resolve();
      };
      this.listeners.add(listener);
    });
  }

  /** A short line of what happened so far. */
  progress(): string {
    const by = new Map<string, number>();
    for (const r of this.records) by.set(r.outcome ?? 'open', (by.get(r.outcome ?? 'open') ?? 0) + 1);
    return [...by].map(([k, v]) => `${k} ${v}`).join(', ');
  }

  private emit(): void {
    for (const l of [...this.listeners]) l();
  }

  /** Stops sending, waits for every open request to end, reads the output logs and returns the account. */
  async stop(): Promise<Account> {
    this.sending = false;
    await Promise.all(this.loops);
    live.delete(this);
    await Promise.all(this.verifications);
    await this.verifyAll();
    return this.account();
  }

  /** Waits until the clients have sent `requests` (the option) and all of them ended; then as stop(). */
  async finished(): Promise<Account> {
    await Promise.all(this.loops);
    return this.stop();
  }

  private async client(c: number): Promise<void> {
    for (;;) {
      if (!this.sending) return;
      if (this.o.requests !== undefined && this.sent >= this.o.requests) return;
      const n = this.sent++;
      const target = this.o.pickTarget?.(c, n) ?? this.o.targets[c % this.o.targets.length]!;
      const maxTokens = typeof this.o.maxTokens === 'number' ? this.o.maxTokens : this.o.maxTokens(this.rng);
      const plan = this.o.abort?.(this.rng, n) ?? null;
      const rec: RequestRecord = { n, client: c, target, maxTokens, t0: Date.now(), chunkTimes: [] };
      this.records.push(rec);
      this.inflight.add(rec);
      try {
        await this.one(rec, plan);
      } finally {
        this.inflight.delete(rec);
        rec.tEnd ??= Date.now();
      }
      if (this.o.verify === 'inline' && rec.rid && rec.status === 200 && rec.outcome !== 'aborted') {
        const v = this.verify([rec]);
        this.verifications.push(v);
        await v;
      }
      this.emit();
      const pause = rec.outcome === 'rejected' || rec.outcome === 'refused' ? (this.o.backoffMs ?? 100) : (this.o.thinkMs ?? 0);
      // Client think time and back-off: part of the load's shape, not a wait for the system.
      if (pause > 0 && this.sending) await new Promise((r) => setTimeout(r, pause));
    }
  }

  /** Sends one streaming completion and reads it to its end. */
  private async one(rec: RequestRecord, plan: AbortPlan | null): Promise<void> {
    const ctl = new AbortController();
    this.controllers.add(ctl);
    let leftOnPurpose = false;
    let timedOut = false;
    const timeout = setTimeout(() => {
      timedOut = true;
      ctl.abort();
    }, this.o.clientTimeoutMs ?? 60_000);
    let abortTimer: NodeJS.Timeout | null = null;
    if (plan && 'afterMs' in plan) {
      abortTimer = setTimeout(() => {
        leftOnPurpose = true;
        ctl.abort();
      }, plan.afterMs);
    }
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.o.requestTimeoutS !== undefined) headers['x-request-timeout'] = String(this.o.requestTimeoutS);
    try {
      let res: Response;
      // fetch should reject once its signal aborts; it does not always (an abort while the request is being
      // sent can leave it pending), and then neither our leaving nor the client time limit would end it.
      const aborted = new Promise<never>((_, reject) => {
        ctl.signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
      });
      aborted.catch(() => {});
      try {
        res = await Promise.race([
          aborted,
          fetch(`${rec.target.url}/v1/completions`, {
            method: 'POST',
            headers,
            body: JSON.stringify({
              model: this.o.model,
              prompt: `Client ${rec.client} request ${rec.n}`,
              max_tokens: rec.maxTokens,
              stream: true,
              stream_options: { include_usage: true },
            }),
            signal: ctl.signal,
          }),
        ]);
      } catch (err) {
        if (leftOnPurpose) return void (rec.outcome = 'aborted');
        if (timedOut) return this.lose(rec, 'no response head within the client time limit');
        const code = causeCode(err);
        rec.code = code;
        rec.outcome = 'refused';
        return;
      }
      rec.tHead = Date.now();
      rec.status = res.status;
      rec.rid = res.headers.get('x-request-id') ?? undefined;
      rec.retryAfter = res.headers.get('retry-after');
      if (res.status !== 200) {
        const text = await res.text().catch(() => '');
        rec.code = `${res.status} ${errorCode(text) ?? 'no-code'}`;
        rec.outcome = 'rejected';
        return;
      }
      this.emit();
      await this.read(rec, res, plan, ctl, () => {
        leftOnPurpose = true;
      });
      if (rec.outcome === undefined) {
        if (leftOnPurpose) rec.outcome = 'aborted';
        else if (timedOut) this.lose(rec, `stream still open after ${this.o.clientTimeoutMs ?? 60_000} ms`);
      }
    } finally {
      this.controllers.delete(ctl);
      clearTimeout(timeout);
      if (abortTimer) clearTimeout(abortTimer);
    }
  }

  private async read(
    rec: RequestRecord,
    res: Response,
    plan: AbortPlan | null,
    ctl: AbortController,
    leave: () => void,
  ): Promise<void> {
    const reader = res.body!.getReader();
    // As for fetch: make sure an abort ends a pending read.
    const cancel = () => void reader.cancel().catch(() => {});
    if (ctl.signal.aborted) cancel();
    else ctl.signal.addEventListener('abort', cancel, { once: true });
    const dec = new TextDecoder();
    let buf = '';
    const ids: string[] = [];
    let text = '';
    let usage: number | undefined;
    let done = false;
    let errorCodeSeen: string | null = null;
    let chunks = 0;
    try {
      for (;;) {
        const { value, done: eof } = await reader.read();
        if (eof) break;
        buf += dec.decode(value, { stream: true });
        let cut: number;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let id: string | undefined;
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) id = line.slice(4);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length === 0) continue;
          const payload = data.join('\n');
          if (id !== undefined) ids.push(id);
          if (payload === '[DONE]') {
            done = true;
            continue;
          }
          const j = JSON.parse(payload) as {
            error?: { code?: string | null; type?: string };
            choices?: { text?: string; finish_reason?: string | null }[];
            usage?: { completion_tokens: number } | null;
          };
          if (j.error) {
            errorCodeSeen = j.error.code ?? j.error.type ?? 'error';
            continue;
          }
          const t = j.choices?.[0]?.text ?? '';
          if (t) {
            text += t;
            rec.chunkTimes.push(Date.now());
            rec.tFirst ??= Date.now();
            chunks++;
            if (plan && 'afterChunks' in plan && chunks >= plan.afterChunks) {
              leave();
              ctl.abort();
            }
          }
          if (j.usage) usage = j.usage.completion_tokens;
        }
        this.emit();
      }
    } catch {
      // An abort (ours), or the connection was cut: told apart below.
    }
    rec.tEnd = Date.now();
    rec.text = text;
    rec.ids = ids;
    if (ctl.signal.aborted) return; // aborted on purpose or timed out: the caller decides
    if (errorCodeSeen !== null) {
      rec.code = `sse ${errorCodeSeen}`;
      rec.outcome = 'error';
      this.checkIds(rec, ids, false);
      return;
    }
    if (!done) {
      rec.outcome = this.dead.has(rec.target.name) ? 'cut' : 'lost';
      if (rec.outcome === 'lost') rec.why = `stream ended without [DONE] or an error after ${chunks} chunks`;
      return;
    }
    const expected = (this.o.expected ?? story)(rec.maxTokens);
    if (!this.checkIds(rec, ids, true)) return;
    if (text !== expected) {
      if (text.length > expected.length)
        this.duplicate(rec, `text longer than expected (${text.length} > ${expected.length} chars)`);
      else this.lose(rec, `text differs from the expected (${text.length} of ${expected.length} chars)`);
      return;
    }
    if (usage !== rec.maxTokens) {
      if (usage !== undefined && usage > rec.maxTokens) this.duplicate(rec, `completion_tokens ${usage} > ${rec.maxTokens}`);
      else this.lose(rec, `completion_tokens ${usage} != ${rec.maxTokens}`);
      return;
    }
    rec.outcome = 'completed';
  }

  /**
   * SSE ids: `0` (chat's opening chunk), `seq + 1` per token chunk, then
   * `<k>`, `<k>.1`, `<k>.2` for the end. Repeated ids are duplicates; a
   * missing number is a gap (checked again against the log: an event with no
   * text sends no chunk).
   */
  private checkIds(rec: RequestRecord, ids: string[], complete: boolean): boolean {
    const whole = ids.filter((i) => /^\d+$/.test(i)).map(Number);
    const seen = new Set<string>();
    for (const i of ids) {
      if (seen.has(i)) {
        this.duplicate(rec, `SSE id ${i} twice`);
        return false;
      }
      seen.add(i);
    }
    for (let k = 1; k < whole.length; k++) {
      if (whole[k]! <= whole[k - 1]!) {
        this.duplicate(rec, `SSE id ${whole[k]} after ${whole[k - 1]}`);
        return false;
      }
    }
    if (complete) {
      const last = whole.at(-1);
      if (last === undefined || !ids.includes(`${last}.1`)) {
        this.lose(rec, `no usage chunk after the final chunk (ids ${ids.slice(-4).join(',')})`);
        return false;
      }
    }
    return true;
  }

  private lose(rec: RequestRecord, why: string): void {
    rec.outcome = 'lost';
    rec.why = why;
  }

  private duplicate(rec: RequestRecord, why: string): void {
    rec.outcome = 'duplicated';
    rec.why = why;
  }

  /** Reads the output logs of every request not checked yet. */
  async verifyAll(): Promise<void> {
    const todo = this.records.filter((r) => r.verified === undefined && r.rid && r.status === 200 && r.outcome !== 'aborted');
    for (let i = 0; i < todo.length; i += 200) await this.verify(todo.slice(i, i + 200));
  }

  /**
   * Checks each request against its output log (`<p>:gw:{gw}:log:<rid>`,
   * entry id `<seq + 1>-0`): ids and seqs contiguous from 0, at most one
   * terminal event and only last; for a completed request, a `done` event
   * with `max_tokens` tokens and the client's text. A log that expired is
   * left unverified.
   */
  private async verify(recs: RequestRecord[]): Promise<void> {
    // A target whose gateway id is not known (a URL served by whichever gateway is up): its record in Redis names it.
    const unknown = recs.filter((r) => !r.target.gatewayId && !r.gatewayId);
    if (unknown.length > 0) {
      const metas = (await this.view.redis.mget(...unknown.map((r) => this.view.keys.requestMeta(r.rid!)))) as (string | null)[];
      unknown.forEach((r, i) => (r.gatewayId = metas[i] ? (JSON.parse(metas[i]!) as { gw?: string }).gw : undefined));
    }
    const pipe = this.view.redis.pipeline();
    for (const r of recs) pipe.xrange(this.view.keys.requestLog(r.target.gatewayId || r.gatewayId || '?', r.rid!), '-', '+');
    const replies = (await pipe.exec()) ?? [];
    recs.forEach((r, k) => {
      const [err, raw] = replies[k] ?? [new Error('no reply'), null];
      if (err) return;
      const entries = raw as [string, string[]][];
      if (entries.length === 0) {
        r.verified = false;
        return;
      }
      const events = entries.map(([id, f]) => ({ id, ev: decodeEvent(f) }));
      const problems: string[] = [];
      events.forEach(({ id, ev }, i) => {
        if (!ev) problems.push(`entry ${id} is not an event`);
        else if (ev.seq !== i) problems.push(`seq ${ev.seq} at position ${i}`);
        else if (id !== `${i + 1}-0`) problems.push(`entry id ${id} for seq ${i}`);
      });
      const evs = events.map((e) => e.ev).filter((e): e is ReplyEvent => e !== null);
      const terminals = evs.filter((e) => e.type !== 'tokens').length;
      if (terminals > 1) problems.push(`${terminals} terminal events`);
      if (terminals === 1 && evs.at(-1)!.type === 'tokens') problems.push('a terminal event that is not last');
      const text = evs.map((e) => (e.type === 'tokens' ? e.text : '')).join('');
      const tokens = evs.reduce((n, e) => n + (e.type === 'tokens' ? e.n : 0), 0);
      if (r.outcome === 'completed') {
        const last = evs.at(-1);
        if (last?.type !== 'done') problems.push(`last event ${last?.type}`);
        else if (last.completionTokens !== r.maxTokens) problems.push(`done says ${last.completionTokens} tokens`);
        if (tokens !== r.maxTokens) problems.push(`token events hold ${tokens} tokens`);
        if (text !== r.text) problems.push(`log text (${text.length} chars) differs from the client's (${r.text?.length})`);
        // A chunk id the client lacks must be an event without text.
        const got = new Set((r.ids ?? []).filter((i) => /^\d+$/.test(i)).map(Number));
        for (const e of evs) if (e.type === 'tokens' && e.text && !got.has(e.seq + 1)) problems.push(`client lacks seq ${e.seq}`);
      }
      if (r.outcome === 'duplicated' || r.outcome === 'lost') {
        // What the log holds, to tell a repeated event (same text under two seqs) from a lost one.
        const toks = evs.filter((e): e is Extract<ReplyEvent, { type: 'tokens' }> => e.type === 'tokens');
        const repeats = toks.filter((e, i) => i > 0 && e.text === toks[i - 1]!.text).map((e) => e.seq);
        r.why = `${r.why ?? ''}; log: ${evs.length} events, ${tokens} tokens${repeats.length ? `, seq ${repeats.join(',')} repeat the text of the event before` : ''}`;
      }
      if (problems.length > 0) {
        const dup = tokens > r.maxTokens || text.length > (this.o.expected ?? story)(r.maxTokens).length;
        if (dup) this.duplicate(r, `log: ${problems.slice(0, 3).join('; ')}`);
        else if (r.outcome === 'completed') this.lose(r, `log: ${problems.slice(0, 3).join('; ')}`);
        else r.why = `log: ${problems.slice(0, 3).join('; ')}`;
      }
      r.verified = problems.length === 0;
      // Nothing more is needed from the text once checked.
      delete r.text;
      delete r.ids;
    });
  }

  /** The counts over every request sent. */
  account(): Account {
    const a: Account = {
      sent: this.records.length,
      accepted: 0,
      completed: 0,
      erroredExplicitly: 0,
      lost: 0,
      duplicated: 0,
      cut: 0,
      aborted: 0,
      errors: {},
      unverified: 0,
      failures: [],
    };
    const err = (code: string) => (a.errors[code] = (a.errors[code] ?? 0) + 1);
    for (const r of this.records) {
      if (r.status === 200) a.accepted++;
      switch (r.outcome) {
        case 'completed':
          a.completed++;
          if (r.verified === false) a.unverified++;
          break;
        case 'error':
        case 'rejected':
          a.erroredExplicitly++;
          err(r.code ?? r.outcome);
          break;
        case 'refused':
          a.erroredExplicitly++;
          err(`refused ${r.code ?? ''}`.trim());
          break;
        case 'cut':
          a.cut++;
          break;
        case 'aborted':
          a.aborted++;
          break;
        case 'duplicated':
          a.duplicated++;
          a.failures.push(describe(r));
          break;
        default:
          a.lost++;
          a.failures.push(describe(r));
      }
    }
    return a;
  }
}

function describe(r: RequestRecord): string {
  return `#${r.n} ${r.outcome ?? 'open'} ${r.rid ?? '(no id)'} via ${r.target.name}, max_tokens ${r.maxTokens}: ${r.why ?? ''}`;
}

function causeCode(err: unknown): string {
  let e = err as { code?: string; cause?: unknown; name?: string; message?: string } | undefined;
  for (let i = 0; i < 4 && e; i++) {
    if (e.code) return e.code;
    e = e.cause as typeof e;
  }
  return (err as Error)?.name ?? 'error';
}

function errorCode(body: string): string | null {
  try {
    const e = (JSON.parse(body) as { error?: { code?: string | null; type?: string } }).error;
    return e?.code ?? e?.type ?? null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- figures

/** The p-th percentile (0..100) of `values`, nearest rank; NaN when empty. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/**
 * The client-visible pause across time `t`: for each stream that was open at
 * `t` and got a chunk after it, the time from its last chunk before `t` (or
 * from when it was sent, if it had none) to its first chunk after `t`.
 * Returns the largest, the median, and how many streams went on across `t`.
 */
export function pauseAcross(records: RequestRecord[], t: number): { maxMs: number; p50Ms: number; streams: number } {
  const gaps: number[] = [];
  for (const r of records) {
    if (r.t0 > t) continue;
    const before = r.chunkTimes.filter((c) => c <= t).at(-1) ?? r.t0;
    const after = r.chunkTimes.find((c) => c > t);
    if (after !== undefined) gaps.push(after - before);
  }
  return { maxMs: gaps.length ? Math.max(...gaps) : 0, p50Ms: percentile(gaps, 50), streams: gaps.length };
}

/** The longest gap between two chunks of one stream, over all streams. */
export function longestStall(records: RequestRecord[]): number {
  let max = 0;
  for (const r of records)
    for (let i = 1; i < r.chunkTimes.length; i++) max = Math.max(max, r.chunkTimes[i]! - r.chunkTimes[i - 1]!);
  return max;
}

/** Time from `t` to the first token of the first request sent after `t` that completed (NaN if none). */
export function firstServedAfter(records: RequestRecord[], t: number): number {
  const times = records.filter((r) => r.t0 >= t && r.outcome === 'completed' && r.tFirst).map((r) => r.tFirst! - t);
  return times.length ? Math.min(...times) : NaN;
}

const s = (ms: number) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : 'n/a');
export const secs = s;

/**
 * Prints the scenario's one-line summary and, when FAULTS_RESULTS names a
 * file, appends the figures to it as one JSON line.
 */
export function report(scenario: string, a: Account, figures: Record<string, string | number> = {}): void {
  const errs = Object.entries(a.errors)
    .map(([k, v]) => `${k}: ${v}`)
    .join(', ');
  const extra = Object.entries(figures)
    .map(([k, v]) => `${k} ${typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(2) : v}`)
    .join('; ');
  console.log(
    `      [faults] ${scenario}: sent ${a.sent}, completed ${a.completed}, errored explicitly ${a.erroredExplicitly}` +
      `${errs ? ` (${errs})` : ''}, lost ${a.lost}, duplicated ${a.duplicated}` +
      `${a.cut ? `, cut by the dead gateway ${a.cut}` : ''}${a.aborted ? `, left by their clients ${a.aborted}` : ''}` +
      `${a.unverified ? `, log expired ${a.unverified}` : ''}${extra ? `; ${extra}` : ''}`,
  );
  for (const f of a.failures.slice(0, 10)) console.log(`        ${f}`);
  const file = process.env.FAULTS_RESULTS;
  if (file) {
    const { failures: _f, ...counts } = a;
    appendFileSync(file, JSON.stringify({ scenario, at: new Date().toISOString(), ...counts, ...figures }) + '\n');
  }
}

// ---------------------------------------------------------------- system probes

/** Resident set size of a process in KiB (from /proc). */
export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/** Requests running in a worker's engines now (`llmux_num_requests_running`, all models). */
export async function workerRunning(metricsPort: number): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  return parseMetrics(await res.text()).sample('llmux_num_requests_running');
}

/** Polls `check` every `everyMs` until it holds (a bounded poll of a real endpoint); rejects after `withinMs`. */
export async function poll(what: string, check: () => Promise<boolean>, withinMs = 30_000, everyMs = 100): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await check().catch(() => false)) return Date.now() - t0;
    if (Date.now() - t0 > withinMs) throw new Error(`${what}: not within ${withinMs} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A model's queue: waiting requests (staged or unclaimed) and claimed, unfinished ones (XPENDING). */
export function queueDepth(view: RedisView, model: string): Promise<{ waiting: number; pending: number }> {
  return new RequestQueue(view.redis, view.keys).depth(model);
}

/** Keys that belong to one request and must expire. */
const PER_REQUEST = [
  /:gw:\{[^}]+\}:req:/,
  /:gw:\{[^}]+\}:log:/,
  /:gw:\{[^}]+\}:follow:/,
  /:rid:/,
  /:\{[^}]+\}:cancel:/,
  /:idem:/,
];
/** Keys that live as long as the system, or expire on their own (status, liveness). */
const LONG_LIVED = [
  /:\{[^}]+\}:requests$/,
  /:\{[^}]+\}:dead$/,
  /:\{[^}]+\}:fair(:[a-z]+)?$/,
  /:\{[^}]+\}:q:/,
  /:gw:\{[^}]+\}:(events|alive|known)$/,
  /:workers$/,
  /:worker:[^:]+$/,
  /:deployments$/,
  /:controller:/,
  /:apikeys?(:|$)/,
];

export interface KeyAudit {
  total: number;
  perRequest: number;
  /** Per-request keys without a TTL: leaks. */
  noTtl: string[];
  /** Keys of no known kind that have no TTL: leaks too (known kinds are listed in shared/src/redis/keys.ts). */
  unknownNoTtl: string[];
  /** Keys of no known kind that expire. */
  unknown: string[];
  /** The longest TTL left on a per-request key, ms. */
  maxTtlMs: number;
}

/** Scans the system's keys: every per-request key must carry a TTL, and so must any key of no known kind. */
export async function auditKeys(view: RedisView): Promise<KeyAudit> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await view.redis.scan(cursor, 'MATCH', `${view.keys.prefix}:*`, 'COUNT', 1000);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== '0');
  const audit: KeyAudit = { total: keys.length, perRequest: 0, noTtl: [], unknownNoTtl: [], unknown: [], maxTtlMs: 0 };
  const pipe = view.redis.pipeline();
  for (const k of keys) pipe.pttl(k);
  const ttls = (await pipe.exec()) ?? [];
  keys.forEach((k, i) => {
    // -1: no TTL; -2: expired between the scan and now.
    const ttl = Number(ttls[i]?.[1]);
    if (PER_REQUEST.some((re) => re.test(k))) {
      audit.perRequest++;
      if (ttl === -1) audit.noTtl.push(k);
      else audit.maxTtlMs = Math.max(audit.maxTtlMs, ttl);
    } else if (!LONG_LIVED.some((re) => re.test(k))) {
      if (ttl === -1) audit.unknownNoTtl.push(k);
      else audit.unknown.push(k);
    }
  });
  return audit;
}

/** Open requests a gateway holds now (`llmux_gateway_open_requests`). */
export async function gatewayOpen(url: string): Promise<number> {
  const res = await fetch(`${url}/metrics`);
  return parseMetrics(await res.text()).sample('llmux_gateway_open_requests');
}
