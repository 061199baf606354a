import { describe, expect, it } from 'vitest';
import { createOperatorMetrics, toCurrencyUnits } from './metrics.ts';

const NANO = 1_000_000_000n;

/** Returns the exposition lines of one metric family, without help and type lines. */
async function samples(metrics: ReturnType<typeof createOperatorMetrics>, name: string): Promise<string[]> {
  const text = await metrics.registry.metrics();
  return text.split('\n').filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `));
}

describe('toCurrencyUnits', () => {
  it('converts nano-units to units', () => {
    expect(toCurrencyUnits(15_500_000_000n)).toBe(15.5);
    expect(toCurrencyUnits(1n)).toBe(1e-9);
    expect(toCurrencyUnits(-2_250_000_000n)).toBe(-2.25);
    expect(toCurrencyUnits(0n)).toBe(0);
  });
});

describe('operator metrics', () => {
  it('exports wallet balances and holds', async () => {
    const metrics = createOperatorMetrics({ defaultMetrics: false });
    metrics.setWallet('team', 'acme', 'USD', { balance: 1550n * NANO / 100n, reserved: 25n * NANO / 100n, chargedWithoutCost: 5n * NANO / 100n });
    metrics.setWallet('team', 'beta', 'EUR', { balance: 0n, reserved: 0n });
    expect(await samples(metrics, 'tollgate_wallet_balance')).toEqual([
      'tollgate_wallet_balance{namespace="team",wallet="acme",currency="USD"} 15.5',
      'tollgate_wallet_balance{namespace="team",wallet="beta",currency="EUR"} 0',
    ]);
    expect(await samples(metrics, 'tollgate_wallet_reserved')).toEqual([
      'tollgate_wallet_reserved{namespace="team",wallet="acme",currency="USD"} 0.25',
      'tollgate_wallet_reserved{namespace="team",wallet="beta",currency="EUR"} 0',
    ]);
    expect(await samples(metrics, 'tollgate_wallet_charged_without_cost')).toEqual([
      'tollgate_wallet_charged_without_cost{namespace="team",wallet="acme",currency="USD"} 0.05',
      'tollgate_wallet_charged_without_cost{namespace="team",wallet="beta",currency="EUR"} 0',
    ]);
  });

  it('moves a wallet whose currency changed', async () => {
    const metrics = createOperatorMetrics({ defaultMetrics: false });
    metrics.setWallet('team', 'acme', 'USD', { balance: 1n * NANO, reserved: 0n });
    metrics.setWallet('team', 'acme', 'EUR', { balance: 2n * NANO, reserved: 0n });
    expect(await samples(metrics, 'tollgate_wallet_balance')).toEqual(['tollgate_wallet_balance{namespace="team",wallet="acme",currency="EUR"} 2']);
  });

  it('removes deleted wallets and clears all on step-down', async () => {
    const metrics = createOperatorMetrics({ defaultMetrics: false });
    metrics.setWallet('team', 'acme', 'USD', { balance: 1n * NANO, reserved: 0n });
    metrics.setWallet('team', 'beta', 'USD', { balance: 1n * NANO, reserved: 0n });
    metrics.removeWallet('team', 'acme');
    metrics.removeWallet('team', 'never-seen');
    expect(await samples(metrics, 'tollgate_wallet_balance')).toEqual(['tollgate_wallet_balance{namespace="team",wallet="beta",currency="USD"} 1']);
    metrics.clearWallets();
    expect(await samples(metrics, 'tollgate_wallet_balance')).toEqual([]);
    expect(await samples(metrics, 'tollgate_wallet_reserved')).toEqual([]);
    expect(await samples(metrics, 'tollgate_wallet_charged_without_cost')).toEqual([]);
  });

  it('keeps separate registries per instance', async () => {
    const first = createOperatorMetrics({ defaultMetrics: false });
    const second = createOperatorMetrics({ defaultMetrics: false });
    first.leader.set(1);
    expect(await samples(first, 'tollgate_operator_leader')).toEqual(['tollgate_operator_leader 1']);
    expect(await samples(second, 'tollgate_operator_leader')).toEqual(['tollgate_operator_leader 0']);
  });
});
