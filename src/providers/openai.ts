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
import { FinishReasons, isRecord, pathOnly, readCount, readFlag, readPositiveInteger, requireModel } from './fields.ts';
import { isResponsesRequest, prepareResponsesBody, readResponsesRequest, responsesUsageFromJson, ResponsesStreamMeter } from './openai-responses.ts';
import { SseSplitter, type SseEvent } from './sse.ts';

/**
 * Adapter for the OpenAI Chat Completions, Responses and Embeddings APIs,
 * and for servers that copy them (`openai-compatible`: vLLM, llama.cpp,
 * Ollama, DeepSeek and others). The Responses API is read in
 * openai-responses.ts.
 */

type OpenAIProtocol = 'openai' | 'openai-compatible';
type LimitField = 'max_completion_tokens' | 'max_tokens';

const LIMIT_FIELDS: readonly LimitField[] = ['max_completion_tokens', 'max_tokens'];

/** Path endings of the endpoints that `inspect` meters. */
const METERED_SUFFIXES: readonly string[] = ['/chat/completions', '/responses', '/embeddings'];

/** `/v1/models` and `/v1/models/{model}`. A model segment may contain colons, as the ids of fine-tuned models do. */
const MODELS_PATHS: readonly RegExp[] = [/\/v1\/models(?:\/[^/]+)?$/];

/** Error `type` values by HTTP status, as the OpenAI API uses them. */
const ERROR_TYPES: ReadonlyMap<number, string> = new Map([
  [400, 'invalid_request_error'],
  [401, 'invalid_request_error'],
  [402, 'insufficient_quota'],
  [403, 'invalid_request_error'],
  [404, 'invalid_request_error'],
  [409, 'invalid_request_error'],
  [413, 'invalid_request_error'],
  [422, 'invalid_request_error'],
  [429, 'rate_limit_exceeded'],
]);

export class OpenAIAdapter implements ProviderAdapter {
  readonly protocol: OpenAIProtocol;
  readonly defaultHeaders: Readonly<Record<string, string>> = {};
  readonly meteredEndpoints = '/v1/chat/completions, /v1/responses and /v1/embeddings';
  readonly modelsEndpoints = '/v1/models and /v1/models/{model}';
  /** The output-limit field set when the client set none: OpenAI deprecated `max_tokens`, while many compatible servers know only it. */
  readonly #limitField: LimitField;

  constructor(protocol: OpenAIProtocol) {
    this.protocol = protocol;
    this.#limitField = protocol === 'openai' ? 'max_completion_tokens' : 'max_tokens';
  }

  inspect(path: string, body: Record<string, unknown>): RequestInfo {
    const endpoint = pathOnly(path);
    if (endpoint.endsWith('/embeddings')) return readOpenAIRequest('embeddings', requireModel(body), body);
    if (endpoint.endsWith('/responses')) return readResponsesRequest(requireModel(body), body);
    if (!endpoint.endsWith('/chat/completions')) {
      throw new InvalidRequestError(
        `unsupported endpoint ${endpoint}: this route meters only ${this.meteredEndpoints}`,
        404,
        'unsupported_endpoint',
      );
    }
    return readOpenAIRequest('chat', requireModel(body), body);
  }

  endpointKind(path: string, basePath: string): EndpointKind | undefined {
    const endpoint = pathOnly(path);
    if (METERED_SUFFIXES.some((suffix) => endpoint.endsWith(suffix))) return 'metered';
    return isModelsPath(path, basePath, MODELS_PATHS) ? 'models' : undefined;
  }

