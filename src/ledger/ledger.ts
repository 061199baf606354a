/**
 * The ledger contract: a two-phase hold-and-settle account per wallet.
 * All amounts are bigint nano-units of the wallet's currency. Every method is
 * one atomic step on one wallet; implementations must give identical results
 * (the same contract tests run against each).
 *
 * Each request id moves through these states: held (after reserve), then
 * committed, released (by `release`), expired (released by the sweeper
 * because the upstream never answered) or expired-charged (charged at the
 * held amount by the sweeper because the upstream answered). The settled
 * state of a request id is kept for the ledger's retention window
 * (`settledRetentionMs`, default DEFAULT_SETTLED_RETENTION_MS, at least
 * MIN_SETTLED_RETENTION_MS), counted from the last time it changed: commit,
 * release, or the sweeper settling an expired hold. Within the window a late
 * retry of any operation gets the first result instead of a second debit.
 * After it, the record is removed, and the id is unknown to the ledger: a
 * commit debits it as a request that was never reserved, a release returns
 * `not_found`, and a reserve places a new hold. Removal is lazy: a reserve
 * removes up to EXPIRED_HOLDS_SETTLED_PER_RESERVE due records or expired
 * holds of its wallet, earliest first, and `sweep` removes all that are due.
 * Until then a record past its window still returns the first result.
 *
 * Entry stream and checkpoint. Every grant, debit, expire-charge and lapse
 * appends an entry to the wallet's stream, which `verify` replays.
 * `compact` folds the entries older than a given time into the wallet's
 * checkpoint (the totals that verify compares, the count of folded entries
 * and the id of the last one) and deletes them. Verify then starts from the
 * checkpoint. Nothing compacts unless asked to.
 *
 * Grant expiry. A grant credited with `expiresAtMs` is an expiring grant
 * and keeps a remaining amount, which starts at its amount. Committed
 * charges (commit, and the sweeper's expire-charge) go first to the live
 * expiring grants and lower their remaining amounts, earliest expiry first
 * and equal expiries by grant id in byte order. Only the rest goes to funds
 * without expiry, so a promotional credit is used before a paid top-up.
 * When its expiry is at or before the ledger's clock (the Redis server's
 * clock for the Redis ledger), a grant lapses: the ledger takes back
 * `min(remaining, max(0, balance - reserved))`, adds it to `expired`, appends
 * an `expire` entry and drops the grant from the live set. So a lapse never
 * takes funds that an open hold has promised, and a hold placed before the
 * expiry can still be committed in full. Reserve applies its wallet's due
 * lapses before its funds check, so a lapsed grant never funds a new hold,
 * and `sweep` applies them too. Both settle expired holds first. `state`
 * never changes anything, so it can show a grant as live after its expiry
 * until the next reserve or sweep.
 *
 * The ledgers attribute charges lazily, when they credit an expiring grant or
 * apply lapses, and attribute the net change of `spent` since the last time.
 * The live grants change only at those steps, and filling the grants in
 * order is additive, so the result equals attributing each charge when it
 * happens. The exception is a late commit that lowers an expire-charge: it
 * first offsets charges not yet attributed, and anything left over becomes
 * funds without expiry.
 */

import { MAX_LEDGER_AMOUNT } from '../money/money.ts';

/** Identifies a wallet: its Kubernetes namespace and name. */
export interface WalletKey {
  namespace: string;
  name: string;
}

export interface SpendLimits {
  /** Largest amount a single request may hold. */
  maxPerRequest?: bigint;
  /** Largest amount debited plus held within one UTC day. */
  dailyCap?: bigint;
  /** Largest amount debited plus held within one UTC calendar month. */
  monthlyCap?: bigint;
}

/**
 * The amount to hold: `fixed + perUnit * units`, where `units` is the
 * largest whole number in [minUnits, maxUnits] that the wallet can afford.
 * With `perUnit = 0n` (or minUnits = maxUnits) the hold is a fixed amount.
 * The sidecar uses units for output tokens, so that a request without an
 * output limit gets the largest one its wallet can pay for.
 */
