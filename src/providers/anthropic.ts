import { emptyUsage, type Usage } from '../rating/usage.ts';
import {
  InvalidRequestError,
  type ErrorDetails,
  type ProviderAdapter,
  type RequestChanges,
  type RequestInfo,
  type ResponseMetadata,
  type StreamMeter,
  type ToolUseLimit,
} from './adapter.ts';
import { isModelsPath, type EndpointKind } from './endpoints.ts';
import { estimatedUsage, ResponseText, StreamedTextCounter, wholeTokens, type OutputText } from './estimate.ts';
import { isRecord, pathOnly, readCount, readFlag, readPositiveInteger, requireModel } from './fields.ts';
import { SseSplitter, type SseEvent } from './sse.ts';

/** Adapter for the Anthropic Messages API (`POST /v1/messages`). */

/** API version sent when the client sends none. A client's own `anthropic-version` is forwarded unchanged. */
export const DEFAULT_ANTHROPIC_VERSION = '2023-06-01';

/** Error `type` values by HTTP status, as the Anthropic API documents them. */
const ERROR_TYPES: ReadonlyMap<number, string> = new Map([
  [400, 'invalid_request_error'],
  [401, 'authentication_error'],
  [402, 'billing_error'],
  [403, 'permission_error'],
  [404, 'not_found_error'],
  [409, 'conflict_error'],
  [413, 'request_too_large'],
  [429, 'rate_limit_error'],
  [500, 'api_error'],
  [504, 'timeout_error'],
  [529, 'overloaded_error'],
]);

/** `/v1/models` and `/v1/models/{model_id}`. */
const MODELS_PATHS: readonly RegExp[] = [/\/v1\/models(?:\/[^/]+)?$/];

export class AnthropicAdapter implements ProviderAdapter {
  readonly protocol = 'anthropic' as const;
  readonly defaultHeaders: Readonly<Record<string, string>> = { 'anthropic-version': DEFAULT_ANTHROPIC_VERSION };
  readonly meteredEndpoints = '/v1/messages';
  readonly modelsEndpoints = '/v1/models and /v1/models/{model_id}';

  inspect(path: string, body: Record<string, unknown>): RequestInfo {
    const endpoint = pathOnly(path);
    if (!endpoint.endsWith('/messages')) {
      // NOTE: /v1/messages/count_tokens costs nothing but is rejected too,
      // because RequestInfo has no operation for an unbilled call.
      throw new InvalidRequestError(
        `unsupported endpoint ${endpoint}: this route meters only ${this.meteredEndpoints}`,
        404,
        'unsupported_endpoint',
      );
    }

    const model = requireModel(body);
    const stream = readFlag(body, 'stream');
    const maxTokens = readPositiveInteger(body, 'max_tokens');
    if (maxTokens === undefined) {
      throw new InvalidRequestError('missing required field "max_tokens": the Messages API requires an output limit', 400, 'invalid_request', 'max_tokens');
    }
    // Anthropic streams always carry usage, so there is nothing to hide from the client.
    const info: RequestInfo = { model, stream, maxOutputTokens: maxTokens, clientWantsStreamUsage: true, operation: 'chat' };
    const toolUseLimits = readServerToolLimits(body['tools']);
    if (toolUseLimits.length > 0) info.toolUseLimits = toolUseLimits;
    return info;
  }

  endpointKind(path: string, basePath: string): EndpointKind | undefined {
    if (pathOnly(path).endsWith('/messages')) return 'metered';
    return isModelsPath(path, basePath, MODELS_PATHS) ? 'models' : undefined;
  }

  prepare(body: Record<string, unknown>, _info: RequestInfo, changes: RequestChanges): Record<string, unknown> {
    const tools = changes.toolUseLimits === undefined ? undefined : limitServerToolUses(body['tools'], changes.toolUseLimits);
    const limit = changes.maxOutputTokens;
    if (limit === undefined) return tools === undefined ? body : { ...body, tools };
    const prepared: Record<string, unknown> = { ...body, max_tokens: limit };
    if (tools !== undefined) prepared['tools'] = tools;

    // The thinking budget counts toward max_tokens and must stay below it.
    const thinking = body['thinking'];
    if (isRecord(thinking) && typeof thinking['budget_tokens'] === 'number' && thinking['budget_tokens'] >= limit) {
      prepared['thinking'] = { ...thinking, budget_tokens: limit - 1 };
    }
    return prepared;
  }

