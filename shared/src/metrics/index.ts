import client from 'prom-client';

/**
 * Every Prometheus metric the system exports, defined in one place so names,
 * labels and buckets cannot drift between the services, docs/metrics.md and
 * the Grafana dashboard. Names follow vLLM's where they mean the same thing
 * (`vllm:time_to_first_token_seconds` is `llmux_time_to_first_token_seconds`
 * here; Prometheus reserves `:` for recording rules). Labels are bounded: a
 * model name (deployments only, never a client's string), an outcome or a
 * reason from a fixed list; never request ids, tenants or API keys.
 */

export { client as prom };
export type Registry = client.Registry;

/** Time to first token, seconds: vLLM's buckets (an LLM answers in ms to minutes). */
export const TTFT_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560,
];
/** Inter-token latency, seconds: vLLM's buckets, with finer ones below 10 ms for small and simulated models. */
export const ITL_BUCKETS = [
  0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
];
/** End-to-end latency and queue time, seconds: vLLM's request-latency buckets plus sub-second ones. */
export const E2E_BUCKETS = [
  0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680,
];
/** Redis round trips, seconds. */
export const REDIS_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

/** How a request ended, as the gateway saw it. */
export const REQUEST_OUTCOMES = [
  'ok', // finished (stop or length)
  'cancelled', // the client went away (or read too slowly)
  'rejected_429', // refused: queue full, rate limit
  'rejected_503', // refused: overloaded, Redis unreachable
  'timeout', // its time limit passed (504)
  'error', // an engine or server error, or refused input (4xx)
] as const;
export type RequestOutcome = (typeof REQUEST_OUTCOMES)[number];

/** Why admission refused a request. */
export const REJECTION_REASONS = [
  'queue_full',
  'overloaded',
  'redis_unavailable',
  'rate_limited',
  'unauthenticated',
  'invalid_request',
] as const;
export type RejectionReason = (typeof REJECTION_REASONS)[number];

/** Label value for a model the request named but no deployment serves (bounded cardinality). */
export const UNKNOWN_MODEL = '_unknown';

/** A registry with the process's default metrics (CPU, memory, event loop lag, GC) under `llmux_process_` and `llmux_nodejs_`. */
export function createRegistry(service: 'gateway' | 'worker' | 'controller', instance: string): client.Registry {
  const registry = new client.Registry();
  registry.setDefaultLabels({ service, instance });
  client.collectDefaultMetrics({ register: registry, prefix: 'llmux_' });
  return registry;
}

const histogram = (registry: client.Registry, name: string, help: string, labelNames: string[], buckets: number[]) =>
  new client.Histogram({ name, help, labelNames, buckets, registers: [registry] });
const counter = (registry: client.Registry, name: string, help: string, labelNames: string[]) =>
  new client.Counter({ name, help, labelNames, registers: [registry] });
const gauge = (registry: client.Registry, name: string, help: string, labelNames: string[]) =>
  new client.Gauge({ name, help, labelNames, registers: [registry] });

/** What a gateway measures: the client's view of every request. */
export class GatewayMetrics {
  readonly ttft;
  readonly itl;
  readonly e2e;
  readonly requests;
  readonly rejections;
  readonly promptTokens;
  readonly generationTokens;
  readonly openRequests;
  readonly maxOpenRequests;
  readonly followers;
  readonly redisLatency;

  constructor(readonly registry: client.Registry) {
    this.maxOpenRequests = gauge(
      registry,
      'llmux_gateway_max_open_requests',
      'MAX_OPEN_REQUESTS of this gateway: past it new requests get 503 overloaded.',
      [],
    );
    this.ttft = histogram(
      registry,
      'llmux_time_to_first_token_seconds',
      'Time from admission to the first token relayed to the client (queue wait included).',
      ['model'],
      TTFT_BUCKETS,
    );
    this.itl = histogram(
      registry,
      'llmux_inter_token_latency_seconds',
      'Time between tokens relayed to the client: the gap between token events divided by the tokens of the later one.',
      ['model'],
      ITL_BUCKETS,
    );
    this.e2e = histogram(
      registry,
      'llmux_e2e_request_latency_seconds',
      'Time from admission to the end of the response, for requests that finished normally.',
      ['model'],
      E2E_BUCKETS,
    );
    this.requests = counter(registry, 'llmux_requests_total', 'Requests by model and how they ended.', ['model', 'outcome']);
    this.rejections = counter(registry, 'llmux_admission_rejections_total', 'Requests refused at admission, by reason.', [
      'model',
      'reason',
    ]);
    this.promptTokens = counter(registry, 'llmux_prompt_tokens_total', 'Prompt tokens of finished requests.', ['model']);
    this.generationTokens = counter(
      registry,
      'llmux_generation_tokens_total',
      'Generated tokens relayed to clients (also of requests that did not finish).',
      ['model'],
    );
    this.openRequests = gauge(registry, 'llmux_gateway_open_requests', 'Requests this gateway holds open now.', []);
    this.followers = gauge(
      registry,
      'llmux_gateway_followers',
      'Clients following a request through its output log (resumes, idempotent repeats).',
      [],
    );
    this.redisLatency = histogram(
      registry,
      'llmux_redis_command_duration_seconds',
      'Round trip of the Redis operations on the request path, by operation.',
      ['op'],
      REDIS_BUCKETS,
    );
  }
}

