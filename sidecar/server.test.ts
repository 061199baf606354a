import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addYaml, emptyResourceSet } from '../src/config/manifests.ts';
import { secretsResolver } from '../src/config/snapshot.ts';
import { MemoryLedger } from '../src/ledger/memory.ts';
import { createSidecarMetrics } from '../src/telemetry/metrics.ts';
import { compileSnapshot, StaticConfig } from './config-source.ts';
import { createSidecar, DEFAULT_SIDECAR_OPTIONS, type Sidecar } from './server.ts';

const PLAN = `
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: plan }
spec:
  currency: USD
  versions: [{ effectiveFrom: "2026-01-01T00:00:00Z", models: {} }]
`;

const MANIFESTS = [
  PLAN,
  ...['small', 'round', 'empty'].map(
    (name) => `
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name} }
spec:
  currency: USD
  pricePlanRef: { name: plan }
`,
  ),
].join('---');

let sidecar: Sidecar;
let ledger: MemoryLedger;

beforeAll(async () => {
  const resources = emptyResourceSet();
  addYaml(resources, MANIFESTS, 'test manifests');
  ledger = new MemoryLedger();
  sidecar = createSidecar(
    new StaticConfig(compileSnapshot(resources, secretsResolver(resources))),
    ledger,
    createSidecarMetrics({ defaultMetrics: false }),
    { ...DEFAULT_SIDECAR_OPTIONS, walletPolicy: { defaultWallet: undefined, allowWalletHeader: true } },
    pino({ level: 'silent' }),
  );
  await sidecar.app.ready();
});

afterAll(async () => {
  await sidecar?.app.close();
  await sidecar?.proxy.close();
});

async function walletViews(): Promise<Record<string, unknown>[]> {
  const response = await sidecar.app.inject({ method: 'GET', url: '/tollgate/v1/wallets' });
  expect(response.statusCode).toBe(200);
  return (JSON.parse(response.body) as { wallets: Record<string, unknown>[] }).wallets;
}

describe('wallet list', () => {
  it('prints amounts exactly and shortest', async () => {
    const small = { namespace: 'default', name: 'small' };
    const round = { namespace: 'default', name: 'round' };
    await ledger.credit(small, 'grant', 241_000n);
    await ledger.commit(small, 'call', { charged: 100_000n, providerCost: 40_000n, model: 'm', route: 'r', tokens: {}, estimated: false });
    await ledger.credit(round, 'grant', 12_500_000_000n);
    await ledger.reserve(round, 'open', { fixed: 2_000_000_000n, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: '' });

    expect(await walletViews()).toEqual([
      {
        wallet: 'default/small',
        currency: 'USD',
        granted: '0.000241',
        spent: '0.0001',
        expired: '0',
        reserved: '0',
        balance: '0.000141',
        available: '0.000141',
        providerCost: '0.00004',
        chargedWithoutCost: '0',
        margin: '0.00006',
        nano: { granted: '241000', balance: '141000', spent: '100000', expired: '0', reserved: '0', providerCost: '40000', chargedWithoutCost: '0' },
      },
      {
        wallet: 'default/round',
        currency: 'USD',
        granted: '12.5',
        spent: '0',
        expired: '0',
        reserved: '2',
        balance: '12.5',
        available: '10.5',
        providerCost: '0',
        chargedWithoutCost: '0',
        margin: '0',
        nano: { granted: '12500000000', balance: '12500000000', spent: '0', expired: '0', reserved: '2000000000', providerCost: '0', chargedWithoutCost: '0' },
      },
      {
        wallet: 'default/empty',
        currency: 'USD',
        granted: '0',
        spent: '0',
        expired: '0',
        reserved: '0',
        balance: '0',
        available: '0',
        providerCost: '0',
        chargedWithoutCost: '0',
        margin: '0',
        nano: { granted: '0', balance: '0', spent: '0', expired: '0', reserved: '0', providerCost: '0', chargedWithoutCost: '0' },
      },
    ]);
  });
});
