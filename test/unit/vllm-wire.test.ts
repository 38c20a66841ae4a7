import { expect } from 'chai';
import { EngineError, EngineUnavailableError, PromptTooLongError } from '@llmux/shared';
import {
  decodeStreamData,
  httpError,
  isContextLengthError,
  parseErrorBody,
  parsePrometheusText,
  parseSimServerArgs,
  SseDecoder,
  storyOffset,
  streamError,
  vllmLoad,
  vllmLoadMetrics,
  type StreamEvent,
} from '@llmux/worker-agent';
import { story } from '../helpers/engines.js';

/**
 * The wire formats the openai and vllm engines read, on literal fixtures in
 * the shapes vLLM documents (vLLM docs: "OpenAI-Compatible Server",
 * "Production Metrics").
 */

const CHAT_STREAM =
  'data: {"id":"chatcmpl-4b9c","object":"chat.completion.chunk","created":1718000000,"model":"meta-llama/Llama-3.2-1B-Instruct","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n' +
  'data: {"id":"chatcmpl-4b9c","object":"chat.completion.chunk","created":1718000000,"model":"meta-llama/Llama-3.2-1B-Instruct","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}\n\n' +
  'data: {"id":"chatcmpl-4b9c","object":"chat.completion.chunk","created":1718000000,"model":"meta-llama/Llama-3.2-1B-Instruct","choices":[{"index":0,"delta":{"content":" wörld ✓"},"logprobs":null,"finish_reason":null}]}\n\n' +
  'data: {"id":"chatcmpl-4b9c","object":"chat.completion.chunk","created":1718000000,"model":"meta-llama/Llama-3.2-1B-Instruct","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}\n\n' +
  'data: {"id":"chatcmpl-4b9c","object":"chat.completion.chunk","created":1718000000,"model":"meta-llama/Llama-3.2-1B-Instruct","choices":[],"usage":{"prompt_tokens":12,"total_tokens":16,"completion_tokens":4}}\n\n' +
  'data: [DONE]\n\n';

const COMPLETION_STREAM =
  'data: {"id":"cmpl-91a0","object":"text_completion","created":1718000000,"model":"facebook/opt-125m","choices":[{"index":0,"text":" San","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}\n\n' +
  'data: {"id":"cmpl-91a0","object":"text_completion","created":1718000000,"model":"facebook/opt-125m","choices":[{"index":0,"text":" Francisco","logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":null}\n\n' +
  'data: {"id":"cmpl-91a0","object":"text_completion","created":1718000000,"model":"facebook/opt-125m","choices":[],"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}\n\n' +
  'data: [DONE]\n\n';

const CHAT_EVENTS: StreamEvent[] = [
  { kind: 'chunk', text: '', finishReason: null, usage: null },
  { kind: 'chunk', text: 'Hello', finishReason: null, usage: null },
  { kind: 'chunk', text: ' wörld ✓', finishReason: null, usage: null },
  { kind: 'chunk', text: '!', finishReason: 'stop', usage: null },
  { kind: 'chunk', text: '', finishReason: null, usage: { promptTokens: 12, completionTokens: 4 } },
  { kind: 'done' },
];

function decodeAll(pieces: string[]): StreamEvent[] {
  const d = new SseDecoder();
  const out: StreamEvent[] = [];
  for (const p of pieces) d.push(p, (data) => out.push(decodeStreamData(data)));
  d.end((data) => out.push(decodeStreamData(data)));
  return out;
}

