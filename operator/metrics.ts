/**
 * The operator's Prometheus metrics, served on /metrics of its HTTP server.
 * Wallet gauges are in currency units as floats, for dashboards only; the
 * ledger and the Wallet status hold the exact amounts.
 */

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { NANO_PER_UNIT } from '../src/money/money.ts';

export interface WalletAmounts {
  balance: bigint;
  reserved: bigint;
  /** See WalletState.chargedWithoutCost; 0 when undefined. */
  chargedWithoutCost?: bigint;
}

export interface OperatorMetrics {
  registry: Registry;
  walletBalance: Gauge<'namespace' | 'wallet' | 'currency'>;
  walletReserved: Gauge<'namespace' | 'wallet' | 'currency'>;
  walletChargedWithoutCost: Gauge<'namespace' | 'wallet' | 'currency'>;
  reconciles: Counter<'kind' | 'outcome'>;
  reconcileDuration: Histogram<'kind'>;
  watchRestarts: Counter<'kind' | 'reason'>;
  leader: Gauge;
  /** Sets the wallet gauges; a change of currency removes the series under the old one. */
  setWallet(namespace: string, wallet: string, currency: string, amounts: WalletAmounts): void;
  /** Removes the series of a deleted wallet. */
  removeWallet(namespace: string, wallet: string): void;
  /** Removes every wallet series, for a replica that stops being the leader and no longer updates them. */
  clearWallets(): void;
}

/** Converts nano-units to currency units as a float, for gauges only (the result carries float rounding). */
export function toCurrencyUnits(nano: bigint): number {
  const whole = nano / NANO_PER_UNIT;
  const fraction = nano % NANO_PER_UNIT;
  return Number(whole) + Number(fraction) / Number(NANO_PER_UNIT);
}

export function createOperatorMetrics(options: { defaultMetrics?: boolean } = {}): OperatorMetrics {
  const registry = new Registry();
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: 'tollgate_operator_' });
  const registers = [registry];

  const walletBalance = new Gauge({
    name: 'tollgate_wallet_balance',
    help: 'Wallet balance (granted minus spent) in currency units, as mirrored from the ledger by the leading operator.',
    labelNames: ['namespace', 'wallet', 'currency'] as const,
    registers,
  });
  const walletReserved = new Gauge({
    name: 'tollgate_wallet_reserved',
    help: 'Sum of open holds of a wallet in currency units, as mirrored from the ledger by the leading operator.',
    labelNames: ['namespace', 'wallet', 'currency'] as const,
    registers,
  });
  const walletChargedWithoutCost = new Gauge({
    name: 'tollgate_wallet_charged_without_cost',
    help:
      'Part of a wallet\'s spend that the sweeper charged for expired holds of answered calls whose sidecar never committed them, ' +
      'in currency units; their provider cost is not known. Above zero means sidecars stopped during calls.',
    labelNames: ['namespace', 'wallet', 'currency'] as const,
    registers,
  });
  const currencies = new Map<string, string>();

  const removeWallet = (namespace: string, wallet: string): void => {
    const id = `${namespace}/${wallet}`;
    const currency = currencies.get(id);
    if (currency === undefined) return;
    walletBalance.remove({ namespace, wallet, currency });
    walletReserved.remove({ namespace, wallet, currency });
    walletChargedWithoutCost.remove({ namespace, wallet, currency });
    currencies.delete(id);
  };

  return {
    registry,
    walletBalance,
    walletReserved,
    walletChargedWithoutCost,
    reconciles: new Counter({
      name: 'tollgate_operator_reconciles_total',
      help: 'Reconciles by resource kind and outcome (success, requeue, error).',
      labelNames: ['kind', 'outcome'] as const,
      registers,
    }),
    reconcileDuration: new Histogram({
      name: 'tollgate_operator_reconcile_duration_seconds',
      help: 'Time spent in one reconcile, by resource kind.',
      labelNames: ['kind'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    watchRestarts: new Counter({
      name: 'tollgate_operator_watch_restarts_total',
      help: 'Watch restarts by resource kind and reason (closed by the server, error, expired resourceVersion, silent past the watchdog bound).',
      labelNames: ['kind', 'reason'] as const,
      registers,
    }),
    leader: new Gauge({
      name: 'tollgate_operator_leader',
      help: '1 while this replica holds the leader Lease and runs the reconcilers, else 0.',
      registers,
    }),
    setWallet(namespace, wallet, currency, amounts) {
      const id = `${namespace}/${wallet}`;
      if (currencies.get(id) !== currency) removeWallet(namespace, wallet);
      currencies.set(id, currency);
      walletBalance.set({ namespace, wallet, currency }, toCurrencyUnits(amounts.balance));
      walletReserved.set({ namespace, wallet, currency }, toCurrencyUnits(amounts.reserved));
      walletChargedWithoutCost.set({ namespace, wallet, currency }, toCurrencyUnits(amounts.chargedWithoutCost ?? 0n));
    },
    removeWallet,
    clearWallets() {
      walletBalance.reset();
      walletReserved.reset();
      walletChargedWithoutCost.reset();
      currencies.clear();
    },
  };
}
