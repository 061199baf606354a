/**
 * Commits of served calls during a ledger outage. A real redis-server with
 * the append-only file is stopped while a call is in flight and started
 * again on the same port and data. The sidecar queues the commit that fails
 * and commits it at the call's actual cost once Redis is back. A sidecar that
 * stops first logs what it could not commit. A paused redis-server (SIGSTOP)
 * is one that keeps its connections but does not reply, so the sidecar
 * gives up after the ledger timeout, and what runs late changes nothing. Also covers
 * the warning for a charge above its hold. The upstream is a local server
 * whose responses wait until the test releases them, so that Redis goes down
 * at a known point.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { StaticConfig } from '../sidecar/config-source.ts';
import { applyGrants } from '../sidecar/dev.ts';
import { createSidecar, DEFAULT_SIDECAR_OPTIONS, type Sidecar, type SidecarOptions } from '../sidecar/server.ts';
import type { LedgerEntry, WalletKey } from '../src/ledger/ledger.ts';
import { RedisLedger, type RedisLedgerOptions } from '../src/ledger/redis.ts';
import { createSidecarMetrics, type SidecarMetrics } from '../src/telemetry/metrics.ts';
import { compileYaml } from './support/stack.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';

const WALLET: WalletKey = { namespace: 'default', name: 'team' };

/** Builds manifests with a plan at 1 USD per million input tokens and 2 per million output tokens, over a provider cost of 0.15 and 0.60. */
function manifests(upstreamUrl: string, grant: string): string {
  return `
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: gated }
spec:
  protocol: openai
  baseURL: ${upstreamUrl}
  models: [gpt-4o-mini]
  costs:
    gpt-4o-mini: { input: "0.15", output: "0.60" }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: plan }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gpt-4o-mini: { input: "1", output: "2" }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: team }
spec:
  currency: USD
  pricePlanRef: { name: plan }
  grants: [{ id: start, amount: "${grant}" }]
`;
}

/** 20 input tokens at 1000 nano-USD and 10 output tokens at 2000: 40,000 nano-USD charged, within the hold of a call with max_tokens 16. */
const USAGE = { prompt_tokens: 20, completion_tokens: 10, total_tokens: 30 };
const CHARGED = 40_000n;
/** The same tokens at 150 and 600 nano-USD: 9,000 nano-USD. */
const PROVIDER_COST = 9_000n;

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** A call that reached the upstream and waits there until released. */
interface HeldCall {
  release(): void;
}

interface GatedUpstream {
  url: string;
  /** Resolves when the next call reaches the upstream, where a stream has sent its first chunk; rejects after 10 s. */
  nextCall(): Promise<HeldCall>;
  /** How many calls reached the upstream so far. */
  received(): number;
  close(): Promise<void>;
}

/**
 * Starts an OpenAI-compatible upstream. It responds with the usage in the
 * request's x-test-usage header. A stream sends its first chunk at once and
 * the rest after release; a JSON response waits for release.
 */
