import type { IncomingHttpHeaders } from 'node:http';
import type { Controls } from './controls.ts';
import { bearerToken } from './openai.ts';
import { invalidRequest, type SimEndpoint, type SimProvider, type SimResponse, type StreamEvent } from './response.ts';
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

  // The length the simulated model generates when no limit stops it.
  const naturalLength = controls.outputTokens ?? DEFAULT_OUTPUT_TOKENS;
  const tokens = Math.min(limit, naturalLength);
  const stopReason = limit < naturalLength ? 'max_tokens' : 'end_turn';
  const inputTokens = contentTokens(body['system']) + messagesTokens(body['messages']);
  const usage = controls.omitUsage ? undefined : (controls.usage ?? messagesUsage(inputTokens, tokens));
  const pieces = generatedPieces(tokens, controls.chunks ?? tokens);

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

  if (body['stream'] === true) return { kind: 'stream', events: messageEvents(message, pieces, stopReason, usage) };

  message['content'] = [{ type: 'text', text: pieces.join(''), citations: null }];
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
  event('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '', citations: null } });
  event('ping', { type: 'ping' });
  for (const piece of pieces) {
    event('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: piece } }, true);
  }
  event('content_block_stop', { type: 'content_block_stop', index: 0 });

  const delta: Record<string, unknown> = {
    type: 'message_delta',
    delta: { stop_reason: stopReason, stop_sequence: null, stop_details: null, container: null },
  };
  if (usage !== undefined) delta['usage'] = deltaUsage(usage);
  event('message_delta', delta);
  event('message_stop', { type: 'message_stop' });
  return events;
}

function messagesUsage(inputTokens: number, outputTokens: number): Record<string, unknown> {
  return {
    input_tokens: inputTokens,
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: 0,
    cache_creation: { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: 0 },
    output_tokens: outputTokens,
    service_tier: 'standard',
  };
}

/** Returns the cumulative counts of `message_delta`, which carries no `cache_creation` split or service tier. */
function deltaUsage(usage: Record<string, unknown>): Record<string, unknown> {
  const { cache_creation: _split, service_tier: _tier, ...counts } = usage;
  return counts;
}
