import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { DeploymentRegistry, Keys, parseDeployments } from '@llmux/shared';
import { freePort } from '@llmux/controller';
import { entryOf, TestProcess, type LogLine } from '../helpers/processes.js';
import { startTestRedis, type TestRedis } from '../helpers/redis.js';
import { TestSystem } from '../helpers/system.js';
import { expectComplete, openStream } from '../helpers/streams.js';
import { story } from '../helpers/engines.js';

const run = promisify(execFile);
const sim = (name: string, itlMs = 10) => ({ name, engine: { type: 'sim', ttftMs: 5, itlMs }, concurrency: 8 });
const CLI = entryOf('@llmux/controller').replace(/main\.js$/, 'cli/main.js');

interface Proc {
  id: string;
  pid: number;
  state: string;
  restarts: number;
}

/**
 * The controller as it runs for real: its own process supervising real
 * worker agents and a gateway over a private Redis.
 */
describe('controller', function () {
  let redis: TestRedis;
  let dir: string;
  let file: string;
  const controllers: TestProcess[] = [];
  let r: Redis;

  let keys: Keys;

  beforeEach(async () => {
    redis = await startTestRedis();
    r = new Redis(redis.url);
    keys = new Keys(redis.prefix);
    dir = await mkdtemp(join(tmpdir(), 'llmux-ctl-'));
    file = join(dir, 'deployments.json');
  });

  afterEach(async () => {
    await Promise.allSettled(controllers.splice(0).map((c) => c.stop()));
    r.disconnect();
    await redis.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const writeDeployments = (models: unknown[]) => writeFile(file, JSON.stringify({ models }));

  async function startController(
    id: string,
    env: NodeJS.ProcessEnv = {},
  ): Promise<{ proc: TestProcess; url: string; admin: string }> {
    const proc = new TestProcess(id, entryOf('@llmux/controller'), {
      REDIS_URL: redis.url,
      KEY_PREFIX: redis.prefix,
      PORT: '0',
      ADMIN_PORT: '0',
      DEPLOYMENTS_FILE: file,
      CONTROLLER_ID: id,
      LOG_LEVEL: 'info',
      DRAIN_TIMEOUT_MS: '500',
      HEALTH_INTERVAL_MS: '200',
      HEARTBEAT_INTERVAL_MS: '200',
      HEARTBEAT_TTL_MS: '1000',
      ...env,
    });
    controllers.push(proc);
    const line = await proc.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('llmux ready at'));
    const m = /at (\S+) .*admin: (\S+)\)/.exec(String(line.msg))!;
    return { proc, url: m[1]!, admin: m[2]! };
  }

  const event = (kind: string, subject?: string) => (l: LogLine) =>
    l.component === 'controller' && l.event === kind && (subject === undefined || l.subject === subject);

  async function processes(): Promise<Map<string, Proc>> {
    const raw = await r.hgetall(keys.localProcesses());
    return new Map(Object.entries(raw).map(([k, v]) => [k, JSON.parse(v) as Proc]));
  }

  it('kill -9 of a local worker: its request is handed over, it restarts and serves again', async () => {
    await writeDeployments([sim('sim')]);
    const { proc, url } = await startController('c1');
    const worker = (await processes()).get('c1-sim-0')!;
    const s = await openStream(url, 'sim', 150, 'Tell me');
    await s.firstText;
    process.kill(worker.pid, 'SIGKILL');
    await proc.waitForLog(event('worker-dead', 'c1-sim-0'));
    await proc.waitForLog(event('requests-handed-over', 'c1-sim-0'));
    await proc.waitForLogs(event('worker-up', 'c1-sim-0'), 2);
    expect(await expectComplete({ redis: r, keys }, await gatewayId(), s)).to.equal(story(150));
    const after = (await processes()).get('c1-sim-0')!;
    expect(after.restarts).to.equal(1);
    expect(after.pid).to.not.equal(worker.pid);
  });

  it('a hung worker (heartbeat lapsed, process alive) is declared dead, handed over and restarted', async () => {
    await writeDeployments([sim('sim')]);
    const { proc, url } = await startController('c1');
    const worker = (await processes()).get('c1-sim-0')!;
    const s = await openStream(url, 'sim', 150, 'Tell me');
    await s.firstText;
    process.kill(worker.pid, 'SIGSTOP');
    await proc.waitForLog(event('worker-dead', 'c1-sim-0'));
    await proc.waitForLog(event('worker-restarted', 'c1-sim-0'));
    await proc.waitForLogs(event('worker-up', 'c1-sim-0'), 2);
    expect(await expectComplete({ redis: r, keys }, await gatewayId(), s)).to.equal(story(150));
    expect((await processes()).get('c1-sim-0')!.pid).to.not.equal(worker.pid);
  });

  it('detects a crash loop, stops restarting it, and keeps serving the healthy model', async () => {
    await writeDeployments([sim('sim')]);
    const { proc, url } = await startController('c1', { CRASH_LOOP_EXITS: '3' });
    // A model whose file is not a model: its worker fails at every start.
    await writeDeployments([sim('sim'), { name: 'broken', source: file, engine: { type: 'llamacpp' }, concurrency: 1 }]);
    await proc.waitForLog(event('crash-loop', 'c1-broken-0'));
    expect((await processes()).get('c1-broken-0')!.state).to.equal('crashloop');
    const ok = await openStream(url, 'sim', 5, 'Tell me');
    expect((await ok.body).includes('[DONE]')).to.equal(true);
  });

  it('applies a changed deployments file while streams run: none is dropped, new models start', async () => {
    await writeDeployments([sim('sim')]);
    const { proc, url } = await startController('c1');
    const streams = await Promise.all(Array.from({ length: 4 }, () => openStream(url, 'sim', 200, 'Tell me')));
    await Promise.all(streams.map((s) => s.firstText));
    // sim changes (its worker restarts: drains, hands back) and sim2 is added.
    await writeDeployments([sim('sim', 5), sim('sim2')]);
    await proc.waitForLog(event('deployments-applied'));
    const gw = await gatewayId();
    for (const s of streams) expect(await expectComplete({ redis: r, keys }, gw, s)).to.equal(story(200));
    await proc.waitForLog(event('worker-up', 'c1-sim2-0'));
    const added = await openStream(url, 'sim2', 5, 'Tell me');
    expect((await added.body).includes('[DONE]')).to.equal(true);
  });

  it('a standby takes over when the leader is killed, and runs one fleet, not two', async () => {
    await writeDeployments([sim('sim')]);
    const port = String(await freePort());
    const leaderEnv = { LEASE_TTL_MS: '1500', PORT: port };
    await startController('c1', leaderEnv);
    const standby = new TestProcess('c2', entryOf('@llmux/controller'), {
      REDIS_URL: redis.url,
      KEY_PREFIX: redis.prefix,
      ADMIN_PORT: '0',
      DEPLOYMENTS_FILE: file,
      CONTROLLER_ID: 'c2',
      LOG_LEVEL: 'info',
      DRAIN_TIMEOUT_MS: '500',
      ...leaderEnv,
    });
    controllers.push(standby);
    await standby.waitForLog((l) => typeof l.msg === 'string' && l.msg.includes('is a standby'));
    const t0 = Date.now();
    controllers[0]!.kill('SIGKILL');
    const ready = await standby.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('llmux ready at'));
    const tookOverMs = Date.now() - t0;
    expect(tookOverMs).to.be.lessThan(10_000);
    const url = /at (\S+) /.exec(String(ready.msg))![1]!;
    const s = await openStream(url, 'sim', 5, 'Tell me');
    expect((await s.body).includes('[DONE]')).to.equal(true);
    expect([...(await processes()).keys()].sort()).to.deep.equal(['c2-gateway', 'c2-sim-0']);
    expect(standby.logs.filter(event('leader', 'c2'))).to.have.length(1);
  });

  it('llmctl lists workers and drains one', async () => {
    await writeDeployments([sim('sim')]);
    const { proc, admin } = await startController('c1');
    const { stdout } = await run(process.execPath, [CLI, 'workers', '--address', admin, '--json']);
    const workers = JSON.parse(stdout) as { id: string; alive: boolean }[];
    expect(workers.map((w) => [w.id, w.alive])).to.deep.equal([['c1-sim-0', true]]);
    const table = await run(process.execPath, [CLI, 'workers', '--address', admin]);
    expect(table.stdout)
      .to.match(/ID\s+ALIVE/)
      .and.match(/c1-sim-0/);
    await run(process.execPath, [CLI, 'drain', 'c1-sim-0', '--address', admin]);
    await proc.waitForLog(event('draining', 'c1-sim-0'));
    await proc.waitForLogs(event('worker-up', 'c1-sim-0'), 2);
    expect((await processes()).get('c1-sim-0')!.restarts).to.equal(1);
  });

  it('an agent runs BullMQ control jobs, with retry on failure', async () => {
    const sys = await TestSystem.start({ deployments: { models: [sim('sim')] }, workers: [{ env: { WORKER_ID: 'w0' } }] });
    const conn = new Redis(sys.testRedis.url, { maxRetriesPerRequest: null });
    const queue = new Queue(sys.keys.controlQueue('w0'), { connection: conn });
    try {
      // sim2 is not published yet: the first attempt fails, the retry after publishing succeeds.
      const job = await queue.add('load-model', { model: 'sim2' }, { attempts: 3, backoff: { type: 'fixed', delay: 300 } });
      await sys.workers[0]!.waitForLog((l) => l.msg === 'control job failed' && l.id === job.id);
      const both = parseDeployments({ models: [sim('sim'), sim('sim2')] });
      await new DeploymentRegistry(sys.redis, sys.keys).publish(both);
      await sys.workers[0]!.waitForLog((l) => l.msg === 'control job done' && l.id === job.id);
      const done = await queue.getJob(job.id!);
      expect(await done!.getState()).to.equal('completed');
      // BullMQ counts started attempts apart from failed ones.
      expect(done!.attemptsStarted).to.equal(2);
      expect(done!.failedReason).to.match(/no published deployment named "sim2"/);
      // Listing models refreshes the gateway's catalog, as a client checking for the new model would.
      const listed = (await (await fetch(`${sys.url}/v1/models`)).json()) as { data: { id: string }[] };
      expect(listed.data.map((m) => m.id)).to.include('sim2');
      const s = await openStream(sys.url, 'sim2', 5, 'Tell me');
      expect((await s.body).includes('[DONE]')).to.equal(true);
      await queue.add('drain', {});
      expect((await sys.workers[0]!.exited).code).to.equal(0);
    } finally {
      await queue.close();
      conn.disconnect();
      await sys.stop();
    }
  });

  /** The id of the system's one gateway, from its alive key. */
  async function gatewayId(): Promise<string> {
    const k = await r.keys(`${keys.prefix}:gw:*:alive`);
    return /\{(.+)\}/.exec(k[0]!)![1]!;
  }
});
