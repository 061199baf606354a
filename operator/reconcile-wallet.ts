/**
 * The Wallet reconciler. For each Wallet it
 *
 * - adds the `tollgate.dev/ledger` finalizer, and on deletion closes the
 *   ledger account (its history stays) before removing the finalizer;
 * - credits each grant to the ledger once, with its expiry. The ledger is
 *   idempotent on the grant id, so a grant credited again after a crash is
 *   a no-op, and `status.appliedGrants` (the applied ids still in the spec)
 *   lets later passes skip the call. A grant whose expiry passed before it
 *   was applied is skipped with a Warning Event. So is a grant removed and
 *   added again under the same id with another amount, because the ledger
 *   keeps its first amount, and the Ready message names it while it stays;
 * - settles expired holds and lapses expired grants (`ledger.sweep`), and
 *   mirrors the ledger totals into the status with the Ready, LowBalance and
 *   Exhausted conditions. It asks to be queued again shortly after the next
 *   expiry of an applied grant, so a lapse shows without waiting for a resync;
 * - records Events when grants are applied, when grants lapse with an
 *   amount taken back, and when conditions turn;
 * - when `compactAfterMs` is set, folds the wallet's ledger entries older
 *   than that into the ledger's checkpoint, at most once per
 *   `compactIntervalMs` (the resync interval). The entries are then gone
 *   from Redis; only their totals stay.
 *
 * Status writes happen only when the status changed. A change of amounts
 * alone is written at most once per `statusIntervalMs` per wallet, so a busy
 * wallet does not turn every debit into an API write; the reconciler asks
 * to be queued again when the interval has passed. A rise of the expired
 * total is written at once, because it is rare and changes what the wallet
 * can spend.
 */

import type { Logger } from 'pino';
import type { Condition } from '../src/api/common.ts';
import type { Wallet } from '../src/api/wallet.ts';
import { GrantExpiredError, GrantTooLargeError, LedgerUnavailableError, walletId, type Ledger, type WalletKey, type WalletState } from '../src/ledger/ledger.ts';
import { formatAmount, parseAmount } from '../src/money/money.ts';
import { EventReason, targetOf, type EventRecorder } from './events.ts';
import type { Informer } from './informer.ts';
import {
  buildConditions,
  findCondition,
  parseResource,
  patchFinalizers,
  patchStatus,
  sameJson,
  type DesiredCondition,
  type KubeClients,
  type KubeObject,
} from './kube.ts';
import type { OperatorMetrics } from './metrics.ts';
import type { ReconcileResult } from './queue.ts';

export const LEDGER_FINALIZER = 'tollgate.dev/ledger';

export interface WalletStatus {
  balance?: string;
  reserved?: string;
  spent?: string;
  granted?: string;
  expired?: string;
  appliedGrants?: string[];
  observedGeneration?: number;
  conditions?: Condition[];
}

/** A reason the wallet cannot be Ready, other than running out of funds. */
export interface WalletProblem {
  reason: string;
  message: string;
}

/** Inputs of `desiredWalletStatus`. */
export interface WalletFacts {
  generation: number | undefined;
  state: WalletState;
  /** Undefined when the spec is invalid. */
  currency: string | undefined;
  lowBalanceThreshold: bigint | undefined;
  appliedGrants: string[];
  /** The first problem found: an invalid spec, a rejected grant, or an unusable price plan. */
  problem: WalletProblem | undefined;
  /** Grants of the spec that the ledger keeps at another amount, described for the Ready message. */
  ignoredGrants?: string[];
}

/** Reason of the Ready condition while the ledger cannot be reached. */
export const LEDGER_UNAVAILABLE = EventReason.LedgerUnavailable;

