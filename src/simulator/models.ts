import type { IncomingHttpHeaders } from 'node:http';
import { anthropicProvider } from './anthropic.ts';
import { azureProvider } from './azure.ts';
import { geminiProvider } from './gemini.ts';
import { openaiProvider } from './openai.ts';
import type { SimProvider, SimResponse } from './response.ts';

/**
 * The models endpoints that the sidecar forwards without billing, served
 * from a fixed catalog: OpenAI's and Anthropic's `/v1/models[/{id}]`, the
 * Gemini API's `/{v1,v1beta,v1alpha}/models[/{name}]`, and Azure OpenAI's
 * `/openai/models[/{id}]`, `/openai/v1/models[/{id}]` and
 * `/openai/deployments[/{id}]`. The simulator accepts any model name on the
 * metered endpoints, so the catalog is the models of the example manifests
 * and the README, which the example price plan prices.
 */

/** One models request the simulator serves: the provider that authenticates it and the response. */
export interface ModelsEndpoint {
  readonly provider: SimProvider;
  respond(url: URL, id: string): SimResponse;
}

/** Unix seconds of midnight UTC of a `YYYY-MM-DD` date. */
function unixSeconds(date: string): number {
  return Date.parse(`${date}T00:00:00Z`) / 1000;
}

interface OpenAIModel {
  id: string;
  /** Release date, an estimate used as OpenAI's `created`. */
  released: string;
  kind: 'chat' | 'embeddings';
}

const OPENAI_MODELS: readonly OpenAIModel[] = [
  { id: 'gpt-4o', released: '2024-05-13', kind: 'chat' },
  { id: 'gpt-4o-mini', released: '2024-07-18', kind: 'chat' },
  { id: 'gpt-4.1', released: '2025-04-14', kind: 'chat' },
  { id: 'o4-mini', released: '2025-04-16', kind: 'chat' },
  { id: 'text-embedding-3-small', released: '2024-01-25', kind: 'embeddings' },
];

/** Anthropic's models, newest first, as Anthropic lists them. */
const ANTHROPIC_MODELS = [
  { id: 'claude-haiku-4-5', displayName: 'Claude Haiku 4.5', released: '2025-10-15', line: 'haiku' },
  { id: 'claude-sonnet-4-5', displayName: 'Claude Sonnet 4.5', released: '2025-09-29', line: 'sonnet' },
] as const;

/**
 * Gemini models in the API's `Model` shape. `supportedGenerationMethods`
 * names only the methods the simulator serves (streamGenerateContent and
 * batchEmbedContents go with the method listed).
 */
const GEMINI_MODELS: readonly Record<string, unknown>[] = [
  {
    name: 'models/gemini-2.5-flash',
    version: '001',
    displayName: 'Gemini 2.5 Flash',
    description: 'Gemini 2.5 Flash as the Tollgate provider simulator serves it, with generated text and usage.',
    inputTokenLimit: 1_048_576,
    outputTokenLimit: 65_536,
    supportedGenerationMethods: ['generateContent'],
    temperature: 1,
    topP: 0.95,
    topK: 64,
    maxTemperature: 2,
    thinking: true,
  },
  {
    name: 'models/gemini-embedding-001',
    version: '001',
    displayName: 'Gemini Embedding 001',
    description: 'Gemini Embedding as the Tollgate provider simulator serves it, with deterministic vectors.',
    inputTokenLimit: 2048,
    outputTokenLimit: 1,
    supportedGenerationMethods: ['embedContent'],
  },
];

/** Page size limits of Anthropic's `GET /v1/models`, from its API reference as recalled, not checked against the API. */
const ANTHROPIC_DEFAULT_LIMIT = 20;
const ANTHROPIC_MAX_LIMIT = 1000;

/** Page size limits of the Gemini API's `models.list`, from its API reference as recalled, not checked against the API. */
const GEMINI_DEFAULT_PAGE_SIZE = 50;
const GEMINI_MAX_PAGE_SIZE = 1000;

/** Azure data-plane API versions: a date, optionally with `-preview`. */
const AZURE_API_VERSION = /^\d{4}-\d{2}-\d{2}(-preview)?$/;

