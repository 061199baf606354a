import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { addManifest, emptyResourceSet, loadManifests, type SkippedDocument } from './manifests.ts';

function wallet(spec: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'Wallet',
    metadata: { name: 'team-a' },
    spec: { currency: 'USD', pricePlanRef: { name: 'standard' }, ...spec },
    ...extra,
  };
}

function walletWithGrant(grant: Record<string, unknown>): unknown {
  return wallet({ grants: [grant] });
}

const WHERE = 'wallets.yaml (document 1)';

describe('addManifest', () => {
  it('names an unquoted amount and the fix', () => {
    expect(() => addManifest(emptyResourceSet(), walletWithGrant({ id: 'a', amount: 0.5 }), 'wallets.yaml')).toThrow(
      'invalid Wallet "team-a" in wallets.yaml: spec.grants.0.amount: must be a quoted decimal string such as "12.50", not the number 0.5 (YAML reads an unquoted 0.5 as a number)',
    );
  });

  it('names a missing amount', () => {
    expect(() => addManifest(emptyResourceSet(), walletWithGrant({ id: 'a' }), 'wallets.yaml')).toThrow(
      'invalid Wallet "team-a" in wallets.yaml: spec.grants.0.amount: is required: a decimal string such as "12.50"',
    );
  });

  it('names an expiry without a time zone and the format', () => {
    expect(() => addManifest(emptyResourceSet(), walletWithGrant({ id: 'a', amount: '1', expiresAt: '2027-01-01 00:00' }), 'wallets.yaml')).toThrow(
      'invalid Wallet "team-a" in wallets.yaml: spec.grants.0.expiresAt: must be an RFC 3339 time with a time zone, such as "2027-01-31T00:00:00Z", not "2027-01-01 00:00"',
    );
  });

  it('accepts a quoted amount with an expiry', () => {
    const set = emptyResourceSet();
    addManifest(set, walletWithGrant({ id: 'a', amount: '0.5', expiresAt: '2027-01-31T00:00:00Z' }), 'wallets.yaml');
    expect(set.wallets.map((wallet) => wallet.spec.grants)).toEqual([[{ id: 'a', amount: '0.5', expiresAt: '2027-01-31T00:00:00Z' }]]);
  });
});

