import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { deferred } from '@llmux/shared';

const require = createRequire(import.meta.url);

/** Entry module of one of the project's processes. */
export function entryOf(pkg: '@llmux/gateway' | '@llmux/worker-agent' | '@llmux/controller'): string {
  return require.resolve(pkg).replace(/index\.js$/, 'main.js');
}

/** A parsed pino log line. */
export type LogLine = Record<string, unknown> & { msg?: string };

interface Waiter {
  match: (l: LogLine) => boolean;
  resolve: (l: LogLine) => void;
}

const children = new Set<TestProcess>();

/** Child processes started by tests and not yet exited. */
export function liveChildren(): TestProcess[] {
  return [...children].filter((c) => c.running);
}

/**
 * A real child process of the project, forked with IPC so it reports
 * readiness, with its JSON log lines captured so a test can wait for an event
 * instead of sleeping.
 */
export class TestProcess {
  readonly child: ChildProcess;
  readonly logs: LogLine[] = [];
  readonly stderr: string[] = [];
  private readonly waiters: Waiter[] = [];
  private readonly readyD = deferred<Record<string, unknown>>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  running = true;

  /** `detached`: lead a process group of its own, so a test can signal the group as a terminal would. */
  constructor(
    readonly name: string,
    module: string,
    env: NodeJS.ProcessEnv,
    opts: { detached?: boolean } = {},
  ) {
    this.child = fork(module, [], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      detached: opts.detached ?? false,
    });
    children.add(this);
    this.readyD.promise.catch(() => {});
    this.child.on('message', (m: unknown) => {
      const msg = m as { type?: string } | null;
      if (msg?.type === 'ready') this.readyD.resolve(msg as Record<string, unknown>);
    });
    createInterface({ input: this.child.stdout! }).on('line', (line) => this.onLine(line));
    createInterface({ input: this.child.stderr! }).on('line', (line) => this.stderr.push(line));
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.running = false;
        children.delete(this);
        this.readyD.reject(new Error(`${name} exited (code ${code}, signal ${signal}) before ready: ${this.stderr.join('\n')}`));
        resolve({ code, signal });
      });
    });
  }

  private onLine(line: string): void {
    let parsed: LogLine;
    try {
      parsed = JSON.parse(line) as LogLine;
    } catch {
      parsed = { msg: line };
    }
    this.logs.push(parsed);
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!;
      if (w.match(parsed)) {
        this.waiters.splice(i, 1);
        w.resolve(parsed);
      }
    }
  }

  /** Resolves with the IPC ready message. */
  ready(): Promise<Record<string, unknown>> {
    return this.readyD.promise;
  }

  /** Resolves with the first `count` log lines (past or future) that match. */
  async waitForLogs(match: (l: LogLine) => boolean, count: number): Promise<LogLine[]> {
    const seen = new Set<LogLine>(this.logs.filter(match));
    while (seen.size < count) {
      seen.add(await this.waitForLog((l) => match(l) && !seen.has(l)));
    }
    return [...seen].slice(0, count);
  }

  /** Resolves with the first log line (past or future) that matches. */
  waitForLog(match: (l: LogLine) => boolean): Promise<LogLine> {
    const hit = this.logs.find(match);
    if (hit) return Promise.resolve(hit);
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }

  get pid(): number {
    return this.child.pid!;
  }

  kill(signal: NodeJS.Signals): void {
    if (this.running) this.child.kill(signal);
  }

  /** SIGTERM and wait; SIGKILL if it has not exited within `ms`. */
  async stop(ms = 20_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), ms);
    await this.exited;
    clearTimeout(t);
  }
}

/** Whether `bin` is a command on the PATH. */
export function onPath(bin: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Whether a process with this pid exists (one we may not signal counts too). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
