import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import { createInterface } from 'node:readline';
import {
  AbortError,
  ConfigError,
  EngineError,
  EngineUnavailableError,
  freePort,
  type JobParams,
  type Logger,
} from '@llmux/shared';
import type { Engine, GenerateResult, Resume, TextSink } from './types.js';
import { OpenAIEngine } from './openai.js';
import { parsePrometheusText, vllmLoad, vllmLoadMetrics, type VllmLoadMetrics } from './prometheus.js';

export interface VllmEngineOptions {
  /** The program to run. Default `vllm`. */
  command?: string;
  /** Arguments put before `serve` (e.g. the script when `command` is an interpreter). */
  commandArgs?: readonly string[];
  /** Arguments put after `serve <model> --host 127.0.0.1 --port <P>`. */
  args?: readonly string[];
  /** The model vLLM serves: a Hugging Face id or a local path; also the `model` of every request. */
  model: string;
  /** Port to serve on; 0 picks a free one at each start. */
  port?: number;
  /** How long one start may take until `GET /health` answers 200, in ms. Default 600,000. */
  healthTimeoutMs?: number;
  /** How often `/metrics` is read, in ms. Default 1000. */
  metricsIntervalMs?: number;
  contextSize: number;
  capacity: number;
  /** Extra environment variables for the process. */
  env?: Record<string, string>;
  /** First restart delay, doubled after each failed start up to `restartMaxMs`. Default 500. */
  restartInitialMs?: number;
  /** Longest restart delay, in ms. Default 30,000. */
  restartMaxMs?: number;
  /** A process that stayed up this long resets the restart delay, in ms. Default 30,000. */
  restartResetMs?: number;
  /** Time between SIGTERM and SIGKILL when stopping the process, in ms. Default 10,000. */
  killTimeoutMs?: number;
  logger?: Logger;
}

/** `starting`: first start; `ready`: serving; `restarting`: the process died and a new one is on its way. */
/**
 * `checking`: a request failed as if the process were gone (connection refused
 * or reset, a 5xx) while it still counts as serving; nothing new is accepted
 * until its health check answers (back to `ready`) or it exits (`restarting`).
 */
export type VllmState = 'idle' | 'starting' | 'ready' | 'checking' | 'restarting' | 'closed';

interface Incarnation {
  child: ChildProcess;
  port: number;
  client: OpenAIEngine | null;
  /** Controllers of the generate calls running against this process. */
  inflight: Set<AbortController>;
  exited: Promise<void>;
  exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null;
  readyAt: number;
  /** Last lines of output, for error messages. */
  tail: string[];
}

const TAIL_LINES = 30;

/**
 * vLLM as an engine: the agent runs `vllm serve <model> --host 127.0.0.1
 * --port <P> <args...>` as a child process (in a process group of its own,
 * so vLLM's own worker processes stop with it), waits until `GET /health`
 * answers 200, and sends requests through the `openai` engine with
 * `continueFinalMessage` on. When the process exits on its own it is
 * restarted with exponential backoff; meanwhile `generate` rejects at once
 * with EngineUnavailableError, and calls in flight when it died reject with
 * it too. `/metrics` is read every `metricsIntervalMs` for `load()`.
 *
 * Events: `spawn` (pid, port), `ready` (pid, port), `exit` (code, signal),
 * `restart` (restarts, delayMs) when a restart is scheduled.
 */
export class VllmEngine extends EventEmitter implements Engine {
  readonly capacity: number;
  readonly contextSize: number;
  state: VllmState = 'idle';
  /** Processes started after the first one. */
  restarts = 0;
  /** The last metrics read; null before the first scrape and after a failed one. */
  metrics: VllmLoadMetrics | null = null;
  private cur: Incarnation | null = null;
  private failures = 0;
  private restartTimer: NodeJS.Timeout | null = null;
  private metricsTimer: NodeJS.Timeout | null = null;
  private scraping = false;
  private readonly o: Required<Omit<VllmEngineOptions, 'logger' | 'env'>> & Pick<VllmEngineOptions, 'logger' | 'env'>;
  private readonly onProcessExit = () => this.killGroup('SIGKILL');

