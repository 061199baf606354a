import { describe, expect, it } from 'vitest';
import { parseIgnoringUnknownFields } from './common.ts';
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
