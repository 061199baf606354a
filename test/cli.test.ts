/**
 * The `tollgate` command as a user runs it: a real process, a real
 * redis-server for the ledger commands.
 */
import { execFile } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisLedger } from '../src/ledger/redis.ts';
import { parseAmount } from '../src/money/money.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';

const run = promisify(execFile);
const ROOT = path.join(import.meta.dirname, '..');

/** Runs the command to its end; a run still going after `timeoutMs` is killed and reports the signal. */
async function tollgate(args: string[], timeoutMs = 0): Promise<{ code: number; signal?: string; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['src/cli/main.ts', ...args], {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: 'warn' },
      timeout: timeoutMs,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failure = error as { code: number; signal?: string; stdout: string; stderr: string };
    return { code: failure.code, ...(failure.signal ? { signal: failure.signal } : {}), stdout: failure.stdout, stderr: failure.stderr };
  }
}

let redis: RunningRedis;
const wallet = { namespace: 'team-a', name: 'cli' };

beforeAll(async () => {
  redis = await startRedis();
  const ledger = new RedisLedger(redis.url);
  await ledger.credit(wallet, 'grant-1', parseAmount('2.50'));
  await ledger.reserve(wallet, 'r1', { fixed: parseAmount('1.00'), perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'f' });
  await ledger.commit(wallet, 'r1', { charged: parseAmount('0.75'), providerCost: parseAmount('0.60'), model: 'm', route: 'openai', tokens: {}, estimated: false });
  await ledger.quit();
});

afterAll(async () => {
  await redis?.stop();
});

describe('tollgate command', () => {
  it('prints usage and fails on an unknown command', async () => {
    const result = await tollgate(['frobnicate']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('unknown command "frobnicate"');
  });

  it('prints a wallet state', async () => {
    const result = await tollgate(['ledger', 'state', '--redis', redis.url, '--wallet', 'team-a/cli']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('granted    2.500000000');
    expect(result.stdout).toContain('spent      0.750000000');
    expect(result.stdout).toContain('balance    1.750000000');
    expect(result.stdout).toContain('margin     0.150000000');
  });

  it('verifies a consistent wallet', async () => {
    const result = await tollgate(['ledger', 'verify', '--redis', redis.url, '--wallet', 'team-a/cli']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('ok: balance = grants - debits');
  });

  it('reports a tampered total', async () => {
    const client = new Redis(redis.url);
    await client.hset('{w:team-a/cli}:acct', 'spent', '1');
    await client.quit();
    const result = await tollgate(['ledger', 'verify', '--redis', redis.url, '--wallet', 'team-a/cli']);
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('FAILED');
  });

  it('rejects a wallet without a namespace', async () => {
    const result = await tollgate(['ledger', 'state', '--redis', redis.url, '--wallet', 'cli']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--wallet NAMESPACE/NAME');
  });

  it('rejects an invalid dev port', async () => {
    const result = await tollgate(['dev', '--port', '99999']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('invalid --port "99999"');
  });

  it('exits when dev cannot listen', async () => {
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const result = await tollgate(['dev', '--port', String(port)], 60_000);
      expect(result.signal).toBeUndefined();
      expect(result.code).toBe(1);
      expect(result.stderr).toContain('EADDRINUSE');
    } finally {
      busy.close();
    }
  });

  it('runs the demo to a refusal', async () => {
    const result = await tollgate(['demo']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/call \d+ refused: HTTP 402/);
    expect(result.stdout).toContain('Balance equals grants minus recorded charges: yes');
  });
});
