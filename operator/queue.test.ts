import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { LedgerUnavailableError } from '../src/ledger/ledger.ts';
import { WorkQueue, backoffDelay, runWorkers } from './queue.ts';

const silent = pino({ level: 'silent' });

/** Returns how many keys wait in the queue after `ms` milliseconds. */
async function lengthAfter(queue: WorkQueue, ms: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, ms));
  return queue.length;
}

describe('backoffDelay', () => {
  it('doubles from the base up to the cap', () => {
    const backoff = { baseMs: 100, capMs: 1_000 };
    expect([1, 2, 3, 4, 5, 6].map((failures) => backoffDelay(failures, backoff))).toEqual([100, 200, 400, 800, 1000, 1000]);
  });

  it('returns 0 before the first failure', () => {
    expect(backoffDelay(0, { baseMs: 100, capMs: 1_000 })).toBe(0);
  });

  it('stays at the cap for very many failures', () => {
    expect(backoffDelay(10_000, { baseMs: 5, capMs: 60_000 })).toBe(60_000);
  });
});

describe('WorkQueue', () => {
  it('hands out keys in order', async () => {
    const queue = new WorkQueue();
    queue.add('Wallet/a/one');
    queue.add('Wallet/a/two');
    expect(await queue.get()).toBe('Wallet/a/one');
    expect(await queue.get()).toBe('Wallet/a/two');
  });

  it('deduplicates waiting keys', async () => {
    const queue = new WorkQueue();
    queue.add('Wallet/a/one');
    queue.add('Wallet/a/one');
    queue.add('Wallet/a/one');
    expect(queue.length).toBe(1);
    expect(await queue.get()).toBe('Wallet/a/one');
    expect(await lengthAfter(queue, 20)).toBe(0);
  });

  it('requeues a key added while it is processed', async () => {
    const queue = new WorkQueue();
    queue.add('Wallet/a/one');
    const key = await queue.get();
    queue.add('Wallet/a/one');
    // Not handed to a second worker while the first one processes it.
    expect(await lengthAfter(queue, 20)).toBe(0);
    queue.done(key!);
    expect(await queue.get()).toBe('Wallet/a/one');
  });

  it('does not requeue a processed key that was not added again', async () => {
    const queue = new WorkQueue();
    queue.add('Wallet/a/one');
    queue.done((await queue.get())!);
    expect(await lengthAfter(queue, 20)).toBe(0);
  });

  it('wakes a waiting worker on add', async () => {
    const queue = new WorkQueue();
    const waiting = queue.get();
    queue.add('PricePlan/b/standard');
    expect(await waiting).toBe('PricePlan/b/standard');
  });

  it('delays a key with addAfter', async () => {
    const queue = new WorkQueue();
    queue.addAfter('Wallet/a/later', 80);
    expect(await lengthAfter(queue, 20)).toBe(0);
    expect(await queue.get()).toBe('Wallet/a/later');
  });

  it('keeps the earlier of two delayed adds', async () => {
    const queue = new WorkQueue();
    queue.addAfter('Wallet/a/one', 5_000);
    queue.addAfter('Wallet/a/one', 30);
    expect(await queue.get()).toBe('Wallet/a/one');
  });

  it('backs off per key and resets on forget', () => {
    const queue = new WorkQueue({ backoff: { baseMs: 10, capMs: 50 } });
    expect(queue.addRateLimited('Wallet/a/one')).toBe(10);
    expect(queue.addRateLimited('Wallet/a/one')).toBe(20);
    expect(queue.addRateLimited('Wallet/a/one')).toBe(40);
    expect(queue.addRateLimited('Wallet/a/one')).toBe(50);
    expect(queue.addRateLimited('Wallet/a/two')).toBe(10);
    expect(queue.failures('Wallet/a/one')).toBe(4);
    queue.forget('Wallet/a/one');
    expect(queue.failures('Wallet/a/one')).toBe(0);
    expect(queue.addRateLimited('Wallet/a/one')).toBe(10);
    queue.shutDown();
  });

  it('limits the overall retry rate with the token bucket', () => {
    const queue = new WorkQueue({ backoff: { baseMs: 1, capMs: 1 }, bucket: { perSecond: 10, burst: 2 } });
    expect(queue.addRateLimited('a')).toBe(1);
    expect(queue.addRateLimited('b')).toBe(1);
    // The third retry within the same instant waits for a token: 1/10 s.
    expect(queue.addRateLimited('c')).toBeGreaterThanOrEqual(99);
    expect(queue.addRateLimited('c')).toBeLessThanOrEqual(200);
    queue.shutDown();
  });

  it('resolves waiting workers with undefined on shutdown', async () => {
    const queue = new WorkQueue();
    const waiting = queue.get();
    queue.addAfter('Wallet/a/dropped', 10);
    queue.shutDown();
    expect(await waiting).toBeUndefined();
    expect(await queue.get()).toBeUndefined();
    queue.add('Wallet/a/after');
    expect(queue.length).toBe(0);
  });
});

