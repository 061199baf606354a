/**
 * A stopping sidecar ends connections that clients opened and never used.
 * Node's server.close() would wait for such a connection until it timed out,
 * about 70 s, so these tests would run into vitest's timeout without it.
 */
import { once } from 'node:events';
import net from 'node:net';
import { Client } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { StaticConfig } from '../sidecar/config-source.ts';
import { createAdminServer } from '../sidecar/server.ts';
import { createSidecarMetrics } from '../src/telemetry/metrics.ts';
import { compileYaml, startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

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
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: plan }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gpt-4o-mini: { input: "1", output: "2" }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: team }
spec:
  currency: USD
  pricePlanRef: { name: plan }
  grants: [{ id: start, amount: "1.00" }]
`;

let stack: Stack | undefined;

afterEach(async () => {
  await stack?.close();
  stack = undefined;
});

/** Opens a TCP connection that sends nothing, as an HTTP client's spare connection does. */
async function unusedConnection(url: string): Promise<{ closed: Promise<unknown> }> {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  await once(socket, 'connect');
  return { closed: once(socket, 'close') };
}

describe('closing the sidecar', () => {
  it('ends an unused connection', async () => {
    stack = await startStack(MANIFESTS);
    const client = new Client(stack.url);
    const response = await client.request({
      path: '/openai/v1/chat/completions',
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-tollgate-wallet': 'team' },
      body: JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 8, messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(response.statusCode).toBe(200);
    await response.body.text();
    const spare = await unusedConnection(stack.url);

    await stack.sidecar.app.close();
    await spare.closed;
    await client.close();
  });

  it('ends an unused admin connection', async () => {
    const config = new StaticConfig(compileYaml(MANIFESTS, 'http://127.0.0.1:9'));
    const admin = createAdminServer(config, createSidecarMetrics({ defaultMetrics: false }));
    const url = await admin.listen({ host: '127.0.0.1', port: 0 });
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    const spare = await unusedConnection(url);

    await admin.close();
    await spare.closed;
    expect(admin.server.listening).toBe(false);
  });
});
