import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { freePort } from '@llmux/controller';
import { alive, entryOf, TestProcess } from '../helpers/processes.js';
import { testModel } from '../helpers/models.js';
import { parseSse, streamedText } from '../helpers/http.js';

/** Direct children of `pid`, read from /proc. */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(name));
    } catch {
      // the process ended while we looked
    }
  }
  return out;
}

/**
 * `npm start` is `tsc -b` then this entrypoint; the test runs the entrypoint
 * itself (the build already ran) exactly as the README's command does.
 */
describe('npm start: the whole system on one machine', function () {
  let dir: string;
  let launcher: TestProcess;
  let ready = '';

  before(async function () {
    dir = await mkdtemp(join(tmpdir(), 'llmux-start-'));
    const deployments = join(dir, 'deployments.json');
    await writeFile(
      deployments,
      JSON.stringify({
        models: [
          {
            name: 'stories260K',
            source: await testModel('stories260K'),
            engine: { type: 'llamacpp', threads: 1, contextSize: 1024 },
            concurrency: 4,
          },
        ],
      }),
    );
    // Nothing listens on this port, so the launcher must start its own redis-server.
    const deadRedis = `redis://127.0.0.1:${await freePort()}`;
    launcher = new TestProcess(
      'launcher',
      entryOf('@llmux/controller'),
      { REDIS_URL: deadRedis, PORT: String(await freePort()), ADMIN_PORT: '0', DEPLOYMENTS_FILE: deployments, LOG_LEVEL: 'warn' },
      { detached: true },
    );
    const line = await launcher.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('llmux ready at'));
    ready = String(line.msg);
  });

  after(async () => {
    await launcher?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('prints one ready line with the URL, and says it started a private Redis', async () => {
    expect(ready).to.match(
      /^llmux ready at http:\/\/127\.0\.0\.1:\d+ \(models: stories260K; redis: redis:\/\/127\.0\.0\.1:\d+; admin: 127\.0\.0\.1:\d+\)$/,
    );
    const warned = launcher.logs.some((l) => typeof l.msg === 'string' && l.msg.includes('started a private redis-server'));
    expect(warned).to.equal(true);
    const curl = launcher.logs.find((l) => typeof l.msg === 'string' && l.msg.includes('curl -N'));
    expect(curl).to.not.equal(undefined);
  });

  it('streams a chat completion and plain text from the printed URL', async () => {
    const url = /at (http:\/\/\S+)/.exec(ready)![1]!;
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      // As `curl -d` sends it: no JSON content type.
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: JSON.stringify({ model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], stream: true }),
    });
    expect(res.status).to.equal(200);
    const events = parseSse(await res.text());
    expect(events.at(-1)!.data).to.equal('[DONE]');
    expect(streamedText(events).length).to.be.greaterThan(10);
    const plain = await fetch(`${url}/v1/chat/stories260K`, { method: 'POST', body: 'Once upon a time' });
    expect(plain.status).to.equal(200);
    expect((await plain.text()).length).to.be.greaterThan(10);
    expect((await fetch(`${url}/readyz`)).status).to.equal(200);
  });

  it('on Ctrl-C lets an open stream finish, then stops everything, leaving no process behind', async () => {
    const kids = childrenOf(launcher.pid);
    // gateway, worker agent and the private redis-server
    expect(kids.length).to.equal(3);
    const url = /at (http:\/\/\S+)/.exec(ready)![1]!;
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: 'stories260K', prompt: 'Once', max_tokens: 900, temperature: 0, stream: true }),
    });
    const body = res.text();
    // Ctrl-C in a terminal signals the whole foreground process group.
    process.kill(-launcher.pid, 'SIGINT');
    const events = parseSse(await body);
    expect(events.at(-1)!.data).to.equal('[DONE]');
    const exit = await launcher.exited;
    expect(exit.code).to.equal(0);
    for (const pid of kids) expect(alive(pid), `pid ${pid}`).to.equal(false);
  });
});
