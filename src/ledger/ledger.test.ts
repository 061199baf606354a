import net from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { findFreePort } from '../../test/support/processes.ts';
import { startRedis } from '../../test/support/redis.ts';
import type { RunningRedis } from '../../test/support/redis.ts';
import { describeLedgerContract } from './ledger.contract.ts';
import type { HoldRequest, ReserveResult } from './ledger.ts';
import { LedgerTimeoutError, LedgerUnavailableError } from './ledger.ts';
import { MemoryLedger } from './memory.ts';
import { RedisLedger, describeConnectionError, walletKeys } from './redis.ts';

let redis: RunningRedis;

beforeAll(async () => {
  redis = await startRedis();
});

afterAll(async () => {
  await redis?.stop();
});

describeLedgerContract('MemoryLedger', async (options) => new MemoryLedger(options));
describeLedgerContract('RedisLedger', async (options) => new RedisLedger(redis.url, options));

const hold = (amount: bigint): HoldRequest => ({ fixed: amount, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'fp' });

describe('MemoryLedger with a bounded log', () => {
  it('folds the older half into the checkpoint', async () => {
    const ledger = new MemoryLedger({ maxLogEntries: 10 });
    const wallet = { namespace: 'bounded', name: 'log' };
    await ledger.credit(wallet, 'g', 1_000_000n);
    for (let i = 0; i < 25; i++) {
      await ledger.reserve(wallet, `r-${i}`, hold(100n));
      await ledger.commit(wallet, `r-${i}`, { charged: 70n, providerCost: 50n, model: 'm', route: 'r', tokens: { input: 1 }, estimated: false });
    }

    const entries: string[] = [];
    for await (const entry of ledger.entries(wallet)) entries.push(entry.id);
    expect(entries.length).toBeGreaterThan(0);
    expect(entries.length).toBeLessThanOrEqual(10);
    const verified = await ledger.verify(wallet);
    expect(verified).toMatchObject({ ok: true, granted: 1_000_000n, spent: 25n * 70n, expired: 0n, entries: 26, problems: [] });
    expect(verified.checkpoint?.entries).toBe(26 - entries.length);
    expect(verified.checkpoint?.providerCost).toBe(BigInt(verified.checkpoint!.entries - 1) * 50n);
    expect((await ledger.state(wallet)).balance).toBe(1_000_000n - 25n * 70n);
  });

  it('rejects a bound below 2', () => {
    expect(() => new MemoryLedger({ maxLogEntries: 1 })).toThrow('invalid maxLogEntries 1: use a whole number of at least 2');
  });
});

