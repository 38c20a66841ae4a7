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
  /** Probes the child while it is ready; a child that fails it too often is killed (SIGKILL) and restarted. */
  health?: HealthCheck;
}

/**
 * A liveness probe of a ready child. A process that is hung (stopped, its
 * event loop stuck) would not act on SIGTERM, so one that fails `failures`
 * probes in a row gets SIGKILL, and the usual restart brings a fresh one.
 */
export interface HealthCheck {
  /**
   * Resolves when the child answers; rejects with an Error whose message is a
   * short reason (`timeout`, `ECONNREFUSED`, `status 500`). Gets the child's
   * ready message (e.g. the gateway's URL). Must settle within about `intervalMs`.
   */
  probe: (ready: ReadyMessage) => Promise<void>;
  /** Time between the end of one probe and the start of the next. */
  intervalMs: number;
  /** Consecutive failures that make the child hung. */
  failures: number;
}

/** How a run ended, as process records and logs show it: `exit code 1`, `signal SIGKILL`. */
export function describeExit(code: number | null, signal: string | null): string {
  return signal ? `signal ${signal}` : `exit code ${code}`;
}

/** `3 x timeout`, or `3 x timeout/ECONNREFUSED` when the failures differ. */
function summarize(reasons: string[]): string {
  return `${reasons.length} x ${[...new Set(reasons)].join('/')}`;
}

/** What a supervised process reports about itself (the process records in Redis). */
export interface SupervisedSnapshot {
  pid: number | null;
  state: ChildState;
  /** Restarts since this supervisor started. */
  restarts: number;
  /** How the last run ended (`exit code 1`, `signal SIGKILL`, `health check failed (3 x timeout)`); null before any exit. */
  lastExit: string | null;
  /** When it ended, ms since the epoch. */
  lastExitAt: number | null;
  /** When the running process was started, ms since the epoch; null while none runs. */
  startedAt: number | null;
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
 * IPC channel closes, so it does not outlive this process. With a health
 * check, a ready child that stops answering is killed (SIGKILL) and restarted
 * the same way. Emits `state`, `ready`, `exit` (an exit not asked for by
 * stop(), with `reason`), `restart` (a restart is scheduled after such an
 * exit), `unhealthy` (the health check is about to kill it) and `crash-loop`.
 */
export class Supervised extends EventEmitter {
  state: ChildState = 'stopped';
  restarts = 0;
  lastExit: { code: number | null; signal: string | null; at: number; reason: string } | null = null;
  private child: ChildProcess | null = null;
  /** Why this supervisor killed the running child, when it did (reported instead of `signal SIGKILL`). */
  private killReason: { child: ChildProcess; reason: string } | null = null;
  private healthTimer: NodeJS.Timeout | null = null;
  /** Bumped whenever probing stops, so a probe still in flight does not carry on an old loop. */
  private healthRound = 0;
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

  /** When the running process was started; null while none runs. */
  get startedAtMs(): number | null {
    return this.child ? this.startedAt : null;
  }

  snapshot(): SupervisedSnapshot {
    return {
      pid: this.child?.pid ?? null,
      state: this.state,
      restarts: this.restarts,
      lastExit: this.lastExit?.reason ?? null,
      lastExitAt: this.lastExit?.at ?? null,
      startedAt: this.startedAtMs,
    };
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
      if (m?.type === 'ready' && child === this.child) {
        this.setState('ready');
        this.firstReady.resolve(m);
        this.emit('ready', m);
        this.watchHealth(child, m);
      }
    });
    child.on('error', (err) => this.opts.logger.error({ err, child: this.opts.name }, 'child process error'));
    child.once('exit', (code, signal) => this.onExit(child, code, signal));
  }

  /**
   * Probes a ready child every `intervalMs`; after `failures` failures in a
   * row it kills the child with SIGKILL (a hung process would ignore
   * SIGTERM), and onExit restarts it as after any other exit.
   */
  private watchHealth(child: ChildProcess, ready: ReadyMessage): void {
    const h = this.opts.health;
    if (!h) return;
    this.clearHealth();
    const round = this.healthRound;
    const failed: string[] = [];
    const current = () => round === this.healthRound && child === this.child && !this.stopping && this.state === 'ready';
    const tick = async () => {
      this.healthTimer = null;
      if (!current()) return;
      try {
        await h.probe(ready);
        failed.length = 0;
      } catch (err) {
        if (!current()) return;
        failed.push((err as Error)?.message || String(err));
        const log = {
          child: this.opts.name,
          childPid: child.pid,
          failures: failed.length,
          of: h.failures,
          reason: failed.at(-1),
        };
        if (failed.length < h.failures) {
          this.opts.logger.warn(log, 'health check failed');
        } else {
          const reason = `health check failed (${summarize(failed)})`;
          this.opts.logger.error({ ...log, reason }, `${this.opts.name} is hung: ${reason}; killing it (SIGKILL) to restart it`);
          this.emit('unhealthy', { pid: child.pid, reason });
          this.killReason = { child, reason };
          child.kill('SIGKILL');
          return;
        }
      }
      if (current()) this.healthTimer = setTimeout(() => void tick(), h.intervalMs);
    };
    this.healthTimer = setTimeout(() => void tick(), h.intervalMs);
  }

  private clearHealth(): void {
    if (this.healthTimer) clearTimeout(this.healthTimer);
    this.healthTimer = null;
    this.healthRound++;
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (child !== this.child) return;
    this.child = null;
    this.clearHealth();
    const reason = this.killReason?.child === child ? this.killReason.reason : describeExit(code, signal);
    this.killReason = null;
    this.lastExit = { code, signal, at: Date.now(), reason };
    if (this.stopping) {
      this.setState('stopped');
      return;
    }
    this.emit('exit', { code, signal, reason });
    const now = Date.now();
    const windowMs = this.opts.crashLoopWindowMs ?? 60_000;
    this.exits = [...this.exits.filter((t) => now - t < windowMs), now];
    if (this.exits.length >= (this.opts.crashLoopExits ?? 5)) {
      // Restarting again would only spin: stop, say so, and wait for an operator (restart()).
      this.opts.logger.error(
        { child: this.opts.name, exits: this.exits.length, windowMs, code, signal, reason },
        'crash loop: not restarting',
      );
      this.setState('crashloop');
      this.emit('crash-loop', { exits: this.exits.length, windowMs });
      return;
    }
    if (now - this.startedAt > (this.opts.stableAfterMs ?? 30_000)) this.attempt = 0;
    const wait = backoffMs(this.attempt++, 500, 30_000);
    this.restarts++;
    this.opts.logger.error({ child: this.opts.name, code, signal, reason, restartInMs: wait }, 'child exited; restarting');
    this.emit('restart', { code, signal, reason, restartInMs: wait });
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

  /**
   * Sends a signal to the child, if running (SIGKILL for a hung one: the
   * supervisor restarts it). `reason` replaces `signal <name>` as the record
   * of how the run ended.
   */
  kill(signal: NodeJS.Signals, reason?: string): void {
    if (!this.child) return;
    if (reason) this.killReason = { child: this.child, reason };
    this.child.kill(signal);
  }

  /** SIGTERM, then SIGKILL after `killAfterMs`. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.clearHealth();
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
