/**
 * The in-memory ledger for local mode. It follows the Redis ledger step for
 * step (same checks, same order, same settled states), and the same contract
 * tests run against both. State lives in this process only and is lost on exit.
 */

import type {
  Checkpoint,
  CommitEntry,
  CommitResult,
  CompactResult,
  CreditOptions,
  CreditResult,
  EntriesOptions,
  HoldRequest,
  Ledger,
  LedgerEntry,
  ReleaseResult,
  ReopenResult,
  ReserveResult,
  SweepResult,
  VerifyResult,
  WalletKey,
  WalletState,
} from './ledger.ts';
import {
  EXPIRED_HOLDS_SETTLED_PER_RESERVE,
  GrantExpiredError,
  addEntry,
  compareEntryIds,
  compareTotals,
  emptyTotals,
  grantTotalTooLarge,
  holdTtlMs,
  minimumHold,
  periodFields,
  validateCommitEntry,
  validateCutoff,
  validateEntryId,
  validateGrant,
  validateGrantExpiry,
  validateHoldRequest,
  walletId,
} from './ledger.ts';
import { DueIndex, compareBytes } from './due-index.ts';
import { DEFAULT_SETTLED_RETENTION_MS, validateSettledRetention } from './retention.ts';
import { MAX_LEDGER_AMOUNT } from '../money/money.ts';

interface Hold {
  amount: bigint;
  units: number;
  expiresAtMs: number;
  answered: boolean;
  /** The lapse epoch whose grants and later ones the hold may be charged from, or undefined (see lapseGrants). */
  epoch: number | undefined;
  /** Period counters the hold was added to, so that settling it adjusts the same ones. */
  day: string;
  month: string;
  fingerprint: string;
}

type SettledState = 'committed' | 'released' | 'expired' | 'expired_charged';

/** The final result of a request id, kept so that retries get the first result. */
interface Settled {
  state: SettledState;
  charged: bigint;
  /** Amount returned to the wallet; for expired_charged, the part of the charge that lapsed grants paid (see settleCover). */
  released: bigint;
  day: string;
  month: string;
  /** Empty when the request was committed without a hold. */
  fingerprint: string;
}

/** A live expiring grant. */
interface ExpiringGrant {
  id: string;
  expiresAtMs: number;
  /** Amount left after the charges attributed to the grant. */
  remaining: bigint;
}

interface Account {
  granted: bigint;
  spent: bigint;
  expired: bigint;
  reserved: bigint;
  providerCost: bigint;
  /** See WalletState.chargedWithoutCost. */
  chargedWithoutCost: bigint;
  closed: boolean;
  /** The currency of the Wallet whose deletion closed the account; undefined when open or not known. */
  closedCurrency: string | undefined;
  /** Debited plus held amounts by period counter name (`day:...`, `month:...`). */
  periods: Map<string, bigint>;
  holds: Map<string, Hold>;
  settled: Map<string, Settled>;
  /**
   * Open holds by expiry and settled records by the end of their retention,
   * like the Redis ledger's `:hexp`.
   */
  due: DueIndex;
  grants: Map<string, bigint>;
  /** Live expiring grants in order of expiry, then grant id in byte order. */
  expiring: ExpiringGrant[];
  /** The value of `spent` up to which charges are attributed to the expiring grants. */
  attributed: bigint;
  /** Rests of lapsed grants that covering holds may still be charged from, in order of expiry (see lapseGrants). */
  lapsing: { id: string; amount: bigint; epoch: number }[];
  /** What the open holds of each lapse epoch still hold. */
  lapsingHeld: Map<number, bigint>;
  /** The number of lapses that left a covered part. */
  lapseEpoch: number;
  /**
   * The stream entries after the checkpoint, oldest first, with the same id
   * scheme and the same fields, in the same order, as the Redis ledger's.
   */
  log: LedgerEntry[];
  /** Time and sequence of the last entry's id, also after compaction removed it; -1 before the first. */
  lastEntry: { ms: number; sequence: number };
  checkpoint: Checkpoint | undefined;
  /** Entries the log keeps before its oldest half is folded into the checkpoint; unbounded when undefined. */
  maxLogEntries: number | undefined;
}

