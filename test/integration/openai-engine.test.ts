import { expect } from 'chai';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { AbortError, EngineError, EngineUnavailableError, PromptTooLongError, type JobParams } from '@llmux/shared';
import { freePort, OpenAIEngine, type GenerateResult, type OpenAIEngineOptions, type Resume } from '@llmux/worker-agent';
import { rejection, SimServerProcess, story } from '../helpers/sim-server.js';

/**
 * The openai engine against real sim-server processes over real HTTP: the
 * streamed text, usage, max_tokens, stop sequences, resumes, aborts, a full
 * set of concurrent streams, and how each kind of upstream failure maps to
 * the engine's error classes.
 */

interface Run {
  result: GenerateResult;
  chunks: { text: string; tokens: number }[];
  text: string;
}

async function run(
  engine: OpenAIEngine,
  params: JobParams,
  opts: { signal?: AbortSignal; resume?: Resume; onChunk?: (n: number) => void } = {},
): Promise<Run> {
  const chunks: { text: string; tokens: number }[] = [];
  const result = await engine.generate(
    params,
    (text, tokens) => {
      chunks.push({ text, tokens });
      opts.onChunk?.(chunks.length);
    },
    opts.signal ?? new AbortController().signal,
    opts.resume,
  );
  return { result, chunks, text: chunks.map((c) => c.text).join('') };
}

const tokenSum = (r: Run) => r.chunks.reduce((n, c) => n + c.tokens, 0);
const chat = (content: string, o: Partial<JobParams> = {}): JobParams => ({
  kind: 'chat',
  messages: [
    { role: 'system', content: 'You tell stories.' },
    { role: 'user', content },
  ],
  maxTokens: 16,
  ...o,
});
const completion = (prompt: string, o: Partial<JobParams> = {}): JobParams => ({
  kind: 'completion',
  prompt,
  maxTokens: 16,
  ...o,
});

