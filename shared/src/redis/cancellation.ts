import type { Redis } from 'ioredis';
import type { Keys } from './keys.js';

/**
 * Request cancellation. The gateway marks a request cancelled (a key with a
 * TTL, for a worker that has not started it yet) and publishes its id (for a
 * worker running it now, which aborts the engine call).
 */
export class Cancellation {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly ttlMs = 10 * 60_000,
  ) {}

  async cancel(model: string, rid: string): Promise<void> {
    await Promise.all([
      this.redis.set(this.keys.cancel(model, rid), '1', 'PX', this.ttlMs),
      this.redis.publish(this.keys.cancelChannel(), rid),
    ]);
  }

  async isCancelled(model: string, rid: string): Promise<boolean> {
    return (await this.redis.exists(this.keys.cancel(model, rid))) === 1;
  }

  /** Subscribes `sub` (a connection used only for this) to cancellations. */
  async subscribe(sub: Redis, onCancel: (rid: string) => void): Promise<void> {
    const channel = this.keys.cancelChannel();
    sub.on('message', (ch: string, message: string) => {
      if (ch === channel) onCancel(message);
    });
    await sub.subscribe(channel);
  }
}