/** What a worker agent measures: its engines and slots. */
export class WorkerMetrics {
  readonly queueTime;
  readonly running;
  readonly capacity;
  readonly engineRestarts;
  readonly reclaims;
  readonly migrations;
  readonly handbacks;
  readonly finished;
  readonly generationTokens;
  readonly deadLetters;
  readonly redisLatency;

  constructor(readonly registry: client.Registry) {
    this.queueTime = histogram(
      registry,
      'llmux_request_queue_time_seconds',
      'Time a request waited in its model queue: from enqueue to the start of its first attempt.',
      ['model'],
      E2E_BUCKETS,
    );
    this.running = gauge(registry, 'llmux_num_requests_running', 'Requests in the engines of this worker now.', ['model']);
    this.capacity = gauge(registry, 'llmux_worker_capacity', 'Slots this worker has (replicas x concurrency).', ['model']);
    this.engineRestarts = counter(registry, 'llmux_engine_restarts_total', 'Engine (replica) restarts.', ['model']);
    this.reclaims = counter(
      registry,
      'llmux_reclaims_total',
      "Requests taken over from a dead worker (or this worker's own leftovers after a restart).",
      ['model'],
    );
    this.migrations = counter(
      registry,
      'llmux_migrations_total',
      'Requests continued mid-stream on this worker after another attempt had delivered tokens.',
      ['model'],
    );
    this.handbacks = counter(
      registry,
      'llmux_handbacks_total',
      'Requests handed back to the queue (drain, engine unavailable).',
      ['model'],
    );
    this.finished = counter(registry, 'llmux_worker_requests_total', 'Attempts this worker ended, by outcome.', [
      'model',
      'outcome',
    ]);
    this.generationTokens = counter(registry, 'llmux_worker_generation_tokens_total', 'Tokens generated by this worker.', [
      'model',
    ]);
    this.deadLetters = counter(
      registry,
      'llmux_dead_letters_total',
      'Request entries (in the stream or staged) that failed validation and were moved to the dead-letter stream.',
      ['model'],
    );
    this.redisLatency = histogram(
      registry,
      'llmux_redis_command_duration_seconds',
      'Round trip of Redis operations on the worker path, by operation.',
      ['op'],
      REDIS_BUCKETS,
    );
  }
}

/** Worker attempt outcomes (`llmux_worker_requests_total`). */
export const WORKER_OUTCOMES = ['ok', 'cancelled', 'error', 'timeout', 'handed_back', 'fenced'] as const;

/** What the controller measures: the fleet and the queues, from Redis. */
export class ControllerMetrics {
  readonly queueDepth;
  readonly queueLag;
  readonly queuePending;
  readonly desiredReplicas;
  readonly liveWorkers;
  readonly workerRestarts;
  readonly isLeader;
  readonly redisLatency;
  readonly sloTtft;
  readonly sloItl;
  readonly maxQueue;

  constructor(readonly registry: client.Registry) {
    this.sloTtft = gauge(
      registry,
      'llmux_slo_ttft_p95_seconds',
      "The deployment's TTFT objective at p95 (slo.ttftP95Ms), for alert rules to compare against.",
      ['model'],
    );
    this.sloItl = gauge(
      registry,
      'llmux_slo_itl_p95_seconds',
      "The deployment's inter-token latency objective at p95 (slo.itlP95Ms).",
      ['model'],
    );
    this.maxQueue = gauge(registry, 'llmux_queue_limit', "The deployment's maxQueue: past it requests get 429.", ['model']);
    this.queueDepth = gauge(
      registry,
      'llmux_queue_depth',
      'Requests waiting for a worker: staged for fair dispatch plus undelivered in the stream.',
      ['model'],
    );
    this.queueLag = gauge(
      registry,
      'llmux_consumer_group_lag',
      "Entries of the model's stream not yet delivered to any worker (the consumer group's lag).",
      ['model'],
    );
    this.queuePending = gauge(registry, 'llmux_queue_pending', 'Requests claimed by a worker and not finished.', ['model']);
    this.desiredReplicas = gauge(
      registry,
      'llmux_desired_replicas',
      "The autoscaler's desired worker replicas per model (for the HPA or KEDA).",
      ['model'],
    );
    this.liveWorkers = gauge(registry, 'llmux_live_workers', 'Live (heartbeating) workers serving the model.', ['model']);
    this.workerRestarts = counter(
      registry,
      'llmux_worker_restarts_total',
      'Local worker and gateway processes the controller restarted.',
      ['process'],
    );
    this.isLeader = gauge(registry, 'llmux_controller_is_leader', '1 while this controller holds the leader lease.', []);
    this.redisLatency = histogram(
      registry,
      'llmux_redis_command_duration_seconds',
      'Round trip of the Redis readings the controller takes, by operation.',
      ['op'],
      REDIS_BUCKETS,
    );
  }
}

/** Times a Redis operation into a histogram (by `op`), whether it succeeds or fails. */
export async function timeRedis<T>(h: client.Histogram<string>, op: string, fn: () => Promise<T>): Promise<T> {
  const end = h.startTimer({ op });
  try {
    return await fn();
  } finally {
    end();
  }
}
