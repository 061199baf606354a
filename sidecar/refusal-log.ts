import type { Logger } from 'pino';

/** Time source and timer of RefusalLog, replaceable so that tests drive the window. */
export interface RefusalLogClock {
  /** Current time in milliseconds, from any fixed origin. */
  now(): number;
  /** Calls `callback` once after `delayMs` milliseconds and returns a function that cancels the call. */
  schedule(callback: () => void, delayMs: number): () => void;
}

export interface RefusalLogOptions {
  /** Length of a window in milliseconds (default DEFAULT_REFUSAL_LOG_WINDOW_MS). */
  windowMs?: number;
  /** Default: performance.now() and an unref'd setTimeout. */
  clock?: RefusalLogClock;
}

/**
 * Default window of RefusalLog. At 2,000 refusals per second it turns 20,000
 * lines into two (the first refusal and one summary), and a reader who
 * follows the log still learns within 10 s that refusals continue.
 */
export const DEFAULT_REFUSAL_LOG_WINDOW_MS = 10_000;

/** The fields of a refusal's log line, as the proxy writes them for every refusal it logs. */
export interface RefusalFields {
  requestId: string | undefined;
  wallet: string | undefined;
  route: string;
  status: number;
  code: string;
  reason: string;
}

const SYSTEM_CLOCK: RefusalLogClock = {
  now: () => performance.now(),
  schedule(callback, delayMs) {
    const timer = setTimeout(callback, delayMs);
    timer.unref();
    return () => clearTimeout(timer);
  },
};

/**
 * Rate-limits the warning logged for each request refused because the
 * ledger is unavailable, which during an outage would be one line per
 * request. The first refusal after a quiet period is logged in full and
 * opens a window of windowMs. Refusals within the window are only counted,
 * and when it ends one summary line reports their number and the last
 * reason, and the next window opens. A window without refusals ends the
 * outage, so the next refusal is logged in full again. A ledger call that
 * succeeds does not end the window. While one master of a Redis Cluster is
 * down, the calls of other wallets succeed between the refusals, and each
 * success would otherwise start a new outage with a line of its own. Callers count
 * every refusal in their metrics themselves.
 */
export class RefusalLog {
  private readonly log: Logger;
  private readonly windowMs: number;
  private readonly clock: RefusalLogClock;
  /** End of the open window, or undefined while no refusal is recent. */
  private windowEnd: number | undefined;
  /** Refusals counted and not logged in the open window, and the last of them. */
  private suppressed = 0;
  private last: RefusalFields | undefined;
  private cancelFlush: (() => void) | undefined;

  constructor(log: Logger, options: RefusalLogOptions = {}) {
    this.log = log;
    this.windowMs = options.windowMs ?? DEFAULT_REFUSAL_LOG_WINDOW_MS;
    this.clock = options.clock ?? SYSTEM_CLOCK;
    if (!(this.windowMs > 0)) throw new RangeError(`invalid refusal log window ${this.windowMs} ms: use a positive number of milliseconds`);
  }

  /** Logs one refusal at warn, or counts it when it falls within the open window. */
  record(fields: RefusalFields): void {
    const now = this.clock.now();
    if (this.windowEnd !== undefined && now >= this.windowEnd) this.endWindow(now);

    if (this.windowEnd === undefined) {
      this.log.warn(fields, 'request failed');
      this.windowEnd = now + this.windowMs;
      return;
    }

    this.suppressed += 1;
    this.last = fields;
    this.cancelFlush ??= this.clock.schedule(() => {
      this.cancelFlush = undefined;
      this.endWindow(this.clock.now());
    }, this.windowEnd - now);
  }

  /** Writes the summary of the open window, for a process that stops. */
  close(): void {
    this.writeSummary();
    this.windowEnd = undefined;
  }

  /**
   * Ends the window that has passed. After a window with counted refusals the
   * next one opens where it ended. When that one has passed too, no refusal
   * fell into it, and the outage is over.
   */
  private endWindow(now: number): void {
    if (this.suppressed > 0) {
      this.writeSummary();
      this.windowEnd! += this.windowMs;
    }
    if (this.windowEnd! <= now) this.windowEnd = undefined;
  }

  private writeSummary(): void {
    this.cancelFlush?.();
    this.cancelFlush = undefined;
    if (this.suppressed === 0 || this.last === undefined) return;

    const { code, status, reason, requestId, wallet, route } = this.last;
    this.log.warn(
      { code, status, suppressed: this.suppressed, reason, lastRequestId: requestId, lastWallet: wallet, lastRoute: route },
      'more requests failed; counted, not logged one by one',
    );
    this.suppressed = 0;
    this.last = undefined;
  }
}
