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
 * - `:hexp`   sorted set of open request ids by expiry, in epoch milliseconds
 * - `:done`   hash of settled requests by request id, so that a retry gets the
 *             first result. It has no TTL, because a retry arriving after a
 *             TTL would be billed again.
 *             NOTE: `:done` and `:log` grow by one field and one entry per
 *             request, and nothing trims them yet.
 * - `:grants` hash of grant amounts by grant id
 * - `:log`    stream of entries (`grant`, `debit`, `expire-charge`, `expire`),
 *             amounts as decimal integer strings; `tollgate ledger verify`
 *             replays it
 *
 * Hold and grant expiry use the Redis server's clock, so sidecars with
 * skewed clocks agree. The spend-cap period is the caller's UTC day and month.
 */

import { readFileSync } from 'node:fs';
import { Redis, Cluster, ReplyError } from 'ioredis';
import type { RedisOptions } from 'ioredis';

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
  LedgerUnavailableError,
  compareTotals,
  grantTotalTooLarge,
  holdTtlMs,
  periodFields,
  validateCommitEntry,
  validateGrant,
  validateGrantExpiry,
  validateHoldRequest,
  walletId,
} from './ledger.ts';
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
} as const;

type ScriptCommand = keyof typeof SCRIPTS;
type ScriptCommands = Record<ScriptCommand, (...args: string[]) => Promise<unknown>>;

/** The operation each script performs, as error messages name it (`reserve` for reserve.lua). */
const OPERATIONS = Object.fromEntries(
  Object.entries(SCRIPTS).map(([command, file]) => [command, file.replace(/\.lua$/, '')]),
) as Record<ScriptCommand, string>;

const READ_ONLY_SCRIPTS = new Set<ScriptCommand>(['tollgateState', 'tollgateSnapshot']);

/** The suffixes of a wallet's keys, in the order every script receives them. */
const KEY_SUFFIXES = ['acct', 'holds', 'hexp', 'done', 'log', 'grants'] as const;

/** How many expired holds one sweep script settles before the next round trip. */
const SWEEP_BATCH = 1000;
/** How many stream entries verify reads per round trip. */
const VERIFY_BATCH = 1000;

/**
 * Error replies that mean the server cannot serve now (loading, failing
 * over, out of memory) rather than a bug in a script or its arguments.
 */
