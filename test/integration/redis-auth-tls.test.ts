import { expect } from 'chai';
import { rm } from 'node:fs/promises';
import { story } from '../helpers/engines.js';
import { post } from '../helpers/http.js';
import { entryOf, TestProcess } from '../helpers/processes.js';
import { cli, HaSystem, makeCerts, streamOnce, TestRedisServer, type TestCerts } from '../helpers/redis-ha.js';

const DEPLOYMENTS = { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 5, itlMs: 5 }, concurrency: 8 }] };

/** The minimal ACL rules of an llmux user for key prefix `p` (docs/redis-ha.md). */
const aclRules = (p: string) => [
  'on',
  `~${p}:*`,
  `~bull:${p}-control-*`,
  `&${p}:*`,
  '+@all',
  '-@dangerous',
  '+info',
  '+client|id',
  '+client|unblock',
  '+client|setname',
];

/** A gateway on its own with `env`, to see what a client of it gets. */
async function answerOf(env: NodeJS.ProcessEnv): Promise<number> {
  const gw = new TestProcess('gateway-x', entryOf('@llmux/gateway'), {
    PORT: '0',
    GATEWAY_ID: 'gw-x',
    LOG_LEVEL: 'info',
    ...env,
  });
  try {
    const url = String((await gw.ready()).url);
    return (await post(`${url}/v1/completions`, { model: 'sim', prompt: 'Once', max_tokens: 5 })).status;
  } finally {
    await gw.stop();
  }
}

describe('Redis credentials and TLS (real redis-server, real processes)', function () {
  this.timeout(120_000);

  describe('requirepass', () => {
    let server: TestRedisServer;
    let sys: HaSystem;
    before(async () => {
      server = await TestRedisServer.start({ password: 'pass-word-1' });
      sys = await HaSystem.start({
        env: { REDIS_URL: `redis://127.0.0.1:${server.port}`, REDIS_PASSWORD: 'pass-word-1' },
        deployments: DEPLOYMENTS,
        workers: 1,
      });
    });
    after(async () => {
      await sys?.stop();
      await server?.stop();
    });

    it('serves with REDIS_PASSWORD, and a gateway with a wrong password answers 503', async () => {
      expect((await streamOnce(sys.url, 'sim', 20, story(20), 30_000)).kind).to.equal('complete');
      const env = { REDIS_URL: `redis://127.0.0.1:${server.port}`, KEY_PREFIX: sys.env.KEY_PREFIX };
      expect(await answerOf({ ...env, REDIS_PASSWORD: 'wrong' })).to.equal(503);
      // The password in the URL works too (and wins over REDIS_PASSWORD).
      expect(
        await answerOf({ ...env, REDIS_URL: `redis://:pass-word-1@127.0.0.1:${server.port}`, REDIS_PASSWORD: 'wrong' }),
      ).to.not.equal(503);
    });
  });

  describe('an ACL user limited to the key prefix', () => {
    let server: TestRedisServer;
    let sys: HaSystem;
    const prefix = 'acl1';
    const admin = { password: 'admin-pw-1' };
    before(async () => {
      server = await TestRedisServer.start(admin);
      await server.cli('ACL', 'SETUSER', 'llmux', 'reset', '>user-pw-1', ...aclRules(prefix));
      sys = await HaSystem.start({
        env: {
          REDIS_URL: `redis://127.0.0.1:${server.port}`,
          REDIS_USERNAME: 'llmux',
          REDIS_PASSWORD: 'user-pw-1',
          KEY_PREFIX: prefix,
        },
        deployments: DEPLOYMENTS,
        workers: 2,
      });
    });
    after(async () => {
      await sys?.stop();
      await server?.stop();
    });

    it('serves every request under the minimal rules, with nothing refused, and cannot touch other keys', async () => {
      const outcomes = await Promise.all(Array.from({ length: 6 }, () => streamOnce(sys.url, 'sim', 30, story(30), 30_000)));
      expect(outcomes.map((o) => o.kind)).to.deep.equal(Array(6).fill('complete'));
      // Nothing the processes sent (connection setup, scripts, claims, heartbeats, pub/sub, BullMQ) was refused.
      expect(await server.cli('ACL', 'LOG')).to.equal('');
      const asUser = (...args: string[]) =>
        cli(server.port, {}, '--user', 'llmux', '--pass', 'user-pw-1', ...args).catch((e: { stdout?: string }) => e.stdout ?? '');
      expect(await asUser('SET', 'other:key', '1')).to.match(/NOPERM/);
      expect(await asUser('FLUSHALL')).to.match(/NOPERM/);
      expect(await asUser('EXISTS', `${prefix}:deployments`)).to.equal('1');
    });
  });

  describe('TLS with client certificates (rediss://)', () => {
    let certs: TestCerts;
    let server: TestRedisServer;
    let sys: HaSystem;
    before(async () => {
      certs = await makeCerts();
      server = await TestRedisServer.start({ tls: certs }, ['--tls-auth-clients', 'yes']);
      sys = await HaSystem.start({
        env: {
          REDIS_URL: `rediss://127.0.0.1:${server.port}`,
          REDIS_TLS_CA: certs.ca,
          REDIS_TLS_CERT: certs.clientCert,
          REDIS_TLS_KEY: certs.clientKey,
        },
        deployments: DEPLOYMENTS,
        workers: 1,
      });
    });
    after(async () => {
      await sys?.stop();
      await server?.stop();
      if (certs) await rm(certs.dir, { recursive: true, force: true });
    });

    it('serves over TLS; without a client certificate, or without trusting the CA, the gateway answers 503', async () => {
      expect((await streamOnce(sys.url, 'sim', 20, story(20), 30_000)).kind).to.equal('complete');
      expect(await server.cli('INFO', 'clients')).to.match(/connected_clients:[3-9]/);
      const env = { REDIS_URL: `rediss://127.0.0.1:${server.port}`, KEY_PREFIX: sys.env.KEY_PREFIX };
      expect(await answerOf({ ...env, REDIS_TLS_CA: certs.ca })).to.equal(503);
      expect(await answerOf({ ...env, REDIS_TLS_CERT: certs.clientCert, REDIS_TLS_KEY: certs.clientKey })).to.equal(503);
    });
  });
});
