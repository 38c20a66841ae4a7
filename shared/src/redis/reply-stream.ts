import type { Redis } from 'ioredis';
import { decodeEvent, type ReplyEvent } from '../protocol/events.js';
import type { XReadReply } from './connection.js';
import { settleWithin } from '../util/index.js';

export interface ReplyReaderOptions {
  /** How long one XREAD blocks; bounds how long close() may wait. Default 2000 ms. */
  blockMs?: number;
  /** Most entries one XREAD returns. Default 1000. */
  count?: number;
  /** Called for every valid event, in stream order. Must not throw. */
  onEvent(ev: ReplyEvent): void;
  /** Called when a read fails; the loop backs off and goes on. */
  onError(err: unknown): void;
  /** Called for an entry that is not a valid event. */
  onMalformed?(id: string): void;
  /** Read entries after this id. Default `0-0` (everything). */
  after?: string;
}

/**
 * Reads one gateway's reply stream with a blocking XREAD on a connection of
 * its own and hands each event to `onEvent`. One reader serves every open
 * request of the gateway, so connections do not grow with client streams.
 */
export class ReplyReader {
  private lastId: string;
  private running = false;
  private loop: Promise<void> | null = null;

  constructor(
    private readonly blocking: Redis,
    private readonly key: string,
    private readonly opts: ReplyReaderOptions,
  ) {
    this.lastId = opts.after ?? '0-0';
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    const blockMs = this.opts.blockMs ?? 2000;
    const count = this.opts.count ?? 1000;
    let failures = 0;
    while (this.running) {
      let reply: XReadReply;
      try {
        reply = (await this.blocking.xread('COUNT', count, 'BLOCK', blockMs, 'STREAMS', this.key, this.lastId)) as XReadReply;
        failures = 0;
      } catch (err) {
        if (!this.running) break;
        this.opts.onError(err);
        failures++;
        await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** failures, 1000)));
        continue;
      }
      const entries = reply?.[0]?.[1];
      if (!entries) continue;
      for (const [id, fields] of entries) {
        if (!this.running) break;
        this.lastId = id;
        const ev = decodeEvent(fields);
        if (ev) this.opts.onEvent(ev);
        else this.opts.onMalformed?.(id);
      }
    }
  }

  /**
   * Stops the loop. The caller closes the blocking connection to cut a read
   * short; a read queued while Redis is unreachable may never return, so this
   * waits at most `ms`.
   */
  async stop(ms = 2000): Promise<void> {
    this.running = false;
    if (this.loop) await settleWithin(this.loop, ms);
  }
}
