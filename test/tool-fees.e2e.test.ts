/**
 * Server tool fees through the sidecar end to end: the official
 * `@anthropic-ai/sdk` and `openai` clients, unmodified, call a real sidecar on
 * the Redis ledger with a web search tool, and the provider simulator runs the
 * searches. The plan charges each search at the route's fee plus a 20 % markup.
 */
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { divCeil, formatAmount, parseAmount } from '../src/money/money.ts';
import { estimatePromptTokens } from '../src/providers/index.ts';
import { startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

const WALLETS = ['main:100.00', 'inflight:100.00', 'medium:0.030', 'poor:0.005', 'poor-openai:0.005'];

const MANIFESTS = `
apiVersion: v1
kind: Secret
metadata: { name: provider-keys }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: anthropic }
spec:
  protocol: anthropic
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: provider-keys, key: apiKey }
  models: [claude-sonnet-4-5]
  costs:
    claude-sonnet-4-5: { input: "3", output: "15", units: { web_search: "0.01" } }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai }
spec:
  protocol: openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: provider-keys, key: apiKey }
  models: [gpt-4.1-mini]
  costs:
    gpt-4.1-mini: { input: "1", output: "2", units: { web_search: "0.01" } }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: tool-fees }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      markupPercent: "20"
${WALLETS.map((entry) => {
  const [name, amount] = entry.split(':');
  return `---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name} }
spec:
  currency: USD
  pricePlanRef: { name: tool-fees }
  grants: [{ id: initial, amount: "${amount}" }]`;
}).join('\n')}
`;

/** Provider cost in nano-USD per token (3 USD per million tokens is 3000 nano-USD per token) and per search. */
const ANTHROPIC_COST = { input: 3_000n, output: 15_000n };
const OPENAI_COST = { input: 1_000n, output: 2_000n };
const SEARCH_COST = 10_000_000n;
/** What the wallet is charged for one search: 0.01 USD plus 20 %. */
const SEARCH_CHARGE = 12_000_000n;

/** Returns the charge of a provider cost under the plan's 20 % markup, rounded up once, as the rating does. */
function withMarkup(cost: bigint): bigint {
  return divCeil(cost * 12n, 10n);
}

const WEB_SEARCH_TOOL = { type: 'web_search_20250305', name: 'web_search' } as const;
/** "alpha delta echo" is one token per word, so the simulator counts 3 input tokens. */
const MESSAGE = { model: 'claude-sonnet-4-5', max_tokens: 64, messages: [{ role: 'user' as const, content: 'alpha delta echo' }] };
/** "hotel" and "alpha delta echo" are one token per word, so the simulator counts 4 input tokens. */
const RESPONSE_REQUEST = { model: 'gpt-4.1-mini', instructions: 'hotel', input: 'alpha delta echo', tools: [{ type: 'web_search' as const }] };

let stack: Stack;

function walletKey(name: string) {
  return { namespace: 'default', name };
}

function anthropicFor(wallet: string): Anthropic {
  return new Anthropic({ baseURL: `${stack.url}/anthropic`, apiKey: 'not-the-provider-key', maxRetries: 0, defaultHeaders: { 'x-tollgate-wallet': wallet } });
}

function openaiFor(wallet: string): OpenAI {
  return new OpenAI({ baseURL: `${stack.url}/openai/v1`, apiKey: 'not-the-provider-key', maxRetries: 0, defaultHeaders: { 'x-tollgate-wallet': wallet } });
}

/** Sets how many searches the simulated model runs, up to the request's limit. */
function searches(count: number) {
  return { headers: { 'x-sim-web-searches': String(count) } };
}

/** Returns the worst-case charge of a prompt bounded by the byte length of `body`, at the dearest prompt rate with the markup. */
function promptHold(body: unknown, costPerToken: bigint): bigint {
  return BigInt(estimatePromptTokens(Buffer.byteLength(JSON.stringify(body)))) * withMarkup(costPerToken);
}

beforeAll(async () => {
  stack = await startStack(MANIFESTS);
});

afterAll(async () => {
  await stack?.close();
});

beforeEach(() => {
  stack.simulator.resetStats();
});