describe('RedisLedger on a real redis-server', () => {
  let client: Redis;
  let ledger: RedisLedger;

  beforeAll(() => {
    client = new Redis(redis.url);
    ledger = new RedisLedger(client);
  });

  afterAll(async () => {
    await ledger.quit();
    await client.quit();
  });

  it('keeps all keys of a wallet under one hash tag', async () => {
    const wallet = { namespace: 'tags', name: 'alpha' };
    await ledger.credit(wallet, 'g', 1000n);
    await ledger.reserve(wallet, 'open', hold(100n));
    await ledger.reserve(wallet, 'done', hold(100n));
    await ledger.commit(wallet, 'done', { charged: 5n, providerCost: 1n, model: 'm', route: 'r', tokens: {}, estimated: false });

    const keys = (await client.keys('*tags/alpha*')).sort();
    expect(keys).toEqual([
      '{w:tags/alpha}:acct',
      '{w:tags/alpha}:done',
      '{w:tags/alpha}:grants',
      '{w:tags/alpha}:hexp',
      '{w:tags/alpha}:holds',
      '{w:tags/alpha}:log',
    ]);
    expect(await client.ttl('{w:tags/alpha}:done')).toBe(-1);
  });

  it('writes stream entries with decimal amounts', async () => {
    const wallet = { namespace: 'stream', name: 'entries' };
    await ledger.credit(wallet, 'g-1', 10_000_000_000n, { reason: 'trial' });
    await ledger.reserve(wallet, 'req-1', hold(4_000_000n));
    await ledger.commit(wallet, 'req-1', {
      charged: 120n,
      providerCost: 100n,
      model: 'gpt-4o-mini',
      route: 'openai-main',
      tokens: { input: 12, output: 3 },
      estimated: true,
    });

    const entries = await client.xrange('{w:stream/entries}:log', '-', '+');
    expect(entries.map(([, fields]) => fields)).toEqual([
      ['type', 'grant', 'id', 'g-1', 'amount', '10000000000', 'reason', 'trial'],
      [
        'type', 'debit', 'id', 'req-1', 'amount', '120', 'charged', '120', 'providerCost', '100',
        'model', 'gpt-4o-mini', 'route', 'openai-main', 'tokens', '{"input":12,"output":3}', 'estimated', '1',
      ],
    ]);
  });

  it('verify reports a tampered total', async () => {
    const wallet = { namespace: 'verify', name: 'tampered' };
    await ledger.credit(wallet, 'g', 1000n);
    await client.hincrby('{w:verify/tampered}:acct', 'spent', 7);

    const verify = await ledger.verify(wallet);
    expect(verify.ok).toBe(false);
    expect(verify.problems).toEqual(['wallet verify/tampered: stored spent is 7 but the sum of debit entries is 0']);
  });

  it('reloads its scripts after SCRIPT FLUSH', async () => {
    const wallet = { namespace: 'scripts', name: 'flushed' };
    await ledger.credit(wallet, 'g', 1000n);
    await client.script('FLUSH');

    expect(await ledger.reserve(wallet, 'req', hold(400n))).toEqual({ status: 'reserved', amount: 400n, units: 0, replayed: false });
  });

  it('leaves a caller-owned client open on quit', async () => {
    const owned = new RedisLedger(client);
    await owned.quit();
    expect(await client.ping()).toBe('PONG');
  });

  it('admits exactly 37 of 200 reserves over four connections', async () => {
    const wallet = { namespace: 'concurrency', name: 'four-connections' };
    const ledgers = Array.from({ length: 4 }, () => new RedisLedger(redis.url));
    try {
      await ledgers[0]!.credit(wallet, 'g', 37n * 1_000_000n + 999_999n);

      const results: ReserveResult[] = await Promise.all(
        Array.from({ length: 200 }, (_, i) => ledgers[i % 4]!.reserve(wallet, `c-${i}`, hold(1_000_000n))),
      );

      expect(results.filter((result) => result.status === 'reserved')).toHaveLength(37);
      expect(results.filter((result) => result.status === 'insufficient_funds')).toHaveLength(163);
      expect((await ledgers[1]!.state(wallet)).reserved).toBe(37_000_000n);
    } finally {
      await Promise.all(ledgers.map((each) => each.quit()));
    }
  });

  it('rejects a wallet name with braces', () => {
    expect(() => walletKeys({ namespace: 'ns', name: 'a}b' })).toThrow(RangeError);
  });
});

/** Returns the error a ledger call raised, or fails the test when the call succeeded. */
async function failure(call: Promise<unknown>): Promise<Error> {
  const outcome = await call.then(
    () => undefined,
    (error: unknown) => error,
  );
  if (!(outcome instanceof Error)) throw new Error(`expected the ledger call to fail, but it returned or raised ${String(outcome)}`);
  return outcome;
}

/** Returns the ledger's error message for an outage of the Redis server at 127.0.0.1:`port`. */
/** Waits 100 ms, then reads the wallet's state, or returns undefined when the ledger fails. */
async function stateAfterPause(ledger: RedisLedger, wallet: { namespace: string; name: string }) {
  await new Promise((resolve) => setTimeout(resolve, 100));
  return ledger.state(wallet).catch(() => undefined);
}

function outageMessage(operation: string, wallet: string, port: number, reason: string): string {
  return `ledger ${operation} for wallet ${wallet} failed because Redis at 127.0.0.1:${port} is unavailable: ${reason}. Check that Redis is running and reachable there.`;
}

/**
 * A TCP relay on a loopback port to a Redis server, which a test can close
 * and open again on the same port to cut and restore the connection without
 * restarting Redis.
 */
class Relay {
  readonly #targetPort: number;
  readonly #sockets = new Set<net.Socket>();
  #server: net.Server | undefined;
  port = 0;
  /** Delay before the relay passes each reply from Redis on, in milliseconds. */
  replyDelayMs = 0;

  constructor(targetPort: number) {
    this.#targetPort = targetPort;
  }

