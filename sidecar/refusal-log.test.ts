/**
 * The sidecar's warnings for requests refused while the Redis ledger is
 * down: the first refusal of an outage gets a line of its own, and the rest
 * are counted into one summary line per window. A manual clock drives the
 * windows, and a real redis-server is stopped and started again.
 */
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { startRedis, type RunningRedis } from '../test/support/redis.ts';
import { waitFor } from '../test/support/processes.ts';
import { addYaml, emptyResourceSet } from '../src/config/manifests.ts';
import { secretsResolver } from '../src/config/snapshot.ts';
import { RedisLedger } from '../src/ledger/redis.ts';
import { createSidecarMetrics, type SidecarMetrics } from '../src/telemetry/metrics.ts';
import { compileSnapshot, StaticConfig } from './config-source.ts';
import type { RefusalLogClock } from './refusal-log.ts';
import { createSidecar, DEFAULT_SIDECAR_OPTIONS, type Sidecar } from './server.ts';

const WINDOW_MS = 10_000;

/** The refusals below never reach an upstream, so the route points at a loopback port that nothing listens on. */
const MANIFESTS = `
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai }
spec:
  protocol: openai
  baseURL: http://127.0.0.1:9
  models: [small]
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: plan }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        small: { input: "1", output: "2" }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: team }
spec:
  currency: USD
  pricePlanRef: { name: plan }
`;

/** A clock whose time moves only when the test sets it, running the callbacks that fall due. */
class ManualClock implements RefusalLogClock {
  private time = 0;
  private timers: { at: number; callback: () => void }[] = [];

  now(): number {
    return this.time;
  }

  schedule(callback: () => void, delayMs: number): () => void {
    const timer = { at: this.time + delayMs, callback };
    this.timers.push(timer);
    return () => {
      this.timers = this.timers.filter((other) => other !== timer);
    };
  }

  set(time: number): void {
    this.time = time;
    const due = this.timers.filter((timer) => timer.at <= time).sort((a, b) => a.at - b.at);
    this.timers = this.timers.filter((timer) => timer.at > time);
    for (const timer of due) timer.callback();
  }

  pending(): number {
    return this.timers.length;
  }
}

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

interface Setup {
  redis: RunningRedis;
  ledger: RedisLedger;
  sidecar: Sidecar;
  metrics: SidecarMetrics;
  clock: ManualClock;
  lines: LogLine[];
}

const WALLET = { namespace: 'default', name: 'team' };
const FAILED = 'request failed';
const SUMMARY = 'more requests failed; counted, not logged one by one';

let setup: Setup | undefined;

async function start(): Promise<Setup> {
  const redis = await startRedis();
  const ledger = new RedisLedger(redis.url, { timeoutMs: 2000 });
  // One successful call makes the connection ready, so that later calls fail fast once Redis stops.
  await ledger.state(WALLET);

  const resources = emptyResourceSet();
  addYaml(resources, MANIFESTS, 'test manifests');
  const clock = new ManualClock();
  const lines: LogLine[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as LogLine) });
  const metrics = createSidecarMetrics({ defaultMetrics: false });
  const sidecar = createSidecar(
    new StaticConfig(compileSnapshot(resources, secretsResolver(resources))),
    ledger,
    metrics,
    { ...DEFAULT_SIDECAR_OPTIONS, walletPolicy: { defaultWallet: 'default/team', allowWalletHeader: false }, refusalLog: { windowMs: WINDOW_MS, clock } },
    log,
  );
  await sidecar.app.ready();
  setup = { redis, ledger, sidecar, metrics, clock, lines };
  return setup;
}

afterEach(async () => {
  if (!setup) return;
  await setup.sidecar.app.close();
  await setup.sidecar.proxy.close();
  await setup.ledger.quit();
  await setup.redis.stop();
  setup = undefined;
});

/** Sends a chat request with the request id `id` at the clock's `time`, and returns its status and error message. */
async function chatAt(time: number, id: string): Promise<{ status: number; message: string }> {
  setup!.clock.set(time);
  const response = await setup!.sidecar.app.inject({
    method: 'POST',
    url: '/openai/v1/chat/completions',
    headers: { 'content-type': 'application/json', 'x-tollgate-request-id': id },
    payload: JSON.stringify({ model: 'small', max_tokens: 8, messages: [{ role: 'user', content: 'hi' }] }),
  });
  return { status: response.statusCode, message: (JSON.parse(response.body) as { error: { message: string } }).error.message };
}

function linesWith(message: string): LogLine[] {
  return setup!.lines.filter((line) => line.msg === message);
}

async function ledgerErrors(): Promise<number> {
  const { values } = await setup!.metrics.requests.get();
  return values.filter((value) => value.labels['outcome'] === 'ledger_error').reduce((total, value) => total + value.value, 0);
}

