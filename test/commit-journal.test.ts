/**
 * A served call whose commit waits for Redis, in a `tollgate dev` process
 * that is killed (SIGKILL) before Redis is back. With --commit-journal the
 * next dev process on the same file charges the call exactly once. Without
 * it the commit is gone, and the sweeper later releases the JSON call's hold,
 * so the call is never billed. Real redis-server with the append-only file,
 * stopped and started again on the same port and data; the call is served by
 * dev's provider simulator.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import type { WalletKey } from '../src/ledger/ledger.ts';
import { RedisLedger } from '../src/ledger/redis.ts';
import { startDevProcess, type DevProcess } from './support/dev-process.ts';
import { findFreePort, waitFor } from './support/processes.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';

const ROOT = path.join(import.meta.dirname, '..');
const run = promisify(execFile);
const WALLET: WalletKey = { namespace: 'default', name: 'team' };
const GRANT = 10_000_000_000n;

/** 1000 input tokens at 1.00 and 500 output tokens at 2.00 per million: 2,000,000 nano-USD. */
const USAGE = { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500 };
const CHARGED = 2_000_000n;
/** The same tokens at the provider's 0.50 and 1.00 per million. */
const PROVIDER_COST = 1_000_000n;
/** The simulator delays its response this long, so that Redis is stopped after the reserve and before the commit. */
const SIMULATOR_LATENCY_MS = 2000;

const MANIFESTS = [
  'apiVersion: tollgate.dev/v1alpha1\nkind: ProviderRoute\nmetadata: { name: openai }\nspec:\n  protocol: openai\n' +
    '  baseURL: https://api.openai.com\n  credentialSecretRef: { name: openai-credentials, key: apiKey }\n  models: [gpt-4o-mini]\n' +
    '  costs:\n    gpt-4o-mini: { input: "0.50", output: "1.00" }\n',
  'apiVersion: tollgate.dev/v1alpha1\nkind: PricePlan\nmetadata: { name: plan }\nspec:\n  currency: USD\n' +
    '  versions:\n    - effectiveFrom: "2026-01-01T00:00:00Z"\n      models:\n        gpt-4o-mini: { input: "1.00", output: "2.00" }\n',
  'apiVersion: tollgate.dev/v1alpha1\nkind: Wallet\nmetadata: { name: team }\nspec:\n  currency: USD\n' +
    '  pricePlanRef: { name: plan }\n  grants: [{ id: initial, amount: "10" }]\n',
].join('---\n');

let cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

/** Starts `tollgate dev` as a user would, and resolves with its address once the banner is out. */
async function startDev(manifests: string, redisUrl: string, journal: string | undefined): Promise<DevProcess> {
  const args = ['--manifests', manifests, '--redis', redisUrl];
  if (journal !== undefined) args.push('--commit-journal', journal);
  // No key in the environment or in a Secret manifest, so dev serves the route from its simulator.
  const dev = await startDevProcess(args, { logLevel: 'info' });
  cleanups.push(async () => {
    await dev.stop('SIGKILL');
  });
  return dev;
}

/** Returns the JSON log lines with this message. */
function logLines(stdout: string, message: string): Record<string, unknown>[] {
  return stdout
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => line['msg'] === message);
}

async function walletState() {
  const ledger = new RedisLedger(redisUrl);
  try {
    return await ledger.state(WALLET);
  } finally {
    await ledger.quit();
  }
}

let redisUrl: string;

/**
 * Runs the outage up to the restart of dev: a call is reserved, Redis stops,
 * the call is served with its commit queued, dev is killed, and Redis starts
 * again on its data. Returns the hold that Redis still has and the restarted dev.
 */
