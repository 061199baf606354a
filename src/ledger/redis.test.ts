/**
 * Checks of RedisLedger details that the contract tests cannot see, on a
 * real redis-server: the scripts' stored counters at the bound of exact
 * double arithmetic (2^53), the entries and commands of grant expiry, the
 * cache of wallet keys, and the batching of writes.
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

describe('grant expiry', () => {
  const hold: HoldRequest = { fixed: 100n, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'fp' };
  const entry = { charged: 100n, providerCost: 60n, model: 'm', route: 'r', tokens: {}, estimated: false };
  let ledger: RedisLedger;

  beforeAll(() => {
    ledger = new RedisLedger(client);
  });

  /** Returns the fields of the wallet's stream entries. */
  async function entries(wallet: { namespace: string; name: string }): Promise<string[][]> {
    return (await client.xrange(walletKeys(wallet)[4]!, '-', '+')).map(([, fields]) => fields);
  }

  it('writes grant and expire entries', async () => {
    const wallet = { namespace: 'expiry', name: 'entries' };
    const expiresAtMs = Date.now() + 3_600_000;
    await ledger.credit(wallet, 'promo', 300n, { reason: 'launch', expiresAtMs });
    await ledger.reserve(wallet, 'a', hold);
    await ledger.commit(wallet, 'a', entry);
    await ledger.sweep(wallet, expiresAtMs);

    const all = await entries(wallet);
    expect(all[0]).toEqual(['type', 'grant', 'id', 'promo', 'amount', '300', 'reason', 'launch', 'expiresAt', String(expiresAtMs)]);
    expect(all[2]).toEqual(['type', 'expire', 'id', 'promo', 'amount', '200']);
    expect(all).toHaveLength(3);
    // No live expiring grant is left, so the account keeps none of their fields.
    expect(await client.hmget(walletKeys(wallet)[0]!, 'expired', 'expiring', 'nextExpiry', 'attributed')).toEqual(['200', null, null, null]);
  });

  it('orders grants of equal expiry by the bytes of their ids', async () => {
    const wallet = { namespace: 'expiry', name: 'ties' };
    const expiresAtMs = Date.now() + 3_600_000;
    // 'B' (0x42) sorts before 'a' (0x61) by bytes, but after it in a case-insensitive locale.
    await ledger.credit(wallet, 'promo-a', 100n, { expiresAtMs });
    await ledger.credit(wallet, 'promo-B', 100n, { expiresAtMs });
    await ledger.credit(wallet, 'paid', 1000n);
    await ledger.reserve(wallet, 'a', { ...hold, fixed: 150n });
    await ledger.commit(wallet, 'a', { ...entry, charged: 150n });
    await ledger.sweep(wallet, expiresAtMs);

    const expires = (await entries(wallet)).filter((fields) => fields[1] === 'expire');
    expect(expires).toEqual([
      ['type', 'expire', 'id', 'promo-B', 'amount', '0'],
      ['type', 'expire', 'id', 'promo-a', 'amount', '50'],
    ]);
  });

  it('keeps ids with JSON special characters', async () => {
    const wallet = { namespace: 'expiry', name: 'json' };
    const expiresAtMs = Date.now() + 3_600_000;
    const id = 'promo "quoted" \\ / ünïcode';
    await ledger.credit(wallet, id, 40n, { expiresAtMs });
    await ledger.sweep(wallet, expiresAtMs);

    expect((await entries(wallet))[1]).toEqual(['type', 'expire', 'id', id, 'amount', '40']);
  });

  /** Returns the calls per command since the last CONFIG RESETSTAT, without the INFO and CONFIG calls of this test. */
  async function commandCalls(): Promise<Record<string, number>> {
    const calls: Record<string, number> = {};
    for (const match of (await client.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
      if (!/^(info|config)\b/.test(match[1]!)) calls[match[1]!] = Number(match[2]);
    }
    return calls;
  }

  /** Counts the Redis commands of one reserve and one commit, after a first pair has loaded the scripts. */
  async function reserveAndCommitCalls(wallet: { namespace: string; name: string }): Promise<Record<string, number>> {
    await ledger.reserve(wallet, 'warm-up', hold);
    await ledger.commit(wallet, 'warm-up', entry);
    await client.config('RESETSTAT');
    await ledger.reserve(wallet, 'measured', hold);
    await ledger.commit(wallet, 'measured', entry);
    return commandCalls();
  }

  it('adds no command to reserve and commit before a grant is due', async () => {
    const plain = { namespace: 'expiry', name: 'plain' };
    const expiring = { namespace: 'expiry', name: 'live-grant' };
    await ledger.credit(plain, 'paid', 1000n);
    await ledger.credit(expiring, 'paid', 1000n);
    await ledger.credit(expiring, 'promo', 1000n, { expiresAtMs: Date.now() + 3_600_000 });

    // The commands of the two scripts before grant expiry existed.
    const plainCalls = await reserveAndCommitCalls(plain);
    expect(plainCalls).toEqual({
      evalsha: 2,
      time: 1,
      zrangebyscore: 1,
      hget: 3,
      hmget: 1,
      hset: 3,
      zadd: 1,
      hdel: 1,
      zrem: 1,
      hincrby: 3,
      xadd: 1,
    });
    expect(await reserveAndCommitCalls(expiring)).toEqual(plainCalls);
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
