import { describe, expect, it } from 'vitest';
import { InvalidRequestError, type RequestInfo } from './adapter.ts';
import { OpenAIAdapter } from './openai.ts';
import { isResponsesRequest } from './openai-responses.ts';

const openai = new OpenAIAdapter('openai');
const compatible = new OpenAIAdapter('openai-compatible');

const RESPONSES = '/v1/responses';

function inspect(body: Record<string, unknown>, adapter = openai): RequestInfo {
  return adapter.inspect(RESPONSES, body);
}

function rejection(body: Record<string, unknown>, path = RESPONSES): InvalidRequestError {
  try {
    openai.inspect(path, body);
  } catch (error) {
    if (error instanceof InvalidRequestError) return error;
    throw error;
  }
  throw new Error('inspect accepted the request');
}

const USAGE = {
  input_tokens: 1000,
  input_tokens_details: { cached_tokens: 600 },
  output_tokens: 500,
  output_tokens_details: { reasoning_tokens: 200 },
  total_tokens: 1500,
};

/** Builds one event as OpenAI writes it: an `event:` line and the same `type` in the data. */
function event(type: string, fields: Record<string, unknown>, sequence: number, named = true): string {
  const data = JSON.stringify({ type, ...fields, sequence_number: sequence });
  return named ? `event: ${type}\ndata: ${data}\n\n` : `data: ${data}\n\n`;
}

function responseObject(status: string, usage: unknown, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { id: 'resp_1', object: 'response', created_at: 1700000000, status, model: 'gpt-4.1-mini-2025-04-14', output: [], usage, ...extra };
}

/** Events of a stream whose text is "alpha delta echo hotel" (four tokens), ending with `terminal` unless it is undefined. */
function streamEvents(terminal: string | undefined, usage: unknown = USAGE, named = true, extra: Record<string, unknown> = {}): string[] {
  const position = { item_id: 'msg_1', output_index: 0, content_index: 0 };
  const events = [
    event('response.created', { response: responseObject('in_progress', null) }, 0, named),
    event('response.in_progress', { response: responseObject('in_progress', null) }, 1, named),
    event('response.output_item.added', { output_index: 0, item: { id: 'msg_1', type: 'message', status: 'in_progress', role: 'assistant', content: [] } }, 2, named),
    event('response.content_part.added', { ...position, part: { type: 'output_text', annotations: [], text: '' } }, 3, named),
    event('response.output_text.delta', { ...position, delta: 'alpha', logprobs: [] }, 4, named),
    event('response.output_text.delta', { ...position, delta: ' delta echo', logprobs: [] }, 5, named),
    event('response.output_text.delta', { ...position, delta: ' hotel', logprobs: [] }, 6, named),
    event('response.output_text.done', { ...position, text: 'alpha delta echo hotel', logprobs: [] }, 7, named),
  ];
  if (terminal !== undefined) {
    const status = terminal.slice('response.'.length);
    events.push(event(terminal, { response: responseObject(status, usage, extra) }, 8, named));
  }
  return events;
}

/** Runs a stream through a new meter in pieces cut at `cuts`, and returns what the client received and what was metered. */
function meter(info: RequestInfo, stream: string, cuts: number[], promptEstimate = 0) {
  const meterInstance = openai.createStreamMeter(info, promptEstimate);
  const bytes = Buffer.from(stream);
  const out: Buffer[] = [];
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    out.push(meterInstance.push(bytes.subarray(start, cut)));
    start = cut;
  }
  out.push(meterInstance.flush());
  return { output: Buffer.concat(out), result: meterInstance.result(), metadata: meterInstance.responseMetadata() };
}

