/**
 * Leader election between two real `tollgate operator` processes on a real
 * kube-apiserver: one holds the Lease and reconciles; after it is killed
 * with SIGKILL (no chance to release the Lease), the other takes over and
 * reconciles a Wallet created afterwards.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisLedger } from '../src/ledger/redis.ts';
import { findTestBinary, startApiServer, type ApiServer } from './support/apiserver.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';
import { waitFor } from './support/processes.ts';

const run = promisify(execFile);
const ROOT = path.join(import.meta.dirname, '..');

let apiServer: ApiServer;
let redis: RunningRedis;
let ledger: RedisLedger;
const children = new Map<string, ChildProcess>();

async function kubectl(args: string[], input?: string): Promise<string> {
  const pending = run(await findTestBinary('kubectl'), ['--kubeconfig', apiServer.kubeconfigPath, ...args], { cwd: ROOT });
  if (input !== undefined) pending.child.stdin!.end(input);
  return (await pending).stdout;
}

function startOperatorProcess(identity: string): ChildProcess {
  const child = spawn(
    process.execPath,
    [
      'src/cli/main.ts',
      'operator',
      '--kubeconfig', apiServer.kubeconfigPath,
      '--namespace', 'tollgate-system',
      '--redis', redis.url,
      '--http-listen', '127.0.0.1:0',
      '--no-webhook',
      '--identity', identity,
      '--lease-duration', '3',
      '--renew-deadline', '2',
      '--retry-period', '0.5',
      '--resync', '2',
    ],
    { cwd: ROOT, env: { ...process.env, LOG_LEVEL: 'warn' }, stdio: ['ignore', 'ignore', 'inherit'] },
  );
  children.set(identity, child);
  return child;
}

async function leaseHolder(): Promise<string | undefined> {
  const holder = await kubectl(['get', 'lease', 'tollgate-operator', '-n', 'tollgate-system', '-o', 'jsonpath={.spec.holderIdentity}']).catch(() => '');
  return holder || undefined;
}

function wallet(name: string): string {
  return `
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name}, namespace: team-a }
spec:
  currency: USD
  pricePlanRef: { name: standard }
  grants: [{ id: start, amount: "3.00" }]
`;
}

async function granted(name: string): Promise<bigint | undefined> {
  const state = await ledger.state({ namespace: 'team-a', name });
  return state.granted > 0n ? state.granted : undefined;
}

beforeAll(async () => {
  apiServer = await startApiServer();
  redis = await startRedis();
  ledger = new RedisLedger(redis.url);
  await kubectl(['apply', '--server-side', '-f', 'crds/']);
  await kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/wallets.tollgate.dev']);
  await kubectl(
    ['apply', '-f', '-'],
    `
apiVersion: v1
kind: Namespace
metadata: { name: tollgate-system }
---
apiVersion: v1
kind: Namespace
metadata: { name: team-a }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: standard, namespace: team-a }
spec:
  currency: USD
  versions: [{ effectiveFrom: "2026-01-01T00:00:00Z", models: { m: { input: "1", output: "1" } } }]
`,
  );
});

afterAll(async () => {
  for (const child of children.values()) child.kill('SIGKILL');
  await ledger?.quit();
  await redis?.stop();
  await apiServer?.stop();
});

describe('operator processes', () => {
  it('fail over after the leader is killed', async () => {
    startOperatorProcess('operator-a');
    startOperatorProcess('operator-b');

    const first = await waitFor('a Lease holder', leaseHolder);
    expect(['operator-a', 'operator-b']).toContain(first);
    await kubectl(['apply', '-f', '-'], wallet('before-failover'));
    expect(await waitFor('the first grant', () => granted('before-failover'))).toBe(3_000_000_000n);

    children.get(first)!.kill('SIGKILL');
    const second = await waitFor('a new Lease holder', async () => {
      const holder = await leaseHolder();
      return holder !== undefined && holder !== first ? holder : undefined;
    });
    expect(second).not.toBe(first);

    await kubectl(['apply', '-f', '-'], wallet('after-failover'));
    expect(await waitFor('the grant applied by the new leader', () => granted('after-failover'))).toBe(3_000_000_000n);
    // The grant applied before the failover was not applied a second time.
    expect((await ledger.state({ namespace: 'team-a', name: 'before-failover' })).granted).toBe(3_000_000_000n);
  });
});
