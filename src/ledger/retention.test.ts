import { describe, expect, it } from 'vitest';
import { formatDuration, parseCutoffMs, parseDurationMs, validateSettledRetention } from './retention.ts';

describe('parseDurationMs', () => {
  it('sums whole numbers with units', () => {
    expect(parseDurationMs('7d', 'window')).toBe(604_800_000);
    expect(parseDurationMs('1d12h', 'window')).toBe(129_600_000);
    expect(parseDurationMs('90m', 'window')).toBe(5_400_000);
    expect(parseDurationMs('1m30s', 'window')).toBe(90_000);
    expect(parseDurationMs('500ms', 'window')).toBe(500);
  });

  it('rejects text without units', () => {
    for (const text of ['', '7', 'd', '1.5h', '7 days', '-1d']) {
      expect(() => parseDurationMs(text, 'window')).toThrow(`invalid window "${text}": use a duration such as 7d`);
    }
  });
});

describe('parseCutoffMs', () => {
  const NOW = Date.UTC(2026, 5, 1);

  it('reads an age before now', () => {
    expect(parseCutoffMs('30d', '--before', NOW)).toBe(NOW - 30 * 86_400_000);
  });

  it('reads a time', () => {
    expect(parseCutoffMs('2025-06-01T00:00:00Z', '--before', NOW)).toBe(Date.UTC(2025, 5, 1));
    expect(parseCutoffMs('2025-06-01', '--before', NOW)).toBe(Date.UTC(2025, 5, 1));
  });

  it('rejects anything else', () => {
    expect(() => parseCutoffMs('last week', '--before', NOW)).toThrow('invalid --before "last week"');
  });
});

describe('retention window', () => {
  it('formats the largest whole unit', () => {
    expect([formatDuration(604_800_000), formatDuration(5_400_000), formatDuration(90_000), formatDuration(1500)]).toEqual(['7d', '90m', '90s', '1500ms']);
  });

  it('accepts an hour and rejects less', () => {
    expect(() => validateSettledRetention(3_600_000)).not.toThrow();
    expect(() => validateSettledRetention(3_599_999)).toThrow('invalid retention of settled records 3599999ms');
    expect(() => validateSettledRetention(Number.NaN)).toThrow('invalid retention of settled records NaN');
  });
});
