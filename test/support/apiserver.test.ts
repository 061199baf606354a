import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findTestBinary, startApiServer, type ApiServer } from './apiserver.ts';

const execFileAsync = promisify(execFile);

const NAMESPACE = 'tollgate-apiserver-test';

describe('startApiServer', () => {
  let apiServer: ApiServer;
  let core: CoreV1Api;

  beforeAll(async () => {
    apiServer = await startApiServer();
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromFile(apiServer.kubeconfigPath);
    core = kubeConfig.makeApiClient(CoreV1Api);
  }, 180_000);

  afterAll(async () => {
    await apiServer?.stop();
  }, 30_000);

  it('serves on a loopback address', () => {
    expect(apiServer.server).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
  });

  it('stores a namespace and a config map', async () => {
    await core.createNamespace({
      body: { metadata: { name: NAMESPACE, labels: { 'tollgate.dev/test': 'apiserver' } } },
    });
    await core.createNamespacedConfigMap({
      namespace: NAMESPACE,
      body: { metadata: { name: 'prices' }, data: { 'gpt-4o.input': '2.50', currency: 'USD' } },
    });

    const namespace = await core.readNamespace({ name: NAMESPACE });
    expect(namespace.metadata?.name).toBe(NAMESPACE);
    expect(namespace.metadata?.labels?.['tollgate.dev/test']).toBe('apiserver');
    expect(namespace.status?.phase).toBe('Active');

    const configMap = await core.readNamespacedConfigMap({ name: 'prices', namespace: NAMESPACE });
    expect(configMap.metadata?.namespace).toBe(NAMESPACE);
    expect(configMap.data).toEqual({ 'gpt-4o.input': '2.50', currency: 'USD' });
  });

  it('rejects a duplicate config map with 409', async () => {
    const create = core.createNamespacedConfigMap({
      namespace: 'default',
      body: { metadata: { name: 'duplicate' }, data: { n: '1' } },
    });
    await expect(create).resolves.toBeDefined();

    const duplicate = core.createNamespacedConfigMap({
      namespace: 'default',
      body: { metadata: { name: 'duplicate' }, data: { n: '2' } },
    });
    await expect(duplicate).rejects.toMatchObject({ code: 409 });
  });

  it('works with kubectl and the kubeconfig', async () => {
    const kubectl = await findTestBinary('kubectl');
    const { stdout } = await execFileAsync(kubectl, [
      '--kubeconfig',
      apiServer.kubeconfigPath,
      'get',
      'namespaces',
      '-o',
      'jsonpath={range .items[*]}{.metadata.name}{"\\n"}{end}',
    ]);
    const names = stdout.trim().split('\n');

    expect(names).toContain('default');
    expect(names).toContain('kube-system');
    expect(names).toContain(NAMESPACE);
  });

  it('denies an unbound account via RBAC', async () => {
    const kubectl = await findTestBinary('kubectl');
    const { stdout } = await execFileAsync(kubectl, [
      '--kubeconfig',
      apiServer.kubeconfigPath,
      'auth',
      'can-i',
      'create',
      'pods',
      '--as=system:serviceaccount:default:nobody',
    ]).catch((error: { stdout: string }) => ({ stdout: error.stdout }));

    expect(stdout.trim()).toBe('no');
  });

  it('sends webhook calls for a Service to loopback', async () => {
    // A chart's webhook names a Service, and the API server calls that Service's cluster IP.
    const kubectl = await findTestBinary('kubectl');
    const apply = (manifest: string) => {
      const child = execFileAsync(kubectl, ['--kubeconfig', apiServer.kubeconfigPath, 'apply', '-f', '-']);
      child.child.stdin!.end(manifest);
      return child;
    };
    await apply(`
apiVersion: v1
kind: Namespace
metadata: { name: webhook-target, labels: { tollgate.dev/test: webhook-target } }
---
apiVersion: v1
kind: Service
metadata: { name: hook, namespace: webhook-target }
spec: { ports: [{ port: 443 }] }
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: { name: loopback-check }
webhooks:
  - name: loopback-check.tollgate.dev
    clientConfig: { service: { name: hook, namespace: webhook-target, port: 443 } }
    rules: [{ apiGroups: [''], apiVersions: [v1], operations: [CREATE], resources: [configmaps] }]
    namespaceSelector: { matchLabels: { tollgate.dev/test: webhook-target } }
    failurePolicy: Fail
    sideEffects: None
    admissionReviewVersions: [v1]
`);
    const service = await core.readNamespacedService({ name: 'hook', namespace: 'webhook-target' });
    expect(service.spec?.clusterIP).toMatch(/^127\.0\.100\.\d+$/);

    // Nothing listens there, so the call fails on loopback instead of leaving the machine.
    const created = core.createNamespacedConfigMap({ namespace: 'webhook-target', body: { metadata: { name: 'probe' } } });
    await expect(created).rejects.toThrow(`dial tcp ${service.spec!.clusterIP}:443: connect: connection refused`);
  });
});
