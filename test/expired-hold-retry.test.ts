/**
 * A retry under the same Idempotency-Key after the first request's hold
 * expired unanswered, as when the sidecar serving it stopped mid-call: the
 * retry is refused with a message that says no charge was made, and the
 * first call, when it completes after all, is charged once. Runs the
 * sidecar on a real redis-server with a hold lifetime of 50 ms, against the
 * provider simulator, with the official openai client.
 */
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SMALL_MANIFESTS, startStack, type Stack } from './support/stack.ts';

let stack: Stack;

beforeAll(async () => {
  stack = await startStack(SMALL_MANIFESTS, { holdTtlSeconds: 0.05 });
});

afterAll(async () => {
  await stack?.close();
});

describe('a retry after an unanswered hold expired', () => {
  it('is refused without a charge, and the late first call is charged once', async () => {
    const wallet = { namespace: 'default', name: 'team' };
    const client = new OpenAI({ baseURL: `${stack.url}/openai/v1`, apiKey: 'placeholder', maxRetries: 0 });
    const body = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: 'slow' }], max_tokens: 100 };
    const usage = { prompt_tokens: 1000, completion_tokens: 100, total_tokens: 1100 };
    const headers = { 'x-tollgate-wallet': 'team', 'idempotency-key': 'expired-retry-1', 'x-sim-usage': JSON.stringify(usage) };

    // The upstream answers after 1 s, long after the 50 ms hold expired, so the JSON call's hold is unanswered.
    const before = stack.simulator.stats().requests;
    const first = client.chat.completions.create(body, { headers: { ...headers, 'x-sim-latency-ms': '1000' } }).withResponse();
    // Once the simulator has the first request, its hold is in place; 100 ms later it has expired.
    await expect.poll(() => stack.simulator.stats().requests, { interval: 10, timeout: 5000 }).toBe(before + 1);
    await new Promise((resolve) => setTimeout(resolve, 100));

    const retry = await client.chat.completions.create(body, { headers }).catch((error: unknown) => error);
    expect(retry).toBeInstanceOf(OpenAI.BadRequestError);
    expect((retry as InstanceType<typeof OpenAI.BadRequestError>).error).toMatchObject({
      code: 'request_id_conflict',
      message:
        'request id "expired-retry-1" was settled without a charge: its hold expired before a sidecar recorded a response, as when ' +
        'the sidecar serving it stops mid-call; whether the provider served it is not known, so send a new Idempotency-Key to make the call again',
    });
    expect((await stack.ledger.state(wallet)).spent).toBe(0n);

    // The first call completes after all; its late commit charges it: 1000 input tokens at 1 and 100 output tokens at 2 per million.
    const { response } = await first;
    expect(response.status).toBe(200);
    expect(response.headers.get('x-tollgate-charged')).toBe('0.0012');
    expect(await stack.ledger.state(wallet)).toMatchObject({ spent: 1_200_000n, reserved: 0n, holds: 0, chargedWithoutCost: 0n });
  });
});
