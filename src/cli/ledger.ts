import { once } from 'node:events';
import type { ConnectionOptions } from 'node:tls';
import { parseArgs } from 'node:util';
import { compareEntryIds, validateEntryId, type Checkpoint, type EntriesOptions, type Ledger, type WalletKey, type WalletState } from '../ledger/ledger.ts';
import { RedisLedger } from '../ledger/redis.ts';
import { parseRedisUrl } from '../ledger/redis-connect.ts';
import { loadRedisTls, REDIS_TLS_ENV, REDIS_TLS_OPTIONS, RedisTlsFileError, rejectEmptyOptions, type RedisTlsFiles, type RedisTlsSettingNames } from '../ledger/redis-tls.ts';
import { parseCutoffMs } from '../ledger/retention.ts';
import { formatAmount } from '../money/money.ts';

const LEDGER_USAGE = `Usage: tollgate ledger <command> --redis URL --wallet NAMESPACE/NAME [options]

Commands:
  state     Print the wallet's totals: granted, spent, expired, reserved, balance, available, provider cost, margin
  verify    Replay the wallet's checkpoint and entry stream and check that balance = grants - debits - expired.
            Fails for a wallet with no key in Redis, which is what a mistyped name or the
            wrong Redis looks like; a wallet that was ever credited has keys.
  export    Write the wallet's stream entries to standard output as NDJSON, one
            {"id": "<stream id>", "fields": {...}} object per line, oldest first
  compact   Fold the entries older than --before into the wallet's checkpoint and
            delete them from Redis. They cannot be read back afterwards: export them first.

Options:
  --redis URL        Redis ledger URL (default: TOLLGATE_REDIS_URL): redis://HOST:PORT,
                     or redis+cluster://HOST:PORT for a Redis Cluster (rediss:// and
                     rediss+cluster:// with TLS)
  --redis-ca FILE    PEM file of the CA that signed the Redis server's TLS certificate
                     (default: TOLLGATE_REDIS_CA_FILE)
  --redis-cert FILE  PEM file of a client certificate, with --redis-key
                     (default: TOLLGATE_REDIS_CERT_FILE)
  --redis-key FILE   PEM file of the client certificate's private key
                     (default: TOLLGATE_REDIS_KEY_FILE)
  --wallet NS/NAME   The wallet
  --before WHEN      compact (required) and export: only entries older than WHEN, an age
                     such as 30d or 12h, or a time such as 2025-06-01T00:00:00Z
  --from ID          export: start at the entry with this stream id
  --after ID         export: start after the entry with this stream id
  --page-size N      export: entries read from Redis per round trip (default 1000)

Exit status: 0 on success, 1 when verify finds the totals inconsistent or no key of the wallet,
or when a command fails, 2 on bad usage.`;

const COMMANDS = ['state', 'verify', 'export', 'compact'] as const;
type Command = (typeof COMMANDS)[number];

interface LedgerCommandOptions {
  before: string | undefined;
  from: string | undefined;
  after: string | undefined;
  pageSize: string | undefined;
}

/**
 * Returns the Redis TLS files from the options, or from the environment for those
 * not given, each named in errors as the user set it. Throws a RangeError for an
 * option given as ''.
 */
function tlsSettings(options: RedisTlsFiles): [RedisTlsFiles, RedisTlsSettingNames] {
  rejectEmptyOptions(options);
  const files: RedisTlsFiles = {};
  const names: RedisTlsSettingNames = { ...REDIS_TLS_OPTIONS };
  for (const key of ['caFile', 'certFile', 'keyFile'] as const) {
    const fromEnvironment = process.env[REDIS_TLS_ENV[key]] || undefined;
    if (options[key] !== undefined) {
      files[key] = options[key];
    } else if (fromEnvironment !== undefined) {
      files[key] = fromEnvironment;
      names[key] = REDIS_TLS_ENV[key];
    } else {
      // Neither is set, so advice names both ways of setting it.
      names[key] = `${REDIS_TLS_OPTIONS[key]} (or ${REDIS_TLS_ENV[key]})`;
    }
  }
  return [files, names];
}

