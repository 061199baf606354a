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
import { compileYaml, SMALL_MANIFESTS, startStack, type Stack } from './support/stack.ts';


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
    stack = await startStack(SMALL_MANIFESTS);
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
    const config = new StaticConfig(compileYaml(SMALL_MANIFESTS, 'http://127.0.0.1:9'));
    const admin = createAdminServer(config, createSidecarMetrics({ defaultMetrics: false }));
    const url = await admin.listen({ host: '127.0.0.1', port: 0 });
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    const spare = await unusedConnection(url);

    await admin.close();
    await spare.closed;
    expect(admin.server.listening).toBe(false);
  });
});
