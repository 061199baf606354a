// A ProviderRoute whose credential Secret the operator may not read. The operator runs as
// the chart's service account, with the chart's RBAC rendered for rbac.secretNamespaces={team-a},
// against a real kube-apiserver (with etcd). Reading a Secret in any other namespace then
// returns 403 Forbidden, and the route's status, Event and log must report it and name the fix.
// Needs KUBEBUILDER_ASSETS (see test/support/apiserver.ts).

import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  ApiextensionsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  type CoreV1Event,
  type V1CustomResourceDefinition,
} from '@kubernetes/client-node';
import { pino, type Logger } from 'pino';
import { parse as parseYaml, parseAllDocuments, stringify as stringifyYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventRecorder } from '../operator/events.ts';
import { Informer } from '../operator/informer.ts';
import { createKubeClients, loadKubeConfig, type KubeClients } from '../operator/kube.ts';
import { startOperator, type RunningOperator } from '../operator/main.ts';
import { RouteReconciler } from '../operator/reconcile-route.ts';
import { findTestBinary, startApiServer, type ApiServer } from './support/apiserver.ts';
import { testOperatorConfig } from './support/operator.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';
import { waitFor } from './support/processes.ts';

const GROUP = 'tollgate.dev';
const VERSION = 'v1alpha1';
const REPOSITORY_ROOT = path.join(import.meta.dirname, '..');
const RELEASE = 'tollgate';
const OPERATOR_NAMESPACE = 'tollgate-system';
const ALLOWED_NAMESPACE = 'team-a';
const FORBIDDEN_NAMESPACE = 'team-b';
/** Watched by the whole operator in the last suite only, so its reconciles do not touch the other namespaces. */
const OPERATOR_TEST_NAMESPACE = 'team-c';
const ROUTE = 'openai';
const SECRET = 'openai-key';
const CREDENTIAL = 'sk-test-not-a-real-key';
/** A recheck delay no default uses, so the requeue assertion can only pass if the reconciler returns its option. */
const RECHECK_MS = 7_000;
const RBAC_KINDS = new Set(['ServiceAccount', 'ClusterRole', 'ClusterRoleBinding', 'Role', 'RoleBinding']);
const STILL_WAITING = 'route still waits for its Secret; checking again later';
const LEVEL = { debug: 20, info: 30, warn: 40, error: 50 } as const;

/** Returns the Ready message of a route in `namespace`, with the 403 message worded as kube-apiserver 1.35 words it. */
function forbiddenMessage(namespace: string): string {
  return (
    `the operator may not read Secret "${SECRET}" in namespace "${namespace}" ` +
    `(HTTP 403: secrets "${SECRET}" is forbidden: User "system:serviceaccount:${OPERATOR_NAMESPACE}:${RELEASE}" ` +
    `cannot get resource "secrets" in API group "" in the namespace "${namespace}"); ` +
    `add "${namespace}" to the Helm value rbac.secretNamespaces, ` +
    `or grant the operator's service account get, list and watch on Secrets in namespace "${namespace}"`
  );
}

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

interface Condition {
  type: string;
  status: string;
  reason: string;
  message: string;
  lastTransitionTime: string;
  observedGeneration?: number;
}

let apiServer: ApiServer;
let workDir: string;
let adminConfig: KubeConfig;
let core: CoreV1Api;
let custom: CustomObjectsApi;
/** The operator's clients, built from a kubeconfig with the service account's token. */
let operatorClients: KubeClients;
let operatorKubeconfig: string;

/** Returns a pino logger at debug level that parses every line into `lines`. */
function captureLog(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug', base: undefined, timestamp: false }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  return { log, lines };
}

/** Returns the lines about one object, as the reconciler and the event recorder log them. */
function linesAbout(lines: LogLine[], namespace: string, name: string): LogLine[] {
  return lines.filter((line) => line['namespace'] === namespace && line['name'] === name);
}

/** Runs a binary with `input` on stdin and returns its stdout. Rejects with its stderr on a non-zero exit. */
function run(binary: string, args: string[], input = '', env: NodeJS.ProcessEnv = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { cwd: REPOSITORY_ROOT, env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`${path.basename(binary)} ${args.slice(0, 2).join(' ')} exited with ${code}:\n${stderr}${stdout}`));
    });
    child.stdin.end(input);
  });
}

