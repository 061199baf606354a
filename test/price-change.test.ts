/**
 * A price change applied with kubectl reaches a running sidecar: the operator
 * compiles the new PricePlan into a snapshot, the sidecar's long-poll picks
 * it up, and the next request is billed at the new rate with no restart.
 * Runs a real kube-apiserver with etcd, a real redis-server, the operator,
 * the sidecar in Kubernetes mode and the official openai client.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisLedger } from '../src/ledger/redis.ts';
import { startSimulator } from '../src/simulator/index.ts';
import { createSidecarMetrics } from '../src/telemetry/metrics.ts';
import { compileSnapshot, OperatorConfig } from '../sidecar/config-source.ts';
import { fileCredentials } from '../sidecar/main.ts';
import { createSidecar, DEFAULT_SIDECAR_OPTIONS, type Sidecar } from '../sidecar/server.ts';
import { startOperator, type OperatorConfig as OperatorSettings, type RunningOperator } from '../operator/main.ts';
import { findTestBinary, startApiServer, type ApiServer } from './support/apiserver.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';

const run = promisify(execFile);
const NAMESPACE = 'team-a';
const KEY = 'sk-price-change-test';
const log = pino({ level: process.env.LOG_LEVEL ?? 'silent' });

let apiServer: ApiServer;
let redis: RunningRedis;
let simulator: Awaited<ReturnType<typeof startSimulator>>;
let operator: RunningOperator;
let operatorLedger: RedisLedger;
let sidecarLedger: RedisLedger;
let config: OperatorConfig;
let sidecar: Sidecar;
let sidecarUrl: string;
let credentialsDir: string;

async function kubectl(args: string[], input?: string): Promise<string> {
  const binary = await findTestBinary('kubectl');
  const child = run(binary, ['--kubeconfig', apiServer.kubeconfigPath, ...args], { cwd: path.join(import.meta.dirname, '..') });
  if (input !== undefined) {
    child.child.stdin!.end(input);
  }
  return (await child).stdout;
}

function plan(outputRate: string): string {
  return `
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: standard, namespace: ${NAMESPACE} }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gpt-4o-mini: { input: "1.00", output: "${outputRate}" }
`;
}

const RESOURCES = `
apiVersion: v1
kind: Namespace
metadata: { name: ${NAMESPACE} }
---
apiVersion: v1
kind: Namespace
metadata: { name: tollgate-system }
---
apiVersion: v1
kind: Secret
metadata: { name: openai-key, namespace: ${NAMESPACE} }
stringData: { apiKey: ${KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai, namespace: ${NAMESPACE} }
spec:
  protocol: openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: openai-key, key: apiKey }
  models: [gpt-4o-mini]
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: app, namespace: ${NAMESPACE} }
spec:
  currency: USD
  pricePlanRef: { name: standard }
  grants: [{ id: start, amount: "5.00" }]
`;

function operatorSettings(): OperatorSettings {
  return {
    kubeconfig: apiServer.kubeconfigPath,
    namespace: 'tollgate-system',
    watchNamespace: undefined,
    redisUrl: redis.url,
    httpHost: '127.0.0.1',
    httpPort: 0,
    webhook: false,
    webhookHost: '127.0.0.1',
    webhookPort: 0,
    identity: 'price-change-test',
    leaseName: 'tollgate-operator',
    leaseDurationMs: 2_000,
    renewDeadlineMs: 1_500,
    retryPeriodMs: 500,
    resyncMs: 1_000,
    watchSilenceMs: 30_000,
    statusIntervalMs: 1_000,
    secretRecheckMs: 1_000,
    workers: 2,
    webhookService: 'tollgate',
    webhookConfiguration: 'tollgate',
    webhookSecret: undefined,
    certManager: false,
    configUrl: 'http://127.0.0.1:0',
    sidecarImage: undefined,
    sidecarImagePullPolicy: undefined,
    sidecarResources: undefined,
  };
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function chargedFor(outputTokens: number): Promise<string | null> {
  const client = new OpenAI({ baseURL: `${sidecarUrl}/openai/v1`, apiKey: 'placeholder', maxRetries: 0 });
  const usage = { prompt_tokens: 1_000_000, completion_tokens: outputTokens, total_tokens: 1_000_000 + outputTokens };
  const { response } = await client.chat.completions
    .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'price?' }], max_tokens: 1000 }, { headers: { 'x-sim-usage': JSON.stringify(usage) } })
    .withResponse();
  return response.headers.get('x-tollgate-charged');
}

beforeAll(async () => {
  apiServer = await startApiServer();
  redis = await startRedis();
  simulator = await startSimulator({ host: '127.0.0.1', port: 0, expectedKey: KEY });

  await kubectl(['apply', '--server-side', '-f', 'crds/']);
  await kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/wallets.tollgate.dev', 'crd/priceplans.tollgate.dev', 'crd/providerroutes.tollgate.dev']);
  await kubectl(['apply', '-f', '-'], RESOURCES.replace('SIMULATOR_URL', simulator.url) + '---' + plan('2.00'));

  operator = await startOperator(operatorSettings(), { log, defaultMetrics: false });
  operatorLedger = new RedisLedger(redis.url);
  await waitFor('the grant in the ledger', async () => ((await operatorLedger.state({ namespace: NAMESPACE, name: 'app' })).granted > 0n ? true : undefined));

  // The injector mounts the provider Secret into the sidecar; here the test writes the same file.
  credentialsDir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-credentials-'));
  await mkdir(path.join(credentialsDir, 'openai-key'));
  await writeFile(path.join(credentialsDir, 'openai-key', 'apiKey'), KEY);

  const snapshotUrl = `http://127.0.0.1:${operator.httpPort}/v1/snapshot/${NAMESPACE}`;
  config = await OperatorConfig.connect(snapshotUrl, (resources) => compileSnapshot(resources, fileCredentials(credentialsDir)), log);
  sidecarLedger = new RedisLedger(redis.url);
  sidecar = createSidecar(
    config,
    sidecarLedger,
    createSidecarMetrics({ defaultMetrics: false }),
    { ...DEFAULT_SIDECAR_OPTIONS, walletPolicy: { defaultWallet: `${NAMESPACE}/app`, allowWalletHeader: false } },
    log,
  );
  sidecarUrl = await sidecar.app.listen({ host: '127.0.0.1', port: 0 });
});

afterAll(async () => {
  config?.close();
  await sidecar?.app.close();
  await sidecar?.proxy.close();
  await sidecarLedger?.quit();
  await operator?.stop();
  await operatorLedger?.quit();
  await simulator?.close();
  await redis?.stop();
  await apiServer?.stop();
  if (credentialsDir) await rm(credentialsDir, { recursive: true, force: true });
});

describe('price change through the operator', () => {
  it('bills at the new rate without a restart', async () => {
    // One million input tokens at 1.00 plus 1000 output tokens at 2.00 per million.
    expect(await chargedFor(1000)).toBe('1.002');
    const versionBefore = config.current().version;

    await kubectl(['apply', '-f', '-'], plan('8.00'));
    await waitFor('the new snapshot in the sidecar', async () => (config.current().version !== versionBefore ? true : undefined));

    expect(await chargedFor(1000)).toBe('1.008');
    const state = await sidecarLedger.state({ namespace: NAMESPACE, name: 'app' });
    expect(state.spent).toBe(2_010_000_000n);
  });
});
