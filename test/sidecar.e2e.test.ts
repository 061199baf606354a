/**
 * The enforcing sidecar end to end: the official openai and @anthropic-ai/sdk
 * clients, unmodified, call the sidecar, which debits a real Redis ledger and
 * forwards to the provider simulator.
 */
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CompiledRoute } from '../src/config/snapshot.ts';
import { parseAmount } from '../src/money/money.ts';
import { findFreePort } from './support/processes.ts';
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
  models: [gpt-4o-mini, o3, drain-model, crowd-model, budget-model, c10-model, fee-model, text-embedding-3-small]
  costs:
    gpt-4o-mini: { input: "0.15", cachedInput: "0.075", output: "0.60" }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: anthropic }
spec:
  protocol: anthropic
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: provider-keys, key: apiKey }
  models: [claude-sonnet-4-5]
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: e2e }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      markupPercent: "20"
      models:
        o3: { input: "30", output: "180" }
        drain-model: { input: "100", output: "400" }
        crowd-model: { input: "1", output: "2" }
        budget-model: { input: "0", output: "88.4" }
        c10-model: { input: "0", output: "50" }
        fee-model: { input: "0", output: "0", perRequest: "0.004" }
        text-embedding-3-small: { input: "0.02", output: "0" }
        claude-sonnet-4-5: { input: "3.00", cacheWrite5m: "3.75", cachedInput: "0.30", output: "15.00" }
${['main:100.00', 'drain:0.10', 'drain-anthropic:0.05', 'thin:0.008', 'crowd:0', 'c9:5.000000', 'c10:0.01', 'c10-auto:0.01', 'c15:10.00', 'bad:1.00']
  .map((entry) => {
    const [name, amount] = entry.split(':');
    return `---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name} }
spec:
  currency: USD
  pricePlanRef: { name: e2e }
  grants: [{ id: initial, amount: "${amount}" }]`;
  })
  .join('\n')}
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: capped }
spec:
  currency: USD
  pricePlanRef: { name: e2e }
  grants: [{ id: initial, amount: "1.00" }]
  limits: { maxPerRequest: "0.04", daily: "0.01" }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: capped-monthly }
spec:
  currency: USD
  pricePlanRef: { name: e2e }
  grants: [{ id: initial, amount: "1.00" }]
  limits: { monthly: "0.005" }
`;

const END_USER_MANIFESTS = `
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: platform }
spec:
  currency: USD
  pricePlanRef: { name: e2e }
  endUsers: { allowed: true, prefix: user- }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: user-alice }
spec:
  currency: USD
  pricePlanRef: { name: e2e }
  grants: [{ id: initial, amount: "1.00" }]
`;

/** Nano-units per token of each explicit rate above (rate per million x 10^9 / 10^6). */
const NANO_PER_TOKEN = {
  drainInput: 100_000n,
  drainOutput: 400_000n,
  sonnetInput: 3_000n,
  sonnetOutput: 15_000n,
};

let stack: Stack;

function walletKey(name: string) {
  return { namespace: 'default', name };
}

function openaiFor(wallet: string): OpenAI {
  return new OpenAI({
    baseURL: `${stack.url}/openai/v1`,
    apiKey: 'not-the-provider-key',
    maxRetries: 0,
    defaultHeaders: { 'x-tollgate-wallet': wallet },
  });
}

function anthropicFor(wallet: string): Anthropic {
  return new Anthropic({
    baseURL: `${stack.url}/anthropic`,
    apiKey: 'not-the-provider-key',
    maxRetries: 0,
    defaultHeaders: { 'x-tollgate-wallet': wallet },
  });
}

async function postJson(path: string, body: unknown, headers: Record<string, string> = {}) {
  const response = await request(`${stack.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await response.body.text();
  return { status: response.statusCode, headers: response.headers, text };
}

/** Sends a request through node:http, which sends the path byte for byte, unlike undici, which resolves dot segments first. */
function sendRaw(method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<{ status: number; text: string }> {
  const { hostname, port } = new URL(stack.url);
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest({ host: hostname, port, path, method, headers }, (response) => {
      let text = '';
      response.on('data', (chunk: Buffer) => (text += chunk.toString()));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, text }));
    });
    outgoing.on('error', reject);
    outgoing.end(body);
  });
}

function postRawPath(path: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  return sendRaw('POST', path, { 'content-type': 'application/json', ...headers }, JSON.stringify(body));
}

function upstreamCount(): number {
  return stack.simulator.stats().requests;
}

/** Reads one series from the sidecar's /metrics, with labels in the metric's label order. A series not created yet reads 0. */
async function metricValue(name: string, labels: Record<string, string>): Promise<number> {
  const text = await (await fetch(`${stack.url}/metrics`)).text();
  const prefix = `${name}{${Object.entries(labels)
    .map(([label, value]) => `${label}="${value}"`)
    .join(',')}} `;
  const line = text.split('\n').find((candidate) => candidate.startsWith(prefix));
  return line === undefined ? 0 : Number(line.slice(prefix.length));
}

/**
 * Runs a call on the openai route that the sidecar must deny, and checks that
 * it was counted once: as a denial with `reason`, and as a denied request with
 * the `model` label, never as an invalid one.
 */
async function countedDenial<T>(reason: string, model: string, call: () => Promise<T>): Promise<T> {
  const read = async () => ({
    denials: await metricValue('tollgate_denials_total', { route: 'openai', reason }),
    denied: await metricValue('tollgate_requests_total', { route: 'openai', model, outcome: 'denied' }),
    invalid: await metricValue('tollgate_requests_total', { route: 'openai', model: 'unknown', outcome: 'invalid' }),
  });
  const before = await read();
  const result = await call();
  const after = await read();
  expect(after.denials - before.denials).toBe(1);
  expect(after.denied - before.denied).toBe(1);
  expect(after.invalid - before.invalid).toBe(0);
  return result;
}

/** Reads every series of tollgate_requests_total and tollgate_denials_total from /metrics, keyed by name and labels. */
async function requestCounters(): Promise<Record<string, number>> {
  const text = await (await fetch(`${stack.url}/metrics`)).text();
  const counters: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (!line.startsWith('tollgate_requests_total{') && !line.startsWith('tollgate_denials_total{')) continue;
    const space = line.lastIndexOf(' ');
    counters[line.slice(0, space)] = Number(line.slice(space + 1));
  }
  return counters;
}

