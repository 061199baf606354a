/**
 * Finds prices with a rate below the provider's cost: an explicit plan rate
 * lower than the route's cost for the same kind of token or unit. A call
 * made mostly of such tokens is charged less than it costs. A markup over
 * cost never is, because a markup is not negative.
 */

import type { PricePlan } from '../api/price-plan.ts';
import type { ProviderRoute } from '../api/provider-route.ts';
import { formatAmount } from '../money/money.ts';
import { Pricer, UnknownModelError } from './plan.ts';
import type { RateCard } from './rates.ts';
import { tierFor, type Price } from './rating.ts';

type TokenRate = 'input' | 'cacheRead' | 'cacheWrite5m' | 'cacheWrite1h' | 'output' | 'reasoning';

/**
 * The per-token rates of a rate card: the field, its name in the PricePlan
 * and ProviderRoute resources, and the rate it defaults to when not set.
 */
const TOKEN_RATES: ReadonlyArray<{ field: TokenRate; name: string; defaultsTo?: TokenRate }> = [
  { field: 'input', name: 'input' },
  { field: 'cacheRead', name: 'cachedInput', defaultsTo: 'input' },
  { field: 'cacheWrite5m', name: 'cacheWrite5m', defaultsTo: 'input' },
  { field: 'cacheWrite1h', name: 'cacheWrite1h', defaultsTo: 'cacheWrite5m' },
  { field: 'output', name: 'output' },
  { field: 'reasoning', name: 'reasoning', defaultsTo: 'output' },
];

/** One rate of a price below its provider cost. */
export interface RateBelowCost {
  /** The rate as the resources name it, such as "output" or "input above 200000 prompt tokens". */
  rate: string;
  /** The plan's charge and the route's cost, as text with the currency and the unit. */
  detail: string;
}

/** A model of a route whose price has rates below cost. */
export interface ModelBelowCost {
  /** "route/model". */
  model: string;
  rates: RateBelowCost[];
}

/**
 * Lists each rate at which `price` charges less than its provider cost, in
 * `currency`. Context tiers are compared from each threshold of either card
 * on. A rate that only repeats another below-cost rate it defaults to on
 * both sides (`reasoning` from `output`, the cache rates from `input`) is
 * left out. Empty for a markup price, and for an explicit price without a
 * provider cost, whose cost side is the charge itself.
 */
export function ratesBelowCost(price: Price, currency: string): RateBelowCost[] {
  const charge = price.charge;
  if (charge === undefined || charge === price.cost) return [];
  const below: RateBelowCost[] = [];

  const thresholds = new Set([0, ...[...charge.tiers, ...price.cost.tiers].map((tier) => tier.abovePromptTokens + 1)]);
  for (const prompt of [...thresholds].sort((a, b) => a - b)) {
    const charged = tierFor(charge, prompt);
    const cost = tierFor(price.cost, prompt);
    const where = prompt === 0 ? '' : ` above ${prompt - 1} prompt tokens`;
    for (const { field, name, defaultsTo } of TOKEN_RATES) {
      if (charged[field] >= cost[field]) continue;
      if (defaultsTo !== undefined && repeats(charged, cost, field, defaultsTo)) continue;
      below.push({ rate: `${name}${where}`, detail: `${money(charged[field], currency)} < ${money(cost[field], currency)} per million tokens` });
    }
  }

  if (charge.perRequest < price.cost.perRequest) {
    below.push({ rate: 'perRequest', detail: `${money(charge.perRequest, currency)} < ${money(price.cost.perRequest, currency)}` });
  }
  for (const [unit, fee] of price.cost.units) {
    // A plan that sets no fee for the unit charges nothing for it.
    const charged = charge.units.get(unit) ?? 0n;
    if (charged < fee) below.push({ rate: `units.${unit}`, detail: `${money(charged, currency)} < ${money(fee, currency)} per unit` });
  }
  return below;
}

/**
 * Lists the models that requests through the routes can be priced for by
 * the plan's version in effect at `nowMs`, whose price has rates below the
 * route's cost. Those are the models a route serves, the dated snapshots
 * that the route's costs or the plan's rates list for them, and, when the
 * plan prices unknown models at default rates, every model the route's
 * costs list. Models the plan cannot price are left out; the caller reports
 * those.
 */
export function modelsBelowCost(plan: PricePlan, routes: readonly ProviderRoute[], nowMs: number): ModelBelowCost[] {
  const found: ModelBelowCost[] = [];
  const planModels = plan.spec.versions.flatMap((version) => Object.keys(version.models));
  for (const route of routes) {
    const pricer = new Pricer(plan, route);
    const candidates = new Set([...route.spec.models, ...Object.keys(route.spec.costs), ...planModels]);
    for (const model of candidates) {
      let price: Price;
      try {
        price = pricer.priceOf(model, nowMs);
      } catch (error) {
        if (error instanceof UnknownModelError) continue;
        throw error;
      }
      const rates = ratesBelowCost(price, plan.spec.currency);
      if (rates.length > 0) found.push({ model: `${route.metadata.name}/${model}`, rates });
    }
  }
  return found;
}

/** Names the models and their rates below cost, without amounts: "openai/gpt-4.1 (output), openai/o3 (input, units.web_search)". */
export function describeBelowCost(models: readonly ModelBelowCost[]): string {
  return models.map((model) => `${model.model} (${model.rates.map((rate) => rate.rate).join(', ')})`).join(', ');
}

/** Returns whether a rate equals the rate it defaults to on both sides, so that it adds nothing to that rate's entry. */
function repeats(charged: RateCard, cost: RateCard, field: TokenRate, defaultsTo: TokenRate): boolean {
  return charged[field] === charged[defaultsTo] && cost[field] === cost[defaultsTo];
}

function money(nano: bigint, currency: string): string {
  return `${formatAmount(nano)} ${currency}`;
}