  constructor(opts: VllmEngineOptions) {
    super();
    this.capacity = opts.capacity;
    this.contextSize = opts.contextSize;
    this.o = {
      command: opts.command ?? 'vllm',
      commandArgs: opts.commandArgs ?? [],
      args: opts.args ?? [],
      model: opts.model,
      port: opts.port ?? 0,
      healthTimeoutMs: opts.healthTimeoutMs ?? 600_000,
      metricsIntervalMs: opts.metricsIntervalMs ?? 1000,
      contextSize: opts.contextSize,
      capacity: opts.capacity,
      restartInitialMs: opts.restartInitialMs ?? 500,
      restartMaxMs: opts.restartMaxMs ?? 30_000,
      restartResetMs: opts.restartResetMs ?? 30_000,
      killTimeoutMs: opts.killTimeoutMs ?? 10_000,
      env: opts.env,
      logger: opts.logger,
    };
  }

  /** Whether close() was called (a method, so TypeScript does not narrow `state` across awaits). */
  get closed(): boolean {
    return this.state === 'closed';
  }

  /** Pid of the running process, or null. */
  get pid(): number | null {
    return this.cur && !this.cur.exitInfo ? (this.cur.child.pid ?? null) : null;
  }

  /** Port of the running process, or null. */
  get port(): number | null {
    return this.cur && !this.cur.exitInfo ? this.cur.port : null;
  }

  /** The model vLLM serves, also the `model` of every request. */
  get model(): string {
    return this.o.model;
  }

  /** The command line of the process for a port: `<command> <commandArgs...> serve <model> --host 127.0.0.1 --port <port> <args...>`. */
  commandLine(port: number): string[] {
    return [
      this.o.command,
      ...this.o.commandArgs,
      'serve',
      this.o.model,
      '--host',
      '127.0.0.1',
      '--port',
      String(port),
      ...this.o.args,
    ];
  }

  /** Runs the process and resolves once it is healthy; rejects (and stops it) when it exits or times out first. */
  async start(): Promise<void> {
    if (this.state !== 'idle') throw new EngineError(`vllm engine already ${this.state}`);
    this.state = 'starting';
    process.on('exit', this.onProcessExit);
    try {
      await this.launch();
    } catch (err) {
      if (!this.closed) this.state = 'idle';
      process.off('exit', this.onProcessExit);
      throw err;
    }
  }

