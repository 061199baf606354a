/**
 * Local mode's periodic sweep against a real redis-server: a round in which
 * Redis is down logs one warning for all its wallets, not one per wallet,
 * and a wallet whose expired answered holds it charges gets a warning.
 */
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type RunningRedis } from '../test/support/redis.ts';
import { RedisLedger } from '../src/ledger/redis.ts';
import { sweepWallets } from './dev.ts';

const WALLETS = ['a', 'b', 'c'].map((name) => ({ id: `default/${name}`, key: { namespace: 'default', name } }));

let redis: RunningRedis;
let ledger: RedisLedger;

beforeAll(async () => {
  redis = await startRedis();
  ledger = new RedisLedger(redis.url);
  await ledger.state(WALLETS[0]!.key);
});

afterAll(async () => {
  await ledger?.quit();
  await redis?.stop();
});

function recordingLogger(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, lines };
}

describe('sweepWallets', () => {
  it('logs nothing when every sweep succeeds', async () => {
    const { log, lines } = recordingLogger();
    await sweepWallets(ledger, WALLETS, log);
    expect(lines).toEqual([]);
  });

  it('warns when it charges expired holds of answered calls', async () => {
    const wallet = WALLETS[1]!;
    await ledger.credit(wallet.key, 'grant', 1000n);
    await ledger.reserve(wallet.key, 'stream', { fixed: 100n, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 0.001, fingerprint: 'f' });
    await ledger.markAnswered(wallet.key, 'stream');
    // Let the one-millisecond hold expire.
    await new Promise((resolve) => setTimeout(resolve, 20));
    const { log, lines } = recordingLogger();

    await sweepWallets(ledger, WALLETS, log);
    expect(lines.map((line) => [line['level'], line['wallet'], line['chargedHolds'], line['msg']])).toEqual([
      [40, 'default/b', 1, 'charged expired holds of answered calls at their held amount, because they were never committed; their provider cost is not known'],
    ]);
    expect(await ledger.state(wallet.key)).toMatchObject({ spent: 100n, chargedWithoutCost: 100n });
  });

  it('logs one warning per round while Redis is down', async () => {
    await redis.stop();
    const { log, lines } = recordingLogger();

    await sweepWallets(ledger, WALLETS, log);
    expect(lines).toHaveLength(1);
    expect(lines[0]!['level']).toBe(40);
    expect(lines[0]!['msg']).toBe('sweep failed because the ledger is unavailable');
    expect(lines[0]!['failed']).toBe(3);
    expect(lines[0]!['wallets']).toBe(3);
    expect(lines[0]!['firstWallet']).toBe('default/a');
    expect(lines[0]!['retryInMs']).toBe(30_000);
    expect(String(lines[0]!['reason'])).toMatch(new RegExp(`^ledger sweep for wallet default/a failed because Redis at 127\\.0\\.0\\.1:${redis.port} is unavailable: `));

    await sweepWallets(ledger, WALLETS, log);
    expect(lines).toHaveLength(2);
  });
});
