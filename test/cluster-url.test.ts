/**
 * The ledger on a real three-master Redis Cluster, opened from a
 * `redis+cluster://` URL as the sidecar, the operator, `tollgate dev` and
 * `tollgate ledger` open it. The tests cover every ledger operation on
 * wallets whose slots live on different masters, credentials in the URL,
 * further seeds, and `tollgate dev` serving the official openai client.
 * They end with the errors and the reconnection when masters fail. All
 * tests share one cluster.
 */

import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { LedgerUnavailableError } from '../src/ledger/ledger.ts';
import type { HoldRequest, WalletKey } from '../src/ledger/ledger.ts';
import { keySlot, RedisLedger, walletKeys } from '../src/ledger/redis.ts';
import type { ConnectionLogger } from '../src/ledger/redis.ts';
import { startRedisCluster } from './support/redis-cluster.ts';
import type { RunningRedisCluster } from './support/redis-cluster.ts';
import { startDevProcess } from './support/dev-process.ts';
import { waitFor } from './support/processes.ts';

const ROOT = path.join(import.meta.dirname, '..');
const run = promisify(execFile);

const LEDGER_USER = 'ledger';
const LEDGER_PASSWORD = 's3cret-cluster-pass';

let cluster: RunningRedisCluster;
/** One direct (non-cluster) connection per master, by port. */
const direct = new Map<number, Redis>();
let seedPort: number;
let url: string;

beforeAll(async () => {
  cluster = await startRedisCluster({ nodes: 3 });
  seedPort = cluster.nodes[0]!.port;
  url = `redis+cluster://127.0.0.1:${seedPort}`;
  for (const node of cluster.nodes) {
    const connection = new Redis(node);
    // The outage tests stop the nodes, and these connections retry until the nodes are back.
    connection.on('error', () => {});
    // ACL users are per node, so the user that the URL names must exist on every master.
    await connection.acl('SETUSER', LEDGER_USER, 'on', `>${LEDGER_PASSWORD}`, '~*', '+@all');
    direct.set(node.port, connection);
  }
});

afterAll(async () => {
  await Promise.all([...direct.values()].map((connection) => connection.quit()));
  await cluster?.stop();
});

const hold = (amount: bigint): HoldRequest => ({ fixed: amount, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'fp' });

const usage = (charged: bigint, providerCost: bigint) => ({ charged, providerCost, model: 'gpt-4o-mini', route: 'openai', tokens: { input: 7, output: 3 }, estimated: false });

/** Returns the port of the master that owns the slot of the wallet's keys, from CLUSTER KEYSLOT and CLUSTER SLOTS. */
async function ownerPort(wallet: WalletKey): Promise<number> {
  const seed = direct.get(seedPort)!;
  const slot = await seed.cluster('KEYSLOT', walletKeys(wallet)[0]!);
  // The ledger computes the slot itself for its messages.
  expect(keySlot(`w:${wallet.namespace}/${wallet.name}`)).toBe(slot);
  const ranges = (await seed.cluster('SLOTS')) as unknown as Array<[number, number, [string, number, ...unknown[]]]>;
  const range = ranges.find(([start, end]) => slot >= start && slot <= end);
  if (!range) throw new Error(`no master owns slot ${slot} in CLUSTER SLOTS`);
  return range[2][1];
}

/** Picks wallet names in `namespace` until every master owns the slot of one of them; returns them by owner port. */
async function walletPerMaster(namespace: string): Promise<Map<number, WalletKey>> {
  const found = new Map<number, WalletKey>();
  for (let i = 0; i < 1000 && found.size < cluster.nodes.length; i += 1) {
    const wallet = { namespace, name: `wallet-${i}` };
    const port = await ownerPort(wallet);
    if (!found.has(port)) found.set(port, wallet);
  }
  expect(found.size).toBe(cluster.nodes.length);
  return found;
}

