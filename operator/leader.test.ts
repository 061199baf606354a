// Lease decisions and timing checks. The election itself runs against a real
// kube-apiserver in test/operator.test.ts.

import { describe, expect, it } from 'vitest';
import { decideLease, validateLeaseTimings } from './leader.ts';

describe('decideLease', () => {
  const seenAt = 1_000_000;

  it('renews its own lease', () => {
    expect(decideLease('replica-a', 15, 'replica-a', seenAt, seenAt + 60_000)).toBe('renew');
  });

  it('acquires a lease without a holder', () => {
    expect(decideLease(undefined, 15, 'replica-a', seenAt, seenAt)).toBe('acquire');
    expect(decideLease('', 1, 'replica-a', seenAt, seenAt)).toBe('acquire');
  });

  it('waits out another holder for the lease duration from its own observation', () => {
    expect(decideLease('replica-b', 15, 'replica-a', seenAt, seenAt + 14_999)).toBe('held');
    expect(decideLease('replica-b', 15, 'replica-a', seenAt, seenAt + 15_000)).toBe('acquire');
  });

  it('treats a missing duration as expired', () => {
    expect(decideLease('replica-b', undefined, 'replica-a', seenAt, seenAt)).toBe('acquire');
  });
});

describe('validateLeaseTimings', () => {
  it('accepts duration > deadline > retry', () => {
    expect(() => validateLeaseTimings(15_000, 10_000, 2_000)).not.toThrow();
    expect(() => validateLeaseTimings(2_000, 1_500, 500)).not.toThrow();
  });

  it('rejects timings that allow two leaders', () => {
    expect(() => validateLeaseTimings(10_000, 10_000, 2_000)).toThrow(
      'invalid lease timings: need leaseDuration (10000 ms) > renewDeadline (10000 ms) > retryPeriod (2000 ms) > 0',
    );
    expect(() => validateLeaseTimings(15_000, 2_000, 2_000)).toThrow('invalid lease timings');
    expect(() => validateLeaseTimings(15_000, 10_000, 0)).toThrow('invalid lease timings');
  });

  it('rejects a fractional lease duration', () => {
    expect(() => validateLeaseTimings(2_500, 1_500, 500)).toThrow('invalid lease duration 2500 ms: the Lease stores whole seconds');
  });
});
