/**
 * Request bodies, sidecar manifests and prices of the benchmark. The prices
 * make a request's cost exact and known in advance.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatAmount } from '../src/money/index.ts';

/** The only credential the upstream simulator accepts; the peers' launchers send it by default. */
export const UPSTREAM_KEY = 'sk-bench-upstream';

/** Model of the overhead and streaming measurements. */
export const MODEL = 'bench-model';

/** Model of the overspend scenario, so that LiteLLM keeps its spend apart from the overhead runs. */
export const BUDGET_MODEL = 'bench-budget-model';

/** Simulator controls that a gateway must pass through to the upstream. */
export const SIMULATOR_HEADERS = ['x-sim-chunks', 'x-sim-output-tokens', 'x-sim-latency-ms', 'x-sim-usage'];

/** Wallet of the overhead and streaming measurements; its grant never runs out during a run. */
export const BENCH_WALLET = 'default/bench';
/** Wallet of the overspend scenario, granted exactly what a given number of requests may cost. */
export const OVERSPEND_WALLET = 'default/overspend';

const BENCH_GRANT_USD = '1000000';

/**
 * Prices of both models, in USD per million tokens: the manifests charge
 * 1 USD per million input tokens and 2 USD per million output tokens, that is
 * 1000 and 2000 nano-USD per token, with no markup and no per-request fee.
 */
const INPUT_USD_PER_MILLION = '1';
const OUTPUT_USD_PER_MILLION = '2';
export const NANO_PER_INPUT_TOKEN = 1000n;
export const NANO_PER_OUTPUT_TOKEN = 2000n;

/** Returns the small non-streamed chat completion of the overhead measurement. */
export function chatBody(model: string): string {
  return JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello.' }], max_tokens: 16 });
}

/** Returns a streamed chat completion that requests `tokens` output tokens and usage in the last chunk. */
export function streamBody(model: string, tokens: number): string {
  return JSON.stringify({
    model,
    messages: [{ role: 'user', content: 'Tell a long story.' }],
    max_tokens: tokens,
    stream: true,
    stream_options: { include_usage: true },
  });
}

/**
 * The request of the overspend scenario and its exact cost. The simulator
 * reports as usage the same token counts that Tollgate holds for the worst
 * case (one prompt token per body byte plus the whole output limit), so each
 * admitted request costs exactly its hold, and a wallet granted N holds pays
 * for exactly N requests.
 */
export interface CostedRequest {
  body: string;
  /** The simulator headers that fix the latency and the reported usage. */
  headers: Record<string, string>;
  /** Tollgate's charge for one request, in nano-USD. */
  costNano: bigint;
}

export function overspendRequest(model: string, latencyMs: number): CostedRequest {
  const outputTokens = 16;
  const body = JSON.stringify({ model, messages: [{ role: 'user', content: 'Summarize the ledger.' }], max_tokens: outputTokens });
  const promptTokens = Buffer.byteLength(body);
  const usage = { prompt_tokens: promptTokens, completion_tokens: outputTokens, total_tokens: promptTokens + outputTokens };
  return {
    body,
    headers: { 'x-sim-latency-ms': String(latencyMs), 'x-sim-usage': JSON.stringify(usage) },
    costNano: BigInt(promptTokens) * NANO_PER_INPUT_TOKEN + BigInt(outputTokens) * NANO_PER_OUTPUT_TOKEN,
  };
}

/** LiteLLM's per-token prices, which equal Tollgate's, as USD decimal strings. */
export const LITELLM_PRICES = {
  inputPricePerToken: formatAmount(NANO_PER_INPUT_TOKEN, 0),
  outputPricePerToken: formatAmount(NANO_PER_OUTPUT_TOKEN, 0),
};

/**
 * Writes the manifests of the benchmark's sidecars into `dir`: one route to
 * the simulator with its key in a Secret, one price plan, the bench wallet
 * and the overspend wallet with `overspendGrant` nano-USD.
 */
export async function writeManifests(dir: string, simulatorUrl: string, overspendGrant: bigint): Promise<void> {
  await mkdir(dir, { recursive: true });
  const rates = `{ input: "${INPUT_USD_PER_MILLION}", output: "${OUTPUT_USD_PER_MILLION}" }`;
  const wallet = (name: string, amount: string) => `apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name.split('/')[1]}, namespace: ${name.split('/')[0]} }
spec:
  currency: USD
  pricePlanRef: { name: bench }
  grants: [{ id: bench-grant, amount: "${amount}" }]`;

  const documents = [
    `apiVersion: v1
kind: Secret
metadata: { name: upstream-key, namespace: default }
stringData: { apiKey: ${UPSTREAM_KEY} }`,
    `apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai, namespace: default }
spec:
  protocol: openai
  baseURL: ${simulatorUrl}
  credentialSecretRef: { name: upstream-key, key: apiKey }
  models: [${MODEL}, ${BUDGET_MODEL}]`,
    `apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: bench, namespace: default }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        ${MODEL}: ${rates}
        ${BUDGET_MODEL}: ${rates}`,
    wallet(BENCH_WALLET, BENCH_GRANT_USD),
    wallet(OVERSPEND_WALLET, `${overspendGrant}n`),
  ];
  await writeFile(join(dir, 'bench.yaml'), `${documents.join('\n---\n')}\n`);
}
