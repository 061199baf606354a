import { z } from 'zod';
import { API_GROUP_VERSION, Condition, MAX_PRICED_MODELS, ModelId, ObjectMeta, RatesByModel, strictObject } from './common.ts';

export const Protocol = z.enum(['openai', 'anthropic', 'gemini', 'azure-openai', 'openai-compatible']);

/**
 * Maximum number of deployments that one azure-openai route lists. The API server
 * bounds the estimated cost of the CEL rule that compares every deployment with every
 * model, and 32 deployments with MAX_PRICED_MODELS models fit that budget. Spread more
 * deployments over several routes.
 */
export const MAX_DEPLOYMENTS = 32;

/** Azure OpenAI deployment names: letters, digits, `.`, `_` and `-`, at most 64 characters. */
const DEPLOYMENT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** A dated snapshot suffix, `-YYYY-MM-DD`, as the CEL rule on spec checks it (digits only, no calendar check). */
const DATED_SUFFIX = /^-[0-9]{4}-[0-9]{2}-[0-9]{2}$/;

export const AzureDeployment = strictObject({
  name: z
    .string()
    .regex(DEPLOYMENT_NAME, { message: 'must be an Azure deployment name: 1 to 64 letters, digits, ".", "_" or "-", starting with a letter or digit' })
    .describe('Deployment name, as requests carry it in /openai/deployments/{name}/... or in the "model" field of /openai/v1 requests.'),
  model: ModelId.describe('Base model the deployment runs, such as "gpt-4o"; prices, provider costs and spec.models apply to it.'),
});
export type AzureDeployment = z.infer<typeof AzureDeployment>;

export const ProviderRouteSpec = strictObject({
  protocol: Protocol.describe(
    'Wire protocol of the provider: openai (Chat Completions and Embeddings), anthropic (Messages), gemini (generateContent and ' +
      'embeddings), azure-openai, or openai-compatible (servers with the OpenAI API, such as vLLM). It sets the paths the sidecar ' +
      'accepts, how it reads usage, and the header that carries the credential.',
  ),
  baseURL: z
    .url({ message: 'must be an absolute http(s) URL such as "https://api.openai.com"' })
    .describe(
      'Upstream URL; the sidecar appends the request path after the route\'s prefix to it. ' +
        'For azure-openai, the resource endpoint such as "https://my-resource.openai.azure.com", without "/openai".',
    ),
  pathPrefix: z
    .string()
    .regex(/^\/[a-z0-9-]+$/, { message: 'must be one path segment such as "/openai"' })
    .optional()
    .describe(
      'Path prefix the sidecar serves this route under, one segment such as "/openai"; defaults to "/<route name>". ' +
        'Of two routes in a namespace with the same prefix, the older keeps it and the other is not Ready (PathPrefixConflict).',
    ),
  credentialSecretRef: strictObject({
    name: z
      .string()
      .min(1)
      .describe(
        'Name of the Secret in the route\'s namespace. While the Secret or its key is missing, the route is not Ready (SecretMissing), ' +
          'and calls reach the provider without a key.',
      ),
    key: z.string().min(1).default('apiKey').describe('Key in the Secret whose value is the provider credential (default "apiKey").'),
  })
    .optional()
    .describe(
      'Secret holding the provider credential; it is mounted into the sidecar only, which sends it in the protocol\'s ' +
        'authentication header. Unset, calls reach the provider without a key.',
    ),
  // Bounded because a CEL rule on spec compares every deployment with every model.
  models: z
    .array(ModelId)
    .min(1)
    .max(MAX_PRICED_MODELS)
    .describe(
      'Model ids served, 1 to 256; dated snapshots "<id>-YYYY-MM-DD" of a listed id are served too. ' +
        'A request for another model gets HTTP 400 unless its price plan\'s unknownModels.policy is "default".',
    ),
  deployments: z
    .array(AzureDeployment)
    .max(MAX_DEPLOYMENTS)
    .optional()
    .describe(
      'Azure OpenAI deployments of an azure-openai route, at most 32, each with its base model; ' +
        'required for that protocol and forbidden for the others.',
    ),
  costs: RatesByModel.default({}).describe(
    'What the platform pays the provider, by model id and per million tokens, in the currency of the price plans that use the route ' +
      '(default none, at most 256 models). The sidecar records it as each call\'s provider cost, and a plan\'s markupPercent applies to it.',
  ),
  timeouts: strictObject({
    connectSeconds: z
      .number()
      .positive()
      .default(10)
      .describe(
        'Limit in seconds for opening a connection to the provider (default 10); a call whose connection takes longer gets 502 ' +
          'upstream_unreachable and is not charged.',
      ),
    requestSeconds: z
      .number()
      .positive()
      .default(600)
      .describe(
        'Seconds the sidecar waits for the provider\'s response headers, and then for each next chunk of the body (default 600). ' +
          'When the headers do not arrive in time, the call gets HTTP 502 and nothing is charged.',
      ),
  })
    .default({ connectSeconds: 10, requestSeconds: 600 })
    .describe('Upstream timeouts of the route.'),
}).superRefine((spec, context) => {
  for (const message of deploymentProblems(spec)) context.addIssue({ code: 'custom', path: ['deployments'], message });
});
export type ProviderRouteSpec = z.infer<typeof ProviderRouteSpec>;