  /** Listens on `port` (0 picks a free one the first time) and forwards each connection to the target. */
  async open(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.#targetPort, '127.0.0.1');
      for (const socket of [client, upstream]) {
        this.#sockets.add(socket);
        socket.on('close', () => this.#sockets.delete(socket));
        socket.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      this.#relayReplies(upstream, client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', resolve);
    });
    this.port = (server.address() as net.AddressInfo).port;
    this.#server = server;
  }

  /**
   * Passes each reply on after replyDelayMs. Replies keep their order when
   * the delay changes, as they would on a slow network.
   */
  #relayReplies(upstream: net.Socket, client: net.Socket): void {
    const queue: { dueMs: number; chunk: Buffer }[] = [];
    let timer: NodeJS.Timeout | undefined;
    let ended = false;
    const deliver = () => {
      timer = undefined;
      while (queue.length > 0 && queue[0]!.dueMs <= Date.now()) client.write(queue.shift()!.chunk);
      if (queue.length > 0) timer = setTimeout(deliver, queue[0]!.dueMs - Date.now());
      else if (ended) client.end();
    };
    upstream.on('data', (chunk: Buffer) => {
      queue.push({ dueMs: Math.max(queue.at(-1)?.dueMs ?? 0, Date.now() + this.replyDelayMs), chunk });
      if (timer === undefined) deliver();
    });
    // Redis closing its side, as after QUIT, closes the client's side once the replies before it are delivered.
    upstream.on('end', () => {
      ended = true;
      if (timer === undefined) deliver();
    });
  }

  /**
   * Stops relaying on the open connections without closing them, like a
   * network that drops every packet: the client's connection stays up and
   * nothing comes back. New connections are relayed as before.
   */
  freeze(): void {
    for (const socket of this.#sockets) {
      socket.unpipe();
      socket.removeAllListeners('data');
      socket.on('data', () => {});
    }
  }

  /** Stops listening and drops every relayed connection. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    for (const socket of this.#sockets) socket.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

describe('RedisLedger on a server that stops answering', () => {
  it('operations while Redis is paused', { timeout: 30_000 }, async () => {
    const server = await startRedis();
    const ledger = new RedisLedger(server.url, { timeoutMs: 200 });
    const wallet = { namespace: 'stalled', name: 'w' };
    try {
      await ledger.credit(wallet, 'g', 1000n);
      server.pause();

      const [reserve, state] = await Promise.all([failure(ledger.reserve(wallet, 'late', hold(300n))), failure(ledger.state(wallet))]);
      for (const [error, operation] of [[reserve, 'reserve'], [state, 'state']] as const) {
        expect(error).toBeInstanceOf(LedgerTimeoutError);
        expect(error).toBeInstanceOf(LedgerUnavailableError);
        expect(error.message).toBe(
          `ledger ${operation} for wallet stalled/w got no answer from Redis at 127.0.0.1:${server.port} within 200 ms. ` +
            'Check that Redis is running, reachable and not blocked by a long command or a persistence fork; ' +
            'the operation may still run when Redis catches up, which the ledger tolerates (its operations are idempotent)',
        );
      }

      // The reserve that timed out runs when Redis catches up, before the commands sent after it, but after its
      // deadline, so it places no hold: the release finds nothing, and the wallet has nothing reserved.
      const release = ledger.release(wallet, 'late');
      server.resume();
      expect(await release).toEqual({ status: 'not_found' });
      expect(await ledger.state(wallet)).toMatchObject({ balance: 1000n, reserved: 0n, holds: 0, spent: 0n });
      expect(await ledger.reserve(wallet, 'late', hold(300n))).toEqual({ status: 'reserved', amount: 300n, units: 0, replayed: false });
    } finally {
      server.resume();
      await ledger.quit();
      await server.stop();
    }
  });

  it('a first call while Redis is paused', { timeout: 30_000 }, async () => {
    const server = await startRedis();
    const ledger = new RedisLedger(server.url, { timeoutMs: 200 });
    const wallet = { namespace: 'stalled', name: 'first' };
    try {
      // Let the connection become ready without any ledger call, so that the first one is the check of the server's Lua.
      for (let attempt = 0; attempt < 50; attempt += 1) await new Promise((resolve) => setTimeout(resolve, 20));
      server.pause();
      // Five timeouts in a row make the ledger drop the silent connection; the next call fails while it reconnects.
      for (let call = 0; call < 5; call += 1) expect(await failure(ledger.state(wallet))).toBeInstanceOf(LedgerTimeoutError);
      expect(await failure(ledger.state(wallet))).toBeInstanceOf(LedgerUnavailableError);
      server.resume();

      let state = await ledger.state(wallet).catch(() => undefined);
      for (let attempt = 0; state === undefined && attempt < 50; attempt += 1) state = await stateAfterPause(ledger, wallet);
      expect(state).toMatchObject({ granted: 0n, balance: 0n, reserved: 0n });
      expect(await ledger.credit(wallet, 'g', 500n)).toEqual({ status: 'credited', replayed: false, balance: 500n, amount: 500n });
    } finally {
      server.resume();
      await ledger.quit();
      await server.stop();
    }
  });

  it('a timeout outside 10 ms to 10 minutes', () => {
    for (const timeoutMs of [5, 600_001, 1.5, -1]) {
      expect(() => new RedisLedger(redis.url, { timeoutMs }), String(timeoutMs)).toThrow(
        `invalid ledger timeout "${timeoutMs}ms": use a duration from 10ms to 10m, such as 2s, or 0s for no limit`,
      );
    }
  });
});

describe('RedisLedger on a connection that goes silent', () => {
  it('a relay that drops everything on the open connection', { timeout: 30_000 }, async () => {
    const server = await startRedis();
    const relay = new Relay(server.port);
    const wallet = { namespace: 'silent', name: 'w' };
    let ledger: RedisLedger | undefined;
    try {
      await relay.open();
      ledger = new RedisLedger(`redis://127.0.0.1:${relay.port}`, { timeoutMs: 200 });
      await ledger.credit(wallet, 'g', 1000n);

      relay.freeze();
      expect(await failure(ledger.state(wallet))).toBeInstanceOf(LedgerTimeoutError);

      // After five timeouts of silence the client drops the connection and opens a new one through the relay.
      let state = await ledger.state(wallet).catch(() => undefined);
      for (let attempt = 0; state === undefined && attempt < 100; attempt += 1) state = await stateAfterPause(ledger, wallet);
      expect(state).toMatchObject({ granted: 1000n, balance: 1000n });
    } finally {
      await ledger?.quit();
      await relay.close();
      await server.stop();
    }
  });
});

describe('RedisLedger on a connection whose replies come late', () => {
  it('releases a hold placed after its timeout', { timeout: 30_000 }, async () => {
    const server = await startRedis();
    const relay = new Relay(server.port);
    const wallet = { namespace: 'slow', name: 'w' };
    const released: object[] = [];
    const warnings: object[] = [];
    const logger = {
      info: (details: object) => released.push(details),
      warn: (details: object) => warnings.push(details),
    };
    let ledger: RedisLedger | undefined;
    try {
      await relay.open();
      ledger = new RedisLedger(`redis://127.0.0.1:${relay.port}`, { timeoutMs: 200, logger });
      await ledger.credit(wallet, 'g', 1000n);
      expect(await ledger.reserve(wallet, 'in-progress', hold(300n))).toMatchObject({ status: 'reserved', replayed: false });

      // Redis runs both reserves at once, but their replies come after the timeout: the first places a hold, and
      // the second, a retry of the request in progress, finds that request's hold.
      relay.replyDelayMs = 400;
      const [late, retry] = await Promise.all([
        failure(ledger.reserve(wallet, 'late', hold(200n))),
        failure(ledger.reserve(wallet, 'in-progress', hold(300n))),
      ]);
      expect(late).toBeInstanceOf(LedgerTimeoutError);
      expect(retry).toBeInstanceOf(LedgerTimeoutError);
      relay.replyDelayMs = 0;

      for (let attempt = 0; released.length === 0 && attempt < 100; attempt += 1) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(released).toEqual([{ wallet: 'slow/w', requestId: 'late', amount: '200', release: 'released' }]);
      expect(warnings).toEqual([]);
      // Only the request in progress keeps its hold, and the request that timed out can be sent again under its id.
      expect(await ledger.state(wallet)).toMatchObject({ balance: 1000n, reserved: 300n, holds: 1 });
      expect(await ledger.reserve(wallet, 'late', hold(200n))).toEqual({ status: 'reserved', amount: 200n, units: 0, replayed: false });
    } finally {
      await ledger?.quit();
      await relay.close();
      await server.stop();
    }
  });
});

describe('RedisLedger quitting while a reply is late', () => {
  it('releases the hold before it quits', { timeout: 30_000 }, async () => {
    const server = await startRedis();
    const relay = new Relay(server.port);
    const wallet = { namespace: 'slow', name: 'quitting' };
    const warnings: object[] = [];
    const logger = { info: () => {}, warn: (details: object) => warnings.push(details) };
    const observer = new RedisLedger(server.url);
    try {
      await relay.open();
      const ledger = new RedisLedger(`redis://127.0.0.1:${relay.port}`, { timeoutMs: 200, logger });
      await ledger.credit(wallet, 'g', 1000n);
      // The first reserve reads the server's clock, so this one makes the reserve below a single round trip.
      await ledger.reserve(wallet, 'first', hold(100n));
      await ledger.release(wallet, 'first');

      relay.replyDelayMs = 300;
      expect(await failure(ledger.reserve(wallet, 'late', hold(300n)))).toBeInstanceOf(LedgerTimeoutError);
      relay.replyDelayMs = 0;
      // The process stops before the reply arrives, as a sidecar that gets SIGTERM during a slow moment.
      await ledger.quit();

      expect(warnings).toEqual([]);
      expect(await observer.state(wallet)).toMatchObject({ balance: 1000n, reserved: 0n, holds: 0 });
    } finally {
      await observer.quit();
      await relay.close();
      await server.stop();
    }
  });
});

describe('RedisLedger without a server', () => {
  it('raises LedgerUnavailableError after Redis stops', { timeout: 30_000 }, async () => {
    const server = await startRedis();
    const warnings: string[] = [];
    const logger = { warn: (_details: object, message: string) => warnings.push(message), info: () => {} };
    const ledger = new RedisLedger(server.url, { logger });
    const wallet = { namespace: 'outage', name: 'w' };
    try {
      await ledger.credit(wallet, 'g', 1000n);
      await server.stop();

      // A call fails at once, without waiting for the reconnection attempt.
      const error = await failure(ledger.reserve(wallet, 'req', hold(10n)));
      expect(error).toBeInstanceOf(LedgerUnavailableError);
      expect(error.message).toBe(outageMessage('reserve', 'outage/w', server.port, 'the connection is down and the client is reconnecting'));
      expect((error.cause as Error).message).toBe("Stream isn't writeable and enableOfflineQueue options is false");

      // Once a reconnection attempt is refused, calls name the refusal.
      for (let attempt = 0; warnings.length === 0 && attempt < 100; attempt += 1) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(warnings).toEqual(['ledger lost its Redis connection; ledger operations fail until it reconnects']);
      const refused = await failure(ledger.reserve(wallet, 'req', hold(10n)));
      expect(refused.message).toBe(outageMessage('reserve', 'outage/w', server.port, `connect ECONNREFUSED 127.0.0.1:${server.port}`));
    } finally {
      await ledger.quit();
      await server.stop();
    }
  });

  it('names refusal on first connection', { timeout: 30_000 }, async () => {
    const port = await findFreePort();
    const ledger = new RedisLedger(`redis://127.0.0.1:${port}`);
    try {
      // The first calls also run the ledger's one-time check of the server's
      // Lua, and each error names its own wallet and operation.
      const [credit, state] = await Promise.all([
        failure(ledger.credit({ namespace: 'never', name: 'a' }, 'g', 1n)),
        failure(ledger.state({ namespace: 'never', name: 'b' })),
      ]);
      const refused = `connect ECONNREFUSED 127.0.0.1:${port}`;
      expect(credit).toBeInstanceOf(LedgerUnavailableError);
      expect(credit.message).toBe(outageMessage('credit', 'never/a', port, refused));
      expect(state).toBeInstanceOf(LedgerUnavailableError);
      expect(state.message).toBe(outageMessage('state', 'never/b', port, refused));
    } finally {
      await ledger.quit();
    }
  });

  it('keeps no password in the message', { timeout: 30_000 }, async () => {
    const port = await findFreePort();
    const ledger = new RedisLedger(`redis://ledger:s3cret-pass@127.0.0.1:${port}/0`);
    try {
      const error = await failure(ledger.state({ namespace: 'secret', name: 'w' }));
      expect(error.message).toBe(outageMessage('state', 'secret/w', port, `connect ECONNREFUSED 127.0.0.1:${port}`));
      expect(error.message).not.toContain('s3cret-pass');
    } finally {
      await ledger.quit();
    }
  });

  it('logs a first connection that fails', { timeout: 30_000 }, async () => {
    const server = await startRedis();
    const relay = new Relay(server.port);
    const logged: string[] = [];
    const logger = { warn: (_details: object, message: string) => logged.push(message), info: (_details: object, message: string) => logged.push(message) };
    const wallet = { namespace: 'outage', name: 'late-start' };
    let ledger: RedisLedger | undefined;
    try {
      // The relay's port is free until the relay opens, so the first attempts are refused.
      relay.port = await findFreePort();
      ledger = new RedisLedger(`redis://127.0.0.1:${relay.port}`, { logger });
      for (let attempt = 0; logged.length === 0 && attempt < 100; attempt += 1) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(logged).toEqual(['ledger cannot connect to Redis; ledger operations fail until it connects']);

      await relay.open();
      let state = await ledger.state(wallet).catch(() => undefined);
      for (let attempt = 0; state === undefined && attempt < 100; attempt += 1) state = await stateAfterPause(ledger, wallet);
      expect(state?.granted).toBe(0n);
      expect(logged).toEqual(['ledger cannot connect to Redis; ledger operations fail until it connects', 'ledger connected to Redis']);
    } finally {
      await ledger?.quit();
      await relay.close();
      await server.stop();
    }
  });

  it('forgets the connection error after reconnecting', { timeout: 30_000 }, async () => {
    const server = await startRedis();
    const relay = new Relay(server.port);
    const logged: string[] = [];
    const logger = { warn: (_details: object, message: string) => logged.push(message), info: (_details: object, message: string) => logged.push(message) };
    const wallet = { namespace: 'outage', name: 'relayed' };
    let ledger: RedisLedger | undefined;
    try {
      await relay.open();
      ledger = new RedisLedger(`redis://127.0.0.1:${relay.port}`, { logger });
      await ledger.credit(wallet, 'g', 1000n);

      await relay.close();
      const cut = await failure(ledger.state(wallet));
      expect(cut.message).toBe(outageMessage('state', 'outage/relayed', relay.port, `connect ECONNREFUSED 127.0.0.1:${relay.port}`));

      // ioredis keeps reconnecting with a growing delay, and calls fail at
      // once until a reconnection attempt succeeds.
      await relay.open();
      let state = await ledger.state(wallet).catch(() => undefined);
      for (let attempt = 0; state === undefined && attempt < 100; attempt += 1) state = await stateAfterPause(ledger, wallet);
      expect(state?.granted).toBe(1000n);
      expect(logged).toEqual(['ledger lost its Redis connection; ledger operations fail until it reconnects', 'ledger reconnected to Redis']);

      // After quit the client fails calls without a connection error, so the
      // message falls back to the client's own reason.
      await ledger.quit();
      const closed = await failure(ledger.state(wallet));
      expect(closed.message).toBe(outageMessage('state', 'outage/relayed', relay.port, 'Connection is closed'));
    } finally {
      await ledger?.quit();
      await relay.close();
      await server.stop();
    }
  });
});

describe('describeConnectionError', () => {
  it('joins the errors of an AggregateError', async () => {
    const port = await findFreePort();
    // Node tries both addresses of a host name (autoSelectFamily) and fails
    // with one AggregateError, whose own message is empty. The lookup
    // returns the two loopback addresses, so no DNS server is asked.
    const socket = net.connect({
      host: 'two-addresses',
      port,
      autoSelectFamily: true,
      lookup: (_host, _options, callback) => {
        (callback as (error: null, addresses: Array<{ address: string; family: number }>) => void)(null, [
          { address: '127.0.0.1', family: 4 },
          { address: '::1', family: 6 },
        ]);
      },
    });
    const error = await new Promise<Error>((resolve) => socket.once('error', resolve));

    expect(error).toBeInstanceOf(AggregateError);
    expect(error.message).toBe('');
    expect(describeConnectionError(error)).toBe(`connect ECONNREFUSED 127.0.0.1:${port}, connect ECONNREFUSED ::1:${port}`);
  });

  it('keeps a plain message', () => {
    expect(describeConnectionError(new Error('getaddrinfo ENOTFOUND redis.tollgate'))).toBe('getaddrinfo ENOTFOUND redis.tollgate');
  });

  it('falls back to the error code', () => {
    const error = Object.assign(new AggregateError([], ''), { code: 'ECONNREFUSED' });
    expect(describeConnectionError(error)).toBe('ECONNREFUSED');
  });
});