const UNAVAILABLE_REPLY = /^(LOADING|READONLY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|BUSY|NOREPLICAS|OOM)\b/;

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
  /** Clock in epoch milliseconds for the UTC day and month of the spend caps. Hold expiry uses the server's clock. */
  now?: () => number;
  /**
   * Options for the connection the ledger opens when given a URL. The
   * defaults fail a command after one reconnection attempt
   * (`maxRetriesPerRequest: 1`), so that the sidecar fails closed quickly.
   * Auto-pipelining stays off, because the ledger batches its own writes
   * (see #batchWrites).
   */
  redisOptions?: RedisOptions;
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
  /** Whether the connection's socket is corked until the check phase. */
  #corked = false;
  /** Set once the server's Lua is known to print amounts exactly (see #checkIntegerFormat). */
  #formatChecked = false;
  #formatCheck: Promise<void> | undefined;

  /**
   * Takes an ioredis client (Redis or Cluster), which the caller keeps
   * owning, or a `redis://` URL, for which the ledger opens and later closes
   * its own connection.
   */
  constructor(client: Redis | Cluster | string, options: RedisLedgerOptions = {}) {
    if (typeof client === 'string') {
      const owned = new Redis(client, { maxRetriesPerRequest: 1, ...options.redisOptions });
      watchConnection(owned, options.logger);
      this.#client = owned;
      this.#ownsClient = true;
    } else {
      this.#client = client;
      this.#ownsClient = false;
    }
    this.#now = options.now ?? Date.now;

    for (const [command, lua] of Object.entries(loadScripts()) as Array<[ScriptCommand, string]>) {
      this.#client.defineCommand(command, { lua, numberOfKeys: KEY_SUFFIXES.length, readOnly: READ_ONLY_SCRIPTS.has(command) });
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

    const [status, value] = reply as [string, string];
    if (status === 'too_large') throw grantTotalTooLarge(wallet, grantId, amount, BigInt(value));
    if (status === 'expired') throw new GrantExpiredError(wallet, grantId, expiresAtMs!, Number(value));
    return { status: 'credited', replayed: status === 'replayed', balance: BigInt(value) };
  }

  async reserve(wallet: WalletKey, requestId: string, hold: HoldRequest): Promise<ReserveResult> {
    validateHoldRequest(requestId, hold);
    const periods = periodFields(this.#now());
    const limits = hold.limits ?? {};
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
    ]);
    return parseReserveReply(reply as string[]);
  }

  async markAnswered(wallet: WalletKey, requestId: string): Promise<void> {
    await this.#script(wallet, 'tollgateMarkAnswered', [requestId]);
  }

  async commit(wallet: WalletKey, requestId: string, entry: CommitEntry): Promise<CommitResult> {
    validateCommitEntry(requestId, entry);
    const periods = periodFields(this.#now());
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
    ])) as string[];

    if (reply[0] === 'conflict') return { status: 'conflict', reason: 'released' };
    return { status: 'committed', charged: BigInt(reply[1]!), released: BigInt(reply[2]!), replayed: reply[3] === '1' };
  }

  async release(wallet: WalletKey, requestId: string): Promise<ReleaseResult> {
    const reply = (await this.#script(wallet, 'tollgateRelease', [requestId])) as string[];
    if (reply[0] === 'released') return { status: 'released', amount: BigInt(reply[1]!) };
    return { status: reply[0] as 'not_found' | 'already_committed' };
  }

  async sweep(wallet: WalletKey, nowMs?: number): Promise<SweepResult> {
    const result: SweepResult = { released: 0, charged: 0 };
    const now = nowMs === undefined ? '' : String(Math.floor(nowMs));
    for (;;) {
      const [released, charged, seen] = (await this.#script(wallet, 'tollgateSweep', [now, String(SWEEP_BATCH)])) as number[];
      result.released += released!;
      result.charged += charged!;
      if (seen! < SWEEP_BATCH) return result;
    }
  }

  async state(wallet: WalletKey): Promise<WalletState> {
    const reply = (await this.#script(wallet, 'tollgateState', [])) as [string, string, string, string, string, number, string];
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
      holds: reply[5],
      closed: reply[4] === '1',
    };
  }

  async close(wallet: WalletKey): Promise<void> {
    const [accountKey] = cachedWalletKeys(wallet);
    await this.#call(wallet, 'close', () => this.#client.hset(accountKey!, 'closed', '1'));
  }

  async verify(wallet: WalletKey): Promise<VerifyResult> {
    const snapshot = (await this.#script(wallet, 'tollgateSnapshot', [])) as [string[], string[], string[], string];
    const [totals, grantAmounts, packedHolds, lastEntryId] = snapshot;
    const [granted, spent, reserved, providerCost, expired] = totals.map((value) => BigInt(value)) as [bigint, bigint, bigint, bigint, bigint];

    return compareTotals(wallet, {
      stored: { granted, spent, expired, reserved, providerCost },
      replayed: await this.#replayLog(wallet, lastEntryId),
      grantsSum: grantAmounts.reduce((total, value) => total + BigInt(value), 0n),
      // A packed hold starts with its amount, followed by '|'.
      holdsSum: packedHolds.reduce((total, packed) => total + BigInt(packed.slice(0, packed.indexOf('|'))), 0n),
    });
  }

  async quit(): Promise<void> {
    if (!this.#ownsClient) return;
    if (this.#client.status === 'ready') await this.#client.quit();
    else this.#client.disconnect();
  }

  /** Sums the stream entries up to and including `lastEntryId`, in batches. */
  async #replayLog(wallet: WalletKey, lastEntryId: string) {
    const replayed = { granted: 0n, spent: 0n, expired: 0n, providerCost: 0n, entries: 0 };
    if (lastEntryId === '') return replayed;

    const logKey = cachedWalletKeys(wallet)[4]!;
    let start = '-';
    for (;;) {
      const batch = await this.#call(wallet, 'verify', () => this.#client.xrange(logKey, start, lastEntryId, 'COUNT', VERIFY_BATCH));
      for (const [, flat] of batch) {
        const fields = new Map<string, string>();
        for (let i = 0; i + 1 < flat.length; i += 2) fields.set(flat[i]!, flat[i + 1]!);

        const amount = BigInt(fields.get('amount') ?? '0');
        const type = fields.get('type');
        if (type === 'grant') replayed.granted += amount;
        else if (type === 'expire') replayed.expired += amount;
        else replayed.spent += amount;
        replayed.providerCost += BigInt(fields.get('providerCost') ?? '0');
        replayed.entries += 1;
      }
      if (batch.length < VERIFY_BATCH) return replayed;
      start = `(${batch[batch.length - 1]![0]}`;
    }
  }

  #script(wallet: WalletKey, command: ScriptCommand, args: string[]): Promise<unknown> {
    if (!this.#formatChecked) return this.#checkIntegerFormat(wallet).then(() => this.#script(wallet, command, args));
    const keys = cachedWalletKeys(wallet);
    this.#batchWrites();
    return this.#call(wallet, OPERATIONS[command], () => this.#commands[command](...keys, ...args));
  }

  /**
   * Checks once that the server's Lua prints 2^53 exactly with '%d'. The
   * scripts print amounts that way, and Lua 5.1 converts through a C long,
   * which a 32-bit Redis build would truncate. A connection failure lets the
   * next call check again; a wrong result fails every call.
   */
  #checkIntegerFormat(wallet: WalletKey): Promise<void> {
    this.#formatCheck ??= this.#client.eval("return string.format('%d', 2^53)", 0).then(
      (printed) => {
        if (printed !== String(2 ** 53)) {
          throw new Error(
            `the Redis server's Lua printed 2^53 as "${String(printed)}" instead of ${2 ** 53}, so it would store wrong amounts; ` +
              'run the ledger on a 64-bit Redis build',
          );
        }
        this.#formatChecked = true;
      },
      (error: unknown) => {
        this.#formatCheck = undefined;
        throw asLedgerError(error, 'check', wallet);
      },
    );
    return this.#formatCheck;
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

  async #call<T>(wallet: WalletKey, operation: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw asLedgerError(error, operation, wallet);
    }
  }
}