/** Computes the desired Wallet status; conditions keep their transition times where their status did not change. */
export function desiredWalletStatus(previous: WalletStatus | undefined, facts: WalletFacts, now: string): WalletStatus {
  const { state } = facts;
  const money = (amount: bigint) => (facts.currency ? `${formatAmount(amount)} ${facts.currency}` : formatAmount(amount));
  const exhausted = state.balance <= 0n;

  const exhaustedCondition: DesiredCondition = exhausted
    ? { type: 'Exhausted', status: 'True', reason: 'NoFunds', message: `balance is ${money(state.balance)}; requests are denied until a grant is added` }
    : { type: 'Exhausted', status: 'False', reason: 'FundsAvailable', message: `balance is ${money(state.balance)}` };

  let lowBalance: DesiredCondition;
  if (facts.currency === undefined) {
    lowBalance = { type: 'LowBalance', status: 'Unknown', reason: EventReason.InvalidSpec, message: 'the spec is invalid; see the Ready condition' };
  } else if (facts.lowBalanceThreshold === undefined) {
    lowBalance = { type: 'LowBalance', status: 'False', reason: 'NoThreshold', message: 'spec.lowBalanceThreshold is not set' };
  } else if (state.balance < facts.lowBalanceThreshold) {
    lowBalance = {
      type: 'LowBalance',
      status: 'True',
      reason: 'BelowThreshold',
      message: `balance ${money(state.balance)} is below the low-balance threshold ${money(facts.lowBalanceThreshold)}`,
    };
  } else {
    lowBalance = {
      type: 'LowBalance',
      status: 'False',
      reason: 'AboveThreshold',
      message: `balance ${money(state.balance)} is at or above the low-balance threshold ${money(facts.lowBalanceThreshold)}`,
    };
  }

  let ready: DesiredCondition;
  if (facts.problem) {
    ready = { type: 'Ready', status: 'False', ...facts.problem };
  } else if (state.closed) {
    ready = { type: 'Ready', status: 'False', reason: 'LedgerClosed', message: 'the ledger account is closed; no new holds are admitted' };
  } else if (exhausted) {
    ready = { type: 'Ready', status: 'False', reason: 'Exhausted', message: exhaustedCondition.message };
  } else {
    ready = { type: 'Ready', status: 'True', reason: 'Active', message: `available ${money(state.available)} of balance ${money(state.balance)}` };
  }
  if (facts.ignoredGrants !== undefined && facts.ignoredGrants.length > 0) {
    ready = { ...ready, message: `${ready.message}; ${facts.ignoredGrants.join('; ')}` };
  }

  return {
    balance: formatAmount(state.balance),
    reserved: formatAmount(state.reserved),
    spent: formatAmount(state.spent),
    granted: formatAmount(state.granted),
    expired: formatAmount(state.expired),
    appliedGrants: facts.appliedGrants,
    observedGeneration: facts.generation,
    conditions: buildConditions(previous?.conditions, [ready, lowBalance, exhaustedCondition], facts.generation, now),
  };
}

/** A condition change worth an Event. */
export interface WalletTransition {
  type: 'Normal' | 'Warning';
  reason: (typeof EventReason)[keyof typeof EventReason];
  message: string;
}

/**
 * Returns the Events for conditions that turned between two statuses, and
 * for a rise of the expired total. `currency` names the unit in messages.
 */
export function walletTransitions(previous: WalletStatus | undefined, next: WalletStatus, currency?: string): WalletTransition[] {
  const turned = (type: string, to: string): Condition | undefined => {
    const after = findCondition(next.conditions, type);
    const before = findCondition(previous?.conditions, type);
    return after && after.status === to && before?.status !== to ? after : undefined;
  };
  const transitions: WalletTransition[] = [];

  const low = turned('LowBalance', 'True');
  if (low) transitions.push({ type: 'Warning', reason: EventReason.LowBalance, message: low.message });
  const exhausted = turned('Exhausted', 'True');
  if (exhausted) transitions.push({ type: 'Warning', reason: EventReason.Exhausted, message: exhausted.message });
  const ready = turned('Ready', 'True');
  if (ready) transitions.push({ type: 'Normal', reason: EventReason.Ready, message: `wallet is ready: ${ready.message}` });

  const after = findCondition(next.conditions, 'Ready');
  const before = findCondition(previous?.conditions, 'Ready');
  const problemReasons: Record<string, WalletTransition['reason']> = {
    [EventReason.InvalidSpec]: EventReason.InvalidSpec,
    [EventReason.PricePlanNotFound]: EventReason.PricePlanNotFound,
    CurrencyMismatch: EventReason.InvalidSpec,
  };
  const problem = after ? problemReasons[after.reason] : undefined;
  if (after?.status === 'False' && problem && before?.reason !== after.reason) {
    transitions.push({ type: 'Warning', reason: problem, message: after.message });
  }

  const lapsed = expiredAmount(next) - expiredAmount(previous);
  if (lapsed > 0n) {
    const unit = currency ? ` ${currency}` : '';
    transitions.push({
      type: 'Normal',
      reason: EventReason.GrantLapsed,
      message: `expired grants lapsed and took back ${formatAmount(lapsed)}${unit} of unspent credit; balance ${next.balance ?? '0.00'}${unit}`,
    });
  }
  return transitions;
}

