import { ApiError, isTransientRedisError, ServiceUnavailableError, type Logger, type Redis } from '@llmux/shared';

export interface RedisCircuitOptions {
  /**
   * Longest one guarded Redis operation may take before it counts as a
   * failure. Default 1000 ms. An operation whose connection keeps receiving
   * answers meanwhile (Redis is up, the command waits behind others) may
   * take up to 5 times this.
   */
  timeoutMs?: number;
  /** While open with the connection up (a timeout tripped it), how often a PING checks Redis again. Default 500 ms. */
  probeMs?: number;
  /** Where guarded operations are timed, by name (`llmux_redis_command_duration_seconds`). */
  latency?: LatencyHistogram;
}

/** The part of a prom-client histogram with an `op` label that the circuit uses. */
export interface LatencyHistogram {
  labels(op: string): { observe(seconds: number): void };
}

/** How many times its limit a guarded operation may wait while Redis keeps answering earlier commands. */
const MAX_BEHIND = 5;

/** A guarded operation took longer than the circuit allows. */
export class RedisTimeoutError extends Error {
  override name = 'RedisTimeoutError';
}

/**
 * Whether the admission path may use Redis. It is open (requests get a 503 at
 * once, without touching Redis) while the command connection is not ready, and
 * after a guarded operation failed on the connection or took longer than
 * `timeoutMs`, until a PING answers again. The connection's own reconnects
 * close it: nothing has to be restarted when Redis comes back.
 */
export class RedisCircuit {
  private tripped = false;
  /** The connection closed and has not been ready since (for logging). */
  private down = false;
  private probeTimer: NodeJS.Timeout | null = null;
  private closed = false;
  /** When the command connection last received bytes (`performance.now()`), and which socket is watched. */
  private lastData = -1;
  private watched: NodeJS.EventEmitter | null = null;
  private readonly timeoutMs: number;
  private readonly probeMs: number;
  /** Histogram children by operation name (a fixed set, written in the code). */
  private readonly timers = new Map<string, { observe(seconds: number): void }>();

  constructor(
    private readonly redis: Redis,
    private readonly log: Logger,
    private readonly opts: RedisCircuitOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? 1000;
    this.probeMs = opts.probeMs ?? 500;
    this.watchData();
    redis.on('ready', () => {
      this.watchData();
      if (this.down) this.log.info('redis connection back; admitting requests again');
      this.down = false;
      if (this.tripped) this.reset('connection ready');
    });
    redis.on('close', () => {
      if (this.closed || this.down) return;
      this.down = true;
      this.log.warn('redis connection lost; requests get 503 until it is back');
    });
  }

  /**
   * Notes when the connection last received bytes (answers to any command):
   * a guarded operation that waits past its limit while answers keep coming
   * is behind other commands, not facing a Redis that is gone. A new socket
   * comes with every reconnect. (A cluster client has no single socket: there
   * the limit applies as it is.)
   */
  private watchData(): void {
    const stream = (this.redis as { stream?: NodeJS.EventEmitter }).stream;
    if (!stream || stream === this.watched) return;
    this.watched = stream;
    stream.on('data', () => (this.lastData = performance.now()));
  }

  /** True while requests can be admitted. */
  get isClosed(): boolean {
    return this.redis.status === 'ready' && !this.tripped;
  }

  /** Throws a 503 at once while the circuit is open. */
  check(): void {
    if (!this.isClosed) throw new ServiceUnavailableError('Redis is unreachable; retry shortly.');
  }

  /**
   * Runs one admission-path Redis operation with a time bound. A connection
   * failure or a timeout trips the circuit and becomes a 503; API errors
   * (such as a 429) pass through untouched. `what` names the operation in
   * errors and in the latency histogram, so it must be a fixed string; with
   * `timed` false the operation is not timed here (it may not reach Redis,
   * and is timed where it does).
   */
  async guard<T>(op: () => Promise<T>, what: string, timed = true): Promise<T> {
    this.check();
    const t0 = performance.now();
    const started = timed && this.opts.latency ? t0 : -1;
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const timeout = new Promise<never>((_, reject) => {
      // The time limit measures Redis, not this process: a loop too busy to read the answer runs the
      // timer late, before reading sockets, so the answer that already came is read first (setImmediate
      // runs after the poll phase); and while the connection keeps receiving answers to earlier
      // commands Redis is up, only behind, so the wait goes on, up to MAX_BEHIND times the limit.
      let since = t0;
      const expire = () =>
        setImmediate(() => {
          if (done) return;
          const now = performance.now();
          if (this.lastData > since && now - t0 < this.timeoutMs * MAX_BEHIND) {
            since = now;
            timer = setTimeout(expire, this.timeoutMs);
            return;
          }
          reject(new RedisTimeoutError(`${what} took longer than ${Math.round(now - t0)} ms`));
        });
      timer = setTimeout(expire, this.timeoutMs);
    });
    try {
      return await Promise.race([op(), timeout]);
    } catch (err) {
      if (err instanceof ApiError) throw err;
      if (err instanceof RedisTimeoutError || isTransientRedisError(err) || this.redis.status !== 'ready') {
        this.trip(err, what);
        throw new ServiceUnavailableError('Redis is unreachable; retry shortly.');
      }
      throw err;
    } finally {
      done = true;
      clearTimeout(timer);
      if (started >= 0) this.timer(what).observe((performance.now() - started) / 1000);
    }
  }

  private timer(what: string): { observe(seconds: number): void } {
    let t = this.timers.get(what);
    if (!t) {
      t = this.opts.latency!.labels(what);
      this.timers.set(what, t);
    }
    return t;
  }

  /** Opens the circuit; probes until Redis answers again. */
  trip(err: unknown, what: string): void {
    if (this.closed) return;
    if (!this.tripped) this.log.warn({ err: (err as Error)?.message ?? String(err), what }, 'redis circuit open');
    this.tripped = true;
    this.probeTimer ??= setInterval(() => void this.probe(), this.probeMs);
    this.probeTimer.unref();
  }

  /** A successful round trip seen elsewhere (the readiness check) closes the circuit too. */
  recordSuccess(): void {
    if (this.tripped && this.redis.status === 'ready') this.reset('redis answered');
  }

  private async probe(): Promise<void> {
    if (this.redis.status !== 'ready') return; // the connection's 'ready' event will reset
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.redis.ping(),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new RedisTimeoutError('ping')), this.timeoutMs))),
      ]);
      this.reset('ping answered');
    } catch {
      // still open
    } finally {
      clearTimeout(timer);
    }
  }

  private reset(why: string): void {
    if (this.probeTimer) clearInterval(this.probeTimer);
    this.probeTimer = null;
    if (this.tripped) this.log.info({ why }, 'redis circuit closed');
    this.tripped = false;
  }

  close(): void {
    this.closed = true;
    if (this.probeTimer) clearInterval(this.probeTimer);
    this.probeTimer = null;
  }
}
