import type { IncomingHttpHeaders } from 'node:http';
import { countTextTokens } from '../providers/estimate.ts';
import { isRecord } from '../providers/fields.ts';
import type { Controls } from './controls.ts';
import { invalidRequest, type SimEndpoint, type SimProvider, type SimResponse, type StreamEvent } from './response.ts';
import { DEFAULT_OUTPUT_TOKENS, generatedPieces, messagesTokens } from './text.ts';

/** The OpenAI Chat Completions and Embeddings APIs, as the `openai` package's types describe them. */

const SYSTEM_FINGERPRINT = 'fp_tollgate_sim';

/** Vector length when the request sets no `dimensions`, kept short so the simulator stays fast. */
export const DEFAULT_EMBEDDING_DIMENSIONS = 8;
const MAX_EMBEDDING_DIMENSIONS = 4096;

const ERROR_TYPES: ReadonlyMap<number, string> = new Map([
  [401, 'invalid_request_error'],
  [429, 'rate_limit_exceeded'],
]);

/** Returns the token of an `Authorization: Bearer` header, or undefined. */
export function bearerToken(headers: IncomingHttpHeaders): string | undefined {
  const header = headers['authorization'];
  if (header === undefined || !header.startsWith('Bearer ')) return undefined;
  const token = header.slice('Bearer '.length).trim();
  return token.length > 0 ? token : undefined;
}

export const openaiProvider: SimProvider = {
  credential: bearerToken,

  errorBody(status: number, message: string): unknown {
    const type = ERROR_TYPES.get(status) ?? (status >= 500 ? 'server_error' : 'invalid_request_error');
    const code = status === 401 ? 'invalid_api_key' : null;
    return { error: { message, type, param: null, code } };
  },

  notFoundMessage: (method: string, path: string) => `Invalid URL (${method} ${path})`,

  requestIdHeader: 'x-request-id',
};

export const chatCompletionsEndpoint: SimEndpoint = {
  name: 'chat',
  provider: openaiProvider,
  respond: respondToChat,
};

export const embeddingsEndpoint: SimEndpoint = {
  name: 'embeddings',
  provider: openaiProvider,
  respond: respondToEmbeddings,
};

/** Builds a chat completion, JSON or streamed, for a body whose `model` is set. */
export function respondToChat(body: Record<string, unknown>, controls: Controls, id: string): SimResponse {
  const model = body['model'];
  if (typeof model !== 'string' || model.length === 0) return invalidRequest(openaiProvider, 'you must provide a model parameter', id);
  if (!Array.isArray(body['messages'])) return invalidRequest(openaiProvider, "missing required parameter: 'messages'", id);

  const limit = positiveInteger(body['max_completion_tokens']) ?? positiveInteger(body['max_tokens']);
  // The length the simulated model generates when no limit stops it.
  const naturalLength = controls.outputTokens ?? DEFAULT_OUTPUT_TOKENS;
  const tokens = limit === undefined ? naturalLength : Math.min(limit, naturalLength);
  const finishReason = limit !== undefined && limit < naturalLength ? 'length' : 'stop';
  const choices = positiveInteger(body['n']) ?? 1;
  const promptTokens = messagesTokens(body['messages']);
  const usage = controls.omitUsage ? undefined : (controls.usage ?? chatUsage(promptTokens, tokens * choices));

  const completion = {
    id: `chatcmpl-${id}`,
    created: Math.floor(Date.now() / 1000),
    model,
  };
  const pieces = generatedPieces(tokens, controls.chunks ?? tokens);

  if (body['stream'] === true) {
    const options = body['stream_options'];
    const includeUsage = isRecord(options) && options['include_usage'] === true;
    return { kind: 'stream', events: chatChunks(completion, pieces, choices, finishReason, includeUsage, usage) };
  }

  const text = pieces.join('');
  const result: Record<string, unknown> = {
    id: completion.id,
    object: 'chat.completion',
    created: completion.created,
    model,
    choices: Array.from({ length: choices }, (_, index) => ({
      index,
      message: { role: 'assistant', content: text, refusal: null, annotations: [] },
      logprobs: null,
      finish_reason: finishReason,
    })),
  };
  if (usage !== undefined) result['usage'] = usage;
  result['service_tier'] = 'default';
  result['system_fingerprint'] = SYSTEM_FINGERPRINT;
  return { kind: 'json', status: 200, body: result };
}