async function startGatedUpstream(): Promise<GatedUpstream> {
  const arrived: HeldCall[] = [];
  const waiting: ((call: HeldCall) => void)[] = [];
  let received = 0;
  const announce = (call: HeldCall) => {
    received++;
    const waiter = waiting.shift();
    if (waiter) waiter(call);
    else arrived.push(call);
  };

  const server = http.createServer((request, response) => {
    let text = '';
    request.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
    request.on('end', () => {
      const body = JSON.parse(text) as { model: string; stream?: boolean };
      const usage = JSON.parse(String(request.headers['x-test-usage'])) as Record<string, number>;
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      const chunk = (fields: Record<string, unknown>) =>
        `data: ${JSON.stringify({ id: 'chatcmpl-gated', object: 'chat.completion.chunk', created: 1, model: body.model, ...fields })}\n\n`;

      if (body.stream) {
        response.writeHead(200, { 'content-type': 'text/event-stream' });
        response.write(chunk({ choices: [{ index: 0, delta: { role: 'assistant', content: 'Hello' }, finish_reason: null }] }));
        announce({ release });
        void released.then(() => {
          response.write(chunk({ choices: [{ index: 0, delta: { content: ' there' }, finish_reason: 'stop' }] }));
          response.write(chunk({ choices: [], usage }));
          response.end('data: [DONE]\n\n');
        });
        return;
      }
      announce({ release });
      void released.then(() => {
        const completion = {
          id: 'chatcmpl-gated',
          object: 'chat.completion',
          created: 1,
          model: body.model,
          choices: [{ index: 0, message: { role: 'assistant', content: 'Hello there' }, finish_reason: 'stop' }],
          usage,
        };
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(JSON.stringify(completion));
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    nextCall: () => {
      const call = arrived.shift();
      if (call) return Promise.resolve(call);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no call reached the upstream within 10 s')), 10_000);
        waiting.push((next) => {
          clearTimeout(timer);
          resolve(next);
        });
      });
    },
    received: () => received,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

interface Setup {
  url: string;
  redis: RunningRedis;
  ledger: RedisLedger;
  metrics: SidecarMetrics;
  sidecar: Sidecar;
  upstream: GatedUpstream;
  lines: LogLine[];
  /** Starts redis-server again on the port and data of the stopped one. */
  restartRedis(): Promise<void>;
  /** Stops the sidecar as the sidecar's process does: the server, then the proxy, then the ledger's connection. */
  stopSidecar(): Promise<void>;
}

let setup: Setup | undefined;
let cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
  setup = undefined;
});

/** Starts redis-server with the append-only file, the gated upstream and a sidecar on the Redis ledger. */
async function start(grant: string, options: Partial<SidecarOptions> = {}, ledgerOptions: RedisLedgerOptions = {}): Promise<Setup> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-commit-outage-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const redisOptions = { dir, appendonly: true, appendfsync: 'always' as const };
  let redis = await startRedis(redisOptions);
  cleanups.push(() => redis.stop());
  const upstream = await startGatedUpstream();

  const lines: LogLine[] = [];
  const log = pino({ level: 'info' }, { write: (raw: string) => void lines.push(JSON.parse(raw) as LogLine) });
  const ledger = new RedisLedger(redis.url, ledgerOptions);
  const config = new StaticConfig(compileYaml(manifests(upstream.url, grant), 'unused'));
  await applyGrants(ledger, config.current().resources, log);

  const metrics = createSidecarMetrics({ defaultMetrics: false });
  const sidecar = createSidecar(
    config,
    ledger,
    metrics,
    { ...DEFAULT_SIDECAR_OPTIONS, walletPolicy: { defaultWallet: undefined, allowWalletHeader: true }, ...options },
    log,
  );
  const url = await sidecar.app.listen({ host: '127.0.0.1', port: 0 });
  let stopped = false;
  const stopSidecar = async () => {
    if (stopped) return;
    stopped = true;
    await sidecar.app.close();
    await sidecar.proxy.close();
    await ledger.quit();
  };
  cleanups.push(stopSidecar);
  // Closed before the sidecar, so that a call the test left waiting in the upstream ends and does not hold up the sidecar's close.
  cleanups.push(() => upstream.close());

  setup = {
    url,
    get redis() {
      return redis;
    },
    ledger,
    metrics,
    sidecar,
    upstream,
    lines,
    async restartRedis() {
      redis = await startRedis({ ...redisOptions, port: redis.port });
    },
    stopSidecar,
  };
  return setup;
}

function chat(url: string, requestId: string, stream: boolean, usage: Record<string, number> = USAGE): Promise<Response> {
  return fetch(`${url}/gated/v1/chat/completions`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'x-tollgate-wallet': 'team',
      'idempotency-key': requestId,
      'x-test-usage': JSON.stringify(usage),
    },
    body: JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 16, stream, messages: [{ role: 'user', content: 'hello' }] }),
  });
}

/** Returns the value of one series of the sidecar's metrics, such as `tollgate_commits_pending`. */
async function metricValue(metrics: SidecarMetrics, series: string): Promise<string | undefined> {
  const text = await metrics.registry.metrics();
  return text
    .split('\n')
    .find((line) => line.startsWith(`${series} `))
    ?.slice(series.length + 1);
}

const MONEY_SERIES = '{currency="USD",route="gated",model="gpt-4o-mini",namespace="default",wallet="team"}';

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function entriesOf(ledger: RedisLedger): Promise<Record<string, string>[]> {
  const entries: LedgerEntry[] = [];
  for await (const entry of ledger.entries(WALLET)) entries.push(entry);
  return entries.map((entry) => entry.fields);
}