/** Returns a loopback port on which nothing listens. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Returns a ConnectionLogger that records each message with its level. */
function recordingLogger(): ConnectionLogger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    warn: (_details, message) => lines.push(`warn: ${message}`),
    info: (_details, message) => lines.push(`info: ${message}`),
  };
}

describe('RedisLedger from a redis+cluster:// URL', () => {
  it('serves a wallet on each master', async () => {
    const wallets = await walletPerMaster('url-serve');
    const ledger = new RedisLedger(url);
    try {
      for (const wallet of wallets.values()) {
        expect(await ledger.credit(wallet, 'grant-1', 1_000_000_000n, { reason: 'top-up' })).toEqual({
          status: 'credited',
          replayed: false,
          balance: 1_000_000_000n,
          amount: 1_000_000_000n,
        });
        expect(await ledger.reserve(wallet, 'req-1', hold(300_000_000n))).toEqual({ status: 'reserved', amount: 300_000_000n, units: 0, replayed: false });
        expect(await ledger.commit(wallet, 'req-1', usage(120_000_001n, 60_000_000n))).toEqual({
          status: 'committed',
          charged: 120_000_001n,
          released: 179_999_999n,
          replayed: false,
        });
        expect(await ledger.reserve(wallet, 'req-2', hold(200_000_000n))).toEqual({ status: 'reserved', amount: 200_000_000n, units: 0, replayed: false });
        expect(await ledger.release(wallet, 'req-2')).toEqual({ status: 'released', amount: 200_000_000n });
        expect(await ledger.reserve(wallet, 'req-3', hold(50_000_000n))).toEqual({ status: 'reserved', amount: 50_000_000n, units: 0, replayed: false });
        await ledger.markAnswered(wallet, 'req-3');
      }

      for (const [port, wallet] of wallets) {
        expect(await ledger.state(wallet)).toEqual({
          granted: 1_000_000_000n,
          spent: 120_000_001n,
          expired: 0n,
          reserved: 50_000_000n,
          balance: 879_999_999n,
          available: 829_999_999n,
          providerCost: 60_000_000n,
          chargedWithoutCost: 0n,
          holds: 1,
          closed: false,
        });
        expect(await ledger.hasRecords(wallet)).toBe(true);

        // All six keys exist while a hold is open. They are on the master that owns the wallet's slot and on no other.
        for (const [nodePort, connection] of direct) {
          const stored = (await connection.keys(`{w:${wallet.namespace}/${wallet.name}}*`)).sort();
          expect(stored, `keys on ${nodePort}`).toEqual(nodePort === port ? [...walletKeys(wallet)].sort() : []);
        }

        // An hour on, the answered hold has expired and the sweep charges it in full.
        expect(await ledger.sweep(wallet, Date.now() + 3_600_000)).toEqual({ released: 0, charged: 1 });
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 1_000_000_000n, spent: 170_000_001n, expired: 0n, entries: 3, problems: [] });
      }
    } finally {
      await ledger.quit();
    }
  });

  it('exports and compacts on each master', async () => {
    const wallets = await walletPerMaster('url-compact');
    const ledger = new RedisLedger(url);
    try {
      for (const wallet of wallets.values()) {
        await ledger.credit(wallet, 'grant-1', 500n);
        await ledger.commit(wallet, 'req-1', usage(40n, 25n));
        const entries = [];
        for await (const entry of ledger.entries(wallet)) entries.push(entry);

        expect(entries.map((entry) => entry.fields)).toEqual([
          { type: 'grant', id: 'grant-1', amount: '500', reason: '' },
          {
            type: 'debit', id: 'req-1', amount: '40', charged: '40', providerCost: '25',
            model: 'gpt-4o-mini', route: 'openai', tokens: '{"input":7,"output":3}', estimated: '0',
          },
        ]);
        expect(await ledger.checkpointEnd(wallet)).toBeUndefined();

        const checkpoint = { granted: 500n, spent: 40n, expired: 0n, providerCost: 25n, entries: 2, lastId: entries[1]!.id };
        expect(await ledger.compact(wallet, Date.now() + 1000)).toEqual({ folded: 2, checkpoint });
        expect(await ledger.checkpointEnd(wallet)).toBe(entries[1]!.id);
        expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 500n, spent: 40n, expired: 0n, entries: 2, checkpoint, problems: [] });

        await ledger.close(wallet);
        expect(await ledger.reserve(wallet, 'req-2', hold(1n))).toEqual({ status: 'wallet_closed' });
      }
    } finally {
      await ledger.quit();
    }
  });

  it('authenticates as the user in the URL', async () => {
    const wallet = { namespace: 'url-auth', name: 'app' };
    const ledger = new RedisLedger(`redis+cluster://${LEDGER_USER}:${LEDGER_PASSWORD}@127.0.0.1:${seedPort}`);
    try {
      expect(await ledger.credit(wallet, 'grant-1', 77n)).toEqual({ status: 'credited', replayed: false, balance: 77n, amount: 77n });
      const clients = await direct.get(await ownerPort(wallet))!.client('LIST');
      expect(clients).toContain(` user=${LEDGER_USER} `);
    } finally {
      await ledger.quit();
    }
  });

  it('rejects a wrong password without showing it', async () => {
    const ledger = new RedisLedger(`redis+cluster://${LEDGER_USER}:wrong-pass@127.0.0.1:${seedPort}`);
    try {
      const error = await ledger.state({ namespace: 'url-auth', name: 'app' }).catch((caught: unknown) => caught);

      expect(error).toBeInstanceOf(LedgerUnavailableError);
      expect((error as Error).message).toBe(
        `ledger state for wallet url-auth/app failed because the Redis Cluster at seed 127.0.0.1:${seedPort} rejected the connection's credentials: ` +
          `no cluster node answered (last tried 127.0.0.1:${seedPort}: WRONGPASS invalid username-password pair or user is disabled). ` +
          'Check the user name and password in the Redis URL.',
      );
    } finally {
      await ledger.quit();
    }
  });

  it('finds the cluster through a further seed', async () => {
    const wallet = { namespace: 'url-seeds', name: 'app' };
    const deadSeed = await closedPort();
    const ledger = new RedisLedger(`redis+cluster://127.0.0.1:${deadSeed}?node=127.0.0.1:${cluster.nodes[1]!.port}`);
    try {
      expect(await ledger.credit(wallet, 'grant-1', 5n)).toEqual({ status: 'credited', replayed: false, balance: 5n, amount: 5n });
    } finally {
      await ledger.quit();
    }
  });

  it('names the seeds when none answers', async () => {
    const [first, second] = [await closedPort(), await closedPort()];
    const logger = recordingLogger();
    const ledger = new RedisLedger(`redis+cluster://:pass-not-shown@127.0.0.1:${first}?node=127.0.0.1:${second}`, { logger });
    try {
      const error = await ledger.state({ namespace: 'url-seeds', name: 'app' }).catch((caught: unknown) => caught);

      expect(error).toBeInstanceOf(LedgerUnavailableError);
      // ioredis tries the seeds in random order, so either may be the last one tried.
      expect((error as Error).message).toMatch(
        new RegExp(
          `^ledger state for wallet url-seeds/app failed because the Redis Cluster at seeds 127\\.0\\.0\\.1:${first}, 127\\.0\\.0\\.1:${second} is unavailable: ` +
            `no cluster node answered \\(last tried 127\\.0\\.0\\.1:(${first}|${second}): connect ECONNREFUSED 127\\.0\\.0\\.1:\\1\\)\\. ` +
            'Check that Redis is running and reachable there\\.$',
        ),
      );
      expect((error as Error).message).not.toContain('pass-not-shown');
      expect(logger.lines).toEqual([
        `warn: ledger cannot connect to the Redis Cluster at seeds 127.0.0.1:${first}, 127.0.0.1:${second}; ledger operations fail until it connects`,
      ]);
    } finally {
      await ledger.quit();
    }
  });

  it('rejects a database other than 0', () => {
    expect(() => new RedisLedger(`redis+cluster://127.0.0.1:${seedPort}/1`)).toThrow(
      new RangeError(
        `invalid Redis URL "redis+cluster://127.0.0.1:${seedPort}/1": database 1 is not available, ` +
          'because a Redis Cluster has only database 0; remove "/1" from the URL',
      ),
    );
  });

  it('closes its node connections on quit', async () => {
    const name = 'cluster-url-quit';
    const ledger = new RedisLedger(url, { redisOptions: { connectionName: name } });
    const wallets = await walletPerMaster('url-quit');
    for (const wallet of wallets.values()) await ledger.credit(wallet, 'grant-1', 1n);

    const namedClients = async () => {
      let count = 0;
      for (const connection of direct.values()) count += ((await connection.client('LIST')) as string).split('\n').filter((line) => line.includes(name)).length;
      return count;
    };
    expect(await namedClients()).toBeGreaterThanOrEqual(cluster.nodes.length);

    await ledger.quit();
    // A server removes a client shortly after the client's QUIT, so the count is polled.
    expect(await waitFor('the ledger connections to close', async () => ((await namedClients()) === 0 ? true : undefined))).toBe(true);
  });
});