describe('OpenAIAdapter.inspect of /v1/responses', () => {
  it('reads a streamed request', () => {
    const info = inspect({ model: 'gpt-4.1-mini', input: 'hi', stream: true, max_output_tokens: 300 });
    expect(info).toEqual({ model: 'gpt-4.1-mini', stream: true, maxOutputTokens: 300, clientWantsStreamUsage: true, operation: 'chat', api: 'responses' });
    expect(isResponsesRequest(info)).toBe(true);
  });

  it('leaves the limit unset when the client set none', () => {
    const info = inspect({ model: 'gpt-4.1-mini', input: [{ role: 'user', content: 'hi' }], max_output_tokens: null });
    expect(info.maxOutputTokens).toBeUndefined();
    expect(info.stream).toBe(false);
  });

  it('serves openai-compatible routes too', () => {
    expect(isResponsesRequest(inspect({ model: 'qwen3', input: 'hi' }, compatible))).toBe(true);
  });

  it('keeps chat requests apart', () => {
    expect(isResponsesRequest(openai.inspect('/v1/chat/completions', { model: 'gpt-4o', messages: [] }))).toBe(false);
  });

  it('rejects a malformed output limit naming the field', () => {
    expect(rejection({ model: 'gpt-4.1-mini', input: 'hi', max_output_tokens: 0 }).message).toBe('invalid field "max_output_tokens": expected a positive integer, got 0');
  });

  it('rejects a missing model', () => {
    expect(rejection({ input: 'hi' }).message).toBe('missing required field "model": set it to the id of the model to call');
  });

  it('rejects an input that is neither text nor items', () => {
    const error = rejection({ model: 'gpt-4.1-mini', input: { role: 'user' } });
    expect(error.status).toBe(400);
    expect(error.message).toBe('invalid field "input": expected a string or an array of input items, got object');
  });

  it('rejects fields whose input the body does not bound', () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ previous_response_id: 'resp_0' }, 'unsupported field "previous_response_id": it makes the provider add the earlier turns of that response'],
      [{ conversation: 'conv_0' }, 'unsupported field "conversation": it makes the provider add the stored items of that conversation'],
      [{ conversation: { id: 'conv_0' } }, 'unsupported field "conversation": it makes the provider add the stored items of that conversation'],
      [{ prompt: { id: 'pmpt_0' } }, 'unsupported field "prompt": it makes the provider add the text of a stored prompt template'],
      [{ background: true }, 'unsupported field "background": a background response is generated and billed after this request has ended'],
    ];
    for (const [fields, message] of cases) {
      const error = rejection({ model: 'gpt-4.1-mini', input: 'hi', ...fields });
      expect(error.status, JSON.stringify(fields)).toBe(400);
      expect(error.code, JSON.stringify(fields)).toBe('unsupported_parameter');
      expect(error.message.startsWith(message), error.message).toBe(true);
    }
  });

  it('accepts those fields when null or false', () => {
    const info = inspect({ model: 'gpt-4.1-mini', input: 'hi', previous_response_id: null, conversation: null, prompt: null, background: false });
    expect(info.model).toBe('gpt-4.1-mini');
  });

  it('rejects an item reference in the input', () => {
    const error = rejection({ model: 'gpt-4.1-mini', input: [{ role: 'user', content: 'hi' }, { type: 'item_reference', id: 'msg_0' }] });
    expect(error.code).toBe('unsupported_parameter');
    expect(error.message).toBe(
      'unsupported input item 1 of type "item_reference": the provider adds the stored item it names, which the sidecar cannot see or price; send the item itself in "input"',
    );
  });

  it('rejects an item without type or role as a reference', () => {
    for (const item of [{ id: 'msg_0' }, { id: 'msg_0', type: null }, { id: 'msg_0', type: null, role: null }]) {
      const error = rejection({ model: 'gpt-4.1-mini', input: [{ role: 'user', content: 'hi' }, item] });
      expect(error.code, JSON.stringify(item)).toBe('unsupported_parameter');
      expect(error.param, JSON.stringify(item)).toBe('input[1]');
      expect(error.message, JSON.stringify(item)).toBe(
        'unsupported input item 1 without "type" and "role": the provider reads it as an item_reference and adds the stored item it names, ' +
          'which the sidecar cannot see or price; send the item itself in "input", with its "type" (or its "role" for a message)',
      );
    }
  });

  it('accepts items that have a type or a role', () => {
    const input = [
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'hello', type: null },
      { type: 'message', role: 'developer', content: [{ type: 'input_text', text: 'be brief' }] },
      { type: 'function_call', call_id: 'call_1', name: 'lookup', arguments: '{}' },
      { type: 'function_call_output', call_id: 'call_1', output: '42' },
      { type: 'reasoning', id: 'rs_1', summary: [], encrypted_content: 'opaque' },
      { type: 'compaction_trigger' },
    ];
    expect(inspect({ model: 'gpt-4.1-mini', input }).model).toBe('gpt-4.1-mini');
  });

  it('names the field of each unsupported parameter', () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ previous_response_id: 'resp_0' }, 'previous_response_id'],
      [{ conversation: 'conv_0' }, 'conversation'],
      [{ prompt: { id: 'pmpt_0' } }, 'prompt'],
      [{ background: true }, 'background'],
      [{ input: [{ type: 'item_reference', id: 'msg_0' }] }, 'input[0]'],
      [{ input: 7 }, 'input'],
      [{ max_output_tokens: 0 }, 'max_output_tokens'],
      [{ stream: 'yes' }, 'stream'],
      [{ model: 7 }, 'model'],
    ];
    for (const [fields, param] of cases) {
      expect(rejection({ model: 'gpt-4.1-mini', input: 'hi', ...fields }).param, JSON.stringify(fields)).toBe(param);
    }
  });

  it('still rejects the other responses endpoints', () => {
    const error = rejection({ model: 'gpt-4.1-mini' }, '/v1/responses/resp_1/cancel');
    expect(error.status).toBe(404);
    expect(error.message).toBe('unsupported endpoint /v1/responses/resp_1/cancel: this route meters only /v1/chat/completions, /v1/responses and /v1/embeddings');
  });
});

