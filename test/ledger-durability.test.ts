/**
 * What the Redis ledger keeps across a server restart, with the append-only
 * file settings the documentation recommends.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { RedisLedger } from '../src/ledger/redis.ts';
import { parseAmount } from '../src/money/money.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';

const wallet = { namespace: 'team-a', name: 'durable' };
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

async function restartable(appendfsync: 'always' | 'everysec') {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-aof-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const start = async () => {
    const redis = await startRedis({ dir, appendonly: true, appendfsync });
    cleanups.push(() => redis.stop());
    return redis;
  };
  return { start };
}

async function spendOnce(ledger: RedisLedger, requestId: string) {
  const reserved = await ledger.reserve(wallet, requestId, {
    fixed: parseAmount('0.50'),
    perUnit: 0n,
    minUnits: 0,
    maxUnits: 0,
    ttlSeconds: 60,
    fingerprint: requestId,
  });
  expect(reserved.status).toBe('reserved');
  await ledger.commit(wallet, requestId, {
    charged: parseAmount('0.30'),
    providerCost: parseAmount('0.25'),
    model: 'gpt-4o-mini',
    route: 'openai',
    tokens: { input: 10, output: 5 },
    estimated: false,
  });
}

describe('ledger durability', () => {
  it.each(['always', 'everysec'] as const)('keeps grants and debits across a restart (appendfsync %s)', async (appendfsync) => {
    const server = await restartable(appendfsync);
    let redis: RunningRedis = await server.start();
    let ledger = new RedisLedger(redis.url);
    await ledger.credit(wallet, 'grant-1', parseAmount('10.00'));
    await spendOnce(ledger, 'request-1');
    await ledger.quit();
    // A clean shutdown flushes the append-only file, whatever the fsync policy.
    await redis.stop();

    redis = await server.start();
    ledger = new RedisLedger(redis.url);
    cleanups.push(() => ledger.quit());
    const state = await ledger.state(wallet);
    expect(state.granted).toBe(parseAmount('10.00'));
    expect(state.spent).toBe(parseAmount('0.30'));
    expect(state.reserved).toBe(0n);

    // Idempotency records survive too: a replayed grant and a replayed commit change nothing.
    expect((await ledger.credit(wallet, 'grant-1', parseAmount('10.00'))).replayed).toBe(true);
    const replay = await ledger.commit(wallet, 'request-1', {
      charged: parseAmount('0.30'),
      providerCost: parseAmount('0.25'),
      model: 'gpt-4o-mini',
      route: 'openai',
      tokens: {},
      estimated: false,
    });
    expect(replay.status).toBe('committed');
    expect(replay.status === 'committed' ? replay.replayed : undefined).toBe(true);
    expect((await ledger.state(wallet)).spent).toBe(parseAmount('0.30'));
    expect((await ledger.verify(wallet)).ok).toBe(true);
  });

  it('loses everything without persistence', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-nopersist-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    let redis = await startRedis({ dir });
    let ledger = new RedisLedger(redis.url);
    await ledger.credit(wallet, 'grant-1', parseAmount('10.00'));
    await ledger.quit();
    await redis.stop();

    redis = await startRedis({ dir });
    cleanups.push(() => redis.stop());
    ledger = new RedisLedger(redis.url);
    cleanups.push(() => ledger.quit());
    // This is why production needs appendonly: the grant is gone and the operator must apply it again.
    expect((await ledger.state(wallet)).granted).toBe(0n);
  });
});
