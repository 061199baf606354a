import { describe, expect, it } from 'vitest';
import { divCeil, formatAmount, InvalidAmountError, parseAmount } from './money.ts';

describe('parseAmount', () => {
  it('parses decimal currency units exactly', () => {
    expect(parseAmount('12.50')).toBe(12_500_000_000n);
    expect(parseAmount('0.00000012')).toBe(120n);
    expect(parseAmount('0.000000001')).toBe(1n);
    expect(parseAmount('5')).toBe(5_000_000_000n);
  });

  it('parses nano-unit literals', () => {
    expect(parseAmount('120n')).toBe(120n);
  });

  it('rejects more than nine decimals naming the value and count', () => {
    expect(() => parseAmount('0.0000000001', 'grant')).toThrow(InvalidAmountError);
    expect(() => parseAmount('0.0000000001', 'grant')).toThrow(
      'invalid grant "0.0000000001": it has 10 decimals, but at most 9 fit in nano-units; round it to 9 decimals',
    );
  });

  it('quotes a malformed amount', () => {
    expect(() => parseAmount('2.5O', 'rate')).toThrow(
      'invalid rate "2.5O": write a decimal string such as "12.50" or integer nano-units such as "12500000000n"',
    );
  });

  it('rejects floats in exponent form and garbage', () => {
    expect(() => parseAmount('1e-7')).toThrow(/write a decimal string/);
    expect(() => parseAmount('12,50')).toThrow(InvalidAmountError);
    expect(() => parseAmount('')).toThrow(InvalidAmountError);
  });
});

describe('formatAmount', () => {
  it('formats with two decimals at least', () => {
    expect(formatAmount(12_500_000_000n)).toBe('12.50');
    expect(formatAmount(120n)).toBe('0.00000012');
    expect(formatAmount(-40_000_000n)).toBe('-0.04');
    expect(formatAmount(0n)).toBe('0.00');
  });

  it('formats the shortest exact form without a minimum', () => {
    expect(formatAmount(12_500_000_000n, 0)).toBe('12.5');
    expect(formatAmount(141_000n, 0)).toBe('0.000141');
    expect(formatAmount(1n, 0)).toBe('0.000000001');
    expect(formatAmount(-40_000_000n, 0)).toBe('-0.04');
    expect(formatAmount(3_000_000_000n, 0)).toBe('3');
    expect(formatAmount(0n, 0)).toBe('0');
  });
});

describe('divCeil', () => {
  it('rounds up positive quotients only when inexact', () => {
    expect(divCeil(10n, 5n)).toBe(2n);
    expect(divCeil(11n, 5n)).toBe(3n);
    expect(divCeil(0n, 5n)).toBe(0n);
  });
});
