import { metrics, trace, type Attributes, type Histogram, type Span, type Tracer } from '@opentelemetry/api';
import type { Logger } from 'pino';

/**
 * OpenTelemetry for the sidecar: one client span per model call with the
 * GenAI semantic-convention attributes, and the `gen_ai.client.*` metrics.
 * Until an SDK is registered (startTelemetry, or a test's own provider), the
 * API hands out no-op spans and instruments, so the hot path pays almost
 * nothing.
 */
export interface GenAiTelemetry {
  tracer: Tracer;
  tokenUsage: Histogram;
  operationDuration: Histogram;
}

export function createGenAiTelemetry(): GenAiTelemetry {
  const meter = metrics.getMeter('tollgate-sidecar');
  return {
    tracer: trace.getTracer('tollgate-sidecar'),
    tokenUsage: meter.createHistogram('gen_ai.client.token.usage', {
      description: 'Tokens used per model call, by gen_ai.token.type (input or output).',
      unit: '{token}',
    }),
    operationDuration: meter.createHistogram('gen_ai.client.operation.duration', {
      description: 'Duration of a model call through the sidecar.',
      unit: 's',
    }),
  };
}

/** Attribute names from the OpenTelemetry GenAI semantic conventions. */
export const GEN_AI = {
  operation: 'gen_ai.operation.name',
  provider: 'gen_ai.provider.name',
  requestModel: 'gen_ai.request.model',
  maxTokens: 'gen_ai.request.max_tokens',
  inputTokens: 'gen_ai.usage.input_tokens',
  outputTokens: 'gen_ai.usage.output_tokens',
  tokenType: 'gen_ai.token.type',
  errorType: 'error.type',
} as const;

export type { Attributes, Span };

/**
 * Starts the OpenTelemetry Node SDK with OTLP exporters when the standard
 * OTEL_EXPORTER_OTLP_ENDPOINT variable is set; otherwise does nothing.
 * Returns a function that flushes and stops the SDK.
 */
export async function startTelemetry(serviceName: string, log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<() => Promise<void>> {
  if (!env.OTEL_EXPORTER_OTLP_ENDPOINT) return async () => {};

  const [{ NodeSDK }, { OTLPTraceExporter }, { OTLPMetricExporter }, { PeriodicExportingMetricReader }] = await Promise.all([
    import('@opentelemetry/sdk-node'),
    import('@opentelemetry/exporter-trace-otlp-http'),
    import('@opentelemetry/exporter-metrics-otlp-http'),
    import('@opentelemetry/sdk-metrics'),
  ]);
  const sdk = new NodeSDK({
    serviceName: env.OTEL_SERVICE_NAME ?? serviceName,
    traceExporter: new OTLPTraceExporter(),
    metricReaders: [new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter() })],
  });
  sdk.start();
  log.info({ endpoint: env.OTEL_EXPORTER_OTLP_ENDPOINT }, 'OpenTelemetry export started');
  return () => sdk.shutdown();
}