function requestSeries(route: string, model: string, outcome: string): string {
  return `tollgate_requests_total{route="${route}",model="${model}",outcome="${outcome}"}`;
}

/**
 * Runs a call and checks that it added exactly 1 to the tollgate_requests_total
 * series `series` and changed no other series of that counter or of
 * tollgate_denials_total.
 */
async function countedOnce<T>(series: string, call: () => Promise<T>): Promise<T> {
  const before = await requestCounters();
  const result = await call();
  const after = await requestCounters();
  // A series the call created at 0 (after a configuration change) does not count as a change.
  const changed = Object.fromEntries(Object.entries(after).filter(([key, value]) => value !== (before[key] ?? 0)));
  expect(changed).toEqual({ [series]: (before[series] ?? 0) + 1 });
  return result;
}

beforeAll(async () => {
  stack = await startStack(MANIFESTS, { bodyLimit: 64 * 1024 });
});

afterAll(async () => {
  await stack?.close();
});

describe('official SDKs through the sidecar', () => {
  it('bills a plain OpenAI completion', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const { data, response } = await openaiFor('main')
      .chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 20 })
      .withResponse();
    expect(data.choices[0]?.message.content?.length).toBeGreaterThan(0);
    expect(data.usage?.completion_tokens).toBeGreaterThan(0);

    const after = await stack.ledger.state(walletKey('main'));
    const charged = parseAmount(response.headers.get('x-tollgate-charged')!);
    expect(after.spent - before.spent).toBe(charged);
    // gpt-4o-mini is priced at 20 % over its cost of 0.15 / 0.60 per million.
    const cost = BigInt(data.usage!.prompt_tokens) * 150n + BigInt(data.usage!.completion_tokens) * 600n;
    expect(after.providerCost - before.providerCost).toBe(cost);
    expect(charged).toBe((cost * 12n + 9n) / 10n);
    expect(after.reserved).toBe(0n);
  });

  it('hides the added stream usage chunk', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const stream = await openaiFor('main').chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Stream please' }],
      max_tokens: 20,
      stream: true,
    });
    let text = '';
    let usageChunks = 0;
    for await (const chunk of stream) {
      if (chunk.usage) usageChunks++;
      text += chunk.choices[0]?.delta.content ?? '';
    }
    expect(text.length).toBeGreaterThan(0);
    expect(usageChunks).toBe(0);
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent).toBeGreaterThan(before.spent);
    expect(after.reserved).toBe(0n);
  });

  it('keeps usage the client asked for', async () => {
    const stream = await openaiFor('main').chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Stream with usage' }],
      max_tokens: 20,
      stream: true,
      stream_options: { include_usage: true },
    });
    const usages = [];
    for await (const chunk of stream) if (chunk.usage) usages.push(chunk.usage);
    expect(usages).toHaveLength(1);
    expect(usages[0]!.completion_tokens).toBeGreaterThan(0);
  });

  it('adds the provider key of the sidecar', async () => {
    const rejected = await stack.simulator.stats().unauthorized;
    await openaiFor('main').chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 });
    expect(stack.simulator.stats().unauthorized).toBe(rejected);
    expect(stack.simulator.stats().lastCredential).toBe(SIMULATOR_KEY);
  });

  it('bills Anthropic plain and streamed (C2)', async () => {
    const client = anthropicFor('main');
    const before = await stack.ledger.state(walletKey('main'));
    const message = await client.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 30, messages: [{ role: 'user', content: 'Hello' }] });
    expect(message.content[0]?.type).toBe('text');

    const stream = client.messages.stream({ model: 'claude-sonnet-4-5', max_tokens: 30, messages: [{ role: 'user', content: 'Stream' }] });
    const final = await stream.finalMessage();
    expect(final.usage.output_tokens).toBeGreaterThan(1);

    // Stream usage is cumulative: the final output count replaces the placeholder of message_start.
    const expected =
      BigInt(message.usage.input_tokens) * NANO_PER_TOKEN.sonnetInput +
      BigInt(message.usage.output_tokens) * NANO_PER_TOKEN.sonnetOutput +
      BigInt(final.usage.input_tokens) * NANO_PER_TOKEN.sonnetInput +
      BigInt(final.usage.output_tokens) * NANO_PER_TOKEN.sonnetOutput;
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(expected);
  });

  it('meters embeddings (C13)', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const { response } = await openaiFor('main')
      .embeddings.create({ model: 'text-embedding-3-small', input: 'x' }, { headers: { 'x-sim-usage': JSON.stringify({ prompt_tokens: 6, total_tokens: 6 }) } })
      .withResponse();
    expect(response.headers.get('x-tollgate-charged')).toBe('0.00000012');
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent - before.spent).toBe(120n);
  });
});

