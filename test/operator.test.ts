// Runs the operator against a real kube-apiserver (with etcd) and a real redis-server.
// Covered: grants applied once across restarts, status and Events as the ledger
// drains, deletion through the finalizer, snapshots and route validation, the
// informer watchdog, and leader failover between replicas in this process.
// Needs KUBEBUILDER_ASSETS (see test/support/apiserver.ts).

import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import {
  ApiextensionsV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  V1MicroTime,
  type CoreV1Event,
  type V1CustomResourceDefinition,
} from '@kubernetes/client-node';
import { pino } from 'pino';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisLedger } from '../src/ledger/redis.ts';
import type { WalletKey } from '../src/ledger/ledger.ts';
import { EventRecorder } from '../operator/events.ts';
import { Informer } from '../operator/informer.ts';
import { createKubeClients, loadKubeConfig } from '../operator/kube.ts';
import { startOperator, type OperatorConfig, type RunningOperator } from '../operator/main.ts';
import { startApiServer, type ApiServer } from './support/apiserver.ts';
import { testOperatorConfig } from './support/operator.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';

const GROUP = 'tollgate.dev';
const VERSION = 'v1alpha1';
const OPERATOR_NAMESPACE = 'tollgate-system';
const LEASE_NAME = 'tollgate-operator';
const NANO = 1_000_000_000n;
const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const log = pino({ level: process.env['LOG_LEVEL'] ?? 'warn' });

let apiServer: ApiServer;
let redis: RunningRedis;
let ledger: RedisLedger;
let core: CoreV1Api;
let custom: CustomObjectsApi;
let coordination: CoordinationV1Api;
/** The operator that the tests before the failover test share. */
let operator: RunningOperator;
const started: RunningOperator[] = [];

function operatorConfig(identity: string): OperatorConfig {
  return testOperatorConfig({ kubeconfig: apiServer.kubeconfigPath, redisUrl: redis.url, identity });
}

async function launch(identity: string): Promise<RunningOperator> {
  const instance = await startOperator(operatorConfig(identity), { log, defaultMetrics: false });
  started.push(instance);
  return instance;
}

/** Polls `probe` until it returns a value other than undefined, or fails after `timeoutMs` naming what it waited for. */
async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `; last error: ${String(lastError)}` : ''}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

interface Condition {
  type: string;
  status: string;
  reason: string;
  message: string;
}

interface WalletObject {
  metadata: { name: string; finalizers?: string[]; generation?: number };
  spec: { grants: Array<{ id: string; amount: string; reason?: string }> };
  status?: {
    balance?: string;
    reserved?: string;
    spent?: string;
    granted?: string;
    appliedGrants?: string[];
    observedGeneration?: number;
    conditions?: Condition[];
  };
}

function condition(object: { status?: { conditions?: Condition[] } }, type: string): Condition | undefined {
  return object.status?.conditions?.find((candidate) => candidate.type === type);
}

async function createNamespace(name: string): Promise<void> {
  await core.createNamespace({ body: { metadata: { name } } });
}

async function createPlan(namespace: string, name: string, inputRate = '0.15'): Promise<void> {
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: 'priceplans',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'PricePlan',
      metadata: { name },
      spec: {
        currency: 'USD',
        versions: [{ name: 'v1', effectiveFrom: '2025-01-01T00:00:00Z', models: { 'gpt-4o-mini': { input: inputRate, output: '0.60' } } }],
      },
    },
  });
}

async function createRoute(namespace: string, name: string, spec: Record<string, unknown>): Promise<void> {
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: 'providerroutes',
    body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'ProviderRoute', metadata: { name }, spec },
  });
}

async function createWallet(
  namespace: string,
  name: string,
  grants: Array<{ id: string; amount: string; reason?: string }>,
  extra: Record<string, unknown> = {},
): Promise<void> {
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: 'wallets',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'Wallet',
      metadata: { name },
      spec: { currency: 'USD', pricePlanRef: { name: 'standard' }, grants, ...extra },
    },
  });
}

async function readWallet(namespace: string, name: string): Promise<WalletObject> {
  return (await custom.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'wallets', name })) as WalletObject;
}

async function readCustom(namespace: string, plural: string, name: string): Promise<{ status?: { conditions?: Condition[] } }> {
  return (await custom.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural, name })) as {
    status?: { conditions?: Condition[] };
  };
}

