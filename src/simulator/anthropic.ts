import type { IncomingHttpHeaders } from 'node:http';
import type { Controls } from './controls.ts';
import { bearerToken } from './openai.ts';
import { invalidRequest, type SimEndpoint, type SimProvider, type SimResponse, type StreamEvent } from './response.ts';
import { isRecord } from '../providers/fields.ts';
import { contentTokens, DEFAULT_OUTPUT_TOKENS, generatedPieces, messagesTokens } from './text.ts';

/** The Anthropic Messages API, as the `@anthropic-ai/sdk` package's types describe it. */

const ERROR_TYPES: ReadonlyMap<number, string> = new Map([
  [400, 'invalid_request_error'],
  [401, 'authentication_error'],
  [402, 'billing_error'],
  [403, 'permission_error'],
  [404, 'not_found_error'],
  [413, 'request_too_large'],
  [429, 'rate_limit_error'],
  [504, 'timeout_error'],
  [529, 'overloaded_error'],
]);

export const anthropicProvider: SimProvider = {
  /** Returns the key from `x-api-key`, or from `Authorization: Bearer`, which `@anthropic-ai/sdk` 1.x sends. */
  credential(headers: IncomingHttpHeaders): string | undefined {
    const header = headers['x-api-key'];
    const key = Array.isArray(header) ? header[0] : header;
    if (key !== undefined && key.length > 0) return key;
    return bearerToken(headers);
  },

  errorBody(status: number, message: string, requestId: string): unknown {
    const type = ERROR_TYPES.get(status) ?? (status >= 500 ? 'api_error' : 'invalid_request_error');
    return { type: 'error', error: { type, message }, request_id: `req_${requestId}` };
  },

  // Anthropic's 404 for an unknown path carries only this message, without the method or path.
  notFoundMessage: () => 'Not Found',

  requestIdHeader: 'request-id',
};

export const messagesEndpoint: SimEndpoint = {
  name: 'messages',
  provider: anthropicProvider,
  respond: respondToMessages,
};

function respondToMessages(body: Record<string, unknown>, controls: Controls, id: string): SimResponse {
  const model = body['model'];
  if (typeof model !== 'string' || model.length === 0) return invalidRequest(anthropicProvider, 'model: Field required', id);
  if (!Array.isArray(body['messages'])) return invalidRequest(anthropicProvider, 'messages: Field required', id);
  const limit = body['max_tokens'];
  if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1) {
    return invalidRequest(anthropicProvider, 'max_tokens: Field required', id);
  }

  const searches = webSearches(body['tools'], controls);
  if (typeof searches === 'string') return invalidRequest(anthropicProvider, searches, id);

  // The length the simulated model generates when no limit stops it.
  const naturalLength = controls.outputTokens ?? DEFAULT_OUTPUT_TOKENS;
  const tokens = Math.min(limit, naturalLength);
  const stopReason = limit < naturalLength ? 'max_tokens' : 'end_turn';
  const inputTokens = contentTokens(body['system']) + messagesTokens(body['messages']);
  const usage = controls.omitUsage ? undefined : (controls.usage ?? messagesUsage(inputTokens, tokens, searches));
  const pieces = generatedPieces(tokens, controls.chunks ?? tokens);
  const searchBlocks = webSearchBlocks(id, searches);

  const message: Record<string, unknown> = {
    id: `msg_${id}`,
    type: 'message',
    role: 'assistant',
    model,
    content: [],
    stop_reason: null,
    stop_sequence: null,
    stop_details: null,
    container: null,
    diagnostics: null,
  };

  if (body['stream'] === true) return { kind: 'stream', events: messageEvents(message, searchBlocks, pieces, stopReason, usage) };

  message['content'] = [...searchBlocks, { type: 'text', text: pieces.join(''), citations: null }];
  message['stop_reason'] = stopReason;
  if (usage !== undefined) message['usage'] = usage;
  return { kind: 'json', status: 200, body: message };
}

/**
 * Builds the events of a streamed message. `message_start` reports the
 * prompt counts with a placeholder output count of 1, as Anthropic's does,
 * and `message_delta` reports the final counts.
 */
