/**
 * GET requests pass through the sidecar unmetered. When the upstream cuts
 * such a response after its headers, the sidecar closes the client's
 * connection instead of leaving it open.
 */
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, type Stack } from './support/stack.ts';

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

let upstream: Server;
let stack: Stack;

beforeAll(async () => {
  upstream = await startCuttingUpstream();
  const { port } = upstream.address() as AddressInfo;
  stack = await startStack(`
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: cut }
spec:
  protocol: openai
  baseURL: http://127.0.0.1:${port}
  models: [gpt-4o-mini]
`);
});

afterAll(async () => {
  await stack?.close();
  await new Promise((resolve) => upstream?.close(resolve));
});

describe('pass-through', () => {
  it('closes the client connection when the upstream cuts', async () => {
    const response = await request(`${stack.url}/cut/v1/models`, { bodyTimeout: 5_000 });
    expect(response.statusCode).toBe(200);

    const error = await response.body.text().then(
      () => undefined,
      (caught: unknown) => caught as { code?: string },
    );
    // A body timeout (UND_ERR_BODY_TIMEOUT) would mean the sidecar left the connection open.
    expect(error?.code).toBe('UND_ERR_SOCKET');
  });
});
