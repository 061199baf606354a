/**
 * Local mode (`tollgate dev`) with an azure-openai route in the manifests: a
 * route without a key is served by the simulator's Azure endpoints, and the
 * `AzureOpenAI` client is billed through the in-memory ledger.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AzureOpenAI } from 'openai';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generatedText } from '../src/simulator/index.ts';
import { startDev, type DevServer } from '../sidecar/dev.ts';

const ROUTE = `
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: azure }
spec:
  protocol: azure-openai
  # Replaced by the simulator's address when no key is configured. Port 9 is
  # discard, so a route that kept it would fail instead of reaching a host.
  baseURL: http://127.0.0.1:9
  credentialSecretRef: { name: azure-credentials, key: apiKey }
  models: [gpt-4o-mini]
  deployments:
    - { name: chat-mini, model: gpt-4o-mini }
  costs:
    gpt-4o-mini: { input: "0.15", output: "0.60" }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: standard }
spec:
  currency: USD
  versions: [{ effectiveFrom: "2026-01-01T00:00:00Z", markupPercent: "20" }]
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: dev }
spec:
  currency: USD
  pricePlanRef: { name: standard }
  grants: [{ id: start, amount: "1.00" }]
`;

let dir: string;
const servers: DevServer[] = [];

async function startLocal(env: NodeJS.ProcessEnv): Promise<DevServer> {
  const server = await startDev({
    manifests: dir,
    host: '127.0.0.1',
    port: 0,
    redisUrl: undefined,
    wallet: undefined,
    env,
    log: pino({ level: 'silent' }),
    watch: false,
  });
  servers.push(server);
  return server;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-azure-dev-'));
  await writeFile(path.join(dir, 'resources.yaml'), ROUTE);
});

afterAll(async () => {
  for (const server of servers) await server.close();
  await rm(dir, { recursive: true, force: true });
});

describe('tollgate dev with an azure-openai route', () => {
  it('serves the route from the simulator and bills the call', async () => {
    const server = await startLocal({});
    expect(server.simulated).toEqual(['azure']);

    const client = new AzureOpenAI({ endpoint: `${server.url}/azure`, apiKey: 'unused', apiVersion: '2024-10-21', deployment: 'chat-mini', maxRetries: 0 });
    const completion = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'alpha delta echo' }] });
    expect(completion.choices[0]?.message.content).toBe(generatedText(16));

    const state = await server.ledger.state({ namespace: 'default', name: 'dev' });
    // 3 prompt tokens at 0.15 and 16 output tokens at 0.60 per million, plus 20 %: (450 + 9600) x 1.2 nano-USD.
    expect(state.spent).toBe(12_060n);
    expect(state.providerCost).toBe(10_050n);
  });

  it('uses AZURE_OPENAI_API_KEY instead of the simulator', async () => {
    const server = await startLocal({ AZURE_OPENAI_API_KEY: 'key-from-env' });
    expect(server.simulated).toEqual([]);
    expect(server.simulatorUrl).toBeUndefined();
    expect(server.config.current().routes.get('/azure')?.credential).toBe('key-from-env');
  });
});
