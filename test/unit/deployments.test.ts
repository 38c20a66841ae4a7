import { expect } from 'chai';
import { hostname } from 'node:os';
import { contextSizeOf, loadGatewayConfig, loadWorkerConfig, parseDeployments, redisConfigOf } from '@llmux/shared';
import { configError } from '../helpers/config-error.js';

/** Runs `fn`, which must throw a ConfigError, and returns its message. */

const llama = { name: 'stories', source: 'models/stories260K.gguf', engine: { type: 'llamacpp' } };
const sim = { name: 'sim', engine: { type: 'sim' } };

/** A deployments document with the first model's fields overridden. */
const withModel = (over: Record<string, unknown>, base: Record<string, unknown> = llama) => ({ models: [{ ...base, ...over }] });

describe('deployments: parseDeployments', () => {
  it('applies defaults to a minimal llamacpp deployment', () => {
    const d = parseDeployments({ models: [llama] }).models[0]!;
    expect(d).to.deep.equal({
      name: 'stories',
      source: 'models/stories260K.gguf',
      aliases: [],
      engine: { type: 'llamacpp', threads: 1, contextSize: 2048, chatTemplate: 'auto' },
      replicas: { min: 1, max: 1 },
      concurrency: 4,
      maxQueue: 1000,
      defaultMaxTokens: 512,
    });
    expect(contextSizeOf(d)).to.equal(2048);
  });

  it('applies defaults to a minimal sim deployment', () => {
    const d = parseDeployments({ models: [sim] }).models[0]!;
    expect(d.engine).to.deep.equal({ type: 'sim', ttftMs: 50, itlMs: 20, outputTokens: null, contextSize: 4096 });
    expect(d.source).to.equal(undefined);
  });

  it('keeps explicit values', () => {
    const d = parseDeployments(
      withModel({
        aliases: ['tinystories', 'org/stories@v1'],
        engine: { type: 'llamacpp', threads: 2, contextSize: 512, chatTemplate: 'chatml' },
        replicas: { min: 0, max: 3 },
        concurrency: 8,
        defaultMaxTokens: 48,
        slo: { ttftP95Ms: 200 },
      }),
    ).models[0]!;
    expect(d.aliases).to.deep.equal(['tinystories', 'org/stories@v1']);
    expect(d.engine).to.deep.equal({ type: 'llamacpp', threads: 2, contextSize: 512, chatTemplate: 'chatml' });
    expect(d.replicas).to.deep.equal({ min: 0, max: 3 });
    expect(d.concurrency).to.equal(8);
    expect(d.defaultMaxTokens).to.equal(48);
    expect(d.slo).to.deep.equal({ ttftP95Ms: 200 });
  });

  it('names the field path of a bad engine value', () => {
    expect(configError(() => parseDeployments(withModel({ engine: { type: 'llamacpp', threads: 0 } })))).to.contain(
      'models[0].engine.threads',
    );
    expect(configError(() => parseDeployments(withModel({ engine: { type: 'llamacpp', threads: 'two' } })))).to.contain(
      'models[0].engine.threads',
    );
    expect(configError(() => parseDeployments(withModel({ engine: { type: 'llamacpp', contextSize: 10 } })))).to.contain(
      'models[0].engine.contextSize',
    );
    expect(configError(() => parseDeployments(withModel({ engine: { type: 'sim', itlMs: -1 } }, sim)))).to.contain(
      'models[0].engine.itlMs',
    );
  });

  it('names the path of a bad value in a later model', () => {
    const msg = configError(() => parseDeployments({ models: [llama, { ...sim, concurrency: 0 }] }));
    expect(msg).to.contain('models[1].concurrency');
  });

  it('refuses an unknown engine type and unknown fields', () => {
    expect(configError(() => parseDeployments(withModel({ engine: { type: 'tensorrt-llm' } })))).to.contain('models[0].engine');
    expect(configError(() => parseDeployments(withModel({ engine: { type: 'llamacpp', gpu: true } })))).to.contain(
      'models[0].engine',
    );
    expect(configError(() => parseDeployments(withModel({ replica: 2 })))).to.contain('models[0]');
  });

  it('refuses replicas.min above replicas.max', () => {
    expect(configError(() => parseDeployments(withModel({ replicas: { min: 3, max: 2 } })))).to.contain('models[0].replicas.min');
  });

  it('refuses duplicate names and aliases', () => {
    expect(configError(() => parseDeployments({ models: [llama, { ...sim, name: 'stories' }] }))).to.contain('models[1].name');
    expect(
      configError(() =>
        parseDeployments({
          models: [
            { ...llama, aliases: ['x'] },
            { ...sim, aliases: ['x'] },
          ],
        }),
      ),
    ).to.contain('models[1].name');
    expect(configError(() => parseDeployments({ models: [llama, { ...sim, aliases: ['stories'] }] }))).to.contain(
      'models[1].name',
    );
    expect(configError(() => parseDeployments({ models: [{ ...llama, aliases: ['sim'] }, sim] }))).to.contain('models[1].name');
  });

  it('refuses a llamacpp deployment without a source', () => {
    const { source: _source, ...noSource } = llama;
    expect(configError(() => parseDeployments({ models: [noSource] }))).to.contain('models[0].source');
    expect(configError(() => parseDeployments(withModel({ source: '' })))).to.contain('models[0].source');
  });

  for (const name of ['{stories}', 'my model', 'a\tb', ' stories', '', '-lead', 'x'.repeat(129)]) {
    it(`refuses the model name ${JSON.stringify(name.length > 20 ? `${name.slice(0, 8)}…` : name)}`, () => {
      expect(configError(() => parseDeployments(withModel({ name })))).to.contain('models[0].name');
    });
  }

  it('refuses an alias with braces', () => {
    expect(configError(() => parseDeployments(withModel({ aliases: ['ok', 'a{b}'] })))).to.contain('models[0].aliases[1]');
  });

  it('refuses a document that is not an object with models', () => {
    configError(() => parseDeployments(null));
    configError(() => parseDeployments([llama]));
    expect(configError(() => parseDeployments({ models: [] }))).to.contain('models');
    expect(configError(() => parseDeployments({ models: [llama], extra: 1 }))).to.be.a('string');
  });

  it('names the document source in the message', () => {
    expect(configError(() => parseDeployments({ models: [] }, '/etc/llmux/deployments.json'))).to.contain(
      '/etc/llmux/deployments.json',
    );
  });
});

