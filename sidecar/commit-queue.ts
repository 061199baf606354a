import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { CommitEntry, CommitResult, Ledger, WalletKey } from '../src/ledger/ledger.ts';
import { LedgerUnavailableError } from '../src/ledger/ledger.ts';
import type { CommitJournal } from './commit-journal.ts';

/** The commit of a served request, kept until the ledger takes it. */
export interface PendingCommit {
  wallet: WalletKey;
  /** The wallet as `namespace/name`, for log lines. */
  walletId: string;
  currency: string;
  requestId: string;
  entry: CommitEntry;
  /** Nano-units the request's hold reserved: what the sweeper charges for an answered hold that is never committed. */
  held: bigint;
}

/**
 * Why the queue gave up on a commit, so that the sweeper settles its hold:
 * - queue_full: the queue held maxPending commits
 * - too_old: the commit waited maxAgeMs
 * - rejected: the ledger failed the commit with an error other than being unavailable
 * - shutdown: the sidecar stopped before the ledger took it
 */
export type AbandonReason = 'queue_full' | 'too_old' | 'rejected' | 'shutdown';

export interface CommitQueueOptions {
  /** Maximum number of commits in the queue; a commit beyond it is abandoned. */
  maxPending: number;
  /** Wait before the first background retry, in milliseconds, and again after each retry that commits something. */
  initialBackoffMs: number;
  /** Maximum wait between background retries, in milliseconds. The wait doubles up to it while the ledger stays unavailable. */
  maxBackoffMs: number;
  /**
   * Maximum time a commit waits in the queue, in milliseconds. It must not
   * exceed the ledger's retention of settled records. Once the sweeper has
   * charged an expired hold and the ledger has removed its record, a late
   * commit would debit the request a second time.
   */
  maxAgeMs: number;
  /** Commits sent to the ledger at once. */
  batchSize: number;
  /** How long close() keeps retrying before it gives up on what is left, in milliseconds. */
  shutdownFlushMs: number;
}

export const DEFAULT_COMMIT_QUEUE_OPTIONS: Omit<CommitQueueOptions, 'maxAgeMs'> = {
  maxPending: 100_000,
  initialBackoffMs: 1_000,
  maxBackoffMs: 10_000,
  batchSize: 100,
  shutdownFlushMs: 5_000,
};

export interface CommitQueueHooks {
  /** Runs once for each queued commit that the ledger took, with its result. */
  committed(commit: PendingCommit, result: CommitResult): void;
  /** Runs once for each commit that the queue gave up on, after the queue logged it. */
  abandoned(commit: PendingCommit, reason: AbandonReason): void;
  /** Runs whenever the number of pending commits changes. */
  pendingChanged(pending: number): void;
}

interface Waiting {
  commit: PendingCommit;
  /** performance.now() at which the commit is too old to send. */
  expiresAt: number;
}

/** Counts of one outage: from the first queued commit until the queue is empty again. */
interface Episode {
  queued: number;
  committed: number;
  abandoned: number;
  /** Set once the queue filled up, so that the full queue is logged once per outage. */
  full: boolean;
}

/** The result of one pass over the queue. */
interface PassResult {
  empty: boolean;
  /** Whether the ledger took at least one commit. */
  progressed: boolean;
}

/**
 * Retries commits that failed because the ledger was unavailable, in the
 * background, until the ledger takes them. One timer serves the whole queue:
 * each pass sends the commits in order, in batches, and stops at the first
 * batch in which the ledger is still unavailable. The wait before the next
 * pass doubles up to maxBackoffMs while no commit succeeds.
 *
 * Retrying is safe because commit is idempotent on the request id while the
 * ledger keeps the request's settled record. A commit that the ledger had
 * already applied returns its first result. A commit after the sweeper
 * charged the expired hold corrects that charge to the actual cost.
 */