/**
 * The deployment rules, as the CEL rules on the CRD's spec state them:
 * an azure-openai route lists at least one deployment, other protocols list
 * none, names are unique, and each base model is served by spec.models.
 */
export const DEPLOYMENT_MESSAGES = {
  required:
    'protocol "azure-openai" needs at least one deployment: list each deployment with the base model it runs, such as {name: prod-gpt-4o, model: gpt-4o}',
  forbidden: 'only protocol "azure-openai" uses deployments; remove the field, because the other protocols name the model in each request',
  duplicate: 'deployment names must be unique within a route',
  unserved: 'every deployment\'s model must be listed in spec.models, exactly or as a dated snapshot "<id>-YYYY-MM-DD" of a listed id',
} as const;

function deploymentProblems(spec: { protocol: string; models: string[]; deployments?: AzureDeployment[] | undefined }): string[] {
  const deployments = spec.deployments ?? [];
  if (spec.protocol !== 'azure-openai') return deployments.length > 0 ? [DEPLOYMENT_MESSAGES.forbidden] : [];
  if (deployments.length === 0) return [DEPLOYMENT_MESSAGES.required];

  const problems: string[] = [];
  const names = new Set(deployments.map((deployment) => deployment.name));
  if (names.size !== deployments.length) problems.push(DEPLOYMENT_MESSAGES.duplicate);
  if (!deployments.every((deployment) => servedBy(deployment.model, spec.models))) problems.push(DEPLOYMENT_MESSAGES.unserved);
  return problems;
}

function servedBy(model: string, models: readonly string[]): boolean {
  return models.some((listed) => model === listed || (model.startsWith(`${listed}-`) && DATED_SUFFIX.test(model.slice(listed.length))));
}

export const ProviderRouteStatus = strictObject({
  observedGeneration: z.number().int().optional().describe('The metadata.generation of the spec that this status reflects.'),
  conditions: z
    .array(Condition)
    .optional()
    .describe(
      'Ready: True when the route is valid, keeps its path prefix, and its credential Secret and key exist ' +
        'and the operator may read them.',
    ),
});

export const ProviderRoute = strictObject({
  apiVersion: z.literal(API_GROUP_VERSION),
  kind: z.literal('ProviderRoute'),
  metadata: ObjectMeta,
  spec: ProviderRouteSpec,
  status: ProviderRouteStatus.optional(),
});
export type ProviderRoute = z.infer<typeof ProviderRoute>;
