import { emptyUsage, type Usage } from '../rating/usage.ts';
import {
  InvalidRequestError,
  type ErrorDetails,
  type ProviderAdapter,
  type RequestChanges,
  type RequestInfo,
  type ResponseMetadata,
  type StreamMeter,
} from './adapter.ts';
import { isModelsPath, type EndpointKind } from './endpoints.ts';
import { estimatedUsage, ResponseText, StreamedTextCounter, wholeTokens, type OutputText } from './estimate.ts';
import { FinishReasons, isRecord, pathOnly, readCount, readPositiveInteger } from './fields.ts';
import { SseSplitter, type SseEvent } from './sse.ts';

/**
 * Adapter for Google's Generative Language API (Gemini API, `v1beta` and
 * `v1`). The model is named in the path, `/v1beta/models/{model}:{method}`:
 * - `generateContent`: JSON.
 * - `streamGenerateContent?alt=sse`: server-sent events. Without `alt=sse`
 *   the API streams one JSON array, which is rejected.
 * - `embedContent` and `batchEmbedContents`: embeddings, input only.
 *
 * `countTokens` and every other method are rejected.
 *
 * NOTE: countTokens is free upstream, but RequestInfo has no operation for an
 * unbilled call, so passing it through would hold and commit a charge.
 */

type Method = 'generateContent' | 'streamGenerateContent' | 'embedContent' | 'batchEmbedContents';

const GEMINI_METERED_ENDPOINTS = '/v1beta/models/{model}:generateContent, :streamGenerateContent?alt=sse, :embedContent and :batchEmbedContents';

const METHODS: ReadonlySet<string> = new Set<Method>(['generateContent', 'streamGenerateContent', 'embedContent', 'batchEmbedContents']);

/** `.../models/{model}:{method}`, with the model id limited to the characters Google's ids use. */
const MODEL_PATH = /\/models\/([A-Za-z0-9][A-Za-z0-9._-]*):([A-Za-z]+)$/;

/**
 * `models` and `models/{model}` under an API version (`v1`, `v1beta`,
 * `v1alpha`), without a `:method`. Tuned models (`tunedModels/...`) belong
 * to the provider account, so they are left out.
 */
const MODELS_PATHS: readonly RegExp[] = [/\/v[0-9]+(?:alpha|beta)?\/models(?:\/[A-Za-z0-9][A-Za-z0-9._-]*)?$/];

/** `google.rpc.Code` names by HTTP status, as Google APIs pair them in error bodies. */
const ERROR_STATUSES: ReadonlyMap<number, string> = new Map([
  [400, 'INVALID_ARGUMENT'],
  [401, 'UNAUTHENTICATED'],
  // Google has no 402. An empty wallet or a spend cap is an exhausted resource.
  [402, 'RESOURCE_EXHAUSTED'],
  [403, 'PERMISSION_DENIED'],
  [404, 'NOT_FOUND'],
  [409, 'ABORTED'],
  // Google returns INVALID_ARGUMENT for an oversized request.
  [413, 'INVALID_ARGUMENT'],
  [429, 'RESOURCE_EXHAUSTED'],
  [499, 'CANCELLED'],
  [500, 'INTERNAL'],
  [501, 'UNIMPLEMENTED'],
  [502, 'UNAVAILABLE'],
  [503, 'UNAVAILABLE'],
  [504, 'DEADLINE_EXCEEDED'],
]);

export class GeminiAdapter implements ProviderAdapter {
  readonly protocol = 'gemini' as const;
  readonly defaultHeaders: Readonly<Record<string, string>> = {};
  readonly meteredEndpoints = GEMINI_METERED_ENDPOINTS;
  readonly modelsEndpoints = '/v1beta/models and /v1beta/models/{model} (also under /v1 and /v1alpha)';

