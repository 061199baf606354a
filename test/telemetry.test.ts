/**
 * The sidecar's OpenTelemetry span and duration metric for a model call,
 * recorded by the real OpenTelemetry SDK into in-memory exporters.
 */
import { metrics, propagation, trace, TraceFlags, type Attributes, type TextMapPropagator } from '@opentelemetry/api';
import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { InMemorySpanExporter, SamplingDecision, SimpleSpanProcessor, TracerProvider, type Sampler } from '@opentelemetry/sdk-trace';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

const MANIFESTS = `
apiVersion: v1
kind: Secret
metadata: { name: keys }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai }
spec:
  protocol: openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: keys, key: apiKey }
  models: [gpt-4o-mini]
  costs:
    gpt-4o-mini: { input: "0.15", output: "0.60" }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: plan }
spec:
  currency: USD
  versions: [{ effectiveFrom: "2026-01-01T00:00:00Z", markupPercent: "20" }]
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: traced }
spec:
  currency: USD
  pricePlanRef: { name: plan }
  grants: [{ id: start, amount: "1.00" }]
`;

/** A sampler that samples every span and keeps the attributes it was given at the span start, the only ones a sampler receives. */
const startAttributes = new Map<string, Attributes>();
const recordingSampler: Sampler = {
  shouldSample(_context, _traceId, spanName, _kind, attributes) {
    startAttributes.set(spanName, { ...attributes });
    return { decision: SamplingDecision.RECORD_AND_SAMPLED };
  },
  toString: () => 'RecordingSampler',
};
const exporter = new InMemorySpanExporter();
const provider = new TracerProvider({ sampler: recordingSampler, spanProcessors: [new SimpleSpanProcessor({ exporter })] });
let stack: Stack;

/** Returns the spans ended so far; the processor hands them to the exporter asynchronously. */
async function finishedSpans() {
  await provider.forceFlush();
  return exporter.getFinishedSpans();
}

/**
 * Reads a W3C traceparent header (version-traceid-spanid-flags). In this test
 * it replaces the SDK's propagator, which startTelemetry registers in a real sidecar.
 */
const traceparentReader: TextMapPropagator = {
  extract(context, carrier, getter) {
    const header = getter.get(carrier, 'traceparent');
    const match = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(Array.isArray(header) ? (header[0] ?? '') : (header ?? ''));
    if (!match) return context;
    return trace.setSpanContext(context, { traceId: match[1]!, spanId: match[2]!, traceFlags: Number.parseInt(match[3]!, 16) as TraceFlags, isRemote: true });
  },
  inject() {},
  fields: () => ['traceparent'],
};

/** A reader that exports only when collect() is called, so the test reads the instruments' state on demand. */
const metricReader = new PeriodicExportingMetricReader({ exporter: new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE), exportIntervalMillis: 3_600_000 });
const meterProvider = new MeterProvider({ readers: [metricReader] });

/** Returns the data points of the operation duration histogram, by their error.type attribute ('' for none). */
async function durationCounts(): Promise<Record<string, number>> {
  const { resourceMetrics } = await metricReader.collect();
  const counts: Record<string, number> = {};
  for (const metric of resourceMetrics.scopeMetrics.flatMap((scope) => scope.metrics)) {
    if (metric.descriptor.name !== 'gen_ai.client.operation.duration') continue;
    for (const point of metric.dataPoints) {
      const errorType = String(point.attributes['error.type'] ?? '');
      counts[errorType] = (counts[errorType] ?? 0) + (point.value as { count: number }).count;
    }
  }
  return counts;
}

beforeAll(async () => {
  trace.setGlobalTracerProvider(provider);
  metrics.setGlobalMeterProvider(meterProvider);
  propagation.setGlobalPropagator(traceparentReader);
  stack = await startStack(MANIFESTS);
});

afterAll(async () => {
  await stack?.close();
  trace.disable();
  propagation.disable();
  metrics.disable();
  await meterProvider.shutdown();
});

