/**
 * Messages and exit codes of `tollgate ledger export` and `verify`, run as a
 * real process against a real redis-server.
 */
import { execFile } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type RunningRedis } from '../../test/support/redis.ts';
import { RedisLedger } from '../ledger/redis.ts';
import { parseAmount } from '../money/money.ts';

const run = promisify(execFile);
const ROOT = path.join(import.meta.dirname, '..', '..');

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function tollgate(args: string[]): Promise<Result> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['src/cli/main.ts', ...args], { cwd: ROOT, env: { ...process.env, LOG_LEVEL: 'warn' } });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failure = error as Result;
    return { code: failure.code, stdout: failure.stdout, stderr: failure.stderr };
  }
}

/** Returns a loopback port that nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Adds a Redis user that may run every command except EXISTS, and returns a URL that logs in as it. */
async function urlWithoutExists(redis: RunningRedis): Promise<string> {
  const client = new Redis(redis.url);
  await client.acl('SETUSER', 'no-exists', 'on', '>s3cret-pass', '~*', '+@all', '-exists');
  await client.quit();
  return `redis://no-exists:s3cret-pass@127.0.0.1:${redis.port}`;
}

const NO_EXISTS_PERMISSION = "does not permit it for the connection's user: NOPERM [^\\n]+ has no permissions to run the 'exists' command\\. Grant that user the ledger's commands and keys in its ACL\\.";

let redis: RunningRedis;

beforeAll(async () => {
  redis = await startRedis();
});

afterAll(async () => {
  await redis?.stop();
});

describe('ledger export errors', () => {
  it('names export when Redis is down', async () => {
    const port = await closedPort();
    const expected =
      `tollgate: ledger export for wallet team-a/down failed because Redis at 127.0.0.1:${port} is unavailable: ` +
      `connect ECONNREFUSED 127.0.0.1:${port}. Check that Redis is running and reachable there.\n`;

    const all = await tollgate(['ledger', 'export', '--redis', `redis://127.0.0.1:${port}`, '--wallet', 'team-a/down']);
    expect(all.code).toBe(1);
    expect(all.stdout).toBe('');
    expect(all.stderr).toBe(expected);

    // With --from, the export reads the wallet's checkpoint before its entries.
    const from = await tollgate(['ledger', 'export', '--redis', `redis://127.0.0.1:${port}`, '--wallet', 'team-a/down', '--from', '1-0']);
    expect(from.code).toBe(1);
    expect(from.stdout).toBe('');
    expect(from.stderr).toBe(expected);
  });

  it('names export when the record check fails', async () => {
    const url = await urlWithoutExists(redis);

    const result = await tollgate(['ledger', 'export', '--redis', url, '--wallet', 'team-a/acl']);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(
      new RegExp(
        '^exported 0 entries\\ntollgate: failed to check whether wallet team-a/acl has records in Redis: ' +
          `ledger export for wallet team-a/acl failed because Redis at 127\\.0\\.0\\.1:${redis.port} ${NO_EXISTS_PERMISSION}\\n$`,
      ),
    );
    expect(result.stderr).not.toContain('s3cret-pass');
  });

  it('names the option of an invalid start id', async () => {
    for (const option of ['--from', '--after']) {
      const result = await tollgate(['ledger', 'export', '--redis', redis.url, '--wallet', 'team-a/any', option, '12345']);
      expect(result.code, option).toBe(2);
      expect(result.stdout, option).toBe('');
      expect(result.stderr, option).toBe(`invalid ${option} "12345": use a full stream id such as 1718366400000-0\n`);
    }
  });
});

