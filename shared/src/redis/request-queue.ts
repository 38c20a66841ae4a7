import type { Redis } from 'ioredis';
import { encodeJob, type Job } from '../protocol/job.js';
import type { StreamEntries, XReadReply } from './connection.js';
import { Keys, WORKER_GROUP } from './keys.js';
import { scripts } from './scripts.js';

/**
 * A model's queue: one Redis stream with one consumer group that every worker
 * agent joins. The gateway enqueues; a worker claims as many entries as it has
 * free slots and acks (and deletes) each when it has finished.
 */
export class RequestQueue {
  private readonly groups = new Set<string>();

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
  ) {}

  /**
   * Creates the stream and its group if missing. The group starts at `0` so
   * requests enqueued before the first worker arrived are still delivered.
   */
  async ensureGroup(model: string): Promise<void> {
    const key = this.keys.requests(model);
    try {
      await this.redis.xgroup('CREATE', key, WORKER_GROUP, '0', 'MKSTREAM');
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('BUSYGROUP')) throw err;
    }
    this.groups.add(model);
  }

  /** Appends a job to its model's stream; returns the entry id. */
  async enqueue(job: Job): Promise<string> {
    if (!this.groups.has(job.model)) await this.ensureGroup(job.model);
    const id = await this.redis.xadd(this.keys.requests(job.model), '*', ...encodeJob(job));
    return id!;
  }

  /**
   * Claims up to `count` new entries for `consumer`, blocking up to `blockMs`.
   * Must run on a connection of its own. A missing group (Redis restarted
   * without persistence) is recreated and the read retried once.
   */
  async claim(blocking: Redis, model: string, consumer: string, count: number, blockMs: number): Promise<StreamEntries> {
    const key = this.keys.requests(model);
    const read = () =>
      blocking.xreadgroup(
        'GROUP', WORKER_GROUP, consumer, 'COUNT', count, 'BLOCK', blockMs, 'STREAMS', key, '>',
      ) as Promise<XReadReply>; // prettier-ignore
    let reply: XReadReply;
    try {
      reply = await read();
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOGROUP')) throw err;
      this.groups.delete(model);
      await this.ensureGroup(model);
      reply = await read();
    }
    return reply?.[0]?.[1] ?? [];
  }

  /** Claims up to `count` waiting entries without blocking (on any connection). */
  async claimNow(model: string, consumer: string, count: number): Promise<StreamEntries> {
    const reply = (await this.redis.xreadgroup(
      'GROUP', WORKER_GROUP, consumer, 'COUNT', count, 'STREAMS', this.keys.requests(model), '>',
    )) as XReadReply; // prettier-ignore
    return reply?.[0]?.[1] ?? [];
  }

  /**
   * Gives an entry back to the queue (re-appended, old one acked and removed,
   * atomically), so another worker picks the request up. Returns the new
   * entry id, or null when `consumer` no longer holds the entry.
   */
  async handBack(model: string, entryId: string, consumer: string, fields: readonly string[]): Promise<string | null> {
    const r = await scripts.handback.run(this.redis, [this.keys.requests(model)], [WORKER_GROUP, entryId, consumer, ...fields]);
    return r ? String(r) : null;
  }

  /** Every consumer of the model's group (with or without pending entries). */
  async consumers(model: string): Promise<string[]> {
    try {
      const list = (await this.redis.xinfo('CONSUMERS', this.keys.requests(model), WORKER_GROUP)) as unknown[][];
      return list.map((c) => String(c[c.indexOf('name') + 1]));
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOGROUP')) throw err;
      return [];
    }
  }

  /** Consumers holding pending entries, with their counts. */
  async pendingConsumers(model: string): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    try {
      const r = (await this.redis.xpending(this.keys.requests(model), WORKER_GROUP)) as [
        number,
        string,
        string,
        [string, string][] | null,
      ];
      for (const [name, count] of r[3] ?? []) out.set(name, Number(count));
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOGROUP')) throw err;
    }
    return out;
  }

  /**
   * Moves up to `count` of `from`'s pending entries to `to` and returns them.
   * `minIdleMs` guards against a race: an entry another worker claimed a
   * moment ago is not idle enough and stays where it is.
   */
  async takeOver(model: string, from: string, to: string, count: number, minIdleMs: number): Promise<StreamEntries> {
    const key = this.keys.requests(model);
    const pending = (await this.redis.xpending(key, WORKER_GROUP, '-', '+', count, from)) as [string, string, number, number][];
    if (pending.length === 0) return [];
    // JUSTID returns exactly the ids that moved (across Redis versions, whatever
    // became of deleted entries); each one is then read back by id.
    const ids = (await this.redis.xclaim(key, WORKER_GROUP, to, minIdleMs, ...pending.map((p) => p[0]), 'JUSTID')) as string[];
    const out: StreamEntries = [];
    for (const id of ids) {
      const [entry] = (await this.redis.xrange(key, id, id)) as [string, string[]][];
      if (entry) out.push(entry);
      // Deleted from the stream while pending: nothing to run, so clear it.
      else await this.redis.xack(key, WORKER_GROUP, id);
    }
    return out;
  }

  /**
   * Puts every entry `consumer` holds back in the queue (ownership-checked,
   * atomic per entry), for a worker that is gone. Returns how many.
   */
  async handOverFrom(model: string, consumer: string, batch = 100): Promise<number> {
    const key = this.keys.requests(model);
    let moved = 0;
    for (;;) {
      const pending = (await this.redis.xpending(key, WORKER_GROUP, '-', '+', batch, consumer)) as [
        string,
        string,
        number,
        number,
      ][];
      if (pending.length === 0) return moved;
      let progressed = false;
      for (const [id] of pending) {
        const [entry] = (await this.redis.xrange(key, id, id)) as [string, string[]][];
        if (!entry) {
          await this.redis.xack(key, WORKER_GROUP, id);
          progressed = true;
          continue;
        }
        if ((await this.handBack(model, id, consumer, entry[1])) !== null) {
          moved++;
          progressed = true;
        }
      }
      if (!progressed) return moved;
    }
  }

  /** Removes a consumer that holds no pending entries; false if it still holds some. */
  async deleteConsumerIfIdle(model: string, consumer: string): Promise<boolean> {
    return (
      Number(await scripts.deleteConsumerIfIdle.run(this.redis, [this.keys.requests(model)], [WORKER_GROUP, consumer])) === 1
    );
  }

  /** Marks an entry done: acknowledged and removed, so the stream holds only live work. */
  async ack(model: string, entryId: string): Promise<void> {
    const key = this.keys.requests(model);
    await Promise.all([this.redis.xack(key, WORKER_GROUP, entryId), this.redis.xdel(key, entryId)]);
  }

  /** Entries waiting for a worker plus entries claimed but not yet acked. */
  /**
   * Entries waiting for a worker, entries claimed and not finished, and the
   * group's `entries-read` counter (its growth is the drain rate).
   */
  async depth(model: string): Promise<{ waiting: number; pending: number; entriesRead: number }> {
    const key = this.keys.requests(model);
    try {
      const groups = (await this.redis.xinfo('GROUPS', key)) as unknown[][];
      for (const g of groups) {
        const info: Record<string, unknown> = {};
        for (let i = 0; i + 1 < g.length; i += 2) info[String(g[i])] = g[i + 1];
        if (info.name === WORKER_GROUP) {
          return {
            waiting: Number(info.lag ?? 0),
            pending: Number(info.pending ?? 0),
            entriesRead: Number(info['entries-read'] ?? 0),
          };
        }
      }
    } catch (err) {
      if (!(err instanceof Error) || !err.message.includes('no such key')) throw err;
    }
    return { waiting: 0, pending: 0, entriesRead: 0 };
  }
}
