// The sidecar injector on a real kube-apiserver: the API server calls the webhook over
// HTTPS with the operator's self-managed certificate, and the tests assert on the Pods
// as stored. No kubelet runs, so the Pods are never started.
//
// The tests of the main describe block run in order and share the webhook: the Event
// and metric checks at its end count the decisions of the tests before them.

import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import {
  AdmissionregistrationV1Api,
  ApiextensionsV1Api,
  AppsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  type CoreV1Event,
  type V1Container,
  type V1MutatingWebhookConfiguration,
  type V1Pod,
} from '@kubernetes/client-node';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCustomResourceDefinition, RESOURCE_KINDS } from '../src/api/crd.ts';
import {
  createWebhookCertificate,
  ensureWebhookCertificate,
  patchWebhookCaBundle,
  serviceDnsNames,
  splitPemCertificates,
} from '../operator/webhook/certs.ts';
import { createKubeClients, loadKubeConfig } from '../operator/kube.ts';
import { startWebhook, type WebhookServer } from '../operator/webhook/server.ts';
import { bodyLimit, maxToolUses, redisTlsFiles, walletLabel } from '../sidecar/main.ts';
import { startApiServer, type ApiServer } from './support/apiserver.ts';

const OPERATOR_NAMESPACE = 'tollgate-system';
const NAMESPACE = 'shop';
const WEBHOOK_CONFIG = 'tollgate-sidecar-injector';
const SIDECAR_IMAGE = 'registry.example/tollgate:test';
const CONFIG_URL = 'http://tollgate.tollgate-system.svc:8080';
const REDIS_URL = 'redis://redis.tollgate-system.svc:6379/0';
/** 16 MiB, four times the sidecar's default, so that the injected value is visible. */
const SIDECAR_BODY_LIMIT = 16_777_216;
const SIDECAR_MAX_TOOL_USES = 12;
const PLACEHOLDER = 'tollgate-sidecar-holds-the-key';
const POLL_INTERVAL_MS = 100;
const WAIT_TIMEOUT_MS = 60_000;

const log = pino({ level: process.env['LOG_LEVEL'] ?? 'silent' });

let apiServer: ApiServer;
let core: CoreV1Api;
let apps: AppsV1Api;
let admission: AdmissionregistrationV1Api;
let apiextensions: ApiextensionsV1Api;
let customObjects: CustomObjectsApi;

beforeAll(async () => {
  apiServer = await startApiServer();
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(apiServer.kubeconfigPath);
  core = kubeConfig.makeApiClient(CoreV1Api);
  apps = kubeConfig.makeApiClient(AppsV1Api);
  admission = kubeConfig.makeApiClient(AdmissionregistrationV1Api);
  apiextensions = kubeConfig.makeApiClient(ApiextensionsV1Api);
  customObjects = kubeConfig.makeApiClient(CustomObjectsApi);

  for (const resource of RESOURCE_KINDS) {
    await apiextensions.createCustomResourceDefinition({ body: buildCustomResourceDefinition(resource) });
  }
  for (const resource of RESOURCE_KINDS) {
    await waitFor(`CRD ${resource.plural} to be established`, async () => {
      const crd = await apiextensions.readCustomResourceDefinition({ name: `${resource.plural}.tollgate.dev` });
      return crd.status?.conditions?.some((condition) => condition.type === 'Established' && condition.status === 'True') === true;
    });
  }
  for (const name of [OPERATOR_NAMESPACE, NAMESPACE, 'certs', 'cert-manager-mode', 'rotation', 'shutdown']) {
    await core.createNamespace({ body: { metadata: { name } } });
  }
}, 180_000);

afterAll(async () => {
  await apiServer?.stop();
}, 30_000);

// Helpers