  prepare(body: Record<string, unknown>, info: RequestInfo, changes: RequestChanges): Record<string, unknown> {
    if (isResponsesRequest(info)) return prepareResponsesBody(body, changes);
    if (info.operation !== 'chat' || (!info.stream && changes.maxOutputTokens === undefined)) return body;
    const prepared: Record<string, unknown> = { ...body };

    if (info.stream) {
      const options = body['stream_options'];
      prepared['stream_options'] = { ...(isRecord(options) ? options : {}), include_usage: true };
    }

    if (changes.maxOutputTokens !== undefined) {
      const choices = readPositiveInteger(body, 'n') ?? 1;
      // NOTE: a limit below n still allows one token per choice, so such a
      // request can generate up to n - 1 tokens more than the limit.
      const perChoice = Math.max(1, Math.floor(changes.maxOutputTokens / choices));
      // Set the limit fields the client used, so the body keeps a field set the upstream already accepts.
      const used = LIMIT_FIELDS.filter((field) => body[field] !== undefined && body[field] !== null);
      for (const field of used.length > 0 ? used : [this.#limitField]) prepared[field] = perChoice;
    }

    return prepared;
  }

  usageFromJson(body: unknown, info: RequestInfo, promptEstimate: number): { usage: Usage; complete: boolean } {
    if (isResponsesRequest(info)) return responsesUsageFromJson(body, promptEstimate);
    const prompt = wholeTokens(promptEstimate);
    const usage = isRecord(body) ? body['usage'] : undefined;

    if (info.operation === 'embeddings') {
      if (!isRecord(usage)) return { usage: estimatedUsage(prompt, NO_TEXT), complete: false };
      return { usage: normalizeEmbeddingUsage(usage, prompt), complete: true };
    }

    const text = new ResponseText();
    const choices = isRecord(body) ? body['choices'] : undefined;
    if (Array.isArray(choices)) {
      for (const choice of choices) if (isRecord(choice)) addMessageText(choice['message'], text);
    }
    if (!isRecord(usage)) return { usage: estimatedUsage(prompt, text), complete: false };
    return { usage: normalizeChatUsage(usage, prompt, text), complete: true };
  }

  createStreamMeter(info: RequestInfo, promptEstimate: number): StreamMeter {
    if (isResponsesRequest(info)) return new ResponsesStreamMeter(promptEstimate);
    return new OpenAIStreamMeter(!info.clientWantsStreamUsage, wholeTokens(promptEstimate));
  }

  errorBody(error: ErrorDetails): Record<string, unknown> {
    const type = ERROR_TYPES.get(error.status) ?? (error.status >= 500 ? 'server_error' : 'invalid_request_error');
    return { error: { message: error.message, type, code: error.code, param: error.param ?? null } };
  }

  credentialHeaders(credential: string): Record<string, string> {
    return { authorization: `Bearer ${credential}` };
  }
}

/**
 * Reads the stream flag and output limit of a Chat Completions or Embeddings
 * body. The caller supplies the model, because Azure names it by deployment
 * rather than in the body.
 */
export function readOpenAIRequest(operation: 'chat' | 'embeddings', model: string, body: Record<string, unknown>): RequestInfo {
  if (operation === 'embeddings') {
    return { model, stream: false, maxOutputTokens: undefined, clientWantsStreamUsage: false, operation };
  }

  const stream = readFlag(body, 'stream');
  const choices = readPositiveInteger(body, 'n') ?? 1;
  const limit = maxOf(readPositiveInteger(body, 'max_completion_tokens'), readPositiveInteger(body, 'max_tokens'));
  const options = body['stream_options'];

  return {
    model,
    stream,
    // Each of the n choices may use the whole limit.
    maxOutputTokens: limit === undefined ? undefined : limit * choices,
    clientWantsStreamUsage: stream && isRecord(options) && options['include_usage'] === true,
    operation,
  };
}

/**
 * Meters one Chat Completions stream. `prepare` always requests usage from
 * the upstream (`stream_options.include_usage`). When the client did not
 * request it, the meter removes what that option added, so the client
 * receives the stream it would have received without it.
 */
class OpenAIStreamMeter implements StreamMeter {
  readonly #hideUsage: boolean;
  readonly #promptEstimate: number;
  readonly #splitter: SseSplitter;
  readonly #text = new StreamedTextCounter();
  readonly #finishReasons = new FinishReasons();
  #usage: Record<string, unknown> | undefined;
  #id: string | undefined;
  #model: string | undefined;

  constructor(hideUsage: boolean, promptEstimate: number) {
    this.#hideUsage = hideUsage;
    this.#promptEstimate = promptEstimate;
    this.#splitter = new SseSplitter((event) => this.#onEvent(event), { filter: hideUsage });
  }

  push(chunk: Buffer): Buffer {
    return this.#splitter.push(chunk);
  }

  flush(): Buffer {
    return this.#splitter.flush();
  }

  result(): { usage: Usage; complete: boolean } {
    if (this.#usage === undefined) return { usage: estimatedUsage(this.#promptEstimate, this.#text), complete: false };
    return { usage: normalizeChatUsage(this.#usage, this.#promptEstimate, this.#text), complete: true };
  }

  responseMetadata(): ResponseMetadata {
    return { id: this.#id, model: this.#model, finishReasons: this.#finishReasons.list() };
  }

  #onEvent(event: SseEvent): boolean | Buffer {
    const data = event.data;
    if (data === undefined || data === '[DONE]') return true;

    let chunk: unknown;
    try {
      chunk = JSON.parse(data);
    } catch {
      return true;
    }
    if (!isRecord(chunk)) return true;

    // Every chunk repeats the id and model. Azure's first chunk, which carries
    // only the prompt's filter results, has both empty, so empty ones are skipped.
    const id = chunk['id'];
    if (typeof id === 'string' && id.length > 0) this.#id = id;
    const model = chunk['model'];
    if (typeof model === 'string' && model.length > 0) this.#model = model;

    const choices = chunk['choices'];
    if (Array.isArray(choices)) {
      for (let position = 0; position < choices.length; position++) {
        const choice: unknown = choices[position];
        if (!isRecord(choice)) continue;
        addMessageText(choice['delta'], this.#text);
        const reason = choice['finish_reason'];
        if (typeof reason === 'string') this.#finishReasons.record(choice['index'], position, reason);
      }
    }

    // Usage is cumulative where a server sends it more than once, so the latest wins.
    const usage = chunk['usage'];
    if (isRecord(usage)) {
      this.#usage = usage;
      const usageOnly = choices === undefined || (Array.isArray(choices) && choices.length === 0);
      return !(this.#hideUsage && usageOnly);
    }
    if (usage === null && this.#hideUsage) return withoutNullUsage(event.raw);
    return true;
  }
}

/**
 * Converts Chat Completions usage to disjoint counts. `prompt_tokens`
 * includes the cached tokens and `completion_tokens` includes the reasoning
 * tokens, so both are subtracted out. A missing count, or a zero that cannot
 * be true (no prompt tokens for a non-empty prompt, no output tokens for a
 * response with text), is replaced by an estimate.
 */
export function normalizeChatUsage(raw: Record<string, unknown>, promptEstimate: number, text: OutputText): Usage {
  const usage = emptyUsage();
  const promptDetails = isRecord(raw['prompt_tokens_details']) ? raw['prompt_tokens_details'] : {};
  const completionDetails = isRecord(raw['completion_tokens_details']) ? raw['completion_tokens_details'] : {};

  const prompt = readCount(raw['prompt_tokens']);
  if (prompt === undefined || (prompt === 0 && promptEstimate > 0)) {
    usage.input = promptEstimate;
    usage.estimated = true;
  } else {
    usage.cacheRead = Math.min(readCount(promptDetails['cached_tokens']) ?? 0, prompt);
    // NOTE: this assumes cache writes are a subset of prompt_tokens, like cached
    // tokens, and bills them at the five-minute write rate (the input rate when
    // the plan sets none). Check it when a price list for them is published.
    usage.cacheWrite5m = Math.min(readCount(promptDetails['cache_write_tokens']) ?? 0, prompt - usage.cacheRead);
    usage.input = prompt - usage.cacheRead - usage.cacheWrite5m;
  }

  const completion = readCount(raw['completion_tokens']);
  if (completion === undefined || (completion === 0 && text.sawText)) {
    usage.output = text.total();
    usage.estimated = true;
    return usage;
  }

  const reasoning = readCount(completionDetails['reasoning_tokens']) ?? 0;
  if (reasoning > 0 && reasoningIsSeparate(reasoning, completion, prompt, readCount(raw['total_tokens']))) {
    usage.output = completion;
  } else {
    usage.output = completion - reasoning;
  }
  usage.reasoning = reasoning;
  return usage;
}

/**
 * OpenAI counts reasoning tokens inside `completion_tokens`. Some compatible
 * servers report them beside it instead, which shows when there are more
 * reasoning tokens than completion tokens, or when `total_tokens` adds them
 * on top of prompt and completion.
 */
function reasoningIsSeparate(reasoning: number, completion: number, prompt: number | undefined, total: number | undefined): boolean {
  if (reasoning > completion) return true;
  return prompt !== undefined && total !== undefined && total === prompt + completion + reasoning;
}

/** Converts Embeddings usage: every token is an input token. */
export function normalizeEmbeddingUsage(raw: Record<string, unknown>, promptEstimate: number): Usage {
  const usage = emptyUsage();
  const prompt = readCount(raw['prompt_tokens']);
  if (prompt === undefined || (prompt === 0 && promptEstimate > 0)) {
    usage.input = promptEstimate;
    usage.estimated = true;
  } else {
    usage.input = prompt;
  }
  return usage;
}

/**
 * Adds the generated text of a message or stream delta. Besides `content`,
 * this covers refusals, tool calls and the reasoning text that compatible
 * servers return as `reasoning_content` or `reasoning`.
 */
function addMessageText(message: unknown, text: { add(text: unknown): void }): void {
  if (!isRecord(message)) return;
  text.add(message['content']);
  text.add(message['refusal']);
  text.add(message['reasoning_content']);
  text.add(message['reasoning']);

  const toolCalls = message['tool_calls'];
  if (Array.isArray(toolCalls)) {
    for (const call of toolCalls) {
      const fn = isRecord(call) ? call['function'] : undefined;
      if (isRecord(fn)) {
        text.add(fn['name']);
        text.add(fn['arguments']);
      }
    }
  }
  const functionCall = message['function_call'];
  if (isRecord(functionCall)) {
    text.add(functionCall['name']);
    text.add(functionCall['arguments']);
  }
}

const NO_TEXT: OutputText = { sawText: false, total: () => 0 };

const USAGE_KEY = Buffer.from('"usage":');
const NULL = Buffer.from('null');
const COMMA = 0x2c;
const SPACE = 0x20;

/**
 * Removes the `"usage":null` member that `include_usage` adds to every chunk,
 * with its separating comma. Returns true (keep unchanged) when the member is
 * not written in a form this recognizes. A JSON string cannot contain the
 * needle, because quotes inside strings are escaped.
 */
function withoutNullUsage(raw: Buffer): Buffer | true {
  const key = raw.indexOf(USAGE_KEY);
  if (key === -1) return true;

  let valueStart = key + USAGE_KEY.length;
  while (raw[valueStart] === SPACE) valueStart++;
  if (raw.compare(NULL, 0, NULL.length, valueStart, valueStart + NULL.length) !== 0) return true;
  let start = key;
  let end = valueStart + NULL.length;

  let before = start - 1;
  while (raw[before] === SPACE) before--;
  if (raw[before] === COMMA) {
    start = before;
  } else {
    let after = end;
    while (raw[after] === SPACE) after++;
    if (raw[after] !== COMMA) return true;
    end = after + 1;
    while (raw[end] === SPACE) end++;
  }
  return Buffer.concat([raw.subarray(0, start), raw.subarray(end)]);
}

function maxOf(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return Math.max(a, b);
}