describe('draining a wallet', () => {
  it('charges exactly, then refuses (OpenAI SDK)', async () => {
    const client = openaiFor('drain');
    let expectedSpent = 0n;
    let served = 0;
    let refusal: unknown;
    for (let call = 0; call < 50 && refusal === undefined; call++) {
      try {
        if (call % 2 === 0) {
          const completion = await client.chat.completions.create({
            model: 'drain-model',
            messages: [{ role: 'user', content: `call ${call}` }],
            max_tokens: 32,
          });
          expectedSpent += BigInt(completion.usage!.prompt_tokens) * NANO_PER_TOKEN.drainInput + BigInt(completion.usage!.completion_tokens) * NANO_PER_TOKEN.drainOutput;
        } else {
          const stream = await client.chat.completions.create({
            model: 'drain-model',
            messages: [{ role: 'user', content: `call ${call}` }],
            max_tokens: 32,
            stream: true,
            stream_options: { include_usage: true },
          });
          for await (const chunk of stream) {
            if (chunk.usage) expectedSpent += BigInt(chunk.usage.prompt_tokens) * NANO_PER_TOKEN.drainInput + BigInt(chunk.usage.completion_tokens) * NANO_PER_TOKEN.drainOutput;
          }
        }
        served++;
      } catch (error) {
        refusal = error;
      }
    }

    expect(served).toBeGreaterThanOrEqual(3);
    expect(refusal).toBeInstanceOf(OpenAI.APIError);
    expect((refusal as InstanceType<typeof OpenAI.APIError>).status).toBe(402);
    expect((refusal as Error).message).toMatch(/^402 wallet "default\/drain" has insufficient funds for this request: it may cost up to [0-9.]+ USD, but only [0-9.]+ USD is available; /);

    const state = await stack.ledger.state(walletKey('drain'));
    expect(state.spent).toBe(expectedSpent);
    expect(state.balance).toBe(parseAmount('0.10') - expectedSpent);
    expect(state.reserved).toBe(0n);
    expect((await stack.ledger.verify(walletKey('drain'))).ok).toBe(true);
  });

  it('refuses an unaffordable Anthropic call', async () => {
    const client = anthropicFor('drain-anthropic');
    const upstreamBefore = upstreamCount();
    // 4000 output tokens at 15 per million is 0.06, more than the 0.05 granted.
    const failure = await client.messages
      .create({ model: 'claude-sonnet-4-5', max_tokens: 4000, messages: [{ role: 'user', content: 'Too dear' }] })
      .catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(Anthropic.APIError);
    expect((failure as InstanceType<typeof Anthropic.APIError>).status).toBe(402);
    // The body adds 0.00000375 USD per byte (the cache write rate, the dearest prompt rate) to the 0.06 of the output limit,
    // and the body with one output token would fit.
    expect((failure as Error).message).toMatch(
      /^402 wallet "default\/drain-anthropic" has insufficient funds for this request: it may cost up to 0\.060\d+ USD, but only 0\.05 USD is available; top up the wallet or lower the output limit\b/,
    );
    expect(upstreamCount()).toBe(upstreamBefore);
  });

  it('advises only a top-up when no request fits', async () => {
    // The shortest drain-model request with a limit, {"model":"drain-model","messages":[{"role":"user","content":"x"}],"max_tokens":1},
    // has 81 bytes at 0.0001 USD and one output token at 0.0004 USD. Its hold of 0.0085 USD is more than the 0.008 USD of the wallet.
    // This body has 180 bytes, so its hold is 0.018 USD plus 0.0004 USD.
    const upstreamBefore = upstreamCount();
    const body = { model: 'drain-model', messages: [{ role: 'user', content: 'x'.repeat(100) }], max_tokens: 1 };
    const result = await countedDenial('insufficient_funds', 'drain-model', () => postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'thin' }));
    expect(result.status).toBe(402);
    const error = JSON.parse(result.text).error;
    expect(error.code).toBe('insufficient_funds');
    expect(error.message).toBe('wallet "default/thin" has insufficient funds for this request: it may cost up to 0.0184 USD, but only 0.008 USD is available; top up the wallet');
    expect(upstreamCount()).toBe(upstreamBefore);
  });
});

describe('concurrency', () => {
  it('admits 37 of 200 simultaneous requests', async () => {
    const body = JSON.stringify({ model: 'crowd-model', messages: [{ role: 'user', content: 'crowd' }], max_tokens: 100 });
    // Worst case: every body byte is a prompt token at 1 per million (1000 nano), plus 100 output tokens at 2 per million.
    const hold = BigInt(Buffer.byteLength(body)) * 1_000n + 100n * 2_000n;
    const grant = 37n * hold + hold - 1n;
    await stack.ledger.credit(walletKey('crowd'), 'crowd-grant', grant);
    const upstreamBefore = upstreamCount();

    // Each admitted call reports usage that costs exactly its hold, so a call that finishes early frees
    // nothing and the count does not depend on timing.
    const usage = JSON.stringify({ prompt_tokens: Buffer.byteLength(body), completion_tokens: 100, total_tokens: Buffer.byteLength(body) + 100 });
    const results = await Promise.all(
      Array.from({ length: 200 }, () =>
        postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'crowd', 'x-sim-latency-ms': '200', 'x-sim-usage': usage }),
      ),
    );
    const admitted = results.filter((r) => r.status === 200).length;
    const refused = results.filter((r) => r.status === 402).length;
    expect(admitted).toBe(37);
    expect(refused).toBe(163);
    expect(upstreamCount() - upstreamBefore).toBe(37);

    const state = await stack.ledger.state(walletKey('crowd'));
    expect(state.reserved).toBe(0n);
    expect(state.spent).toBe(37n * hold);
    expect(state.balance).toBe(hold - 1n);
    expect((await stack.ledger.verify(walletKey('crowd'))).ok).toBe(true);
  });

  it('admits two of four near the cap (C9)', async () => {
    const wallet = walletKey('c9');
    await stack.ledger.reserve(wallet, 'earlier-spend', { fixed: parseAmount('4.752720'), perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'earlier' });
    await stack.ledger.commit(wallet, 'earlier-spend', { charged: parseAmount('4.752720'), providerCost: 0n, model: 'x', route: 'openai', tokens: {}, estimated: false });

    // budget-model: output 88.4 per million and a 1000-token limit make each worst case exactly 0.0884 USD.
    const body = JSON.stringify({ model: 'budget-model', messages: [{ role: 'user', content: 'c9' }], max_tokens: 1000 });
    // Each call uses its whole output limit, so its charge equals its hold and timing cannot free funds.
    const usage = JSON.stringify({ prompt_tokens: 10, completion_tokens: 1000, total_tokens: 1010 });
    const results = await Promise.all(
      Array.from({ length: 4 }, () => postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'c9', 'x-sim-latency-ms': '200', 'x-sim-usage': usage })),
    );
    expect(results.filter((r) => r.status === 200)).toHaveLength(2);
    expect(results.filter((r) => r.status === 402)).toHaveLength(2);

    const state = await stack.ledger.state(wallet);
    const charged = results.filter((r) => r.status === 200).reduce((sum, r) => sum + parseAmount(String(r.headers['x-tollgate-charged'])), 0n);
    expect(charged).toBe(2n * parseAmount('0.0884'));
    expect(state.spent).toBe(parseAmount('4.929520'));
    expect(state.spent).toBeLessThanOrEqual(parseAmount('5.000000'));
  });
});