/** Models paths from the API root. An id segment is any characters but `/`, percent-encoded or not. */
const SHARED_MODELS_PATH = /^\/v1\/models(?:\/([^/]+))?$/;
// A Gemini model name has no `:`, which would make the path a model method.
const GEMINI_MODELS_PATH = /^\/(v1|v1beta|v1alpha)\/models(?:\/([^/:]+))?$/;
const AZURE_MODELS_PATH = /^\/openai(\/v1)?\/models(?:\/([^/]+))?$/;
const AZURE_DEPLOYMENTS_PATH = /^\/openai\/deployments(?:\/([^/]+))?$/;

/**
 * Finds the models endpoint of a GET or HEAD request. `/v1/models` is a path
 * of OpenAI, Anthropic and the Gemini API alike, so the credential header
 * (or Gemini's `key` query parameter) that only one provider's SDK sends
 * decides, and OpenAI serves the rest.
 * `azureDeployments` are the simulator's configured deployments, if any.
 */
export function modelsEndpointFor(
  method: string | undefined,
  path: string,
  headers: IncomingHttpHeaders,
  url: URL,
  azureDeployments: Readonly<Record<string, string>> | undefined,
): ModelsEndpoint | undefined {
  if (method !== 'GET' && method !== 'HEAD') return undefined;

  const shared = SHARED_MODELS_PATH.exec(path);
  if (shared !== null) {
    const id = shared[1];
    if (headers['anthropic-version'] !== undefined || headers['x-api-key'] !== undefined) return anthropicModels(id);
    if (headers['x-goog-api-key'] !== undefined || url.searchParams.has('key')) return geminiModels('v1', id);
    return openaiModels(id);
  }

  const gemini = GEMINI_MODELS_PATH.exec(path);
  if (gemini !== null) return geminiModels(gemini[1]!, gemini[2]);

  const azureModels = AZURE_MODELS_PATH.exec(path);
  if (azureModels !== null) return azureModelsEndpoint(azureModels[1] !== undefined, azureModels[2], azureDeployments);

  const deployments = AZURE_DEPLOYMENTS_PATH.exec(path);
  if (deployments !== null) return azureDeploymentsEndpoint(deployments[1], azureDeployments);
  return undefined;
}

/** Decodes a path segment, or returns undefined for malformed percent-encoding. */
function decodeSegment(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}

function ok(body: unknown): SimResponse {
  return { kind: 'json', status: 200, body };
}

function error(provider: SimProvider, status: number, message: string, id: string): SimResponse {
  return { kind: 'json', status, body: provider.errorBody(status, message, id) };
}

function openaiModel(model: OpenAIModel): Record<string, unknown> {
  return { id: model.id, object: 'model', created: unixSeconds(model.released), owned_by: 'system' };
}

function openaiModels(segment: string | undefined): ModelsEndpoint {
  return {
    provider: openaiProvider,
    respond(): SimResponse {
      if (segment === undefined) return ok({ object: 'list', data: OPENAI_MODELS.map(openaiModel) });

      const id = decodeSegment(segment) ?? segment;
      const model = OPENAI_MODELS.find((entry) => entry.id === id);
      if (model !== undefined) return ok(openaiModel(model));
      const message = `model '${id}' not found. GET /v1/models lists the models the simulator serves`;
      return { kind: 'json', status: 404, body: { error: { message, type: 'invalid_request_error', param: 'model', code: 'model_not_found' } } };
    },
  };
}

function anthropicModel(model: (typeof ANTHROPIC_MODELS)[number]): Record<string, unknown> {
  return {
    type: 'model',
    id: model.id,
    display_name: model.displayName,
    created_at: `${model.released}T00:00:00Z`,
    // Anthropic describes every capability here. The simulator leaves it null, which the SDK's type allows.
    capabilities: null,
    deprecated_at: null,
    lifecycle: 'active',
    line: model.line,
    max_input_tokens: 200_000,
    max_tokens: 64_000,
    retires_at: null,
  };
}

