/**
 * Contract tests that every Ledger implementation must pass with identical
 * results. `describeLedgerContract` registers them with vitest; each test
 * uses wallets of its own, so one ledger (and one Redis) serves them all.
 */

import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { MAX_LEDGER_AMOUNT, parseAmount } from '../money/money.ts';
import type { CommitEntry, EntriesOptions, HoldRequest, Ledger, LedgerEntry, ReserveResult, WalletKey } from './ledger.ts';
import { compareEntryIds, GrantExpiredError, GrantTooLargeError } from './ledger.ts';

export interface LedgerFactoryOptions {
  /**
   * Clock in epoch milliseconds. It sets at least the UTC day and month of the
   * spend caps, and the start of a record's retention at commit and release.
   */
  now?: () => number;
  /** How long settled records are kept, in milliseconds. */
  settledRetentionMs?: number;
}

export type LedgerFactory = (options?: LedgerFactoryOptions) => Promise<Ledger>;

const usd = (text: string) => parseAmount(text);

/** Builds a fixed hold of `amount` that expires in a minute. */
function fixedHold(amount: bigint, overrides: Partial<HoldRequest> = {}): HoldRequest {
  return { fixed: amount, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'fp-1', ...overrides };
}

/** Builds a fixed hold of `amount` that expires in 30 days. */
function longHold(amount: bigint, overrides: Partial<HoldRequest> = {}): HoldRequest {
  return fixedHold(amount, { ttlSeconds: 30 * 86_400, ...overrides });
}

function usage(charged: bigint, providerCost = 0n): CommitEntry {
  return { charged, providerCost, model: 'gpt-test', route: 'openai-main', tokens: { input: 10, output: 5 }, estimated: false };
}

const HOUR_MS = 3_600_000;

/** Waits until the local clock, which the Redis server on this host shares, is past `epochMs`. */
async function waitUntilPast(epochMs: number): Promise<void> {
  while (Date.now() <= epochMs) await new Promise((resolve) => setTimeout(resolve, epochMs - Date.now() + 5));
}

function countStatuses(results: ReserveResult[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const result of results) counts[result.status] = (counts[result.status] ?? 0) + 1;
  return counts;
}

