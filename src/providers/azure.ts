import type { Usage } from '../rating/usage.ts';
import {
  InvalidRequestError,
  type ErrorDetails,
  type ProviderAdapter,
  type RequestChanges,
  type RequestInfo,
  type RouteContext,
  type StreamMeter,
} from './adapter.ts';
import { isModelsPath, type EndpointKind } from './endpoints.ts';
import { pathOnly } from './fields.ts';
import { OpenAIAdapter, readOpenAIRequest } from './openai.ts';

/**
 * Adapter for Azure OpenAI chat completions and embeddings. Two path forms
 * name the deployment, whose base model (from the route's deployments) sets
 * the price:
 * - `/openai/deployments/{deployment}/chat/completions?api-version=...` and
 *   `.../embeddings`, which the `AzureOpenAI` client of the `openai` package
 *   sends. The body's `model` is ignored, as Azure ignores it.
 * - `/openai/v1/chat/completions` and `/openai/v1/embeddings`, where the
 *   body's `model` is the deployment name and `api-version` is optional. The
 *   plain `OpenAI` client sends these with a base URL ending in `/openai/v1`.
 *
 * The query string is forwarded unchanged. Bodies, responses and streams are
 * OpenAI's, plus Azure's content filter fields (`prompt_filter_results`,
 * `content_filter_results`), which the OpenAI adapter's readers pass through.
 * Azure streams may start with a chunk whose `choices` is empty and that
 * carries only `prompt_filter_results`; the OpenAI stream meter keeps it.
 */

type Operation = RequestInfo['operation'];

const DEPLOYMENT_PATH = /\/openai\/deployments\/([^/]+)\/(chat\/completions|embeddings)$/;
const V1_PATH = /\/openai\/v1\/(chat\/completions|embeddings)$/;

const METERED_ENDPOINTS =
  '/openai/deployments/{deployment}/chat/completions, /openai/deployments/{deployment}/embeddings, /openai/v1/chat/completions and /openai/v1/embeddings';

/**
 * Models and deployments, listed or one by id: `/openai/models` (where the
 * `AzureOpenAI` client's `models.list()` goes), `/openai/v1/models` (the
 * plain `OpenAI` client on a v1 base URL) and `/openai/deployments`.
 * NOTE: Azure serves `/openai/deployments` only on older data-plane API
 * versions, such as 2022-12-01, and returns 404 on the others.
 */
const MODELS_PATHS: readonly RegExp[] = [/\/openai(?:\/v1)?\/models(?:\/[^/]+)?$/, /\/openai\/deployments(?:\/[^/]+)?$/];

/**
 * Base models that get `max_completion_tokens`: the o-series reasoning models, which
 * reject `max_tokens`, and the gpt-5 and codex reasoning models, treated the same way.
 */
const NEEDS_MAX_COMPLETION_TOKENS = /^(o\d|gpt-5|codex)/;

export class AzureOpenAIAdapter implements ProviderAdapter {
  readonly protocol = 'azure-openai' as const;
  readonly defaultHeaders: Readonly<Record<string, string>> = {};
  readonly meteredEndpoints = METERED_ENDPOINTS;
  readonly modelsEndpoints = '/openai/models, /openai/v1/models and /openai/deployments, each also with /{id}';
  /** Sets `max_completion_tokens` when the client set no limit. */
  readonly #completionLimit = new OpenAIAdapter('openai');
  /** Sets `max_tokens` when the client set no limit, as OpenAI-compatible servers expect. */
  readonly #tokensLimit = new OpenAIAdapter('openai-compatible');

  inspect(path: string, body: Record<string, unknown>, route?: RouteContext): RequestInfo {
    const { deployment, operation } = readEndpoint(path, body);
    return readOpenAIRequest(operation, baseModelOf(deployment, route), body);
  }

  endpointKind(path: string, basePath: string): EndpointKind | undefined {
    const endpoint = pathOnly(path);
    if (DEPLOYMENT_PATH.test(endpoint) || V1_PATH.test(endpoint)) return 'metered';
    return isModelsPath(path, basePath, MODELS_PATHS) ? 'models' : undefined;
  }