export class CommitQueue {
  readonly #ledger: Ledger;
  readonly #log: Logger;
  readonly #options: CommitQueueOptions;
  readonly #hooks: CommitQueueHooks;
  readonly #journal: CommitJournal | undefined;
  /** Waiting commits in order, from #head on; the slots before #head are spent. */
  #items: Waiting[] = [];
  #head = 0;
  /** Commits of the batch the ledger is handling now. */
  #inFlight: Waiting[] = [];
  #timer: NodeJS.Timeout | undefined;
  #pass: Promise<PassResult> | undefined;
  #backoffMs: number;
  #episode: Episode | undefined;
  /** Set by close(): no new commits, and no more background passes. */
  #closing = false;
  /** Set when close() has given up on what is left, so that a pass still running ignores its results. */
  #stopped = false;

  /**
   * With a journal, each commit the queue takes is written to it, and marked
   * done once the ledger takes it or the queue gives up on it for a reason
   * other than shutdown. A commit left at shutdown stays in the journal, so
   * that the next start replays it (see addRecovered).
   */
  constructor(ledger: Ledger, log: Logger, options: CommitQueueOptions, hooks: CommitQueueHooks, journal?: CommitJournal) {
    this.#ledger = ledger;
    this.#log = log;
    this.#options = options;
    this.#hooks = hooks;
    this.#journal = journal;
    this.#backoffMs = options.initialBackoffMs;
  }

  /** The number of commits waiting or being sent. */
  get pending(): number {
    return this.#items.length - this.#head + this.#inFlight.length;
  }

  /**
   * Queues a commit for background retries. Returns false, after logging and
   * abandoning the commit, when the queue is full or closing.
   */
  add(commit: PendingCommit): boolean {
    if (this.#closing) {
      // Journaled all the same, so that the next start retries it.
      this.#journal?.append(commit, Date.now());
      this.#abandon(commit, 'shutdown');
      return false;
    }
    const episode = this.#startEpisode();
    if (this.pending >= this.#options.maxPending) {
      if (!episode.full) {
        episode.full = true;
        this.#log.error(
          { maxPending: this.#options.maxPending },
          'commit queue is full; further commits that fail are not queued, and the sweeper settles their holds, charging answered holds in full',
        );
      }
      this.#abandon(commit, 'queue_full');
      return false;
    }

    this.#items.push({ commit, expiresAt: performance.now() + this.#options.maxAgeMs });
    this.#journal?.append(commit, Date.now());
    episode.queued++;
    this.#hooks.pendingChanged(this.pending);
    this.#schedule();
    return true;
  }

