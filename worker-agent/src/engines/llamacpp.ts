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
  LlamaLogLevel,
  type Token,
} from 'node-llama-cpp';
import { AbortError, EngineError, type JobParams } from '@llmux/shared';
import type { Engine, GenerateResult, TextSink } from './types.js';
import { joinMessages } from './prompt.js';

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

  /** The prompt as tokens, plus any stop triggers the chat template adds. */
  private render(params: JobParams): { tokens: Token[]; stops: string[] } {
    const model = this.model!;
    if (params.kind === 'chat' && this.chatWrapper) {
      const history: ChatHistoryItem[] = [];
      for (const m of params.messages ?? []) {
        if (m.role === 'assistant') history.push({ type: 'model', response: [m.content] });
        else if (m.role === 'system' || m.role === 'developer') history.push({ type: 'system', text: m.content });
        else history.push({ type: 'user', text: m.content });
      }
      history.push({ type: 'model', response: [] });
      const state = this.chatWrapper.generateContextState({ chatHistory: history });
      const stops: string[] = [];
      for (const trigger of state.stopGenerationTriggers) {
        const s = trigger.toString();
        if (s) stops.push(s);
      }
      return { tokens: state.contextText.tokenize(model.tokenizer), stops };
    }
    const text = params.kind === 'chat' ? joinMessages(params.messages ?? []) : (params.prompt ?? '');
    const tokens = model.tokenize(text);
    if (model.tokens.shouldPrependBosToken && model.tokens.bos !== null) tokens.unshift(model.tokens.bos);
    return { tokens, stops: [] };
  }

  async generate(params: JobParams, onText: TextSink, signal: AbortSignal): Promise<GenerateResult> {
    if (!this.context) throw new EngineError('engine not started');
    if (signal.aborted) throw new AbortError();
    const seq = this.free.pop();
    if (!seq) throw new EngineError(`all ${this.capacity} sequences are busy (claimed past capacity)`);
    const { tokens, stops } = this.render(params);
    const promptTokens = tokens.length;
    if (promptTokens >= this.contextSize) {
      this.free.push(seq);
      throw new EngineError(`prompt of ${promptTokens} tokens does not fit the context of ${this.contextSize}`);
    }
    const maxTokens = Math.min(params.maxTokens, this.contextSize - promptTokens);
    const completion = new LlamaCompletion({ contextSequence: seq, autoDisposeSequence: false });
    let pendingTokens = 0;
    let completionTokens = 0;
    try {
      const { metadata } = await completion.generateCompletionWithMeta(tokens, {
        maxTokens,
        temperature: params.temperature ?? 1,
        topP: params.topP,
        seed: params.seed,
        customStopTriggers: [...(params.stop ?? []), ...stops],
        signal,
        stopOnAbortSignal: false,
        disableContextShift: true,
        repeatPenalty:
          params.presencePenalty || params.frequencyPenalty
            ? { presencePenalty: params.presencePenalty, frequencyPenalty: params.frequencyPenalty }
            : false,
        onToken: (t) => {
          pendingTokens += t.length;
          completionTokens += t.length;
        },
        onTextChunk: (text) => {
          onText(text, pendingTokens);
          pendingTokens = 0;
        },
      });
      if (signal.aborted || metadata.stopReason === 'abort') throw new AbortError();
      return {
        finishReason: metadata.stopReason === 'maxTokens' ? 'length' : 'stop',
        promptTokens,
        completionTokens,
      };
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