describe('OpenAIAdapter.prepare of /v1/responses', () => {
  it('sets max_output_tokens the sidecar chose', () => {
    const body = { model: 'gpt-4.1-mini', input: 'hi' };
    const prepared = openai.prepare(body, inspect(body), { maxOutputTokens: 200 });
    expect(prepared).toEqual({ model: 'gpt-4.1-mini', input: 'hi', max_output_tokens: 200 });
    expect(body).toEqual({ model: 'gpt-4.1-mini', input: 'hi' });
  });

  it('lowers the client limit', () => {
    const body = { model: 'gpt-4.1-mini', input: 'hi', max_output_tokens: 1000 };
    expect(openai.prepare(body, inspect(body), { maxOutputTokens: 400 })['max_output_tokens']).toBe(400);
  });

  it('leaves a stream without changes as sent', () => {
    const body = { model: 'gpt-4.1-mini', input: 'hi', stream: true };
    const prepared = openai.prepare(body, inspect(body), {});
    expect(prepared).toBe(body);
    expect(prepared).not.toHaveProperty('stream_options');
    expect(prepared).not.toHaveProperty('max_completion_tokens');
  });
});

describe('Responses usage', () => {
  const info = inspect({ model: 'gpt-4.1-mini', input: 'hi' });

  it('moves cached and reasoning tokens out of input and output', () => {
    const { usage, complete } = openai.usageFromJson(responseObject('completed', USAGE), info, 9);
    expect(complete).toBe(true);
    expect(usage).toEqual({ input: 400, cacheRead: 600, cacheWrite5m: 0, cacheWrite1h: 0, output: 300, reasoning: 200, estimated: false });
  });

  it('bills cache writes as chat does', () => {
    const raw = { ...USAGE, input_tokens_details: { cached_tokens: 600, cache_write_tokens: 300 } };
    expect(openai.usageFromJson(responseObject('completed', raw), info, 9).usage).toMatchObject({ input: 100, cacheRead: 600, cacheWrite5m: 300 });
  });

  it('estimates a response without usage from its output', () => {
    const output = [
      { type: 'reasoning', id: 'rs_1', summary: [{ type: 'summary_text', text: 'alpha delta' }] },
      { type: 'function_call', id: 'fc_1', call_id: 'call_1', name: 'lookup', arguments: '{"q":"echo"}' },
      { type: 'message', id: 'msg_1', role: 'assistant', content: [{ type: 'output_text', text: 'hotel india', annotations: [] }, { type: 'refusal', refusal: 'no' }] },
    ];
    const { usage, complete } = openai.usageFromJson(responseObject('completed', undefined, { output }), info, 12);
    expect(complete).toBe(false);
    // alpha delta 2, lookup 1, {"q":"echo"} 5, hotel india 2, no 1
    expect(usage).toEqual({ input: 12, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 11, reasoning: 0, estimated: true });
  });

  it('estimates an impossible zero input count', () => {
    const raw = { ...USAGE, input_tokens: 0, input_tokens_details: { cached_tokens: 0 } };
    const { usage } = openai.usageFromJson(responseObject('completed', raw), info, 33);
    expect(usage.input).toBe(33);
    expect(usage.output).toBe(300);
    expect(usage.estimated).toBe(true);
  });
});

