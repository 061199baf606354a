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
import { LedgerUnavailableError, periodFields } from './ledger.ts';
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

    // The commands of the two scripts without grant expiry. The commit moves
    // the request id in the expiry index to the end of its record's
    // retention (a ZADD) where it used to remove it (a ZREM).
    const plainCalls = await reserveAndCommitCalls(plain);
    expect(plainCalls).toEqual({
      evalsha: 2,
      time: 1,
      zrangebyscore: 1,
      hget: 3,
      hmget: 1,
      hset: 3,
      zadd: 2,
      hdel: 1,
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

/** Returns the scripts run since the last CONFIG RESETSTAT: EVALSHA calls, and EVAL calls that loaded a script. */
async function scriptCalls(): Promise<number> {
  const stats = await client.info('commandstats');
  const calls = (command: string) => Number(new RegExp(`^cmdstat_${command}:calls=(\\d+)`, 'm').exec(stats)?.[1] ?? 0);
  return calls('evalsha') + calls('eval');
}

describe('retention of settled records', () => {
  const RETENTION_MS = 3_600_000;
  const hold: HoldRequest = { fixed: 10n, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 30 * 86_400, fingerprint: '' };
  const entry = { charged: 10n, providerCost: 5n, model: 'm', route: 'r', tokens: {}, estimated: false };


  it('indexes each record at the end of its window', async () => {
    const clock = Date.UTC(2030, 0, 1);
    const deadline = String(clock + RETENTION_MS);
    const ledger = new RedisLedger(client, { now: () => clock, settledRetentionMs: RETENTION_MS });
    const wallet = { namespace: 'retention', name: 'index' };
    const [, , hexp, done] = walletKeys(wallet);
    await ledger.credit(wallet, 'g', 1000n);
    await ledger.reserve(wallet, 'committed', hold);
    await ledger.commit(wallet, 'committed', entry);
    await ledger.commit(wallet, 'unreserved', entry);
    await ledger.reserve(wallet, 'released', { ...hold, fingerprint: 'fp' });
    await ledger.release(wallet, 'released');
    await ledger.reserve(wallet, 'open', hold);

    // The open hold sorts first: it expires in 30 days, and the records at the end of their window in 2030.
    const open = await client.zscore(hexp!, 'open');
    expect(await client.zrange(hexp!, 0, -1, 'WITHSCORES')).toEqual(['open', open, 'committed', deadline, 'released', deadline, 'unreserved', deadline]);
    const { day, month } = periodFields(clock);
    // The records keep the format of earlier versions; the window is in the index only.
    expect(await client.hgetall(done!)).toEqual({
      committed: `committed|10|0|${day}|${month}|`,
      unreserved: `committed|10|0|${day}|${month}|`,
      released: `released|0|10|${day}|${month}|fp`,
    });
  });

  it('removes 1,000 records per sweep script', async () => {
    // Committed a day ago with a window of an hour, so every record is due.
    const clock = Date.now() - 86_400_000;
    const ledger = new RedisLedger(client, { now: () => clock, settledRetentionMs: RETENTION_MS });
    const wallet = { namespace: 'retention', name: 'sweep-batches' };
    const [, , hexp, done] = walletKeys(wallet);
    await ledger.credit(wallet, 'g', 100_000n);
    for (let i = 0; i < 2500; i += 1) await ledger.commit(wallet, `r-${i}`, entry);
    expect(await client.hlen(done!)).toBe(2500);

    await client.config('RESETSTAT');
    expect(await ledger.sweep(wallet)).toEqual({ released: 0, charged: 0 });
    // Two full scripts of 1,000 and one of 500, which found the index drained.
    expect(await scriptCalls()).toBe(3);
    expect(await client.hlen(done!)).toBe(0);
    expect(await client.exists(hexp!)).toBe(0);
    expect((await ledger.verify(wallet)).ok).toBe(true);
  });

  it('removes 16 records per reserve', async () => {
    const clock = Date.now() - 86_400_000;
    const ledger = new RedisLedger(client, { now: () => clock, settledRetentionMs: RETENTION_MS });
    const wallet = { namespace: 'retention', name: 'reserve-batches' };
    const [, , hexp, done] = walletKeys(wallet);
    await ledger.credit(wallet, 'g', 100_000n);
    for (let i = 0; i < 40; i += 1) await ledger.commit(wallet, `r-${i}`, entry);

    await ledger.reserve(wallet, 'next', hold);
    expect(await client.hlen(done!)).toBe(24);
    // The 24 records left, and the new hold.
    expect(await client.zcard(hexp!)).toBe(25);
    // Equal deadlines sort by id in byte order: r-0, r-1, r-10 ... r-19, r-2, r-20 ...
    expect(await client.zrange(hexp!, 0, 0)).toEqual(['r-23']);
    await ledger.reserve(wallet, 'after-next', hold);
    expect(await client.hlen(done!)).toBe(8);
  });

  it('moves the deadline of a record written again', async () => {
    const clock = { ms: Date.now() };
    const ledger = new RedisLedger(client, { now: () => clock.ms, settledRetentionMs: RETENTION_MS });
    const wallet = { namespace: 'retention', name: 'rewritten' };
    const [, , hexp, done] = walletKeys(wallet);
    await ledger.credit(wallet, 'g', 1000n);
    await ledger.reserve(wallet, 'req', { ...hold, ttlSeconds: 60 });
    const sweptAt = clock.ms + 120_000;
    await ledger.sweep(wallet, sweptAt);
    expect(await client.zscore(hexp!, 'req')).toBe(String(sweptAt + RETENTION_MS));

    clock.ms = sweptAt + 60_000;
    await ledger.commit(wallet, 'req', entry);
    expect(await client.zscore(hexp!, 'req')).toBe(String(clock.ms + RETENTION_MS));
    await ledger.sweep(wallet, sweptAt + RETENTION_MS);
    expect(await client.hexists(done!, 'req')).toBe(1);
    await ledger.sweep(wallet, clock.ms + RETENTION_MS);
    expect(await client.hexists(done!, 'req')).toBe(0);
  });

  it('indexes records written without a retention', async () => {
    const ledger = new RedisLedger(client, { settledRetentionMs: RETENTION_MS });
    const wallet = { namespace: 'retention', name: 'legacy' };
    const [account, , hexp, done] = walletKeys(wallet);
    // A record as an earlier ledger version left it: no member in the expiry index.
    await client.hset(done!, 'legacy', 'committed|10|0|day:2024-01-01|month:2024-01|');
    await ledger.credit(wallet, 'g', 1000n);
    await ledger.commit(wallet, 'indexed', entry);
    const indexed = await client.zscore(hexp!, 'indexed');

    const sweptAt = Date.now() + 60_000;
    await ledger.sweep(wallet, sweptAt);
    expect(await client.zscore(hexp!, 'legacy')).toBe(String(sweptAt + RETENTION_MS));
    expect(await client.zscore(hexp!, 'indexed')).toBe(indexed);
    expect(await client.hmget(account!, 'doneIndexed', 'doneScan')).toEqual(['1', null]);

    // A retry replays the legacy record within its window, and is new after it.
    expect(await ledger.commit(wallet, 'legacy', entry)).toEqual({ status: 'committed', charged: 10n, released: 0n, replayed: true });
    await ledger.sweep(wallet, sweptAt + RETENTION_MS);
    expect(await client.hlen(done!)).toBe(0);
    expect(await ledger.commit(wallet, 'legacy', entry)).toEqual({ status: 'committed', charged: 10n, released: 0n, replayed: false });
  });

  it('skips the scan for a new wallet', async () => {
    const ledger = new RedisLedger(client, { settledRetentionMs: RETENTION_MS });
    const wallet = { namespace: 'retention', name: 'new' };
    const [account, , hexp, done] = walletKeys(wallet);
    await ledger.credit(wallet, 'g', 1000n);
    expect(await client.hget(account!, 'doneIndexed')).toBe('1');

    // A record added behind the ledger's back is not looked for, because a new wallet has no records of earlier versions.
    await ledger.commit(wallet, 'indexed', entry);
    await client.hset(done!, 'injected', 'committed|10|0|day:2024-01-01|month:2024-01|');
    await ledger.sweep(wallet, Date.now() + 60_000);
    expect(await client.zscore(hexp!, 'injected')).toBeNull();
    expect(await client.hexists(account!, 'doneScan')).toBe(0);
  });

  it('scans a large legacy hash over several sweeps', async () => {
    const ledger = new RedisLedger(client, { settledRetentionMs: RETENTION_MS });
    const wallet = { namespace: 'retention', name: 'legacy-large' };
    const [account, , hexp, done] = walletKeys(wallet);
    const records: string[] = [];
    for (let i = 0; i < 3000; i += 1) records.push(`legacy-${i}`, 'committed|10|0|day:2024-01-01|month:2024-01|');
    await client.hset(done!, ...records);

    let sweeps = 0;
    while ((await client.hget(account!, 'doneIndexed')) !== '1' && sweeps < 100) {
      await ledger.sweep(wallet);
      sweeps += 1;
    }
    // HSCAN returns about COUNT fields per call, so 3,000 take a few sweeps.
    expect(sweeps).toBeGreaterThan(1);
    expect(await client.zcard(hexp!)).toBe(3000);
  });

  it('rejects a window shorter than an hour', () => {
    expect(() => new RedisLedger(client, { settledRetentionMs: RETENTION_MS - 1 })).toThrow(
      'invalid retention of settled records 3599999ms: use at least 1h (in whole milliseconds)',
    );
  });
});

describe('compaction', () => {
  const entry = { charged: 3n, providerCost: 2n, model: 'm', route: 'r', tokens: {}, estimated: false };

  it('folds 500 entries per script into the checkpoint hash', async () => {
    const ledger = new RedisLedger(client);
    const wallet = { namespace: 'compaction', name: 'chunks' };
    const log = walletKeys(wallet)[4]!;
    await ledger.credit(wallet, 'g', 10_000n);
    for (let i = 0; i < 2499; i += 1) await ledger.commit(wallet, `r-${i}`, entry);
    const lastId = (await client.xrevrange(log, '+', '-', 'COUNT', 1))[0]![0];

    await client.config('RESETSTAT');
    expect(await ledger.compact(wallet, Date.now() + 1)).toEqual({
      folded: 2500,
      checkpoint: { granted: 10_000n, spent: 7497n, expired: 0n, providerCost: 4998n, entries: 2500, lastId },
    });
    // Five full scripts of 500, and a sixth that finds nothing left.
    expect(await scriptCalls()).toBe(6);
    expect(await client.hgetall('{w:compaction/chunks}:checkpoint')).toEqual({
      granted: '10000',
      spent: '7497',
      providerCost: '4998',
      entries: '2500',
      lastId,
    });
    // The stream key stays, empty, so that new ids keep growing after the checkpoint.
    expect(await client.xlen(log)).toBe(0);
    expect(await client.exists(log)).toBe(1);
  });

  it('creates no key for a wallet without entries', async () => {
    const ledger = new RedisLedger(client);
    const wallet = { namespace: 'compaction', name: 'empty' };
    expect(await ledger.compact(wallet, Date.now())).toEqual({ folded: 0, checkpoint: undefined });
    expect(await client.keys('{w:compaction/empty}*')).toEqual([]);
  });

  it('folds sums beyond 2^53 exactly', async () => {
    const ledger = new RedisLedger(client);
    const wallet = { namespace: 'compaction', name: 'large-sums' };
    const max = 9_007_199_254_740_992n;
    // Commits without holds may take the spent total past 2^53, where doubles round.
    for (const id of ['a', 'b', 'c']) await ledger.commit(wallet, id, { ...entry, charged: max, providerCost: max });
    await ledger.commit(wallet, 'd', { ...entry, charged: 1n, providerCost: 1n });

    const result = await ledger.compact(wallet, Date.now() + 1);
    expect(result.checkpoint).toMatchObject({ spent: 27_021_597_764_222_977n, providerCost: 27_021_597_764_222_977n, entries: 4 });
    expect((await ledger.state(wallet)).spent).toBe(27_021_597_764_222_977n);
    expect(await ledger.verify(wallet)).toMatchObject({ ok: true, spent: 27_021_597_764_222_977n, entries: 4 });
  });

  it('restarts verify after a concurrent compaction', async () => {
    const own = new Redis(redis.url);
    const ledger = new RedisLedger(own);
    const other = new RedisLedger(client);
    const wallet = { namespace: 'compaction', name: 'concurrent' };
    try {
      await ledger.credit(wallet, 'g', 10_000n);
      for (let i = 0; i < 10; i += 1) await ledger.commit(wallet, `r-${i}`, entry);

      // The first page that verify reads runs a compaction of everything before it returns.
      const xrange = own.xrange.bind(own) as (...args: unknown[]) => Promise<unknown>;
      let compactions = 0;
      (own as unknown as { xrange: unknown }).xrange = async (...args: unknown[]) => {
        if (compactions === 0) {
          compactions += 1;
          await other.compact(wallet, Date.now() + 1);
        }
        return xrange(...args);
      };

      expect(await ledger.verify(wallet)).toMatchObject({ ok: true, granted: 10_000n, spent: 30n, entries: 11, problems: [] });
      expect(compactions).toBe(1);
    } finally {
      await own.quit();
    }
  });
});

describe('entries', () => {
  it('match the stream, page by page', async () => {
    const ledger = new RedisLedger(client);
    const wallet = { namespace: 'entries', name: 'pages' };
    await ledger.credit(wallet, 'g', 1000n, { reason: 'trial' });
    for (let i = 0; i < 6; i += 1) await ledger.commit(wallet, `r-${i}`, { charged: 1n, providerCost: 1n, model: 'm', route: 'r', tokens: { input: i }, estimated: i % 2 === 0 });

    await client.config('RESETSTAT');
    const entries = [];
    for await (const each of ledger.entries(wallet, { pageSize: 3 })) entries.push(each);
    // Seven entries in pages of three: 3, 3, then 1, which ends the read.
    expect(/^cmdstat_xrange:calls=(\d+)/m.exec(await client.info('commandstats'))?.[1]).toBe('3');
    const stream = await client.xrange(walletKeys(wallet)[4]!, '-', '+');
    expect(entries.map(({ id, fields }) => [id, Object.entries(fields).flat()])).toEqual(stream);
  });
});

describe('credentials the server rejects', () => {
  it('name the server and the fix', async () => {
    const guarded = await startRedis();
    const admin = new Redis(guarded.url);
    await admin.call('CONFIG', 'SET', 'requirepass', 'right-password');
    admin.disconnect();
    const wallet = { namespace: 'team-a', name: 'auth' };
    const address = `Redis at 127.0.0.1:${guarded.port}`;
    const wrong = new RedisLedger(guarded.url.replace('redis://', 'redis://:wrong-password@'));
    const none = new RedisLedger(guarded.url);
    try {
      await expect(wrong.state(wallet)).rejects.toThrow(
        `ledger state for wallet team-a/auth failed because ${address} rejected the connection's credentials: WRONGPASS invalid username-password pair or user is disabled. ` +
          'Check the user name and password in the Redis URL.',
      );
      await expect(none.state(wallet)).rejects.toThrow(`ledger state for wallet team-a/auth failed because ${address} rejected the connection's credentials: NOAUTH Authentication required`);
      await expect(none.state(wallet)).rejects.toBeInstanceOf(LedgerUnavailableError);
    } finally {
      wrong.quit().catch(() => undefined);
      none.quit().catch(() => undefined);
      await guarded.stop();
    }
  });
});

describe('charges without a provider cost', () => {
  it('stays at zero when a late commit prices an expire-charge made before the total existed', async () => {
    const ledger = new RedisLedger(client);
    const wallet = { namespace: 'legacy', name: 'expire-charge' };
    await ledger.credit(wallet, 'grant', 1000n);
    await ledger.reserve(wallet, 'req', { fixed: 100n, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'f' });
    await ledger.markAnswered(wallet, 'req');
    await ledger.sweep(wallet, Date.now() + 3_600_000);
    // A ledger written by an earlier version has no such total.
    await client.hdel(walletKeys(wallet)[0]!, 'chargedWithoutCost');

    await ledger.commit(wallet, 'req', { charged: 30n, providerCost: 20n, model: 'm', route: 'r', tokens: { input: 1, output: 1 }, estimated: false });
    expect(await ledger.state(wallet)).toMatchObject({ spent: 30n, providerCost: 20n, chargedWithoutCost: 0n });
    expect(await client.hget(walletKeys(wallet)[0]!, 'chargedWithoutCost')).toBeNull();
  });
});
