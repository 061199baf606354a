import OpenAI from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { generatedText, startSimulator, type Simulator } from './index.ts';

const KEY = 'sim-test-key';

let sim: Simulator;
let openai: OpenAI;

beforeAll(async () => {
  sim = await startSimulator({ expectedKey: KEY });
  openai = new OpenAI({ apiKey: KEY, baseURL: `${sim.url}/v1`, maxRetries: 0 });
});

afterAll(async () => {
  await sim.close();
});

beforeEach(() => {
  sim.resetStats();
});

/** "hotel" and "alpha delta echo" are one token per word, so the input is 4 tokens. */
const REQUEST = { model: 'gpt-4.1-mini', instructions: 'hotel', input: 'alpha delta echo' };

/** Sends a raw request to the simulator and returns its status and text. */
async function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  const response = await fetch(`${sim.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
    body: JSON.stringify(body),
  });
  return { status: response.status, text: await response.text() };
}

/** Splits a stream's text into its events' names and parsed data. */
function parseEvents(text: string): Array<{ event: string; data: Record<string, unknown> }> {
  return text
    .split('\n\n')
    .filter((block) => block.length > 0)
    .map((block) => {
      const [eventLine, dataLine] = block.split('\n');
      return { event: eventLine!.slice('event: '.length), data: JSON.parse(dataLine!.slice('data: '.length)) as Record<string, unknown> };
    });
}

describe('simulator: OpenAI responses', () => {
  it('answers a JSON request that the SDK parses', async () => {
    const response = await openai.responses.create(REQUEST);

    expect(response.id).toMatch(/^resp_sim\d{8}$/);
    expect(response.object).toBe('response');
    expect(response.status).toBe('completed');
    expect(response.model).toBe('gpt-4.1-mini');
    expect(response.instructions).toBe('hotel');
    expect(response.incomplete_details).toBeNull();
    expect(response.output_text).toBe(generatedText(16));
    expect(response.output).toEqual([
      {
        id: response.id.replace('resp_', 'msg_'),
        type: 'message',
        status: 'completed',
        content: [{ type: 'output_text', annotations: [], logprobs: [], text: generatedText(16) }],
        role: 'assistant',
      },
    ]);
    expect(response.usage).toEqual({
      input_tokens: 4,
      input_tokens_details: { cached_tokens: 0, cache_write_tokens: 0 },
      output_tokens: 16,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: 20,
    });
    expect(sim.stats().byEndpoint.responses).toBe(1);
  });

  it('counts input items by their text', async () => {
    const response = await openai.responses.create({
      model: 'gpt-4.1-mini',
      input: [
        { role: 'user', content: [{ type: 'input_text', text: 'alpha delta' }, { type: 'input_image', image_url: 'https://example.test/cat.png', detail: 'auto' }] },
        { type: 'function_call_output', call_id: 'call_1', output: 'echo hotel india' },
      ],
    });
    expect(response.usage?.input_tokens).toBe(5);
  });

  it('stops at max_output_tokens as incomplete', async () => {
    const response = await openai.responses.create({ ...REQUEST, max_output_tokens: 20 }, { headers: { 'x-sim-output-tokens': '30' } });

    expect(response.status).toBe('incomplete');
    expect(response.incomplete_details).toEqual({ reason: 'max_output_tokens' });
    expect(response.max_output_tokens).toBe(20);
    expect(response.output[0]).toMatchObject({ type: 'message', status: 'incomplete' });
    expect(response.output_text).toBe(generatedText(20));
    expect(response.usage?.output_tokens).toBe(20);
  });

  it('rejects max_output_tokens below 16 as OpenAI does', async () => {
    const error = await openai.responses.create({ ...REQUEST, max_output_tokens: 15 }).catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect((error as Error).message).toBe("400 Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 15 instead.");
  });

  it('rejects a request without input', async () => {
    const result = await post('/v1/responses', { model: 'gpt-4.1-mini' });

    expect(result.status).toBe(400);
    expect(JSON.parse(result.text)).toEqual({ error: { message: "Missing required parameter: 'input'.", type: 'invalid_request_error', param: null, code: null } });
  });

  it('streams the events of a response in order', async () => {
    const result = await post('/v1/responses', { ...REQUEST, stream: true }, { 'x-sim-chunks': '2' });
    const events = parseEvents(result.text);

    expect(events.map((event) => event.event)).toEqual([
      'response.created',
      'response.in_progress',
      'response.output_item.added',
      'response.content_part.added',
      'response.output_text.delta',
      'response.output_text.delta',
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.completed',
    ]);
    expect(events.map((event) => event.data['type'])).toEqual(events.map((event) => event.event));
    expect(events.map((event) => event.data['sequence_number'])).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);

    const created = events[0]!.data['response'] as Record<string, unknown>;
    expect(created['status']).toBe('in_progress');
    expect(created['output']).toEqual([]);
    expect(created['usage']).toBeNull();
    expect(events[4]!.data).toMatchObject({ item_id: created['id']!.toString().replace('resp_', 'msg_'), output_index: 0, content_index: 0, delta: generatedText(8) });
    expect(events[6]!.data['text']).toBe(generatedText(16));

    const completed = events[9]!.data['response'] as Record<string, unknown>;
    expect(completed['status']).toBe('completed');
    expect(completed['usage']).toEqual({
      input_tokens: 4,
      input_tokens_details: { cached_tokens: 0, cache_write_tokens: 0 },
      output_tokens: 16,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: 20,
    });
  });

  it('streams a response the SDK assembles', async () => {
    const stream = openai.responses.stream({ ...REQUEST, max_output_tokens: 16 }, { headers: { 'x-sim-output-tokens': '40' } });
    let deltas = '';
    for await (const event of stream) if (event.type === 'response.output_text.delta') deltas += event.delta;
    const response = await stream.finalResponse();

    expect(deltas).toBe(generatedText(16));
    expect(response.status).toBe('incomplete');
    expect(response.incomplete_details).toEqual({ reason: 'max_output_tokens' });
    expect(response.output_text).toBe(generatedText(16));
    expect(response.usage?.output_tokens).toBe(16);
  });

  it('ends an incomplete stream with response.incomplete', async () => {
    const result = await post('/v1/responses', { ...REQUEST, stream: true, max_output_tokens: 16 }, { 'x-sim-output-tokens': '17' });
    const events = parseEvents(result.text);

    expect(events.at(-1)!.event).toBe('response.incomplete');
    expect(events.map((event) => event.event)).not.toContain('response.completed');
  });

  it('reports the usage a test sets', async () => {
    const usage = {
      input_tokens: 1000,
      input_tokens_details: { cached_tokens: 600 },
      output_tokens: 500,
      output_tokens_details: { reasoning_tokens: 200 },
      total_tokens: 1500,
    };
    const json = await openai.responses.create(REQUEST, { headers: { 'x-sim-usage': JSON.stringify(usage) } });
    expect(json.usage).toEqual(usage);

    const streamed = await post('/v1/responses', { ...REQUEST, stream: true }, { 'x-sim-usage': JSON.stringify(usage) });
    expect((parseEvents(streamed.text).at(-1)!.data['response'] as Record<string, unknown>)['usage']).toEqual(usage);
  });

  it('leaves usage out when told to', async () => {
    const json = await post('/v1/responses', REQUEST, { 'x-sim-omit-usage': '1' });
    expect(JSON.parse(json.text)).not.toHaveProperty('usage');

    const streamed = await post('/v1/responses', { ...REQUEST, stream: true }, { 'x-sim-omit-usage': '1' });
    expect(parseEvents(streamed.text).at(-1)!.data['response']).not.toHaveProperty('usage');
  });

  it('cuts a stream after the given deltas', async () => {
    const result = await fetch(`${sim.url}/v1/responses`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, 'x-sim-cut-after': '3' },
      body: JSON.stringify({ ...REQUEST, stream: true }),
    });
    let text = '';
    const decoder = new TextDecoder();
    const failure = await (async () => {
      for await (const chunk of result.body!) text += decoder.decode(chunk, { stream: true });
    })().catch((caught: unknown) => caught);

    expect(failure).toBeInstanceOf(Error);
    expect(text.match(/event: response\.output_text\.delta\n/g)).toHaveLength(3);
    expect(text).not.toContain('response.completed');
  });

  it('answers a simulated error status in OpenAI format', async () => {
    const error = await openai.responses.create(REQUEST, { headers: { 'x-sim-status': '429' } }).catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(OpenAI.RateLimitError);
    expect((error as InstanceType<typeof OpenAI.APIError>).type).toBe('rate_limit_exceeded');
  });
});

describe('simulator: OpenAI responses web search', () => {
  const request = { ...REQUEST, tools: [{ type: 'web_search' as const }] };

  it('adds a search call item per search', async () => {
    const response = await openai.responses.create(request, { headers: { 'x-sim-web-searches': '2' } });
    expect(response.output.map((item) => item.type)).toEqual(['web_search_call', 'web_search_call', 'message']);
    expect(response.output[1]).toEqual({
      id: expect.stringMatching(/^ws_resp_sim\d{8}_2$/),
      type: 'web_search_call',
      status: 'completed',
      action: { type: 'search', query: 'simulated query 2', queries: ['simulated query 2'] },
    });
    expect(response.tool_usage?.web_search).toEqual({ num_requests: 2 });
    expect(response.output_text).toBe(generatedText(16));
  });

  it('stops at max_tool_calls', async () => {
    const response = await openai.responses.create({ ...request, max_tool_calls: 1 }, { headers: { 'x-sim-web-searches': '3' } });
    expect(response.output.filter((item) => item.type === 'web_search_call')).toHaveLength(1);
    expect(response.max_tool_calls).toBe(1);
    expect(response.tool_usage?.web_search.num_requests).toBe(1);
  });

  it('runs no search without the tool', async () => {
    const response = await openai.responses.create(REQUEST, { headers: { 'x-sim-web-searches': '3' } });
    expect(response.output.map((item) => item.type)).toEqual(['message']);
    expect(response.tool_usage).toBeUndefined();
  });

  it('streams the events of each search', async () => {
    const { text } = await post('/v1/responses', { ...request, stream: true }, { 'x-sim-web-searches': '1' });
    const events = parseEvents(text);
    expect(events.slice(2, 8).map((event) => event.event)).toEqual([
      'response.output_item.added',
      'response.web_search_call.in_progress',
      'response.web_search_call.searching',
      'response.web_search_call.completed',
      'response.output_item.done',
      'response.output_item.added',
    ]);
    expect(events[3]!.data).toEqual({ type: 'response.web_search_call.in_progress', output_index: 0, item_id: expect.stringMatching(/^ws_resp_sim\d{8}_1$/), sequence_number: 3 });
    const terminal = events.at(-1)!.data['response'] as Record<string, unknown>;
    expect((terminal['output'] as Array<Record<string, unknown>>).map((item) => item['type'])).toEqual(['web_search_call', 'message']);
    expect(events.every((event, index) => event.data['sequence_number'] === index)).toBe(true);
  });

  it('streams a response the SDK assembles', async () => {
    const response = await openai.responses.stream(request, { headers: { 'x-sim-web-searches': '2' } }).finalResponse();
    expect(response.output.map((item) => item.type)).toEqual(['web_search_call', 'web_search_call', 'message']);
    expect(response.output_text).toBe(generatedText(16));
  });
});
