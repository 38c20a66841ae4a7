import { Agent } from 'undici';
import { measure, type RequestSpec, type Sample } from './client.js';

export interface LoadOptions {
  /** Base URL of the server, e.g. http://127.0.0.1:8000. */
  url: string;
  model: string;
  /** Closed loop: this many clients, each sending its next request when the last ends. */
  concurrency: number;
  /** Open loop: requests per second (Poisson arrivals); `concurrency` then caps requests in flight. */
  rate: number | null;
  /** Stop after this long (ms)... */
  durationMs: number | null;
  /** ...or after this many requests, whichever comes first. At least one of the two is set. */
  requests: number | null;
  stream: boolean;
  maxTokens: number;
  /** Prompts, used round-robin. */
  prompts: string[];
  apiKey: string | null;
  timeoutMs: number;
  /** Called about once a second with the samples so far. */
  onProgress?: (p: Progress) => void;
}

export interface Progress {
  elapsedMs: number;
  sent: number;
  done: number;
  inFlight: number;
  errors: number;
}

export interface RunResult {
  samples: Sample[];
  elapsedMs: number;
  options: Omit<LoadOptions, 'onProgress' | 'apiKey'>;
}

/** Runs the load until its duration or request count is reached, then waits for what is in flight. */
export async function runLoad(o: LoadOptions): Promise<RunResult> {
  if (o.durationMs === null && o.requests === null) throw new Error('a run needs a duration or a request count');
  const agent = new Agent({ connections: null, pipelining: 0, keepAliveTimeout: 30_000 });
  const t0 = performance.now();
  const samples: Sample[] = [];
  let sent = 0;
  let inFlight = 0;
  let errors = 0;
  const deadline = o.durationMs === null ? Infinity : t0 + o.durationMs;
  const more = () => performance.now() < deadline && (o.requests === null || sent < o.requests);
  const spec = (i: number): RequestSpec => ({
    url: `${o.url.replace(/\/+$/, '')}/v1/chat/completions`,
    stream: o.stream,
    timeoutMs: o.timeoutMs,
    headers: o.apiKey ? { authorization: `Bearer ${o.apiKey}` } : {},
    body: {
      model: o.model,
      messages: [{ role: 'user', content: o.prompts[i % o.prompts.length]! }],
      max_tokens: o.maxTokens,
      stream: o.stream,
      ...(o.stream ? { stream_options: { include_usage: true } } : {}),
    },
  });
  const one = async () => {
    const i = sent++;
    inFlight++;
    const s = await measure(agent, spec(i), t0);
    inFlight--;
    if (s.error) errors++;
    samples.push(s);
  };
  const progress = setInterval(
    () => o.onProgress?.({ elapsedMs: performance.now() - t0, sent, done: samples.length, inFlight, errors }),
    1000,
  );
  try {
    if (o.rate === null) {
      // Closed loop: `concurrency` clients back to back.
      await Promise.all(
        Array.from({ length: o.concurrency }, async () => {
          while (more()) await one();
        }),
      );
    } else {
      // Open loop: exponential gaps at `rate` per second; arrivals past the in-flight cap are dropped and counted.
      const running = new Set<Promise<void>>();
      let next = performance.now();
      while (more()) {
        const wait = next - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        next += (-Math.log(1 - Math.random()) / o.rate) * 1000;
        if (!more()) break;
        if (running.size >= o.concurrency) {
          sent++;
          errors++;
          samples.push({ start: performance.now() - t0, ttft: null, itl: [], e2e: 0, tokens: 0, error: 'client_saturated' });
          continue;
        }
        const p: Promise<void> = one().finally(() => running.delete(p));
        running.add(p);
      }
      await Promise.all(running);
    }
  } finally {
    clearInterval(progress);
    await agent.close();
  }
  const { onProgress: _p, apiKey: _k, ...options } = o;
  return { samples, elapsedMs: performance.now() - t0, options };
}
