import { describe, expect, it } from 'vitest';
import type { ModelRates } from '../api/common.ts';
import type { PricePlan } from '../api/price-plan.ts';
import type { ProviderRoute } from '../api/provider-route.ts';
import { describeBelowCost, modelsBelowCost, ratesBelowCost, type RateBelowCost } from './margin.ts';
import { compileRates } from './rates.ts';
import type { Price } from './rating.ts';

const NOW = Date.parse('2026-06-01T00:00:00Z');

function price(charge: ModelRates | undefined, cost: ModelRates, markupPpm = 0n): Price {
  return { model: 'm', version: 'v1', cost: compileRates(cost, 'cost'), charge: charge === undefined ? undefined : compileRates(charge, 'charge'), markupPpm };
}

function plan(models: PricePlan['spec']['versions'][number]['models'], markupPercent?: string): PricePlan {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'PricePlan',
    metadata: { name: 'resale', namespace: 'team' },
    spec: {
      currency: 'USD',
      versions: [{ effectiveFrom: '2026-01-01T00:00:00Z', models, ...(markupPercent === undefined ? {} : { markupPercent }) }],
      unknownModels: { policy: 'reject' },
    },
  };
}

function route(models: string[], costs: ProviderRoute['spec']['costs']): ProviderRoute {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'ProviderRoute',
    metadata: { name: 'openai', namespace: 'team' },
    spec: { protocol: 'openai', baseURL: 'https://api.openai.com', models, costs, timeouts: { connectSeconds: 10, requestSeconds: 600 } },
  };
}

/** Joins each rate with its detail, as "output 7.00 USD < 8.00 USD per million tokens". */
function texts(rates: RateBelowCost[]): string[] {
  return rates.map((rate) => `${rate.rate} ${rate.detail}`);
}

describe('ratesBelowCost', () => {
  it('names each token rate below cost once', () => {
    // The cache rates default to the input rate on both sides, so they repeat its entry and are left out.
    const below = ratesBelowCost(price({ input: '1.00', output: '12.00' }, { input: '2.00', output: '8.00' }), 'USD');
    expect(texts(below)).toEqual(['input 1.00 USD < 2.00 USD per million tokens']);
  });

  it('names a rate set apart from its default', () => {
    const charge = { input: '3.00', cachedInput: '0.20', output: '15.00', reasoning: '12.00' };
    const cost = { input: '3.00', cachedInput: '0.30', output: '15.00', reasoning: '15.00' };
    expect(texts(ratesBelowCost(price(charge, cost), 'USD'))).toEqual([
      'cachedInput 0.20 USD < 0.30 USD per million tokens',
      'reasoning 12.00 USD < 15.00 USD per million tokens',
    ]);
  });

  it('compares context tiers from each threshold', () => {
    const charge = { input: '3.00', output: '15.00', contextTiers: [{ abovePromptTokens: 200_000, input: '3.50' }] };
    const cost = { input: '2.50', output: '10.00', contextTiers: [{ abovePromptTokens: 100_000, input: '5.00' }] };
    // A tier's cache rates default to the base card's, so only the input rate differs above the thresholds.
    expect(texts(ratesBelowCost(price(charge, cost), 'USD'))).toEqual([
      'input above 100000 prompt tokens 3.00 USD < 5.00 USD per million tokens',
      'input above 200000 prompt tokens 3.50 USD < 5.00 USD per million tokens',
    ]);
  });

  it('names a request fee and a unit fee the plan leaves out', () => {
    const charge = { input: '3.00', output: '15.00', perRequest: '0.001' };
    const cost = { input: '3.00', output: '15.00', perRequest: '0.002', units: { web_search: '0.01' } };
    expect(texts(ratesBelowCost(price(charge, cost), 'USD'))).toEqual(['perRequest 0.001 USD < 0.002 USD', 'units.web_search 0.00 USD < 0.01 USD per unit']);
  });

  it('finds nothing at or above cost', () => {
    expect(ratesBelowCost(price({ input: '2.00', output: '8.00' }, { input: '2.00', output: '8.00' }), 'USD')).toEqual([]);
    expect(ratesBelowCost(price(undefined, { input: '2.00', output: '8.00' }, 0n), 'USD')).toEqual([]);
  });
});

describe('modelsBelowCost', () => {
  it('lists the served models priced below cost', () => {
    const served = route(['gpt-4.1', 'gpt-4o-mini', 'o4-mini'], { 'gpt-4.1': { input: '2.00', output: '8.00' }, 'gpt-4o-mini': { input: '0.15', output: '0.60' } });
    const resale = plan({ 'gpt-4.1': { input: '2.00', output: '7.50' }, 'gpt-4o-mini': { input: '0.20', output: '0.80' } });
    // o4-mini has no price in the plan: the caller reports it as unpriced, not here.
    const below = modelsBelowCost(resale, [served], NOW);
    expect(below).toEqual([{ model: 'openai/gpt-4.1', rates: [{ rate: 'output', detail: '7.50 USD < 8.00 USD per million tokens' }] }]);
    expect(describeBelowCost(below)).toBe('openai/gpt-4.1 (output)');
  });

  it('checks dated snapshots that the plan or the route lists', () => {
    const served = route(['gpt-4.1', 'gpt-4o'], {
      'gpt-4.1': { input: '2.00', output: '8.00' },
      'gpt-4o': { input: '2.50', output: '10.00' },
      'gpt-4o-2024-05-13': { input: '5.00', output: '15.00' },
    });
    const resale = plan({ 'gpt-4.1': { input: '2.00', output: '9.00' }, 'gpt-4.1-2025-04-14': { input: '2.00', output: '7.00' }, 'gpt-4o': { input: '3.00', output: '12.00' } });
    expect(describeBelowCost(modelsBelowCost(resale, [served], NOW))).toBe('openai/gpt-4o-2024-05-13 (input, output), openai/gpt-4.1-2025-04-14 (output)');
  });

  it('checks default rates against every costed model', () => {
    const served = route(['gpt-4.1'], { 'gpt-4.1': { input: '2.00', output: '8.00' }, 'gpt-5': { input: '1.25', output: '10.00' } });
    const resale = plan({ 'gpt-4.1': { input: '2.00', output: '9.00' } });
    resale.spec.unknownModels = { policy: 'default', defaultRates: { input: '2.00', output: '4.00' } };
    expect(describeBelowCost(modelsBelowCost(resale, [served], NOW))).toBe('openai/gpt-5 (output)');
  });

  it('finds nothing for a markup plan', () => {
    const served = route(['gpt-4.1'], { 'gpt-4.1': { input: '2.00', output: '8.00' } });
    expect(modelsBelowCost(plan({}, '0'), [served], NOW)).toEqual([]);
  });
});