  usageFromJson(body: unknown, _info: RequestInfo, promptEstimate: number): { usage: Usage; complete: boolean } {
    const prompt = wholeTokens(promptEstimate);
    const text = new ResponseText();
    const content = isRecord(body) ? body['content'] : undefined;
    if (Array.isArray(content)) for (const block of content) addBlockText(block, text);

    const usage = isRecord(body) ? body['usage'] : undefined;
    if (!isRecord(usage)) return { usage: estimatedUsage(prompt, text), complete: false };
    return { usage: normalizeMessagesUsage(usage, prompt, text), complete: true };
  }

  createStreamMeter(_info: RequestInfo, promptEstimate: number): StreamMeter {
    return new AnthropicStreamMeter(wholeTokens(promptEstimate));
  }

  errorBody(error: ErrorDetails): Record<string, unknown> {
    const type = ERROR_TYPES.get(error.status) ?? (error.status >= 500 ? 'api_error' : 'invalid_request_error');
    // The SDK appends `details.error_code` and `type` to the message of the error it raises.
    return { type: 'error', error: { type, message: error.message, details: { error_code: error.code } }, request_id: null };
  }

  credentialHeaders(credential: string): Record<string, string> {
    return { 'x-api-key': credential };
  }
}

/**
 * Units that the server tools of each type prefix are metered as. The dated
 * types (`web_search_20250305`, `web_fetch_20250910` and later ones in
 * `@anthropic-ai/sdk` 1.17) all take `max_uses`, and a type prefix also
 * covers versions released after that package.
 */
const SERVER_TOOL_UNITS: readonly (readonly [prefix: string, unit: string])[] = [
  ['web_search_', 'web_search'],
  ['web_fetch_', 'web_fetch'],
];

/** Returns the unit that a tool of this type is metered as, or undefined for a tool billed by tokens only. */
function serverToolUnit(type: unknown): string | undefined {
  if (typeof type !== 'string') return undefined;
  return SERVER_TOOL_UNITS.find(([prefix]) => type.startsWith(prefix))?.[1];
}

/** Reads the `max_uses` of each web search and web fetch tool in `tools`, rejecting a value that is not a positive integer. */
function readServerToolLimits(tools: unknown): ToolUseLimit[] {
  if (!Array.isArray(tools)) return [];
  const limits: ToolUseLimit[] = [];
  for (let index = 0; index < tools.length; index++) {
    const tool: unknown = tools[index];
    if (!isRecord(tool)) continue;
    const unit = serverToolUnit(tool['type']);
    if (unit === undefined) continue;
    const field = `tools[${index}].max_uses`;
    const maxUses = tool['max_uses'];
    if (maxUses !== undefined && maxUses !== null && (typeof maxUses !== 'number' || !Number.isSafeInteger(maxUses) || maxUses < 1)) {
      throw new InvalidRequestError(`invalid field "${field}": expected a positive integer, got ${JSON.stringify(maxUses)}`, 400, 'invalid_request', field);
    }
    limits.push({ field, tools: `the ${String(tool['type'])} tool`, units: [unit], maxUses: typeof maxUses === 'number' ? maxUses : undefined, toolIndex: index });
  }
  return limits;
}

/** Returns a copy of `tools` with `max_uses` set on each server tool that `limits` names and the client left unlimited. */
function limitServerToolUses(tools: unknown, limits: ReadonlyMap<ToolUseLimit, number>): unknown[] | undefined {
  if (!Array.isArray(tools) || limits.size === 0) return undefined;
  const copy: unknown[] = [...tools];
  for (const [limit, maxUses] of limits) {
    const tool: unknown = limit.toolIndex === undefined ? undefined : copy[limit.toolIndex];
    if (!isRecord(tool) || (tool['max_uses'] !== undefined && tool['max_uses'] !== null)) continue;
    copy[limit.toolIndex!] = { ...tool, max_uses: maxUses };
  }
  return copy;
}