function expiredAmount(status: WalletStatus | undefined): bigint {
  return status?.expired === undefined ? 0n : parseAmount(status.expired, 'status.expired');
}

/** Maximum requeue delay for a grant expiry, below the 2^31 - 1 ms (about 24.8 days) that a Node timer can wait. */
const MAX_EXPIRY_REQUEUE_MS = 24 * 3_600_000;
/** Time after a grant's expiry to reconcile again, so that a Redis server clock a little behind the operator's has passed it too. */
const EXPIRY_REQUEUE_MARGIN_MS = 1_000;

/**
 * Returns the delay until shortly after the earliest expiry of an applied
 * grant that is later than `nowMs`, at most MAX_EXPIRY_REQUEUE_MS, or
 * undefined when no applied grant expires later.
 */
export function nextExpiryDelayMs(wallet: Wallet, appliedGrants: string[], nowMs: number): number | undefined {
  let earliest: number | undefined;
  for (const grant of wallet.spec.grants) {
    if (grant.expiresAt === undefined || !appliedGrants.includes(grant.id)) continue;
    const expiresAtMs = Date.parse(grant.expiresAt);
    if (expiresAtMs > nowMs && (earliest === undefined || expiresAtMs < earliest)) earliest = expiresAtMs;
  }
  if (earliest === undefined) return undefined;
  return Math.min(earliest - nowMs + EXPIRY_REQUEUE_MARGIN_MS, MAX_EXPIRY_REQUEUE_MS);
}

/**
 * True when the statuses differ in more than amounts and messages: a
 * condition's status or reason, the generation, the grants or the expired total.
 */
export function isSignificantChange(previous: WalletStatus | undefined, next: WalletStatus): boolean {
  if (!previous) return true;
  if (previous.observedGeneration !== next.observedGeneration) return true;
  if (expiredAmount(previous) !== expiredAmount(next)) return true;
  if (!sameJson(previous.appliedGrants ?? [], next.appliedGrants ?? [])) return true;
  const shape = (status: WalletStatus) => (status.conditions ?? []).map(({ type, status: value, reason }) => ({ type, value, reason }));
  return !sameJson(shape(previous), shape(next));
}

export interface WalletReconcilerOptions {
  clients: KubeClients;
  wallets: Informer;
  plans: Informer;
  ledger: Ledger;
  events: EventRecorder;
  metrics: OperatorMetrics;
  log: Logger;
  /** Minimum time between two status writes of one wallet that change only amounts, in milliseconds. */
  statusIntervalMs: number;
  /** Age in milliseconds beyond which a wallet's ledger entries are compacted; undefined turns compaction off. */
  compactAfterMs?: number | undefined;
  /** Minimum time between two compactions of one wallet, in milliseconds (default 0). */
  compactIntervalMs?: number | undefined;
}

export interface LedgerCompactorOptions {
  ledger: Ledger;
  log: Logger;
  /** Age in milliseconds beyond which entries are compacted. */
  compactAfterMs: number;
  /** Minimum time between two compactions of one wallet, in milliseconds. */
  intervalMs: number;
}

