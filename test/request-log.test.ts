/**
 * The sidecar's log has one line per request at info level: "request
 * settled" for a billed call and "request rejected" for a rejected one, with
 * the status, the error code and the message the client got.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { Client, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SMALL_MANIFESTS, startStack, type Stack } from './support/stack.ts';

/** The small stack's manifests, and a route whose upstream port nothing listens on. */
const MANIFESTS = `${SMALL_MANIFESTS}
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: closed }
spec:
  protocol: openai
  baseURL: http://127.0.0.1:1
  credentialSecretRef: { name: keys, key: apiKey }
  models: [gpt-4o-mini]
`;

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

const lines: LogLine[] = [];
let stack: Stack;

beforeAll(async () => {
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  stack = await startStack(MANIFESTS, {}, pino({ level: 'info' }, sink));
});

afterAll(async () => {
  await stack?.close();
});

async function chat(model: string, wallet: string, headers: Record<string, string> = {}, route = 'openai'): Promise<number> {
  const response = await request(`${stack.url}/${route}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-tollgate-wallet': wallet, ...headers },
    body: JSON.stringify({ model, max_tokens: 8, messages: [{ role: 'user', content: 'hi' }] }),
  });
  await response.body.text();
  return response.statusCode;
}

function linesWith(message: string): LogLine[] {
  return lines.filter((line) => line.msg === message);
}

describe('request log', () => {
  it('logs a settled request once', async () => {
    expect(await chat('gpt-4o-mini', 'team')).toBe(200);
    const settled = linesWith('request settled');
    expect(settled).toHaveLength(1);
    expect(settled[0]!['wallet']).toBe('default/team');
    expect(linesWith('request rejected')).toHaveLength(0);
  });

  it('logs a rejected request with its code', async () => {
    expect(await chat('gpt-5-ultra', 'team')).toBe(400);
    const rejected = linesWith('request rejected');
    expect(rejected).toHaveLength(1);
    expect(rejected[0]!['level']).toBe(30);
    expect(rejected[0]!['status']).toBe(400);
    expect(rejected[0]!['code']).toBe('unknown_model');
    expect(rejected[0]!['route']).toBe('openai');
    expect(String(rejected[0]!['reason'])).toContain('gpt-5-ultra');
  });

  it('logs an unknown wallet as a denial', async () => {
    expect(await chat('gpt-4o-mini', 'nobody')).toBe(403);
    const rejected = linesWith('request rejected');
    expect(rejected).toHaveLength(2);
    expect(rejected[1]!['code']).toBe('wallet_not_found');
    expect(linesWith('request settled')).toHaveLength(1);
  });

  it('logs an upstream error status', async () => {
    expect(await chat('gpt-4o-mini', 'team', { 'x-sim-status': '500' })).toBe(500);
    expect(await chat('gpt-4o-mini', 'team', { 'x-sim-status': '400' })).toBe(400);
    const failed = linesWith('upstream returned an error; nothing was charged');
    expect(failed.map((line) => [line.level, line['status'], line['route'], line['model']])).toEqual([
      [40, 500, 'openai', 'gpt-4o-mini'],
      [30, 400, 'openai', 'gpt-4o-mini'],
    ]);
    expect(linesWith('request settled')).toHaveLength(1);
  });

  it('logs an unreachable upstream', async () => {
    expect(await chat('gpt-4o-mini', 'team', {}, 'closed')).toBe(502);
    const failed = linesWith('request failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]!.level).toBe(40);
    expect(failed[0]!['code']).toBe('upstream_unreachable');
    expect(failed[0]!['route']).toBe('closed');
    expect(String(failed[0]!['reason'])).toContain('provider route "closed" could not be reached at http://127.0.0.1:1: ');
  });

  it('logs a client that leaves a stream at info', async () => {
    const controller = new AbortController();
    // Its own client, closed below, so that no spare connection of the shared pool keeps the server open at the end.
    const client = new Client(stack.url);
    const response = await client.request({
      path: '/openai/v1/chat/completions',
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-tollgate-wallet': 'team', 'x-sim-chunks': '50', 'x-sim-chunk-delay-ms': '20' },
      body: JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 64, stream: true, messages: [{ role: 'user', content: 'hi' }] }),
      signal: controller.signal,
    });
    for await (const _chunk of response.body) break;
    controller.abort();
    await client.destroy();

    await expect.poll(() => linesWith('stream ended early; charging the output seen so far').length, { interval: 20, timeout: 5000 }).toBe(1);
    const [ended] = linesWith('stream ended early; charging the output seen so far');
    expect(ended!.level).toBe(30);
    expect(ended!['reason']).toBe('client_disconnect');
    expect(ended!['err']).toBeUndefined();
  });

  it('names the request id and wallet of a rejection', async () => {
    expect(await chat('gpt-4o-mini', 'team', { 'idempotency-key': 'log-key-1' })).toBe(200);
    // A repeat of a finished request is rejected after the ledger saw its id.
    expect(await chat('gpt-4o-mini', 'team', { 'idempotency-key': 'log-key-1' })).toBe(400);
    const repeat = linesWith('request rejected').at(-1)!;
    expect(repeat['code']).toBe('request_id_conflict');
    expect(repeat['requestId']).toBe('log-key-1');
    expect(repeat['wallet']).toBe('default/team');

    // A rejection before the reserve names the caller's id, and no wallet when none was found.
    expect(await chat('gpt-5-ultra', 'team', { 'idempotency-key': 'log-key-2' })).toBe(400);
    const unknown = linesWith('request rejected').at(-1)!;
    expect(unknown['code']).toBe('unknown_model');
    expect(unknown['requestId']).toBe('log-key-2');
    expect(await chat('gpt-4o-mini', 'nobody', { 'idempotency-key': 'log-key-3' })).toBe(403);
    const noWallet = linesWith('request rejected').at(-1)!;
    expect(noWallet['requestId']).toBe('log-key-3');
    expect(noWallet['wallet']).toBeUndefined();
    // Without a caller's id, a rejection before the reserve has none.
    expect(await chat('gpt-5-ultra', 'team')).toBe(400);
    expect(linesWith('request rejected').at(-1)!['requestId']).toBeUndefined();
  });
});
