import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { Wallet } from '../src/api/wallet.ts';
import type { Ledger, WalletState } from '../src/ledger/ledger.ts';
import { MemoryLedger } from '../src/ledger/memory.ts';
import {
  LedgerCompactor,
  desiredWalletStatus,
  isSignificantChange,
  nextExpiryDelayMs,
  walletTransitions,
  type WalletFacts,
  type WalletStatus,
} from './reconcile-wallet.ts';

const NANO = 1_000_000_000n;
const EARLIER = '2026-03-01T00:00:00Z';
const NOW = '2026-03-02T00:00:00Z';

function state(granted: bigint, spent: bigint, reserved = 0n, closed = false, expired = 0n): WalletState {
  return {
    granted,
    spent,
    expired,
    reserved,
    balance: granted - spent - expired,
    available: granted - spent - expired - reserved,
    providerCost: 0n,
    chargedWithoutCost: 0n,
    holds: reserved > 0n ? 1 : 0,
    closed,
  };
}

function facts(overrides: Partial<WalletFacts> = {}): WalletFacts {
  return {
    generation: 2,
    state: state(10n * NANO, 0n),
    currency: 'USD',
    lowBalanceThreshold: 2n * NANO,
    appliedGrants: ['g1'],
    problem: undefined,
    ...overrides,
  };
}

function conditionsOf(status: WalletStatus): Array<[string, string, string]> {
  return (status.conditions ?? []).map((condition) => [condition.type, condition.status, condition.reason]);
}

describe('desiredWalletStatus', () => {
  it('mirrors the ledger as decimal strings', () => {
    const status = desiredWalletStatus(undefined, facts({ state: state(10n * NANO, 2_500_000_000n, 125_000_000n) }), NOW);
    expect(status).toMatchObject({
      balance: '7.50',
      reserved: '0.125',
      spent: '2.50',
      granted: '10.00',
      expired: '0.00',
      appliedGrants: ['g1'],
      observedGeneration: 2,
    });
    expect(conditionsOf(status)).toEqual([
      ['Ready', 'True', 'Active'],
      ['LowBalance', 'False', 'AboveThreshold'],
      ['Exhausted', 'False', 'FundsAvailable'],
    ]);
    expect(status.conditions?.[0]?.message).toBe('available 7.375 USD of balance 7.50 USD');
    expect(status.conditions?.every((condition) => condition.lastTransitionTime === NOW && condition.observedGeneration === 2)).toBe(true);
  });

  it('mirrors the expired total', () => {
    const status = desiredWalletStatus(undefined, facts({ state: state(10n * NANO, 2n * NANO, 0n, false, 3_250_000_000n) }), NOW);
    expect(status).toMatchObject({ balance: '4.75', spent: '2.00', granted: '10.00', expired: '3.25' });
  });

  it('reports a balance below the threshold', () => {
    const status = desiredWalletStatus(undefined, facts({ state: state(10n * NANO, 8_500_000_000n) }), NOW);
    expect(conditionsOf(status)).toEqual([
      ['Ready', 'True', 'Active'],
      ['LowBalance', 'True', 'BelowThreshold'],
      ['Exhausted', 'False', 'FundsAvailable'],
    ]);
    expect(status.conditions?.[1]?.message).toBe('balance 1.50 USD is below the low-balance threshold 2.00 USD');
  });

  it('treats a balance equal to the threshold as not low', () => {
    const status = desiredWalletStatus(undefined, facts({ state: state(10n * NANO, 8n * NANO) }), NOW);
    expect(conditionsOf(status)[1]).toEqual(['LowBalance', 'False', 'AboveThreshold']);
  });

  it('reports exhaustion at zero and below', () => {
    for (const spent of [10n * NANO, 11n * NANO]) {
      const status = desiredWalletStatus(undefined, facts({ state: state(10n * NANO, spent) }), NOW);
      expect(conditionsOf(status)).toEqual([
        ['Ready', 'False', 'Exhausted'],
        ['LowBalance', 'True', 'BelowThreshold'],
        ['Exhausted', 'True', 'NoFunds'],
      ]);
    }
  });

  it('lets a problem decide Ready', () => {
    const problem = { reason: 'PricePlanNotFound', message: 'PricePlan "gold" not found in namespace "team"' };
    const status = desiredWalletStatus(undefined, facts({ problem }), NOW);
    expect(status.conditions?.[0]).toMatchObject({ type: 'Ready', status: 'False', ...problem });
  });

  it('reports a closed ledger account', () => {
    const status = desiredWalletStatus(undefined, facts({ state: state(10n * NANO, 0n, 0n, true) }), NOW);
    expect(conditionsOf(status)[0]).toEqual(['Ready', 'False', 'LedgerClosed']);
  });

  it('marks LowBalance unknown for an invalid spec', () => {
    const status = desiredWalletStatus(
      undefined,
      facts({ currency: undefined, lowBalanceThreshold: undefined, problem: { reason: 'InvalidSpec', message: 'invalid Wallet: spec.currency: bad' } }),
      NOW,
    );
    expect(conditionsOf(status)).toEqual([
      ['Ready', 'False', 'InvalidSpec'],
      ['LowBalance', 'Unknown', 'InvalidSpec'],
      ['Exhausted', 'False', 'FundsAvailable'],
    ]);
    expect(status.conditions?.[2]?.message).toBe('balance is 10.00');
  });

  it('reports a missing threshold', () => {
    const status = desiredWalletStatus(undefined, facts({ lowBalanceThreshold: undefined }), NOW);
    expect(conditionsOf(status)[1]).toEqual(['LowBalance', 'False', 'NoThreshold']);
  });

  it('keeps transition times of unchanged conditions', () => {
    const first = desiredWalletStatus(undefined, facts(), EARLIER);
    const second = desiredWalletStatus(first, facts({ state: state(10n * NANO, 9n * NANO) }), NOW);
    expect(second.conditions?.map((condition) => [condition.type, condition.lastTransitionTime])).toEqual([
      ['Ready', EARLIER],
      ['LowBalance', NOW],
      ['Exhausted', EARLIER],
    ]);
  });
});

