import { EventEmitter } from 'node:events';
import type { Logger } from '@llmux/shared';
import { Supervised, type SupervisedSnapshot } from './supervisor.js';

export interface FleetOptions {
  /** The worker agent's entry module. */
  module: string;
  /** Environment every worker gets (Redis, prefix, log level…). */
  env: NodeJS.ProcessEnv;
  /** Prefix of worker ids: `<prefix>-<model>-<n>`. */
  idPrefix: string;
  logger: Logger;
  killAfterMs: number;
  crashLoopExits?: number;
  crashLoopWindowMs?: number;
}

interface Member {
  id: string;
  model: string;
  index: number;
  proc: Supervised;
}

/**
 * A local process as the controller records it in `<p>:controller:processes`
 * (field: the id): a worker agent of the fleet, or the gateway.
 */
export interface ProcessRecord extends SupervisedSnapshot {
  /** Absent in records written before gateways were recorded: a worker. */
  kind: 'worker' | 'gateway';
  /** A worker's id (`<controller id>-<model>-<n>`), or `<controller id>-gateway`. */
  id: string;
  /** The deployment a worker serves; null for the gateway. */
  model: string | null;
}

/** A worker id from a model name: ids allow letters, digits, `_`, `.`, `-`. */
const safe = (s: string) => s.replace(/[^A-Za-z0-9_.-]/g, '_');

/**
 * The worker agents this controller runs on its own machine, one supervised
 * process per replica of each model (WORKER_MODELS=<model>). Worker ids are
 * stable per slot (`<prefix>-<model>-<n>`), so a restarted worker takes back
 * what its previous run left pending. Emits `exit` (id, code, signal,
 * reason), `ready` (id), `restart` (id, reason: the supervisor restarts it),
 * `crash-loop` (id) and `change` (any member's state changed).
 */
export class LocalFleet extends EventEmitter {
  private readonly members = new Map<string, Member>();

  constructor(private readonly o: FleetOptions) {
    super();
  }

  /** Starts and stops workers so each model runs `desired` of them; extras drain and exit. */
  async reconcile(desired: ReadonlyMap<string, number>): Promise<void> {
    const stops: Promise<void>[] = [];
    for (const m of [...this.members.values()]) {
      const want = desired.get(m.model) ?? 0;
      if (m.index >= want) {
        this.members.delete(m.id);
        this.o.logger.info({ worker: m.id, model: m.model }, 'stopping worker (scaled down or model removed)');
        stops.push(m.proc.stop().then(() => void this.emit('change')));
      }
    }
    for (const [model, want] of desired) {
      for (let i = 0; i < want; i++) {
        const id = `${this.o.idPrefix}-${safe(model)}-${i}`;
        if (this.members.has(id)) continue;
        this.add(id, model, i);
      }
    }
    this.emit('change');
    await Promise.all(stops);
  }

  private add(id: string, model: string, index: number): void {
    const proc = new Supervised({
      name: id,
      module: this.o.module,
      env: { ...this.o.env, WORKER_ID: id, WORKER_MODELS: model },
      logger: this.o.logger,
      killAfterMs: this.o.killAfterMs,
      crashLoopExits: this.o.crashLoopExits,
      crashLoopWindowMs: this.o.crashLoopWindowMs,
    });
    const m: Member = { id, model, index, proc };
    this.members.set(id, m);
    proc.on('exit', (e: { code: number | null; signal: string | null; reason: string }) => {
      this.emit('exit', { id, model, ...e });
      this.emit('change');
    });
    proc.on('restart', (e: { reason: string }) => this.emit('restart', { id, model, reason: e.reason }));
    // Restarts, backoff and new pids reach the process table as they happen.
    proc.on('state', () => {
      if (this.members.get(id) === m) this.emit('change');
    });
    proc.on('ready', () => {
      this.emit('ready', { id, model });
      this.emit('change');
    });
    proc.on('crash-loop', () => {
      this.emit('crash-loop', { id, model });
      this.emit('change');
    });
    proc.start();
  }

  has(id: string): boolean {
    return this.members.has(id);
  }

  /** Restarts a worker (drains it first); also how an operator clears a crash loop. */
  restart(id: string): boolean {
    const m = this.members.get(id);
    if (!m) return false;
    m.proc.restart();
    return true;
  }

  /** Kills a worker that stopped answering; the supervisor restarts it. */
  killHung(id: string, reason = 'heartbeat lapsed (hung)'): boolean {
    const m = this.members.get(id);
    if (!m || m.proc.pid === undefined) return false;
    m.proc.kill('SIGKILL', reason);
    return true;
  }

  records(): ProcessRecord[] {
    return [...this.members.values()].map((m) => ({ kind: 'worker', id: m.id, model: m.model, ...m.proc.snapshot() }));
  }

  /** Stops every worker (each drains). */
  async stopAll(): Promise<void> {
    const all = [...this.members.values()];
    this.members.clear();
    await Promise.allSettled(all.map((m) => m.proc.stop()));
  }
}