export interface HoldRequest {
  fixed: bigint;
  perUnit: bigint;
  minUnits: number;
  maxUnits: number;
  /** Seconds until the hold expires and the sweeper settles it. */
  ttlSeconds: number;
  /** A digest of the request; a reused request id with another digest is a conflict. */
  fingerprint: string;
  /**
   * Whether the caller made up the request id for this one call, as a random
   * id. An open hold found under such an id was placed by this same call,
   * whose command the Redis client sent again after a lost connection, so
   * the reserve returns it as this call's own (`replayed: false`).
   */
  exclusiveId?: boolean;
  limits?: SpendLimits;
}

/**
 * The outcome of a reserve. Checks run in this order, and the first failing
 * one decides the result: an open hold or a settled request under the same id
 * (replay or conflict), a closed wallet, `maxPerRequest`, `dailyCap`,
 * `monthlyCap`, then the funds. A request id whose earlier hold was released
 * by `release` may be reserved again with the same fingerprint, because the
 * upstream never served it. An id that is committed or expired is
 * `already_settled`; `uncharged` marks one whose hold expired without a
 * charge (the sweeper released it because the upstream had not answered).
 *
 * `available` may be negative when commits exceeded their holds.
 * `required` is the minimum hold, `fixed + perUnit * minUnits`.
 */
export type ReserveResult =
  | { status: 'reserved'; amount: bigint; units: number; replayed: boolean }
  | { status: 'insufficient_funds'; available: bigint; required: bigint }
  | { status: 'limit_exceeded'; limit: 'maxPerRequest' | 'dailyCap' | 'monthlyCap'; required: bigint; remaining: bigint }
  | { status: 'conflict'; reason: 'fingerprint_mismatch' }
  | { status: 'conflict'; reason: 'already_settled'; uncharged?: true }
  | { status: 'wallet_closed' };

/** One settled request, as appended to the wallet's entry stream. */
export interface CommitEntry {
  /** Amount the wallet pays. */
  charged: bigint;
  /** Amount the platform pays the provider for the same request. */
  providerCost: bigint;
  model: string;
  route: string;
  /** Token counts by kind, for the entry stream. */
  tokens: Record<string, number>;
  estimated: boolean;
}

/**
 * The outcome of a commit. A commit always debits `charged` unless the hold
 * was returned by `release` (conflict `released`): also when `charged`
 * exceeds the hold, when the sweeper already released the expired hold, and
 * when no hold is known. When the sweeper already charged the held amount,
 * the commit corrects the debit to `charged`. `released` is the part of the
 * hold returned to the wallet, `max(hold - charged, 0)`.
 */
export type CommitResult =
  | { status: 'committed'; charged: bigint; released: bigint; replayed: boolean }
  | { status: 'conflict'; reason: 'released' };

export type ReleaseResult = { status: 'released'; amount: bigint } | { status: 'not_found' } | { status: 'already_committed' };

/**
 * `amount` is what the grant id was credited with: the amount of this call,
 * or on a replay the amount of the first call, which the ledger keeps.
 */
export type CreditResult = { status: 'credited'; replayed: boolean; balance: bigint; amount: bigint };

export interface CreditOptions {
  /** Reason for the grant, recorded in its stream entry. */
  reason?: string;
  /** Expiry of the grant in epoch milliseconds; a grant without it never lapses. */
  expiresAtMs?: number;
}

