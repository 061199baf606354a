import type { z } from 'zod';
import { describe, expect, it } from 'vitest';
import { Currency, Money, parseIgnoringUnknownFields, Percent, RatePerMillion } from './common.ts';
import { Wallet } from './wallet.ts';

/** Builds a Wallet as a newer Tollgate might store it, with unknown fields at several depths. */
function newerWallet(amount: string): Record<string, unknown> {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'Wallet',
    metadata: { name: 'acme', namespace: 'team-a', uid: '1234' },
    spec: {
      currency: 'USD',
      pricePlanRef: { name: 'standard' },
      grants: [{ id: 'welcome', amount, rollover: true }],
      limits: { maxPerRequest: '0.50', hourly: '1.00' },
      futureSetting: { enabled: true },
    },
  };
}

describe('parseIgnoringUnknownFields', () => {
  it('drops unknown fields at every depth', () => {
    const result = parseIgnoringUnknownFields(Wallet, newerWallet('25.00'));
    expect(result.success).toBe(true);
    expect(result.data?.spec.grants).toEqual([{ id: 'welcome', amount: '25.00' }]);
    expect(result.data?.spec.limits).toEqual({ maxPerRequest: '0.50' });
    expect(Object.keys(result.data?.spec ?? {})).not.toContain('futureSetting');
  });

  it('leaves the input unchanged', () => {
    const input = newerWallet('25.00');
    parseIgnoringUnknownFields(Wallet, input);
    expect((input['spec'] as Record<string, unknown>)['futureSetting']).toEqual({ enabled: true });
  });

  it('still fails on an invalid known field', () => {
    const result = parseIgnoringUnknownFields(Wallet, newerWallet('lots'));
    expect(result.success).toBe(false);
    expect(result.error?.issues.map((issue) => issue.path.join('.'))).toContain('spec.grants.0.amount');
  });

  it('is stricter through the schema itself', () => {
    const result = Wallet.safeParse(newerWallet('25.00'));
    expect(result.success).toBe(false);
    expect(result.error?.issues.every((issue) => issue.code === 'unrecognized_keys')).toBe(true);
  });
});

/** Returns the messages of the issues that `schema` reports for `value`. */
function messagesOf(schema: z.ZodType, value: unknown): string[] {
  const parsed = schema.safeParse(value);
  if (parsed.success) throw new Error(`${JSON.stringify(value)} parsed, but an error was expected`);
  return parsed.error.issues.map((issue) => issue.message);
}

describe('Money errors', () => {
  it('quote a malformed amount', () => {
    expect(messagesOf(Money, '2.5O')).toEqual([
      'must be a non-negative decimal string such as "12.50" (at most 9 decimals) or nano-units such as "120n", not "2.5O"',
    ]);
    expect(messagesOf(Money, '-1')).toEqual([
      'must be a non-negative decimal string such as "12.50" (at most 9 decimals) or nano-units such as "120n", not "-1"',
    ]);
  });

  it('name a decimal comma', () => {
    expect(messagesOf(Money, '2,50')).toEqual([
      'must use a dot as the decimal separator and no thousands separator, such as "2.50", not "2,50"',
    ]);
    expect(messagesOf(Money, '1,000.50')).toEqual([
      'must use a dot as the decimal separator and no thousands separator, such as "2.50", not "1,000.50"',
    ]);
  });

  it('count the decimals given', () => {
    expect(messagesOf(Money, '0.1234567891')).toEqual([
      'must have at most 9 decimals, but "0.1234567891" has 10; round it to 9 decimals, because amounts are whole nano-units',
    ]);
  });

  it('count the characters of a long amount', () => {
    expect(messagesOf(Money, `${'0'.repeat(30)}1.5`)).toEqual([
      'must be at most 32 characters, but "0000000000000000000000000000001.5" has 33',
    ]);
  });

  it('cut a runaway value to 40 characters', () => {
    expect(messagesOf(Money, 'x'.repeat(100))).toEqual([
      `must be at most 32 characters, but "${'x'.repeat(40)}..." has 100`,
      `must be a non-negative decimal string such as "12.50" (at most 9 decimals) or nano-units such as "120n", not "${'x'.repeat(40)}..."`,
    ]);
  });

  it('apply to rates', () => {
    expect(messagesOf(RatePerMillion, '2.5O')).toEqual([
      'must be a non-negative decimal string such as "12.50" (at most 9 decimals) or nano-units such as "120n", not "2.5O"',
    ]);
    expect(RatePerMillion.parse('120n')).toBe('120n');
    expect(RatePerMillion.parse('0.123456789')).toBe('0.123456789');
  });
});

describe('Percent errors', () => {
  it('state the decimal limit and count', () => {
    expect(messagesOf(Percent, '33.33333')).toEqual(['must have at most 4 decimals, but "33.33333" has 5; round it to 4 decimals']);
  });

  it('quote a malformed percentage', () => {
    expect(messagesOf(Percent, '20%')).toEqual([
      'must be a non-negative decimal percentage with at most 4 decimals, such as "20" or "12.5", not "20%"',
    ]);
  });

  it('name an unquoted number', () => {
    expect(messagesOf(Percent, 20)).toEqual([
      'must be a quoted decimal percentage such as "20", not the number 20 (YAML reads an unquoted 20 as a number)',
    ]);
  });

  it('accept 4 decimals', () => {
    expect(Percent.parse('33.3333')).toBe('33.3333');
  });
});

describe('Currency', () => {
  it('quotes a value that is not three uppercase letters', () => {
    expect(messagesOf(Currency, 'usd')).toEqual(['must be three uppercase letters, such as the ISO 4217 code "USD", not "usd"']);
  });

  it('checks the form only, not the ISO 4217 list', () => {
    expect(Currency.parse('USX')).toBe('USX');
  });
});
