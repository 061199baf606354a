/**
 * Tests the Redis TLS settings along the whole path. The operator, started
 * from its command-line flags, connects to a redis-server that requires
 * client certificates. Its webhook injects a sidecar that mounts the TLS
 * Secret of the pod's namespace, and a `tollgate sidecar` process, started
 * with the injected environment, bills an official openai client call over
 * TLS. Runs a real kube-apiserver with etcd, a real redis-server with TLS
 * and the provider simulator. No kubelet runs, so the test does its part:
 * it writes the mounted Secrets into a temporary directory and starts the
 * sidecar process itself.
 */
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { V1Container, V1Pod, V1Secret } from '@kubernetes/client-node';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadRedisTls, REDIS_TLS_OPTIONS } from '../src/ledger/redis-tls.ts';
import { RedisLedger } from '../src/ledger/redis.ts';
import { startSimulator } from '../src/simulator/index.ts';
import { parseOperatorArgs, startOperator, type RunningOperator } from '../operator/main.ts';
import { runKubectl, startApiServer, type ApiServer } from './support/apiserver.ts';
import { findFreePorts, stopProcess, trackChild, waitFor } from './support/processes.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';
import { createTestCertificates, type TestCertificates } from './support/tls.ts';

const ROOT = path.join(import.meta.dirname, '..');
const NAMESPACE = 'tls-shop';
const OPERATOR_NAMESPACE = 'tollgate-system';
const TLS_SECRET = 'redis-tls';
const WEBHOOK_CONFIGURATION = 'tollgate-redis-tls-e2e';
const SIDECAR_IMAGE = 'registry.example/tollgate:test';
/** In-cluster snapshot URL that the webhook writes into the pod. The test points the sidecar process at the operator's loopback port instead. */
const CONFIG_URL = 'http://tollgate.tollgate-system.svc:8080';
const SIMULATOR_KEY = 'sk-redis-tls-e2e';
/** Every volume that the injector mounts into the sidecar lies under one of these directories: Secrets, and the emptyDir of its state. */
const MOUNT_PREFIXES = ['/var/run/tollgate/', '/var/lib/tollgate/'];
const log = pino({ level: process.env['LOG_LEVEL'] ?? 'silent' });

const RESOURCES = `
apiVersion: v1
kind: Namespace
metadata: { name: ${NAMESPACE} }
---
apiVersion: v1
kind: Namespace
metadata: { name: ${OPERATOR_NAMESPACE} }
---
apiVersion: v1
kind: Secret
metadata: { name: openai-key, namespace: ${NAMESPACE} }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai, namespace: ${NAMESPACE} }
spec:
  protocol: openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: openai-key, key: apiKey }
  models: [gpt-4o-mini]
  costs:
    gpt-4o-mini: { input: "0.50", output: "1.00" }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: standard, namespace: ${NAMESPACE} }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gpt-4o-mini: { input: "1.00", output: "2.00" }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata:
  name: app
  namespace: ${NAMESPACE}
  annotations: { tollgate.dev/default: "true" }
spec:
  currency: USD
  pricePlanRef: { name: standard }
  grants: [{ id: start, amount: "5.00" }]
`;

/** Builds the webhook configuration as a cluster has it before the operator starts, without the caBundle that the operator patches in. */
function webhookConfiguration(port: number): string {
  return `
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: { name: ${WEBHOOK_CONFIGURATION} }
webhooks:
  - name: pods.inject.tollgate.dev
    admissionReviewVersions: [v1]
    sideEffects: NoneOnDryRun
    failurePolicy: Fail
    timeoutSeconds: 10
    reinvocationPolicy: IfNeeded
    clientConfig: { url: "https://127.0.0.1:${port}/mutate-pods" }
    rules:
      - { apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods], scope: Namespaced }
    namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: ${NAMESPACE} } }
    objectSelector: { matchLabels: { tollgate.dev/inject: "true" } }
`;
}

