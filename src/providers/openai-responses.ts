import type { Usage } from '../rating/usage.ts';
import { InvalidRequestError, type RequestChanges, type RequestInfo, type ResponseMetadata, type StreamMeter, type ToolUseLimit } from './adapter.ts';
import { estimatedUsage, ResponseText, StreamedTextCounter, wholeTokens, type OutputText } from './estimate.ts';
import { isRecord, readCount, readFlag, readPositiveInteger } from './fields.ts';
import { normalizeChatUsage } from './openai.ts';
import { SseSplitter, type SseEvent } from './sse.ts';

/**
 * The OpenAI Responses API (`POST /v1/responses`), as the `openai` package's
 * types describe it: request fields, usage of JSON responses, and the
 * metering of its typed event streams.
 */

/** Request facts of a Responses API call, marked by `api` so that the OpenAI adapter reads its body and response with this module. */
export interface ResponsesRequestInfo extends RequestInfo {
  readonly api: 'responses';
}

export function isResponsesRequest(info: RequestInfo): info is ResponsesRequestInfo {
  return (info as Partial<ResponsesRequestInfo>).api === 'responses';
}

/**
 * Request fields that make the provider add input that the body does not
 * contain, so the hold cannot bound the call's cost, with what to send
 * instead. `background` is listed separately because it is a flag.
 */
const UNBOUNDED_INPUT_FIELDS: ReadonlyMap<string, string> = new Map([
  [
    'previous_response_id',
    'makes the provider add the earlier turns of that response, which the sidecar cannot see or price; ' +
      'send the earlier turns yourself in "input" (with "store": false, pass reasoning items back through include: ["reasoning.encrypted_content"])',
  ],
  [
    'conversation',
    'makes the provider add the stored items of that conversation, which the sidecar cannot see or price; ' +
      'send the earlier turns yourself in "input"',
  ],
  [
    'prompt',
    'makes the provider add the text of a stored prompt template, which the sidecar cannot see or price; ' +
      'send the prompt\'s text in "instructions" and "input"',
  ],
]);

/**
 * Reads model, stream flag and output limit of a Responses API body, and
 * rejects the requests whose cost the hold cannot bound (see
 * UNBOUNDED_INPUT_FIELDS and `background`).
 */
export function readResponsesRequest(model: string, body: Record<string, unknown>): ResponsesRequestInfo {
  for (const [field, reason] of UNBOUNDED_INPUT_FIELDS) {
    if (body[field] !== undefined && body[field] !== null) {
      throw new InvalidRequestError(`unsupported field "${field}": it ${reason}`, 400, 'unsupported_parameter', field);
    }
  }
  if (readFlag(body, 'background')) {
    throw new InvalidRequestError(
      'unsupported field "background": a background response is generated and billed after this request has ended, ' +
        'so the sidecar cannot meter it; send the request without "background", and set "stream": true for a long response',
      400,
      'unsupported_parameter',
      'background',
    );
  }
  checkInput(body['input']);

  const stream = readFlag(body, 'stream');
  const info: ResponsesRequestInfo = {
    model,
    stream,
    maxOutputTokens: readPositiveInteger(body, 'max_output_tokens'),
    // Every Responses stream ends with the whole response, usage included, so there is nothing to hide.
    clientWantsStreamUsage: stream,
    operation: 'chat',
    api: 'responses',
  };
  const webSearch = readWebSearchLimit(body);
  if (webSearch !== undefined) info.toolUseLimits = [webSearch];
  return info;
}

/**
 * Returns the limit on web searches of a request with a hosted web search tool
 * (`web_search`, `web_search_preview` and their dated types in `openai` 7.60,
 * matched by prefix so that later dated types count too), or undefined
 * without one. `max_tool_calls` bounds all built-in tool calls of a response
 * together, and each search is one of them.
 * NOTE: the hold assumes one billable search per `web_search_call`; the
 * provider's `tool_usage.web_search.num_requests` could report more.
 */