  inspect(path: string, body: Record<string, unknown>): RequestInfo {
    const { model, method } = parseEndpoint(path);
    requireSameModel(body['model'], model);

    if (method === 'embedContent' || method === 'batchEmbedContents') {
      const requests = body['requests'];
      if (method === 'batchEmbedContents' && Array.isArray(requests)) {
        for (const request of requests) if (isRecord(request)) requireSameModel(request['model'], model);
      }
      return { model, stream: false, maxOutputTokens: undefined, clientWantsStreamUsage: false, operation: 'embeddings' };
    }

    const stream = method === 'streamGenerateContent';
    if (stream && new URLSearchParams(queryOf(path)).get('alt') !== 'sse') {
      throw new InvalidRequestError(
        'streamGenerateContent without alt=sse streams a JSON array, which this route does not meter; add ?alt=sse to the URL (the Google Gen AI SDKs send it)',
      );
    }

    // Gemini 2.5 and later bill thinking tokens (thoughtsTokenCount) at the
    // output rate, apart from candidatesTokenCount. Google's thinking guide
    // (ai.google.dev/gemini-api/docs/thinking, sections "Thinking budgets" and
    // "Best practices") describes thinkingBudget as guidance that the model may
    // overrun, and tells clients to limit thinking to leave more of the output
    // allowance for the answer: thoughts and answer share maxOutputTokens.
    // So maxOutputTokens bounds thoughts plus answer. A positive thinkingBudget
    // is added on top as a margin in case a model counts the two apart, though
    // such a model could still overrun its budget past this hold. Dynamic
    // thinking (-1 or no budget) and Gemini 3's thinkingLevel are bounded by
    // maxOutputTokens alone. Both counts are per candidate.
    const limits = readLimits(body);
    let maxOutputTokens: number | undefined;
    if (limits.maxOutputTokens !== undefined) {
      maxOutputTokens = (limits.maxOutputTokens + Math.max(limits.thinkingBudget ?? 0, 0)) * limits.candidates;
    }
    // Every chunk of a Gemini stream carries usage, so there is nothing to hide from the client.
    return { model, stream, maxOutputTokens, clientWantsStreamUsage: true, operation: 'chat' };
  }

  endpointKind(path: string, basePath: string): EndpointKind | undefined {
    const match = MODEL_PATH.exec(pathOnly(path));
    if (match !== null && METHODS.has(match[2]!)) return 'metered';
    return isModelsPath(path, basePath, MODELS_PATHS) ? 'models' : undefined;
  }

  prepare(body: Record<string, unknown>, info: RequestInfo, changes: RequestChanges): Record<string, unknown> {
    const limit = changes.maxOutputTokens;
    if (info.operation !== 'chat' || limit === undefined) return body;

    const config = findField(body, 'generationConfig', 'generation_config');
    const configValue = isRecord(config.value) ? config.value : {};
    const candidates = readPositiveInteger(configValue, findField(configValue, 'candidateCount', 'candidate_count').key) ?? 1;
    // NOTE: a limit below candidateCount still allows one token per candidate,
    // so such a request can generate up to candidateCount - 1 tokens more.
    const perCandidate = Math.max(1, Math.floor(limit / candidates));
    const prepared: Record<string, unknown> = { ...body };
    const preparedConfig: Record<string, unknown> = { ...configValue };
    prepared[config.key] = preparedConfig;

    const thinking = findField(configValue, 'thinkingConfig', 'thinking_config');
    const budget = isRecord(thinking.value) ? findField(thinking.value, 'thinkingBudget', 'thinking_budget') : undefined;
    let thinkingTokens = 0;
    if (isRecord(thinking.value) && budget !== undefined && typeof budget.value === 'number' && budget.value > 0) {
      // inspect adds a positive budget to the hold, so the budget and maxOutputTokens
      // must fit the limit together. Thoughts get at most half of it.
      thinkingTokens = Math.min(budget.value, Math.floor(perCandidate / 2));
      if (thinkingTokens !== budget.value) preparedConfig[thinking.key] = { ...thinking.value, [budget.key]: thinkingTokens };
    }
    preparedConfig[findField(configValue, 'maxOutputTokens', 'max_output_tokens').key] = perCandidate - thinkingTokens;
    return prepared;
  }

