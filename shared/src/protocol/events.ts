/**
 * Token events, worker -> gateway, on the gateway's reply stream. Every event
 * carries its request id and a per-request sequence number starting at 0, so
 * the gateway can drop a duplicate and see a gap. Exactly one terminal event
 * (`done` or `error`) ends a request.
 */

export type FinishReason = 'stop' | 'length';

export interface TokensEvent {
  rid: string;
  seq: number;
  type: 'tokens';
  /** The text of one or more tokens, batched by the worker. */
  text: string;
  /** How many tokens the text holds. */
  n: number;
}

export interface DoneEvent {
  rid: string;
  seq: number;
  type: 'done';
  finish: FinishReason;
  promptTokens: number;
  completionTokens: number;
}

export interface ErrorEvent {
  rid: string;
  seq: number;
  type: 'error';
  /** HTTP status the gateway should use if it has not sent headers yet. */
  status: number;
  code: string;
  message: string;
}

export type ReplyEvent = TokensEvent | DoneEvent | ErrorEvent;

/** Flattens an event into XADD field/value pairs with plain names. */
export function encodeEvent(ev: ReplyEvent): string[] {
  switch (ev.type) {
    case 'tokens':
      return ['rid', ev.rid, 'seq', String(ev.seq), 'type', 'tokens', 'text', ev.text, 'n', String(ev.n)];
    case 'done':
      return [
        'rid', ev.rid, 'seq', String(ev.seq), 'type', 'done', 'finish', ev.finish,
        'prompt_tokens', String(ev.promptTokens), 'completion_tokens', String(ev.completionTokens),
      ]; // prettier-ignore
    case 'error':
      return [
        'rid', ev.rid, 'seq', String(ev.seq), 'type', 'error',
        'status', String(ev.status), 'code', ev.code, 'message', ev.message,
      ]; // prettier-ignore
  }
}

/**
 * Parses XREAD field/value pairs. Returns null for an entry that is not a
 * valid event, which the reader logs and skips. Field order is fixed by
 * encodeEvent, but a reader must not rely on it, so this looks names up.
 */
export function decodeEvent(fields: readonly string[]): ReplyEvent | null {
  let rid = '';
  let seq = -1;
  let type = '';
  let text = '';
  let n = 0;
  let finish = '';
  let promptTokens = 0;
  let completionTokens = 0;
  let status = 500;
  let code = '';
  let message = '';
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const v = fields[i + 1]!;
    switch (fields[i]) {
      case 'rid': rid = v; break;
      case 'seq': seq = /^\d+$/.test(v) ? Number(v) : -1; break;
      case 'type': type = v; break;
      case 'text': text = v; break;
      case 'n': n = Number(v); break;
      case 'finish': finish = v; break;
      case 'prompt_tokens': promptTokens = Number(v); break;
      case 'completion_tokens': completionTokens = Number(v); break;
      case 'status': status = Number(v); break;
      case 'code': code = v; break;
      case 'message': message = v; break;
    } // prettier-ignore
  }
  if (!rid || !Number.isSafeInteger(seq) || seq < 0) return null;
  switch (type) {
    case 'tokens':
      return { rid, seq, type, text, n: Number.isFinite(n) ? n : 0 };
    case 'done':
      if (finish !== 'stop' && finish !== 'length') return null;
      if (!Number.isSafeInteger(promptTokens) || !Number.isSafeInteger(completionTokens)) return null;
      return { rid, seq, type, finish, promptTokens, completionTokens };
    case 'error':
      return { rid, seq, type, status: Number.isInteger(status) ? status : 500, code, message };
    default:
      return null;
  }
}
