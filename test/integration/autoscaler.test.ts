import { expect } from 'chai';
import {
  createLogger,
  createRedis,
  Keys,
  parseDeployments,
  RequestQueue,
  WorkerRegistry,
  type Deployment,
  type Redis,
} from '@llmux/shared';
import { Autoscaler } from '@llmux/controller';
import { startTestRedis, type TestRedis } from '../helpers/redis.js';

/** The autoscaler's decisions against a real Redis queue (no processes needed to decide). */
describe('autoscaler decisions', function () {
  let redis: TestRedis;
  let r: Redis;
  let keys: Keys;
  let queue: RequestQueue;
  let workers: WorkerRegistry;

  beforeEach(async () => {
    redis = await startTestRedis();
    keys = new Keys(redis.prefix);
    r = createRedis(redis.url);
    await r.connect();
    queue = new RequestQueue(r, keys);
    workers = new WorkerRegistry(r, keys);
  });

  afterEach(async () => {
    r.disconnect();
    await redis.stop();
  });

  const deployment = (o: Record<string, unknown>): Deployment =>
    parseDeployments({ models: [{ name: 'sim', engine: { type: 'sim' }, concurrency: 4, ...o }] }).models[0]!;
  const scaler = () =>
    new Autoscaler({
      redis: r,
      keys,
      queue,
      workers,
      targetUtilization: 0.75,
      scaleDownAfterMs: 0,
      logger: createLogger('test', 'silent'),
    });
  const enqueue = (n: number) =>
    Promise.all(
      Array.from({ length: n }, (_, i) =>
        queue.enqueue({
          rid: `r${i}-${Math.random()}`,
          model: 'sim',
          gw: 'g',
          params: { kind: 'completion', prompt: 'x', maxTokens: 1 },
          enqueuedAt: Date.now(),
          deadline: Date.now() + 60_000,
          tenant: 'default',
          priority: 'normal',
          retainMs: 0,
        }),
      ),
    );
  const desired = async () => Number(await r.hget(keys.desiredScale(), 'sim'));
  const liveWorker = (id: string) =>
    workers.beat(
      {
        id,
        host: 'h',
        pid: 1,
        state: 'ready',
        models: ['sim'],
        engines: { sim: 'ready' },
        capacity: 4,
        inflight: 0,
        busySlotMs: 0,
        startedAt: 0,
        at: Date.now(),
      },
      60_000,
    );
  const drainAll = async () => {
    // As a worker claims: staged requests are dispatched into the stream first.
    await queue.dispatch('sim', 1000);
    const entries = await queue.claimNow('sim', 'w', 1000);
    for (const [id] of entries) await queue.ack('sim', id);
  };

  it('wakes a model scaled to zero as soon as a request waits, sizes to demand, and scales back to zero', async () => {
    const d = deployment({ replicas: { min: 0, max: 3 } });
    const a = scaler();
    expect(await a.tick([d])).to.deep.equal([]);
    await enqueue(1);
    const wake = await a.tick([d]);
    expect(wake.map((x) => [x.from, x.to])).to.deep.equal([[0, 1]]);
    expect(await desired()).to.equal(1);
    await liveWorker('w1');
    await enqueue(12);
    await a.tick([d]);
    expect(await desired()).to.equal(3); // ceil(13 / (4 x 0.75)) = 5, capped at max 3
    await drainAll();
    const down = await a.tick([d]);
    expect(down.map((x) => x.to)).to.deep.equal([0]);
    expect(await desired()).to.equal(0);
  });

  it('waits for the replicas it asked for before adding more for waiting work', async () => {
    const d = deployment({ replicas: { min: 1, max: 4 }, concurrency: 100 });
    const a = scaler();
    await r.hset(keys.desiredScale(), 'sim', '1'); // as the controller's apply sets it
    await enqueue(3);
    await a.tick([d]); // no live worker yet: 1 replica wanted, none up, so no more
    expect(await desired()).to.equal(1);
    await a.tick([d]);
    expect(await desired()).to.equal(1);
    await liveWorker('w1');
    await a.tick([d]);
    expect(await desired()).to.equal(2);
  });

  it('adds a replica when the expected queue wait breaks the TTFT SLO, even below the utilisation target', async () => {
    const d = deployment({ replicas: { min: 1, max: 3 }, concurrency: 100, slo: { ttftP95Ms: 100 } });
    const a = scaler();
    await liveWorker('w1');
    await enqueue(5);
    const [decision] = await a.tick([d]);
    expect(decision!.to).to.equal(2);
    expect(decision!.reason).to.match(/TTFT SLO/);
  });

  it('leaves a model alone when an operator set its replicas', async () => {
    const d = deployment({ replicas: { min: 0, max: 3 } });
    const a = scaler();
    await a.setDesired('sim', 2, 'operator');
    await a.tick([d]);
    expect(await desired()).to.equal(2);
  });
});
