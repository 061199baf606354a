import { z } from 'zod';
import { API_GROUP_VERSION, Condition, Currency, ModelRates, ObjectMeta, Percent, RatesByModel, strictObject } from './common.ts';

export const PriceVersion = strictObject({
  name: z.string().min(1).optional(),
  effectiveFrom: z.iso.datetime({ offset: true, message: 'must be an RFC 3339 time such as "2026-01-01T00:00:00Z"' }),
  markupPercent: Percent.optional().describe('Charge = provider cost x (1 + percent/100) for models without explicit rates.'),
  models: RatesByModel.default({}).describe('Explicit customer rates per model; these win over the markup.'),
});
export type PriceVersion = z.infer<typeof PriceVersion>;

/** Maximum number of price versions in one PricePlan. */
export const MAX_PRICE_VERSIONS = 100;

export const PricePlanSpec = strictObject({
  currency: Currency,
  // Bounded because the API server checks effectiveFrom for duplicates with a CEL rule
  // whose cost grows with the square of the list.
  versions: z.array(PriceVersion).min(1).max(MAX_PRICE_VERSIONS),
  unknownModels: strictObject({
    policy: z.enum(['reject', 'default']).default('reject'),
    defaultRates: ModelRates.optional(),
  })
    .default({ policy: 'reject' })
    .describe('What to do with a model the plan does not price: reject it (the default), or charge defaultRates.'),
});
export type PricePlanSpec = z.infer<typeof PricePlanSpec>;

export const PricePlan = strictObject({
  apiVersion: z.literal(API_GROUP_VERSION),
  kind: z.literal('PricePlan'),
  metadata: ObjectMeta,
  spec: PricePlanSpec,
  status: strictObject({ observedGeneration: z.number().int().optional(), conditions: z.array(Condition).optional() }).optional(),
});
export type PricePlan = z.infer<typeof PricePlan>;