/**
 * Logs the first connection error after each loss of the connection and the
 * reconnection. The listener also keeps ioredis from printing every retry's
 * error to the console; callers see failures as LedgerUnavailableError.
 */
function watchConnection(client: Redis, logger: ConnectionLogger | undefined): void {
  let failing = false;
  client.on('error', (error: Error) => {
    if (failing) return;
    failing = true;
    logger?.warn({ err: error }, 'ledger lost its Redis connection; ledger operations fail until it reconnects');
  });
  client.on('ready', () => {
    if (!failing) return;
    failing = false;
    logger?.info({}, 'ledger reconnected to Redis');
  });
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
      return { status: 'conflict', reason: reply[1] as 'fingerprint_mismatch' | 'already_settled' };
    case 'wallet_closed':
      return { status: 'wallet_closed' };
    default:
      throw new Error(`unexpected reply from the reserve script: ${JSON.stringify(reply)}`);
  }
}

/**
 * Wraps connection failures, timeouts and "server cannot serve now" replies
 * in LedgerUnavailableError; other errors (script or argument bugs) pass through.
 */
function asLedgerError(error: unknown, operation: string, wallet: WalletKey): unknown {
  const isReply = error instanceof ReplyError;
  const message = error instanceof Error ? error.message : String(error);
  if (isReply && !UNAVAILABLE_REPLY.test(message)) return error;

  return new LedgerUnavailableError(
    `ledger ${operation} for wallet ${walletId(wallet)} failed because Redis is unavailable: ${message}. ` +
      'Check that Redis is running and reachable at the configured URL.',
    { cause: error },
  );
}
