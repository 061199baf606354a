import { describe, expect, it } from 'vitest';
import { compileRates } from './rates.ts';
import { rate, type Price } from './rating.ts';
import { worstCaseUnitCharge } from './units.ts';
import { emptyUsage } from './usage.ts';

const cost = compileRates({ input: '1', output: '2', units: { web_search: '0.01' } }, 'test');

describe('worstCaseUnitCharge', () => {
  it('returns an explicit fee as it is', () => {
    const charge = compileRates({ input: '1', output: '2', units: { web_search: '0.025' } }, 'test');
    const price: Price = { model: 'm', version: 'v1', cost, charge, markupPpm: 0n };
    expect(worstCaseUnitCharge(price, 'web_search')).toBe(25_000_000n);
  });

  it('applies the markup to the provider fee', () => {
    const price: Price = { model: 'm', version: 'v1', cost, charge: undefined, markupPpm: 200_000n };
    expect(worstCaseUnitCharge(price, 'web_search')).toBe(12_000_000n);
  });

  it('rounds a marked-up fee up', () => {
    const oneNano = compileRates({ input: '0', output: '0', units: { web_search: '1n' } }, 'test');
    const price: Price = { model: 'm', version: 'v1', cost: oneNano, charge: undefined, markupPpm: 200_000n };
    expect(worstCaseUnitCharge(price, 'web_search')).toBe(2n);
    // Rated once per request, 3 uses at 1.2 nano each are 3.6, so 4 nano; the bound holds 6.
    expect(rate(price, { ...emptyUsage(), units: { web_search: 3 } }).charged).toBe(4n);
  });

  it('returns 0 for a unit without a fee', () => {
    const price: Price = { model: 'm', version: 'v1', cost, charge: undefined, markupPpm: 200_000n };
    expect(worstCaseUnitCharge(price, 'web_fetch')).toBe(0n);
  });

  it('charges from the explicit card, not the provider cost', () => {
    const charge = compileRates({ input: '1', output: '2' }, 'test');
    const price: Price = { model: 'm', version: 'v1', cost, charge, markupPpm: 0n };
    expect(worstCaseUnitCharge(price, 'web_search')).toBe(0n);
    expect(rate(price, { ...emptyUsage(), units: { web_search: 1 } }).charged).toBe(0n);
  });
});
