/**
 * The Redis ledger. Each operation is one Lua script (EVALSHA, with ioredis
 * falling back to EVAL after a NOSCRIPT reply), so it is one round trip and
 * atomic on the server. All keys of a wallet share the hash tag
 * `{w:<namespace>/<name>}` and live on one shard of a Redis Cluster:
 *
 * - `:acct`   hash of totals (`granted`, `spent`, `expired`, `reserved`,
 *             `providerCost`, `closed`), the spend-cap counters
 *             `day:YYYY-MM-DD` and `month:YYYY-MM` (debited plus held within
 *             that UTC period), and while the wallet has live expiring grants,
 *             `expiring`, `nextExpiry` and `attributed` (see lua/common.lua)
 * - `:holds`  hash of open holds by request id
 * - `:hexp`   sorted set of open request ids by expiry, in epoch milliseconds.
 *             Once a request settles, its id stays in `:hexp` with the end of
 *             its record's retention as the score, so the one index serves
 *             both: due members are expired holds or records to remove.
 * - `:done`   hash of settled requests by request id, so that a retry gets the
 *             first result, kept for the retention window. The hash has no
 *             TTL of its own; reserve and sweep remove due records through
 *             `:hexp` (see lua/common.lua, settle_expired).
 * - `:grants` hash of grant amounts by grant id
 * - `:log`    stream of entries (`grant`, `debit`, `expire-charge`, `expire`),
 *             amounts as decimal integer strings; `tollgate ledger verify`
 *             replays it. It grows by one entry per request until `compact`
 *             folds old entries into `:checkpoint`.
 * - `:checkpoint` hash of the totals of the folded entries (see
 *             lua/compact.lua). Only compaction creates it, and only the
 *             compact and snapshot scripts receive it.
 *
 * Hold and grant expiry use the Redis server's clock, so sidecars with
 * skewed clocks agree. The spend-cap period is the caller's UTC day and month.
 */

import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { ConnectionOptions } from 'node:tls';
import { Redis, Cluster, ReplyError } from 'ioredis';
import type { RedisOptions } from 'ioredis';
import { openRedisClient, READY_CHECK_FAILED } from './redis-connect.ts';
import { REDIS_TLS_ENV, usesTls, type RedisTlsSettingNames } from './redis-tls.ts';

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
  LedgerTimeoutError,
  LedgerUnavailableError,
  addEntry,
  compareTotals,
  emptyTotals,
  grantTotalTooLarge,
  holdTtlMs,
  periodFields,
  validateCommitEntry,
  validateCutoff,
  validateEntryId,
  validateGrant,
  validateGrantExpiry,
  validateHoldRequest,
  walletId,
} from './ledger.ts';
import { DEFAULT_SETTLED_RETENTION_MS, parseDurationMs, validateSettledRetention } from './retention.ts';
import { MAX_LEDGER_AMOUNT } from '../money/money.ts';

/** The Lua scripts in ./lua, by ioredis command name. Each gets common.lua in front. */
const SCRIPTS = {
  tollgateCredit: 'credit.lua',
  tollgateReserve: 'reserve.lua',
  tollgateMarkAnswered: 'mark_answered.lua',
  tollgateCommit: 'commit.lua',
  tollgateRelease: 'release.lua',
  tollgateSweep: 'sweep.lua',
  tollgateState: 'state.lua',
  tollgateSnapshot: 'snapshot.lua',
  tollgateCompact: 'compact.lua',
} as const;

type ScriptCommand = keyof typeof SCRIPTS;
type ScriptCommands = Record<ScriptCommand, (...args: string[]) => Promise<unknown>>;

/** The operation each script performs, as error messages name it (`reserve` for reserve.lua). */
const OPERATIONS = Object.fromEntries(
  Object.entries(SCRIPTS).map(([command, file]) => [command, file.replace(/\.lua$/, '')]),
) as Record<ScriptCommand, string>;

interface ScriptOptions {
  /** The script's keys; by default the wallet's keys (cachedWalletKeys). */
  keys?: readonly string[];
  /** The operation that error messages name; by default the script's (OPERATIONS). */
  operation?: string;
  /** Receives the reply of a call that timed out, when it comes after all; quit waits for the promise it returns. */
  onLateReply?: (reply: unknown) => Promise<void> | undefined;
}

const READ_ONLY_SCRIPTS = new Set<ScriptCommand>(['tollgateState', 'tollgateSnapshot']);

/** The scripts that also receive the wallet's checkpoint key, as KEYS[7]. */
const CHECKPOINT_SCRIPTS = new Set<ScriptCommand>(['tollgateSnapshot', 'tollgateCompact']);

/** The suffixes of a wallet's keys, in the order every script receives them. */
const KEY_SUFFIXES = ['acct', 'holds', 'hexp', 'done', 'log', 'grants'] as const;

/** How many due members of the expiry index (expired holds and records to remove) one sweep script handles before the next round trip. */
const SWEEP_BATCH = 1000;
/** How many stream entries verify reads per round trip. */
const VERIFY_BATCH = 1000;
/**
 * How many stream entries one compact script folds, which bounds the time it
 * blocks Redis: about 2 ms for 500 debit entries on Redis 7.0 (see
 * docs/ledger.md), as long as a sweep script of 1,000 records.
 */
const COMPACT_BATCH = 500;
/** How many stream entries `entries` reads per round trip by default. */
const ENTRIES_PAGE = 1000;
/** How often verify starts again when a compaction moved the checkpoint while it replayed. */
const VERIFY_ATTEMPTS = 3;

/**
 * Error replies that mean the server cannot serve now (loading, failing
 * over, out of memory) rather than a bug in a script or its arguments.
 */
const UNAVAILABLE_REPLY = /^(LOADING|READONLY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|BUSY|NOREPLICAS|OOM)\b/;
/** Replies that reject the connection's credentials: the ledger is unusable until the URL is fixed. */
const CREDENTIALS_REPLY = /^(WRONGPASS|NOAUTH)\b/;
/** The same replies quoted inside a longer connection error. */
const CREDENTIALS_IN_TEXT = /\b(WRONGPASS|NOAUTH)\b/;

/**
 * Default of RedisLedgerOptions.timeoutMs: 2 s. A ledger script takes tens of
 * microseconds, and a healthy Redis replies within milliseconds even while it
 * rewrites its AOF, so only a stalled or unreachable server takes this long.
 */
export const DEFAULT_LEDGER_TIMEOUT_MS = 2000;
/**
 * How many ledger timeouts a single-server connection may go without a
 * reply, while calls time out on it, before the ledger drops it and the
 * client connects again. A peer that vanished without a reset, such as a
 * Redis pod that was replaced, would otherwise keep the connection until TCP
 * gives up, about 15 minutes later. A shorter silence keeps the connection,
 * so the commands that timed out still run in the order they were sent.
 */
const SILENT_CONNECTION_TIMEOUTS = 5;
/** Minimum timeout other than 0 (no limit): shorter ones would fail calls on ordinary scheduling delays. */
const MIN_LEDGER_TIMEOUT_MS = 10;
/** Maximum timeout: a request held longer than this waits for a ledger that is gone. */
const MAX_LEDGER_TIMEOUT_MS = 600_000;

