/**
 * A route's spec.timeouts.connectSeconds limits how long the sidecar waits to
 * open a connection to the provider. The provider here is a loopback socket
 * that listens but never accepts: once its accept queue is full, the kernel
 * drops further connection attempts, so they hang until the client gives up.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

// Python's listen() takes a backlog without an accept loop, which Node's net.Server does not offer.
const NEVER_ACCEPTS = `
import socket, sys, time
server = socket.socket()
server.bind(('127.0.0.1', 0))
server.listen(0)
print(server.getsockname()[1], flush=True)
time.sleep(120)
`;

let listener: ChildProcess;
let port: number;
const fillers: net.Socket[] = [];
let stack: Stack;

beforeAll(async () => {
  listener = spawn('python3', ['-c', NEVER_ACCEPTS], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = (await once(listener.stdout!, 'data')) as [Buffer];
  port = Number(line.toString().trim());
  // Fill the accept queue, so that the sidecar's own connection attempt hangs.
  for (let i = 0; i < 4; i++) {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    fillers.push(socket);
  }
  await new Promise((resolve) => setTimeout(resolve, 200));

  stack = await startStack(`
apiVersion: v1
kind: Secret
metadata: { name: keys }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: stalled }
spec:
  protocol: openai
  baseURL: http://127.0.0.1:${port}
  credentialSecretRef: { name: keys, key: apiKey }
  models: [gpt-4o-mini]
  timeouts: { connectSeconds: 1 }
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
  grants: [{ id: start, amount: "10.00" }]
`);
});

afterAll(async () => {
  await stack?.close();
  for (const socket of fillers) socket.destroy();
  listener?.kill();
});

describe('connect timeout', () => {
  it('uses the route setting and charges nothing', async () => {
    const response = await fetch(`${stack.url}/stalled/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-tollgate-wallet': 'team' },
      body: JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }),
    });
    const { error } = (await response.json()) as { error: { code: string; message: string } };

    expect(response.status).toBe(502);
    expect(error.code).toBe('upstream_unreachable');
    // undici names the timeout it applied, which is the route's 1 s instead of the default 10 s.
    expect(error.message).toContain(`attempted address: 127.0.0.1:${port}, timeout: 1000ms`);
    const state = await stack.ledger.state({ namespace: 'default', name: 'team' });
    expect(state.spent).toBe(0n);
    expect(state.reserved).toBe(0n);
  });
});