/** Renders the chart with rbac.secretNamespaces set and applies its ServiceAccount and RBAC objects with kubectl. */
async function applyChartRbac(secretNamespaces: string[]): Promise<void> {
  const helm = await findTestBinary('helm');
  const kubectl = await findTestBinary('kubectl');
  const rendered = await run(
    helm,
    ['template', RELEASE, 'charts/tollgate', '--namespace', OPERATOR_NAMESPACE, '--set', `rbac.secretNamespaces={${secretNamespaces.join(',')}}`],
    '',
    {
      HELM_CACHE_HOME: path.join(workDir, 'helm-cache'),
      HELM_CONFIG_HOME: path.join(workDir, 'helm-config'),
      HELM_DATA_HOME: path.join(workDir, 'helm-data'),
    },
  );
  const objects = parseAllDocuments(rendered)
    .map((document) => document.toJS() as { kind?: string } | null)
    .filter((object): object is { kind: string } => object !== null && RBAC_KINDS.has(object.kind ?? ''));
  const manifest = objects.map((object) => stringifyYaml(object)).join('---\n');
  await run(kubectl, ['--kubeconfig', apiServer.kubeconfigPath, 'apply', '-f', '-'], manifest);
}

/** Writes a kubeconfig that authenticates as the chart's service account with a token from the TokenRequest API. */
async function writeOperatorKubeconfig(): Promise<string> {
  const request = await core.createNamespacedServiceAccountToken({
    name: RELEASE,
    namespace: OPERATOR_NAMESPACE,
    // Empty audiences mean the API server's own audience.
    body: { spec: { audiences: [], expirationSeconds: 3_600 } },
  });
  const token = request.status?.token;
  if (!token) throw new Error(`TokenRequest for ServiceAccount ${OPERATOR_NAMESPACE}/${RELEASE} returned no token`);

  const cluster = adminConfig.getCurrentCluster()!;
  const kubeconfig = stringifyYaml({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'test', cluster: { server: cluster.server, 'certificate-authority-data': cluster.caData } }],
    users: [{ name: 'operator', user: { token } }],
    contexts: [{ name: 'operator', context: { cluster: 'test', user: 'operator' } }],
    'current-context': 'operator',
  });
  const file = path.join(workDir, 'operator-kubeconfig.yaml');
  await writeFile(file, kubeconfig, { mode: 0o600 });
  return file;
}

async function installCrds(): Promise<void> {
  const extensions = adminConfig.makeApiClient(ApiextensionsV1Api);
  const dir = path.join(REPOSITORY_ROOT, 'crds');
  for (const file of (await readdir(dir)).filter((name) => name.endsWith('.yaml'))) {
    const body = parseYaml(await readFile(path.join(dir, file), 'utf8')) as V1CustomResourceDefinition;
    await extensions.createCustomResourceDefinition({ body });
    await waitFor(`CRD ${body.metadata?.name} to be established`, async () => {
      const crd = await extensions.readCustomResourceDefinition({ name: body.metadata!.name! });
      return crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True') ? true : undefined;
    });
  }
}

/** Creates a namespace with the credential Secret and a ProviderRoute that references it. */
async function createTeam(namespace: string): Promise<void> {
  await core.createNamespace({ body: { metadata: { name: namespace } } });
  await core.createNamespacedSecret({
    namespace,
    body: { metadata: { name: SECRET }, data: { apiKey: Buffer.from(CREDENTIAL).toString('base64') } },
  });
  await custom.createNamespacedCustomObject({
    group: GROUP,
    version: VERSION,
    namespace,
    plural: 'providerroutes',
    body: {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: 'ProviderRoute',
      metadata: { name: ROUTE },
      spec: { protocol: 'openai', baseURL: 'https://api.openai.com', models: ['gpt-4o-mini'], credentialSecretRef: { name: SECRET } },
    },
  });
}

async function readConditions(namespace: string): Promise<Condition[] | undefined> {
  const route = (await custom.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'providerroutes', name: ROUTE })) as {
    status?: { conditions?: Condition[] };
  };
  return route.status?.conditions;
}

async function routeEvents(namespace: string): Promise<CoreV1Event[]> {
  const list = await core.listNamespacedEvent({ namespace, fieldSelector: `involvedObject.kind=ProviderRoute,involvedObject.name=${ROUTE}` });
  return list.items;
}

