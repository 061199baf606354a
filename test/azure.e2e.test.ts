/**
 * Azure OpenAI through the sidecar end to end. The official `AzureOpenAI`
 * client of the `openai` package, unmodified, calls a real sidecar on the
 * Redis ledger. The sidecar rates each call at its deployment's base model
 * and forwards it to the provider simulator's Azure endpoints.
 */
import { trace, type Attributes } from '@opentelemetry/api';
import { InMemorySpanExporter, SamplingDecision, SimpleSpanProcessor, TracerProvider, type Sampler } from '@opentelemetry/sdk-trace';
import { Redis } from 'ioredis';
import OpenAI, { AzureOpenAI } from 'openai';
import { request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SIDECAR_URL, sdkEnvironment } from '../operator/webhook/inject.ts';
import { parseAmount } from '../src/money/money.ts';
import { generatedText } from '../src/simulator/index.ts';
import { startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

const MANIFESTS = `
apiVersion: v1
kind: Secret
metadata: { name: azure-keys }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: azure }
spec:
  protocol: azure-openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: azure-keys, key: apiKey }
  models: [gpt-4o, text-embedding-3-small]
  deployments:
    - { name: prod-4o, model: gpt-4o }
    - { name: embedder, model: text-embedding-3-small }
  costs:
    gpt-4o: { input: "2.50", output: "10.00" }
    text-embedding-3-small: { input: "0.02", output: "0" }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: azure-e2e }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gpt-4o: { input: "3.00", output: "12.00" }
        text-embedding-3-small: { input: "0.05", output: "0" }
${['main:100.00', 'poor:0.0001']
  .map((entry) => {
    const [name, amount] = entry.split(':');
    return `---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name} }
spec:
  currency: USD
  pricePlanRef: { name: azure-e2e }
  grants: [{ id: initial, amount: "${amount}" }]`;
  })
  .join('\n')}
`;

const API_VERSION = '2024-10-21';

/** "hotel" and "alpha delta echo" are one token per word, so the simulator counts a 4-token prompt. */
const MESSAGES: OpenAI.Chat.ChatCompletionMessageParam[] = [
  { role: 'system', content: 'hotel' },
  { role: 'user', content: 'alpha delta echo' },
];

/**
 * The charge of a chat call with the simulator's counts: 4 prompt tokens at
 * 3.00 per million and its default 16 output tokens at 12.00 per million,
 * in nano-USD (one token at 1.00 per million is 1000 nano-USD).
 */
const CHAT_CHARGED = 4n * 3_000n + 16n * 12_000n;
/** The same call at the route's provider costs, 2.50 and 10.00 per million. */
const CHAT_PROVIDER_COST = 4n * 2_500n + 16n * 10_000n;

const exporter = new InMemorySpanExporter();
const startAttributes = new Map<string, Attributes>();
const recordingSampler: Sampler = {
  shouldSample(_context, _traceId, spanName, _kind, attributes) {
    startAttributes.set(spanName, { ...attributes });
    return { decision: SamplingDecision.RECORD_AND_SAMPLED };
  },
  toString: () => 'RecordingSampler',
};
const provider = new TracerProvider({ sampler: recordingSampler, spanProcessors: [new SimpleSpanProcessor({ exporter })] });

let stack: Stack;
let redis: Redis;

function walletKey(name: string) {
  return { namespace: 'default', name };
}

/** Builds the AzureOpenAI client as an application in the pod would, pointed at the sidecar's azure route. */
function azureFor(wallet: string, deployment?: string): AzureOpenAI {
  return new AzureOpenAI({
    endpoint: `${stack.url}/azure`,
    apiKey: 'not-the-provider-key',
    apiVersion: API_VERSION,
    ...(deployment === undefined ? {} : { deployment }),
    maxRetries: 0,
    defaultHeaders: { 'x-tollgate-wallet': wallet },
  });
}

/** Returns the newest entry of a wallet's ledger stream as a field map. */
async function lastLedgerEntry(wallet: string): Promise<Record<string, string>> {
  const [entry] = await redis.xrevrange(`{w:default/${wallet}}:log`, '+', '-', 'COUNT', 1);
  if (entry === undefined) throw new Error(`wallet ${wallet} has no ledger entries`);
  const fields: Record<string, string> = {};
  for (let index = 0; index < entry[1].length; index += 2) fields[entry[1][index]!] = entry[1][index + 1]!;
  return fields;
}

