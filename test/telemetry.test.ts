/**
 * The sidecar's OpenTelemetry span and duration metric for a model call,
 * recorded by the real OpenTelemetry SDK into in-memory exporters.
 */
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { metrics, propagation, trace, TraceFlags, type Attributes, type TextMapPropagator } from '@opentelemetry/api';
import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { InMemorySpanExporter, SamplingDecision, SimpleSpanProcessor, TracerProvider, type ReadableSpan, type Sampler, type SpanProcessor } from '@opentelemetry/sdk-trace';
import OpenAI, { AzureOpenAI } from 'openai';
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
kind: ProviderRoute
metadata: { name: anthropic }
spec:
  protocol: anthropic
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: keys, key: apiKey }
  models: [claude-haiku-4-5]
  costs:
    claude-haiku-4-5: { input: "1.00", output: "5.00" }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: gemini }
spec:
  protocol: gemini
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: keys, key: apiKey }
  models: [gemini-2.5-flash]
  costs:
    gemini-2.5-flash: { input: "0.30", output: "2.50" }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: azure }
spec:
  protocol: azure-openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: keys, key: apiKey }
  models: [gpt-4o]
  deployments:
    - { name: prod-4o, model: gpt-4o }
  costs:
    gpt-4o: { input: "2.50", output: "10.00" }
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

/** Resolvers of nextEndedSpan, oldest first. */
const spanWaiters: ((span: ReadableSpan) => void)[] = [];
/** Hands each ended span to the oldest waiter of nextEndedSpan, if any. */
const waiterProcessor: SpanProcessor = {
  onStart() {},
  onEnd(span) {
    spanWaiters.shift()?.(span);
  },
  forceFlush: async () => {},
  shutdown: async () => {},
};

/**
 * Returns a promise of the next span to end. The sidecar ends a streamed
 * call's span after committing its charge, which is after the client has read
 * the end of the stream. So a test awaits the span instead of reading the
 * exporter at once.
 */
function nextEndedSpan(): Promise<ReadableSpan> {
  return new Promise((resolve) => spanWaiters.push(resolve));
}

const provider = new TracerProvider({ sampler: recordingSampler, spanProcessors: [new SimpleSpanProcessor({ exporter }), waiterProcessor] });
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

describe('OpenTelemetry span of a streamed response', () => {
  const WALLET_HEADER = { 'x-tollgate-wallet': 'traced' };

  it('covers an OpenAI stream', async () => {
    const ended = nextEndedSpan();
    const client = new OpenAI({ baseURL: `${stack.url}/openai/v1`, apiKey: 'placeholder', maxRetries: 0, defaultHeaders: WALLET_HEADER });
    // The simulator generates 16 tokens, so a limit of 5 stops it with "length".
    const stream = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'stream me' }], max_tokens: 5, stream: true });
    const ids = new Set<string>();
    for await (const chunk of stream) ids.add(chunk.id);

    expect(ids.size).toBe(1);
    const [id] = ids;
    expect(id).toMatch(/^chatcmpl-sim\d{8}$/);
    const span = await ended;
    expect(span.attributes['gen_ai.response.id']).toBe(id);
    expect(span.attributes['gen_ai.response.model']).toBe('gpt-4o-mini');
    expect(span.attributes['gen_ai.response.finish_reasons']).toEqual(['length']);
  });

  it('covers a cut OpenAI stream', async () => {
    const ended = nextEndedSpan();
    const client = new OpenAI({ baseURL: `${stack.url}/openai/v1`, apiKey: 'placeholder', maxRetries: 0, defaultHeaders: WALLET_HEADER });
    const ids = new Set<string>();
    const failure = await (async () => {
      const stream = await client.chat.completions.create(
        { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'cut me' }], stream: true },
        { headers: { 'x-sim-cut-after': '3' } },
      );
      for await (const chunk of stream) ids.add(chunk.id);
    })().catch((error: unknown) => error);

    expect(failure).toBeInstanceOf(Error);
    expect(ids.size).toBe(1);
    const span = await ended;
    expect(span.attributes['tollgate.usage_estimated']).toBe(true);
    expect(span.attributes['gen_ai.response.id']).toBe([...ids][0]);
    expect(span.attributes['gen_ai.response.model']).toBe('gpt-4o-mini');
    expect(span.attributes['gen_ai.response.finish_reasons']).toBeUndefined();
  });

  it('covers an Anthropic stream', async () => {
    const ended = nextEndedSpan();
    const client = new Anthropic({ baseURL: `${stack.url}/anthropic`, apiKey: 'placeholder', maxRetries: 0, defaultHeaders: WALLET_HEADER });
    const stream = await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [{ role: 'user', content: 'stream me' }], stream: true });
    let messageId: string | undefined;
    let stopReason: string | null | undefined;
    for await (const event of stream) {
      if (event.type === 'message_start') messageId = event.message.id;
      if (event.type === 'message_delta') stopReason = event.delta.stop_reason;
    }

    expect(messageId).toMatch(/^msg_sim\d{8}$/);
    expect(stopReason).toBe('max_tokens');
    const span = await ended;
    expect(span.attributes['gen_ai.provider.name']).toBe('anthropic');
    expect(span.attributes['gen_ai.response.id']).toBe(messageId);
    expect(span.attributes['gen_ai.response.model']).toBe('claude-haiku-4-5');
    expect(span.attributes['gen_ai.response.finish_reasons']).toEqual(['max_tokens']);
  });

  it('covers a Gemini stream', async () => {
    const ended = nextEndedSpan();
    const client = new GoogleGenAI({
      apiKey: 'placeholder',
      httpOptions: { baseUrl: `${stack.url}/gemini`, headers: WALLET_HEADER, retryOptions: { attempts: 1 } },
    });
    const stream = await client.models.generateContentStream({ model: 'gemini-2.5-flash', contents: 'stream me' });
    const ids = new Set<string | undefined>();
    for await (const chunk of stream) ids.add(chunk.responseId);

    expect(ids.size).toBe(1);
    const [id] = ids;
    expect(id).toMatch(/^resp_sim\d{8}$/);
    const span = await ended;
    expect(span.attributes['gen_ai.provider.name']).toBe('gemini');
    expect(span.attributes['gen_ai.response.id']).toBe(id);
    expect(span.attributes['gen_ai.response.model']).toBe('gemini-2.5-flash');
    expect(span.attributes['gen_ai.response.finish_reasons']).toEqual(['STOP']);
  });

  it('covers an Azure OpenAI stream', async () => {
    const ended = nextEndedSpan();
    const client = new AzureOpenAI({
      endpoint: `${stack.url}/azure`,
      apiKey: 'placeholder',
      apiVersion: '2024-10-21',
      deployment: 'prod-4o',
      maxRetries: 0,
      defaultHeaders: WALLET_HEADER,
    });
    const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'stream me' }], stream: true });
    const ids = new Set<string>();
    for await (const chunk of stream) ids.add(chunk.id);

    // Azure's first chunk, which carries only the prompt's filter results, has an empty id.
    expect(ids.size).toBe(2);
    expect(ids.has('')).toBe(true);
    const id = [...ids].find((candidate) => candidate !== '');
    expect(id).toMatch(/^chatcmpl-sim\d{8}$/);
    const span = await ended;
    expect(span.attributes['gen_ai.provider.name']).toBe('azure-openai');
    expect(span.attributes['gen_ai.response.id']).toBe(id);
    expect(span.attributes['gen_ai.response.model']).toBe('gpt-4o');
    expect(span.attributes['gen_ai.response.finish_reasons']).toEqual(['stop']);
  });
});