describe('SSE stream decoding (OpenAI-compatible chunks)', () => {
  it('decodes a vLLM chat stream: the role chunk, content deltas, finish, the usage chunk with no choices, [DONE]', () => {
    expect(decodeAll([CHAT_STREAM])).to.deep.equal(CHAT_EVENTS);
  });

  it('decodes a vLLM completions stream', () => {
    expect(decodeAll([COMPLETION_STREAM])).to.deep.equal([
      { kind: 'chunk', text: ' San', finishReason: null, usage: null },
      { kind: 'chunk', text: ' Francisco', finishReason: 'length', usage: null },
      { kind: 'chunk', text: '', finishReason: null, usage: { promptTokens: 5, completionTokens: 2 } },
      { kind: 'done' },
    ]);
  });

  it('gives the same events however the body is cut across reads', () => {
    for (let i = 1; i < CHAT_STREAM.length; i++) {
      expect(decodeAll([CHAT_STREAM.slice(0, i), CHAT_STREAM.slice(i)]), `cut at ${i}`).to.deep.equal(CHAT_EVENTS);
    }
    expect(decodeAll([...CHAT_STREAM])).to.deep.equal(CHAT_EVENTS);
  });

  it('accepts CRLF line ends, comments, other fields, multi-line data and a missing final blank line', () => {
    const body =
      ': keep-alive\r\n\r\nevent: message\r\nid: 1\r\ndata: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\r\n\r\n' +
      'retry: 100\ndata: {"choices":[{"index":0,\ndata: "text":"b","finish_reason":"stop"}]}\n\n' +
      'data: [DONE]';
    expect(decodeAll([body])).to.deep.equal([
      { kind: 'chunk', text: 'a', finishReason: null, usage: null },
      { kind: 'chunk', text: 'b', finishReason: 'stop', usage: null },
      { kind: 'done' },
    ]);
  });

  it('reads running usage on content chunks (continuous usage stats)', () => {
    const ev = decodeStreamData(
      '{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"ab"},"finish_reason":null}],"usage":{"prompt_tokens":3,"total_tokens":6,"completion_tokens":3}}',
    );
    expect(ev).to.deep.equal({ kind: 'chunk', text: 'ab', finishReason: null, usage: { promptTokens: 3, completionTokens: 3 } });
  });

  it('decodes error objects in the stream, in the older and newer vLLM shapes', () => {
    const older = decodeStreamData(
      '{"error": {"object": "error", "message": "This model\'s maximum context length is 2048 tokens. However, you requested 2100 tokens (100 in the messages, 2000 in the completion). Please reduce the length of the messages or completion.", "type": "BadRequestError", "param": null, "code": 400}}',
    );
    expect(older.kind).to.equal('error');
    if (older.kind !== 'error') return;
    expect(older.error).to.include({ type: 'BadRequestError', code: 400, param: null });
    expect(streamError(older.error)).to.be.instanceOf(PromptTooLongError);

    const newer = decodeStreamData(
      '{"error": {"message": "EngineCore encountered an issue.", "type": "InternalServerError", "param": null, "code": 500}}',
    );
    expect(newer.kind).to.equal('error');
    if (newer.kind !== 'error') return;
    expect(streamError(newer.error)).to.be.instanceOf(EngineUnavailableError);

    const flat = decodeStreamData(
      '{"object":"error","message":"bad logit_bias","type":"BadRequestError","param":null,"code":400}',
    );
    expect(flat.kind).to.equal('error');
    if (flat.kind !== 'error') return;
    const e = streamError(flat.error);
    expect(e).to.be.instanceOf(EngineError);
    expect(e).to.not.be.instanceOf(EngineUnavailableError);
    expect(e).to.not.be.instanceOf(PromptTooLongError);
  });

  it('refuses a chunk that is not JSON', () => {
    expect(() => decodeStreamData('<html>')).to.throw(SyntaxError);
  });
});