export interface WalletState {
  /** Sum of all grants, including those that lapsed. */
  granted: bigint;
  /** Sum of all committed charges. */
  spent: bigint;
  /** Sum taken back from expiring grants when they lapsed. */
  expired: bigint;
  /** Sum of all open holds. */
  reserved: bigint;
  /** granted - spent - expired. */
  balance: bigint;
  /** balance - reserved: what a new request may hold. */
  available: bigint;
  /** Sum of committed provider costs (the platform's side). */
  providerCost: bigint;
  /**
   * The part of `spent` that the sweeper charged for expired holds whose
   * upstream had answered, at the held amount, until a late commit prices
   * the call. Its provider cost is not known (recorded as 0), so the margin
   * spent - providerCost overstates by the cost of these calls.
   */
  chargedWithoutCost: bigint;
  holds: number;
  closed: boolean;
}

export type ReopenResult = { reopened: true } | { reopened: false; closedCurrency: string };

export interface SweepResult {
  released: number;
  charged: number;
}

/** One entry of a wallet's entry stream, as `entries` yields it and `tollgate ledger export` writes it. */
export interface LedgerEntry {
  /** Stream id, `<epoch ms>-<sequence>`; it increases with every entry of the wallet. */
  id: string;
  /** The entry's fields in the order they were written; amounts are decimal integer strings. */
  fields: Record<string, string>;
}

export interface EntriesOptions {
  /** Stream id of the first entry to return. */
  from?: string;
  /** Stream id after which to start; the entry with this id is not returned. */
  after?: string;
  /** Returns only entries appended before this time, in epoch milliseconds. */
  beforeMs?: number;
  /** Entries read per round trip (XRANGE COUNT for Redis); default 1000. */
  pageSize?: number;
}

/** The totals of the entries that compaction folded into a wallet's checkpoint. */
export interface Checkpoint {
  /** Sum of the folded grant entries. */
  granted: bigint;
  /** Sum of the folded debit and expire-charge entries. */
  spent: bigint;
  /** Sum of the folded expire entries. */
  expired: bigint;
  /** Sum of the provider costs of the folded entries. */
  providerCost: bigint;
  /** Number of folded entries. */
  entries: number;
  /** Stream id of the last folded entry. */
  lastId: string;
}

export interface CompactResult {
  /** Entries this call folded and deleted. */
  folded: number;
  /** The wallet's checkpoint after the call; undefined when no entry was ever folded. */
  checkpoint: Checkpoint | undefined;
}

