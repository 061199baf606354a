/**
 * Gemini through the sidecar end to end, with the official `@google/genai`
 * client and with raw HTTP in the same form for the cases that need exact
 * request bodies: model and method in the path, the key in `x-goog-api-key`,
 * and `?alt=sse` on streams. The sidecar debits a real Redis ledger and
 * forwards them to the provider simulator.
 */
import { ApiError, GoogleGenAI } from '@google/genai';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAmount } from '../src/money/money.ts';
import { estimatePromptFromBody } from '../src/providers/index.ts';
import { generatedText } from '../src/simulator/index.ts';
import { startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

const MANIFESTS = `
apiVersion: v1
kind: Secret
metadata: { name: gemini-keys }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: gemini }
spec:
  protocol: gemini
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: gemini-keys, key: apiKey }
  models: [gemini-2.5-pro, gemini-2.5-flash, gemini-auto-limit, gemini-embedding-001]
  costs:
    gemini-2.5-pro: { input: "1.25", output: "10" }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: gemini-e2e }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gemini-2.5-pro: { input: "1.25", output: "10" }
        gemini-2.5-flash: { input: "1.25", output: "10" }
        gemini-auto-limit: { input: "0", output: "50" }
        gemini-embedding-001: { input: "0.15", output: "0" }
${['main:100.00', 'poor:0.01', 'thinker:0.02', 'auto:0.01']
  .map((entry) => {
    const [name, amount] = entry.split(':');
    return `---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name} }
spec:
  currency: USD
  pricePlanRef: { name: gemini-e2e }
  grants: [{ id: initial, amount: "${amount}" }]`;
  })
  .join('\n')}
`;

/** Nano-units per token at 1.25 and 10 per million. */
const NANO_PER_INPUT_TOKEN = 1_250n;
const NANO_PER_OUTPUT_TOKEN = 10_000n;

let stack: Stack;

function walletKey(name: string) {
  return { namespace: 'default', name };
}

