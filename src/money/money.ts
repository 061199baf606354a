/**
 * Integer money. Every amount is a bigint count of nano-units of its currency
 * (1 USD = 10^9 nano-USD). Nothing on a money path uses floating point.
 */

export const NANO_PER_UNIT = 1_000_000_000n;
export const NANO_DIGITS = 9;

/**
 * The largest amount the Redis ledger stores exactly: Lua numbers are IEEE
 * doubles, so integers above 2^53 lose precision. Bounds one wallet at about
 * 9 million units of currency.
 */
export const MAX_LEDGER_AMOUNT = 2n ** 53n;

export class InvalidAmountError extends Error {
  override readonly name = 'InvalidAmountError';
}

const DECIMAL = /^(-)?(\d+)(?:\.(\d+))?$/;
const NANO_LITERAL = /^(-)?(\d+)n$/;

/**
 * Parses a money amount written as a decimal string of currency units
 * ("12.50", "0.00000012") or as integer nano-units with an `n` suffix
 * ("120n"). More than nine decimal places cannot be represented and is rejected.
 */
export function parseAmount(text: string, what = 'amount'): bigint {
  const value = text.trim();

  const nano = NANO_LITERAL.exec(value);
  if (nano) {
    const magnitude = BigInt(nano[2]!);
    return nano[1] ? -magnitude : magnitude;
  }

  const decimal = DECIMAL.exec(value);
  if (!decimal) {
    throw new InvalidAmountError(
      `invalid ${what} "${text}": write a decimal string such as "12.50" or integer nano-units such as "12500000000n"`,
    );
  }
  const fraction = decimal[3] ?? '';
  if (fraction.length > NANO_DIGITS) {
    throw new InvalidAmountError(
      `invalid ${what} "${text}": it has ${fraction.length} decimals, but at most ${NANO_DIGITS} fit in nano-units; round it to ${NANO_DIGITS} decimals`,
    );
  }
  const magnitude = BigInt(decimal[2]!) * NANO_PER_UNIT + BigInt(fraction.padEnd(NANO_DIGITS, '0'));
  return decimal[1] ? -magnitude : magnitude;
}

/**
 * Formats nano-units as a decimal string of currency units with at least
 * `minFractionDigits` decimals and no trailing zeros beyond them.
 */
export function formatAmount(nano: bigint, minFractionDigits = 2): string {
  const negative = nano < 0n;
  const magnitude = negative ? -nano : nano;
  const whole = magnitude / NANO_PER_UNIT;
  let fraction = (magnitude % NANO_PER_UNIT).toString().padStart(NANO_DIGITS, '0').replace(/0+$/, '');
  if (fraction.length < minFractionDigits) fraction = fraction.padEnd(minFractionDigits, '0');
  const body = fraction.length > 0 ? `${whole}.${fraction}` : `${whole}`;
  return negative ? `-${body}` : body;
}

/** Divides a non-negative numerator by a positive denominator, rounding up. */
export function divCeil(numerator: bigint, denominator: bigint): bigint {
  if (denominator <= 0n) throw new RangeError(`divCeil denominator must be positive, got ${denominator}`);
  if (numerator <= 0n) return -((-numerator) / denominator);
  return (numerator + denominator - 1n) / denominator;
}