export interface Ledger {
  /**
   * Adds a grant; idempotent on `grantId` (a repeated id keeps its first
   * amount and expiry and returns replayed, also after the grant lapsed).
   * With `options.expiresAtMs` the grant is an expiring grant (see the top
   * of this file).
   * Checks run in this order: replay, expiry, total. Throws
   * GrantExpiredError, and changes nothing, when a new grant's expiry is at
   * or before the ledger's clock, and GrantTooLargeError when the grant or
   * the wallet's granted total would exceed MAX_LEDGER_AMOUNT.
   */
  credit(wallet: WalletKey, grantId: string, amount: bigint, options?: CreditOptions): Promise<CreditResult>;
  /**
   * Places a hold if the wallet can afford it; idempotent on `requestId` with
   * the same fingerprint, while the request's settled record is kept. It
   * first settles expired holds and removes records past their retention, up
   * to EXPIRED_HOLDS_SETTLED_PER_RESERVE of both together, and it lapses the
   * wallet's due grants after the closed check and before the limit and funds checks.
   */
  reserve(wallet: WalletKey, requestId: string, hold: HoldRequest): Promise<ReserveResult>;
  /** Records that the upstream answered, so an expired hold is charged rather than released. */
  markAnswered(wallet: WalletKey, requestId: string): Promise<void>;
  /** Debits the actual cost, releases the rest of the hold and appends an entry; idempotent. */
  commit(wallet: WalletKey, requestId: string, entry: CommitEntry): Promise<CommitResult>;
  /** Returns the whole hold (the upstream did not serve the call); idempotent. */
  release(wallet: WalletKey, requestId: string): Promise<ReleaseResult>;
  /**
   * Settles holds whose expiry is at or before `nowMs` (default: the ledger's
   * clock, which is the Redis server's clock for the Redis ledger): released,
   * or charged at the held amount if answered. Removes the settled records
   * whose retention ended at or before `nowMs`. Then lapses the grants whose
   * expiry is at or before `nowMs`. The Redis ledger does this in scripts of
   * at most 1,000 holds and records each, one after another.
   */
  sweep(wallet: WalletKey, nowMs?: number): Promise<SweepResult>;
  /** Reads the wallet's totals without settling or lapsing anything; an unknown wallet reads as all zeros. */
  state(wallet: WalletKey): Promise<WalletState>;
  /**
   * Closes the wallet: no new holds; open holds can still be committed or
   * released, and history stays. `currency` is kept with the closed account,
   * so that reopen can refuse a wallet in another currency.
   */
  close(wallet: WalletKey, currency?: string): Promise<void>;
  /**
   * Opens a closed wallet again, with the balance it kept. A wallet closed
   * with another currency than `currency` stays closed, and the result names
   * that currency. Does nothing to an open wallet.
   */
  reopen(wallet: WalletKey, currency: string): Promise<ReopenResult>;
  /**
   * Recomputes the granted, spent and expired totals from the checkpoint and
   * the entry stream after it, and compares them, the provider cost, the
   * grants and the open holds with the stored totals, which proves
   * balance = grants - debits - expired. Returns the recomputed totals;
   * `problems` lists each mismatch.
   */
  verify(wallet: WalletKey): Promise<VerifyResult>;
  /**
   * Folds the stream entries appended before `beforeMs` (epoch milliseconds,
   * by the time in their stream ids) into the wallet's checkpoint and deletes
   * them, oldest first, in chunks that are each atomic. The entries are gone
   * from the ledger afterwards, so export them first to keep them. A stream
   * with nothing older than `beforeMs` is left as it is.
   */
  compact(wallet: WalletKey, beforeMs: number): Promise<CompactResult>;
  /** Yields the wallet's stream entries in order, reading a page at a time. */
  entries(wallet: WalletKey, options?: EntriesOptions): AsyncIterable<LedgerEntry>;
  /**
   * Releases the ledger's resources, such as a Redis connection it opened
   * itself. RedisLedger first waits for the late replies of calls that timed
   * out, and takes at most about one ledger timeout in all.
   */
  quit(): Promise<void>;
}

export interface VerifyResult {
  ok: boolean;
  /** Sum of the grant entries, those folded into the checkpoint included. */
  granted: bigint;
  /** Sum of the debit and expire-charge entries, those folded into the checkpoint included. */
  spent: bigint;
  /** Sum of the expire entries, those folded into the checkpoint included. */
  expired: bigint;
  /** Number of entries the totals cover: the folded ones and the ones replayed from the stream. */
  entries: number;
  problems: string[];
  /** The checkpoint that the replay started from; absent when the wallet has none. */
  checkpoint?: Checkpoint;
}

/** Raised when the ledger's store cannot be reached; the sidecar fails closed on it. */
export class LedgerUnavailableError extends Error {
  override readonly name: string = 'LedgerUnavailableError';
}

/**
 * Raised when the ledger's store took longer than the ledger's timeout to
 * reply. The operation may still run later, when the store catches up, so a
 * caller must not assume it did not happen: the ledger's operations are
 * idempotent on their ids. A late reserve places no hold where the ledger
 * can give it a deadline (RedisLedger on one server). Where one that ran
 * places a hold, RedisLedger releases it when the reply arrives, and the
 * sweeper settles a hold whose reply never arrives when it expires.
 */
export class LedgerTimeoutError extends LedgerUnavailableError {
  override readonly name: string = 'LedgerTimeoutError';
}

/** Raised when a grant would push a stored amount above MAX_LEDGER_AMOUNT. */
export class GrantTooLargeError extends Error {
  override readonly name = 'GrantTooLargeError';
}

