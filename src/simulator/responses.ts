import { countTextTokens } from '../providers/estimate.ts';
import { isRecord } from '../providers/fields.ts';
import type { Controls } from './controls.ts';
import { openaiProvider } from './openai.ts';
import { invalidRequest, type SimEndpoint, type SimResponse, type StreamEvent } from './response.ts';
import { contentTokens, DEFAULT_OUTPUT_TOKENS, generatedPieces } from './text.ts';

/** The OpenAI Responses API (`POST /v1/responses`), as the `openai` package's types describe it. */

/** The smallest `max_output_tokens` OpenAI accepts. */
export const MIN_RESPONSES_OUTPUT_TOKENS = 16;

export const responsesEndpoint: SimEndpoint = {
  name: 'responses',
  provider: openaiProvider,
  respond: respondToResponses,
};

/** Identity, request settings and outcome of one simulated response, everything but its text. */
interface ResponseShape {
  id: string;
  messageId: string;
  createdAt: number;
  model: string;
  body: Record<string, unknown>;
  limit: number | undefined;
  incomplete: boolean;
  /** Web searches the model ran, or undefined when the request enables no web search tool. */
  webSearches: number | undefined;
}

/** Builds a response, JSON or streamed, for a body with a model and an input. */
export function respondToResponses(body: Record<string, unknown>, controls: Controls, id: string): SimResponse {
  const model = body['model'];
  if (typeof model !== 'string' || model.length === 0) return invalidRequest(openaiProvider, "Missing required parameter: 'model'.", id);
  const input = body['input'];
  if (typeof input !== 'string' && !Array.isArray(input)) return invalidRequest(openaiProvider, "Missing required parameter: 'input'.", id);

  const rawLimit = body['max_output_tokens'];
  const limit = typeof rawLimit === 'number' ? rawLimit : undefined;
  if (limit !== undefined && (!Number.isSafeInteger(limit) || limit < MIN_RESPONSES_OUTPUT_TOKENS)) {
    return invalidRequest(
      openaiProvider,
      `Invalid 'max_output_tokens': integer below minimum value. Expected a value >= ${MIN_RESPONSES_OUTPUT_TOKENS}, but got ${String(rawLimit)} instead.`,
      id,
    );
  }

  const maxToolCalls = body['max_tool_calls'];
  if (maxToolCalls !== undefined && maxToolCalls !== null && (typeof maxToolCalls !== 'number' || !Number.isSafeInteger(maxToolCalls) || maxToolCalls < 0)) {
    return invalidRequest(openaiProvider, `Invalid 'max_tool_calls': expected a non-negative integer, but got ${JSON.stringify(maxToolCalls)} instead.`, id);
  }
  const webSearches = hasWebSearchTool(body['tools']) ? Math.min(controls.webSearches ?? 1, typeof maxToolCalls === 'number' ? maxToolCalls : Infinity) : undefined;

  // The length the simulated model generates when no limit stops it.
  const naturalLength = controls.outputTokens ?? DEFAULT_OUTPUT_TOKENS;
  const tokens = limit === undefined ? naturalLength : Math.min(limit, naturalLength);
  const shape: ResponseShape = {
    id: `resp_${id}`,
    messageId: `msg_${id}`,
    createdAt: Math.floor(Date.now() / 1000),
    model,
    body,
    limit,
    incomplete: limit !== undefined && limit < naturalLength,
    webSearches,
  };
  const inputTokens = responsesInputTokens(body);
  const usage = controls.omitUsage ? undefined : (controls.usage ?? responsesUsage(inputTokens, tokens));
  const pieces = generatedPieces(tokens, controls.chunks ?? tokens);

  if (body['stream'] === true) return { kind: 'stream', events: responseEvents(shape, pieces, usage) };
  const output = [...webSearchItems(shape, true), messageItem(shape, pieces.join(''), true)];
  return { kind: 'json', status: 200, body: responseObject(shape, output, usage, true) };
}

/** Tells whether `tools` has a hosted web search tool (`web_search`, `web_search_preview` or a dated type of either). */
function hasWebSearchTool(tools: unknown): boolean {
  return Array.isArray(tools) && tools.some((tool: unknown) => isRecord(tool) && typeof tool['type'] === 'string' && tool['type'].startsWith('web_search'));
}

/** Builds one `web_search_call` item per search the model ran. Before it is done an item has status `in_progress` and no query. */
function webSearchItems(shape: ResponseShape, done: boolean): Record<string, unknown>[] {
  const items: Record<string, unknown>[] = [];
  for (let search = 1; search <= (shape.webSearches ?? 0); search++) {
    const query = `simulated query ${search}`;
    items.push({
      id: `ws_${shape.id}_${search}`,
      type: 'web_search_call',
      status: done ? 'completed' : 'in_progress',
      action: done ? { type: 'search', query, queries: [query] } : { type: 'search' },
    });
  }
  return items;
}

/**
 * Counts the input tokens of a Responses body: `instructions`, and `input`
 * as a string or as items. Message items count their content's text, and
 * function call outputs their output. Other items count nothing.
 */
export function responsesInputTokens(body: Record<string, unknown>): number {
  let tokens = typeof body['instructions'] === 'string' ? countTextTokens(body['instructions']) : 0;
  const input = body['input'];
  if (typeof input === 'string') return tokens + countTextTokens(input);
  if (!Array.isArray(input)) return tokens;
  for (const item of input) {
    if (!isRecord(item)) continue;
    tokens += contentTokens(item['content']);
    if (typeof item['output'] === 'string') tokens += countTextTokens(item['output']);
  }
  return tokens;
}

