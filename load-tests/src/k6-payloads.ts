/**
 * Request bodies and settings shared by the k6 scripts (load-tests/k6/) and
 * checked against a real gateway by the tests. Pure functions: no Node and no
 * k6 imports, so both runtimes load this file.
 */

export const K6_PROMPTS = [
  'Once upon a time',
  'Tell me a story about a cat who wanted to fly.',
  'Write two sentences about the sea.',
  'Lily and Ben went to the park. They saw a big dog and',
];

export interface K6Settings {
  baseUrl: string;
  model: string;
  apiKey: string | null;
  maxTokens: number;
}

/** Settings from k6's `__ENV` (or any string map): BASE_URL, MODEL, API_KEY, MAX_TOKENS. */
export function k6Settings(env: Record<string, string | undefined>): K6Settings {
  return {
    baseUrl: (env.BASE_URL ?? 'http://127.0.0.1:8000').replace(/\/+$/, ''),
    model: env.MODEL ?? 'stories260K',
    apiKey: env.API_KEY ?? null,
    maxTokens: Number(env.MAX_TOKENS ?? 64),
  };
}

export function k6Headers(s: K6Settings): Record<string, string> {
  return { 'content-type': 'application/json', ...(s.apiKey ? { authorization: `Bearer ${s.apiKey}` } : {}) };
}

/** An OpenAI chat completion body; `i` picks the prompt. */
export function chatBody(s: K6Settings, i: number, stream: boolean): string {
  return JSON.stringify({
    model: s.model,
    messages: [{ role: 'user', content: K6_PROMPTS[i % K6_PROMPTS.length] }],
    max_tokens: s.maxTokens,
    stream,
    ...(stream ? { stream_options: { include_usage: true } } : {}),
  });
}

/** The plain route: its response headers wait for the first token, so time to first byte is TTFT. */
export function plainUrl(s: K6Settings): string {
  return `${s.baseUrl}/v1/chat/${encodeURIComponent(s.model)}?max_tokens=${s.maxTokens}`;
}

export function plainBody(i: number): string {
  return K6_PROMPTS[i % K6_PROMPTS.length]!;
}

/** Whether an SSE body is a complete OpenAI stream: chunks, then `data: [DONE]`. */
export function sseComplete(body: string): boolean {
  return body.includes('"chat.completion.chunk"') && body.trimEnd().endsWith('data: [DONE]');
}
