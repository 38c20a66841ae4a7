/** Options of the sim server, and how its command line maps to them. */

export type SimFlavor = 'openai' | 'vllm';
export type KvMetricName = 'gpu_cache_usage_perc' | 'kv_cache_usage_perc';

export interface SimServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Time to first token, ms. */
  ttftMs: number;
  /** Delay between tokens with one request running, ms. */
  itlMs: number;
  /**
   * Where the story ends (counted from its first token), as if the model
   * emitted end-of-sequence there: finish reason `stop`. Null: it never ends,
   * so requests run to `max_tokens` (finish reason `length`).
   */
  outputTokens: number | null;
  /** Requests generating at once; more wait in a FIFO queue (`vllm:num_requests_waiting`). */
  capacity: number;
  /** Inter-token delay = itl × (1 + batchSlowdown × (running − 1)). */
  batchSlowdown: number;
  /** Error body format and `owned_by`: OpenAI's, or vLLM's. */
  flavor: SimFlavor;
  /** Name of the KV-cache gauge on /metrics (`vllm:<name>`): older vLLM used gpu_cache_usage_perc. */
  kvMetric: KvMetricName;
  /** Fault injection: every stream drops its connection after this many tokens. */
  failAfterTokens: number | null;
  /** The served model; requests naming another get a 404. Null: any name is accepted, `sim` is listed. */
  model: string | null;
  /** Prompt plus max_tokens may not exceed this (a 400 context-length error otherwise). */
  contextSize: number;
  /** Print one JSON line per connection, admission and request end on stdout (for tests). */
  logRequests: boolean;
}

export const DEFAULT_SIM_SERVER_OPTIONS: SimServerOptions = {
  host: '127.0.0.1',
  port: 9000,
  ttftMs: 50,
  itlMs: 20,
  outputTokens: null,
  capacity: 64,
  batchSlowdown: 0,
  flavor: 'openai',
  kvMetric: 'kv_cache_usage_perc',
  failAfterTokens: null,
  model: null,
  contextSize: 4096,
  logRequests: false,
};

export const USAGE = `usage:
  sim-server [--host 127.0.0.1] [--port 9000] [--ttft-ms 50] [--itl-ms 20] [--output-tokens N]
             [--capacity 64] [--batch-slowdown 0] [--flavor openai|vllm]
             [--kv-metric gpu_cache_usage_perc|kv_cache_usage_perc] [--fail-after-tokens N]
             [--model NAME] [--max-model-len 4096] [--log-requests]
  sim-server serve <model> --host H --port P [the flags above] [other vllm flags, ignored]
    stands in for \`vllm serve\` (flavor vllm; --max-num-seqs sets --capacity,
    --served-model-name sets the model name)`;

export class UsageError extends Error {
  override name = 'UsageError';
}

function num(flag: string, v: string | undefined, min: number, integer: boolean): number {
  const n = Number(v);
  if (v === undefined || v === '' || !Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
    throw new UsageError(`${flag} needs ${integer ? 'an integer' : 'a number'} >= ${min}, got ${v ?? 'nothing'}`);
  }
  return n;
}

/**
 * Parses the command line. `serve <model> ...` is vLLM's form: the flavor is
 * vllm, the port defaults to 8000, and flags this server does not know are
 * skipped (with their value, when the next word is not a flag).
 */
export function parseSimServerArgs(argv: readonly string[]): SimServerOptions {
  const o: SimServerOptions = { ...DEFAULT_SIM_SERVER_OPTIONS };
  let i = 0;
  const serve = argv[0] === 'serve';
  if (serve) {
    const model = argv[1];
    if (!model || model.startsWith('--')) throw new UsageError('serve needs a model name');
    o.model = model;
    o.flavor = 'vllm';
    o.port = 8000;
    i = 2;
  }
  for (; i < argv.length; i++) {
    const flag = argv[i]!;
    const eq = flag.indexOf('=');
    const name = eq > 0 ? flag.slice(0, eq) : flag;
    const inline = eq > 0 ? flag.slice(eq + 1) : undefined;
    const value = (): string | undefined => (inline !== undefined ? inline : argv[++i]);
    switch (name) {
      case '--host':
        o.host = value() ?? '';
        if (!o.host) throw new UsageError('--host needs a value');
        break;
      case '--port':
        o.port = num(name, value(), 0, true);
        break;
      case '--ttft-ms':
        o.ttftMs = num(name, value(), 0, false);
        break;
      case '--itl-ms':
        o.itlMs = num(name, value(), 0, false);
        break;
      case '--output-tokens':
        o.outputTokens = num(name, value(), 1, true);
        break;
      case '--capacity':
      case '--max-num-seqs':
        o.capacity = num(name, value(), 1, true);
        break;
      case '--batch-slowdown':
        o.batchSlowdown = num(name, value(), 0, false);
        break;
      case '--flavor': {
        const v = value();
        if (v !== 'openai' && v !== 'vllm') throw new UsageError(`--flavor is openai or vllm, got ${v ?? 'nothing'}`);
        o.flavor = v;
        break;
      }
      case '--kv-metric': {
        const v = value();
        if (v !== 'gpu_cache_usage_perc' && v !== 'kv_cache_usage_perc') {
          throw new UsageError(`--kv-metric is gpu_cache_usage_perc or kv_cache_usage_perc, got ${v ?? 'nothing'}`);
        }
        o.kvMetric = v;
        break;
      }
      case '--fail-after-tokens':
        o.failAfterTokens = num(name, value(), 1, true);
        break;
      case '--model':
      case '--served-model-name':
        o.model = value() ?? null;
        if (!o.model) throw new UsageError(`${name} needs a value`);
        break;
      case '--max-model-len':
        o.contextSize = num(name, value(), 1, true);
        break;
      case '--log-requests':
        o.logRequests = true;
        break;
      case '--help':
      case '-h':
        throw new UsageError('');
      default:
        if (!serve) throw new UsageError(`unknown argument ${flag}`);
        // A vLLM flag this server ignores; skip its value too.
        if (inline === undefined && argv[i + 1] !== undefined && !argv[i + 1]!.startsWith('-')) i++;
    }
  }
  return o;
}