/**
 * Serves Anthropic's models list, paged by `limit` with `after_id` (the next
 * page) or `before_id` (the previous page).
 * NOTE: Anthropic lists dated ids, such as `claude-sonnet-4-5-20250929`, and
 * resolves an alias on retrieve. The simulator lists the aliases that the
 * example routes name, because the sidecar prices no `-YYYYMMDD` snapshot.
 */
function anthropicModels(segment: string | undefined): ModelsEndpoint {
  return {
    provider: anthropicProvider,
    respond(url: URL, requestId: string): SimResponse {
      if (segment !== undefined) {
        const id = decodeSegment(segment) ?? segment;
        const model = ANTHROPIC_MODELS.find((entry) => entry.id === id);
        if (model !== undefined) return ok(anthropicModel(model));
        return error(anthropicProvider, 404, `model: ${id} not found. GET /v1/models lists the models the simulator serves`, requestId);
      }

      const limitText = url.searchParams.get('limit');
      const limit = limitText === null ? ANTHROPIC_DEFAULT_LIMIT : Number(limitText);
      if (!Number.isInteger(limit) || limit < 1 || limit > ANTHROPIC_MAX_LIMIT) {
        return error(anthropicProvider, 400, `limit: Input should be an integer from 1 to ${ANTHROPIC_MAX_LIMIT}`, requestId);
      }
      const ids = ANTHROPIC_MODELS.map((model) => model.id as string);
      const afterId = url.searchParams.get('after_id');
      const beforeId = url.searchParams.get('before_id');
      if (afterId !== null && beforeId !== null) {
        return error(anthropicProvider, 400, 'after_id and before_id cannot both be set', requestId);
      }
      const cursor = afterId ?? beforeId;
      const cursorIndex = cursor === null ? -1 : ids.indexOf(cursor);
      if (cursor !== null && cursorIndex === -1) {
        return error(anthropicProvider, 400, `${afterId !== null ? 'after_id' : 'before_id'}: unknown model id ${JSON.stringify(cursor)}`, requestId);
      }

      let start: number;
      let end: number;
      if (beforeId !== null) {
        end = cursorIndex;
        start = Math.max(0, end - limit);
      } else {
        start = cursorIndex + 1;
        end = Math.min(ids.length, start + limit);
      }
      const page = ANTHROPIC_MODELS.slice(start, end).map(anthropicModel);
      const hasMore = beforeId !== null ? start > 0 : end < ids.length;
      return ok({ data: page, has_more: hasMore, first_id: ids[start] ?? null, last_id: end > start ? ids[end - 1]! : null });
    },
  };
}

/**
 * Serves the Gemini API's models list, paged by `pageSize` and the
 * `nextPageToken` of the previous page (here the index of the next model).
 */
function geminiModels(version: string, segment: string | undefined): ModelsEndpoint {
  return {
    provider: geminiProvider,
    respond(url: URL, requestId: string): SimResponse {
      if (segment !== undefined) {
        const name = `models/${decodeSegment(segment) ?? segment}`;
        const model = GEMINI_MODELS.find((entry) => entry['name'] === name);
        if (model !== undefined) return ok(model);
        return error(geminiProvider, 404, `${name} is not found for API version ${version}. GET /${version}/models lists the models the simulator serves`, requestId);
      }

      const sizeText = url.searchParams.get('pageSize');
      const size = sizeText === null ? GEMINI_DEFAULT_PAGE_SIZE : Number(sizeText);
      if (!Number.isInteger(size) || size < 0) return error(geminiProvider, 400, `* ListModelsRequest.page_size: invalid value ${JSON.stringify(sizeText)}`, requestId);
      const pageSize = size === 0 ? GEMINI_DEFAULT_PAGE_SIZE : Math.min(size, GEMINI_MAX_PAGE_SIZE);

      const token = url.searchParams.get('pageToken') ?? '';
      const start = token === '' ? 0 : Number(token);
      if (token !== '' && (!Number.isInteger(start) || start < 1 || start >= GEMINI_MODELS.length)) {
        return error(geminiProvider, 400, `* ListModelsRequest.page_token: invalid page token ${JSON.stringify(token)}`, requestId);
      }
      const end = Math.min(GEMINI_MODELS.length, start + pageSize);
      const body: Record<string, unknown> = { models: GEMINI_MODELS.slice(start, end) };
      if (end < GEMINI_MODELS.length) body['nextPageToken'] = String(end);
      return ok(body);
    },
  };
}

