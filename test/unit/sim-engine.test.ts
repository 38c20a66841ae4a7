import { expect } from 'chai';
import { AbortError, type JobParams } from '@llmux/shared';
import { SimEngine, simPromptTokens, simToken } from '@llmux/worker-agent';
import { rejection, runEngine, story } from '../helpers/engines.js';

const engine = (outputTokens: number | null) =>
  new SimEngine({ capacity: 4, ttftMs: 0, itlMs: 0, outputTokens, contextSize: 4096 });

const chat = (maxTokens: number): JobParams => ({
  kind: 'chat',
  messages: [
    { role: 'system', content: 'Tell a story.' },
    { role: 'user', content: 'Once upon a time' },
  ],
  maxTokens,
});

describe('SimEngine', () => {
  it('produces exactly max_tokens tokens when outputTokens is null, finishing with length', async () => {
    const r = await runEngine(engine(null), chat(23));
    expect(r.result).to.deep.equal({ finishReason: 'length', promptTokens: 7, completionTokens: 23 });
    expect(r.chunks).to.have.length(23);
    for (const c of r.chunks) expect(c.tokens).to.equal(1);
    expect(r.text).to.equal(story(23));
  });

  it('stops at outputTokens below max_tokens, finishing with stop', async () => {
    const r = await runEngine(engine(5), chat(100));
    expect(r.result.finishReason).to.equal('stop');
    expect(r.result.completionTokens).to.equal(5);
    expect(r.chunks).to.have.length(5);
    expect(r.text).to.equal(story(5));
    expect(r.text).to.equal('Once upon a time,');
  });

  it('is capped by max_tokens below outputTokens, finishing with length', async () => {
    const r = await runEngine(engine(50), chat(7));
    expect(r.result.finishReason).to.equal('length');
    expect(r.result.completionTokens).to.equal(7);
    expect(r.text).to.equal(story(7));
  });

  it('finishes with length when outputTokens equals max_tokens', async () => {
    const r = await runEngine(engine(9), chat(9));
    expect(r.result).to.include({ finishReason: 'length', completionTokens: 9 });
  });

  it('produces the same text for every request and repeats its story', async () => {
    const e = engine(null);
    const [a, b] = await Promise.all([runEngine(e, chat(40)), runEngine(e, { kind: 'completion', prompt: 'x', maxTokens: 40 })]);
    expect(a.text).to.equal(b.text);
    expect(simToken(15)).to.equal(simToken(0));
    expect(b.result.promptTokens).to.equal(1);
  });

  it('counts prompt tokens as whitespace-separated words', () => {
    expect(simPromptTokens(chat(1))).to.equal(7);
    expect(simPromptTokens({ kind: 'completion', prompt: '  a  b\nc ', maxTokens: 1 })).to.equal(3);
    expect(simPromptTokens({ kind: 'completion', maxTokens: 1 })).to.equal(0);
  });

  it('rejects with AbortError when aborted before it starts, producing nothing', async () => {
    const ctl = new AbortController();
    ctl.abort();
    const chunks: string[] = [];
    const err = await rejection(engine(null).generate(chat(10), (t) => chunks.push(t), ctl.signal));
    expect(err).to.be.instanceOf(AbortError);
    expect(chunks).to.deep.equal([]);
  });

  it('rejects with AbortError when aborted mid-generation and produces no more tokens', async () => {
    const ctl = new AbortController();
    const chunks: string[] = [];
    let aborted = -1;
    const p = engine(null).generate(
      chat(1000),
      (t) => {
        chunks.push(t);
        // Abort from outside the engine's own step, as a cancel message would.
        if (chunks.length === 3) queueMicrotask(() => ((aborted = chunks.length), ctl.abort()));
      },
      ctl.signal,
    );
    const err = await rejection(p);
    expect(err).to.be.instanceOf(AbortError);
    expect(aborted).to.equal(3);
    // Let several timer turns pass (another generation runs meanwhile): no token of the aborted one follows.
    const other = await runEngine(engine(null), chat(5));
    expect(other.text).to.equal(story(5));
    expect(chunks).to.deep.equal([simToken(0), simToken(1), simToken(2)]);
  });
});
