import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startRedis } from '../../test/support/redis.ts';
import type { RunningRedis } from '../../test/support/redis.ts';
import { describeLedgerContract } from './ledger.contract.ts';
import type { HoldRequest, ReserveResult } from './ledger.ts';
import { LedgerUnavailableError } from './ledger.ts';
import { MemoryLedger } from './memory.ts';
import { RedisLedger, walletKeys } from './redis.ts';

let redis: RunningRedis;

beforeAll(async () => {
  redis = await startRedis();
});

afterAll(async () => {
  await redis?.stop();
});

describeLedgerContract('MemoryLedger', async (options) => new MemoryLedger(options));
describeLedgerContract('RedisLedger', async (options) => new RedisLedger(redis.url, options));

const hold = (amount: bigint): HoldRequest => ({ fixed: amount, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'fp' });

describe('RedisLedger on a real redis-server', () => {
  let client: Redis;
  let ledger: RedisLedger;

  beforeAll(() => {
    client = new Redis(redis.url);
    ledger = new RedisLedger(client);
  });

  afterAll(async () => {
    await ledger.quit();
    await client.quit();
  });

  it('keeps all keys of a wallet under one hash tag', async () => {
    const wallet = { namespace: 'tags', name: 'alpha' };
    await ledger.credit(wallet, 'g', 1000n);
    await ledger.reserve(wallet, 'open', hold(100n));
    await ledger.reserve(wallet, 'done', hold(100n));
    await ledger.commit(wallet, 'done', { charged: 5n, providerCost: 1n, model: 'm', route: 'r', tokens: {}, estimated: false });

    const keys = (await client.keys('*tags/alpha*')).sort();
    expect(keys).toEqual([
      '{w:tags/alpha}:acct',
      '{w:tags/alpha}:done',
      '{w:tags/alpha}:grants',
      '{w:tags/alpha}:hexp',
      '{w:tags/alpha}:holds',
      '{w:tags/alpha}:log',
    ]);
    expect(await client.ttl('{w:tags/alpha}:done')).toBe(-1);
  });

  it('writes stream entries with decimal amounts', async () => {
    const wallet = { namespace: 'stream', name: 'entries' };
    await ledger.credit(wallet, 'g-1', 10_000_000_000n, { reason: 'trial' });
    await ledger.reserve(wallet, 'req-1', hold(4_000_000n));
    await ledger.commit(wallet, 'req-1', {
      charged: 120n,
      providerCost: 100n,
      model: 'gpt-4o-mini',
      route: 'openai-main',
      tokens: { input: 12, output: 3 },
      estimated: true,
    });

    const entries = await client.xrange('{w:stream/entries}:log', '-', '+');
    expect(entries.map(([, fields]) => fields)).toEqual([
      ['type', 'grant', 'id', 'g-1', 'amount', '10000000000', 'reason', 'trial'],
      [
        'type', 'debit', 'id', 'req-1', 'amount', '120', 'charged', '120', 'providerCost', '100',
        'model', 'gpt-4o-mini', 'route', 'openai-main', 'tokens', '{"input":12,"output":3}', 'estimated', '1',
      ],
    ]);
  });

  it('verify reports a tampered total', async () => {
    const wallet = { namespace: 'verify', name: 'tampered' };
    await ledger.credit(wallet, 'g', 1000n);
    await client.hincrby('{w:verify/tampered}:acct', 'spent', 7);

    const verify = await ledger.verify(wallet);
    expect(verify.ok).toBe(false);
    expect(verify.problems).toEqual(['wallet verify/tampered: stored spent is 7 but the sum of debit entries is 0']);
  });

  it('reloads its scripts after SCRIPT FLUSH', async () => {
    const wallet = { namespace: 'scripts', name: 'flushed' };
    await ledger.credit(wallet, 'g', 1000n);
    await client.script('FLUSH');

    expect(await ledger.reserve(wallet, 'req', hold(400n))).toEqual({ status: 'reserved', amount: 400n, units: 0, replayed: false });
  });

  it('leaves a caller-owned client open on quit', async () => {
    const owned = new RedisLedger(client);
    await owned.quit();
    expect(await client.ping()).toBe('PONG');
  });

  it('admits exactly 37 of 200 reserves over four connections', async () => {
    const wallet = { namespace: 'concurrency', name: 'four-connections' };
    const ledgers = Array.from({ length: 4 }, () => new RedisLedger(redis.url));
    try {
      await ledgers[0]!.credit(wallet, 'g', 37n * 1_000_000n + 999_999n);

      const results: ReserveResult[] = await Promise.all(
        Array.from({ length: 200 }, (_, i) => ledgers[i % 4]!.reserve(wallet, `c-${i}`, hold(1_000_000n))),
      );

      expect(results.filter((result) => result.status === 'reserved')).toHaveLength(37);
      expect(results.filter((result) => result.status === 'insufficient_funds')).toHaveLength(163);
      expect((await ledgers[1]!.state(wallet)).reserved).toBe(37_000_000n);
    } finally {
      await Promise.all(ledgers.map((each) => each.quit()));
    }
  });

  it('rejects a wallet name with braces', () => {
    expect(() => walletKeys({ namespace: 'ns', name: 'a}b' })).toThrow(RangeError);
  });
});

describe('RedisLedger without a server', () => {
  it('raises LedgerUnavailableError after Redis stops', { timeout: 30_000 }, async () => {
    const server = await startRedis();
    const warnings: string[] = [];
    const logger = { warn: (_details: object, message: string) => warnings.push(message), info: () => {} };
    const ledger = new RedisLedger(server.url, { logger });
    const wallet = { namespace: 'outage', name: 'w' };
    try {
      await ledger.credit(wallet, 'g', 1000n);
      await server.stop();

      const error = await ledger.reserve(wallet, 'req', hold(10n)).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(LedgerUnavailableError);
      const { port } = new URL(server.url);
      expect((error as Error).message).toContain(`ledger reserve for wallet outage/w failed because Redis at 127.0.0.1:${port} is unavailable: `);
      expect((error as Error).message).toMatch(/[^.]\. Check that Redis is running and reachable there\.$/);
      expect((error as Error).message).not.toContain('maxRetriesPerRequest');
      expect((error as Error).cause).toBeInstanceOf(Error);
      expect(warnings).toEqual(['ledger lost its Redis connection; ledger operations fail until it reconnects']);
    } finally {
      await ledger.quit();
      await server.stop();
    }
  });
});