/** Azure's models: the catalog's, and the base model of every configured deployment. */
function azureModelIds(deployments: Readonly<Record<string, string>> | undefined): string[] {
  const ids = OPENAI_MODELS.map((model) => model.id);
  for (const model of Object.values(deployments ?? {})) if (!ids.includes(model)) ids.push(model);
  return ids;
}

function azureModel(id: string): Record<string, unknown> {
  const known = OPENAI_MODELS.find((model) => model.id === id);
  const embeddings = known?.kind === 'embeddings' || id.includes('embedding');
  return {
    status: 'succeeded',
    capabilities: { fine_tune: false, inference: true, completion: false, chat_completion: !embeddings, embeddings },
    lifecycle_status: 'generally-available',
    // A fixed date of the simulator's own: Azure announces one per model.
    deprecation: { inference: unixSeconds('2030-01-01') },
    id,
    created_at: unixSeconds(known?.released ?? '2024-01-01'),
    object: 'model',
  };
}

/** Checks the `api-version` of a path outside `/openai/v1`, as the metered Azure endpoints do. */
function azureVersionError(url: URL): SimResponse | undefined {
  const version = url.searchParams.get('api-version');
  if (version === null) return { kind: 'json', status: 404, body: { error: { code: '404', message: 'Resource not found' } } };
  if (!AZURE_API_VERSION.test(version)) return { kind: 'json', status: 400, body: { error: { code: 'BadRequest', message: 'API version not supported' } } };
  return undefined;
}

/**
 * Azure's models, in the data-plane shape (`created_at`, `capabilities`,
 * `lifecycle_status`). NOTE: the `/openai/v1/models` response is assumed to
 * have the same shape, which is unverified against Azure.
 */
function azureModelsEndpoint(v1: boolean, segment: string | undefined, deployments: Readonly<Record<string, string>> | undefined): ModelsEndpoint {
  return {
    provider: azureProvider,
    respond(url: URL): SimResponse {
      const versionError = v1 ? undefined : azureVersionError(url);
      if (versionError !== undefined) return versionError;
      const ids = azureModelIds(deployments);
      if (segment === undefined) return ok({ data: ids.map(azureModel), object: 'list' });

      const id = decodeSegment(segment) ?? segment;
      if (ids.includes(id)) return ok(azureModel(id));
      return { kind: 'json', status: 404, body: { error: { code: 'NotFound', message: `model '${id}' not found. GET /openai/models lists the models the simulator serves` } } };
    },
  };
}

/**
 * Azure's deployments list of the 2022-12-01 API: the configured deployments,
 * or, when every deployment is served, one per catalog model named after it.
 * NOTE: Azure serves this path only on older API versions. The simulator serves it on every version.
 */
function azureDeploymentsEndpoint(segment: string | undefined, deployments: Readonly<Record<string, string>> | undefined): ModelsEndpoint {
  const entries = deployments === undefined ? OPENAI_MODELS.map((model) => [model.id, model.id] as const) : Object.entries(deployments);
  const deployment = ([name, model]: readonly [string, string]) => ({
    scale_settings: { scale_type: 'standard' },
    model,
    owner: 'organization-owner',
    id: name,
    status: 'succeeded',
    created_at: unixSeconds('2025-01-01'),
    updated_at: unixSeconds('2025-01-01'),
    object: 'deployment',
  });
  return {
    provider: azureProvider,
    respond(url: URL): SimResponse {
      const versionError = azureVersionError(url);
      if (versionError !== undefined) return versionError;
      if (segment === undefined) return ok({ data: entries.map(deployment), object: 'list' });

      const name = decodeSegment(segment) ?? segment;
      const entry = entries.find(([candidate]) => candidate === name);
      if (entry !== undefined) return ok(deployment(entry));
      return { kind: 'json', status: 404, body: { error: { code: 'DeploymentNotFound', message: `deployment '${name}' not found. GET /openai/deployments lists the deployments the simulator serves` } } };
    },
  };
}