describe('field cases', () => {
  it('charges Anthropic cache writes once (C1)', async () => {
    const usage = { input_tokens: 3, cache_creation_input_tokens: 12304, cache_read_input_tokens: 0, output_tokens: 550 };
    const { response } = await anthropicFor('main')
      .messages.create(
        { model: 'claude-sonnet-4-5', max_tokens: 600, messages: [{ role: 'user', content: 'cached' }] },
        { headers: { 'x-sim-usage': JSON.stringify(usage) } },
      )
      .withResponse();
    expect(response.headers.get('x-tollgate-charged')).toBe('0.054399');
  });

  it('prices OpenAI reasoning tokens once (C5)', async () => {
    const usage = {
      prompt_tokens: 14746,
      completion_tokens: 1944,
      total_tokens: 16690,
      completion_tokens_details: { reasoning_tokens: 1360 },
    };
    const { response } = await openaiFor('main')
      .chat.completions.create(
        { model: 'o3', messages: [{ role: 'user', content: 'think' }], max_completion_tokens: 2000 },
        { headers: { 'x-sim-usage': JSON.stringify(usage) } },
      )
      .withResponse();
    expect(response.headers.get('x-tollgate-charged')).toBe('0.7923');
  });

  it('rejects a worst case over balance (C10)', async () => {
    const upstreamBefore = upstreamCount();
    const body = { model: 'c10-model', messages: [{ role: 'user', content: 'c10' }], max_tokens: 1000 };
    const result = await postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'c10' });
    expect(result.status).toBe(402);
    expect(JSON.parse(result.text).error.message).toBe(
      'wallet "default/c10" has insufficient funds for this request: it may cost up to 0.05 USD, but only 0.01 USD is available; top up the wallet or lower the output limit',
    );
    expect(upstreamCount()).toBe(upstreamBefore);
    const state = await stack.ledger.state(walletKey('c10'));
    expect(state.balance).toBe(parseAmount('0.01'));
  });

  it('sets an affordable output limit (C10)', async () => {
    const body = { model: 'c10-model', messages: [{ role: 'user', content: 'c10' }] };
    const result = await postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'c10-auto' });
    expect(result.status).toBe(200);
    // c10-model has no input price, so the 0.01 balance buys 200 output tokens at 50 per million.
    expect(stack.simulator.stats().lastRequest?.max_completion_tokens).toBe(200);
    const state = await stack.ledger.state(walletKey('c10-auto'));
    expect(state.balance).toBeGreaterThanOrEqual(0n);
    expect(state.reserved).toBe(0n);
  });

  it('refuses request 2,501 at 0.004 each (C15)', async () => {
    const body = JSON.stringify({ model: 'fee-model', messages: [{ role: 'user', content: 'fee' }], max_tokens: 1 });
    const statuses = new Map<number, number>();
    for (let i = 1; i <= 2501; i++) {
      const result = await postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'c15' });
      statuses.set(result.status, (statuses.get(result.status) ?? 0) + 1);
      if (i === 2500) expect((await stack.ledger.state(walletKey('c15'))).spent).toBe(parseAmount('10.00'));
      if (i === 2501) expect(result.status).toBe(402);
    }
    expect(statuses.get(200)).toBe(2500);
    expect(statuses.get(402)).toBe(1);
  });
});

describe('spend limits', () => {
  it('refuses a request over maxPerRequest', async () => {
    const upstreamBefore = upstreamCount();
    const body = { model: 'c10-model', messages: [{ role: 'user', content: 'cap' }], max_tokens: 1000 };
    const result = await countedDenial('max_per_request', 'c10-model', () => postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'capped' }));
    expect(result.status).toBe(402);
    const error = JSON.parse(result.text).error;
    expect(error.code).toBe('spend_limit_exceeded');
    expect(error.message).toBe(
      'wallet "default/capped" allows at most 0.04 USD per request (spec.limits.maxPerRequest), and this request may cost up to 0.05 USD; ' +
        'raise spec.limits.maxPerRequest or lower the output limit',
    );
    expect(upstreamCount()).toBe(upstreamBefore);
  });

  it('suggests a shorter request when the prompt is too dear', async () => {
    // drain-model costs 100 USD per million input tokens, so the worst case of a body of over 400 bytes alone is over 0.04 USD.
    const body = { model: 'drain-model', messages: [{ role: 'user', content: 'x'.repeat(350) }], max_tokens: 1 };
    const result = await countedDenial('max_per_request', 'drain-model', () => postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'capped' }));
    expect(result.status).toBe(402);
    const message: string = JSON.parse(result.text).error.message;
    const [, worstCase] = /this request may cost up to ([0-9.]+) USD; /.exec(message) ?? [];
    expect(parseAmount(worstCase!)).toBeGreaterThan(parseAmount('0.04'));
    expect(message).toBe(
      `wallet "default/capped" allows at most 0.04 USD per request (spec.limits.maxPerRequest), and this request may cost up to ${worstCase} USD; ` +
        'raise spec.limits.maxPerRequest or send a shorter request',
    );
  });

  it('refuses the request past the daily limit', async () => {
    const body = { model: 'fee-model', messages: [{ role: 'user', content: 'cap' }], max_tokens: 1 };
    expect((await postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'capped' })).status).toBe(200);
    expect((await postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'capped' })).status).toBe(200);
    const third = await countedDenial('daily_limit', 'fee-model', () => postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'capped' }));
    expect(third.status).toBe(402);
    expect(JSON.parse(third.text).error.message).toBe(
      'wallet "default/capped" would exceed its spec.limits.daily limit: this request may cost up to 0.004 USD and 0.002 USD remains under the limit; ' +
        'wait for the next UTC day or raise spec.limits.daily',
    );
    expect((await stack.ledger.state(walletKey('capped'))).spent).toBe(parseAmount('0.008'));
  });

  it('refuses the request past the monthly limit', async () => {
    const body = { model: 'fee-model', messages: [{ role: 'user', content: 'cap' }], max_tokens: 1 };
    expect((await postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'capped-monthly' })).status).toBe(200);
    const second = await countedDenial('monthly_limit', 'fee-model', () =>
      postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'capped-monthly' }),
    );
    expect(second.status).toBe(402);
    expect(JSON.parse(second.text).error.message).toBe(
      'wallet "default/capped-monthly" would exceed its spec.limits.monthly limit: this request may cost up to 0.004 USD and 0.001 USD remains under the limit; ' +
        'wait for the next UTC month or raise spec.limits.monthly',
    );
    expect((await stack.ledger.state(walletKey('capped-monthly'))).spent).toBe(parseAmount('0.004'));
  });
});

