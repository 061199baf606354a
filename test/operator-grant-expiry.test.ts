// Runs the operator against a real kube-apiserver (with etcd) and a real redis-server. It
// follows a Wallet grant with an expiry a few seconds ahead: applied with its expiry, partly
// spent, then lapsed. The Wallet status and Events follow the ledger.
// Needs KUBEBUILDER_ASSETS (see test/support/apiserver.ts).

import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { ApiextensionsV1Api, CoreV1Api, CustomObjectsApi, KubeConfig, type V1CustomResourceDefinition } from '@kubernetes/client-node';
import { pino } from 'pino';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startOperator, type RunningOperator } from '../operator/main.ts';
import { RedisLedger } from '../src/ledger/redis.ts';
import { startApiServer, type ApiServer } from './support/apiserver.ts';
import { testOperatorConfig } from './support/operator.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';
import { waitFor } from './support/processes.ts';

const GROUP = 'tollgate.dev';
const VERSION = 'v1alpha1';
const NAMESPACE = 'expiry';
const NANO = 1_000_000_000n;
/** How far ahead the promotional grant expires: long enough for the operator to apply it and for one spend before it. */
const PROMO_LIFETIME_MS = 8_000;
const log = pino({ level: process.env['LOG_LEVEL'] ?? 'warn' });

let apiServer: ApiServer;
let redis: RunningRedis;
let ledger: RedisLedger;
let core: CoreV1Api;
let custom: CustomObjectsApi;
let operator: RunningOperator | undefined;

interface WalletStatus {
  balance?: string;
  reserved?: string;
  spent?: string;
  granted?: string;
  expired?: string;
  appliedGrants?: string[];
}

async function readStatus(name: string): Promise<WalletStatus> {
  const wallet = (await custom.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace: NAMESPACE, plural: 'wallets', name })) as {
    status?: WalletStatus;
  };
  return wallet.status ?? {};
}

async function installCrds(kubeConfig: KubeConfig): Promise<void> {
  const extensions = kubeConfig.makeApiClient(ApiextensionsV1Api);
  const dir = path.join(import.meta.dirname, '..', 'crds');
  for (const file of (await readdir(dir)).filter((name) => name.endsWith('.yaml'))) {
    const body = parseYaml(await readFile(path.join(dir, file), 'utf8')) as V1CustomResourceDefinition;
    await extensions.createCustomResourceDefinition({ body });
    await waitFor(`CRD ${body.metadata?.name} to be established`, async () => {
      const crd = await extensions.readCustomResourceDefinition({ name: body.metadata!.name! });
      return crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True') ? true : undefined;
    });
  }
}

async function createObject(plural: string, kind: string, name: string, spec: Record<string, unknown>): Promise<void> {
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace: NAMESPACE,
    plural,
    body: { apiVersion: `${GROUP}/${VERSION}`, kind, metadata: { name }, spec },
  });
}

beforeAll(async () => {
  // Each is kept as soon as it starts, so that afterAll stops it when the other fails.
  const started = await Promise.allSettled([startApiServer().then((server) => (apiServer = server)), startRedis().then((server) => (redis = server))]);
  for (const result of started) if (result.status === 'rejected') throw result.reason;
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(apiServer.kubeconfigPath);
  core = kubeConfig.makeApiClient(CoreV1Api);
  custom = kubeConfig.makeApiClient(CustomObjectsApi);
  ledger = new RedisLedger(redis.url);

  await installCrds(kubeConfig);
  await core.createNamespace({ body: { metadata: { name: 'tollgate-system' } } });
  await core.createNamespace({ body: { metadata: { name: NAMESPACE } } });
  const config = testOperatorConfig({ kubeconfig: apiServer.kubeconfigPath, redisUrl: redis.url, identity: 'expiry-replica' });
  operator = await startOperator(config, { log, defaultMetrics: false });
  await waitFor('the operator to lead', async () => (operator!.isLeader() ? true : undefined));
}, 120_000);

