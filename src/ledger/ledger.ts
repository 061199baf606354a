/**
 * The ledger contract: a two-phase hold-and-settle account per wallet.
 * All amounts are bigint nano-units of the wallet's currency. Every method is
 * one atomic step on one wallet; implementations must give identical results
 * (the same contract tests run against each).
 */

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
 * What to hold. The hold is `fixed + perUnit * units`, where `units` is the
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
  limits?: SpendLimits;
}

export type ReserveResult =
  | { status: 'reserved'; amount: bigint; units: number; replayed: boolean }
  | { status: 'insufficient_funds'; available: bigint; required: bigint }
  | { status: 'limit_exceeded'; limit: 'maxPerRequest' | 'dailyCap' | 'monthlyCap'; required: bigint; remaining: bigint }
  | { status: 'conflict'; reason: 'fingerprint_mismatch' | 'already_settled' }
  | { status: 'wallet_closed' };

/** One settled request, as appended to the wallet's entry stream. */
export interface CommitEntry {
  /** What the wallet pays. */
  charged: bigint;
  /** What the platform pays the provider for the same request. */
  providerCost: bigint;
  model: string;
  route: string;
  /** Token counts by kind, for the entry stream. */
  tokens: Record<string, number>;
  estimated: boolean;
}

export type CommitResult =
  | { status: 'committed'; charged: bigint; released: bigint; replayed: boolean }
  | { status: 'conflict'; reason: 'released' };

export type ReleaseResult = { status: 'released'; amount: bigint } | { status: 'not_found' } | { status: 'already_committed' };

export type CreditResult = { status: 'credited'; replayed: boolean; balance: bigint };

export interface WalletState {
  /** Sum of all grants. */
  granted: bigint;
  /** Sum of all committed charges. */
  spent: bigint;
  /** Sum of all open holds. */
  reserved: bigint;
  /** granted - spent. */
  balance: bigint;
  /** balance - reserved: what a new request may hold. */
  available: bigint;
  /** Sum of committed provider costs (the platform's side). */
  providerCost: bigint;
  holds: number;
  closed: boolean;
}

export interface SweepResult {
  released: number;
  charged: number;
}

export interface Ledger {
  /** Adds a grant; idempotent on `grantId`. Rejects amounts above MAX_LEDGER_AMOUNT. */
  credit(wallet: WalletKey, grantId: string, amount: bigint, reason?: string): Promise<CreditResult>;
  /** Places a hold if the wallet can afford it; idempotent on `requestId` with the same fingerprint. */
  reserve(wallet: WalletKey, requestId: string, hold: HoldRequest): Promise<ReserveResult>;
  /** Records that the upstream answered, so an expired hold is charged rather than released. */
  markAnswered(wallet: WalletKey, requestId: string): Promise<void>;
  /** Debits the actual cost, releases the rest of the hold and appends an entry; idempotent. */
  commit(wallet: WalletKey, requestId: string, entry: CommitEntry): Promise<CommitResult>;
  /** Returns the whole hold (the upstream did not serve the call); idempotent. */
  release(wallet: WalletKey, requestId: string): Promise<ReleaseResult>;
  /** Settles holds that expired before `nowMs`: released, or charged at the held amount if answered. */
  sweep(wallet: WalletKey, nowMs?: number): Promise<SweepResult>;
  state(wallet: WalletKey): Promise<WalletState>;
  /** Closes the wallet: no new holds; history stays. */
  close(wallet: WalletKey): Promise<void>;
  /** Recomputes balance from the entry stream and compares it with the stored totals. */
  verify(wallet: WalletKey): Promise<{ ok: boolean; granted: bigint; spent: bigint; entries: number; problems: string[] }>;
  quit(): Promise<void>;
}

export class LedgerUnavailableError extends Error {
  override readonly name = 'LedgerUnavailableError';
}

export class GrantTooLargeError extends Error {
  override readonly name = 'GrantTooLargeError';
}

export function walletId(wallet: WalletKey): string {
  return `${wallet.namespace}/${wallet.name}`;
}