describe('request ids and end users', () => {
  it('bills a repeated request id once (C8)', async () => {
    const wallet = walletKey('main');
    const before = await stack.ledger.state(wallet);
    const upstreamBefore = upstreamCount();
    const headers = { 'x-tollgate-wallet': 'main', 'idempotency-key': 'retry-c8-1', 'x-sim-usage': JSON.stringify({ prompt_tokens: 1000, completion_tokens: 100, total_tokens: 1100 }) };
    const body = { model: 'o3', messages: [{ role: 'user', content: 'once' }], max_tokens: 200 };

    const first = await postJson('/openai/v1/chat/completions', body, headers);
    const second = await postJson('/openai/v1/chat/completions', body, headers);
    expect(first.status).toBe(200);
    expect(second.status).toBe(400);
    expect(JSON.parse(second.text).error.message).toContain('was already served and billed');

    // 1000 input tokens at 30 and 100 output tokens at 180 per million: 0.048 USD, once.
    const after = await stack.ledger.state(wallet);
    expect(after.spent - before.spent).toBe(parseAmount('0.048'));
    expect(upstreamCount() - upstreamBefore).toBe(1);
  });

  it('retries a released request id (C8)', async () => {
    const wallet = walletKey('main');
    const before = await stack.ledger.state(wallet);
    const body = { model: 'o3', messages: [{ role: 'user', content: 'retry' }], max_tokens: 200 };
    const usage = JSON.stringify({ prompt_tokens: 1000, completion_tokens: 100, total_tokens: 1100 });

    const failed = await postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'main', 'idempotency-key': 'retry-c8-2', 'x-sim-status': '503' });
    expect(failed.status).toBe(503);
    const retried = await postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'main', 'idempotency-key': 'retry-c8-2', 'x-sim-usage': usage });
    expect(retried.status).toBe(200);

    const after = await stack.ledger.state(wallet);
    expect(after.spent - before.spent).toBe(parseAmount('0.048'));
    expect(after.reserved).toBe(0n);
  });

  it('rejects a reused id with another body', async () => {
    const headers = { 'x-tollgate-wallet': 'main', 'idempotency-key': 'retry-c8-3' };
    expect((await postJson('/openai/v1/chat/completions', { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'a' }], max_tokens: 5 }, headers)).status).toBe(200);
    const other = await countedDenial('request_id_conflict', 'gpt-4o-mini', () =>
      postJson('/openai/v1/chat/completions', { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'b' }], max_tokens: 5 }, headers),
    );
    expect(other.status).toBe(422);
    expect(JSON.parse(other.text).error.message).toContain('was already used for a different request body');
  });

  it('rejects an over-long request id', async () => {
    const upstreamBefore = upstreamCount();
    const body = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'long id' }], max_tokens: 5 };
    const result = await postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'main', 'idempotency-key': 'k'.repeat(201) });
    expect(result.status).toBe(400);
    expect(JSON.parse(result.text).error.message).toBe('the idempotency-key header is 201 characters long; use an id of at most 200 characters');
    expect(upstreamCount()).toBe(upstreamBefore);
  });

  it('forwards a repeat in flight once (C8)', async () => {
    const wallet = walletKey('main');
    const before = await stack.ledger.state(wallet);
    const upstreamBefore = upstreamCount();
    const usage = JSON.stringify({ prompt_tokens: 1000, completion_tokens: 100, total_tokens: 1100 });
    const headers = { 'x-tollgate-wallet': 'main', 'idempotency-key': 'retry-c8-4', 'x-sim-usage': usage, 'x-sim-latency-ms': '1500' };
    const body = { model: 'o3', messages: [{ role: 'user', content: 'in flight' }], max_tokens: 200 };

    const first = postJson('/openai/v1/chat/completions', body, headers);
    // Once the simulator has the first request, its hold is in place.
    await expect.poll(upstreamCount, { interval: 10, timeout: 5000 }).toBe(upstreamBefore + 1);
    const repeat = await countedDenial('request_id_conflict', 'o3', () => postJson('/openai/v1/chat/completions', body, headers));
    expect(repeat.status).toBe(409);
    expect(JSON.parse(repeat.text).error.message).toBe(
      'request id "retry-c8-4" is already being served by an earlier request with the same body, so this one was not forwarded; ' +
        'wait for that response, or retry after it has finished. If the sidecar that served it stopped, send a new Idempotency-Key ' +
        "to make the call again (the ledger settles that request's hold at most 15m after it started)",
    );
    expect((await first).status).toBe(200);

    // 1000 input tokens at 30 and 100 output tokens at 180 per million: 0.048 USD, once, from one upstream call.
    const after = await stack.ledger.state(wallet);
    expect(after.spent - before.spent).toBe(parseAmount('0.048'));
    expect(after.reserved).toBe(before.reserved);
    expect(upstreamCount() - upstreamBefore).toBe(1);
  });

  it('bills an end-user wallet the base wallet allows', async () => {
    await stack.reconfigure(MANIFESTS + END_USER_MANIFESTS);
    const result = await postJson(
      '/openai/v1/chat/completions',
      { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'end user' }], max_tokens: 5 },
      { 'x-tollgate-wallet': 'platform', 'x-tollgate-end-user': 'alice' },
    );
    expect(result.status).toBe(200);
    expect(result.headers['x-tollgate-wallet']).toBe('default/user-alice');
    const alice = await stack.ledger.state(walletKey('user-alice'));
    expect(alice.spent).toBe(parseAmount(String(result.headers['x-tollgate-charged'])));
    expect((await stack.ledger.state(walletKey('platform'))).spent).toBe(0n);

    // The wallet is resolved before the model is priced, so the model label is "unknown".
    const refused = await countedDenial('wallet_not_allowed', 'unknown', () =>
      postJson(
        '/openai/v1/chat/completions',
        { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'end user' }], max_tokens: 5 },
        { 'x-tollgate-wallet': 'main', 'x-tollgate-end-user': 'alice' },
      ),
    );
    expect(refused.status).toBe(403);
    expect(JSON.parse(refused.text).error.message).toContain('does not allow end-user wallets');

    // An end user without a Wallet of its own gets the same code and status as any missing wallet.
    const missing = await countedDenial('wallet_not_found', 'unknown', () =>
      postJson(
        '/openai/v1/chat/completions',
        { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'end user' }], max_tokens: 5 },
        { 'x-tollgate-wallet': 'platform', 'x-tollgate-end-user': 'bob' },
      ),
    );
    expect(missing.status).toBe(403);
    expect(JSON.parse(missing.text).error).toEqual({
      message: 'wallet "default/user-bob" not found; create a Wallet resource named "user-bob" in namespace default',
      type: 'invalid_request_error',
      code: 'wallet_not_found',
      param: null,
    });
    await stack.reconfigure(MANIFESTS);
  });
});