describe('environment: loadGatewayConfig', () => {
  it('applies defaults to an empty environment', () => {
    const c = loadGatewayConfig({});
    expect(c).to.deep.include({
      redisUrl: 'redis://127.0.0.1:6379',
      keyPrefix: 'llm',
      logLevel: 'info',
      port: 8000,
      host: '127.0.0.1',
      maxBodyBytes: 1_048_576,
      requestTimeoutMs: 600_000,
      drainTimeoutMs: 30_000,
    });
    expect(c.gatewayId).to.match(/^[A-Za-z0-9_.-]+$/);
    expect(c.gatewayId).to.contain(`-${process.pid}-`);
    expect(loadGatewayConfig({}).gatewayId).to.not.equal(c.gatewayId);
  });

  it('reads explicit values', () => {
    const c = loadGatewayConfig({
      PORT: '0',
      HOST: '0.0.0.0',
      GATEWAY_ID: 'gw-7',
      REDIS_URL: 'redis://redis:6380',
      KEY_PREFIX: 'test_1',
      LOG_LEVEL: 'debug',
      MAX_BODY_BYTES: '2048',
    });
    expect(c).to.deep.include({
      port: 0,
      host: '0.0.0.0',
      gatewayId: 'gw-7',
      redisUrl: 'redis://redis:6380',
      keyPrefix: 'test_1',
      logLevel: 'debug',
      maxBodyBytes: 2048,
    });
  });

  for (const port of ['abc', '-1', '80.5']) {
    it(`refuses PORT=${port} with a ConfigError naming PORT`, () => {
      expect(configError(() => loadGatewayConfig({ PORT: port }))).to.contain('PORT');
    });
  }

  it('refuses other bad values, naming them', () => {
    expect(configError(() => loadGatewayConfig({ LOG_LEVEL: 'loud' }))).to.contain('LOG_LEVEL');
    expect(configError(() => loadGatewayConfig({ REDIS_URL: 'not a url' }))).to.contain('REDIS_URL');
    expect(configError(() => loadGatewayConfig({ KEY_PREFIX: 'a:b' }))).to.contain('KEY_PREFIX');
    expect(configError(() => loadGatewayConfig({ GATEWAY_ID: 'gw 1' }))).to.contain('GATEWAY_ID');
    expect(configError(() => loadGatewayConfig({ MAX_BODY_BYTES: '0' }))).to.contain('MAX_BODY_BYTES');
  });
});

