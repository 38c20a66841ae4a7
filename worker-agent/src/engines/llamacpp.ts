import {
  ChatMLChatWrapper,
  getLlama,
  LlamaCompletion,
  resolveChatWrapper,
  type ChatHistoryItem,
  type ChatWrapper,
  type Llama,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaModel,
  type LlamaText,
  LlamaLogLevel,
  type Token,
} from 'node-llama-cpp';
import { AbortError, EngineError, PromptTooLongError, type FinishReason, type JobParams } from '@llmux/shared';
import type { Engine, GenerateResult, Resume, TextSink } from './types.js';
import { joinMessages } from './prompt.js';
import { StopMatcher } from './stop.js';

export interface LlamaCppEngineOptions {
  /** Path of the GGUF file. */
  modelPath: string;
  /** Concurrent requests: sequences in the one context. */
  capacity: number;
  /** CPU threads. Set explicitly: node-llama-cpp's default oversubscribes small machines badly. */
  threads: number;
  /** Context size per sequence, in tokens. */
  contextSize: number;
  /** `auto`: the model's own template if its file has one, else joined text. */
  chatTemplate: 'auto' | 'none' | 'chatml';
}

let llamaPromise: Promise<Llama> | null = null;

/** One llama.cpp runtime per process, created on first use with the prebuilt CPU binary. */
function sharedLlama(): Promise<Llama> {
  llamaPromise ??= getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, progressLogs: false });
  return llamaPromise;
}

/**
 * llama.cpp through node-llama-cpp, in process, on CPU. One model and one
 * context with `capacity` sequences; llama.cpp batches the running sequences
 * into shared decode steps.
 */
export class LlamaCppEngine implements Engine {
  readonly capacity: number;
  contextSize: number;
  private model: LlamaModel | null = null;
  private context: LlamaContext | null = null;
  private readonly free: LlamaContextSequence[] = [];
  private chatWrapper: ChatWrapper | null = null;

  constructor(private readonly opts: LlamaCppEngineOptions) {
    this.capacity = opts.capacity;
    this.contextSize = opts.contextSize;
  }

  async start(): Promise<void> {
    const llama = await sharedLlama();
    this.model = await llama.loadModel({ modelPath: this.opts.modelPath });
    this.context = await this.model.createContext({
      sequences: this.capacity,
      threads: this.opts.threads,
      contextSize: Math.min(this.opts.contextSize, this.model.trainContextSize),
    });
    this.contextSize = this.context.contextSize;
    for (let i = 0; i < this.capacity; i++) this.free.push(this.context.getSequence());
    if (this.opts.chatTemplate === 'chatml') this.chatWrapper = new ChatMLChatWrapper();
    else if (this.opts.chatTemplate === 'auto' && this.model.fileInfo.metadata.tokenizer?.chat_template) {
      this.chatWrapper = resolveChatWrapper(this.model);
    }
  }

  /**
   * The prompt as tokens, without BOS (LlamaCompletion prepends it), plus the
   * stop triggers the chat template adds (special tokens, matched by id).
   * `prefix` is text already delivered: the model continues right after it.
   * `promptTokens` counts the prompt alone.
   */
  private render(params: JobParams, prefix: string): { tokens: Token[]; stops: LlamaText[]; promptTokens: number } {
    const model = this.model!;
    if (params.kind === 'chat' && this.chatWrapper) {
      const history: ChatHistoryItem[] = [];
      for (const m of params.messages ?? []) {
        if (m.role === 'assistant') history.push({ type: 'model', response: [m.content] });
        else if (m.role === 'system' || m.role === 'developer') history.push({ type: 'system', text: m.content });
        else history.push({ type: 'user', text: m.content });
      }
      const renderWith = (partial: string) => {
        const state = this.chatWrapper!.generateContextState({
          chatHistory: [...history, { type: 'model', response: partial ? [partial] : [] }],
        });
        const tokens = state.contextText.tokenize(model.tokenizer);
        if (tokens[0] === model.tokens.bos) tokens.shift();
        return { tokens, stops: state.stopGenerationTriggers };
      };
      const full = renderWith(prefix);
      const promptTokens = prefix ? renderWith('').tokens.length : full.tokens.length;
      return { ...full, promptTokens };
    }
    const text = params.kind === 'chat' ? joinMessages(params.messages ?? []) : (params.prompt ?? '');
    const promptTokens = model.tokenize(text).length;
    return { tokens: prefix ? model.tokenize(text + prefix) : model.tokenize(text), stops: [], promptTokens };
  }