async function eventsFor(namespace: string, name: string): Promise<CoreV1Event[]> {
  const list = await core.listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${name}` });
  return list.items;
}

function reasonsOf(events: CoreV1Event[]): string[] {
  return events.map((event) => event.reason ?? '').sort();
}

/** Debits `amount` nano-units from a wallet the way a sidecar does: a hold, then a commit of the same amount. */
async function spend(wallet: WalletKey, requestId: string, amount: bigint): Promise<void> {
  const reserved = await ledger.reserve(wallet, requestId, {
    fixed: amount,
    perUnit: 0n,
    minUnits: 0,
    maxUnits: 0,
    ttlSeconds: 60,
    fingerprint: requestId,
  });
  expect(reserved.status).toBe('reserved');
  const committed = await ledger.commit(wallet, requestId, {
    charged: amount,
    providerCost: amount / 2n,
    model: 'gpt-4o-mini',
    route: 'openai',
    tokens: { input: 1000 },
    estimated: false,
  });
  expect(committed.status).toBe('committed');
}

async function leaseHolder(): Promise<string | undefined> {
  const lease = await coordination.readNamespacedLease({ namespace: OPERATOR_NAMESPACE, name: LEASE_NAME });
  return lease.spec?.holderIdentity || undefined;
}

/** Overwrites the Lease holder the way another candidate would. */
async function setLeaseHolder(holder: string, leaseDurationSeconds: number): Promise<void> {
  const lease = await coordination.readNamespacedLease({ namespace: OPERATOR_NAMESPACE, name: LEASE_NAME });
  const now = new V1MicroTime();
  await coordination.replaceNamespacedLease({
    namespace: OPERATOR_NAMESPACE,
    name: LEASE_NAME,
    body: {
      metadata: { name: LEASE_NAME, namespace: OPERATOR_NAMESPACE, resourceVersion: lease.metadata?.resourceVersion },
      spec: { ...(holder ? { holderIdentity: holder } : {}), leaseDurationSeconds, acquireTime: now, renewTime: now },
    },
  });
}

async function installCrds(kubeConfig: KubeConfig): Promise<void> {
  const extensions = kubeConfig.makeApiClient(ApiextensionsV1Api);
  const dir = path.join(import.meta.dirname, '..', 'crds');
  const files = (await readdir(dir)).filter((file) => file.endsWith('.yaml'));
  expect(files.sort()).toEqual(['tollgate.dev_priceplans.yaml', 'tollgate.dev_providerroutes.yaml', 'tollgate.dev_wallets.yaml']);

  for (const file of files) {
    const body = parseYaml(await readFile(path.join(dir, file), 'utf8')) as V1CustomResourceDefinition;
    await extensions.createCustomResourceDefinition({ body });
    await waitFor(`CRD ${body.metadata?.name} to be established`, async () => {
      const crd = await extensions.readCustomResourceDefinition({ name: body.metadata!.name! });
      return crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True') ? true : undefined;
    });
  }
}

beforeAll(async () => {
  // Each is kept as soon as it starts, so that afterAll stops it when the other fails.
  const started = await Promise.allSettled([startApiServer().then((server) => (apiServer = server)), startRedis().then((server) => (redis = server))]);
  for (const result of started) if (result.status === 'rejected') throw result.reason;
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(apiServer.kubeconfigPath);
  core = kubeConfig.makeApiClient(CoreV1Api);
  custom = kubeConfig.makeApiClient(CustomObjectsApi);
  coordination = kubeConfig.makeApiClient(CoordinationV1Api);
  ledger = new RedisLedger(redis.url);

  await installCrds(kubeConfig);
  await createNamespace(OPERATOR_NAMESPACE);
  operator = await launch('replica-1');
  await waitFor('the first replica to lead', () => (operator.isLeader() ? true : undefined));
}, 120_000);

afterAll(async () => {
  for (const instance of started) await instance.stop({ releaseLease: true });
  await ledger?.quit();
  await redis?.stop();
  await apiServer?.stop();
}, 60_000);

describe('operator', () => {
  it('applies grants once across a restart', async () => {
    const namespace = 'grants';
    const key = { namespace, name: 'acme' };
    await createNamespace(namespace);
    await createPlan(namespace, 'standard');
    await createWallet(namespace, 'acme', [
      { id: 'invoice-1', amount: '10.00', reason: 'prepaid' },
      { id: 'invoice-2', amount: '5.50' },
    ]);

    const first = await waitFor('both grants in the status', async () => {
      const wallet = await readWallet(namespace, 'acme');
      return wallet.status?.appliedGrants?.length === 2 && condition(wallet, 'Ready')?.status === 'True' ? wallet : undefined;
    });
    expect(first.metadata.finalizers).toEqual(['tollgate.dev/ledger']);
    expect(first.status?.appliedGrants).toEqual(['invoice-1', 'invoice-2']);
    expect(first.status?.granted).toBe('15.50');
    expect(first.status?.balance).toBe('15.50');
    expect(first.status?.spent).toBe('0.00');
    expect(first.status?.reserved).toBe('0.00');
    expect(first.status?.observedGeneration).toBe(first.metadata.generation);
    expect(condition(first, 'Ready')?.reason).toBe('Active');
    expect(condition(first, 'LowBalance')?.reason).toBe('NoThreshold');
    expect(condition(first, 'Exhausted')?.status).toBe('False');
    expect((await ledger.state(key)).granted).toBe(1550n * NANO / 100n);

    await operator.stop({ releaseLease: true });
    operator = await launch('replica-2');
    await waitFor('the restarted operator to lead', () => (operator.isLeader() ? true : undefined));
    // The wallet gauge is set by a reconcile, so it proves the new replica has seen the wallet.
    await waitFor('the restarted operator to export the balance', async () => {
      const response = await fetch(`http://127.0.0.1:${operator.httpPort}/metrics`);
      const text = await response.text();
      return text.includes('tollgate_wallet_balance{namespace="grants",wallet="acme",currency="USD"} 15.5') ? true : undefined;
    });
    expect((await ledger.state(key)).granted).toBe(1550n * NANO / 100n);
    expect((await ledger.verify(key)).entries).toBe(2);

    const current = await readWallet(namespace, 'acme');
    await custom.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace,
        plural: 'wallets',
        name: 'acme',
        body: { spec: { grants: [...current.spec.grants, { id: 'invoice-3', amount: '2.25' }] } },
      },
      MERGE_PATCH,
    );
    const third = await waitFor('the third grant in the status', async () => {
      const wallet = await readWallet(namespace, 'acme');
      return wallet.status?.appliedGrants?.length === 3 ? wallet : undefined;
    });
    expect(third.status?.granted).toBe('17.75');
    expect(third.status?.balance).toBe('17.75');
    expect(third.status?.observedGeneration).toBe(third.metadata.generation);
    expect((await ledger.state(key)).granted).toBe(1775n * NANO / 100n);
    const verified = await ledger.verify(key);
    expect(verified.entries).toBe(3);
    expect(verified.ok).toBe(true);

    const grantEvents = (await eventsFor(namespace, 'acme')).filter((event) => event.reason === 'GrantApplied');
    expect(grantEvents.map((event) => event.message).sort()).toEqual([
      'applied grant "invoice-1" of 10.00 USD (prepaid); balance 10.00 USD',
      'applied grant "invoice-2" of 5.50 USD; balance 15.50 USD',
      'applied grant "invoice-3" of 2.25 USD; balance 17.75 USD',
    ]);
    expect(grantEvents.map((event) => event.count)).toEqual([1, 1, 1]);
  }, 60_000);

  it('warns when a removed grant returns with another amount', async () => {
    const namespace = 'regrant';
    const key = { namespace, name: 'acme' };
    await createNamespace(namespace);
    await createPlan(namespace, 'standard');
    await createWallet(namespace, 'acme', [{ id: 'topup', amount: '5.00' }]);
    await waitFor('the grant in the status', async () => ((await readWallet(namespace, 'acme')).status?.appliedGrants?.length === 1 ? true : undefined));

    const setGrants = (grants: Array<{ id: string; amount: string }>) =>
      custom.patchNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'wallets', name: 'acme', body: { spec: { grants } } }, MERGE_PATCH);
    await setGrants([]);
    await waitFor('the removed grant to leave the status', async () => ((await readWallet(namespace, 'acme')).status?.appliedGrants?.length === 0 ? true : undefined));
    await setGrants([{ id: 'topup', amount: '100.00' }]);

    const rejected = await waitFor('the Warning event', async () => {
      const events = (await eventsFor(namespace, 'acme')).filter((event) => event.reason === 'GrantRejected');
      return events.length > 0 ? events : undefined;
    });
    expect(rejected.map((event) => event.message)).toEqual([
      'grant "topup" of 100.00 USD was not applied: the ledger applied this id before with 5.00 USD and keeps that amount; add the new amount as a grant with a new id',
    ]);
    expect((await ledger.state(key)).granted).toBe(5n * NANO);
    // The status keeps saying so after the Event is gone: the grant stays out of appliedGrants, and Ready names it.
    const wallet = await waitFor('the ignored grant in the Ready message', async () => {
      const current = await readWallet(namespace, 'acme');
      return condition(current, 'Ready')?.message.includes('grant "topup" of 100.00 USD was not applied') ? current : undefined;
    });
    expect(condition(wallet, 'Ready')?.status).toBe('True');
    expect(condition(wallet, 'Ready')?.message).toBe(
      'available 5.00 USD of balance 5.00 USD; grant "topup" of 100.00 USD was not applied: the ledger applied this id before with 5.00 USD ' +
        'and keeps that amount; add the new amount as a grant with a new id',
    );
    expect(wallet.status?.appliedGrants).toEqual([]);
    expect(wallet.status?.granted).toBe('5.00');
    const events = (await eventsFor(namespace, 'acme')).filter((event) => event.reason === 'GrantRejected');
    expect(events.map((event) => event.count ?? 1)).toEqual([1]);
  }, 60_000);

  it('reports low balance and exhaustion', async () => {
    const namespace = 'spending';
    const key = { namespace, name: 'burn' };
    await createNamespace(namespace);
    await createPlan(namespace, 'standard');
    await createWallet(namespace, 'burn', [{ id: 'trial', amount: '1.00' }], { lowBalanceThreshold: '0.30' });

    await waitFor('the wallet to be ready', async () => {
      const wallet = await readWallet(namespace, 'burn');
      return condition(wallet, 'Ready')?.status === 'True' ? wallet : undefined;
    });
    const funded = await readWallet(namespace, 'burn');
    expect(condition(funded, 'LowBalance')).toMatchObject({ status: 'False', reason: 'AboveThreshold' });

    await spend(key, 'request-1', 75n * NANO / 100n);
    const low = await waitFor('LowBalance to turn True', async () => {
      const wallet = await readWallet(namespace, 'burn');
      return condition(wallet, 'LowBalance')?.status === 'True' ? wallet : undefined;
    });
    expect(low.status?.balance).toBe('0.25');
    expect(low.status?.spent).toBe('0.75');
    expect(condition(low, 'LowBalance')).toMatchObject({
      reason: 'BelowThreshold',
      message: 'balance 0.25 USD is below the low-balance threshold 0.30 USD',
    });
    expect(condition(low, 'Exhausted')?.status).toBe('False');
    expect(condition(low, 'Ready')?.status).toBe('True');

    await spend(key, 'request-2', 25n * NANO / 100n);
    const empty = await waitFor('Exhausted to turn True', async () => {
      const wallet = await readWallet(namespace, 'burn');
      return condition(wallet, 'Exhausted')?.status === 'True' ? wallet : undefined;
    });
    expect(empty.status?.balance).toBe('0.00');
    expect(empty.status?.spent).toBe('1.00');
    expect(condition(empty, 'Exhausted')).toMatchObject({ reason: 'NoFunds' });
    expect(condition(empty, 'Ready')).toMatchObject({ status: 'False', reason: 'Exhausted' });
    expect(condition(empty, 'LowBalance')?.status).toBe('True');

    const events = await waitFor('the Exhausted event', async () => {
      const list = await eventsFor(namespace, 'burn');
      return list.some((event) => event.reason === 'Exhausted') ? list : undefined;
    });
    expect(reasonsOf(events)).toEqual(['Exhausted', 'GrantApplied', 'LowBalance', 'Ready']);
    const low_event = events.find((event) => event.reason === 'LowBalance')!;
    expect(low_event.type).toBe('Warning');
    expect(low_event.involvedObject.kind).toBe('Wallet');
    expect(low_event.source?.component).toBe('tollgate-operator');
  }, 60_000);

  it('closes the ledger account on deletion', async () => {
    const namespace = 'deletion';
    const key = { namespace, name: 'gone' };
    await createNamespace(namespace);
    await createPlan(namespace, 'standard');
    await createWallet(namespace, 'gone', [{ id: 'once', amount: '3.00' }]);
    await waitFor('the finalizer and the grant', async () => {
      const wallet = await readWallet(namespace, 'gone');
      return wallet.status?.granted === '3.00' && wallet.metadata.finalizers?.includes('tollgate.dev/ledger') ? wallet : undefined;
    });
    await spend(key, 'request-1', 1n * NANO);
    await waitFor('the debit in the status', async () => ((await readWallet(namespace, 'gone')).status?.spent === '1.00' ? true : undefined));

    await custom.deleteNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'wallets', name: 'gone' });
    await waitFor('the wallet to disappear', async () => {
      try {
        await readWallet(namespace, 'gone');
        return undefined;
      } catch (error) {
        return (error as { code?: number }).code === 404 ? true : undefined;
      }
    });

    const after = await ledger.reserve(key, 'request-2', { fixed: 1n, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'x' });
    expect(after).toEqual({ status: 'wallet_closed' });
    const state = await ledger.state(key);
    expect(state.closed).toBe(true);
    expect(state.granted).toBe(3n * NANO);
    expect(state.spent).toBe(1n * NANO);
    expect(state.balance).toBe(2n * NANO);
    expect((await ledger.verify(key)).entries).toBe(2);
    expect(reasonsOf(await eventsFor(namespace, 'gone'))).toContain('LedgerClosed');

    // Applying the same manifest again, as a GitOps tool does after a delete, reopens the account with the balance it kept.
    await createWallet(namespace, 'gone', [{ id: 'once', amount: '3.00' }]);
    const reopened = await waitFor('the recreated wallet to be ready', async () => {
      const wallet = await readWallet(namespace, 'gone');
      return condition(wallet, 'Ready')?.status === 'True' ? wallet : undefined;
    });
    expect(reopened.status?.balance).toBe('2.00');
    expect(reopened.status?.granted).toBe('3.00');
    expect(await ledger.reserve(key, 'request-3', { fixed: 1n, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'x' })).toMatchObject({
      status: 'reserved',
    });
    expect((await ledger.state(key)).closed).toBe(false);
    const reopenedEvent = (await eventsFor(namespace, 'gone')).find((event) => event.reason === 'LedgerReopened');
    expect(reopenedEvent?.message).toBe('reopened the ledger account that the deletion of an earlier Wallet of this name closed; its balance is 2.00');
    expect((await ledger.verify(key)).entries).toBe(2);
  }, 60_000);

  it('keeps a closed account from a wallet in another currency', async () => {
    const namespace = 'currency-change';
    const key = { namespace, name: 'team' };
    await createNamespace(namespace);
    await createPlan(namespace, 'standard');
    await createWallet(namespace, 'team', [{ id: 'usd', amount: '3.00' }]);
    await waitFor('the grant', async () => ((await readWallet(namespace, 'team')).status?.granted === '3.00' ? true : undefined));
    await custom.deleteNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'wallets', name: 'team' });
    await waitFor('the account to close', async () => ((await ledger.state(key)).closed ? true : undefined));
    await waitFor('the wallet to disappear', async () => {
      try {
        await readWallet(namespace, 'team');
        return undefined;
      } catch (error) {
        return (error as { code?: number }).code === 404 ? true : undefined;
      }
    });

    // The same name in EUR must not spend the 3.00 USD left in the account, nor add EUR to it.
    await createWallet(namespace, 'team', [{ id: 'eur', amount: '5.00' }], { currency: 'EUR' });
    const refused = await waitFor('the currency problem', async () => {
      const wallet = await readWallet(namespace, 'team');
      return condition(wallet, 'Ready')?.reason === 'LedgerCurrencyMismatch' ? wallet : undefined;
    });
    expect(condition(refused, 'Ready')).toMatchObject({
      status: 'False',
      message:
        'the ledger account of this name was closed when a Wallet in USD was deleted, and a Wallet in EUR cannot take over its balance; ' +
        'use currency USD, or another name',
    });
    expect(await ledger.state(key)).toMatchObject({ closed: true, granted: 3n * NANO });
  }, 60_000);

  it('serves snapshots and validates references', async () => {
    const namespace = 'config';
    const base = `http://127.0.0.1:${operator.httpPort}/v1/snapshot/${namespace}`;
    await createNamespace(namespace);
    await createPlan(namespace, 'standard', '0.15');
    await createWallet(namespace, 'team', [{ id: 'start', amount: '5.00' }]);
    await createWallet(namespace, 'orphan', [{ id: 'start', amount: '1.00' }], { pricePlanRef: { name: 'missing' } });
    await createRoute(namespace, 'openai', {
      protocol: 'openai',
      baseURL: 'https://api.openai.com',
      credentialSecretRef: { name: 'openai-key', key: 'apiKey' },
      models: ['gpt-4o-mini'],
      costs: { 'gpt-4o-mini': { input: '0.10', output: '0.40' } },
    });

    interface SnapshotBody {
      version: string;
      resources: {
        routes: Array<{ metadata: { name: string } }>;
        plans: Array<{ spec: { versions: Array<{ models: Record<string, { input: string }> }> } }>;
        wallets: Array<{ metadata: { name: string } }>;
        secrets: unknown[];
      };
    }
    const first = await waitFor('the snapshot to contain the route, plan and wallet', async () => {
      const response = await fetch(base);
      const body = (await response.json()) as SnapshotBody;
      const { routes, plans, wallets } = body.resources;
      return response.status === 200 && routes.length === 1 && plans.length === 1 && wallets.length === 1
        ? { body, etag: response.headers.get('etag') }
        : undefined;
    });
    expect(first.etag).toBe(`"${first.body.version}"`);
    expect(first.body.version).toMatch(/^[0-9a-f]{12}$/);
    expect(first.body.resources.wallets.map((wallet) => wallet.metadata.name)).toEqual(['team']);
    expect(first.body.resources.secrets).toEqual([]);
    expect(first.body.resources.plans[0]!.spec.versions[0]!.models['gpt-4o-mini']!.input).toBe('0.15');

    const unchanged = await fetch(base, { headers: { 'If-None-Match': `"${first.body.version}"` } });
    expect(unchanged.status).toBe(304);

    const longPoll = fetch(`${base}?waitSeconds=20`, { headers: { 'If-None-Match': `"${first.body.version}"` } });
    await custom.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace,
        plural: 'priceplans',
        name: 'standard',
        body: {
          spec: {
            versions: [{ name: 'v1', effectiveFrom: '2025-01-01T00:00:00Z', models: { 'gpt-4o-mini': { input: '0.20', output: '0.60' } } }],
          },
        },
      },
      MERGE_PATCH,
    );
    const changed = await longPoll;
    expect(changed.status).toBe(200);
    const second = (await changed.json()) as SnapshotBody;
    expect(second.version).not.toBe(first.body.version);
    expect(changed.headers.get('etag')).toBe(`"${second.version}"`);
    expect(second.resources.plans[0]!.spec.versions[0]!.models['gpt-4o-mini']!.input).toBe('0.20');

    const orphan = await waitFor('the orphan wallet to report its missing plan', async () => {
      const wallet = await readWallet(namespace, 'orphan');
      return condition(wallet, 'Ready')?.status === 'False' ? wallet : undefined;
    });
    expect(condition(orphan, 'Ready')).toMatchObject({
      reason: 'PricePlanNotFound',
      message: 'PricePlan "missing" not found in namespace "config"; create it or fix spec.pricePlanRef.name',
    });

    const route = await waitFor('the route to report its missing Secret', async () => {
      const object = await readCustom(namespace, 'providerroutes', 'openai');
      return condition(object, 'Ready')?.status === 'False' ? object : undefined;
    });
    expect(condition(route, 'Ready')).toMatchObject({
      reason: 'SecretMissing',
      message:
        'Secret "openai-key" (key "apiKey") not found in namespace "config"; create it with the provider credential under key "apiKey"',
    });
    // The Event is recorded after the status update, so it can show up a moment later.
    const routeEvents = await waitFor('the route\'s SecretMissing Event', async () => {
      const events = await eventsFor(namespace, 'openai');
      return events.length > 0 ? events : undefined;
    });
    expect(routeEvents.map((event) => [event.type, event.reason])).toEqual([['Warning', 'SecretMissing']]);

    await core.createNamespacedSecret({ namespace, body: { metadata: { name: 'openai-key' }, stringData: { apiKey: 'sk-test' } } });
    const fixed = await waitFor('the route to turn Ready', async () => {
      const object = await readCustom(namespace, 'providerroutes', 'openai');
      return condition(object, 'Ready')?.status === 'True' ? object : undefined;
    });
    expect(condition(fixed, 'Ready')).toMatchObject({
      reason: 'Valid',
      message: 'serves 1 model(s) under /openai; credential from Secret "openai-key" key "apiKey"',
    });

    const plan = await waitFor('the plan to report Ready', async () => {
      const object = await readCustom(namespace, 'priceplans', 'standard');
      return condition(object, 'Ready')?.status === 'True' ? object : undefined;
    });
    expect(condition(plan, 'Ready')?.message).toBe('compiled for 1 ProviderRoute(s) in plan currency USD');

    // An output rate under the route's cost of 0.40 charges output-heavy calls less than they cost; the condition and a Warning report it.
    await custom.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace,
        plural: 'priceplans',
        name: 'standard',
        body: { spec: { versions: [{ name: 'v1', effectiveFrom: '2025-01-01T00:00:00Z', models: { 'gpt-4o-mini': { input: '0.20', output: '0.30' } } }] } },
      },
      MERGE_PATCH,
    );
    const below = 'openai/gpt-4o-mini (output)';
    const losing = await waitFor('the plan to report its rates below cost', async () => {
      const object = await readCustom(namespace, 'priceplans', 'standard');
      return condition(object, 'Ready')?.message?.includes('below') ? object : undefined;
    });
    expect(condition(losing, 'Ready')).toMatchObject({
      status: 'True',
      message:
        "compiled for 1 ProviderRoute(s) in plan currency USD; 1 model(s) have rates below the provider's cost, so calls made mostly " +
        `of those tokens or units are charged less than they cost: ${below}`,
    });
    const planEvents = await waitFor('the plan\'s BelowCost Event', async () => {
      const events = (await eventsFor(namespace, 'standard')).filter((event) => event.reason === 'BelowCost');
      return events.length > 0 ? events : undefined;
    });
    expect(planEvents.map((event) => [event.type, event.message])).toEqual([['Warning', `rates below the provider's cost: ${below}`]]);

    // A second route changes the Ready message but not the rates below cost, so no second Warning follows.
    await createRoute(namespace, 'compatible', { protocol: 'openai-compatible', baseURL: 'http://127.0.0.1:9', models: ['local-model'], costs: {} });
    await waitFor('the plan to count both routes', async () => {
      const object = await readCustom(namespace, 'priceplans', 'standard');
      return condition(object, 'Ready')?.message?.startsWith('compiled for 2 ProviderRoute(s)') ? object : undefined;
    });
    // The reconciler records an Event after the status update, so a second one would show up within moments.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const after = (await eventsFor(namespace, 'standard')).filter((event) => event.reason === 'BelowCost');
    expect(after.map((event) => [event.message, event.count ?? 1])).toEqual([[`rates below the provider's cost: ${below}`, 1]]);
  }, 60_000);
});

