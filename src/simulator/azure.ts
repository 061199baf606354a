import type { IncomingHttpHeaders } from 'node:http';
import { isRecord } from '../providers/fields.ts';
import type { Controls } from './controls.ts';
import { bearerToken, respondToChat, respondToEmbeddings } from './openai.ts';
import type { SimEndpoint, SimProvider, SimResponse, StreamEvent } from './response.ts';

/**
 * Azure OpenAI chat completions and embeddings, in the two path forms Azure
 * serves: `/openai/deployments/{deployment}/...?api-version=...`, which the
 * `AzureOpenAI` client of the `openai` package calls, and `/openai/v1/...`
 * with the deployment name in the body's `model`. Bodies are OpenAI's, with
 * Azure's content filter results added: `prompt_filter_results` on the
 * response, `content_filter_results` on each choice, and a first stream chunk
 * with no choices that carries only the prompt's filter results.
 */

// Both forms start at the resource's root, as on `https://{resource}.openai.azure.com`.
const DEPLOYMENT_PATH = /^\/openai\/deployments\/([^/]+)\/(chat\/completions|embeddings)$/;
const V1_PATH = /^\/openai\/v1\/(chat\/completions|embeddings)$/;

/** Azure data-plane API versions: a date, optionally with `-preview`. */
const API_VERSION = /^\d{4}-\d{2}-\d{2}(-preview)?$/;

/** Filter results of text that no category flagged, as Azure writes them for a completion. */
const CLEAN_COMPLETION = {
  hate: { filtered: false, severity: 'safe' },
  protected_material_code: { filtered: false, detected: false },
  protected_material_text: { filtered: false, detected: false },
  self_harm: { filtered: false, severity: 'safe' },
  sexual: { filtered: false, severity: 'safe' },
  violence: { filtered: false, severity: 'safe' },
};

/** Filter results of a prompt that no category flagged. */
const CLEAN_PROMPT = {
  hate: { filtered: false, severity: 'safe' },
  jailbreak: { filtered: false, detected: false },
  self_harm: { filtered: false, severity: 'safe' },
  sexual: { filtered: false, severity: 'safe' },
  violence: { filtered: false, severity: 'safe' },
};

const PROMPT_FILTER_RESULTS = [{ prompt_index: 0, content_filter_results: CLEAN_PROMPT }];

export const azureProvider: SimProvider = {
  /**
   * Returns the `api-key` header. Paths under `/openai/v1/` also take
   * `Authorization: Bearer`, as the plain OpenAI client sends it.
   */
  credential(headers: IncomingHttpHeaders, url: URL): string | undefined {
    const header = headers['api-key'];
    const key = Array.isArray(header) ? header[0] : header;
    if (key !== undefined && key.length > 0) return key;
    return url.pathname.startsWith('/openai/v1/') ? bearerToken(headers) : undefined;
  },

  /** Builds Azure's error shape, in which `code` is a string. */
  errorBody(status: number, message: string): unknown {
    return { error: { code: String(status), message } };
  },

  notFoundMessage: () => 'Resource not found',

  requestIdHeader: 'apim-request-id',
};

/** True for a chat completions or embeddings path of either Azure form. */
export function isAzurePath(path: string): boolean {
  return DEPLOYMENT_PATH.test(path) || V1_PATH.test(path);
}

/**
 * True for a path that looks meant for Azure OpenAI because it contains
 * `/openai/`. The server uses it only to choose the format of a 404.
 */
export function looksLikeAzurePath(path: string): boolean {
  return path.includes('/openai/');
}

/**
 * Creates the Azure endpoints of one simulator. With `deployments` (name to
 * model), a request for another deployment gets Azure's 404 DeploymentNotFound
 * and responses name the deployment's model. Without it, every deployment is
 * served and responses name the body's `model`, or the deployment when the
 * body has none.
 */
