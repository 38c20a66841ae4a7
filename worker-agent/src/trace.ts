import { SpanStatusCode, type Job, type Span, type Tracing } from '@llmux/shared';

/**
 * A worker attempt's part of the request's trace, continued from the
 * `traceparent` the gateway put in the job: `llmux.queue_wait` (enqueue to
 * this attempt's start), `llmux.claim` (the attempt's bookkeeping before the
 * engine runs) and `llmux.generate` (the engine call). No-op when tracing is
 * off or the job carries no trace context.
 */
export interface AttemptTrace {
  /** The engine starts now. */
  generating(attempt: number, resumedTokens: number): void;
  /** The attempt ended with `outcome` after `tokens` generated tokens. */
  end(outcome: string, tokens: number): void;
}

const NOOP: AttemptTrace = { generating() {}, end() {} };

export function traceAttempt(tracing: Tracing, job: Job, worker: string, takeover: boolean): AttemptTrace {
  if (!tracing.enabled || !job.traceparent) return NOOP;
  const parent = tracing.contextFrom(job.traceparent);
  const now = Date.now();
  const attrs = { 'llmux.request_id': job.rid, 'llmux.model': job.model, 'llmux.worker': worker, 'llmux.takeover': takeover };
  tracing.tracer.startSpan('llmux.queue_wait', { startTime: job.enqueuedAt, attributes: attrs }, parent).end(now);
  const claim = tracing.tracer.startSpan('llmux.claim', { startTime: now, attributes: attrs }, parent);
  let generate: Span | null = null;
  let ended = false;
  return {
    generating(attempt, resumedTokens) {
      claim.end();
      generate = tracing.tracer.startSpan(
        'llmux.generate',
        { attributes: { ...attrs, 'llmux.attempt': attempt, 'llmux.resumed_tokens': resumedTokens } },
        parent,
      );
    },
    end(outcome, tokens) {
      if (ended) return;
      ended = true;
      claim.end();
      const span = generate ?? claim;
      span.setAttribute('llmux.outcome', outcome);
      span.setAttribute('llmux.generated_tokens', tokens);
      if (outcome !== 'ok' && outcome !== 'handed_back') span.setStatus({ code: SpanStatusCode.ERROR, message: outcome });
      generate?.end();
    },
  };
}
