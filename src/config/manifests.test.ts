import { describe, expect, it } from 'vitest';
import { addManifest, emptyResourceSet } from './manifests.ts';

function walletWithGrant(grant: Record<string, unknown>): unknown {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'Wallet',
    metadata: { name: 'team-a' },
    spec: { currency: 'USD', pricePlanRef: { name: 'standard' }, grants: [grant] },
  };
}

describe('addManifest', () => {
  it('names an unquoted amount and the fix', () => {
    expect(() => addManifest(emptyResourceSet(), walletWithGrant({ id: 'a', amount: 0.5 }), 'wallets.yaml')).toThrow(
      'invalid Wallet in wallets.yaml: spec.grants.0.amount: must be a quoted decimal string such as "12.50", not the number 0.5 (YAML reads an unquoted 0.5 as a number)',
    );
  });

  it('names a missing amount', () => {
    expect(() => addManifest(emptyResourceSet(), walletWithGrant({ id: 'a' }), 'wallets.yaml')).toThrow(
      'invalid Wallet in wallets.yaml: spec.grants.0.amount: is required: a decimal string such as "12.50"',
    );
  });

  it('names an expiry without a time zone and the format', () => {
    expect(() => addManifest(emptyResourceSet(), walletWithGrant({ id: 'a', amount: '1', expiresAt: '2027-01-01 00:00' }), 'wallets.yaml')).toThrow(
      'invalid Wallet in wallets.yaml: spec.grants.0.expiresAt: must be an RFC 3339 time with a time zone, such as "2027-01-31T00:00:00Z", not "2027-01-01 00:00"',
    );
  });

  it('accepts a quoted amount with an expiry', () => {
    const set = emptyResourceSet();
    addManifest(set, walletWithGrant({ id: 'a', amount: '0.5', expiresAt: '2027-01-31T00:00:00Z' }), 'wallets.yaml');
    expect(set.wallets.map((wallet) => wallet.spec.grants)).toEqual([[{ id: 'a', amount: '0.5', expiresAt: '2027-01-31T00:00:00Z' }]]);
  });
});