async function serveDuringOutageAndRestart(journal: string | undefined): Promise<{ held: bigint; dev: DevProcess }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-commit-journal-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const manifests = path.join(dir, 'resources.yaml');
  await writeFile(manifests, MANIFESTS);
  const redisDir = path.join(dir, 'redis');
  await mkdir(redisDir);
  const redisOptions = { dir: redisDir, appendonly: true, appendfsync: 'always' as const };
  let redis: RunningRedis = await startRedis(redisOptions);
  cleanups.push(() => redis.stop());
  redisUrl = redis.url;

  const first = await startDev(manifests, redis.url, journal);
  const response = fetch(`${first.url}/openai/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-sim-usage': JSON.stringify(USAGE), 'x-sim-latency-ms': String(SIMULATOR_LATENCY_MS) },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'How much?' }], max_tokens: 1000 }),
  });
  const reserved = await waitFor('the call to be reserved', async () => {
    const state = await walletState();
    return state.holds === 1 ? state.reserved : undefined;
  });
  await redis.stop();

  const served = await response;
  expect(served.status).toBe(200);
  expect(served.headers.get('x-tollgate-commit')).toBe('queued');
  expect(served.headers.get('x-tollgate-charged')).toBe('0.002');
  expect(((await served.json()) as { usage: unknown }).usage).toEqual(USAGE);

  // A crash: no shutdown flush, no log line for the queued commit.
  await first.stop('SIGKILL');
  redis = await startRedis({ ...redisOptions, port: redis.port });

  // The commit never reached Redis, so its hold is still open.
  const before = await walletState();
  expect(before.spent).toBe(0n);
  expect(before.holds).toBe(1);
  expect(before.reserved).toBe(reserved);

  const dev = await startDev(manifests, redis.url, journal);
  return { held: reserved, dev };
}

async function verifyLedger(): Promise<string> {
  const { stdout } = await run(process.execPath, ['src/cli/main.ts', 'ledger', 'verify', '--redis', redisUrl, '--wallet', 'default/team'], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'warn' },
  });
  return stdout;
}

describe('commit journal across a crash of tollgate dev', () => {
  it('charges the queued call once after restart', async () => {
    const journalDir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-journal-file-'));
    cleanups.push(() => rm(journalDir, { recursive: true, force: true }));
    const journal = path.join(journalDir, 'commits.ndjson');

    const { dev } = await serveDuringOutageAndRestart(journal);

    expect(logLines(dev.stdout(), 'recovered commits from the commit journal; retrying them until the ledger takes them').map((line) => [line['recovered'], line['journal']])).toEqual([
      [1, journal],
    ]);
    const state = await waitFor('the recovered commit to reach the ledger', async () => {
      const current = await walletState();
      return current.spent === 0n ? undefined : current;
    });
    expect(state).toEqual({
      granted: GRANT,
      spent: CHARGED,
      expired: 0n,
      reserved: 0n,
      balance: GRANT - CHARGED,
      available: GRANT - CHARGED,
      providerCost: PROVIDER_COST,
      chargedWithoutCost: 0n,
      holds: 0,
      closed: false,
    });
    // Once the queue is empty the journal is truncated.
    await waitFor('the journal to be truncated', async () => ((await stat(journal)).size === 0 ? true : undefined));

    await dev.stop();
    expect(await readFile(journal, 'utf8')).toBe('');

    // The hold is gone, so a sweep long after its expiry settles nothing, and the call stays charged once.
    const ledger = new RedisLedger(redisUrl);
    try {
      expect(await ledger.sweep(WALLET, Date.now() + 16 * 60_000)).toEqual({ released: 0, charged: 0 });
      expect((await ledger.state(WALLET)).spent).toBe(CHARGED);
    } finally {
      await ledger.quit();
    }
    expect(await verifyLedger()).toBe('replayed 2 entries: granted 10.000000000, spent 0.002000000, expired 0.000000000\nok: balance = grants - debits - expired\n');
  });

  it('loses the charge without the journal', async () => {
    const { held, dev } = await serveDuringOutageAndRestart(undefined);

    // Nothing is replayed: the restarted dev has no record of the served call.
    await dev.stop();
    expect(logLines(dev.stdout(), 'recovered commits from the commit journal; retrying them until the ledger takes them')).toEqual([]);
    const state = await walletState();
    expect(state.spent).toBe(0n);
    expect(state.holds).toBe(1);

    // Once the hold expires, the sweeper releases it, because a JSON hold is never marked answered: the call is not billed.
    const ledger = new RedisLedger(redisUrl);
    try {
      expect(await ledger.sweep(WALLET, Date.now() + 16 * 60_000)).toEqual({ released: 1, charged: 0 });
      expect(await ledger.state(WALLET)).toEqual({
        granted: GRANT,
        spent: 0n,
        expired: 0n,
        reserved: 0n,
        balance: GRANT,
        available: GRANT,
        providerCost: 0n,
        chargedWithoutCost: 0n,
        holds: 0,
        closed: false,
      });
    } finally {
      await ledger.quit();
    }
    expect(held).toBeGreaterThan(CHARGED);
    // Only the grant: releasing a hold appends no entry.
    expect(await verifyLedger()).toBe('replayed 1 entry: granted 10.000000000, spent 0.000000000, expired 0.000000000\nok: balance = grants - debits - expired\n');
  });
});

describe('tollgate dev --commit-journal', () => {
  async function tollgate(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run(process.execPath, ['src/cli/main.ts', ...args], { cwd: ROOT, env: { ...process.env, LOG_LEVEL: 'warn' } });
      return { code: 0, stdout, stderr };
    } catch (error) {
      const failed = error as { code: number; stdout: string; stderr: string };
      return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
    }
  }

  it('rejects a journal without --redis', async () => {
    const result = await tollgate(['dev', '--commit-journal', '/tmp/commits.ndjson']);

    expect(result.code).toBe(2);
    expect(result.stderr).toBe('--commit-journal applies to the Redis ledger; give --redis URL too, or remove it\n');
  });

  it('stops when the journal cannot be opened', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-journal-missing-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    await writeFile(path.join(dir, 'resources.yaml'), MANIFESTS);
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const journal = path.join(dir, 'no-such-folder', 'commits.ndjson');

    const result = await tollgate(['dev', '--port', '0', '--no-watch', '--manifests', dir, '--redis', redis.url, '--commit-journal', journal]);

    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      `tollgate: failed to open the commit journal ${journal}: ENOENT: no such file or directory, open '${journal}'; its folder does not exist; create it, or give a path in an existing folder\n`,
    );
  });

  it('keeps the journal when Redis is down at start', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-journal-down-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    await writeFile(path.join(dir, 'resources.yaml'), MANIFESTS);
    const journal = path.join(dir, 'commits.ndjson');
    // What a sidecar stopped during an outage leaves: its waiting commits, which only a start that reaches Redis applies.
    const waiting = '{"waiting":"commit"}\n';
    await writeFile(journal, waiting);
    const port = await findFreePort();

    const result = await tollgate(['dev', '--port', '0', '--no-watch', '--manifests', dir, '--redis', `redis://127.0.0.1:${port}`, '--commit-journal', journal]);

    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      new RegExp(
        `^tollgate: ledger credit for wallet [^ ]+ failed because Redis at 127\\.0\\.0\\.1:${port} is unavailable: .*Check that Redis is running and reachable there\\. ` +
          `Commits waiting in ${journal.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} stay there and are applied at the next start that reaches Redis\n$`,
      ),
    );
    expect(await readFile(journal, 'utf8')).toBe(waiting);
  });

  it('documents the option in help', async () => {
    const dev = await tollgate(['dev', '--help']);
    expect(dev.stdout).toContain('  --commit-journal FILE\n');
    const sidecar = await tollgate(['sidecar', '--help']);
    expect(sidecar.stdout).toContain('  TOLLGATE_COMMIT_JOURNAL    File that keeps commits waiting for Redis across a restart of the sidecar\n');
  });
});