describe('Anthropic web search fees', () => {
  it('bills tokens and searches with the markup', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const { data, response } = await anthropicFor('main')
      .messages.create({ ...MESSAGE, tools: [{ ...WEB_SEARCH_TOOL, max_uses: 4 }] }, searches(3))
      .withResponse();

    expect(data.usage.server_tool_use?.web_search_requests).toBe(3);
    expect(data.content.filter((block) => block.type === 'server_tool_use')).toHaveLength(3);
    expect(data.usage.input_tokens).toBe(3);
    expect(data.usage.output_tokens).toBe(16);

    const cost = 3n * ANTHROPIC_COST.input + 16n * ANTHROPIC_COST.output + 3n * SEARCH_COST;
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.providerCost - before.providerCost).toBe(cost);
    expect(after.spent - before.spent).toBe(withMarkup(cost));
    expect(parseAmount(response.headers.get('x-tollgate-charged')!)).toBe(withMarkup(cost));
    expect(after.reserved).toBe(0n);

    // The ledger entry and the metrics name the searches that most of the charge is for.
    const entries: Record<string, string>[] = [];
    for await (const entry of stack.ledger.entries(walletKey('main'))) entries.push(entry.fields);
    expect(JSON.parse(entries.at(-1)!['tokens']!)).toMatchObject({ input: 3, output: 16, web_search: 3 });
    const metrics = await (await fetch(`${stack.url}/metrics`)).text();
    expect(metrics).toContain('tollgate_units_total{route="anthropic",model="claude-sonnet-4-5",unit="web_search"} 3');
  });

  it('bills the searches of a stream', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const stream = anthropicFor('main').messages.stream({ ...MESSAGE, tools: [WEB_SEARCH_TOOL] }, searches(2));
    const message = await stream.finalMessage();

    expect(message.usage.server_tool_use?.web_search_requests).toBe(2);
    const cost = 3n * ANTHROPIC_COST.input + 16n * ANTHROPIC_COST.output + 2n * SEARCH_COST;
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(withMarkup(cost));
  });

  it('holds the fees of the client limit while the call runs', async () => {
    const body = { ...MESSAGE, tools: [{ ...WEB_SEARCH_TOOL, max_uses: 4 }] };
    const call = anthropicFor('inflight').messages.create(body, { headers: { 'x-sim-latency-ms': '1500' } });

    let reserved = 0n;
    for (let attempt = 0; attempt < 100 && reserved === 0n; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      reserved = (await stack.ledger.state(walletKey('inflight'))).reserved;
    }
    // The prompt bound, the 64 output tokens of max_tokens, and the 4 searches of max_uses.
    expect(reserved).toBe(promptHold(body, ANTHROPIC_COST.input) + 64n * withMarkup(ANTHROPIC_COST.output) + 4n * SEARCH_CHARGE);

    await call;
    expect((await stack.ledger.state(walletKey('inflight'))).reserved).toBe(0n);
    expect(stack.simulator.stats().lastRequest).toEqual(body);
  });

  it('sets the default limit where the client set none', async () => {
    await anthropicFor('main').messages.create({ ...MESSAGE, tools: [WEB_SEARCH_TOOL] });

    expect(stack.simulator.stats().lastRequest).toEqual({ ...MESSAGE, tools: [{ ...WEB_SEARCH_TOOL, max_uses: 5 }] });
  });

  it('lowers its limit to the searches the wallet affords', async () => {
    // 0.030 USD pays the prompt, the 64 output tokens and 2 searches at 0.012 USD, but not 3.
    const before = await stack.ledger.state(walletKey('medium'));
    const data = await anthropicFor('medium').messages.create({ ...MESSAGE, tools: [WEB_SEARCH_TOOL] }, searches(5));

    expect(stack.simulator.stats().lastRequest).toEqual({ ...MESSAGE, tools: [{ ...WEB_SEARCH_TOOL, max_uses: 2 }] });
    expect(data.usage.server_tool_use?.web_search_requests).toBe(2);
    const cost = 3n * ANTHROPIC_COST.input + 16n * ANTHROPIC_COST.output + 2n * SEARCH_COST;
    const after = await stack.ledger.state(walletKey('medium'));
    expect(after.spent - before.spent).toBe(withMarkup(cost));
  });

  it('rejects when one search does not fit', async () => {
    const body = { ...MESSAGE, tools: [WEB_SEARCH_TOOL] };
    const failure = await anthropicFor('poor')
      .messages.create(body)
      .catch((error: unknown) => error);

    expect(failure).toBeInstanceOf(Anthropic.APIError);
    expect((failure as InstanceType<typeof Anthropic.APIError>).status).toBe(402);
    const required = promptHold(body, ANTHROPIC_COST.input) + 64n * withMarkup(ANTHROPIC_COST.output) + SEARCH_CHARGE;
    const expected =
      `402 wallet "default/poor" has insufficient funds for this request: it may cost up to ${formatAmount(required)} USD, ` +
      'including 0.012 USD for 1 use of the web_search_20250305 tool at 0.012 USD each, but only 0.005 USD is available; ' +
      'top up the wallet or remove the web_search_20250305 tool';
    const message = (failure as Error).message;
    expect(message.slice(0, expected.length)).toBe(expected);
    expect(stack.simulator.stats().requests).toBe(0);
    expect((await stack.ledger.state(walletKey('poor'))).reserved).toBe(0n);
  });
});

