import type { JobParams } from '@llmux/shared';
import { simToken, type Engine, type GenerateResult } from '@llmux/worker-agent';

/** One engine call as a test sees it: the result, each text chunk with its token count, and the whole text. */
export interface Run {
  result: GenerateResult;
  chunks: { text: string; tokens: number }[];
  text: string;
}

/** Runs one generate call on a real engine and records what it streamed. */
export async function runEngine(
  engine: Engine,
  params: JobParams,
  signal: AbortSignal = new AbortController().signal,
): Promise<Run> {
  const chunks: { text: string; tokens: number }[] = [];
  const result = await engine.generate(params, (text, tokens) => chunks.push({ text, tokens }), signal);
  return { result, chunks, text: chunks.map((c) => c.text).join('') };
}

/** Awaits a promise that must reject, and returns the reason. */
export async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject');
}

/** The first `n` tokens of the sim engine's story (from token `from`), joined. */
export const story = (n: number, from = 0): string => Array.from({ length: n }, (_, i) => simToken(from + i)).join('');
