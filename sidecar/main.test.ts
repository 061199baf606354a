import { describe, expect, it } from 'vitest';
import { settledRetention } from './main.ts';

describe('settledRetention', () => {
  it('reads TOLLGATE_LEDGER_RETENTION', () => {
    expect(settledRetention({ TOLLGATE_LEDGER_RETENTION: '36h' })).toBe(36 * 3_600_000);
    expect(settledRetention({ TOLLGATE_LEDGER_RETENTION: '1d12h' })).toBe(36 * 3_600_000);
  });

  it('leaves the default when unset', () => {
    expect(settledRetention({})).toBeUndefined();
    expect(settledRetention({ TOLLGATE_LEDGER_RETENTION: '' })).toBeUndefined();
  });

  it('rejects an invalid or short window', () => {
    expect(() => settledRetention({ TOLLGATE_LEDGER_RETENTION: 'a week' })).toThrow(
      'invalid TOLLGATE_LEDGER_RETENTION "a week": use a duration such as 7d, 36h, 90m or 45s (units ms, s, m, h, d)',
    );
    expect(() => settledRetention({ TOLLGATE_LEDGER_RETENTION: '59m' })).toThrow('invalid retention of settled records 59m');
  });
});
