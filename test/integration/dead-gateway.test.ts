import { expect } from 'chai';
import { decodeEvent, type ReplyEvent } from '@llmux/shared';
import { TestSystem } from '../helpers/system.js';
import { entryOf, TestProcess, type LogLine } from '../helpers/processes.js';
import { expectComplete, openStream, replyEvents, type OpenStream } from '../helpers/streams.js';
import { parseSse, streamedText, type SseEvent } from '../helpers/http.js';
import { scrape, type Metrics } from '../helpers/metrics.js';
import { story } from '../helpers/engines.js';

const GW_A = 'gw-a';
const GW_B = 'gw-b';
/** 40 ms a token: A's requests would run 80 s; B's run about 16 s, past A's cancellation. */
const ITL_MS = 40;
const A_TOKENS = 2000;
const B_TOKENS = 400;
const GONE = 'gateway gone; request cancelled';

/** Scrapes until `done` holds: a bounded poll of a real endpoint, for figures that settle just after a log line. */
async function scrapeUntil(url: string, done: (m: Metrics) => boolean, what: string, ms = 10_000): Promise<Metrics> {
  const deadline = Date.now() + ms;
  for (;;) {
    const m = await scrape(url);
    if (done(m)) return m;
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Follows a request from `lastEventId` on: resolves once the headers are in, with the events to come. */
async function follow(url: string, lastEventId: string): Promise<{ status: number; events: Promise<SseEvent[]> }> {
  const res = await fetch(url, { headers: { 'last-event-id': lastEventId } });
  return { status: res.status, events: res.text().then(parseSse) };
}

/** Resolves once `key` exists: a bounded poll of Redis, for a mark another process sets without logging it. */
async function keyExists(sys: TestSystem, key: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while ((await sys.redis.exists(key)) === 0) {
    if (Date.now() > deadline) throw new Error(`${key} not set within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A gateway killed with SIGKILL: the worker cancels its requests once its
 * liveness key expires, frees their slots and never runs what it had queued;
 * another gateway's streams (and a request of the dead gateway that a client
 * follows through the live one) are untouched. Real processes, real Redis,
 * the sim engine.
 */
describe('requests of a dead gateway are cancelled', function () {
  let sys: TestSystem;
  let gwA: TestProcess | undefined;

  afterEach(async () => {
    await gwA?.stop();
    await sys?.stop();
  });

  it('kill -9 of one gateway: its running requests stop within 10 s, its queued one never runs, the other gateway is unaffected', async () => {
    sys = await TestSystem.start({
      // 5 slots: A's 2 running + 1 followed, B's 2; A's fourth waits in the queue.
      deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 10, itlMs: ITL_MS }, concurrency: 5 }] },
      workers: [{ env: { WORKER_ID: 'w0', LOG_LEVEL: 'debug' } }],
      gatewayEnv: { GATEWAY_ID: GW_B },
    });
    const w0 = sys.workers[0]!;
    const metricsUrl = `http://127.0.0.1:${(await w0.ready()).metricsPort as number}`;
    gwA = new TestProcess('gateway-a', entryOf('@llmux/gateway'), { ...sys.env, PORT: '0', GATEWAY_ID: GW_A });
    const urlA = String((await gwA.ready()).url);
    const started = (rid: string) => (l: LogLine) => l.rid === rid && l.msg === 'request started';

    // A dead gateway's clients lose their connections: their bodies reject, which is expected.
    const onA: OpenStream[] = [];
    const openOnA = async (tokens: number) => {
      const s = await openStream(urlA, 'sim', tokens);
      s.body.catch(() => '');
      onA.push(s);
      return s;
    };
    const runningA = [await openOnA(A_TOKENS), await openOnA(A_TOKENS)];
    // Followed through B (a resume from another gateway): its gateway's death must not cancel it.
    const followed = await openOnA(B_TOKENS);
    const onB = [await openStream(sys.url, 'sim', B_TOKENS), await openStream(sys.url, 'sim', B_TOKENS)];
    for (const s of [...runningA, followed, ...onB]) await w0.waitForLog(started(s.rid));
    await Promise.all([...runningA, followed, ...onB].map((s) => s.firstText));
    const following = await follow(`${sys.url}/v1/completions/${followed.rid}`, '0');
    expect(following.status).to.equal(200);
    await keyExists(sys, sys.keys.requestFollowers(GW_A, followed.rid));
    // Every slot is busy: this one waits in the queue when A dies.
    const queued = await openOnA(40);
    const before = await scrape(metricsUrl);
    expect(before.sample('llmux_num_requests_running', { model: 'sim' }), 'all slots busy').to.equal(5);
    expect(w0.logs.some(started(queued.rid)), 'queued request not started').to.equal(false);

    const killedAt = Date.now();
    gwA.kill('SIGKILL');
    await gwA.exited;

    // A's running requests are cancelled on the worker, then the queued one is claimed and skipped.
    const gone = await w0.waitForLogs((l) => l.msg === GONE, 3);
    const byRid = new Map(gone.map((l) => [l.rid as string, l]));
    const measured: number[] = [];
    for (const s of runningA) {
      const l = byRid.get(s.rid);
      expect(l, `${s.rid} cancelled`).to.not.equal(undefined);
      expect(l!.gateway).to.equal(GW_A);
      expect(l!.started).to.equal(true);
      measured.push(Number(l!.time) - killedAt);
    }
    const q = byRid.get(queued.rid);
    expect(q, 'queued request skipped').to.not.equal(undefined);
    expect(q!.started).to.equal(false);
    expect(byRid.has(followed.rid), 'the followed request runs on').to.equal(false);
    console.log(`      A's requests cancelled ${measured.join(' and ')} ms after SIGKILL`);
    for (const ms of measured) expect(ms, 'cancelled within 10 s of the kill').to.be.lessThan(10_000);

    // Their slots are free: only B's two and the followed one run now (fewer if those ended meanwhile).
    const after = await scrapeUntil(
      metricsUrl,
      (m) => m.sample('llmux_worker_requests_total', { model: 'sim', outcome: 'cancelled' }) === 3,
      'three cancellations counted',
    );
    expect(after.sample('llmux_num_requests_running', { model: 'sim' }), 'slots freed').to.be.at.most(3);

    // The queued request never ran: no start, no token; its log holds only the terminal event.
    expect(w0.logs.filter((l) => l.rid === queued.rid && l.msg !== GONE).map((l) => l.msg)).to.deep.equal([]);
    const logOf = async (rid: string): Promise<ReplyEvent[]> => {
      const entries = (await sys.redis.xrange(sys.keys.requestLog(GW_A, rid), '-', '+')) as [string, string[]][];
      return entries.map(([, f]) => decodeEvent(f)!);
    };
    const queuedLog = await logOf(queued.rid);
    expect(queuedLog).to.have.length(1);
    expect(queuedLog[0]).to.include({ type: 'error', seq: 0, status: 499, code: 'gateway_gone' });
    // The running ones end with the same terminal event, and nothing follows it on the dead reply stream.
    for (const s of runningA) {
      const evs = await replyEvents(sys, GW_A, s.rid);
      expect(evs.at(-1), s.rid).to.include({ type: 'error', status: 499, code: 'gateway_gone' });
      expect(evs.map((e) => e.seq)).to.deep.equal(evs.map((_, i) => i));
      expect((await logOf(s.rid)).at(-1)).to.deep.equal(evs.at(-1));
    }

    // B's streams complete exactly, after A's requests were cancelled; so does the followed one, read through B.
    const texts = await Promise.all(onB.map((s) => expectComplete(sys, GW_B, s)));
    for (const t of texts) expect(t).to.equal(story(B_TOKENS));
    // The worker logs 'request done' after the terminal event is in Redis: the line may reach us after the client's end.
    const doneLines = await Promise.all(onB.map((s) => w0.waitForLog((l) => l.rid === s.rid && l.msg === 'request done')));
    const doneAt = doneLines.map((l) => Number(l.time));
    console.log(`      B's streams ended ${doneAt.map((t) => t - killedAt).join(' and ')} ms after SIGKILL`);
    const followedEvents = await following.events;
    expect(followedEvents.at(-1)!.data).to.equal('[DONE]');
    expect(streamedText(followedEvents)).to.equal(story(B_TOKENS));
    await w0.waitForLog((l) => l.rid === followed.rid && l.msg === 'request done');
    // A new request through B is served as usual, and nothing runs any more.
    const more = await openStream(sys.url, 'sim', 10);
    expect(await expectComplete(sys, GW_B, more)).to.equal(story(10));
    await scrapeUntil(metricsUrl, (m) => m.sample('llmux_num_requests_running', { model: 'sim' }) === 0, 'all slots free');
    expect(w0.logs.filter((l) => l.msg === GONE)).to.have.length(3);
    expect(w0.running).to.equal(true);
  });
});