describe('informer', () => {
  it('restarts a silent watch and keeps following changes', async () => {
    const namespace = 'informer';
    await createNamespace(namespace);
    const restarts: string[] = [];
    const seen: string[] = [];
    const informer = new Informer({
      kind: 'PricePlan',
      clients: createKubeClients(loadKubeConfig({ kubeconfig: apiServer.kubeconfigPath })),
      log,
      namespace,
      resyncMs: 0,
      watchSilenceMs: 1_000,
      onWatchRestart: (reason) => restarts.push(reason),
    });
    informer.subscribe((event, object) => seen.push(`${event} ${object.metadata.name}`));
    informer.start();
    try {
      await informer.waitForSync();
      await waitFor('the watchdog to restart the idle watch', () => (restarts.includes('silent') ? true : undefined));
      await createPlan(namespace, 'after-restart');
      await waitFor('the informer to see the new plan', () => (seen.includes('add after-restart') ? true : undefined));
      expect(informer.get(namespace, 'after-restart')?.kind).toBe('PricePlan');
      // The running operator may already have written the plan's status, which shows up as updates.
      expect(seen[0]).toBe('add after-restart');
      expect(seen.filter((entry) => !entry.startsWith('update '))).toEqual(['add after-restart']);
    } finally {
      informer.stop();
    }
  }, 30_000);
});

