import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { encodeJob, WORKER_GROUP, type Job } from '@llmux/shared';
import { DEAD_LETTER_MAX_PAIRS, DEAD_LETTER_VALUE_MAX } from '@llmux/worker-agent';
import { TestSystem } from '../helpers/system.js';
import { post, type ChatChunk } from '../helpers/http.js';
import { scrape } from '../helpers/metrics.js';
import { story } from '../helpers/engines.js';
import type { LogLine } from '../helpers/processes.js';

const MOVED = 'malformed request entry moved to the dead-letter stream';
const MODEL = 'sim';

/** A dead letter as XRANGE returns it, its fields by name (the first of each). */
interface Dead {
  id: string;
  pairs: string[];
  get: (name: string) => string | undefined;
}

/**
 * The re-queue command of docs/operations.md ("Dead letters"): moves one dead
 * letter's original fields back to the request stream, atomically. Kept
 * byte for byte as documented, so the docs' command is tested.
 */
const REQUEUE_LUA = `local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not e then return false end
local f = {}
for i = 1, #e[2], 2 do
  if string.sub(e[2][i], 1, 2) == 'f:' then
    f[#f + 1] = string.sub(e[2][i], 3)
    f[#f + 1] = e[2][i + 1]
  end
end
local id = redis.call('XADD', KEYS[2], '*', unpack(f))
redis.call('XDEL', KEYS[1], ARGV[1])
return id`;

/**
 * Hostile entries written straight into a model's request stream and into a
 * staging list, with a real worker agent and gateway running: each one lands
 * in the dead-letter stream with its reason and original fields, the counter
 * counts them, and valid requests before, between and after are served.
 */