describe('bad input', () => {
  async function expectNothingDebited(run: () => Promise<{ status: number; text: string }>, status: number, message: string) {
    const before = await stack.ledger.state(walletKey('bad'));
    const upstreamBefore = upstreamCount();
    const result = await run();
    expect(result.status).toBe(status);
    expect(JSON.parse(result.text).error.message).toContain(message);
    const after = await stack.ledger.state(walletKey('bad'));
    expect(after).toEqual(before);
    expect(upstreamCount()).toBe(upstreamBefore);
  }

  it('rejects malformed JSON', async () => {
    await expectNothingDebited(
      () => postJson('/openai/v1/chat/completions', '{"model": "gpt-4o-mini", "messages": [', { 'x-tollgate-wallet': 'bad' }),
      400,
      'the request body is not valid JSON',
    );
  });

  it('rejects a body over the limit', async () => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x'.repeat(100 * 1024) }] });
    await expectNothingDebited(
      () => postJson('/openai/v1/chat/completions', body, { 'x-tollgate-wallet': 'bad' }),
      413,
      `the request body of ${Buffer.byteLength(body)} bytes is larger than the sidecar's limit of 65536 bytes; send a smaller request, ` +
        'or raise the limit with tollgate dev --body-limit BYTES, or the Helm value sidecar.bodyLimit for a sidecar in a pod',
    );
  });

  it('rejects a chunked body over the limit', async () => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x'.repeat(100 * 1024) }] });
    const headers = { 'content-type': 'application/json', 'transfer-encoding': 'chunked', 'x-tollgate-wallet': 'bad' };
    // Without content-length the sidecar stops reading at the limit, so the message cannot name the body's size.
    await expectNothingDebited(() => sendRaw('POST', '/openai/v1/chat/completions', headers, body), 413, "the request body is larger than the sidecar's limit of 65536 bytes;");
  });

  it('rejects an unknown wallet', async () => {
    await expectNothingDebited(
      () => postJson('/openai/v1/chat/completions', { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }, { 'x-tollgate-wallet': 'acmee' }),
      403,
      'wallet "default/acmee" not found; use one of the wallets in namespace default ' +
        '(bad, c10, c10-auto, c15, c9, capped, capped-monthly, crowd, drain, drain-anthropic, main, thin) ' +
        'or create a Wallet resource named "acmee" in namespace default',
    );
  });

  it('rejects an unknown route', async () => {
    await expectNothingDebited(
      () => postJson('/mistral/v1/chat/completions', { model: 'gpt-4o-mini', messages: [] }, { 'x-tollgate-wallet': 'bad' }),
      404,
      'no provider route serves path "/mistral/v1/chat/completions"',
    );
  });

  it('rejects dot segments in the path', async () => {
    await expectNothingDebited(
      () => postRawPath('/openai/v1/images/../chat/completions', { model: 'gpt-4o-mini', messages: [] }, { 'x-tollgate-wallet': 'bad' }),
      400,
      'has dot segments',
    );
    await expectNothingDebited(
      () => postRawPath('/openai/v1/images/%2e%2e/chat/completions', { model: 'gpt-4o-mini', messages: [] }, { 'x-tollgate-wallet': 'bad' }),
      400,
      'has dot segments',
    );
  });

  it('rejects an endpoint it cannot meter', async () => {
    await expectNothingDebited(
      () => postJson('/openai/v1/images/generations', { model: 'gpt-4o-mini', prompt: 'a cat' }, { 'x-tollgate-wallet': 'bad' }),
      404,
      'unsupported endpoint /v1/images/generations',
    );
  });

  it('rejects an unknown model naming it', async () => {
    await expectNothingDebited(
      () =>
        countedDenial('unknown_model', 'unknown', () =>
          postJson('/openai/v1/chat/completions', { model: 'gpt-5.6-sol', messages: [{ role: 'user', content: 'hi' }] }, { 'x-tollgate-wallet': 'bad' }),
        ),
      400,
      'model "gpt-5.6-sol"',
    );
  });

  it('rejects a request without a model', async () => {
    await expectNothingDebited(
      () => postJson('/openai/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }] }, { 'x-tollgate-wallet': 'bad' }),
      400,
      'model',
    );
  });
});

/** The models list that the stand-in upstream of the "models" route returns. */
const MODELS_LIST = JSON.stringify({ object: 'list', data: [{ id: 'gpt-4o-mini', object: 'model', owned_by: 'openai' }] });

/** Starts a loopback server that serves GET and HEAD /v1/models, which the provider simulator lacks, and returns 404 for anything else. */
async function startModelsServer(): Promise<Server> {
  const server = createServer((incoming, response) => {
    if (incoming.url !== '/v1/models' || (incoming.method !== 'GET' && incoming.method !== 'HEAD')) {
      response.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"not found"}}');
      return;
    }
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(MODELS_LIST) }).end(incoming.method === 'GET' ? MODELS_LIST : undefined);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return server;
}

