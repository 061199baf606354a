import { describe, expect, it } from 'vitest';
import { parseAmount } from '../money/money.ts';
import type { PricePlan } from '../api/price-plan.ts';
import type { ProviderRoute } from '../api/provider-route.ts';
import type { ModelRates } from '../api/common.ts';
import { InvalidAmountError } from '../money/money.ts';
import { compileRates, percentToPpm } from './rates.ts';
import { rate, worstCaseRates, type Price } from './rating.ts';
import { Pricer, UnknownModelError } from './plan.ts';
import { emptyUsage, type Usage } from './usage.ts';

function usage(counts: Partial<Usage>): Usage {
  return { ...emptyUsage(), ...counts };
}

function explicitPrice(rates: ModelRates): Price {
  const card = compileRates(rates, 'test');
  return { model: 'm', version: 'v1', cost: card, charge: card, markupPpm: 0n };
}

function plan(versions: PricePlan['spec']['versions'], unknownModels?: PricePlan['spec']['unknownModels']): PricePlan {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'PricePlan',
    metadata: { name: 'standard', namespace: 'team-a' },
    spec: { currency: 'USD', versions, unknownModels: unknownModels ?? { policy: 'reject' } },
  };
}

function route(models: string[], costs: ProviderRoute['spec']['costs'] = {}): ProviderRoute {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'ProviderRoute',
    metadata: { name: 'openai', namespace: 'team-a' },
    spec: {
      protocol: 'openai',
      baseURL: 'https://api.openai.com',
      models,
      costs,
      timeouts: { connectSeconds: 10, requestSeconds: 600 },
    },
  };
}

describe('rate', () => {
  it('charges Anthropic cache writes once (C1)', () => {
    const price = explicitPrice({ input: '3.00', cacheWrite5m: '3.75', cachedInput: '0.30', output: '15.00' });
    const rated = rate(price, usage({ input: 3, cacheWrite5m: 12304, cacheRead: 0, output: 550 }));
    expect(rated.providerCost).toBe(parseAmount('0.054399'));
    expect(rated.charged).toBe(54_399_000n);
  });

  it('prices OpenAI reasoning tokens once (C5)', () => {
    const price = explicitPrice({ input: '30', output: '180' });
    // 1944 completion tokens of which 1360 are reasoning: the adapter moves those out of output.
    const rated = rate(price, usage({ input: 14746, output: 584, reasoning: 1360 }));
    expect(rated.charged).toBe(parseAmount('0.79230'));
  });

  it('bills Gemini thinking tokens at the output rate (C6)', () => {
    const price = explicitPrice({ input: '1.25', output: '10' });
    const rated = rate(price, usage({ input: 55021, output: 923, reasoning: 785 }));
    expect(rated.charged).toBe(parseAmount('0.08585625'));
  });

  it('meters embeddings to the nano (C13)', () => {
    const price = explicitPrice({ input: '0.02', output: '0' });
    expect(rate(price, usage({ input: 6 })).charged).toBe(120n);
  });

  it('rounds a sub-nano cost up to one nano, never to zero', () => {
    const price = explicitPrice({ input: '0.0001', output: '0' });
    expect(rate(price, usage({ input: 1 })).charged).toBe(1n);
  });

  it('rounds once per request, not per token kind', () => {
    // 1 token at 0.0005/M is 0.5 nano and 1 at 0.0005/M is 0.5 nano: exactly 1 nano in all, not 2.
    const price = explicitPrice({ input: '0.0005', output: '0.0005' });
    expect(rate(price, usage({ input: 1, output: 1 })).charged).toBe(1n);
  });

  it('rounds the provider cost up per request, as the charge', () => {
    // 3 tokens at 0.0001/M cost 0.3 nano-units, and 0.36 with the 20 % markup: each side rounds up to 1.
    const cost = compileRates({ input: '0.0001', output: '0' }, 'test');
    const price: Price = { model: 'm', version: 'v1', cost, charge: undefined, markupPpm: 200_000n };
    const rated = rate(price, usage({ input: 3 }));
    expect(rated.providerCost).toBe(1n);
    expect(rated.charged).toBe(1n);
  });

  it('applies a markup over provider cost with one rounding', () => {
    const cost = compileRates({ input: '2.50', output: '10.00' }, 'test');
    const price: Price = { model: 'm', version: 'v1', cost, charge: undefined, markupPpm: 200_000n };
    const rated = rate(price, usage({ input: 1000, output: 333 }));
    // cost: (1000 x 2.50 + 333 x 10) per million = 0.00583 USD; charge: 0.00583 x 1.2 = 0.006996 USD.
    expect(rated.providerCost).toBe(5_830_000n);
    expect(rated.charged).toBe(6_996_000n);
    expect(rated.charged - rated.providerCost).toBe(1_166_000n);
  });

  it('adds per-request and per-unit fees', () => {
    const price = explicitPrice({ input: '1', output: '1', perRequest: '0.001', units: { web_search: '0.01' } });
    const rated = rate(price, usage({ input: 1_000_000, units: { web_search: 2 } }));
    expect(rated.charged).toBe(parseAmount('1.021'));
  });

  it('switches every token to the tier rate above the threshold', () => {
    const price = explicitPrice({
      input: '1.25',
      output: '10',
      contextTiers: [{ abovePromptTokens: 200_000, input: '2.50', output: '15' }],
    });
    expect(rate(price, usage({ input: 200_000, output: 100 })).charged).toBe(251_000_000n);
    expect(rate(price, usage({ input: 200_001, output: 100 })).charged).toBe(501_502_500n);
  });

  it('gives worst-case rates from the dearest tier and kind', () => {
    const price = explicitPrice({
      input: '3',
      cacheWrite1h: '6',
      output: '15',
      contextTiers: [{ abovePromptTokens: 200_000, output: '22.5' }],
    });
    const worst = worstCaseRates(price);
    expect(worst.perPromptToken).toBe(6000n);
    expect(worst.perOutputToken).toBe(22_500n);
  });
});