function linesWith(lines: LogLine[], message: string): LogLine[] {
  return lines.filter((line) => line.msg === message);
}

const QUEUED_MESSAGE = 'commit failed because the ledger is unavailable; the call was served, so its commit is queued and retried until the ledger takes it';

describe('commit during a Redis outage', () => {
  it('commits the actual cost after Redis returns', async () => {
    const { url, ledger, metrics, upstream, lines } = await start('1.00', { commitQueue: { initialBackoffMs: 200, maxBackoffMs: 1_000 } });

    const response = await chat(url, 'outage-stream', true);
    expect(response.status).toBe(200);
    const call = await upstream.nextCall();
    await setup!.redis.stop();
    call.release();
    const text = await response.text();
    expect(text).toContain('"content":"Hello"');
    expect(text).toContain('"content":" there"');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);

    expect(await metricValue(metrics, 'tollgate_commits_pending')).toBe('1');
    expect(await metricValue(metrics, 'tollgate_commit_failures_total{route="gated"}')).toBe('1');
    expect(await metricValue(metrics, `tollgate_charged_total${MONEY_SERIES}`)).toBe('0');
    const queued = linesWith(lines, QUEUED_MESSAGE);
    expect(queued).toHaveLength(1);
    expect(queued[0]!['requestId']).toBe('outage-stream');
    expect(queued[0]!['charged']).toBe(String(CHARGED));
    expect(queued[0]!['level']).toBe(40);
    expect(lines.filter((line) => JSON.stringify(line).includes('was not forwarded'))).toEqual([]);
    const settled = linesWith(lines, 'request settled');
    expect(settled.map((line) => [line['committed'], line['commitQueued']])).toEqual([[false, true]]);

    await setup!.restartRedis();
    await waitFor('the commit queue to drain', async () => (await metricValue(metrics, 'tollgate_commits_pending')) === '0');

    const entries = await entriesOf(ledger);
    expect(entries.map((fields) => [fields['type'], fields['id'], fields['amount'], fields['providerCost']])).toEqual([
      ['grant', 'start', '1000000000', undefined],
      ['debit', 'outage-stream', String(CHARGED), String(PROVIDER_COST)],
    ]);
    const state = await ledger.state(WALLET);
    expect(state.spent).toBe(CHARGED);
    expect(state.providerCost).toBe(PROVIDER_COST);
    expect(state.reserved).toBe(0n);
    expect(state.holds).toBe(0);
    expect(state.balance).toBe(1_000_000_000n - CHARGED);
    const verified = await ledger.verify(WALLET);
    expect(verified.problems).toEqual([]);
    expect(verified.ok).toBe(true);
    // No hold is left for the sweeper to charge, even long after the hold would have expired.
    expect(await ledger.sweep(WALLET, Date.now() + 2 * DEFAULT_SIDECAR_OPTIONS.holdTtlSeconds * 1000)).toEqual({ released: 0, charged: 0 });

    expect(await metricValue(metrics, `tollgate_charged_total${MONEY_SERIES}`)).toBe('0.00004');
    expect(await metricValue(metrics, `tollgate_provider_cost_total${MONEY_SERIES}`)).toBe('0.000009');
    const drained = linesWith(lines, 'commit queue drained');
    expect(drained.map((line) => [line['queued'], line['committed'], line['abandoned']])).toEqual([[1, 1, 0]]);
    expect(linesWith(lines, 'ledger commits are failing, so the commits of served calls are queued and retried in the background until the ledger takes them')).toHaveLength(1);
  }, 60_000);

  it('logs a queued commit left at shutdown', async () => {
    const { url, ledger, metrics, upstream, lines } = await start('1.00', { commitQueue: { initialBackoffMs: 200, maxBackoffMs: 200, shutdownFlushMs: 500 } });

    const response = chat(url, 'outage-json', false);
    const call = await upstream.nextCall();
    const held = (await ledger.state(WALLET)).reserved;
    expect(held).toBeGreaterThan(CHARGED);
    await setup!.redis.stop();
    call.release();
    const served = await response;
    expect(served.status).toBe(200);
    expect(served.headers.get('x-tollgate-charged')).toBe('0.00004');
    expect(served.headers.get('x-tollgate-commit')).toBe('queued');
    expect(await metricValue(metrics, 'tollgate_commits_pending')).toBe('1');

    await setup!.stopSidecar();

    const left = linesWith(lines, 'commit not confirmed before the sidecar stopped; unless it still reaches the ledger, the sweeper settles the hold, charging an answered hold in full');
    expect(left).toHaveLength(1);
    expect(left[0]!['level']).toBe(40);
    expect(left[0]!['requestId']).toBe('outage-json');
    expect(left[0]!['wallet']).toBe('default/team');
    expect(left[0]!['charged']).toBe(String(CHARGED));
    expect(left[0]!['providerCost']).toBe(String(PROVIDER_COST));
    expect(left[0]!['held']).toBe(String(held));
    expect(linesWith(lines, 'sidecar stopped with commits the ledger did not confirm; the sweeper settles their holds, charging answered holds in full').map((line) => line['abandoned'])).toEqual([1]);
    const closed = linesWith(lines, 'commit queue closed');
    expect(closed.map((line) => [line['queued'], line['committed'], line['abandoned']])).toEqual([[1, 0, 1]]);
    expect(await metricValue(metrics, 'tollgate_commits_pending')).toBe('0');
    expect(await metricValue(metrics, 'tollgate_commits_abandoned_total{route="gated",reason="shutdown"}')).toBe('1');
    expect(await metricValue(metrics, `tollgate_charged_total${MONEY_SERIES}`)).toBe('0');

    // The hold stays open for the sweeper.
    await setup!.restartRedis();
    const reader = new RedisLedger(setup!.redis.url);
    cleanups.push(() => reader.quit());
    const state = await reader.state(WALLET);
    expect(state.reserved).toBe(held);
    expect(state.spent).toBe(0n);
  }, 60_000);
});

