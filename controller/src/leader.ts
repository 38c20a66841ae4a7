import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { scripts, type Keys, type Logger, type Redis } from '@llmux/shared';

export interface LeaseOptions {
  redis: Redis;
  keys: Keys;
  /** This controller's id. */
  id: string;
  /** Where this controller's admin API answers, published with the lease. */
  adminAddress: string | null;
  /** Lease TTL. A standby takes over at most this long after the leader stops renewing. */
  ttlMs: number;
  logger: Logger;
}

/**
 * Leader election through one Redis key: `SET NX PX` to acquire, a Lua
 * compare-and-extend to renew (only the holder can), compare-and-delete to
 * release. Renewed every third of the TTL; a leader that fails to renew in
 * time steps down before a standby can take over, so two never act at once.
 * Emits `elected` and `deposed`.
 */
export class LeaderLease extends EventEmitter {
  private leading = false;
  private timer: NodeJS.Timeout | null = null;
  private readonly token: string;
  /** When the lease we hold is sure to be ours until (local clock). */
  private validUntil = 0;

  constructor(private readonly o: LeaseOptions) {
    super();
    this.token = `${o.id} ${o.adminAddress ?? '-'} ${randomBytes(4).toString('hex')}`;
  }

  get isLeader(): boolean {
    return this.leading && Date.now() < this.validUntil;
  }

  start(): void {
    void this.tick();
    this.timer = setInterval(() => void this.tick(), Math.max(50, Math.floor(this.o.ttlMs / 3)));
  }

  private async tick(): Promise<void> {
    const key = this.o.keys.controllerLease();
    const started = Date.now();
    try {
      if (this.leading) {
        const ok = Number(await scripts.leaseRenew.run(this.o.redis, [key], [this.token, this.o.ttlMs])) === 1;
        if (ok) this.validUntil = started + this.o.ttlMs;
        else this.stepDown('lease lost to another controller');
      } else {
        const ok = (await this.o.redis.set(key, this.token, 'PX', this.o.ttlMs, 'NX')) === 'OK';
        if (ok) {
          this.leading = true;
          this.validUntil = started + this.o.ttlMs;
          this.o.logger.info({ id: this.o.id }, 'elected leader');
          this.emit('elected');
        }
      }
    } catch (err) {
      this.o.logger.warn({ err }, 'lease check failed');
    }
    // Could not renew in time (Redis unreachable): stop acting before anyone else may start.
    if (this.leading && Date.now() >= this.validUntil) this.stepDown('lease expired');
  }

  private stepDown(reason: string): void {
    if (!this.leading) return;
    this.leading = false;
    this.o.logger.warn({ id: this.o.id, reason }, 'stepped down');
    this.emit('deposed', reason);
  }

  /** The current leader's id and admin address, if any. */
  current(): Promise<{ id: string; adminAddress: string | null } | null> {
    return currentLeader(this.o.redis, this.o.keys);
  }

  /** Stops renewing and releases the lease if held. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.leading) {
      this.leading = false;
      await scripts.leaseRelease.run(this.o.redis, [this.o.keys.controllerLease()], [this.token]).catch(() => {});
    }
  }
}

/** Reads the lease: the leader's id and admin address (`<id> <address or -> <nonce>`), null when none leads. */
export async function currentLeader(redis: Redis, keys: Keys): Promise<{ id: string; adminAddress: string | null } | null> {
  const v = await redis.get(keys.controllerLease());
  if (!v) return null;
  const [id, addr] = v.split(' ');
  return { id: id!, adminAddress: addr && addr !== '-' ? addr : null };
}