/** Throws a RangeError unless `ms` is 0 or a whole number of milliseconds from 10 ms to 10 minutes. */
export function validateLedgerTimeout(ms: number, setting = 'ledger timeout', text = `${ms}ms`): void {
  if (ms === 0 || (Number.isSafeInteger(ms) && ms >= MIN_LEDGER_TIMEOUT_MS && ms <= MAX_LEDGER_TIMEOUT_MS)) return;
  throw new RangeError(`invalid ${setting} "${text}": use a duration from ${MIN_LEDGER_TIMEOUT_MS}ms to 10m, such as 2s, or 0s for no limit`);
}

/** Parses a ledger timeout written as a duration (2s, 500ms; 0s for no limit), naming `setting` in errors. */
export function parseLedgerTimeout(text: string, setting: string): number {
  let ms: number;
  try {
    ms = parseDurationMs(text, setting);
  } catch (error) {
    throw new RangeError(`invalid ${setting} "${text}": use a duration from ${MIN_LEDGER_TIMEOUT_MS}ms to 10m with a unit, such as 2s or 500ms, or 0s for no limit`, { cause: error });
  }
  validateLedgerTimeout(ms, setting, text);
  return ms;
}

let scriptSources: Record<ScriptCommand, string> | undefined;

function loadScripts(): Record<ScriptCommand, string> {
  if (scriptSources) return scriptSources;
  const read = (file: string) => readFileSync(new URL(`./lua/${file}`, import.meta.url), 'utf8');
  const common = read('common.lua');
  const sources = {} as Record<ScriptCommand, string>;
  for (const [command, file] of Object.entries(SCRIPTS) as Array<[ScriptCommand, string]>) {
    sources[command] = `${common}\n${read(file)}`;
  }
  scriptSources = sources;
  return sources;
}

export interface RedisLedgerOptions {
  /**
   * Clock in epoch milliseconds for the UTC day and month of the spend caps,
   * and for the start of a settled record's retention at commit and release.
   * Hold expiry, and the retention of holds that reserve or sweep settles,
   * use the server's clock.
   */
  now?: () => number;
  /**
   * How long a settled record is kept, in milliseconds, counted from its last
   * change; default DEFAULT_SETTLED_RETENTION_MS (7 days), at least
   * MIN_SETTLED_RETENTION_MS (1 hour). Every process that writes to the same
   * ledger should use the same value (see ledger.ts).
   */
  settledRetentionMs?: number;
  /**
   * Options for the connection the ledger opens when given a URL. The
   * defaults fail a command after one reconnection attempt
   * (`maxRetriesPerRequest: 1`), so that the sidecar fails closed quickly.
   * Auto-pipelining stays off, because the ledger batches its own writes
   * (see #batchWrites).
   */
  redisOptions?: RedisOptions;
  /**
   * TLS settings for the connection the ledger opens from a `rediss://` or
   * `rediss+cluster://` URL, such as a private CA or a client certificate,
   * from loadRedisTls (redis-tls.ts). A cluster uses them for every node.
   */
  tls?: ConnectionOptions | undefined;
  /**
   * The settings of the TLS files as the user sets them, which connection
   * errors name in their advice; default REDIS_TLS_ENV (the sidecar's
   * environment variables).
   */
  tlsSettingNames?: RedisTlsSettingNames | undefined;
  /**
   * How long an operation waits for Redis, in milliseconds, before it fails
   * with LedgerTimeoutError; default DEFAULT_LEDGER_TIMEOUT_MS (2 s), 0 for no
   * limit. A stalled server (a paused process, a slow fork for persistence, a
   * long script) or a network that drops packets keeps a connection open
   * without replying, and without this limit every request would wait for it.
   */
  timeoutMs?: number;
  /**
   * Logger (pino or compatible) for the connection the ledger opens from a
   * URL. It logs the first error after each loss of the connection and the
   * reconnection, not every retry.
   */
  logger?: ConnectionLogger;
}

export interface ConnectionLogger {
  warn(details: Record<string, unknown>, message: string): void;
  info(details: Record<string, unknown>, message: string): void;
}

export class RedisLedger implements Ledger {
  readonly #client: Redis | Cluster;
  readonly #commands: ScriptCommands;
  readonly #ownsClient: boolean;
  readonly #now: () => number;
  readonly #retentionMs: number;
  readonly #retentionText: string;
  readonly #timeoutMs: number;
  readonly #logger: ConnectionLogger | undefined;
  /** Timed-out calls whose late reply, and the release it may need, quit waits for. */
  readonly #lateReplies = new Set<Promise<void>>();
  /** The state of the connection that the ledger opened from a URL, or undefined for a caller's client, on which the ledger does not listen. */
  readonly #connection: WatchedConnection | undefined;
  /** Whether the connection's socket is corked until the check phase. */
  #corked = false;
  /**
   * The Redis server's clock minus this process's monotonic clock, in
   * milliseconds (see #measureClockOffset). Undefined until measured on the
   * current connection, and always for clients without reserve deadlines.
   */
  #clockOffsetMs: number | undefined;
  /** When calls started to time out with no reply since, in epoch milliseconds; undefined while Redis replies. */
  #silentSinceMs: number | undefined;
  /** Set once the server's Lua is known to print amounts exactly (see #checkIntegerFormat). */
  #formatChecked = false;
  #formatCheck: Promise<unknown> | undefined;

