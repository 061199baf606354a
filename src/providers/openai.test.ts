import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidRequestError, type RequestInfo } from './adapter.ts';
import { OpenAIAdapter } from './openai.ts';

const openai = new OpenAIAdapter('openai');
const compatible = new OpenAIAdapter('openai-compatible');

const CHAT = '/v1/chat/completions';

function chatInfo(overrides: Partial<RequestInfo> = {}): RequestInfo {
  return { model: 'gpt-4o', stream: true, maxOutputTokens: undefined, clientWantsStreamUsage: false, operation: 'chat', ...overrides };
}

/** Builds one chunk event; with `usageNull` it carries `"usage":null` as OpenAI's do under include_usage. */
function chunkEvent(delta: Record<string, unknown>, finishReason: string | null, usageNull: boolean): string {
  const chunk: Record<string, unknown> = {
    id: 'chatcmpl-1',
    object: 'chat.completion.chunk',
    created: 1700000000,
    model: 'gpt-4o-2024-08-06',
    system_fingerprint: 'fp_1',
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
  };
  if (usageNull) chunk['usage'] = null;
  return `data: ${JSON.stringify(chunk)}\n\n`;
}

const STREAM_USAGE = {
  prompt_tokens: 40,
  completion_tokens: 4,
  total_tokens: 44,
  prompt_tokens_details: { cached_tokens: 0 },
  completion_tokens_details: { reasoning_tokens: 0 },
};

/** Events of a stream whose text is "alpha delta echo hotel" (four tokens). */
function streamEvents(usageNull: boolean): string[] {
  return [
    chunkEvent({ role: 'assistant', content: '', refusal: null }, null, usageNull),
    chunkEvent({ content: 'alpha' }, null, usageNull),
    chunkEvent({ content: ' delta echo' }, null, usageNull),
    chunkEvent({ content: ' hotel' }, null, usageNull),
    chunkEvent({}, 'stop', usageNull),
  ];
}

const USAGE_EVENT = `data: ${JSON.stringify({
  id: 'chatcmpl-1',
  object: 'chat.completion.chunk',
  created: 1700000000,
  model: 'gpt-4o-2024-08-06',
  system_fingerprint: 'fp_1',
  choices: [],
  usage: STREAM_USAGE,
})}\n\n`;
const DONE = 'data: [DONE]\n\n';

