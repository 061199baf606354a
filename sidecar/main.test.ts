import { describe, expect, it } from 'vitest';
import { bodyLimit, ledgerTimeout, maxToolUses, settledRetention, walletLabel } from './main.ts';

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

describe('ledgerTimeout', () => {
  it('reads TOLLGATE_LEDGER_TIMEOUT', () => {
    expect(ledgerTimeout({ TOLLGATE_LEDGER_TIMEOUT: '500ms' })).toBe(500);
    expect(ledgerTimeout({ TOLLGATE_LEDGER_TIMEOUT: '1m30s' })).toBe(90_000);
    expect(ledgerTimeout({ TOLLGATE_LEDGER_TIMEOUT: '0s' })).toBe(0);
  });

  it('keeps 2 s when unset', () => {
    expect(ledgerTimeout({})).toBe(2000);
    expect(ledgerTimeout({ TOLLGATE_LEDGER_TIMEOUT: '' })).toBe(2000);
  });

  it('rejects a value outside 10 ms to 10 minutes', () => {
    for (const text of ['9ms', '11m', '1d']) {
      expect(() => ledgerTimeout({ TOLLGATE_LEDGER_TIMEOUT: text }), text).toThrow(
        `invalid TOLLGATE_LEDGER_TIMEOUT "${text}": use a duration from 10ms to 10m, such as 2s, or 0s for no limit`,
      );
    }
    for (const text of ['2', '0', '1.5s', 'soon']) {
      expect(() => ledgerTimeout({ TOLLGATE_LEDGER_TIMEOUT: text }), text).toThrow(
        `invalid TOLLGATE_LEDGER_TIMEOUT "${text}": use a duration from 10ms to 10m with a unit, such as 2s or 500ms, or 0s for no limit`,
      );
    }
  });
});

describe('bodyLimit', () => {
  it('reads TOLLGATE_BODY_LIMIT', () => {
    expect(bodyLimit({ TOLLGATE_BODY_LIMIT: '8388608' })).toBe(8_388_608);
    expect(bodyLimit({ TOLLGATE_BODY_LIMIT: '1' })).toBe(1);
  });

  it('keeps 4 MiB when unset', () => {
    expect(bodyLimit({})).toBe(4_194_304);
    expect(bodyLimit({ TOLLGATE_BODY_LIMIT: '' })).toBe(4_194_304);
  });

  it('rejects a value that is not a byte count', () => {
    for (const text of ['4MB', '0', '-1', '1.5', ' 1024', '0x400', '9007199254740992']) {
      expect(() => bodyLimit({ TOLLGATE_BODY_LIMIT: text }), text).toThrow(
        `invalid TOLLGATE_BODY_LIMIT "${text}": use a whole number of bytes from 1 to 9007199254740991, such as 8388608 for 8 MiB`,
      );
    }
  });
});

describe('maxToolUses', () => {
  it('reads TOLLGATE_MAX_TOOL_USES', () => {
    expect(maxToolUses({ TOLLGATE_MAX_TOOL_USES: '12' })).toBe(12);
    expect(maxToolUses({ TOLLGATE_MAX_TOOL_USES: '1' })).toBe(1);
    expect(maxToolUses({ TOLLGATE_MAX_TOOL_USES: '1000' })).toBe(1000);
  });

  it('keeps 5 when unset', () => {
    expect(maxToolUses({})).toBe(5);
    expect(maxToolUses({ TOLLGATE_MAX_TOOL_USES: '' })).toBe(5);
  });

  it('rejects a value outside 1 to 1000', () => {
    for (const text of ['0', '1001', '-1', '2.5', '1e2', ' 10', '0x10', 'ten', '9007199254740993']) {
      expect(() => maxToolUses({ TOLLGATE_MAX_TOOL_USES: text }), text).toThrow(
        `invalid TOLLGATE_MAX_TOOL_USES "${text}": use a whole number of tool uses from 1 to 1000, such as 10`,
      );
    }
  });
});

describe('walletLabel', () => {
  it('keeps the label on when unset or true', () => {
    expect(walletLabel({})).toBe(true);
    expect(walletLabel({ TOLLGATE_WALLET_LABEL: '' })).toBe(true);
    expect(walletLabel({ TOLLGATE_WALLET_LABEL: 'true' })).toBe(true);
  });

  it('turns the label off with false', () => {
    expect(walletLabel({ TOLLGATE_WALLET_LABEL: 'false' })).toBe(false);
  });

  it('rejects any other value', () => {
    for (const text of ['yes', 'no', '0', '1', 'TRUE', 'False', ' false']) {
      expect(() => walletLabel({ TOLLGATE_WALLET_LABEL: text }), text).toThrow(`invalid TOLLGATE_WALLET_LABEL "${text}": use true or false`);
    }
  });
});