/** Runs `tollgate ledger ...` and returns the process exit code. */
export async function runLedgerCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      redis: { type: 'string', default: process.env.TOLLGATE_REDIS_URL },
      'redis-ca': { type: 'string' },
      'redis-cert': { type: 'string' },
      'redis-key': { type: 'string' },
      wallet: { type: 'string' },
      before: { type: 'string' },
      from: { type: 'string' },
      after: { type: 'string' },
      'page-size': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const [action] = positionals;
  if (values.help) {
    console.log(LEDGER_USAGE);
    return 0;
  }
  if (!COMMANDS.includes(action as Command)) {
    const problem = action === undefined ? 'missing command' : `unknown command "${action}"`;
    console.error(`${problem}: use one of ${COMMANDS.join(', ')}\n\n${LEDGER_USAGE}`);
    return 2;
  }
  if (!values.redis) {
    console.error(`missing option: give --redis URL or set TOLLGATE_REDIS_URL\n\n${LEDGER_USAGE}`);
    return 2;
  }
  if (!values.wallet || !/^[^/]+\/[^/]+$/.test(values.wallet)) {
    const walletProblem = values.wallet === undefined ? 'missing --wallet' : `invalid --wallet "${values.wallet}"`;
    console.error(`${walletProblem}: name the wallet as NAMESPACE/NAME, such as default/${values.wallet ?? 'demo'}\n\n${LEDGER_USAGE}`);
    return 2;
  }
  const options: LedgerCommandOptions = { before: values.before, from: values.from, after: values.after, pageSize: values['page-size'] };
  const misuse = checkOptions(action as Command, options);
  if (misuse) {
    console.error(`${misuse}\n\n${LEDGER_USAGE}`);
    return 2;
  }

  let tls: ConnectionOptions | undefined;
  let tlsSettingNames: RedisTlsSettingNames;
  try {
    parseRedisUrl(values.redis);
    const [tlsFiles, names] = tlsSettings({ caFile: values['redis-ca'], certFile: values['redis-cert'], keyFile: values['redis-key'] });
    tls = loadRedisTls(values.redis, tlsFiles, names);
    tlsSettingNames = names;
  } catch (error) {
    // A file that cannot be used is no misuse of the command, so the usage text would only hide the message.
    if (error instanceof RedisTlsFileError) {
      console.error(error.message);
      return 1;
    }
    console.error(`${(error as Error).message}\n\n${LEDGER_USAGE}`);
    return 2;
  }

  const [namespace = '', name = ''] = values.wallet.split('/');
  const wallet = { namespace, name };
  const ledger = new RedisLedger(values.redis, { tls, tlsSettingNames });
  try {
    switch (action as Command) {
      case 'state':
        return await printState(ledger, wallet);
      case 'verify':
        return await printVerify(ledger, wallet);
      case 'export':
        return await exportEntries(ledger, wallet, entriesOptions(options));
      case 'compact':
        return await compact(ledger, wallet, parseCutoffMs(options.before!, '--before', Date.now()));
    }
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    console.error(error.message);
    return 2;
  } finally {
    await ledger.quit();
  }
}

/** Returns why the options do not fit the command, or undefined when they do. */
function checkOptions(command: Command, options: LedgerCommandOptions): string | undefined {
  if (command === 'compact' && options.before === undefined) {
    return 'missing option: compact needs --before, an age such as 30d or a time such as 2025-06-01T00:00:00Z';
  }
  const exportOnly = (['from', 'after', 'pageSize'] as const).filter((option) => options[option] !== undefined);
  if (command !== 'export' && exportOnly.length > 0) {
    return `invalid option for ${command}: ${exportOnly.map((option) => (option === 'pageSize' ? '--page-size' : `--${option}`)).join(', ')} applies to export only`;
  }
  if (command !== 'export' && command !== 'compact' && options.before !== undefined) {
    return `invalid option for ${command}: --before applies to export and compact only`;
  }
  if (options.from !== undefined && options.after !== undefined) return 'invalid options: give either --from or --after, not both';
  return undefined;
}

