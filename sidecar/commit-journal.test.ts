/**
 * The commit journal on a real file: add and done lines, recovery with exact
 * amounts, truncation once nothing is open, and damaged files. Then the
 * commit queue writing to it against a real redis-server.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CommitEntry, WalletKey } from '../src/ledger/ledger.ts';
import { RedisLedger } from '../src/ledger/redis.ts';
import { startRedis, type RunningRedis } from '../test/support/redis.ts';
import { COMPACT_MIN_BYTES, CommitJournal, formatAddLine } from './commit-journal.ts';
import { CommitQueue, DEFAULT_COMMIT_QUEUE_OPTIONS, type AbandonReason, type CommitQueueOptions, type PendingCommit } from './commit-queue.ts';

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** Above 2^53, where a JSON number would lose the last digits. */
const BIG_CHARGE = 9_007_199_254_740_993n;
const BIG_COST = 9_007_199_254_740_995n;
const BIG_HELD = 18_014_398_509_481_987n;
const QUEUED_AT = 1_767_225_600_123;

function commitOf(requestId: string, entry: Partial<CommitEntry> = {}, wallet: WalletKey = { namespace: 'team-ns', name: 'team' }): PendingCommit {
  return {
    wallet,
    walletId: `${wallet.namespace}/${wallet.name}`,
    currency: 'USD',
    requestId,
    held: BIG_HELD,
    entry: { charged: BIG_CHARGE, providerCost: BIG_COST, model: 'gpt-4o-mini', route: 'openai', tokens: { input: 20, output: 10 }, estimated: true, ...entry },
  };
}

function recordingLog(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'info' }, { write: (raw: string) => void lines.push(JSON.parse(raw) as LogLine) });
  return { log, lines };
}