function responsesUsage(inputTokens: number, outputTokens: number): Record<string, unknown> {
  return {
    input_tokens: inputTokens,
    input_tokens_details: { cached_tokens: 0, cache_write_tokens: 0 },
    output_tokens: outputTokens,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: inputTokens + outputTokens,
  };
}

/**
 * Builds the response object. `done` false gives the object of the opening
 * events: status `in_progress`, no output and null usage. Done, it is
 * `completed`, or `incomplete` with the reason when the output limit cut it.
 * `usage` undefined leaves the field out.
 */
function responseObject(shape: ResponseShape, output: unknown[], usage: Record<string, unknown> | undefined, done: boolean): Record<string, unknown> {
  const { body } = shape;
  let status = 'in_progress';
  if (done) status = shape.incomplete ? 'incomplete' : 'completed';
  const response: Record<string, unknown> = {
    id: shape.id,
    object: 'response',
    created_at: shape.createdAt,
    status,
    background: false,
    completed_at: done && !shape.incomplete ? shape.createdAt : null,
    error: null,
    incomplete_details: done && shape.incomplete ? { reason: 'max_output_tokens' } : null,
    instructions: typeof body['instructions'] === 'string' ? body['instructions'] : null,
    max_output_tokens: shape.limit ?? null,
    max_tool_calls: typeof body['max_tool_calls'] === 'number' ? body['max_tool_calls'] : null,
    model: shape.model,
    output,
    parallel_tool_calls: true,
    previous_response_id: null,
    reasoning: { effort: null, summary: null },
    service_tier: 'default',
    store: body['store'] !== false,
    temperature: typeof body['temperature'] === 'number' ? body['temperature'] : 1,
    text: { format: { type: 'text' }, verbosity: 'medium' },
    tool_choice: 'auto',
    tools: Array.isArray(body['tools']) ? body['tools'] : [],
    top_logprobs: 0,
    top_p: typeof body['top_p'] === 'number' ? body['top_p'] : 1,
    truncation: 'disabled',
    metadata: isRecord(body['metadata']) ? body['metadata'] : {},
  };
  if (!done) response['usage'] = null;
  else if (usage !== undefined) response['usage'] = usage;
  if (done && shape.webSearches !== undefined) response['tool_usage'] = toolUsage(shape.webSearches);
  response['user'] = null;
  return response;
}

/** Builds the `tool_usage` of a response with web searches, with zero image generation, as the `openai` package's types describe it. */
function toolUsage(webSearches: number): Record<string, unknown> {
  return {
    image_gen: { input_tokens: 0, input_tokens_details: { image_tokens: 0, text_tokens: 0 }, output_tokens: 0, total_tokens: 0 },
    web_search: { num_requests: webSearches },
  };
}

/** Builds the assistant message item. Before it is done it has no content and status `in_progress`. */
function messageItem(shape: ResponseShape, text: string, done: boolean): Record<string, unknown> {
  let status = 'in_progress';
  if (done) status = shape.incomplete ? 'incomplete' : 'completed';
  return {
    id: shape.messageId,
    type: 'message',
    status,
    content: done ? [outputText(text)] : [],
    role: 'assistant',
  };
}

function outputText(text: string): Record<string, unknown> {
  return { type: 'output_text', annotations: [], logprobs: [], text };
}

/**
 * Builds the events of a streamed response, each with its `event:` line, the
 * same `type` in its data, and a `sequence_number` counting from 0. The
 * text deltas are the content events that delays and cuts count.
 */
function responseEvents(shape: ResponseShape, pieces: string[], usage: Record<string, unknown> | undefined): StreamEvent[] {
  const events: StreamEvent[] = [];
  const emit = (type: string, fields: Record<string, unknown>, content = false): void => {
    const data = { type, ...fields, sequence_number: events.length };
    events.push({ text: `event: ${type}\ndata: ${JSON.stringify(data)}\n\n`, content });
  };
  const text = pieces.join('');
  const searches = webSearchItems(shape, true);
  const messageIndex = searches.length;
  const position = { item_id: shape.messageId, output_index: messageIndex, content_index: 0 };

  emit('response.created', { response: responseObject(shape, [], undefined, false) });
  emit('response.in_progress', { response: responseObject(shape, [], undefined, false) });
  const started = webSearchItems(shape, false);
  for (const [index, search] of searches.entries()) {
    const call = { output_index: index, item_id: search['id'] };
    emit('response.output_item.added', { output_index: index, item: started[index] });
    emit('response.web_search_call.in_progress', call);
    emit('response.web_search_call.searching', call);
    emit('response.web_search_call.completed', call);
    emit('response.output_item.done', { output_index: index, item: search });
  }
  emit('response.output_item.added', { output_index: messageIndex, item: messageItem(shape, '', false) });
  emit('response.content_part.added', { ...position, part: outputText('') });
  for (const piece of pieces) emit('response.output_text.delta', { ...position, delta: piece, logprobs: [] }, true);
  emit('response.output_text.done', { ...position, text, logprobs: [] });
  emit('response.content_part.done', { ...position, part: outputText(text) });

  const item = messageItem(shape, text, true);
  emit('response.output_item.done', { output_index: messageIndex, item });
  const terminal = shape.incomplete ? 'response.incomplete' : 'response.completed';
  emit(terminal, { response: responseObject(shape, [...searches, item], usage, true) });
  return events;
}
