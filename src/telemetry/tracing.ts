import { diag, DiagLogLevel, metrics, trace, type Attributes, type DiagLogger, type Histogram, type Span, type Tracer } from '@opentelemetry/api';
import type { Logger } from 'pino';
import type { ResponseMetadata } from '../providers/adapter.ts';

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
  responseId: 'gen_ai.response.id',
  responseModel: 'gen_ai.response.model',
  finishReasons: 'gen_ai.response.finish_reasons',
} as const;

/**
 * Reads the response id, the model that produced the response and the
 * finish reasons from a provider's JSON response body, as GenAI span
 * attributes. Each provider
 * names them differently: OpenAI and Azure (id, model,
 * choices[].finish_reason), the OpenAI Responses API (id, model, and
 * incomplete_details.reason or else status), Anthropic (id, model,
 * stop_reason) and Gemini (responseId, modelVersion,
 * candidates[].finishReason). Fields a body lacks
 * are left out. For streamed responses, see responseMetadataAttributes.
 */
export function responseAttributes(body: unknown): Attributes {
  if (typeof body !== 'object' || body === null) return {};
  const record = body as Record<string, unknown>;
  const attributes: Attributes = {};
  const id = record['id'] ?? record['responseId'];
  if (typeof id === 'string') attributes[GEN_AI.responseId] = id;
  const model = record['model'] ?? record['modelVersion'];
  if (typeof model === 'string') attributes[GEN_AI.responseModel] = model;

  const reasons: string[] = [];
  if (typeof record['stop_reason'] === 'string') reasons.push(record['stop_reason']);
  if (record['object'] === 'response') {
    // A Responses API object: why it is incomplete when it is, else its status.
    const details = record['incomplete_details'] as Record<string, unknown> | null | undefined;
    const reason = details?.['reason'] ?? record['status'];
    if (typeof reason === 'string') reasons.push(reason);
  }
  for (const choice of Array.isArray(record['choices']) ? record['choices'] : Array.isArray(record['candidates']) ? record['candidates'] : []) {
    const reason = (choice as Record<string, unknown> | null)?.['finish_reason'] ?? (choice as Record<string, unknown> | null)?.['finishReason'];
    if (typeof reason === 'string') reasons.push(reason);
  }
  if (reasons.length > 0) attributes[GEN_AI.finishReasons] = reasons;
  return attributes;
}

/**
 * Converts what a stream meter read from a streamed response into the same
 * GenAI span attributes as responseAttributes, leaving out what the stream
 * lacked.
 */
export function responseMetadataAttributes(metadata: ResponseMetadata): Attributes {
  const attributes: Attributes = {};
  if (metadata.id !== undefined) attributes[GEN_AI.responseId] = metadata.id;
  if (metadata.model !== undefined) attributes[GEN_AI.responseModel] = metadata.model;
  if (metadata.finishReasons.length > 0) attributes[GEN_AI.finishReasons] = metadata.finishReasons;
  return attributes;
}

export type { Attributes, Span };

/**
 * Starts the OpenTelemetry Node SDK when the standard
 * OTEL_EXPORTER_OTLP_ENDPOINT variable is set; otherwise does nothing. The
 * SDK reads the other standard variables itself: the protocol
 * (OTEL_EXPORTER_OTLP_PROTOCOL, http/protobuf by default, or grpc or
 * http/json), the exporters, the metric export interval and the propagators.
 * Its warnings and errors, such as failed exports, go to `log`.
 * Returns a function that flushes and stops the SDK.
 */
export async function startTelemetry(serviceName: string, log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<() => Promise<void>> {
  if (!env.OTEL_EXPORTER_OTLP_ENDPOINT) return async () => {};
  diag.setLogger(diagToPino(log), DiagLogLevel.WARN);

  const { NodeSDK } = await import('@opentelemetry/sdk-node');
  const sdk = new NodeSDK({ serviceName: env.OTEL_SERVICE_NAME ?? serviceName });
  sdk.start();
  log.info({ endpoint: env.OTEL_EXPORTER_OTLP_ENDPOINT }, 'OpenTelemetry export started');
  return () => sdk.shutdown();
}

/** How long a repeated diagnostic message stays at debug after its warn line. */
const DIAG_REPEAT_MS = 60_000;

/**
 * Returns an OpenTelemetry diagnostic logger that writes the SDK's warnings
 * and errors, such as failed exports, as warn lines. A message repeated
 * within a minute (an unreachable collector fails every export) goes to
 * debug. The trace exporter passes its error as a JSON string of the error,
 * which becomes the line's err.
 */
export function diagToPino(log: Logger, now: () => number = Date.now): DiagLogger {
  const lastWarned = new Map<string, number>();
  const write = (message: string, ...args: unknown[]): void => {
    let text = String(message);
    let error = args.find((arg): arg is Error => arg instanceof Error);
    if (error === undefined && text.startsWith('{')) {
      try {
        const parsed = JSON.parse(text) as { message?: unknown; stack?: unknown };
        if (typeof parsed.message === 'string') {
          error = Object.assign(new Error(parsed.message), { stack: typeof parsed.stack === 'string' ? parsed.stack : undefined });
          text = 'export failed';
        }
      } catch {
        // Not JSON after all: the message stays as it is.
      }
    }
    const key = `${text}\u0000${error?.message ?? ''}`;
    const last = lastWarned.get(key);
    const repeated = last !== undefined && now() - last < DIAG_REPEAT_MS;
    if (!repeated) {
      if (lastWarned.size >= 100) lastWarned.clear();
      lastWarned.set(key, now());
    }
    log[repeated ? 'debug' : 'warn'](error ? { err: error } : {}, `OpenTelemetry: ${text}`);
  };
  const ignore = (): void => {};
  return { error: write, warn: write, info: ignore, debug: ignore, verbose: ignore };
}