describe('tollgate on a Redis Cluster', () => {
  let manifests: string;

  beforeAll(async () => {
    manifests = await mkdtemp(path.join(os.tmpdir(), 'tollgate-cluster-dev-'));
    await writeFile(
      path.join(manifests, 'resources.yaml'),
      [
        'apiVersion: tollgate.dev/v1alpha1\nkind: ProviderRoute\nmetadata: { name: openai }\nspec:\n  protocol: openai\n' +
          '  baseURL: https://api.openai.com\n  credentialSecretRef: { name: openai-credentials, key: apiKey }\n  models: [gpt-4o-mini]\n' +
          '  costs:\n    gpt-4o-mini: { input: "0.50", output: "1.00" }\n',
        'apiVersion: tollgate.dev/v1alpha1\nkind: PricePlan\nmetadata: { name: plan }\nspec:\n  currency: USD\n' +
          '  versions:\n    - effectiveFrom: "2026-01-01T00:00:00Z"\n      models:\n        gpt-4o-mini: { input: "1.00", output: "2.00" }\n',
        'apiVersion: tollgate.dev/v1alpha1\nkind: Wallet\nmetadata: { name: cluster-team }\nspec:\n  currency: USD\n' +
          '  pricePlanRef: { name: plan }\n  grants: [{ id: initial, amount: "10" }]\n',
      ].join('---\n'),
    );
  });

  afterAll(async () => {
    if (manifests) await rm(manifests, { recursive: true, force: true });
  });

  it('serves an openai chat completion from tollgate dev', async () => {
    // No key in the environment or in a Secret manifest, so dev serves the route from its simulator.
    const dev = await startDevProcess(['--manifests', manifests, '--redis', url]);
    try {
      expect(dev.stdout()).toContain(`\n  ledger: Redis Cluster at seed 127.0.0.1:${seedPort}\n`);

      const client = new OpenAI({ baseURL: `${dev.url}/openai/v1`, apiKey: 'placeholder', maxRetries: 0 });
      const simulatedUsage = { prompt_tokens: 1_000_000, completion_tokens: 1000, total_tokens: 1_001_000 };
      const { data: completion, response } = await client.chat.completions
        .create(
          { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'How much?' }], max_tokens: 1000 },
          { headers: { 'x-sim-usage': JSON.stringify(simulatedUsage) } },
        )
        .withResponse();

      expect(completion.usage).toEqual(simulatedUsage);
      // One million input tokens at 1.00 plus 1000 output tokens at 2.00 per million.
      expect(response.headers.get('x-tollgate-charged')).toBe('1.002');
    } finally {
      await dev.stop();
    }
    expect(dev.stderr()).toBe('');

    const ledger = new RedisLedger(url);
    try {
      expect(await ledger.state({ namespace: 'default', name: 'cluster-team' })).toEqual({
        granted: 10_000_000_000n,
        spent: 1_002_000_000n,
        expired: 0n,
        reserved: 0n,
        balance: 8_998_000_000n,
        available: 8_998_000_000n,
        providerCost: 501_000_000n,
        chargedWithoutCost: 0n,
        holds: 0,
        closed: false,
      });
    } finally {
      await ledger.quit();
    }

    const { stdout: state } = await run(process.execPath, ['src/cli/main.ts', 'ledger', 'state', '--redis', url, '--wallet', 'default/cluster-team'], {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: 'warn' },
    });
    expect(state).toBe(
      [
        'wallet         default/cluster-team',
        'granted        10.000000000',
        'spent          1.002000000',
        'expired        0.000000000',
        'reserved       0.000000000 in 0 holds',
        'balance        8.998000000',
        'available      8.998000000',
        'provider cost  0.501000000',
        'margin         0.501000000',
        '',
      ].join('\n'),
    );

    const { stdout: verified } = await run(process.execPath, ['src/cli/main.ts', 'ledger', 'verify', '--redis', url, '--wallet', 'default/cluster-team'], {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: 'warn' },
    });
    expect(verified).toBe('replayed 2 entries: granted 10.000000000, spent 1.002000000, expired 0.000000000\nok: balance = grants - debits - expired\n');
  });
});

