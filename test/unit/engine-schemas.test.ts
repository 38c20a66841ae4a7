import { expect } from 'chai';
import { createLogger, parseDeployments } from '@llmux/shared';
import { createEngine, OpenAIEngine, VllmEngine } from '@llmux/worker-agent';
import { configError } from '../helpers/config-error.js';

/** The `openai` and `vllm` engine schemas, and what the factory builds from them. */

const one = (m: Record<string, unknown>) => parseDeployments({ models: [{ name: 'm', ...m }] }).models[0]!;
const factoryOpts = { modelsDir: 'models', hfEndpoint: 'https://huggingface.co', logger: createLogger('test', 'silent') };

describe('deployments: openai and vllm engines', () => {
  it('fills the openai engine defaults', () => {
    expect(one({ engine: { type: 'openai', baseUrl: 'http://127.0.0.1:8080/v1' } }).engine).to.deep.equal({
      type: 'openai',
      baseUrl: 'http://127.0.0.1:8080/v1',
      continueFinalMessage: false,
      contextSize: 4096,
    });
  });

  it('accepts every openai field and refuses bad or unknown ones', () => {
    const full = {
      type: 'openai',
      baseUrl: 'https://api.example.com/v1',
      apiKey: 'sk-test',
      model: 'llama3',
      api: 'completions',
      continueFinalMessage: true,
      contextSize: 8192,
      requestTimeoutMs: 30_000,
    };
    expect(one({ engine: full }).engine).to.deep.equal(full);
    expect(configError(() => one({ engine: { type: 'openai', baseUrl: 'localhost:8000' } }))).to.contain(
      'models[0].engine.baseUrl',
    );
    expect(configError(() => one({ engine: { type: 'openai', baseUrl: 'ftp://h/v1' } }))).to.contain('models[0].engine.baseUrl');
    expect(configError(() => one({ engine: { type: 'openai' } }))).to.contain('models[0].engine.baseUrl');
    expect(configError(() => one({ engine: { type: 'openai', baseUrl: 'http://h/v1', api: 'responses' } }))).to.contain(
      'models[0].engine.api',
    );
    expect(configError(() => one({ engine: { type: 'openai', baseUrl: 'http://h/v1', stream: false } }))).to.contain(
      'models[0].engine',
    );
  });

  it('fills the vllm engine defaults', () => {
    expect(one({ engine: { type: 'vllm' } }).engine).to.deep.equal({
      type: 'vllm',
      command: 'vllm',
      commandArgs: [],
      args: [],
      port: 0,
      healthTimeoutMs: 600_000,
      metricsIntervalMs: 1000,
      contextSize: 4096,
    });
  });

  it('accepts every vllm field and refuses bad or unknown ones', () => {
    const full = {
      type: 'vllm',
      command: '/opt/venv/bin/vllm',
      commandArgs: [],
      args: ['--max-model-len', '8192', '--gpu-memory-utilization', '0.85'],
      model: 'Qwen/Qwen2.5-0.5B-Instruct',
      port: 8100,
      healthTimeoutMs: 900_000,
      metricsIntervalMs: 500,
      contextSize: 8192,
      env: { CUDA_VISIBLE_DEVICES: '1' },
    };
    expect(one({ engine: full }).engine).to.deep.equal(full);
    expect(configError(() => one({ engine: { type: 'vllm', port: 70_000 } }))).to.contain('models[0].engine.port');
    expect(configError(() => one({ engine: { type: 'vllm', args: '--enforce-eager' } }))).to.contain('models[0].engine.args');
    expect(configError(() => one({ engine: { type: 'vllm', env: { N: 1 } } }))).to.contain('models[0].engine.env');
    expect(configError(() => one({ engine: { type: 'vllm', gpus: 2 } }))).to.contain('models[0].engine');
  });

  it('the factory builds an OpenAIEngine with the deployment name as the default model', async () => {
    const d = one({ engine: { type: 'openai', baseUrl: 'http://127.0.0.1:1/v1', contextSize: 2048 }, concurrency: 12 });
    const e = await createEngine(d, factoryOpts);
    expect(e).to.be.instanceOf(OpenAIEngine);
    expect(e).to.include({ capacity: 12, contextSize: 2048 });
    const { path, body } = (e as OpenAIEngine).buildRequest(
      { kind: 'chat', messages: [{ role: 'user', content: 'x' }], maxTokens: 5 },
      5,
    );
    expect(path).to.equal('/chat/completions');
    expect(body).to.deep.include({ model: 'm', max_tokens: 5, stream: true, stream_options: { include_usage: true } });
    await e.close();
  });

  it('the factory builds a VllmEngine serving the model, else the source, else the name', async () => {
    const named = (await createEngine(one({ engine: { type: 'vllm', args: ['--enforce-eager'] } }), factoryOpts)) as VllmEngine;
    expect(named).to.be.instanceOf(VllmEngine);
    expect(named.commandLine(8123)).to.deep.equal([
      'vllm', 'serve', 'm', '--host', '127.0.0.1', '--port', '8123', '--enforce-eager',
    ]); // prettier-ignore
    const fromSource = (await createEngine(
      one({ source: 'hf:Qwen/Qwen2.5-0.5B-Instruct', engine: { type: 'vllm' } }),
      factoryOpts,
    )) as VllmEngine;
    expect(fromSource.model).to.equal('Qwen/Qwen2.5-0.5B-Instruct');
    const explicit = (await createEngine(
      one({
        source: 'x',
        concurrency: 32,
        engine: { type: 'vllm', model: '/models/llama', command: 'python3', commandArgs: ['-m', 'vllm.entrypoints.cli.main'] },
      }),
      factoryOpts,
    )) as VllmEngine;
    expect(explicit.model).to.equal('/models/llama');
    expect(explicit.capacity).to.equal(32);
    expect(explicit.commandLine(1)).to.deep.equal([
      'python3', '-m', 'vllm.entrypoints.cli.main', 'serve', '/models/llama', '--host', '127.0.0.1', '--port', '1',
    ]); // prettier-ignore
  });
});
