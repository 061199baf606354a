import type { IncomingHttpHeaders } from 'node:http';
import { countTextTokens } from '../providers/estimate.ts';
import { isRecord } from '../providers/fields.ts';
import type { Controls } from './controls.ts';
import { invalidRequest, type SimEndpoint, type SimProvider, type SimResponse, type StreamEvent } from './response.ts';
import { DEFAULT_OUTPUT_TOKENS, generatedPieces } from './text.ts';

/**
 * The Gemini API (Generative Language API, v1beta) as the `@google/genai`
 * package's types describe it: `models/{model}:generateContent`,
 * `:streamGenerateContent?alt=sse`, `:embedContent` and `:batchEmbedContents`.
 */

/** Thinking tokens a request with a positive or dynamic `thinkingBudget` uses, at most. */
export const SIMULATED_THOUGHT_TOKENS = 12;

/** Vector length when the request sets no `outputDimensionality`, kept short so the simulator stays fast. */
const DEFAULT_EMBEDDING_DIMENSIONS = 8;
const MAX_EMBEDDING_DIMENSIONS = 3072;

/**
 * A model method path as the API serves it, from the root: `/{version}/models/{model}:{method}`.
 * The Gemini API publishes v1, v1beta and v1alpha.
 */
const MODEL_PATH = /^\/v1(?:beta|alpha)?\/models\/([^/:]+):([A-Za-z]+)$/;

/** The same shape anywhere in a path, which marks a mistyped path as meant for Gemini. */
const MODEL_METHOD_SUFFIX = /\/models\/[^/:]+:[A-Za-z]+$/;

/** `google.rpc.Code` names by HTTP status. */
const ERROR_STATUSES: ReadonlyMap<number, string> = new Map([
  [400, 'INVALID_ARGUMENT'],
  [401, 'UNAUTHENTICATED'],
  [403, 'PERMISSION_DENIED'],
  [404, 'NOT_FOUND'],
  [409, 'ABORTED'],
  [429, 'RESOURCE_EXHAUSTED'],
  [499, 'CANCELLED'],
  [500, 'INTERNAL'],
  [501, 'UNIMPLEMENTED'],
  [503, 'UNAVAILABLE'],
  [504, 'DEADLINE_EXCEEDED'],
]);

export const geminiProvider: SimProvider = {
  /** Returns the key from `x-goog-api-key`, or from the `key` query parameter of older clients. */
  credential(headers: IncomingHttpHeaders, url: URL): string | undefined {
    const header = headers['x-goog-api-key'];
    const key = Array.isArray(header) ? header[0] : header;
    if (key !== undefined && key.length > 0) return key;
    const query = url.searchParams.get('key');
    return query !== null && query.length > 0 ? query : undefined;
  },

  errorBody(status: number, message: string): unknown {
    const name = ERROR_STATUSES.get(status) ?? (status >= 500 ? 'INTERNAL' : 'FAILED_PRECONDITION');
    return { error: { code: status, message, status: name } };
  },

  // NOTE: Google's servers may respond to a path outside the API with a 404 that is not JSON.
  // The simulator always sends the API's JSON error, which `@google/genai` can read.
  notFoundMessage: (method: string, path: string) => `${method} ${path} is not a Gemini API method that the simulator serves`,

  // Gemini sends no documented request id header, so the simulator uses a name of its own.
  requestIdHeader: 'x-sim-request-id',
};

const generateContentEndpoint: SimEndpoint = {
  name: 'generateContent',
  provider: geminiProvider,
  respond: respondToGenerate,
};

const embedContentEndpoint: SimEndpoint = {
  name: 'embedContent',
  provider: geminiProvider,
  respond: respondToEmbed,
};

/**
 * True for a path that looks meant for the Gemini API: it ends in
 * `/models/{model}:{method}` or starts with `/v1beta/` or `/v1alpha/`. The
 * server uses it only to choose the format of a 404.
 */
export function looksLikeGeminiPath(path: string): boolean {
  return MODEL_METHOD_SUFFIX.test(path) || path.startsWith('/v1beta/') || path.startsWith('/v1alpha/');
}