describe('Responses web search fees', () => {
  /** Tokens and 2 searches of RESPONSE_REQUEST with the simulator's default 16 output tokens. */
  const cost = 4n * OPENAI_COST.input + 16n * OPENAI_COST.output + 2n * SEARCH_COST;

  it('meters the searches of a JSON response', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const { data, response } = await openaiFor('main').responses.create(RESPONSE_REQUEST, searches(2)).withResponse();

    expect(data.output.filter((item) => item.type === 'web_search_call')).toHaveLength(2);
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.providerCost - before.providerCost).toBe(cost);
    expect(after.spent - before.spent).toBe(withMarkup(cost));
    expect(parseAmount(response.headers.get('x-tollgate-charged')!)).toBe(withMarkup(cost));
    // The wallet affords the default output limit and the default limit of 5 tool calls.
    expect(stack.simulator.stats().lastRequest).toEqual({ ...RESPONSE_REQUEST, max_output_tokens: 4096, max_tool_calls: 5 });
  });

  it('meters the searches of a stream', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const stream = await openaiFor('main').responses.create({ ...RESPONSE_REQUEST, stream: true }, searches(2));
    const types: string[] = [];
    for await (const event of stream) types.push(event.type);

    expect(types.filter((type) => type === 'response.web_search_call.completed')).toHaveLength(2);
    expect(types.at(-1)).toBe('response.completed');
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(withMarkup(cost));
  });

  it('keeps the client max_tool_calls', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const data = await openaiFor('main').responses.create({ ...RESPONSE_REQUEST, max_tool_calls: 1 }, searches(3));

    expect(data.output.filter((item) => item.type === 'web_search_call')).toHaveLength(1);
    expect(stack.simulator.stats().lastRequest).toEqual({ ...RESPONSE_REQUEST, max_tool_calls: 1, max_output_tokens: 4096 });
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(withMarkup(4n * OPENAI_COST.input + 16n * OPENAI_COST.output + SEARCH_COST));
  });

  it('rejects when one search does not fit', async () => {
    const failure = await openaiFor('poor-openai')
      .responses.create(RESPONSE_REQUEST)
      .catch((error: unknown) => error);

    expect(failure).toBeInstanceOf(OpenAI.APIError);
    expect((failure as InstanceType<typeof OpenAI.APIError>).status).toBe(402);
    // The sidecar's minimum output limit of 16 tokens is held with the one search.
    const required = promptHold(RESPONSE_REQUEST, OPENAI_COST.input) + 16n * withMarkup(OPENAI_COST.output) + SEARCH_CHARGE;
    expect((failure as Error).message).toBe(
      `402 wallet "default/poor-openai" has insufficient funds for this request: it may cost up to ${formatAmount(required)} USD, ` +
        'including 0.012 USD for 1 use of the web_search tool at 0.012 USD each, but only 0.005 USD is available; ' +
        'top up the wallet or remove the web_search tool',
    );
    expect(stack.simulator.stats().requests).toBe(0);
  });
});
