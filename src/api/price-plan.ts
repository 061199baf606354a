import { z } from 'zod';
import { API_GROUP_VERSION, Condition, Currency, describeCurrency, ModelRates, ObjectMeta, Percent, RatesByModel, strictObject } from './common.ts';

export const PriceVersion = strictObject({
  name: z.string().min(1).optional().describe('Label of the version, used in error messages; defaults to its effectiveFrom.'),
  effectiveFrom: z.iso
    .datetime({ offset: true, message: 'must be an RFC 3339 time such as "2026-01-01T00:00:00Z"' })
    .describe(
      'RFC 3339 time with a time zone from which the version is in force, until a later version starts. ' +
        'A request keeps the version it was admitted under until it is settled.',
    ),
  markupPercent: Percent.optional().describe(
    'Markup over the route\'s provider cost for models without explicit rates in this version: charge = cost x (1 + percent/100). ' +
      'A decimal string with at most 4 decimals, such as "20"; it prices only models that have an entry in the route\'s costs.',
  ),
  models: RatesByModel.default({}).describe(
    'Explicit customer rates by model id, per million tokens; they win over markupPercent (default none, at most 256 models). ' +
      'A dated snapshot "<id>-YYYY-MM-DD" is priced at the rates of "<id>".',
  ),
});
export type PriceVersion = z.infer<typeof PriceVersion>;

/**
 * Converts an RFC 3339 time that the PriceVersion schema accepted into nanoseconds since
 * the epoch, so that "2026-01-01T00:00:00Z" and "2026-01-01T01:00:00+01:00" are equal.
 * Digits beyond nanoseconds are dropped, as the API server drops them (checked with Kubernetes 1.35).
 */
export function effectiveFromNanos(effectiveFrom: string): bigint {
  const match = /^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(.*)$/i.exec(effectiveFrom);
  if (!match) throw new RangeError(`effectiveFrom "${effectiveFrom}" is not an RFC 3339 time`);
  const wholeSecondsMs = Date.parse(`${match[1]}${match[3]}`);
  const fractionNanos = (match[2] ?? '').padEnd(9, '0').slice(0, 9);
  return BigInt(wholeSecondsMs) * 1_000_000n + BigInt(fractionNanos);
}

/**
 * Reports each version whose effectiveFrom is the same instant as an earlier version's,
 * also when the two are written differently ("...Z" and "...+00:00"). Of such versions the
 * sidecar could only ever apply one. The CRD states the same rule in CEL on spec.versions.
 */
function rejectSameEffectiveFrom(versions: PriceVersion[], context: z.RefinementCtx): void {
  const firstAt = new Map<bigint, number>();
  versions.forEach((version, index) => {
    const instant = effectiveFromNanos(version.effectiveFrom);
    const earlier = firstAt.get(instant);
    if (earlier === undefined) {
      firstAt.set(instant, index);
      return;
    }
    const other = versions[earlier]!;
    context.addIssue({
      code: 'custom',
      path: [index, 'effectiveFrom'],
      message:
        `${JSON.stringify(version.effectiveFrom)} is the same instant as ${JSON.stringify(other.effectiveFrom)}, ` +
        `the effectiveFrom of version ${earlier}, so only one of the two could ever be in effect; ` +
        'give each version a different effectiveFrom, or merge the two versions into one',
    });
  });
}

/** Maximum number of price versions in one PricePlan. */
export const MAX_PRICE_VERSIONS = 100;

export const PricePlanSpec = strictObject({
  currency: Currency.describe(
    describeCurrency(
      'Currency of the plan\'s rates. Only Wallets in this currency can use the plan, ' +
        'and the costs of the ProviderRoutes it is used with are read in this currency, without conversion.',
    ),
  ),
  // Bounded because the API server checks effectiveFrom for duplicates with a CEL rule
  // whose cost grows with the square of the list.
  versions: z
    .array(PriceVersion)
    .min(1)
    .max(MAX_PRICE_VERSIONS)
    .superRefine(rejectSameEffectiveFrom)
    .describe(
      'Dated price versions, 1 to 100, each with its own effectiveFrom instant. The sidecar prices a request with the version whose ' +
        'effectiveFrom is the latest at or before its clock, and versions inherit no rates from each other.',
    ),
  unknownModels: strictObject({
    policy: z
      .enum(['reject', 'default'])
      .default('reject')
      .describe(
        '"reject" (the default) answers a request for a model that the version in force cannot price with HTTP 400 unknown_model; ' +
          '"default" charges it at defaultRates, also when the route does not list the model.',
      ),
    defaultRates: ModelRates.optional().describe(
      'Customer rates, per million tokens, for models without explicit rates or a markup price in the version in force; ' +
        'required when policy is "default".',
    ),
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
  status: strictObject({
    observedGeneration: z.number().int().optional().describe('The metadata.generation of the spec that this status reflects.'),
    conditions: z
      .array(Condition)
      .optional()
      .describe(
        'Ready: True when the plan compiles for every ProviderRoute of its namespace and a version is in effect. ' +
          'Its message lists the served models that the plan cannot price.',
      ),
  }).optional(),
});
export type PricePlan = z.infer<typeof PricePlan>;