/** Returns the value of one sample of the sidecar's Prometheus metrics, or undefined when it is absent. */
async function metricValue(sample: string): Promise<number | undefined> {
  const response = await request(`${stack.url}/metrics`);
  const text = await response.body.text();
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${sample} `));
  return line === undefined ? undefined : Number(line.slice(sample.length + 1));
}

async function finishedSpans() {
  await provider.forceFlush();
  return exporter.getFinishedSpans();
}

beforeAll(async () => {
  trace.setGlobalTracerProvider(provider);
  stack = await startStack(MANIFESTS);
  redis = new Redis(stack.redis.url);
});

afterAll(async () => {
  redis?.disconnect();
  await stack?.close();
  trace.disable();
});

beforeEach(() => {
  stack.simulator.resetStats();
  exporter.reset();
});

describe('AzureOpenAI client through the sidecar', () => {
  it('bills a plain chat at the base model', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const { data, response } = await azureFor('main', 'prod-4o').chat.completions.create({ model: 'gpt-4o', messages: MESSAGES }).withResponse();

    expect(data.choices[0]?.message.content).toBe(generatedText(16));
    expect(data.usage?.prompt_tokens).toBe(4);
    expect(data.usage?.completion_tokens).toBe(16);
    // Azure's content filter fields reach the client.
    const raw = data as unknown as { prompt_filter_results: unknown[]; choices: Array<{ content_filter_results: Record<string, unknown> }> };
    expect(raw.prompt_filter_results).toHaveLength(1);
    expect(raw.choices[0]?.content_filter_results['hate']).toEqual({ filtered: false, severity: 'safe' });

    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(CHAT_CHARGED);
    expect(after.providerCost - before.providerCost).toBe(CHAT_PROVIDER_COST);
    expect(after.reserved).toBe(0n);
    expect(parseAmount(response.headers.get('x-tollgate-charged')!)).toBe(CHAT_CHARGED);
  });

  it('forwards the Azure request as the client sent it', async () => {
    await azureFor('main', 'prod-4o').chat.completions.create({ model: 'gpt-4o', messages: MESSAGES });

    const upstream = stack.simulator.stats();
    expect(upstream.lastUrl).toBe(`/openai/deployments/prod-4o/chat/completions?api-version=${API_VERSION}`);
    expect(upstream.lastCredential).toBe(SIMULATOR_KEY);
    expect(upstream.lastHeaders?.['api-key']).toBe('<redacted>');
    expect(upstream.lastHeaders?.['authorization']).toBeUndefined();
    expect(upstream.lastHeaders?.['x-tollgate-wallet']).toBeUndefined();
    // gpt-4o takes max_tokens on every Azure API version; the sidecar set the limit the wallet affords.
    expect(upstream.lastRequest?.['max_tokens']).toBe(4096);
    expect(upstream.lastRequest?.['max_completion_tokens']).toBeUndefined();
  });

  it('bills a streamed chat exactly from its usage', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const stream = await azureFor('main', 'prod-4o').chat.completions.create({ model: 'gpt-4o', messages: MESSAGES, stream: true });
    const chunks: OpenAI.Chat.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);

    // Azure's first chunk has no choices and carries the prompt's filter results.
    expect(chunks[0]?.choices).toEqual([]);
    expect((chunks[0] as unknown as { prompt_filter_results: unknown[] }).prompt_filter_results).toHaveLength(1);
    expect(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join('')).toBe(generatedText(16));
    // The client did not ask for usage, so the usage chunk the sidecar requested is hidden.
    expect(chunks.filter((chunk) => chunk.usage !== undefined)).toEqual([]);
    expect(stack.simulator.stats().lastRequest?.['stream_options']).toEqual({ include_usage: true });

    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(CHAT_CHARGED);
    expect(after.providerCost - before.providerCost).toBe(CHAT_PROVIDER_COST);
    expect(after.reserved).toBe(0n);
  });

  it('passes stream usage the client asked for', async () => {
    const stream = await azureFor('main', 'prod-4o').chat.completions.create({
      model: 'gpt-4o',
      messages: MESSAGES,
      stream: true,
      stream_options: { include_usage: true },
    });
    const usages: unknown[] = [];
    for await (const chunk of stream) if (chunk.usage) usages.push(chunk.usage);

    expect(usages).toHaveLength(1);
    expect(usages[0]).toMatchObject({ prompt_tokens: 4, completion_tokens: 16, total_tokens: 20 });
  });

  it('bills embeddings at the deployment base model', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    // Without a client deployment, the AzureOpenAI client puts the body's model in the path.
    const response = await azureFor('main').embeddings.create({ model: 'embedder', input: ['alpha delta', 'echo'] });

    expect(response.data).toHaveLength(2);
    expect(response.usage).toEqual({ prompt_tokens: 3, total_tokens: 3 });
    expect(stack.simulator.stats().lastUrl).toBe(`/openai/deployments/embedder/embeddings?api-version=${API_VERSION}`);
    const after = await stack.ledger.state(walletKey('main'));
    // 3 tokens at 0.05 per million, and at the provider cost of 0.02 per million.
    expect(after.spent - before.spent).toBe(150n);
    expect(after.providerCost - before.providerCost).toBe(60n);
  });

  it('answers 402 through the client when the wallet cannot pay', async () => {
    const before = await stack.ledger.state(walletKey('poor'));
    const error = await azureFor('poor', 'prod-4o')
      .chat.completions.create({ model: 'gpt-4o', messages: MESSAGES, max_tokens: 100 })
      .catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(AzureOpenAI.APIError);
    const apiError = error as InstanceType<typeof AzureOpenAI.APIError>;
    expect(apiError.status).toBe(402);
    expect(apiError.code).toBe('insufficient_funds');
    // Even the shortest body, 59 bytes at 0.000003 USD, is dearer than the 0.0001 USD left, so only a top-up helps.
    expect(apiError.message).toMatch(/^402 wallet "default\/poor" has insufficient funds for this request: it may cost up to [0-9.]+ USD, but only 0\.0001 USD is available; top up the wallet$/);
    expect(stack.simulator.stats().requests).toBe(0);
    expect(await stack.ledger.state(walletKey('poor'))).toEqual(before);
  });

  it('rejects an unknown deployment before reserving', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const error = await azureFor('main', 'staging-4o')
      .chat.completions.create({ model: 'gpt-4o', messages: MESSAGES })
      .catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(AzureOpenAI.NotFoundError);
    const apiError = error as InstanceType<typeof AzureOpenAI.NotFoundError>;
    expect(apiError.code).toBe('DeploymentNotFound');
    expect(apiError.message).toBe(
      '404 deployment "staging-4o" is not configured on provider route "azure" (its deployments are prod-4o, embedder); ' +
        "call one of those, or add the deployment with its base model to the ProviderRoute's spec.deployments",
    );
    expect(stack.simulator.stats().requests).toBe(0);
    expect(await stack.ledger.state(walletKey('main'))).toEqual(before);
  });

  it('rejects a deployment path without api-version', async () => {
    const response = await request(`${stack.url}/azure/openai/deployments/prod-4o/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'api-key': 'not-the-provider-key', 'x-tollgate-wallet': 'main' },
      body: JSON.stringify({ messages: MESSAGES }),
    });
    const body = (await response.body.json()) as { error: { code: string; message: string } };

    expect(response.statusCode).toBe(400);
    expect(body.error.code).toBe('missing_api_version');
    expect(body.error.message).toMatch(/^missing query parameter "api-version"/);
    expect(stack.simulator.stats().requests).toBe(0);
  });

  it('reaches the sidecar from the injected environment', async () => {
    // The variables the webhook sets in an app container, with the sidecar's address of this test.
    const route = stack.config.current().routes.get('/azure')!.resource;
    const variables = sdkEnvironment([route]).map(({ name, value }) => ({ name, value: value!.replace(SIDECAR_URL, stack.url) }));
    expect(variables.map((variable) => variable.name)).toEqual(['AZURE_OPENAI_ENDPOINT', 'AZURE_OPENAI_API_KEY', 'OPENAI_API_VERSION']);

    const saved = new Map(variables.map(({ name }) => [name, process.env[name]]));
    let client: AzureOpenAI;
    try {
      for (const { name, value } of variables) process.env[name] = value;
      client = new AzureOpenAI({ deployment: 'prod-4o', maxRetries: 0, defaultHeaders: { 'x-tollgate-wallet': 'main' } });
    } finally {
      for (const [name, value] of saved) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
    const completion = await client.chat.completions.create({ model: 'gpt-4o', messages: MESSAGES });

    expect(completion.choices[0]?.message.content).toBe(generatedText(16));
    expect(stack.simulator.stats().lastUrl).toBe('/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21');
  });

  it('serves the v1 path with the deployment as model', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const client = new OpenAI({
      baseURL: `${stack.url}/azure/openai/v1`,
      apiKey: 'not-the-provider-key',
      maxRetries: 0,
      defaultHeaders: { 'x-tollgate-wallet': 'main' },
    });
    const completion = await client.chat.completions.create({ model: 'prod-4o', messages: MESSAGES });

    expect(completion.choices[0]?.message.content).toBe(generatedText(16));
    expect(stack.simulator.stats().lastUrl).toBe('/openai/v1/chat/completions');
    expect(stack.simulator.stats().lastHeaders?.['authorization']).toBeUndefined();
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(CHAT_CHARGED);
  });
});

describe('records of an Azure call', () => {
  it('name the base model in the ledger, metrics and span', async () => {
    const metric = 'tollgate_tokens_total{route="azure",model="gpt-4o",kind="output"}';
    const outputBefore = (await metricValue(metric)) ?? 0;
    await azureFor('main', 'prod-4o').chat.completions.create({ model: 'gpt-4o', messages: MESSAGES });

    const entry = await lastLedgerEntry('main');
    expect(entry['type']).toBe('debit');
    expect(entry['model']).toBe('gpt-4o');
    expect(entry['route']).toBe('azure');
    expect(entry['charged']).toBe(CHAT_CHARGED.toString());

    expect(await metricValue(metric)).toBe(outputBefore + 16);

    const [span] = await finishedSpans();
    expect(span?.name).toBe('chat gpt-4o');
    expect(startAttributes.get('chat gpt-4o')).toMatchObject({
      'gen_ai.operation.name': 'chat',
      'gen_ai.provider.name': 'azure-openai',
      'gen_ai.request.model': 'gpt-4o',
      'tollgate.route': 'azure',
    });
    expect(span?.attributes['gen_ai.usage.input_tokens']).toBe(4);
    expect(span?.attributes['gen_ai.usage.output_tokens']).toBe(16);
  });
});