// These tests stop masters, so they run last. Without persistence a restarted master comes back empty.
describe('RedisLedger on a Redis Cluster whose masters fail', () => {
  it('keeps serving the other masters while one is down', async () => {
    const wallets = await walletPerMaster('outage-one');
    const downPort = cluster.nodes[2]!.port;
    const ledger = new RedisLedger(url);
    // By default the other masters stop serving once the cluster marks the stopped master as failed
    // (after cluster-node-timeout, 2 s here), because not every slot is covered any more.
    for (const [port, connection] of direct) if (port !== downPort) await connection.config('SET', 'cluster-require-full-coverage', 'no');
    try {
      for (const wallet of wallets.values()) await ledger.credit(wallet, 'grant-1', 1000n);
      await cluster.stopNode(downPort);

      const onDown = wallets.get(downPort)!;
      const error = await ledger.reserve(onDown, 'req-1', hold(10n)).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(LedgerUnavailableError);
      // The last of ioredis's redirections either found the stopped master's connection closed or was sent to
      // another master, which replied MOVED to the stopped one.
      expect((error as Error).message).toMatch(
        new RegExp(
          `^ledger reserve for wallet ${onDown.namespace}/${onDown.name} failed because the Redis Cluster at seed 127\\.0\\.0\\.1:${seedPort} is unavailable: ` +
            `calls for the wallet's slot ${keySlot(`w:${onDown.namespace}/${onDown.name}`)} \\(master 127\\.0\\.0\\.1:${downPort}\\) failed after the client's redirections ` +
            `\\(Too many Cluster redirections\\. Last error: (Error: Connection is closed|ReplyError: MOVED \\d+ 127\\.0\\.0\\.1:${downPort})\\)\\. ` +
            'Check that Redis is running and reachable there\\.$',
        ),
      );

      for (const [port, wallet] of wallets) {
        if (port === downPort) continue;
        expect(await ledger.reserve(wallet, 'req-1', hold(10n))).toEqual({ status: 'reserved', amount: 10n, units: 0, replayed: false });
      }

      await cluster.restartNode(downPort);
      await cluster.waitUntilOk();
      // The restarted master lost its keys, so the wallet starts empty and the grant is new again.
      const credited = await waitFor('the restarted master to serve', () => ledger.credit(onDown, 'grant-2', 30n));
      expect(credited).toEqual({ status: 'credited', replayed: false, balance: 30n, amount: 30n });
    } finally {
      await ledger.quit();
      for (const [port, connection] of direct) if (port !== downPort) await connection.config('SET', 'cluster-require-full-coverage', 'yes');
    }
  });

  it('refuses every wallet once a stopped master fails the cluster', async () => {
    const wallets = await walletPerMaster('outage-coverage');
    const downPort = cluster.nodes[1]!.port;
    const livePort = cluster.nodes[0]!.port;
    // A long timeout, so that the reply of ioredis's last retry decides the error, not the ledger's deadline.
    const ledger = new RedisLedger(url, { timeoutMs: 30_000 });
    try {
      for (const wallet of wallets.values()) await ledger.credit(wallet, 'grant-1', 1000n);
      await cluster.stopNode(downPort);
      // With the default cluster-require-full-coverage yes, the other masters refuse every key once they
      // mark the stopped one as failed, after cluster-node-timeout (2 s here).
      await waitFor('the cluster to fail', async () => ((await direct.get(livePort)!.cluster('INFO')).includes('cluster_state:fail') ? true : undefined));

      const onLive = wallets.get(livePort)!;
      const error = await ledger.reserve(onLive, 'req-1', hold(10n)).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(LedgerUnavailableError);
      // ioredis retries a CLUSTERDOWN reply on a random node, which may be the stopped one.
      expect((error as Error).message).toMatch(
        new RegExp(
          `^ledger reserve for wallet ${onLive.namespace}/${onLive.name} failed because the Redis Cluster at seed 127\\.0\\.0\\.1:${seedPort} is unavailable: ` +
            `calls for the wallet's slot ${keySlot(`w:${onLive.namespace}/${onLive.name}`)} \\(master 127\\.0\\.0\\.1:${livePort}\\) failed after the client's redirections ` +
            '\\(Too many Cluster redirections\\. Last error: (ReplyError: CLUSTERDOWN The cluster is down|Error: Connection is closed)\\)\\. ' +
            'Check that Redis is running and reachable there\\.$',
        ),
      );

      await cluster.restartNode(downPort);
      await cluster.waitUntilOk();
      const reserved = await waitFor('the cluster to serve again', () => ledger.reserve(onLive, 'req-2', hold(10n)));
      expect(reserved).toEqual({ status: 'reserved', amount: 10n, units: 0, replayed: false });
    } finally {
      await ledger.quit();
    }
  });

  it('fails while the whole cluster is down and reconnects', async () => {
    const wallet = { namespace: 'outage-all', name: 'app' };
    const logger = recordingLogger();
    const ledger = new RedisLedger(url, { logger });
    try {
      expect(await ledger.credit(wallet, 'grant-1', 1000n)).toEqual({ status: 'credited', replayed: false, balance: 1000n, amount: 1000n });

      for (const node of cluster.nodes) await cluster.stopNode(node.port);
      // The client finds out on its next command, because it keeps no connection to an idle master open.
      await waitFor('the ledger to notice the loss', async () => {
        await ledger.state(wallet).catch(() => undefined);
        return logger.lines.length > 0 ? true : undefined;
      });
      const error = await ledger.state(wallet).catch((caught: unknown) => caught);

      expect(error).toBeInstanceOf(LedgerUnavailableError);
      expect((error as Error).message).toBe(
        `ledger state for wallet outage-all/app failed because the Redis Cluster at seed 127.0.0.1:${seedPort} is unavailable: ` +
          `no cluster node answered (last tried 127.0.0.1:${seedPort}: connect ECONNREFUSED 127.0.0.1:${seedPort}). Check that Redis is running and reachable there.`,
      );

      for (const node of cluster.nodes) await cluster.restartNode(node.port);
      await cluster.waitUntilOk();
      const credited = await waitFor('the ledger to reconnect', () => ledger.credit(wallet, 'grant-2', 20n));

      expect(credited).toEqual({ status: 'credited', replayed: false, balance: 20n, amount: 20n });
      expect(logger.lines).toEqual([
        `warn: ledger lost its connection to the Redis Cluster at seed 127.0.0.1:${seedPort}; ledger operations fail until it reconnects`,
        `info: ledger reconnected to the Redis Cluster at seed 127.0.0.1:${seedPort}`,
      ]);
    } finally {
      await ledger.quit();
    }
  });
});
