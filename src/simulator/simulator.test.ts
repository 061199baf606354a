import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { adapterFor } from '../providers/index.ts';
import { generatedText, startSimulator, stats, type Simulator } from './index.ts';

const KEY = 'sim-test-key';

let sim: Simulator;
let openai: OpenAI;
let anthropic: Anthropic;

beforeAll(async () => {
  sim = await startSimulator({ expectedKey: KEY });
  openai = new OpenAI({ apiKey: KEY, baseURL: `${sim.url}/v1`, maxRetries: 0 });
  anthropic = new Anthropic({ apiKey: KEY, baseURL: sim.url, maxRetries: 0 });
});

afterAll(async () => {
  await sim.close();
});

beforeEach(() => {
  sim.resetStats();
});

/** "hotel" and "alpha delta echo" are one token per word, so the prompt is 4 tokens. */
const CHAT_MESSAGES: OpenAI.Chat.ChatCompletionMessageParam[] = [
  { role: 'system', content: 'hotel' },
  { role: 'user', content: 'alpha delta echo' },
];

describe('simulator: OpenAI chat completions', () => {
  it('answers a plain request that the SDK parses', async () => {
    const completion = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES });
    expect(completion.object).toBe('chat.completion');
    expect(completion.model).toBe('gpt-4o-mini');
    expect(completion.choices).toHaveLength(1);
    expect(completion.choices[0]!.message).toEqual({ role: 'assistant', content: generatedText(16), refusal: null, annotations: [] });
    expect(completion.choices[0]!.finish_reason).toBe('stop');
    expect(completion.usage).toEqual({
      prompt_tokens: 4,
      completion_tokens: 16,
      total_tokens: 20,
      prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
      completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
    });
  });

  it('stops at the output limit', async () => {
    const completion = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES, max_completion_tokens: 5, n: 2 });
    expect(completion.choices.map((choice) => choice.message.content)).toEqual(['alpha delta echo hotel india', 'alpha delta echo hotel india']);
    expect(completion.choices[1]!.finish_reason).toBe('length');
    expect(completion.usage?.completion_tokens).toBe(10);
  });

  it('streams chunks with usage when asked', async () => {
    const stream = await openai.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: CHAT_MESSAGES,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.Chat.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);

    expect(chunks).toHaveLength(1 + 16 + 1 + 1);
    expect(chunks[0]!.choices[0]!.delta).toEqual({ role: 'assistant', content: '', refusal: null });
    expect(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join('')).toBe(generatedText(16));
    expect(chunks[17]!.choices[0]!.finish_reason).toBe('stop');
    expect(chunks[1]!.usage).toBeNull();
    const last = chunks[18]!;
    expect(last.choices).toEqual([]);
    expect(last.usage?.prompt_tokens).toBe(4);
    expect(last.usage?.completion_tokens).toBe(16);
  });

  it('streams without usage when not asked', async () => {
    const stream = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES, stream: true });
    const chunks: OpenAI.Chat.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks).toHaveLength(18);
    expect(chunks.every((chunk) => chunk.usage === undefined)).toBe(true);
  });

  it('splits content into the requested number of chunks', async () => {
    const stream = await openai.chat.completions.create(
      { model: 'gpt-4o-mini', messages: CHAT_MESSAGES, stream: true },
      { headers: { 'x-sim-chunks': '4', 'x-sim-chunk-delay-ms': '1' } },
    );
    const contents: string[] = [];
    for await (const chunk of stream) {
      const content = chunk.choices[0]?.delta.content;
      if (content) contents.push(content);
    }
    expect(contents).toEqual(['alpha delta echo hotel', ' india uniform river stone', ' cloud light green water', ' north paper table music']);
  });

  it('reports the usage a test sets', async () => {
    const usage = { prompt_tokens: 14746, completion_tokens: 1944, total_tokens: 16690, completion_tokens_details: { reasoning_tokens: 1360 } };
    const completion = await openai.chat.completions.create(
      { model: 'o3', messages: CHAT_MESSAGES },
      { headers: { 'x-sim-usage': JSON.stringify(usage) } },
    );
    expect(completion.usage).toEqual(usage);
  });

  it('omits usage on request', async () => {
    const completion = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES }, { headers: { 'x-sim-omit-usage': '1' } });
    expect(completion.usage).toBeUndefined();
  });

  it('fails with the requested status in OpenAI format', async () => {
    const error = await openai.chat.completions
      .create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES }, { headers: { 'x-sim-status': '500', 'x-sim-latency-ms': '5' } })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(OpenAI.InternalServerError);
    expect((error as Error).message).toBe('500 simulated failure with status 500');
  });

  it('breaks a stream after the requested chunks', async () => {
    const stream = await openai.chat.completions.create(
      { model: 'gpt-4o-mini', messages: CHAT_MESSAGES, stream: true },
      { headers: { 'x-sim-cut-after': '3' } },
    );
    const contents: string[] = [];
    const error = await (async () => {
      for await (const chunk of stream) {
        const content = chunk.choices[0]?.delta.content;
        if (content) contents.push(content);
      }
    })().catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(Error);
    expect(contents).toEqual(['alpha', ' delta', ' echo']);
  });
});

