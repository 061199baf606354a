import type { Usage } from '../rating/usage.ts';
import type { EndpointKind } from './endpoints.ts';

export type Protocol = 'openai' | 'anthropic' | 'openai-compatible' | 'gemini' | 'azure-openai';

/** Facts about a request that the sidecar needs before it forwards it. */
export interface RequestInfo {
  model: string;
  stream: boolean;
  /**
   * The output limit the client set, if any (max_tokens, max_completion_tokens, ...),
   * as a total over all choices: a request for n choices may generate n times
   * the per-choice limit.
   */
  maxOutputTokens: number | undefined;
  /**
   * True when the client itself asked for usage in the stream (OpenAI
   * stream_options.include_usage), and for protocols whose streams always
   * carry usage. When false, the stream meter hides the usage that the
   * sidecar requested for itself.
   */
  clientWantsStreamUsage: boolean;
  /** The operation: chat (generation) or embeddings (input only). */
  operation: 'chat' | 'embeddings';
  /**
   * Limits on the uses of server-side tools that the provider bills per use,
   * such as web search, one per limit field. Undefined when the request
   * enables no such tool.
   */
  toolUseLimits?: ToolUseLimit[];
}

/**
 * One request field that bounds the uses of server-side tools billed per use:
 * Anthropic's `max_uses` of one web search or web fetch tool, or the
 * Responses API's `max_tool_calls`, which bounds all built-in tool calls.
 */
export interface ToolUseLimit {
  /** Path of the field in the request body, for messages, such as `tools[1].max_uses` or `max_tool_calls`. */
  field: string;
  /** The tools it bounds, for messages, such as `the web_search_20250305 tool`. */
  tools: string;
  /** Units (`web_search`, `web_fetch`) that one use of these tools is metered as. */
  units: string[];
  /** The limit the client set, or undefined when the client set none. */
  maxUses: number | undefined;
  /** Position of the tool in the body's `tools` array, when the limit is a field of one tool. */
  toolIndex?: number;
}

/** Changes the sidecar makes to a request body before forwarding it. */
export interface RequestChanges {
  /**
   * Output limit to set, as a total over all choices: when the client set
   * none, or to lower the client's limit to what the wallet can pay for.
   */
  maxOutputTokens?: number;
  /**
   * Use limits to set, keyed by the entries of RequestInfo.toolUseLimits
   * that they fill in. Only limits that the client left unset are set.
   */
  toolUseLimits?: ReadonlyMap<ToolUseLimit, number>;
}

/**
 * Usage counts read from a response or stream. A field the upstream did not
 * send is undefined, never 0: a missing count is unknown, not zero.
 */
export interface UsageReading {
  usage: Usage | undefined;
}

/**
 * Reads a server-sent event stream chunk by chunk, passing bytes through
 * (minus any usage event the client did not ask for) and tracking usage.
 */
export interface StreamMeter {
  /** Consumes one upstream chunk and returns the bytes to send to the client (possibly empty). */
  push(chunk: Buffer): Buffer;
  /** Returns bytes held back at the end of the stream (an incomplete trailing event), if any. */
  flush(): Buffer;
  /**
   * Returns the usage known so far, and may be called more than once.
   * `complete` is false when the stream ended (or was cut) before the
   * provider's final usage. The counts then include an estimate of the output
   * seen so far, marked `estimated`. Counts that the final usage left out or
   * reported as an impossible zero are estimated too, with `complete` true.
   */
  result(): { usage: Usage; complete: boolean };
  /**
   * Returns the response id, model and finish reasons seen so far, for the
   * GenAI span attributes. It may be called more than once, also on a stream
   * that was cut.
   */
  responseMetadata(): ResponseMetadata;
}

/** Identity and outcome of a response, in its provider's own terms. */
export interface ResponseMetadata {
  /** The provider's id of the response, or undefined when none was seen. */
  id: string | undefined;
  /** The model that generated the response (often a dated version of the requested model), or undefined when none was seen. */
  model: string | undefined;
  /** Reasons generation stopped, one per choice or candidate in index order, or empty when none was seen. */
  finishReasons: string[];
}

/** Settings of the route a request arrived on that an adapter needs to read the request. */
export interface RouteContext {
  /** Name of the ProviderRoute, for error messages. */
  readonly name: string;
  /** Azure deployment names with the base model each runs; empty for the other protocols. */
  readonly deployments: ReadonlyMap<string, string>;
}

export interface ErrorDetails {
  status: number;
  /** Short machine-readable code, for example `insufficient_funds` or `unknown_model`. */
  code: string;
  message: string;
  /** The request field the error is about, such as `input[0]`, or undefined when it is not about one field. */
  param?: string | undefined;
}

export interface ProviderAdapter {
  readonly protocol: Protocol;
  /**
   * Reads model, stream flag and output limit; throws InvalidRequestError with a clear message.
   * `model` is the model that rates apply to: for Azure, the base model of the
   * deployment the request names, looked up in `route`.
   */
  inspect(path: string, body: Record<string, unknown>, route?: RouteContext): RequestInfo;
  /**
   * Classifies an upstream path by what the sidecar does with it (see
   * EndpointKind), from the path alone, or returns undefined for a path that
   * the route serves with no method. A models endpoint is one that only lists
   * or describes models. Every other GET endpoint reads data of the provider
   * account that all tenants share, so it is not a models endpoint.
   * `basePath` is the route's upstream path prefix (see isModelsPath).
   */
  endpointKind(path: string, basePath: string): EndpointKind | undefined;
  /** The metered endpoints, for messages, such as `/v1/messages`. */
  readonly meteredEndpoints: string;
  /** The models endpoints, for messages, such as `/v1/models and /v1/models/{model}`. */
  readonly modelsEndpoints: string;
  /**
   * Returns the body to forward: output limit set where needed, stream usage
   * requested. It does not modify the body passed in, and does not throw, so
   * it is safe to call after the reservation.
   */
  prepare(body: Record<string, unknown>, info: RequestInfo, changes: RequestChanges): Record<string, unknown>;
  /**
   * Reads usage from a complete JSON response. `promptEstimate` (tokens)
   * replaces a prompt count that the upstream left out or reported as an
   * impossible zero, and a missing output count is estimated from the
   * response text. `complete` is false when the response carried no usage.
   */
  usageFromJson(body: unknown, info: RequestInfo, promptEstimate: number): { usage: Usage; complete: boolean };
  /** Creates the per-request stream reader, which uses `promptEstimate` as `usageFromJson` does. */
  createStreamMeter(info: RequestInfo, promptEstimate: number): StreamMeter;
  /** Builds an error body in the provider's own format, so its SDK raises a readable error. */
  errorBody(error: ErrorDetails): Record<string, unknown>;
  /**
   * Headers that carry the credential upstream. The client's own credential
   * headers (`authorization`, `x-api-key`, `api-key`) must be dropped before adding these.
   */
  credentialHeaders(credential: string): Record<string, string>;
  /** Headers the upstream requires, sent only where the client did not send them (Anthropic's `anthropic-version`). */
  readonly defaultHeaders: Readonly<Record<string, string>>;
}

export class InvalidRequestError extends Error {
  override readonly name = 'InvalidRequestError';
  readonly status: number;
  readonly code: string;
  /** The request field the error is about, such as `model` or `input[2]`, for the `param` of OpenAI-format errors. */
  readonly param: string | undefined;

  constructor(message: string, status = 400, code = 'invalid_request', param?: string) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}