afterAll(async () => {
  await operator?.stop({ releaseLease: true });
  await ledger?.quit();
  await redis?.stop();
  await apiServer?.stop();
}, 60_000);

describe('operator grant expiry', () => {
  it('lapses a grant and lowers the status balance', async () => {
    const key = { namespace: NAMESPACE, name: 'promo' };
    // The API accepts whole seconds with an offset; round up so the grant gets at least the planned lifetime.
    const expiresAt = new Date(Math.ceil((Date.now() + PROMO_LIFETIME_MS) / 1000) * 1000).toISOString().replace('.000Z', 'Z');
    await createObject('priceplans', 'PricePlan', 'standard', {
      currency: 'USD',
      versions: [{ name: 'v1', effectiveFrom: '2025-01-01T00:00:00Z', models: { 'gpt-4o-mini': { input: '0.15', output: '0.60' } } }],
    });
    await createObject('wallets', 'Wallet', 'promo', {
      currency: 'USD',
      pricePlanRef: { name: 'standard' },
      grants: [
        { id: 'paid', amount: '5.00' },
        { id: 'launch', amount: '2.00', reason: 'promotion', expiresAt },
        { id: 'stale', amount: '9.00', expiresAt: '2020-01-01T00:00:00Z' },
      ],
    });

    const applied = await waitFor('both live grants in the status', async () => {
      const status = await readStatus('promo');
      return status.appliedGrants?.length === 2 ? status : undefined;
    });
    expect(applied).toMatchObject({ appliedGrants: ['paid', 'launch'], granted: '7.00', balance: '7.00', expired: '0.00' });

    // 0.50 is attributed to the expiring grant, so 1.50 of it is left to lapse.
    const spend = 500_000_000n;
    const hold = { fixed: spend, perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'spend' };
    expect(await ledger.reserve(key, 'spend', hold)).toMatchObject({ status: 'reserved' });
    const usage = { charged: spend, providerCost: spend / 2n, model: 'gpt-4o-mini', route: 'openai', tokens: { input: 1000 }, estimated: false };
    expect(await ledger.commit(key, 'spend', usage)).toMatchObject({ status: 'committed' });
    expect(Date.now()).toBeLessThan(Date.parse(expiresAt));

    const lapsed = await waitFor('the lapse in the status', async () => {
      const status = await readStatus('promo');
      return status.expired !== '0.00' && status.expired !== undefined ? status : undefined;
    });
    expect(lapsed).toMatchObject({ granted: '7.00', spent: '0.50', expired: '1.50', balance: '5.00', reserved: '0.00' });

    const state = await ledger.state(key);
    expect(state.expired).toBe(3n * NANO / 2n);
    expect(state.balance).toBe(5n * NANO);
    expect(await ledger.verify(key)).toEqual({
      ok: true,
      granted: 7n * NANO,
      spent: spend,
      expired: 3n * NANO / 2n,
      entries: 4,
      problems: [],
    });

    const events = await waitFor('the lapse Event', async () => {
      const list = (await core.listNamespacedEvent({ namespace: NAMESPACE, fieldSelector: 'involvedObject.name=promo' })).items;
      return list.some((event) => event.reason === 'GrantLapsed') ? list : undefined;
    });
    const expiryEvents = events
      .filter((event) => ['GrantApplied', 'GrantExpired', 'GrantLapsed'].includes(event.reason ?? ''))
      .map((event) => [event.type, event.reason, event.message, event.count])
      .sort();
    expect(expiryEvents).toEqual([
      ['Normal', 'GrantApplied', `applied grant "launch" of 2.00 USD (promotion), expiring at ${expiresAt}; balance 7.00 USD`, 1],
      ['Normal', 'GrantApplied', 'applied grant "paid" of 5.00 USD; balance 5.00 USD', 1],
      ['Normal', 'GrantLapsed', 'expired grants lapsed and took back 1.50 USD of unspent credit; balance 5.00 USD', 1],
      ['Warning', 'GrantExpired', 'grant "stale" expired at 2020-01-01T00:00:00Z before it was applied; it was skipped', 1],
    ]);
  }, 60_000);
});
