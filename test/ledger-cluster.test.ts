/**
 * RedisLedger on a three-master Redis Cluster, through an ioredis Cluster
 * client: the shared ledger contract, wallets on every master, slot locality
 * of a wallet's keys, and admission under concurrency from several clients.
 */

import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { describeLedgerContract } from '../src/ledger/ledger.contract.ts';
import type { HoldRequest, ReserveResult, WalletKey } from '../src/ledger/ledger.ts';
import { RedisLedger, walletKeys } from '../src/ledger/redis.ts';
import type { RedisLedgerOptions } from '../src/ledger/redis.ts';
import { startRedisCluster } from './support/redis-cluster.ts';
import type { ClusterNodeAddress, RunningRedisCluster } from './support/redis-cluster.ts';

const MASTERS = 3;

let cluster: RunningRedisCluster;

beforeAll(async () => {
  cluster = await startRedisCluster({ nodes: MASTERS });
});

afterAll(async () => {
  await cluster?.stop();
});

/** Opens a Cluster client on the plain loopback addresses, sending reads to masters as well. */
function connectCluster(): Cluster {
  return new Cluster(cluster.nodes, { scaleReads: 'master' });
}

/** A RedisLedger on a Cluster client of its own, which `quit` closes. */
class ClusterLedger extends RedisLedger {
  readonly #client: Cluster;

  constructor(client: Cluster, options?: RedisLedgerOptions) {
    super(client, options);
    this.#client = client;
  }

  override async quit(): Promise<void> {
    await super.quit();
    await this.#client.quit();
  }
}

// The contract gives every test wallets with a run-unique name, so the
// cluster needs no flush between tests.
describeLedgerContract('RedisLedger on a Redis Cluster', async (options) => new ClusterLedger(connectCluster(), options));

const hold = (amount: bigint): HoldRequest => ({ fixed: amount, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'fp' });

const usage = (charged: bigint) => ({ charged, providerCost: charged / 2n, model: 'm', route: 'r', tokens: { input: 1 }, estimated: false });

function countStatuses(results: ReserveResult[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const result of results) counts[result.status] = (counts[result.status] ?? 0) + 1;
  return counts;
}