beforeAll(async () => {
  apiServer = await startApiServer();
  workDir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-route-forbidden-'));
  adminConfig = new KubeConfig();
  adminConfig.loadFromFile(apiServer.kubeconfigPath);
  core = adminConfig.makeApiClient(CoreV1Api);
  custom = adminConfig.makeApiClient(CustomObjectsApi);

  await installCrds();
  await core.createNamespace({ body: { metadata: { name: OPERATOR_NAMESPACE } } });
  for (const namespace of [ALLOWED_NAMESPACE, FORBIDDEN_NAMESPACE, OPERATOR_TEST_NAMESPACE]) await createTeam(namespace);
  await applyChartRbac([ALLOWED_NAMESPACE]);

  operatorKubeconfig = await writeOperatorKubeconfig();
  operatorClients = createKubeClients(loadKubeConfig({ kubeconfig: operatorKubeconfig }));
  // The RBAC authorizer follows Roles and bindings through a watch, so wait until the binding in team-a is in effect.
  await waitFor('Secret access in team-a', () => operatorClients.core.readNamespacedSecret({ namespace: ALLOWED_NAMESPACE, name: SECRET }));
}, 120_000);

afterAll(async () => {
  await apiServer?.stop();
  if (workDir !== undefined) await rm(workDir, { recursive: true, force: true });
}, 60_000);

describe('route reconciler without Secret access', () => {
  let routes: Informer;
  let reconciler: RouteReconciler;
  let captured: { log: Logger; lines: LogLine[] };

  beforeAll(async () => {
    captured = captureLog();
    routes = new Informer({ kind: 'ProviderRoute', clients: operatorClients, log: captured.log, resyncMs: 0, watchSilenceMs: 30_000 });
    routes.start();
    await routes.waitForSync();
    const events = new EventRecorder({ clients: operatorClients, log: captured.log, component: 'tollgate-operator', instance: 'test-replica' });
    reconciler = new RouteReconciler({ clients: operatorClients, routes, events, log: captured.log, secretRecheckMs: RECHECK_MS });
  });

  afterAll(() => routes?.stop());

  it('reports Ready where the Secret is readable', async () => {
    expect(await reconciler.reconcile(ALLOWED_NAMESPACE, ROUTE)).toBeUndefined();

    expect(await readConditions(ALLOWED_NAMESPACE)).toEqual([
      {
        type: 'Ready',
        status: 'True',
        reason: 'Valid',
        message: 'serves 1 model(s) under /openai; credential from Secret "openai-key" key "apiKey"',
        lastTransitionTime: expect.any(String),
        observedGeneration: 1,
      },
    ]);
  });

  it('reports a forbidden Secret in the Ready condition', async () => {
    expect(await reconciler.reconcile(FORBIDDEN_NAMESPACE, ROUTE)).toEqual({ requeueAfterMs: RECHECK_MS });

    expect(await readConditions(FORBIDDEN_NAMESPACE)).toEqual([
      {
        type: 'Ready',
        status: 'False',
        reason: 'SecretForbidden',
        message: forbiddenMessage(FORBIDDEN_NAMESPACE),
        lastTransitionTime: expect.any(String),
        observedGeneration: 1,
      },
    ]);
  });

  it('records one Warning event over repeated reconciles', async () => {
    expect(await reconciler.reconcile(FORBIDDEN_NAMESPACE, ROUTE)).toEqual({ requeueAfterMs: RECHECK_MS });
    expect(await reconciler.reconcile(FORBIDDEN_NAMESPACE, ROUTE)).toEqual({ requeueAfterMs: RECHECK_MS });

    const events = await routeEvents(FORBIDDEN_NAMESPACE);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      type: 'Warning',
      reason: 'SecretForbidden',
      message: forbiddenMessage(FORBIDDEN_NAMESPACE),
      count: 1,
      involvedObject: { kind: 'ProviderRoute', namespace: FORBIDDEN_NAMESPACE, name: ROUTE },
      source: { component: 'tollgate-operator' },
    });
  });

  it('logs one warn line and repeats at debug', () => {
    const lines = linesAbout(captured.lines, FORBIDDEN_NAMESPACE, ROUTE);

    expect(lines.filter((line) => line.level >= LEVEL.warn)).toEqual([
      {
        level: LEVEL.warn,
        msg: forbiddenMessage(FORBIDDEN_NAMESPACE),
        kind: 'ProviderRoute',
        namespace: FORBIDDEN_NAMESPACE,
        name: ROUTE,
        reason: 'SecretForbidden',
        type: 'Warning',
      },
    ]);
    const repeat = { level: LEVEL.debug, msg: STILL_WAITING, kind: 'ProviderRoute', namespace: FORBIDDEN_NAMESPACE, name: ROUTE, reason: 'SecretForbidden', recheckInMs: RECHECK_MS };
    expect(lines.filter((line) => line.level === LEVEL.debug)).toEqual([repeat, repeat]);
  });

  it('never logs the credential', () => {
    expect(captured.lines.filter((line) => JSON.stringify(line).includes(CREDENTIAL))).toEqual([]);
  });

  it('becomes Ready once rbac.secretNamespaces lists the namespace', async () => {
    await applyChartRbac([ALLOWED_NAMESPACE, FORBIDDEN_NAMESPACE]);
    await waitFor('Secret access in team-b', () => operatorClients.core.readNamespacedSecret({ namespace: FORBIDDEN_NAMESPACE, name: SECRET }));

    expect(await reconciler.reconcile(FORBIDDEN_NAMESPACE, ROUTE)).toBeUndefined();
    const [ready] = (await readConditions(FORBIDDEN_NAMESPACE)) ?? [];
    expect(ready?.status).toBe('True');
    expect(ready?.reason).toBe('Valid');
  });
});