describe('request counting', () => {
  let modelsServer: Server;

  beforeAll(async () => {
    modelsServer = await startModelsServer();
    const closedPort = await findFreePort();
    const extraRoutes = `
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: models }
spec:
  protocol: openai
  baseURL: http://127.0.0.1:${(modelsServer.address() as AddressInfo).port}
  models: [gpt-4o-mini]
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: offline }
spec:
  protocol: openai
  baseURL: http://127.0.0.1:${closedPort}
  models: [gpt-4o-mini]
`;
    await stack.reconfigure(MANIFESTS + extraRoutes);

    // Every protocol the schema accepts has an adapter, so a route without one is planted in the compiled snapshot.
    const snapshot = stack.config.current();
    const template = snapshot.routes.get('/models')!;
    snapshot.routes.set('/legacy', { ...template, name: 'legacy', prefix: '/legacy', protocol: 'cohere' as CompiledRoute['protocol'] });
  });

  afterAll(async () => {
    await stack.reconfigure(MANIFESTS);
    await new Promise<void>((resolve) => (modelsServer ? modelsServer.close(() => resolve()) : resolve()));
  });

  it('counts an admitted call once', async () => {
    const result = await countedOnce(requestSeries('openai', 'gpt-4o-mini', 'admitted'), () =>
      postJson('/openai/v1/chat/completions', { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'count me' }], max_tokens: 5 }, { 'x-tollgate-wallet': 'main' }),
    );
    expect(result.status).toBe(200);
  });

  it('counts an unknown route under (none)', async () => {
    const result = await countedOnce(requestSeries('(none)', 'unknown', 'invalid'), () =>
      postJson('/mistral/v1/chat/completions', { model: 'mistral-large', messages: [] }, { 'x-tollgate-wallet': 'bad' }),
    );
    expect(result.status).toBe(404);
    expect(JSON.parse(result.text).error.code).toBe('unknown_route');
  });

  it('counts an unsafe path as invalid', async () => {
    const result = await countedOnce(requestSeries('openai', 'unknown', 'invalid'), () =>
      postRawPath('/openai/v1/images/../chat/completions', { model: 'gpt-4o-mini', messages: [] }, { 'x-tollgate-wallet': 'bad' }),
    );
    expect(result.status).toBe(400);
    expect(JSON.parse(result.text).error.code).toBe('invalid_path');
  });

  it('counts malformed JSON as invalid', async () => {
    const result = await countedOnce(requestSeries('openai', 'unknown', 'invalid'), () =>
      postJson('/openai/v1/chat/completions', '{"model": "gpt-4o-mini", "messages": [', { 'x-tollgate-wallet': 'bad' }),
    );
    expect(result.status).toBe(400);
    expect(JSON.parse(result.text).error.code).toBe('invalid_json');
  });

  it('counts a body over the limit as invalid', async () => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x'.repeat(100 * 1024) }] });
    const result = await countedOnce(requestSeries('anthropic', 'unknown', 'invalid'), () => postJson('/anthropic/v1/messages', body, { 'x-tollgate-wallet': 'bad' }));
    expect(result.status).toBe(413);
    // The error is in the format of the route's provider, Anthropic here.
    expect(JSON.parse(result.text).error.type).toBe('request_too_large');
  });

  it('counts an unsupported media type as invalid', async () => {
    const result = await countedOnce(requestSeries('openai', 'unknown', 'invalid'), () =>
      sendRaw('POST', '/openai/v1/chat/completions', { 'content-type': 'not a media type' }, '{}'),
    );
    expect(result.status).toBe(415);
  });

  it('counts a malformed path encoding as invalid', async () => {
    const result = await countedOnce(requestSeries('openai', 'unknown', 'invalid'), () => sendRaw('POST', '/openai/v1/%zz', { 'content-type': 'application/json' }, '{}'));
    expect(result.status).toBe(400);
    expect(JSON.parse(result.text).error.message).toBe("'/openai/v1/%zz' is not a valid url component");
  });

  it('counts an unserved method as invalid', async () => {
    const result = await countedOnce(requestSeries('openai', 'unknown', 'invalid'), () => sendRaw('OPTIONS', '/openai/v1/chat/completions'));
    expect(result.status).toBe(404);
    expect(JSON.parse(result.text).error.code).toBe('unknown_route');
  });

  it('counts a protocol without an adapter as internal_error', async () => {
    const result = await countedOnce(requestSeries('legacy', 'unknown', 'internal_error'), () =>
      postJson('/legacy/v1/chat/completions', { model: 'gpt-4o-mini', messages: [] }, { 'x-tollgate-wallet': 'bad' }),
    );
    expect(result.status).toBe(501);
    expect(JSON.parse(result.text).error.code).toBe('unsupported_protocol');
  });

  it('counts GET and HEAD as passthrough', async () => {
    const listed = await countedOnce(requestSeries('models', 'unknown', 'passthrough'), () => sendRaw('GET', '/models/v1/models'));
    expect(listed.status).toBe(200);
    expect(listed.text).toBe(MODELS_LIST);

    const head = await countedOnce(requestSeries('models', 'unknown', 'passthrough'), () => sendRaw('HEAD', '/models/v1/models'));
    expect(head.status).toBe(200);
    expect(head.text).toBe('');
  });

  it('counts a GET error status as upstream_error', async () => {
    // The simulator does not know this model, so it returns 404.
    const result = await countedOnce(requestSeries('openai', 'unknown', 'upstream_error'), () => sendRaw('GET', '/openai/v1/models/gpt-unknown'));
    expect(result.status).toBe(404);
    expect(JSON.parse(result.text).error.code).toBe('model_not_found');
  });

  it('counts an unreachable GET upstream as upstream_error', async () => {
    const result = await countedOnce(requestSeries('offline', 'unknown', 'upstream_error'), () => sendRaw('GET', '/offline/v1/models'));
    expect(result.status).toBe(502);
    expect(JSON.parse(result.text).error.code).toBe('upstream_unreachable');
  });

  it('skips health, metrics and wallet requests', async () => {
    const before = await requestCounters();
    for (const path of ['/healthz', '/readyz', '/metrics', '/tollgate/v1/wallets']) {
      expect((await sendRaw('GET', path)).status, path).toBe(200);
    }
    expect((await sendRaw('HEAD', '/healthz')).status).toBe(200);
    expect(await requestCounters()).toEqual(before);
  });

  it('rejects other methods on its own paths with 405', async () => {
    const before = await requestCounters();
    for (const [method, path] of [['POST', '/metrics'], ['DELETE', '/tollgate/v1/wallets'], ['PUT', '/healthz'], ['PATCH', '/readyz']] as const) {
      const result = await sendRaw(method, path);
      expect(result.status, `${method} ${path}`).toBe(405);
      expect(JSON.parse(result.text).error, `${method} ${path}`).toMatchObject({ code: 'method_not_allowed', message: `${method} is not allowed on ${path}; use GET` });
    }
    expect(await requestCounters()).toEqual(before);
  });
});