describe('walletTransitions', () => {
  const funded = desiredWalletStatus(undefined, facts(), EARLIER);
  const low = desiredWalletStatus(funded, facts({ state: state(10n * NANO, 9n * NANO) }), NOW);
  const empty = desiredWalletStatus(low, facts({ state: state(10n * NANO, 10n * NANO) }), NOW);

  it('announces a new wallet as ready', () => {
    expect(walletTransitions(undefined, funded)).toEqual([
      { type: 'Normal', reason: 'Ready', message: 'wallet is ready: available 10.00 USD of balance 10.00 USD' },
    ]);
  });

  it('warns once when the balance turns low', () => {
    expect(walletTransitions(funded, low)).toEqual([
      { type: 'Warning', reason: 'LowBalance', message: 'balance 1.00 USD is below the low-balance threshold 2.00 USD' },
    ]);
    expect(walletTransitions(low, low)).toEqual([]);
  });

  it('warns when the wallet is exhausted', () => {
    expect(walletTransitions(low, empty)).toEqual([
      { type: 'Warning', reason: 'Exhausted', message: 'balance is 0.00 USD; requests are denied until a grant is added' },
    ]);
  });

  it('announces readiness again after a top-up', () => {
    const refilled = desiredWalletStatus(empty, facts({ state: state(20n * NANO, 10n * NANO) }), NOW);
    expect(walletTransitions(empty, refilled).map((transition) => transition.reason)).toEqual(['Ready']);
  });

  it('reports a lapse once, with the amount taken back', () => {
    const lapsed = desiredWalletStatus(funded, facts({ state: state(10n * NANO, 0n, 0n, false, 1_500_000_000n) }), NOW);
    expect(walletTransitions(funded, lapsed, 'USD')).toEqual([
      {
        type: 'Normal',
        reason: 'GrantLapsed',
        message: 'expired grants lapsed and took back 1.50 USD of unspent credit; balance 8.50 USD',
      },
    ]);
    expect(walletTransitions(lapsed, desiredWalletStatus(lapsed, facts({ state: state(10n * NANO, 1n, 0n, false, 1_500_000_000n) }), NOW))).toEqual([]);
  });

  it('reports the lapse of a status written before expiry existed', () => {
    const { expired: _, ...older } = funded;
    const lapsed = desiredWalletStatus(older, facts({ state: state(10n * NANO, 0n, 0n, false, 1n) }), NOW);
    expect(walletTransitions(older, lapsed).map((transition) => transition.message)).toEqual([
      'expired grants lapsed and took back 0.000000001 of unspent credit; balance 9.999999999',
    ]);
  });

  it('warns about a missing price plan once', () => {
    const problem = { reason: 'PricePlanNotFound', message: 'PricePlan "gold" not found in namespace "team"' };
    const broken = desiredWalletStatus(funded, facts({ problem }), NOW);
    expect(walletTransitions(funded, broken)).toEqual([{ type: 'Warning', reason: 'PricePlanNotFound', message: problem.message }]);
    expect(walletTransitions(broken, desiredWalletStatus(broken, facts({ problem }), NOW))).toEqual([]);
  });
});