/** Pushes `input` through a meter in pieces cut at `cuts` and returns what the client receives. */
function meter(info: RequestInfo, input: string, cuts: number[], promptEstimate = 40) {
  const streamMeter = openai.createStreamMeter(info, promptEstimate);
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

describe('OpenAIAdapter.inspect', () => {
  it('reads a streamed chat request', () => {
    const info = openai.inspect(CHAT, {
      model: 'gpt-4o',
      stream: true,
      max_completion_tokens: 300,
      stream_options: { include_usage: true },
      messages: [],
    });
    expect(info).toEqual({ model: 'gpt-4o', stream: true, maxOutputTokens: 300, clientWantsStreamUsage: true, operation: 'chat' });
  });

  it('reads max_tokens when max_completion_tokens is absent', () => {
    expect(openai.inspect(CHAT, { model: 'm', max_tokens: 120 }).maxOutputTokens).toBe(120);
  });

  it('multiplies the output limit by n', () => {
    expect(openai.inspect(CHAT, { model: 'm', max_tokens: 100, n: 3 }).maxOutputTokens).toBe(300);
  });

  it('leaves the limit unset when the client set none', () => {
    const info = openai.inspect(`${CHAT}?api-version=1`, { model: 'm', stream: false });
    expect(info.maxOutputTokens).toBeUndefined();
    expect(info.clientWantsStreamUsage).toBe(false);
  });

  it('rejects a missing model naming the field', () => {
    expect(() => openai.inspect(CHAT, { messages: [] })).toThrow(InvalidRequestError);
    expect(() => openai.inspect(CHAT, { messages: [] })).toThrow(/"model"/);
  });

  it('rejects a non-string model', () => {
    expect(() => openai.inspect(CHAT, { model: 42 })).toThrow(/invalid field "model"/);
  });

  it('rejects a malformed output limit naming the field', () => {
    expect(() => openai.inspect(CHAT, { model: 'm', max_tokens: -1 })).toThrow(/"max_tokens"/);
    expect(() => openai.inspect(CHAT, { model: 'm', max_completion_tokens: '9' })).toThrow(/"max_completion_tokens"/);
  });

  it('reads an embeddings request', () => {
    const info = openai.inspect('/v1/embeddings', { model: 'text-embedding-3-small', input: 'hi' });
    expect(info).toEqual({ model: 'text-embedding-3-small', stream: false, maxOutputTokens: undefined, clientWantsStreamUsage: false, operation: 'embeddings' });
  });

  it('rejects an endpoint it cannot meter', () => {
    let error: unknown;
    try {
      openai.inspect('/v1/completions', { model: 'm' });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(InvalidRequestError);
    expect((error as InvalidRequestError).status).toBe(404);
    expect((error as InvalidRequestError).code).toBe('unsupported_endpoint');
    expect((error as InvalidRequestError).message).toBe(
      'unsupported endpoint /v1/completions: this route meters only /v1/chat/completions, /v1/responses and /v1/embeddings',
    );
  });
});

describe('OpenAIAdapter.endpointKind', () => {
  it('classifies metered and models endpoints', () => {
    const cases: Array<[string, string, ReturnType<typeof openai.endpointKind>]> = [
      ['/v1/chat/completions', '', 'metered'],
      ['/v1/responses', '', 'metered'],
      ['/v1/embeddings', '', 'metered'],
      ['/v1/models', '', 'models'],
      ['/v1/models?limit=5', '', 'models'],
      ['/v1/models/gpt-4o-mini', '', 'models'],
      ['/v1/models/ft:gpt-4o-mini:acme::abc123', '', 'models'],
      ['/openai/v1/models', '/openai', 'models'],
      ['/v1/models', '/v1', 'models'],
      ['/v1/responses/resp_1', '', undefined],
      ['/v1/responses/resp_1/input_items', '', undefined],
      ['/v1/files', '', undefined],
      ['/v1/files/file-1/content', '', undefined],
      ['/v1/batches', '', undefined],
      ['/v1/fine_tuning/jobs', '', undefined],
      ['/v1/chat/completions/chatcmpl-1', '', undefined],
      ['/v1/models/gpt-4o-mini/extra', '', undefined],
      ['/v1/models/', '', undefined],
      ['/models', '', undefined],
    ];
    for (const [path, basePath, kind] of cases) expect(compatible.endpointKind(path, basePath), `${basePath} ${path}`).toBe(kind);
  });

  it('rejects a models path after other segments', () => {
    expect(openai.endpointKind('/v1/files/file-1/content/v1/models', '')).toBeUndefined();
    expect(openai.endpointKind('/openai/v1/files/v1/models/m', '/openai')).toBeUndefined();
  });
});

describe('OpenAIAdapter.prepare', () => {
  it('requests stream usage and keeps other stream options', () => {
    const body = { model: 'm', stream: true, stream_options: { include_obfuscation: false } };
    const info = openai.inspect(CHAT, body);
    const prepared = openai.prepare(body, info, {});
    expect(prepared['stream_options']).toEqual({ include_obfuscation: false, include_usage: true });
    expect(body.stream_options).toEqual({ include_obfuscation: false });
  });

  it('returns a non-streamed body unchanged when nothing changes', () => {
    const body = { model: 'm', stream: false };
    expect(openai.prepare(body, openai.inspect(CHAT, body), {})).toBe(body);
  });

  it('sets max_completion_tokens for openai and max_tokens for compatible servers', () => {
    const body = { model: 'm' };
    expect(openai.prepare(body, openai.inspect(CHAT, body), { maxOutputTokens: 500 })).toEqual({ model: 'm', max_completion_tokens: 500 });
    expect(compatible.prepare(body, compatible.inspect(CHAT, body), { maxOutputTokens: 500 })).toEqual({ model: 'm', max_tokens: 500 });
  });

  it('lowers the limit field the client used', () => {
    const body = { model: 'm', max_tokens: 4000 };
    expect(openai.prepare(body, openai.inspect(CHAT, body), { maxOutputTokens: 700 })).toEqual({ model: 'm', max_tokens: 700 });
  });

  it('divides the output limit among n choices', () => {
    const body = { model: 'm', n: 3 };
    expect(openai.prepare(body, openai.inspect(CHAT, body), { maxOutputTokens: 1000 })['max_completion_tokens']).toBe(333);
  });

  it('keeps one token per choice below n', () => {
    const body = { model: 'm', n: 4 };
    expect(openai.prepare(body, openai.inspect(CHAT, body), { maxOutputTokens: 3 })['max_completion_tokens']).toBe(1);
  });
});

describe('OpenAI usage normalization', () => {
  it('moves reasoning tokens out of output (reasoning counted twice)', () => {
    const info = chatInfo({ stream: false });
    const response = {
      choices: [{ index: 0, message: { role: 'assistant', content: 'answer' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 14746, completion_tokens: 1944, total_tokens: 16690, completion_tokens_details: { reasoning_tokens: 1360 } },
    };
    const { usage, complete } = openai.usageFromJson(response, info, 99);
    expect(complete).toBe(true);
    expect(usage).toEqual({ input: 14746, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 584, reasoning: 1360, estimated: false });
  });

  it('moves cached tokens out of input', () => {
    const response = { usage: { prompt_tokens: 2000, completion_tokens: 10, prompt_tokens_details: { cached_tokens: 1536 } } };
    const { usage } = openai.usageFromJson(response, chatInfo({ stream: false }), 0);
    expect(usage.input).toBe(464);
    expect(usage.cacheRead).toBe(1536);
    expect(usage.output).toBe(10);
  });

  it('keeps reasoning reported beside completion tokens', () => {
    const response = { usage: { prompt_tokens: 100, completion_tokens: 50, total_tokens: 230, completion_tokens_details: { reasoning_tokens: 80 } } };
    const { usage } = openai.usageFromJson(response, chatInfo({ stream: false }), 0);
    expect(usage.output).toBe(50);
    expect(usage.reasoning).toBe(80);
  });

  it('estimates a response without usage', () => {
    const response = { choices: [{ index: 0, message: { role: 'assistant', content: 'alpha delta echo' } }] };
    const { usage, complete } = openai.usageFromJson(response, chatInfo({ stream: false }), 25);
    expect(complete).toBe(false);
    expect(usage).toEqual({ input: 25, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 3, reasoning: 0, estimated: true });
  });

  it('estimates an impossible zero prompt count', () => {
    const response = {
      choices: [{ index: 0, message: { role: 'assistant', content: 'alpha delta' } }],
      usage: { prompt_tokens: 0, completion_tokens: 2, total_tokens: 2 },
    };
    const { usage, complete } = openai.usageFromJson(response, chatInfo({ stream: false }), 37);
    expect(complete).toBe(true);
    expect(usage.input).toBe(37);
    expect(usage.output).toBe(2);
    expect(usage.estimated).toBe(true);
  });

  it('estimates a missing completion count from the text', () => {
    const response = {
      choices: [{ index: 0, message: { role: 'assistant', content: 'alpha delta echo hotel india' } }],
      usage: { prompt_tokens: 12 },
    };
    const { usage } = openai.usageFromJson(response, chatInfo({ stream: false }), 50);
    expect(usage.input).toBe(12);
    expect(usage.output).toBe(5);
    expect(usage.estimated).toBe(true);
  });

  it('counts tool call arguments in an estimate', () => {
    const response = {
      choices: [{ index: 0, message: { role: 'assistant', content: null, tool_calls: [{ function: { name: 'alpha', arguments: 'delta echo' } }] } }],
    };
    const { usage } = openai.usageFromJson(response, chatInfo({ stream: false }), 1);
    expect(usage.output).toBe(3);
  });

  it('reads embeddings usage as input only', () => {
    const info = openai.inspect('/v1/embeddings', { model: 'text-embedding-3-small', input: 'x' });
    const { usage, complete } = openai.usageFromJson({ object: 'list', data: [], usage: { prompt_tokens: 6, total_tokens: 6 } }, info, 9);
    expect(complete).toBe(true);
    expect(usage).toEqual({ input: 6, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 0, reasoning: 0, estimated: false });
  });

  it('estimates embeddings without usage', () => {
    const info = openai.inspect('/v1/embeddings', { model: 'text-embedding-3-small', input: 'x' });
    const { usage, complete } = openai.usageFromJson({ object: 'list', data: [] }, info, 9);
    expect(complete).toBe(false);
    expect(usage.input).toBe(9);
    expect(usage.estimated).toBe(true);
  });
});

describe('OpenAI stream meter', () => {
  const upstream = [...streamEvents(true), USAGE_EVENT, DONE].join('');
  const withoutUsage = [...streamEvents(false), DONE].join('');

  it('hides the usage it requested, byte for byte, at every split point', () => {
    for (let cut = 0; cut <= upstream.length; cut++) {
      const { output, result } = meter(chatInfo(), upstream, [cut]);
      expect(output.toString('utf8'), `cut at ${cut}`).toBe(withoutUsage);
      expect(result.usage.output, `cut at ${cut}`).toBe(4);
    }
  });

  it('reads the usage chunk it hides', () => {
    const { result } = meter(chatInfo(), upstream, [100, 700]);
    expect(result.complete).toBe(true);
    expect(result.usage).toEqual({ input: 40, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 4, reasoning: 0, estimated: false });
  });

  it('strips a spaced "usage": null member as well', () => {
    const spaced = 'data: {"id": "c", "choices": [], "usage": null, "model": "m"}\n\n';
    const { output } = meter(chatInfo(), spaced, []);
    expect(output.toString()).toBe('data: {"id": "c", "choices": [], "model": "m"}\n\n');
  });

  it('passes the stream unchanged when the client asked for usage', () => {
    const { output, result } = meter(chatInfo({ clientWantsStreamUsage: true }), upstream, [33, 34, 500]);
    expect(output.toString('utf8')).toBe(upstream);
    expect(result.complete).toBe(true);
    expect(result.usage.input).toBe(40);
    expect(result.usage.output).toBe(4);
  });

  it('estimates a stream that ends without usage', () => {
    const { output, result } = meter(chatInfo(), withoutUsage, [50], 31);
    expect(output.toString('utf8')).toBe(withoutUsage);
    expect(result.complete).toBe(false);
    expect(result.usage).toEqual({ input: 31, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 4, reasoning: 0, estimated: true });
  });

  it('estimates an impossible zero in stream usage', () => {
    const zero = USAGE_EVENT.replace('"prompt_tokens":40', '"prompt_tokens":0');
    const { result } = meter(chatInfo(), [...streamEvents(true), zero, DONE].join(''), [], 52);
    expect(result.complete).toBe(true);
    expect(result.usage.input).toBe(52);
    expect(result.usage.output).toBe(4);
    expect(result.usage.estimated).toBe(true);
  });

  it('estimates a missing field in stream usage', () => {
    const missing = USAGE_EVENT.replace('"completion_tokens":4,', '');
    const { result } = meter(chatInfo(), [...streamEvents(true), missing, DONE].join(''), [], 52);
    expect(result.usage.input).toBe(40);
    expect(result.usage.output).toBe(4);
    expect(result.usage.estimated).toBe(true);
  });

  it('estimates the output seen before a cut', () => {
    const events = streamEvents(true);
    const cutStream = events.slice(0, 3).join('') + events[3]!.slice(0, 20);
    const { result } = meter(chatInfo(), cutStream, [], 10);
    expect(result.complete).toBe(false);
    expect(result.usage.output).toBe(3);
    expect(result.usage.input).toBe(10);
    expect(result.usage.estimated).toBe(true);
  });
});

describe('OpenAI stream meter response metadata', () => {
  const upstream = [...streamEvents(true), USAGE_EVENT, DONE].join('');

  it('reads metadata at every split point', () => {
    for (let cut = 0; cut <= upstream.length; cut += 5) {
      const { metadata } = meter(chatInfo(), upstream, [cut]);
      expect(metadata, `cut at ${cut}`).toEqual({ id: 'chatcmpl-1', model: 'gpt-4o-2024-08-06', finishReasons: ['stop'] });
    }
  });

  it('orders finish reasons by choice index', () => {
    const finish = (index: number, reason: string) =>
      `data: ${JSON.stringify({ id: 'chatcmpl-2', model: 'gpt-4o-2024-08-06', choices: [{ index, delta: {}, finish_reason: reason }] })}\n\n`;
    const { metadata } = meter(chatInfo(), [finish(2, 'stop'), finish(0, 'length'), finish(1, 'content_filter'), DONE].join(''), []);
    expect(metadata.finishReasons).toEqual(['length', 'content_filter', 'stop']);
  });

  it('keeps one reason per choice index', () => {
    const { metadata } = meter(chatInfo(), [...streamEvents(false), streamEvents(false)[4]!.replace('"stop"', '"length"')].join(''), []);
    expect(metadata.finishReasons).toEqual(['length']);
  });

  it('places a choice without index by position', () => {
    const chunk = { id: 'chatcmpl-3', model: 'm', choices: [{ delta: {}, finish_reason: 'stop' }, { index: 'x', delta: {}, finish_reason: 'length' }] };
    const { metadata } = meter(chatInfo(), `data: ${JSON.stringify(chunk)}\n\n`, []);
    expect(metadata.finishReasons).toEqual(['stop', 'length']);
  });

  it('drops finish reasons past the index bound', () => {
    const chunk = { id: 'chatcmpl-4', model: 'm', choices: [{ index: 127, finish_reason: 'stop' }, { index: 128, finish_reason: 'length' }] };
    const { metadata } = meter(chatInfo(), `data: ${JSON.stringify(chunk)}\n\n`, []);
    expect(metadata.finishReasons).toEqual(['stop']);
  });

  it('reads a stream cut before finishing', () => {
    const { metadata } = meter(chatInfo(), streamEvents(true).slice(0, 2).join(''), []);
    expect(metadata).toEqual({ id: 'chatcmpl-1', model: 'gpt-4o-2024-08-06', finishReasons: [] });
  });

  it('reads nothing from a stream without chunks', () => {
    expect(meter(chatInfo(), DONE, []).metadata).toEqual({ id: undefined, model: undefined, finishReasons: [] });
  });
});

describe('OpenAI error body', () => {
  let server: Server | undefined;
  afterEach(() => {
    server?.close();
    server = undefined;
  });

  it('surfaces its message through the openai SDK', async () => {
    const body = openai.errorBody({ status: 402, code: 'insufficient_funds', message: 'wallet team-a cannot pay 0.05 USD; add funds' });
    server = createServer((request, response) => {
      request.resume();
      response.writeHead(402, { 'content-type': 'application/json' });
      response.end(JSON.stringify(body));
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const client = new OpenAI({ apiKey: 'unused', baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0 });

    const error = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(OpenAI.APIError);
    const apiError = error as InstanceType<typeof OpenAI.APIError>;
    expect(apiError.status).toBe(402);
    expect(apiError.message).toBe('402 wallet team-a cannot pay 0.05 USD; add funds');
    expect(apiError.code).toBe('insufficient_funds');
    expect(apiError.type).toBe('insufficient_quota');
  });

  it('sets param to the field of the error', () => {
    expect(openai.errorBody({ status: 400, code: 'unsupported_parameter', message: 'm', param: 'input[0]' })).toEqual({
      error: { message: 'm', type: 'invalid_request_error', code: 'unsupported_parameter', param: 'input[0]' },
    });
    expect(openai.errorBody({ status: 402, code: 'insufficient_funds', message: 'm' })).toEqual({
      error: { message: 'm', type: 'insufficient_quota', code: 'insufficient_funds', param: null },
    });
  });

  it('sends the credential as a bearer token', () => {
    expect(openai.credentialHeaders('sk-test')).toEqual({ authorization: 'Bearer sk-test' });
    expect(openai.defaultHeaders).toEqual({});
  });
});