function readWebSearchLimit(body: Record<string, unknown>): ToolUseLimit | undefined {
  const tools = body['tools'];
  if (!Array.isArray(tools)) return undefined;
  const webSearch = tools.find((tool: unknown) => isRecord(tool) && typeof tool['type'] === 'string' && tool['type'].startsWith('web_search'));
  if (webSearch === undefined) return undefined;
  return {
    field: 'max_tool_calls',
    tools: `the ${String((webSearch as Record<string, unknown>)['type'])} tool`,
    units: ['web_search'],
    maxUses: readPositiveInteger(body, 'max_tool_calls'),
  };
}

/**
 * Checks that `input` is a string or an array of items, and rejects item
 * references, whose content the provider looks up by id.
 */
function checkInput(input: unknown): void {
  if (input === undefined || input === null || typeof input === 'string') return;
  if (!Array.isArray(input)) {
    throw new InvalidRequestError(`invalid field "input": expected a string or an array of input items, got ${typeof input}`, 400, 'invalid_request', 'input');
  }
  for (let index = 0; index < input.length; index++) {
    const item: unknown = input[index];
    if (!isRecord(item)) continue;
    if (item['type'] === 'item_reference') {
      throw new InvalidRequestError(
        `unsupported input item ${index} of type "item_reference": the provider adds the stored item it names, which the sidecar cannot see or price; ` +
          'send the item itself in "input"',
        400,
        'unsupported_parameter',
        `input[${index}]`,
      );
    }
    if (isUntypedReference(item)) {
      throw new InvalidRequestError(
        `unsupported input item ${index} without "type" and "role": the provider reads it as an item_reference and adds the stored item it names, ` +
          'which the sidecar cannot see or price; send the item itself in "input", with its "type" (or its "role" for a message)',
        400,
        'unsupported_parameter',
        `input[${index}]`,
      );
    }
  }
}

/**
 * Tells whether an input item is an item reference written without its
 * type. In the `openai` package's input item types (7.60), `type` is
 * optional only on messages, which require `role`, and on item references,
 * which have no `role` (and allow `"type": null`). So an item with neither
 * is a reference.
 */
function isUntypedReference(item: Record<string, unknown>): boolean {
  const absent = (value: unknown) => value === undefined || value === null;
  return absent(item['type']) && absent(item['role']);
}

/**
 * Returns the body to forward, with `max_output_tokens` set when the sidecar
 * chose an output limit, and `max_tool_calls` when it chose a tool use limit.
 */
export function prepareResponsesBody(body: Record<string, unknown>, changes: RequestChanges): Record<string, unknown> {
  let maxToolCalls: number | undefined;
  for (const [limit, maxUses] of changes.toolUseLimits ?? []) if (limit.field === 'max_tool_calls') maxToolCalls = maxUses;
  const setToolLimit = maxToolCalls !== undefined && (body['max_tool_calls'] === undefined || body['max_tool_calls'] === null);
  if (changes.maxOutputTokens === undefined && !setToolLimit) return body;
  const prepared = { ...body };
  // NOTE: OpenAI rejects a max_output_tokens below 16. The sidecar's default minimum
  // output limit is 16, but a lower limit set here reaches the provider and fails there.
  if (changes.maxOutputTokens !== undefined) prepared['max_output_tokens'] = changes.maxOutputTokens;
  // NOTE: max_tool_calls also bounds the request's other built-in tools, such as file search.
  if (setToolLimit) prepared['max_tool_calls'] = maxToolCalls;
  return prepared;
}

/** Reads the usage of a complete response object, estimating what it lacks (see normalizeResponsesUsage), with its web searches. */
export function responsesUsageFromJson(body: unknown, promptEstimate: number): { usage: Usage; complete: boolean } {
  const prompt = wholeTokens(promptEstimate);
  const text = new ResponseText();
  if (isRecord(body)) addOutputText(body['output'], text);
  const usage = isRecord(body) ? body['usage'] : undefined;
  const result = isRecord(usage) ? { usage: normalizeResponsesUsage(usage, prompt, text), complete: true } : { usage: estimatedUsage(prompt, text), complete: false };
  if (isRecord(body)) setWebSearches(result.usage, webSearchesOf(body));
  return result;
}