function entriesOptions(options: LedgerCommandOptions): EntriesOptions {
  const result: EntriesOptions = {};
  if (options.from !== undefined) validateEntryId('--from', options.from);
  if (options.after !== undefined) validateEntryId('--after', options.after);
  if (options.from !== undefined) result.from = options.from;
  if (options.after !== undefined) result.after = options.after;
  if (options.before !== undefined) result.beforeMs = parseCutoffMs(options.before, '--before', Date.now());
  if (options.pageSize !== undefined) {
    const pageSize = Number(options.pageSize);
    if (!Number.isSafeInteger(pageSize) || pageSize < 1) {
      throw new RangeError(`invalid --page-size "${options.pageSize}": use a whole number of at least 1`);
    }
    result.pageSize = pageSize;
  }
  return result;
}

/**
 * Prints the wallet's totals. A wallet without any key in Redis also gets a
 * warning on standard error, because its all-zero totals look the same as
 * those of an empty wallet, and a mistyped name is the likelier cause.
 */
async function printState(ledger: RedisLedger, wallet: WalletKey): Promise<number> {
  const state = await ledger.state(wallet);
  const rows: Array<[string, string]> = [
    ['wallet', `${wallet.namespace}/${wallet.name}${state.closed ? ' (closed)' : ''}`],
    ['granted', formatAmount(state.granted, 9)],
    ['spent', formatAmount(state.spent, 9)],
    ['expired', formatAmount(state.expired, 9)],
    ['reserved', `${formatAmount(state.reserved, 9)} in ${countOf(state.holds, 'hold', 'holds')}`],
    ['balance', formatAmount(state.balance, 9)],
    ['available', formatAmount(state.available, 9)],
    // What the providers charged for the wallet's calls; margin() subtracts it from spent.
    ['provider cost', formatAmount(state.providerCost, 9)],
    ['margin', margin(state)],
  ];
  console.log(rows.map(([label, value]) => `${label.padEnd(14)} ${value}`).join('\n'));

  // Any nonzero total proves that the wallet has keys, so only an all-zero state needs the extra check.
  if (isZeroState(state)) await warnWithoutRecords(ledger, wallet, 'state', 'all its totals are zero');
  return 0;
}

/**
 * Formats spent minus provider cost. Charges of expired holds whose provider
 * cost is not known would count in full, so the margin leaves them out and
 * says so.
 */
function margin(state: WalletState): string {
  const value = formatAmount(state.spent - state.chargedWithoutCost - state.providerCost, 9);
  if (state.chargedWithoutCost === 0n) return value;
  return `${value} (leaves out ${formatAmount(state.chargedWithoutCost, 9)} charged for expired holds whose provider cost is not known)`;
}

/**
 * Warns on standard error when Redis contains no key of the wallet, because a
 * mistyped namespace or name reads as an empty wallet. `consequence` describes
 * what the command's output shows for such a wallet.
 */
async function warnWithoutRecords(ledger: RedisLedger, wallet: WalletKey, command: Command, consequence: string): Promise<void> {
  if (await hasRecords(ledger, wallet, command)) return;
  console.error(`warning: ${withoutRecords(wallet, consequence)}`);
}

function withoutRecords(wallet: WalletKey, consequence: string): string {
  return (
    `wallet ${wallet.namespace}/${wallet.name} has no records in this Redis ledger, so ${consequence}. ` +
    "Check the namespace and name, and that the Redis URL points at the ledger's Redis."
  );
}

/** Returns whether Redis contains any key of the wallet; errors name `command`, the command that the user ran. */
async function hasRecords(ledger: RedisLedger, wallet: WalletKey, command: Command): Promise<boolean> {
  try {
    return await ledger.hasRecords(wallet, command);
  } catch (error) {
    throw new Error(`failed to check whether wallet ${wallet.namespace}/${wallet.name} has records in Redis: ${(error as Error).message}`, { cause: error });
  }
}

function isZeroState(state: WalletState): boolean {
  const amounts = [state.granted, state.spent, state.expired, state.reserved, state.providerCost];
  return amounts.every((amount) => amount === 0n) && state.holds === 0 && !state.closed;
}

/**
 * Prints the result of replaying the wallet's entries. A wallet without any
 * key in Redis fails with an error on standard error instead, because its
 * empty replay would pass.
 */
