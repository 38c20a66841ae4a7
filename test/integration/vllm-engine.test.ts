import { expect } from 'chai';
import { once } from 'node:events';
import { AbortError, ConfigError, EngineUnavailableError, type JobParams } from '@llmux/shared';
import { VllmEngine, type GenerateResult, type VllmEngineOptions, type VllmLoadMetrics } from '@llmux/worker-agent';
import { alive, rejection, SIM_SERVER_MAIN, story } from '../helpers/sim-server.js';

/**
 * The vllm engine running the sim server in place of `vllm serve`
 * (`node sim-server/main.js serve <model> --host 127.0.0.1 --port P ...`):
 * start and health, streaming, load from /metrics under both KV-cache gauge
 * names, a process killed mid-stream and restarted, startup failures, and
 * close() leaving no process behind.
 */

const chat = (o: Partial<JobParams> = {}): JobParams => ({
  kind: 'chat',
  messages: [{ role: 'user', content: 'Tell me a story.' }],
  maxTokens: 12,
  ...o,
});

async function run(e: VllmEngine, params: JobParams, signal = new AbortController().signal, onChunk?: () => void) {
  let text = '';
  const result: GenerateResult = await e.generate(
    params,
    (t) => {
      text += t;
      onChunk?.();
    },
    signal,
  );
  return { result, text };
}

/** Resolves on the next `metrics` event whose reading passes `ok`. */
function metricsWhere(e: VllmEngine, ok: (m: VllmLoadMetrics) => boolean): Promise<VllmLoadMetrics> {
  return new Promise((resolve) => {
    const on = (m: VllmLoadMetrics | null) => {
      if (m && ok(m)) {
        e.off('metrics', on);
        resolve(m);
      }
    };
    e.on('metrics', on);
  });
}