describe('Pricer', () => {
  const at = Date.parse('2026-06-01T00:00:00Z');

  it('prices a dated snapshot at its own listed rates before its alias (C12)', () => {
    const pricer = new Pricer(
      plan([
        {
          effectiveFrom: '2026-01-01T00:00:00Z',
          models: {
            'gpt-4o': { input: '2.50', output: '10.00' },
            'gpt-4o-2024-05-13': { input: '5.00', output: '15.00' },
          },
        },
      ]),
      route(['gpt-4o', 'gpt-4o-2024-05-13']),
    );
    const snapshot = pricer.priceOf('gpt-4o-2024-05-13', at);
    expect(rate(snapshot, usage({ input: 1_000_000, output: 1_000_000 })).charged).toBe(parseAmount('20'));
    const alias = pricer.priceOf('gpt-4o-2024-08-06', at);
    expect(rate(alias, usage({ input: 1_000_000, output: 1_000_000 })).charged).toBe(parseAmount('12.50'));
  });

  it('rejects names that only look like a listed model (C12)', () => {
    const pricer = new Pricer(
      plan([{ effectiveFrom: '2026-01-01T00:00:00Z', models: { 'gpt-5': { input: '1', output: '1' }, o3: { input: '1', output: '1' } } }]),
      route(['gpt-5', 'o3']),
    );
    expect(() => pricer.priceOf('gpt-5.6-sol', at)).toThrow(UnknownModelError);
    expect(() => pricer.priceOf('o3-pro-2025-06-10', at)).toThrow(UnknownModelError);
    expect(() => pricer.priceOf('gpt-5-2025-02-30', at)).toThrow(UnknownModelError);
    expect(pricer.priceOf('gpt-5-2025-08-07', at).model).toBe('gpt-5');
  });

  it('rejects an unlisted model naming model and plan (C11)', () => {
    const pricer = new Pricer(
      plan([{ effectiveFrom: '2026-01-01T00:00:00Z', models: { 'gpt-5': { input: '1', output: '1' } } }]),
      route(['gpt-5', 'llama-local']),
    );
    expect(() => pricer.priceOf('llama-local', at)).toThrow(/model "llama-local" has no price in plan "standard"/);
  });

  it('charges default rates only when the plan says so (C11)', () => {
    const pricer = new Pricer(
      plan([{ effectiveFrom: '2026-01-01T00:00:00Z', models: {} }], {
        policy: 'default',
        defaultRates: { input: '1', output: '2' },
      }),
      route(['llama-local']),
    );
    const price = pricer.priceOf('llama-local', at);
    expect(rate(price, usage({ input: 1_000_000, output: 1_000_000 })).charged).toBe(parseAmount('3'));
  });

  it('picks the version in effect at the request time', () => {
    const pricer = new Pricer(
      plan([
        { name: 'v1', effectiveFrom: '2026-01-01T00:00:00Z', models: { m: { input: '1', output: '1' } } },
        { name: 'v2', effectiveFrom: '2026-07-01T00:00:00Z', models: { m: { input: '2', output: '2' } } },
      ]),
      route(['m']),
    );
    expect(pricer.priceOf('m', at).version).toBe('v1');
    expect(pricer.priceOf('m', Date.parse('2026-07-01T00:00:00Z')).version).toBe('v2');
    expect(() => pricer.priceOf('m', Date.parse('2025-12-31T23:59:59Z'))).toThrow(/no version in effect/);
  });

  it('orders versions less than a millisecond apart by their exact instant', () => {
    const pricer = new Pricer(
      plan([
        { name: 'first', effectiveFrom: '2026-01-01T00:00:00.0001Z', models: { m: { input: '1', output: '1' } } },
        { name: 'second', effectiveFrom: '2026-01-01T00:00:00.0002Z', models: { m: { input: '2', output: '2' } } },
      ]),
      route(['m']),
    );
    expect(pricer.priceOf('m', Date.parse('2026-01-01T00:00:01Z')).version).toBe('second');
  });

  it('names an unvalidated markup with five decimals', () => {
    const unchecked = plan([{ effectiveFrom: '2026-01-01T00:00:00Z', markupPercent: '33.33333', models: {} }]);
    expect(() => new Pricer(unchecked, route(['m']))).toThrow(
      'invalid PricePlan team-a/standard versions[0].markupPercent "33.33333": it has 5 decimals, but at most 4 fit in parts per million; round it to 4 decimals',
    );
  });

  it('marks up the route cost for models without explicit rates', () => {
    const pricer = new Pricer(
      plan([{ effectiveFrom: '2026-01-01T00:00:00Z', markupPercent: '25', models: {} }]),
      route(['gpt-4o-mini'], { 'gpt-4o-mini': { input: '0.15', output: '0.60' } }),
    );
    const rated = rate(pricer.priceOf('gpt-4o-mini', at), usage({ input: 1_000_000, output: 1_000_000 }));
    expect(rated.providerCost).toBe(parseAmount('0.75'));
    expect(rated.charged).toBe(parseAmount('0.9375'));
  });
});

describe('percentToPpm', () => {
  it('converts up to four decimals exactly', () => {
    expect(percentToPpm('20')).toBe(200_000n);
    expect(percentToPpm('12.5')).toBe(125_000n);
    expect(percentToPpm('33.3333')).toBe(333_333n);
  });

  it('rejects a fifth decimal instead of truncating it', () => {
    expect(() => percentToPpm('33.33333', 'markupPercent')).toThrow(InvalidAmountError);
    expect(() => percentToPpm('33.33333', 'markupPercent')).toThrow(
      'invalid markupPercent "33.33333": it has 5 decimals, but at most 4 fit in parts per million; round it to 4 decimals',
    );
  });

  it('quotes a malformed percentage', () => {
    expect(() => percentToPpm('20%')).toThrow(
      'invalid percentage "20%": write a non-negative decimal percentage such as "20" or "12.5"',
    );
  });
});