export interface MemoryLedgerOptions {
  /** Clock in epoch milliseconds, for hold expiry, retention, entry ids and the UTC day and month of the caps. */
  now?: () => number;
  /** How long a settled record is kept, in milliseconds; as for RedisLedgerOptions. */
  settledRetentionMs?: number;
  /**
   * Entries a wallet's log keeps: beyond this many, the oldest half is folded
   * into the wallet's checkpoint, as `compact` does, so that the log's memory
   * stays bounded. Unbounded when unset. Verify gives the same totals either way.
   */
  maxLogEntries?: number;
}

export class MemoryLedger implements Ledger {
  readonly #accounts = new Map<string, Account>();
  readonly #now: () => number;
  readonly #retentionMs: number;
  readonly #maxLogEntries: number | undefined;

  constructor(options: MemoryLedgerOptions = {}) {
    this.#now = options.now ?? Date.now;
    this.#retentionMs = options.settledRetentionMs ?? DEFAULT_SETTLED_RETENTION_MS;
    validateSettledRetention(this.#retentionMs);
    if (options.maxLogEntries !== undefined && !(Number.isSafeInteger(options.maxLogEntries) && options.maxLogEntries >= 2)) {
      throw new RangeError(`invalid maxLogEntries ${options.maxLogEntries}: use a whole number of at least 2`);
    }
    this.#maxLogEntries = options.maxLogEntries;
  }

  async credit(wallet: WalletKey, grantId: string, amount: bigint, options: CreditOptions = {}): Promise<CreditResult> {
    const { reason, expiresAtMs } = options;
    validateGrant(wallet, grantId, amount);
    validateGrantExpiry(grantId, expiresAtMs);
    const account = this.#account(wallet);

    const credited = account.grants.get(grantId);
    if (credited !== undefined) {
      return { status: 'credited', replayed: true, balance: balanceOf(account), amount: credited };
    }
    if (expiresAtMs !== undefined) {
      const nowMs = this.#now();
      if (expiresAtMs <= nowMs) throw new GrantExpiredError(wallet, grantId, expiresAtMs, nowMs);
    }
    if (amount > MAX_LEDGER_AMOUNT - account.granted) {
      throw grantTotalTooLarge(wallet, grantId, amount, account.granted);
    }

    account.grants.set(grantId, amount);
    account.granted += amount;
    const fields: Record<string, string> = { type: 'grant', id: grantId, amount: amount.toString(), reason: reason ?? '' };
    if (expiresAtMs !== undefined) {
      fields['expiresAt'] = String(expiresAtMs);
      // The live grants change here, so the charges so far go to the grants that were live while they happened.
      attributeCharges(account);
      insertExpiringGrant(account.expiring, { id: grantId, expiresAtMs, remaining: amount });
    }
    appendEntry(account, this.#now(), fields);
    return { status: 'credited', replayed: false, balance: balanceOf(account), amount };
  }

  async reserve(wallet: WalletKey, requestId: string, hold: HoldRequest): Promise<ReserveResult> {
    validateHoldRequest(requestId, hold);
    const account = this.#account(wallet);
    const nowMs = this.#now();
    settleExpired(account, nowMs, EXPIRED_HOLDS_SETTLED_PER_RESERVE, this.#retentionMs, nowMs);

    const open = account.holds.get(requestId);
    if (open) {
      if (open.fingerprint !== hold.fingerprint) return { status: 'conflict', reason: 'fingerprint_mismatch' };
      return { status: 'reserved', amount: open.amount, units: open.units, replayed: hold.exclusiveId !== true };
    }
    const settled = account.settled.get(requestId);
    if (settled) {
      if (settled.fingerprint !== '' && settled.fingerprint !== hold.fingerprint) {
        return { status: 'conflict', reason: 'fingerprint_mismatch' };
      }
      if (settled.state === 'expired') return { status: 'conflict', reason: 'already_settled', uncharged: true };
      if (settled.state !== 'released') return { status: 'conflict', reason: 'already_settled' };
    }
    if (account.closed) return { status: 'wallet_closed' };
    lapseGrants(account, nowMs, nowMs);

    const periods = periodFields(nowMs);
    const admission = admit(account, hold, periods);
    if (admission.status !== 'admitted') return admission.result;

    const expiresAtMs = nowMs + holdTtlMs(hold);
    account.holds.set(requestId, {
      amount: admission.amount,
      units: admission.units,
      expiresAtMs,
      answered: false,
      epoch: undefined,
      day: periods.day,
      month: periods.month,
      fingerprint: hold.fingerprint,
    });
    account.due.set(requestId, expiresAtMs);
    account.settled.delete(requestId);
    account.reserved += admission.amount;
    addToPeriods(account, periods.day, periods.month, admission.amount);
    return { status: 'reserved', amount: admission.amount, units: admission.units, replayed: false };
  }

  async markAnswered(wallet: WalletKey, requestId: string): Promise<void> {
    const open = this.#account(wallet).holds.get(requestId);
    if (open) open.answered = true;
  }

  async commit(wallet: WalletKey, requestId: string, entry: CommitEntry): Promise<CommitResult> {
    validateCommitEntry(requestId, entry);
    const account = this.#account(wallet);
    const { charged } = entry;
    const nowMs = this.#now();

    const open = account.holds.get(requestId);
    if (open) {
      const released = open.amount > charged ? open.amount - charged : 0n;
      account.holds.delete(requestId);
      account.due.set(requestId, nowMs + this.#retentionMs);
      account.reserved -= open.amount;
      debit(account, requestId, charged, entry, nowMs);
      addToPeriods(account, open.day, open.month, charged - open.amount);
      if (open.epoch !== undefined) settleCover(account, open.epoch, open.amount, charged, nowMs);
      account.settled.set(requestId, { state: 'committed', charged, released, day: open.day, month: open.month, fingerprint: open.fingerprint });
      return { status: 'committed', charged, released, replayed: false };
    }

    const settled = account.settled.get(requestId);
    if (settled?.state === 'committed') {
      return { status: 'committed', charged: settled.charged, released: settled.released, replayed: true };
    }
    if (settled?.state === 'released') return { status: 'conflict', reason: 'released' };

    // The upstream served the call although no hold is open: the sweeper
    // released or charged it, or the request was never reserved. Debit the
    // difference to what was already charged for it.
    const expireCharged = settled?.state === 'expired_charged';
    const alreadyCharged = expireCharged ? settled.charged : 0n;
    // This commit prices the call, so its expire-charge leaves the charges without a provider cost, as in commit.lua.
    account.chargedWithoutCost -= alreadyCharged < account.chargedWithoutCost ? alreadyCharged : account.chargedWithoutCost;
    const { day, month } = settled ?? periodFields(nowMs);
    debit(account, requestId, charged - alreadyCharged, entry, nowMs);
    addToPeriods(account, day, month, charged - alreadyCharged);
    // Lapsed grants paid the expire-charge first, so what they paid beyond the actual charge lapses, as in commit.lua.
    const lapsedShare = expireCharged ? settled.released : 0n;
    if (lapsedShare > charged) {
      const lapseBack = lapsedShare - charged;
      account.expired += lapseBack;
      account.attributed -= lapseBack;
      appendEntry(account, nowMs, { type: 'expire', id: requestId, amount: lapseBack.toString() });
    }
    account.settled.set(requestId, { state: 'committed', charged, released: 0n, day, month, fingerprint: settled?.fingerprint ?? '' });
    account.due.set(requestId, nowMs + this.#retentionMs);
    return { status: 'committed', charged, released: 0n, replayed: false };
  }

  async release(wallet: WalletKey, requestId: string): Promise<ReleaseResult> {
    const account = this.#account(wallet);

    const deadline = this.#now() + this.#retentionMs;
    const open = account.holds.get(requestId);
    if (open) {
      account.holds.delete(requestId);
      account.due.set(requestId, deadline);
      account.reserved -= open.amount;
      addToPeriods(account, open.day, open.month, -open.amount);
      if (open.epoch !== undefined) settleCover(account, open.epoch, open.amount, 0n, this.#now());
      account.settled.set(requestId, { state: 'released', charged: 0n, released: open.amount, day: open.day, month: open.month, fingerprint: open.fingerprint });
      return { status: 'released', amount: open.amount };
    }

    const settled = account.settled.get(requestId);
    if (!settled) return { status: 'not_found' };
    if (settled.state === 'committed' || settled.state === 'expired_charged') return { status: 'already_committed' };
    // The sweeper already returned this expired hold. Recording the release
    // makes a later commit a conflict and lets a retry reserve again.
    if (settled.state === 'expired') {
      settled.state = 'released';
      account.due.set(requestId, deadline);
    }
    return { status: 'released', amount: settled.released };
  }

  async sweep(wallet: WalletKey, nowMs?: number): Promise<SweepResult> {
    const account = this.#account(wallet);
    const clockMs = this.#now();
    const now = nowMs === undefined ? clockMs : Math.floor(nowMs);
    const result = settleExpired(account, now, Number.POSITIVE_INFINITY, this.#retentionMs, clockMs);
    lapseGrants(account, now, clockMs);
    return result;
  }

  async state(wallet: WalletKey): Promise<WalletState> {
    const account = this.#account(wallet);
    const balance = balanceOf(account);
    return {
      granted: account.granted,
      spent: account.spent,
      expired: account.expired,
      reserved: account.reserved,
      balance,
      available: balance - account.reserved,
      providerCost: account.providerCost,
      chargedWithoutCost: account.chargedWithoutCost,
      holds: account.holds.size,
      closed: account.closed,
    };
  }

  async reopen(wallet: WalletKey, currency: string): Promise<ReopenResult> {
    const account = this.#account(wallet);
    if (account.closedCurrency !== undefined && account.closedCurrency !== currency) return { reopened: false, closedCurrency: account.closedCurrency };
    account.closed = false;
    account.closedCurrency = undefined;
    return { reopened: true };
  }

  async close(wallet: WalletKey, currency?: string): Promise<void> {
    const account = this.#account(wallet);
    account.closed = true;
    account.closedCurrency = currency;
  }

  async verify(wallet: WalletKey): Promise<VerifyResult> {
    const account = this.#account(wallet);
    const replayed = emptyTotals();
    for (const entry of account.log) addEntry(replayed, entry.fields);

    return compareTotals(wallet, {
      stored: {
        granted: account.granted,
        spent: account.spent,
        expired: account.expired,
        reserved: account.reserved,
        providerCost: account.providerCost,
      },
      replayed,
      checkpoint: account.checkpoint === undefined ? undefined : { ...account.checkpoint },
      grantsSum: sum(account.grants.values()),
      holdsSum: sum([...account.holds.values()].map((hold) => hold.amount)),
    });
  }

  async compact(wallet: WalletKey, beforeMs: number): Promise<CompactResult> {
    validateCutoff(beforeMs);
    const account = this.#account(wallet);
    let count = 0;
    while (count < account.log.length && entryTimeMs(account.log[count]!.id) < beforeMs) count += 1;
    foldOldest(account, count);
    return { folded: count, checkpoint: account.checkpoint === undefined ? undefined : { ...account.checkpoint } };
  }

  async *entries(wallet: WalletKey, options: EntriesOptions = {}): AsyncIterable<LedgerEntry> {
    const { from, after, beforeMs } = options;
    if (from !== undefined && after !== undefined) throw new RangeError('invalid entries options: give either from or after, not both');
    if (from !== undefined) validateEntryId('from', from);
    if (after !== undefined) validateEntryId('after', after);
    if (beforeMs !== undefined) validateCutoff(beforeMs);
    const account = this.#account(wallet);

    // Compaction may remove entries between two yields, so each step finds
    // the next entry by id, with a binary search over the increasing ids.
    let index = from !== undefined ? firstEntryAfter(account.log, from, true) : after !== undefined ? firstEntryAfter(account.log, after, false) : 0;
    for (;;) {
      const next = account.log[index];
      if (next === undefined || (beforeMs !== undefined && entryTimeMs(next.id) >= beforeMs)) return;
      yield { id: next.id, fields: { ...next.fields } };
      index = firstEntryAfter(account.log, next.id, false);
    }
  }

  async quit(): Promise<void> {}

  #account(wallet: WalletKey): Account {
    const id = walletId(wallet);
    let account = this.#accounts.get(id);
    if (!account) {
      account = {
        granted: 0n,
        spent: 0n,
        expired: 0n,
        reserved: 0n,
        providerCost: 0n,
        chargedWithoutCost: 0n,
        closed: false,
        closedCurrency: undefined,
        periods: new Map(),
        holds: new Map(),
        settled: new Map(),
        due: new DueIndex(),
        grants: new Map(),
        expiring: [],
        lapsing: [],
        lapsingHeld: new Map(),
        lapseEpoch: 0,
        attributed: 0n,
        log: [],
        lastEntry: { ms: -1, sequence: -1 },
        checkpoint: undefined,
        maxLogEntries: this.#maxLogEntries,
      };
      this.#accounts.set(id, account);
    }
    return account;
  }
}

type Admission =
  | { status: 'admitted'; amount: bigint; units: number }
  | { status: 'rejected'; result: ReserveResult };

/**
 * Checks the limits and the funds for a new hold, in the order the contract
 * fixes, and picks the largest affordable number of units.
 */
function admit(account: Account, hold: HoldRequest, periods: { day: string; month: string }): Admission {
  const required = minimumHold(hold);
  const limits = hold.limits ?? {};
  const budgets: bigint[] = [];

  if (limits.maxPerRequest !== undefined) {
    if (required > limits.maxPerRequest) {
      return reject({ status: 'limit_exceeded', limit: 'maxPerRequest', required, remaining: limits.maxPerRequest });
    }
    budgets.push(limits.maxPerRequest);
  }
  const caps = [
    ['dailyCap', limits.dailyCap, periods.day],
    ['monthlyCap', limits.monthlyCap, periods.month],
  ] as const;
  for (const [limit, cap, field] of caps) {
    if (cap === undefined) continue;
    const used = account.periods.get(field) ?? 0n;
    const remaining = cap > used ? cap - used : 0n;
    if (required > remaining) return reject({ status: 'limit_exceeded', limit, required, remaining });
    budgets.push(remaining);
  }

  const available = balanceOf(account) - account.reserved;
  if (required > available) return reject({ status: 'insufficient_funds', available, required });
  budgets.push(available);

  const budget = budgets.reduce((least, value) => (value < least ? value : least));
  let units = hold.maxUnits;
  if (hold.perUnit > 0n && hold.maxUnits > hold.minUnits) {
    const affordable = (budget - hold.fixed) / hold.perUnit;
    if (affordable < BigInt(hold.maxUnits)) units = Number(affordable);
  }
  return { status: 'admitted', amount: hold.fixed + hold.perUnit * BigInt(units), units };
}

function reject(result: ReserveResult): Admission {
  return { status: 'rejected', result };
}

/**
 * Settles up to `limit` members of the due index whose score is at or before
 * `nowMs`, lowest first. A member with an open hold is an expired hold, which
 * is settled and kept as a record until `nowMs + retentionMs`. A member
 * without one is a record whose retention ended, which is removed.
 * `clockMs` is the ledger's clock, for the ids of the entries.
 */
function settleExpired(account: Account, nowMs: number, limit: number, retentionMs: number, clockMs: number): SweepResult {
  const result: SweepResult = { released: 0, charged: 0 };
  for (const requestId of account.due.takeDue(nowMs, limit)) {
    const hold = account.holds.get(requestId);
    if (!hold) {
      account.settled.delete(requestId);
      continue;
    }

    account.holds.delete(requestId);
    account.due.set(requestId, nowMs + retentionMs);
    account.reserved -= hold.amount;
    const settled = { charged: 0n, released: 0n, day: hold.day, month: hold.month, fingerprint: hold.fingerprint };

    if (hold.answered) {
      account.spent += hold.amount;
      account.chargedWithoutCost += hold.amount;
      const amount = hold.amount.toString();
      appendEntry(account, clockMs, { type: 'expire-charge', id: requestId, amount, charged: amount, providerCost: '0' });
      // The part of the charge that lapsed grants paid is kept in `released`, for a late commit that lowers it.
      const paid = hold.epoch === undefined ? 0n : settleCover(account, hold.epoch, hold.amount, hold.amount, clockMs);
      account.settled.set(requestId, { ...settled, state: 'expired_charged', charged: hold.amount, released: paid });
      result.charged += 1;
    } else {
      addToPeriods(account, hold.day, hold.month, -hold.amount);
      account.settled.set(requestId, { ...settled, state: 'expired', released: hold.amount });
      if (hold.epoch !== undefined) settleCover(account, hold.epoch, hold.amount, 0n, clockMs);
      result.released += 1;
    }
  }
  return result;
}

/**
 * Appends an entry with the next stream id, `<ms>-<sequence>`, the way Redis
 * assigns them: the clock's time, but never before the last entry's time,
 * and a sequence that counts up within one millisecond.
 */
function appendEntry(account: Account, clockMs: number, fields: Record<string, string>): void {
  const last = account.lastEntry;
  const ms = Math.max(Math.floor(clockMs), last.ms);
  const sequence = ms === last.ms ? last.sequence + 1 : 0;
  account.lastEntry = { ms, sequence };
  account.log.push({ id: `${ms}-${sequence}`, fields });
  if (account.maxLogEntries !== undefined && account.log.length > account.maxLogEntries) {
    foldOldest(account, Math.ceil(account.log.length / 2));
  }
}

/** Folds the oldest `count` entries of the log into the checkpoint and removes them from the log. */
function foldOldest(account: Account, count: number): void {
  if (count <= 0) return;
  const totals = emptyTotals();
  for (let i = 0; i < count; i++) addEntry(totals, account.log[i]!.fields);
  const previous = account.checkpoint;
  account.checkpoint = {
    granted: (previous?.granted ?? 0n) + totals.granted,
    spent: (previous?.spent ?? 0n) + totals.spent,
    expired: (previous?.expired ?? 0n) + totals.expired,
    providerCost: (previous?.providerCost ?? 0n) + totals.providerCost,
    entries: (previous?.entries ?? 0) + totals.entries,
    lastId: account.log[count - 1]!.id,
  };
  account.log.splice(0, count);
}

/** Returns the time part of a stream id, in epoch milliseconds. */
function entryTimeMs(id: string): number {
  return Number(id.slice(0, id.indexOf('-')));
}

/** Returns the index of the first entry whose id is after `id`, or at it when `inclusive`. */
function firstEntryAfter(log: LedgerEntry[], id: string, inclusive: boolean): number {
  let low = 0;
  let high = log.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    const order = compareEntryIds(log[middle]!.id, id);
    if (order > 0 || (inclusive && order === 0)) high = middle;
    else low = middle + 1;
  }
  return low;
}

function balanceOf(account: Account): bigint {
  return account.granted - account.spent - account.expired;
}

/**
 * Attributes the charges since the last attribution (`spent - attributed`)
 * to the live expiring grants, earliest expiry first. A negative difference,
 * left by a late commit that lowered an expire-charge, lowers no grant.
 */
function attributeCharges(account: Account): void {
  let pending = account.spent - account.attributed;
  for (const grant of account.expiring) {
    if (pending <= 0n) break;
    const taken = grant.remaining < pending ? grant.remaining : pending;
    grant.remaining -= taken;
    pending -= taken;
  }
  account.attributed = account.spent;
}

/**
 * Lapses the live grants whose expiry is at or before `nowMs`, earliest
 * first, after attributing the charges so far. Open holds may still be
 * charged from a grant's rest, so they cover it first: holds draw on
 * expiring grants before other funds, earliest expiry first, and each grant
 * gets the part of `reserved` that earlier lapsed grants do not hold yet.
 * What the holds do not cover is taken back now, but no more than the
 * balance beyond the open holds. The covered part waits in
 * `account.lapsing` with the lapse's epoch, and every open hold not flagged
 * yet is flagged with that epoch: it may be charged from the grants of its
 * epoch and later ones. settleCover lapses the waiting amounts as those
 * holds settle. `clockMs` is the ledger's clock, for the ids of the entries.
 */
function lapseGrants(account: Account, nowMs: number, clockMs: number): void {
  const first = account.expiring[0];
  if (first === undefined || first.expiresAtMs > nowMs) return;

  attributeCharges(account);
  const epoch = account.lapseEpoch + 1;
  let cover = account.reserved - sum(account.lapsing.map((grant) => grant.amount));
  // Without waiting amounts, no flag of an open hold counts any more.
  const fresh = account.lapsing.length === 0;
  let covered = false;
  while (account.expiring[0] !== undefined && account.expiring[0].expiresAtMs <= nowMs) {
    const grant = account.expiring.shift()!;
    const coveredPart = maxOf(0n, minOf(grant.remaining, cover));
    cover -= coveredPart;
    const free = maxOf(0n, balanceOf(account) - account.reserved);
    const takenBack = minOf(grant.remaining - coveredPart, free);
    account.expired += takenBack;
    appendEntry(account, clockMs, { type: 'expire', id: grant.id, amount: takenBack.toString() });
    if (coveredPart > 0n) {
      account.lapsing.push({ id: grant.id, amount: coveredPart, epoch });
      covered = true;
    }
  }
  if (!covered) return;

  // Every hold open now was placed before these expiries.
  if (fresh) account.lapsingHeld.clear();
  let flagged = 0n;
  for (const hold of account.holds.values()) {
    if (fresh || hold.epoch === undefined) {
      hold.epoch = epoch;
      flagged += hold.amount;
    }
  }
  if (flagged > 0n) account.lapsingHeld.set(epoch, flagged);
  account.lapseEpoch = epoch;
}

/**
 * Settles a hold flagged by lapseGrants with `epoch`: `amount` was held,
 * `charged` is what the wallet pays for it (0 when released). The charge is
 * taken from the waiting grants of that epoch and later, earliest expiry
 * first, and counts as attributed, so the live grants do not pay it again.
 * The grants of the first k epochs can only be charged to the holds of the
 * first k epochs, so what those holds no longer cover lapses, latest expiry
 * first. Returns what the waiting grants paid of the charge.
 */
function settleCover(account: Account, epoch: number, amount: bigint, charged: bigint, clockMs: number): bigint {
  if (account.lapsing.length === 0) return 0n;
  const held = account.lapsingHeld;
  held.set(epoch, maxOf(0n, (held.get(epoch) ?? 0n) - amount));

  let paid = 0n;
  for (const grant of account.lapsing) {
    if (grant.epoch < epoch || paid >= charged) continue;
    const paidFromGrant = minOf(grant.amount, charged - paid);
    grant.amount -= paidFromGrant;
    paid += paidFromGrant;
  }

  const lapsing = account.lapsing;
  for (let firstIndex = 0; firstIndex < lapsing.length; ) {
    const through = lapsing[firstIndex]!.epoch;
    let last = firstIndex;
    while (last + 1 < lapsing.length && lapsing[last + 1]!.epoch === through) last++;
    let excess = sum(lapsing.slice(0, last + 1).map((grant) => grant.amount));
    for (const [heldEpoch, heldAmount] of held) if (heldEpoch <= through) excess -= heldAmount;
    for (let i = last; i >= 0 && excess > 0n; i--) {
      const grant = lapsing[i]!;
      const takenBack = minOf(grant.amount, excess);
      if (takenBack === 0n) continue;
      grant.amount -= takenBack;
      excess -= takenBack;
      account.expired += takenBack;
      appendEntry(account, clockMs, { type: 'expire', id: grant.id, amount: takenBack.toString() });
    }
    firstIndex = last + 1;
  }

  account.lapsing = lapsing.filter((grant) => grant.amount > 0n);
  for (const [heldEpoch, heldAmount] of held) if (heldAmount === 0n) held.delete(heldEpoch);
  if (account.lapsing.length === 0) held.clear();
  account.attributed += paid;
  return paid;
}

function minOf(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

function maxOf(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

/** Inserts a grant into the live list, keeping the order of expiry, then grant id in byte order. */
function insertExpiringGrant(expiring: ExpiringGrant[], grant: ExpiringGrant): void {
  const index = expiring.findIndex(
    (other) => other.expiresAtMs > grant.expiresAtMs || (other.expiresAtMs === grant.expiresAtMs && compareBytes(grant.id, other.id) < 0),
  );
  expiring.splice(index === -1 ? expiring.length : index, 0, grant);
}

/** Adds `amount` to spent and appends a debit entry that records the request's full cost. */
function debit(account: Account, requestId: string, amount: bigint, entry: CommitEntry, clockMs: number): void {
  account.spent += amount;
  account.providerCost += entry.providerCost;
  appendEntry(account, clockMs, {
    type: 'debit',
    id: requestId,
    amount: amount.toString(),
    charged: entry.charged.toString(),
    providerCost: entry.providerCost.toString(),
    model: entry.model,
    route: entry.route,
    tokens: JSON.stringify(entry.tokens),
    estimated: entry.estimated ? '1' : '0',
  });
}

function addToPeriods(account: Account, day: string, month: string, delta: bigint): void {
  if (delta === 0n) return;
  account.periods.set(day, (account.periods.get(day) ?? 0n) + delta);
  account.periods.set(month, (account.periods.get(month) ?? 0n) + delta);
}

function sum(values: Iterable<bigint>): bigint {
  let total = 0n;
  for (const value of values) total += value;
  return total;
}