/**
 * Returns the endpoint that serves a Gemini model method path, or undefined
 * for any other path and for a method the simulator lacks.
 */
export function geminiEndpointFor(path: string): SimEndpoint | undefined {
  switch (MODEL_PATH.exec(path)?.[2]) {
    case 'generateContent':
    case 'streamGenerateContent':
      return generateContentEndpoint;
    case 'embedContent':
    case 'batchEmbedContents':
      return embedContentEndpoint;
    default:
      return undefined;
  }
}

function respondToGenerate(body: Record<string, unknown>, controls: Controls, id: string, url: URL): SimResponse {
  const [, model = '', method] = MODEL_PATH.exec(url.pathname) ?? [];
  const contents = body['contents'];
  if (!Array.isArray(contents) || contents.length === 0) {
    return invalidRequest(geminiProvider, '* GenerateContentRequest.contents: contents is not specified', id);
  }
  const config = isRecord(body['generationConfig']) ? body['generationConfig'] : {};
  const limit = positiveInteger(config['maxOutputTokens']);
  const candidates = positiveInteger(config['candidateCount']) ?? 1;

  // Thoughts and answer share maxOutputTokens, as they do on Gemini 2.5.
  const thoughts = Math.min(thinkingTokens(config['thinkingConfig']), limit ?? Number.MAX_SAFE_INTEGER);
  const naturalLength = controls.outputTokens ?? DEFAULT_OUTPUT_TOKENS;
  const room = limit === undefined ? naturalLength : limit - thoughts;
  const tokens = Math.min(room, naturalLength);
  const finishReason = room < naturalLength ? 'MAX_TOKENS' : 'STOP';
  const promptTokens = contentTokens(body['systemInstruction']) + contents.reduce((sum: number, content) => sum + contentTokens(content), 0);
  const pieces = generatedPieces(tokens, controls.chunks ?? tokens);
  const response = { modelVersion: model, responseId: `resp_${id}` };

  const counts = (generated: number) => generateUsage(promptTokens, generated * candidates, thoughts * candidates);
  const usageOf = (generated: number) => (controls.omitUsage ? undefined : (controls.usage ?? counts(generated)));

  if (method === 'streamGenerateContent') {
    if (url.searchParams.get('alt') !== 'sse') {
      return invalidRequest(geminiProvider, 'the simulator streams only with alt=sse; a JSON array stream is not simulated', id);
    }
    return { kind: 'stream', events: generateChunks(response, pieces, candidates, finishReason, usageOf) };
  }

  const text = pieces.join('');
  const result: Record<string, unknown> = {
    candidates: Array.from({ length: candidates }, (_, index) => candidate(text, index, finishReason)),
  };
  const usage = usageOf(tokens);
  if (usage !== undefined) result['usageMetadata'] = usage;
  Object.assign(result, response);
  return { kind: 'json', status: 200, body: result };
}

/**
 * Builds the chunks of a streamed response, written as `data: {json}` and a
 * CRLF blank line, as the Gemini API writes them. Every chunk carries one
 * piece of text for each candidate and the cumulative usage so far. The last
 * one also carries the finish reason. A response without text is one chunk.
 */
function generateChunks(
  response: Record<string, unknown>,
  pieces: string[],
  candidates: number,
  finishReason: string,
  usageOf: (generated: number) => Record<string, unknown> | undefined,
): StreamEvent[] {
  const events: StreamEvent[] = [];
  let generated = 0;
  const total = pieces.length === 0 ? 1 : pieces.length;

  for (let index = 0; index < total; index++) {
    const piece = pieces[index] ?? '';
    generated += piece.length === 0 ? 0 : countTextTokens(piece);
    const last = index === total - 1;
    const chunk: Record<string, unknown> = {
      candidates: Array.from({ length: candidates }, (_, candidateIndex) => candidate(piece, candidateIndex, last ? finishReason : undefined)),
    };
    const usage = usageOf(generated);
    if (usage !== undefined) chunk['usageMetadata'] = usage;
    Object.assign(chunk, response);
    events.push({ text: `data: ${JSON.stringify(chunk)}\r\n\r\n`, content: piece.length > 0 });
  }
  return events;
}