/** Raised when a new grant's expiry is at or before the ledger's clock; the ledger did not credit it. */
export class GrantExpiredError extends Error {
  override readonly name = 'GrantExpiredError';
  readonly grantId: string;
  readonly expiresAtMs: number;
  /** The ledger's clock when it rejected the grant, in epoch milliseconds. */
  readonly ledgerNowMs: number;

  constructor(wallet: WalletKey, grantId: string, expiresAtMs: number, ledgerNowMs: number) {
    super(
      `grant "${grantId}" to wallet ${walletId(wallet)} expires at ${new Date(expiresAtMs).toISOString()}, ` +
        `not after the ledger's clock (${new Date(ledgerNowMs).toISOString()}), so it was not credited; ` +
        'give it a later expiry or leave it out',
    );
    this.grantId = grantId;
    this.expiresAtMs = expiresAtMs;
    this.ledgerNowMs = ledgerNowMs;
  }
}

export function walletId(wallet: WalletKey): string {
  return `${wallet.namespace}/${wallet.name}`;
}

// Helpers shared by the implementations, so that both validate input and
// count periods the same way.

/**
 * How many expired holds and records past their retention, together, a
 * reserve settles or removes before it checks the funds. More than one, so
 * that the removals keep up with a wallet whose every request leaves a record.
 */
export const EXPIRED_HOLDS_SETTLED_PER_RESERVE = 16;

/**
 * Returns the names of the counters that the daily and monthly caps read, for
 * the UTC day and month that contain `nowMs` (`day:2025-03-14`, `month:2025-03`).
 */
export function periodFields(nowMs: number): { day: string; month: string } {
  // Every request needs them, so the names are computed once per UTC day.
  if (nowMs < cachedPeriod.startMs || nowMs >= cachedPeriod.endMs) {
    const iso = new Date(nowMs).toISOString();
    const startMs = Date.parse(`${iso.slice(0, 10)}T00:00:00.000Z`);
    cachedPeriod = { startMs, endMs: startMs + 86_400_000, fields: { day: `day:${iso.slice(0, 10)}`, month: `month:${iso.slice(0, 7)}` } };
  }
  return cachedPeriod.fields;
}

let cachedPeriod = { startMs: 0, endMs: 0, fields: { day: '', month: '' } };

/** Returns the smallest hold the request accepts, `fixed + perUnit * minUnits`. */
export function minimumHold(hold: HoldRequest): bigint {
  return hold.fixed + hold.perUnit * BigInt(hold.minUnits);
}

/** Returns the hold's time to live in whole milliseconds, at least 1. */
export function holdTtlMs(hold: HoldRequest): number {
  return Math.max(1, Math.round(hold.ttlSeconds * 1000));
}

/** Throws a RangeError naming the field unless the hold request is well formed. */
export function validateHoldRequest(requestId: string, hold: HoldRequest): void {
  if (requestId.length === 0) throw new RangeError('invalid request id: it must not be empty');
  checkAmount('hold.fixed', hold.fixed);
  checkAmount('hold.perUnit', hold.perUnit);
  if (!Number.isSafeInteger(hold.minUnits) || hold.minUnits < 0) {
    throw new RangeError(`invalid hold.minUnits ${hold.minUnits}: it must be a non-negative integer`);
  }
  if (!Number.isSafeInteger(hold.maxUnits) || hold.maxUnits < hold.minUnits) {
    throw new RangeError(`invalid hold.maxUnits ${hold.maxUnits}: it must be an integer of at least minUnits (${hold.minUnits})`);
  }
  if (!Number.isFinite(hold.ttlSeconds) || hold.ttlSeconds <= 0) {
    throw new RangeError(`invalid hold.ttlSeconds ${hold.ttlSeconds}: it must be a positive number of seconds`);
  }
  const minimum = minimumHold(hold);
  if (minimum > MAX_LEDGER_AMOUNT) {
    throw new RangeError(
      `invalid hold for request "${requestId}": its minimum of ${minimum} nano-units exceeds the ledger limit of ${MAX_LEDGER_AMOUNT}`,
    );
  }
  const limits = hold.limits ?? {};
  for (const name of ['maxPerRequest', 'dailyCap', 'monthlyCap'] as const) {
    const limit = limits[name];
    if (limit !== undefined) checkAmount(`limits.${name}`, limit);
  }
}

