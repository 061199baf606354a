import { describe, expect, it } from 'vitest';
import { addYaml, emptyResourceSet } from '../src/config/manifests.ts';
import { Snapshot } from '../src/config/snapshot.ts';
import { resolveWallet, WalletResolutionError, type WalletPolicy } from './wallets.ts';

const PLAN = `
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: standard, namespace: NAMESPACE }
spec:
  currency: USD
  versions: [{ effectiveFrom: "2026-01-01T00:00:00Z", models: {} }]
`;

function walletYaml(namespace: string, name: string, endUsers = false): string {
  return `
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name}, namespace: ${namespace} }
spec:
  currency: USD
  pricePlanRef: { name: standard }
${endUsers ? '  endUsers: { allowed: true, prefix: user- }\n' : ''}`;
}

/** Compiles a snapshot of the given wallets, each as "namespace/name", with a price plan in each namespace. */
function snapshotOf(walletIds: string[], endUserBase?: string): Snapshot {
  const resources = emptyResourceSet();
  const namespaces = new Set(walletIds.map((id) => id.split('/')[0]!));
  for (const namespace of namespaces) addYaml(resources, PLAN.replace('NAMESPACE', namespace), 'test');
  for (const id of walletIds) {
    const [namespace = '', name = ''] = id.split('/');
    addYaml(resources, walletYaml(namespace, name, id === endUserBase), 'test');
  }
  return new Snapshot(resources, () => undefined);
}

const LOCAL: WalletPolicy = { defaultWallet: undefined, allowWalletHeader: true };

function resolutionError(snapshot: Snapshot, headers: Record<string, string>, policy: WalletPolicy): string {
  return resolutionFailure(snapshot, headers, policy).message;
}

function resolutionFailure(snapshot: Snapshot, headers: Record<string, string>, policy: WalletPolicy): WalletResolutionError {
  try {
    resolveWallet(snapshot, headers, policy);
  } catch (error) {
    if (error instanceof WalletResolutionError) return error;
    throw error;
  }
  throw new Error('resolveWallet did not throw');
}

/** Returns the code and status of the error that resolveWallet throws. */
function codeAndStatus(snapshot: Snapshot, headers: Record<string, string>, policy: WalletPolicy): [string, number] {
  const error = resolutionFailure(snapshot, headers, policy);
  return [error.code, error.status];
}