function messageEvents(
  message: Record<string, unknown>,
  searchBlocks: Record<string, unknown>[],
  pieces: string[],
  stopReason: string,
  usage: Record<string, unknown> | undefined,
): StreamEvent[] {
  const events: StreamEvent[] = [];
  const event = (name: string, data: unknown, content = false): void => {
    events.push({ text: `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`, content });
  };

  const start = usage === undefined ? message : { ...message, usage: { ...usage, output_tokens: 1 } };
  event('message_start', { type: 'message_start', message: start });
  // A ping follows the first block start, as in Anthropic's streams.
  const startBlock = (index: number, block: Record<string, unknown>): void => {
    event('content_block_start', { type: 'content_block_start', index, content_block: block });
    if (index === 0) event('ping', { type: 'ping' });
  };
  // A server tool use block starts with an empty input, which one input_json_delta then fills in. A result block arrives whole.
  for (const [index, block] of searchBlocks.entries()) {
    if (block['type'] === 'server_tool_use') {
      startBlock(index, { ...block, input: {} });
      event('content_block_delta', { type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: JSON.stringify(block['input']) } });
    } else {
      startBlock(index, block);
    }
    event('content_block_stop', { type: 'content_block_stop', index });
  }
  const textIndex = searchBlocks.length;
  startBlock(textIndex, { type: 'text', text: '', citations: null });
  for (const piece of pieces) {
    event('content_block_delta', { type: 'content_block_delta', index: textIndex, delta: { type: 'text_delta', text: piece } }, true);
  }
  event('content_block_stop', { type: 'content_block_stop', index: textIndex });

  const delta: Record<string, unknown> = {
    type: 'message_delta',
    delta: { stop_reason: stopReason, stop_sequence: null, stop_details: null, container: null },
  };
  if (usage !== undefined) delta['usage'] = deltaUsage(usage);
  event('message_delta', delta);
  event('message_stop', { type: 'message_stop' });
  return events;
}

function messagesUsage(inputTokens: number, outputTokens: number, webSearchRequests: number): Record<string, unknown> {
  const usage: Record<string, unknown> = {
    input_tokens: inputTokens,
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: 0,
    cache_creation: { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: 0 },
    output_tokens: outputTokens,
    service_tier: 'standard',
  };
  if (webSearchRequests > 0) usage['server_tool_use'] = { web_search_requests: webSearchRequests, web_fetch_requests: 0 };
  return usage;
}

/**
 * Returns how many web searches the simulated model runs: none without a
 * web search tool (a type that starts with `web_search_`), else the
 * `x-sim-web-searches` control (default 1) up to the tool's `max_uses`.
 * Returns the error message of an invalid `max_uses`.
 */
function webSearches(tools: unknown, controls: Controls): number | string {
  if (!Array.isArray(tools)) return 0;
  for (const [index, tool] of tools.entries()) {
    if (!isRecord(tool) || typeof tool['type'] !== 'string' || !tool['type'].startsWith('web_search_')) continue;
    const maxUses = tool['max_uses'];
    if (maxUses === undefined || maxUses === null) return controls.webSearches ?? 1;
    if (typeof maxUses !== 'number' || !Number.isSafeInteger(maxUses) || maxUses < 1) {
      return `tools.${index}.${tool['type']}.max_uses: Input should be greater than 0`;
    }
    return Math.min(controls.webSearches ?? 1, maxUses);
  }
  return 0;
}

/** Builds a `server_tool_use` block and its `web_search_tool_result` block for each search. */
function webSearchBlocks(id: string, searches: number): Record<string, unknown>[] {
  const blocks: Record<string, unknown>[] = [];
  for (let search = 1; search <= searches; search++) {
    const toolUseId = `srvtoolu_${id}_${search}`;
    blocks.push({ type: 'server_tool_use', id: toolUseId, name: 'web_search', input: { query: `simulated query ${search}` }, caller: { type: 'direct' } });
    blocks.push({
      type: 'web_search_tool_result',
      tool_use_id: toolUseId,
      caller: { type: 'direct' },
      content: [
        {
          type: 'web_search_result',
          url: `https://example.com/result-${search}`,
          title: `Simulated result ${search}`,
          encrypted_content: Buffer.from(`simulated page ${search}`).toString('base64'),
          page_age: null,
        },
      ],
    });
  }
  return blocks;
}

/** Returns the cumulative counts of `message_delta`, which carries no `cache_creation` split or service tier. */
function deltaUsage(usage: Record<string, unknown>): Record<string, unknown> {
  const { cache_creation: _split, service_tier: _tier, ...counts } = usage;
  return counts;
}
