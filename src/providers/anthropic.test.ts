import Anthropic from '@anthropic-ai/sdk';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidRequestError, type RequestInfo } from './adapter.ts';
import { AnthropicAdapter, DEFAULT_ANTHROPIC_VERSION } from './anthropic.ts';

const anthropic = new AnthropicAdapter();
const MESSAGES = '/v1/messages';

const INFO: RequestInfo = { model: 'claude-sonnet-4-5', stream: true, maxOutputTokens: 1024, clientWantsStreamUsage: true, operation: 'chat' };

function event(name: string, data: Record<string, unknown>): string {
  return `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
}

function messageStart(usage: Record<string, unknown>): string {
  return event('message_start', {
    type: 'message_start',
    message: { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude-sonnet-4-5', content: [], stop_reason: null, stop_sequence: null, usage },
  });
}

function textDelta(text: string): string {
  return event('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text } });
}

/** Everything up to the last content delta: the text is "alpha delta echo hotel", four tokens. */
const STREAM_HEAD = [
  messageStart({ input_tokens: 25, cache_creation_input_tokens: 0, cache_read_input_tokens: 0, output_tokens: 1 }),
  event('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
  event('ping', { type: 'ping' }),
  textDelta('alpha'),
  textDelta(' delta echo'),
  textDelta(' hotel'),
].join('');

const STREAM_TAIL = [
  event('content_block_stop', { type: 'content_block_stop', index: 0 }),
  event('message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 15 } }),
  event('message_stop', { type: 'message_stop' }),
].join('');

function meter(input: string, cuts: number[], promptEstimate = 30) {
  const streamMeter = anthropic.createStreamMeter(INFO, promptEstimate);
  const bytes = Buffer.from(input);
  const parts: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    parts.push(streamMeter.push(bytes.subarray(from, cut)));
    from = cut;
  }
  parts.push(streamMeter.flush());
  return { output: Buffer.concat(parts), result: streamMeter.result(), metadata: streamMeter.responseMetadata() };
}

describe('AnthropicAdapter.inspect', () => {
  it('reads a streamed request', () => {
    const info = anthropic.inspect(MESSAGES, { model: 'claude-sonnet-4-5', max_tokens: 1024, stream: true, messages: [] });
    expect(info).toEqual(INFO);
  });

  it('rejects a request without max_tokens naming the field', () => {
    expect(() => anthropic.inspect(MESSAGES, { model: 'claude-sonnet-4-5', messages: [] })).toThrow(InvalidRequestError);
    expect(() => anthropic.inspect(MESSAGES, { model: 'claude-sonnet-4-5', messages: [] })).toThrow(/"max_tokens"/);
  });

  it('rejects a request without a model naming the field', () => {
    expect(() => anthropic.inspect(MESSAGES, { max_tokens: 10 })).toThrow(/"model"/);
  });

  it('rejects an endpoint it cannot meter', () => {
    expect(() => anthropic.inspect('/v1/messages/batches', { model: 'm', max_tokens: 1 })).toThrow(/unsupported endpoint/);
  });
});

describe('AnthropicAdapter.endpointKind', () => {
  it('classifies metered and models endpoints', () => {
    const cases: Array<[string, ReturnType<typeof anthropic.endpointKind>]> = [
      ['/v1/messages', 'metered'],
      ['/v1/models', 'models'],
      ['/v1/models?beta=true&limit=20', 'models'],
      ['/v1/models/claude-sonnet-4-5', 'models'],
      ['/v1/messages/batches', undefined],
      ['/v1/messages/batches/msgbatch_1/results', undefined],
      ['/v1/files', undefined],
      ['/v1/organizations/me', undefined],
      ['/v1/messages/count_tokens', undefined],
      ['/v1/files/file_1/v1/models', undefined],
    ];
    for (const [path, kind] of cases) expect(anthropic.endpointKind(path, ''), path).toBe(kind);
  });
});

describe('AnthropicAdapter.prepare', () => {
  it('sets max_tokens without modifying the client body', () => {
    const body = { model: 'm', max_tokens: 8000 };
    expect(anthropic.prepare(body, anthropic.inspect(MESSAGES, body), { maxOutputTokens: 2000 })).toEqual({ model: 'm', max_tokens: 2000 });
    expect(body.max_tokens).toBe(8000);
  });

  it('keeps the thinking budget below a lowered limit', () => {
    const body = { model: 'm', max_tokens: 8000, thinking: { type: 'enabled', budget_tokens: 4000 } };
    const prepared = anthropic.prepare(body, anthropic.inspect(MESSAGES, body), { maxOutputTokens: 3000 });
    expect(prepared['thinking']).toEqual({ type: 'enabled', budget_tokens: 2999 });
  });
});

describe('Anthropic usage normalization', () => {
  it('counts cache writes once, not again as input', () => {
    const response = {
      content: [{ type: 'text', text: 'ok' }],
      usage: { input_tokens: 3, cache_creation_input_tokens: 12304, cache_read_input_tokens: 0, output_tokens: 550 },
    };
    const { usage, complete } = anthropic.usageFromJson(response, { ...INFO, stream: false }, 12000);
    expect(complete).toBe(true);
    expect(usage).toEqual({ input: 3, cacheRead: 0, cacheWrite5m: 12304, cacheWrite1h: 0, output: 550, reasoning: 0, estimated: false });
  });

  it('splits cache writes by lifetime', () => {
    const response = {
      usage: {
        input_tokens: 10,
        cache_creation_input_tokens: 3000,
        cache_creation: { ephemeral_5m_input_tokens: 1000, ephemeral_1h_input_tokens: 2000 },
        cache_read_input_tokens: 500,
        output_tokens: 7,
      },
    };
    const { usage } = anthropic.usageFromJson(response, { ...INFO, stream: false }, 0);
    expect(usage).toEqual({ input: 10, cacheRead: 500, cacheWrite5m: 1000, cacheWrite1h: 2000, output: 7, reasoning: 0, estimated: false });
  });

  it('counts server tool requests as units', () => {
    const response = { usage: { input_tokens: 10, output_tokens: 7, server_tool_use: { web_search_requests: 2, web_fetch_requests: 0 } } };
    const { usage } = anthropic.usageFromJson(response, { ...INFO, stream: false }, 0);
    expect(usage.units).toEqual({ web_search: 2 });
  });

  it('estimates a response without usage', () => {
    const response = { content: [{ type: 'text', text: 'alpha delta' }, { type: 'thinking', thinking: 'echo' }] };
    const { usage, complete } = anthropic.usageFromJson(response, { ...INFO, stream: false }, 44);
    expect(complete).toBe(false);
    expect(usage).toEqual({ input: 44, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 3, reasoning: 0, estimated: true });
  });

  it('estimates an impossible zero prompt', () => {
    const response = { content: [{ type: 'text', text: 'alpha' }], usage: { input_tokens: 0, output_tokens: 1 } };
    const { usage } = anthropic.usageFromJson(response, { ...INFO, stream: false }, 44);
    expect(usage.input).toBe(44);
    expect(usage.output).toBe(1);
    expect(usage.estimated).toBe(true);
  });
});

describe('Anthropic stream meter', () => {
  const whole = STREAM_HEAD + STREAM_TAIL;

  it('takes the latest usage, never the sum (cumulative usage)', () => {
    for (let cut = 0; cut <= whole.length; cut += 7) {
      const { output, result } = meter(whole, [cut]);
      expect(output.toString('utf8'), `cut at ${cut}`).toBe(whole);
      expect(result.complete).toBe(true);
      expect(result.usage, `cut at ${cut}`).toEqual({ input: 25, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 15, reasoning: 0, estimated: false });
    }
  });

  it('takes updated input counts from message_delta', () => {
    const delta = event('message_delta', {
      type: 'message_delta',
      delta: { stop_reason: 'end_turn' },
      usage: { input_tokens: 30, cache_read_input_tokens: 100, output_tokens: 15, cache_creation_input_tokens: null },
    });
    const { result } = meter(STREAM_HEAD + delta, []);
    expect(result.usage.input).toBe(30);
    expect(result.usage.cacheRead).toBe(100);
    expect(result.usage.output).toBe(15);
  });

  it('estimates the output of a stream cut before message_delta', () => {
    const { output, result } = meter(STREAM_HEAD, [40, 300]);
    expect(output.toString('utf8')).toBe(STREAM_HEAD);
    expect(result.complete).toBe(false);
    expect(result.usage).toEqual({ input: 25, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 4, reasoning: 0, estimated: true });
  });

  it('counts thinking and tool input deltas in a cut stream', () => {
    const head = [
      messageStart({ input_tokens: 25, output_tokens: 1 }),
      event('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'thinking_delta', thinking: 'alpha delta' } }),
      event('content_block_delta', { type: 'content_block_delta', index: 1, delta: { type: 'input_json_delta', partial_json: 'echo' } }),
    ].join('');
    const { result } = meter(head, []);
    expect(result.usage.output).toBe(3);
    expect(result.usage.estimated).toBe(true);
  });

  it('never charges the placeholder output of message_start', () => {
    const { result } = meter(messageStart({ input_tokens: 25, output_tokens: 1 }), []);
    expect(result.usage.output).toBe(0);
    expect(result.usage.input).toBe(25);
    expect(result.complete).toBe(false);
  });

  it('estimates a stream cut before message_start', () => {
    const { result } = meter('event: ping\ndata: {"type":"ping"}\n\n', [], 61);
    expect(result.complete).toBe(false);
    expect(result.usage.input).toBe(61);
    expect(result.usage.estimated).toBe(true);
  });
});

describe('Anthropic stream meter response metadata', () => {
  const whole = STREAM_HEAD + STREAM_TAIL;

  it('reads metadata at every split point', () => {
    for (let cut = 0; cut <= whole.length; cut += 7) {
      const { metadata } = meter(whole, [cut]);
      expect(metadata, `cut at ${cut}`).toEqual({ id: 'msg_1', model: 'claude-sonnet-4-5', finishReasons: ['end_turn'] });
    }
  });

  it('reads a stream cut before message_delta', () => {
    expect(meter(STREAM_HEAD, []).metadata).toEqual({ id: 'msg_1', model: 'claude-sonnet-4-5', finishReasons: [] });
  });

  it('reads a message_start without usage', () => {
    const start = event('message_start', { type: 'message_start', message: { id: 'msg_2', type: 'message', model: 'claude-haiku-4-5', content: [] } });
    expect(meter(start, []).metadata).toEqual({ id: 'msg_2', model: 'claude-haiku-4-5', finishReasons: [] });
  });

  it('ignores a null stop reason', () => {
    const delta = event('message_delta', { type: 'message_delta', delta: { stop_reason: null }, usage: { output_tokens: 15 } });
    expect(meter(STREAM_HEAD + delta, []).metadata.finishReasons).toEqual([]);
  });

  it('reads nothing before message_start', () => {
    expect(meter('event: ping\ndata: {"type":"ping"}\n\n', []).metadata).toEqual({ id: undefined, model: undefined, finishReasons: [] });
  });
});

describe('Anthropic error body and headers', () => {
  let server: Server | undefined;
  afterEach(() => {
    server?.close();
    server = undefined;
  });

  it('surfaces its message through the Anthropic SDK', async () => {
    const body = anthropic.errorBody({ status: 402, code: 'insufficient_funds', message: 'wallet team-a cannot pay 0.05 USD; add funds' });
    server = createServer((request, response) => {
      request.resume();
      response.writeHead(402, { 'content-type': 'application/json' });
      response.end(JSON.stringify(body));
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const client = new Anthropic({ apiKey: 'unused', baseURL: `http://127.0.0.1:${port}`, maxRetries: 0 });

    const error = await client.messages
      .create({ model: 'claude-sonnet-4-5', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(Anthropic.PaymentRequiredError);
    const apiError = error as InstanceType<typeof Anthropic.APIError>;
    expect(apiError.status).toBe(402);
    expect(apiError.type).toBe('billing_error');
    expect(apiError.apiMessage).toBe('wallet team-a cannot pay 0.05 USD; add funds');
    expect(apiError.message).toContain('402 wallet team-a cannot pay 0.05 USD; add funds');
    expect(apiError.errorCode).toBe('insufficient_funds');
  });

  it('sends the key as x-api-key and a default API version', () => {
    expect(anthropic.credentialHeaders('sk-ant-test')).toEqual({ 'x-api-key': 'sk-ant-test' });
    expect(anthropic.defaultHeaders).toEqual({ 'anthropic-version': DEFAULT_ANTHROPIC_VERSION });
  });
});