async function waitFor(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + WAIT_TIMEOUT_MS;
  for (;;) {
    const done = await check().catch(() => false);
    if (done) {
      return;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
  }
}

/** Returns a port that was free a moment ago; the webhook binds it a little later. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Builds a configuration whose first webhook matches pods with `label: "true"`. */
function webhookConfiguration(name: string, port: number, label = 'tollgate.dev/inject'): V1MutatingWebhookConfiguration {
  const webhook = (webhookName: string, label: string) => ({
    name: webhookName,
    admissionReviewVersions: ['v1'],
    sideEffects: 'NoneOnDryRun',
    failurePolicy: 'Fail',
    timeoutSeconds: 10,
    reinvocationPolicy: 'IfNeeded',
    clientConfig: { url: `https://127.0.0.1:${port}/mutate-pods` },
    rules: [{ apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE'], resources: ['pods'], scope: 'Namespaced' }],
    objectSelector: { matchLabels: { [label]: 'true' } },
  });
  return {
    metadata: { name },
    // The second entry never matches a pod; it is there to check that every entry gets the caBundle.
    webhooks: [webhook('pods.inject.tollgate.dev', label), webhook('spare.inject.tollgate.dev', 'tollgate.dev/never-set')],
  };
}

function app(overrides: Partial<V1Container> = {}): V1Container {
  return { name: 'app', image: 'shop/web:1', ...overrides };
}

function labelled(name: string, extra: Partial<V1Pod['spec']> = {}, annotations?: Record<string, string>): V1Pod {
  return {
    metadata: { name, labels: { 'tollgate.dev/inject': 'true' }, ...(annotations === undefined ? {} : { annotations }) },
    spec: { containers: [app()], ...extra },
  };
}

function envOf(container: V1Container | undefined): Record<string, string | undefined> {
  return Object.fromEntries((container?.env ?? []).map((variable) => [variable.name, variable.value]));
}

function sidecarOf(pod: V1Pod): V1Container | undefined {
  return pod.spec?.initContainers?.find((container) => container.name === 'tollgate-sidecar');
}

async function readPod(name: string): Promise<V1Pod> {
  return core.readNamespacedPod({ name, namespace: NAMESPACE });
}

function httpsRequest(
  url: string,
  ca: string,
  options: { method?: string; body?: string } = {},
): Promise<{ status: number; body: string; peer: X509Certificate }> {
  return new Promise((resolve, reject) => {
    const request = https.request(url, { ca, agent: false, method: options.method ?? 'GET' }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => {
        const socket = response.socket as import('node:tls').TLSSocket;
        resolve({ status: response.statusCode ?? 0, body, peer: new X509Certificate(socket.getPeerCertificate().raw) });
      });
    });
    request.on('error', reject);
    request.end(options.body);
  });
}

describe('webhook with a Redis Secret', () => {
  it('warns when the Secret or its key is missing', async () => {
    for (const name of ['redis-secret-missing', 'redis-secret-present']) {
      await core.createNamespace({ body: { metadata: { name } } });
      await customObjects.createNamespacedCustomObject({
        group: 'tollgate.dev',
        version: 'v1alpha1',
        namespace: name,
        plural: 'providerroutes',
        body: { apiVersion: 'tollgate.dev/v1alpha1', kind: 'ProviderRoute', metadata: { name: 'openai' }, spec: { protocol: 'openai', baseURL: 'http://127.0.0.1:9', models: ['gpt-4o-mini'] } },
      });
    }
    await core.createNamespacedSecret({ namespace: 'redis-secret-present', body: { metadata: { name: 'tollgate-redis' }, stringData: { other: 'x' } } });
    await admission.createMutatingWebhookConfiguration({ body: webhookConfiguration('redis-secret-config', 1, 'tollgate.dev/never-set') });
    const webhook = await startWebhook({
      port: 0,
      host: '127.0.0.1',
      kubeconfigPath: apiServer.kubeconfigPath,
      namespace: 'shutdown',
      serviceName: 'tollgate-webhook',
      webhookConfigName: 'redis-secret-config',
      sidecarImage: SIDECAR_IMAGE,
      configUrl: CONFIG_URL,
      redisUrl: REDIS_URL,
      sidecarRedisSecret: { name: 'tollgate-redis', key: 'redisUrl' },
      log,
      registry: new Registry(),
    });
    try {
      const ca = Buffer.from(webhook.caBundle, 'base64').toString('utf8');
      const warningsFor = async (namespace: string): Promise<string[]> => {
        const review = {
          apiVersion: 'admission.k8s.io/v1',
          kind: 'AdmissionReview',
          request: {
            uid: `uid-${namespace}`,
            kind: { group: '', version: 'v1', kind: 'Pod' },
            resource: { group: '', version: 'v1', resource: 'pods' },
            namespace,
            operation: 'CREATE',
            dryRun: true,
            object: labelled('app'),
          },
        };
        // Right after the CRDs are created the API server may return 429 while its cache starts, so the review is retried until it is allowed.
        let body = '';
        await waitFor(`an allowed review in ${namespace}`, async () => {
          body = (await httpsRequest(`${webhook.url}/mutate-pods`, ca, { method: 'POST', body: JSON.stringify(review) })).body;
          return (JSON.parse(body) as { response: { allowed: boolean } }).response.allowed;
        });
        const parsed = JSON.parse(body) as { response: { warnings?: string[] } };
        return (parsed.response.warnings ?? []).filter((warning) => warning.includes('tollgate-redis'));
      };

      expect(await warningsFor('redis-secret-missing')).toEqual([
        'tollgate: Secret "tollgate-redis" not found in namespace "redis-secret-missing": the sidecar reads the Redis URL from its key "redisUrl", ' +
          'so the pod will not start until it exists; create it with: kubectl create secret generic tollgate-redis -n redis-secret-missing --from-literal=redisUrl=redis://...',
      ]);
      expect(await warningsFor('redis-secret-present')).toEqual([
        'tollgate: Secret "tollgate-redis" in namespace "redis-secret-present" has no key "redisUrl", which the sidecar reads the Redis URL from, so the pod will not start; add the key',
      ]);
    } finally {
      await webhook.close();
    }
  });
});

describe('webhook with a Redis TLS Secret', () => {
  // Only pods with this label reach the webhook of this block, so the other blocks' webhooks never see them.
  const TEST_LABEL = 'tollgate.dev/redis-tls-test';
  const TLS_NAMESPACES = ['redis-tls-missing', 'redis-tls-partial', 'redis-tls-present'];
  let webhook: WebhookServer;

  beforeAll(async () => {
    for (const name of ['redis-tls-operator', ...TLS_NAMESPACES]) {
      await core.createNamespace({ body: { metadata: { name } } });
    }
    for (const name of TLS_NAMESPACES) {
      await customObjects.createNamespacedCustomObject({
        group: 'tollgate.dev',
        version: 'v1alpha1',
        namespace: name,
        plural: 'providerroutes',
        body: { apiVersion: 'tollgate.dev/v1alpha1', kind: 'ProviderRoute', metadata: { name: 'openai' }, spec: { protocol: 'openai', baseURL: 'http://127.0.0.1:9', models: ['gpt-4o-mini'] } },
      });
    }
    // The webhook checks only that the keys exist, so the values need not be real PEM here.
    await core.createNamespacedSecret({ namespace: 'redis-tls-partial', body: { metadata: { name: 'redis-tls' }, stringData: { 'ca.crt': 'CA' } } });
    await core.createNamespacedSecret({
      namespace: 'redis-tls-present',
      body: { metadata: { name: 'redis-tls' }, stringData: { 'ca.crt': 'CA', 'tls.crt': 'CERT', 'tls.key': 'KEY' } },
    });

    const port = await freePort();
    await admission.createMutatingWebhookConfiguration({ body: webhookConfiguration('redis-tls-config', port, TEST_LABEL) });
    webhook = await startWebhook({
      port,
      host: '127.0.0.1',
      kubeconfigPath: apiServer.kubeconfigPath,
      namespace: 'redis-tls-operator',
      serviceName: 'tollgate-webhook',
      webhookConfigName: 'redis-tls-config',
      sidecarImage: SIDECAR_IMAGE,
      configUrl: CONFIG_URL,
      redisUrl: 'rediss://redis.tollgate-system.svc:6380',
      sidecarRedisTlsSecret: { name: 'redis-tls', caCertificate: true, clientCertificate: true },
      log,
      registry: new Registry(),
    });
  }, 60_000);

  afterAll(async () => {
    await webhook?.close();
  });

  it('injects a pod that the API server accepts', async () => {
    const body = labelled('tls-app');
    body.metadata!.labels![TEST_LABEL] = 'true';
    // Right after the CRDs are created the API server may return 429 to the webhook's lookups, so the creation is retried.
    await waitFor('the pod to be created', async () => {
      await core.createNamespacedPod({ namespace: 'redis-tls-present', body });
      return true;
    });
    const pod = await core.readNamespacedPod({ name: 'tls-app', namespace: 'redis-tls-present' });
    const sidecar = sidecarOf(pod);

    expect(pod.spec?.volumes?.find((volume) => volume.name === 'tollgate-redis-tls')).toEqual({
      name: 'tollgate-redis-tls',
      secret: {
        secretName: 'redis-tls',
        defaultMode: 0o444,
        items: [
          { key: 'ca.crt', path: 'ca.crt' },
          { key: 'tls.crt', path: 'tls.crt' },
          { key: 'tls.key', path: 'tls.key' },
        ],
      },
    });
    expect(sidecar?.volumeMounts?.find((mount) => mount.name === 'tollgate-redis-tls')).toEqual({
      name: 'tollgate-redis-tls',
      mountPath: '/var/run/tollgate/redis-tls',
      readOnly: true,
    });
    // The sidecar reads the variables the webhook set with its own reader.
    expect(redisTlsFiles(envOf(sidecar))).toEqual({
      caFile: '/var/run/tollgate/redis-tls/ca.crt',
      certFile: '/var/run/tollgate/redis-tls/tls.crt',
      keyFile: '/var/run/tollgate/redis-tls/tls.key',
    });
    expect(pod.spec?.containers[0]?.volumeMounts).toBeUndefined();
  });

  it('warns when the Secret or one of its keys is missing', async () => {
    const ca = Buffer.from(webhook.caBundle, 'base64').toString('utf8');
    const warningsFor = async (namespace: string): Promise<string[]> => {
      const review = {
        apiVersion: 'admission.k8s.io/v1',
        kind: 'AdmissionReview',
        request: {
          uid: `uid-${namespace}`,
          kind: { group: '', version: 'v1', kind: 'Pod' },
          resource: { group: '', version: 'v1', resource: 'pods' },
          namespace,
          operation: 'CREATE',
          dryRun: true,
          object: labelled('app'),
        },
      };
      let body = '';
      await waitFor(`an allowed review in ${namespace}`, async () => {
        body = (await httpsRequest(`${webhook.url}/mutate-pods`, ca, { method: 'POST', body: JSON.stringify(review) })).body;
        return (JSON.parse(body) as { response: { allowed: boolean } }).response.allowed;
      });
      const parsed = JSON.parse(body) as { response: { warnings?: string[] } };
      return (parsed.response.warnings ?? []).filter((warning) => warning.includes('redis-tls'));
    };

    expect(await warningsFor('redis-tls-missing')).toEqual([
      'tollgate: Secret "redis-tls" not found in namespace "redis-tls-missing": the sidecar mounts its keys "ca.crt", "tls.crt", "tls.key" ' +
        'for the TLS connection to Redis, so the pod will not start until it exists; create it from files named like its keys with: ' +
        'kubectl create secret generic redis-tls -n redis-tls-missing --from-file=ca.crt --from-file=tls.crt --from-file=tls.key',
    ]);
    expect(await warningsFor('redis-tls-partial')).toEqual([
      'tollgate: Secret "redis-tls" in namespace "redis-tls-partial" has no keys "tls.crt", "tls.key", which the sidecar mounts for the TLS connection to Redis, ' +
        'so the pod will not start; add the keys',
    ]);
    expect(await warningsFor('redis-tls-present')).toEqual([]);
  });
});

// The injector

describe('sidecar injector on a real API server', () => {
  let webhook: WebhookServer;
  const registry = new Registry();

  beforeAll(async () => {
    await core.createNamespacedSecret({
      namespace: NAMESPACE,
      body: { metadata: { name: 'openai-credentials' }, stringData: { apiKey: 'sk-test-not-a-real-key' } },
    });
    const route = (name: string, spec: Record<string, unknown>) =>
      customObjects.createNamespacedCustomObject({
        group: 'tollgate.dev',
        version: 'v1alpha1',
        namespace: NAMESPACE,
        plural: 'providerroutes',
        body: { apiVersion: 'tollgate.dev/v1alpha1', kind: 'ProviderRoute', metadata: { name }, spec },
      });
    await route('openai', {
      protocol: 'openai',
      baseURL: 'https://api.openai.com',
      credentialSecretRef: { name: 'openai-credentials', key: 'apiKey' },
      models: ['gpt-4o-mini'],
    });
    // Its Secret does not exist; the volume is optional, so the pod is still admitted.
    await route('anthropic', {
      protocol: 'anthropic',
      baseURL: 'https://api.anthropic.com',
      credentialSecretRef: { name: 'anthropic-credentials', key: 'apiKey' },
      models: ['claude-haiku-4-5'],
    });
    const wallet = (name: string, annotations: Record<string, string>) =>
      customObjects.createNamespacedCustomObject({
        group: 'tollgate.dev',
        version: 'v1alpha1',
        namespace: NAMESPACE,
        plural: 'wallets',
        body: {
          apiVersion: 'tollgate.dev/v1alpha1',
          kind: 'Wallet',
          metadata: { name, annotations },
          spec: { currency: 'USD', pricePlanRef: { name: 'standard' }, grants: [{ id: 'welcome', amount: '5.00' }] },
        },
      });
    await wallet('team-a', { 'tollgate.dev/default': 'true' });
    await wallet('team-b', {});

    // As in a cluster, the configuration exists before the operator starts, without a caBundle.
    const port = await freePort();
    await admission.createMutatingWebhookConfiguration({ body: webhookConfiguration(WEBHOOK_CONFIG, port) });
    webhook = await startWebhook({
      port,
      host: '127.0.0.1',
      kubeconfigPath: apiServer.kubeconfigPath,
      namespace: OPERATOR_NAMESPACE,
      serviceName: 'tollgate-webhook',
      webhookConfigName: WEBHOOK_CONFIG,
      sidecarImage: SIDECAR_IMAGE,
      configUrl: CONFIG_URL,
      redisUrl: REDIS_URL,
      sidecarBodyLimit: SIDECAR_BODY_LIMIT,
      sidecarMaxToolUses: SIDECAR_MAX_TOOL_USES,
      sidecarWalletLabel: false,
      log,
      registry,
    });
  }, 60_000);

  afterAll(async () => {
    await webhook?.close();
  });

  it('stores its certificate in the shared Secret', async () => {
    const secret = await core.readNamespacedSecret({ name: 'tollgate-webhook-tls', namespace: OPERATOR_NAMESPACE });
    const certificate = new X509Certificate(Buffer.from(secret.data?.['tls.crt'] ?? '', 'base64'));

    expect(secret.type).toBe('kubernetes.io/tls');
    expect(certificate.subjectAltName).toBe(
      'DNS:tollgate-webhook.tollgate-system.svc, DNS:tollgate-webhook.tollgate-system.svc.cluster.local, IP Address:127.0.0.1',
    );
    expect(webhook.caBundle).toBe(secret.data?.['ca.crt']);
  });

  it('patched the caBundle of every webhook', async () => {
    const configuration = await admission.readMutatingWebhookConfiguration({ name: WEBHOOK_CONFIG });
    const bundles = configuration.webhooks?.map((entry) => entry.clientConfig.caBundle);

    expect(bundles).toEqual([webhook.caBundle, webhook.caBundle]);
    expect(webhook.caBundle).not.toBe('');
  });

  it('serves health over TLS with that CA', async () => {
    const ca = Buffer.from(webhook.caBundle, 'base64').toString('utf8');
    const response = await httpsRequest(`${webhook.url}/healthz`, ca);

    expect(webhook.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(response.status).toBe(200);
    expect(response.body).toBe('{"status":"ok"}');
  });

  it('rejects invalid webhook requests', async () => {
    const ca = Buffer.from(webhook.caBundle, 'base64').toString('utf8');
    const notJson = await httpsRequest(`${webhook.url}/mutate-pods`, ca, { method: 'POST', body: '{' });
    const noUid = await httpsRequest(`${webhook.url}/mutate-pods`, ca, {
      method: 'POST',
      body: JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: {} }),
    });
    const unknownPath = await httpsRequest(`${webhook.url}/validate`, ca, { method: 'POST', body: '{}' });

    expect(notJson.status).toBe(400);
    expect(JSON.parse(notJson.body).message).toMatch(/^invalid AdmissionReview: /);
    expect(noUid.status).toBe(400);
    expect(noUid.body).toBe('{"message":"invalid AdmissionReview: request.uid is missing"}');
    expect(unknownPath.status).toBe(404);
    expect(unknownPath.body).toBe('{"message":"no handler for /validate; the webhook serves POST /mutate-pods"}');
  });

  it('injects a labelled pod', async () => {
    await core.createNamespacedPod({ namespace: NAMESPACE, body: labelled('web') });
    const pod = await readPod('web');
    const sidecar = sidecarOf(pod);

    expect(pod.spec?.initContainers?.[0]?.name).toBe('tollgate-sidecar');
    expect(sidecar?.restartPolicy).toBe('Always');
    expect(sidecar?.image).toBe(SIDECAR_IMAGE);
    expect(envOf(sidecar)).toEqual({
      TOLLGATE_NAMESPACE: undefined,
      TOLLGATE_WALLET: 'team-a',
      TOLLGATE_CONFIG_URL: CONFIG_URL,
      TOLLGATE_REDIS_URL: REDIS_URL,
      TOLLGATE_BODY_LIMIT: '16777216',
      TOLLGATE_MAX_TOOL_USES: '12',
      TOLLGATE_WALLET_LABEL: 'false',
      TOLLGATE_CREDENTIALS_DIR: '/var/run/tollgate/credentials',
      TOLLGATE_LISTEN: '127.0.0.1:8787',
      TOLLGATE_ADMIN_LISTEN: '0.0.0.0:9464',
      TOLLGATE_COMMIT_JOURNAL: '/var/lib/tollgate/commits.ndjson',
    });
    expect(bodyLimit(envOf(sidecar))).toBe(SIDECAR_BODY_LIMIT);
    expect(maxToolUses(envOf(sidecar))).toBe(SIDECAR_MAX_TOOL_USES);
    expect(walletLabel(envOf(sidecar))).toBe(false);
    expect(sidecar?.env?.[0]?.valueFrom?.fieldRef?.fieldPath).toBe('metadata.namespace');
    expect(pod.metadata?.annotations).toEqual({
      'tollgate.dev/sidecar-image': SIDECAR_IMAGE,
      'tollgate.dev/injected-wallet': 'team-a',
    });
  });

  it('sets SDK variables in the app container', async () => {
    const pod = await readPod('web');

    expect(envOf(pod.spec?.containers[0])).toEqual({
      OPENAI_BASE_URL: 'http://127.0.0.1:8787/openai/v1',
      ANTHROPIC_BASE_URL: 'http://127.0.0.1:8787/anthropic',
      OPENAI_API_KEY: PLACEHOLDER,
      ANTHROPIC_API_KEY: PLACEHOLDER,
    });
  });

  it('mounts credential Secrets into the sidecar only', async () => {
    const pod = await readPod('web');
    const secretVolumes = (pod.spec?.volumes ?? []).filter((volume) => volume.secret !== undefined);
    const sidecarMounts = sidecarOf(pod)?.volumeMounts ?? [];
    const appMounts = pod.spec?.containers[0]?.volumeMounts ?? [];

    expect(secretVolumes.map((volume) => [volume.name, volume.secret?.secretName])).toEqual([
      ['tollgate-cred-anthropic-credentials', 'anthropic-credentials'],
      ['tollgate-cred-openai-credentials', 'openai-credentials'],
    ]);
    expect(sidecarMounts.find((mount) => mount.name === 'tollgate-cred-openai-credentials')).toEqual({
      name: 'tollgate-cred-openai-credentials',
      mountPath: '/var/run/tollgate/credentials/openai-credentials',
      readOnly: true,
    });
    expect(appMounts.filter((mount) => mount.name.startsWith('tollgate-'))).toEqual([]);
    expect(appMounts.filter((mount) => mount.mountPath.startsWith('/var/run/tollgate'))).toEqual([]);
  });

  it('leaves an unlabelled pod untouched', async () => {
    await core.createNamespacedPod({ namespace: NAMESPACE, body: { metadata: { name: 'plain' }, spec: { containers: [app()] } } });
    const pod = await readPod('plain');

    expect(pod.spec?.initContainers).toBeUndefined();
    expect(pod.spec?.volumes).toBeUndefined();
    expect(pod.spec?.containers[0]?.env).toBeUndefined();
    expect(pod.metadata?.annotations).toBeUndefined();
  });

  it('leaves a pod with the sidecar unchanged', async () => {
    const own: V1Container = { name: 'tollgate-sidecar', image: 'example/custom-sidecar:1', restartPolicy: 'Always' };
    await core.createNamespacedPod({ namespace: NAMESPACE, body: labelled('preinjected', { initContainers: [own] }) });
    const pod = await readPod('preinjected');

    expect(pod.spec?.initContainers?.map((container) => [container.name, container.image])).toEqual([
      ['tollgate-sidecar', 'example/custom-sidecar:1'],
    ]);
    expect(pod.spec?.volumes).toBeUndefined();
    expect(pod.spec?.containers[0]?.env).toBeUndefined();
    expect(pod.metadata?.annotations).toBeUndefined();
  });

  it('keeps variables the pod sets', async () => {
    const container = app({ env: [{ name: 'OPENAI_BASE_URL', value: 'http://gateway.internal/v1' }] });
    const body = labelled('custom-env', { containers: [container] }, { 'tollgate.dev/wallet': 'team-b' });
    await core.createNamespacedPod({ namespace: NAMESPACE, body });
    const pod = await readPod('custom-env');

    expect(pod.spec?.containers[0]?.env?.map((variable) => [variable.name, variable.value])).toEqual([
      ['OPENAI_BASE_URL', 'http://gateway.internal/v1'],
      ['ANTHROPIC_BASE_URL', 'http://127.0.0.1:8787/anthropic'],
      ['OPENAI_API_KEY', PLACEHOLDER],
      ['ANTHROPIC_API_KEY', PLACEHOLDER],
    ]);
    expect(envOf(sidecarOf(pod))['TOLLGATE_WALLET']).toBe('team-b');
  });

  it('patches a pod that has init containers, volumes and annotations', async () => {
    const body = labelled(
      'full',
      {
        initContainers: [{ name: 'migrate', image: 'shop/migrate:1' }],
        volumes: [{ name: 'data', emptyDir: {} }],
        containers: [app({ env: [{ name: 'LOG_LEVEL', value: 'debug' }] })],
      },
      { 'example.com/team': 'shop' },
    );
    await core.createNamespacedPod({ namespace: NAMESPACE, body });
    const pod = await readPod('full');

    expect(pod.spec?.initContainers?.map((container) => container.name)).toEqual(['tollgate-sidecar', 'migrate']);
    expect(pod.spec?.volumes?.map((volume) => volume.name)).toEqual([
      'data',
      'tollgate-sidecar-tmp',
      'tollgate-state',
      'tollgate-cred-anthropic-credentials',
      'tollgate-cred-openai-credentials',
    ]);
    expect(pod.spec?.containers[0]?.env?.map((variable) => variable.name)).toEqual([
      'LOG_LEVEL',
      'OPENAI_BASE_URL',
      'ANTHROPIC_BASE_URL',
      'OPENAI_API_KEY',
      'ANTHROPIC_API_KEY',
    ]);
    expect(pod.metadata?.annotations).toEqual({
      'example.com/team': 'shop',
      'tollgate.dev/sidecar-image': SIDECAR_IMAGE,
      'tollgate.dev/injected-wallet': 'team-a',
    });
  });

  it('warns about an unknown wallet', async () => {
    const body = labelled('ghost-wallet', {}, { 'tollgate.dev/wallet': 'ghost' });
    const response = await core.createNamespacedPodWithHttpInfo({ namespace: NAMESPACE, body });

    expect(response.headers['warning']).toBe(
      '299 - "tollgate: Wallet \\"ghost\\" named by annotation tollgate.dev/wallet does not exist in this namespace; ' +
        'the sidecar rejects model calls until it is created"',
    );
    expect(envOf(sidecarOf(response.data))['TOLLGATE_WALLET']).toBe('ghost');
  });

  it('injects a Deployment-owned pod', async () => {
    const labels = { app: 'web-deploy', 'tollgate.dev/inject': 'true' };
    const template = { metadata: { labels }, spec: { containers: [app()] } };
    const deployment = await apps.createNamespacedDeployment({
      namespace: NAMESPACE,
      body: { metadata: { name: 'web-deploy' }, spec: { selector: { matchLabels: labels }, template } },
    });
    const replicaSet = await apps.createNamespacedReplicaSet({
      namespace: NAMESPACE,
      body: {
        metadata: {
          name: 'web-deploy-5d8f',
          ownerReferences: [
            { apiVersion: 'apps/v1', kind: 'Deployment', name: 'web-deploy', uid: deployment.metadata!.uid!, controller: true },
          ],
        },
        spec: { selector: { matchLabels: labels }, template },
      },
    });
    const created = await core.createNamespacedPod({
      namespace: NAMESPACE,
      body: {
        metadata: {
          generateName: 'web-deploy-5d8f-',
          labels,
          ownerReferences: [
            { apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web-deploy-5d8f', uid: replicaSet.metadata!.uid!, controller: true },
          ],
        },
        spec: { containers: [app()] },
      },
    });

    expect(created.metadata?.name).toMatch(/^web-deploy-5d8f-[a-z0-9]{5}$/);
    expect(sidecarOf(created)?.restartPolicy).toBe('Always');
  });

  it('injects a pod named by generateName', async () => {
    const created = await core.createNamespacedPod({
      namespace: NAMESPACE,
      body: { metadata: { generateName: 'batch-', labels: { 'tollgate.dev/inject': 'true' } }, spec: { containers: [app()] } },
    });

    expect(created.metadata?.name).toMatch(/^batch-[a-z0-9]{5}$/);
    expect(sidecarOf(created)).toBeDefined();
  });

  it('injects a dry-run pod', async () => {
    const returned = await core.createNamespacedPod({ namespace: NAMESPACE, body: labelled('dry'), dryRun: 'All' });
    const stored = core.readNamespacedPod({ name: 'dry', namespace: NAMESPACE });

    expect(sidecarOf(returned)?.image).toBe(SIDECAR_IMAGE);
    await expect(stored).rejects.toMatchObject({ code: 404 });
  });

  it('rejects pods when the lookup fails', async () => {
    // Without the Wallet CRD, listing wallets fails, as it would on a cluster without the CRDs.
    await apiextensions.deleteCustomResourceDefinition({ name: 'wallets.tollgate.dev' });
    await waitFor('the Wallet CRD to be deleted', async () => {
      try {
        await apiextensions.readCustomResourceDefinition({ name: 'wallets.tollgate.dev' });
        return false;
      } catch (error) {
        return (error as { code?: number }).code === 404;
      }
    });

    const create = core.createNamespacedPod({ namespace: NAMESPACE, body: labelled('denied') });

    await expect(create).rejects.toMatchObject({ code: 500 });
    const message = await create.catch((error: { body?: string }) => JSON.parse(error.body ?? '{}').message as string);
    expect(message).toContain('admission webhook "pods.inject.tollgate.dev" denied the request');
    expect(message).toContain(
      'Tollgate could not inject its sidecar, so the pod was rejected: could not list Wallets (wallets.tollgate.dev) in namespace "shop"',
    );
    expect(message).toContain('(HTTP 404)');
  });

  it('records an Event per decision', async () => {
    // Closing waits for Event writes in progress, so the list below is complete.
    await webhook.close();
    const events = (await core.listNamespacedEvent({ namespace: NAMESPACE })).items.filter(
      (event) => event.source?.component === 'tollgate-webhook',
    );
    const about = (kind: string, name: string): CoreV1Event[] =>
      events.filter((event) => event.involvedObject.kind === kind && event.involvedObject.name === name);

    expect(about('Pod', 'web').map((event) => [event.type, event.reason])).toEqual([['Normal', 'Injected']]);
    expect(about('Pod', 'web')[0]?.message).toBe(
      `injected tollgate-sidecar (${SIDECAR_IMAGE}) with wallet "team-a" and routes /anthropic, /openai`,
    );
    expect(about('Pod', 'preinjected').map((event) => [event.type, event.reason, event.message])).toEqual([
      ['Normal', 'InjectionSkipped', 'pod already has a container named tollgate-sidecar, so nothing was injected'],
    ]);
    expect(about('Pod', 'custom-env').map((event) => event.reason)).toEqual(['Injected']);
    expect(about('Pod', 'plain')).toEqual([]);
    expect(about('Pod', 'dry')).toEqual([]);
    expect(about('Pod', 'denied').map((event) => [event.type, event.reason])).toEqual([['Warning', 'InjectionFailed']]);
  });

  it('records Events on the top owner', async () => {
    const events = (await core.listNamespacedEvent({ namespace: NAMESPACE })).items;
    const onDeployment = events.filter((event) => event.involvedObject.kind === 'Deployment');

    expect(onDeployment.map((event) => [event.involvedObject.name, event.reason])).toEqual([['web-deploy', 'Injected']]);
    expect(onDeployment[0]?.message).toMatch(/^pod web-deploy-5d8f-\*: injected tollgate-sidecar/);
    expect(onDeployment[0]?.involvedObject.apiVersion).toBe('apps/v1');
  });

  it('records Events on pods without a name yet', async () => {
    const events = (await core.listNamespacedEvent({ namespace: NAMESPACE })).items;
    // The API server drops the empty name, because the field is optional.
    const batch = events.filter((event) => event.involvedObject.kind === 'Pod' && event.involvedObject.name === undefined);

    expect(batch.map((event) => event.reason)).toEqual(['Injected']);
    expect(batch[0]?.metadata.name).toMatch(/^batch\.[0-9a-f]+$/);
    expect(batch[0]?.message).toMatch(/^pod batch-\*: injected tollgate-sidecar /);
  });

  it('counts decisions', async () => {
    const metric = await registry.getSingleMetric('tollgate_injections_total')?.get();
    const counts = Object.fromEntries((metric?.values ?? []).map((value) => [value.labels['decision'], value.value]));

    expect(counts).toEqual({ Injected: 7, AlreadyInjected: 1, InjectionFailed: 1 });
  });
});

// The certificate manager on its own

describe('webhook certificate Secret', () => {
  const hosts = { dnsNames: serviceDnsNames('tollgate-webhook', 'certs'), ipAddresses: [] };

  it('has one winner when replicas race to create it', async () => {
    const clients = createKubeClients(loadKubeConfig({ kubeconfig: apiServer.kubeconfigPath }));
    const ensure = () => ensureWebhookCertificate({ clients, namespace: 'certs', secretName: 'race-tls', hosts, log });
    const results = await Promise.all([ensure(), ensure(), ensure()]);
    const secret = await core.readNamespacedSecret({ name: 'race-tls', namespace: 'certs' });
    const stored = Buffer.from(secret.data?.['tls.crt'] ?? '', 'base64').toString('utf8');

    expect(results.map((result) => result.certPem)).toEqual([stored, stored, stored]);
  });

  it('is reused while valid', async () => {
    const clients = createKubeClients(loadKubeConfig({ kubeconfig: apiServer.kubeconfigPath }));
    const first = await ensureWebhookCertificate({ clients, namespace: 'certs', secretName: 'race-tls', hosts, log });
    const second = await ensureWebhookCertificate({ clients, namespace: 'certs', secretName: 'race-tls', hosts, log });

    expect(second).toEqual(first);
  });

  it('is rotated near expiry, keeping the old CA', async () => {
    const clients = createKubeClients(loadKubeConfig({ kubeconfig: apiServer.kubeconfigPath }));
    const old = await ensureWebhookCertificate({ clients, namespace: 'certs', secretName: 'short-tls', hosts, validityDays: 10, log });
    const rotate = () => ensureWebhookCertificate({ clients, namespace: 'certs', secretName: 'short-tls', hosts, rotateBeforeDays: 30, log });
    const [rotated, racer] = await Promise.all([rotate(), rotate()]);
    const cas = splitPemCertificates(rotated.caBundlePem);

    expect(rotated.certPem).not.toBe(old.certPem);
    expect(racer).toEqual(rotated);
    expect(cas).toHaveLength(2);
    expect(cas[1]).toBe(old.caBundlePem);
    expect(new X509Certificate(rotated.certPem).checkIssued(new X509Certificate(cas[0]!))).toBe(true);
  });

  it('is rotated when a host is missing', async () => {
    const clients = createKubeClients(loadKubeConfig({ kubeconfig: apiServer.kubeconfigPath }));
    const before = await ensureWebhookCertificate({ clients, namespace: 'certs', secretName: 'race-tls', hosts, log });
    const wider = { dnsNames: hosts.dnsNames, ipAddresses: ['127.0.0.1'] };
    const after = await ensureWebhookCertificate({ clients, namespace: 'certs', secretName: 'race-tls', hosts: wider, log });

    expect(after.certPem).not.toBe(before.certPem);
    expect(new X509Certificate(after.certPem).subjectAltName).toContain('IP Address:127.0.0.1');
  });

  it('reports a missing configuration', async () => {
    const clients = createKubeClients(loadKubeConfig({ kubeconfig: apiServer.kubeconfigPath }));
    const result = await patchWebhookCaBundle({ clients, webhookConfigName: 'does-not-exist', caBundlePem: 'pem', log });

    expect(result).toBe('not-found');
  });

  it('leaves a matching caBundle alone', async () => {
    const clients = createKubeClients(loadKubeConfig({ kubeconfig: apiServer.kubeconfigPath }));
    await admission.createMutatingWebhookConfiguration({ body: webhookConfiguration('ca-only', 1, 'tollgate.dev/never-set') });
    const first = await patchWebhookCaBundle({ clients, webhookConfigName: 'ca-only', caBundlePem: 'bundle', log });
    const second = await patchWebhookCaBundle({ clients, webhookConfigName: 'ca-only', caBundlePem: 'bundle', log });

    expect([first, second]).toEqual(['patched', 'unchanged']);
  });
});

describe('webhook during rotation', () => {
  it('serves a certificate another replica wrote', async () => {
    await admission.createMutatingWebhookConfiguration({ body: webhookConfiguration('rotation-config', 1, 'tollgate.dev/never-set') });
    const webhook = await startWebhook({
      port: 0,
      host: '127.0.0.1',
      kubeconfigPath: apiServer.kubeconfigPath,
      namespace: 'rotation',
      serviceName: 'tollgate-webhook',
      webhookConfigName: 'rotation-config',
      sidecarImage: SIDECAR_IMAGE,
      configUrl: CONFIG_URL,
      redisUrl: REDIS_URL,
      log,
      registry: new Registry(),
      certificateCheckIntervalMs: 100,
    });
    try {
      // Another replica rotates: a new CA and certificate for the same hosts, with the old CA kept.
      const hosts = { dnsNames: serviceDnsNames('tollgate-webhook', 'rotation'), ipAddresses: ['127.0.0.1'] };
      const next = await createWebhookCertificate(hosts, 365);
      const secret = await core.readNamespacedSecret({ name: 'tollgate-webhook-tls', namespace: 'rotation' });
      const oldBundle = Buffer.from(secret.data?.['ca.crt'] ?? '', 'base64').toString('utf8');
      const nextBundle = next.caCertPem + oldBundle;
      const base64 = (text: string) => Buffer.from(text).toString('base64');
      secret.data = { 'tls.crt': base64(next.certPem), 'tls.key': base64(next.keyPem), 'ca.crt': base64(nextBundle) };
      await core.replaceNamespacedSecret({ name: 'tollgate-webhook-tls', namespace: 'rotation', body: secret });

      const nextFingerprint = new X509Certificate(next.certPem).fingerprint256;
      await waitFor('the webhook to serve the new certificate', async () => {
        const response = await httpsRequest(`${webhook.url}/healthz`, nextBundle);
        return response.peer.fingerprint256 === nextFingerprint;
      });
      await waitFor('the caBundle to follow', async () => {
        const stored = await admission.readMutatingWebhookConfiguration({ name: 'rotation-config' });
        return stored.webhooks?.[0]?.clientConfig.caBundle === base64(nextBundle);
      });
      const stored = await admission.readMutatingWebhookConfiguration({ name: 'rotation-config' });

      expect(stored.webhooks?.map((entry) => entry.clientConfig.caBundle)).toEqual([base64(nextBundle), base64(nextBundle)]);
    } finally {
      await webhook.close();
    }
  });
});

describe('webhook shutdown', () => {
  it('ends an unused connection', async () => {
    await admission.createMutatingWebhookConfiguration({ body: webhookConfiguration('shutdown-config', 1, 'tollgate.dev/never-set') });
    const webhook = await startWebhook({
      port: 0,
      host: '127.0.0.1',
      kubeconfigPath: apiServer.kubeconfigPath,
      namespace: 'shutdown',
      serviceName: 'tollgate-webhook',
      webhookConfigName: 'shutdown-config',
      sidecarImage: SIDECAR_IMAGE,
      configUrl: CONFIG_URL,
      redisUrl: REDIS_URL,
      log,
      registry: new Registry(),
    });
    // A connection that finished its TLS handshake and sends nothing, as a client's spare connection does.
    const { port } = new URL(webhook.url);
    const spare = tls.connect({ host: '127.0.0.1', port: Number(port), rejectUnauthorized: false });
    await once(spare, 'secureConnect');
    const closed = once(spare, 'close');

    await webhook.close();
    await closed;
    expect(spare.destroyed).toBe(true);
  });
});

describe('webhook with cert-manager', () => {
  it('serves the Secret it is given and writes nothing', async () => {
    const issued = await createWebhookCertificate({ dnsNames: ['tollgate-webhook.cert-manager-mode.svc'], ipAddresses: ['127.0.0.1'] }, 30);
    const base64 = (text: string) => Buffer.from(text).toString('base64');
    await core.createNamespacedSecret({
      namespace: 'cert-manager-mode',
      body: {
        metadata: { name: 'issued-tls' },
        type: 'kubernetes.io/tls',
        data: { 'tls.crt': base64(issued.certPem), 'tls.key': base64(issued.keyPem), 'ca.crt': base64(issued.caCertPem) },
      },
    });
    const configuration = webhookConfiguration('cert-manager-config', 1, 'tollgate.dev/never-set');
    configuration.webhooks![0]!.clientConfig.caBundle = base64('injected by cert-manager');
    await admission.createMutatingWebhookConfiguration({ body: configuration });

    const webhook = await startWebhook({
      port: 0,
      host: '127.0.0.1',
      kubeconfigPath: apiServer.kubeconfigPath,
      namespace: 'cert-manager-mode',
      serviceName: 'tollgate-webhook',
      webhookConfigName: 'cert-manager-config',
      certManager: true,
      tlsSecretName: 'issued-tls',
      sidecarImage: SIDECAR_IMAGE,
      configUrl: CONFIG_URL,
      redisUrl: REDIS_URL,
      log,
      registry: new Registry(),
    });
    try {
      const response = await httpsRequest(`${webhook.url}/healthz`, issued.caCertPem);
      const stored = await admission.readMutatingWebhookConfiguration({ name: 'cert-manager-config' });
      const secrets = await core.listNamespacedSecret({ namespace: 'cert-manager-mode' });

      expect(response.status).toBe(200);
      expect(response.peer.fingerprint256).toBe(new X509Certificate(issued.certPem).fingerprint256);
      expect(webhook.caBundle).toBe(base64(issued.caCertPem));
      expect(stored.webhooks?.map((entry) => entry.clientConfig.caBundle)).toEqual([base64('injected by cert-manager'), undefined]);
      expect(secrets.items.map((secret) => secret.metadata?.name)).toEqual(['issued-tls']);
    } finally {
      await webhook.close();
    }
  });

  it('fails clearly without its Secret', async () => {
    const start = startWebhook({
      port: 0,
      host: '127.0.0.1',
      kubeconfigPath: apiServer.kubeconfigPath,
      namespace: 'cert-manager-mode',
      serviceName: 'tollgate-webhook',
      webhookConfigName: 'cert-manager-config',
      certManager: true,
      tlsSecretName: 'not-issued-yet',
      sidecarImage: SIDECAR_IMAGE,
      configUrl: CONFIG_URL,
      redisUrl: REDIS_URL,
      log,
      registry: new Registry(),
    });

    await expect(start).rejects.toThrow(
      'Secret cert-manager-mode/not-issued-yet with the webhook certificate does not exist; check that cert-manager has issued the Certificate that writes it',
    );
  });
});
