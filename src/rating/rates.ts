import type { ModelRates } from '../api/common.ts';
import { InvalidAmountError, parseAmount } from '../money/money.ts';

const PPM = 1_000_000n;

/** Token rates of one model in nano-units per million tokens, with every default filled in. */
export interface RateCard {
  input: bigint;
  cacheRead: bigint;
  cacheWrite5m: bigint;
  cacheWrite1h: bigint;
  output: bigint;
  reasoning: bigint;
  /** Fixed fee per request, in nano-units (not per million). */
  perRequest: bigint;
  /** Fees per non-token unit, in nano-units per unit. */
  units: Map<string, bigint>;
  maxOutputTokens: number | undefined;
  tiers: { abovePromptTokens: number; card: RateCard }[];
}

/** Compiles decimal rates from a resource into a RateCard. */
export function compileRates(rates: ModelRates, where: string): RateCard {
  const perMillion = (value: string | undefined, field: string, fallback: bigint): bigint =>
    value === undefined ? fallback : parseAmount(value, `${where}.${field}`);

  const input = perMillion(rates.input, 'input', 0n);
  const output = perMillion(rates.output, 'output', 0n);
  const cacheWrite5m = perMillion(rates.cacheWrite5m, 'cacheWrite5m', input);
  const card: RateCard = {
    input,
    cacheRead: perMillion(rates.cachedInput, 'cachedInput', input),
    cacheWrite5m,
    cacheWrite1h: perMillion(rates.cacheWrite1h, 'cacheWrite1h', cacheWrite5m),
    output,
    reasoning: perMillion(rates.reasoning, 'reasoning', output),
    perRequest: perMillion(rates.perRequest, 'perRequest', 0n),
    units: new Map(Object.entries(rates.units ?? {}).map(([unit, fee]) => [unit, parseAmount(fee, `${where}.units.${unit}`)])),
    maxOutputTokens: rates.maxOutputTokens,
    tiers: [],
  };

  card.tiers = (rates.contextTiers ?? [])
    .map((tier, index) => {
      const field = (name: string) => `contextTiers[${index}].${name}`;
      const tierCard: RateCard = {
        ...card,
        input: perMillion(tier.input, field('input'), card.input),
        cacheRead: perMillion(tier.cachedInput, field('cachedInput'), card.cacheRead),
        cacheWrite5m: perMillion(tier.cacheWrite5m, field('cacheWrite5m'), card.cacheWrite5m),
        cacheWrite1h: perMillion(tier.cacheWrite1h, field('cacheWrite1h'), card.cacheWrite1h),
        output: perMillion(tier.output, field('output'), card.output),
        reasoning: perMillion(tier.reasoning, field('reasoning'), card.reasoning),
        tiers: [],
      };
      return { abovePromptTokens: tier.abovePromptTokens, card: tierCard };
    })
    .sort((a, b) => b.abovePromptTokens - a.abovePromptTokens);

  return card;
}

const PERCENT = /^(\d+)(?:\.(\d+))?$/;

/**
 * Parses a decimal percentage ("12.5") into parts per million of the base (125000).
 * Throws InvalidAmountError naming the value for anything else, and for more than 4
 * decimals, which would not be a whole number of parts per million.
 */
export function percentToPpm(percent: string, field = 'percentage'): bigint {
  const match = PERCENT.exec(percent);
  if (!match) {
    throw new InvalidAmountError(`invalid ${field} "${percent}": write a non-negative decimal percentage such as "20" or "12.5"`);
  }
  const fraction = match[2] ?? '';
  if (fraction.length > 4) {
    throw new InvalidAmountError(
      `invalid ${field} "${percent}": it has ${fraction.length} decimals, but at most 4 fit in parts per million; round it to 4 decimals`,
    );
  }
  return BigInt(match[1]!) * 10_000n + BigInt(fraction.padEnd(4, '0'));
}

export { PPM };