export function describeLedgerContract(name: string, makeLedger: LedgerFactory): void {
  describe(`${name}: ledger contract`, () => {
    const run = randomUUID().slice(0, 8);
    let walletCount = 0;
    let ledger: Ledger;

    const newWallet = (): WalletKey => {
      walletCount += 1;
      return { namespace: 'contract', name: `w-${run}-${walletCount}` };
    };

    const fundedWallet = async (amount: bigint): Promise<WalletKey> => {
      const wallet = newWallet();
      await ledger.credit(wallet, 'initial', amount);
      return wallet;
    };

    beforeAll(async () => {
      ledger = await makeLedger();
    });

    afterAll(async () => {
      await ledger?.quit();
    });

    describe('credit', () => {
      it('is idempotent on the grant id', async () => {
        const wallet = newWallet();

        expect(await ledger.credit(wallet, 'g-1', 100n, { reason: 'welcome' })).toEqual({ status: 'credited', replayed: false, balance: 100n, amount: 100n });
        expect(await ledger.credit(wallet, 'g-1', 100n, { reason: 'welcome' })).toEqual({ status: 'credited', replayed: true, balance: 100n, amount: 100n });
        // A reused grant id keeps its first amount, and the reply names it.
        expect(await ledger.credit(wallet, 'g-1', 999n)).toEqual({ status: 'credited', replayed: true, balance: 100n, amount: 100n });
        expect(await ledger.credit(wallet, 'g-2', 50n)).toEqual({ status: 'credited', replayed: false, balance: 150n, amount: 50n });

        const state = await ledger.state(wallet);
        expect(state.granted).toBe(150n);
        expect(state.balance).toBe(150n);
        const verify = await ledger.verify(wallet);
        expect(verify.entries).toBe(2);
        expect(verify.granted).toBe(150n);
      });

      it('rejects a grant above 2^53', async () => {
        const wallet = newWallet();
        const tooLarge = MAX_LEDGER_AMOUNT + 1n;

        const error = await ledger.credit(wallet, 'huge', tooLarge).catch((caught: unknown) => caught);
        expect(error).toBeInstanceOf(GrantTooLargeError);
        expect((error as Error).message).toContain('9007199254740993');
        expect((error as Error).message).toContain('9007199254740992');
        expect((await ledger.state(wallet)).granted).toBe(0n);
      });

      it('rejects a grant that lifts the total above 2^53', async () => {
        const wallet = newWallet();
        expect(await ledger.credit(wallet, 'max', MAX_LEDGER_AMOUNT)).toEqual({
          status: 'credited',
          replayed: false,
          balance: MAX_LEDGER_AMOUNT,
          amount: MAX_LEDGER_AMOUNT,
        });

        const error = await ledger.credit(wallet, 'one-more', 1n).catch((caught: unknown) => caught);
        expect(error).toBeInstanceOf(GrantTooLargeError);
        expect((error as Error).message).toContain('9007199254740993');
        expect((await ledger.state(wallet)).granted).toBe(MAX_LEDGER_AMOUNT);
        expect((await ledger.verify(wallet)).ok).toBe(true);
      });

      it('rejects a negative grant', async () => {
        await expect(ledger.credit(newWallet(), 'negative', -1n)).rejects.toThrow(RangeError);
      });
    });

    describe('reserve', () => {
      it('admits an exact fit and rejects one nano more', async () => {
        const wallet = await fundedWallet(1000n);

        expect(await ledger.reserve(wallet, 'over', fixedHold(1001n))).toEqual({
          status: 'insufficient_funds',
          available: 1000n,
          required: 1001n,
        });
        expect(await ledger.reserve(wallet, 'fit', fixedHold(1000n))).toEqual({
          status: 'reserved',
          amount: 1000n,
          units: 0,
          replayed: false,
        });
        expect(await ledger.reserve(wallet, 'one-nano', fixedHold(1n))).toEqual({
          status: 'insufficient_funds',
          available: 0n,
          required: 1n,
        });

        const state = await ledger.state(wallet);
        expect(state.reserved).toBe(1000n);
        expect(state.available).toBe(0n);
        expect(state.holds).toBe(1);
      });

      it('picks the largest affordable units', async () => {
        const wallet = await fundedWallet(1000n);
        const hold = { fixed: 100n, perUnit: 7n, minUnits: 10, maxUnits: 1000 };

        // (1000 - 100) / 7 = 128.57, so 128 units: 100 + 7 * 128 = 996.
        expect(await ledger.reserve(wallet, 'flex', fixedHold(0n, hold))).toEqual({
          status: 'reserved',
          amount: 996n,
          units: 128,
          replayed: false,
        });
        expect(await ledger.reserve(wallet, 'small', fixedHold(0n, { ...hold, fixed: 0n, perUnit: 1n, minUnits: 0, maxUnits: 3 }))).toEqual({
          status: 'reserved',
          amount: 3n,
          units: 3,
          replayed: false,
        });
        expect(await ledger.reserve(wallet, 'too-few', fixedHold(0n, { ...hold, fixed: 0n, perUnit: 1n, minUnits: 2, maxUnits: 5 }))).toEqual({
          status: 'insufficient_funds',
          available: 1n,
          required: 2n,
        });
      });

      it('caps units at maxUnits when more is affordable', async () => {
        const wallet = await fundedWallet(usd('1'));
        const result = await ledger.reserve(wallet, 'capped', fixedHold(5n, { perUnit: 2n, minUnits: 1, maxUnits: 4096 }));
        expect(result).toEqual({ status: 'reserved', amount: 5n + 2n * 4096n, units: 4096, replayed: false });
      });

      it('computes units exactly near 2^53', async () => {
        const wallet = await fundedWallet(MAX_LEDGER_AMOUNT);
        const result = await ledger.reserve(
          wallet,
          'near-limit',
          fixedHold(1n, { perUnit: 3n, minUnits: 0, maxUnits: Number.MAX_SAFE_INTEGER }),
        );

        // (2^53 - 1) / 3 = 3002399751580330.33, so 1 + 3 * 3002399751580330.
        expect(result).toEqual({ status: 'reserved', amount: 9007199254740991n, units: 3002399751580330, replayed: false });
      });

      it('reserves and spends exactly 2^53', async () => {
        const wallet = await fundedWallet(MAX_LEDGER_AMOUNT);
        const limits = { dailyCap: MAX_LEDGER_AMOUNT, monthlyCap: MAX_LEDGER_AMOUNT };

        expect(await ledger.reserve(wallet, 'most', fixedHold(MAX_LEDGER_AMOUNT - 1n, { limits }))).toEqual({
          status: 'reserved',
          amount: 9007199254740991n,
          units: 0,
          replayed: false,
        });
        // This hold brings reserved and both period counters to exactly 2^53.
        expect(await ledger.reserve(wallet, 'last', fixedHold(1n, { limits }))).toEqual({ status: 'reserved', amount: 1n, units: 0, replayed: false });
        expect(await ledger.reserve(wallet, 'over', fixedHold(1n, { limits }))).toEqual({
          status: 'limit_exceeded',
          limit: 'dailyCap',
          required: 1n,
          remaining: 0n,
        });
        expect((await ledger.state(wallet)).reserved).toBe(MAX_LEDGER_AMOUNT);

        await ledger.commit(wallet, 'most', usage(MAX_LEDGER_AMOUNT - 1n, MAX_LEDGER_AMOUNT - 1n));
        await ledger.commit(wallet, 'last', usage(1n, 1n));
        const state = await ledger.state(wallet);
        expect(state.spent).toBe(MAX_LEDGER_AMOUNT);
        expect(state.providerCost).toBe(MAX_LEDGER_AMOUNT);
        expect(state.reserved).toBe(0n);
        expect(state.available).toBe(0n);
        expect((await ledger.verify(wallet)).ok).toBe(true);
      });

      it('replays a retry with the same fingerprint', async () => {
        const wallet = await fundedWallet(1000n);
        const hold = fixedHold(0n, { fixed: 10n, perUnit: 3n, minUnits: 1, maxUnits: 100 });

        const first = await ledger.reserve(wallet, 'req', hold);
        expect(first).toEqual({ status: 'reserved', amount: 310n, units: 100, replayed: false });
        await ledger.credit(wallet, 'more', 5000n);
        // The replay returns the first hold even though the wallet could now afford more.
        expect(await ledger.reserve(wallet, 'req', { ...hold, maxUnits: 1000 })).toEqual({
          status: 'reserved',
          amount: 310n,
          units: 100,
          replayed: true,
        });

        const state = await ledger.state(wallet);
        expect(state.reserved).toBe(310n);
        expect(state.holds).toBe(1);
      });

      it('returns the hold of an exclusive id as its own', async () => {
        const wallet = await fundedWallet(1000n);
        const hold = fixedHold(0n, { fixed: 10n, perUnit: 3n, minUnits: 1, maxUnits: 100, fingerprint: '', exclusiveId: true });

        expect(await ledger.reserve(wallet, 'random-id', hold)).toEqual({ status: 'reserved', amount: 310n, units: 100, replayed: false });
        // The same call sent again, as a Redis client does after a lost connection: the hold is this call's, not another request's.
        expect(await ledger.reserve(wallet, 'random-id', hold)).toEqual({ status: 'reserved', amount: 310n, units: 100, replayed: false });

        const state = await ledger.state(wallet);
        expect(state.reserved).toBe(310n);
        expect(state.holds).toBe(1);
      });

      it('rejects a reused id with another fingerprint', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'req', fixedHold(100n, { fingerprint: 'first' }));

        expect(await ledger.reserve(wallet, 'req', fixedHold(100n, { fingerprint: 'second' }))).toEqual({
          status: 'conflict',
          reason: 'fingerprint_mismatch',
        });
        expect((await ledger.state(wallet)).reserved).toBe(100n);

        await ledger.commit(wallet, 'req', usage(60n));
        expect(await ledger.reserve(wallet, 'req', fixedHold(100n, { fingerprint: 'second' }))).toEqual({
          status: 'conflict',
          reason: 'fingerprint_mismatch',
        });
      });

      it('enforces maxPerRequest', async () => {
        const wallet = await fundedWallet(10_000n);
        const limits = { maxPerRequest: 500n };

        expect(await ledger.reserve(wallet, 'big', fixedHold(501n, { limits }))).toEqual({
          status: 'limit_exceeded',
          limit: 'maxPerRequest',
          required: 501n,
          remaining: 500n,
        });
        expect(await ledger.reserve(wallet, 'exact', fixedHold(500n, { limits }))).toEqual({
          status: 'reserved',
          amount: 500n,
          units: 0,
          replayed: false,
        });
        // Units are cut so that the hold fits the limit: (500 - 20) / 7 = 68.57.
        expect(await ledger.reserve(wallet, 'flex', fixedHold(20n, { perUnit: 7n, minUnits: 1, maxUnits: 10_000, limits }))).toEqual({
          status: 'reserved',
          amount: 496n,
          units: 68,
          replayed: false,
        });
      });

      it('enforces the daily cap on debits plus holds', async () => {
        const wallet = await fundedWallet(10_000n);
        const limits = { dailyCap: 500n };

        expect(await ledger.reserve(wallet, 'a', fixedHold(300n, { limits }))).toMatchObject({ status: 'reserved', amount: 300n });
        expect(await ledger.reserve(wallet, 'b', fixedHold(300n, { limits }))).toEqual({
          status: 'limit_exceeded',
          limit: 'dailyCap',
          required: 300n,
          remaining: 200n,
        });

        // Committing less than the hold frees the rest of the day's cap.
        await ledger.commit(wallet, 'a', usage(100n));
        expect(await ledger.reserve(wallet, 'b', fixedHold(300n, { limits }))).toMatchObject({ status: 'reserved', amount: 300n });
        // 100 debited + 300 held leave 100 of the cap; units are cut to fit it.
        expect(await ledger.reserve(wallet, 'c', fixedHold(0n, { perUnit: 30n, minUnits: 1, maxUnits: 100, limits }))).toEqual({
          status: 'reserved',
          amount: 90n,
          units: 3,
          replayed: false,
        });

        // A release returns its hold to the cap as well.
        await ledger.release(wallet, 'b');
        expect(await ledger.reserve(wallet, 'd', fixedHold(310n, { limits }))).toMatchObject({ status: 'reserved', amount: 310n });
        expect(await ledger.reserve(wallet, 'e', fixedHold(1n, { limits }))).toEqual({
          status: 'limit_exceeded',
          limit: 'dailyCap',
          required: 1n,
          remaining: 0n,
        });
      });

      it('enforces the monthly cap', async () => {
        const wallet = await fundedWallet(10_000n);
        const limits = { dailyCap: 5000n, monthlyCap: 700n };

        expect(await ledger.reserve(wallet, 'a', fixedHold(400n, { limits }))).toMatchObject({ status: 'reserved' });
        expect(await ledger.reserve(wallet, 'b', fixedHold(400n, { limits }))).toEqual({
          status: 'limit_exceeded',
          limit: 'monthlyCap',
          required: 400n,
          remaining: 300n,
        });
      });

      it('checks the limits before the funds', async () => {
        const wallet = await fundedWallet(10n);
        expect(await ledger.reserve(wallet, 'a', fixedHold(50n, { limits: { maxPerRequest: 20n } }))).toEqual({
          status: 'limit_exceeded',
          limit: 'maxPerRequest',
          required: 50n,
          remaining: 20n,
        });
      });

      it('counts caps per UTC day and month', async () => {
        let clock = Date.UTC(2025, 0, 31, 23, 59, 59, 900);
        const clocked = await makeLedger({ now: () => clock });
        try {
          const wallet = newWallet();
          // The holds outlive the clock's jumps, so that no reserve settles them as expired.
          await clocked.credit(wallet, 'initial', 10_000n);
          const limits = { dailyCap: 100n, monthlyCap: 150n };

          expect(await clocked.reserve(wallet, 'jan', longHold(100n, { limits }))).toMatchObject({ status: 'reserved' });
          expect(await clocked.reserve(wallet, 'jan-2', longHold(1n, { limits }))).toMatchObject({ limit: 'dailyCap' });

          // Midnight UTC starts a new day and a new month.
          clock = Date.UTC(2025, 1, 1, 0, 0, 0, 0);
          expect(await clocked.reserve(wallet, 'feb', longHold(100n, { limits }))).toMatchObject({ status: 'reserved' });
          clock = Date.UTC(2025, 1, 2, 12, 0, 0, 0);
          expect(await clocked.reserve(wallet, 'feb-2', longHold(60n, { limits }))).toEqual({
            status: 'limit_exceeded',
            limit: 'monthlyCap',
            required: 60n,
            remaining: 50n,
          });
        } finally {
          await clocked.quit();
        }
      });

      it('rejects new holds on a closed wallet', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'open', fixedHold(100n));
        await ledger.close(wallet);

        expect(await ledger.reserve(wallet, 'new', fixedHold(1n))).toEqual({ status: 'wallet_closed' });
        // An open hold still settles, and a retry of it still replays.
        expect(await ledger.reserve(wallet, 'open', fixedHold(100n))).toMatchObject({ status: 'reserved', replayed: true });
        expect(await ledger.commit(wallet, 'open', usage(40n))).toMatchObject({ status: 'committed', charged: 40n });

        const state = await ledger.state(wallet);
        expect(state.closed).toBe(true);
        expect(state.granted).toBe(1000n);
        expect(state.spent).toBe(40n);
        const verify = await ledger.verify(wallet);
        expect(verify.ok).toBe(true);
        expect(verify.entries).toBe(2);
      });

      it('admits holds again once reopened, with the balance it kept', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'before', fixedHold(100n));
        await ledger.commit(wallet, 'before', usage(40n));
        await ledger.close(wallet, 'USD');
        expect(await ledger.reopen(wallet, 'USD')).toEqual({ reopened: true });

        expect(await ledger.reserve(wallet, 'after', fixedHold(961n))).toEqual({ status: 'insufficient_funds', available: 960n, required: 961n });
        expect(await ledger.reserve(wallet, 'after', fixedHold(960n))).toEqual({ status: 'reserved', amount: 960n, units: 0, replayed: false });
        expect(await ledger.state(wallet)).toMatchObject({ closed: false, granted: 1000n, spent: 40n, reserved: 960n, available: 0n });
        // Reopening an open wallet changes nothing.
        expect(await ledger.reopen(wallet, 'EUR')).toEqual({ reopened: true });
        expect((await ledger.state(wallet)).closed).toBe(false);
      });

      it('stays closed for a wallet in another currency', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.close(wallet, 'USD');

        expect(await ledger.reopen(wallet, 'EUR')).toEqual({ reopened: false, closedCurrency: 'USD' });
        expect(await ledger.reserve(wallet, 'eur', fixedHold(1n))).toEqual({ status: 'wallet_closed' });
        // The currency it was closed with still reopens it; a wallet closed without one reopens in any.
        expect(await ledger.reopen(wallet, 'USD')).toEqual({ reopened: true });
        await ledger.close(wallet);
        expect(await ledger.reopen(wallet, 'EUR')).toEqual({ reopened: true });
        expect((await ledger.state(wallet)).closed).toBe(false);
      });

      it('rejects an invalid hold request', async () => {
        const wallet = await fundedWallet(1000n);
        await expect(ledger.reserve(wallet, 'bad', fixedHold(1n, { minUnits: 5, maxUnits: 4 }))).rejects.toThrow(RangeError);
        await expect(ledger.reserve(wallet, 'bad', fixedHold(-1n))).rejects.toThrow(RangeError);
        await expect(ledger.reserve(wallet, 'bad', fixedHold(1n, { ttlSeconds: 0 }))).rejects.toThrow(RangeError);
        await expect(ledger.reserve(wallet, '', fixedHold(1n))).rejects.toThrow(RangeError);
      });
    });

    describe('commit', () => {
      it('debits the charge and releases the remainder once', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'req', fixedHold(400n));

        expect(await ledger.commit(wallet, 'req', usage(150n, 90n))).toEqual({
          status: 'committed',
          charged: 150n,
          released: 250n,
          replayed: false,
        });
        // A repeated commit returns the first result, even with another amount.
        expect(await ledger.commit(wallet, 'req', usage(999n))).toEqual({
          status: 'committed',
          charged: 150n,
          released: 250n,
          replayed: true,
        });
        expect(await ledger.reserve(wallet, 'req', fixedHold(400n))).toEqual({ status: 'conflict', reason: 'already_settled' });

        const state = await ledger.state(wallet);
        expect(state.spent).toBe(150n);
        expect(state.reserved).toBe(0n);
        expect(state.balance).toBe(850n);
        expect(state.providerCost).toBe(90n);
        expect(state.holds).toBe(0);
      });

      it('debits a charge above the hold', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'req', fixedHold(100n));

        expect(await ledger.commit(wallet, 'req', usage(130n))).toEqual({ status: 'committed', charged: 130n, released: 0n, replayed: false });
        expect((await ledger.state(wallet)).spent).toBe(130n);
      });

      it('charges after the sweeper released the hold', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'req', fixedHold(100n));

        expect(await ledger.sweep(wallet, Date.now() + 3_600_000)).toEqual({ released: 1, charged: 0 });
        expect((await ledger.state(wallet)).reserved).toBe(0n);

        expect(await ledger.commit(wallet, 'req', usage(80n))).toEqual({ status: 'committed', charged: 80n, released: 0n, replayed: false });
        expect(await ledger.commit(wallet, 'req', usage(80n))).toEqual({ status: 'committed', charged: 80n, released: 0n, replayed: true });
        expect(await ledger.reserve(wallet, 'req', fixedHold(100n))).toEqual({ status: 'conflict', reason: 'already_settled' });

        const state = await ledger.state(wallet);
        expect(state.spent).toBe(80n);
        expect(state.reserved).toBe(0n);
        expect((await ledger.verify(wallet)).ok).toBe(true);
      });

      it('charges a request that was never reserved', async () => {
        const wallet = await fundedWallet(1000n);
        expect(await ledger.commit(wallet, 'unknown', usage(25n))).toEqual({ status: 'committed', charged: 25n, released: 0n, replayed: false });
        expect(await ledger.reserve(wallet, 'unknown', fixedHold(10n))).toEqual({ status: 'conflict', reason: 'already_settled' });
        expect((await ledger.state(wallet)).spent).toBe(25n);
      });

      it('conflicts after an explicit release', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'req', fixedHold(100n));

        expect(await ledger.release(wallet, 'req')).toEqual({ status: 'released', amount: 100n });
        expect(await ledger.commit(wallet, 'req', usage(50n))).toEqual({ status: 'conflict', reason: 'released' });

        const state = await ledger.state(wallet);
        expect(state.spent).toBe(0n);
        expect(state.reserved).toBe(0n);
      });

      it('rejects a negative charge', async () => {
        const wallet = await fundedWallet(1000n);
        await expect(ledger.commit(wallet, 'req', usage(-1n))).rejects.toThrow(RangeError);
      });
    });

    describe('release', () => {
      it('returns the hold and is idempotent', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'req', fixedHold(300n));

        expect(await ledger.release(wallet, 'req')).toEqual({ status: 'released', amount: 300n });
        expect(await ledger.release(wallet, 'req')).toEqual({ status: 'released', amount: 300n });
        const state = await ledger.state(wallet);
        expect(state.reserved).toBe(0n);
        expect(state.available).toBe(1000n);
      });

      it('lets a retry reserve again after a release', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'req', fixedHold(300n));
        await ledger.release(wallet, 'req');

        expect(await ledger.reserve(wallet, 'req', fixedHold(300n, { fingerprint: 'other' }))).toEqual({
          status: 'conflict',
          reason: 'fingerprint_mismatch',
        });
        expect(await ledger.reserve(wallet, 'req', fixedHold(300n))).toEqual({ status: 'reserved', amount: 300n, units: 0, replayed: false });
        expect(await ledger.commit(wallet, 'req', usage(120n))).toEqual({ status: 'committed', charged: 120n, released: 180n, replayed: false });
        expect((await ledger.state(wallet)).spent).toBe(120n);
      });

      it('reports already_committed and not_found', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'req', fixedHold(300n));
        await ledger.commit(wallet, 'req', usage(100n));

        expect(await ledger.release(wallet, 'req')).toEqual({ status: 'already_committed' });
        expect(await ledger.release(wallet, 'never-seen')).toEqual({ status: 'not_found' });
        expect((await ledger.state(wallet)).spent).toBe(100n);
      });

      it('records a release after the sweeper expired the hold', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'req', fixedHold(300n));
        await ledger.sweep(wallet, Date.now() + 3_600_000);

        expect(await ledger.release(wallet, 'req')).toEqual({ status: 'released', amount: 300n });
        expect(await ledger.commit(wallet, 'req', usage(100n))).toEqual({ status: 'conflict', reason: 'released' });
        expect((await ledger.state(wallet)).available).toBe(1000n);
      });
    });

    describe('sweep', () => {
      it('releases unanswered holds and charges answered ones', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'answered', fixedHold(100n));
        await ledger.reserve(wallet, 'silent', fixedHold(200n));
        await ledger.reserve(wallet, 'later', fixedHold(50n, { ttlSeconds: 7200 }));
        await ledger.markAnswered(wallet, 'answered');
        await ledger.markAnswered(wallet, 'no-such-hold');

        expect(await ledger.sweep(wallet, Date.now())).toEqual({ released: 0, charged: 0 });
        expect(await ledger.sweep(wallet, Date.now() + 3_600_000)).toEqual({ released: 1, charged: 1 });

        const state = await ledger.state(wallet);
        expect(state.spent).toBe(100n);
        // The sweeper does not know the answered call's provider cost, so its charge stays outside the margin.
        expect(state.chargedWithoutCost).toBe(100n);
        expect(state.providerCost).toBe(0n);
        expect(state.reserved).toBe(50n);
        expect(state.holds).toBe(1);
        expect(await ledger.release(wallet, 'answered')).toEqual({ status: 'already_committed' });
        // The unanswered hold was released without a charge, and the conflict says so.
        expect(await ledger.reserve(wallet, 'silent', fixedHold(200n))).toEqual({ status: 'conflict', reason: 'already_settled', uncharged: true });

        const verify = await ledger.verify(wallet);
        expect(verify.ok).toBe(true);
        expect(verify.spent).toBe(100n);
      });

      it('lets a late commit correct an expire-charge', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'req', fixedHold(100n));
        await ledger.markAnswered(wallet, 'req');
        await ledger.sweep(wallet, Date.now() + 3_600_000);
        expect(await ledger.state(wallet)).toMatchObject({ spent: 100n, chargedWithoutCost: 100n });

        expect(await ledger.commit(wallet, 'req', usage(30n, 20n))).toEqual({ status: 'committed', charged: 30n, released: 0n, replayed: false });
        const state = await ledger.state(wallet);
        expect(state.spent).toBe(30n);
        expect(state.providerCost).toBe(20n);
        // The commit priced the call.
        expect(state.chargedWithoutCost).toBe(0n);
        // A replay of the commit changes nothing.
        expect(await ledger.commit(wallet, 'req', usage(30n, 20n))).toMatchObject({ status: 'committed', replayed: true });
        expect((await ledger.state(wallet)).chargedWithoutCost).toBe(0n);

        const verify = await ledger.verify(wallet);
        expect(verify.ok).toBe(true);
        expect(verify.spent).toBe(30n);
        expect(verify.entries).toBe(3);
      });

      it('runs on reserve for expired holds', async () => {
        const wallet = await fundedWallet(1000n);
        await ledger.reserve(wallet, 'short', fixedHold(1000n, { ttlSeconds: 0.001 }));
        // Let the one-millisecond hold expire; the next reserve settles it first.
        await new Promise((resolve) => setTimeout(resolve, 20));

        expect(await ledger.reserve(wallet, 'next', fixedHold(1000n))).toMatchObject({ status: 'reserved', amount: 1000n });
        expect(await ledger.reserve(wallet, 'short', fixedHold(1000n, { ttlSeconds: 0.001 }))).toEqual({
          status: 'conflict',
          reason: 'already_settled',
          uncharged: true,
        });
      });
    });

    describe('grant expiry', () => {
      /** Reserves and commits `amount` under `requestId`, and checks that both succeed. */
      const spend = async (wallet: WalletKey, requestId: string, amount: bigint, charged = amount): Promise<void> => {
        expect(await ledger.reserve(wallet, requestId, longHold(amount))).toMatchObject({ status: 'reserved', amount });
        expect(await ledger.commit(wallet, requestId, usage(charged))).toMatchObject({ status: 'committed', charged });
      };

      it('lapses an unused grant in full', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n);
        expect(await ledger.credit(wallet, 'promo', 300n, { reason: 'launch', expiresAtMs })).toEqual({
          status: 'credited',
          replayed: false,
          balance: 1300n,
          amount: 300n,
        });

        // The expiry is inclusive: a sweep one millisecond before it changes nothing.
        expect(await ledger.sweep(wallet, expiresAtMs - 1)).toEqual({ released: 0, charged: 0 });
        expect((await ledger.state(wallet)).balance).toBe(1300n);
        expect(await ledger.sweep(wallet, expiresAtMs)).toEqual({ released: 0, charged: 0 });

        expect(await ledger.state(wallet)).toEqual({
          granted: 1300n,
          spent: 0n,
          expired: 300n,
          reserved: 0n,
          balance: 1000n,
          available: 1000n,
          providerCost: 0n,
          chargedWithoutCost: 0n,
          holds: 0,
          closed: false,
        });
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 1300n, spent: 0n, expired: 300n, entries: 3, problems: [] });

        // A second sweep finds nothing left to lapse.
        await ledger.sweep(wallet, expiresAtMs + HOUR_MS);
        expect((await ledger.state(wallet)).expired).toBe(300n);
        expect((await ledger.verify(wallet)).entries).toBe(3);
      });

      it('lapses only the rest of a partly spent grant', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n);
        await ledger.credit(wallet, 'promo', 300n, { expiresAtMs });
        // A charge above its hold counts in full.
        await spend(wallet, 'a', 100n, 120n);

        await ledger.sweep(wallet, expiresAtMs);
        const state = await ledger.state(wallet);
        expect(state.spent).toBe(120n);
        expect(state.expired).toBe(180n);
        expect(state.balance).toBe(1000n);
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 1300n, spent: 120n, expired: 180n, entries: 4, problems: [] });
      });

      it('spends expiring grants first, earliest expiry first', async () => {
        const wallet = newWallet();
        const earlyMs = Date.now() + HOUR_MS;
        const lateMs = earlyMs + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n);
        await ledger.credit(wallet, 'late', 200n, { expiresAtMs: lateMs });
        await ledger.credit(wallet, 'early', 100n, { expiresAtMs: earlyMs });
        // 250 uses all of "early" and 150 of "late"; the paid grant stays whole.
        await spend(wallet, 'a', 200n);
        await spend(wallet, 'b', 50n);

        await ledger.sweep(wallet, earlyMs);
        let state = await ledger.state(wallet);
        expect(state.expired).toBe(0n);
        expect(state.balance).toBe(1050n);

        await ledger.sweep(wallet, lateMs);
        state = await ledger.state(wallet);
        expect(state.expired).toBe(50n);
        expect(state.balance).toBe(1000n);
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 1300n, spent: 250n, expired: 50n, entries: 7, problems: [] });
      });

      it('spends a new grant only after one that expires earlier', async () => {
        const wallet = newWallet();
        const earlyMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'first', 100n, { expiresAtMs: earlyMs + HOUR_MS });
        // 60 is attributed to "first" before "second" exists.
        await spend(wallet, 'a', 60n);
        await ledger.credit(wallet, 'second', 100n, { expiresAtMs: earlyMs });
        await ledger.credit(wallet, 'paid', 500n);
        // "second" expires earlier, so it pays the next 70 in full.
        await spend(wallet, 'b', 70n);

        await ledger.sweep(wallet, earlyMs);
        expect((await ledger.state(wallet)).expired).toBe(30n);
        await ledger.sweep(wallet, earlyMs + HOUR_MS);
        const state = await ledger.state(wallet);
        expect(state.expired).toBe(70n);
        expect(state.balance).toBe(500n);
        expect((await ledger.verify(wallet)).ok).toBe(true);
      });

      it('never takes back what an open hold promised', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'paid', 100n);
        await ledger.credit(wallet, 'promo', 300n, { expiresAtMs });
        // The hold outlives the sweep below.
        expect(await ledger.reserve(wallet, 'held', longHold(250n))).toMatchObject({ status: 'reserved', amount: 250n });

        // The hold draws on the promo first, so 250 of it waits for the hold and 50 lapses; the paid 100 stays free.
        await ledger.sweep(wallet, expiresAtMs);
        let state = await ledger.state(wallet);
        expect(state.expired).toBe(50n);
        expect(state.balance).toBe(350n);
        expect(state.reserved).toBe(250n);
        expect(state.available).toBe(100n);

        // The promo pays the whole charge, and nothing is left of it to lapse.
        expect(await ledger.commit(wallet, 'held', usage(250n))).toEqual({ status: 'committed', charged: 250n, released: 0n, replayed: false });
        state = await ledger.state(wallet);
        expect(state.balance).toBe(100n);
        expect(state.expired).toBe(50n);
        expect(state.spent).toBe(250n);
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 400n, spent: 250n, expired: 50n, entries: 4, problems: [] });
      });

      it('lapses what a covering hold did not charge when it settles', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'paid', 100n);
        await ledger.credit(wallet, 'promo', 300n, { expiresAtMs });
        await ledger.reserve(wallet, 'held', longHold(250n));
        await ledger.sweep(wallet, expiresAtMs);

        // A hold placed after the expiry is paid from the paid funds, and covers no lapsed grant.
        expect(await ledger.reserve(wallet, 'after', longHold(100n))).toMatchObject({ status: 'reserved', amount: 100n });
        expect(await ledger.commit(wallet, 'held', usage(30n))).toEqual({ status: 'committed', charged: 30n, released: 220n, replayed: false });
        let state = await ledger.state(wallet);
        expect(state.spent).toBe(30n);
        expect(state.expired).toBe(270n);
        expect(state.balance).toBe(100n);
        expect(state.available).toBe(0n);

        // Settling the later hold lapses nothing more.
        await ledger.commit(wallet, 'after', usage(100n));
        state = await ledger.state(wallet);
        expect(state.expired).toBe(270n);
        expect(state.balance).toBe(0n);

        const entries: Record<string, string>[] = [];
        for await (const entry of ledger.entries(wallet)) entries.push(entry.fields);
        expect(entries.filter((fields) => fields['type'] === 'expire')).toEqual([
          { type: 'expire', id: 'promo', amount: '50' },
          { type: 'expire', id: 'promo', amount: '220' },
        ]);
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 400n, spent: 130n, expired: 270n, entries: 6, problems: [] });
      });

      it('lapses the whole cover of a released hold', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'promo', 300n, { expiresAtMs });
        await ledger.reserve(wallet, 'held', longHold(250n));
        await ledger.sweep(wallet, expiresAtMs);
        expect((await ledger.state(wallet)).expired).toBe(50n);

        expect(await ledger.release(wallet, 'held')).toEqual({ status: 'released', amount: 250n });
        const state = await ledger.state(wallet);
        expect(state.expired).toBe(300n);
        expect(state.balance).toBe(0n);
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 300n, spent: 0n, expired: 300n, entries: 3, problems: [] });
      });

      it('settles the cover of holds the sweeper expires', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n);
        await ledger.credit(wallet, 'promo', 100n, { expiresAtMs });
        // Both holds expire two hours after the promo.
        await ledger.reserve(wallet, 'answered', fixedHold(60n, { ttlSeconds: 3 * 3600 }));
        await ledger.reserve(wallet, 'silent', fixedHold(70n, { ttlSeconds: 3 * 3600 }));
        await ledger.sweep(wallet, expiresAtMs);
        expect((await ledger.state(wallet)).expired).toBe(0n);

        // Flagging the answer after the lapse keeps the hold's cover.
        await ledger.markAnswered(wallet, 'answered');
        expect(await ledger.sweep(wallet, expiresAtMs + 3 * HOUR_MS)).toEqual({ released: 1, charged: 1 });
        const state = await ledger.state(wallet);
        // The promo paid the expire-charge of 60, and its other 40 lapsed; the paid grant is whole.
        expect(state.spent).toBe(60n);
        expect(state.expired).toBe(40n);
        expect(state.balance).toBe(1000n);
        expect(state.reserved).toBe(0n);
        expect((await ledger.verify(wallet)).ok).toBe(true);
      });

      it('lapses what a late commit takes off an expire-charge of lapsed credit', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n);
        await ledger.credit(wallet, 'promo', 100n, { expiresAtMs });
        await spend(wallet, 'before', 70n);
        // An answered hold of 60 open across the expiry covers the promo's last 30, then the sweeper charges it in full.
        await ledger.reserve(wallet, 'late', fixedHold(60n, { ttlSeconds: 3 * 3600 }));
        await ledger.markAnswered(wallet, 'late');
        await ledger.sweep(wallet, expiresAtMs);
        expect(await ledger.sweep(wallet, expiresAtMs + 4 * HOUR_MS)).toEqual({ released: 0, charged: 1 });
        expect((await ledger.state(wallet)).balance).toBe(970n);

        // The call cost 10: the promo pays it, its other 20 lapse, and the paid grant gets back its 30.
        await ledger.commit(wallet, 'late', usage(10n));
        const state = await ledger.state(wallet);
        expect(state.spent).toBe(80n);
        expect(state.expired).toBe(20n);
        expect(state.balance).toBe(1000n);
        expect(await ledger.verify(wallet)).toMatchObject({ ok: true, granted: 1100n, spent: 80n, expired: 20n });
      });

      it('charges a hold only from grants that were live when it was placed', async () => {
        const wallet = newWallet();
        const earlyMs = Date.now() + HOUR_MS;
        const lateMs = earlyMs + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n);
        await ledger.credit(wallet, 'early', 100n, { expiresAtMs: earlyMs });
        await ledger.credit(wallet, 'late', 30n, { expiresAtMs: lateMs });
        await ledger.reserve(wallet, 'first', longHold(100n));
        await ledger.sweep(wallet, earlyMs);
        // Placed after "early" lapsed, this hold may be charged from "late" and the paid grant only.
        await ledger.reserve(wallet, 'second', longHold(50n));
        await ledger.sweep(wallet, lateMs);

        // "late" pays 30 of the 50, the paid grant 20; releasing the first hold lapses all of "early".
        await ledger.commit(wallet, 'second', usage(50n));
        await ledger.release(wallet, 'first');
        const state = await ledger.state(wallet);
        expect(state.spent).toBe(50n);
        expect(state.expired).toBe(100n);
        expect(state.balance).toBe(980n);
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 1130n, spent: 50n, expired: 100n, entries: 7, problems: [] });
      });

      it('covers grants that lapse at different times with the holds open at each', async () => {
        const wallet = newWallet();
        const earlyMs = Date.now() + HOUR_MS;
        const lateMs = earlyMs + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n);
        await ledger.credit(wallet, 'early', 100n, { expiresAtMs: earlyMs });
        await ledger.credit(wallet, 'late', 100n, { expiresAtMs: lateMs });
        await ledger.reserve(wallet, 'held', longHold(150n));

        // At the first expiry the hold covers all of "early"; at the second, the 50 it has left covers half of "late".
        await ledger.sweep(wallet, earlyMs);
        expect((await ledger.state(wallet)).expired).toBe(0n);
        await ledger.sweep(wallet, lateMs);
        expect((await ledger.state(wallet)).expired).toBe(50n);

        // A charge of 120 takes all of "early" and 20 of "late", whose other 30 lapses.
        await ledger.commit(wallet, 'held', usage(120n));
        const state = await ledger.state(wallet);
        expect(state.spent).toBe(120n);
        expect(state.expired).toBe(80n);
        expect(state.balance).toBe(1000n);
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 1200n, spent: 120n, expired: 80n, entries: 7, problems: [] });
      });

      it('takes back nothing from an overdrawn wallet', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'promo', 100n, { expiresAtMs });
        // A commit without a hold may overdraw the wallet.
        await ledger.commit(wallet, 'unreserved', usage(150n));
        await ledger.sweep(wallet, expiresAtMs);

        const state = await ledger.state(wallet);
        expect(state.expired).toBe(0n);
        expect(state.balance).toBe(-50n);
        expect((await ledger.verify(wallet)).entries).toBe(3);
      });

      it('rejects a hold only a lapsed grant funds', async () => {
        const wallet = newWallet();
        // Reserve reads the ledger's clock, so this grant really expires half a second from now.
        const expiresAtMs = Date.now() + 500;
        await ledger.credit(wallet, 'paid', 100n);
        await ledger.credit(wallet, 'promo', 1000n, { expiresAtMs });
        await spend(wallet, 'before', 400n);
        await waitUntilPast(expiresAtMs);

        // No sweep ran: state reads the grant as live, and the reserve lapses it before its funds check.
        expect((await ledger.state(wallet)).available).toBe(700n);
        expect(await ledger.reserve(wallet, 'after', fixedHold(101n))).toEqual({ status: 'insufficient_funds', available: 100n, required: 101n });
        expect(await ledger.reserve(wallet, 'fits', fixedHold(100n))).toEqual({ status: 'reserved', amount: 100n, units: 0, replayed: false });

        const state = await ledger.state(wallet);
        expect(state.expired).toBe(600n);
        expect(state.balance).toBe(100n);
        expect(state.available).toBe(0n);
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 1100n, spent: 400n, expired: 600n, entries: 4, problems: [] });
      });

      it('lapses on a sweep by the ledger clock', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + 500;
        await ledger.credit(wallet, 'promo', 80n, { expiresAtMs });
        await waitUntilPast(expiresAtMs);

        expect(await ledger.sweep(wallet)).toEqual({ released: 0, charged: 0 });
        const state = await ledger.state(wallet);
        expect(state.expired).toBe(80n);
        expect(state.balance).toBe(0n);
      });

      it('replays an expiring grant by its id', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        expect(await ledger.credit(wallet, 'promo', 300n, { expiresAtMs })).toEqual({ status: 'credited', replayed: false, balance: 300n, amount: 300n });
        // A replay keeps the first amount and expiry.
        expect(await ledger.credit(wallet, 'promo', 999n, { expiresAtMs: expiresAtMs + HOUR_MS })).toEqual({
          status: 'credited',
          replayed: true,
          balance: 300n,
          amount: 300n,
        });
        expect(await ledger.credit(wallet, 'promo', 300n)).toEqual({ status: 'credited', replayed: true, balance: 300n, amount: 300n });

        await ledger.sweep(wallet, expiresAtMs);
        expect((await ledger.state(wallet)).expired).toBe(300n);
        // After the lapse, and even with an expiry in the past, the id still replays.
        expect(await ledger.credit(wallet, 'promo', 300n, { expiresAtMs: Date.now() - HOUR_MS })).toEqual({
          status: 'credited',
          replayed: true,
          balance: 0n,
          amount: 300n,
        });
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 300n, spent: 0n, expired: 300n, entries: 2, problems: [] });
      });

      it('attributes expire-charges and their corrections', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n);
        await ledger.credit(wallet, 'promo', 100n, { expiresAtMs });
        await ledger.reserve(wallet, 'answered', fixedHold(80n));
        await ledger.markAnswered(wallet, 'answered');

        // The sweep charges the expired hold at 80 before it lapses the promo, so 20 is taken back.
        expect(await ledger.sweep(wallet, expiresAtMs)).toEqual({ released: 0, charged: 1 });
        let state = await ledger.state(wallet);
        expect(state.spent).toBe(80n);
        expect(state.expired).toBe(20n);
        expect(state.balance).toBe(1000n);

        // A late commit lowers the charge to 30; the 50 returned are funds without expiry.
        await ledger.commit(wallet, 'answered', usage(30n));
        state = await ledger.state(wallet);
        expect(state.spent).toBe(30n);
        expect(state.balance).toBe(1050n);
        expect((await ledger.verify(wallet)).ok).toBe(true);
      });

      it('nets a correction against charges not yet attributed', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n);
        await ledger.credit(wallet, 'promo', 100n, { expiresAtMs });
        await ledger.reserve(wallet, 'answered', fixedHold(80n));
        await ledger.markAnswered(wallet, 'answered');

        // The hold expires long before the promo; the late commit lowers its charge from 80 to 30.
        expect(await ledger.sweep(wallet, expiresAtMs - HOUR_MS + 120_000)).toEqual({ released: 0, charged: 1 });
        await ledger.commit(wallet, 'answered', usage(30n));
        await ledger.sweep(wallet, expiresAtMs);

        const state = await ledger.state(wallet);
        expect(state.spent).toBe(30n);
        expect(state.expired).toBe(70n);
        expect(state.balance).toBe(1000n);
        expect((await ledger.verify(wallet)).ok).toBe(true);
      });

      it('lapses a grant of 2^53 exactly', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'promo', MAX_LEDGER_AMOUNT, { expiresAtMs });
        await spend(wallet, 'a', 1n);
        await ledger.sweep(wallet, expiresAtMs);

        const state = await ledger.state(wallet);
        expect(state.expired).toBe(MAX_LEDGER_AMOUNT - 1n);
        expect(state.balance).toBe(0n);
        expect(await ledger.verify(wallet)).toEqual({
          ok: true,
          granted: MAX_LEDGER_AMOUNT,
          spent: 1n,
          expired: 9007199254740991n,
          entries: 3,
          problems: [],
        });
      });

      it('rejects a grant whose expiry has passed', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() - 1000;

        const error = await ledger.credit(wallet, 'stale', 100n, { expiresAtMs }).catch((caught: unknown) => caught);
        expect(error).toBeInstanceOf(GrantExpiredError);
        expect((error as GrantExpiredError).grantId).toBe('stale');
        expect((error as GrantExpiredError).expiresAtMs).toBe(expiresAtMs);
        expect((error as Error).message).toContain(`grant "stale" to wallet ${wallet.namespace}/${wallet.name} expires at ${new Date(expiresAtMs).toISOString()}`);
        expect(await ledger.state(wallet)).toMatchObject({ granted: 0n, balance: 0n });
        expect((await ledger.verify(wallet)).entries).toBe(0);

        await expect(ledger.credit(wallet, 'fraction', 100n, { expiresAtMs: Date.now() + 0.5 })).rejects.toThrow(RangeError);
        await expect(ledger.credit(wallet, 'negative', 100n, { expiresAtMs: -1 })).rejects.toThrow(RangeError);
      });

      it('keeps a grant without expiry forever', async () => {
        const wallet = newWallet();
        expect(await ledger.credit(wallet, 'g', 100n, { reason: 'welcome' })).toEqual({ status: 'credited', replayed: false, balance: 100n, amount: 100n });
        await ledger.sweep(wallet, Date.now() + 100 * 365 * 24 * HOUR_MS);
        expect((await ledger.state(wallet)).balance).toBe(100n);
      });
    });

    describe('retention of settled records', () => {
      const RETENTION_MS = 3 * HOUR_MS;

      /** Runs `body` with a ledger whose clock is `clock.ms` and whose settled records are kept for RETENTION_MS. */
      const withClock = async (startMs: number, body: (clocked: Ledger, clock: { ms: number }) => Promise<void>): Promise<void> => {
        const clock = { ms: startMs };
        const clocked = await makeLedger({ now: () => clock.ms, settledRetentionMs: RETENTION_MS });
        try {
          await body(clocked, clock);
        } finally {
          await clocked.quit();
        }
      };

      it('replays within the window and forgets after it', async () => {
        await withClock(Date.now(), async (clocked, clock) => {
          const wallet = newWallet();
          await clocked.credit(wallet, 'initial', 1000n);
          const committedAt = clock.ms;
          expect(await clocked.reserve(wallet, 'req', longHold(100n))).toMatchObject({ status: 'reserved', replayed: false });
          expect(await clocked.commit(wallet, 'req', usage(60n))).toEqual({ status: 'committed', charged: 60n, released: 40n, replayed: false });

          // One millisecond before the end of the window every retry still gets the first result.
          expect(await clocked.sweep(wallet, committedAt + RETENTION_MS - 1)).toEqual({ released: 0, charged: 0 });
          expect(await clocked.commit(wallet, 'req', usage(999n))).toEqual({ status: 'committed', charged: 60n, released: 40n, replayed: true });
          expect(await clocked.reserve(wallet, 'req', longHold(100n))).toEqual({ status: 'conflict', reason: 'already_settled' });
          expect(await clocked.release(wallet, 'req')).toEqual({ status: 'already_committed' });

          // At the end of the window the record is removed, and the id is new again.
          expect(await clocked.sweep(wallet, committedAt + RETENTION_MS)).toEqual({ released: 0, charged: 0 });
          expect(await clocked.release(wallet, 'req')).toEqual({ status: 'not_found' });
          expect(await clocked.reserve(wallet, 'req', longHold(100n))).toEqual({ status: 'reserved', amount: 100n, units: 0, replayed: false });
          expect(await clocked.commit(wallet, 'req', usage(60n))).toEqual({ status: 'committed', charged: 60n, released: 40n, replayed: false });

          const state = await clocked.state(wallet);
          expect(state.spent).toBe(120n);
          expect(state.reserved).toBe(0n);
          expect(await clocked.verify(wallet)).toEqual({ ok: true, granted: 1000n, spent: 120n, expired: 0n, entries: 3, problems: [] });
        });
      });

      it('removes at most 16 due records per reserve', async () => {
        // Records committed this long ago are past their window by an hour.
        await withClock(Date.now() - RETENTION_MS - HOUR_MS, async (clocked, clock) => {
          const wallet = newWallet();
          await clocked.credit(wallet, 'initial', 10_000n);
          const ids = Array.from({ length: 40 }, (_, i) => `r-${String(i).padStart(2, '0')}`);
          // All holds first: a reserve also settles due members, and the commits make them due.
          for (const id of ids) expect(await clocked.reserve(wallet, id, longHold(10n))).toMatchObject({ status: 'reserved' });
          for (const id of ids) expect(await clocked.commit(wallet, id, usage(10n))).toMatchObject({ replayed: false });

          // The records share one deadline, so the reserve removes the 16 first ids in byte order.
          clock.ms = Date.now();
          expect(await clocked.reserve(wallet, 'next', longHold(10n))).toMatchObject({ status: 'reserved', replayed: false });
          const replays = [];
          for (const id of ids) replays.push((await clocked.commit(wallet, id, usage(10n))) as { replayed: boolean });
          expect(replays.filter((result) => !result.replayed).length).toBe(16);
          expect(replays.slice(0, 16).every((result) => !result.replayed)).toBe(true);
          expect(replays.slice(16).every((result) => result.replayed)).toBe(true);
          expect((await clocked.state(wallet)).spent).toBe(560n);

          // A sweep removes every due record, however many.
          await clocked.sweep(wallet);
          expect(await clocked.commit(wallet, 'r-16', usage(10n))).toMatchObject({ replayed: false });
          expect(await clocked.commit(wallet, 'r-39', usage(10n))).toMatchObject({ replayed: false });
          // The 16 ids committed again a moment ago are inside their new window.
          expect(await clocked.commit(wallet, 'r-00', usage(10n))).toMatchObject({ replayed: true });
          expect((await clocked.state(wallet)).spent).toBe(580n);
          expect((await clocked.verify(wallet)).ok).toBe(true);
        });
      });

      it('keeps the commit of a swept hold for a window', async () => {
        await withClock(Date.now(), async (clocked, clock) => {
          const wallet = newWallet();
          await clocked.credit(wallet, 'initial', 1000n);
          expect(await clocked.reserve(wallet, 'late', fixedHold(100n))).toMatchObject({ status: 'reserved' });

          // The hold expires after a minute, and the sweeper releases it an hour later.
          const sweptAt = clock.ms + HOUR_MS;
          expect(await clocked.sweep(wallet, sweptAt)).toEqual({ released: 1, charged: 0 });
          clock.ms = sweptAt;
          expect(await clocked.commit(wallet, 'late', usage(80n))).toEqual({ status: 'committed', charged: 80n, released: 0n, replayed: false });

          await clocked.sweep(wallet, sweptAt + RETENTION_MS - 1);
          expect(await clocked.commit(wallet, 'late', usage(80n))).toEqual({ status: 'committed', charged: 80n, released: 0n, replayed: true });
          expect((await clocked.state(wallet)).spent).toBe(80n);

          // After the window a retry of the commit is a new request and is billed again.
          await clocked.sweep(wallet, sweptAt + RETENTION_MS);
          expect(await clocked.commit(wallet, 'late', usage(80n))).toEqual({ status: 'committed', charged: 80n, released: 0n, replayed: false });
          expect((await clocked.state(wallet)).spent).toBe(160n);
          expect((await clocked.verify(wallet)).ok).toBe(true);
        });
      });

      it('counts the window of an expired hold from the sweep', async () => {
        await withClock(Date.now(), async (clocked, clock) => {
          const wallet = newWallet();
          await clocked.credit(wallet, 'initial', 1000n);
          await clocked.reserve(wallet, 'silent', fixedHold(100n));
          const sweptAt = clock.ms + HOUR_MS;
          expect(await clocked.sweep(wallet, sweptAt)).toEqual({ released: 1, charged: 0 });

          await clocked.sweep(wallet, sweptAt + RETENTION_MS - 1);
          expect(await clocked.reserve(wallet, 'silent', fixedHold(100n))).toEqual({ status: 'conflict', reason: 'already_settled', uncharged: true });
          await clocked.sweep(wallet, sweptAt + RETENTION_MS);
          expect(await clocked.reserve(wallet, 'silent', fixedHold(100n))).toEqual({ status: 'reserved', amount: 100n, units: 0, replayed: false });
          expect((await clocked.state(wallet)).reserved).toBe(100n);
        });
      });

      it('forgets a released request after the window', async () => {
        await withClock(Date.now(), async (clocked, clock) => {
          const wallet = newWallet();
          await clocked.credit(wallet, 'initial', 1000n);
          await clocked.reserve(wallet, 'refused', longHold(100n));
          const releasedAt = clock.ms;
          expect(await clocked.release(wallet, 'refused')).toEqual({ status: 'released', amount: 100n });

          await clocked.sweep(wallet, releasedAt + RETENTION_MS - 1);
          expect(await clocked.commit(wallet, 'refused', usage(30n))).toEqual({ status: 'conflict', reason: 'released' });
          expect(await clocked.release(wallet, 'refused')).toEqual({ status: 'released', amount: 100n });

          // Without the record, a commit under the id is charged like one that was never reserved.
          await clocked.sweep(wallet, releasedAt + RETENTION_MS);
          expect(await clocked.release(wallet, 'refused')).toEqual({ status: 'not_found' });
          expect(await clocked.commit(wallet, 'refused', usage(30n))).toEqual({ status: 'committed', charged: 30n, released: 0n, replayed: false });
          expect((await clocked.state(wallet)).spent).toBe(30n);
        });
      });
    });

    describe('compaction', () => {
      /** Returns every entry of the wallet's stream, read in pages of `pageSize`. */
      const allEntries = async (wallet: WalletKey, options: EntriesOptions = {}): Promise<LedgerEntry[]> => {
        const entries: LedgerEntry[] = [];
        for await (const entry of ledger.entries(wallet, options)) entries.push(entry);
        return entries;
      };

      it('folds part of a history and verifies the same totals', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n, { reason: 'top-up' });
        await ledger.credit(wallet, 'promo', 300n, { expiresAtMs });
        await ledger.reserve(wallet, 'a', longHold(200n));
        await ledger.commit(wallet, 'a', usage(120n, 70n));
        await ledger.reserve(wallet, 'b', fixedHold(100n));
        await ledger.markAnswered(wallet, 'b');
        expect(await ledger.sweep(wallet, Date.now() + 120_000)).toEqual({ released: 0, charged: 1 });
        // A late commit lowers the expire-charge of 100 to 30: a debit entry of -70.
        await ledger.commit(wallet, 'b', usage(30n, 20n));
        const cutoff = Date.now();
        await waitUntilPast(cutoff);

        await ledger.sweep(wallet, expiresAtMs);
        await ledger.commit(wallet, 'unreserved', usage(50n, 40n));
        await ledger.reserve(wallet, 'open', longHold(25n));

        const before = await ledger.verify(wallet);
        const stateBefore = await ledger.state(wallet);
        const entriesBefore = await allEntries(wallet);
        expect(before).toEqual({ ok: true, granted: 1300n, spent: 200n, expired: 150n, entries: 7, problems: [] });
        expect(entriesBefore.map((entry) => entry.fields['type'])).toEqual(['grant', 'grant', 'debit', 'expire-charge', 'debit', 'expire', 'debit']);

        expect(await ledger.compact(wallet, cutoff + 1)).toEqual({
          folded: 5,
          checkpoint: { granted: 1300n, spent: 150n, expired: 0n, providerCost: 90n, entries: 5, lastId: entriesBefore[4]!.id },
        });

        expect(await ledger.entries(wallet)[Symbol.asyncIterator]().next()).toEqual({ done: false, value: entriesBefore[5] });
        expect(await allEntries(wallet)).toEqual(entriesBefore.slice(5));
        expect(await ledger.state(wallet)).toEqual(stateBefore);
        const after = await ledger.verify(wallet);
        expect(after).toEqual({
          ...before,
          checkpoint: { granted: 1300n, spent: 150n, expired: 0n, providerCost: 90n, entries: 5, lastId: entriesBefore[4]!.id },
        });

        // A folded grant still replays with its first amount.
        expect(await ledger.credit(wallet, 'paid', 5n)).toEqual({ status: 'credited', replayed: true, balance: 950n, amount: 1000n });

        // Later entries verify on top of the checkpoint.
        await ledger.commit(wallet, 'open', usage(25n, 5n));
        expect(await ledger.verify(wallet)).toMatchObject({ ok: true, granted: 1300n, spent: 225n, expired: 150n, entries: 8, problems: [] });
      });

      it('leaves an empty or compacted stream as it is', async () => {
        const wallet = newWallet();
        expect(await ledger.compact(wallet, Date.now() + 1)).toEqual({ folded: 0, checkpoint: undefined });
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 0n, spent: 0n, expired: 0n, entries: 0, problems: [] });

        await ledger.credit(wallet, 'g', 100n);
        const first = await ledger.compact(wallet, Date.now() + 1);
        expect(first).toMatchObject({ folded: 1, checkpoint: { granted: 100n, spent: 0n, expired: 0n, providerCost: 0n, entries: 1 } });
        expect(await ledger.compact(wallet, Date.now() + 1)).toEqual({ folded: 0, checkpoint: first.checkpoint });
        // An earlier cutoff than the checkpoint's last entry folds nothing either.
        expect(await ledger.compact(wallet, 0)).toEqual({ folded: 0, checkpoint: first.checkpoint });
        expect(await allEntries(wallet)).toEqual([]);
        expect(await ledger.verify(wallet)).toEqual({
          ok: true,
          granted: 100n,
          spent: 0n,
          expired: 0n,
          entries: 1,
          problems: [],
          checkpoint: first.checkpoint,
        });

        // The stream goes on after the checkpoint.
        await ledger.credit(wallet, 'g-2', 50n);
        const [next] = await allEntries(wallet);
        expect(next!.fields).toEqual({ type: 'grant', id: 'g-2', amount: '50', reason: '' });
        expect(compareEntryIds(next!.id, first.checkpoint!.lastId)).toBe(1);
        expect(await ledger.verify(wallet)).toMatchObject({ ok: true, granted: 150n, entries: 2 });
      });

      it('folds a history of 2,501 entries', { timeout: 60_000 }, async () => {
        const wallet = await fundedWallet(10_000n);
        for (let i = 0; i < 2500; i += 1) await ledger.commit(wallet, `r-${i}`, usage(3n, 2n));

        const result = await ledger.compact(wallet, Date.now() + 1);
        expect(result).toMatchObject({ folded: 2501, checkpoint: { granted: 10_000n, spent: 7500n, expired: 0n, providerCost: 5000n, entries: 2501 } });
        expect(await ledger.verify(wallet)).toMatchObject({ ok: true, granted: 10_000n, spent: 7500n, entries: 2501, problems: [] });
      });

      it('rejects an invalid cutoff', async () => {
        await expect(ledger.compact(newWallet(), -1)).rejects.toThrow(RangeError);
        await expect(ledger.compact(newWallet(), 1.5)).rejects.toThrow(RangeError);
      });
    });

    describe('entries', () => {
      const collect = async (wallet: WalletKey, options: EntriesOptions = {}): Promise<LedgerEntry[]> => {
        const entries: LedgerEntry[] = [];
        for await (const entry of ledger.entries(wallet, options)) entries.push(entry);
        return entries;
      };

      it('yields every entry in order with its fields', async () => {
        const wallet = newWallet();
        const expiresAtMs = Date.now() + HOUR_MS;
        await ledger.credit(wallet, 'paid', 1000n, { reason: 'welcome' });
        await ledger.credit(wallet, 'promo', 200n, { expiresAtMs });
        await ledger.reserve(wallet, 'a', fixedHold(100n));
        await ledger.commit(wallet, 'a', usage(40n, 25n));
        await ledger.reserve(wallet, 'b', fixedHold(50n));
        await ledger.markAnswered(wallet, 'b');
        await ledger.sweep(wallet, Date.now() + 120_000);
        // The charges of 90 came from the promo first, so its lapse takes back 110.
        await ledger.sweep(wallet, expiresAtMs);

        const entries = await collect(wallet, { pageSize: 2 });
        expect(entries.map((entry) => entry.fields)).toEqual([
          { type: 'grant', id: 'paid', amount: '1000', reason: 'welcome' },
          { type: 'grant', id: 'promo', amount: '200', reason: '', expiresAt: String(expiresAtMs) },
          {
            type: 'debit', id: 'a', amount: '40', charged: '40', providerCost: '25',
            model: 'gpt-test', route: 'openai-main', tokens: '{"input":10,"output":5}', estimated: '0',
          },
          { type: 'expire-charge', id: 'b', amount: '50', charged: '50', providerCost: '0' },
          { type: 'expire', id: 'promo', amount: '110' },
        ]);
        expect(Object.keys(entries[2]!.fields)).toEqual(['type', 'id', 'amount', 'charged', 'providerCost', 'model', 'route', 'tokens', 'estimated']);
        for (let i = 1; i < entries.length; i += 1) expect(compareEntryIds(entries[i]!.id, entries[i - 1]!.id)).toBe(1);

        // The entries sum to the totals that verify recomputes.
        const sums = { grant: 0n, expire: 0n, spent: 0n };
        for (const { fields } of entries) {
          const kind = fields['type'] === 'grant' || fields['type'] === 'expire' ? fields['type'] : 'spent';
          sums[kind] += BigInt(fields['amount']!);
        }
        const verify = await ledger.verify(wallet);
        expect([sums.grant, sums.spent, sums.expire, entries.length]).toEqual([verify.granted, verify.spent, verify.expired, verify.entries]);

        expect(await collect(wallet, { from: entries[2]!.id })).toEqual(entries.slice(2));
        expect(await collect(wallet, { after: entries[2]!.id, pageSize: 1 })).toEqual(entries.slice(3));
        expect(await collect(wallet, { after: entries[4]!.id })).toEqual([]);
        expect(await collect(wallet, { beforeMs: 0 })).toEqual([]);
      });

      it('rejects invalid options', async () => {
        const wallet = newWallet();
        await expect(collect(wallet, { from: 'yesterday' })).rejects.toThrow(RangeError);
        await expect(collect(wallet, { from: '1-0', after: '1-0' })).rejects.toThrow(RangeError);
      });
    });

    describe('verify', () => {
      it('matches the stored totals after mixed operations', async () => {
        const wallet = newWallet();
        await ledger.credit(wallet, 'g-1', usd('2.50'));
        await ledger.credit(wallet, 'g-2', usd('0.75'));
        await ledger.reserve(wallet, 'a', fixedHold(usd('1')));
        await ledger.commit(wallet, 'a', usage(usd('0.333333333'), usd('0.2')));
        await ledger.reserve(wallet, 'b', fixedHold(usd('0.5')));
        await ledger.release(wallet, 'b');
        await ledger.reserve(wallet, 'c', fixedHold(usd('0.25')));

        const verify = await ledger.verify(wallet);
        expect(verify).toEqual({ ok: true, granted: 3_250_000_000n, spent: 333_333_333n, expired: 0n, entries: 3, problems: [] });
        expect((await ledger.state(wallet)).reserved).toBe(250_000_000n);
      });

      it('reads an unknown wallet as empty', async () => {
        const wallet = newWallet();
        expect(await ledger.state(wallet)).toEqual({
          granted: 0n,
          spent: 0n,
          expired: 0n,
          reserved: 0n,
          balance: 0n,
          available: 0n,
          providerCost: 0n,
          chargedWithoutCost: 0n,
          holds: 0,
          closed: false,
        });
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 0n, spent: 0n, expired: 0n, entries: 0, problems: [] });
      });
    });

    describe('field cases', () => {
      it('bills a request committed twice once', async () => {
        const wallet = await fundedWallet(usd('100'));
        await ledger.reserve(wallet, 'dup', fixedHold(usd('25')));

        expect(await ledger.commit(wallet, 'dup', usage(usd('20')))).toMatchObject({ status: 'committed', charged: usd('20'), replayed: false });
        expect(await ledger.commit(wallet, 'dup', usage(usd('20')))).toMatchObject({ status: 'committed', charged: usd('20'), replayed: true });

        const state = await ledger.state(wallet);
        expect(state.spent).toBe(20_000_000_000n);
        expect(state.balance).toBe(80_000_000_000n);
        expect(state.reserved).toBe(0n);
      });

      it('bills a retried request once when the first commit never happened', async () => {
        const wallet = await fundedWallet(usd('100'));
        const hold = fixedHold(usd('25'), { fingerprint: 'sha256:abc' });

        expect(await ledger.reserve(wallet, 'retry', hold)).toEqual({ status: 'reserved', amount: usd('25'), units: 0, replayed: false });
        // The first attempt died before its commit; the retry carries the same id and fingerprint.
        expect(await ledger.reserve(wallet, 'retry', hold)).toEqual({ status: 'reserved', amount: usd('25'), units: 0, replayed: true });
        expect(await ledger.commit(wallet, 'retry', usage(usd('20')))).toMatchObject({ status: 'committed', replayed: false });
        expect(await ledger.commit(wallet, 'retry', usage(usd('20')))).toMatchObject({ status: 'committed', replayed: true });

        const state = await ledger.state(wallet);
        expect(state.spent).toBe(20_000_000_000n);
        expect(state.reserved).toBe(0n);
        expect(state.holds).toBe(0);
        expect((await ledger.verify(wallet)).entries).toBe(2);
      });

      it('admits two of four concurrent reserves near the end of the balance', async () => {
        const wallet = await fundedWallet(usd('5.000000'));
        await ledger.reserve(wallet, 'earlier', fixedHold(usd('4.752720')));
        await ledger.commit(wallet, 'earlier', usage(usd('4.752720')));

        const requests = ['c1', 'c2', 'c3', 'c4'];
        const results = await Promise.all(requests.map((id) => ledger.reserve(wallet, id, fixedHold(usd('0.0884')))));

        expect(countStatuses(results)).toEqual({ reserved: 2, insufficient_funds: 2 });
        for (const result of results.filter((r) => r.status === 'insufficient_funds')) {
          expect(result).toEqual({ status: 'insufficient_funds', available: 70_480_000n, required: 88_400_000n });
        }

        const admitted = requests.filter((_, i) => results[i]!.status === 'reserved');
        for (const id of admitted) {
          expect(await ledger.commit(wallet, id, usage(usd('0.0884')))).toMatchObject({ status: 'committed', charged: 88_400_000n });
        }

        const state = await ledger.state(wallet);
        expect(state.spent).toBe(4_929_520_000n);
        expect(state.balance).toBe(70_480_000n);
        expect(state.spent <= state.granted).toBe(true);
        expect(state.reserved).toBe(0n);
      });

      it('spends 10.00 exactly in 2,500 requests of 0.004', { timeout: 120_000 }, async () => {
        const wallet = await fundedWallet(usd('10.00'));
        const price = usd('0.004');

        let admitted = 0;
        for (let i = 0; i < 2500; i += 1) {
          const reserved = await ledger.reserve(wallet, `r-${i}`, fixedHold(price));
          const committed = await ledger.commit(wallet, `r-${i}`, usage(price));
          if (reserved.status === 'reserved' && committed.status === 'committed' && committed.charged === price) admitted += 1;
        }
        expect(admitted).toBe(2500);

        const state = await ledger.state(wallet);
        expect(state.spent).toBe(10_000_000_000n);
        expect(state.balance).toBe(0n);
        expect(await ledger.reserve(wallet, 'r-2500', fixedHold(price))).toEqual({
          status: 'insufficient_funds',
          available: 0n,
          required: 4_000_000n,
        });

        const verify = await ledger.verify(wallet);
        expect(verify.ok).toBe(true);
        expect(verify.entries).toBe(2501);
      });

      it('records a 120 nano charge as 120', async () => {
        const wallet = await fundedWallet(usd('10.00'));
        await ledger.reserve(wallet, 'tiny', fixedHold(usd('0.004')));

        expect(await ledger.commit(wallet, 'tiny', usage(120n, 100n))).toEqual({
          status: 'committed',
          charged: 120n,
          released: 3_999_880n,
          replayed: false,
        });
        const state = await ledger.state(wallet);
        expect(state.spent).toBe(120n);
        expect(state.providerCost).toBe(100n);
        expect((await ledger.verify(wallet)).spent).toBe(120n);
      });
    });

    describe('concurrency', () => {
      it('admits exactly 37 of 200 concurrent reserves', async () => {
        const price = 1_000_000n;
        const wallet = await fundedWallet(37n * price + price - 1n);

        const results = await Promise.all(
          Array.from({ length: 200 }, (_, i) => ledger.reserve(wallet, `c-${i}`, fixedHold(price))),
        );

        expect(countStatuses(results)).toEqual({ reserved: 37, insufficient_funds: 163 });
        const state = await ledger.state(wallet);
        expect(state.reserved).toBe(37_000_000n);
        expect(state.available).toBe(999_999n);
        expect(state.holds).toBe(37);
      });
    });
  });
}
