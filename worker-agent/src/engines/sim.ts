import { AbortError, type JobParams } from '@llmux/shared';
import type { Engine, GenerateResult, Resume, TextSink } from './types.js';
import { joinMessages } from './prompt.js';
import { StopMatcher } from './stop.js';

export interface SimEngineOptions {
  /** Concurrent requests. */
  capacity: number;
  /** Time to first token, ms. */
  ttftMs: number;
  /** Delay between tokens, ms. */
  itlMs: number;
  /** Tokens to produce when max_tokens is larger; null: exactly max_tokens. */
  outputTokens: number | null;
  contextSize: number;
}

const WORDS = [
  'Once',
  ' upon',
  ' a',
  ' time',
  ',',
  ' there',
  ' was',
  ' a',
  ' little',
  ' fox',
  ' who',
  ' loved',
  ' to',
  ' run',
  '.',
];

/** The i-th token of the simulator's output: a fixed, repeating story. */
export function simToken(i: number): string {
  return WORDS[i % WORDS.length]!;
}

/** Counts prompt tokens the way the simulator does: whitespace-separated words. */
export function simPromptTokens(params: JobParams): number {
  const text = params.kind === 'chat' ? joinMessages(params.messages ?? []) : (params.prompt ?? '');
  return text.split(/\s+/).filter(Boolean).length;
}

/**
 * Deterministic fake engine for load tests of the serving layer: after
 * `ttftMs` it produces a fixed story one token every `itlMs`.
 */
export class SimEngine implements Engine {
  readonly capacity: number;
  readonly contextSize: number;

  constructor(private readonly opts: SimEngineOptions) {
    this.capacity = opts.capacity;
    this.contextSize = opts.contextSize;
  }

  async start(): Promise<void> {}

  /**
   * A continuation picks the story up at token `resume.tokens`, so a resumed
   * run delivers exactly the text an uninterrupted one would.
   */
  generate(params: JobParams, onText: TextSink, signal: AbortSignal, resume?: Resume): Promise<GenerateResult> {
    const total = Math.min(params.maxTokens, this.opts.outputTokens ?? params.maxTokens);
    const promptTokens = simPromptTokens(params);
    const start = resume?.tokens ?? 0;
    return new Promise((resolve, reject) => {
      let i = start;
      const matcher = new StopMatcher(params.stop ?? []);
      let timer: NodeJS.Timeout | null = null;
      const onAbort = () => {
        if (timer) clearTimeout(timer);
        reject(new AbortError());
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      // Tokens whose text the stop matcher holds back are counted with the text that releases them.
      let pending = 0;
      const step = () => {
        const out = matcher.push(simToken(i));
        i++;
        pending++;
        if (out) {
          onText(out, pending);
          pending = 0;
        }
        if (signal.aborted) return; // aborted from inside onText; onAbort already rejected
        if (matcher.stopped) {
          signal.removeEventListener('abort', onAbort);
          resolve({ finishReason: 'stop', promptTokens, completionTokens: i - start });
          return;
        }
        if (i < total) {
          timer = setTimeout(step, this.opts.itlMs);
          return;
        }
        signal.removeEventListener('abort', onAbort);
        const rest = matcher.flush();
        if (rest || pending > 0) onText(rest, pending);
        resolve({ finishReason: total < params.maxTokens ? 'stop' : 'length', promptTokens, completionTokens: total - start });
      };
      if (start >= total) {
        signal.removeEventListener('abort', onAbort);
        resolve({ finishReason: total < params.maxTokens ? 'stop' : 'length', promptTokens, completionTokens: 0 });
        return;
      }
      timer = setTimeout(step, this.opts.ttftMs);
    });
  }

  async close(): Promise<void> {}
}