/**
 * Returns the billable web searches of a response object: the provider's
 * `tool_usage.web_search.num_requests` when it sent one, else its
 * `web_search_call` output items that ran a search.
 */
export function webSearchesOf(response: Record<string, unknown>): number {
  const toolUsage = response['tool_usage'];
  const reported = isRecord(toolUsage) && isRecord(toolUsage['web_search']) ? readCount(toolUsage['web_search']['num_requests']) : undefined;
  if (reported !== undefined) return reported;

  const output = response['output'];
  if (!Array.isArray(output)) return 0;
  let searches = 0;
  for (const item of output) if (isBillableSearch(item)) searches++;
  return searches;
}

/**
 * Tells whether an output item is a web search call that ran a search. Calls
 * that open or search within a page (`open_page`, `find_in_page` actions) are
 * left out, because the `openai` package documents them as not billable
 * searches. A call without an action is counted.
 */
function isBillableSearch(item: unknown): boolean {
  if (!isRecord(item) || item['type'] !== 'web_search_call') return false;
  const action = item['action'];
  return !isRecord(action) || (action['type'] !== 'open_page' && action['type'] !== 'find_in_page');
}

function setWebSearches(usage: Usage, searches: number): void {
  if (searches > 0) usage.units = { ...usage.units, web_search: searches };
}

/**
 * Converts Responses usage to disjoint counts, the way normalizeChatUsage
 * converts chat usage: `input_tokens` includes the cached tokens and
 * `output_tokens` includes the reasoning tokens, exactly as `prompt_tokens`
 * and `completion_tokens` do.
 */
export function normalizeResponsesUsage(raw: Record<string, unknown>, promptEstimate: number, text: OutputText): Usage {
  return normalizeChatUsage(
    {
      prompt_tokens: raw['input_tokens'],
      completion_tokens: raw['output_tokens'],
      total_tokens: raw['total_tokens'],
      prompt_tokens_details: raw['input_tokens_details'],
      completion_tokens_details: raw['output_tokens_details'],
    },
    promptEstimate,
    text,
  );
}

/**
 * Adds the generated text of the output items of a response: message text
 * and refusals, function and tool call names and arguments, code, and
 * reasoning summaries and text.
 */
function addOutputText(output: unknown, text: ResponseText): void {
  if (!Array.isArray(output)) return;
  for (const item of output) {
    if (!isRecord(item)) continue;
    text.add(item['name']);
    text.add(item['arguments']);
    text.add(item['input']);
    text.add(item['code']);
    for (const list of [item['content'], item['summary']]) {
      if (!Array.isArray(list)) continue;
      for (const part of list) {
        if (!isRecord(part)) continue;
        text.add(part['text']);
        text.add(part['refusal']);
      }
    }
  }
}

/** Stream events whose `delta` is generated text, counted for the estimate of a stream that ends without usage. */
const TEXT_DELTA_EVENTS: ReadonlySet<string> = new Set([
  'response.output_text.delta',
  'response.refusal.delta',
  'response.function_call_arguments.delta',
  'response.custom_tool_call_input.delta',
  'response.mcp_call_arguments.delta',
  'response.code_interpreter_call_code.delta',
  'response.reasoning_text.delta',
  'response.reasoning_summary_text.delta',
  'response.audio.transcript.delta',
]);

/**
 * Events whose response object is read: the first one for the id and model
 * of a stream that is cut later, and the terminal ones for usage and status.
 * `response.in_progress` repeats the first one, so it is not parsed.
 */
const RESPONSE_EVENTS: ReadonlySet<string> = new Set(['response.created']);
const TERMINAL_EVENTS: ReadonlySet<string> = new Set(['response.completed', 'response.incomplete', 'response.failed']);
/** The event of a finished output item, read for the web searches of a stream that is cut before its terminal event. */
const ITEM_DONE_EVENT = 'response.output_item.done';

/**
 * Meters one Responses API stream. It passes every byte through unchanged,
 * counts the text deltas, and reads usage, status and identity from the
 * response object of the terminal event. Events are distinguished by their
 * `event:` line, so the data of the many events it has no use for (the
 * `.done` events repeat the whole text) is not parsed. An event without that
 * line is parsed to read its `type`.
 */
