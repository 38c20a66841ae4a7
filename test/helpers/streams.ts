import { expect } from 'chai';
import { decodeEvent, type ReplyEvent } from '@llmux/shared';
import type { Keys, Redis } from '@llmux/shared';

/** Where to read a system's Redis state: a TestSystem or any client with the system's key names. */
export interface RedisView {
  redis: Redis;
  keys: Keys;
}
import { parseSse, streamedText, type ChatChunk } from './http.js';

/** A streaming request in flight: its id (from x-request-id), first chunk received, and the whole body to come. */
export interface OpenStream {
  rid: string;
  model: string;
  maxTokens: number;
  /** Resolves when the first content chunk has arrived. */
  firstText: Promise<void>;
  /** Resolves with the full SSE body. */
  body: Promise<string>;
}

/** Starts a streaming completion and reads it incrementally. */
export async function openStream(url: string, model: string, maxTokens: number, prompt = 'Once'): Promise<OpenStream> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    body: JSON.stringify({
      model,
      prompt,
      max_tokens: maxTokens,
      temperature: 0.8,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const rid = res.headers.get('x-request-id')!;
  let onFirst!: () => void;
  const firstText = new Promise<void>((r) => (onFirst = r));
  const body = (async () => {
    const reader = res.body!.getReader();
    const dec = new TextDecoder();
    let text = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
      if (text.includes('"text":"')) onFirst();
    }
    onFirst();
    return text;
  })();
  return { rid, model, maxTokens, firstText, body };
}

/** Every event the workers wrote for `rid`, in reply-stream order. */
export async function replyEvents(sys: RedisView, gatewayId: string, rid: string): Promise<ReplyEvent[]> {
  const entries = (await sys.redis.xrange(sys.keys.replies(gatewayId), '-', '+')) as [string, string[]][];
  return entries.map(([, f]) => decodeEvent(f)).filter((e): e is ReplyEvent => e !== null && e.rid === rid);
}

/**
 * Checks one finished stream end to end: the client got [DONE] and the full
 * token count; the reply stream holds seq 0..n exactly once each, one
 * terminal event last, token counts adding up, and the same text as the
 * client received. Returns the text.
 */
export async function expectComplete(sys: RedisView, gatewayId: string, s: OpenStream): Promise<string> {
  const events = parseSse(await s.body);
  expect(events.at(-1)?.data, `${s.rid} ended with [DONE]`).to.equal('[DONE]');
  const usage = JSON.parse(events.at(-2)!.data) as ChatChunk;
  expect(usage.usage!.completion_tokens, `${s.rid} completion tokens`).to.equal(s.maxTokens);
  const text = streamedText(events);
  const evs = await replyEvents(sys, gatewayId, s.rid);
  expect(
    evs.map((e) => e.seq),
    `${s.rid} sequence`,
  ).to.deep.equal(evs.map((_, i) => i));
  expect(evs.filter((e) => e.type !== 'tokens')).to.have.length(1);
  expect(evs.at(-1)!.type).to.equal('done');
  const tokenEvents = evs.filter((e) => e.type === 'tokens');
  expect(
    tokenEvents.reduce((n, e) => n + (e.type === 'tokens' ? e.n : 0), 0),
    `${s.rid} tokens in events`,
  ).to.equal(s.maxTokens);
  expect(tokenEvents.map((e) => (e.type === 'tokens' ? e.text : '')).join('')).to.equal(text);
  return text;
}