/**
 * Compacts wallets' ledger entries older than a fixed age, at most once per
 * interval for each wallet, so that a busy reconcile loop adds one compact
 * call per wallet and interval. A failure is logged and not raised, so that
 * the status updates go on, and the next interval tries again.
 */
export class LedgerCompactor {
  readonly #options: LedgerCompactorOptions;
  /** When each wallet was last compacted, in epoch milliseconds. */
  readonly #last = new Map<string, number>();

  constructor(options: LedgerCompactorOptions) {
    this.#options = options;
  }

  /** Compacts the wallet's entries older than `nowMs - compactAfterMs` unless it did within the interval; returns the entries folded. */
  async compactIfDue(wallet: WalletKey, nowMs: number): Promise<number> {
    const { ledger, log, compactAfterMs, intervalMs } = this.#options;
    const id = walletId(wallet);
    const last = this.#last.get(id);
    if (last !== undefined && nowMs - last < intervalMs) return 0;
    this.#last.set(id, nowMs);

    const beforeMs = nowMs - compactAfterMs;
    try {
      const { folded, checkpoint } = await ledger.compact(wallet, beforeMs);
      if (folded > 0) {
        log.info(
          { wallet: id, folded, before: new Date(beforeMs).toISOString(), checkpointEntries: checkpoint?.entries, lastId: checkpoint?.lastId },
          'compacted ledger entries into the checkpoint',
        );
      }
      return folded;
    } catch (error) {
      log.error({ err: error, wallet: id }, 'ledger compaction failed; it runs again after the next interval');
      return 0;
    }
  }

  /** Forgets a deleted wallet. */
  forget(wallet: WalletKey): void {
    this.#last.delete(walletId(wallet));
  }
}

export class WalletReconciler {
  readonly #options: WalletReconcilerOptions;
  /** When each wallet's status was last written, for the rate limit. */
  readonly #lastWrite = new Map<string, number>();
  /** Grants already reported as rejected or expired, so each Warning is recorded once per process. */
  readonly #reported = new Set<string>();
  readonly #compactor: LedgerCompactor | undefined;

