import { divCeil } from '../money/money.ts';
import type { RateCard } from './rates.ts';
import { PPM } from './rates.ts';
import type { Usage } from './usage.ts';

const MILLION = 1_000_000n;

/**
 * The price of one model for a wallet at one moment: the provider's cost
 * card, and either explicit customer rates or a markup over provider cost.
 */
export interface Price {
  model: string;
  /** The plan version that priced it. */
  version: string;
  cost: RateCard;
  /** Explicit customer rates, or undefined when the charge is a markup over cost. */
  charge: RateCard | undefined;
  /** Markup in parts per million over provider cost (200000 = 20 %); used when `charge` is undefined. */
  markupPpm: bigint;
}

export interface Rated {
  /** Amount the wallet pays, rounded up once to a whole nano-unit. */
  charged: bigint;
  /** Amount the platform pays upstream, rounded up once. */
  providerCost: bigint;
}

function promptTokens(usage: Usage): number {
  return usage.input + usage.cacheRead + usage.cacheWrite5m + usage.cacheWrite1h;
}

/** Picks the context tier that applies to a prompt of this many tokens. */
export function tierFor(card: RateCard, prompt: number): RateCard {
  for (const tier of card.tiers) {
    if (prompt > tier.abovePromptTokens) return tier.card;
  }
  return card;
}

/**
 * Returns the exact cost of the usage in nano-units times one million
 * (rates are per million tokens), before any rounding.
 */
export function exactCost(card: RateCard, usage: Usage): bigint {
  const rates = tierFor(card, promptTokens(usage));
  let total =
    BigInt(usage.input) * rates.input +
    BigInt(usage.cacheRead) * rates.cacheRead +
    BigInt(usage.cacheWrite5m) * rates.cacheWrite5m +
    BigInt(usage.cacheWrite1h) * rates.cacheWrite1h +
    BigInt(usage.output) * rates.output +
    BigInt(usage.reasoning) * rates.reasoning +
    rates.perRequest * MILLION;

  for (const [unit, count] of Object.entries(usage.units ?? {})) {
    const fee = rates.units.get(unit);
    if (fee !== undefined) total += BigInt(count) * fee * MILLION;
  }
  return total;
}

/** Rates one request: both sides, each rounded up once to a whole nano-unit. */
export function rate(price: Price, usage: Usage): Rated {
  const cost = exactCost(price.cost, usage);
  const providerCost = divCeil(cost, MILLION);

  const charged = price.charge
    ? divCeil(exactCost(price.charge, usage), MILLION)
    : divCeil(cost * (PPM + price.markupPpm), MILLION * PPM);

  return { charged, providerCost };
}

/**
 * The largest amount per token of each kind the wallet could be charged,
 * in nano-units per token rounded up: the basis of a worst-case hold.
 */
export interface WorstCaseRates {
  /** Nano-units per prompt token, at the dearest prompt rate of any tier. */
  perPromptToken: bigint;
  /** Nano-units per output token, at the dearest output or reasoning rate of any tier. */
  perOutputToken: bigint;
  /** Fixed fee per request. */
  perRequest: bigint;
}

function maxOf(values: bigint[]): bigint {
  return values.reduce((max, value) => (value > max ? value : max), 0n);
}

function cardsOf(card: RateCard): RateCard[] {
  return [card, ...card.tiers.map((tier) => tier.card)];
}

/** Computes worst-case per-token charges, applying the markup when the price has no explicit rates. */
export function worstCaseRates(price: Price): WorstCaseRates {
  const cards = cardsOf(price.charge ?? price.cost);
  const scale = price.charge ? PPM : PPM + price.markupPpm;
  const perToken = (perMillion: bigint) => divCeil(perMillion * scale, MILLION * PPM);

  return {
    perPromptToken: perToken(maxOf(cards.flatMap((c) => [c.input, c.cacheRead, c.cacheWrite5m, c.cacheWrite1h]))),
    perOutputToken: perToken(maxOf(cards.flatMap((c) => [c.output, c.reasoning]))),
    perRequest: divCeil(maxOf(cards.map((c) => c.perRequest)) * scale, PPM),
  };
}
