import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import {
  abortLoads,
  auditKeys,
  gatewayOpen,
  Load,
  percentile,
  poll,
  queueDepth,
  report,
  secs,
  workerRunning,
  type Account,
  type RequestRecord,
  type Target,
} from './harness.js';

/**
 * Client scenarios shared by the fault suite (full size) and the integration
 * tests (a small size that fits `npm test`). Each starts its own system and
 * stops it.
 */

/**
 * Clients leave at random moments (during admission, after a random time,
 * after a random number of chunks): afterwards every engine slot is free, the
 * gateway holds nothing open, the queue is empty, and every per-request key
 * carries a TTL.
 */
export async function leavingClients(size: { requests: number; clients: number; maxTokens: number }): Promise<void> {
  const REQUEST_TIMEOUT_MS = 120_000;
  const RETENTION_MS = 60_000;
  const sys = await TestSystem.start({
    deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 20, itlMs: 10 }, concurrency: 4 }] },
    workers: [
      { env: { WORKER_ID: 'w0', OUTPUT_RETENTION_MS: String(RETENTION_MS) } },
      { env: { WORKER_ID: 'w1', OUTPUT_RETENTION_MS: String(RETENTION_MS) } },
    ],
    gatewayEnv: {
      GATEWAY_ID: 'gw-leave',
      REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
      OUTPUT_RETENTION_MS: String(RETENTION_MS),
    },
  });
  try {
    const ports = await Promise.all(sys.workers.map(async (w) => (await w.ready()).metricsPort as number));
    const target: Target = { name: 'gw-leave', url: sys.url, gatewayId: 'gw-leave' };
    const load = new Load(sys, {
      targets: [target],
      model: 'sim',
      clients: size.clients,
      requests: size.requests,
      maxTokens: (r) => r.between(20, size.maxTokens),
      // Seven in ten leave: during admission, after a random time, or after a random number of chunks.
      abort: (r) => {
        const x = r.next();
        if (x < 0.1) return { afterMs: r.int(5) };
        if (x < 0.4) return { afterMs: r.between(5, 2000) };
        if (x < 0.7) return { afterChunks: r.between(1, 40) };
        return null;
      },
    }).start();
    const a = await load.finished();
    const idleMs = await poll(
      'every engine slot free',
      async () => (await Promise.all(ports.map(workerRunning))).every((n) => n === 0),
      15_000,
      50,
    );
    const open = await gatewayOpen(sys.url);
    const depth = await queueDepth(sys, 'sim');
    const keys = await auditKeys(sys);
    const cancelled = sys.workers.reduce(
      (n, w) => n + w.logs.filter((l) => l.msg === 'request cancelled' || l.msg === 'request cancelled before start').length,
      0,
    );
    report(`clients leaving at random moments (${size.requests} requests)`, a, {
      'cancelled on the workers': cancelled,
      'slots free after the last client': secs(idleMs),
      'per-request keys': keys.perRequest,
      'without TTL': keys.noTtl.length,
      'longest TTL left': secs(keys.maxTtlMs),
    });
    expect(a.failures, a.failures.join('\n')).to.deep.equal([]);
    // Seven in ten plan to leave; those planned late often complete first, so about half do leave.
    expect(a.aborted, 'clients left').to.be.greaterThan(size.requests / 4);
    expect(a.completed + a.aborted, 'the rest completed').to.equal(a.sent);
    expect(cancelled, 'requests cancelled on the workers').to.be.greaterThan(0);
    expect(open, 'open requests left on the gateway').to.equal(0);
    expect(depth).to.deep.include({ waiting: 0, pending: 0 });
    expect(keys.noTtl, 'per-request keys without a TTL').to.deep.equal([]);
    expect(keys.unknownNoTtl, 'keys of no known kind without a TTL').to.deep.equal([]);
    // The longest-lived: a cancel mark (REQUEST_TIMEOUT_MS + 60 s) or a request's record (time limit + grace + retention).
    expect(keys.maxTtlMs).to.be.at.most(REQUEST_TIMEOUT_MS + 30_000 + RETENTION_MS + 60_000);
  } finally {
    await abortLoads();
    await sys.stop();
  }
}