describe('malformed request entries go to the dead-letter stream', function () {
  let sys: TestSystem;

  after(async () => {
    await sys?.stop();
  });

  const job = (rid: string, extra: Partial<Job> = {}): Job => ({
    rid,
    model: MODEL,
    gw: 'gw-hostile',
    params: { kind: 'completion', prompt: 'Once', maxTokens: 3 },
    enqueuedAt: Date.now(),
    deadline: Date.now() + 60_000,
    tenant: 'default',
    priority: 'normal',
    retainMs: 0,
    ...extra,
  });
  /** A valid job's fields with some replaced (or removed, with null). */
  const fieldsWith = (rid: string, changes: Record<string, string | null>): string[] => {
    const f = encodeJob(job(rid));
    const out: string[] = [];
    for (let i = 0; i < f.length; i += 2) {
      const name = f[i]!;
      if (!(name in changes)) out.push(name, f[i + 1]!);
      else if (changes[name] !== null) out.push(name, changes[name]!);
    }
    return out;
  };

  /** One valid request through the gateway: served as usual. */
  const valid = async (n: number) => {
    const r = await post(`${sys.url}/v1/completions`, { model: MODEL, prompt: 'Once', max_tokens: n });
    expect(r.status, r.text).to.equal(200);
    const body = JSON.parse(r.text) as ChatChunk;
    expect(body.choices[0]!.text).to.equal(story(n));
  };

  const deadLetters = async (): Promise<Dead[]> => {
    const entries = (await sys.redis.xrange(sys.keys.deadLetters(MODEL), '-', '+')) as [string, string[]][];
    return entries.map(([id, pairs]) => ({
      id,
      pairs,
      get: (name: string) => {
        for (let i = 0; i < pairs.length; i += 2) if (pairs[i] === name) return pairs[i + 1];
        return undefined;
      },
    }));
  };

  it('dead-letters hostile stream and staged entries with their reasons, counts them, and serves valid requests throughout', async () => {
    sys = await TestSystem.start({
      deployments: { models: [{ name: MODEL, engine: { type: 'sim', ttftMs: 5, itlMs: 5 }, concurrency: 2 }] },
      workers: [{ env: { WORKER_ID: 'w0' } }],
    });
    const w0 = sys.workers[0]!;
    const base = `http://127.0.0.1:${(await w0.ready()).metricsPort as number}`;
    const stream = sys.keys.requests(MODEL);
    const moved = (n: number) => w0.waitForLogs((l: LogLine) => l.msg === MOVED, n);

    await valid(5);

    // Straight into the stream: what a buggy or hostile producer could XADD.
    const huge = 'x'.repeat(300_000);
    const direct: { name: string; fields: (string | Buffer)[]; reason: RegExp }[] = [
      { name: 'missing fields', fields: ['rid', 'only-a-rid'], reason: /model/ },
      {
        name: 'params not JSON',
        fields: fieldsWith('bad-json', { params: '{"kind":"completion",' }),
        reason: /params: not JSON/,
      },
      { name: 'huge rid', fields: fieldsWith(huge, {}), reason: /rid/ },
      {
        name: 'huge params of the wrong shape',
        fields: fieldsWith('huge-params', { params: JSON.stringify({ kind: 'completion', prompt: huge }) }),
        reason: /params\.maxTokens/,
      },
      {
        name: 'wrong types',
        fields: fieldsWith('types', {
          params: JSON.stringify({ kind: 'image', prompt: 7, maxTokens: '5' }),
          ts: 'yesterday',
          deadline: '[]',
        }),
        reason: /ts|deadline/,
      },
      { name: 'wrong priority', fields: fieldsWith('prio', { priority: 'urgent' }), reason: /priority/ },
      {
        name: 'binary junk',
        fields: [randomBytes(64), randomBytes(512), Buffer.from([0, 0xff, 0xfe]), randomBytes(8)],
        reason: /rid/,
      },
      { name: 'bad tenant', fields: fieldsWith('tenant', { tenant: '../../etc/passwd' }), reason: /tenant/ },
      { name: 'tenant missing a value', fields: fieldsWith('tenant-empty', { tenant: '' }), reason: /tenant/ },
      {
        name: 'thousands of fields',
        fields: Array.from({ length: 4000 }, (_, i) => `k${i}`),
        reason: /rid/,
      },
    ];
    const ids = new Map<string, (typeof direct)[number]>();
    for (const d of direct) ids.set(String(await sys.redis.xadd(stream, '*', ...d.fields)), d);
    await moved(direct.length);

    await valid(6);

    // Into a staging list, as if a producer had pushed garbage where enqueue-4 stages jobs.
    const list = sys.keys.tenantQueue(MODEL, 'normal', 'evil');
    const staged: { raw: string; reason: RegExp }[] = [
      { raw: 'not json {', reason: /^staged element is not JSON$/ },
      { raw: '{"rid":"x","model":"sim"}', reason: /not a JSON array/ },
      { raw: '[]', reason: /not a JSON array/ },
      { raw: '["odd"]', reason: /not a JSON array/ },
      { raw: '[1,2]', reason: /element 1 is not a string/ },
      { raw: '[["nested"],"x"]', reason: /element 1 is not a string/ },
      { raw: '["a",null]', reason: /element 2 is not a string/ },
      { raw: JSON.stringify(Array.from({ length: 5000 }, () => 'x')), reason: /more than 1000 elements/ },
      { raw: `"${'y'.repeat(100_000)}"`, reason: /not a JSON array/ },
      // Valid list of pairs, invalid job: it reaches the stream, and the worker refuses it.
      { raw: JSON.stringify(fieldsWith('staged-bad-tenant', { tenant: 'no spaces allowed' })), reason: /tenant/ },
    ];
    await sys.redis.rpush(list, ...staged.map((s) => s.raw));
    await sys.redis.zadd(sys.keys.fairIndex(MODEL, 'normal'), 0, 'evil');
    await sys.redis.hincrby(sys.keys.fairState(MODEL), 'staged', staged.length);
    await moved(direct.length + staged.length);

    await valid(7);
    const total = direct.length + staged.length;

    // Every entry is in the dead-letter stream once, with why, where from, who and when.
    const dead = await deadLetters();
    expect(dead).to.have.length(total);
    for (const d of dead) {
      expect(d.get('reason'), d.id).to.be.a('string').and.not.equal('');
      expect(d.get('worker')).to.equal('w0');
      expect(Number(d.get('at'))).to.be.within(Date.now() - 120_000, Date.now());
      expect(d.get('entry_id')).to.match(/^\d+-\d+$/);
    }
    const byEntry = new Map(dead.map((d) => [d.get('entry_id')!, d]));
    for (const [id, d] of ids) {
      const letter = byEntry.get(id);
      expect(letter, d.name).to.not.equal(undefined);
      expect(letter!.get('reason'), d.name).to.match(d.reason);
    }
    // The original fields follow, prefixed: readable as they were, cut where huge.
    const tenant = byEntry.get([...ids].find(([, d]) => d.name === 'bad tenant')![0])!;
    expect(tenant.get('f:tenant')).to.equal('../../etc/passwd');
    expect(tenant.get('f:rid')).to.equal('tenant');
    expect(tenant.get('truncated')).to.equal(undefined);
    const hugeRid = byEntry.get([...ids].find(([, d]) => d.name === 'huge rid')![0])!;
    expect(hugeRid.get('f:rid')).to.have.length(DEAD_LETTER_VALUE_MAX);
    expect(hugeRid.get('truncated')).to.equal('1');
    const many = byEntry.get([...ids].find(([, d]) => d.name === 'thousands of fields')![0])!;
    expect(many.pairs.filter((_, i) => i % 2 === 0 && many.pairs[i]!.startsWith('f:'))).to.have.length(DEAD_LETTER_MAX_PAIRS);
    expect(many.get('fields_total')).to.equal('2000');

    // Staged ones: the dispatch script's reason, the raw element (its first 64 KiB), tenant and priority.
    const fromStaging = dead.filter((d) => !ids.has(d.get('entry_id')!));
    expect(fromStaging).to.have.length(staged.length);
    for (const s of staged) {
      const match = fromStaging.filter(
        (d) => (d.get('f:raw') ?? d.get('f:rid')) !== undefined && s.reason.test(d.get('reason')!),
      );
      expect(match.length, `${s.raw.slice(0, 40)} → ${String(s.reason)}`).to.be.greaterThan(0);
    }
    const marks = fromStaging.filter((d) => d.get('f:malformed') !== undefined);
    expect(marks).to.have.length(staged.length - 1);
    for (const m of marks) {
      expect(m.get('f:tenant')).to.equal('evil');
      expect(m.get('f:priority')).to.equal('normal');
      expect(m.get('reason')).to.equal(m.get('f:malformed'));
    }
    const long = marks.find((m) => m.get('f:raw_bytes') !== undefined)!;
    expect(long.get('f:raw')).to.have.length(65_536);
    expect(long.get('f:raw_bytes')).to.equal(String(100_002));
    expect(staged.slice(0, -1).map((s) => s.raw.slice(0, 1000))).to.include.members(
      marks.filter((m) => m !== long).map((m) => m.get('f:raw')!.slice(0, 1000)),
    );

    // The counter counts them; nothing is left in the queue, pending or staged.
    const m = await scrape(base);
    expect(m.sample('llmux_dead_letters_total', { model: MODEL })).to.equal(total);
    expect(m.sample('llmux_worker_requests_total', { model: MODEL, outcome: 'ok' })).to.equal(3);
    expect(await sys.redis.xlen(stream)).to.equal(0);
    const pending = (await sys.redis.xpending(stream, WORKER_GROUP)) as [number, ...unknown[]];
    expect(Number(pending[0])).to.equal(0);
    expect(await sys.redis.exists(list)).to.equal(0);
    expect(await sys.redis.zcard(sys.keys.fairIndex(MODEL, 'normal'))).to.equal(0);
    expect(Number(await sys.redis.hget(sys.keys.fairState(MODEL), 'staged'))).to.equal(0);
    // Dispatch never failed: no claim loop error at all.
    expect(w0.logs.filter((l) => /claim failed|dispatch failed/.test(String(l.msg)))).to.deep.equal([]);
    expect(w0.running).to.equal(true);

    // The documented re-queue: the bad tenant goes back to the stream and, still malformed, returns to the dead letters.
    const requeued = (await sys.redis.eval(REQUEUE_LUA, 2, sys.keys.deadLetters(MODEL), stream, tenant.id)) as string;
    expect(requeued).to.match(/^\d+-\d+$/);
    const again = (await moved(total + 1)).at(-1)!;
    expect(again.entryId).to.equal(requeued);
    const after = await deadLetters();
    expect(after).to.have.length(total);
    const back = after.find((d) => d.get('entry_id') === requeued)!;
    expect(back.pairs.slice(8)).to.deep.equal(tenant.pairs.slice(8));
    await valid(4);
  });
});
