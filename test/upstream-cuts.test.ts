/**
 * Responses the sidecar cannot relay whole: an upstream that cuts a
 * response after its headers, and a JSON response above the sidecar's size
 * limit. The client gets a clear end (an error or a closed connection), and
 * the error of a billed call names its charge.
 */
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatAmount } from '../src/money/money.ts';
import { startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

/** The sidecar's response size limit in this test, below the simulator's usual completion. */
const RESPONSE_LIMIT = 200;

/** Starts a server that replies to each connection with headers and part of a JSON body, then resets it. */
function startCuttingUpstream(): Promise<Server> {
  const server = createServer((socket) => {
    socket.once('data', () => {
      socket.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"object":"list","data":[');
      setTimeout(() => socket.resetAndDestroy(), 50);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

function manifests(cutPort: number): string {
  return `
apiVersion: v1
kind: Secret
metadata: { name: keys }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: cut }
spec:
  protocol: openai
  baseURL: http://127.0.0.1:${cutPort}
  models: [gpt-4o-mini]
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
${['cut', 'large']
  .map(
    (name) => `---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name} }
spec:
  currency: USD
  pricePlanRef: { name: plan }
  grants: [{ id: start, amount: "1.00" }]`,
  )
  .join('\n')}
`;
}

let upstream: Server;
let stack: Stack;

beforeAll(async () => {
  upstream = await startCuttingUpstream();
  stack = await startStack(manifests((upstream.address() as AddressInfo).port), { maxResponseBytes: RESPONSE_LIMIT });
});

afterAll(async () => {
  await stack?.close();
  await new Promise((resolve) => upstream?.close(resolve));
});

async function chat(prefix: string, wallet: string) {
  const response = await request(`${stack.url}/${prefix}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-tollgate-wallet': wallet },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }], max_tokens: 50 }),
  });
  return { status: response.statusCode, body: (await response.body.json()) as { error: { code: string; message: string } } };
}

async function spent(wallet: string): Promise<bigint> {
  return (await stack.ledger.state({ namespace: 'default', name: wallet })).spent;
}

describe('upstream cuts', () => {
  it('closes the client connection of a cut pass-through', async () => {
    const response = await request(`${stack.url}/cut/v1/models`, { bodyTimeout: 5_000 });
    expect(response.statusCode).toBe(200);

    const error = await response.body.text().then(
      () => undefined,
      (caught: unknown) => caught as { code?: string },
    );
    // A body timeout (UND_ERR_BODY_TIMEOUT) would mean the sidecar left the connection open.
    expect(error?.code).toBe('UND_ERR_SOCKET');
  });

  it('answers 502 with the charge for a cut JSON response', async () => {
    const { status, body } = await chat('cut', 'cut');

    expect(status).toBe(502);
    expect(body.error.code).toBe('upstream_cut');
    const charged = await spent('cut');
    expect(charged).toBeGreaterThan(0n);
    expect(body.error.message).toContain(`billed on an estimate of ${formatAmount(charged)} USD`);
  });

  it('answers 502 with the limit for a response above it', async () => {
    const { status, body } = await chat('openai', 'large');

    expect(status).toBe(502);
    expect(body.error.code).toBe('response_too_large');
    expect(body.error.message).toContain(`limit of ${RESPONSE_LIMIT} bytes`);
    const charged = await spent('large');
    expect(charged).toBeGreaterThan(0n);
    expect(body.error.message).toContain(`billed on an estimate of ${formatAmount(charged)} USD`);
  });
});
