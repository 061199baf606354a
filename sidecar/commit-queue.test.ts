/**
 * The commit queue on a real redis-server: a late commit corrects the
 * sweeper's charge of the held amount, and commits the queue cannot keep are
 * logged and reported with their reason.
 */
import { pino } from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CommitEntry, CommitResult, WalletKey } from '../src/ledger/ledger.ts';
import { RedisLedger } from '../src/ledger/redis.ts';
import { startRedis, type RunningRedis } from '../test/support/redis.ts';
import { CommitQueue, DEFAULT_COMMIT_QUEUE_OPTIONS, type AbandonReason, type CommitQueueOptions, type PendingCommit } from './commit-queue.ts';

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

const HELD = 1_000_000n;
const ENTRY: CommitEntry = { charged: 400_000n, providerCost: 100_000n, model: 'gpt-4o-mini', route: 'openai', tokens: { input: 100, output: 50 }, estimated: false };

let redis: RunningRedis;
let ledger: RedisLedger;
let walletNumber = 0;
let wallet: WalletKey;

beforeAll(async () => {
  redis = await startRedis();
  ledger = new RedisLedger(redis.url);
});

afterAll(async () => {
  await ledger?.quit();
  await redis?.stop();
});

beforeEach(async () => {
  wallet = { namespace: 'queue', name: `wallet-${++walletNumber}` };
  await ledger.credit(wallet, 'start', 10_000_000n);
});

/** Places an answered hold of HELD nano-units, as the sidecar does before it relays a stream. */
async function reserveAnswered(requestId: string): Promise<PendingCommit> {
  const result = await ledger.reserve(wallet, requestId, { fixed: HELD, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: '' });
  expect(result.status).toBe('reserved');
  await ledger.markAnswered(wallet, requestId);
  return { wallet, walletId: `${wallet.namespace}/${wallet.name}`, currency: 'USD', requestId, entry: ENTRY, held: HELD };
}

/** Builds a queue on the test's ledger that records its log lines and hook calls. */
function createQueue(options: Partial<CommitQueueOptions>) {
  const lines: LogLine[] = [];
  const committed: [string, CommitResult][] = [];
  const abandoned: [string, AbandonReason][] = [];
  const pending: number[] = [];
  const log = pino({ level: 'info' }, { write: (raw: string) => void lines.push(JSON.parse(raw) as LogLine) });
  const queue = new CommitQueue(
    ledger,
    log,
    { ...DEFAULT_COMMIT_QUEUE_OPTIONS, maxAgeMs: 3_600_000, ...options },
    {
      committed: (commit, result) => committed.push([commit.requestId, result]),
      abandoned: (commit, reason) => abandoned.push([commit.requestId, reason]),
      pendingChanged: (count) => pending.push(count),
    },
  );
  return { queue, lines, committed, abandoned, pending };
}