describe('OpenAIEngine against a real sim-server', function () {
  let sim: SimServerProcess;
  let vsim: SimServerProcess;
  const engines: OpenAIEngine[] = [];
  let engine: OpenAIEngine;

  const makeEngine = (baseUrl: string, o: Partial<OpenAIEngineOptions> = {}) => {
    const e = new OpenAIEngine({ baseUrl, model: 'sim', contextSize: 4096, capacity: 4, ...o });
    engines.push(e);
    return e;
  };

  before(async () => {
    [sim, vsim] = await Promise.all([
      SimServerProcess.start(['--ttft-ms', '0', '--itl-ms', '2', '--capacity', '4']),
      SimServerProcess.start([
        '--flavor', 'vllm', '--model', 'served-model', '--ttft-ms', '0', '--itl-ms', '0', '--output-tokens', '10',
        '--max-model-len', '256',
      ]), // prettier-ignore
    ]);
    engine = makeEngine(`${sim.url}/v1`);
  });

  after(async () => {
    for (const e of engines) await e.close();
    await Promise.all([sim?.stop(), vsim?.stop()]);
  });

  it('streams a chat as the story, one token per chunk, with the usage the server reports', async () => {
    const r = await run(engine, chat('Tell me a story.', { maxTokens: 20 }));
    expect(r.text).to.equal(story(20));
    expect(r.chunks).to.have.length(20);
    for (const c of r.chunks) expect(c.tokens).to.equal(1);
    // sim-server counts prompt tokens as words of the joined messages: 3 + 4.
    expect(r.result).to.deep.equal({ finishReason: 'length', promptTokens: 7, completionTokens: 20 });
  });

  it('streams a completion, honouring max_tokens exactly', async () => {
    for (const maxTokens of [1, 7, 40]) {
      const r = await run(engine, completion('Tell me a story.', { maxTokens }));
      expect(r.text).to.equal(story(maxTokens));
      expect(r.result).to.deep.equal({ finishReason: 'length', promptTokens: 4, completionTokens: maxTokens });
      expect(tokenSum(r)).to.equal(maxTokens);
    }
  });

  it('sends stop sequences upstream: the text ends before them, with finish stop and counts that add up', async () => {
    const r = await run(engine, chat('Tell me a story.', { maxTokens: 40, stop: [' little fox'] }));
    expect(r.text).to.equal('Once upon a time, there was a');
    expect(r.result.finishReason).to.equal('stop');
    // The server counts the tokens that formed the stop sequence (" little", " fox"); the engine reports them too.
    expect(r.result.completionTokens).to.equal(10);
    expect(tokenSum(r)).to.equal(r.result.completionTokens);
  });

  it('finishes with stop where the model ends before max_tokens, and takes usage from the usage chunk', async () => {
    const e = makeEngine(`${vsim.url}/v1`, { model: 'served-model' });
    const r = await run(e, completion('Tell me a story.', { maxTokens: 50 }));
    expect(r.text).to.equal(story(10));
    expect(r.result).to.deep.equal({ finishReason: 'stop', promptTokens: 4, completionTokens: 10 });
  });

  it('resumes a completion right after the delivered text, generating only the tokens left', async () => {
    const whole = await run(engine, completion('Tell me a story.', { maxTokens: 12 }));
    const resume = { text: story(5), tokens: 5 };
    const rest = await run(engine, completion('Tell me a story.', { maxTokens: 12 }), { resume });
    expect(resume.text + rest.text).to.equal(whole.text);
    expect(rest.result).to.deep.equal({ finishReason: 'length', promptTokens: 4, completionTokens: 7 });
    expect(tokenSum(rest)).to.equal(7);
  });

  it('resumes a chat with continue_final_message only when the option is on', async () => {
    const resume = { text: story(6), tokens: 6 };
    const cont = makeEngine(`${sim.url}/v1`, { continueFinalMessage: true });
    const r = await run(cont, chat('Tell me a story.', { maxTokens: 10 }), { resume });
    expect(r.text).to.equal(story(4, 6));
    expect(r.result).to.deep.equal({ finishReason: 'length', promptTokens: 7, completionTokens: 4 });
    // Without it the assistant message is history and the server starts a new turn.
    const plain = await run(engine, chat('Tell me a story.', { maxTokens: 10 }), { resume });
    expect(plain.text).to.equal(story(4));
  });

  it('a resume with no tokens left returns at once without calling the upstream', async () => {
    const before = sim.count((e) => e.event === 'admit');
    const r = await run(engine, completion('Tell me a story.', { maxTokens: 5 }), { resume: { text: story(5), tokens: 5 } });
    expect(r.result).to.include({ finishReason: 'length', completionTokens: 0 });
    expect(r.chunks).to.have.length(0);
    expect(sim.count((e) => e.event === 'admit')).to.equal(before);
  });

  it('aborting mid-stream rejects with AbortError and the server sees the connection close', async () => {
    const ctl = new AbortController();
    const p = run(engine, completion('Tell me a story.', { maxTokens: 3000 }), {
      signal: ctl.signal,
      onChunk: (n) => n === 3 && ctl.abort(),
    });
    expect(await rejection(p)).to.be.instanceOf(AbortError);
    const [ended] = await sim.waitFor((e) => e.event === 'end' && e.finish === 'abort');
    expect(ended!.tokens).to.be.lessThan(3000);
    const m = await sim.metrics();
    expect(m).to.include({ running: 0, waiting: 0 });
  });

  it('rejects at once when the signal is already aborted', async () => {
    const ctl = new AbortController();
    ctl.abort();
    expect(await rejection(run(engine, chat('x'), { signal: ctl.signal }))).to.be.instanceOf(AbortError);
  });

  it('runs capacity streams at once over kept-alive connections; one more waits upstream', async () => {
    const connectionsBefore = sim.count((e) => e.event === 'connection');
    const ctls = Array.from({ length: 5 }, () => new AbortController());
    const firstTokens: Promise<void>[] = [];
    const runs = ctls.slice(0, 4).map((ctl) => {
      let got!: () => void;
      firstTokens.push(new Promise<void>((r) => (got = r)));
      return run(engine, completion('Tell me a story.', { maxTokens: 3000 }), { signal: ctl.signal, onChunk: () => got() });
    });
    await Promise.all(firstTokens);
    const admitted = sim.count((e) => e.event === 'admit');
    const extra = run(engine, completion('Tell me a story.', { maxTokens: 3000 }), { signal: ctls[4]!.signal });
    await sim.waitFor((e) => e.event === 'admit' && e.state === 'waiting');
    expect(sim.count((e) => e.event === 'admit')).to.equal(admitted + 1);
    const m = await sim.metrics();
    expect(m).to.include({ running: 4, waiting: 1, kvCacheUsage: 1 });
    for (const c of ctls) c.abort();
    for (const r of [...runs, extra]) expect(await rejection(r)).to.be.instanceOf(AbortError);
    // The pool opened at most one connection per concurrent request, no more.
    expect(sim.count((e) => e.event === 'connection') - connectionsBefore).to.be.at.most(5);
  });

  it('reuses one kept-alive connection for requests in sequence', async () => {
    const e = makeEngine(`${sim.url}/v1`);
    const before = sim.count((ev) => ev.event === 'connection');
    for (let i = 0; i < 5; i++) await run(e, completion('Tell me a story.', { maxTokens: 3 }));
    expect(sim.count((ev) => ev.event === 'connection') - before).to.equal(1);
  });

  it('a 400 from the upstream is an EngineError, not EngineUnavailableError', async () => {
    const err = await rejection(run(engine, { kind: 'chat', messages: [], maxTokens: 5 }));
    expect(err).to.be.instanceOf(EngineError);
    expect(err).to.not.be.instanceOf(EngineUnavailableError);
    expect(err).to.not.be.instanceOf(PromptTooLongError);
    expect((err as Error).message).to.match(/400.*messages must be a non-empty list/);
    // vLLM's error format, with an unknown model: a 404, also the request's fault.
    const wrong = makeEngine(`${vsim.url}/v1`, { model: 'other-model' });
    const err404 = await rejection(run(wrong, completion('Hi', { maxTokens: 2 })));
    expect(err404).to.be.instanceOf(EngineError);
    expect(err404).to.not.be.instanceOf(EngineUnavailableError);
    expect((err404 as Error).message).to.match(/404.*other-model/);
  });

  it('a context-length 400 is a PromptTooLongError, in both error formats', async () => {
    const openaiErr = await rejection(run(engine, completion('Tell me a story.', { maxTokens: 4095 })));
    expect(openaiErr).to.be.instanceOf(PromptTooLongError);
    const v = makeEngine(`${vsim.url}/v1`, { model: 'served-model' });
    const vllmErr = await rejection(run(v, completion('Tell me a story.', { maxTokens: 255 })));
    expect(vllmErr).to.be.instanceOf(PromptTooLongError);
    expect((vllmErr as Error).message).to.contain('maximum context length is 256 tokens');
  });

  it('connection refused is EngineUnavailableError', async () => {
    const port = await freePort();
    const e = makeEngine(`http://127.0.0.1:${port}/v1`);
    const err = await rejection(run(e, chat('Hi')));
    expect(err).to.be.instanceOf(EngineUnavailableError);
    expect((err as Error).message).to.contain('ECONNREFUSED');
  });

  it('a stream the upstream drops mid-way is EngineUnavailableError, after the text it did send', async () => {
    const failing = await SimServerProcess.start(['--ttft-ms', '0', '--itl-ms', '0', '--fail-after-tokens', '3']);
    try {
      const e = makeEngine(`${failing.url}/v1`);
      const chunks: string[] = [];
      const err = await rejection(
        e.generate(completion('Tell me a story.', { maxTokens: 50 }), (t) => chunks.push(t), new AbortController().signal),
      );
      expect(err).to.be.instanceOf(EngineUnavailableError);
      expect(chunks.join('')).to.equal(story(3));
    } finally {
      await failing.stop();
    }
  });

  describe('against a broken upstream', () => {
    let server: Server;
    let base: string;
    const held: import('node:http').ServerResponse[] = [];

    before(async () => {
      server = createServer((req, res) => {
        req.resume();
        if (req.url === '/v1/chat/completions') {
          res.writeHead(503, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: { message: 'overloaded', type: 'server_error', param: null, code: 503 } }));
        } else if (req.url === '/v1/completions') {
          held.push(res); // never answers
        } else {
          // A stream that reports an engine failure inside the stream, as vLLM does.
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.end(
            'data: {"id":"x","object":"text_completion","choices":[{"index":0,"text":"Hi","finish_reason":null}]}\n\n' +
              'data: {"error":{"object":"error","message":"engine died","type":"InternalServerError","param":null,"code":500}}\n\n',
          );
        }
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });

    after(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });

    it('a 5xx is EngineUnavailableError', async () => {
      const e = makeEngine(`${base}/v1`);
      const err = await rejection(run(e, chat('Hi')));
      expect(err).to.be.instanceOf(EngineUnavailableError);
      expect((err as Error).message).to.match(/503.*overloaded/);
    });

    it('an upstream silent past requestTimeoutMs is EngineUnavailableError', async () => {
      const e = makeEngine(`${base}/v1`, { requestTimeoutMs: 300 });
      const err = await rejection(run(e, completion('Hi')));
      expect(err).to.be.instanceOf(EngineUnavailableError);
      expect((err as Error).message).to.contain('300 ms');
    });

    it('a 5xx error object inside the stream is EngineUnavailableError', async () => {
      const e = makeEngine(`${base}/other`, { api: 'completions' });
      const chunks: string[] = [];
      const err = await rejection(e.generate(completion('Hi'), (t) => chunks.push(t), new AbortController().signal));
      expect(err).to.be.instanceOf(EngineUnavailableError);
      expect((err as Error).message).to.contain('engine died');
      expect(chunks).to.deep.equal(['Hi']);
    });
  });
});
