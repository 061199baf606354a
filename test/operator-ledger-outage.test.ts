/**
 * The operator while its Redis ledger is down: Wallets turn not ready with
 * reason LedgerUnavailable and keep the last balance read, the log reports it
 * once instead of a stack per retry, and everything recovers when Redis is
 * back. Runs a real kube-apiserver with etcd and a real redis-server that is
 * stopped and started again on the same port and data.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Condition } from '../src/api/common.ts';
import { startOperator, type RunningOperator } from '../operator/main.ts';
import { runKubectl, startApiServer, type ApiServer } from './support/apiserver.ts';
import { testOperatorConfig } from './support/operator.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';

const NAMESPACE = 'outage';

const RESOURCES = `
apiVersion: v1
kind: Namespace
metadata: { name: ${NAMESPACE} }
---
apiVersion: v1
kind: Namespace
metadata: { name: tollgate-system }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: standard, namespace: ${NAMESPACE} }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gpt-4o-mini: { input: "0.15", output: "0.60" }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: app, namespace: ${NAMESPACE} }
spec:
  currency: USD
  pricePlanRef: { name: standard }
  grants: [{ id: start, amount: "10.00" }]
`;

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

interface WalletView {
  status?: { balance?: string; conditions?: Condition[] };
}

let apiServer: ApiServer;
let redis: RunningRedis;
let dataDir: string;
let operator: RunningOperator | undefined;
const lines: LogLine[] = [];

function kubectl(args: string[], input?: string): Promise<string> {
  return runKubectl(apiServer, args, input);
}

async function readWallet(): Promise<WalletView> {
  return JSON.parse(await kubectl(['get', 'wallet', 'app', '-n', NAMESPACE, '-o', 'json'])) as WalletView;
}

function ready(wallet: WalletView): Condition | undefined {
  return wallet.status?.conditions?.find((condition) => condition.type === 'Ready');
}

async function waitForWallet(what: string, check: (wallet: WalletView) => boolean, timeoutMs = 30_000): Promise<WalletView> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const wallet = await readWallet();
    if (check(wallet)) return wallet;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; status: ${JSON.stringify(wallet.status)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-outage-'));
  [apiServer, redis] = await Promise.all([startApiServer(), startRedis({ dir: dataDir, appendonly: true, appendfsync: 'always' })]);
  await kubectl(['apply', '--server-side', '-f', 'crds/']);
  await kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/wallets.tollgate.dev', 'crd/priceplans.tollgate.dev', 'crd/providerroutes.tollgate.dev']);
  await kubectl(['apply', '-f', '-'], RESOURCES);
  const log = pino({ level: 'debug' }, { write: (raw: string) => void lines.push(JSON.parse(raw) as LogLine) });
  operator = await startOperator(testOperatorConfig({ kubeconfig: apiServer.kubeconfigPath, redisUrl: redis.url, identity: 'outage-test' }), { log, defaultMetrics: false });
}, 120_000);

afterAll(async () => {
  await operator?.stop({ releaseLease: true });
  await redis?.stop();
  await apiServer?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
}, 60_000);

describe('operator during a ledger outage', () => {
  it('marks wallets not ready and recovers', async () => {
    await waitForWallet('the wallet to be ready', (wallet) => ready(wallet)?.status === 'True');

    const { port } = redis;
    await redis.stop();
    const down = await waitForWallet('the LedgerUnavailable condition', (wallet) => ready(wallet)?.reason === 'LedgerUnavailable');
    expect(ready(down)?.status).toBe('False');
    expect(ready(down)?.message).toMatch(
      /^the balance shown is the last one read, and sidecars admit no calls until the ledger is back: ledger \S+ for wallet outage\/app failed because Redis at 127\.0\.0\.1:\d+ is unavailable: /,
    );
    expect(down.status?.balance).toBe('10.00');

    // Let a few retries pass, then check what they logged.
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    const waits = lines.filter((line) => line.msg === 'reconcile waits for the ledger; retrying' && line['key'] === 'Wallet/outage/app');
    expect(waits.length).toBeGreaterThanOrEqual(2);
    expect(waits.filter((line) => line.level === 30)).toHaveLength(1);
    expect(waits.every((line) => line['err'] === undefined)).toBe(true);
    expect(lines.filter((line) => line.msg === 'reconcile failed; retrying')).toEqual([]);
    expect(lines.filter((line) => line.msg.startsWith('ledger lost its Redis connection'))).toHaveLength(1);
    const events = JSON.parse(await kubectl(['get', 'events', '-n', NAMESPACE, '--field-selector', 'reason=LedgerUnavailable', '-o', 'json'])) as {
      items: Array<{ type: string; count?: number; message: string }>;
    };
    expect(events.items.map((event) => [event.type, event.count ?? 1])).toEqual([['Warning', 1]]);
    expect(events.items[0]!.message).toBe(ready(down)?.message);

    redis = await startRedis({ dir: dataDir, appendonly: true, appendfsync: 'always', port });
    const back = await waitForWallet('the wallet to be ready again', (wallet) => ready(wallet)?.status === 'True');
    expect(ready(back)?.reason).toBe('Active');
    expect(back.status?.balance).toBe('10.00');
    expect(lines.filter((line) => line.msg === 'ledger reconnected to Redis')).toHaveLength(1);
  }, 90_000);
});