describe('failures mid-call', () => {
  it('bills an estimate when usage is missing (C4)', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const body = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: 'no usage please' }], max_tokens: 20, stream: true as const };
    const stream = await openaiFor('main').chat.completions.create(body, { headers: { 'x-sim-omit-usage': '1' } });
    for await (const _chunk of stream) {
      // Drain the stream.
    }
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent).toBeGreaterThan(before.spent);
    expect(after.reserved).toBe(0n);

    // The input estimate counts the prompt's text ("user" 1 token, "no usage please" 4), not the JSON body around it.
    let last: Record<string, string> | undefined;
    for await (const entry of stack.ledger.entries(walletKey('main'))) last = entry.fields;
    expect(last?.['estimated']).toBe('1');
    expect(JSON.parse(last!['tokens']!).input).toBe(5);
    const metrics = await (await fetch(`${stack.url}/metrics`)).text();
    expect(metrics).toMatch(/tollgate_usage_estimated_total\{route="openai",reason="missing_usage"\} 1/);
  });

  it('charges output seen before a disconnect (C7)', async () => {
    const wallet = walletKey('main');
    const before = await stack.ledger.state(wallet);
    const controller = new AbortController();
    const response = await request(`${stack.url}/anthropic/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-tollgate-wallet': 'main', 'x-sim-chunks': '40', 'x-sim-chunk-delay-ms': '25', 'x-sim-output-tokens': '40' },
      body: JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'long answer' }] }),
      signal: controller.signal,
    });
    let seen = '';
    for await (const chunk of response.body) {
      seen += chunk.toString();
      if ((seen.match(/content_block_delta/g) ?? []).length >= 5) break;
    }
    controller.abort();

    let after = await stack.ledger.state(wallet);
    for (let i = 0; i < 50 && after.reserved !== 0n; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      after = await stack.ledger.state(wallet);
    }
    expect(after.reserved).toBe(0n);
    const inputTokens = Number(/"input_tokens":(\d+)/.exec(seen)![1]);
    const inputOnly = BigInt(inputTokens) * NANO_PER_TOKEN.sonnetInput;
    // More than the input alone (output was generated) and less than the full 100-token limit.
    expect(after.spent - before.spent).toBeGreaterThan(inputOnly + NANO_PER_TOKEN.sonnetOutput);
    expect(after.spent - before.spent).toBeLessThan(inputOnly + 100n * NANO_PER_TOKEN.sonnetOutput);
  });

  it('releases the hold on an upstream error', async () => {
    const before = await stack.ledger.state(walletKey('main'));
    const failure = await openaiFor('main')
      .chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'fail' }], max_tokens: 5 }, { headers: { 'x-sim-status': '500' } })
      .catch((error: unknown) => error);
    expect((failure as InstanceType<typeof OpenAI.APIError>).status).toBe(500);
    const after = await stack.ledger.state(walletKey('main'));
    expect(after.spent).toBe(before.spent);
    expect(after.reserved).toBe(0n);
  });

  it('applies a price change without a restart', async () => {
    const cheaper = MANIFESTS.replace('o3: { input: "30", output: "180" }', 'o3: { input: "15", output: "90" }');
    const usage = { prompt_tokens: 1000, completion_tokens: 1000, total_tokens: 2000 };
    const call = () =>
      openaiFor('main')
        .chat.completions.create({ model: 'o3', messages: [{ role: 'user', content: 'p' }], max_tokens: 1000 }, { headers: { 'x-sim-usage': JSON.stringify(usage) } })
        .withResponse();
    expect((await call()).response.headers.get('x-tollgate-charged')).toBe('0.21');
    await stack.reconfigure(cheaper);
    expect((await call()).response.headers.get('x-tollgate-charged')).toBe('0.105');
    await stack.reconfigure(MANIFESTS);
  });

  it('fails closed when Redis is down', async () => {
    const upstreamBefore = upstreamCount();
    await stack.redis.stop();
    const failure = await openaiFor('main')
      .chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'down' }], max_tokens: 5 })
      .catch((error: unknown) => error);
    expect((failure as InstanceType<typeof OpenAI.APIError>).status).toBe(503);
    expect((failure as Error).message).toContain('the billing ledger is unavailable');
    expect(upstreamCount()).toBe(upstreamBefore);
  });
});

describe('request counting without Redis', () => {
  it('counts a ledger outage, not a failed wallet list', async () => {
    // Stopping twice is safe, so this does not rely on the test above having stopped Redis.
    await stack.redis.stop();

    const before = await requestCounters();
    const wallets = await sendRaw('GET', '/tollgate/v1/wallets');
    expect(wallets.status).toBe(503);
    expect(await requestCounters()).toEqual(before);
    const { error } = JSON.parse(wallets.text) as { error: { code: string; message: string } };
    expect(error.code).toBe('ledger_unavailable');
    expect(error.message).toMatch(/^the billing ledger is unavailable, so the wallet balances cannot be read; retry shortly \(ledger state for wallet default\/\S+ failed because /);

    const result = await countedOnce(requestSeries('openai', 'gpt-4o-mini', 'ledger_error'), () =>
      postJson('/openai/v1/chat/completions', { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'down' }], max_tokens: 5 }, { 'x-tollgate-wallet': 'main' }),
    );
    expect(result.status).toBe(503);
    expect(JSON.parse(result.text).error.code).toBe('ledger_unavailable');
  });
});