describe('upstream error bodies', () => {
  it('reads the older vLLM body {"object":"error",...}', () => {
    const e = parseErrorBody(
      '{"object":"error","message":"The model `gpt-x` does not exist.","type":"NotFoundError","param":null,"code":404}',
    );
    expect(e).to.deep.equal({ message: 'The model `gpt-x` does not exist.', type: 'NotFoundError', code: 404, param: null });
  });

  it('reads the newer vLLM and the OpenAI body {"error":{...}}', () => {
    const v = parseErrorBody(
      '{"error":{"message":"You passed 1015 input tokens and requested 10 output tokens. However, the model\'s context length is only 1024 tokens, resulting in a maximum input length of 1014 tokens.","type":"BadRequestError","param":"input_tokens","code":400}}',
    );
    expect(v).to.include({ type: 'BadRequestError', param: 'input_tokens', code: 400 });
    expect(isContextLengthError(v)).to.equal(true);
    const o = parseErrorBody(
      '{"error":{"message":"Too long.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}',
    );
    expect(isContextLengthError(o)).to.equal(true);
  });

  it('reads TGI and FastAPI shapes, and text that is not JSON', () => {
    expect(parseErrorBody('{"error":"Input validation error","error_type":"validation"}')).to.include({
      message: 'Input validation error',
      type: 'validation',
    });
    expect(parseErrorBody('{"detail":"Not Found"}').message).to.equal('Not Found');
    expect(parseErrorBody('Bad Gateway\n').message).to.equal('Bad Gateway');
  });

  it('maps statuses: 5xx, 408 and 429 to EngineUnavailableError; context 400 to PromptTooLongError; other 4xx to EngineError', () => {
    const ctx =
      '{"object":"error","message":"This model\'s maximum context length is 4096 tokens. However, you requested 5000 tokens.","type":"BadRequestError","param":null,"code":400}';
    expect(httpError(400, ctx)).to.be.instanceOf(PromptTooLongError);
    for (const s of [500, 502, 503, 408, 429]) expect(httpError(s, '{}'), String(s)).to.be.instanceOf(EngineUnavailableError);
    for (const s of [400, 401, 404, 422]) {
      const e = httpError(s, '{"error":{"message":"nope","type":"invalid_request_error"}}');
      expect(e, String(s)).to.be.instanceOf(EngineError);
      expect(e, String(s)).to.not.be.instanceOf(EngineUnavailableError);
      expect(e.message).to.contain(`${s}: nope`);
    }
  });
});

const METRICS = `# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_sum{model_name="unsloth/Llama-3.2-1B-Instruct"} 0.0
vllm:iteration_tokens_total_bucket{le="1.0",model_name="unsloth/Llama-3.2-1B-Instruct"} 3.0
vllm:iteration_tokens_total_bucket{le="+Inf",model_name="unsloth/Llama-3.2-1B-Instruct"} 3.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="unsloth/Llama-3.2-1B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="unsloth/Llama-3.2-1B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="unsloth/Llama-3.2-1B-Instruct"} 1.0
vllm:num_requests_waiting{engine="1",model_name="unsloth/Llama-3.2-1B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="unsloth/Llama-3.2-1B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="unsloth/Llama-3.2-1B-Instruct"} 0.125
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
vllm:time_to_first_token_seconds_count{model_name="a \\"quoted\\" name, with\\\\slash"} 7 1718000000000
vllm:cache_config_info{block_size="16",cache_dtype="auto",gpu_memory_utilization="0.9"} 1.0
process_resident_memory_bytes 1.2345e+09
vllm:weird NaN
`;

const OLD_METRICS = `# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="facebook/opt-125m"} 6.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="facebook/opt-125m"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="facebook/opt-125m"} 2.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="facebook/opt-125m"} 0.9
# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{model_name="facebook/opt-125m"} 0.0
`;

