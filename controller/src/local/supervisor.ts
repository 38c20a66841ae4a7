import { fork, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { backoffMs, deferred, type Deferred, type Logger } from '@llmux/shared';

export interface SupervisedOptions {
  /** Name in logs, e.g. `gateway` or `worker-1`. */
  name: string;
  /** The entry module to fork. */
  module: string;
  env: NodeJS.ProcessEnv;
  logger: Logger;
  /** How long stop() waits after SIGTERM before SIGKILL. Default 35000 ms. */
  killAfterMs?: number;
  /** A run at least this long resets the backoff. Default 30000 ms. */
  stableAfterMs?: number;
  /** This many exits within `crashLoopWindowMs` is a crash loop: restarts stop. Default 5. */
  crashLoopExits?: number;
  /** Default 60000 ms. */
  crashLoopWindowMs?: number;
}

export type ChildState = 'starting' | 'ready' | 'backoff' | 'crashloop' | 'stopping' | 'stopped';

/** The message a child sends over IPC when it is ready to serve. */
export interface ReadyMessage {
  type: 'ready';
  component: string;
  [k: string]: unknown;
}

/**
 * Runs one child process and restarts it with exponential backoff when it
 * exits on its own. The child reports readiness over IPC; it exits when the
 * IPC channel closes, so it does not outlive this process. Emits `state`,
 * `ready`, `exit` (an exit not asked for by stop()), `restart` (a restart is
 * scheduled after such an exit) and `crash-loop`.
 */
export class Supervised extends EventEmitter {
  state: ChildState = 'stopped';
  restarts = 0;
  lastExit: { code: number | null; signal: string | null; at: number } | null = null;
  private child: ChildProcess | null = null;
  private attempt = 0;
  private startedAt = 0;
  private restartTimer: NodeJS.Timeout | null = null;
  private firstReady: Deferred<ReadyMessage> = deferred();
  private stopping: Promise<void> | null = null;
  /** Recent exit times, for crash-loop detection. */
  private exits: number[] = [];

  constructor(private readonly opts: SupervisedOptions) {
    super();
    this.firstReady.promise.catch(() => {});
  }

  /** Resolves with the child's first ready message; rejects if stopped first. */
  get ready(): Promise<ReadyMessage> {
    return this.firstReady.promise;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  private setState(state: ChildState): void {
    this.state = state;
    this.emit('state', state);
  }

  start(): void {
    const child = fork(this.opts.module, [], {
      env: this.opts.env,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: ['--enable-source-maps'],
    });
    this.child = child;
    this.startedAt = Date.now();
    this.setState('starting');
    child.on('message', (msg: unknown) => {
      const m = msg as ReadyMessage | null;
      if (m?.type === 'ready') {
        this.setState('ready');
        this.firstReady.resolve(m);
        this.emit('ready', m);
      }
    });
    child.on('error', (err) => this.opts.logger.error({ err, child: this.opts.name }, 'child process error'));
    child.once('exit', (code, signal) => this.onExit(child, code, signal));
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (child !== this.child) return;
    this.child = null;
    this.lastExit = { code, signal, at: Date.now() };
    if (this.stopping) {
      this.setState('stopped');
      return;
    }
    this.emit('exit', { code, signal });
    const now = Date.now();
    const windowMs = this.opts.crashLoopWindowMs ?? 60_000;
    this.exits = [...this.exits.filter((t) => now - t < windowMs), now];
    if (this.exits.length >= (this.opts.crashLoopExits ?? 5)) {
      // Restarting again would only spin: stop, say so, and wait for an operator (restart()).
      this.opts.logger.error(
        { child: this.opts.name, exits: this.exits.length, windowMs, code, signal },
        'crash loop: not restarting',
      );
      this.setState('crashloop');
      this.emit('crash-loop', { exits: this.exits.length, windowMs });
      return;
    }
    if (now - this.startedAt > (this.opts.stableAfterMs ?? 30_000)) this.attempt = 0;
    const wait = backoffMs(this.attempt++, 500, 30_000);
    this.restarts++;
    this.opts.logger.error({ child: this.opts.name, code, signal, restartInMs: wait }, 'child exited; restarting');
    this.emit('restart', { code, signal, restartInMs: wait });
    this.setState('backoff');
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      this.start();
    }, wait);
  }

  /**
   * Restarts the child now: a running one gets SIGTERM (it drains) and comes
   * back through the usual restart; a crash-looping or backing-off one starts
   * at once. Clears the crash-loop record.
   */
  restart(): void {
    if (this.stopping) return;
    this.exits = [];
    this.attempt = 0;
    if (this.child) {
      this.child.kill('SIGTERM');
      return;
    }
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = null;
    this.start();
  }

  /** Sends a signal to the child, if running (SIGKILL for a hung one: the supervisor restarts it). */
  kill(signal: NodeJS.Signals): void {
    this.child?.kill(signal);
  }

  /** SIGTERM, then SIGKILL after `killAfterMs`. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.firstReady.reject(new Error(`${this.opts.name} stopped before it was ready`));
    const child = this.child;
    if (!child) {
      this.setState('stopped');
      return;
    }
    this.setState('stopping');
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), this.opts.killAfterMs ?? 35_000);
    await exited;
    clearTimeout(t);
  }
}
