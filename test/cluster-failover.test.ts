/**
 * The ledger through a failover of a real Redis Cluster of three masters
 * with one replica each, opened from a `redis+cluster://` URL. A replica
 * takes over a stopped master, the ledger follows it, and the wallet keeps
 * every write that had reached the replica.
 */

import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { LedgerUnavailableError } from '../src/ledger/ledger.ts';
import type { HoldRequest, WalletKey } from '../src/ledger/ledger.ts';
import { RedisLedger, walletKeys } from '../src/ledger/redis.ts';
import { waitFor } from './support/processes.ts';
import { startRedisCluster } from './support/redis-cluster.ts';
import type { RunningRedisCluster } from './support/redis-cluster.ts';

let cluster: RunningRedisCluster;
/** One direct (non-cluster) connection per node, masters and replicas, by port. */
const direct = new Map<number, Redis>();

beforeAll(async () => {
  cluster = await startRedisCluster({ nodes: 3, replicas: 1 });
  for (const node of [...cluster.nodes, ...cluster.replicas]) {
    const connection = new Redis(node);
    // The test stops a master, and this connection retries until the test ends.
    connection.on('error', () => {});
    direct.set(node.port, connection);
  }
});

afterAll(async () => {
  for (const connection of direct.values()) connection.disconnect();
  await cluster?.stop();
});

const hold = (amount: bigint): HoldRequest => ({ fixed: amount, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'fp' });

/** Returns the port of the master that owns the slot of the wallet's keys, as the node at `askPort` reports it. */
async function ownerPort(wallet: WalletKey, askPort: number): Promise<number> {
  const node = direct.get(askPort)!;
  const slot = await node.cluster('KEYSLOT', walletKeys(wallet)[0]!);
  const ranges = (await node.cluster('SLOTS')) as unknown as Array<[number, number, [string, number, ...unknown[]]]>;
  const range = ranges.find(([start, end]) => slot >= start && slot <= end);
  if (!range) throw new Error(`no master owns slot ${slot} in CLUSTER SLOTS`);
  return range[2][1];
}

/** Returns the port of the replica of the master on `masterPort`, from CLUSTER NODES. */
async function replicaOf(masterPort: number): Promise<number> {
  const lines = ((await direct.get(masterPort)!.cluster('NODES')) as string).trim().split('\n');
  const masterId = lines.find((line) => line.includes(`:${masterPort}@`))!.split(' ')[0];
  const replica = lines.find((line) => line.split(' ')[3] === masterId);
  if (!replica) throw new Error(`the master on port ${masterPort} has no replica in CLUSTER NODES`);
  return Number(/:(\d+)@/.exec(replica)![1]);
}

describe('RedisLedger through a Redis Cluster failover', () => {
  it('follows the replica that takes over', async () => {
    const [seed, failing] = [cluster.nodes[0]!.port, cluster.nodes[1]!.port];
    // A wallet on the master that fails; the seed is another master, which stays up.
    let wallet: WalletKey | undefined;
    for (let i = 0; i < 1000 && wallet === undefined; i += 1) {
      const candidate = { namespace: 'failover', name: `wallet-${i}` };
      if ((await ownerPort(candidate, seed)) === failing) wallet = candidate;
    }
    expect(wallet).toBeDefined();
    const replica = await replicaOf(failing);

    const ledger = new RedisLedger(`redis+cluster://127.0.0.1:${seed}?node=127.0.0.1:${cluster.nodes[2]!.port}`);
    try {
      expect(await ledger.credit(wallet!, 'grant-1', 1000n)).toEqual({ status: 'credited', replayed: false, balance: 1000n, amount: 1000n });
      expect(await ledger.reserve(wallet!, 'req-1', hold(300n))).toEqual({ status: 'reserved', amount: 300n, units: 0, replayed: false });
      const debit = { charged: 120n, providerCost: 60n, model: 'm', route: 'r', tokens: { input: 1 }, estimated: false };
      expect(await ledger.commit(wallet!, 'req-1', debit)).toEqual({ status: 'committed', charged: 120n, released: 180n, replayed: false });
      expect(await ledger.reserve(wallet!, 'req-2', hold(200n))).toEqual({ status: 'reserved', amount: 200n, units: 0, replayed: false });

      // Redis replicates asynchronously. A write of this connection after the ledger's, followed by WAIT,
      // returns once the replica has everything the master ran before it.
      const master = direct.get(failing)!;
      await master.set(`{w:${wallet!.namespace}/${wallet!.name}}:replicated`, '1');
      expect(await master.wait(1, 10_000)).toBe(1);

      await cluster.stopNode(failing);
      const duringFailover = await ledger.state(wallet!).catch((caught: unknown) => caught);
      expect(duringFailover).toBeInstanceOf(LedgerUnavailableError);

      // The replica takes over after cluster-node-timeout (2 s here) and an election.
      const state = await waitFor('the replica to take over', () => ledger.state(wallet!));
      // The seed learns of the new master by gossip, which may come after the ledger's client found it.
      const owner = await waitFor('the seed to list the new master', async () => {
        const port = await ownerPort(wallet!, seed);
        return port === replica ? port : undefined;
      });
      expect(owner).toBe(replica);
      expect(state).toEqual({
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

      // The settled records came over too, so replays return their first results.
      expect(await ledger.credit(wallet!, 'grant-1', 1000n)).toEqual({ status: 'credited', replayed: true, balance: 880n, amount: 1000n });
      expect(await ledger.commit(wallet!, 'req-1', debit)).toEqual({ status: 'committed', charged: 120n, released: 180n, replayed: true });
      expect(await ledger.commit(wallet!, 'req-2', { ...debit, charged: 50n })).toEqual({ status: 'committed', charged: 50n, released: 150n, replayed: false });
      expect(await ledger.verify(wallet!)).toEqual({ ok: true, granted: 1000n, spent: 170n, expired: 0n, entries: 3, problems: [] });
    } finally {
      await ledger.quit();
    }
  });
});