describe('refusal log during a ledger outage', () => {
  it('logs the first refusal and a summary per window', async () => {
    const { redis, clock } = await start();
    await redis.stop();

    const refusals = [];
    for (let index = 0; index < 5; index++) refusals.push(await chatAt(index * 1000, `req-${index}`));
    expect(refusals.map((refusal) => refusal.status)).toEqual([503, 503, 503, 503, 503]);

    const failed = linesWith(FAILED);
    expect(failed).toHaveLength(1);
    expect(failed[0]!.level).toBe(40);
    expect(failed[0]!['requestId']).toBe('req-0');
    expect(failed[0]!['wallet']).toBe('default/team');
    expect(failed[0]!['route']).toBe('openai');
    expect(failed[0]!['status']).toBe(503);
    expect(failed[0]!['code']).toBe('ledger_unavailable');
    expect(failed[0]!['reason']).toBe(refusals[0]!.message);
    expect(linesWith(SUMMARY)).toHaveLength(0);
    expect(clock.pending()).toBe(1);

    // The window ends 10 s after the first refusal, and its timer writes the summary.
    clock.set(WINDOW_MS - 1);
    expect(linesWith(SUMMARY)).toHaveLength(0);
    clock.set(WINDOW_MS);
    const summaries = linesWith(SUMMARY);
    expect(summaries).toHaveLength(1);
    expect(summaries[0]!.level).toBe(40);
    expect(summaries[0]!['suppressed']).toBe(4);
    expect(summaries[0]!['code']).toBe('ledger_unavailable');
    expect(summaries[0]!['status']).toBe(503);
    expect(summaries[0]!['reason']).toBe(refusals[4]!.message);
    expect(summaries[0]!['lastRequestId']).toBe('req-4');
    expect(summaries[0]!['lastWallet']).toBe('default/team');
    expect(summaries[0]!['lastRoute']).toBe('openai');
    expect(await ledgerErrors()).toBe(5);
  });

  it('keeps counting while the outage lasts', async () => {
    const { redis, clock } = await start();
    await redis.stop();

    await chatAt(0, 'first');
    await chatAt(5_000, 'second');
    clock.set(10_000);
    // The outage goes on, so the refusals of the next window are counted from its start.
    await chatAt(12_000, 'third');
    await chatAt(19_000, 'fourth');
    expect(linesWith(FAILED)).toHaveLength(1);
    clock.set(20_000);
    expect(linesWith(SUMMARY).map((line) => [line['suppressed'], line['lastRequestId']])).toEqual([
      [1, 'second'],
      [2, 'fourth'],
    ]);

    // The window from 20 s to 30 s had no refusal, so the next one starts a new outage with a line of its own.
    const late = await chatAt(35_000, 'late');
    expect(late.status).toBe(503);
    const failed = linesWith(FAILED);
    expect(failed.map((line) => line['requestId'])).toEqual(['first', 'late']);
    clock.set(60_000);
    expect(linesWith(SUMMARY)).toHaveLength(2);
    expect(await ledgerErrors()).toBe(5);
  });

  it('keeps counting when calls succeed between the refusals', async () => {
    const { redis, ledger, clock } = await start();
    await redis.stop();
    await chatAt(0, 'down-1');
    await chatAt(1_000, 'down-2');

    // The restarted server kept no data, so the wallet has no funds and the next request gets a 402 from the ledger.
    const restarted = await startRedis({ port: redis.port });
    setup!.redis = restarted;
    await waitFor('the ledger to answer again', async () => (await ledger.state(WALLET)) ?? undefined);
    const answered = await chatAt(2_000, 'answered');
    expect(answered.status).toBe(402);

    // A ledger that fails again within the window, as the wallets of a stopped cluster master do, adds to its count.
    await restarted.stop();
    const again = await chatAt(3_000, 'down-3');
    expect(again.status).toBe(503);
    expect(linesWith(FAILED).map((line) => line['requestId'])).toEqual(['down-1']);
    clock.set(10_000);
    expect(linesWith(SUMMARY).map((line) => [line['suppressed'], line['lastRequestId']])).toEqual([[2, 'down-3']]);
    expect(linesWith('request rejected').map((line) => line['code'])).toEqual(['insufficient_funds']);
    expect(await ledgerErrors()).toBe(3);
  });

  it('writes the open summary on close', async () => {
    const { redis, sidecar } = await start();
    await redis.stop();
    for (let index = 0; index < 3; index++) await chatAt(index, `req-${index}`);
    expect(linesWith(SUMMARY)).toHaveLength(0);

    await sidecar.proxy.close();
    expect(linesWith(SUMMARY).map((line) => line['suppressed'])).toEqual([2]);
  });
});