  constructor(options: WalletReconcilerOptions) {
    this.#options = options;
    if (options.compactAfterMs !== undefined) {
      this.#compactor = new LedgerCompactor({
        ledger: options.ledger,
        log: options.log,
        compactAfterMs: options.compactAfterMs,
        intervalMs: options.compactIntervalMs ?? 0,
      });
    }
  }

  async reconcile(namespace: string, name: string): Promise<ReconcileResult> {
    const { wallets, metrics } = this.#options;
    let object = wallets.get(namespace, name);
    if (!object) {
      metrics.removeWallet(namespace, name);
      this.#lastWrite.delete(`${namespace}/${name}`);
      this.#compactor?.forget({ namespace, name });
      return;
    }
    if (object.metadata.deletionTimestamp) {
      await this.#finalize(object);
      return;
    }
    const finalizers = object.metadata.finalizers ?? [];
    if (!finalizers.includes(LEDGER_FINALIZER)) {
      object = await patchFinalizers(this.#options.clients, 'Wallet', object, [...finalizers, LEDGER_FINALIZER]);
      wallets.update(object);
    }
    return this.#sync(object);
  }

  async #sync(object: KubeObject): Promise<ReconcileResult> {
    try {
      return await this.#syncWithLedger(object);
    } catch (error) {
      if (error instanceof LedgerUnavailableError) await this.#markLedgerUnavailable(object, error);
      throw error;
    }
  }

  /**
   * Turns the wallet's Ready condition False while the ledger is unavailable,
   * keeping the amounts last read, so that `kubectl get wallets` does not
   * show a wallet ready while its sidecars admit no calls. The next sync
   * that reaches the ledger writes the full status again.
   */
  async #markLedgerUnavailable(object: KubeObject, error: LedgerUnavailableError): Promise<void> {
    const { clients, wallets, events, log } = this.#options;
    const previous = object.status as WalletStatus | undefined;
    const ready = findCondition(previous?.conditions, 'Ready');
    if (ready?.status === 'False' && ready.reason === LEDGER_UNAVAILABLE) return;

    const conditions = previous?.conditions ?? [];
    const message = `the balance shown is the last one read, and sidecars admit no calls until the ledger is back: ${error.message}`;
    const [unavailable] = buildConditions(conditions, [{ type: 'Ready', status: 'False', reason: LEDGER_UNAVAILABLE, message }], ready?.observedGeneration, new Date().toISOString());
    const status = { ...previous, conditions: [unavailable!, ...conditions.filter((condition) => condition.type !== 'Ready')] };
    const namespace = object.metadata.namespace ?? 'default';
    try {
      wallets.update(await patchStatus(clients, 'Wallet', namespace, object.metadata.name, status));
    } catch (patchError) {
      log.debug({ err: patchError, wallet: `${namespace}/${object.metadata.name}` }, 'writing the LedgerUnavailable condition failed');
      return;
    }
    // One Warning per wallet and outage: the condition is written only when it turns.
    await events.record(targetOf(object), 'Warning', EventReason.LedgerUnavailable, message);
  }

  async #syncWithLedger(object: KubeObject): Promise<ReconcileResult> {
    const { ledger, metrics } = this.#options;
    const namespace = object.metadata.namespace ?? 'default';
    const key: WalletKey = { namespace, name: object.metadata.name };
    const previous = object.status as WalletStatus | undefined;
    const parsed = parseResource('Wallet', object);

    let problem: WalletProblem | undefined;
    let appliedGrants = [...(previous?.appliedGrants ?? [])];
    let ignoredGrants: string[] = [];
    let wallet: Wallet | undefined;
    if (parsed.ok) {
      wallet = parsed.value;
      problem = await this.#reopenIfClosed(object, key, wallet.spec.currency);
      if (problem === undefined) {
        // A grant removed from the spec leaves the list, so that adding its id again goes back to the ledger, which reports its first amount.
        const inSpec = new Set(wallet.spec.grants.map((grant) => grant.id));
        appliedGrants = appliedGrants.filter((id) => inSpec.has(id));
        const applied = await this.#applyGrants(object, wallet, appliedGrants);
        appliedGrants = applied.appliedGrants;
        ignoredGrants = applied.ignoredGrants;
        problem = applied.problem ?? this.#planProblem(wallet);
      }
    } else {
      problem = { reason: EventReason.InvalidSpec, message: `invalid Wallet: ${parsed.message}` };
    }

    const swept = await ledger.sweep(key);
    if (swept.charged > 0) {
      this.#options.log.warn(
        { wallet: `${namespace}/${key.name}`, chargedHolds: swept.charged },
        'charged expired holds of answered calls at their held amount, because their sidecars never committed them; their provider cost is not known',
      );
    }
    const state = await ledger.state(key);
    if (wallet) metrics.setWallet(namespace, key.name, wallet.spec.currency, state);

    const facts: WalletFacts = {
      generation: object.metadata.generation,
      state,
      currency: wallet?.spec.currency,
      lowBalanceThreshold: wallet?.spec.lowBalanceThreshold === undefined ? undefined : parseAmount(wallet.spec.lowBalanceThreshold),
      appliedGrants,
      problem,
      ignoredGrants,
    };
    const status = desiredWalletStatus(previous, facts, new Date().toISOString());
    const written = await this.#writeStatus(object, previous, status, wallet?.spec.currency);
    await this.#compactor?.compactIfDue(key, Date.now());

    const expiryDelayMs = wallet ? nextExpiryDelayMs(wallet, appliedGrants, Date.now()) : undefined;
    if (expiryDelayMs === undefined) return written;
    return { requeueAfterMs: Math.min(expiryDelayMs, written?.requeueAfterMs ?? Number.POSITIVE_INFINITY) };
  }

  /** Credits the grants not yet applied; returns the applied grant ids and a problem for a grant the ledger rejected. */
  async #applyGrants(
    object: KubeObject,
    wallet: Wallet,
    alreadyApplied: string[],
  ): Promise<{ appliedGrants: string[]; problem: WalletProblem | undefined; ignoredGrants: string[] }> {
    const { ledger, events, log } = this.#options;
    const key: WalletKey = { namespace: object.metadata.namespace ?? 'default', name: object.metadata.name };
    const applied = [...alreadyApplied];
    const ignoredGrants: string[] = [];
    let problem: WalletProblem | undefined;

    for (const grant of wallet.spec.grants) {
      // The CRD rejects edits of an existing grant's amount or expiry.
      if (applied.includes(grant.id)) continue;
      const reportKey = `${object.metadata.uid}/${grant.id}`;

      // A grant that expired before it was applied is skipped. The ledger checks the expiry again by its own clock.
      const expiresAtMs = grant.expiresAt === undefined ? undefined : Date.parse(grant.expiresAt);
      const skipExpired = async () => {
        if (this.#reported.has(reportKey)) return;
        this.#reported.add(reportKey);
        await events.record(targetOf(object), 'Warning', EventReason.GrantExpired, `grant "${grant.id}" expired at ${grant.expiresAt} before it was applied; it was skipped`);
      };
      if (expiresAtMs !== undefined && expiresAtMs <= Date.now()) {
        await skipExpired();
        continue;
      }

      const amount = parseAmount(grant.amount, `grant "${grant.id}" amount`);
      let result;
      try {
        result = await ledger.credit(key, grant.id, amount, { reason: grant.reason, expiresAtMs });
      } catch (error) {
        if (error instanceof GrantExpiredError) {
          await skipExpired();
          continue;
        }
        if (!(error instanceof GrantTooLargeError)) throw error;
        problem ??= { reason: EventReason.GrantRejected, message: error.message };
        if (!this.#reported.has(reportKey)) {
          this.#reported.add(reportKey);
          await events.record(targetOf(object), 'Warning', EventReason.GrantRejected, error.message);
        }
        continue;
      }

      if (result.replayed && result.amount !== amount) {
        // Left out of appliedGrants, so that each sync checks it again and the Ready message keeps showing it.
        const message =
          `grant "${grant.id}" of ${formatAmount(amount)} ${wallet.spec.currency} was not applied: the ledger applied this id before with ` +
          `${formatAmount(result.amount)} ${wallet.spec.currency} and keeps that amount; add the new amount as a grant with a new id`;
        ignoredGrants.push(message);
        if (!this.#reported.has(reportKey)) {
          this.#reported.add(reportKey);
          // The event recorder also logs a Warning event at warn, so no other line is needed.
          await events.record(targetOf(object), 'Warning', EventReason.GrantRejected, message);
        }
        continue;
      }
      applied.push(grant.id);
      if (!result.replayed) {
        const reason = grant.reason ? ` (${grant.reason})` : '';
        const expiry = grant.expiresAt ? `, expiring at ${grant.expiresAt}` : '';
        const message = `applied grant "${grant.id}" of ${formatAmount(amount)} ${wallet.spec.currency}${reason}${expiry}; balance ${formatAmount(result.balance)} ${wallet.spec.currency}`;
        log.info({ wallet: `${key.namespace}/${key.name}`, grant: grant.id, amount: formatAmount(amount) }, 'applied a grant');
        await events.record(targetOf(object), 'Normal', EventReason.GrantApplied, message);
      }
    }
    return { appliedGrants: applied, problem, ignoredGrants };
  }

  /** Returns why the wallet's price plan cannot be used, or undefined when it can. */
  #planProblem(wallet: Wallet): WalletProblem | undefined {
    const namespace = wallet.metadata.namespace ?? 'default';
    const planName = wallet.spec.pricePlanRef.name;
    const planObject = this.#options.plans.get(namespace, planName);
    if (!planObject || planObject.metadata.deletionTimestamp) {
      return {
        reason: EventReason.PricePlanNotFound,
        message: `PricePlan "${planName}" not found in namespace "${namespace}"; create it or fix spec.pricePlanRef.name`,
      };
    }
    const plan = parseResource('PricePlan', planObject);
    if (!plan.ok) {
      return { reason: EventReason.InvalidSpec, message: `PricePlan "${planName}" is invalid: ${plan.message}` };
    }
    if (plan.value.spec.currency !== wallet.spec.currency) {
      return {
        reason: 'CurrencyMismatch',
        message: `the wallet is in ${wallet.spec.currency} but PricePlan "${planName}" is in ${plan.value.spec.currency}; use a plan in the wallet's currency`,
      };
    }
    return undefined;
  }

  async #writeStatus(
    object: KubeObject,
    previous: WalletStatus | undefined,
    status: WalletStatus,
    currency: string | undefined,
  ): Promise<{ requeueAfterMs: number } | undefined> {
    const { clients, wallets, events, statusIntervalMs } = this.#options;
    const namespace = object.metadata.namespace ?? 'default';
    const id = `${namespace}/${object.metadata.name}`;
    if (sameJson(status, previous)) return undefined;

    const sinceLastMs = Date.now() - (this.#lastWrite.get(id) ?? 0);
    if (!isSignificantChange(previous, status) && sinceLastMs < statusIntervalMs) {
      return { requeueAfterMs: statusIntervalMs - sinceLastMs };
    }

    const updated = await patchStatus(clients, 'Wallet', namespace, object.metadata.name, status);
    wallets.update(updated);
    this.#lastWrite.set(id, Date.now());
    for (const transition of walletTransitions(previous, status, currency)) {
      await events.record(targetOf(object), transition.type, transition.reason, transition.message);
    }
    return undefined;
  }

  /**
   * Opens the account again when it is closed. Deleting a Wallet closes its
   * account, and the name can only be taken again once that object is gone,
   * so a live Wallet on a closed account was created again. It serves calls
   * again with the balance the account kept, unless the account was closed
   * in another currency: its balance cannot become this one's, so the
   * account stays closed, and the returned problem says why. Runs before the
   * grants, so that none goes into an account in another currency.
   */
  async #reopenIfClosed(object: KubeObject, key: WalletKey, currency: string): Promise<WalletProblem | undefined> {
    const { ledger, log, events } = this.#options;
    if (!(await ledger.state(key)).closed) return undefined;
    const wallet = `${key.namespace}/${key.name}`;
    const result = await ledger.reopen(key, currency);
    if (!result.reopened) {
      return {
        reason: EventReason.LedgerCurrencyMismatch,
        message:
          `the ledger account of this name was closed when a Wallet in ${result.closedCurrency} was deleted, and a Wallet in ${currency} ` +
          `cannot take over its balance; use currency ${result.closedCurrency}, or another name`,
      };
    }
    const { balance } = await ledger.state(key);
    log.info({ wallet, balance: formatAmount(balance) }, 'reopened the ledger account of a recreated wallet');
    await events.record(
      targetOf(object),
      'Normal',
      EventReason.LedgerReopened,
      `reopened the ledger account that the deletion of an earlier Wallet of this name closed; its balance is ${formatAmount(balance)}`,
    );
    return undefined;
  }

  async #finalize(object: KubeObject): Promise<void> {
    const { clients, ledger, events, metrics, log } = this.#options;
    const finalizers = object.metadata.finalizers ?? [];
    if (!finalizers.includes(LEDGER_FINALIZER)) return;
    const namespace = object.metadata.namespace ?? 'default';
    const key: WalletKey = { namespace, name: object.metadata.name };

    const currency = (object as { spec?: { currency?: unknown } }).spec?.currency;
    await ledger.close(key, typeof currency === 'string' ? currency : undefined);
    log.info({ wallet: `${namespace}/${key.name}` }, 'closed the ledger account of a deleted wallet');
    await events.record(targetOf(object), 'Normal', EventReason.LedgerClosed, 'closed the ledger account; its entries stay in the ledger');

    // The API server deletes the object once its last finalizer is gone; the watch removes it from the cache.
    await patchFinalizers(clients, 'Wallet', object, finalizers.filter((name) => name !== LEDGER_FINALIZER));
    metrics.removeWallet(namespace, key.name);
    this.#lastWrite.delete(`${namespace}/${key.name}`);
  }
}