  /** Whether LlamaCompletion will put a BOS token before the prompt. */
  private get addsBos(): boolean {
    return this.model!.tokens.bos !== null && this.model!.tokens.shouldPrependBosToken;
  }

  async generate(params: JobParams, onText: TextSink, signal: AbortSignal, resume?: Resume): Promise<GenerateResult> {
    if (!this.context) throw new EngineError('engine not started');
    if (signal.aborted) throw new AbortError();
    const rendered = this.render(params, resume?.text ?? '');
    const { tokens, stops } = rendered;
    const bos = this.addsBos ? 1 : 0;
    const promptTokens = rendered.promptTokens + bos;
    const inputTokens = tokens.length + bos;
    if (inputTokens >= this.contextSize) {
      throw new PromptTooLongError(
        `The prompt is ${inputTokens} tokens long; this model's context holds ${this.contextSize}, and one more is needed to generate.`,
      );
    }
    const seq = this.free.pop();
    if (!seq) throw new EngineError(`all ${this.capacity} sequences are busy (claimed past capacity)`);
    const maxTokens = Math.min(params.maxTokens - (resume?.tokens ?? 0), this.contextSize - inputTokens);
    if (maxTokens <= 0) {
      this.free.push(seq);
      return { finishReason: 'length', promptTokens, completionTokens: 0 };
    }
    const completion = new LlamaCompletion({ contextSequence: seq, autoDisposeSequence: false });
    // Ends generation early without an error: a stop sequence, or the token cap.
    const halt = new AbortController();
    const matcher = new StopMatcher(params.stop ?? []);
    let pendingTokens = 0;
    let completionTokens = 0;
    /** Past the cap: nothing more is counted or sent. */
    let over = false;
    /** A batch crossed the cap: its text is still to come, then nothing more. */
    let crossing = false;
    try {
      const { metadata } = await completion.generateCompletionWithMeta(tokens, {
        maxTokens,
        temperature: params.temperature ?? 1,
        topP: params.topP,
        seed: params.seed,
        customStopTriggers: stops.length > 0 ? stops : undefined,
        signal: AbortSignal.any([signal, halt.signal]),
        stopOnAbortSignal: true,
        disableContextShift: true,
        // Let the prompt use the whole context instead of the default 90%; the check above keeps it within.
        contextShiftSize: 1,
        repeatPenalty:
          params.presencePenalty || params.frequencyPenalty
            ? { presencePenalty: params.presencePenalty, frequencyPenalty: params.frequencyPenalty }
            : false,
        onToken: (t) => {
          if (over) return;
          // node-llama-cpp may run past maxTokens to finish a UTF-8 character, and can hand
          // several tokens over at once. The cap is hard: tokens past it are not counted.
          const take = Math.min(t.length, maxTokens - completionTokens);
          if (take === 0) {
            // Entirely past the cap: stop, and drop the text it would release.
            over = true;
            halt.abort();
            return;
          }
          pendingTokens += take;
          completionTokens += take;
          if (take < t.length) {
            // This batch crosses the cap: its text (one chunk) still goes out, then nothing.
            crossing = true;
            halt.abort();
          }
        },
        onTextChunk: (text) => {
          if (over) return;
          if (crossing) over = true;
          if (matcher.stopped) return;
          const out = matcher.push(text);
          if (matcher.stopped) halt.abort();
          if (out) {
            onText(out, pendingTokens);
            pendingTokens = 0;
          }
        },
      });
      if (signal.aborted) throw new AbortError();
      const rest = matcher.flush();
      if (rest || pendingTokens > 0) onText(rest, pendingTokens);
      let finishReason: FinishReason = 'stop';
      if (over || crossing || completionTokens >= maxTokens || (!matcher.stopped && metadata.stopReason === 'maxTokens')) {
        finishReason = 'length';
      }
      return { finishReason, promptTokens, completionTokens };
    } catch (err) {
      if (signal.aborted) throw new AbortError();
      if (err instanceof AbortError) throw err;
      throw new EngineError(`llama.cpp generation failed: ${(err as Error).message}`);
    } finally {
      completion.dispose({ disposeSequence: false });
      this.free.push(seq);
    }
  }

  async close(): Promise<void> {
    await this.context?.dispose();
    await this.model?.dispose();
    this.context = null;
    this.model = null;
  }
}
