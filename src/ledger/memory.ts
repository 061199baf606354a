/**
 * The in-memory ledger for local mode. It follows the Redis ledger step for
 * step (same checks, same order, same settled states), and the same contract
 * tests run against both. State lives in this process only and is lost on exit.
 */

import type {
  CommitEntry,
  CommitResult,
  CreditOptions,
  CreditResult,
  HoldRequest,
  Ledger,
  ReleaseResult,
  ReserveResult,
  SweepResult,
  VerifyResult,
  WalletKey,
  WalletState,
} from './ledger.ts';
import {
  EXPIRED_HOLDS_SETTLED_PER_RESERVE,
  GrantExpiredError,
  compareTotals,
  grantTotalTooLarge,
  holdTtlMs,
  minimumHold,
  periodFields,
  validateCommitEntry,
  validateGrant,
  validateGrantExpiry,
  validateHoldRequest,
  walletId,
} from './ledger.ts';
import { MAX_LEDGER_AMOUNT } from '../money/money.ts';

interface Hold {
  amount: bigint;
  units: number;
  expiresAtMs: number;
  answered: boolean;
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
  released: bigint;
  day: string;
  month: string;
  /** Empty when the request was committed without a hold. */
  fingerprint: string;
}

/**
 * One entry of the wallet's entry stream, with the fields of the Redis
 * stream. `amount` is the change to granted (grant), to spent (debit,
 * expire-charge) or to expired (expire). It differs from `charged` only when
 * a commit corrects an expired hold that the sweeper charged at the held amount.
 */
interface LogEntry {
  type: 'grant' | 'debit' | 'expire-charge' | 'expire';
  /** Grant id or request id. */
  id: string;
  amount: bigint;
  charged: bigint;
  providerCost: bigint;
  reason?: string;
  /** Expiry of an expiring grant, in epoch milliseconds. */
  expiresAtMs?: number;
  usage?: Omit<CommitEntry, 'charged' | 'providerCost'>;
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
  closed: boolean;
  /** Debited plus held amounts by period counter name (`day:...`, `month:...`). */
  periods: Map<string, bigint>;
  holds: Map<string, Hold>;
  settled: Map<string, Settled>;
  grants: Map<string, bigint>;
  /** Live expiring grants in order of expiry, then grant id in byte order. */
  expiring: ExpiringGrant[];
  /** The value of `spent` up to which charges are attributed to the expiring grants. */
  attributed: bigint;
  log: LogEntry[];
}

export interface MemoryLedgerOptions {
  /** Clock in epoch milliseconds, for hold expiry and the UTC day and month of the caps. */
  now?: () => number;
}

export class MemoryLedger implements Ledger {
  readonly #accounts = new Map<string, Account>();
  readonly #now: () => number;

  constructor(options: MemoryLedgerOptions = {}) {
    this.#now = options.now ?? Date.now;
  }

