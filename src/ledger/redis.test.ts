/**
 * Checks of RedisLedger details that the contract tests cannot see, on a
 * real redis-server: the scripts' stored counters at the bound of exact
 * double arithmetic (2^53), the cache of wallet keys, and the batching of
 * writes.
 */

import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startRedis } from '../../test/support/redis.ts';
import type { RunningRedis } from '../../test/support/redis.ts';
import { periodFields } from './ledger.ts';
import type { HoldRequest } from './ledger.ts';
import { RedisLedger, walletKeys } from './redis.ts';

const common = readFileSync(new URL('./lua/common.lua', import.meta.url), 'utf8');
const NOW = Date.UTC(2025, 5, 14, 12, 0, 0);

let redis: RunningRedis;
let client: Redis;

beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url);
});

afterAll(async () => {
  await client?.quit();
  await redis?.stop();
});

/** Runs amount_string from common.lua on each input, parsed with tonumber. */
async function formatInLua(inputs: string[]): Promise<string[]> {
  const script = `${common}\nlocal out = {}\nfor i, text in ipairs(ARGV) do out[i] = amount_string(tonumber(text)) end\nreturn out`;
  return (await client.eval(script, 0, ...inputs)) as string[];
}

describe('amount_string', () => {
  it('formats integers up to 2^53 exactly', async () => {
    const inputs = [
      '0',
      '1',
      '-1',
      '1750000000123',
      '9007199254740991',
      '9007199254740992',
      '-9007199254740991',
      '-9007199254740992',
    ];
    expect(await formatInLua(inputs)).toEqual(inputs);
  });

  it('prints negative zero as 0', async () => {
    expect(await formatInLua(['-0'])).toEqual(['0']);
  });

  it('keeps %.0f beyond 2^53 and for fractions', async () => {
    const inputs = ['18014398509481984', '-18014398509481984', '2.5', '-1.5', '0.4'];
    // '%.0f' rounds halves to even.
    expect(await formatInLua(inputs)).toEqual(['18014398509481984', '-18014398509481984', '2', '-2', '0']);
  });
});

describe('period counters beyond 2^53', () => {
  const hold: HoldRequest = { fixed: 7n, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'fp' };
  const { day, month } = periodFields(NOW);
  let ledger: RedisLedger;

  beforeAll(() => {
    ledger = new RedisLedger(client, { now: () => NOW });
  });

  it('stay exact through reserve, commit and release', async () => {
    const wallet = { namespace: 'scripts', name: 'large-periods' };
    const accountKey = walletKeys(wallet)[0]!;
    await ledger.credit(wallet, 'g', 1000n);
    // 2^53 + 1 is not a double, so adding to it in Lua would round.
    await client.hset(accountKey, day, '9007199254740993', month, '9007199254740995');

    expect(await ledger.reserve(wallet, 'a', hold)).toEqual({ status: 'reserved', amount: 7n, units: 0, replayed: false });
    expect(await client.hmget(accountKey, 'reserved', day, month)).toEqual(['7', '9007199254741000', '9007199254741002']);

    await ledger.commit(wallet, 'a', { charged: 5n, providerCost: 3n, model: 'm', route: 'r', tokens: {}, estimated: false });
    expect(await client.hmget(accountKey, 'reserved', 'spent', 'providerCost', day, month)).toEqual([
      '0',
      '5',
      '3',
      '9007199254740998',
      '9007199254741000',
    ]);

    await ledger.reserve(wallet, 'b', hold);
    await ledger.release(wallet, 'b');
    expect(await client.hmget(accountKey, 'reserved', day, month)).toEqual(['0', '9007199254740998', '9007199254741000']);
  });

  it('stay exact when a hold crosses 2^53', async () => {
    const wallet = { namespace: 'scripts', name: 'periods-at-limit' };
    const accountKey = walletKeys(wallet)[0]!;
    await ledger.credit(wallet, 'g', 1000n);
    // The hold of 7 lands the day counter on 2^53 and the month counter on
    // 2^53 + 1, which a double sum would round down to 2^53.
    await client.hset(accountKey, day, '9007199254740985', month, '9007199254740986');

    await ledger.reserve(wallet, 'a', hold);
    expect(await client.hmget(accountKey, 'reserved', day, month)).toEqual(['7', '9007199254740992', '9007199254740993']);
  });
});

describe('wallet key cache', () => {
  it('follows a wallet object whose names change', async () => {
    const ledger = new RedisLedger(client);
    const wallet = { namespace: 'scripts', name: 'renamed-1' };
    await ledger.credit(wallet, 'g', 100n);
    wallet.name = 'renamed-2';
    await ledger.credit(wallet, 'g', 30n);

    expect((await ledger.state({ namespace: 'scripts', name: 'renamed-1' })).granted).toBe(100n);
    expect((await ledger.state({ namespace: 'scripts', name: 'renamed-2' })).granted).toBe(30n);

    wallet.name = 'a}b';
    await expect(ledger.credit(wallet, 'g', 1n)).rejects.toThrow(RangeError);
  });
});

describe('write batching', () => {
  it('sends scripts of one event-loop turn in one write', async () => {
    const own = new Redis(redis.url);
    const ledger = new RedisLedger(own);
    const wallet = { namespace: 'batch', name: 'writes' };
    const hold: HoldRequest = { fixed: 10n, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: '' };
    try {
      await ledger.credit(wallet, 'grant', 1_000n);
      await own.ping();

      const socket = own.stream;
      let writes = 0;
      const write = socket._write.bind(socket);
      const writev = socket._writev!.bind(socket);
      socket._write = (...args) => {
        writes++;
        write(...args);
      };
      socket._writev = (...args) => {
        writes++;
        writev(...args);
      };

      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => ledger.reserve(wallet, `request-${i}`, hold)));

      expect(results.map((result) => result.status)).toEqual(Array(20).fill('reserved'));
      expect(writes).toBe(1);
      expect((await ledger.state(wallet)).reserved).toBe(200n);
    } finally {
      await own.quit();
    }
  });
});
