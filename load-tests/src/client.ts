import { Agent, request } from 'undici';

/** What one request measured. Times are ms; `start` is relative to the run's start. */
export interface Sample {
  start: number;
  /** Time to the first chunk with generated text (streaming), or to the response (not streaming). */
  ttft: number | null;
  /** Gaps between chunks with text (one token each from servers that stream token by token). */
  itl: number[];
  e2e: number;
  tokens: number;
  /** null when the request succeeded; else the kind of failure (`http_429`, `network_<code>`, `timeout`, `stream_error`, …). */
  error: string | null;
}

export interface RequestSpec {
  url: string;
  body: Record<string, unknown>;
  stream: boolean;
  headers: Record<string, string>;
  timeoutMs: number;
}

/**
 * Sends one chat completion and measures it. Streaming responses are read
 * as SSE: each `data:` chunk with content is a token event; the usage chunk
 * (requested with `include_usage`) gives the exact token count.
 */
export async function measure(dispatcher: Agent, spec: RequestSpec, t0: number): Promise<Sample> {
  const started = performance.now();
  const sample: Sample = { start: started - t0, ttft: null, itl: [], e2e: 0, tokens: 0, error: null };
  const abort = AbortSignal.timeout(spec.timeoutMs);
  try {
    const res = await request(spec.url, {
      method: 'POST',
      dispatcher,
      signal: abort,
      headers: { 'content-type': 'application/json', ...spec.headers },
      body: JSON.stringify(spec.body),
    });
    if (res.statusCode !== 200) {
      await res.body.dump();
      sample.error = `http_${res.statusCode}`;
    } else if (!spec.stream) {
      const json = (await res.body.json()) as { usage?: { completion_tokens?: number } };
      sample.ttft = performance.now() - started;
      sample.tokens = json.usage?.completion_tokens ?? 0;
    } else {
      await readStream(res.body, sample, started);
    }
  } catch (err) {
    sample.error = abort.aborted ? 'timeout' : networkKind(err);
  }
  sample.e2e = performance.now() - started;
  return sample;
}

/** `network_<code>` from the error or its cause (`network_ECONNRESET`, `network_UND_ERR_SOCKET`), else `network`. */
function networkKind(err: unknown): string {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | null;
  const code = typeof e?.code === 'string' ? e.code : typeof e?.cause?.code === 'string' ? e.cause.code : null;
  return code && /^[A-Z0-9_]+$/.test(code) ? `network_${code}` : 'network';
}

async function readStream(body: AsyncIterable<Buffer>, s: Sample, started: number): Promise<void> {
  let buf = '';
  let last = 0;
  let chunks = 0;
  let usage: number | null = null;
  let done = false;
  for await (const chunk of body) {
    buf += chunk.toString('utf8');
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const line = block.split('\n').find((l) => l.startsWith('data: '));
      if (!line) continue;
      const data = line.slice(6);
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      // Cheap checks first: only chunks that can carry text or usage are parsed.
      if (data.startsWith('{"error"')) {
        s.error = 'stream_error';
        continue;
      }
      const parsed = JSON.parse(data) as {
        choices?: { delta?: { content?: string }; text?: string }[];
        usage?: { completion_tokens?: number } | null;
      };
      if (parsed.usage) usage = parsed.usage.completion_tokens ?? null;
      const text = parsed.choices?.[0]?.delta?.content ?? parsed.choices?.[0]?.text ?? '';
      if (!text) continue;
      const now = performance.now();
      if (s.ttft === null) s.ttft = now - started;
      else s.itl.push(now - last);
      last = now;
      chunks++;
    }
  }
  s.tokens = usage ?? chunks;
  if (!done && !s.error) s.error = 'truncated';
}
