import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeRedis, loadGatewayConfig, loadWorkerConfig, redisEnvOf, redisMode } from '@llmux/shared';
import { configError } from '../helpers/config-error.js';

describe('environment: Redis sentinel, cluster, credentials and TLS', () => {
  let dir: string;
  let pem: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'llmux-redis-config-'));
    pem = join(dir, 'ca.pem');
    writeFileSync(pem, 'not checked here');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('is standalone at REDIS_URL by default, with no credentials and no TLS', () => {
    const r = loadGatewayConfig({}).redis;
    expect(redisMode(r)).to.equal('standalone');
    expect(r).to.deep.include({
      url: 'redis://127.0.0.1:6379',
      sentinels: null,
      clusterNodes: null,
      username: null,
      password: null,
      tls: null,
    });
  });

  it('reads sentinels, the primary name and the sentinels own credentials', () => {
    const r = loadWorkerConfig({
      REDIS_SENTINELS: 's1:26379, 10.0.0.2:26380,[::1]:26381',
      REDIS_SENTINEL_NAME: 'llmux',
      REDIS_SENTINEL_PASSWORD: 'sp',
      REDIS_USERNAME: 'llmux',
      REDIS_PASSWORD: 'dp',
    }).redis;
    expect(redisMode(r)).to.equal('sentinel');
    expect(r.sentinels).to.deep.equal([
      { host: 's1', port: 26379 },
      { host: '10.0.0.2', port: 26380 },
      { host: '::1', port: 26381 },
    ]);
    expect(r).to.deep.include({ sentinelName: 'llmux', sentinelPassword: 'sp', username: 'llmux', password: 'dp' });
    expect(describeRedis(r)).to.equal('sentinel llmux@s1:26379,10.0.0.2:26380,::1:26381');
  });

  it('reads cluster nodes, and TLS from REDIS_TLS or a rediss:// URL with PEM files', () => {
    const r = loadGatewayConfig({ REDIS_CLUSTER_NODES: 'n1:7000,n2:7001', REDIS_TLS: 'true', REDIS_TLS_CA: pem }).redis;
    expect(redisMode(r)).to.equal('cluster');
    expect(r.tls).to.deep.equal({ ca: pem, cert: null, key: null });
    const s = loadGatewayConfig({ REDIS_URL: 'rediss://:secret@cache:6380/2', REDIS_TLS_CERT: pem, REDIS_TLS_KEY: pem }).redis;
    expect(s.tls).to.deep.equal({ ca: null, cert: pem, key: pem });
    expect(describeRedis(s)).to.equal('rediss://:***@cache:6380/2');
  });

  it('refuses contradictory or malformed settings, naming the variable', () => {
    expect(configError(() => loadGatewayConfig({ REDIS_SENTINELS: 'a:1', REDIS_CLUSTER_NODES: 'b:2' }))).to.contain(
      'REDIS_CLUSTER_NODES',
    );
    expect(configError(() => loadGatewayConfig({ REDIS_SENTINELS: 'a' }))).to.contain('REDIS_SENTINELS');
    expect(configError(() => loadGatewayConfig({ REDIS_CLUSTER_NODES: 'a:99999' }))).to.contain('REDIS_CLUSTER_NODES');
    expect(configError(() => loadGatewayConfig({ REDIS_TLS_CA: pem }))).to.contain('REDIS_TLS_CA');
    expect(configError(() => loadGatewayConfig({ REDIS_TLS: 'true', REDIS_TLS_CA: join(dir, 'missing.pem') }))).to.contain(
      'REDIS_TLS_CA',
    );
    expect(configError(() => loadGatewayConfig({ REDIS_TLS: 'true', REDIS_TLS_CERT: pem }))).to.contain('REDIS_TLS_KEY');
  });

  it('passes the whole setting on to children as REDIS_* variables, clearing inherited ones', () => {
    const env = {
      REDIS_CLUSTER_NODES: 'n1:7000',
      REDIS_USERNAME: 'u',
      REDIS_PASSWORD: 'p',
      REDIS_TLS: 'true',
      REDIS_TLS_CA: pem,
    };
    const r = loadGatewayConfig(env).redis;
    const child = redisEnvOf(r);
    expect(child).to.include({
      REDIS_CLUSTER_NODES: 'n1:7000',
      REDIS_USERNAME: 'u',
      REDIS_PASSWORD: 'p',
      REDIS_TLS: 'true',
      REDIS_TLS_CA: pem,
    });
    expect(child).to.have.property('REDIS_SENTINELS', undefined);
    const defined = Object.fromEntries(Object.entries(child).filter(([, v]) => v !== undefined)) as NodeJS.ProcessEnv;
    expect(loadGatewayConfig(defined).redis).to.deep.equal(r);
    // A plain URL (a private redis-server) clears credentials and TLS a parent had.
    expect(redisEnvOf('redis://127.0.0.1:1234')).to.deep.include({
      REDIS_URL: 'redis://127.0.0.1:1234',
      REDIS_PASSWORD: undefined,
      REDIS_TLS: undefined,
    });
  });
});