  usageFromJson(body: unknown, info: RequestInfo, promptEstimate: number): { usage: Usage; complete: boolean } {
    const prompt = wholeTokens(promptEstimate);
    const usage = isRecord(body) ? body['usageMetadata'] : undefined;

    if (info.operation === 'embeddings') {
      // NOTE: the Gemini API's embedContent and batchEmbedContents responses
      // carry no token counts, so these calls are billed on the prompt
      // estimate (estimatePromptFromBody), about four ASCII characters per token.
      if (!isRecord(usage)) return { usage: estimatedUsage(prompt, NO_TEXT), complete: false };
      return { usage: normalizeEmbeddingUsage(usage, prompt), complete: true };
    }

    const text = new GeneratedText(() => new ResponseText());
    const candidates = isRecord(body) ? body['candidates'] : undefined;
    if (Array.isArray(candidates)) for (const candidate of candidates) text.addCandidate(candidate);
    if (!isRecord(usage)) return { usage: estimatedGeminiUsage(prompt, text), complete: false };
    return { usage: normalizeGeminiUsage(usage, prompt, text), complete: true };
  }

  createStreamMeter(_info: RequestInfo, promptEstimate: number): StreamMeter {
    return new GeminiStreamMeter(wholeTokens(promptEstimate));
  }

  errorBody(error: ErrorDetails): Record<string, unknown> {
    const status = ERROR_STATUSES.get(error.status) ?? (error.status >= 500 ? 'INTERNAL' : 'FAILED_PRECONDITION');
    // google.rpc.ErrorInfo carries the machine-readable reason, as Google APIs do.
    const details = [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: error.code.toUpperCase(), domain: 'tollgate.dev' }];
    return { error: { code: error.status, message: error.message, status, details } };
  }

  credentialHeaders(credential: string): Record<string, string> {
    return { 'x-goog-api-key': credential };
  }
}

/**
 * Meters one `streamGenerateContent?alt=sse` stream, passing every byte
 * through. Each chunk repeats `usageMetadata` with cumulative counts, so the
 * latest value of each field wins and chunks are never added together. The
 * stream is complete once a candidate reports a `finishReason`.
 */