describe('a Redis that stops answering', () => {
  it('a reserve while Redis is paused', async () => {
    const { url, ledger, metrics, upstream, lines } = await start('1.00', {}, { timeoutMs: 300 });
    const port = setup!.redis.port;

    setup!.redis.pause();
    const refused = await chat(url, 'stalled-reserve', false);
    expect(refused.status).toBe(503);
    const body = (await refused.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('ledger_unavailable');
    expect(body.error.message).toBe(
      'the billing ledger is unavailable, so the request was not forwarded; retry shortly ' +
        `(ledger reserve for wallet default/team got no answer from Redis at 127.0.0.1:${port} within 300 ms. ` +
        'Check that Redis is running, reachable and not blocked by a long command or a persistence fork; ' +
        'the operation may still run when Redis catches up, which the ledger tolerates (its operations are idempotent))',
    );
    expect(upstream.received()).toBe(0);
    // One warning per refused request, without a stack.
    const failed = linesWith(lines, 'request failed');
    expect(failed.map((line) => [line.level, line['code'], line['requestId'], line['wallet'], line['err']])).toEqual([
      [40, 'ledger_unavailable', 'stalled-reserve', 'default/team', undefined],
    ]);

    // The reserve runs when Redis resumes, after its deadline, so it places no hold.
    setup!.redis.resume();
    expect(await ledger.state(WALLET)).toMatchObject({ balance: 1_000_000_000n, reserved: 0n, holds: 0, spent: 0n });

    // A retry under the same request id is served and charged once.
    const retry = chat(url, 'stalled-reserve', false);
    (await upstream.nextCall()).release();
    expect((await retry).status).toBe(200);
    expect((await entriesOf(ledger)).map((fields) => [fields['type'], fields['id'], fields['amount']])).toEqual([
      ['grant', 'start', '1000000000'],
      ['debit', 'stalled-reserve', String(CHARGED)],
    ]);
    expect(await ledger.state(WALLET)).toMatchObject({ balance: 1_000_000_000n - CHARGED, reserved: 0n, holds: 0, spent: CHARGED });
    expect(await metricValue(metrics, 'tollgate_requests_total{route="gated",model="gpt-4o-mini",outcome="ledger_error"}')).toBe('1');
  }, 60_000);

  it('a repeated request id while Redis is paused', async () => {
    const { url, ledger, upstream } = await start('1.00', {}, { timeoutMs: 300 });

    const first = chat(url, 'repeated-id', false);
    const call = await upstream.nextCall();
    setup!.redis.pause();
    const repeat = await chat(url, 'repeated-id', false);
    expect(repeat.status).toBe(503);
    setup!.redis.resume();

    // The repeat's reserve ran after its deadline and changed nothing, so the first request keeps its hold.
    call.release();
    expect((await first).status).toBe(200);
    expect((await entriesOf(ledger)).map((fields) => [fields['type'], fields['id'], fields['amount']])).toEqual([
      ['grant', 'start', '1000000000'],
      ['debit', 'repeated-id', String(CHARGED)],
    ]);
    expect(await ledger.state(WALLET)).toMatchObject({ balance: 1_000_000_000n - CHARGED, reserved: 0n, holds: 0, spent: CHARGED });
  }, 60_000);

  it('a commit while Redis is paused', async () => {
    const { url, ledger, metrics, upstream, lines } = await start('1.00', { commitQueue: { initialBackoffMs: 200, maxBackoffMs: 1_000 } }, { timeoutMs: 300 });

    const response = chat(url, 'stalled-commit', false);
    const call = await upstream.nextCall();
    setup!.redis.pause();
    call.release();
    expect((await response).status).toBe(200);

    const queued = linesWith(lines, QUEUED_MESSAGE);
    expect(queued.map((line) => [line['requestId'], line['attempts'], (line['err'] as { type: string }).type])).toEqual([['stalled-commit', 1, 'LedgerTimeoutError']]);
    expect(await metricValue(metrics, 'tollgate_commits_pending')).toBe('1');

    setup!.redis.resume();
    await waitFor('the commit queue to drain', async () => (await metricValue(metrics, 'tollgate_commits_pending')) === '0');
    expect((await entriesOf(ledger)).map((fields) => [fields['type'], fields['id'], fields['amount'], fields['providerCost']])).toEqual([
      ['grant', 'start', '1000000000', undefined],
      ['debit', 'stalled-commit', String(CHARGED), String(PROVIDER_COST)],
    ]);
    expect(await ledger.state(WALLET)).toMatchObject({ balance: 1_000_000_000n - CHARGED, reserved: 0n, holds: 0, spent: CHARGED, providerCost: PROVIDER_COST });
    expect((await ledger.verify(WALLET)).ok).toBe(true);
  }, 60_000);
});

describe('charge above its hold', () => {
  it('warns and leaves the wallet below zero', async () => {
    const { url, ledger, metrics, upstream, lines } = await start('0.01');
    const warningMessage = 'charge exceeds its hold; the wallet is debited in full, so it can go below zero and then rejects calls until it is topped up';

    const within = chat(url, 'within-hold', false);
    (await upstream.nextCall()).release();
    const committed = await within;
    expect(committed.status).toBe(200);
    expect(committed.headers.get('x-tollgate-commit')).toBeNull();
    expect(linesWith(lines, 'request settled').map((line) => line['charged'])).toEqual([String(CHARGED)]);
    expect(lines.filter((line) => line.msg.startsWith('charge exceeds'))).toEqual([]);

    // 100 input tokens at 1000 nano-USD and 100,000 output tokens at 2000, far above the 16 output tokens held.
    const usage = { prompt_tokens: 100, completion_tokens: 100_000, total_tokens: 100_100 };
    const charged = 200_100_000n;
    const response = chat(url, 'over-hold', false, usage);
    const call = await upstream.nextCall();
    const held = (await ledger.state(WALLET)).reserved;
    call.release();
    expect((await response).status).toBe(200);

    const warnings = linesWith(lines, warningMessage);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!['level']).toBe(40);
    expect(warnings[0]!['requestId']).toBe('over-hold');
    expect(warnings[0]!['wallet']).toBe('default/team');
    expect(warnings[0]!['held']).toBe(String(held));
    expect(warnings[0]!['charged']).toBe(String(charged));
    expect(held).toBeLessThan(charged);

    const state = await ledger.state(WALLET);
    expect(state.balance).toBe(10_000_000n - CHARGED - charged);
    expect(await metricValue(metrics, `tollgate_charged_total${MONEY_SERIES}`)).toBe('0.20014');

    const rejected = await chat(url, 'after-over-hold', false);
    expect(rejected.status).toBe(402);
    expect(((await rejected.json()) as { error: { code: string } }).error.code).toBe('insufficient_funds');
  }, 60_000);
});
