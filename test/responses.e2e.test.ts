/**
 * The OpenAI Responses API through the sidecar end to end. The official
 * `openai` client, unmodified, calls `client.responses` on a real sidecar on
 * the Redis ledger, which forwards to the provider simulator.
 */
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseAmount } from '../src/money/money.ts';
import { estimatePromptFromBody } from '../src/providers/index.ts';
import { generatedText } from '../src/simulator/index.ts';
import { startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

const MANIFESTS = `
apiVersion: v1
kind: Secret
metadata: { name: provider-keys }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai }
spec:
  protocol: openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: provider-keys, key: apiKey }
  models: [gpt-4.1-mini, limit-model]
  costs:
    gpt-4.1-mini: { input: "0.40", cachedInput: "0.10", output: "1.60" }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: responses-e2e }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      markupPercent: "100"
      models:
        gpt-4.1-mini: { input: "0.80", cachedInput: "0.20", output: "3.20", reasoning: "4.80" }
        limit-model: { input: "0", output: "50" }
${['main:100.00', 'poor:0.0001', 'limited:0.01']
  .map((entry) => {
    const [name, amount] = entry.split(':');
    return `---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name} }
spec:
  currency: USD
  pricePlanRef: { name: responses-e2e }
  grants: [{ id: initial, amount: "${amount}" }]`;
  })
  .join('\n')}
`;

/** Nano-USD per token at each rate of the plan and the route (1.00 USD per million tokens is 1000 nano-USD per token). */
const PLAN = { input: 800n, cachedInput: 200n, output: 3_200n, reasoning: 4_800n };
const COST = { input: 400n, cachedInput: 100n, output: 1_600n };

/** "hotel" and "alpha delta echo" are one token per word, so the simulator counts 4 input tokens. */
const REQUEST = { model: 'gpt-4.1-mini', instructions: 'hotel', input: 'alpha delta echo' };
/** The charge and provider cost of REQUEST with the simulator's default 16 output tokens. */
const CHARGED = 4n * PLAN.input + 16n * PLAN.output;
const PROVIDER_COST = 4n * COST.input + 16n * COST.output;

let stack: Stack;
let redis: Redis;

function walletKey(name: string) {
  return { namespace: 'default', name };
}

function clientFor(wallet: string): OpenAI {
  return new OpenAI({ apiKey: 'not-the-provider-key', baseURL: `${stack.url}/openai/v1`, maxRetries: 0, defaultHeaders: { 'x-tollgate-wallet': wallet } });
}

/** Returns the newest entry of a wallet's ledger stream as a field map. */
async function lastLedgerEntry(wallet: string): Promise<Record<string, string>> {
  const [entry] = await redis.xrevrange(`{w:default/${wallet}}:log`, '+', '-', 'COUNT', 1);
  if (entry === undefined) throw new Error(`wallet ${wallet} has no ledger entries`);
  const fields: Record<string, string> = {};
  for (let index = 0; index < entry[1].length; index += 2) fields[entry[1][index]!] = entry[1][index + 1]!;
  return fields;
}

/** Waits until a wallet has no open hold, because a cut stream is settled after the client saw the cut. */
async function settledState(wallet: string) {
  let state = await stack.ledger.state(walletKey(wallet));
  for (let attempt = 0; attempt < 50 && state.reserved !== 0n; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    state = await stack.ledger.state(walletKey(wallet));
  }
  return state;
}

beforeAll(async () => {
  stack = await startStack(MANIFESTS);
  redis = new Redis(stack.redis.url);
});

afterAll(async () => {
  redis?.disconnect();
  await stack?.close();
});

beforeEach(() => {
  stack.simulator.resetStats();
});