export class ResponsesStreamMeter implements StreamMeter {
  readonly #promptEstimate: number;
  readonly #splitter: SseSplitter;
  readonly #text = new StreamedTextCounter();
  #usage: Record<string, unknown> | undefined;
  /** Billable web searches: those of the finished items until the terminal event, then the terminal response's. */
  #webSearches = 0;
  #id: string | undefined;
  #model: string | undefined;
  #finishReason: string | undefined;

  constructor(promptEstimate: number) {
    this.#promptEstimate = wholeTokens(promptEstimate);
    this.#splitter = new SseSplitter((event) => this.#onEvent(event));
  }

  push(chunk: Buffer): Buffer {
    return this.#splitter.push(chunk);
  }

  flush(): Buffer {
    return this.#splitter.flush();
  }

  result(): { usage: Usage; complete: boolean } {
    const result =
      this.#usage === undefined
        ? { usage: estimatedUsage(this.#promptEstimate, this.#text), complete: false }
        : { usage: normalizeResponsesUsage(this.#usage, this.#promptEstimate, this.#text), complete: true };
    setWebSearches(result.usage, this.#webSearches);
    return result;
  }

  /** Returns the id, the model, and as finish reason the terminal status or why the response is incomplete (such as `max_output_tokens`). */
  responseMetadata(): ResponseMetadata {
    return { id: this.#id, model: this.#model, finishReasons: this.#finishReason === undefined ? [] : [this.#finishReason] };
  }

  #onEvent(event: SseEvent): true {
    const named = event.event;
    if (event.data === undefined) return true;
    if (named === ITEM_DONE_EVENT) {
      // Only web search items are parsed, because a finished message item repeats its whole text.
      if (event.data.includes('"web_search_call"')) this.#readItemDone(event.data);
      return true;
    }
    if (named !== undefined && !TEXT_DELTA_EVENTS.has(named) && !RESPONSE_EVENTS.has(named) && !TERMINAL_EVENTS.has(named)) return true;

    let payload: unknown;
    try {
      payload = JSON.parse(event.data);
    } catch {
      return true;
    }
    if (!isRecord(payload)) return true;
    const type = named ?? payload['type'];
    if (typeof type !== 'string') return true;

    if (TEXT_DELTA_EVENTS.has(type)) {
      this.#text.add(payload['delta']);
    } else if (RESPONSE_EVENTS.has(type)) {
      this.#readIdentity(payload['response']);
    } else if (TERMINAL_EVENTS.has(type)) {
      this.#readTerminal(payload['response']);
    } else if (type === ITEM_DONE_EVENT && isBillableSearch(payload['item'])) {
      this.#webSearches++;
    }
    return true;
  }

  #readItemDone(data: string): void {
    let payload: unknown;
    try {
      payload = JSON.parse(data);
    } catch {
      return;
    }
    if (isRecord(payload) && isBillableSearch(payload['item'])) this.#webSearches++;
  }

  #readIdentity(response: unknown): void {
    if (!isRecord(response)) return;
    const id = response['id'];
    if (typeof id === 'string' && id.length > 0) this.#id = id;
    const model = response['model'];
    if (typeof model === 'string' && model.length > 0) this.#model = model;
  }

  #readTerminal(response: unknown): void {
    if (!isRecord(response)) return;
    this.#readIdentity(response);
    const usage = response['usage'];
    if (isRecord(usage)) this.#usage = usage;
    this.#webSearches = webSearchesOf(response);
    this.#finishReason = responseFinishReason(response);
  }
}

/**
 * Returns the finish reason of a response object: the reason it is
 * incomplete when it is (`max_output_tokens`, `content_filter`), else its
 * status (`completed`, `failed`), or undefined when it has neither.
 */
export function responseFinishReason(response: Record<string, unknown>): string | undefined {
  const details = response['incomplete_details'];
  if (isRecord(details) && typeof details['reason'] === 'string') return details['reason'];
  const status = response['status'];
  return typeof status === 'string' ? status : undefined;
}