describe('ledger verify of a wallet without records', () => {
  it('fails for a wallet without keys', async () => {
    const result = await tollgate(['ledger', 'verify', '--redis', redis.url, '--wallet', 'team-a/nobody']);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(
      'tollgate: wallet team-a/nobody has no records in this Redis ledger, so there is nothing to verify. ' +
        "Check the namespace and name, and that the Redis URL points at the ledger's Redis.\n",
    );
  });

  it('passes a fully spent wallet', async () => {
    const spent = { namespace: 'team-a', name: 'spent' };
    const ledger = new RedisLedger(redis.url);
    await ledger.credit(spent, 'grant-1', parseAmount('1.00'));
    await ledger.reserve(spent, 'r1', { fixed: parseAmount('1.00'), perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'f' });
    await ledger.commit(spent, 'r1', { charged: parseAmount('1.00'), providerCost: parseAmount('0.80'), model: 'm', route: 'openai', tokens: {}, estimated: false });
    expect((await ledger.state(spent)).balance).toBe(0n);
    await ledger.quit();

    const result = await tollgate(['ledger', 'verify', '--redis', redis.url, '--wallet', 'team-a/spent']);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe('replayed 2 entries: granted 1.000000000, spent 1.000000000, expired 0.000000000\nok: balance = grants - debits - expired\n');
    expect(result.stderr).toBe('');
  });

  it('passes a wallet with keys but no entries', async () => {
    const closed = { namespace: 'team-a', name: 'closed' };
    const ledger = new RedisLedger(redis.url);
    await ledger.close(closed);
    await ledger.quit();

    const result = await tollgate(['ledger', 'verify', '--redis', redis.url, '--wallet', 'team-a/closed']);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe('replayed 0 entries: granted 0.000000000, spent 0.000000000, expired 0.000000000\nok: balance = grants - debits - expired\n');
    expect(result.stderr).toBe('');
  });

  it('names verify when the record check fails', async () => {
    const url = await urlWithoutExists(redis);

    const result = await tollgate(['ledger', 'verify', '--redis', url, '--wallet', 'team-a/acl']);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(
      new RegExp(
        '^tollgate: failed to check whether wallet team-a/acl has records in Redis: ' +
          `ledger verify for wallet team-a/acl failed because Redis at 127\\.0\\.0\\.1:${redis.port} ${NO_EXISTS_PERMISSION}\\n$`,
      ),
    );
  });

  it('states the rule and the exit code in the help', async () => {
    const result = await tollgate(['ledger', '--help']);
    expect(result.code).toBe(0);
    const help = result.stdout.replace(/\s+/g, ' ');
    expect(help).toContain(
      'Fails for a wallet with no key in Redis, which is what a mistyped name or the wrong Redis looks like; a wallet that was ever credited has keys.',
    );
    expect(help).toContain('Exit status: 0 on success, 1 when verify finds the totals inconsistent or no key of the wallet, or when a command fails, 2 on bad usage.');
  });
});

describe('tollgate ledger state', () => {
  it('leaves charges without a provider cost out of the margin', async () => {
    const ledger = new RedisLedger(redis.url);
    const wallet = { namespace: 'cli', name: 'swept' };
    try {
      await ledger.credit(wallet, 'grant', parseAmount('1'));
      await ledger.reserve(wallet, 'priced', { fixed: parseAmount('0.3'), perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'f' });
      await ledger.commit(wallet, 'priced', { charged: parseAmount('0.3'), providerCost: parseAmount('0.1'), model: 'm', route: 'r', tokens: {}, estimated: false });
      // A stream whose sidecar stopped before its commit: the sweeper charges the whole hold, at no known provider cost.
      await ledger.reserve(wallet, 'swept', { fixed: parseAmount('0.05'), perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'f' });
      await ledger.markAnswered(wallet, 'swept');
      await ledger.sweep(wallet, Date.now() + 3_600_000);
    } finally {
      await ledger.quit();
    }

    const result = await tollgate(['ledger', 'state', '--redis', redis.url, '--wallet', 'cli/swept']);
    expect(result.code).toBe(0);
    expect(result.stdout.split('\n').slice(2)).toEqual([
      'spent          0.350000000',
      'expired        0.000000000',
      'reserved       0.000000000 in 0 holds',
      'balance        0.650000000',
      'available      0.650000000',
      'provider cost  0.100000000',
      'margin         0.200000000 (leaves out 0.050000000 charged for expired holds whose provider cost is not known)',
      '',
    ]);
  });
});
