import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import {
  admissionError,
  ApiKeys,
  AuthenticationError,
  createRedis,
  hashApiKey,
  InvalidRequestError,
  Keys,
  RateLimitError,
  type AdmitResult,
  type ApiKeyRecord,
  type Redis,
  type Reservation,
} from '@llmux/shared';
import { entryOf, TestProcess } from '../helpers/processes.js';
import { startTestRedis, type TestRedis } from '../helpers/redis.js';

/**
 * API keys on a real Redis: issuing, listing and revoking them, and the rate
 * limits the key-admit and key-settle scripts enforce. Concurrency tests fire
 * their calls in one tick, so ioredis sends them in one pipelined write and
 * Redis runs the scripts back to back: the scripts' atomicity, not luck,
 * decides who passes.
 */
describe('API keys', function () {
  let redis: TestRedis;
  let r: Redis;
  let keys: Keys;
  let apiKeys: ApiKeys;

  beforeEach(async () => {
    redis = await startTestRedis();
    keys = new Keys(redis.prefix);
    r = createRedis(redis.url, { name: 'api-keys-test' });
    await r.connect();
    apiKeys = new ApiKeys(r, keys);
  });

  afterEach(async () => {
    r.disconnect();
    await redis.stop();
  });

  const cost = (tokens: number) => ({ requests: 1, tokens });
  const admitMany = (secret: string, n: number, tokens: number) =>
    Promise.all(Array.from({ length: n }, () => apiKeys.admit(secret, cost(tokens))));
  const count = (results: AdmitResult[], status: AdmitResult['status']) => results.filter((x) => x.status === status).length;
  const okOf = (res: AdmitResult): Extract<AdmitResult, { status: 'ok' }> => {
    expect(res.status).to.equal('ok');
    return res as Extract<AdmitResult, { status: 'ok' }>;
  };
  /** Redis's clock in ms, the one the scripts use. */
  const redisNowMs = async () => {
    const [s, us] = await r.time();
    return Number(s) * 1000 + Math.floor(Number(us) / 1000);
  };

  describe('create, list, get, revoke', () => {
    it('issues sk-llmux- + 32 base62 characters, shown once; the record is plain hash fields under its sha256', async () => {
      const before = Date.now();
      const c = await apiKeys.create({ tenant: 'acme', name: 'ci runner', rpm: 60, tpm: 90_000 });
      expect(c.key).to.match(/^sk-llmux-[0-9A-Za-z]{32}$/);
      const sha = hashApiKey(c.key);
      expect(c.id).to.equal(`key_${sha.slice(0, 12)}`);
      expect(c.record).to.deep.equal({
        id: c.id,
        tenant: 'acme',
        name: 'ci runner',
        rpm: 60,
        tpm: 90_000,
        weight: 1,
        maxPriority: 'normal',
        createdAt: c.record.createdAt,
      });
      expect(c.record.createdAt).to.be.within(before, Date.now());
      expect(await r.hgetall(keys.apiKey(sha))).to.deep.equal({
        id: c.id,
        tenant: 'acme',
        name: 'ci runner',
        rpm: '60',
        tpm: '90000',
        weight: '1',
        max_priority: 'normal',
        created_at: String(c.record.createdAt),
      });
      expect(await r.hgetall(keys.apiKeyIndex())).to.deep.equal({ [c.id]: sha });
      // Two keys never share a secret (the CSPRNG, not a counter).
      const other = await apiKeys.create({ tenant: 'acme' });
      expect(other.key).to.not.equal(c.key);
    });

    it('lists records oldest first and gets one by id; unlimited limits are absent fields, read as null', async () => {
      const a = await apiKeys.create({ tenant: 'acme', rpm: 5 });
      const b = await apiKeys.create({ tenant: 'beta', name: 'batch', tpm: 1000, weight: 3, maxPriority: 'low' });
      const c = await apiKeys.create({ tenant: 'gamma.team-1', maxPriority: 'high', weight: 0.5 });
      const listed = await apiKeys.list();
      // Oldest first; keys made in the same ms by id.
      const order = (x: ApiKeyRecord, y: ApiKeyRecord) => x.createdAt - y.createdAt || (x.id < y.id ? -1 : 1);
      expect(listed).to.deep.equal([a.record, b.record, c.record].sort(order));
      expect(await apiKeys.get(b.id)).to.deep.equal(b.record);
      expect(await apiKeys.get('key_000000000000')).to.equal(null);
      expect(await apiKeys.get('not-an-id')).to.equal(null);
      expect(await r.hexists(keys.apiKey(hashApiKey(c.key)), 'rpm')).to.equal(0);
      // A listing never carries a secret, nor the hash a secret is found by.
      const text = JSON.stringify(listed);
      for (const k of [a, b, c]) {
        expect(text).to.not.include(k.key);
        expect(text).to.not.include(hashApiKey(k.key));
      }
    });

    it('weight and maxPriority round-trip through create, get, list and admit', async () => {
      const k = await apiKeys.create({ tenant: 'acme', weight: 2.75, maxPriority: 'high' });
      const expected = { weight: 2.75, maxPriority: 'high' };
      expect(k.record).to.deep.include(expected);
      expect(await apiKeys.get(k.id)).to.deep.include(expected);
      expect((await apiKeys.list())[0]).to.deep.include(expected);
      const admitted = okOf(await apiKeys.admit(k.key, cost(10)));
      expect(admitted.record).to.deep.equal(k.record);
      const low = await apiKeys.create({ tenant: 'acme', maxPriority: 'low' });
      expect(okOf(await apiKeys.admit(low.key, cost(1))).record).to.deep.include({ weight: 1, maxPriority: 'low' });
    });

    it('revokes by id: record and index entry go, admit says unknown, a second revoke is false', async () => {
      const k = await apiKeys.create({ tenant: 'acme', tpm: 1000 });
      const keep = await apiKeys.create({ tenant: 'acme' });
      okOf(await apiKeys.admit(k.key, cost(1)));
      expect(await apiKeys.revoke(k.id)).to.equal(true);
      expect(await r.exists(keys.apiKey(hashApiKey(k.key)))).to.equal(0);
      expect(await r.hgetall(keys.apiKeyIndex())).to.deep.equal({ [keep.id]: hashApiKey(keep.key) });
      expect(await apiKeys.admit(k.key, cost(1))).to.deep.equal({ status: 'unknown' });
      expect(await apiKeys.revoke(k.id)).to.equal(false);
      expect(await apiKeys.revoke('key_nope')).to.equal(false);
      expect((await apiKeys.list()).map((x) => x.id)).to.deep.equal([keep.id]);
      okOf(await apiKeys.admit(keep.key, cost(1)));
    });

    it('unknown keys: never issued, not shaped like a key, or close to a real one', async () => {
      const k = await apiKeys.create({ tenant: 'acme' });
      const flipped = k.key.slice(0, -1) + (k.key.endsWith('a') ? 'b' : 'a');
      for (const s of [`sk-llmux-${'A'.repeat(32)}`, '', 'sk-llmux-', 'Bearer x', `${k.key} `, k.key.toUpperCase(), flipped]) {
        expect(await apiKeys.admit(s, cost(1)), JSON.stringify(s)).to.deep.equal({ status: 'unknown' });
      }
      okOf(await apiKeys.admit(k.key, cost(1)));
    });

    it('no secret is stored anywhere in Redis: every key name and every value is scanned', async () => {
      const created = [
        await apiKeys.create({ tenant: 'acme', rpm: 10, tpm: 1000 }),
        await apiKeys.create({ tenant: 'beta', name: 'batch' }),
      ];
      // Buckets in use too: admit and settle write their state into the same hashes.
      const res = okOf(await apiKeys.admit(created[0]!.key, cost(100)));
      await apiKeys.settle(res.reservation, 40);
      okOf(await apiKeys.admit(created[1]!.key, cost(5)));

      const dump: string[] = [];
      let cursor = '0';
      do {
        const [next, names] = await r.scan(cursor, 'MATCH', `${redis.prefix}:*`, 'COUNT', 100);
        cursor = next;
        for (const name of names) {
          dump.push(name);
          const type = await r.type(name);
          expect(type, name).to.be.oneOf(['hash', 'string']);
          if (type === 'hash') dump.push(...Object.entries(await r.hgetall(name)).flat());
          else dump.push((await r.get(name)) ?? '');
        }
      } while (cursor !== '0');
      expect(dump.length, 'the scan saw the keys').to.be.greaterThan(10);
      const all = dump.join('\n');
      for (const c of created) {
        expect(all).to.not.include(c.key);
        // Nor its random part alone (e.g. stored without the prefix).
        expect(all).to.not.include(c.key.slice('sk-llmux-'.length));
      }
      expect(all).to.include(hashApiKey(created[0]!.key));
    });

    it('validates what create is given, naming the field', async () => {
      const bad: [Parameters<ApiKeys['create']>[0], string][] = [
        [{ tenant: '' }, 'tenant'],
        [{ tenant: 'has space' }, 'tenant'],
        [{ tenant: 'x'.repeat(65) }, 'tenant'],
        [{ tenant: 'acme', rpm: 0 }, 'rpm'],
        [{ tenant: 'acme', rpm: 1.5 }, 'rpm'],
        [{ tenant: 'acme', tpm: -10 }, 'tpm'],
        [{ tenant: 'acme', weight: 0 }, 'weight'],
        [{ tenant: 'acme', weight: Number.POSITIVE_INFINITY }, 'weight'],
        [{ tenant: 'acme', maxPriority: 'urgent' as 'high' }, 'maxPriority'],
        [{ tenant: 'acme', name: 'line\nbreak' }, 'name'],
      ];
      for (const [opts, param] of bad) {
        const err = await apiKeys.create(opts).then(
          () => null,
          (e: unknown) => e,
        );
        expect(err, JSON.stringify(opts)).to.be.instanceOf(InvalidRequestError);
        expect((err as InvalidRequestError).param).to.equal(param);
      }
      expect(await r.exists(keys.apiKeyIndex())).to.equal(0);
    });
  });

  describe('rate limits', () => {
    it('tpm: 50 concurrent admits of 100 tokens against 1000/min -> exactly 10 ok, 40 limited', async () => {
      const k = await apiKeys.create({ tenant: 'acme', tpm: 1000 });
      const t0 = Date.now();
      const results = await admitMany(k.key, 50, 100);
      const elapsed = Date.now() - t0;
      // The bucket starts full (1000) and refills at 1000/60000 = 1/60 token per ms. Ten admits
      // empty it; an eleventh needs 100 tokens more, which takes 6000 ms of refill. The 50 calls
      // go out in one write and Redis runs them back to back in a few ms, so refill can only add
      // a fraction of a token: exactly 10 pass. (Checked, so a slow machine fails loudly here
      // instead of passing 11.)
      expect(elapsed).to.be.lessThan(6000);
      expect(count(results, 'ok')).to.equal(10);
      expect(count(results, 'limited')).to.equal(40);
      for (const res of results.filter((x) => x.status === 'limited')) {
        expect(res).to.include({ limit: 'tpm', capacity: 1000 });
        // About 6000 ms (100 tokens at 1/60 per ms, minus the little refilled since).
        expect((res as { retryAfterMs: number }).retryAfterMs).to.be.within(6000 - elapsed - 1, 6000);
      }
      const reserved = results.filter((x) => x.status === 'ok').map((x) => okOf(x).reservation.tokens);
      expect(reserved).to.deep.equal(Array(10).fill(100));
    });

    it('rpm: 20 concurrent admits against 5/min -> exactly 5 ok, 15 limited', async () => {
      const k = await apiKeys.create({ tenant: 'acme', rpm: 5 });
      const t0 = Date.now();
      const results = await admitMany(k.key, 20, 0);
      // One request refills every 12000 ms (5 per 60000 ms); the burst takes a few ms.
      expect(Date.now() - t0).to.be.lessThan(12_000);
      expect(count(results, 'ok')).to.equal(5);
      expect(count(results, 'limited')).to.equal(15);
      for (const res of results.filter((x) => x.status === 'limited')) {
        expect(res).to.include({ limit: 'rpm', capacity: 5 });
        expect((res as { retryAfterMs: number }).retryAfterMs).to.be.within(1, 12_000);
      }
    });

    it('reserves from both buckets or from neither', async () => {
      const k = await apiKeys.create({ tenant: 'acme', rpm: 10, tpm: 1000 });
      okOf(await apiKeys.admit(k.key, cost(600))); // rpm 9 left, tpm 400
      // Three refusals on tpm: none of them may take a request from the rpm bucket.
      for (let i = 0; i < 3; i++) expect(await apiKeys.admit(k.key, cost(600))).to.include({ status: 'limited', limit: 'tpm' });
      const rest = await admitMany(k.key, 12, 0);
      expect(count(rest, 'ok')).to.equal(9);
      expect(rest.filter((x) => x.status === 'limited').every((x) => 'limit' in x && x.limit === 'rpm')).to.equal(true);
    });

    it('names the limit that takes longest to refill when both are short', async () => {
      const k = await apiKeys.create({ tenant: 'acme', rpm: 1, tpm: 60_000 });
      okOf(await apiKeys.admit(k.key, cost(60_000)));
      // rpm: 1 request in 60000 ms; tpm: 100 tokens in about 100 ms. The caller must wait for both.
      const res = await apiKeys.admit(k.key, cost(100));
      expect(res).to.include({ status: 'limited', limit: 'rpm', capacity: 1 });
      expect((res as { retryAfterMs: number }).retryAfterMs).to.be.within(59_000, 60_000);
    });

    it('retryAfterMs is the exact time until enough refills, from Redis time', async () => {
      const k = await apiKeys.create({ tenant: 'acme', tpm: 1000 });
      const hash = keys.apiKey(hashApiKey(k.key));
      const emptyAt = async (agoMs: number) => r.hset(hash, 'tpm_level', '0', 'tpm_at', String((await redisNowMs()) - agoMs));
      // An empty bucket stamped in the future does not refill until then (a clock that went back
      // after a failover), so the wait is exact: 100 tokens at 1000/60000 per ms = 6000 ms.
      await emptyAt(-60_000);
      expect(await apiKeys.admit(k.key, cost(100))).to.deep.equal({
        status: 'limited',
        limit: 'tpm',
        retryAfterMs: 6000,
        capacity: 1000,
      });
      // Emptied 5900 ms ago: about 100 ms still to go.
      await emptyAt(5900);
      const res = await apiKeys.admit(k.key, cost(100));
      expect(res).to.include({ status: 'limited', limit: 'tpm' });
      expect((res as { retryAfterMs: number }).retryAfterMs).to.be.within(1, 100);
      // Emptied 6000 ms ago: exactly enough has refilled.
      await emptyAt(6000);
      okOf(await apiKeys.admit(k.key, cost(100)));
      // Refill stops at the capacity, however long the key was idle.
      await r.hset(hash, 'tpm_level', '0', 'tpm_at', String((await redisNowMs()) - 3_600_000));
      expect(await apiKeys.admit(k.key, cost(1000))).to.include({ status: 'ok' });
      expect(await apiKeys.admit(k.key, cost(1))).to.include({ status: 'limited' });
    });

    it('settle refunds what was not used, so a later admit passes', async () => {
      const k = await apiKeys.create({ tenant: 'acme', tpm: 1000 });
      const res = okOf(await apiKeys.admit(k.key, cost(1000)));
      expect(await apiKeys.admit(k.key, cost(100))).to.include({ status: 'limited', limit: 'tpm' });
      await apiKeys.settle(res.reservation, 200); // 800 back
      okOf(await apiKeys.admit(k.key, cost(800)));
      expect(await apiKeys.admit(k.key, cost(100))).to.include({ status: 'limited', limit: 'tpm' });
    });

    it('settle never refunds past the capacity, and a second settle of the same reservation does nothing', async () => {
      const k = await apiKeys.create({ tenant: 'acme', tpm: 1000 });
      const hash = keys.apiKey(hashApiKey(k.key));
      const res = okOf(await apiKeys.admit(k.key, cost(500))); // 500 left
      await apiKeys.settle(res.reservation, 400); // 100 back
      await apiKeys.settle(res.reservation, 400); // the same reservation again: nothing
      expect(Number(await r.hget(hash, 'tpm_level'))).to.be.within(600, 601);
      // A forged reservation refunding far more than was taken still stops at the capacity.
      const forged: Reservation = { ...res.reservation, tokens: 50_000 };
      await apiKeys.settle(forged, 0);
      expect(Number(await r.hget(hash, 'tpm_level'))).to.be.at.most(1000);
      const burst = await admitMany(k.key, 11, 100);
      expect(count(burst, 'ok')).to.equal(10);
    });

    it('settle charges use beyond the reservation: the level goes negative and the next admit waits for it', async () => {
      const k = await apiKeys.create({ tenant: 'acme', tpm: 1000 });
      const res = okOf(await apiKeys.admit(k.key, cost(100))); // 900 left
      await apiKeys.settle(res.reservation, 1600); // 1500 more: -600
      expect(Number(await r.hget(keys.apiKey(hashApiKey(k.key)), 'tpm_level'))).to.be.within(-600, -599);
      const next = await apiKeys.admit(k.key, cost(100));
      // 700 tokens short at 1/60 per ms: 42000 ms.
      expect(next).to.include({ status: 'limited', limit: 'tpm' });
      expect((next as { retryAfterMs: number }).retryAfterMs).to.be.within(41_000, 42_000);
    });

    it('settle after a revoke creates nothing; a key without tpm settles without a round trip', async () => {
      const k = await apiKeys.create({ tenant: 'acme', tpm: 1000 });
      const res = okOf(await apiKeys.admit(k.key, cost(100)));
      await apiKeys.revoke(k.id);
      await apiKeys.settle(res.reservation, 10);
      expect(await r.exists(keys.apiKey(hashApiKey(k.key)))).to.equal(0);

      const free = await apiKeys.create({ tenant: 'acme', rpm: 100 });
      const unmetered = okOf(await apiKeys.admit(free.key, cost(100))).reservation;
      expect(unmetered.metered).to.equal(false);
      const capped = await apiKeys.create({ tenant: 'acme', tpm: 1000 });
      const metered = okOf(await apiKeys.admit(capped.key, cost(100))).reservation;
      // MONITOR shows every command Redis runs, in order: a ping sent after settle marks the end.
      const calls: string[][] = [];
      const monitor = await r.monitor();
      const seen = new Promise<void>((resolve) =>
        monitor.on('monitor', (_t: string, args: string[], source: string) => {
          if (source !== 'lua') calls.push(args); // the commands scripts run show up too
          if (args[0]?.toLowerCase() === 'ping' && args[1] === 'settled') resolve();
        }),
      );
      await apiKeys.settle(unmetered, 5);
      await apiKeys.settle(metered, 5);
      await r.ping('settled');
      await seen;
      monitor.disconnect();
      const touching = (hash: string) => calls.filter((c) => c.some((a) => a.includes(hash)));
      expect(touching(unmetered.keyHash)).to.deep.equal([]);
      // The same observer sees the metered settle: one EVALSHA.
      expect(touching(metered.keyHash).map((c) => c[0]!.toLowerCase())).to.deep.equal(['evalsha']);
    });

    it('too_large: a cost above the capacity never passes, even from a full bucket, and takes nothing', async () => {
      const k = await apiKeys.create({ tenant: 'acme', rpm: 1, tpm: 1000 });
      expect(await apiKeys.admit(k.key, cost(1001))).to.deep.equal({ status: 'too_large', limit: 'tpm', capacity: 1000 });
      expect(await apiKeys.admit(k.key, { requests: 2, tokens: 1 })).to.deep.equal({
        status: 'too_large',
        limit: 'rpm',
        capacity: 1,
      });
      // Neither refusal took anything: the whole capacity is still there.
      okOf(await apiKeys.admit(k.key, cost(1000)));
    });

    it('a key without limits is unlimited, and its hash gets no bucket state', async () => {
      const k = await apiKeys.create({ tenant: 'acme' });
      const results = await admitMany(k.key, 200, 1_000_000);
      expect(count(results, 'ok')).to.equal(200);
      expect(
        Object.keys(await r.hgetall(keys.apiKey(hashApiKey(k.key)))).filter((f) => /^(rpm|tpm)_(level|at)$/.test(f)),
      ).to.deep.equal([]);
    });

    it('a hand-edited limit: not a number is an error, not unlimited; 0 refuses everything', async () => {
      const k = await apiKeys.create({ tenant: 'acme', tpm: 1000 });
      await r.hset(keys.apiKey(hashApiKey(k.key)), 'tpm', 'lots');
      const err = await apiKeys.admit(k.key, cost(1)).then(
        () => null,
        (e: unknown) => e as Error,
      );
      expect(err?.message).to.match(/API key key_[0-9a-f]{12} has an invalid tpm: lots/);
      // A limit of 0 blocks the key, even for a request that costs nothing of it.
      await r.hset(keys.apiKey(hashApiKey(k.key)), 'tpm', '0');
      expect(await apiKeys.admit(k.key, cost(0))).to.deep.equal({ status: 'too_large', limit: 'tpm', capacity: 0 });
    });
  });

  describe('errors for refused admissions', () => {
    const secret = `sk-llmux-${'Ab3'.repeat(10)}xy`;

    it('unknown -> 401 invalid_api_key with the key masked; a missing key says so', () => {
      const err = admissionError({ status: 'unknown' }, cost(1), secret);
      expect(err).to.be.instanceOf(AuthenticationError);
      expect(err.status).to.equal(401);
      expect(err.toBody().error).to.deep.include({ type: 'invalid_request_error', code: 'invalid_api_key', param: null });
      expect(err.message).to.match(/^Incorrect API key provided: sk-llm\.\.\.b3xy\. /);
      expect(err.message).to.not.include(secret.slice(6, -4));
      expect(new AuthenticationError(null).message).to.match(/^You didn't provide an API key\. /);
      expect(new AuthenticationError('short').message).to.match(/^Incorrect API key provided: \*\*\*\. /);
    });

    it('limited -> 429 rate_limit_exceeded naming the limit, with Retry-After rounded up', () => {
      const err = admissionError(
        { status: 'limited', limit: 'tpm', retryAfterMs: 3150, capacity: 1000 },
        cost(120),
        secret,
      ) as RateLimitError;
      expect(err).to.be.instanceOf(RateLimitError);
      expect(err.toBody().error).to.deep.equal({
        message: 'Rate limit reached for tokens per minute (TPM): Limit 1000, Requested 120. Please try again in 3.2s.',
        type: 'rate_limit_error',
        param: null,
        code: 'rate_limit_exceeded',
      });
      expect(err.status).to.equal(429);
      expect(err.retryAfterSeconds).to.equal(4);
      expect(err.retryAfterMs).to.equal(3150);
      const rpm = admissionError({ status: 'limited', limit: 'rpm', retryAfterMs: 250, capacity: 5 }, cost(9), secret);
      expect(rpm.message).to.equal(
        'Rate limit reached for requests per minute (RPM): Limit 5, Requested 1. Please try again in 250ms.',
      );
      expect((rpm as RateLimitError).retryAfterSeconds).to.equal(1);
      expect(RateLimitError.exceeded('rpm', 1, 1, 59_001).message).to.match(/Please try again in 59\.1s\.$/);
      expect(RateLimitError.exceeded('rpm', 1, 1, 60_000).message).to.match(/Please try again in 1m0s\.$/);
      expect(RateLimitError.exceeded('rpm', 1, 1, 125_500).message).to.match(/Please try again in 2m6s\.$/);
    });

    it('too_large -> 429 request_too_large, with no Retry-After (waiting never helps)', () => {
      const err = admissionError({ status: 'too_large', limit: 'tpm', capacity: 1000 }, cost(4096), secret) as RateLimitError;
      expect(err.status).to.equal(429);
      expect(err.code).to.equal('request_too_large');
      expect(err.message).to.equal(
        'Request too large for tokens per minute (TPM): Limit 1000, Requested 4096. ' +
          'The input or output tokens must be reduced in order to run successfully.',
      );
      expect(err.retryAfterSeconds).to.equal(undefined);
    });
  });
});

/**
 * `llmctl keys` against a real controller process (local mode, one sim
 * model), whose admin server writes to the test's Redis; the keys it issues
 * are then checked with ApiKeys.admit, as the gateway will use them.
 */
describe('llmctl keys', function () {
  const CLI = entryOf('@llmux/controller').replace(/main\.js$/, 'cli/main.js');
  let redis: TestRedis;
  let r: Redis;
  let apiKeys: ApiKeys;
  let dir: string;
  let controller: TestProcess;
  let admin: string;

  before(async () => {
    redis = await startTestRedis();
    r = createRedis(redis.url, { name: 'llmctl-keys-test' });
    await r.connect();
    apiKeys = new ApiKeys(r, new Keys(redis.prefix));
    dir = await mkdtemp(join(tmpdir(), 'llmux-keys-'));
    const file = join(dir, 'deployments.json');
    await writeFile(file, JSON.stringify({ models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 5, itlMs: 5 } }] }));
    controller = new TestProcess('controller', entryOf('@llmux/controller'), {
      REDIS_URL: redis.url,
      KEY_PREFIX: redis.prefix,
      PORT: '0',
      ADMIN_PORT: '0',
      DEPLOYMENTS_FILE: file,
      CONTROLLER_ID: 'k1',
      LOG_LEVEL: 'info',
      DRAIN_TIMEOUT_MS: '500',
    });
    const line = await controller.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('llmux ready at'));
    admin = /admin: (\S+)\)/.exec(String(line.msg))![1]!;
  });

  after(async () => {
    await controller?.stop();
    r?.disconnect();
    await redis?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  interface CliResult {
    code: number | null;
    stdout: string;
    stderr: string;
  }

  /** Runs llmctl to its end, with none of the host's LLMUX_ADMIN_* settings. */
  function llmctl(args: string[]): Promise<CliResult> {
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith('LLMUX_ADMIN_')) delete env[k];
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  const WARNING = 'Store the key now: it is shown only this once and cannot be recovered.';

  it('create (--json and human), list, revoke; the keys work with admit, and no log holds a secret', async () => {
    const j = await llmctl([
      'keys',
      'create',
      '--tenant',
      'acme',
      '--name',
      'ci',
      '--rpm',
      '60',
      '--tpm',
      '1000',
      '--weight',
      '2.5',
      '--max-priority',
      'high',
      '--json',
      '--address',
      admin,
    ]);
    expect(j.code, j.stderr).to.equal(0);
    expect(j.stderr).to.equal(`llmctl: ${WARNING} If it is lost, revoke it and create another.\n`);
    const acme = JSON.parse(j.stdout) as { id: string; key: string; record: ApiKeyRecord };
    expect(acme.key).to.match(/^sk-llmux-[0-9A-Za-z]{32}$/);
    expect(acme.record).to.deep.include({
      id: acme.id,
      tenant: 'acme',
      name: 'ci',
      rpm: 60,
      tpm: 1000,
      weight: 2.5,
      maxPriority: 'high',
    });
    const admitted = await apiKeys.admit(acme.key, { requests: 1, tokens: 1000 });
    expect(admitted).to.deep.include({ status: 'ok', record: acme.record });
    expect(await apiKeys.admit(acme.key, { requests: 1, tokens: 1 })).to.include({ status: 'limited', limit: 'tpm' });

    const h = await llmctl(['keys', 'create', '--tenant', 'beta', '--address', admin]);
    expect(h.code, h.stderr).to.equal(0);
    expect(h.stderr).to.equal('');
    const lines = h.stdout.trimEnd().split('\n');
    expect(lines).to.have.length(3);
    const id = /^created API key (key_[0-9a-f]{12}) \((.*)\)$/.exec(lines[0]!);
    expect(id?.[2]).to.equal('tenant beta, rpm unlimited, tpm unlimited, weight 1, max priority normal');
    const betaKey = /^key: (sk-llmux-[0-9A-Za-z]{32})$/.exec(lines[1]!)?.[1];
    expect(betaKey).to.be.a('string');
    expect(lines[2]).to.match(new RegExp(`^${WARNING.replace(/\./g, '\\.')}`));
    const beta = await apiKeys.admit(betaKey!, { requests: 1, tokens: 10 });
    expect(beta).to.deep.include({ status: 'ok' });
    expect((beta as { record: ApiKeyRecord }).record).to.deep.include({ id: id![1], tenant: 'beta', maxPriority: 'normal' });

    const listed = await llmctl(['keys', 'list', '--address', admin, '--json']);
    expect(JSON.parse(listed.stdout)).to.deep.equal(await apiKeys.list());
    const table = await llmctl(['keys', 'list', '--address', admin]);
    const rows = table.stdout.trimEnd().split('\n');
    expect(rows[0]!.split(/\s{2,}/)).to.deep.equal(['ID', 'TENANT', 'NAME', 'RPM', 'TPM', 'WEIGHT', 'MAX PRIORITY', 'CREATED']);
    expect(rows[1]!.split(/\s{2,}/).slice(0, 7)).to.deep.equal([acme.id, 'acme', 'ci', '60', '1000', '2.5', 'high']);
    expect(rows[2]!.split(/\s{2,}/).slice(0, 7)).to.deep.equal([id![1], 'beta', '-', 'unlimited', 'unlimited', '1', 'normal']);
    expect(rows[1]!.split(/\s{2,}/)[7]).to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    for (const out of [listed.stdout, table.stdout]) expect(out).to.not.include(acme.key).and.not.include(betaKey!);

    const revoked = await llmctl(['keys', 'revoke', acme.id, '--address', admin]);
    expect(revoked).to.deep.equal({ code: 0, stdout: `revoked API key ${acme.id}\n`, stderr: '' });
    expect(await apiKeys.admit(acme.key, { requests: 1, tokens: 1 })).to.deep.equal({ status: 'unknown' });
    const again = await llmctl(['keys', 'revoke', acme.id, '--address', admin]);
    expect(again).to.deep.equal({ code: 1, stdout: '', stderr: `llmctl: no API key with id "${acme.id}"\n` });
    expect((await apiKeys.list()).map((k) => k.id)).to.deep.equal([id![1]]);

    // The controller recorded both changes by id, and never wrote a secret to its logs.
    await controller.waitForLog((l) => l.event === 'api-key-revoked' && l.subject === 'acme');
    expect(controller.logs.some((l) => l.event === 'api-key-created' && l.subject === 'beta')).to.equal(true);
    const logText = JSON.stringify(controller.logs) + controller.stderr.join('\n');
    for (const s of [acme.key, betaKey!]) expect(logText).to.not.include(s);
  });

  it('rejects bad options with exit 2 before calling the controller', async () => {
    const cases: [string[], RegExp][] = [
      [['keys'], /^llmctl: keys takes create \| list \| revoke <id>/],
      [['keys', 'rotate'], /^llmctl: unknown keys command "rotate"/],
      [['keys', 'create'], /^llmctl: keys create needs --tenant <tenant>/],
      [['keys', 'create', '--tenant', 'has space'], /^llmctl: --tenant must be 1-64 characters/],
      [['keys', 'create', '--tenant', 'a', '--rpm', '0'], /^llmctl: --rpm must be a whole number >= 1 \(got "0"\)/],
      [['keys', 'create', '--tenant', 'a', '--tpm', '1.5'], /^llmctl: --tpm must be a whole number >= 1 \(got "1\.5"\)/],
      [['keys', 'create', '--tenant', 'a', '--rpm', '1e3'], /^llmctl: --rpm must be a whole number/],
      [['keys', 'create', '--tenant', 'a', '--weight', '0'], /^llmctl: --weight must be a number > 0 \(got "0"\)/],
      [['keys', 'create', '--tenant', 'a', '--weight', 'heavy'], /^llmctl: --weight must be a number > 0/],
      [
        ['keys', 'create', '--tenant', 'a', '--max-priority', 'urgent'],
        /^llmctl: --max-priority must be one of low, normal, high/,
      ],
      [['keys', 'create', 'extra', '--tenant', 'a'], /^llmctl: keys create takes no arguments \(got extra\)/],
      [['keys', 'revoke'], /^llmctl: keys revoke takes <id>/],
      [['keys', 'list', '--tenant', 'a'], /^llmctl: --tenant is an option of keys create only/],
      [['workers', '--rpm', '5'], /^llmctl: --rpm is an option of keys create only/],
    ];
    const before = await apiKeys.list();
    for (const [args, message] of cases) {
      const res = await llmctl([...args, '--address', admin]);
      expect(res.code, args.join(' ')).to.equal(2);
      expect(res.stdout).to.equal('');
      expect(res.stderr, args.join(' '))
        .to.match(message)
        .and.match(/\nusage: llmctl/);
    }
    expect(await apiKeys.list()).to.deep.equal(before);
  });
});
