import { describe, expect, it } from 'vitest';
import type { ModelRates } from '../api/common.ts';
import type { PricePlan } from '../api/price-plan.ts';
import type { ProviderRoute } from '../api/provider-route.ts';
import { modelsBelowCost, ratesBelowCost } from './margin.ts';
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

describe('ratesBelowCost', () => {
  it('names each token rate below cost', () => {
    // The cached input rate defaults to the input rate on both sides, so it is below cost too.
    const below = ratesBelowCost(price({ input: '1.00', output: '12.00' }, { input: '2.00', output: '8.00' }), 'USD');
    expect(below).toEqual([
      'input 1.00 USD < 2.00 USD per million tokens',
      'cachedInput 1.00 USD < 2.00 USD per million tokens',
      'cacheWrite5m 1.00 USD < 2.00 USD per million tokens',
      'cacheWrite1h 1.00 USD < 2.00 USD per million tokens',
    ]);
  });

  it('compares context tiers from each threshold', () => {
    const charge = { input: '3.00', output: '15.00', contextTiers: [{ abovePromptTokens: 200_000, input: '3.50' }] };
    const cost = { input: '2.50', output: '10.00', contextTiers: [{ abovePromptTokens: 100_000, input: '5.00' }] };
    // A tier's cache rates default to the base card's, so only the input rate differs above the thresholds.
    expect(ratesBelowCost(price(charge, cost), 'USD')).toEqual([
      'input above 100000 prompt tokens 3.00 USD < 5.00 USD per million tokens',
      'input above 200000 prompt tokens 3.50 USD < 5.00 USD per million tokens',
    ]);
  });

  it('names a request fee and a unit fee the plan leaves out', () => {
    const charge = { input: '3.00', output: '15.00', perRequest: '0.001' };
    const cost = { input: '3.00', output: '15.00', perRequest: '0.002', units: { web_search: '0.01' } };
    expect(ratesBelowCost(price(charge, cost), 'USD')).toEqual(['perRequest 0.001 USD < 0.002 USD', 'units.web_search 0.00 USD < 0.01 USD per unit']);
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
    expect(modelsBelowCost(resale, [served], NOW)).toEqual(['openai/gpt-4.1: output 7.50 USD < 8.00 USD per million tokens, reasoning 7.50 USD < 8.00 USD per million tokens']);
  });

  it('finds nothing for a markup plan', () => {
    const served = route(['gpt-4.1'], { 'gpt-4.1': { input: '2.00', output: '8.00' } });
    expect(modelsBelowCost(plan({}, '0'), [served], NOW)).toEqual([]);
  });
});