describe('Responses stream meter', () => {
  const info = inspect({ model: 'gpt-4.1-mini', input: 'hi', stream: true });
  const completed = streamEvents('response.completed').join('');

  it('passes every byte and reads the final usage at every split point', () => {
    for (let cut = 0; cut <= completed.length; cut += 7) {
      const { output, result, metadata } = meter(info, completed, [cut]);
      expect(output.toString('utf8'), `cut at ${cut}`).toBe(completed);
      expect(result, `cut at ${cut}`).toEqual({
        usage: { input: 400, cacheRead: 600, cacheWrite5m: 0, cacheWrite1h: 0, output: 300, reasoning: 200, estimated: false },
        complete: true,
      });
      expect(metadata, `cut at ${cut}`).toEqual({ id: 'resp_1', model: 'gpt-4.1-mini-2025-04-14', finishReasons: ['completed'] });
    }
  });

  it('reads usage and reason from response.incomplete', () => {
    const stream = streamEvents('response.incomplete', USAGE, true, { incomplete_details: { reason: 'max_output_tokens' } }).join('');
    const { result, metadata } = meter(info, stream, [200]);
    expect(result.complete).toBe(true);
    expect(result.usage.output).toBe(300);
    expect(metadata.finishReasons).toEqual(['max_output_tokens']);
  });

  it('reads usage from response.failed', () => {
    const { result, metadata } = meter(info, streamEvents('response.failed').join(''), []);
    expect(result.complete).toBe(true);
    expect(result.usage.input).toBe(400);
    expect(metadata.finishReasons).toEqual(['failed']);
  });

  it('estimates a failed response without usage', () => {
    const { result } = meter(info, streamEvents('response.failed', null).join(''), [], 21);
    expect(result).toEqual({ usage: { input: 21, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 4, reasoning: 0, estimated: true }, complete: false });
  });

  it('estimates the output seen before a cut', () => {
    const events = streamEvents(undefined);
    const cut = events.slice(0, 6).join('') + events[6]!.slice(0, 30);
    const { output, result, metadata } = meter(info, cut, [90], 10);
    expect(output.toString('utf8')).toBe(cut);
    // "alpha" and " delta echo" arrived whole; the third delta was cut.
    expect(result).toEqual({ usage: { input: 10, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 3, reasoning: 0, estimated: true }, complete: false });
    expect(metadata).toEqual({ id: 'resp_1', model: 'gpt-4.1-mini-2025-04-14', finishReasons: [] });
  });

  it('reads events without event lines by their type', () => {
    const { result, metadata } = meter(info, streamEvents('response.completed', USAGE, false).join(''), [50]);
    expect(result.usage.reasoning).toBe(200);
    expect(metadata.finishReasons).toEqual(['completed']);

    const cut = streamEvents(undefined, USAGE, false).join('');
    expect(meter(info, cut, [], 5).result.usage.output).toBe(4);
  });

  it('counts function call arguments and reasoning summaries', () => {
    const events = [
      event('response.function_call_arguments.delta', { item_id: 'fc_1', output_index: 0, delta: '{"q":"echo"}' }, 0),
      event('response.reasoning_summary_text.delta', { item_id: 'rs_1', output_index: 1, summary_index: 0, delta: 'alpha delta' }, 1),
      event('response.audio.delta', { delta: 'UklGRiQAAABXQVZFZm10IBAAAAABAAEA' }, 2),
    ].join('');
    // The deltas are counted as one text, {"q":"echo"}alpha delta, of 7 tokens; audio bytes count nothing.
    expect(meter(info, events, []).result.usage.output).toBe(7);
  });

  it('ignores an error event and malformed data', () => {
    const stream = `${streamEvents(undefined).join('')}event: error\ndata: {"type":"error","code":"server_error","message":"boom"}\n\nevent: response.completed\ndata: {not json\n\n`;
    const { result } = meter(info, stream, [], 3);
    expect(result.complete).toBe(false);
    expect(result.usage.output).toBe(4);
  });
});