describe('RedisLedger across the masters of a Redis Cluster', () => {
  /** One direct (non-cluster) connection per master, by port, for CLUSTER and KEYS commands. */
  const direct = new Map<number, Redis>();
  /** One wallet whose slot each master owns, by the master's port. */
  const walletByPort = new Map<number, WalletKey>();
  let client: Cluster;
  let ledger: RedisLedger;

  const anyNode = () => direct.get(cluster.nodes[0]!.port)!;

  /** Returns the port of the master that owns `slot`, according to CLUSTER SLOTS. */
  async function ownerPort(slot: number): Promise<number> {
    const ranges = (await anyNode().cluster('SLOTS')) as unknown as Array<[number, number, [string, number, ...unknown[]]]>;
    const range = ranges.find(([start, end]) => slot >= start && slot <= end);
    if (!range) throw new Error(`no master owns slot ${slot} in CLUSTER SLOTS`);
    return range[2][1];
  }

  /** Picks wallet names in `namespace` until every master owns the slot of one of them. */
  async function findWalletPerMaster(namespace: string): Promise<Map<number, WalletKey>> {
    const found = new Map<number, WalletKey>();
    for (let i = 0; i < 1000 && found.size < cluster.nodes.length; i += 1) {
      const wallet = { namespace, name: `wallet-${i}` };
      const port = await ownerPort(await anyNode().cluster('KEYSLOT', walletKeys(wallet)[0]!));
      if (!found.has(port)) found.set(port, wallet);
    }
    return found;
  }

  beforeAll(async () => {
    for (const node of cluster.nodes) direct.set(node.port, new Redis(node));
    client = connectCluster();
    ledger = new RedisLedger(client);
    for (const [port, wallet] of await findWalletPerMaster('spread')) walletByPort.set(port, wallet);
  });

  afterAll(async () => {
    await ledger?.quit();
    await client?.quit();
    await Promise.all([...direct.values()].map((connection) => connection.quit()));
  });

  it('has three masters that own all 16384 slots', async () => {
    const ranges = (await anyNode().cluster('SLOTS')) as unknown as Array<[number, number, [string, number]]>;
    const owners = new Set(ranges.map((range) => range[2][1]));
    const slots = ranges.reduce((total, [start, end]) => total + end - start + 1, 0);

    expect([...owners].sort()).toEqual(cluster.nodes.map((node: ClusterNodeAddress) => node.port).sort());
    expect(slots).toBe(16384);
    expect(walletByPort.size).toBe(MASTERS);
  });

  it('serves a wallet on each master', async () => {
    for (const wallet of walletByPort.values()) {
      expect(await ledger.credit(wallet, 'g', 1000n)).toEqual({ status: 'credited', replayed: false, balance: 1000n, amount: 1000n });
      expect(await ledger.reserve(wallet, 'done', hold(300n))).toEqual({ status: 'reserved', amount: 300n, units: 0, replayed: false });
      expect(await ledger.reserve(wallet, 'open', hold(200n))).toEqual({ status: 'reserved', amount: 200n, units: 0, replayed: false });
      expect(await ledger.commit(wallet, 'done', usage(120n))).toEqual({ status: 'committed', charged: 120n, released: 180n, replayed: false });
      await ledger.markAnswered(wallet, 'open');
    }

    for (const wallet of walletByPort.values()) {
      expect(await ledger.state(wallet)).toEqual({
        granted: 1000n,
        spent: 120n,
        expired: 0n,
        reserved: 200n,
        balance: 880n,
        available: 680n,
        providerCost: 60n,
        chargedWithoutCost: 0n,
        holds: 1,
        closed: false,
      });
      expect(await ledger.verify(wallet)).toEqual({ ok: true, granted: 1000n, spent: 120n, expired: 0n, entries: 2, problems: [] });
      expect(await ledger.sweep(wallet, Date.now() + 3_600_000)).toEqual({ released: 0, charged: 1 });
      expect((await ledger.state(wallet)).spent).toBe(320n);
    }
  });

  it('keeps all keys of a wallet on one slot', async () => {
    for (const [port, wallet] of walletByPort) {
      const keys = walletKeys(wallet);
      const slots = await Promise.all(keys.map((key) => anyNode().cluster('KEYSLOT', key)));

      expect(new Set(slots).size).toBe(1);
      expect(await ownerPort(slots[0]!)).toBe(port);
    }
  });

  it('stores all keys of a wallet on its owning master only', async () => {
    for (const [owner, wallet] of walletByPort) {
      // A grant, an open hold and a settled request create all six keys, also when this test runs alone.
      await ledger.credit(wallet, 'placement', 1n);
      await ledger.reserve(wallet, 'placement-open', hold(1n));
      await ledger.commit(wallet, 'placement-done', usage(0n));

      for (const [port, connection] of direct) {
        const stored = (await connection.keys(`{w:${wallet.namespace}/${wallet.name}}*`)).sort();
        expect(stored).toEqual(port === owner ? [...walletKeys(wallet)].sort() : []);
      }
    }
  });

  it('reloads its scripts after SCRIPT FLUSH on every master', async () => {
    for (const connection of direct.values()) await connection.script('FLUSH');

    for (const wallet of walletByPort.values()) {
      expect(await ledger.reserve(wallet, 'after-flush', hold(50n))).toEqual({ status: 'reserved', amount: 50n, units: 0, replayed: false });
    }
  });

  it('releases a hold placed after its timeout', async () => {
    const released: object[] = [];
    const warnings: object[] = [];
    const logger = { info: (details: object) => released.push(details), warn: (details: object) => warnings.push(details) };
    const slow = new RedisLedger(client, { timeoutMs: 200, logger });
    const [port, wallet] = [...(await findWalletPerMaster('late-reply'))][0]!;
    await slow.credit(wallet, 'g', 1000n);

    // The master holds back scripts for 600 ms, so the reserve times out, and then runs: there is no deadline on a cluster.
    await direct.get(port)!.call('CLIENT', 'PAUSE', '600', 'WRITE');
    await expect(slow.reserve(wallet, 'late', hold(300n))).rejects.toThrow(/got no answer .* within 200 ms/);
    for (let attempt = 0; released.length === 0 && attempt < 100; attempt += 1) await new Promise((resolve) => setTimeout(resolve, 20));

    expect(released).toEqual([{ wallet: `${wallet.namespace}/${wallet.name}`, requestId: 'late', amount: '300', release: 'released' }]);
    expect(warnings).toEqual([]);
    expect(await slow.state(wallet)).toMatchObject({ balance: 1000n, reserved: 0n, holds: 0 });
    expect(await slow.reserve(wallet, 'late', hold(300n))).toEqual({ status: 'reserved', amount: 300n, units: 0, replayed: false });
  });

  it('takes a resent reserve of its own id as its own', async () => {
    const own = connectCluster();
    const resending = new ClusterLedger(own, { timeoutMs: 2000 });
    const [port, wallet] = [...(await findWalletPerMaster('resent'))][0]!;
    const busy = new Redis(port, '127.0.0.1');
    const killer = new Redis(port, '127.0.0.1');
    busy.on('error', () => {});
    try {
      await resending.credit(wallet, 'g', 1000n);
      // Loads the reserve script on the master, so that the reserve below is one EVALSHA.
      await resending.reserve(wallet, 'warm-up', hold(1n));
      await resending.release(wallet, 'warm-up');
      await killer.ping();

      // A script keeps the master busy for 300 ms. The reserve and then a CLIENT KILL arrive meanwhile, so Redis runs
      // the reserve and closes its connection before the reply, and the Cluster client sends the reserve again.
      const spin = "local t = redis.call('TIME'); local s = t[1] * 1000000 + t[2]; repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - s > 300000; return 1";
      const spinning = busy.eval(spin, 0).catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, 30));
      const reserving = resending.reserve(wallet, 'random-id', { ...hold(300n), fingerprint: '', exclusiveId: true });
      await new Promise((resolve) => setTimeout(resolve, 30));
      expect(await killer.client('KILL', 'TYPE', 'normal', 'SKIPME', 'yes')).toBeGreaterThan(0);
      await spinning;

      expect(await reserving).toEqual({ status: 'reserved', amount: 300n, units: 0, replayed: false });
      expect(await resending.state(wallet)).toMatchObject({ reserved: 300n, holds: 1 });
    } finally {
      busy.disconnect();
      killer.disconnect();
      await resending.quit();
    }
  });

  it('admits exactly 37 of 200 reserves over three Cluster clients', async () => {
    const price = 1_000_000n;
    const wallet = { namespace: 'concurrency', name: 'three-clients' };
    const ledgers = Array.from({ length: 3 }, () => new ClusterLedger(connectCluster()));
    try {
      await ledgers[0]!.credit(wallet, 'g', 37n * price + price - 1n);

      const results = await Promise.all(Array.from({ length: 200 }, (_, i) => ledgers[i % 3]!.reserve(wallet, `c-${i}`, hold(price))));

      expect(countStatuses(results)).toEqual({ reserved: 37, insufficient_funds: 163 });
      const state = await ledgers[1]!.state(wallet);
      expect(state.reserved).toBe(37_000_000n);
      expect(state.available).toBe(999_999n);
      expect(state.holds).toBe(37);
      expect((await ledgers[2]!.verify(wallet)).ok).toBe(true);
    } finally {
      await Promise.all(ledgers.map((each) => each.quit()));
    }
  });

  it('admits 37 per wallet on every master at once', async () => {
    const price = 1_000_000n;
    const wallets = [...(await findWalletPerMaster('race')).values()];
    expect(wallets).toHaveLength(MASTERS);
    const ledgers = Array.from({ length: 3 }, () => new ClusterLedger(connectCluster()));
    try {
      for (const wallet of wallets) await ledgers[0]!.credit(wallet, 'g', 37n * price + price - 1n);

      const perWallet = await Promise.all(
        wallets.map((wallet) => Promise.all(Array.from({ length: 200 }, (_, i) => ledgers[i % 3]!.reserve(wallet, `c-${i}`, hold(price))))),
      );

      for (const [index, results] of perWallet.entries()) {
        expect(countStatuses(results)).toEqual({ reserved: 37, insufficient_funds: 163 });
        expect((await ledgers[1]!.state(wallets[index]!)).reserved).toBe(37_000_000n);
      }
    } finally {
      await Promise.all(ledgers.map((each) => each.quit()));
    }
  });
});
