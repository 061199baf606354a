/**
 * Finds prices that sell below the provider's cost: explicit plan rates
 * lower than the route's cost for the same kind of token or unit. Every
 * call that uses such a rate loses money. A markup over cost never does,
 * because a markup is not negative.
 */

import type { PricePlan } from '../api/price-plan.ts';
import type { ProviderRoute } from '../api/provider-route.ts';
import { formatAmount } from '../money/money.ts';
import { Pricer, UnknownModelError } from './plan.ts';
import { tierFor, type Price } from './rating.ts';

/** The per-token rates of a rate card, by the names that the PricePlan and ProviderRoute resources use. */
const TOKEN_RATES = [
  ['input', 'input'],
  ['cacheRead', 'cachedInput'],
  ['cacheWrite5m', 'cacheWrite5m'],
  ['cacheWrite1h', 'cacheWrite1h'],
  ['output', 'output'],
  ['reasoning', 'reasoning'],
] as const;

/**
 * Describes each rate at which `price` charges less than its provider cost,
 * such as "output 1.50 < 2.00 per million tokens", in `currency`. Context
 * tiers are compared from each threshold of either card on. Empty for a
 * markup price, and for an explicit price without a provider cost, whose
 * cost side is the charge itself.
 */
export function ratesBelowCost(price: Price, currency: string): string[] {
  const charge = price.charge;
  if (charge === undefined || charge === price.cost) return [];
  const below: string[] = [];

  const thresholds = new Set([0, ...[...charge.tiers, ...price.cost.tiers].map((tier) => tier.abovePromptTokens + 1)]);
  for (const prompt of [...thresholds].sort((a, b) => a - b)) {
    const charged = tierFor(charge, prompt);
    const cost = tierFor(price.cost, prompt);
    const where = prompt === 0 ? '' : ` above ${prompt - 1} prompt tokens`;
    for (const [field, name] of TOKEN_RATES) {
      if (charged[field] < cost[field]) below.push(`${name}${where} ${money(charged[field], currency)} < ${money(cost[field], currency)} per million tokens`);
    }
  }

  if (charge.perRequest < price.cost.perRequest) {
    below.push(`perRequest ${money(charge.perRequest, currency)} < ${money(price.cost.perRequest, currency)}`);
  }
  for (const [unit, fee] of price.cost.units) {
    // A plan that sets no fee for the unit charges nothing for it.
    const charged = charge.units.get(unit) ?? 0n;
    if (charged < fee) below.push(`units.${unit} ${money(charged, currency)} < ${money(fee, currency)} per unit`);
  }
  return below;
}

/**
 * Lists, for each model that a route of the plan's namespace serves, the
 * rates of the plan's version in effect at `nowMs` that are below the
 * route's cost, as "route/model: output 1.50 < 2.00 per million tokens".
 * Models the plan cannot price are left out; the caller reports those.
 */
export function modelsBelowCost(plan: PricePlan, routes: readonly ProviderRoute[], nowMs: number): string[] {
  const found: string[] = [];
  for (const route of routes) {
    const pricer = new Pricer(plan, route);
    for (const model of route.spec.models) {
      let price: Price;
      try {
        price = pricer.priceOf(model, nowMs);
      } catch (error) {
        if (error instanceof UnknownModelError) continue;
        throw error;
      }
      const below = ratesBelowCost(price, plan.spec.currency);
      if (below.length > 0) found.push(`${route.metadata.name}/${model}: ${below.join(', ')}`);
    }
  }
  return found;
}

function money(nano: bigint, currency: string): string {
  return `${formatAmount(nano)} ${currency}`;
}