describe('Responses web search tools', () => {
  const tools = [{ type: 'function', name: 'lookup', parameters: {} }, { type: 'web_search_preview_2025_03_11' }];
  const searchCall = (id: string, action: Record<string, unknown> | undefined) => ({ id, type: 'web_search_call', status: 'completed', ...(action ? { action } : {}) });
  const output = [
    searchCall('ws_1', { type: 'search', query: 'alpha' }),
    searchCall('ws_2', { type: 'open_page', url: 'https://example.com' }),
    searchCall('ws_3', { type: 'find_in_page', url: 'https://example.com', pattern: 'x' }),
    searchCall('ws_4', undefined),
    { id: 'msg_1', type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: 'hi', annotations: [] }] },
  ];

  it('reads max_tool_calls as the web search limit', () => {
    const info = inspect({ model: 'gpt-4.1-mini', input: 'hi', tools, max_tool_calls: 3 });
    expect(info.toolUseLimits).toEqual([{ field: 'max_tool_calls', tools: 'the web_search_preview_2025_03_11 tool', units: ['web_search'], maxUses: 3 }]);
  });

  it('leaves requests without web search unlimited', () => {
    const info = inspect({ model: 'gpt-4.1-mini', input: 'hi', tools: [tools[0]], max_tool_calls: 3 });
    expect(info.toolUseLimits).toBeUndefined();
  });

  it('rejects a malformed max_tool_calls', () => {
    expect(() => inspect({ model: 'gpt-4.1-mini', input: 'hi', tools, max_tool_calls: 0 })).toThrow('invalid field "max_tool_calls": expected a positive integer, got 0');
  });

  it('sets max_tool_calls the sidecar chose', () => {
    const body = { model: 'gpt-4.1-mini', input: 'hi', tools, max_output_tokens: 100 };
    const info = inspect(body);
    const prepared = openai.prepare(body, info, { toolUseLimits: new Map([[info.toolUseLimits![0]!, 4]]) });
    expect(prepared).toEqual({ ...body, max_tool_calls: 4 });
    expect(body).not.toHaveProperty('max_tool_calls');
  });

  it('keeps the client max_tool_calls', () => {
    const body = { model: 'gpt-4.1-mini', input: 'hi', tools, max_tool_calls: 2 };
    const info = inspect(body);
    expect(openai.prepare(body, info, { toolUseLimits: new Map([[info.toolUseLimits![0]!, 4]]) })).toBe(body);
  });

  it('counts search calls of a JSON response', () => {
    const info = inspect({ model: 'gpt-4.1-mini', input: 'hi', tools });
    // Page actions are not billable searches, and a call without an action is counted.
    const { usage } = openai.usageFromJson(responseObject('completed', USAGE, { output }), info, 0);
    expect(usage.units).toEqual({ web_search: 2 });
  });

  it('prefers the reported tool usage', () => {
    const info = inspect({ model: 'gpt-4.1-mini', input: 'hi', tools });
    const toolUsage = { image_gen: { input_tokens: 0, output_tokens: 0, total_tokens: 0 }, web_search: { num_requests: 5 } };
    const { usage } = openai.usageFromJson(responseObject('completed', USAGE, { output, tool_usage: toolUsage }), info, 0);
    expect(usage.units).toEqual({ web_search: 5 });
  });

  it('counts the searches of a response without usage', () => {
    const info = inspect({ model: 'gpt-4.1-mini', input: 'hi', tools });
    const { usage, complete } = openai.usageFromJson(responseObject('completed', undefined, { output }), info, 0);
    expect(complete).toBe(false);
    expect(usage.units).toEqual({ web_search: 2 });
  });

  it('reads the searches of a stream from its terminal event', () => {
    const info = inspect({ model: 'gpt-4.1-mini', input: 'hi', tools, stream: true });
    const stream = streamEvents('response.completed', USAGE, true, { output }).join('');
    for (let cut = 0; cut <= stream.length; cut += 11) {
      expect(meter(info, stream, [cut]).result.usage.units, `cut at ${cut}`).toEqual({ web_search: 2 });
    }
  });

  it('counts finished search items of a cut stream', () => {
    const info = inspect({ model: 'gpt-4.1-mini', input: 'hi', tools, stream: true });
    const items = [0, 1, 2].map((index) => event('response.output_item.done', { output_index: index, item: output[index] }, 20 + index));
    const unnamed = event('response.output_item.done', { output_index: 3, item: output[3] }, 23, false);
    const message = event('response.output_item.done', { output_index: 4, item: output[4] }, 24);
    const { result } = meter(info, [...streamEvents(undefined), ...items, unnamed, message].join(''), []);
    expect(result.complete).toBe(false);
    expect(result.usage.units).toEqual({ web_search: 2 });
  });
});