describe('simulator: OpenAI embeddings', () => {
  it('answers base64 embeddings that the SDK decodes', async () => {
    const response = await openai.embeddings.create({ model: 'text-embedding-3-small', input: ['alpha delta', 'echo'] });
    expect(response.object).toBe('list');
    expect(response.data).toHaveLength(2);
    expect(response.data[1]!.index).toBe(1);
    expect(response.data[0]!.embedding).toHaveLength(8);
    expect(response.data[0]!.embedding[0]).toBeCloseTo(3 / 17 - 0.5, 6);
    expect(response.usage).toEqual({ prompt_tokens: 3, total_tokens: 3 });
  });

  it('answers float embeddings of the requested dimensions', async () => {
    const response = await openai.embeddings.create({ model: 'text-embedding-3-small', input: 'alpha', encoding_format: 'float', dimensions: 3 });
    expect(response.data[0]!.embedding).toHaveLength(3);
    expect(response.usage).toEqual({ prompt_tokens: 1, total_tokens: 1 });
  });
});

describe('simulator: Anthropic messages', () => {
  const request = { model: 'claude-sonnet-4-5', max_tokens: 1024, system: 'hotel', messages: [{ role: 'user' as const, content: 'alpha delta echo' }] };

  it('answers a plain request that the SDK parses', async () => {
    const message = await anthropic.messages.create(request);
    expect(message.type).toBe('message');
    expect(message.role).toBe('assistant');
    expect(message.content).toEqual([{ type: 'text', text: generatedText(16), citations: null }]);
    expect(message.stop_reason).toBe('end_turn');
    expect(message.usage).toEqual({
      input_tokens: 4,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
      cache_creation: { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: 0 },
      output_tokens: 16,
      service_tier: 'standard',
    });
  });

  it('stops at max_tokens', async () => {
    const message = await anthropic.messages.create({ ...request, max_tokens: 3 });
    expect(message.content).toEqual([{ type: 'text', text: 'alpha delta echo', citations: null }]);
    expect(message.stop_reason).toBe('max_tokens');
    expect(message.usage.output_tokens).toBe(3);
  });

  it('streams events in the Messages order', async () => {
    const stream = await anthropic.messages.create({ ...request, stream: true });
    const events: Anthropic.Messages.RawMessageStreamEvent[] = [];
    for await (const event of stream) events.push(event);

    const types = events.map((event) => event.type);
    expect(types.slice(0, 2)).toEqual(['message_start', 'content_block_start']);
    expect(types.slice(-3)).toEqual(['content_block_stop', 'message_delta', 'message_stop']);
    expect(types.filter((type) => type === 'content_block_delta')).toHaveLength(16);

    const start = events[0] as Anthropic.Messages.RawMessageStartEvent;
    expect(start.message.usage.input_tokens).toBe(4);
    expect(start.message.usage.output_tokens).toBe(1);
    const delta = events.at(-2) as Anthropic.Messages.RawMessageDeltaEvent;
    expect(delta.usage.output_tokens).toBe(16);
    expect(delta.delta.stop_reason).toBe('end_turn');
  });

  it('accumulates a stream with the SDK helper', async () => {
    const message = await anthropic.messages.stream(request).finalMessage();
    expect(message.content).toEqual([{ type: 'text', text: generatedText(16), citations: null }]);
    expect(message.usage.output_tokens).toBe(16);
    expect(message.usage.input_tokens).toBe(4);
  });

  it('reports the usage a test sets', async () => {
    const usage = { input_tokens: 3, cache_creation_input_tokens: 12304, cache_read_input_tokens: 0, output_tokens: 550 };
    const message = await anthropic.messages.create(request, { headers: { 'x-sim-usage': JSON.stringify(usage) } });
    expect(message.usage).toEqual(usage);
  });

  it('fails with the requested status in Anthropic format', async () => {
    const error = await anthropic.messages.create(request, { headers: { 'x-sim-status': '529' } }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(Anthropic.APIError);
    const apiError = error as InstanceType<typeof Anthropic.APIError>;
    expect(apiError.status).toBe(529);
    expect(apiError.type).toBe('overloaded_error');
    expect(apiError.apiMessage).toBe('simulated failure with status 529');
  });
});

describe('simulator: credentials and counters', () => {
  it('rejects a wrong OpenAI key with 401', async () => {
    const stranger = new OpenAI({ apiKey: 'wrong', baseURL: `${sim.url}/v1`, maxRetries: 0 });
    const error = await stranger.chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((error as InstanceType<typeof OpenAI.APIError>).code).toBe('invalid_api_key');
    expect(sim.stats().unauthorized).toBe(1);
  });

  it('rejects a wrong Anthropic key with 401', async () => {
    const stranger = new Anthropic({ apiKey: 'wrong', baseURL: sim.url, maxRetries: 0 });
    const error = await stranger.messages
      .create({ model: 'claude-sonnet-4-5', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(Anthropic.AuthenticationError);
    expect((error as InstanceType<typeof Anthropic.APIError>).type).toBe('authentication_error');
  });

  it('rejects a request without a credential', async () => {
    const response = await fetch(`${sim.url}/v1/chat/completions`, { method: 'POST', body: '{}' });
    expect(response.status).toBe(401);
    expect(await response.json()).toEqual({ error: { message: 'missing API key', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } });
  });

  it('counts every request and records the last body without credentials', async () => {
    const before = stats().requests;
    await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES });
    await openai.embeddings.create({ model: 'text-embedding-3-small', input: 'alpha' });
    await anthropic.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] });
    await fetch(`${sim.url}/v2/unknown`, { method: 'POST', body: '{}' });

    const counters = sim.stats();
    expect(counters.requests).toBe(4);
    expect(counters.byEndpoint).toEqual({ chat: 1, responses: 0, embeddings: 1, messages: 1, generateContent: 0, embedContent: 0, models: 0, other: 1 });
    expect(counters.lastCredential).toBe(KEY);
    expect(counters.lastRequest).toEqual({ model: 'claude-sonnet-4-5', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] });
    // @anthropic-ai/sdk 1.x sends the API key as a bearer token.
    expect(counters.lastHeaders?.['authorization']).toBe('<redacted>');
    expect(counters.lastHeaders?.['anthropic-version']).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(stats().requests - before).toBe(4);
  });
});