describe('event recorder', () => {
  it('counts a repeated event on the first one', async () => {
    const namespace = 'events';
    await createNamespace(namespace);
    const recorder = new EventRecorder({
      clients: createKubeClients(loadKubeConfig({ kubeconfig: apiServer.kubeconfigPath })),
      log,
      component: 'tollgate-operator',
      instance: 'test',
    });
    const target = { apiVersion: `${GROUP}/${VERSION}`, kind: 'Wallet', namespace, name: 'repeat', uid: 'uid-repeat' };
    await recorder.record(target, 'Warning', 'LowBalance', 'balance 1.00 USD is below the low-balance threshold 2.00 USD');
    await recorder.record(target, 'Warning', 'LowBalance', 'balance 1.00 USD is below the low-balance threshold 2.00 USD');
    await recorder.record(target, 'Warning', 'LowBalance', 'balance 0.50 USD is below the low-balance threshold 2.00 USD');

    const events = (await eventsFor(namespace, 'repeat')).sort((a, b) => (a.message ?? '').localeCompare(b.message ?? ''));
    expect(events.map((event) => [event.message, event.count])).toEqual([
      ['balance 0.50 USD is below the low-balance threshold 2.00 USD', 1],
      ['balance 1.00 USD is below the low-balance threshold 2.00 USD', 2],
    ]);
  });
});