describe('operator without Secret access', () => {
  let redis: RunningRedis;
  let operator: RunningOperator;
  let captured: { log: Logger; lines: LogLine[] };

  beforeAll(async () => {
    redis = await startRedis();
    captured = captureLog();
    const config = {
      ...testOperatorConfig({ kubeconfig: operatorKubeconfig, redisUrl: redis.url, identity: 'forbidden-replica' }),
      watchNamespace: OPERATOR_TEST_NAMESPACE,
    };
    operator = await startOperator(config, { log: captured.log, defaultMetrics: false });
    await waitFor('the operator to lead', async () => (operator.isLeader() ? true : undefined));
  }, 60_000);

  afterAll(async () => {
    await operator?.stop({ releaseLease: true });
    await redis?.stop();
  }, 30_000);

  it('rechecks a forbidden route without failing the reconcile', async () => {
    const conditions = await waitFor('the Ready condition in team-c', async () => {
      const current = await readConditions(OPERATOR_TEST_NAMESPACE);
      return current?.[0]?.reason === 'SecretForbidden' ? current : undefined;
    });
    expect(conditions).toEqual([
      {
        type: 'Ready',
        status: 'False',
        reason: 'SecretForbidden',
        message: forbiddenMessage(OPERATOR_TEST_NAMESPACE),
        lastTransitionTime: expect.any(String),
        observedGeneration: 1,
      },
    ]);

    // Each repeat logs one debug line, so two of them mean the route was checked twice more after the first failure.
    await waitFor('two rechecks of the route', async () => {
      const repeats = linesAbout(captured.lines, OPERATOR_TEST_NAMESPACE, ROUTE).filter((line) => line.msg === STILL_WAITING);
      return repeats.length >= 2 ? repeats : undefined;
    });

    const routeLines = linesAbout(captured.lines, OPERATOR_TEST_NAMESPACE, ROUTE);
    expect(routeLines.filter((line) => line.level >= LEVEL.warn).map((line) => line.msg)).toEqual([forbiddenMessage(OPERATOR_TEST_NAMESPACE)]);
    expect(captured.lines.filter((line) => line.msg === 'reconcile failed; retrying')).toEqual([]);

    const reconciles = (await operator.metrics.reconciles.get()).values;
    const failed = reconciles.find((value) => value.labels['kind'] === 'ProviderRoute' && value.labels['outcome'] === 'error');
    expect(failed?.value ?? 0).toBe(0);

    const events = await routeEvents(OPERATOR_TEST_NAMESPACE);
    expect(events.map((event) => [event.type, event.reason, event.count])).toEqual([['Warning', 'SecretForbidden', 1]]);
  });
});
