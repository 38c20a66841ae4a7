import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { freePort, type ProcessInfo } from '@llmux/controller';
import { alive, entryOf, TestProcess, type LogLine } from '../helpers/processes.js';
import { parseSse, streamedText } from '../helpers/http.js';
import { parseMetrics } from '../helpers/metrics.js';
import { openStream } from '../helpers/streams.js';

const run = promisify(execFile);
const CLI = entryOf('@llmux/controller').replace(/main\.js$/, 'cli/main.js');

/** Rejects with `what` if `p` has not settled within `ms`: a hang fails the test instead of its timeout. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms))),
  ]);
}

/**
 * POSTs on a fresh connection (no keep-alive pool), so a request after a
 * restart never rides a socket of the gateway that was killed.
 */
function postFresh(url: string, body: unknown): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', agent: false, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/**
 * `npm start` healing itself: its gateway killed (`kill -9`) or hung
 * (SIGSTOP) is restarted by the controller, on the same port, while the
 * worker agent and the controller carry on untouched. One `npm start` (the
 * entrypoint, the build already ran, with a private redis-server) serves both
 * scenarios, in order.
 */
describe('self-healing on one machine: the supervised gateway', function () {
  let dir: string;
  let launcher: TestProcess;
  let url = '';
  let admin = '';
  let metricsUrl = '';
  /** Pids this suite stopped, to resume if they somehow outlive the test. */
  const stopped: number[] = [];

  before(async function () {
    dir = await mkdtemp(join(tmpdir(), 'llmux-heal-'));
    const deployments = join(dir, 'deployments.json');
    // The sim engine streams a token every 20 ms: a 300-token stream is still running when the gateway dies.
    await writeFile(
      deployments,
      JSON.stringify({ models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 5, itlMs: 20 }, concurrency: 4 }] }),
    );
    const metricsPort = await freePort();
    metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
    launcher = new TestProcess('launcher', entryOf('@llmux/controller'), {
      // Nothing listens here: the launcher starts its own redis-server, as `npm start` on a bare machine.
      REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
      // A fixed port: the restarted gateway must come back where clients look for it.
      PORT: String(await freePort()),
      ADMIN_PORT: '0',
      METRICS_PORT: String(metricsPort),
      DEPLOYMENTS_FILE: deployments,
      CONTROLLER_ID: 'heal',
      LOG_LEVEL: 'info',
      DRAIN_TIMEOUT_MS: '2000',
      GATEWAY_HEALTH_INTERVAL_MS: '300',
      GATEWAY_HEALTH_FAILURES: '3',
    });
    const line = await launcher.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('llmux ready at'));
    const m = /at (\S+) .*admin: (\S+)\)/.exec(String(line.msg))!;
    url = m[1]!;
    admin = m[2]!;
  });

  after(async () => {
    for (const pid of stopped) {
      try {
        process.kill(pid, 'SIGCONT');
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone, as it should be
      }
    }
    await launcher?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const event = (kind: string) => (l: LogLine) => l.component === 'controller' && l.event === kind;

  async function llmctl(...args: string[]): Promise<string> {
    return (await run(process.execPath, [CLI, ...args, '--address', admin])).stdout;
  }

  async function processes(): Promise<{ gateway: ProcessInfo; worker: ProcessInfo; all: ProcessInfo[] }> {
    const all = JSON.parse(await llmctl('processes', '--json')) as ProcessInfo[];
    expect(all.map((p) => [p.kind, p.id])).to.deep.equal([
      ['gateway', 'heal-gateway'],
      ['worker', 'heal-sim-0'],
    ]);
    return { gateway: all[0]!, worker: all[1]!, all };
  }

  /** `llmctl processes` as a table: the row of `id`, by column. */
  async function processRow(id: string): Promise<Record<string, string>> {
    const lines = (await llmctl('processes')).trimEnd().split('\n');
    const header = lines[0]!;
    expect(header.split(/\s{2,}/)).to.deep.equal(['KIND', 'ID', 'PID', 'STATE', 'RESTARTS', 'LAST EXIT', 'UPTIME']);
    const row = lines.find((l) => l.split(/\s{2,}/)[1] === id);
    expect(row, `a row for ${id}`).to.not.equal(undefined);
    const cols = ['KIND', 'ID', 'PID', 'STATE', 'RESTARTS', 'LAST EXIT', 'UPTIME'];
    return Object.fromEntries(cols.map((c) => [c, row!.slice(header.indexOf(c)).split(/\s{2,}/)[0]!]));
  }

  async function restartsMetric(): Promise<{ gateway: number; worker: number }> {
    const res = await fetch(metricsUrl);
    expect(res.status).to.equal(200);
    const m = parseMetrics(await res.text());
    return {
      gateway: m.sample('llmux_worker_restarts_total', { process: 'gateway' }),
      worker: m.sample('llmux_worker_restarts_total', { process: 'worker' }),
    };
  }

  /** A chat completion streamed to its end through the gateway at `url`. */
  async function chatSucceeds(): Promise<void> {
    const res = await postFresh(`${url}/v1/chat/completions`, {
      model: 'sim',
      messages: [{ role: 'user', content: 'Once upon a time' }],
      max_tokens: 10,
      stream: true,
    });
    expect(res.status, res.text).to.equal(200);
    const events = parseSse(res.text);
    expect(events.at(-1)!.data).to.equal('[DONE]');
    expect(streamedText(events).length).to.be.greaterThan(0);
  }

  it('kill -9 of the gateway: a stream in flight is cut cleanly, the gateway is back within 15 s, the worker never noticed', async () => {
    const before = await processes();
    expect(before.gateway).to.include({ state: 'ready', restarts: 0, lastExit: null });
    expect(before.worker).to.include({ state: 'ready', restarts: 0, lastExit: null });
    expect(before.gateway.pid).to.be.a('number');
    await chatSucceeds();

    const s = await openStream(url, 'sim', 300, 'Tell me');
    await s.firstText;
    const t0 = Date.now();
    process.kill(before.gateway.pid!, 'SIGKILL');

    // The client's connection ends: an error or an end, but never a [DONE] and never a hang.
    const outcome = await within(
      s.body.then(
        (text) => ({ text, err: null as Error | null }),
        (err: Error) => ({ text: '', err }),
      ),
      10_000,
      'the cut stream',
    );
    expect(outcome.text).to.not.include('[DONE]');

    await within(launcher.waitForLogs(event('gateway-up'), 2), 15_000, 'a new gateway');
    await chatSucceeds();
    const backMs = Date.now() - t0;
    console.log(`      gateway killed with SIGKILL: back and serving after ${backMs} ms`);
    expect(backMs).to.be.lessThan(15_000);

    const exit = launcher.logs.find((l) => l.msg === 'child exited; restarting' && l.child === 'gateway');
    expect(exit?.reason).to.equal('signal SIGKILL');
    const after = await processes();
    expect(after.gateway).to.include({ state: 'ready', restarts: 1, lastExit: 'signal SIGKILL' });
    expect(after.gateway.pid).to.be.a('number').and.not.equal(before.gateway.pid);
    expect(after.gateway.uptimeMs)
      .to.be.a('number')
      .and.lessThan(backMs + 5000);
    // The worker agent and the controller carried on untouched.
    expect(after.worker).to.include({ pid: before.worker.pid, state: 'ready', restarts: 0, lastExit: null });
    expect(launcher.running).to.equal(true);
    expect(JSON.parse(await llmctl('leader', '--json'))).to.deep.include({ answeredByLeader: true });
    expect(await restartsMetric()).to.deep.equal({ gateway: 1, worker: 0 });
    const row = await processRow('heal-gateway');
    expect(row).to.include({ KIND: 'gateway', PID: String(after.gateway.pid), STATE: 'ready', RESTARTS: '1' });
    expect(row['LAST EXIT']).to.equal('signal SIGKILL');
    expect(row.UPTIME).to.match(/^\d+s$/);
  });

  it('SIGSTOP of the gateway: the health check declares it hung, kills it and a new one serves', async () => {
    const before = await processes();
    expect(before.gateway.state).to.equal('ready');
    const pid = before.gateway.pid!;
    const gatewayRestarts = before.gateway.restarts;
    const t0 = Date.now();
    stopped.push(pid);
    process.kill(pid, 'SIGSTOP');

    const hung = await within(
      launcher.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('gateway is hung') && l.childPid === pid),
      10_000,
      'the health check',
    );
    expect(hung.reason).to.equal('health check failed (3 x timeout)');
    expect(hung.level).to.equal(50); // error: shown at the default LOG_LEVEL
    await within(launcher.waitForLogs(event('gateway-up'), gatewayRestarts + 2), 15_000, 'a new gateway');
    await chatSucceeds();
    const backMs = Date.now() - t0;
    console.log(`      gateway stopped with SIGSTOP: declared hung, back and serving after ${backMs} ms`);
    expect(backMs).to.be.lessThan(15_000);
    // SIGKILL ends a stopped process: the old one is gone.
    expect(alive(pid), `old gateway ${pid}`).to.equal(false);

    const restart = launcher.logs.filter((l) => l.msg === 'child exited; restarting' && l.child === 'gateway').at(-1);
    expect(restart?.reason).to.equal('health check failed (3 x timeout)');
    const after = await processes();
    expect(after.gateway).to.include({
      state: 'ready',
      restarts: gatewayRestarts + 1,
      lastExit: 'health check failed (3 x timeout)',
    });
    expect(after.gateway.pid).to.not.equal(pid);
    expect(after.worker).to.include({ pid: before.worker.pid, restarts: 0 });
    // The kill and the exit it causes are one restart, counted once.
    expect(await restartsMetric()).to.deep.equal({ gateway: gatewayRestarts + 1, worker: 0 });
    expect((await processRow('heal-gateway'))['LAST EXIT']).to.equal('health check failed (3 x timeout)');
  });
});
