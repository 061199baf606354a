/**
 * The wallet label of the sidecar's money counters: filled with the paying
 * wallet's id by default, including an end-user wallet named per request,
 * and empty when the setting turns it off. Each stack runs the sidecar on a
 * real Redis ledger in front of the provider simulator.
 */
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
  models: [gpt-4o-mini]
  costs:
    gpt-4o-mini: { input: "0.50", output: "2.00" }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: labels }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gpt-4o-mini: { input: "1.00", output: "4.00" }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: main }
spec:
  currency: USD
  pricePlanRef: { name: labels }
  grants: [{ id: initial, amount: "10.00" }]
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: platform }
spec:
  currency: USD
  pricePlanRef: { name: labels }
  endUsers: { allowed: true, prefix: user- }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: user-alice }
spec:
  currency: USD
  pricePlanRef: { name: labels }
  grants: [{ id: initial, amount: "10.00" }]
`;

/** 1000 input tokens and 500 output tokens: charged 0.001 + 0.002 USD, provider cost 0.0005 + 0.001 USD. */
const USAGE = JSON.stringify({ prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500 });

let labelled: Stack;
let unlabelled: Stack;

beforeAll(async () => {
  [labelled, unlabelled] = await Promise.all([startStack(MANIFESTS), startStack(MANIFESTS, { walletLabel: false })]);
});

afterAll(async () => {
  await Promise.all([labelled?.close(), unlabelled?.close()]);
});

/** Sends one chat completion, for which the simulator reports USAGE, and returns the wallet the sidecar charged. */
async function complete(stack: Stack, headers: Record<string, string>): Promise<string> {
  const response = await request(`${stack.url}/openai/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-sim-usage': USAGE, ...headers },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }], max_tokens: 500 }),
  });
  const text = await response.body.text();
  expect(response.statusCode, text).toBe(200);
  return String(response.headers['x-tollgate-wallet']);
}

/** Returns the series of tollgate_charged_total and tollgate_provider_cost_total from the sidecar's /metrics. */
async function moneySeries(stack: Stack): Promise<string[]> {
  const text = await (await fetch(`${stack.url}/metrics`)).text();
  return text
    .split('\n')
    .filter((line) => line.startsWith('tollgate_charged_total{') || line.startsWith('tollgate_provider_cost_total{'))
    .sort();
}

describe('wallet label', () => {
  it('carries the paying wallet by default', async () => {
    expect(await complete(labelled, { 'x-tollgate-wallet': 'main' })).toBe('default/main');
    expect(await complete(labelled, { 'x-tollgate-wallet': 'platform', 'x-tollgate-end-user': 'alice' })).toBe('default/user-alice');

    // The platform wallet's series exist from the start at 0; an end-user wallet's from its first charge.
    expect(await moneySeries(labelled)).toEqual([
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="main"} 0.003',
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="platform"} 0',
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="user-alice"} 0.003',
      'tollgate_provider_cost_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="main"} 0.0015',
      'tollgate_provider_cost_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="platform"} 0',
      'tollgate_provider_cost_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="user-alice"} 0.0015',
    ]);
  });

  it('is empty when turned off', async () => {
    expect(await complete(unlabelled, { 'x-tollgate-wallet': 'main' })).toBe('default/main');
    expect(await complete(unlabelled, { 'x-tollgate-wallet': 'platform', 'x-tollgate-end-user': 'alice' })).toBe('default/user-alice');

    expect(await moneySeries(unlabelled)).toEqual([
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet=""} 0.006',
      'tollgate_provider_cost_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet=""} 0.003',
    ]);
  });
});