let dir: string;
let file: string;

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'tollgate-journal-'));
  file = path.join(dir, 'commits.ndjson');
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('commit journal', () => {
  it('writes add and done lines', () => {
    const { log } = recordingLog();
    const { journal, recovered } = CommitJournal.open(file, log);
    expect(recovered).toEqual([]);

    journal.append(commitOf('req-1'), QUEUED_AT);
    journal.append(commitOf('req-2'), QUEUED_AT + 1);
    journal.done('req-1');
    journal.close();

    expect(readFileSync(file, 'utf8').split('\n')).toEqual([
      '{"op":"add","requestId":"req-1","queuedAt":1767225600123,"wallet":{"namespace":"team-ns","name":"team"},"walletId":"team-ns/team",' +
        '"currency":"USD","held":"18014398509481987","entry":{"charged":"9007199254740993","providerCost":"9007199254740995",' +
        '"model":"gpt-4o-mini","route":"openai","tokens":{"input":20,"output":10},"estimated":true}}',
      formatAddLine(commitOf('req-2'), QUEUED_AT + 1).trimEnd(),
      '{"op":"done","requestId":"req-1"}',
      '',
    ]);
  });

  it('recovers open commits with exact amounts', () => {
    const first = CommitJournal.open(file, recordingLog().log).journal;
    first.append(commitOf('req-1'), QUEUED_AT);
    first.append(commitOf('req-2', { charged: 0n, providerCost: 1n, tokens: {}, estimated: false }), QUEUED_AT + 5);
    first.append(commitOf('req-3'), QUEUED_AT + 9);
    first.done('req-1');
    first.close();

    const { log, lines } = recordingLog();
    const { journal, recovered } = CommitJournal.open(file, log);

    expect(recovered).toEqual([
      { commit: commitOf('req-2', { charged: 0n, providerCost: 1n, tokens: {}, estimated: false }), queuedAtMs: QUEUED_AT + 5 },
      { commit: commitOf('req-3'), queuedAtMs: QUEUED_AT + 9 },
    ]);
    expect(recovered[1]!.commit.entry.charged).toBe(BIG_CHARGE);
    expect(recovered[1]!.commit.entry.providerCost).toBe(BIG_COST);
    expect(recovered[1]!.commit.held).toBe(BIG_HELD);
    expect(journal.open).toBe(2);
    expect(lines.map((line) => [line.level, line.msg, line['recovered'], line['journal']])).toEqual([
      [30, 'recovered commits from the commit journal; retrying them until the ledger takes them', 2, file],
    ]);
    journal.close();
  });

  it('truncates the file once every commit is done', () => {
    const { journal } = CommitJournal.open(file, recordingLog().log);
    journal.append(commitOf('req-1'), QUEUED_AT);
    journal.append(commitOf('req-2'), QUEUED_AT);
    journal.done('req-2');
    expect(statSync(file).size).toBeGreaterThan(0);

    journal.done('req-1');
    expect(statSync(file).size).toBe(0);
    expect(journal.open).toBe(0);

    // Appends after the truncation start at the beginning of the file.
    journal.append(commitOf('req-3'), QUEUED_AT);
    journal.close();
    expect(readFileSync(file, 'utf8')).toBe(formatAddLine(commitOf('req-3'), QUEUED_AT));
  });

  it('ignores done for an unknown request id', () => {
    const { journal } = CommitJournal.open(file, recordingLog().log);
    journal.append(commitOf('req-1'), QUEUED_AT);
    journal.done('never-added');
    journal.close();

    expect(readFileSync(file, 'utf8')).toBe(formatAddLine(commitOf('req-1'), QUEUED_AT));
  });

  it('pairs a reused request id line by line', () => {
    const first = CommitJournal.open(file, recordingLog().log).journal;
    first.append(commitOf('same', { charged: 1n }), QUEUED_AT);
    first.append(commitOf('same', { charged: 2n }), QUEUED_AT + 1);
    first.done('same');
    expect(first.open).toBe(1);
    first.close();

    const { journal, recovered } = CommitJournal.open(file, recordingLog().log);
    expect(recovered).toEqual([{ commit: commitOf('same', { charged: 2n }), queuedAtMs: QUEUED_AT + 1 }]);
    journal.done('same');
    journal.close();
    expect(statSync(file).size).toBe(0);
  });

  it('truncates a file with nothing open at start', () => {
    writeFileSync(file, formatAddLine(commitOf('req-1'), QUEUED_AT) + '{"op":"done","requestId":"req-1"}\n');
    const { log, lines } = recordingLog();
    const { journal, recovered } = CommitJournal.open(file, log);
    journal.close();

    expect(recovered).toEqual([]);
    expect(statSync(file).size).toBe(0);
    expect(lines).toEqual([]);
  });

  it('skips a torn last line', () => {
    const complete = formatAddLine(commitOf('req-1'), QUEUED_AT);
    const torn = formatAddLine(commitOf('req-2'), QUEUED_AT).slice(0, 57);
    writeFileSync(file, complete + torn);
    const { log, lines } = recordingLog();
    const { journal, recovered } = CommitJournal.open(file, log);

    expect(recovered).toEqual([{ commit: commitOf('req-1'), queuedAtMs: QUEUED_AT }]);
    expect(lines.filter((line) => line.level === 40).map((line) => [line.msg, line['journal'], line['line'], line['bytes']])).toEqual([
      ['skipped a torn last line of the commit journal, left by a crash during a write', file, 2, 57],
    ]);
    // The torn bytes are cut off, so the next line starts on a line of its own.
    expect(readFileSync(file, 'utf8')).toBe(complete);
    journal.append(commitOf('req-3'), QUEUED_AT + 1);
    journal.close();

    const reopened = CommitJournal.open(file, recordingLog().log);
    reopened.journal.close();
    expect(reopened.recovered.map(({ commit }) => commit.requestId)).toEqual(['req-1', 'req-3']);
  });

  it('keeps a complete last line without newline', () => {
    const first = formatAddLine(commitOf('req-1'), QUEUED_AT);
    const second = formatAddLine(commitOf('req-2'), QUEUED_AT).trimEnd();
    writeFileSync(file, first + second);
    const { log, lines } = recordingLog();
    const { journal, recovered } = CommitJournal.open(file, log);

    expect(recovered.map(({ commit }) => commit.requestId)).toEqual(['req-1', 'req-2']);
    expect(lines.filter((line) => line.level >= 40)).toEqual([]);
    journal.done('req-2');
    journal.close();
    expect(readFileSync(file, 'utf8')).toBe(`${first}${second}\n{"op":"done","requestId":"req-2"}\n`);
  });

  it('skips an invalid line in the middle with an error', () => {
    const invalid = '{"op":"add","requestId":"req-x","queuedAt":1,"held":"1.5"}';
    writeFileSync(file, [formatAddLine(commitOf('req-1'), QUEUED_AT), 'not json\n', `${invalid}\n`, '\n', formatAddLine(commitOf('req-2'), QUEUED_AT)].join(''));
    const { log, lines } = recordingLog();
    const { journal, recovered } = CommitJournal.open(file, log);
    journal.close();

    expect(recovered.map(({ commit }) => commit.requestId)).toEqual(['req-1', 'req-2']);
    expect(lines.filter((line) => line.level === 50).map((line) => [line.msg, line['journal'], line['line'], line['text']])).toEqual([
      ['skipped an invalid line of the commit journal; if it is an add line, its commit is not replayed', file, 2, 'not json'],
      ['skipped an invalid line of the commit journal; if it is an add line, its commit is not replayed', file, 3, invalid],
    ]);
  });

  it('keeps a copy of a file with damaged lines', () => {
    const original = [formatAddLine(commitOf('req-1'), QUEUED_AT), 'not json\n', formatAddLine(commitOf('req-2'), QUEUED_AT)].join('');
    writeFileSync(file, original);
    const { log, lines } = recordingLog();
    const { journal } = CommitJournal.open(file, log);
    journal.close();

    const kept = lines.find((line) => line.msg === 'kept a copy of the commit journal with its damaged lines before rewriting it without them');
    expect(kept?.['damaged']).toBe(1);
    expect(String(kept?.['copy'])).toMatch(new RegExp(`^${file.replace(/[.]/g, '\\.')}\\.damaged-\\d+$`));
    expect(readFileSync(String(kept?.['copy']), 'utf8')).toBe(original);
    // The journal itself holds only the open lines now, so the next start logs nothing.
    expect(readFileSync(file, 'utf8')).toBe(formatAddLine(commitOf('req-1'), QUEUED_AT) + formatAddLine(commitOf('req-2'), QUEUED_AT));
  });

  it('rewrites a long journal with only its open lines', () => {
    const { journal } = CommitJournal.open(file, recordingLog().log);
    journal.append(commitOf('stuck'), QUEUED_AT);
    let largest = 0;
    // One commit stays open while thousands are taken, as while a ledger fails now and then.
    for (let index = 0; index < 5000; index++) {
      journal.append(commitOf(`taken-${index}`), QUEUED_AT);
      journal.done(`taken-${index}`);
      largest = Math.max(largest, statSync(file).size);
    }
    journal.close();

    expect(largest).toBeLessThan(COMPACT_MIN_BYTES + 1024);
    const { journal: reopened, recovered } = CommitJournal.open(file, recordingLog().log);
    reopened.close();
    expect(recovered.map(({ commit }) => commit.requestId)).toEqual(['stuck']);
  });

  it('names a folder given as the file', () => {
    expect(() => CommitJournal.open(dir, recordingLog().log)).toThrow(
      new RegExp(`^failed to open the commit journal ${dir.replace(/[.]/g, '\\.')}: EISDIR: .*; the path names a folder; give the path of a file in it, such as commits\\.ndjson$`),
    );
  });

  it('names the file when it cannot be opened', () => {
    const missing = path.join(dir, 'no-such-folder', 'commits.ndjson');

    expect(() => CommitJournal.open(missing, recordingLog().log)).toThrow(
      new RegExp(`^failed to open the commit journal ${missing.replace(/[.]/g, '\\.')}: ENOENT: no such file or directory, open '.*'; its folder does not exist; create it, or give a path in an existing folder$`),
    );
  });

  it('drops lines after close', () => {
    const { log, lines } = recordingLog();
    const { journal } = CommitJournal.open(file, log);
    journal.close();

    // A closed journal drops lines without an error, as at shutdown.
    journal.append(commitOf('req-1'), QUEUED_AT);
    journal.done('req-1');
    expect(lines).toEqual([]);
    expect(readFileSync(file, 'utf8')).toBe('');
  });
});