class GeminiStreamMeter implements StreamMeter {
  readonly #promptEstimate: number;
  readonly #splitter: SseSplitter;
  readonly #text = new GeneratedText(() => new StreamedTextCounter());
  /** The latest non-null value of each usage field seen so far. */
  readonly #usage: Record<string, unknown> = {};
  readonly #finishReasons = new FinishReasons();
  #sawUsage = false;
  #finished = false;
  #id: string | undefined;
  #model: string | undefined;

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
    if (!this.#sawUsage) return { usage: estimatedGeminiUsage(this.#promptEstimate, this.#text), complete: false };
    const usage = normalizeGeminiUsage(this.#usage, this.#promptEstimate, this.#text);
    if (this.#finished) return { usage, complete: true };

    // Cut before the last chunk: the counts cover the chunks seen, but the model may have generated more.
    usage.estimated = true;
    return { usage, complete: false };
  }

  responseMetadata(): ResponseMetadata {
    return { id: this.#id, model: this.#model, finishReasons: this.#finishReasons.list() };
  }

  #onEvent(event: SseEvent): boolean {
    if (event.data === undefined) return true;
    let chunk: unknown;
    try {
      chunk = JSON.parse(event.data);
    } catch {
      return true;
    }
    if (!isRecord(chunk)) return true;

    const id = chunk['responseId'];
    if (typeof id === 'string') this.#id = id;
    const model = chunk['modelVersion'];
    if (typeof model === 'string') this.#model = model;

    const candidates = chunk['candidates'];
    if (Array.isArray(candidates)) {
      for (let position = 0; position < candidates.length; position++) {
        const candidate: unknown = candidates[position];
        this.#text.addCandidate(candidate);
        if (!isRecord(candidate)) continue;
        const reason = candidate['finishReason'];
        if (typeof reason === 'string') {
          this.#finished = true;
          this.#finishReasons.record(candidate['index'], position, reason);
        }
      }
    }

    const usage = chunk['usageMetadata'];
    if (isRecord(usage)) {
      this.#sawUsage = true;
      for (const key in usage) {
        const value = usage[key];
        if (value !== null && value !== undefined) this.#usage[key] = value;
      }
    }
    return true;
  }
}

/**
 * Converts `usageMetadata` to disjoint counts:
 * - `promptTokenCount` includes `cachedContentTokenCount`, so cached tokens
 *   move from `input` to `cacheRead`.
 * - `toolUsePromptTokenCount` (results of built-in tools such as search or
 *   code execution, read as input) is apart from the prompt count and is
 *   billed as input.
 * - `candidatesTokenCount` excludes `thoughtsTokenCount`, so prompt +
 *   candidates + thoughts + tool use = `totalTokenCount`.
 *
 * The API leaves zero counts out, so a missing thoughts, cached or tool-use
 * count is 0. A missing or zero prompt count for a non-empty prompt, and a
 * missing or zero candidates count for a response with text, are estimated.
 */
export function normalizeGeminiUsage(raw: Record<string, unknown>, promptEstimate: number, text: GeneratedText): Usage {
  const usage = emptyUsage();
  const toolUse = readCount(raw['toolUsePromptTokenCount']) ?? 0;

  const prompt = readCount(raw['promptTokenCount']);
  if (prompt === undefined || (prompt === 0 && promptEstimate > 0)) {
    usage.input = promptEstimate + toolUse;
    usage.estimated = true;
  } else {
    usage.cacheRead = Math.min(readCount(raw['cachedContentTokenCount']) ?? 0, prompt);
    usage.input = prompt - usage.cacheRead + toolUse;
  }

  const candidates = readCount(raw['candidatesTokenCount']);
  if ((candidates === undefined || candidates === 0) && text.answer.sawText) {
    usage.output = text.answer.total();
    usage.estimated = true;
  } else {
    usage.output = candidates ?? 0;
  }

  const thoughts = readCount(raw['thoughtsTokenCount']);
  if (thoughts === undefined && text.thoughts.sawText) {
    // Only thought summaries are visible, so this estimate is low.
    usage.reasoning = text.thoughts.total();
    usage.estimated = true;
  } else {
    usage.reasoning = thoughts ?? 0;
  }
  return usage;
}

/** Converts the usage of an embeddings response, should one carry it: every token is input. */
function normalizeEmbeddingUsage(raw: Record<string, unknown>, promptEstimate: number): Usage {
  const usage = emptyUsage();
  const prompt = readCount(raw['promptTokenCount']);
  if (prompt === undefined || (prompt === 0 && promptEstimate > 0)) {
    usage.input = promptEstimate;
    usage.estimated = true;
  } else {
    usage.input = prompt;
  }
  return usage;
}

/** Returns usage made only of estimates, for a response without `usageMetadata`. */
function estimatedGeminiUsage(promptEstimate: number, text: GeneratedText): Usage {
  const usage = estimatedUsage(promptEstimate, text.answer);
  usage.reasoning = text.thoughts.total();
  return usage;
}

/**
 * Generated text of the candidates, with the thought summaries that
 * `includeThoughts` returns (parts marked `thought: true`) kept apart from
 * the answer, because the two are billed as different counts.
 */
export class GeneratedText {
  readonly answer: OutputText & { add(text: unknown): void };
  readonly thoughts: OutputText & { add(text: unknown): void };

  constructor(create: () => OutputText & { add(text: unknown): void }) {
    this.answer = create();
    this.thoughts = create();
  }

  /** Adds the text, function calls and code of one candidate's parts. */
  addCandidate(candidate: unknown): void {
    if (!isRecord(candidate) || !isRecord(candidate['content'])) return;
    const parts = candidate['content']['parts'];
    if (!Array.isArray(parts)) return;
    for (const part of parts) {
      if (!isRecord(part)) continue;
      const into = part['thought'] === true ? this.thoughts : this.answer;
      into.add(part['text']);
      const call = part['functionCall'];
      if (isRecord(call)) {
        into.add(call['name']);
        into.add(JSON.stringify(call['args'] ?? {}));
      }
      const code = part['executableCode'];
      if (isRecord(code)) into.add(code['code']);
    }
  }
}

const NO_TEXT: OutputText = { sawText: false, total: () => 0 };

function parseEndpoint(path: string): { model: string; method: Method } {
  const endpoint = pathOnly(path);
  const match = MODEL_PATH.exec(endpoint);
  if (match === null || !METHODS.has(match[2]!)) {
    throw new InvalidRequestError(
      `unsupported endpoint ${endpoint}: this route meters only ${GEMINI_METERED_ENDPOINTS}`,
      404,
      'unsupported_endpoint',
    );
  }

  // The sidecar adds the provider key. A client's key in the URL would reach the upstream beside it.
  if (new URLSearchParams(queryOf(path)).has('key')) {
    throw new InvalidRequestError('remove the "key" query parameter: the sidecar sends the provider API key itself');
  }
  return { model: match[1]!, method: match[2] as Method };
}

function queryOf(path: string): string {
  const query = path.indexOf('?');
  return query === -1 ? '' : path.slice(query + 1);
}

/** Rejects a body `model` (`models/x` or `x`) that names another model than the path, which sets the price. */
function requireSameModel(value: unknown, model: string): void {
  if (value === undefined || value === null) return;
  const named = typeof value === 'string' && value.startsWith('models/') ? value.slice('models/'.length) : value;
  if (named !== model) {
    throw new InvalidRequestError(
      `invalid field "model": the body names ${JSON.stringify(value)} but the URL names "models/${model}"; remove the field or make them match`,
    );
  }
}

/**
 * Finds a field that the API accepts in lowerCamelCase or in its proto
 * snake_case name. Returns the key the body uses (camelCase when neither),
 * and rejects a body that sets both, because the sidecar could read one
 * spelling while the upstream reads the other.
 */
function findField(record: Record<string, unknown>, camel: string, snake: string): { key: string; value: unknown } {
  const camelValue = record[camel];
  const snakeValue = record[snake];
  if (camelValue !== undefined && snakeValue !== undefined) {
    throw new InvalidRequestError(`the request sets both "${camel}" and "${snake}"; send only "${camel}"`);
  }
  return snakeValue === undefined ? { key: camel, value: camelValue } : { key: snake, value: snakeValue };
}

/** Reads the output limit, candidate count and thinking budget of a generateContent request. */
function readLimits(body: Record<string, unknown>): { maxOutputTokens: number | undefined; candidates: number; thinkingBudget: number | undefined } {
  const config = findField(body, 'generationConfig', 'generation_config').value;
  if (config === undefined || config === null) return { maxOutputTokens: undefined, candidates: 1, thinkingBudget: undefined };
  if (!isRecord(config)) throw new InvalidRequestError('invalid field "generationConfig": expected an object');

  const maxOutputTokens = readPositiveInteger(config, findField(config, 'maxOutputTokens', 'max_output_tokens').key);
  const candidates = readPositiveInteger(config, findField(config, 'candidateCount', 'candidate_count').key) ?? 1;

  const thinking = findField(config, 'thinkingConfig', 'thinking_config').value;
  if (thinking === undefined || thinking === null) return { maxOutputTokens, candidates, thinkingBudget: undefined };
  if (!isRecord(thinking)) throw new InvalidRequestError('invalid field "generationConfig.thinkingConfig": expected an object');
  const budget = findField(thinking, 'thinkingBudget', 'thinking_budget').value;
  if (budget === undefined || budget === null) return { maxOutputTokens, candidates, thinkingBudget: undefined };
  if (typeof budget !== 'number' || !Number.isSafeInteger(budget) || budget < -1) {
    throw new InvalidRequestError(
      `invalid field "thinkingBudget": expected -1 (dynamic), 0 (off) or a positive integer, got ${JSON.stringify(budget)}`,
    );
  }
  return { maxOutputTokens, candidates, thinkingBudget: budget };
}
