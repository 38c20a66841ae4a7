import { fork, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { deferred } from '@llmux/shared';
import { parsePrometheusText, vllmLoadMetrics, type VllmLoadMetrics } from '@llmux/worker-agent';

const require = createRequire(import.meta.url);

/** The sim server's entry module (worker-agent/dist/sim-server/main.js). */
export const SIM_SERVER_MAIN = require.resolve('@llmux/worker-agent').replace(/index\.js$/, 'sim-server/main.js');

/**
 * A `vllm` engine whose process is the sim server (5 ms to the first token,
 * 10 ms between tokens): the real process management of the vllm engine,
 * without a GPU.
 */
export function vllmOnSimServer() {
  return {
    type: 'vllm',
    command: process.execPath,
    commandArgs: [SIM_SERVER_MAIN],
    args: ['--ttft-ms', '5', '--itl-ms', '10'],
    model: 'org/sim-model',
    healthTimeoutMs: 20_000,
    metricsIntervalMs: 50,
  };
}

/** One JSON event line of `--log-requests`. */
export type SimEvent = { event: string; id?: string; state?: string; finish?: string; tokens?: number };

export { rejection, story } from './engines.js';
export { alive } from './processes.js';

/**
 * A real sim-server child process, started with `--log-requests` so a test
 * can wait on its events (connections, admissions, request ends) instead of
 * sleeping.
 */
export class SimServerProcess {
  readonly child: ChildProcess;
  readonly events: SimEvent[] = [];
  readonly stderr: string[] = [];
  url = '';
  private readonly waiters: { match: (e: SimEvent) => boolean; resolve: (e: SimEvent) => void }[] = [];
  private readonly exited: Promise<void>;

  private constructor(args: string[]) {
    this.child = fork(SIM_SERVER_MAIN, [...args, '--log-requests'], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    const ready = deferred<string>();
    ready.promise.catch(() => {});
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        ready.reject(new Error(`sim-server exited (code ${code}, signal ${signal}): ${this.stderr.join('\n')}`));
        resolve();
      });
    });
    createInterface({ input: this.child.stderr! }).on('line', (l) => this.stderr.push(l));
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      const m = /^sim-server listening on (http:\/\/\S+)$/.exec(line);
      if (m) return ready.resolve(m[1]!);
      const e = JSON.parse(line) as SimEvent;
      this.events.push(e);
      for (let i = this.waiters.length - 1; i >= 0; i--) {
        if (this.waiters[i]!.match(e)) this.waiters.splice(i, 1)[0]!.resolve(e);
      }
    });
    this.readyP = ready.promise;
  }

  private readonly readyP: Promise<string>;

  /** Forks the server with `args` and resolves once it printed its ready line. */
  static async start(args: string[]): Promise<SimServerProcess> {
    const p = new SimServerProcess(['--port', '0', ...args]);
    p.url = await p.readyP;
    return p;
  }

  /** Resolves with the `count`-th event (counting past ones) that matches. */
  async waitFor(match: (e: SimEvent) => boolean, count = 1): Promise<SimEvent[]> {
    const seen = this.events.filter(match);
    while (seen.length < count) {
      seen.push(
        await new Promise<SimEvent>((resolve) => this.waiters.push({ match: (e) => match(e) && !seen.includes(e), resolve })),
      );
    }
    return seen.slice(0, count);
  }

  count(match: (e: SimEvent) => boolean): number {
    return this.events.filter(match).length;
  }

  async metrics(): Promise<VllmLoadMetrics> {
    const res = await fetch(`${this.url}/metrics`);
    return vllmLoadMetrics(parsePrometheusText(await res.text()));
  }

  get pid(): number {
    return this.child.pid!;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
}
