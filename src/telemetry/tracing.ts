import { diag, DiagLogLevel, metrics, trace, type Attributes, type DiagLogger, type Histogram, type Span, type Tracer } from '@opentelemetry/api';
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

/** Powers of 4 from 1 to 4^13 tokens. */
export const TOKEN_BUCKETS: readonly number[] = Array.from({ length: 14 }, (_, power) => 4 ** power);
/** Doublings from 10 ms to 81.92 s. */
export const DURATION_BUCKETS: readonly number[] = Array.from({ length: 14 }, (_, power) => (10 * 2 ** power) / 1000);

export function createGenAiTelemetry(): GenAiTelemetry {
  const meter = metrics.getMeter('tollgate-sidecar');
  return {
    tracer: trace.getTracer('tollgate-sidecar'),
    // Bucket boundaries as the GenAI semantic conventions advise; the SDK's defaults (0, 5, 10, 25 ...) put every call in one bucket.
    tokenUsage: meter.createHistogram('gen_ai.client.token.usage', {
      description: 'Tokens used per model call, by gen_ai.token.type (input or output).',
      unit: '{token}',
      advice: { explicitBucketBoundaries: [...TOKEN_BUCKETS] },
    }),
    operationDuration: meter.createHistogram('gen_ai.client.operation.duration', {
      description: 'Duration of a model call through the sidecar.',
      unit: 's',
      advice: { explicitBucketBoundaries: [...DURATION_BUCKETS] },
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
  const settings = otlpSettings(env);
  for (const warning of settings.warnings) log.warn({}, warning);
  diag.setLogger(diagToPino(log), DiagLogLevel.WARN);

  const [{ NodeSDK }, { OTLPTraceExporter }, { OTLPMetricExporter }, { PeriodicExportingMetricReader }] = await Promise.all([
    import('@opentelemetry/sdk-node'),
    import('@opentelemetry/exporter-trace-otlp-http'),
    import('@opentelemetry/exporter-metrics-otlp-http'),
    import('@opentelemetry/sdk-metrics'),
  ]);
  const sdk = new NodeSDK({
    serviceName: env.OTEL_SERVICE_NAME ?? serviceName,
    traceExporter: new OTLPTraceExporter(),
    metricReaders: [new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter(), exportIntervalMillis: settings.metricIntervalMs })],
  });
  sdk.start();
  log.info({ endpoint: env.OTEL_EXPORTER_OTLP_ENDPOINT, metricIntervalMs: settings.metricIntervalMs }, 'OpenTelemetry export started');
  return () => sdk.shutdown();
}

const DEFAULT_METRIC_INTERVAL_MS = 60_000;
const PROTOCOL_VARIABLES = ['OTEL_EXPORTER_OTLP_PROTOCOL', 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_METRICS_PROTOCOL'] as const;

/**
 * Reads the OTLP settings that the sidecar applies itself: the metric export
 * interval (OTEL_METRIC_EXPORT_INTERVAL, in ms), and warnings for settings it
 * cannot follow. Its exporters send OTLP over HTTP with JSON bodies only.
 */
export function otlpSettings(env: NodeJS.ProcessEnv): { metricIntervalMs: number; warnings: string[] } {
  const warnings: string[] = [];
  for (const name of PROTOCOL_VARIABLES) {
    const value = env[name];
    if (value && value !== 'http/json') {
      warnings.push(
        `${name}=${value} is not supported: the sidecar exports OTLP over HTTP with JSON bodies (http/json), ` +
          "so point OTEL_EXPORTER_OTLP_ENDPOINT at a collector's OTLP/HTTP port (4318 by default) and unset the variable",
      );
    }
  }

  let metricIntervalMs = DEFAULT_METRIC_INTERVAL_MS;
  const interval = env.OTEL_METRIC_EXPORT_INTERVAL;
  if (interval) {
    const value = Number(interval);
    if (Number.isSafeInteger(value) && value > 0) metricIntervalMs = value;
    else warnings.push(`invalid OTEL_METRIC_EXPORT_INTERVAL "${interval}": use a whole number of milliseconds such as 10000; exporting every ${DEFAULT_METRIC_INTERVAL_MS} ms`);
  }
  return { metricIntervalMs, warnings };
}

/** Returns an OpenTelemetry diagnostic logger that writes the SDK's warnings and errors, such as failed exports, as warn lines. */
export function diagToPino(log: Logger): DiagLogger {
  const write = (message: string, ...args: unknown[]): void => {
    const error = args.find((arg): arg is Error => arg instanceof Error);
    log.warn(error ? { err: error } : {}, `OpenTelemetry: ${message}`);
  };
  const ignore = (): void => {};
  return { error: write, warn: write, info: ignore, debug: ignore, verbose: ignore };
}