/**
 * Meters one Messages stream, passing every byte through. `message_start`
 * carries the prompt counts and a placeholder output count. `message_delta`
 * carries cumulative counts, so the latest value of each field wins and
 * events are never added together.
 */
class AnthropicStreamMeter implements StreamMeter {
  readonly #promptEstimate: number;
  readonly #splitter: SseSplitter;
  readonly #text = new StreamedTextCounter();
  /** The latest non-null value of each usage field seen so far. */
  readonly #usage: Record<string, unknown> = {};
  /** Server tool uses by unit, counted from the blocks that start them. */
  readonly #toolUses: Record<string, number> = {};
  #sawStart = false;
  #sawDelta = false;
  #id: string | undefined;
  #model: string | undefined;
  #stopReason: string | undefined;

  constructor(promptEstimate: number) {
    this.#promptEstimate = promptEstimate;
    this.#splitter = new SseSplitter((event) => this.#onEvent(event));
  }

  push(chunk: Buffer): Buffer {
    return this.#splitter.push(chunk);
  }

  flush(): Buffer {
    return this.#splitter.flush();
  }

  result(): { usage: Usage; complete: boolean } {
    if (this.#sawDelta) {
      return { usage: normalizeMessagesUsage(this.#usage, this.#promptEstimate, this.#text), complete: true };
    }
    if (!this.#sawStart) {
      const usage = estimatedUsage(this.#promptEstimate, this.#text);
      this.#addToolUses(usage);
      return { usage, complete: false };
    }

    // Cut before message_delta: message_start's output count is a placeholder,
    // so the output is estimated from the deltas seen, and the tool uses are
    // the server_tool_use blocks seen.
    const partial = { ...this.#usage, output_tokens: undefined };
    const usage = normalizeMessagesUsage(partial, this.#promptEstimate, this.#text);
    usage.estimated = true;
    this.#addToolUses(usage);
    return { usage, complete: false };
  }

  responseMetadata(): ResponseMetadata {
    return { id: this.#id, model: this.#model, finishReasons: this.#stopReason === undefined ? [] : [this.#stopReason] };
  }

  /** Raises each unit count of a cut stream's usage to the tool uses seen, where they are more. */
  #addToolUses(usage: Usage): void {
    for (const unit in this.#toolUses) {
      const seen = this.#toolUses[unit]!;
      if (seen > (usage.units?.[unit] ?? 0)) {
        usage.units ??= {};
        usage.units[unit] = seen;
      }
    }
  }

  #onEvent(event: SseEvent): boolean {
    const type = event.event;
    if (type === 'ping' || type === 'content_block_stop' || type === 'message_stop') return true;
    if (event.data === undefined) return true;
    // Most block starts are not parsed: a web search result block repeats whole pages.
    if (type === 'content_block_start' && !event.data.includes('"server_tool_use"')) return true;

    let payload: unknown;
    try {
      payload = JSON.parse(event.data);
    } catch {
      return true;
    }
    if (!isRecord(payload)) return true;

    switch (type ?? payload['type']) {
      case 'content_block_start':
        this.#countToolUse(payload['content_block']);
        break;
      case 'content_block_delta':
        addDeltaText(payload['delta'], this.#text);
        break;
      case 'message_start': {
        const message = payload['message'];
        if (!isRecord(message)) break;
        if (typeof message['id'] === 'string') this.#id = message['id'];
        if (typeof message['model'] === 'string') this.#model = message['model'];
        if (isRecord(message['usage'])) {
          this.#sawStart = true;
          this.#merge(message['usage']);
        }
        break;
      }
      case 'message_delta': {
        const delta = payload['delta'];
        if (isRecord(delta) && typeof delta['stop_reason'] === 'string') this.#stopReason = delta['stop_reason'];
        if (isRecord(payload['usage'])) {
          this.#sawDelta = true;
          this.#merge(payload['usage']);
        }
        break;
      }
    }
    return true;
  }

  /**
   * Counts a `server_tool_use` block of a metered tool, for a stream cut before its final usage.
   * NOTE: a use that the provider then rejects (`max_uses_exceeded`) is counted too.
   */
  #countToolUse(block: unknown): void {
    if (!isRecord(block) || block['type'] !== 'server_tool_use') return;
    const unit = block['name'];
    if (unit !== 'web_search' && unit !== 'web_fetch') return;
    this.#toolUses[unit] = (this.#toolUses[unit] ?? 0) + 1;
  }

  #merge(usage: Record<string, unknown>): void {
    for (const key in usage) {
      const value = usage[key];
      if (value !== null && value !== undefined) this.#usage[key] = value;
    }
  }
}

/**
 * Converts Messages usage to disjoint counts. `input_tokens` already excludes
 * cache reads and writes. Cache writes go to the five-minute bucket unless
 * `cache_creation` splits them by lifetime. A missing count, or a zero that
 * cannot be true, is replaced by an estimate.
 */
export function normalizeMessagesUsage(raw: Record<string, unknown>, promptEstimate: number, text: OutputText): Usage {
  const usage = emptyUsage();
  usage.cacheRead = readCount(raw['cache_read_input_tokens']) ?? 0;
  splitCacheWrites(raw, usage);

  const cached = usage.cacheRead + usage.cacheWrite5m + usage.cacheWrite1h;
  const input = readCount(raw['input_tokens']);
  if (input === undefined || (input + cached === 0 && promptEstimate > 0)) {
    usage.input = Math.max(promptEstimate - cached, 0);
    usage.estimated = true;
  } else {
    usage.input = input;
  }

  // NOTE: output_tokens includes thinking tokens, which Anthropic bills at the
  // output rate. output_tokens_details.thinking_tokens is only approximate,
  // so all of it stays in `output`.
  const output = readCount(raw['output_tokens']);
  if (output === undefined || (output === 0 && text.sawText)) {
    usage.output = text.total();
    usage.estimated = true;
  } else {
    usage.output = output;
  }

  const tools = raw['server_tool_use'];
  if (isRecord(tools)) {
    const searches = readCount(tools['web_search_requests']) ?? 0;
    const fetches = readCount(tools['web_fetch_requests']) ?? 0;
    if (searches > 0 || fetches > 0) {
      usage.units = {};
      if (searches > 0) usage.units['web_search'] = searches;
      if (fetches > 0) usage.units['web_fetch'] = fetches;
    }
  }
  return usage;
}

/**
 * `cache_creation_input_tokens` is the total of cache writes. When
 * `cache_creation` splits it, the one-hour part is taken from the split and
 * the rest of the total is five-minute writes (a stream's total can be newer
 * than its split).
 */
function splitCacheWrites(raw: Record<string, unknown>, usage: Usage): void {
  const total = readCount(raw['cache_creation_input_tokens']);
  const split = raw['cache_creation'];
  if (!isRecord(split)) {
    usage.cacheWrite5m = total ?? 0;
    return;
  }
  const oneHour = readCount(split['ephemeral_1h_input_tokens']) ?? 0;
  const fiveMinutes = readCount(split['ephemeral_5m_input_tokens']) ?? 0;
  usage.cacheWrite1h = total === undefined ? oneHour : Math.min(oneHour, total);
  usage.cacheWrite5m = total === undefined ? fiveMinutes : total - usage.cacheWrite1h;
}

/** Adds the generated text of one content block of a complete message. */
function addBlockText(block: unknown, text: ResponseText): void {
  if (!isRecord(block)) return;
  switch (block['type']) {
    case 'text':
      text.add(block['text']);
      break;
    case 'thinking':
      text.add(block['thinking']);
      break;
    case 'tool_use':
    case 'server_tool_use':
      text.add(block['name']);
      text.add(JSON.stringify(block['input'] ?? {}));
      break;
  }
}

/** Adds the generated text of one `content_block_delta`. */
function addDeltaText(delta: unknown, text: StreamedTextCounter): void {
  if (!isRecord(delta)) return;
  switch (delta['type']) {
    case 'text_delta':
      text.add(delta['text']);
      break;
    case 'thinking_delta':
      text.add(delta['thinking']);
      break;
    case 'input_json_delta':
      text.add(delta['partial_json']);
      break;
  }
}