const POD = `
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: ${NAMESPACE}
  labels: { tollgate.dev/inject: "true" }
spec:
  containers:
    - { name: app, image: shop/web:1 }
`;

let apiServer: ApiServer;
let certificates: TestCertificates;
let otherCertificates: TestCertificates;
let redis: RunningRedis;
let simulator: Awaited<ReturnType<typeof startSimulator>>;
let operator: RunningOperator;
let ledger: RedisLedger;
let pod: V1Pod;
let mountRoot: string;

function kubectl(args: string[], input?: string): Promise<string> {
  return runKubectl(apiServer, args, input);
}

function sidecarOf(stored: V1Pod): V1Container {
  const sidecar = stored.spec?.initContainers?.find((container) => container.name === 'tollgate-sidecar');
  if (sidecar === undefined) throw new Error(`pod ${stored.metadata?.name} has no injected tollgate-sidecar container`);
  return sidecar;
}

function appOf(stored: V1Pod): V1Container {
  const app = stored.spec?.containers.find((container) => container.name === 'app');
  if (app === undefined) throw new Error(`pod ${stored.metadata?.name} has no app container`);
  return app;
}

/** Maps a path in the sidecar container to the temporary directory that replaces the kubelet's mounts. */
function localPath(containerPath: string): string {
  const prefix = MOUNT_PREFIXES.find((each) => `${containerPath}/`.startsWith(each));
  if (prefix === undefined) throw new Error(`mount path ${containerPath} is not under ${MOUNT_PREFIXES.join(' or ')}`);
  return path.join(mountRoot, prefix, containerPath.slice(prefix.length));
}

/** Whether a path is one of MOUNT_PREFIXES or lies below one. */
const isMounted = (value: string) => MOUNT_PREFIXES.some((prefix) => `${value}/`.startsWith(prefix));

/**
 * Writes the keys of each Secret volume that the container mounts, as the
 * kubelet would, below mountRoot, and creates the directory of each emptyDir
 * volume. Only the prefix (one of MOUNT_PREFIXES) of the mount path changes. The rest of the path, the file names (the volume's items)
 * and the contents come from the stored pod and Secrets.
 */