async function waitFor(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('commit queue', () => {
  it('corrects an expire-charge to the actual cost', async () => {
    const commit = await reserveAnswered('late');
    // A background retry never comes before close() in this test, so the sweeper settles the hold first.
    const { queue, committed, lines } = createQueue({ initialBackoffMs: 3_600_000 });
    expect(queue.add(commit)).toBe(true);
    expect(queue.pending).toBe(1);

    expect(await ledger.sweep(wallet, Date.now() + 120_000)).toEqual({ released: 0, charged: 1 });
    expect((await ledger.state(wallet)).spent).toBe(HELD);

    await queue.close();
    expect(queue.pending).toBe(0);
    expect(committed).toEqual([['late', { status: 'committed', charged: ENTRY.charged, released: 0n, replayed: false }]]);

    const entries: Record<string, string>[] = [];
    for await (const entry of ledger.entries(wallet)) entries.push(entry.fields);
    expect(entries.map((fields) => [fields['type'], fields['id'], fields['amount']])).toEqual([
      ['grant', 'start', '10000000'],
      ['expire-charge', 'late', String(HELD)],
      ['debit', 'late', String(ENTRY.charged - HELD)],
    ]);
    const state = await ledger.state(wallet);
    expect(state.spent).toBe(ENTRY.charged);
    expect(state.providerCost).toBe(ENTRY.providerCost);
    expect(state.balance).toBe(10_000_000n - ENTRY.charged);
    expect((await ledger.verify(wallet)).problems).toEqual([]);
    expect(lines.filter((line) => line.msg === 'commit queue drained').map((line) => [line['queued'], line['committed'], line['abandoned']])).toEqual([[1, 1, 0]]);
  });

  it('abandons commits beyond maxPending', async () => {
    const commits = [await reserveAnswered('first'), await reserveAnswered('second'), await reserveAnswered('third')];
    const { queue, lines, committed, abandoned } = createQueue({ initialBackoffMs: 3_600_000, maxPending: 1 });

    expect(commits.map((commit) => queue.add(commit))).toEqual([true, false, false]);
    expect(abandoned).toEqual([
      ['second', 'queue_full'],
      ['third', 'queue_full'],
    ]);
    const full = lines.filter((line) => line.msg.startsWith('commit queue is full'));
    expect(full.map((line) => [line.level, line['maxPending']])).toEqual([[50, 1]]);
    const notQueued = lines.filter((line) => line.msg.startsWith('commit not queued because the commit queue is full'));
    expect(notQueued.map((line) => [line.level, line['requestId'], line['charged'], line['held']])).toEqual([
      [50, 'second', '400000', String(HELD)],
      [50, 'third', '400000', String(HELD)],
    ]);

    await queue.close();
    expect(committed.map(([requestId]) => requestId)).toEqual(['first']);
    expect((await ledger.state(wallet)).reserved).toBe(2n * HELD);
    expect(lines.filter((line) => line.msg === 'commit queue drained').map((line) => [line['queued'], line['committed'], line['abandoned']])).toEqual([[1, 1, 2]]);
  });

  it('abandons a commit older than maxAgeMs', async () => {
    const commit = await reserveAnswered('old');
    const { queue, lines, committed, abandoned, pending } = createQueue({ initialBackoffMs: 10, maxAgeMs: 0 });

    expect(queue.add(commit)).toBe(true);
    await waitFor('the commit to be abandoned', () => abandoned.length === 1);
    expect(abandoned).toEqual([['old', 'too_old']]);
    expect(committed).toEqual([]);
    expect(pending).toEqual([1, 0]);
    expect(lines.filter((line) => line.reason === 'too_old').map((line) => [line.level, line['requestId'], line['maxAgeMs']])).toEqual([[50, 'old', 0]]);
    // The hold is left to the sweeper.
    expect((await ledger.state(wallet)).reserved).toBe(HELD);
    await queue.close();
  });

  it('abandons a commit the ledger rejects', async () => {
    const commit = await reserveAnswered('invalid');
    const invalid = { ...commit, entry: { ...ENTRY, charged: -1n } };
    const { queue, lines, committed, abandoned } = createQueue({ initialBackoffMs: 10 });

    expect(queue.add(invalid)).toBe(true);
    await waitFor('the commit to be abandoned', () => abandoned.length === 1);
    expect(abandoned).toEqual([['invalid', 'rejected']]);
    expect(committed).toEqual([]);
    const rejected = lines.filter((line) => line.msg.startsWith('ledger rejected a queued commit'));
    expect(rejected).toHaveLength(1);
    expect((rejected[0]!['err'] as { message: string }).message).toContain('invalid entry.charged -1');
    await queue.close();
  });

  it('abandons a commit added after close', async () => {
    const commit = await reserveAnswered('late-add');
    const { queue, abandoned } = createQueue({});
    await queue.close();
    expect(queue.add(commit)).toBe(false);
    expect(abandoned).toEqual([['late-add', 'shutdown']]);
  });
});
