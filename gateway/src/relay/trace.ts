import { SpanKind, SpanStatusCode, type Span, type Tracing } from '@llmux/shared';
import type { Ending } from './dispatcher.js';
import type { Sink } from './sinks.js';

/**
 * The gateway's part of a request's trace: `llmux.request` (admission to the
 * end of the response), with children `llmux.admit` (admission checks and
 * the enqueue) and `llmux.relay` (first token to the end). The request span's
 * `traceparent` travels in the job, and the worker adds `llmux.queue_wait`,
 * `llmux.claim` and `llmux.generate` under it.
 */
export interface RequestTrace {
  /** W3C trace context for the job; undefined when tracing is off. */
  traceparent: string | undefined;
  /** The sink, wrapped to time the relay when tracing is on. */
  wrap(sink: Sink): Sink;
  /** The request is enqueued: admission is over. */
  admitted(): void;
  /** The request ended (the dispatcher's end hook). */
  end(e: Ending): void;
  /** Refused or failed before it was enqueued. */
  fail(err: unknown): void;
}

const NOOP: RequestTrace = {
  traceparent: undefined,
  wrap: (sink) => sink,
  admitted() {},
  end() {},
  fail() {},
};

export interface TraceAttributes {
  rid: string;
  model: string;
  tenant: string;
  priority: string;
  route: string;
  /** Admission start, ms since epoch. */
  t0: number;
}

export function traceRequest(tracing: Tracing, a: TraceAttributes): RequestTrace {
  if (!tracing.enabled) return NOOP;
  const tracer = tracing.tracer;
  const request = tracer.startSpan('llmux.request', {
    kind: SpanKind.SERVER,
    startTime: a.t0,
    attributes: {
      'llmux.request_id': a.rid,
      'llmux.model': a.model,
      'llmux.tenant': a.tenant,
      'llmux.priority': a.priority,
      'http.route': a.route,
    },
  });
  const parent = tracing.within(request);
  const admit = tracer.startSpan('llmux.admit', { startTime: a.t0 }, parent);
  let relay: Span | null = null;
  let ended = false;
  const finish = (code: SpanStatusCode, message?: string) => {
    if (ended) return;
    ended = true;
    admit.end();
    relay?.end();
    request.setStatus(message === undefined ? { code } : { code, message });
    request.end();
  };
  return {
    traceparent: tracing.traceparent(request),
    wrap(sink: Sink): Sink {
      return {
        open: () => sink.open(),
        tokens(text, n, seq) {
          relay ??= tracer.startSpan('llmux.relay', {}, parent);
          sink.tokens(text, n, seq);
        },
        done: (ev, fromPart) => sink.done(ev, fromPart),
        error: (status, code, message, seq) => sink.error(status, code, message, seq),
      };
    },
    admitted: () => admit.end(),
    end(e: Ending) {
      request.setAttribute('llmux.completion_tokens', e.completionTokens);
      if (e.promptTokens !== null) request.setAttribute('llmux.prompt_tokens', e.promptTokens);
      finish(
        e.promptTokens !== null ? SpanStatusCode.OK : SpanStatusCode.ERROR,
        e.promptTokens !== null ? undefined : 'ended early',
      );
    },
    fail(err: unknown) {
      finish(SpanStatusCode.ERROR, (err as Error)?.message ?? String(err));
    },
  };
}