describe('simulator output through the adapters', () => {
  /** Sends a raw request and returns the response bytes, as a proxy would receive them. */
  async function post(path: string, body: Record<string, unknown>, headers: Record<string, string>): Promise<Buffer> {
    const response = await fetch(`${sim.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });
    return Buffer.from(await response.arrayBuffer());
  }

  /** Pushes bytes through a meter in slices of `size` bytes. */
  function pushAll(meter: { push(chunk: Buffer): Buffer; flush(): Buffer }, bytes: Buffer, size: number): Buffer {
    const parts: Buffer[] = [];
    for (let i = 0; i < bytes.length; i += size) parts.push(meter.push(bytes.subarray(i, i + size)));
    parts.push(meter.flush());
    return Buffer.concat(parts);
  }

  const sameIds = (text: string): string => text.replace(/chatcmpl-sim\d+/g, 'chatcmpl-x').replace(/"created":\d+/g, '"created":0');

  it('hides the requested usage from a client that did not ask for it', async () => {
    const adapter = adapterFor('openai');
    const body = { model: 'gpt-4o-mini', messages: CHAT_MESSAGES, stream: true };
    const info = adapter.inspect('/v1/chat/completions', body);
    const auth = adapter.credentialHeaders(KEY);

    const upstream = await post('/v1/chat/completions', adapter.prepare(body, info, {}), auth);
    const direct = await post('/v1/chat/completions', body, auth);
    const meter = adapter.createStreamMeter(info, 99);
    const forwarded = pushAll(meter, upstream, 61);

    expect(sameIds(forwarded.toString('utf8'))).toBe(sameIds(direct.toString('utf8')));
    expect(meter.result()).toEqual({
      usage: { input: 4, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 16, reasoning: 0, estimated: false },
      complete: true,
    });
  });

  it('estimates a stream that carries no usage', async () => {
    const adapter = adapterFor('openai-compatible');
    const body = { model: 'llama', messages: CHAT_MESSAGES, stream: true };
    const info = adapter.inspect('/v1/chat/completions', body);
    const upstream = await post('/v1/chat/completions', adapter.prepare(body, info, {}), { ...adapter.credentialHeaders(KEY), 'x-sim-omit-usage': '1' });
    const meter = adapter.createStreamMeter(info, 20);
    pushAll(meter, upstream, 100);
    expect(meter.result()).toEqual({
      usage: { input: 20, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 16, reasoning: 0, estimated: true },
      complete: false,
    });
  });

  it('meters an Anthropic stream cut after five deltas', async () => {
    const adapter = adapterFor('anthropic');
    const body = { model: 'claude-sonnet-4-5', max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'alpha delta echo' }] };
    const info = adapter.inspect('/v1/messages', body);
    const response = await fetch(`${sim.url}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...adapter.credentialHeaders(KEY), 'x-sim-cut-after': '5' },
      body: JSON.stringify(body),
    });
    const meter = adapter.createStreamMeter(info, 50);
    const reader = response.body!.getReader();
    const error = await (async () => {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return undefined;
        meter.push(Buffer.from(value));
      }
    })().catch((caught: unknown) => caught);
    meter.flush();

    expect(error).toBeInstanceOf(Error);
    expect(meter.result()).toEqual({
      usage: { input: 3, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 5, reasoning: 0, estimated: true },
      complete: false,
    });
  });

  it('meters a complete Anthropic stream', async () => {
    const adapter = adapterFor('anthropic');
    const body = { model: 'claude-sonnet-4-5', max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'alpha delta echo' }] };
    const info = adapter.inspect('/v1/messages', body);
    const upstream = await post('/v1/messages', body, adapter.credentialHeaders(KEY));
    const meter = adapter.createStreamMeter(info, 50);
    const forwarded = pushAll(meter, upstream, 45);
    expect(forwarded.equals(upstream)).toBe(true);
    expect(meter.result()).toEqual({
      usage: { input: 3, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 16, reasoning: 0, estimated: false },
      complete: true,
    });
  });
});