describe('runWorkers', () => {
  /** Runs one key through a handler that fails `times` times with `error`, and returns the log lines. */
  async function logsOfFailures(error: Error, times: number): Promise<Array<Record<string, unknown>>> {
    const lines: Array<Record<string, unknown>> = [];
    const log = pino({ level: 'debug' }, { write: (raw: string) => void lines.push(JSON.parse(raw) as Record<string, unknown>) });
    const queue = new WorkQueue({ backoff: { baseMs: 1, capMs: 2 } });
    let failuresLeft = times;
    const workers = runWorkers(
      queue,
      async () => {
        if (failuresLeft-- > 0) throw error;
        queue.shutDown();
      },
      { concurrency: 1, log },
    );
    queue.add('ProviderRoute/team-b/openai');
    await workers;
    return lines;
  }

  it('logs the readable part of an API error', async () => {
    // The shape of the Kubernetes client's ApiException: the status code and the raw body.
    const error = Object.assign(new Error('HTTP-Code: 500\nMessage: Unknown API Status Code!\nBody: ...'), {
      code: 500,
      body: JSON.stringify({ kind: 'Status', message: 'etcdserver: request timed out' }),
    });
    const lines = await logsOfFailures(error, 1);
    expect(lines.map((line) => [line['level'], line['msg'], line['reason']])).toEqual([[50, 'reconcile failed; retrying', 'HTTP 500: etcdserver: request timed out']]);
  });

  it('logs a ledger outage once per key without a stack', async () => {
    const lines = await logsOfFailures(new LedgerUnavailableError('ledger state for wallet team-b/app failed because Redis at 127.0.0.1:6379 is unavailable'), 3);
    expect(lines.map((line) => [line['level'], line['msg'], line['failures']])).toEqual([
      [30, 'reconcile waits for the ledger; retrying', 1],
      [20, 'reconcile waits for the ledger; retrying', 2],
      [20, 'reconcile waits for the ledger; retrying', 3],
    ]);
    expect(lines.every((line) => line['err'] === undefined)).toBe(true);
  });

  it('retries a failing key with backoff, then forgets it', async () => {
    const queue = new WorkQueue({ backoff: { baseMs: 5, capMs: 20 } });
    const calls: string[] = [];
    let failuresLeft = 2;
    const outcomes: string[] = [];
    const workers = runWorkers(
      queue,
      async (key) => {
        calls.push(key);
        if (failuresLeft > 0) {
          failuresLeft -= 1;
          throw new Error('ledger unavailable');
        }
        queue.shutDown();
      },
      { concurrency: 1, log: silent, onResult: (_key, outcome) => outcomes.push(outcome) },
    );
    queue.add('Wallet/a/flaky');
    await workers;
    expect(calls).toEqual(['Wallet/a/flaky', 'Wallet/a/flaky', 'Wallet/a/flaky']);
    expect(outcomes).toEqual(['error', 'error', 'success']);
    expect(queue.failures('Wallet/a/flaky')).toBe(0);
  });

  it('requeues a key after the delay the handler asks for', async () => {
    const queue = new WorkQueue();
    const seen: string[] = [];
    const workers = runWorkers(
      queue,
      async (key) => {
        seen.push(key);
        if (seen.length === 2) {
          queue.shutDown();
          return undefined;
        }
        return { requeueAfterMs: 50 };
      },
      { concurrency: 2, log: silent },
    );
    queue.add('ProviderRoute/a/openai');
    await workers;
    expect(seen).toHaveLength(2);
  });

  it('never runs one key on two workers at once', async () => {
    const queue = new WorkQueue();
    let running = 0;
    let maxRunning = 0;
    let calls = 0;
    const workers = runWorkers(
      queue,
      async (key) => {
        running += 1;
        maxRunning = Math.max(maxRunning, running);
        calls += 1;
        if (calls === 1) queue.add(key);
        await new Promise((resolve) => setTimeout(resolve, 20));
        running -= 1;
        if (calls === 2) queue.shutDown();
      },
      { concurrency: 4, log: silent },
    );
    queue.add('Wallet/a/one');
    await workers;
    expect(calls).toBe(2);
    expect(maxRunning).toBe(1);
  });
});
