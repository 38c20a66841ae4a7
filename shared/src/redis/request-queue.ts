import type { Redis } from 'ioredis';
import { encodeJob, PRIORITIES, TENANT_NAME, type Job } from '../protocol/job.js';
import type { StreamEntries, XReadReply } from './connection.js';
import { Keys, WORKER_GROUP } from './keys.js';
import { scripts } from './scripts.js';

/** Priorities from the highest, the order dispatch serves them in. */
const DISPATCH_ORDER = [...PRIORITIES].reverse();

/** What a dispatch did: jobs moved into the stream, and jobs still staged after it. */
export interface DispatchResult {
  moved: number;
  staged: number;
}

/**
 * A model's queue: one Redis stream with one consumer group that every worker
 * agent joins, fed fairly from per-tenant staging lists. The gateway
 * enqueues; a worker dispatches staged requests into the stream, claims as
 * many entries as it has free slots and acks (and deletes) each when it has
 * finished.
 *
 * Staging exists because a stream is FIFO: once a flood of one tenant's
 * requests sits in it, every later request waits behind all of them. So the
 * stream holds only a short head of work that is committed to run next, and
 * the rest waits in one list per tenant and priority, from which workers
 * take in fair order (strict between priorities, weighted fair sharing
 * between tenants within one). When nothing waits at all, a request goes
 * straight to the stream, so an idle worker wakes with it at once.
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

  /**
   * Queues a job for its tenant with the tenant's `weight` (its share of the
   * model relative to other backlogged tenants of the same priority). Returns
   * the stream entry id when the job went straight to the stream (nothing was
   * waiting), or null when it was staged for fair dispatch.
   */
  async enqueue(job: Job, weight = 1): Promise<string | null> {
    if (!(weight > 0) || !Number.isFinite(weight)) throw new RangeError(`weight must be a positive number, got ${weight}`);
    // The tenant is part of a key name, and the priority picks keys: never trust them blindly.
    if (!TENANT_NAME.test(job.tenant)) throw new RangeError(`invalid tenant name ${JSON.stringify(job.tenant)}`);
    if (!PRIORITIES.includes(job.priority)) throw new RangeError(`invalid priority ${JSON.stringify(job.priority)}`);
    if (!this.groups.has(job.model)) await this.ensureGroup(job.model);
    const m = job.model;
    const r = await scripts.enqueue.run(
      this.redis,
      [
        this.keys.requests(m),
        this.keys.fairState(m),
        this.keys.fairIndex(m, job.priority),
        this.keys.tenantQueue(m, job.priority, job.tenant),
      ],
      [WORKER_GROUP, job.tenant, job.priority, weight, ...encodeJob(job)],
    );
    return r ? String(r) : null;
  }

  /**
   * Moves staged jobs into the stream in fair order until `target` entries of
   * the stream wait for a worker (or nothing is staged). A worker calls it
   * before each claim, with the claim's count as target, and with target 1
   * while it waits in XREADGROUP and a peer claims (the agent's `nudge`), so
   * no worker waits on an empty stream while requests are staged.
   */
  async dispatch(model: string, target: number): Promise<DispatchResult> {
    const r = (await scripts.dispatch.run(
      this.redis,
      [this.keys.requests(model), this.keys.fairState(model), ...DISPATCH_ORDER.map((p) => this.keys.fairIndex(model, p))],
      [
        WORKER_GROUP,
        Math.max(1, Math.floor(target)),
        ...DISPATCH_ORDER,
        // Key of each priority's tenant lists without the tenant; the script appends it.
        ...DISPATCH_ORDER.map((p) => this.keys.tenantQueue(model, p, '')),
      ],
    )) as [number, number];
    return { moved: Number(r[0]), staged: Number(r[1]) };
  }

  /** Requests staged for fair dispatch (not yet in the stream), all priorities. */
  async staged(model: string): Promise<number> {
    return Number((await this.redis.hget(this.keys.fairState(model), 'staged')) ?? 0);
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

  /**
   * Requests waiting for a worker (staged ones and those in the stream no
   * worker took yet), entries claimed and not finished, and the group's
   * `entries-read` counter (its growth is the drain rate: staged requests are
   * delivered through the stream too).
   */
  async depth(model: string): Promise<{ waiting: number; pending: number; entriesRead: number }> {
    const [stream, staged] = await Promise.all([this.streamDepth(model), this.staged(model)]);
    return { ...stream, waiting: stream.waiting + staged };
  }

  /**
   * The stream's part of `depth`. Waiting entries are the group's `lag` when
   * Redis can tell it (it cannot once entries ahead of the group's position
   * were deleted); otherwise the stream's length minus the entries claimed
   * and not acked (entries are deleted when done).
   */
  private async streamDepth(model: string): Promise<{ waiting: number; pending: number; entriesRead: number }> {
    const key = this.keys.requests(model);
    try {
      const [groups, len] = await Promise.all([this.redis.xinfo('GROUPS', key) as Promise<unknown[][]>, this.redis.xlen(key)]);
      for (const g of groups) {
        const info: Record<string, unknown> = {};
        for (let i = 0; i + 1 < g.length; i += 2) info[String(g[i])] = g[i + 1];
        if (info.name === WORKER_GROUP) {
          const pending = Number(info.pending ?? 0);
          const lag = info.lag === null || info.lag === undefined ? NaN : Number(info.lag);
          return {
            waiting: Number.isFinite(lag) ? lag : Math.max(0, len - pending),
            pending,
            entriesRead: Number(info['entries-read'] ?? 0),
          };
        }
      }
      return { waiting: len, pending: 0, entriesRead: 0 };
    } catch (err) {
      if (!(err instanceof Error) || !err.message.includes('no such key')) throw err;
    }
    return { waiting: 0, pending: 0, entriesRead: 0 };
  }
}
