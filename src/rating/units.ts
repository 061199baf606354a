import { divCeil } from '../money/money.ts';
import { PPM } from './rates.ts';
import type { Price } from './rating.ts';

/**
 * Returns the largest amount in nano-units that one use of a non-token unit
 * (such as `web_search`) can add to a request's charge. That is the unit's
 * fee on the card that `rate` charges from, at the dearest context tier, with
 * the markup when the price has no explicit rates, rounded up. It is 0n when
 * that card sets no fee for the unit. Because `rate` rounds a request's whole
 * charge once, `count` times this amount is never below what `count` uses add.
 */
export function worstCaseUnitCharge(price: Price, unit: string): bigint {
  const card = price.charge ?? price.cost;
  let fee = 0n;
  for (const candidate of [card, ...card.tiers.map((tier) => tier.card)]) {
    const tierFee = candidate.units.get(unit) ?? 0n;
    if (tierFee > fee) fee = tierFee;
  }
  if (price.charge) return fee;
  return divCeil(fee * (PPM + price.markupPpm), PPM);
}
