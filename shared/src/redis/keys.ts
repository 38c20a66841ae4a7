/**
 * Every Redis key name the system uses, in one place. A model's keys carry the
 * model name as a hash tag (`{model}`) so they share a Redis Cluster slot; a
 * gateway's keys carry its id the same way.
 *
 * | key | type | written by | purpose |
 * | --- | --- | --- | --- |
 * | `<p>:{model}:requests` | stream + group `workers` | gateway | the model's queue |
 * | `<p>:{model}:cancel:<rid>` | string, TTL | gateway | request cancelled |
 * | `<p>:gw:{id}:events` | stream, TTL | workers (created by its gateway) | token events for one gateway |
 * | `<p>:gw:{id}:alive` | string, TTL | gateway | gateway liveness (TTL 6 s, refreshed every 2 s); workers cancel a known gateway's requests when it is gone |
 * | `<p>:gw:{id}:known` | string, TTL | gateway | the gateway ran: outlives every request it admitted, so a missing `alive` means dead, not unknown |
 * | `<p>:gw:{id}:req:<rid>` | hash, TTL | workers | owner, next seq, tokens delivered, attempts, done |
 * | `<p>:gw:{id}:log:<rid>` | stream, TTL | workers | the request's events, entry id `<seq+1>-0` (resume, replay) |
 * | `<p>:rid:<rid>` | string (JSON), TTL | gateway | where a resumable request lives (gateway id) and how to render it |
 * | `<p>:gw:{id}:follow:<rid>` | string, TTL | gateways | someone follows the request: its disconnect grace is extended |
 * | `<p>:{model}:q:<priority>:<tenant>` | list | gateway | requests of one tenant waiting for fair dispatch |
 * | `<p>:{model}:fair:<priority>` | sorted set | gateway, workers | backlogged tenants by virtual time (weighted fair queueing) |
 * | `<p>:{model}:fair` | hash | gateway, workers | virtual clock per priority, `staged` count |
 * | `<p>:{model}:load` | pub/sub channel | workers | a worker's load changed (least-loaded claiming) |
 * | `<p>:{model}:dead` | stream (MAXLEN ~ 10000) | workers | dead letters: malformed request entries, with the reason and the original fields |
 * | `<p>:apikey:<sha256>` | hash | CLI (admin API), gateway | an API key's record and its rate-limit buckets |
 * | `<p>:apikeys` | hash | CLI (admin API) | key id -> sha256 of the key (listing, revoking) |
 * | `<p>:idem:{tenant}:<sha256>` | string (JSON), TTL | gateway | an Idempotency-Key: body hash, request id, gateway |
 * | `<p>:workers` | sorted set | workers | worker id -> last heartbeat ms |
 * | `<p>:worker:<id>` | string (JSON), TTL | workers | worker status |
 * | `<p>:deployments` | hash | controller | model name -> deployment JSON |
 * | `<p>:cancel` | pub/sub channel | gateway | request ids being cancelled |
 * | `<p>:controller:leader` | string, TTL | controller | leader lease: `<id> <admin address>` |
 * | `<p>:controller:scale` | hash | controller | model -> desired replicas |
 * | `<p>:controller:events` | stream (capped) | controller | cluster events for watchers |
 * | `<p>:controller:stats` | hash | controller | model -> scale figures (JSON), every 10 s |
 * | `<p>:controller:processes` | hash | controller | local worker id -> process record (restarts, last exit) |
 */
export class Keys {
  constructor(readonly prefix = 'llm') {}

  requests(model: string): string {
    return `${this.prefix}:{${model}}:requests`;
  }

  cancel(model: string, rid: string): string {
    return `${this.prefix}:{${model}}:cancel:${rid}`;
  }

  replies(gatewayId: string): string {
    return `${this.prefix}:gw:{${gatewayId}}:events`;
  }

  /** A request's state; in its gateway's slot so one script can update it with the reply stream. */
  requestState(gatewayId: string, rid: string): string {
    return `${this.prefix}:gw:{${gatewayId}}:req:${rid}`;
  }

  /** A request's events as written, one entry per event with id `<seq+1>-0`. */
  requestLog(gatewayId: string, rid: string): string {
    return `${this.prefix}:gw:{${gatewayId}}:log:${rid}`;
  }

  /** Where a streamed or idempotent request lives and how to render it again (resume, replay). */
  requestMeta(rid: string): string {
    return `${this.prefix}:rid:${rid}`;
  }

  /** Present while some client follows (resumes or attached to) the request. */
  requestFollowers(gatewayId: string, rid: string): string {
    return `${this.prefix}:gw:{${gatewayId}}:follow:${rid}`;
  }

  /** One tenant's requests of one priority waiting for fair dispatch. */
  tenantQueue(model: string, priority: string, tenant: string): string {
    return `${this.prefix}:{${model}}:q:${priority}:${tenant}`;
  }

  /** Backlogged tenants of one priority, scored by virtual time. */
  fairIndex(model: string, priority: string): string {
    return `${this.prefix}:{${model}}:fair:${priority}`;
  }

  /** The model's fair-queue clock (per priority) and staged count. */
  fairState(model: string): string {
    return `${this.prefix}:{${model}}:fair`;
  }

  /** An API key's record, by the sha256 of the key. */
  apiKey(sha256: string): string {
    return `${this.prefix}:apikey:${sha256}`;
  }

  /** Key id -> sha256, for listing and revoking. */
  apiKeyIndex(): string {
    return `${this.prefix}:apikeys`;
  }

  /** An Idempotency-Key of a tenant, by the sha256 of the key. */
  idempotency(tenant: string, sha256: string): string {
    return `${this.prefix}:idem:{${tenant}}:${sha256}`;
  }

  loadChannel(model: string): string {
    return `${this.prefix}:{${model}}:load`;
  }

  gatewayAlive(gatewayId: string): string {
    return `${this.prefix}:gw:{${gatewayId}}:alive`;
  }

  workers(): string {
    return `${this.prefix}:workers`;
  }

  worker(workerId: string): string {
    return `${this.prefix}:worker:${workerId}`;
  }

  deployments(): string {
    return `${this.prefix}:deployments`;
  }

  cancelChannel(): string {
    return `${this.prefix}:cancel`;
  }

  controllerLease(): string {
    return `${this.prefix}:controller:leader`;
  }

  desiredScale(): string {
    return `${this.prefix}:controller:scale`;
  }

  /** Per-model scale figures rolled up every 10 s by the leader. */
  controllerStats(): string {
    return `${this.prefix}:controller:stats`;
  }

  clusterEvents(): string {
    return `${this.prefix}:controller:events`;
  }

  localProcesses(): string {
    return `${this.prefix}:controller:processes`;
  }

  /** BullMQ queue name for one worker agent's control jobs (BullMQ adds its own `bull:` prefix). */
  controlQueue(workerId: string): string {
    return `${this.prefix}-control-${workerId}`;
  }

  /** Present while a gateway of this id has run within its request time limit (plus 60 s); with `gatewayAlive` gone it is dead. */
  gatewayKnown(gatewayId: string): string {
    return `${this.prefix}:gw:{${gatewayId}}:known`;
  }

  /** Dead letters: request entries (direct or staged) that failed validation; in the model's slot. */
  deadLetters(model: string): string {
    return `${this.prefix}:{${model}}:dead`;
  }
}

/** The consumer group every worker agent joins on a model's request stream. */
export const WORKER_GROUP = 'workers';
