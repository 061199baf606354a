import { describe, expect, it } from 'vitest';
import { effectiveFromNanos, PricePlan } from './price-plan.ts';

function plan(versions: Array<Record<string, unknown>>): unknown {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'PricePlan',
    metadata: { name: 'standard', namespace: 'team-a' },
    spec: { currency: 'USD', versions },
  };
}

/** Returns the issues of an invalid plan as "path: message" lines, as local mode prints them. */
function issuesOf(value: unknown): string[] {
  const parsed = PricePlan.safeParse(value);
  if (parsed.success) throw new Error('the plan parsed, but an error was expected');
  return parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
}

describe('PricePlan effectiveFrom', () => {
  it('rejects the same instant written with Z and +00:00', () => {
    const versions = [
      { name: 'launch', effectiveFrom: '2026-01-01T00:00:00Z', markupPercent: '20' },
      { effectiveFrom: '2026-01-01T00:00:00+00:00', markupPercent: '25' },
    ];
    expect(issuesOf(plan(versions))).toEqual([
      'spec.versions.1.effectiveFrom: "2026-01-01T00:00:00+00:00" is the same instant as "2026-01-01T00:00:00Z", ' +
        'the effectiveFrom of version 0, so only one of the two could ever be in effect; ' +
        'give each version a different effectiveFrom, or merge the two versions into one',
    ]);
  });

  it('rejects identical strings', () => {
    const versions = [
      { effectiveFrom: '2026-01-01T00:00:00Z', markupPercent: '20' },
      { effectiveFrom: '2026-01-01T00:00:00Z', markupPercent: '25' },
    ];
    expect(issuesOf(plan(versions))).toEqual([
      'spec.versions.1.effectiveFrom: "2026-01-01T00:00:00Z" is the same instant as "2026-01-01T00:00:00Z", ' +
        'the effectiveFrom of version 0, so only one of the two could ever be in effect; ' +
        'give each version a different effectiveFrom, or merge the two versions into one',
    ]);
  });

  it('names the first version for each later duplicate', () => {
    const versions = [
      { effectiveFrom: '2026-03-01T00:00:00Z', markupPercent: '10' },
      { effectiveFrom: '2026-01-01T01:00:00+01:00', markupPercent: '20' },
      { effectiveFrom: '2026-01-01T00:00:00.000Z', markupPercent: '30' },
      { effectiveFrom: '2025-12-31T19:00:00-05:00', markupPercent: '40' },
    ];
    expect(issuesOf(plan(versions))).toEqual([
      'spec.versions.2.effectiveFrom: "2026-01-01T00:00:00.000Z" is the same instant as "2026-01-01T01:00:00+01:00", ' +
        'the effectiveFrom of version 1, so only one of the two could ever be in effect; ' +
        'give each version a different effectiveFrom, or merge the two versions into one',
      'spec.versions.3.effectiveFrom: "2025-12-31T19:00:00-05:00" is the same instant as "2026-01-01T01:00:00+01:00", ' +
        'the effectiveFrom of version 1, so only one of the two could ever be in effect; ' +
        'give each version a different effectiveFrom, or merge the two versions into one',
    ]);
  });

  it('rejects times less than a nanosecond apart', () => {
    const versions = [
      { effectiveFrom: '2026-01-01T00:00:00.0000000001Z', markupPercent: '20' },
      { effectiveFrom: '2026-01-01T00:00:00.0000000002Z', markupPercent: '25' },
    ];
    expect(issuesOf(plan(versions))).toEqual([
      'spec.versions.1.effectiveFrom: "2026-01-01T00:00:00.0000000002Z" is the same instant as "2026-01-01T00:00:00.0000000001Z", ' +
        'the effectiveFrom of version 0, so only one of the two could ever be in effect; ' +
        'give each version a different effectiveFrom, or merge the two versions into one',
    ]);
  });

  it('accepts instants less than a millisecond apart', () => {
    const versions = [
      { effectiveFrom: '2026-01-01T00:00:00.0001Z', markupPercent: '20' },
      { effectiveFrom: '2026-01-01T00:00:00.0002Z', markupPercent: '25' },
    ];
    expect(PricePlan.safeParse(plan(versions)).success).toBe(true);
  });
});

describe('effectiveFromNanos', () => {
  it('reads an offset and the fraction to the nanosecond', () => {
    expect(effectiveFromNanos('1970-01-01T00:00:01Z')).toBe(1_000_000_000n);
    expect(effectiveFromNanos('1970-01-01T01:00:01+01:00')).toBe(1_000_000_000n);
    expect(effectiveFromNanos('1970-01-01T00:00:00.5Z')).toBe(500_000_000n);
    expect(effectiveFromNanos('1970-01-01T00:00:00.123456789-00:00')).toBe(123_456_789n);
  });

  it('drops digits beyond nanoseconds', () => {
    expect(effectiveFromNanos('1970-01-01T00:00:00.1234567891Z')).toBe(123_456_789n);
  });
});