describe('addManifest unknown fields', () => {
  it('rejects a misspelled spec field', () => {
    expect(() => addManifest(emptyResourceSet(), wallet({ limts: { maxPerRequest: '1.00' } }), WHERE)).toThrow(
      'invalid Wallet "team-a" in wallets.yaml (document 1): unknown field "spec.limts"; remove it or fix its spelling; ' +
        'the known fields are currency, pricePlanRef, grants, limits, lowBalanceThreshold, endUsers',
    );
  });

  it('ignores them in an operator snapshot', () => {
    const set = emptyResourceSet();
    addManifest(set, wallet({ limts: { maxPerRequest: '1.00' } }), 'snapshot', 'default', undefined, 'ignore');
    expect(set.wallets.map((item) => item.metadata.name)).toEqual(['team-a']);
    expect(Object.keys(set.wallets[0]!.spec)).not.toContain('limts');
  });

  it('rejects a field inside a grant', () => {
    expect(() => addManifest(emptyResourceSet(), walletWithGrant({ id: 'a', amount: '1', expires: '2027-01-01T00:00:00Z' }), WHERE)).toThrow(
      'invalid Wallet "team-a" in wallets.yaml (document 1): unknown field "spec.grants.0.expires"; remove it or fix its spelling; ' +
        'the known fields are id, amount, reason, expiresAt',
    );
  });

  it('rejects several top-level fields at once', () => {
    expect(() => addManifest(emptyResourceSet(), wallet({}, { specs: {}, data: {} }), WHERE)).toThrow(
      'invalid Wallet "team-a" in wallets.yaml (document 1): unknown fields "specs", "data"; remove them or fix their spelling; ' +
        'the known fields are apiVersion, kind, metadata, spec, status',
    );
  });

  it('rejects a field in a price plan rate', () => {
    const plan = {
      apiVersion: 'tollgate.dev/v1alpha1',
      kind: 'PricePlan',
      metadata: { name: 'standard' },
      spec: {
        currency: 'USD',
        versions: [{ effectiveFrom: '2026-01-01T00:00:00Z', models: { 'gpt-4o-mini': { input: '0.15', output: '0.60', ouput: '0.70' } } }],
      },
    };
    expect(() => addManifest(emptyResourceSet(), plan, 'plan.yaml (document 1)')).toThrow(
      'invalid PricePlan "standard" in plan.yaml (document 1): unknown field "spec.versions.0.models.gpt-4o-mini.ouput"; ' +
        'remove it or fix its spelling; the known fields are input, cachedInput, cacheWrite5m, cacheWrite1h, output, reasoning, ' +
        'perRequest, units, maxOutputTokens, contextTiers',
    );
  });

  it('rejects a field in a provider route', () => {
    const route = {
      apiVersion: 'tollgate.dev/v1alpha1',
      kind: 'ProviderRoute',
      metadata: { name: 'openai' },
      spec: { protocol: 'openai', baseURL: 'https://api.openai.com', models: ['gpt-4o-mini'], timeouts: { requestSecond: 30 } },
    };
    expect(() => addManifest(emptyResourceSet(), route, 'routes.yaml (document 1)')).toThrow(
      'invalid ProviderRoute "openai" in routes.yaml (document 1): unknown field "spec.timeouts.requestSecond"; ' +
        'remove it or fix its spelling; the known fields are connectSeconds, requestSeconds',
    );
  });

  it('accepts metadata fields that a cluster adds', () => {
    const set = emptyResourceSet();
    const stored = wallet(
      { grants: [{ id: 'a', amount: '1' }] },
      {
        metadata: {
          name: 'team-a',
          namespace: 'shop',
          labels: { team: 'a' },
          annotations: { note: 'x' },
          uid: '5c1f0a52-7a4e-4c8e-9d0f-2f4b9a0f8e11',
          resourceVersion: '42',
          generation: 3,
          creationTimestamp: '2026-01-01T00:00:00Z',
          managedFields: [{ manager: 'kubectl', operation: 'Apply' }],
          ownerReferences: [],
          generateName: 'team-',
        },
        status: { balance: '1.00', appliedGrants: ['a'], observedGeneration: 3 },
      },
    );
    addManifest(set, stored, WHERE);
    expect(set.wallets.map((wallet) => wallet.metadata)).toEqual([
      {
        name: 'team-a',
        namespace: 'shop',
        labels: { team: 'a' },
        annotations: { note: 'x' },
        uid: '5c1f0a52-7a4e-4c8e-9d0f-2f4b9a0f8e11',
        resourceVersion: '42',
        generation: 3,
        creationTimestamp: '2026-01-01T00:00:00Z',
      },
    ]);
  });
});

describe('addManifest duplicate grants', () => {
  it('names the wallet and the repeated id', () => {
    const grants = [
      { id: 'welcome', amount: '1.00' },
      { id: 'top-up', amount: '2.00' },
      { id: 'welcome', amount: '3.00' },
    ];
    expect(() => addManifest(emptyResourceSet(), wallet({ grants }), WHERE)).toThrow(
      'invalid Wallet "team-a" in wallets.yaml (document 1): spec.grants.2.id: duplicate grant id "welcome"; ' +
        'the ledger credits each id once, so give every grant its own id',
    );
  });
});