describe('isSignificantChange', () => {
  const base = desiredWalletStatus(undefined, facts(), EARLIER);

  it('treats amounts alone as insignificant', () => {
    const spent = desiredWalletStatus(base, facts({ state: state(10n * NANO, 1n * NANO, 1n) }), NOW);
    expect(isSignificantChange(base, spent)).toBe(false);
  });

  it('treats conditions, grants and generations as significant', () => {
    expect(isSignificantChange(undefined, base)).toBe(true);
    expect(isSignificantChange(base, desiredWalletStatus(base, facts({ state: state(10n * NANO, 9n * NANO) }), NOW))).toBe(true);
    expect(isSignificantChange(base, desiredWalletStatus(base, facts({ appliedGrants: ['g1', 'g2'] }), NOW))).toBe(true);
    expect(isSignificantChange(base, desiredWalletStatus(base, facts({ generation: 3 }), NOW))).toBe(true);
  });

  it('treats a lapse as significant', () => {
    expect(isSignificantChange(base, desiredWalletStatus(base, facts({ state: state(10n * NANO, 0n, 0n, false, 1n) }), NOW))).toBe(true);
  });
});

describe('nextExpiryDelayMs', () => {
  const nowMs = Date.parse(NOW);
  const wallet = (grants: Wallet['spec']['grants']): Wallet => ({
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'Wallet',
    metadata: { name: 'w', namespace: 'team' },
    spec: { currency: 'USD', pricePlanRef: { name: 'standard' }, grants },
  });

  it('waits until a second after the earliest later expiry', () => {
    const grants = [
      { id: 'paid', amount: '5.00' },
      { id: 'late', amount: '1.00', expiresAt: '2026-03-02T00:10:00Z' },
      { id: 'early', amount: '1.00', expiresAt: '2026-03-02T00:00:30+00:00' },
      { id: 'past', amount: '1.00', expiresAt: '2026-03-01T23:59:59Z' },
    ];
    expect(nextExpiryDelayMs(wallet(grants), ['paid', 'late', 'early', 'past'], nowMs)).toBe(31_000);
    // A grant not applied yet does not count.
    expect(nextExpiryDelayMs(wallet(grants), ['paid', 'late', 'past'], nowMs)).toBe(601_000);
  });

  it('returns undefined without a later expiry', () => {
    expect(nextExpiryDelayMs(wallet([{ id: 'past', amount: '1.00', expiresAt: NOW }]), ['past'], nowMs)).toBeUndefined();
    expect(nextExpiryDelayMs(wallet([{ id: 'paid', amount: '1.00' }]), ['paid'], nowMs)).toBeUndefined();
  });

  it('waits at most a day', () => {
    const grants = [{ id: 'yearly', amount: '1.00', expiresAt: '2027-03-02T00:00:00Z' }];
    expect(nextExpiryDelayMs(wallet(grants), ['yearly'], nowMs)).toBe(86_400_000);
  });
});

describe('LedgerCompactor', () => {
  const DAY_MS = 86_400_000;
  const wallet = { namespace: 'team', name: 'archive' };

  /** Returns a logger that keeps each record it writes. */
  function recordingLogger(): { log: pino.Logger; records: Array<Record<string, unknown>> } {
    const records: Array<Record<string, unknown>> = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        records.push(JSON.parse(chunk.toString('utf8')) as Record<string, unknown>);
        done();
      },
    });
    return { log: pino(sink), records };
  }

  it('compacts entries older than the age once per interval', async () => {
    const clock = { ms: Date.UTC(2026, 0, 1) };
    const ledger = new MemoryLedger({ now: () => clock.ms });
    const { log, records } = recordingLogger();
    const compactor = new LedgerCompactor({ ledger, log, compactAfterMs: 30 * DAY_MS, intervalMs: 15 * DAY_MS });
    await ledger.credit(wallet, 'first', 100n);
    clock.ms += 20 * DAY_MS;
    await ledger.credit(wallet, 'second', 50n);

    // On day 40 only the first entry is older than 30 days.
    clock.ms += 20 * DAY_MS;
    expect(await compactor.compactIfDue(wallet, clock.ms)).toBe(1);
    expect(records.map((record) => [record['msg'], record['wallet'], record['folded'], record['checkpointEntries']])).toEqual([
      ['compacted ledger entries into the checkpoint', 'team/archive', 1, 1],
    ]);

    // On day 51 the second entry is older than 30 days too, but the last compaction was 11 days ago.
    clock.ms += 11 * DAY_MS;
    expect(await compactor.compactIfDue(wallet, clock.ms)).toBe(0);
    clock.ms += 4 * DAY_MS;
    expect(await compactor.compactIfDue(wallet, clock.ms)).toBe(1);
    expect(await ledger.verify(wallet)).toMatchObject({ ok: true, granted: 150n, entries: 2, checkpoint: { entries: 2 } });
  });

  it('logs a failed compaction and goes on', async () => {
    const { log, records } = recordingLogger();
    const failing = { compact: async () => Promise.reject(new Error('READONLY replica')) } as unknown as Ledger;
    const compactor = new LedgerCompactor({ ledger: failing, log, compactAfterMs: DAY_MS, intervalMs: 0 });

    expect(await compactor.compactIfDue(wallet, Date.now())).toBe(0);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ level: 50, wallet: 'team/archive', msg: 'ledger compaction failed; it runs again after the next interval' });
    expect((records[0]!['err'] as { message: string }).message).toBe('READONLY replica');
  });
});