describe('VllmEngine running the sim server as vllm', function () {
  const engines: VllmEngine[] = [];
  const pids: number[] = [];

  function makeEngine(o: Partial<VllmEngineOptions> & { simArgs?: string[] } = {}): VllmEngine {
    const { simArgs = [], ...rest } = o;
    const e = new VllmEngine({
      command: process.execPath,
      commandArgs: [SIM_SERVER_MAIN],
      args: ['--ttft-ms', '0', '--itl-ms', '2', '--enforce-eager', '--dtype', 'auto', ...simArgs],
      model: 'org/sim-model',
      contextSize: 4096,
      capacity: 4,
      healthTimeoutMs: 20_000,
      metricsIntervalMs: 25,
      restartInitialMs: 20,
      killTimeoutMs: 3000,
      ...rest,
    });
    e.on('spawn', ({ pid }: { pid: number }) => pids.push(pid));
    engines.push(e);
    return e;
  }

  after(async () => {
    for (const e of engines) await e.close();
    for (const pid of pids) expect(alive(pid), `process ${pid} left running`).to.equal(false);
  });

  it('starts the process, waits for /health, and streams through it', async () => {
    const e = makeEngine();
    // Not serving yet: full, so an agent would claim nothing.
    expect(e.load()).to.equal(1);
    const generating = rejection(e.generate(chat(), () => {}, new AbortController().signal));
    expect(await generating).to.be.instanceOf(EngineUnavailableError);
    await e.start();
    expect(e.state).to.equal('ready');
    expect(e.pid).to.be.a('number');
    expect(alive(e.pid!)).to.equal(true);

    const r = await run(e, chat({ maxTokens: 12 }));
    expect(r.text).to.equal(story(12));
    expect(r.result).to.deep.equal({ finishReason: 'length', promptTokens: 4, completionTokens: 12 });

    const c = await run(e, { kind: 'completion', prompt: 'Tell me a story.', maxTokens: 5, stop: [' a'] });
    expect(c.text).to.equal('Once upon');
    expect(c.result.finishReason).to.equal('stop');
  });

  it('resumes a chat with continue_final_message', async () => {
    const e = makeEngine();
    await e.start();
    const chunks: string[] = [];
    const result = await e.generate(chat({ maxTokens: 10 }), (t) => chunks.push(t), new AbortController().signal, {
      text: story(7),
      tokens: 7,
    });
    expect(chunks.join('')).to.equal(story(3, 7));
    expect(result).to.deep.equal({ finishReason: 'length', promptTokens: 4, completionTokens: 3 });
  });

  for (const kv of ['kv_cache_usage_perc', 'gpu_cache_usage_perc'] as const) {
    it(`load() follows /metrics (KV-cache gauge vllm:${kv})`, async () => {
      // The server runs 4 at once; the engine is told 16, so KV-cache use (running / 4) drives the load.
      const e = makeEngine({ capacity: 16, simArgs: ['--kv-metric', kv, '--capacity', '4'] });
      await e.start();
      await metricsWhere(e, (m) => m.running === 0);
      expect(e.load()).to.equal(0);

      const ctls = [new AbortController(), new AbortController()];
      const first: Promise<void>[] = [];
      const runs = ctls.map((ctl) => {
        let got!: () => void;
        first.push(new Promise<void>((r) => (got = r)));
        return run(e, chat({ maxTokens: 4000 }), ctl.signal, () => got());
      });
      await Promise.all(first);
      const m = await metricsWhere(e, (x) => x.running === 2);
      expect(m).to.deep.equal({ running: 2, waiting: 0, kvCacheUsage: 0.5 });
      expect(e.load()).to.equal(0.5);

      for (const c of ctls) c.abort();
      for (const r of runs) expect(await rejection(r)).to.be.instanceOf(AbortError);
      await metricsWhere(e, (x) => x.running === 0);
      expect(e.load()).to.equal(0);
    });
  }

  it('counts waiting requests in load() when they outnumber the KV-cache use', async () => {
    // The server runs 1 at once and queues the rest; the engine is told 2.
    const e = makeEngine({ capacity: 2, simArgs: ['--capacity', '1'] });
    await e.start();
    const ctls = [new AbortController(), new AbortController()];
    const runs = ctls.map((ctl) => run(e, chat({ maxTokens: 4000 }), ctl.signal));
    const m = await metricsWhere(e, (x) => x.running === 1 && x.waiting === 1);
    expect(m.kvCacheUsage).to.equal(1);
    expect(e.load()).to.equal(1);
    for (const c of ctls) c.abort();
    for (const r of runs) expect(await rejection(r)).to.be.instanceOf(AbortError);
  });

  it('fails the stream in flight when the process is killed, refuses work while down, restarts and serves again', async () => {
    const e = makeEngine();
    const readyEvents: { pid: number; port: number }[] = [];
    e.on('ready', (r: { pid: number; port: number }) => readyEvents.push(r));
    await e.start();
    const pid = e.pid!;

    const exited = once(e, 'exit');
    const restarted = once(e, 'restart');
    let got!: () => void;
    const firstToken = new Promise<void>((r) => (got = r));
    const inflight = rejection(run(e, chat({ maxTokens: 4000 }), new AbortController().signal, () => got()));
    await firstToken;
    process.kill(pid, 'SIGKILL');

    expect(await inflight).to.be.instanceOf(EngineUnavailableError);
    const [exit] = (await exited) as [{ pid: number; signal: string }];
    expect(exit).to.include({ pid, signal: 'SIGKILL' });
    // Down: work is refused at once, and the load says full.
    expect(e.state).to.equal('restarting');
    expect(await rejection(run(e, chat()))).to.be.instanceOf(EngineUnavailableError);
    expect(e.load()).to.equal(1);

    const [restart] = (await restarted) as [{ restarts: number; delayMs: number }];
    expect(restart).to.deep.equal({ restarts: 1, delayMs: 20 });
    await once(e, 'ready');
    expect(e.restarts).to.equal(1);
    expect(e.state).to.equal('ready');
    expect(e.pid).to.be.a('number').and.not.equal(pid);
    expect(readyEvents).to.have.length(2);
    expect(alive(pid)).to.equal(false);

    const r = await run(e, chat({ maxTokens: 6 }));
    expect(r.text).to.equal(story(6));
  });

  it('a request that fails on a live process holds new work until the process answers its health check', async () => {
    // The sim server breaks every stream after 3 tokens but stays up, as a socket error can arrive before an exit.
    const e = makeEngine({ simArgs: ['--fail-after-tokens', '3'] });
    await e.start();
    const checked = once(e, 'check');
    expect(await rejection(run(e, chat({ maxTokens: 20 })))).to.be.instanceOf(EngineUnavailableError);
    // Until checked: full, and work is refused without reaching the process.
    expect(e.state).to.equal('checking');
    expect(e.load()).to.equal(1);
    expect(await rejection(run(e, chat()))).to.be.instanceOf(EngineUnavailableError);
    const [check] = (await checked) as [{ pid: number; healthy: boolean }];
    expect(check).to.deep.equal({ pid: e.pid, healthy: true });
    expect(e.state).to.equal('ready');
    expect(e.restarts).to.equal(0);
  });

  it('close() stops the process and leaves nothing running', async () => {
    const e = makeEngine();
    await e.start();
    const pid = e.pid!;
    const ctl = new AbortController();
    let got!: () => void;
    const firstToken = new Promise<void>((r) => (got = r));
    const inflight = rejection(run(e, chat({ maxTokens: 4000 }), ctl.signal, () => got()));
    await firstToken;
    await e.close();
    expect(alive(pid)).to.equal(false);
    expect(e.state).to.equal('closed');
    expect(await inflight).to.be.instanceOf(EngineUnavailableError);
    expect(await rejection(run(e, chat()))).to.be.instanceOf(EngineUnavailableError);
  });

  it('a process that exits during startup fails start() with its exit code and output', async () => {
    const e = makeEngine({ commandArgs: ['-e', 'console.error("no GPU found"); process.exit(3)'] });
    const err = await rejection(e.start());
    expect(err).to.be.instanceOf(EngineUnavailableError);
    expect((err as Error).message)
      .to.contain('code 3')
      .and.contain('no GPU found');
    expect(e.restarts).to.equal(0);
  });

  it('a process that never becomes healthy is stopped after healthTimeoutMs', async () => {
    const e = makeEngine({ commandArgs: ['-e', 'setInterval(() => {}, 1000)'], healthTimeoutMs: 300 });
    const spawned = once(e, 'spawn');
    const err = await rejection(e.start());
    expect(err).to.be.instanceOf(EngineUnavailableError);
    expect((err as Error).message).to.contain('300 ms');
    const [{ pid }] = (await spawned) as [{ pid: number }];
    expect(alive(pid)).to.equal(false);
  });

  it('a command that does not exist is a configuration error', async () => {
    const e = makeEngine({ command: 'llmux-no-such-vllm-command', commandArgs: [] });
    const err = await rejection(e.start());
    expect(err).to.be.instanceOf(ConfigError);
    expect((err as Error).message).to.contain('command not found');
  });
});