async function printVerify(ledger: RedisLedger, wallet: WalletKey): Promise<number> {
  const result = await ledger.verify(wallet);
  // A checkpoint or any entry proves that the wallet has keys, so only an empty replay needs the extra check.
  if (result.entries === 0 && result.checkpoint === undefined && !(await hasRecords(ledger, wallet, 'verify'))) {
    console.error(`tollgate: ${withoutRecords(wallet, 'there is nothing to verify')}`);
    return 1;
  }

  const folded = result.checkpoint
    ? ` (${result.checkpoint.entries} from the checkpoint through ${result.checkpoint.lastId}, ${result.entries - result.checkpoint.entries} from the stream)`
    : '';
  console.log(
    `replayed ${countOf(result.entries, 'entry', 'entries')}${folded}: granted ${formatAmount(result.granted, 9)}, spent ${formatAmount(result.spent, 9)}, ` +
      `expired ${formatAmount(result.expired, 9)}`,
  );
  for (const problem of result.problems) console.log(`problem: ${problem}`);
  console.log(result.ok ? 'ok: balance = grants - debits - expired' : 'FAILED: the stored totals do not match the entry stream');
  return result.ok ? 0 : 1;
}

/**
 * Writes the entries as NDJSON to standard output, a page at a time, and
 * waits for the output to drain when it falls behind, so that memory stays
 * bounded by one page. A summary goes to standard error, and so does the
 * warning of printState when nothing was exported and the wallet has no records.
 */
async function exportEntries(ledger: RedisLedger, wallet: WalletKey, options: EntriesOptions): Promise<number> {
  await warnOfFoldedStart(ledger, wallet, options);
  let count = 0;
  let first: string | undefined;
  let last: string | undefined;
  for await (const entry of ledger.entries(wallet, options, 'export')) {
    if (!process.stdout.write(`${JSON.stringify(entry)}\n`)) await once(process.stdout, 'drain');
    count += 1;
    first ??= entry.id;
    last = entry.id;
  }
  console.error(count === 0 ? 'exported 0 entries' : `exported ${countOf(count, 'entry', 'entries')}, ${first} through ${last}`);

  if (count === 0) await warnWithoutRecords(ledger, wallet, 'export', 'it has no entries to export');
  return 0;
}

/** Warns when --from or --after names an entry that compaction folded into the checkpoint, because the export then starts after the checkpoint. */
async function warnOfFoldedStart(ledger: RedisLedger, wallet: WalletKey, options: EntriesOptions): Promise<void> {
  const start = options.from ?? options.after;
  if (start === undefined) return;
  const end = await ledger.checkpointEnd(wallet, 'export');
  if (end === undefined || compareEntryIds(start, end) >= (options.after === undefined ? 1 : 0)) return;
  console.error(
    `warning: the entries of wallet ${wallet.namespace}/${wallet.name} through ${end} were folded into its checkpoint by ledger compact ` +
      `and cannot be exported, so the export starts after ${end}`,
  );
}

async function compact(ledger: Ledger, wallet: WalletKey, beforeMs: number): Promise<number> {
  const cutoff = new Date(beforeMs).toISOString();
  const result = await ledger.compact(wallet, beforeMs);
  console.log(
    result.folded === 0
      ? `folded no entries: wallet ${wallet.namespace}/${wallet.name} has no entry older than ${cutoff} in its stream`
      : `folded ${countOf(result.folded, 'entry', 'entries')} older than ${cutoff} into the checkpoint of wallet ${wallet.namespace}/${wallet.name} and deleted them from the stream`,
  );
  if (result.checkpoint) console.log(describeCheckpoint(result.checkpoint));
  return 0;
}

function describeCheckpoint(checkpoint: Checkpoint): string {
  return (
    `checkpoint: ${countOf(checkpoint.entries, 'entry', 'entries')} through ${checkpoint.lastId}: granted ${formatAmount(checkpoint.granted, 9)}, ` +
    `spent ${formatAmount(checkpoint.spent, 9)}, expired ${formatAmount(checkpoint.expired, 9)}, provider cost ${formatAmount(checkpoint.providerCost, 9)}`
  );
}

/** Formats a count with the singular or plural noun, such as "1 entry" or "3 entries". */
function countOf(count: number, singular: string, plural: string): string {
  return `${count} ${count === 1 ? singular : plural}`;
}
