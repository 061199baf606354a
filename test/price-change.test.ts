/**
 * A price change applied with kubectl reaches a running sidecar: the operator
 * compiles the new PricePlan into a snapshot, the sidecar's long-poll picks
 * it up, and the next request is billed at the new rate with no restart.
 * Runs a real kube-apiserver with etcd, a real redis-server, the operator,
 * the sidecar in Kubernetes mode and the official openai client.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisLedger } from '../src/ledger/redis.ts';
import { startSimulator } from '../src/simulator/index.ts';
import { createSidecarMetrics } from '../src/telemetry/metrics.ts';
import { compileSnapshot, OperatorConfig } from '../sidecar/config-source.ts';
import { credentialsFingerprint, fileCredentials } from '../sidecar/main.ts';
import { createSidecar, DEFAULT_SIDECAR_OPTIONS, type Sidecar } from '../sidecar/server.ts';
import { startOperator, type OperatorConfig as OperatorSettings, type RunningOperator } from '../operator/main.ts';
import { runKubectl, startApiServer, type ApiServer } from './support/apiserver.ts';
import { testOperatorConfig } from './support/operator.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';
import { waitFor } from './support/processes.ts';

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
const simulatorOptions = { host: '127.0.0.1', port: 0, expectedKey: KEY };

function kubectl(args: string[], input?: string): Promise<string> {
  return runKubectl(apiServer, args, input);
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
  return testOperatorConfig({ kubeconfig: apiServer.kubeconfigPath, redisUrl: redis.url, identity: 'price-change-test' });
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
  // The simulator reads expectedKey from this object on each request, so a test can rotate the provider's key.
  simulator = await startSimulator(simulatorOptions);

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
  config = await OperatorConfig.connect(snapshotUrl, (resources) => compileSnapshot(resources, fileCredentials(credentialsDir)), log, {
    credentialsOf: credentialsFingerprint(fileCredentials(credentialsDir)),
    credentialsCheckMs: 100,
  });
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

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

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

  it('serves from a sidecar process in pod mode', async () => {
    const [port, adminPort] = [await freePort(), await freePort()];
    const child = spawn(process.execPath, ['src/cli/main.ts', 'sidecar'], {
      cwd: path.join(import.meta.dirname, '..'),
      env: {
        ...process.env,
        LOG_LEVEL: 'warn',
        TOLLGATE_NAMESPACE: NAMESPACE,
        TOLLGATE_WALLET: 'app',
        TOLLGATE_CONFIG_URL: `http://127.0.0.1:${operator.httpPort}`,
        TOLLGATE_REDIS_URL: redis.url,
        TOLLGATE_CREDENTIALS_DIR: credentialsDir,
        TOLLGATE_LISTEN: `127.0.0.1:${port}`,
        TOLLGATE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    try {
      const ready = await waitFor('the sidecar process to be ready', async () => {
        const response = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
        return response.ok ? ((await response.json()) as { wallets: number }) : undefined;
      });
      expect(ready.wallets).toBe(1);

      const before = await sidecarLedger.state({ namespace: NAMESPACE, name: 'app' });
      const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/openai/v1`, apiKey: 'placeholder', maxRetries: 0 });
      const completion = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'pod mode' }], max_tokens: 10 });
      expect(completion.choices[0]?.message.content?.length).toBeGreaterThan(0);
      const after = await sidecarLedger.state({ namespace: NAMESPACE, name: 'app' });
      expect(after.spent).toBeGreaterThan(before.spent);

      // The wallet header is refused in pod mode: a pod pays from its own wallet only.
      const header = await client.chat.completions
        .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }], max_tokens: 5 }, { headers: { 'x-tollgate-wallet': 'other' } })
        .catch((error: unknown) => error);
      expect((header as InstanceType<typeof OpenAI.APIError>).status).toBe(403);

      const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      expect(metrics).toContain('tollgate_requests_total{route="openai",model="gpt-4o-mini",outcome="admitted"} 1');
      const proxyRoutes = await fetch(`http://127.0.0.1:${adminPort}/openai/v1/models`);
      expect(proxyRoutes.status).toBe(404);
    } finally {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
    expect(stderr).toBe('');
  });

  it('uses a rotated provider key without a restart', async () => {
    const rotated = 'sk-price-change-rotated';
    const before = await sidecarLedger.state({ namespace: NAMESPACE, name: 'app' });
    simulatorOptions.expectedKey = rotated;
    try {
      const refused = await chargedFor(10).catch((error: unknown) => error);
      expect((refused as InstanceType<typeof OpenAI.APIError>).status).toBe(401);

      // The kubelet updates the mounted Secret file in place; the sidecar reads it again within its check interval.
      await writeFile(path.join(credentialsDir, 'openai-key', 'apiKey'), rotated);
      const charged = await waitFor('a call with the rotated key', () => chargedFor(1000).catch(() => undefined));
      // One million input tokens at 1.00 plus 1000 output tokens at 8.00 per million, the plan of the first test.
      expect(charged).toBe('1.008');
      const after = await sidecarLedger.state({ namespace: NAMESPACE, name: 'app' });
      // The refused call cost nothing.
      expect(after.spent - before.spent).toBe(1_008_000_000n);
    } finally {
      simulatorOptions.expectedKey = KEY;
      await writeFile(path.join(credentialsDir, 'openai-key', 'apiKey'), KEY);
    }
  });
});