describe('addManifest API types', () => {
  it('rejects an unknown Tollgate kind', () => {
    expect(() => addManifest(emptyResourceSet(), wallet({}, { kind: 'Walet' }), WHERE)).toThrow(
      'invalid resource "team-a" in wallets.yaml (document 1): kind "Walet" is unknown; ' +
        'the known kinds of tollgate.dev are ProviderRoute, PricePlan, Wallet',
    );
  });

  it('rejects a version that is not served', () => {
    expect(() => addManifest(emptyResourceSet(), wallet({}, { apiVersion: 'tollgate.dev/v1' }), WHERE)).toThrow(
      'invalid Wallet "team-a" in wallets.yaml (document 1): apiVersion "tollgate.dev/v1" is not served; use "tollgate.dev/v1alpha1"',
    );
  });

  it('rejects a group without a version', () => {
    expect(() => addManifest(emptyResourceSet(), wallet({}, { apiVersion: 'tollgate.dev' }), WHERE)).toThrow(
      'invalid Wallet "team-a" in wallets.yaml (document 1): apiVersion "tollgate.dev" is not served; use "tollgate.dev/v1alpha1"',
    );
  });

  it('lists both problems of a wrong kind and version', () => {
    expect(() => addManifest(emptyResourceSet(), wallet({}, { apiVersion: 'tollgate.dev/v1', kind: 'Walet' }), WHERE)).toThrow(
      'invalid resource "team-a" in wallets.yaml (document 1): apiVersion "tollgate.dev/v1" is not served; use "tollgate.dev/v1alpha1"; ' +
        'kind "Walet" is unknown; the known kinds of tollgate.dev are ProviderRoute, PricePlan, Wallet',
    );
  });

  it('rejects a Tollgate document without a kind', () => {
    expect(() => addManifest(emptyResourceSet(), { apiVersion: 'tollgate.dev/v1alpha1', metadata: { name: 'x' } }, WHERE)).toThrow(
      'invalid resource "x" in wallets.yaml (document 1): kind is missing; the known kinds of tollgate.dev are ProviderRoute, PricePlan, Wallet',
    );
  });

  it('skips other API groups and reports them', () => {
    const set = emptyResourceSet();
    const skipped: SkippedDocument[] = [];
    const deployment = { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'web' } };
    const configMap = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'settings' } };
    const secret = { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'keys' }, stringData: { apiKey: 'k' } };
    addManifest(set, deployment, 'app.yaml (document 1)', 'default', (document) => skipped.push(document));
    addManifest(set, configMap, 'app.yaml (document 2)', 'default', (document) => skipped.push(document));
    addManifest(set, { name: 'no api version' }, 'app.yaml (document 3)', 'default', (document) => skipped.push(document));
    addManifest(set, secret, 'app.yaml (document 4)', 'default', (document) => skipped.push(document));

    expect(skipped).toEqual([
      { where: 'app.yaml (document 1)', apiVersion: 'apps/v1', kind: 'Deployment', name: 'web' },
      { where: 'app.yaml (document 2)', apiVersion: 'v1', kind: 'ConfigMap', name: 'settings' },
      { where: 'app.yaml (document 3)', apiVersion: undefined, kind: undefined, name: undefined },
    ]);
    expect(set.secrets).toEqual([{ namespace: 'default', name: 'keys', data: { apiKey: 'k' } }]);
    expect(set.wallets).toEqual([]);
  });
});

describe('loadManifests', () => {
  it('reports skipped documents with file and number', async () => {
    const folder = await mkdtemp(path.join(os.tmpdir(), 'tollgate-manifests-test-'));
    try {
      const file = path.join(folder, 'all.yaml');
      const text = [
        'apiVersion: tollgate.dev/v1alpha1',
        'kind: Wallet',
        'metadata: {name: team-a}',
        'spec: {currency: USD, pricePlanRef: {name: standard}}',
        '---',
        'apiVersion: apps/v1',
        'kind: Deployment',
        'metadata: {name: web}',
        '',
      ].join('\n');
      await writeFile(file, text);
      const skipped: SkippedDocument[] = [];
      const set = await loadManifests(folder, (document) => skipped.push(document));

      expect(set.wallets.map((wallet) => wallet.metadata.name)).toEqual(['team-a']);
      expect(skipped).toEqual([{ where: `${file} (document 2)`, apiVersion: 'apps/v1', kind: 'Deployment', name: 'web' }]);
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });
});