  /**
   * Queues a commit that the journal recovered at start, with the epoch
   * milliseconds at which a previous process first queued it. Its age counts
   * against maxAgeMs, so a commit older than that is abandoned as too_old at
   * once, because the ledger may have removed the record that makes a replay
   * safe. Call it for every recovered commit, in the journal's order, before
   * any add: the queue expects its oldest commits in front. Returns whether
   * the commit was queued.
   */
  addRecovered(commit: PendingCommit, queuedAtMs: number): boolean {
    if (this.#closing) {
      this.#abandon(commit, 'shutdown');
      return false;
    }
    // A clock that went back since the commit was queued counts as no age.
    const ageMs = Math.max(0, Date.now() - queuedAtMs);
    let reason: AbandonReason | undefined;
    if (ageMs >= this.#options.maxAgeMs) reason = 'too_old';
    else if (this.pending >= this.#options.maxPending) reason = 'queue_full';
    if (reason !== undefined) {
      this.#abandon(commit, reason);
      this.#journal?.done(commit.requestId);
      return false;
    }

    const episode = this.#startEpisode(false);
    this.#items.push({ commit, expiresAt: performance.now() + this.#options.maxAgeMs - ageMs });
    episode.queued++;
    this.#hooks.pendingChanged(this.pending);
    this.#schedule();
    return true;
  }

  /**
   * Stops the background retries, then tries to commit what is left for up
   * to shutdownFlushMs. Each commit still left is logged at warn with its
   * request id and amounts, because the sweeper settles its hold instead.
   */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;

    const deadline = performance.now() + this.#options.shutdownFlushMs;
    let backoffMs = this.#options.initialBackoffMs;
    while (this.pending > 0) {
      const remaining = deadline - performance.now();
      if (remaining <= 0) break;
      const result = await withTimeout(this.#pass ?? this.#startPass(), remaining);
      if (result === undefined || result.empty) break;
      if (result.progressed) continue;
      await sleep(Math.min(backoffMs, deadline - performance.now()));
      backoffMs = Math.min(backoffMs * 2, this.#options.maxBackoffMs);
    }
    this.#stopped = true;
    this.#abandonRest();
  }

  /** Starts counting an outage unless one is counted already. `warn` is false for recovered commits, which the journal logs. */
  #startEpisode(warn = true): Episode {
    if (this.#episode === undefined) {
      this.#episode = { queued: 0, committed: 0, abandoned: 0, full: false };
      if (warn) this.#log.warn('ledger commits are failing, so the commits of served calls are queued and retried in the background until the ledger takes them');
    }
    return this.#episode;
  }

  #schedule(): void {
    if (this.#timer !== undefined || this.#pass !== undefined || this.#closing) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.#startPass().then((result) => this.#afterPass(result));
    }, this.#backoffMs);
    this.#timer.unref();
  }

  #startPass(): Promise<PassResult> {
    const pass = this.#drain().catch((error: unknown): PassResult => {
      // The ledger's errors are handled per commit, so this is a failure of a hook.
      this.#log.error({ err: error }, 'commit queue pass failed; retrying later');
      return { empty: this.pending === 0, progressed: false };
    });
    this.#pass = pass;
    void pass.finally(() => {
      if (this.#pass === pass) this.#pass = undefined;
    });
    return pass;
  }

  #afterPass(result: PassResult): void {
    if (this.#closing) return;
    // Not result.empty: a commit may have been added after the pass ended.
    if (this.pending === 0) {
      this.#backoffMs = this.#options.initialBackoffMs;
      this.#endEpisode();
      return;
    }
    this.#backoffMs = result.progressed ? this.#options.initialBackoffMs : Math.min(this.#backoffMs * 2, this.#options.maxBackoffMs);
    this.#schedule();
  }

  /** Sends the waiting commits in batches, until the queue is empty or the ledger is still unavailable. */
  async #drain(): Promise<PassResult> {
    this.#abandonExpired();
    let progressed = false;
    while (this.#items.length > this.#head && !this.#stopped) {
      const batch = this.#takeBatch();
      const results = await Promise.allSettled(batch.map(({ commit }) => this.#ledger.commit(commit.wallet, commit.requestId, commit.entry)));
      this.#inFlight = [];
      if (this.#stopped) break;

      const retry: Waiting[] = [];
      for (const [index, result] of results.entries()) {
        const waiting = batch[index]!;
        if (result.status === 'fulfilled') {
          progressed = true;
          if (this.#episode) this.#episode.committed++;
          this.#journal?.done(waiting.commit.requestId);
          this.#hooks.committed(waiting.commit, result.value);
        } else if (result.reason instanceof LedgerUnavailableError) {
          retry.push(waiting);
        } else {
          this.#abandon(waiting.commit, 'rejected', result.reason);
          this.#journal?.done(waiting.commit.requestId);
        }
      }
      this.#putBack(retry);
      this.#hooks.pendingChanged(this.pending);
      if (retry.length > 0) return { empty: false, progressed };
    }
    return { empty: this.pending === 0, progressed };
  }

  #takeBatch(): Waiting[] {
    const end = Math.min(this.#head + this.#options.batchSize, this.#items.length);
    const batch = this.#items.slice(this.#head, end);
    this.#head = end;
    this.#inFlight = batch;
    // Drops the spent slots once they are the larger part, so that the array does not keep growing.
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return batch;
  }

  /** Returns commits to the front of the queue, in their order. */
  #putBack(waiting: Waiting[]): void {
    if (waiting.length === 0) return;
    if (this.#head >= waiting.length) {
      this.#head -= waiting.length;
      for (const [index, item] of waiting.entries()) this.#items[this.#head + index] = item;
    } else {
      this.#items = [...waiting, ...this.#items.slice(this.#head)];
      this.#head = 0;
    }
  }

  /** Abandons the commits at the front that waited maxAgeMs. All wait equally long, so the oldest are in front. */
  #abandonExpired(): void {
    const now = performance.now();
    let abandoned = 0;
    while (this.#items.length > this.#head && this.#items[this.#head]!.expiresAt <= now) {
      const { commit } = this.#items[this.#head]!;
      this.#abandon(commit, 'too_old');
      this.#journal?.done(commit.requestId);
      this.#head++;
      abandoned++;
    }
    if (abandoned > 0) this.#hooks.pendingChanged(this.pending);
  }

  /** Abandons every commit still waiting or in flight when close() gives up. */
  #abandonRest(): void {
    const rest = [...this.#inFlight, ...this.#items.slice(this.#head)];
    this.#items = [];
    this.#head = 0;
    this.#inFlight = [];
    if (rest.length > 0) {
      for (const { commit } of rest) this.#abandon(commit, 'shutdown');
      this.#log.warn(
        { abandoned: rest.length, flushMs: this.#options.shutdownFlushMs, ...(this.#journal ? { journal: this.#journal.path } : {}) },
        this.#journal
          ? 'sidecar stopped with commits the ledger did not confirm; they stay in the commit journal, and the next start retries them'
          : 'sidecar stopped with commits the ledger did not confirm; the sweeper settles their holds, charging answered holds in full',
      );
    }
    this.#hooks.pendingChanged(0);
    this.#endEpisode(rest.length > 0 ? 'commit queue closed' : 'commit queue drained');
  }

  #abandon(commit: PendingCommit, reason: AbandonReason, error?: unknown): void {
    const fields = {
      requestId: commit.requestId,
      wallet: commit.walletId,
      currency: commit.currency,
      charged: commit.entry.charged.toString(),
      providerCost: commit.entry.providerCost.toString(),
      held: commit.held.toString(),
      reason,
    };
    const fallback = 'the sweeper settles the hold, charging an answered hold in full';
    switch (reason) {
      case 'shutdown':
        // A commit of the last batch may still reach the ledger, which then keeps it instead of the sweeper's charge.
        this.#log.warn(
          fields,
          this.#journal
            ? 'commit not confirmed before the sidecar stopped; it stays in the commit journal, and the next start retries it'
            : `commit not confirmed before the sidecar stopped; unless it still reaches the ledger, ${fallback}`,
        );
        break;
      case 'queue_full':
        this.#log.error(fields, `commit not queued because the commit queue is full; ${fallback}`);
        break;
      case 'too_old':
        this.#log.error(
          { ...fields, maxAgeMs: this.#options.maxAgeMs },
          `commit abandoned after waiting longer than the ledger keeps settled records, where a retry could charge the request twice; ${fallback}`,
        );
        break;
      case 'rejected':
        this.#log.error({ ...fields, err: error }, `ledger rejected a queued commit; ${fallback}`);
        break;
    }
    if (this.#episode) this.#episode.abandoned++;
    this.#hooks.abandoned(commit, reason);
  }

  #endEpisode(message = 'commit queue drained'): void {
    const episode = this.#episode;
    if (episode === undefined) return;
    this.#episode = undefined;
    this.#log.info({ queued: episode.queued, committed: episode.committed, abandoned: episode.abandoned }, message);
  }
}

/** Resolves with the promise's value, or with undefined when it takes longer than `ms`. */
async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}