  prepare(body: Record<string, unknown>, info: RequestInfo, changes: RequestChanges): Record<string, unknown> {
    // NOTE: older Azure API versions (2024-08-01-preview, for one) reject max_completion_tokens
    // and reasoning models reject max_tokens, so the field follows the base model's name. A new
    // model family that the pattern misses may reject the field. A client's own field is kept.
    const openai = NEEDS_MAX_COMPLETION_TOKENS.test(info.model) ? this.#completionLimit : this.#tokensLimit;
    return openai.prepare(body, info, changes);
  }

  usageFromJson(body: unknown, info: RequestInfo, promptEstimate: number): { usage: Usage; complete: boolean } {
    return this.#completionLimit.usageFromJson(body, info, promptEstimate);
  }

  createStreamMeter(info: RequestInfo, promptEstimate: number): StreamMeter {
    return this.#completionLimit.createStreamMeter(info, promptEstimate);
  }

  /** Builds Azure's error shape, `{"error": {"code", "message", ...}}`, which is also OpenAI's. */
  errorBody(error: ErrorDetails): Record<string, unknown> {
    return this.#completionLimit.errorBody(error);
  }

  credentialHeaders(credential: string): Record<string, string> {
    return { 'api-key': credential };
  }
}

/** Reads the deployment and operation from a deployment-scoped or v1 path. */
function readEndpoint(path: string, body: Record<string, unknown>): { deployment: string; operation: Operation } {
  const endpoint = pathOnly(path);

  const scoped = DEPLOYMENT_PATH.exec(endpoint);
  if (scoped !== null) {
    requireApiVersion(path);
    return { deployment: scoped[1]!, operation: operationOf(scoped[2]!) };
  }

  const v1 = V1_PATH.exec(endpoint);
  if (v1 !== null) return { deployment: requireDeploymentField(body), operation: operationOf(v1[1]!) };

  throw new InvalidRequestError(
    `unsupported endpoint ${endpoint}: this route meters only ${METERED_ENDPOINTS}`,
    404,
    'unsupported_endpoint',
  );
}

function operationOf(endpoint: string): Operation {
  return endpoint === 'embeddings' ? 'embeddings' : 'chat';
}

/** Rejects a deployment-scoped request without `api-version`, for which Azure returns a bare 404 "Resource not found". */
function requireApiVersion(path: string): void {
  const query = path.indexOf('?');
  const version = query === -1 ? null : new URLSearchParams(path.slice(query + 1)).get('api-version');
  if (version === null || version.length === 0) {
    throw new InvalidRequestError(
      'missing query parameter "api-version": Azure OpenAI requires it on /openai/deployments/ paths; ' +
        'set apiVersion or OPENAI_API_VERSION for the AzureOpenAI client, for example 2024-10-21',
      400,
      'missing_api_version',
      'api-version',
    );
  }
}

function requireDeploymentField(body: Record<string, unknown>): string {
  const model = body['model'];
  if (typeof model !== 'string' || model.length === 0) {
    throw new InvalidRequestError(
      'missing or invalid field "model": on /openai/v1 paths it must be the name of an Azure deployment, as a non-empty string',
      400,
      'invalid_request',
      'model',
    );
  }
  return model;
}

/** Looks up the base model of a deployment, or throws a 404 that names the deployment and the configured ones. */
function baseModelOf(deployment: string, route: RouteContext | undefined): string {
  const model = route?.deployments.get(deployment);
  if (model !== undefined) return model;

  const configured = [...(route?.deployments.keys() ?? [])];
  const listed = configured.length > 0 ? `its deployments are ${configured.join(', ')}` : 'it lists no deployments';
  const routeName = route === undefined ? 'this provider route' : `provider route "${route.name}"`;
  throw new InvalidRequestError(
    `deployment "${deployment}" is not configured on ${routeName} (${listed}); ` +
      'call one of those, or add the deployment with its base model to the ProviderRoute\'s spec.deployments',
    404,
    'DeploymentNotFound',
  );
}