async function writeSecretMounts(stored: V1Pod, container: V1Container): Promise<void> {
  for (const mount of container.volumeMounts ?? []) {
    const volume = stored.spec?.volumes?.find((each) => each.name === mount.name);
    // Other emptyDir mounts, such as /tmp, stay where they are on this machine.
    if (volume?.emptyDir !== undefined && isMounted(mount.mountPath)) await mkdir(localPath(mount.mountPath), { recursive: true });
    const source = volume?.secret;
    if (source?.secretName === undefined) continue;

    const secret = JSON.parse(await kubectl(['get', 'secret', source.secretName, '-n', NAMESPACE, '-o', 'json'])) as V1Secret;
    const data = secret.data ?? {};
    const items = source.items ?? Object.keys(data).map((key) => ({ key, path: key }));
    const dir = localPath(mount.mountPath);
    await mkdir(dir, { recursive: true });
    // As the kubelet does: the keys go into a new directory, each file is a link through `..data`, and one rename of
    // that link replaces every file at once.
    const version = await mkdtemp(path.join(dir, '..version-'));
    for (const item of items) {
      const value = data[item.key];
      if (value === undefined) throw new Error(`Secret ${source.secretName} has no key ${item.key}, which volume ${mount.name} mounts`);
      await writeFile(path.join(version, item.path), Buffer.from(value, 'base64'), { mode: source.defaultMode ?? 0o644 });
    }
    await symlink(path.basename(version), path.join(dir, '..data_tmp'));
    await rename(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
    for (const item of items) {
      const link = path.join(dir, item.path);
      if (!existsSync(link)) await symlink(path.join('..data', item.path), link);
    }
  }
}

/**
 * Returns the container's environment as the kubelet would set it: plain
 * values, with paths under MOUNT_PREFIXES mapped by localPath, and the pod's
 * namespace for a field reference to metadata.namespace.
 */
function containerEnvironment(stored: V1Pod, container: V1Container): Record<string, string> {
  const env: Record<string, string> = {};
  for (const variable of container.env ?? []) {
    if (variable.value !== undefined) {
      env[variable.name] = isMounted(variable.value) ? localPath(variable.value) : variable.value;
    } else if (variable.valueFrom?.fieldRef?.fieldPath === 'metadata.namespace') {
      env[variable.name] = stored.metadata!.namespace!;
    } else {
      throw new Error(`variable ${variable.name} of container ${container.name} has a source this test does not resolve: ${JSON.stringify(variable.valueFrom)}`);
    }
  }
  return env;
}

interface SidecarProcess {
  /** Base URL of the proxy, `http://127.0.0.1:<port>`. */
  url: string;
  adminUrl: string;
  stdout(): string;
  stderr(): string;
  stop(): Promise<void>;
}

/** Starts `tollgate sidecar` with the injected environment, on loopback ports and the operator's snapshot server. */
async function startSidecarProcess(overrides: Record<string, string> = {}): Promise<SidecarProcess> {
  const [port, adminPort] = await findFreePorts(2);
  const child = spawn(process.execPath, ['src/cli/main.ts', 'sidecar'], {
    cwd: ROOT,
    env: {
      ...process.env,
      LOG_LEVEL: 'warn',
      ...containerEnvironment(pod, sidecarOf(pod)),
      TOLLGATE_LISTEN: `127.0.0.1:${port}`,
      TOLLGATE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
      TOLLGATE_CONFIG_URL: `http://127.0.0.1:${operator.httpPort}`,
      ...overrides,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  trackChild(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));

  const sidecar: SidecarProcess = {
    url: `http://127.0.0.1:${port}`,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    stdout: () => stdout,
    stderr: () => stderr,
    stop: () => stopProcess(child),
  };
  try {
    await waitFor('the sidecar process to be ready', async () => {
      if (child.exitCode !== null) throw new Error(`the sidecar process exited with code ${child.exitCode}: ${stderr}${stdout}`);
      const response = await fetch(`${sidecar.adminUrl}/readyz`);
      return response.ok ? ((await response.json()) as { wallets: number }).wallets === 1 || undefined : undefined;
    });
  } catch (error) {
    await sidecar.stop();
    throw error;
  }
  return sidecar;
}

/** Creates an openai client from the app container's injected variables, with the sidecar's port in place of the pod's. */
function clientFor(sidecar: SidecarProcess): OpenAI {
  const env = containerEnvironment(pod, appOf(pod));
  const baseURL = new URL(env['OPENAI_BASE_URL']!);
  baseURL.port = new URL(sidecar.url).port;
  return new OpenAI({ baseURL: baseURL.toString(), apiKey: env['OPENAI_API_KEY']!, maxRetries: 0 });
}

interface WalletStatus {
  balance?: string;
  reserved?: string;
  spent?: string;
  granted?: string;
}

async function walletStatus(): Promise<WalletStatus> {
  const wallet = JSON.parse(await kubectl(['get', 'wallet', 'app', '-n', NAMESPACE, '-o', 'json'])) as { status?: WalletStatus };
  return wallet.status ?? {};
}

beforeAll(async () => {
  apiServer = await startApiServer();
  certificates = await createTestCertificates('redis-tls-e2e');
  otherCertificates = await createTestCertificates('other');
  redis = await startRedis({
    tls: { certFile: certificates.serverCertFile, keyFile: certificates.serverKeyFile, caFile: certificates.caFile, authClients: true },
  });
  simulator = await startSimulator({ host: '127.0.0.1', port: 0, expectedKey: SIMULATOR_KEY });

  await kubectl(['apply', '--server-side', '-f', 'crds/']);
  await kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/wallets.tollgate.dev', 'crd/priceplans.tollgate.dev', 'crd/providerroutes.tollgate.dev']);
  await kubectl(['apply', '-f', '-'], RESOURCES.replace('SIMULATOR_URL', simulator.url));
  // The command that the webhook's warning suggests for a missing Secret, with files named like its keys.
  await kubectl([
    'create', 'secret', 'generic', TLS_SECRET, '-n', NAMESPACE,
    `--from-file=ca.crt=${certificates.caFile}`,
    `--from-file=tls.crt=${certificates.clientCertFile}`,
    `--from-file=tls.key=${certificates.clientKeyFile}`,
  ]);

  const [webhookPort] = await findFreePorts(1);
  await kubectl(['apply', '-f', '-'], webhookConfiguration(webhookPort!));
  const config = parseOperatorArgs(
    [
      '--kubeconfig', apiServer.kubeconfigPath,
      '--namespace', OPERATOR_NAMESPACE,
      '--redis', redis.tlsUrl!,
      '--redis-ca', certificates.caFile,
      '--redis-cert', certificates.clientCertFile,
      '--redis-key', certificates.clientKeyFile,
      '--http-listen', '127.0.0.1:0',
      '--webhook-listen', `127.0.0.1:${webhookPort}`,
      '--webhook-configuration', WEBHOOK_CONFIGURATION,
      '--config-url', CONFIG_URL,
      '--sidecar-image', SIDECAR_IMAGE,
      '--sidecar-redis-tls-secret', TLS_SECRET,
      '--identity', 'redis-tls-e2e',
      // Short timings, so that the wallet status follows the ledger within seconds.
      '--lease-duration', '2',
      '--renew-deadline', '1.5',
      '--retry-period', '0.5',
      '--resync', '1',
      '--status-interval', '1',
    ],
    {},
  );
  if (config === undefined) throw new Error('parseOperatorArgs returned no configuration, as for --help');
  operator = await startOperator(config, { log, defaultMetrics: false });

  ledger = new RedisLedger(redis.tlsUrl!, {
    tls: loadRedisTls(
      redis.tlsUrl!,
      { caFile: certificates.caFile, certFile: certificates.clientCertFile, keyFile: certificates.clientKeyFile },
      REDIS_TLS_OPTIONS,
    ),
  });
  await waitFor('the grant in the ledger', async () => ((await ledger.state({ namespace: NAMESPACE, name: 'app' })).granted > 0n ? true : undefined));

  await kubectl(['apply', '-f', '-'], POD);
  pod = JSON.parse(await kubectl(['get', 'pod', 'web', '-n', NAMESPACE, '-o', 'json'])) as V1Pod;
  mountRoot = await mkdtemp(path.join(os.tmpdir(), 'tollgate-pod-mounts-'));
  await writeSecretMounts(pod, sidecarOf(pod));
});

afterAll(async () => {
  await ledger?.quit();
  await operator?.stop();
  await simulator?.close();
  await redis?.stop();
  await apiServer?.stop();
  await certificates?.remove();
  await otherCertificates?.remove();
  if (mountRoot) await rm(mountRoot, { recursive: true, force: true });
});

describe('Redis TLS from the operator to an injected sidecar', () => {
  it('injects the TLS Secret and its file paths', () => {
    const sidecar = sidecarOf(pod);
    const env = Object.fromEntries((sidecar.env ?? []).map((variable) => [variable.name, variable.value]));
    const volume = pod.spec?.volumes?.find((candidate) => candidate.secret?.secretName === TLS_SECRET);

    expect(env['TOLLGATE_REDIS_URL']).toBe(redis.tlsUrl);
    expect(env['TOLLGATE_REDIS_CA_FILE']).toBe('/var/run/tollgate/redis-tls/ca.crt');
    expect(env['TOLLGATE_REDIS_CERT_FILE']).toBe('/var/run/tollgate/redis-tls/tls.crt');
    expect(env['TOLLGATE_REDIS_KEY_FILE']).toBe('/var/run/tollgate/redis-tls/tls.key');
    expect(env['TOLLGATE_CONFIG_URL']).toBe(CONFIG_URL);
    expect(volume?.secret?.items).toEqual([
      { key: 'ca.crt', path: 'ca.crt' },
      { key: 'tls.crt', path: 'tls.crt' },
      { key: 'tls.key', path: 'tls.key' },
    ]);
    expect(sidecar.volumeMounts?.find((mount) => mount.name === volume?.name)).toEqual({
      name: volume?.name,
      mountPath: '/var/run/tollgate/redis-tls',
      readOnly: true,
    });
  });

  it('bills a call through the sidecar process', async () => {
    const sidecar = await startSidecarProcess();
    try {
      // Fewer input tokens than the sidecar's estimate for the prompt, so that the charge fits in the hold.
      const usage = { prompt_tokens: 20, completion_tokens: 1000, total_tokens: 1020 };
      const { data: completion, response } = await clientFor(sidecar)
        .chat.completions.create(
          { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'How much?' }], max_tokens: 1000 },
          { headers: { 'x-sim-usage': JSON.stringify(usage) } },
        )
        .withResponse();

      expect(completion.usage).toEqual(usage);
      // 20 input tokens at 1.00 plus 1000 output tokens at 2.00 per million.
      expect(response.headers.get('x-tollgate-charged')).toBe('0.00202');
    } finally {
      await sidecar.stop();
    }
    // Not even a warning: the charge fits in its hold.
    expect(sidecar.stdout()).toBe('');
    expect(sidecar.stderr()).toBe('');

    expect(await ledger.state({ namespace: NAMESPACE, name: 'app' })).toEqual({
      granted: 5_000_000_000n,
      spent: 2_020_000n,
      expired: 0n,
      reserved: 0n,
      balance: 4_997_980_000n,
      available: 4_997_980_000n,
      // The route's costs: 0.50 per million input tokens and 1.00 per million output tokens.
      providerCost: 1_010_000n,
      chargedWithoutCost: 0n,
      holds: 0,
      closed: false,
    });

    // The operator mirrors the ledger, which it reads over its own TLS connection, into the status.
    const status = await waitFor('the charge in the wallet status', async () => {
      const current = await walletStatus();
      return current.spent === '0.00202' ? current : undefined;
    });
    expect(status.balance).toBe('4.99798');
    expect(status.reserved).toBe('0.00');
    expect(status.granted).toBe('5.00');
  });

  it('names the CA setting when the CA is wrong', async () => {
    const before = await ledger.state({ namespace: NAMESPACE, name: 'app' });
    const sidecar = await startSidecarProcess({ TOLLGATE_REDIS_CA_FILE: otherCertificates.caFile });
    let error: unknown;
    try {
      error = await clientFor(sidecar)
        .chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'How much?' }], max_tokens: 10 })
        .catch((caught: unknown) => caught);
    } finally {
      await sidecar.stop();
    }

    const message =
      'the billing ledger is unavailable, so the request was not forwarded; retry shortly ' +
      `(ledger reserve for wallet ${NAMESPACE}/app failed because Redis at 127.0.0.1:${new URL(redis.tlsUrl!).port} is unavailable: ` +
      'self-signed certificate in certificate chain. ' +
      "The ledger does not trust the Redis server's TLS certificate: check that the CA in TOLLGATE_REDIS_CA_FILE signed it.)";
    expect(error).toBeInstanceOf(OpenAI.APIError);
    const apiError = error as InstanceType<typeof OpenAI.APIError>;
    expect(apiError.status).toBe(503);
    expect(apiError.error).toEqual({ message, type: 'server_error', code: 'ledger_unavailable', param: null });

    const lines = sidecar.stdout().trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    const refusal = lines.find((line) => line['msg'] === 'request failed');
    const lost = lines.find((line) => line['msg'] === 'ledger cannot connect to Redis; ledger operations fail until it connects');
    expect(refusal?.['reason']).toBe(message);
    expect(refusal?.['code']).toBe('ledger_unavailable');
    expect((lost?.['err'] as { code?: string } | undefined)?.code).toBe('SELF_SIGNED_CERT_IN_CHAIN');
    expect(lost?.['advice']).toBe("The ledger does not trust the Redis server's TLS certificate: check that the CA in TOLLGATE_REDIS_CA_FILE signed it.");
    expect(sidecar.stderr()).toBe('');

    // Nothing was held or charged.
    expect(await ledger.state({ namespace: NAMESPACE, name: 'app' })).toEqual(before);
  });

  it('uses a renewed certificate without a restart', async () => {
    const renewed = await createTestCertificates('renewed');
    const admin = new Redis(redis.url);
    const serverFiles = { cert: certificates.serverCertFile, key: certificates.serverKeyFile, ca: certificates.caFile };
    const earlierClients = new Set(clientIds(await admin.client('LIST')));
    const sidecar = await startSidecarProcess({ LOG_LEVEL: 'info' });
    try {
      const openai = clientFor(sidecar);
      const call = () => openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'How much?' }], max_tokens: 10 });
      await call();
      const sidecarClients = clientIds(await admin.client('LIST')).filter((id) => !earlierClients.has(id));
      expect(sidecarClients.length).toBeGreaterThan(0);

      // A CA rotation: ca.crt contains the old and the new CA until every server has a certificate from the new one.
      const bothCas = path.join(renewed.dir, 'both-ca.crt');
      await writeFile(bothCas, (await readFile(certificates.caFile, 'utf8')) + (await readFile(renewed.caFile, 'utf8')));
      await kubectl(['delete', 'secret', TLS_SECRET, '-n', NAMESPACE]);
      await kubectl([
        'create', 'secret', 'generic', TLS_SECRET, '-n', NAMESPACE,
        `--from-file=ca.crt=${bothCas}`,
        `--from-file=tls.crt=${renewed.clientCertFile}`,
        `--from-file=tls.key=${renewed.clientKeyFile}`,
      ]);
      await writeSecretMounts(pod, sidecarOf(pod));
      // The sidecar reads the files every 10 s.
      await waitFor('the sidecar to read the renewed files', async () => (sidecar.stdout().includes('the Redis TLS files changed') ? true : undefined), 20_000);

      // The server takes its renewed certificate and accepts clients of both CAs, and the sidecar's connection drops.
      await admin.config('SET', 'tls-cert-file', renewed.serverCertFile, 'tls-key-file', renewed.serverKeyFile, 'tls-ca-cert-file', bothCas);
      for (const id of sidecarClients) await admin.client('KILL', 'ID', id);

      // Only the renewed CA signed the server's new certificate, so the new connection is made with the renewed files.
      const completion = await waitFor('a call over a new connection', () => call().catch(() => undefined), 10_000);
      expect(completion.choices).toHaveLength(1);
      const connected = clientIds(await admin.client('LIST')).filter((id) => !earlierClients.has(id) && !sidecarClients.includes(id));
      expect(connected.length).toBeGreaterThan(0);

      const lines = sidecar.stdout().trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
      const changed = lines.find((line) => line['msg'] === 'the Redis TLS files changed; new connections to Redis use them');
      expect(changed?.['level']).toBe(30);
      expect(changed?.['clientCertificateExpires']).toBe(new Date(new X509Certificate(await readFile(renewed.clientCertFile)).validTo).toISOString());
      expect(lines.filter((line) => String(line['msg']).includes('Redis TLS files'))).toHaveLength(1);
    } finally {
      await sidecar.stop();
      await admin.config('SET', 'tls-cert-file', serverFiles.cert, 'tls-key-file', serverFiles.key, 'tls-ca-cert-file', serverFiles.ca);
      admin.disconnect();
      await renewed.remove();
    }
  });
});

/** Returns the ids of the connections in a CLIENT LIST reply. */
function clientIds(list: unknown): string[] {
  return String(list)
    .split('\n')
    .map((line) => /(?:^| )id=(\d+)/.exec(line)?.[1])
    .filter((id): id is string => id !== undefined);
}