describe('resolveWallet', () => {
  it('lists the namespace wallets for an unknown name', () => {
    const snapshot = snapshotOf(['default/main', 'default/alpha', 'other/beta']);
    expect(resolutionError(snapshot, { 'x-tollgate-wallet': 'acmee' }, LOCAL)).toBe(
      'wallet "default/acmee" not found; use one of the wallets in namespace default (alpha, main) ' +
        'or create a Wallet resource named "acmee" in namespace default',
    );
    expect(resolutionError(snapshot, { 'x-tollgate-wallet': 'other/gamma' }, LOCAL)).toBe(
      'wallet "other/gamma" not found; use one of the wallets in namespace other (beta) or create a Wallet resource named "gamma" in namespace other',
    );
  });

  it('lists 20 names and counts the rest', () => {
    const ids = Array.from({ length: 23 }, (_, index) => `default/w${String(index).padStart(2, '0')}`);
    const listed = ids.slice(0, 20).map((id) => id.split('/')[1]).join(', ');
    expect(resolutionError(snapshotOf(ids), { 'x-tollgate-wallet': 'acmee' }, LOCAL)).toBe(
      `wallet "default/acmee" not found; use one of the wallets in namespace default (${listed} and 3 more) ` +
        'or create a Wallet resource named "acmee" in namespace default',
    );
  });

  it('names an empty namespace', () => {
    expect(resolutionError(snapshotOf(['default/main']), { 'x-tollgate-wallet': 'shop/acmee' }, LOCAL)).toBe(
      'wallet "shop/acmee" not found, and namespace shop has no wallets; create a Wallet resource named "acmee" in namespace shop',
    );
  });

  it('lists no wallets in a pod', () => {
    const snapshot = snapshotOf(['shop/main', 'shop/user-alice']);
    const pod: WalletPolicy = { defaultWallet: 'shop/platform', allowWalletHeader: false };
    expect(resolutionError(snapshot, {}, pod)).toBe('wallet "shop/platform" not found; create a Wallet resource named "platform" in namespace shop');
  });

  it('lists no wallets for an end user', () => {
    const snapshot = snapshotOf(['default/platform', 'default/user-alice'], 'default/platform');
    expect(resolutionError(snapshot, { 'x-tollgate-wallet': 'platform', 'x-tollgate-end-user': 'bob' }, LOCAL)).toBe(
      'wallet "default/user-bob" not found; create a Wallet resource named "user-bob" in namespace default',
    );
    expect(resolveWallet(snapshot, { 'x-tollgate-wallet': 'platform', 'x-tollgate-end-user': 'alice' }, LOCAL).id).toBe('default/user-alice');
  });

  it('rejects a repeated wallet header', () => {
    const snapshot = snapshotOf(['default/acme', 'default/demo']);
    expect(resolutionError(snapshot, { 'x-tollgate-wallet': 'acme, demo' }, LOCAL)).toBe(
      'the x-tollgate-wallet header was sent more than once ("acme, demo"); send it once',
    );
  });

  it('names the end-user id rules', () => {
    const snapshot = snapshotOf(['default/platform'], 'default/platform');
    for (const id of ['a'.repeat(64), '-bob', 'Bob']) {
      expect(resolutionError(snapshot, { 'x-tollgate-wallet': 'platform', 'x-tollgate-end-user': id }, LOCAL), id).toBe(
        `invalid x-tollgate-end-user "${id}": use 1 to 63 lowercase letters, digits and dashes, starting with a letter or digit`,
      );
    }
  });

  it('codes missing wallets as not found', () => {
    const snapshot = snapshotOf(['default/platform', 'shop/main'], 'default/platform');
    const pod: WalletPolicy = { defaultWallet: 'shop/platform', allowWalletHeader: false };
    expect(codeAndStatus(snapshot, { 'x-tollgate-wallet': 'platform', 'x-tollgate-end-user': 'bob' }, LOCAL)).toEqual(['wallet_not_found', 403]);
    expect(codeAndStatus(snapshot, { 'x-tollgate-wallet': 'acmee' }, LOCAL)).toEqual(['wallet_not_found', 403]);
    expect(codeAndStatus(snapshot, { 'x-tollgate-wallet': 'other/acmee' }, LOCAL)).toEqual(['wallet_not_found', 403]);
    expect(codeAndStatus(snapshot, {}, pod)).toEqual(['wallet_not_found', 403]);
  });

  it('codes forbidden wallets as not allowed', () => {
    const snapshot = snapshotOf(['default/platform', 'default/main'], 'default/platform');
    const pod: WalletPolicy = { defaultWallet: 'default/main', allowWalletHeader: false };
    expect(codeAndStatus(snapshot, { 'x-tollgate-wallet': 'main', 'x-tollgate-end-user': 'bob' }, LOCAL)).toEqual(['wallet_not_allowed', 403]);
    expect(codeAndStatus(snapshot, { 'x-tollgate-wallet': 'platform' }, pod)).toEqual(['wallet_not_allowed', 403]);
  });

  it('codes malformed headers as invalid', () => {
    const snapshot = snapshotOf(['default/platform'], 'default/platform');
    expect(codeAndStatus(snapshot, { 'x-tollgate-wallet': 'platform, main' }, LOCAL)).toEqual(['invalid_request', 400]);
    expect(codeAndStatus(snapshot, { 'x-tollgate-wallet': 'platform', 'x-tollgate-end-user': 'Bob' }, LOCAL)).toEqual(['invalid_request', 400]);
    expect(codeAndStatus(snapshot, {}, LOCAL)).toEqual(['invalid_request', 400]);
  });
});