function candidate(text: string, index: number, finishReason: string | undefined): Record<string, unknown> {
  const fields: Record<string, unknown> = { content: { parts: [{ text }], role: 'model' } };
  if (finishReason !== undefined) fields['finishReason'] = finishReason;
  fields['index'] = index;
  return fields;
}

/**
 * Returns usage in the API's shape, which leaves out zero counts:
 * `thoughtsTokenCount` appears only when the model thought, and
 * `candidatesTokenCount` only when it generated text.
 */
function generateUsage(promptTokens: number, candidatesTokens: number, thoughtsTokens: number): Record<string, unknown> {
  const usage: Record<string, unknown> = { promptTokenCount: promptTokens };
  if (candidatesTokens > 0) usage['candidatesTokenCount'] = candidatesTokens;
  usage['totalTokenCount'] = promptTokens + candidatesTokens + thoughtsTokens;
  usage['promptTokensDetails'] = [{ modality: 'TEXT', tokenCount: promptTokens }];
  if (thoughtsTokens > 0) usage['thoughtsTokenCount'] = thoughtsTokens;
  return usage;
}

/** Returns the thinking tokens of a request: its positive budget up to SIMULATED_THOUGHT_TOKENS, that many when dynamic (-1), else 0. */
function thinkingTokens(thinkingConfig: unknown): number {
  if (!isRecord(thinkingConfig)) return 0;
  const budget = thinkingConfig['thinkingBudget'];
  if (budget === -1) return SIMULATED_THOUGHT_TOKENS;
  if (typeof budget === 'number' && Number.isSafeInteger(budget) && budget > 0) return Math.min(budget, SIMULATED_THOUGHT_TOKENS);
  return 0;
}

function respondToEmbed(body: Record<string, unknown>, controls: Controls, id: string, url: URL): SimResponse {
  const batch = url.pathname.endsWith(':batchEmbedContents');
  const requests = batch ? body['requests'] : [body];
  if (!Array.isArray(requests) || requests.length === 0) {
    return invalidRequest(geminiProvider, '* BatchEmbedContentsRequest.requests: requests is not specified', id);
  }

  const embeddings: { values: number[] }[] = [];
  for (const [index, request] of requests.entries()) {
    if (!isRecord(request) || !isRecord(request['content'])) {
      return invalidRequest(geminiProvider, '* EmbedContentRequest.content: content is not specified', id);
    }
    const dimensions = positiveInteger(request['outputDimensionality']) ?? DEFAULT_EMBEDDING_DIMENSIONS;
    if (dimensions > MAX_EMBEDDING_DIMENSIONS) {
      return invalidRequest(geminiProvider, `* EmbedContentRequest.outputDimensionality: at most ${MAX_EMBEDDING_DIMENSIONS}`, id);
    }
    embeddings.push({ values: embeddingValues(index, dimensions) });
  }

  // The API's embedding responses carry no token counts. `x-sim-usage` adds them for tests.
  const result: Record<string, unknown> = batch ? { embeddings } : { embedding: embeddings[0] };
  if (controls.usage !== undefined && !controls.omitUsage) result['usageMetadata'] = controls.usage;
  return { kind: 'json', status: 200, body: result };
}

/** Counts the text parts of one `Content` (`{role, parts: [{text}]}`). */
function contentTokens(content: unknown): number {
  if (!isRecord(content) || !Array.isArray(content['parts'])) return 0;
  let tokens = 0;
  for (const part of content['parts']) {
    if (isRecord(part) && typeof part['text'] === 'string') tokens += countTextTokens(part['text']);
  }
  return tokens;
}

function embeddingValues(index: number, dimensions: number): number[] {
  const values: number[] = [];
  for (let i = 0; i < dimensions; i++) values.push((((index + 1) * (i + 5)) % 13) / 13 - 0.5);
  return values;
}

function positiveInteger(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0 ? value : undefined;
}
