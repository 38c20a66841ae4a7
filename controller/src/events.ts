import type { Keys, Logger, Redis } from '@llmux/shared';
import { createBlockingRedis, type RedisTarget, type XReadReply } from '@llmux/shared';
import type { ClusterEvent, ClusterEventKind } from './api.js';

/** Cluster events kept in a capped Redis stream, so any controller (leader or standby) can watch them. */
export class EventLog {
  private readonly subscribers = new Set<(ev: ClusterEvent) => void>();
  private reader: Redis | null = null;
  private running = false;

  constructor(
    private readonly redis: Redis,
    private readonly redisTarget: RedisTarget,
    private readonly keys: Keys,
    private readonly logger: Logger,
  ) {}

  /** Records an event (and logs it). */
  record(kind: ClusterEventKind, subject: string, message: string): void {
    const ev: ClusterEvent = { kind, at: Date.now(), subject, message };
    this.logger.info({ event: kind, subject }, message);
    this.redis
      .xadd(
        this.keys.clusterEvents(),
        'MAXLEN',
        '~',
        1000,
        '*',
        'kind',
        kind,
        'at',
        String(ev.at),
        'subject',
        subject,
        'message',
        message,
      )
      .catch((err: unknown) => this.logger.warn({ err }, 'could not record event'));
  }

  /** Delivers events recorded from now on to `fn`; returns the unsubscribe function. */
  subscribe(fn: (ev: ClusterEvent) => void): () => void {
    this.subscribers.add(fn);
    if (!this.running) void this.read();
    return () => {
      this.subscribers.delete(fn);
    };
  }

  private async read(): Promise<void> {
    this.running = true;
    this.reader = createBlockingRedis(this.redisTarget, 'controller:events');
    this.reader.on('error', () => {});
    let last = '$';
    try {
      await this.reader.connect();
      while (this.running) {
        const r = (await this.reader.xread('BLOCK', 1000, 'STREAMS', this.keys.clusterEvents(), last)) as XReadReply;
        for (const [id, f] of r?.[0]?.[1] ?? []) {
          last = id;
          const o: Record<string, string> = {};
          for (let i = 0; i + 1 < f.length; i += 2) o[f[i]!] = f[i + 1]!;
          const ev: ClusterEvent = {
            kind: o.kind as ClusterEventKind,
            at: Number(o.at),
            subject: o.subject ?? '',
            message: o.message ?? '',
          };
          for (const s of this.subscribers) s(ev);
        }
      }
    } catch (err) {
      if (this.running) this.logger.warn({ err }, 'event reader stopped');
    }
  }

  close(): void {
    this.running = false;
    this.reader?.disconnect();
  }
}