describe('commit queue with a journal', () => {
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
    wallet = { namespace: 'journal', name: `wallet-${++walletNumber}` };
    await ledger.credit(wallet, 'start', 10_000_000n);
  });

  async function reserve(requestId: string): Promise<PendingCommit> {
    const result = await ledger.reserve(wallet, requestId, { fixed: HELD, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: '' });
    expect(result.status).toBe('reserved');
    return { wallet, walletId: `${wallet.namespace}/${wallet.name}`, currency: 'USD', requestId, entry: ENTRY, held: HELD };
  }

  function createQueue(target: RedisLedger, journal: CommitJournal, options: Partial<CommitQueueOptions> = {}) {
    const { log, lines } = recordingLog();
    const abandoned: [string, AbandonReason][] = [];
    const committed: string[] = [];
    const queue = new CommitQueue(
      target,
      log,
      { ...DEFAULT_COMMIT_QUEUE_OPTIONS, maxAgeMs: 3_600_000, ...options },
      { committed: (commit) => committed.push(commit.requestId), abandoned: (commit, reason) => abandoned.push([commit.requestId, reason]), pendingChanged: () => {} },
      journal,
    );
    return { queue, lines, abandoned, committed };
  }

  it('truncates the journal once the ledger takes the commit', async () => {
    const commit = await reserve('taken');
    const { journal } = CommitJournal.open(file, recordingLog().log);
    // No background pass before close(), which then commits in its flush.
    const { queue, committed } = createQueue(ledger, journal, { initialBackoffMs: 3_600_000 });

    expect(queue.add(commit)).toBe(true);
    expect(journal.open).toBe(1);
    expect(readFileSync(file, 'utf8').split('\n').map((line) => (line === '' ? '' : (JSON.parse(line) as { op: string }).op))).toEqual(['add', '']);

    await queue.close();
    journal.close();
    expect(committed).toEqual(['taken']);
    expect(statSync(file).size).toBe(0);
    expect((await ledger.state(wallet)).spent).toBe(ENTRY.charged);
  });

  it('keeps commits left at shutdown for the next start', async () => {
    const commit = await reserve('left');
    // Nothing listens there, so every commit fails as unavailable.
    const down = await startRedis();
    const unavailable = new RedisLedger(down.url, { timeoutMs: 500 });
    await down.stop();
    const { journal } = CommitJournal.open(file, recordingLog().log);
    const { queue, lines, abandoned } = createQueue(unavailable, journal, { initialBackoffMs: 3_600_000, shutdownFlushMs: 0 });

    expect(queue.add(commit)).toBe(true);
    await queue.close();
    journal.close();
    await unavailable.quit();

    expect(abandoned).toEqual([['left', 'shutdown']]);
    expect(lines.filter((line) => line.requestId === 'left').map((line) => [line.level, line.msg])).toEqual([
      [40, 'commit not confirmed before the sidecar stopped; it stays in the commit journal, and the next start retries it'],
    ]);

    // The next start replays it against the ledger that is back.
    const reopened = CommitJournal.open(file, recordingLog().log);
    expect(reopened.recovered).toEqual([{ commit, queuedAtMs: reopened.recovered[0]!.queuedAtMs }]);
    const next = createQueue(ledger, reopened.journal, { initialBackoffMs: 3_600_000 });
    expect(next.queue.addRecovered(commit, reopened.recovered[0]!.queuedAtMs)).toBe(true);
    expect(next.queue.pending).toBe(1);
    await next.queue.close();
    reopened.journal.close();

    expect(next.committed).toEqual(['left']);
    expect(statSync(file).size).toBe(0);
    const state = await ledger.state(wallet);
    expect(state.spent).toBe(ENTRY.charged);
    expect(state.reserved).toBe(0n);
  });

  it('abandons a recovered commit older than maxAgeMs', async () => {
    const commit = await reserve('stale');
    const queuedAtMs = Date.now() - 3_600_001;
    writeFileSync(file, formatAddLine(commit, queuedAtMs));
    const { journal, recovered } = CommitJournal.open(file, recordingLog().log);
    const { queue, lines, abandoned } = createQueue(ledger, journal, { initialBackoffMs: 3_600_000 });

    expect(queue.addRecovered(recovered[0]!.commit, recovered[0]!.queuedAtMs)).toBe(false);
    expect(abandoned).toEqual([['stale', 'too_old']]);
    expect(queue.pending).toBe(0);
    expect(lines.filter((line) => line.reason === 'too_old').map((line) => [line.level, line['requestId'], line['maxAgeMs']])).toEqual([[50, 'stale', 3_600_000]]);
    // Final: the journal marks it done, which empties the file, and the hold is left to the sweeper.
    expect(statSync(file).size).toBe(0);
    await queue.close();
    journal.close();
    expect((await ledger.state(wallet)).reserved).toBe(HELD);
  });

  it('marks a commit the ledger rejects as done', async () => {
    const commit = await reserve('invalid');
    const invalid = { ...commit, entry: { ...ENTRY, charged: -1n } };
    const { journal } = CommitJournal.open(file, recordingLog().log);
    const { queue, abandoned } = createQueue(ledger, journal, { initialBackoffMs: 3_600_000 });

    expect(queue.add(invalid)).toBe(true);
    await queue.close();
    journal.close();
    expect(abandoned).toEqual([['invalid', 'rejected']]);
    expect(statSync(file).size).toBe(0);
  });

  it('writes nothing for a commit the full queue rejects', async () => {
    const first = await reserve('first');
    const second = await reserve('second');
    const { journal } = CommitJournal.open(file, recordingLog().log);
    const { queue, abandoned } = createQueue(ledger, journal, { initialBackoffMs: 3_600_000, maxPending: 1 });

    expect(queue.add(first)).toBe(true);
    expect(queue.add(second)).toBe(false);
    expect(abandoned).toEqual([['second', 'queue_full']]);
    expect(readFileSync(file, 'utf8')).toBe(formatAddLine(first, (JSON.parse(readFileSync(file, 'utf8')) as { queuedAt: number }).queuedAt));
    await queue.close();
    journal.close();
    expect(statSync(file).size).toBe(0);
  });
});