/** Throws a RangeError naming the field unless the entry's amounts and token counts are valid. */
export function validateCommitEntry(requestId: string, entry: CommitEntry): void {
  if (requestId.length === 0) throw new RangeError('invalid request id: it must not be empty');
  checkAmount('entry.charged', entry.charged);
  checkAmount('entry.providerCost', entry.providerCost);
  for (const [kind, count] of Object.entries(entry.tokens)) {
    if (!Number.isFinite(count)) throw new RangeError(`invalid entry.tokens.${kind} ${count}: it must be a finite number`);
  }
}

/** Throws unless `amount` is a valid grant on its own: RangeError when negative, GrantTooLargeError above the limit. */
export function validateGrant(wallet: WalletKey, grantId: string, amount: bigint): void {
  if (grantId.length === 0) throw new RangeError('invalid grant id: it must not be empty');
  if (amount < 0n) throw new RangeError(`invalid grant "${grantId}" of ${amount} nano-units: it must not be negative`);
  if (amount > MAX_LEDGER_AMOUNT) {
    throw new GrantTooLargeError(
      `grant "${grantId}" of ${amount} nano-units to wallet ${walletId(wallet)} exceeds the ledger limit of ` +
        `${MAX_LEDGER_AMOUNT} nano-units (2^53); split the funds across wallets`,
    );
  }
}

/** Throws a RangeError unless the grant's expiry, when given, is a whole number of epoch milliseconds. */
export function validateGrantExpiry(grantId: string, expiresAtMs: number | undefined): void {
  if (expiresAtMs === undefined) return;
  if (!Number.isSafeInteger(expiresAtMs) || expiresAtMs < 0) {
    throw new RangeError(`invalid expiry ${expiresAtMs} of grant "${grantId}": it must be a non-negative integer of epoch milliseconds`);
  }
}

/** Builds the error for a grant that fits alone but would push the wallet's granted total above the limit. */
export function grantTotalTooLarge(wallet: WalletKey, grantId: string, amount: bigint, granted: bigint): GrantTooLargeError {
  return new GrantTooLargeError(
    `grant "${grantId}" of ${amount} nano-units would raise the granted total of wallet ${walletId(wallet)} from ` +
      `${granted} to ${granted + amount} nano-units, above the ledger limit of ${MAX_LEDGER_AMOUNT} (2^53); ` +
      'split the funds across wallets',
  );
}

/** Totals recomputed from the entry stream and the stored records, compared by `compareTotals`. */
export interface LedgerTotals {
  stored: { granted: bigint; spent: bigint; expired: bigint; reserved: bigint; providerCost: bigint };
  /** Sums of the stream entries after the checkpoint (of all entries when there is none). */
  replayed: ReplayedTotals;
  checkpoint: Checkpoint | undefined;
  /** Sum of the grants recorded by grant id. */
  grantsSum: bigint;
  /** Sum of the open holds. */
  holdsSum: bigint;
}

export interface ReplayedTotals {
  granted: bigint;
  spent: bigint;
  expired: bigint;
  providerCost: bigint;
  entries: number;
}

/** Returns zero totals, to which `addEntry` adds. */
export function emptyTotals(): ReplayedTotals {
  return { granted: 0n, spent: 0n, expired: 0n, providerCost: 0n, entries: 0 };
}