describe('simulator: Anthropic web search', () => {
  const request = { model: 'claude-sonnet-4-5', max_tokens: 1024, messages: [{ role: 'user' as const, content: 'alpha delta echo' }] };
  const tool = { type: 'web_search_20250305' as const, name: 'web_search' as const };

  it('runs one search by default', async () => {
    const message = await anthropic.messages.create({ ...request, tools: [tool] });
    expect(message.content.map((block) => block.type)).toEqual(['server_tool_use', 'web_search_tool_result', 'text']);
    expect(message.content[0]).toEqual({ type: 'server_tool_use', id: expect.stringMatching(/^srvtoolu_sim\d{8}_1$/), name: 'web_search', input: { query: 'simulated query 1' }, caller: { type: 'direct' } });
    expect(message.usage.server_tool_use).toEqual({ web_search_requests: 1, web_fetch_requests: 0 });
  });

  it('stops at max_uses', async () => {
    const message = await anthropic.messages.create({ ...request, tools: [{ ...tool, max_uses: 2 }] }, { headers: { 'x-sim-web-searches': '4' } });
    expect(message.content.filter((block) => block.type === 'server_tool_use')).toHaveLength(2);
    expect(message.usage.server_tool_use?.web_search_requests).toBe(2);
  });

  it('runs no search without the tool', async () => {
    const message = await anthropic.messages.create(request, { headers: { 'x-sim-web-searches': '4' } });
    expect(message.content.map((block) => block.type)).toEqual(['text']);
    expect(message.usage.server_tool_use).toBeUndefined();
  });

  it('streams searches the SDK assembles', async () => {
    const message = await anthropic.messages.stream({ ...request, tools: [tool] }, { headers: { 'x-sim-web-searches': '2' } }).finalMessage();
    expect(message.content.map((block) => block.type)).toEqual(['server_tool_use', 'web_search_tool_result', 'server_tool_use', 'web_search_tool_result', 'text']);
    expect(message.content[2]).toMatchObject({ type: 'server_tool_use', input: { query: 'simulated query 2' } });
    expect(message.usage.server_tool_use).toEqual({ web_search_requests: 2, web_fetch_requests: 0 });
  });

  it('rejects a max_uses below 1', async () => {
    const error = await anthropic.messages.create({ ...request, tools: [{ ...tool, max_uses: 0 }] }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(Anthropic.BadRequestError);
  });
});
