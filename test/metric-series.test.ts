/**
 * The sidecar creates the series of its money, request and denial counters at
 * 0 before their first increment, for each route, listed model and wallet it
 * may charge, so that Prometheus's increase() over a range counts the first
 * charge too. Runs the sidecar on a real redis-server and the simulator.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

function manifests(models: string[]): string {
  return `
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
  models: [${models.join(', ')}]
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: plan }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
${models.map((model) => `        ${model}: { input: "1", output: "2" }`).join('\n')}
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: team }
spec:
  currency: USD
  pricePlanRef: { name: plan }
  grants: [{ id: start, amount: "10.00" }]
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: other }
spec:
  currency: USD
  pricePlanRef: { name: plan }
  grants: [{ id: start, amount: "10.00" }]
`;
}

let stack: Stack | undefined;

afterEach(async () => {
  await stack?.close();
  stack = undefined;
});

/** Returns the lines of one metric from the sidecar's /metrics, without HELP and TYPE. */
async function series(name: string): Promise<string[]> {
  const text = await (await fetch(`${stack!.url}/metrics`)).text();
  return text
    .split('\n')
    .filter((line) => line.startsWith(`${name}{`))
    .sort();
}

async function chat(wallet: string, model: string): Promise<Response> {
  return fetch(`${stack!.url}/openai/v1/chat/completions`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'x-tollgate-wallet': wallet,
      // 1,000 input and 500 output tokens at 1 and 2 per million: 0.002 USD.
      'x-sim-usage': JSON.stringify({ prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500 }),
    },
    body: JSON.stringify({ model, max_tokens: 600, messages: [{ role: 'user', content: 'count me' }] }),
  });
}

describe('metric series before the first request', () => {
  it('exist at 0 for each model and wallet', async () => {
    stack = await startStack(manifests(['gpt-4o-mini', 'gpt-4.1']));

    expect(await series('tollgate_charged_total')).toEqual([
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4.1",namespace="default",wallet="other"} 0',
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4.1",namespace="default",wallet="team"} 0',
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="other"} 0',
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="team"} 0',
    ]);
    expect(await series('tollgate_provider_cost_total')).toHaveLength(4);
    expect(await series('tollgate_requests_total')).toEqual([
      'tollgate_requests_total{route="openai",model="gpt-4.1",outcome="admitted"} 0',
      'tollgate_requests_total{route="openai",model="gpt-4.1",outcome="denied"} 0',
      'tollgate_requests_total{route="openai",model="gpt-4o-mini",outcome="admitted"} 0',
      'tollgate_requests_total{route="openai",model="gpt-4o-mini",outcome="denied"} 0',
    ]);
    const denials = await series('tollgate_denials_total');
    expect(denials).toHaveLength(9);
    expect(denials).toContain('tollgate_denials_total{route="openai",reason="insufficient_funds"} 0');

    const response = await chat('team', 'gpt-4o-mini');
    expect(response.status).toBe(200);
    expect(await series('tollgate_charged_total')).toContain(
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="team"} 0.002',
    );
    expect(await series('tollgate_requests_total')).toContain('tollgate_requests_total{route="openai",model="gpt-4o-mini",outcome="admitted"} 1');
  });

  it('cover only the pod wallet in pod mode', async () => {
    stack = await startStack(manifests(['gpt-4o-mini']), { walletPolicy: { defaultWallet: 'default/team', allowWalletHeader: false } });

    expect(await series('tollgate_charged_total')).toEqual([
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="team"} 0',
    ]);
  });

  it('leave the wallet empty without the label', async () => {
    stack = await startStack(manifests(['gpt-4o-mini']), { walletLabel: false });

    expect(await series('tollgate_charged_total')).toEqual([
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet=""} 0',
    ]);
  });

  it('follow a configuration change', async () => {
    stack = await startStack(manifests(['gpt-4o-mini']));
    await stack.reconfigure(manifests(['gpt-4o-mini', 'o4-mini']));

    const response = await chat('other', 'gpt-4o-mini');
    expect(response.status).toBe(200);
    expect(await series('tollgate_charged_total')).toContain(
      'tollgate_charged_total{currency="USD",route="openai",model="o4-mini",namespace="default",wallet="team"} 0',
    );
  });
});