describe('environment: loadWorkerConfig', () => {
  it('applies defaults to an empty environment', () => {
    const c = loadWorkerConfig({});
    expect(c).to.deep.equal({
      redisUrl: 'redis://127.0.0.1:6379',
      redis: redisConfigOf('redis://127.0.0.1:6379'),
      keyPrefix: 'llm',
      logLevel: 'info',
      workerId: `${hostname().replace(/[^A-Za-z0-9_.-]/g, '_')}-${process.pid}`,
      models: null,
      engineReplicas: 1,
      modelsDir: 'models',
      hfEndpoint: 'https://huggingface.co',
      heartbeatIntervalMs: 1000,
      heartbeatTtlMs: 3000,
      reclaimIntervalMs: 1000,
      maxAttempts: 3,
      outputRetentionMs: 600_000,
      claimPolicy: 'least-loaded',
      flushIntervalMs: 15,
      maxBatchTokens: 32,
      drainTimeoutMs: 30_000,
      replyStreamMaxLen: 100_000,
      metrics: { host: '127.0.0.1', port: 0 },
      tracing: null,
      logRequestContent: false,
    });
  });

  it('turns tracing on with an OTLP endpoint, and metrics off with METRICS_PORT=off', () => {
    const c = loadWorkerConfig({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/',
      OTEL_BSP_SCHEDULE_DELAY: '100',
      METRICS_PORT: 'off',
    });
    expect(c.tracing).to.deep.equal({ endpoint: 'http://collector:4318/v1/traces', serviceName: null, scheduleDelayMs: 100 });
    expect(c.metrics).to.equal(null);
    const t = loadWorkerConfig({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/custom', OTEL_SERVICE_NAME: 'w' });
    expect(t.tracing).to.deep.equal({ endpoint: 'http://c:4318/custom', serviceName: 'w', scheduleDelayMs: 5000 });
  });

  it('splits WORKER_MODELS and reads explicit values', () => {
    const c = loadWorkerConfig({
      WORKER_MODELS: ' stories, tiny-random ,,',
      WORKER_ID: 'w0',
      MODELS_DIR: '/data/models',
      HF_ENDPOINT: 'http://127.0.0.1:9999',
      FLUSH_INTERVAL_MS: '0',
      MAX_BATCH_TOKENS: '8',
    });
    expect(c.models).to.deep.equal(['stories', 'tiny-random']);
    expect(c).to.deep.include({
      workerId: 'w0',
      modelsDir: '/data/models',
      hfEndpoint: 'http://127.0.0.1:9999',
      flushIntervalMs: 0,
      maxBatchTokens: 8,
    });
  });

  it('refuses bad values, naming them', () => {
    expect(configError(() => loadWorkerConfig({ MAX_BATCH_TOKENS: '0' }))).to.contain('MAX_BATCH_TOKENS');
    expect(configError(() => loadWorkerConfig({ HEARTBEAT_INTERVAL_MS: 'often' }))).to.contain('HEARTBEAT_INTERVAL_MS');
    expect(configError(() => loadWorkerConfig({ HF_ENDPOINT: 'huggingface' }))).to.contain('HF_ENDPOINT');
    expect(configError(() => loadWorkerConfig({ WORKER_ID: 'w/0' }))).to.contain('WORKER_ID');
  });
});