  async credit(wallet: WalletKey, grantId: string, amount: bigint, options: CreditOptions = {}): Promise<CreditResult> {
    const { reason, expiresAtMs } = options;
    validateGrant(wallet, grantId, amount);
    validateGrantExpiry(grantId, expiresAtMs);
    const account = this.#account(wallet);

    if (account.grants.has(grantId)) {
      return { status: 'credited', replayed: true, balance: balanceOf(account) };
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
    const entry: LogEntry = { type: 'grant', id: grantId, amount, charged: 0n, providerCost: 0n, reason: reason ?? '' };
    if (expiresAtMs !== undefined) {
      entry.expiresAtMs = expiresAtMs;
      // The live grants change here, so the charges so far go to the grants that were live while they happened.
      attributeCharges(account);
      insertExpiringGrant(account.expiring, { id: grantId, expiresAtMs, remaining: amount });
    }
    account.log.push(entry);
    return { status: 'credited', replayed: false, balance: balanceOf(account) };
  }

  async reserve(wallet: WalletKey, requestId: string, hold: HoldRequest): Promise<ReserveResult> {
    validateHoldRequest(requestId, hold);
    const account = this.#account(wallet);
    const nowMs = this.#now();
    settleExpired(account, nowMs, EXPIRED_HOLDS_SETTLED_PER_RESERVE);

    const open = account.holds.get(requestId);
    if (open) {
      if (open.fingerprint !== hold.fingerprint) return { status: 'conflict', reason: 'fingerprint_mismatch' };
      return { status: 'reserved', amount: open.amount, units: open.units, replayed: true };
    }
    const settled = account.settled.get(requestId);
    if (settled) {
      if (settled.fingerprint !== '' && settled.fingerprint !== hold.fingerprint) {
        return { status: 'conflict', reason: 'fingerprint_mismatch' };
      }
      if (settled.state !== 'released') return { status: 'conflict', reason: 'already_settled' };
    }
    if (account.closed) return { status: 'wallet_closed' };
    lapseGrants(account, nowMs);

    const periods = periodFields(nowMs);
    const admission = admit(account, hold, periods);
    if (admission.status !== 'admitted') return admission.result;

    account.holds.set(requestId, {
      amount: admission.amount,
      units: admission.units,
      expiresAtMs: nowMs + holdTtlMs(hold),
      answered: false,
      day: periods.day,
      month: periods.month,
      fingerprint: hold.fingerprint,
    });
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

    const open = account.holds.get(requestId);
    if (open) {
      const released = open.amount > charged ? open.amount - charged : 0n;
      account.holds.delete(requestId);
      account.reserved -= open.amount;
      debit(account, requestId, charged, entry);
      addToPeriods(account, open.day, open.month, charged - open.amount);
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
    const alreadyCharged = settled?.state === 'expired_charged' ? settled.charged : 0n;
    const { day, month } = settled ?? periodFields(this.#now());
    debit(account, requestId, charged - alreadyCharged, entry);
    addToPeriods(account, day, month, charged - alreadyCharged);
    account.settled.set(requestId, { state: 'committed', charged, released: 0n, day, month, fingerprint: settled?.fingerprint ?? '' });
    return { status: 'committed', charged, released: 0n, replayed: false };
  }

  async release(wallet: WalletKey, requestId: string): Promise<ReleaseResult> {
    const account = this.#account(wallet);

    const open = account.holds.get(requestId);
    if (open) {
      account.holds.delete(requestId);
      account.reserved -= open.amount;
      addToPeriods(account, open.day, open.month, -open.amount);
      account.settled.set(requestId, { state: 'released', charged: 0n, released: open.amount, day: open.day, month: open.month, fingerprint: open.fingerprint });
      return { status: 'released', amount: open.amount };
    }

    const settled = account.settled.get(requestId);
    if (!settled) return { status: 'not_found' };
    if (settled.state === 'committed' || settled.state === 'expired_charged') return { status: 'already_committed' };
    // The sweeper already returned this expired hold. Recording the release
    // makes a later commit a conflict and lets a retry reserve again.
    settled.state = 'released';
    return { status: 'released', amount: settled.released };
  }

  async sweep(wallet: WalletKey, nowMs?: number): Promise<SweepResult> {
    const account = this.#account(wallet);
    const now = nowMs ?? this.#now();
    const result = settleExpired(account, now, Number.POSITIVE_INFINITY);
    lapseGrants(account, now);
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
      holds: account.holds.size,
      closed: account.closed,
    };
  }

  async close(wallet: WalletKey): Promise<void> {
    this.#account(wallet).closed = true;
  }

  async verify(wallet: WalletKey): Promise<VerifyResult> {
    const account = this.#account(wallet);
    const replayed = { granted: 0n, spent: 0n, expired: 0n, providerCost: 0n, entries: account.log.length };
    for (const entry of account.log) {
      if (entry.type === 'grant') replayed.granted += entry.amount;
      else if (entry.type === 'expire') replayed.expired += entry.amount;
      else replayed.spent += entry.amount;
      replayed.providerCost += entry.providerCost;
    }

    return compareTotals(wallet, {
      stored: {
        granted: account.granted,
        spent: account.spent,
        expired: account.expired,
        reserved: account.reserved,
        providerCost: account.providerCost,
      },
      replayed,
      grantsSum: sum(account.grants.values()),
      holdsSum: sum([...account.holds.values()].map((hold) => hold.amount)),
    });
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
        closed: false,
        periods: new Map(),
        holds: new Map(),
        settled: new Map(),
        grants: new Map(),
        expiring: [],
        attributed: 0n,
        log: [],
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

/** Settles up to `limit` holds whose expiry is at or before `nowMs`, earliest first. */
function settleExpired(account: Account, nowMs: number, limit: number): SweepResult {
  const expired = [...account.holds.entries()]
    .filter(([, hold]) => hold.expiresAtMs <= nowMs)
    .sort(byExpiryThenId)
    .slice(0, limit);

  const result: SweepResult = { released: 0, charged: 0 };
  for (const [requestId, hold] of expired) {
    account.holds.delete(requestId);
    account.reserved -= hold.amount;
    const settled = { charged: 0n, released: 0n, day: hold.day, month: hold.month, fingerprint: hold.fingerprint };

    if (hold.answered) {
      account.spent += hold.amount;
      account.log.push({ type: 'expire-charge', id: requestId, amount: hold.amount, charged: hold.amount, providerCost: 0n });
      account.settled.set(requestId, { ...settled, state: 'expired_charged', charged: hold.amount });
      result.charged += 1;
    } else {
      addToPeriods(account, hold.day, hold.month, -hold.amount);
      account.settled.set(requestId, { ...settled, state: 'expired', released: hold.amount });
      result.released += 1;
    }
  }
  return result;
}

/** Orders holds like the Redis sorted set by expiry: by score, then by member. */
function byExpiryThenId([idA, holdA]: [string, Hold], [idB, holdB]: [string, Hold]): number {
  if (holdA.expiresAtMs !== holdB.expiresAtMs) return holdA.expiresAtMs - holdB.expiresAtMs;
  if (idA === idB) return 0;
  return idA < idB ? -1 : 1;
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
 * first, after attributing the charges so far. Each takes back what is left
 * of it, but no more than the balance beyond the open holds.
 */
function lapseGrants(account: Account, nowMs: number): void {
  const first = account.expiring[0];
  if (first === undefined || first.expiresAtMs > nowMs) return;

  attributeCharges(account);
  while (account.expiring[0] !== undefined && account.expiring[0].expiresAtMs <= nowMs) {
    const grant = account.expiring.shift()!;
    const free = balanceOf(account) - account.reserved;
    let takenBack = grant.remaining < free ? grant.remaining : free;
    if (takenBack < 0n) takenBack = 0n;
    account.expired += takenBack;
    account.log.push({ type: 'expire', id: grant.id, amount: takenBack, charged: 0n, providerCost: 0n });
  }
}

/** Inserts a grant into the live list, keeping the order of expiry, then grant id in byte order. */
function insertExpiringGrant(expiring: ExpiringGrant[], grant: ExpiringGrant): void {
  const index = expiring.findIndex(
    (other) => other.expiresAtMs > grant.expiresAtMs || (other.expiresAtMs === grant.expiresAtMs && compareBytes(grant.id, other.id) < 0),
  );
  expiring.splice(index === -1 ? expiring.length : index, 0, grant);
}

/** Compares two strings by their UTF-8 bytes, the order Redis gives sorted-set members. */
function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** Adds `amount` to spent and appends a debit entry that records the request's full cost. */
function debit(account: Account, requestId: string, amount: bigint, entry: CommitEntry): void {
  const { charged, providerCost, ...usage } = entry;
  account.spent += amount;
  account.providerCost += providerCost;
  account.log.push({ type: 'debit', id: requestId, amount, charged, providerCost, usage: { ...usage, tokens: { ...usage.tokens } } });
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
