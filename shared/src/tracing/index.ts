import {
  context as otelContext,
  defaultTextMapGetter,
  defaultTextMapSetter,
  ROOT_CONTEXT,
  trace,
  type Context,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';

export { SpanKind, SpanStatusCode, type Context, type Span } from '@opentelemetry/api';

/** Where spans go; null in the config means tracing is off (the default). */
export interface TracingConfig {
  /** OTLP/HTTP traces endpoint, e.g. `http://collector:4318/v1/traces`. */
  endpoint: string;
  /** `service.name`; default `llmux-<component>`. */
  serviceName: string | null;
  /** How long spans are batched before export (OTEL_BSP_SCHEDULE_DELAY). */
  scheduleDelayMs: number;
}

const propagator = new W3CTraceContextPropagator();

/**
 * OpenTelemetry tracing for one process, off unless an OTLP endpoint is
 * configured. Spans are made with explicit parents (no global context
 * manager), and a trace crosses processes inside the Redis stream entry: the
 * gateway writes the W3C `traceparent` of its request span into the job, the
 * worker continues the trace from it. When off, every span is a no-op and
 * `traceparent` is undefined, so the job carries nothing.
 */
export class Tracing {
  private constructor(
    readonly tracer: Tracer,
    private readonly provider: TracerProvider | null,
  ) {}

  static off(): Tracing {
    return new Tracing(trace.getTracer('llmux'), null);
  }

  static start(config: TracingConfig | null, component: string, instance: string): Tracing {
    if (!config) return Tracing.off();
    const provider = new TracerProvider({
      resource: resourceFromAttributes({
        'service.name': config.serviceName ?? `llmux-${component}`,
        'service.instance.id': instance,
      }),
      spanProcessors: [
        new BatchSpanProcessor({
          exporter: new OTLPTraceExporter({ url: config.endpoint }),
          scheduledDelayMillis: config.scheduleDelayMs,
        }),
      ],
    });
    return new Tracing(provider.getTracer('llmux'), provider);
  }

  get enabled(): boolean {
    return this.provider !== null;
  }

  /** A context whose active span is `span`, to start children under it. */
  within(span: Span): Context {
    return trace.setSpan(ROOT_CONTEXT, span);
  }

  /** The W3C `traceparent` of a span, for a stream entry; undefined when tracing is off. */
  traceparent(span: Span): string | undefined {
    // A no-op span has an invalid context, which the propagator does not write.
    const carrier: Record<string, string> = {};
    propagator.inject(trace.setSpan(otelContext.active(), span), carrier, defaultTextMapSetter);
    return carrier.traceparent;
  }

  /** The context a `traceparent` read off a stream entry names (the root context without one). */
  contextFrom(traceparent: string | undefined): Context {
    if (!traceparent) return ROOT_CONTEXT;
    return propagator.extract(ROOT_CONTEXT, { traceparent }, defaultTextMapGetter);
  }

  /** Exports what is batched and stops. */
  async shutdown(): Promise<void> {
    await this.provider?.shutdown();
  }
}

/** W3C traceparent: version 00, 32-hex trace id, 16-hex span id, 2-hex flags. */
export const TRACEPARENT = /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