describe('leader election', () => {
  it('fails over after a crash and after a release', async () => {
    const namespace = 'failover';
    await createNamespace(namespace);
    await createPlan(namespace, 'standard');
    await operator.stop({ releaseLease: true });

    const replicas = [await launch('replica-a'), await launch('replica-b')];
    const leader = await waitFor('one of two replicas to lead', () => replicas.find((replica) => replica.isLeader()));
    const follower = replicas.find((replica) => replica !== leader)!;
    // Several retry periods (500 ms each) later, the follower has tried and still defers.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(leader.isLeader()).toBe(true);
    expect(follower.isLeader()).toBe(false);
    expect(await leaseHolder()).toBe(leader.identity);

    // Stopping without releasing leaves the Lease held, as a crashed process would.
    await leader.stop({ releaseLease: false });
    expect(await leaseHolder()).toBe(leader.identity);
    await waitFor('the follower to take over', () => (follower.isLeader() ? true : undefined));
    expect(await leaseHolder()).toBe(follower.identity);

    await createWallet(namespace, 'after-crash', [{ id: 'seed', amount: '4.00' }]);
    const afterCrash = await waitFor('the new leader to reconcile a new wallet', async () => {
      const wallet = await readWallet(namespace, 'after-crash');
      return wallet.status?.granted === '4.00' ? wallet : undefined;
    });
    expect(afterCrash.metadata.finalizers).toEqual(['tollgate.dev/ledger']);
    expect((await ledger.state({ namespace, name: 'after-crash' })).granted).toBe(4n * NANO);

    const third = await launch('replica-c');
    await follower.stop({ releaseLease: true });
    await waitFor('the third replica to take over', () => (third.isLeader() ? true : undefined));
    expect(await leaseHolder()).toBe(third.identity);

    await createWallet(namespace, 'after-release', [{ id: 'seed', amount: '6.00' }]);
    const afterRelease = await waitFor('the third replica to reconcile a new wallet', async () => {
      const wallet = await readWallet(namespace, 'after-release');
      return wallet.status?.granted === '6.00' ? wallet : undefined;
    });
    expect(afterRelease.status?.balance).toBe('6.00');
    expect((await ledger.state({ namespace, name: 'after-release' })).granted).toBe(6n * NANO);

    // Another holder takes the Lease: the replica must stop reconciling until it wins it back.
    await setLeaseHolder('intruder', 3600);
    await waitFor('the replica to step down', () => (third.isLeader() ? undefined : true));
    await createWallet(namespace, 'while-led-elsewhere', [{ id: 'seed', amount: '1.00' }]);
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect((await readWallet(namespace, 'while-led-elsewhere')).status).toBeUndefined();
    expect((await ledger.state({ namespace, name: 'while-led-elsewhere' })).granted).toBe(0n);

    await setLeaseHolder('', 1);
    await waitFor('the replica to lead again', () => (third.isLeader() ? true : undefined));
    const resumed = await waitFor('the waiting wallet to be reconciled', async () => {
      const wallet = await readWallet(namespace, 'while-led-elsewhere');
      return wallet.status?.granted === '1.00' ? wallet : undefined;
    });
    expect(resumed.metadata.finalizers).toEqual(['tollgate.dev/ledger']);
  }, 60_000);
});