  /**
   * Takes an ioredis client (Redis or Cluster), which the caller keeps
   * owning, or a URL, for which the ledger opens and later closes its own
   * client: `redis://` or `rediss://` for one server, `redis+cluster://` or
   * `rediss+cluster://` for a Redis Cluster (see redis-connect.ts). Throws a
   * RangeError for an invalid cluster URL.
   */
  constructor(client: Redis | Cluster | string, options: RedisLedgerOptions = {}) {
    this.#retentionMs = options.settledRetentionMs ?? DEFAULT_SETTLED_RETENTION_MS;
    validateSettledRetention(this.#retentionMs);
    this.#retentionText = String(this.#retentionMs);
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_LEDGER_TIMEOUT_MS;
    validateLedgerTimeout(this.#timeoutMs);
    this.#logger = options.logger;

    if (typeof client === 'string') {
      const opened = openRedisClient(client, {
        maxRetriesPerRequest: 1,
        // ioredis sends the commands of a lost connection again on the next one, where a reserve would find its own
        // hold and look like a repeated request. With a timeout, each such call fails at its deadline instead.
        ...(this.#timeoutMs === 0 ? {} : { autoResendUnfulfilledCommands: false }),
        ...(options.tls === undefined ? {} : { tls: options.tls }),
        ...options.redisOptions,
      });
      this.#connection = watchConnection(opened.client, opened.address, options.logger, {
        tls: usesTls(client),
        cluster: opened.client instanceof Cluster,
        ca: options.tls?.ca !== undefined,
        clientCertificate: options.tls?.cert !== undefined,
        names: options.tlsSettingNames ?? REDIS_TLS_ENV,
      });
      this.#client = opened.client;
      this.#ownsClient = true;
      if (opened.client instanceof Redis && options.redisOptions?.enableOfflineQueue === undefined) failFastOnceReady(opened.client);
      // Another connection may reach another server, whose clock differs.
      opened.client.on('ready', () => (this.#clockOffsetMs = undefined));
    } else {
      this.#client = client;
      this.#ownsClient = false;
      this.#connection = undefined;
    }
    this.#now = options.now ?? Date.now;

    for (const [command, lua] of Object.entries(loadScripts()) as Array<[ScriptCommand, string]>) {
      const numberOfKeys = KEY_SUFFIXES.length + (CHECKPOINT_SCRIPTS.has(command) ? 1 : 0);
      this.#client.defineCommand(command, { lua, numberOfKeys, readOnly: READ_ONLY_SCRIPTS.has(command) });
    }
    this.#commands = this.#client as unknown as ScriptCommands;
  }

  async credit(wallet: WalletKey, grantId: string, amount: bigint, options: CreditOptions = {}): Promise<CreditResult> {
    const { reason, expiresAtMs } = options;
    validateGrant(wallet, grantId, amount);
    validateGrantExpiry(grantId, expiresAtMs);
    const reply = await this.#script(wallet, 'tollgateCredit', [
      grantId,
      amount.toString(),
      reason ?? '',
      MAX_LEDGER_AMOUNT.toString(),
      expiresAtMs === undefined ? '' : String(expiresAtMs),
    ]);

    const [status, value, credited] = reply as [string, string, string | undefined];
    if (status === 'too_large') throw grantTotalTooLarge(wallet, grantId, amount, BigInt(value));
    if (status === 'expired') throw new GrantExpiredError(wallet, grantId, expiresAtMs!, Number(value));
    if (status === 'replayed') return { status: 'credited', replayed: true, balance: BigInt(value), amount: BigInt(credited!) };
    return { status: 'credited', replayed: false, balance: BigInt(value), amount };
  }

  async reserve(wallet: WalletKey, requestId: string, hold: HoldRequest): Promise<ReserveResult> {
    validateHoldRequest(requestId, hold);
    const periods = periodFields(this.#now());
    const limits = hold.limits ?? {};
    let deadline = '';
    if (this.#usesReserveDeadline()) {
      // The one-time check of the server's Lua runs first, so that the deadline covers only the reserve's round trip.
      if (!this.#formatChecked) await this.#checkIntegerFormat(wallet, 'reserve');
      const offsetMs = this.#clockOffsetMs ?? (await this.#measureClockOffset(wallet));
      deadline = String(Math.floor(monotonicNowMs() + offsetMs + this.#timeoutMs));
    }
    const reply = await this.#script(wallet, 'tollgateReserve', [
      requestId,
      hold.fingerprint,
      hold.fixed.toString(),
      hold.perUnit.toString(),
      String(hold.minUnits),
      String(hold.maxUnits),
      String(holdTtlMs(hold)),
      periods.day,
      periods.month,
      limits.maxPerRequest?.toString() ?? '',
      limits.dailyCap?.toString() ?? '',
      limits.monthlyCap?.toString() ?? '',
      String(EXPIRED_HOLDS_SETTLED_PER_RESERVE),
      this.#retentionText,
      deadline,
    ], { onLateReply: (late) => this.#releaseAbandonedHold(wallet, requestId, hold, late as string[]) });
    if ((reply as string[])[0] === 'late') {
      // The reply came before this process's own timeout, so the offset no longer matches the server's clock (a
      // clock step on its host). The next reserve measures it again.
      this.#clockOffsetMs = undefined;
      throw new LedgerTimeoutError(
        `ledger reserve for wallet ${walletId(wallet)} reached ${this.#address()} after its deadline of ${this.#timeoutMs} ms, so it placed no hold. ` +
          "Check that Redis is not blocked by a long command or a persistence fork; if its host's clock was stepped, the next reserve measures it again",
      );
    }
    const result = parseReserveReply(reply as string[]);
    // ioredis sends a Cluster command again when its connection closed before the reply, so a reserve can find its own hold.
    if (result.status === 'reserved' && result.replayed && hold.exclusiveId === true) return { ...result, replayed: false };
    return result;
  }

  /**
   * Releases the hold that a timed-out reserve placed after all, when Redis
   * ran it before its deadline but the reply came after the caller gave up,
   * or on a connection without deadlines (a cluster, a caller's client).
   * That caller returned an error for its request and forwards nothing, so
   * the hold would keep the wallet's funds until the sweeper expires it, and
   * a retry under the same request id would be rejected as in progress. A
   * replayed reserve found an earlier request's hold, which stays, unless
   * the id is the caller's own (HoldRequest.exclusiveId).
   */
  #releaseAbandonedHold(wallet: WalletKey, requestId: string, hold: HoldRequest, reply: string[]): Promise<void> | undefined {
    if (reply[0] !== 'reserved' || (reply[3] === '1' && hold.exclusiveId !== true)) return undefined;
    const fields = { wallet: walletId(wallet), requestId, amount: reply[1] };
    return this.release(wallet, requestId).then(
      (released) => this.#logger?.info({ ...fields, release: released.status }, 'released the hold of a reserve that Redis answered after its timeout'),
      (error: unknown) =>
        this.#logger?.warn({ ...fields, err: error }, 'failed to release the hold of a reserve that Redis answered after its timeout; the sweeper releases it when it expires'),
    );
  }

  /**
   * Whether reserves carry a deadline: only on the ledger's own
   * single-server connection with a timeout, whose server clock the ledger
   * measures (see #measureClockOffset). A reserve that Redis runs after its
   * caller gave up, because it sat in a stalled server's socket, then places
   * no hold. Such a hold would keep the wallet's funds until the sweeper
   * expires it, and a retry under the same request id would look like a
   * request in progress.
   */
  #usesReserveDeadline(): boolean {
    return this.#timeoutMs !== 0 && this.#ownsClient && this.#client instanceof Redis;
  }

  /**
   * Measures the server's clock (TIME) against this process's monotonic
   * clock and returns the offset. It takes the largest offset the round trip
   * allows (server time minus send time), which can only make deadlines
   * later: a reserve is never refused as late because of the measurement.
   * The offset is kept for the connection only when the round trip was
   * short, so that a stall during it does not widen every later deadline.
   */
  async #measureClockOffset(wallet: WalletKey): Promise<number> {
    const sentMs = monotonicNowMs();
    const [seconds, micros] = await this.#call(wallet, 'reserve', () => this.#client.time());
    const receivedMs = monotonicNowMs();
    const offsetMs = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) - sentMs;
    if (receivedMs - sentMs <= MAX_CLOCK_READ_MS) this.#clockOffsetMs = offsetMs;
    return offsetMs;
  }

  async markAnswered(wallet: WalletKey, requestId: string): Promise<void> {
    await this.#script(wallet, 'tollgateMarkAnswered', [requestId]);
  }

  async commit(wallet: WalletKey, requestId: string, entry: CommitEntry): Promise<CommitResult> {
    validateCommitEntry(requestId, entry);
    const nowMs = this.#now();
    const periods = periodFields(nowMs);
    const reply = (await this.#script(wallet, 'tollgateCommit', [
      requestId,
      entry.charged.toString(),
      entry.providerCost.toString(),
      entry.model,
      entry.route,
      JSON.stringify(entry.tokens),
      entry.estimated ? '1' : '0',
      periods.day,
      periods.month,
      String(nowMs + this.#retentionMs),
    ])) as string[];

    if (reply[0] === 'conflict') return { status: 'conflict', reason: 'released' };
    return { status: 'committed', charged: BigInt(reply[1]!), released: BigInt(reply[2]!), replayed: reply[3] === '1' };
  }