describe('OpenTelemetry span', () => {
  it('carries GenAI attributes and the charge', async () => {
    const client = new OpenAI({ baseURL: `${stack.url}/openai/v1`, apiKey: 'placeholder', maxRetries: 0, defaultHeaders: { 'x-tollgate-wallet': 'traced' } });
    const usage = { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500 };
    await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'trace me' }], max_tokens: 600 }, { headers: { 'x-sim-usage': JSON.stringify(usage) } });

    const [span] = await finishedSpans();
    expect(span?.name).toBe('chat gpt-4o-mini');
    expect(startAttributes.get('chat gpt-4o-mini')).toEqual({
      'gen_ai.operation.name': 'chat',
      'gen_ai.provider.name': 'openai',
      'gen_ai.request.model': 'gpt-4o-mini',
      'gen_ai.request.max_tokens': 600,
      'server.address': '127.0.0.1',
      'server.port': Number(new URL(stack.simulator.url).port),
      'tollgate.route': 'openai',
    });
    expect(span?.attributes['gen_ai.operation.name']).toBe('chat');
    expect(span?.attributes['gen_ai.provider.name']).toBe('openai');
    expect(span?.attributes['gen_ai.request.model']).toBe('gpt-4o-mini');
    expect(span?.attributes['gen_ai.request.max_tokens']).toBe(600);
    expect(span?.attributes['gen_ai.usage.input_tokens']).toBe(1000);
    expect(span?.attributes['gen_ai.usage.output_tokens']).toBe(500);
    // (1000 x 0.15 + 500 x 0.60) per million x 1.2 = 0.00054 USD.
    expect(span?.attributes['tollgate.charged']).toBe('0.00054');
    expect(span?.attributes['tollgate.provider_cost']).toBe('0.00045');
    expect(span?.attributes['tollgate.wallet']).toBe('default/traced');
    expect(span?.attributes['gen_ai.response.model']).toBe('gpt-4o-mini');
    expect(String(span?.attributes['gen_ai.response.id'])).toMatch(/^chatcmpl-/);
    // 500 output tokens under a limit of 600, so the simulator reports a natural stop.
    expect(span?.attributes['gen_ai.response.finish_reasons']).toEqual(['stop']);
  });

  it('continues the trace of a traceparent header', async () => {
    exporter.reset();
    const client = new OpenAI({ baseURL: `${stack.url}/openai/v1`, apiKey: 'placeholder', maxRetries: 0, defaultHeaders: { 'x-tollgate-wallet': 'traced' } });
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'child span' }], max_tokens: 5 }, { headers: { traceparent } });

    const [span] = await finishedSpans();
    expect(span?.spanContext().traceId).toBe('0af7651916cd43dd8448eb211c80319c');
    expect(span?.parentSpanContext?.spanId).toBe('b7ad6b7169203331');
    expect(span?.spanContext().spanId).not.toBe('b7ad6b7169203331');
  });

  it('types an upstream error by its status code', async () => {
    exporter.reset();
    const before = await durationCounts();
    const client = new OpenAI({ baseURL: `${stack.url}/openai/v1`, apiKey: 'placeholder', maxRetries: 0, defaultHeaders: { 'x-tollgate-wallet': 'traced' } });
    await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'fail' }], max_tokens: 5 }, { headers: { 'x-sim-status': '503' } }).catch(() => undefined);

    const [span] = await finishedSpans();
    expect(span?.attributes['error.type']).toBe('503');
    expect(span?.attributes['http.response.status_code']).toBe(503);
    expect(span?.status.code).toBe(2);
    // The failed call's duration is recorded too, under its error type.
    const after = await durationCounts();
    expect((after['503'] ?? 0) - (before['503'] ?? 0)).toBe(1);
    expect(after['']).toBe(before['']);
  });

  it('marks a denied call as an error', async () => {
    exporter.reset();
    const client = new OpenAI({ baseURL: `${stack.url}/openai/v1`, apiKey: 'placeholder', maxRetries: 0, defaultHeaders: { 'x-tollgate-wallet': 'traced' } });
    await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'too big' }], max_tokens: 10_000_000 }).catch(() => undefined);

    const [span] = await finishedSpans();
    expect(span?.attributes['error.type']).toBe('insufficient_funds');
    expect(span?.status.code).toBe(2);
  });
});
