import { expect } from 'chai';
import { getLlama, LlamaCompletion, LlamaLogLevel } from 'node-llama-cpp';
import { AbortError, EngineError, type JobParams } from '@llmux/shared';
import { LlamaCppEngine } from '@llmux/worker-agent';
import { testModel } from '../helpers/models.js';
import { rejection, runEngine, type Run } from '../helpers/engines.js';

/**
 * The llama.cpp engine in process, on the two small real models: stories260K
 * (a TinyStories base model, English) and llama-2-tiny-random (random weights
 * over a 32k multilingual vocabulary, so it never stops early and often emits
 * tokens that end inside a UTF-8 character).
 */

/** A UTF-16 half character: what a chunk cut inside a character would leave. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const tokenSum = (r: Run) => r.chunks.reduce((n, c) => n + c.tokens, 0);
const completion = (prompt: string, o: Partial<JobParams>): JobParams => ({ kind: 'completion', prompt, maxTokens: 16, ...o });
const chat = (content: string, o: Partial<JobParams>): JobParams => ({
  kind: 'chat',
  messages: [
    { role: 'system', content: 'You tell short stories.' },
    { role: 'user', content },
  ],
  maxTokens: 16,
  ...o,
});

describe('LlamaCppEngine on real small models', function () {
  let storiesPath: string;
  let tinyPath: string;
  const engines: LlamaCppEngine[] = [];
  let stories: LlamaCppEngine;
  let tiny: LlamaCppEngine;

  async function startEngine(modelPath: string, o: Partial<ConstructorParameters<typeof LlamaCppEngine>[0]> = {}) {
    const e = new LlamaCppEngine({ modelPath, capacity: 1, threads: 1, contextSize: 1024, chatTemplate: 'none', ...o });
    engines.push(e);
    await e.start();
    return e;
  }

  before(async () => {
    storiesPath = await testModel('stories260K');
    tinyPath = await testModel('llama-2-tiny-random');
    stories = await startEngine(storiesPath, { capacity: 2, contextSize: 512 });
    tiny = await startEngine(tinyPath, { capacity: 3, contextSize: 1024 });
  });

  after(async () => {
    for (const e of engines) await e.close();
  });

  it('refuses to generate before start()', async () => {
    const e = new LlamaCppEngine({ modelPath: tinyPath, capacity: 1, threads: 1, contextSize: 256, chatTemplate: 'none' });
    expect(await rejection(runEngine(e, completion('Hi', {})))).to.be.instanceOf(EngineError);
  });

  it('honours max tokens exactly, finishing with length', async () => {
    for (const maxTokens of [1, 7, 64]) {
      const r = await runEngine(tiny, completion('Hello there', { maxTokens, temperature: 0 }));
      expect(r.result.completionTokens).to.equal(maxTokens);
      expect(r.result.finishReason).to.equal('length');
      expect(tokenSum(r)).to.equal(maxTokens);
      expect(r.result.promptTokens).to.be.greaterThan(1);
    }
  });

  it('writes a TinyStories continuation of the prompt', async () => {
    const r = await runEngine(stories, completion('Once upon a time', { maxTokens: 40, temperature: 0 }));
    expect(r.result).to.include({ finishReason: 'length', completionTokens: 40 });
    expect(r.text).to.match(/^[ ,]/);
    expect(r.text.split(' ').length).to.be.greaterThan(10);
  });

  it('is deterministic at temperature 0', async () => {
    const p = completion('Once upon a time', { maxTokens: 48, temperature: 0 });
    const a = await runEngine(stories, p);
    const b = await runEngine(stories, p);
    expect(a.text.length).to.be.greaterThan(40);
    expect(b.text).to.equal(a.text);
    const c = await runEngine(tiny, { ...p, maxTokens: 32 });
    const d = await runEngine(tiny, { ...p, maxTokens: 32 });
    expect(d.text).to.equal(c.text);
  });

  it('repeats itself for the same seed at temperature 1 and differs for different seeds', async () => {
    const p = (seed: number) => completion('Once upon a time', { maxTokens: 48, temperature: 1, seed });
    const a = await runEngine(stories, p(1));
    const b = await runEngine(stories, p(1));
    const c = await runEngine(stories, p(2));
    expect(b.text).to.equal(a.text);
    expect(c.text).to.not.equal(a.text);
    const t1 = await runEngine(tiny, { ...p(5), maxTokens: 24 });
    const t2 = await runEngine(tiny, { ...p(5), maxTokens: 24 });
    const t3 = await runEngine(tiny, { ...p(6), maxTokens: 24 });
    expect(t2.text).to.equal(t1.text);
    expect(t3.text).to.not.equal(t1.text);
  });

  it('stops before a stop sequence taken from a previous run, finishing with stop', async () => {
    const prompt = 'Once upon a time';
    const first = await runEngine(stories, completion(prompt, { maxTokens: 60, temperature: 0 }));
    // A punctuation mark well into the text: it starts a token, so the cut point is exact.
    const at = first.text.slice(10).search(/[.!?]/);
    expect(at, `no punctuation in ${JSON.stringify(first.text)}`).to.be.at.least(0);
    const stop = first.text[10 + at]!;
    const expected = first.text.slice(0, first.text.indexOf(stop));
    expect(expected.length).to.be.greaterThan(0);
    const second = await runEngine(stories, completion(prompt, { maxTokens: 60, temperature: 0, stop: [stop] }));
    expect(second.result.finishReason).to.equal('stop');
    expect(second.text).to.equal(expected);
    expect(second.text).to.not.include(stop);
    expect(second.result.completionTokens).to.be.lessThan(60);
    expect(tokenSum(second)).to.equal(second.result.completionTokens);
  });

  it('a stop sequence that never appears changes nothing', async () => {
    const p = completion('Once upon a time', { maxTokens: 30, temperature: 0 });
    const plain = await runEngine(stories, p);
    const withStop = await runEngine(stories, { ...p, stop: ['\u0001never'] });
    expect(withStop.text).to.equal(plain.text);
    expect(withStop.result.finishReason).to.equal('length');
  });

  it('streams chunks that join into the text the model decodes, with token counts that add up', async () => {
    // Decode the same sampled tokens whole, straight through node-llama-cpp, as a reference.
    const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, progressLogs: false });
    const model = await llama.loadModel({ modelPath: tinyPath });
    const context = await model.createContext({ sequences: 1, threads: 1, contextSize: 1024 });
    try {
      let nonAscii = 0;
      for (const seed of [1, 2, 3]) {
        const params = completion('Hi', { maxTokens: 200, temperature: 1, seed });
        const r = await runEngine(tiny, params);
        expect(r.result.completionTokens).to.equal(200);
        expect(tokenSum(r)).to.equal(r.result.completionTokens);
        for (const c of r.chunks) expect(LONE_SURROGATE.test(c.text), JSON.stringify(c.text)).to.equal(false);
        const sequence = context.getSequence();
        const ref = new LlamaCompletion({ contextSequence: sequence, autoDisposeSequence: false });
        const tokens = model.tokenize('Hi');
        const { response } = await ref.generateCompletionWithMeta(tokens, {
          maxTokens: 200,
          temperature: 1,
          seed,
          repeatPenalty: false,
          disableContextShift: true,
        });
        ref.dispose({ disposeSequence: true });
        expect(r.text).to.equal(response);
        nonAscii += [...r.text].filter((ch) => ch.codePointAt(0)! > 0x7f).length;
      }
      // The check means something only if multi-byte characters were produced.
      expect(nonAscii).to.be.greaterThan(10);
    } finally {
      await context.dispose();
      await model.dispose();
    }
  });

  it('rejects with AbortError when aborted before it starts', async () => {
    const ctl = new AbortController();
    ctl.abort();
    const chunks: string[] = [];
    const err = await rejection(tiny.generate(completion('Hi', { maxTokens: 10 }), (t) => chunks.push(t), ctl.signal));
    expect(err).to.be.instanceOf(AbortError);
    expect(chunks).to.deep.equal([]);
  });

  it('rejects with AbortError when aborted mid-generation, and frees the sequence', async () => {
    const e = await startEngine(tinyPath, { capacity: 1, contextSize: 1024 });
    const ctl = new AbortController();
    let chunks = 0;
    const err = await rejection(
      e.generate(
        completion('Hi', { maxTokens: 1000, temperature: 1, seed: 3 }),
        () => {
          chunks++;
          if (chunks === 5) ctl.abort('cancelled');
        },
        ctl.signal,
      ),
    );
    expect(err).to.be.instanceOf(AbortError);
    expect(chunks).to.be.at.least(5);
    expect(chunks).to.be.lessThan(1000);
    // Its one sequence is free again.
    const after = await runEngine(e, completion('Hi', { maxTokens: 3, temperature: 0 }));
    expect(after.result.completionTokens).to.equal(3);
  });

  it('runs capacity generations at once and refuses one more', async () => {
    const seeds = [11, 12, 13];
    const firstChunkAt: number[] = [];
    let finished = 0;
    const runs = seeds.map((seed, i) =>
      tiny.generate(
        completion('Hi', { maxTokens: 40, temperature: 1, seed }),
        () => {
          if (firstChunkAt[i] === undefined) firstChunkAt[i] = finished;
        },
        new AbortController().signal,
      ),
    );
    const extra = await rejection(tiny.generate(completion('Hi', {}), () => {}, new AbortController().signal));
    expect(extra).to.be.instanceOf(EngineError);
    const results = await Promise.all(runs.map((p) => p.then((r) => (finished++, r))));
    for (const r of results) expect(r).to.include({ finishReason: 'length', completionTokens: 40 });
    // Every generation had started producing before any of them finished.
    expect(firstChunkAt).to.deep.equal([0, 0, 0]);
    // All sequences are free again.
    const again = await Promise.all(seeds.map(() => runEngine(tiny, completion('Hi', { maxTokens: 2 }))));
    for (const r of again) expect(r.result.completionTokens).to.equal(2);
  });

  it('renders chats with ChatML when asked, costing more prompt tokens than plain joined text', async () => {
    const chatml = await startEngine(tinyPath, { chatTemplate: 'chatml', contextSize: 512 });
    const p = chat('Tell me about a fox.', { maxTokens: 8, temperature: 0 });
    const withTemplate = await runEngine(chatml, p);
    const plain = await runEngine(tiny, p);
    expect(withTemplate.result.promptTokens).to.be.greaterThan(plain.result.promptTokens + 6);
    expect(plain.result.promptTokens).to.be.greaterThan(5);
    // A completion is not a chat: no template is applied to it.
    const c = completion('Tell me about a fox.', { maxTokens: 1, temperature: 0 });
    expect((await runEngine(chatml, c)).result.promptTokens).to.equal((await runEngine(tiny, c)).result.promptTokens);
  });

  it('joins chat messages as plain text on a model without a template', async () => {
    const p = chat('Once upon a time', { maxTokens: 20, temperature: 0 });
    const asChat = await runEngine(stories, p);
    const asCompletion = await runEngine(
      stories,
      completion('You tell short stories.\n\nOnce upon a time', { maxTokens: 20, temperature: 0 }),
    );
    expect(asChat.result.promptTokens).to.equal(asCompletion.result.promptTokens);
    expect(asChat.text).to.equal(asCompletion.text);
  });

  it('rejects a prompt longer than the context with EngineError, then serves again', async () => {
    const small = await startEngine(tinyPath, { contextSize: 64 });
    // llama.cpp may round the context up; the engine reports what it got.
    expect(small.contextSize).to.be.at.least(64).and.at.most(1024);
    // Every word is at least two tokens.
    const long = completion(Array.from({ length: small.contextSize }, (_, i) => `word${i}`).join(' '), { maxTokens: 4 });
    expect(await rejection(runEngine(small, long))).to.be.instanceOf(EngineError);
    const ok = await runEngine(small, completion('Hi', { maxTokens: 4, temperature: 0 }));
    expect(ok.result.completionTokens).to.equal(4);
  });

  it('caps generation at the room left in the context', async () => {
    const small = await startEngine(tinyPath, { contextSize: 64 });
    const r = await runEngine(small, completion('Hello there, how are you', { maxTokens: 5000, temperature: 0 }));
    expect(r.result.finishReason).to.equal('length');
    expect(r.result.completionTokens).to.be.lessThan(small.contextSize);
    const used = r.result.promptTokens + r.result.completionTokens;
    expect(used).to.be.at.most(small.contextSize);
    expect(used).to.be.at.least(small.contextSize - 1);
  });
});