describe('Prometheus text parsing (vLLM /metrics)', () => {
  it('parses samples with labels, escapes, timestamps, exponents, +Inf and NaN, skipping HELP and TYPE', () => {
    const samples = parsePrometheusText(METRICS);
    expect(samples.filter((s) => s.name.startsWith('#'))).to.have.length(0);
    expect(samples).to.deep.include({
      name: 'vllm:num_requests_running',
      labels: { engine: '1', model_name: 'unsloth/Llama-3.2-1B-Instruct' },
      value: 2,
    });
    expect(samples).to.deep.include({
      name: 'vllm:iteration_tokens_total_bucket',
      labels: { le: '+Inf', model_name: 'unsloth/Llama-3.2-1B-Instruct' },
      value: 3,
    });
    expect(samples).to.deep.include({
      name: 'vllm:time_to_first_token_seconds_count',
      labels: { model_name: 'a "quoted" name, with\\slash' },
      value: 7,
    });
    expect(samples).to.deep.include({ name: 'process_resident_memory_bytes', labels: {}, value: 1.2345e9 });
    expect(Number.isNaN(samples.find((s) => s.name === 'vllm:weird')!.value)).to.equal(true);
    expect(samples).to.have.length(13);
  });

  it('reads the load gauges under the newer name, summing requests over engines and taking the highest KV-cache use', () => {
    const m = vllmLoadMetrics(parsePrometheusText(METRICS));
    expect(m).to.deep.equal({ running: 5, waiting: 1, kvCacheUsage: 0.25 });
    expect(vllmLoad(m, 8)).to.equal(0.75); // (5 + 1) / 8 beats 0.25
    expect(vllmLoad(m, 100)).to.equal(0.25);
    expect(vllmLoad(m, 2)).to.equal(1); // capped
  });

  it('reads the older gpu_cache_usage_perc name', () => {
    const m = vllmLoadMetrics(parsePrometheusText(OLD_METRICS));
    expect(m).to.deep.equal({ running: 6, waiting: 2, kvCacheUsage: 0.9 });
    expect(vllmLoad(m, 256)).to.equal(0.9);
  });

  it('prefers the newer KV name when both are present, and gives null when vLLM reports nothing', () => {
    const both = vllmLoadMetrics(parsePrometheusText(`${OLD_METRICS}vllm:kv_cache_usage_perc{model_name="x"} 0.3\n`));
    expect(both.kvCacheUsage).to.equal(0.3);
    const none = vllmLoadMetrics(parsePrometheusText('# nothing\nother_metric 1\n'));
    expect(none).to.deep.equal({ running: null, waiting: null, kvCacheUsage: null });
    expect(vllmLoad(none, 4)).to.equal(null);
  });
});

describe('sim-server helpers', () => {
  it('finds where a prompt leaves the story', () => {
    expect(storyOffset('Tell me a story.')).to.equal(0);
    expect(storyOffset('Tell me a story.' + story(7))).to.equal(7);
    expect(storyOffset(story(40))).to.equal(40);
    expect(storyOffset('Once')).to.equal(1);
    expect(storyOffset('')).to.equal(0);
  });

  it('parses its command line, and vllm serve form with unknown flags ignored', () => {
    expect(parseSimServerArgs(['--port', '9001', '--itl-ms', '5', '--flavor', 'vllm', '--fail-after-tokens', '3'])).to.include({
      port: 9001,
      itlMs: 5,
      flavor: 'vllm',
      failAfterTokens: 3,
      outputTokens: null,
    });
    const s = parseSimServerArgs([
      'serve', 'org/model', '--host', '127.0.0.1', '--port', '4321', '--enforce-eager', '--dtype', 'auto',
      '--max-model-len=2048', '--max-num-seqs', '8', '--kv-metric', 'gpu_cache_usage_perc',
    ]); // prettier-ignore
    expect(s).to.include({
      model: 'org/model',
      host: '127.0.0.1',
      port: 4321,
      flavor: 'vllm',
      contextSize: 2048,
      capacity: 8,
      kvMetric: 'gpu_cache_usage_perc',
    });
    expect(() => parseSimServerArgs(['--bogus'])).to.throw(/unknown argument --bogus/);
    expect(() => parseSimServerArgs(['--itl-ms', 'fast'])).to.throw(/--itl-ms needs a number/);
  });
});