/**
 * Builds the chunks of a streamed completion. Each choice gets a role chunk,
 * its content chunks and a finish chunk. A usage chunk with no choices
 * follows when the request set `include_usage`, and `[DONE]` ends the stream.
 * With `include_usage`, every other chunk carries `"usage":null`, as OpenAI's do.
 */
function chatChunks(
  completion: { id: string; created: number; model: string },
  pieces: string[],
  choices: number,
  finishReason: string,
  includeUsage: boolean,
  usage: Record<string, unknown> | undefined,
): StreamEvent[] {
  const events: StreamEvent[] = [];
  const chunk = (choice: Record<string, unknown>, content: boolean): void => {
    const fields: Record<string, unknown> = {
      id: completion.id,
      object: 'chat.completion.chunk',
      created: completion.created,
      model: completion.model,
      service_tier: 'default',
      system_fingerprint: SYSTEM_FINGERPRINT,
      choices: [choice],
    };
    if (includeUsage) fields['usage'] = null;
    events.push({ text: `data: ${JSON.stringify(fields)}\n\n`, content });
  };

  for (let index = 0; index < choices; index++) {
    chunk({ index, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }, false);
    for (const piece of pieces) chunk({ index, delta: { content: piece }, logprobs: null, finish_reason: null }, true);
    chunk({ index, delta: {}, logprobs: null, finish_reason: finishReason }, false);
  }

  if (includeUsage && usage !== undefined) {
    const last = {
      id: completion.id,
      object: 'chat.completion.chunk',
      created: completion.created,
      model: completion.model,
      service_tier: 'default',
      system_fingerprint: SYSTEM_FINGERPRINT,
      choices: [],
      usage,
    };
    events.push({ text: `data: ${JSON.stringify(last)}\n\n`, content: false });
  }
  events.push({ text: 'data: [DONE]\n\n', content: false });
  return events;
}

function chatUsage(promptTokens: number, completionTokens: number): Record<string, unknown> {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
  };
}

/** Builds an embeddings response for a body whose `model` is set. */
export function respondToEmbeddings(body: Record<string, unknown>, controls: Controls, id: string): SimResponse {
  const model = body['model'];
  if (typeof model !== 'string' || model.length === 0) return invalidRequest(openaiProvider, 'you must provide a model parameter', id);
  const inputs = embeddingInputs(body['input']);
  if (inputs === undefined) {
    return invalidRequest(openaiProvider, "invalid 'input': expected a string, an array of strings, or token arrays", id);
  }

  const dimensions = positiveInteger(body['dimensions']) ?? DEFAULT_EMBEDDING_DIMENSIONS;
  if (dimensions > MAX_EMBEDDING_DIMENSIONS) {
    return invalidRequest(openaiProvider, `invalid 'dimensions': at most ${MAX_EMBEDDING_DIMENSIONS}`, id);
  }
  const base64 = body['encoding_format'] === 'base64';

  let promptTokens = 0;
  const data = inputs.map((input, index) => {
    promptTokens += typeof input === 'string' ? countTextTokens(input) : input.length;
    return { object: 'embedding', index, embedding: embeddingVector(index, dimensions, base64) };
  });

  const result: Record<string, unknown> = { object: 'list', data, model };
  if (!controls.omitUsage) result['usage'] = controls.usage ?? { prompt_tokens: promptTokens, total_tokens: promptTokens };
  return { kind: 'json', status: 200, body: result };
}

/** Accepts the input forms of the Embeddings API: a string, strings, a token array, or token arrays. */
function embeddingInputs(input: unknown): (string | number[])[] | undefined {
  if (typeof input === 'string') return [input];
  if (!Array.isArray(input) || input.length === 0) return undefined;
  if (input.every((item) => typeof item === 'number')) return [input as number[]];
  if (input.every((item) => typeof item === 'string' || (Array.isArray(item) && item.every((token) => typeof token === 'number')))) {
    return input as (string | number[])[];
  }
  return undefined;
}

/** Returns a deterministic vector. Base64 encodes little-endian float32 values, which the `openai` package decodes. */
function embeddingVector(index: number, dimensions: number, base64: boolean): number[] | string {
  const values = new Float32Array(dimensions);
  for (let i = 0; i < dimensions; i++) values[i] = (((index + 1) * (i + 3)) % 17) / 17 - 0.5;
  if (base64) return Buffer.from(values.buffer).toString('base64');
  return Array.from(values);
}

function positiveInteger(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0 ? value : undefined;
}
