import type { FinishReason, JobParams } from '@llmux/shared';

/**
 * Receives generated text as it is produced: `text` holds `tokens` tokens
 * (text of a token split across a UTF-8 boundary arrives with a later call).
 */
export type TextSink = (text: string, tokens: number) => void;

export interface GenerateResult {
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
}

/**
 * One engine replica. Implementations: `llamacpp` (in-process, CPU) and `sim`
 * (fake tokens with set timing). `generate` may run `capacity` calls at once;
 * it rejects with AbortError when `signal` aborts, and with EngineError on
 * failure.
 */
export interface Engine {
  /** Concurrent `generate` calls this replica serves. */
  readonly capacity: number;
  /** Tokens of prompt plus completion one request may use. */
  readonly contextSize: number;
  start(): Promise<void>;
  generate(params: JobParams, onText: TextSink, signal: AbortSignal): Promise<GenerateResult>;
  close(): Promise<void>;
}