  async release(wallet: WalletKey, requestId: string): Promise<ReleaseResult> {
    const reply = (await this.#script(wallet, 'tollgateRelease', [requestId, String(this.#now() + this.#retentionMs)])) as string[];
    if (reply[0] === 'released') return { status: 'released', amount: BigInt(reply[1]!) };
    return { status: reply[0] as 'not_found' | 'already_committed' };
  }

  async sweep(wallet: WalletKey, nowMs?: number): Promise<SweepResult> {
    const result: SweepResult = { released: 0, charged: 0 };
    const now = nowMs === undefined ? '' : String(Math.floor(nowMs));
    for (;;) {
      const reply = (await this.#script(wallet, 'tollgateSweep', [now, String(SWEEP_BATCH), this.#retentionText])) as number[];
      const [released, charged, , seen] = reply as [number, number, number, number];
      result.released += released;
      result.charged += charged;
      if (seen < SWEEP_BATCH) return result;
    }
  }

  async state(wallet: WalletKey): Promise<WalletState> {
    const reply = (await this.#script(wallet, 'tollgateState', [])) as [string, string, string, string, string, number, string, string];
    const [granted, spent, reserved, providerCost] = reply.slice(0, 4).map((value) => BigInt(value as string)) as [bigint, bigint, bigint, bigint];
    const expired = BigInt(reply[6]);
    const balance = granted - spent - expired;
    return {
      granted,
      spent,
      expired,
      reserved,
      balance,
      available: balance - reserved,
      providerCost,
      chargedWithoutCost: BigInt(reply[7]),
      holds: reply[5],
      closed: reply[4] === '1',
    };
  }

  /**
   * Returns whether Redis contains any key of the wallet, its checkpoint
   * included. A wallet without keys has all-zero totals, like an empty one,
   * so tools use this to tell a mistyped name from an unused wallet.
   * `operation` names the call in error messages, such as the command that
   * made it.
   */
  async hasRecords(wallet: WalletKey, operation = 'state'): Promise<boolean> {
    // All of a wallet's keys share its hash tag, so one EXISTS covers them, on a Cluster too.
    const count = await this.#call(wallet, operation, () => this.#client.exists(...checkpointKeys(wallet)));
    return count > 0;
  }

  /**
   * Returns the id of the last entry that compaction folded into the wallet's
   * checkpoint, or undefined without a checkpoint. `operation` names the call
   * in error messages.
   */
  async checkpointEnd(wallet: WalletKey, operation = 'state'): Promise<string | undefined> {
    return this.#checkpointEnd(wallet, operation);
  }

  async close(wallet: WalletKey, currency?: string): Promise<void> {
    const [accountKey] = cachedWalletKeys(wallet);
    const fields = currency === undefined ? { closed: '1' } : { closed: '1', closedCurrency: currency };
    await this.#call(wallet, 'close', () => this.#client.hset(accountKey!, fields));
  }

  /** Reads the closed currency, then clears it in a second call. No close or reopen runs in between, because the operator's leader is their only caller. */
  async reopen(wallet: WalletKey, currency: string): Promise<ReopenResult> {
    const [accountKey] = cachedWalletKeys(wallet);
    const closedCurrency = await this.#call(wallet, 'reopen', () => this.#client.hget(accountKey!, 'closedCurrency'));
    if (closedCurrency !== null && closedCurrency !== currency) return { reopened: false, closedCurrency };
    await this.#call(wallet, 'reopen', () => this.#client.hdel(accountKey!, 'closed', 'closedCurrency'));
    return { reopened: true };
  }

  async verify(wallet: WalletKey): Promise<VerifyResult> {
    for (let attempt = 1; ; attempt++) {
      const snapshot = (await this.#script(wallet, 'tollgateSnapshot', [], { keys: checkpointKeys(wallet), operation: 'verify' })) as [string[], string[], string[], string, string[]];
      const [totals, grantAmounts, packedHolds, lastEntryId, checkpointFields] = snapshot;
      const [granted, spent, reserved, providerCost, expired] = totals.map((value) => BigInt(value)) as [bigint, bigint, bigint, bigint, bigint];
      const checkpoint = parseCheckpoint(checkpointFields);
      const replayed = await this.#replayLog(wallet, checkpoint?.lastId, lastEntryId);

      // A compaction that ran during the replay deleted entries that the
      // checkpoint read above does not include, so the sums would miss them.
      const checkpointNow = await this.#checkpointEnd(wallet, 'verify');
      if (checkpointNow !== checkpoint?.lastId) {
        if (attempt < VERIFY_ATTEMPTS) continue;
        throw new Error(
          `verify of wallet ${walletId(wallet)} failed: a compaction moved its checkpoint during each of ${VERIFY_ATTEMPTS} attempts; ` +
            'run verify again when no compaction runs',
        );
      }

      return compareTotals(wallet, {
        stored: { granted, spent, expired, reserved, providerCost },
        replayed,
        checkpoint,
        grantsSum: grantAmounts.reduce((total, value) => total + BigInt(value), 0n),
        // A packed hold starts with its amount, followed by '|'.
        holdsSum: packedHolds.reduce((total, packed) => total + BigInt(packed.slice(0, packed.indexOf('|'))), 0n),
      });
    }
  }

  async compact(wallet: WalletKey, beforeMs: number): Promise<CompactResult> {
    validateCutoff(beforeMs);
    const keys = checkpointKeys(wallet);
    let folded = 0;
    for (;;) {
      const reply = (await this.#script(wallet, 'tollgateCompact', [lastIdBefore(beforeMs), String(COMPACT_BATCH)], { keys })) as [number, ...string[]];
      folded += reply[0];
      if (reply[0] < COMPACT_BATCH) return { folded, checkpoint: parseCheckpoint(reply.slice(1) as string[]) };
    }
  }

  /** `operation` names the reads in error messages, such as the command that exports the entries. */
  async *entries(wallet: WalletKey, options: EntriesOptions = {}, operation = 'entries'): AsyncIterable<LedgerEntry> {
    const { start, end, pageSize } = entryRange(options);
    const logKey = cachedWalletKeys(wallet)[4]!;
    let from = start;
    for (;;) {
      const page = await this.#call(wallet, operation, () => this.#client.xrange(logKey, from, end, 'COUNT', pageSize));
      for (const [id, flat] of page) yield { id, fields: fieldsOf(flat) };
      if (page.length < pageSize) return;
      from = `(${page[page.length - 1]![0]}`;
    }
  }

  async quit(): Promise<void> {
    // One ledger timeout covers the whole quit: the late replies, then QUIT.
    const deadlineMs = Date.now() + this.#timeoutMs;
    // A release sent after QUIT would fail, and its hold would wait for the sweeper.
    if (this.#lateReplies.size > 0 && this.#timeoutMs !== 0) {
      const waited = new Promise((resolve) => setTimeout(resolve, this.#timeoutMs).unref());
      await Promise.race([Promise.allSettled([...this.#lateReplies]), waited]);
    }
    if (!this.#ownsClient) return;
    if (this.#client.status === 'ready') {
      const closing = this.#client.quit();
      if (this.#timeoutMs === 0) {
        await closing;
        return;
      }
      // A stalled server would not reply to QUIT either, so then the connection is closed without it.
      const closed = await withDeadline(closing, Math.max(deadlineMs - Date.now(), MIN_LEDGER_TIMEOUT_MS)).then(
        () => true,
        (error: unknown) => {
          if (error instanceof DeadlineExceeded) return false;
          throw error;
        },
      );
      if (closed) return;
    }
    this.#client.disconnect();
    // Ending the socket waits for the server's side, which a stalled server never closes.
    if (this.#client instanceof Redis) this.#client.stream?.destroy();
  }

  /** Sums the stream entries after `afterId` (from the start when undefined) up to and including `lastEntryId`, in batches. */
  async #replayLog(wallet: WalletKey, afterId: string | undefined, lastEntryId: string) {
    const replayed = emptyTotals();
    if (lastEntryId === '') return replayed;

    const logKey = cachedWalletKeys(wallet)[4]!;
    let start = afterId === undefined ? '-' : `(${afterId}`;
    for (;;) {
      const batch = await this.#call(wallet, 'verify', () => this.#client.xrange(logKey, start, lastEntryId, 'COUNT', VERIFY_BATCH));
      for (const [, flat] of batch) addEntry(replayed, fieldsOf(flat));
      if (batch.length < VERIFY_BATCH) return replayed;
      start = `(${batch[batch.length - 1]![0]}`;
    }
  }

  async #checkpointEnd(wallet: WalletKey, operation: string): Promise<string | undefined> {
    const checkpointKey = checkpointKeys(wallet)[KEY_SUFFIXES.length]!;
    return (await this.#call(wallet, operation, () => this.#client.hget(checkpointKey, 'lastId'))) ?? undefined;
  }

  /**
   * Runs a script on the wallet's keys. Scripts in CHECKPOINT_SCRIPTS need
   * `keys` from checkpointKeys. `operation` names the call in error messages,
   * by default after the script (`reserve` for reserve.lua).
   */
  #script(wallet: WalletKey, command: ScriptCommand, args: string[], options: ScriptOptions = {}): Promise<unknown> {
    const operation = options.operation ?? OPERATIONS[command];
    if (!this.#formatChecked) return this.#checkIntegerFormat(wallet, operation).then(() => this.#script(wallet, command, args, options));
    this.#batchWrites();
    const keys = options.keys ?? cachedWalletKeys(wallet);
    return this.#call(wallet, operation, () => this.#commands[command](...keys, ...args), options.onLateReply);
  }

  /**
   * Checks once that the server's Lua prints 2^53 exactly with '%d'. The
   * scripts print amounts that way, and Lua 5.1 converts through a C long,
   * which a 32-bit Redis build would truncate. Concurrent calls share one
   * EVAL, and each caller's error names its own wallet and operation. A
   * connection failure lets the next call check again, and a wrong result
   * fails every call.
   */
  async #checkIntegerFormat(wallet: WalletKey, operation: string): Promise<void> {
    const check = (this.#formatCheck ??= this.#client.eval("return string.format('%d', 2^53)", 0).catch((error: unknown) => {
      this.#formatCheck = undefined;
      throw error;
    }));
    let printed: unknown;
    try {
      printed = await this.#call(wallet, operation, () => check);
    } catch (error) {
      // A check whose connection was lost never settles, so a timed-out one is sent again by the next call.
      if (error instanceof LedgerTimeoutError && this.#formatCheck === check) this.#formatCheck = undefined;
      throw error;
    }
    if (printed !== String(2 ** 53)) {
      throw new Error(
        `the Redis server's Lua printed 2^53 as "${String(printed)}" instead of ${2 ** 53}, so it would store wrong amounts; ` +
          'run the ledger on a 64-bit Redis build',
      );
    }
    this.#formatChecked = true;
  }

  /**
   * Corks the socket of a single-server connection until the event loop's
   * check phase, so that every script sent while the loop handles this round
   * of I/O leaves in one write. With ioredis 5 on Node 24 this measured
   * cheaper per command than one write per command and than ioredis's
   * auto-pipelining, whose pipeline object per batch also outlived
   * young-generation collections and lengthened their pauses.
   */
  #batchWrites(): void {
    if (this.#corked || !(this.#client instanceof Redis) || this.#client.status !== 'ready') return;
    const socket = this.#client.stream;
    socket.cork();
    this.#corked = true;
    setImmediate(() => {
      this.#corked = false;
      socket.uncork();
    });
  }

  /**
   * Runs one Redis call within the ledger's timeout. When the call times out
   * and its reply comes later, `onLateReply` gets that reply.
   */
  async #call<T>(wallet: WalletKey, operation: string, run: () => Promise<T>, onLateReply?: (reply: T) => Promise<void> | undefined): Promise<T> {
    let pending: Promise<T> | undefined;
    try {
      pending = run();
      const result = await (this.#timeoutMs === 0 ? pending : withDeadline(pending, this.#timeoutMs));
      this.#silentSinceMs = undefined;
      return result;
    } catch (error) {
      if (error instanceof DeadlineExceeded) {
        if (onLateReply !== undefined && pending !== undefined) this.#awaitLateReply(pending, onLateReply);
        this.#dropSilentConnection();
        throw this.#timedOut(operation, wallet, error);
      }
      this.#silentSinceMs = undefined;
      const reason = this.#client instanceof Cluster ? describeRedirections(this.#client, wallet, error) : undefined;
      const down = reason === undefined ? this.#connection : undefined;
      throw asLedgerError(error, operation, wallet, this.#address(), reason ?? down?.lastError, down?.lastAdvice);
    }
  }

  /** Passes a timed-out call's reply to `onLateReply` when it arrives, and keeps the work pending for quit. */
  #awaitLateReply<T>(pending: Promise<T>, onLateReply: (reply: T) => Promise<void> | undefined): void {
    const settled = pending.then(onLateReply).then(
      () => undefined,
      () => undefined,
    );
    this.#lateReplies.add(settled);
    void settled.finally(() => this.#lateReplies.delete(settled));
  }

  /**
   * Drops the ledger's own single-server connection once calls have timed
   * out on it for SILENT_CONNECTION_TIMEOUTS timeouts with no reply, so that
   * ioredis connects again. The waiting commands are not sent again, because
   * the ledger turns that off when it has a timeout.
   */
  #dropSilentConnection(): void {
    const now = Date.now();
    this.#silentSinceMs ??= now - this.#timeoutMs;
    if (now - this.#silentSinceMs < SILENT_CONNECTION_TIMEOUTS * this.#timeoutMs) return;
    if (!this.#ownsClient || !(this.#client instanceof Redis) || this.#client.status !== 'ready') return;
    this.#silentSinceMs = undefined;
    this.#client.stream.destroy(new Error(`no reply from Redis for ${SILENT_CONNECTION_TIMEOUTS} ledger timeouts of ${this.#timeoutMs} ms`));
  }

  #timedOut(operation: string, wallet: WalletKey, error: DeadlineExceeded): LedgerTimeoutError {
    const down = this.#connection?.lastError;
    // A call can time out while the client keeps trying to connect, as on a slow machine, so the connection's own advice
    // (a certificate to give, say) comes first.
    const advice = down === undefined ? undefined : this.#connection?.lastAdvice;
    let check = '. Check that Redis is running, reachable and not blocked by a long command or a persistence fork; ';
    if (this.#inTlsHandshake()) {
      check =
        ". The connection's TLS handshake has not completed: check that this port serves TLS (redis-server's tls-port), " +
        'or use a redis:// URL for a port without TLS; ';
    } else if (advice !== undefined) {
      check = `. ${advice.replace(/\.+$/, '')}; `;
    }
    return new LedgerTimeoutError(
      `ledger ${operation} for wallet ${walletId(wallet)} got no answer from ${this.#address()}${this.#slotOf(wallet)} within ${error.ms} ms` +
        (down === undefined ? '' : ` (connection: ${down.replace(/\.+$/, '')})`) +
        check +
        'the operation may still run when Redis catches up, which the ledger tolerates (its operations are idempotent)',
      { cause: error },
    );
  }

  /**
   * Returns whether the ledger's own single-server connection is connected
   * over TCP but waits for the server's side of the TLS handshake, and was
   * never ready. Once a connection was ready, the port serves TLS, and a
   * handshake that waits means a stalled server.
   */
  #inTlsHandshake(): boolean {
    if (!this.#ownsClient || !(this.#client instanceof Redis) || this.#client.status !== 'connecting') return false;
    if (this.#connection?.connectedOnce === true) return false;
    const stream = this.#client.stream as Socket | undefined;
    return stream instanceof TLSSocket && !stream.connecting && !stream.destroyed;
  }

  /** Names the wallet's slot and the master the client knows for it, such as " (slot 1234, master 10.0.0.5:6379)", on a Cluster only. */
  #slotOf(wallet: WalletKey): string {
    if (!(this.#client instanceof Cluster)) return '';
    const { slot, master } = walletSlot(this.#client, wallet);
    return ` (slot ${slot}${master === undefined ? '' : `, master ${master}`})`;
  }

  /** Names the Redis server for error messages: host and port, never the URL, which may hold a password. */
  #address(): string {
    if (this.#client instanceof Redis) {
      const { host, port, path } = this.#client.options;
      return path ? `Redis at ${path}` : `Redis at ${host ?? 'localhost'}:${port ?? 6379}`;
    }
    return this.#connection?.address ?? 'the Redis Cluster';
  }
}

/** The state of a connection that watchConnection listens on. */
interface WatchedConnection {
  /**
   * The message of the most recent connection error, such as "connect
   * ECONNREFUSED 127.0.0.1:6379", kept from the error until the connection is
   * ready again and undefined otherwise.
   */
  lastError: string | undefined;
  /** The advice for that error when it points to a TLS setting (see connectionAdvice); undefined otherwise. */
  lastAdvice: string | undefined;
  /** Whether that error came from TLS: a certificate check or an alert of the server. */
  lastFromTls: boolean;
  /** The cluster's name for messages, such as "the Redis Cluster at seed 10.0.0.5:6379"; undefined for one server. */
  address: string | undefined;
  /** Whether the client was ready once. Until then a failure is logged as a failed connection, not a lost one. */
  connectedOnce: boolean;
}

/**
 * Logs the first connection error after each loss of the connection (or
 * while the first connection fails) and the connection that ends it. Keeps
 * the most recent error for the messages of the calls that fail
 * meanwhile. The listener also keeps ioredis from printing
 * every retry's error to the console. Callers see failures as
 * LedgerUnavailableError. A Cluster counts as lost when no node responds to
 * CLUSTER SLOTS. A single master that fails does not end its 'ready' state.
 */
function watchConnection(
  client: Redis | Cluster,
  address: string | undefined,
  logger: ConnectionLogger | undefined,
  security: ConnectionSecurity,
): WatchedConnection {
  const connection: WatchedConnection = { lastError: undefined, lastAdvice: undefined, lastFromTls: false, address, connectedOnce: false };
  const cluster = client instanceof Cluster ? (address ?? 'the Redis Cluster') : undefined;
  const lost = (error: Error, reason: string) => {
    const failing = connection.lastError !== undefined;
    // ioredis reports its ready check, which it could not send on a connection that was closing, as a connection
    // error. The cause, such as a TLS alert, comes as an error of its own, so this one is replaced by it.
    if (error.message === OFFLINE_QUEUE_OFF) {
      if (failing) return;
      reason = 'the connection closed before Redis was ready';
    }
    // Under TLS 1.3 the server's alert, such as "certificate required", can come just before the reset of the same
    // connection. The reset says less, so it does not replace the alert's reason.
    if (failing && connection.lastFromTls && isReset(error)) return;
    connection.lastError = reason;
    connection.lastAdvice = connectionAdvice(error, security);
    connection.lastFromTls = isTlsError(error);
    if (failing) return;
    const details = connection.lastAdvice === undefined ? { err: error } : { err: error, advice: connection.lastAdvice };
    if (!connection.connectedOnce) {
      logger?.warn(details, `ledger cannot connect to ${cluster ?? 'Redis'}; ledger operations fail until it connects`);
      return;
    }
    const message = cluster === undefined ? 'ledger lost its Redis connection' : `ledger lost its connection to ${cluster}`;
    logger?.warn(details, `${message}; ledger operations fail until it reconnects`);
  };

  if (client instanceof Cluster) {
    // ioredis reports each node that fails to answer CLUSTER SLOTS as a 'node error' just before it gives up on all of them.
    let lastNode: string | undefined;
    let lastNodeError: Error | undefined;
    client.on('node error', (error: Error, node: string) => {
      // A node whose connection failed also fails its CLUSTER SLOTS with "Connection is closed.", which would hide the cause, such as a TLS error.
      if (error.message === CONNECTION_CLOSED && lastNode?.startsWith(`${node}: `)) return;
      lastNode = `${node}: ${describeConnectionError(error).replace(/\.+$/, '')}`;
      lastNodeError = error;
    });
    // The advice follows the node's error, because the cluster's own ("Failed to refresh slots cache", or a failed
    // ready check when a node other than the seeds could not be reached) does not say why.
    client.on('error', (error: Error) => {
      const fromNode = 'lastNodeError' in error || error.message === READY_CHECK_FAILED;
      lost(fromNode ? (lastNodeError ?? error) : error, describeClusterError(error, lastNode));
    });
    client.on('ready', () => {
      lastNode = undefined;
      lastNodeError = undefined;
    });
  } else {
    client.on('error', (error: Error) => lost(error, describeConnectionError(error)));
  }
  client.on('ready', () => {
    const first = !connection.connectedOnce;
    connection.connectedOnce = true;
    if (connection.lastError === undefined) return;
    connection.lastError = undefined;
    connection.lastAdvice = undefined;
    connection.lastFromTls = false;
    logger?.info({}, `ledger ${first ? 'connected' : 'reconnected'} to ${cluster ?? 'Redis'}`);
  });
  return connection;
}

/**
 * Makes a single-server client fail commands at once while it is
 * disconnected, once it has been ready. By default ioredis keeps them until
 * its next reconnection attempt fails, up to 2 s later. Before the first
 * connection commands still wait, so that requests at start are served.
 */
function failFastOnceReady(client: Redis): void {
  client.once('ready', () => {
    client.options.enableOfflineQueue = false;
  });
}

/**
 * Returns the message of a Cluster client's error. When no node answered
 * ("Failed to refresh slots cache."), it names the last node tried and its
 * error, because ioredis's own message says neither.
 */
function describeClusterError(error: Error, lastNode: string | undefined): string {
  if (error.message === READY_CHECK_FAILED && lastNode !== undefined) return `${READY_CHECK_FAILED} (last node error ${lastNode})`;
  if (!('lastNodeError' in error)) return describeConnectionError(error);
  const nodeError = error.lastNodeError instanceof Error ? describeConnectionError(error.lastNodeError).replace(/\.+$/, '') : undefined;
  const detail = lastNode ?? nodeError;
  return detail === undefined ? 'no cluster node answered' : `no cluster node answered (last tried ${detail})`;
}

/**
 * Returns the message of a connection error. Node's connect with
 * autoSelectFamily fails with an AggregateError whose own message is empty
 * when every address of a host name fails, so then the result joins the
 * messages of its inner errors.
 */
export function describeConnectionError(error: Error): string {
  // OpenSSL's message spans lines and names its source files; its reason, such as "tlsv1 alert unknown ca", is the part that helps.
  const { library, reason } = error as Error & { library?: unknown; reason?: unknown };
  if (library === 'SSL routines' && typeof reason === 'string' && reason !== '') return `TLS error: ${reason}`;
  if (error.message !== '') return error.message;
  if (error instanceof AggregateError) {
    const messages = error.errors.map((inner: unknown) => (inner instanceof Error ? inner.message : String(inner))).filter((message) => message !== '');
    if (messages.length > 0) return messages.join(', ');
  }
  const code = (error as NodeJS.ErrnoException).code;
  return code ?? error.name;
}

/** ioredis's message for a command on a connection that closed. */
const CONNECTION_CLOSED = 'Connection is closed.';
/** ioredis's message for a command sent while disconnected, once failFastOnceReady turned its offline queue off. */
const OFFLINE_QUEUE_OFF = "Stream isn't writeable and enableOfflineQueue options is false";

/** The kind of the ledger's own connection, and the names of its TLS settings; for connectionAdvice. */
interface ConnectionSecurity {
  tls: boolean;
  cluster: boolean;
  ca: boolean;
  clientCertificate: boolean;
  /** The settings of the TLS files as the user knows them, such as `--redis-ca` or `TOLLGATE_REDIS_CA_FILE`. */
  names: RedisTlsSettingNames;
}

/** Codes of Node.js's errors for a server certificate that it could not verify. */
const UNTRUSTED_CERTIFICATE_CODES = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
]);

/** Codes of OpenSSL alerts by which the server rejected the client's certificate, or the lack of one. */
const REJECTED_CLIENT_CERTIFICATE_CODES = new Set([
  'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA',
  'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE',
  'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED',
  'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
]);

/** OpenSSL's reasons for the alerts a server sends about the client's certificate, as OpenSSL 3 words them. */
const CLIENT_CERTIFICATE_ALERT = /alert (unknown ca|bad certificate|certificate expired|certificate revoked|certificate unknown|unsupported certificate|certificate required)$/;

/**
 * Returns whether the server rejected or asked for the client certificate.
 * Node.js derives the error code from OpenSSL's reason, which OpenSSL 3
 * words "ssl/tls alert certificate expired" for some alerts, so the reason
 * is checked too.
 */
function rejectsClientCertificate(error: Error): boolean {
  const { code, reason } = error as Error & { code?: string; reason?: unknown };
  return REJECTED_CLIENT_CERTIFICATE_CODES.has(code ?? '') || (typeof reason === 'string' && CLIENT_CERTIFICATE_ALERT.test(reason));
}

/** Returns whether an error is a reset of the connection by the peer. */
function isReset(error: Error): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ECONNRESET' || code === 'EPIPE';
}

/** Returns whether an error comes from TLS: an untrusted or misnamed certificate, or an alert of the server. */
function isTlsError(error: Error): boolean {
  const code = (error as NodeJS.ErrnoException).code ?? '';
  return UNTRUSTED_CERTIFICATE_CODES.has(code) || code === 'ERR_TLS_CERT_ALTNAME_INVALID' || code.startsWith('ERR_SSL_');
}

/**
 * Returns what to check when a connection error points to a TLS setting,
 * or undefined. A connection that the server resets at once can mean a TLS
 * port reached without TLS. It can also mean a server that wants a client
 * certificate (redis-server's `tls-auth-clients`, on by default). So the
 * advice for a reset depends on what the ledger's connection uses. Under TLS 1.3 the
 * server checks the client certificate after the client's handshake is
 * done, so a refused certificate shows as its alert or as a reset.
 */
function connectionAdvice(error: Error, security: ConnectionSecurity): string | undefined {
  const code = (error as NodeJS.ErrnoException).code ?? '';
  const { names } = security;
  const clientCertificateSettings = `${names.certFile} and ${names.keyFile}`;
  if (UNTRUSTED_CERTIFICATE_CODES.has(code)) {
    return security.ca
      ? `The ledger does not trust the Redis server's TLS certificate: check that the CA in ${names.caFile} signed it.`
      : `The ledger does not trust the Redis server's TLS certificate: give it the CA that signed that certificate in ${names.caFile}.`;
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return security.cluster
      ? "The Redis node's TLS certificate does not name the address the ledger connected to. The ledger reaches the seeds " +
          'by the host in the URL and the other nodes by the address they announce in CLUSTER SLOTS, an IP address unless ' +
          'the cluster announces host names (cluster-announce-hostname with cluster-preferred-endpoint-type hostname), so ' +
          'the node certificates must name those addresses.'
      : "The Redis server's TLS certificate does not name the host in the Redis URL: use a host name or address that the certificate names.";
  }
  if (rejectsClientCertificate(error)) {
    return security.clientCertificate
      ? "Redis rejected the ledger's client certificate: check that a CA in redis-server's tls-ca-cert-file signed the " +
          `certificate in ${names.certFile}, and that it has not expired.`
      : `Redis asks for a client certificate: give one in ${clientCertificateSettings}.`;
  }
  if (code !== 'ECONNRESET' && code !== 'EPIPE') return undefined;
  const running = 'Check that Redis is running and reachable there.';
  if (!security.tls) {
    return `${running} If that port serves TLS (redis-server's tls-port), use a ${security.cluster ? 'rediss+cluster://' : 'rediss://'} URL.`;
  }
  if (!security.clientCertificate) {
    return `${running} If it asks for client certificates (redis-server's tls-auth-clients), give one in ${clientCertificateSettings}.`;
  }
  return `${running} If it rejected the client certificate, check that a CA in redis-server's tls-ca-cert-file signed the certificate in ${names.certFile}.`;
}

/**
 * Names the master that serves a wallet when a Cluster client gave up after
 * its redirections, because ioredis's message ("Too many Cluster
 * redirections") names neither the slot nor the node. Returns undefined for
 * other errors.
 */
function describeRedirections(client: Cluster, wallet: WalletKey, error: unknown): string | undefined {
  const message = error instanceof Error ? error.message : '';
  if (!message.startsWith('Too many Cluster redirections')) return undefined;
  const { slot, master } = walletSlot(client, wallet);
  return `calls for the wallet's slot ${slot}${master === undefined ? '' : ` (master ${master})`} failed after the client's redirections (${message.replace(/\.+$/, '')})`;
}

/** Returns the slot of a wallet's keys and the master that the Cluster client last knew for it. */
function walletSlot(client: Cluster, wallet: WalletKey): { slot: number; master: string | undefined } {
  const slot = keySlot(`w:${walletId(wallet)}`);
  return { slot, master: client.slots[slot]?.[0] };
}

/** Returns the Redis Cluster slot of a hash tag: CRC16 (XMODEM) of its bytes, modulo 16384. */
export function keySlot(tag: string): number {
  let crc = 0;
  for (const byte of Buffer.from(tag, 'utf8')) {
    crc ^= byte << 8;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % 16384;
}

/** Returns the wallet's keys in the order the scripts expect (KEY_SUFFIXES). */
export function walletKeys(wallet: WalletKey): string[] {
  for (const part of [wallet.namespace, wallet.name]) {
    if (part.length === 0 || part.includes('{') || part.includes('}')) {
      throw new RangeError(`invalid wallet "${walletId(wallet)}": namespace and name must be non-empty and contain no braces`);
    }
  }
  const tag = `{w:${walletId(wallet)}}`;
  return KEY_SUFFIXES.map((suffix) => `${tag}:${suffix}`);
}

/** Keys built by `cachedWalletKeys`, by wallet object, with the names they were built from. */
const keyCache = new WeakMap<WalletKey, { namespace: string; name: string; keys: readonly string[] }>();

/**
 * Returns `walletKeys(wallet)` and keeps it for later calls with the same
 * object, because a caller such as the sidecar passes the same wallet object
 * with every request. A cached entry is used only while the object still
 * has the names it was built from.
 */
function cachedWalletKeys(wallet: WalletKey): readonly string[] {
  const cached = keyCache.get(wallet);
  if (cached !== undefined && cached.namespace === wallet.namespace && cached.name === wallet.name) return cached.keys;

  const keys = walletKeys(wallet);
  keyCache.set(wallet, { namespace: wallet.namespace, name: wallet.name, keys });
  return keys;
}

/** Returns the wallet's keys followed by its checkpoint key, for the scripts in CHECKPOINT_SCRIPTS. */
function checkpointKeys(wallet: WalletKey): string[] {
  const keys = [...cachedWalletKeys(wallet)];
  keys.push(keys[0]!.replace(/:acct$/, ':checkpoint'));
  return keys;
}

/** Parses the checkpoint fields as the scripts return them (granted, spent, expired, providerCost, entries, lastId). */
function parseCheckpoint(fields: string[]): Checkpoint | undefined {
  const [granted, spent, expired, providerCost, entries, lastId] = fields;
  if (!lastId) return undefined;
  const amount = (text: string | undefined) => BigInt(text || '0');
  return { granted: amount(granted), spent: amount(spent), expired: amount(expired), providerCost: amount(providerCost), entries: Number(entries || '0'), lastId };
}

/**
 * Returns the largest stream id whose time is before `beforeMs`, as an
 * inclusive XRANGE end. Redis never assigns 0-0, so for 0 the range is empty.
 */
function lastIdBefore(beforeMs: number): string {
  return beforeMs === 0 ? '0-0' : `${beforeMs - 1}-18446744073709551615`;
}

/** Longest TIME round trip whose clock offset the ledger keeps for the connection. */
const MAX_CLOCK_READ_MS = 50;

/** Epoch milliseconds from the monotonic clock, which an NTP step of the wall clock does not move. */
function monotonicNowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** The rejection of withDeadline. */
class DeadlineExceeded extends Error {
  readonly ms: number;

  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
    this.ms = ms;
  }
}

/**
 * Settles like `promise`, or rejects with DeadlineExceeded after `ms`. The
 * command behind `promise` stays in the client's queue and may still run:
 * a Redis command cannot be taken back once it is sent.
 */
function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new DeadlineExceeded(ms)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

/** Turns a stream entry's flat field list into an object, keeping the order. */
function fieldsOf(flat: string[]): Record<string, string> {
  const fields: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
  return fields;
}

/** Returns the XRANGE bounds and page size for `entries`, after checking the options. */
function entryRange(options: EntriesOptions): { start: string; end: string; pageSize: number } {
  const { from, after, beforeMs, pageSize = ENTRIES_PAGE } = options;
  if (from !== undefined && after !== undefined) throw new RangeError('invalid entries options: give either from or after, not both');
  if (from !== undefined) validateEntryId('from', from);
  if (after !== undefined) validateEntryId('after', after);
  if (beforeMs !== undefined) validateCutoff(beforeMs);
  if (!Number.isSafeInteger(pageSize) || pageSize < 1) throw new RangeError(`invalid pageSize ${pageSize}: use a whole number of at least 1`);
  return {
    start: after !== undefined ? `(${after}` : (from ?? '-'),
    end: beforeMs !== undefined ? lastIdBefore(beforeMs) : '+',
    pageSize,
  };
}

function parseReserveReply(reply: string[]): ReserveResult {
  switch (reply[0]) {
    case 'reserved':
      return { status: 'reserved', amount: BigInt(reply[1]!), units: Number(reply[2]), replayed: reply[3] === '1' };
    case 'insufficient_funds':
      return { status: 'insufficient_funds', available: BigInt(reply[1]!), required: BigInt(reply[2]!) };
    case 'limit_exceeded':
      return {
        status: 'limit_exceeded',
        limit: reply[1] as 'maxPerRequest' | 'dailyCap' | 'monthlyCap',
        required: BigInt(reply[2]!),
        remaining: BigInt(reply[3]!),
      };
    case 'conflict':
      if (reply[1] === 'fingerprint_mismatch') return { status: 'conflict', reason: 'fingerprint_mismatch' };
      return reply[2] === 'expired' ? { status: 'conflict', reason: 'already_settled', uncharged: true } : { status: 'conflict', reason: 'already_settled' };
    case 'wallet_closed':
      return { status: 'wallet_closed' };
    default:
      throw new Error(`unexpected reply from the reserve script: ${JSON.stringify(reply)}`);
  }
}

/**
 * Wraps connection failures, timeouts and "server cannot serve now" replies
 * in LedgerUnavailableError, and returns other errors (script or argument
 * bugs) unchanged. `connectionError` is the most recent error of a connection that is
 * down. It replaces the client's own reason, such as "Reached the max retries
 * per request limit", which does not say why the connection failed.
 */
function asLedgerError(
  error: unknown,
  operation: string,
  wallet: WalletKey,
  address: string,
  connectionError: string | undefined,
  advice?: string | undefined,
): unknown {
  const isReply = error instanceof ReplyError;
  const message = error instanceof Error ? error.message : String(error);
  if (isReply && CREDENTIALS_REPLY.test(message)) {
    return new LedgerUnavailableError(
      `ledger ${operation} for wallet ${walletId(wallet)} failed because ${address} rejected the connection's credentials: ${message.replace(/\.+$/, '')}. ` +
        'Check the user name and password in the Redis URL.',
      { cause: error },
    );
  }
  if (isReply && message.startsWith('NOPERM')) {
    return new LedgerUnavailableError(
      `ledger ${operation} for wallet ${walletId(wallet)} failed because ${address} does not permit it for the connection's user: ${message.replace(/\.+$/, '')}. ` +
        "Grant that user the ledger's commands and keys in its ACL.",
      { cause: error },
    );
  }
  if (isReply && !UNAVAILABLE_REPLY.test(message)) return error;
  // A cluster client reports a node's refusal of the credentials only as the reason no node answered.
  if (!isReply && connectionError !== undefined && CREDENTIALS_IN_TEXT.test(connectionError)) {
    return new LedgerUnavailableError(
      `ledger ${operation} for wallet ${walletId(wallet)} failed because ${address} rejected the connection's credentials: ${connectionError.replace(/\.+$/, '')}. ` +
        'Check the user name and password in the Redis URL.',
      { cause: error },
    );
  }

  // ioredis's advice to tune its retry option is meant for library users, not for Tollgate's operators, so it is dropped.
  const clientReason = message
    .replace(/\s*Refer to "maxRetriesPerRequest" option for details\.?/, '')
    .replace(OFFLINE_QUEUE_OFF, 'the connection is down and the client is reconnecting');
  const fromConnection = !isReply && connectionError !== undefined;
  const reason = (fromConnection ? connectionError : clientReason).replace(/\.+$/, '');
  return new LedgerUnavailableError(
    `ledger ${operation} for wallet ${walletId(wallet)} failed because ${address} is unavailable: ${reason}. ` +
      ((fromConnection ? advice : undefined) ?? 'Check that Redis is running and reachable there.'),
    { cause: error },
  );
}