  /** Spawns one process and waits until it is healthy. */
  private async launch(): Promise<void> {
    const port = this.o.port || (await freePort());
    if (this.closed) throw new EngineUnavailableError('vllm engine closed');
    const [command, ...argv] = this.commandLine(port);
    const child = spawn(command!, argv, {
      env: { ...process.env, ...this.o.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const inc: Incarnation = {
      child,
      port,
      client: null,
      inflight: new Set(),
      exitInfo: null,
      readyAt: 0,
      tail: [],
      exited: null as unknown as Promise<void>,
    };
    let spawnError: NodeJS.ErrnoException | null = null;
    const outputDone = Promise.all([once(child.stdout!, 'close'), once(child.stderr!, 'close')]).catch(() => {});
    inc.exited = new Promise<void>((resolve) => {
      child.once('error', (err: NodeJS.ErrnoException) => {
        spawnError = err;
        if (child.pid === undefined) {
          inc.exitInfo = { code: null, signal: null };
          resolve();
        }
      });
      child.once('exit', (code, signal) => {
        inc.exitInfo = { code, signal };
        resolve();
      });
    });
    for (const stream of [child.stdout!, child.stderr!]) {
      createInterface({ input: stream }).on('line', (line) => {
        inc.tail.push(line);
        if (inc.tail.length > TAIL_LINES) inc.tail.shift();
        this.o.logger?.debug({ engine: 'vllm', pid: child.pid, out: line }, 'vllm output');
      });
    }
    this.cur = inc;
    void inc.exited.then(() => this.onExit(inc));
    if (child.pid !== undefined) {
      this.o.logger?.info({ engine: 'vllm', pid: child.pid, port, argv: [command, ...argv] }, 'vllm process started');
      this.emit('spawn', { pid: child.pid, port });
    }

    const healthy = await this.waitHealthy(inc);
    if (!healthy) {
      if (!inc.exitInfo) {
        await this.stopProcess(inc);
        if (this.closed) throw new EngineUnavailableError('vllm engine closed during start');
        throw new EngineUnavailableError(
          `vllm did not become healthy within ${this.o.healthTimeoutMs} ms (raise healthTimeoutMs for large models)`,
        );
      }
      const err = spawnError as NodeJS.ErrnoException | null;
      if (err?.code === 'ENOENT') {
        throw new ConfigError(`cannot run ${this.o.command}: command not found (install vLLM or set engine.command)`);
      }
      if (err) throw new EngineUnavailableError(`cannot run ${this.o.command}: ${err.message}`);
      // Let the last lines of output arrive (bounded: a surviving grandchild may hold the pipes open).
      await Promise.race([outputDone, new Promise((r) => setTimeout(r, 500).unref())]);
      const { code, signal } = inc.exitInfo;
      throw new EngineUnavailableError(
        `vllm exited during startup (code ${code}, signal ${signal}); last output:\n${inc.tail.join('\n')}`,
      );
    }
    inc.client = new OpenAIEngine({
      baseUrl: `http://127.0.0.1:${port}/v1`,
      model: this.o.model,
      continueFinalMessage: true,
      contextSize: this.contextSize,
      capacity: this.capacity,
    });
    inc.readyAt = Date.now();
    this.state = 'ready';
    this.o.logger?.info({ engine: 'vllm', pid: child.pid, port, restarts: this.restarts }, 'vllm ready');
    this.emit('ready', { pid: child.pid, port });
    this.startMetrics(inc);
  }

  /** Polls `/health` with backoff until 200; false when the process exits, the engine closes, or time runs out. */
  private async waitHealthy(inc: Incarnation): Promise<boolean> {
    const deadline = Date.now() + this.o.healthTimeoutMs;
    let delay = 50;
    const exited = inc.exited.then(() => 'exited' as const);
    while (!inc.exitInfo && !this.closed) {
      try {
        const res = await fetch(`http://127.0.0.1:${inc.port}/health`, { signal: AbortSignal.timeout(2000) });
        await res.arrayBuffer();
        if (res.status === 200) return !inc.exitInfo && !this.closed;
      } catch {
        // not listening yet
      }
      const left = deadline - Date.now();
      if (left <= 0) return false;
      let timer: NodeJS.Timeout | undefined;
      const wait = new Promise<'waited'>((resolve) => (timer = setTimeout(() => resolve('waited'), Math.min(delay, left))));
      await Promise.race([wait, exited]);
      clearTimeout(timer);
      delay = Math.min(delay * 2, 1000);
    }
    return false;
  }

  private startMetrics(inc: Incarnation): void {
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    void this.scrape(inc);
    this.metricsTimer = setInterval(() => void this.scrape(inc), this.o.metricsIntervalMs);
    this.metricsTimer.unref();
  }

  /** Reads `/metrics` once. */
  async scrape(inc: Incarnation | null = this.cur): Promise<VllmLoadMetrics | null> {
    if (!inc || inc !== this.cur || inc.exitInfo || this.scraping) return this.metrics;
    this.scraping = true;
    try {
      const res = await fetch(`http://127.0.0.1:${inc.port}/metrics`, { signal: AbortSignal.timeout(5000) });
      const text = await res.text();
      if (inc !== this.cur) return this.metrics;
      this.metrics = res.ok ? vllmLoadMetrics(parsePrometheusText(text)) : null;
    } catch {
      if (inc === this.cur) this.metrics = null;
    } finally {
      this.scraping = false;
    }
    this.emit('metrics', this.metrics);
    return this.metrics;
  }

  /**
   * max(KV-cache use, (running + waiting) / capacity), from the last read of
   * `/metrics`; null before the first one. 1 while the process is down.
   */
  load(): number | null {
    // Not serving (restarting, or a new process still starting): full, so the agent claims nothing.
    if (this.state !== 'ready') return 1;
    if (!this.metrics) return null;
    return vllmLoad(this.metrics, this.capacity);
  }

  async generate(params: JobParams, onText: TextSink, signal: AbortSignal, resume?: Resume): Promise<GenerateResult> {
    if (signal.aborted) throw new AbortError();
    const inc = this.cur;
    if (this.state !== 'ready' || !inc?.client || inc.exitInfo) {
      throw new EngineUnavailableError(`vllm is not serving (${this.state})`);
    }
    const ctl = new AbortController();
    const onAbort = () => ctl.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    inc.inflight.add(ctl);
    try {
      return await inc.client.generate(params, onText, ctl.signal, resume);
    } catch (err) {
      if (signal.aborted) throw new AbortError();
      if (err instanceof AbortError || inc.exitInfo) {
        // Aborted by the process's death, not by the caller.
        throw new EngineUnavailableError(`the vllm process exited during the request (${describeExit(inc)})`);
      }
      // The socket can break before the process's exit is seen: accept nothing more until it is checked,
      // or every request handed back and claimed again in between fails too and uses up an attempt.
      if (err instanceof EngineUnavailableError && inc === this.cur && this.state === 'ready') this.check(inc, err);
      throw err;
    } finally {
      inc.inflight.delete(ctl);
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Holds claims (state `checking`) until the process answers its health check; kills it if it does not in time. */
  private check(inc: Incarnation, err: Error): void {
    this.state = 'checking';
    this.o.logger?.warn({ engine: 'vllm', pid: inc.child.pid, err: err.message }, 'vllm request failed; checking the process');
    void this.waitHealthy(inc).then((healthy) => {
      // Exited meanwhile (onExit restarts it) or closed: nothing to do here.
      if (inc !== this.cur || this.state !== 'checking') return;
      this.emit('check', { pid: inc.child.pid, healthy });
      if (healthy) {
        this.state = 'ready';
        this.o.logger?.info({ engine: 'vllm', pid: inc.child.pid }, 'vllm process healthy again');
        return;
      }
      this.o.logger?.error({ engine: 'vllm', pid: inc.child.pid }, 'vllm process does not answer its health check; killing it');
      this.killGroup('SIGKILL', inc);
    });
  }

  private onExit(inc: Incarnation): void {
    const info = inc.exitInfo!;
    // vLLM's own worker processes may outlive the main one (and hold GPU memory): end the whole group.
    if (inc.child.pid !== undefined) {
      try {
        process.kill(-inc.child.pid, 'SIGKILL');
      } catch {
        // the group is gone already
      }
    }
    for (const ctl of inc.inflight) ctl.abort();
    void inc.client?.close();
    // Only a process that was serving, or a restart attempt, leads to a restart; not a first start, not close().
    const restart = inc === this.cur && (this.state === 'ready' || this.state === 'checking' || this.state === 'restarting');
    if (restart) {
      if (this.metricsTimer) clearInterval(this.metricsTimer);
      this.metricsTimer = null;
      this.metrics = null;
      if (this.state === 'ready' || this.state === 'checking') {
        this.o.logger?.warn(
          { engine: 'vllm', pid: inc.child.pid, code: info.code, signal: info.signal, tail: inc.tail.slice(-10) },
          'vllm process exited',
        );
        if (Date.now() - inc.readyAt >= this.o.restartResetMs) this.failures = 0;
      }
      this.state = 'restarting';
    }
    this.emit('exit', { pid: inc.child.pid, code: info.code, signal: info.signal });
    if (restart) this.scheduleRestart();
  }

  private scheduleRestart(): void {
    if (this.closed) return;
    const delayMs = Math.min(this.o.restartMaxMs, this.o.restartInitialMs * 2 ** this.failures);
    this.failures++;
    this.restarts++;
    this.o.logger?.warn({ engine: 'vllm', restarts: this.restarts, delayMs }, 'restarting vllm');
    this.emit('restart', { restarts: this.restarts, delayMs });
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.closed) return;
      this.launch().catch((err: unknown) => {
        if (this.closed) return;
        this.o.logger?.error({ engine: 'vllm', err: (err as Error).message }, 'vllm restart failed');
        // A process that exited already scheduled the next attempt from onExit; one that timed out did not.
        if (!this.restartTimer) this.scheduleRestart();
      });
    }, delayMs);
  }

  /** Signals the process group (the process and vLLM's own workers). */
  private killGroup(signal: NodeJS.Signals, inc: Incarnation | null = this.cur): void {
    const pid = inc?.child.pid;
    if (!inc || pid === undefined || inc.exitInfo) return;
    try {
      process.kill(-pid, signal);
    } catch {
      try {
        inc.child.kill(signal);
      } catch {
        // already gone
      }
    }
  }

  /** SIGTERM, then SIGKILL after `killTimeoutMs`; resolves when the process has exited. */
  private async stopProcess(inc: Incarnation): Promise<void> {
    if (inc.exitInfo) return;
    this.killGroup('SIGTERM', inc);
    const t = setTimeout(() => {
      this.o.logger?.warn({ engine: 'vllm', pid: inc.child.pid }, 'vllm did not stop on SIGTERM; killing it');
      this.killGroup('SIGKILL', inc);
    }, this.o.killTimeoutMs);
    await inc.exited;
    clearTimeout(t);
  }

  /** Stops the process (and any restart) and waits until it has exited. */
  async close(): Promise<void> {
    const was = this.state;
    this.state = 'closed';
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = null;
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    this.metricsTimer = null;
    const inc = this.cur;
    if (inc) {
      for (const ctl of inc.inflight) ctl.abort();
      await this.stopProcess(inc);
      await inc.client?.close();
    }
    process.off('exit', this.onProcessExit);
    if (was !== 'closed') this.o.logger?.info({ engine: 'vllm' }, 'vllm stopped');
  }
}

function describeExit(inc: Incarnation): string {
  return inc.exitInfo ? `code ${inc.exitInfo.code}, signal ${inc.exitInfo.signal}` : 'connection lost';
}