/**
 * Adds one stream entry to `totals`: a grant entry's amount to granted, an
 * expire entry's to expired, and a debit's or expire-charge's to spent.
 */
export function addEntry(totals: ReplayedTotals, fields: Record<string, string>): void {
  const amount = BigInt(fields['amount'] ?? '0');
  const type = fields['type'];
  if (type === 'grant') totals.granted += amount;
  else if (type === 'expire') totals.expired += amount;
  else totals.spent += amount;
  totals.providerCost += BigInt(fields['providerCost'] ?? '0');
  totals.entries += 1;
}

/** Compares stored totals with the checkpoint plus the replayed entries and builds the verify result. */
export function compareTotals(wallet: WalletKey, totals: LedgerTotals): VerifyResult {
  const id = walletId(wallet);
  const { stored, checkpoint } = totals;
  const replayed = { ...totals.replayed };
  if (checkpoint) {
    replayed.granted += checkpoint.granted;
    replayed.spent += checkpoint.spent;
    replayed.expired += checkpoint.expired;
    replayed.providerCost += checkpoint.providerCost;
    replayed.entries += checkpoint.entries;
  }
  const folded = checkpoint ? ` (with the ${checkpoint.entries} entries folded into the checkpoint)` : '';
  const checks: Array<[string, bigint, string, bigint]> = [
    ['stored granted', stored.granted, `the sum of grant entries${folded}`, replayed.granted],
    ['stored granted', stored.granted, 'the sum of recorded grants', totals.grantsSum],
    ['stored spent', stored.spent, `the sum of debit entries${folded}`, replayed.spent],
    ['stored expired', stored.expired, `the sum of expire entries${folded}`, replayed.expired],
    ['stored provider cost', stored.providerCost, `the sum of entry provider costs${folded}`, replayed.providerCost],
    ['stored reserved', stored.reserved, 'the sum of open holds', totals.holdsSum],
  ];

  const problems: string[] = [];
  for (const [storedName, storedValue, replayedName, replayedValue] of checks) {
    if (storedValue !== replayedValue) {
      problems.push(`wallet ${id}: ${storedName} is ${storedValue} but ${replayedName} is ${replayedValue}`);
    }
  }

  const result: VerifyResult = {
    ok: problems.length === 0,
    granted: replayed.granted,
    spent: replayed.spent,
    expired: replayed.expired,
    entries: replayed.entries,
    problems,
  };
  if (checkpoint) result.checkpoint = checkpoint;
  return result;
}

/** Throws a RangeError naming `option` unless `id` is a full stream id, `<epoch ms>-<sequence>`. */
export function validateEntryId(option: string, id: string): void {
  if (!/^\d+-\d+$/.test(id)) throw new RangeError(`invalid ${option} "${id}": use a full stream id such as 1718366400000-0`);
}

/** Throws a RangeError unless `beforeMs` is a whole number of epoch milliseconds. */
export function validateCutoff(beforeMs: number): void {
  if (!Number.isSafeInteger(beforeMs) || beforeMs < 0) {
    throw new RangeError(`invalid cutoff ${beforeMs}: it must be a non-negative integer of epoch milliseconds`);
  }
}

function checkAmount(field: string, amount: bigint): void {
  if (amount < 0n || amount > MAX_LEDGER_AMOUNT) {
    throw new RangeError(`invalid ${field} ${amount}: it must be between 0 and ${MAX_LEDGER_AMOUNT} nano-units`);
  }
}

/** Compares two full entry ids ("<ms>-<sequence>") by time, then sequence. */
export function compareEntryIds(a: string, b: string): number {
  const [aMs, aSequence] = a.split('-').map(BigInt) as [bigint, bigint];
  const [bMs, bSequence] = b.split('-').map(BigInt) as [bigint, bigint];
  if (aMs !== bMs) return aMs < bMs ? -1 : 1;
  if (aSequence !== bSequence) return aSequence < bSequence ? -1 : 1;
  return 0;
}