describe('Anthropic server tool limits', () => {
  const tools = [
    { name: 'lookup', input_schema: { type: 'object' } },
    { type: 'web_search_20250305', name: 'web_search', max_uses: 3 },
    { type: 'web_fetch_20250910', name: 'web_fetch' },
    { type: 'code_execution_20250825', name: 'code_execution' },
  ];
  const body = { model: 'claude-sonnet-4-5', max_tokens: 100, messages: [], tools };

  it('reads max_uses of web search and fetch tools', () => {
    expect(anthropic.inspect(MESSAGES, body).toolUseLimits).toEqual([
      { field: 'tools[1].max_uses', tools: 'the web_search_20250305 tool', units: ['web_search'], maxUses: 3, toolIndex: 1 },
      { field: 'tools[2].max_uses', tools: 'the web_fetch_20250910 tool', units: ['web_fetch'], maxUses: undefined, toolIndex: 2 },
    ]);
  });

  it('leaves requests without those tools unlimited', () => {
    expect(anthropic.inspect(MESSAGES, { ...body, tools: [tools[0], tools[3]] }).toolUseLimits).toBeUndefined();
  });

  it('rejects a malformed max_uses naming the tool', () => {
    const bad = { ...body, tools: [{ type: 'web_search_20260209', name: 'web_search', max_uses: 0 }] };
    expect(() => anthropic.inspect(MESSAGES, bad)).toThrow('invalid field "tools[0].max_uses": expected a positive integer, got 0');
  });

  it('sets max_uses only on the limits the sidecar chose', () => {
    const info = anthropic.inspect(MESSAGES, body);
    const prepared = anthropic.prepare(body, info, { toolUseLimits: new Map([[info.toolUseLimits![1]!, 2]]) });
    expect(prepared).toEqual({ ...body, tools: [tools[0], tools[1], { ...tools[2], max_uses: 2 }, tools[3]] });
    expect(body.tools[2]).not.toHaveProperty('max_uses');
  });

  it('never raises a client max_uses', () => {
    const info = anthropic.inspect(MESSAGES, body);
    const prepared = anthropic.prepare(body, info, { toolUseLimits: new Map([[info.toolUseLimits![0]!, 5]]) });
    expect(prepared['tools']).toEqual(tools);
  });

  it('counts the tool uses of a stream cut before message_delta', () => {
    const toolUse = (index: number, name: string) =>
      event('content_block_start', { type: 'content_block_start', index, content_block: { type: 'server_tool_use', id: `srvtoolu_${index}`, name, input: {} } });
    const result = event('content_block_start', {
      type: 'content_block_start',
      index: 1,
      content_block: { type: 'web_search_tool_result', tool_use_id: 'srvtoolu_0', content: [] },
    });
    const stream = [
      messageStart({ input_tokens: 25, output_tokens: 1, server_tool_use: { web_search_requests: 0, web_fetch_requests: 0 } }),
      toolUse(0, 'web_search'),
      result,
      toolUse(2, 'web_search'),
      toolUse(3, 'web_fetch'),
      toolUse(4, 'code_execution'),
    ].join('');
    const { result: metered } = meter(stream, []);
    expect(metered.complete).toBe(false);
    expect(metered.usage.units).toEqual({ web_search: 2, web_fetch: 1 });
  });

  it('takes the final tool uses of message_delta', () => {
    const stream = [
      messageStart({ input_tokens: 25, output_tokens: 1 }),
      event('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'server_tool_use', id: 'srvtoolu_0', name: 'web_search', input: {} } }),
      event('message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 15, server_tool_use: { web_search_requests: 3, web_fetch_requests: 0 } } }),
    ].join('');
    expect(meter(stream, []).result.usage.units).toEqual({ web_search: 3 });
  });
});