describe('responses through the sidecar', () => {
  it('bills a JSON response exactly', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const { data, response } = await clientFor('main').responses.create(REQUEST).withResponse();

    expect(data.status).toBe('completed');
    expect(data.output_text).toBe(generatedText(16));
    expect(data.usage?.input_tokens).toBe(4);
    expect(data.usage?.output_tokens).toBe(16);

    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(CHARGED);
    expect(after.providerCost - before.providerCost).toBe(PROVIDER_COST);
    expect(after.reserved).toBe(0n);
    expect(parseAmount(response.headers.get('x-tollgate-charged')!)).toBe(CHARGED);
    const entry = await lastLedgerEntry('main');
    expect(JSON.parse(entry['tokens']!)).toEqual({ input: 4, cache_read: 0, cache_write_5m: 0, cache_write_1h: 0, output: 16, reasoning: 0 });
    expect(entry['estimated']).toBe('0');
  });

  it('forwards the request with the limit the wallet affords', async () => {
    await clientFor('main').responses.create(REQUEST);

    const upstream = stack.simulator.stats();
    expect(upstream.lastUrl).toBe('/v1/responses');
    expect(upstream.lastCredential).toBe(SIMULATOR_KEY);
    expect(upstream.lastHeaders?.['x-tollgate-wallet']).toBeUndefined();
    // The wallet affords the sidecar's default limit of 4096 tokens, set in the Responses API's own field.
    expect(upstream.lastRequest).toEqual({ ...REQUEST, max_output_tokens: 4096 });
  });

  it('bills cached and reasoning tokens at their rates', async () => {
    const usage = {
      input_tokens: 1000,
      input_tokens_details: { cached_tokens: 600 },
      output_tokens: 500,
      output_tokens_details: { reasoning_tokens: 200 },
      total_tokens: 1500,
    };
    const before = await stack.ledger.state(walletKey('main'));
    await clientFor('main').responses.create(REQUEST, { headers: { 'x-sim-usage': JSON.stringify(usage) } });

    const after = await stack.ledger.state(walletKey('main'));
    // input_tokens includes the cached ones, and output_tokens the reasoning ones.
    expect(after.spent - before.spent).toBe(400n * PLAN.input + 600n * PLAN.cachedInput + 300n * PLAN.output + 200n * PLAN.reasoning);
    // The route sets no reasoning cost, so reasoning costs the output rate there.
    expect(after.providerCost - before.providerCost).toBe(400n * COST.input + 600n * COST.cachedInput + 500n * COST.output);
    const entry = await lastLedgerEntry('main');
    expect(JSON.parse(entry['tokens']!)).toEqual({ input: 400, cache_read: 600, cache_write_5m: 0, cache_write_1h: 0, output: 300, reasoning: 200 });
  });

  it('bills a streamed response exactly', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const stream = clientFor('main').responses.stream(REQUEST);
    let text = '';
    for await (const event of stream) if (event.type === 'response.output_text.delta') text += event.delta;
    const response = await stream.finalResponse();

    expect(text).toBe(generatedText(16));
    expect(response.status).toBe('completed');
    expect(response.usage?.output_tokens).toBe(16);
    expect(stack.simulator.stats().lastRequest?.['stream']).toBe(true);
    expect(stack.simulator.stats().lastRequest).not.toHaveProperty('stream_options');

    const after = await settledState('main');
    expect(after.spent - before.spent).toBe(CHARGED);
    expect(after.providerCost - before.providerCost).toBe(PROVIDER_COST);
    expect((await lastLedgerEntry('main'))['estimated']).toBe('0');
  });

  it('bills a stream the output limit cut', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const stream = await clientFor('main').responses.create(
      { ...REQUEST, stream: true, max_output_tokens: 20 },
      { headers: { 'x-sim-output-tokens': '50' } },
    );
    const types: string[] = [];
    for await (const event of stream) types.push(event.type);

    expect(types.at(-1)).toBe('response.incomplete');
    const after = await settledState('main');
    expect(after.spent - before.spent).toBe(4n * PLAN.input + 20n * PLAN.output);
  });

  it('bills the output seen before a cut', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const body = { ...REQUEST, stream: true as const };
    const stream = await clientFor('main').responses.create(body, { headers: { 'x-sim-cut-after': '5' } });
    let text = '';
    const failure = await (async () => {
      for await (const event of stream) if (event.type === 'response.output_text.delta') text += event.delta;
    })().catch((caught: unknown) => caught);

    expect(failure).toBeInstanceOf(Error);
    expect(text).toBe(generatedText(5));
    const after = await settledState('main');
    expect(after.reserved).toBe(0n);
    // No usage arrived, so the input is the sidecar's estimate of the body and the output the 5 tokens relayed.
    const inputEstimate = BigInt(estimatePromptFromBody(body));
    expect(after.spent - before.spent).toBe(inputEstimate * PLAN.input + 5n * PLAN.output);
    const entry = await lastLedgerEntry('main');
    expect(entry['estimated']).toBe('1');
    expect(JSON.parse(entry['tokens']!).output).toBe(5);
  });
});

describe('responses a wallet cannot pay', () => {
  it('raises a readable 402 in the SDK', async () => {
    const before = await stack.ledger.state(walletKey('poor'));
    const error = await clientFor('poor')
      .responses.create({ ...REQUEST, max_output_tokens: 1000 })
      .catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(OpenAI.APIError);
    const apiError = error as InstanceType<typeof OpenAI.APIError>;
    expect(apiError.status).toBe(402);
    expect(apiError.code).toBe('insufficient_funds');
    expect(apiError.type).toBe('insufficient_quota');
    expect(apiError.message).toMatch(/^402 wallet "default\/poor" has insufficient funds for this request: it may cost up to [0-9.]+ USD, but only 0\.0001 USD is available; /);
    expect(stack.simulator.stats().requests).toBe(0);
    expect(await stack.ledger.state(walletKey('poor'))).toEqual(before);
  });

  it('lowers the default output limit to what the wallet affords', async () => {
    const response = await clientFor('limited').responses.create({ model: 'limit-model', input: 'alpha' });

    expect(response.status).toBe('completed');
    // limit-model has no input price, so the 0.01 USD balance buys 200 output tokens at 50 USD per million.
    expect(stack.simulator.stats().lastRequest?.['max_output_tokens']).toBe(200);
    const state = await stack.ledger.state(walletKey('limited'));
    expect(state.spent).toBe(16n * 50_000n);
    expect(state.reserved).toBe(0n);
  });
});

describe('responses whose input the body does not bound', () => {
  const cases: Array<[string, Record<string, unknown>]> = [
    ['previous_response_id', { previous_response_id: 'resp_earlier' }],
    ['conversation', { conversation: 'conv_earlier' }],
    ['prompt', { prompt: { id: 'pmpt_1' } }],
    ['background', { background: true }],
  ];

  for (const [field, extra] of cases) {
    it(`rejects ${field} before reserving`, async () => {
      const before = await stack.ledger.state(walletKey('main'));
      const error = await clientFor('main')
        .responses.create({ ...REQUEST, ...extra } as OpenAI.Responses.ResponseCreateParamsNonStreaming)
        .catch((caught: unknown) => caught);

      expect(error).toBeInstanceOf(OpenAI.BadRequestError);
      const apiError = error as InstanceType<typeof OpenAI.BadRequestError>;
      expect(apiError.code).toBe('unsupported_parameter');
      expect(apiError.message.startsWith(`400 unsupported field "${field}": `), apiError.message).toBe(true);
      expect(stack.simulator.stats().requests).toBe(0);
      expect(await stack.ledger.state(walletKey('main'))).toEqual(before);
    });
  }
});
