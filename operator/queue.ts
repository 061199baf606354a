/**
 * A deduplicating, rate-limited work queue of string keys, in the manner of
 * client-go's workqueue:
 *
 * - A key is queued at most once. Adding a key that is already waiting does
 *   nothing.
 * - A key being processed is never handed to a second worker. Adding it
 *   meanwhile marks it dirty, and `done` queues it again, so the change that
 *   arrived during processing is seen by one more pass.
 * - `addRateLimited` delays a key by a per-key exponential backoff
 *   (base, 2 base, 4 base, ... up to a cap) and an overall token bucket;
 *   `forget` resets the key's backoff after a success.
 */

import type { Logger } from 'pino';
import { LedgerUnavailableError } from '../src/ledger/ledger.ts';
import { describeKubeError } from './kube.ts';

export interface BackoffOptions {
  /** First retry delay, in milliseconds. */
  baseMs: number;
  /** Maximum retry delay, in milliseconds. */
  capMs: number;
}

export interface WorkQueueOptions {
  backoff?: BackoffOptions;
  /** Overall retry rate: tokens per second and bucket size. Applies to `addRateLimited` only. */
  bucket?: { perSecond: number; burst: number };
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 50, capMs: 300_000 };
const DEFAULT_BUCKET = { perSecond: 10, burst: 100 };

/** Returns the delay before retry number `failures` (1 for the first): base * 2^(failures-1), at most cap. */
export function backoffDelay(failures: number, backoff: BackoffOptions): number {
  if (failures <= 0) return 0;
  // Past 2^30 the product exceeds every sensible cap; stop doubling before the number loses precision.
  const exponent = Math.min(failures - 1, 30);
  return Math.min(backoff.baseMs * 2 ** exponent, backoff.capMs);
}

export class WorkQueue {
  readonly #queue: string[] = [];
  /** Keys that need processing: waiting in #queue, or marked while being processed. */
  readonly #dirty = new Set<string>();
  readonly #processing = new Set<string>();
  readonly #failures = new Map<string, number>();
  readonly #timers = new Map<string, { timer: NodeJS.Timeout; dueAt: number }>();
  readonly #waiters: Array<(key: string | undefined) => void> = [];
  readonly #backoff: BackoffOptions;
  readonly #bucket: { perSecond: number; burst: number };
  #tokens: number;
  #tokensAt = Date.now();
  #shuttingDown = false;

  constructor(options: WorkQueueOptions = {}) {
    this.#backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.#bucket = options.bucket ?? DEFAULT_BUCKET;
    this.#tokens = this.#bucket.burst;
  }

  /** Queues a key unless it is already waiting; a key being processed is queued again when it is done. */
  add(key: string): void {
    if (this.#shuttingDown || this.#dirty.has(key)) return;
    this.#dirty.add(key);
    if (this.#processing.has(key)) return;

    const waiter = this.#waiters.shift();
    if (waiter) {
      this.#dirty.delete(key);
      this.#processing.add(key);
      waiter(key);
    } else {
      this.#queue.push(key);
    }
  }

  /** Queues a key after a delay. A later call with a shorter delay wins; a longer one is ignored. */
  addAfter(key: string, delayMs: number): void {
    if (this.#shuttingDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    const dueAt = Date.now() + delayMs;
    const existing = this.#timers.get(key);
    if (existing && existing.dueAt <= dueAt) return;
    if (existing) clearTimeout(existing.timer);

    const timer = setTimeout(() => {
      this.#timers.delete(key);
      this.add(key);
    }, delayMs);
    timer.unref();
    this.#timers.set(key, { timer, dueAt });
  }

  /** Queues a key after its next backoff delay (and the overall token bucket); returns the delay in milliseconds. */
  addRateLimited(key: string): number {
    const failures = (this.#failures.get(key) ?? 0) + 1;
    this.#failures.set(key, failures);
    const delay = Math.max(backoffDelay(failures, this.#backoff), this.#takeToken());
    this.addAfter(key, delay);
    return delay;
  }

  /** Resets the key's backoff, after it was processed successfully. */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  /** Returns how many times in a row the key failed since its last `forget`. */
  failures(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  /** Waits for the next key; returns undefined once the queue is shut down. Call `done` with the key afterwards. */
  get(): Promise<string | undefined> {
    const key = this.#queue.shift();
    if (key !== undefined) {
      this.#dirty.delete(key);
      this.#processing.add(key);
      return Promise.resolve(key);
    }
    if (this.#shuttingDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Marks a key processed; queues it again if it was added meanwhile. */
  done(key: string): void {
    this.#processing.delete(key);
    if (this.#dirty.has(key)) {
      this.#dirty.delete(key);
      this.add(key);
    }
  }

  /** Keys waiting to be handed out. */
  get length(): number {
    return this.#queue.length;
  }

  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /** Stops handing out keys: pending `get` calls resolve to undefined and delayed adds are dropped. */
  shutDown(): void {
    this.#shuttingDown = true;
    for (const { timer } of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
    this.#queue.length = 0;
    this.#dirty.clear();
    for (const waiter of this.#waiters.splice(0)) waiter(undefined);
  }

  /** Returns the delay the token bucket imposes on one more retry, taking a token. */
  #takeToken(): number {
    const now = Date.now();
    const { perSecond, burst } = this.#bucket;
    this.#tokens = Math.min(burst, this.#tokens + ((now - this.#tokensAt) / 1000) * perSecond);
    this.#tokensAt = now;
    this.#tokens -= 1;
    return this.#tokens >= 0 ? 0 : Math.ceil((-this.#tokens / perSecond) * 1000);
  }
}

/** Result of a reconcile: nothing, or a request to process the key again after a delay. */
export type ReconcileResult = void | { requeueAfterMs: number };

export type ReconcileHandler = (key: string) => Promise<ReconcileResult>;

export interface WorkerOptions {
  concurrency: number;
  log: Logger;
  /** Called after each key with its outcome and duration, for metrics. */
  onResult?: (key: string, outcome: 'success' | 'error' | 'requeue', seconds: number) => void;
}

/**
 * Runs `concurrency` workers that take keys from the queue and pass them to
 * the handler, until the queue is shut down. A handler error retries the key
 * with backoff; a success resets its backoff. Resolves once every worker has
 * finished its current key.
 */
export async function runWorkers(queue: WorkQueue, handler: ReconcileHandler, options: WorkerOptions): Promise<void> {
  const worker = async (): Promise<void> => {
    for (;;) {
      const key = await queue.get();
      if (key === undefined) return;
      const started = performance.now();
      try {
        const result = await handler(key);
        queue.forget(key);
        if (result && result.requeueAfterMs > 0) queue.addAfter(key, result.requeueAfterMs);
        options.onResult?.(key, result ? 'requeue' : 'success', (performance.now() - started) / 1000);
      } catch (error) {
        const delayMs = queue.addRateLimited(key);
        const failures = queue.failures(key);
        if (error instanceof LedgerUnavailableError) {
          // The ledger logs the lost connection once, so each key logs its first failure at info, without a stack.
          const level = failures === 1 ? 'info' : 'debug';
          options.log[level]({ key, reason: error.message, retryInMs: delayMs, failures }, 'reconcile waits for the ledger; retrying');
        } else {
          // The API client's errors carry the whole HTTP response as their message; reason is the readable part.
          options.log.error({ err: error, reason: describeKubeError(error), key, retryInMs: delayMs, failures }, 'reconcile failed; retrying');
        }
        options.onResult?.(key, 'error', (performance.now() - started) / 1000);
      } finally {
        queue.done(key);
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
}