/**
 * Bursts of ten times what the system holds (slots plus queue), all at once:
 * 429s with Retry-After come fast, nothing times out, and the admitted
 * requests' time to first token stays within the deployment's SLO.
 */
export async function burst(size: { waves: number }): Promise<void> {
  const SLOTS = 8;
  const MAX_QUEUE = 8;
  const TTFT_SLO_MS = 2000;
  const sys = await TestSystem.start({
    deployments: {
      models: [
        {
          name: 'sim',
          engine: { type: 'sim', ttftMs: 20, itlMs: 10 },
          concurrency: SLOTS / 2,
          maxQueue: MAX_QUEUE,
          slo: { ttftP95Ms: TTFT_SLO_MS },
        },
      ],
    },
    workers: [{ env: { WORKER_ID: 'w0' } }, { env: { WORKER_ID: 'w1' } }],
    gatewayEnv: { GATEWAY_ID: 'gw-burst' },
  });
  try {
    const target: Target = { name: 'gw-burst', url: sys.url, gatewayId: 'gw-burst' };
    const capacity = SLOTS + MAX_QUEUE;
    const BURST = 10 * capacity;
    const WAVES = size.waves;
    const records: RequestRecord[] = [];
    const accounts: Account[] = [];
    for (let w = 0; w < WAVES; w++) {
      // All at once: one request per client.
      const load = new Load(sys, {
        targets: [target],
        model: 'sim',
        clients: BURST,
        requests: BURST,
        maxTokens: 20,
        clientTimeoutMs: 30_000,
      }).start();
      accounts.push(await load.finished());
      records.push(...load.records);
      // The next wave starts on an empty queue.
      await poll('queue drained', async () => {
        const d = await queueDepth(sys, 'sim');
        return d.waiting === 0 && d.pending === 0;
      });
    }
    const sum = accounts.reduce((t, x) => ({
      ...t,
      sent: t.sent + x.sent,
      accepted: t.accepted + x.accepted,
      completed: t.completed + x.completed,
      erroredExplicitly: t.erroredExplicitly + x.erroredExplicitly,
      lost: t.lost + x.lost,
      duplicated: t.duplicated + x.duplicated,
      errors: Object.fromEntries(
        [...new Set([...Object.keys(t.errors), ...Object.keys(x.errors)])].map((k) => [
          k,
          (t.errors[k] ?? 0) + (x.errors[k] ?? 0),
        ]),
      ),
      failures: [...t.failures, ...x.failures],
    }));
    const rejected = records.filter((r) => r.status === 429);
    const admitted = records.filter((r) => r.outcome === 'completed');
    const rejectMs = rejected.map((r) => r.tHead! - r.t0);
    const ttft = admitted.map((r) => r.tFirst! - r.t0);
    const e2e = admitted.map((r) => r.tEnd! - r.t0);
    const retryAfter = rejected.map((r) => Number(r.retryAfter));
    report(`burst of 10x capacity (${WAVES} x ${BURST} at once, capacity ${capacity})`, sum, {
      '429 latency p50': secs(percentile(rejectMs, 50)),
      '429 p99': secs(percentile(rejectMs, 99)),
      'Retry-After': `${Math.min(...retryAfter)}-${Math.max(...retryAfter)} s`,
      'admitted TTFT p50': secs(percentile(ttft, 50)),
      'TTFT p95': secs(percentile(ttft, 95)),
      'TTFT p99': secs(percentile(ttft, 99)),
      'end-to-end p99': secs(percentile(e2e, 99)),
      'SLO TTFT p95': secs(TTFT_SLO_MS),
    });
    expect(sum.failures, sum.failures.join('\n')).to.deep.equal([]);
    // Every answer is a completed stream or a 429: nothing timed out, nothing else failed.
    expect(sum.completed + rejected.length, 'completed or 429').to.equal(sum.sent);
    expect(rejected.length, 'refused').to.be.greaterThan(sum.sent / 2);
    for (const v of retryAfter) expect(v, 'Retry-After').to.be.within(1, 60);
    expect(percentile(rejectMs, 99), '429 p99 latency').to.be.below(1000);
    expect(percentile(ttft, 99), 'admitted TTFT p99 against the SLO').to.be.at.most(TTFT_SLO_MS);
  } finally {
    await abortLoads();
    await sys.stop();
  }
}
