import { z } from 'zod';
import { NANO_DIGITS } from '../money/money.ts';

export const API_GROUP = 'tollgate.dev';
export const API_VERSION = 'v1alpha1';
export const API_GROUP_VERSION = `${API_GROUP}/${API_VERSION}`;

/** Maximum length of a money string. An amount the ledger can hold needs at most 20 characters. */
export const MAX_MONEY_LENGTH = 32;

/** Maximum number of decimals of a percentage: 4 decimals of a percent are whole parts per million. */
export const MAX_PERCENT_DECIMALS = 4;

/** Quotes a received value for an error message, cut to 40 characters so that a runaway value stays readable. */
function quoteInput(input: unknown): string {
  const text = String(input);
  return JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}...` : text);
}

/** Returns the number of decimals of a plain decimal string such as "2.505", or undefined for any other text. */
function decimalPlaces(text: string): number | undefined {
  return /^\d+\.(\d+)$/.exec(text)?.[1]?.length;
}

/** Builds the error of a string that does not match the Money pattern, naming the value and the fix. */
export function moneyFormatMessage(input: unknown): string {
  const text = String(input);
  const places = decimalPlaces(text);
  if (places !== undefined && places > NANO_DIGITS) {
    return `must have at most ${NANO_DIGITS} decimals, but ${quoteInput(text)} has ${places}; round it to ${NANO_DIGITS} decimals, because amounts are whole nano-units`;
  }
  if (text.includes(',') && /^[\d,.]+$/.test(text)) {
    return `must use a dot as the decimal separator and no thousands separator, such as "2.50", not ${quoteInput(text)}`;
  }
  return `must be a non-negative decimal string such as "12.50" (at most ${NANO_DIGITS} decimals) or nano-units such as "120n", not ${quoteInput(text)}`;
}

/** A non-negative money amount: decimal currency units ("12.50") or nano-units with an `n` suffix ("120n"). */
export const Money = z
  .string({
    error: (issue) =>
      issue.input === undefined
        ? 'is required: a decimal string such as "12.50"'
        : `must be a quoted decimal string such as "12.50", not the ${typeof issue.input} ${JSON.stringify(issue.input)} (YAML reads an unquoted 0.5 as a number)`,
  })
  // Bounded so that the API server's cost estimate of CEL rules on amounts stays small.
  .max(MAX_MONEY_LENGTH, {
    error: (issue) => `must be at most ${MAX_MONEY_LENGTH} characters, but ${quoteInput(issue.input)} has ${String(issue.input).length}`,
  })
  .regex(/^(\d+(\.\d{1,9})?|\d+n)$/, { error: (issue) => moneyFormatMessage(issue.input) })
  .describe('Money: a decimal string of currency units such as "12.50", or integer nano-units with an "n" suffix such as "120n".');

// `kubectl explain` shows a money field's type only as <string>, so each field's
// description states what the amount is for and then its format.
const MONEY_FORMAT =
  'Decimal string of currency units with at most 9 decimals, such as "12.50", or integer nano-units with an "n" suffix, such as "120n".';
const RATE_FORMAT =
  'Per million tokens, as a decimal string of currency units with at most 9 decimals, such as "2.50", ' +
  'or as integer nano-units with an "n" suffix, such as "2500000000n" for the same 2.50 or "120n" for 0.00000012.';

/** Returns the description of a money field: what the amount is for, then the money format. */
export function describeMoney(meaning: string): string {
  return `${meaning} ${MONEY_FORMAT}`;
}

/** Returns the description of a per-million-token rate: which tokens it prices, then the unit and format. */
export function describeRate(meaning: string): string {
  return `${meaning} ${RATE_FORMAT}`;
}

/** A price per million tokens, in currency units or nano-units, as a money string. */
export const RatePerMillion = Money.describe(describeRate('Price of one kind of token.'));

const CURRENCY_FORMAT =
  'Three uppercase letters, such as the ISO 4217 code USD; only the form is checked, not the list of codes. ' +
  "Amounts in this currency always have 9 decimals (nano-units), whatever the currency's minor unit.";

/** Returns the description of a currency field: what the currency is for, then the format that all currency fields share. */
export function describeCurrency(meaning: string): string {
  return `${meaning} ${CURRENCY_FORMAT}`;
}

export const Currency = z
  .string()
  .regex(/^[A-Z]{3}$/, {
    error: (issue) => `must be three uppercase letters, such as the ISO 4217 code "USD", not ${quoteInput(issue.input)}`,
  })
  .describe(describeCurrency('Currency code.'));

/** Builds the error of a string that does not match the Percent pattern, naming the value and the limit. */
export function percentFormatMessage(input: unknown): string {
  const text = String(input);
  const places = decimalPlaces(text);
  if (places !== undefined && places > MAX_PERCENT_DECIMALS) {
    return `must have at most ${MAX_PERCENT_DECIMALS} decimals, but ${quoteInput(text)} has ${places}; round it to ${MAX_PERCENT_DECIMALS} decimals`;
  }
  return `must be a non-negative decimal percentage with at most ${MAX_PERCENT_DECIMALS} decimals, such as "20" or "12.5", not ${quoteInput(text)}`;
}

export const Percent = z
  .string({
    error: (issue) =>
      issue.input === undefined
        ? 'is required: a decimal percentage such as "20"'
        : `must be a quoted decimal percentage such as "20", not the ${typeof issue.input} ${JSON.stringify(issue.input)} (YAML reads an unquoted 20 as a number)`,
  })
  .regex(/^\d+(\.\d{1,4})?$/, { error: (issue) => percentFormatMessage(issue.input) })
  .describe(`A non-negative percentage as a decimal string with at most ${MAX_PERCENT_DECIMALS} decimals, such as "20" or "12.5".`);

/**
 * Builds a z.strictObject whose unknown-field error names the field's full path and the
 * known fields, because a misspelled field such as `limts` would otherwise drop a setting
 * without a word. kubectl rejects unknown fields by default too (strict field validation,
 * checked with kubectl 1.35), so local mode is not laxer than a cluster.
 */
export function strictObject<Shape extends z.core.$ZodLooseShape>(shape: Shape): z.ZodObject<Shape, z.core.$strict> {
  const known = Object.keys(shape).join(', ');
  return z.strictObject(shape, {
    error: (issue) => {
      if (issue.code !== 'unrecognized_keys') return undefined;
      const fields = issue.keys.map((key) => JSON.stringify([...issue.path ?? [], key].join('.'))).join(', ');
      const fix = issue.keys.length === 1 ? 'remove it or fix its spelling' : 'remove them or fix their spelling';
      return `unknown field${issue.keys.length === 1 ? '' : 's'} ${fields}; ${fix}; the known fields are ${known}`;
    },
  });
}

/**
 * Parses like `schema.safeParse`, except that fields the schema does not know
 * are dropped instead of failing the parse. A newer Tollgate may write
 * fields that an older operator or sidecar does not know: a new CRD field
 * on the API server, or a new field in the operator's snapshot. Such objects
 * then still load, as Kubernetes clients treat fields they do not know. Manifests that people
 * write go through the strict schemas, so that a misspelled field is an
 * error.
 */
export function parseIgnoringUnknownFields<T extends z.ZodType>(schema: T, value: unknown): z.ZodSafeParseResult<z.output<T>> {
  let result = schema.safeParse(value);
  let copy: unknown;
  // Each round removes the unknown fields zod reported; a nested object whose parent had problems is reported in a later round.
  for (let round = 0; round < 8 && !result.success; round++) {
    const issues = result.error.issues;
    if (!issues.every((issue) => issue.code === 'unrecognized_keys')) return result;
    copy ??= structuredClone(value);
    for (const issue of issues) {
      const parent = issue.path.reduce<unknown>((node, key) => (node as Record<PropertyKey, unknown>)[key], copy) as Record<string, unknown>;
      for (const key of issue.keys) delete parent[key];
    }
    result = schema.safeParse(copy);
  }
  return result;
}

/**
 * Kubernetes object metadata. Fields not listed here (managedFields, ownerReferences and
 * the like) are accepted and dropped, as the API server sets them on stored objects.
 */
export const ObjectMeta = z.object({
  name: z.string().min(1),
  namespace: z.string().min(1).optional(),
  labels: z.record(z.string(), z.string()).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
  generation: z.number().int().optional(),
  resourceVersion: z.string().optional(),
  uid: z.string().optional(),
  finalizers: z.array(z.string()).optional(),
  deletionTimestamp: z.string().optional(),
  creationTimestamp: z.string().optional(),
});
export type ObjectMeta = z.infer<typeof ObjectMeta>;

export const Condition = strictObject({
  type: z.string().describe('Type of the condition, such as Ready; the list holds at most one condition of each type.'),
  status: z.enum(['True', 'False', 'Unknown']).describe('Whether the condition holds: "True", "False" or "Unknown".'),
  reason: z
    .string()
    .describe('Cause of the current status as one CamelCase word, such as Active or SecretMissing, for alerts and tools to match on.'),
  message: z
    .string()
    .describe('Human-readable details of the status, such as a Wallet\'s available balance, or for a problem its cause and how to fix it.'),
  lastTransitionTime: z
    .string()
    .describe('RFC 3339 time at which the status last changed; a new reason or message with the same status keeps it.'),
  observedGeneration: z
    .number()
    .int()
    .optional()
    .describe('The metadata.generation of the object that the operator evaluated when it set this condition.'),
});
export type Condition = z.infer<typeof Condition>;

/** Token rates of one model, per million tokens, plus per-request and per-unit fees. */
export const ModelRates = strictObject({
  input: RatePerMillion.describe(
    describeRate('Rate for prompt tokens that are neither read from nor written to the prompt cache; the cache rates default to it.'),
  ),
  cachedInput: RatePerMillion.optional().describe(
    describeRate('Rate for prompt tokens read from the provider\'s prompt cache; defaults to input.'),
  ),
  cacheWrite5m: RatePerMillion.optional().describe(
    describeRate('Rate for prompt tokens written to a prompt cache kept about 5 minutes; defaults to input.'),
  ),
  cacheWrite1h: RatePerMillion.optional().describe(
    describeRate('Rate for prompt tokens written to a prompt cache kept about 1 hour; defaults to cacheWrite5m.'),
  ),
  output: RatePerMillion.describe(describeRate('Rate for generated tokens other than reasoning tokens; reasoning defaults to it.')),
  reasoning: RatePerMillion.optional().describe(describeRate('Rate for reasoning (thinking) tokens; defaults to output.')),
  perRequest: Money.optional().describe(
    describeMoney('Fixed fee per request, added to the token charge of every request that these rates price (not per million).'),
  ),
  units: z
    .record(z.string(), Money.describe(describeMoney('Fee for one unit.')))
    .optional()
    .describe(
      'Fees per unit other than tokens, by unit name, in currency units per unit (not per million), such as web_search: "0.01". ' +
        'The sidecar meters web_search and web_fetch uses of Anthropic Messages and web_search uses of the OpenAI Responses API, ' +
        'and holds the fees of the uses a request allows before forwarding it; it meters no other unit, and a unit without a fee costs nothing.',
    ),
  maxOutputTokens: z
    .number()
    .int()
    .positive()
    .optional()
    .describe(
      'Output limit in tokens for chat requests that set none: the sidecar writes the largest limit the wallet can afford, ' +
        'up to this value, into the request (default 4096). A PricePlan\'s value wins over the route\'s, and a client\'s own limit is kept.',
    ),
  contextTiers: z
    .array(
      strictObject({
        abovePromptTokens: z
          .number()
          .int()
          .positive()
          .describe('Prompt size in tokens (input plus cache reads and writes) above which the tier applies; a prompt of exactly this size does not.'),
        input: RatePerMillion.optional().describe(describeRate('Input rate within the tier; defaults to the base input rate.')),
        cachedInput: RatePerMillion.optional().describe(
          describeRate('Cache read rate within the tier; defaults to the base cachedInput rate.'),
        ),
        cacheWrite5m: RatePerMillion.optional().describe(
          describeRate('5-minute cache write rate within the tier; defaults to the base cacheWrite5m rate.'),
        ),
        cacheWrite1h: RatePerMillion.optional().describe(
          describeRate('1-hour cache write rate within the tier; defaults to the base cacheWrite1h rate.'),
        ),
        output: RatePerMillion.optional().describe(describeRate('Output rate within the tier; defaults to the base output rate.')),
        reasoning: RatePerMillion.optional().describe(
          describeRate('Reasoning rate within the tier; defaults to the base reasoning rate.'),
        ),
      }),
    )
    .optional()
    .describe(
      'Rates for long prompts. The tier with the highest abovePromptTokens that the prompt exceeds prices every token of the request, ' +
        'and the per-request and unit fees stay the base ones; the worst-case hold uses the dearest rate of any tier.',
    ),
});
export type ModelRates = z.infer<typeof ModelRates>;

export const ModelId = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:\/@-]*$/, { message: 'must be a model id such as "gpt-4o-mini"' });

/** Maximum number of models that one price version or provider route can price. */
export const MAX_PRICED_MODELS = 256;

/**
 * Rates by model id. The API server checks every key with a CEL rule, and the rule's
 * estimated cost must fit a budget, so the map is bounded. `maxProperties` carries the
 * bound into the CRD.
 */
export const RatesByModel = z
  .record(ModelId, ModelRates)
  .refine((rates) => Object.keys(rates).length <= MAX_PRICED_MODELS, {
    message: `must price at most ${MAX_PRICED_MODELS} models`,
  })
  .meta({ maxProperties: MAX_PRICED_MODELS });
