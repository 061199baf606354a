import { z } from 'zod';
import { API_GROUP_VERSION, Condition, ModelId, ObjectMeta, RatesByModel } from './common.ts';

export const Protocol = z.enum(['openai', 'anthropic', 'gemini', 'azure-openai', 'openai-compatible']);

export const ProviderRouteSpec = z.object({
  protocol: Protocol,
  baseURL: z.url({ message: 'must be an absolute http(s) URL such as "https://api.openai.com"' }),
  pathPrefix: z
    .string()
    .regex(/^\/[a-z0-9-]+$/, { message: 'must be one path segment such as "/openai"' })
    .optional()
    .describe('Path prefix the sidecar serves this route under; defaults to "/<route name>".'),
  credentialSecretRef: z
    .object({ name: z.string().min(1), key: z.string().min(1).default('apiKey') })
    .optional()
    .describe('Secret holding the provider credential; mounted into the sidecar only.'),
  models: z.array(ModelId).min(1).describe('Model ids served; dated snapshots "<id>-YYYY-MM-DD" of a listed id are served too.'),
  costs: RatesByModel.default({}).describe('What the platform pays the provider, per model.'),
  timeouts: z
    .object({
      connectSeconds: z.number().positive().default(10),
      requestSeconds: z.number().positive().default(600),
    })
    .default({ connectSeconds: 10, requestSeconds: 600 }),
});
export type ProviderRouteSpec = z.infer<typeof ProviderRouteSpec>;

export const ProviderRouteStatus = z.object({
  observedGeneration: z.number().int().optional(),
  conditions: z.array(Condition).optional(),
});

export const ProviderRoute = z.object({
  apiVersion: z.literal(API_GROUP_VERSION),
  kind: z.literal('ProviderRoute'),
  metadata: ObjectMeta,
  spec: ProviderRouteSpec,
  status: ProviderRouteStatus.optional(),
});
export type ProviderRoute = z.infer<typeof ProviderRoute>;