/** Posts to the sidecar's Gemini route with the headers `@google/genai` sends, and a wallet header. */
async function callGemini(wallet: string, modelMethod: string, body: unknown, headers: Record<string, string> = {}) {
  const response = await request(`${stack.url}/gemini/v1beta/models/${modelMethod}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'x-goog-api-key': 'not-the-provider-key',
      'x-goog-api-client': 'google-genai-sdk/1.30.0 gl-node/v24.0.0',
      'user-agent': 'google-genai-sdk/1.30.0 gl-node/v24.0.0',
      'x-tollgate-wallet': wallet,
      ...headers,
    },
    body: JSON.stringify(body),
  });
  const text = await response.body.text();
  return { status: response.statusCode, headers: response.headers, text };
}

/** Splits an SSE body into the JSON of its `data:` events. */
function sseChunks(text: string): Record<string, unknown>[] {
  return text
    .split('\r\n\r\n')
    .filter((event) => event.length > 0)
    .map((event) => JSON.parse(event.slice('data: '.length)) as Record<string, unknown>);
}

function userContents(text: string) {
  return [{ role: 'user', parts: [{ text }] }];
}

function upstreamCount(): number {
  return stack.simulator.stats().requests;
}

beforeAll(async () => {
  stack = await startStack(MANIFESTS);
});

afterAll(async () => {
  await stack?.close();
});

function genaiFor(wallet: string): GoogleGenAI {
  return new GoogleGenAI({
    apiKey: 'not-the-provider-key',
    httpOptions: { baseUrl: `${stack.url}/gemini`, headers: { 'x-tollgate-wallet': wallet }, retryOptions: { attempts: 1 } },
  });
}

describe('official @google/genai client through the sidecar', () => {
  it('bills a plain call from the usage it sees', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const response = await genaiFor('main').models.generateContent({ model: 'gemini-2.5-pro', contents: 'Hello from the SDK' });
    expect(response.text?.length).toBeGreaterThan(0);
    const usage = response.usageMetadata!;
    const expected =
      BigInt(usage.promptTokenCount!) * NANO_PER_INPUT_TOKEN +
      BigInt((usage.candidatesTokenCount ?? 0) + (usage.thoughtsTokenCount ?? 0)) * NANO_PER_OUTPUT_TOKEN;
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(expected);
  });

  it('bills a streamed call on its last usage', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const stream = await genaiFor('main').models.generateContentStream({ model: 'gemini-2.5-pro', contents: 'Stream from the SDK' });
    let last: { promptTokenCount?: number; candidatesTokenCount?: number; thoughtsTokenCount?: number } | undefined;
    for await (const chunk of stream) last = chunk.usageMetadata ?? last;
    const expected =
      BigInt(last!.promptTokenCount!) * NANO_PER_INPUT_TOKEN +
      BigInt((last!.candidatesTokenCount ?? 0) + (last!.thoughtsTokenCount ?? 0)) * NANO_PER_OUTPUT_TOKEN;
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(expected);
  });

  it('raises a readable error when the wallet cannot pay', async () => {
    const failure = await genaiFor('poor')
      .models.generateContent({ model: 'gemini-2.5-pro', contents: 'too dear', config: { maxOutputTokens: 100_000 } })
      .catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ApiError);
    expect((failure as ApiError).status).toBe(402);
    // The SDK's message is the JSON error body, so the quotes around the wallet are escaped.
    expect((failure as Error).message).toContain('has insufficient funds for this request: it may cost up to');
  });
});

describe('Gemini generateContent through the sidecar', () => {
  it('bills thinking tokens at the output rate (C6)', async () => {
    const usage = { promptTokenCount: 55021, candidatesTokenCount: 923, thoughtsTokenCount: 785, totalTokenCount: 56729 };
    const before = await stack.ledger.state(walletKey('main'));
    const result = await callGemini(
      'main',
      'gemini-2.5-pro:generateContent',
      { contents: userContents('Summarize the ledger'), generationConfig: { maxOutputTokens: 2000 } },
      { 'x-sim-usage': JSON.stringify(usage) },
    );

    expect(result.status).toBe(200);
    expect(JSON.parse(result.text).usageMetadata).toEqual(usage);
    expect(result.headers['x-tollgate-charged']).toBe('0.08585625');
    expect(result.headers['x-tollgate-currency']).toBe('USD');
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(parseAmount('0.08585625'));
    expect(after.providerCost - before.providerCost).toBe(parseAmount('0.08585625'));
    expect(after.reserved).toBe(0n);
  });

  it('bills the usage the client sees, thoughts included', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const body = {
      contents: userContents('alpha delta echo'),
      generationConfig: { maxOutputTokens: 100, thinkingConfig: { thinkingBudget: 64 } },
    };
    const result = await callGemini('main', 'gemini-2.5-flash:generateContent', body);
    expect(result.status).toBe(200);

    const usage = JSON.parse(result.text).usageMetadata as Record<string, number>;
    expect(usage['promptTokenCount']).toBe(3);
    expect(usage['thoughtsTokenCount']).toBeGreaterThan(0);
    const expected =
      BigInt(usage['promptTokenCount']!) * NANO_PER_INPUT_TOKEN +
      BigInt(usage['candidatesTokenCount']! + usage['thoughtsTokenCount']!) * NANO_PER_OUTPUT_TOKEN;
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(expected);
    expect(parseAmount(String(result.headers['x-tollgate-charged']))).toBe(expected);
  });

  it('sends the provider key of the sidecar, not the client key', async () => {
    const rejected = stack.simulator.stats().unauthorized;
    const result = await callGemini('main', 'gemini-2.5-flash:generateContent', { contents: userContents('hi') });
    expect(result.status).toBe(200);
    expect(stack.simulator.stats().unauthorized).toBe(rejected);
    expect(stack.simulator.stats().lastCredential).toBe(SIMULATOR_KEY);
    expect(stack.simulator.stats().lastHeaders?.['x-tollgate-wallet']).toBeUndefined();
  });
});

describe('Gemini streamGenerateContent through the sidecar', () => {
  it('bills the last cumulative usage of the stream (C3)', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    // generatedText(1200) is 1200 single-token words, so the prompt is exactly 1200 tokens.
    const body = { contents: userContents(generatedText(1200)), generationConfig: { maxOutputTokens: 100 } };
    const result = await callGemini('main', 'gemini-2.5-flash:streamGenerateContent?alt=sse', body, {
      'x-sim-output-tokens': '20',
      'x-sim-chunks': '3',
    });
    expect(result.status).toBe(200);
    expect(result.headers['content-type']).toBe('text/event-stream; charset=utf-8');

    const usages = sseChunks(result.text).map((chunk) => chunk['usageMetadata'] as Record<string, number>);
    expect(usages.map((usage) => usage['promptTokenCount'])).toEqual([1200, 1200, 1200]);
    expect(usages.map((usage) => usage['candidatesTokenCount'])).toEqual([6, 13, 20]);
    expect(usages[2]!['totalTokenCount']).toBe(1220);

    // Summing the chunks would bill 3600 input and 39 output tokens.
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(1200n * NANO_PER_INPUT_TOKEN + 20n * NANO_PER_OUTPUT_TOKEN);
    expect(after.reserved).toBe(0n);
  });

  it('rejects a stream without alt=sse', async () => {
    const upstreamBefore = upstreamCount();
    const result = await callGemini('main', 'gemini-2.5-flash:streamGenerateContent', { contents: userContents('hi') });
    expect(result.status).toBe(400);
    const error = JSON.parse(result.text).error;
    expect(error.code).toBe(400);
    expect(error.status).toBe('INVALID_ARGUMENT');
    expect(error.message).toContain('add ?alt=sse to the URL');
    expect(upstreamCount()).toBe(upstreamBefore);
  });
});

describe('Gemini enforcement', () => {
  it('rejects an unaffordable call with 402', async () => {
    const upstreamBefore = upstreamCount();
    // 2000 output tokens at 10 per million is 0.02, more than the 0.01 granted.
    const result = await callGemini('poor', 'gemini-2.5-pro:generateContent', { contents: userContents('Too dear'), generationConfig: { maxOutputTokens: 2000 } });

    expect(result.status).toBe(402);
    expect(result.headers['content-type']).toMatch(/^application\/json/);
    const error = JSON.parse(result.text).error;
    expect(error.code).toBe(402);
    expect(error.status).toBe('RESOURCE_EXHAUSTED');
    expect(error.message).toContain('wallet "default/poor" has insufficient funds for this request');
    expect(error.details).toEqual([{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'INSUFFICIENT_FUNDS', domain: 'tollgate.dev' }]);
    expect(upstreamCount()).toBe(upstreamBefore);

    const state = await stack.ledger.state(walletKey('poor'));
    expect(state.balance).toBe(parseAmount('0.01'));
    expect(state.reserved).toBe(0n);
  });

  it('holds the thinking budget on top of maxOutputTokens', async () => {
    const contents = userContents('think');
    // 1000 output tokens at 10 per million (0.01) fit the 0.02 granted, but 1000 + 1500 thinking tokens (0.025) do not.
    const dear = await callGemini('thinker', 'gemini-2.5-pro:generateContent', {
      contents,
      generationConfig: { maxOutputTokens: 1000, thinkingConfig: { thinkingBudget: 1500 } },
    });
    expect(dear.status).toBe(402);
    expect(JSON.parse(dear.text).error.message).toContain('may cost up to 0.025');

    const cheap = await callGemini('thinker', 'gemini-2.5-pro:generateContent', { contents, generationConfig: { maxOutputTokens: 1000 } });
    expect(cheap.status).toBe(200);
  });

  it('sets an affordable limit and thinking budget', async () => {
    const body = { contents: userContents('auto'), generationConfig: { thinkingConfig: { thinkingBudget: 5000 } } };
    const result = await callGemini('auto', 'gemini-auto-limit:generateContent', body);
    expect(result.status).toBe(200);
    // No input price, so the 0.01 balance buys 200 output tokens at 50 per million, split between thoughts and answer.
    expect(stack.simulator.stats().lastRequest?.['generationConfig']).toEqual({ thinkingConfig: { thinkingBudget: 100 }, maxOutputTokens: 100 });
    const state = await stack.ledger.state(walletKey('auto'));
    expect(state.balance).toBeGreaterThanOrEqual(0n);
    expect(state.reserved).toBe(0n);
  });

  it('rejects countTokens, which is not metered', async () => {
    const upstreamBefore = upstreamCount();
    const result = await callGemini('main', 'gemini-2.5-flash:countTokens', { contents: userContents('count me') });
    expect(result.status).toBe(404);
    expect(JSON.parse(result.text).error.status).toBe('NOT_FOUND');
    expect(upstreamCount()).toBe(upstreamBefore);
  });
});

describe('Gemini embeddings through the sidecar', () => {
  it('bills embedContent on an estimate', async () => {
    const body = { content: { parts: [{ text: 'alpha delta echo hotel' }] } };
    const result = await callGemini('main', 'gemini-embedding-001:embedContent', body);
    expect(result.status).toBe(200);
    expect(JSON.parse(result.text).embedding.values).toHaveLength(8);
    // 0.15 per million is 150 nano-USD per token.
    // The text "alpha delta echo hotel" estimates at 6 tokens, and the rest of the body counts nothing.
    const expected = BigInt(estimatePromptFromBody(body)) * 150n;
    expect(expected).toBe(900n);
    expect(parseAmount(String(result.headers['x-tollgate-charged']))).toBe(expected);
  });

  it('bills each batch item like embedContent', async () => {
    const item = (text: string) => ({ model: 'models/gemini-embedding-001', content: { parts: [{ text }] }, taskType: 'RETRIEVAL_DOCUMENT' });
    const result = await callGemini('main', 'gemini-embedding-001:batchEmbedContents', { requests: [item('alpha delta echo hotel'), item('hello toll gate')] });
    expect(result.status).toBe(200);
    expect(JSON.parse(result.text).embeddings).toHaveLength(2);
    // 6 tokens for the first text and 4 for the second, at 150 nano-USD per token; model names and task types count nothing.
    expect(parseAmount(String(result.headers['x-tollgate-charged']))).toBe(1500n);
  });

  it('bills reported embedding usage exactly', async () => {
    const requests = [{ model: 'models/gemini-embedding-001', content: { parts: [{ text: 'alpha' }] } }];
    const result = await callGemini('main', 'gemini-embedding-001:batchEmbedContents', { requests }, { 'x-sim-usage': '{"promptTokenCount":6}' });
    expect(result.status).toBe(200);
    expect(result.headers['x-tollgate-charged']).toBe('0.0000009');
  });
});