export function createAzureEndpoints(deployments: Readonly<Record<string, string>> | undefined): {
  chat: SimEndpoint;
  embeddings: SimEndpoint;
} {
  const respond = (operation: 'chat' | 'embeddings') => (body: Record<string, unknown>, controls: Controls, id: string, url: URL) =>
    respondToAzure(operation, deployments, body, controls, id, url);
  return {
    chat: { name: 'chat', provider: azureProvider, respond: respond('chat') },
    embeddings: { name: 'embeddings', provider: azureProvider, respond: respond('embeddings') },
  };
}

function respondToAzure(
  operation: 'chat' | 'embeddings',
  deployments: Readonly<Record<string, string>> | undefined,
  body: Record<string, unknown>,
  controls: Controls,
  id: string,
  url: URL,
): SimResponse {
  const scoped = DEPLOYMENT_PATH.exec(url.pathname);
  const version = url.searchParams.get('api-version');
  if (scoped !== null && version === null) {
    // Azure returns its bare 404 for a deployment path without api-version, as for an unknown path.
    return azureError(404, '404', 'Resource not found');
  }
  if (scoped !== null && !API_VERSION.test(version ?? '')) return azureError(400, 'BadRequest', 'API version not supported');

  const deployment = scoped !== null ? scoped[1]! : body['model'];
  if (typeof deployment !== 'string' || deployment.length === 0) {
    return azureError(400, 'BadRequest', "the 'model' field must name a deployment");
  }
  const configured = deployments === undefined ? undefined : Object.hasOwn(deployments, deployment) ? deployments[deployment] : null;
  if (configured === null) {
    return azureError(
      404,
      'DeploymentNotFound',
      'The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.',
    );
  }

  const named = body['model'];
  const model = configured ?? (typeof named === 'string' && named.length > 0 ? named : deployment);
  const request = { ...body, model };
  if (operation === 'embeddings') return respondToEmbeddings(request, controls, id);

  const result = respondToChat(request, controls, id);
  if (result.kind === 'stream') return { kind: 'stream', events: withStreamFilterResults(result.events) };
  if (result.status !== 200 || !isRecord(result.body)) return result;
  return { kind: 'json', status: 200, body: withFilterResults(result.body) };
}

function azureError(status: number, code: string, message: string): SimResponse {
  return { kind: 'json', status, body: { error: { code, message } } };
}

/** Adds the prompt's filter results to a completion, and every choice's own. */
function withFilterResults(completion: Record<string, unknown>): Record<string, unknown> {
  const choices = Array.isArray(completion['choices']) ? completion['choices'] : [];
  return {
    ...completion,
    choices: choices.map((choice: unknown) => (isRecord(choice) ? { ...choice, content_filter_results: CLEAN_COMPLETION } : choice)),
    prompt_filter_results: PROMPT_FILTER_RESULTS,
  };
}

/**
 * Rewrites OpenAI stream chunks the way Azure sends them: a first chunk with
 * empty `choices`, blank fields and the prompt's filter results, then each
 * chunk with `content_filter_results` on its choices (empty unless the delta
 * carries content). The usage chunk and `[DONE]` are unchanged.
 */
function withStreamFilterResults(events: StreamEvent[]): StreamEvent[] {
  const first = { choices: [], created: 0, id: '', model: '', object: '', prompt_filter_results: PROMPT_FILTER_RESULTS };
  const rewritten: StreamEvent[] = [{ text: `data: ${JSON.stringify(first)}\n\n`, content: false }];

  for (const event of events) {
    const data = event.text.slice('data: '.length).trimEnd();
    const chunk = data === '[DONE]' ? undefined : (JSON.parse(data) as unknown);
    const choices = isRecord(chunk) ? chunk['choices'] : undefined;
    if (!isRecord(chunk) || !Array.isArray(choices) || choices.length === 0) {
      rewritten.push(event);
      continue;
    }

    const filtered = choices.map((choice: unknown) => {
      if (!isRecord(choice)) return choice;
      const delta = choice['delta'];
      const hasContent = isRecord(delta) && typeof delta['content'] === 'string' && delta['content'].length > 0;
      return { ...choice, content_filter_results: hasContent ? CLEAN_COMPLETION : {} };
    });
    rewritten.push({ text: `data: ${JSON.stringify({ ...chunk, choices: filtered })}\n\n`, content: event.content });
  }
  return rewritten;
}
