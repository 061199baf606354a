// The Helm chart with the real helm binary: lint, template with assertions on the
// rendered objects, and install and upgrade against a real kube-apiserver (nothing runs
// pods there, so the Deployment is only stored, never started).

import { spawn } from 'node:child_process';
import { access, constants, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseOperatorArgs, validateOperatorConfig } from '../operator/main.ts';
import { createWebhookCertificate } from '../operator/webhook/certs.ts';
import { findTestBinary, startApiServer, type ApiServer } from './support/apiserver.ts';

const REPOSITORY_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHART = 'charts/tollgate';
const RELEASE = 'tollgate';
const NAMESPACE = 'tollgate-system';
const SERVICE_ACCOUNT = `system:serviceaccount:${NAMESPACE}:${RELEASE}`;
const INJECT_SELECTOR = { matchLabels: { 'tollgate.dev/inject': 'true' } };

interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: any;
}

let helmBinary: string;
let kubectlBinary: string;
let workDir: string;

function run(binary: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, {
      cwd: REPOSITORY_ROOT,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs helm with its cache, config and data folders in the test's own directory. */
function helm(args: string[]): Promise<CommandResult> {
  return run(helmBinary, args, {
    HELM_CACHE_HOME: path.join(workDir, 'helm-cache'),
    HELM_CONFIG_HOME: path.join(workDir, 'helm-config'),
    HELM_DATA_HOME: path.join(workDir, 'helm-data'),
  });
}

async function succeed(result: Promise<CommandResult>, command: string): Promise<string> {
  const { code, stdout, stderr } = await result;
  if (code !== 0) throw new Error(`${command} exited with ${code}:\n${stderr}${stdout}`);
  return stdout;
}

/** Renders the chart with `--set` values and returns its objects. */
async function template(values: string[] = [], extraArgs: string[] = []): Promise<KubeObject[]> {
  const setArgs = values.flatMap((value) => ['--set', value]);
  const output = await succeed(
    helm(['template', RELEASE, CHART, '--namespace', NAMESPACE, ...setArgs, ...extraArgs]),
    'helm template',
  );
  return parseAllDocuments(output)
    .map((document) => document.toJS() as KubeObject | null)
    .filter((object): object is KubeObject => object !== null);
}

function find(objects: KubeObject[], kind: string, name: string): KubeObject {
  const found = objects.find((object) => object.kind === kind && object.metadata.name === name);
  if (found === undefined) {
    const present = objects.map((object) => `${object.kind}/${object.metadata.name}`).join(', ');
    throw new Error(`no ${kind}/${name} in the rendered chart; it has ${present}`);
  }
  return found;
}

function kinds(objects: KubeObject[]): string[] {
  return objects.map((object) => `${object.kind}/${object.metadata.name}`).sort();
}

function envOf(deployment: KubeObject): Record<string, any> {
  const container = deployment['spec'].template.spec.containers[0];
  return Object.fromEntries(
    (container.env as Array<{ name: string; value?: string; valueFrom?: unknown }>).map((variable) => [
      variable.name,
      variable.value ?? variable.valueFrom,
    ]),
  );
}

/** Returns the operator container's variables that have a literal value, leaving out those set through valueFrom. */
function operatorEnv(deployment: KubeObject): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(envOf(deployment)).filter((entry): entry is [string, string] => typeof entry[1] === 'string'));
}

/** Returns every PromQL expression of a Grafana dashboard's panels. */
function dashboardQueries(dashboard: { panels: Array<{ targets?: Array<{ expr: string }> }> }): string[] {
  return dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((target) => target.expr));
}

beforeAll(async () => {
  helmBinary = await findTestBinary('helm');
  kubectlBinary = await findTestBinary('kubectl');
  workDir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-helm-'));
});

afterAll(async () => {
  if (workDir !== undefined) await rm(workDir, { recursive: true, force: true });
});

describe('helm lint', () => {
  it('passes with default values', async () => {
    const result = await helm(['lint', '--strict', CHART]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
  });

  it('passes with cert-manager and secret namespaces', async () => {
    const result = await helm([
      'lint', '--strict', CHART,
      '--set', 'certManager.enabled=true',
      '--set', 'rbac.secretNamespaces={team-a,team-b}',
      '--set', 'serviceMonitor.enabled=true',
    ]);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
  });
});

describe('helm template', () => {
  it('renders the operator objects', async () => {
    const objects = await template();
    expect(kinds(objects)).toEqual([
      'ClusterRole/tollgate',
      'ClusterRoleBinding/tollgate',
      'ConfigMap/tollgate-dashboard-enforcement',
      'ConfigMap/tollgate-dashboard-margins',
      'ConfigMap/tollgate-dashboard-wallets',
      'Deployment/tollgate',
      'MutatingWebhookConfiguration/tollgate',
      'PodDisruptionBudget/tollgate',
      'Role/tollgate',
      'RoleBinding/tollgate',
      'Service/tollgate',
      'ServiceAccount/tollgate',
    ]);
    for (const object of objects) {
      if (object.kind !== 'ClusterRole' && object.kind !== 'ClusterRoleBinding' && object.kind !== 'MutatingWebhookConfiguration') {
        expect(object.metadata.namespace, `${object.kind}/${object.metadata.name}`).toBe(NAMESPACE);
      }
      expect(object.metadata.labels?.['app.kubernetes.io/instance']).toBe(RELEASE);
    }
  });

  it('runs two operator replicas with the configured image', async () => {
    const deployment = find(await template(), 'Deployment', 'tollgate');
    expect(deployment['spec'].replicas).toBe(2);

    const pod = deployment['spec'].template.spec;
    expect(pod.serviceAccountName).toBe('tollgate');
    expect(pod.containers).toHaveLength(1);
    const container = pod.containers[0];
    expect(container.image).toBe('tollgate:0.1.0');
    expect(container.command).toEqual(['node', 'src/cli/main.ts', 'operator']);
    expect(container.ports).toEqual([
      { name: 'webhook', containerPort: 9443, protocol: 'TCP' },
      { name: 'http', containerPort: 8080, protocol: 'TCP' },
    ]);
    expect(container.securityContext.readOnlyRootFilesystem).toBe(true);
    expect(pod.securityContext.runAsNonRoot).toBe(true);

    const overridden = find(
      await template(['image.repository=registry.example/tollgate', 'image.tag=1.2.3', 'operator.replicas=3']),
      'Deployment',
      'tollgate',
    );
    expect(overridden['spec'].replicas).toBe(3);
    expect(overridden['spec'].template.spec.containers[0].image).toBe('registry.example/tollgate:1.2.3');
  });

  it('passes ledger, sidecar and webhook settings to the operator', async () => {
    const env = envOf(find(await template(['sidecar.image.tag=0.2.0']), 'Deployment', 'tollgate'));
    expect(env).toEqual({
      TOLLGATE_NAMESPACE: { fieldRef: { fieldPath: 'metadata.namespace' } },
      TOLLGATE_POD_NAME: { fieldRef: { fieldPath: 'metadata.name' } },
      LOG_LEVEL: 'info',
      TOLLGATE_REDIS_URL: 'redis://redis:6379/0',
      TOLLGATE_LEDGER_RETENTION: '7d',
      TOLLGATE_LEDGER_TIMEOUT: '2s',
      TOLLGATE_WEBHOOK_LISTEN: '0.0.0.0:9443',
      TOLLGATE_HTTP_LISTEN: '0.0.0.0:8080',
      TOLLGATE_LEASE_NAME: 'tollgate',
      TOLLGATE_WEBHOOK_CONFIGURATION: 'tollgate',
      TOLLGATE_WEBHOOK_SERVICE: 'tollgate',
      TOLLGATE_WEBHOOK_SECRET: 'tollgate-webhook-tls',
      TOLLGATE_WEBHOOK_CERT_MANAGER: 'false',
      TOLLGATE_CONFIG_URL: 'http://tollgate.tollgate-system.svc:8080',
      TOLLGATE_SIDECAR_IMAGE: 'tollgate:0.2.0',
      TOLLGATE_SIDECAR_IMAGE_PULL_POLICY: 'IfNotPresent',
      TOLLGATE_SIDECAR_RESOURCES: '{"limits":{"memory":"256Mi"},"requests":{"cpu":"50m","memory":"64Mi"}}',
      TOLLGATE_SIDECAR_WALLET_LABEL: 'true',
    });
  });

  it('takes a Redis Cluster URL', async () => {
    const url = 'rediss+cluster://redis-0.redis:6379?node=redis-1.redis:6379';
    const env = operatorEnv(find(await template([`ledger.redisUrl=${url}`]), 'Deployment', 'tollgate'));
    expect(env['TOLLGATE_REDIS_URL']).toBe(url);
    expect(parseOperatorArgs([], env)?.redisUrl).toBe(url);
    const invalid = await helm(['template', RELEASE, CHART, '--set', 'ledger.redisUrl=memcached://cache:11211']);
    expect(invalid.code).toBe(1);
    expect(invalid.stderr).toContain("at '/ledger/redisUrl': 'memcached://cache:11211' does not match pattern");
  });

  it('reads the Redis URL from a Secret when one is named', async () => {
    const env = envOf(
      find(await template(['ledger.existingSecret.name=redis-auth', 'ledger.existingSecret.key=url']), 'Deployment', 'tollgate'),
    );
    expect(env['TOLLGATE_REDIS_URL']).toEqual({ secretKeyRef: { name: 'redis-auth', key: 'url' } });
  });

  it('passes the ledger retention and compaction settings', async () => {
    const env = envOf(find(await template(['ledger.settledRetention=36h', 'ledger.compactAfter=90d']), 'Deployment', 'tollgate'));
    expect(env['TOLLGATE_LEDGER_RETENTION']).toBe('36h');
    expect(env['TOLLGATE_LEDGER_COMPACT_AFTER']).toBe('90d');

    const invalid = await helm(['template', RELEASE, CHART, '--set', 'ledger.compactAfter=90 days']);
    expect(invalid.code).toBe(1);
    expect(invalid.stderr).toContain("at '/ledger/compactAfter': '90 days' does not match pattern");
  });

  it('passes the ledger timeout, and rejects one the operator would refuse', async () => {
    for (const [text, ms] of [['500ms', 500], ['0s', 0], ['10m', 600_000], ['10ms', 10]] as const) {
      const env = operatorEnv(find(await template([`ledger.timeout=${text}`]), 'Deployment', 'tollgate'));
      expect(env['TOLLGATE_LEDGER_TIMEOUT'], text).toBe(text);
      expect(parseOperatorArgs([], env)?.ledgerTimeoutMs, text).toBe(ms);
    }
    for (const text of ['9ms', '10m1s', '1h']) {
      const result = await helm(['template', RELEASE, CHART, '--set', `ledger.timeout=${text}`]);
      expect(result.code, text).toBe(1);
      expect(result.stderr, text).toContain(`ledger.timeout "${text}" is outside 10ms to 10m`);
      expect(() => parseOperatorArgs([], { TOLLGATE_REDIS_URL: 'redis://r:6379', TOLLGATE_LEDGER_TIMEOUT: text }), text).toThrow(
        `invalid TOLLGATE_LEDGER_TIMEOUT "${text}": use a duration from 10ms to 10m`,
      );
    }
    const malformed = await helm(['template', RELEASE, CHART, '--set', 'ledger.timeout=2 seconds']);
    expect(malformed.code).toBe(1);
    expect(malformed.stderr).toContain("at '/ledger/timeout': '2 seconds' does not match pattern");
  });

  it('rejects a retention the operator would refuse', async () => {
    // The operator refuses less than 1h at start, so the chart fails the install instead of crash-looping its pods.
    for (const text of ['30m', '59m59s', '3599999ms']) {
      const short = await helm(['template', RELEASE, CHART, '--set', `ledger.settledRetention=${text}`]);
      expect(short.code, text).toBe(1);
      expect(short.stderr, text).toContain(`ledger.settledRetention "${text}" is shorter than 1h`);
      expect(() => parseOperatorArgs([], { TOLLGATE_REDIS_URL: 'redis://r:6379', TOLLGATE_LEDGER_RETENTION: text }), text).toThrow('use at least 1h');
    }
    for (const text of ['60m', '1h', '1d12h']) {
      const env = operatorEnv(find(await template([`ledger.settledRetention=${text}`]), 'Deployment', 'tollgate'));
      expect(env['TOLLGATE_LEDGER_RETENTION'], text).toBe(text);
      expect(parseOperatorArgs([], env)?.settledRetentionMs, text).toBeGreaterThanOrEqual(3_600_000);
    }
  });

  it('passes the sidecar body limit', async () => {
    const fromSet = envOf(find(await template(['sidecar.bodyLimit=16777216']), 'Deployment', 'tollgate'));
    expect(fromSet['TOLLGATE_SIDECAR_BODY_LIMIT']).toBe('16777216');

    // A number in a values file reaches the template as a float64, and it must still render as whole bytes.
    const valuesFile = path.join(workDir, 'body-limit-values.yaml');
    await writeFile(valuesFile, 'sidecar:\n  bodyLimit: 8388608\n');
    const fromFile = envOf(find(await template([], ['--values', valuesFile]), 'Deployment', 'tollgate'));
    expect(fromFile['TOLLGATE_SIDECAR_BODY_LIMIT']).toBe('8388608');

    const fromString = envOf(find(await template([], ['--set-string', 'sidecar.bodyLimit=1048576']), 'Deployment', 'tollgate'));
    expect(fromString['TOLLGATE_SIDECAR_BODY_LIMIT']).toBe('1048576');
  });

  it('gives the operator a body limit it parses', async () => {
    const valid = operatorEnv(find(await template(['sidecar.bodyLimit=8388608']), 'Deployment', 'tollgate'));
    expect(parseOperatorArgs([], valid)?.sidecarBodyLimit).toBe(8_388_608);

    const unset = operatorEnv(find(await template(), 'Deployment', 'tollgate'));
    expect(parseOperatorArgs([], unset)?.sidecarBodyLimit).toBeUndefined();

    // The chart's schema rejects a value that is not whole bytes, and the operator rejects one set by hand at start.
    const rejected = await helm(['template', RELEASE, CHART, '--set', 'sidecar.bodyLimit=8MiB']);
    expect(rejected.code).toBe(1);
    expect(rejected.stderr).toContain("at '/sidecar/bodyLimit': '8MiB' does not match pattern");
    const zero = await helm(['template', RELEASE, CHART, '--set', 'sidecar.bodyLimit=0']);
    expect(zero.code).toBe(1);
    expect(zero.stderr).toContain("at '/sidecar/bodyLimit'");

    const invalid = { ...valid, TOLLGATE_SIDECAR_BODY_LIMIT: '8MiB' };
    expect(() => parseOperatorArgs([], invalid)).toThrow(
      'invalid TOLLGATE_SIDECAR_BODY_LIMIT "8MiB": use a whole number of bytes from 1 to 9007199254740991, such as 8388608 for 8 MiB',
    );
  });

  it('passes the sidecar tool use limit', async () => {
    const fromSet = operatorEnv(find(await template(['sidecar.maxToolUses=12']), 'Deployment', 'tollgate'));
    expect(fromSet['TOLLGATE_SIDECAR_MAX_TOOL_USES']).toBe('12');
    expect(parseOperatorArgs([], fromSet)?.sidecarMaxToolUses).toBe(12);

    const valuesFile = path.join(workDir, 'max-tool-uses-values.yaml');
    await writeFile(valuesFile, 'sidecar:\n  maxToolUses: 1000\n');
    const fromFile = operatorEnv(find(await template([], ['--values', valuesFile]), 'Deployment', 'tollgate'));
    expect(fromFile['TOLLGATE_SIDECAR_MAX_TOOL_USES']).toBe('1000');
    expect(parseOperatorArgs([], fromFile)?.sidecarMaxToolUses).toBe(1000);

    const fromString = operatorEnv(find(await template([], ['--set-string', 'sidecar.maxToolUses=3']), 'Deployment', 'tollgate'));
    expect(fromString['TOLLGATE_SIDECAR_MAX_TOOL_USES']).toBe('3');

    // Unset, the variable is absent and the injected sidecars keep their default.
    const unset = operatorEnv(find(await template(), 'Deployment', 'tollgate'));
    expect(unset['TOLLGATE_SIDECAR_MAX_TOOL_USES']).toBeUndefined();
    expect(parseOperatorArgs([], unset)?.sidecarMaxToolUses).toBeUndefined();
  });

  it('rejects an invalid sidecar tool use limit', async () => {
    const notNumber = await helm(['template', RELEASE, CHART, '--set', 'sidecar.maxToolUses=ten']);
    expect(notNumber.code).toBe(1);
    expect(notNumber.stderr).toContain("at '/sidecar/maxToolUses': 'ten' does not match pattern");
    for (const value of ['0', '1001', '2.5', '-1']) {
      const rejected = await helm(['template', RELEASE, CHART, '--set', `sidecar.maxToolUses=${value}`]);
      expect(rejected.code, value).toBe(1);
      expect(rejected.stderr, value).toContain("at '/sidecar/maxToolUses'");
    }
    const tooLargeString = await helm(['template', RELEASE, CHART, '--set-string', 'sidecar.maxToolUses=1001']);
    expect(tooLargeString.code).toBe(1);
    expect(tooLargeString.stderr).toContain("at '/sidecar/maxToolUses': '1001' does not match pattern");

    // The operator rejects at start a value set in its environment by hand, which the schema never checks.
    const valid = operatorEnv(find(await template(), 'Deployment', 'tollgate'));
    expect(() => parseOperatorArgs([], { ...valid, TOLLGATE_SIDECAR_MAX_TOOL_USES: '1001' })).toThrow(
      'invalid TOLLGATE_SIDECAR_MAX_TOOL_USES "1001": use a whole number of tool uses from 1 to 1000, such as 10',
    );
  });

  it('passes the sidecar wallet label setting', async () => {
    const unset = operatorEnv(find(await template(), 'Deployment', 'tollgate'));
    expect(unset['TOLLGATE_SIDECAR_WALLET_LABEL']).toBe('true');
    expect(parseOperatorArgs([], unset)?.sidecarWalletLabel).toBe(true);

    const fromSet = operatorEnv(find(await template(['sidecar.walletLabel=false']), 'Deployment', 'tollgate'));
    expect(fromSet['TOLLGATE_SIDECAR_WALLET_LABEL']).toBe('false');
    expect(parseOperatorArgs([], fromSet)?.sidecarWalletLabel).toBe(false);

    const valuesFile = path.join(workDir, 'wallet-label-values.yaml');
    await writeFile(valuesFile, 'sidecar:\n  walletLabel: false\n');
    const fromFile = operatorEnv(find(await template([], ['--values', valuesFile]), 'Deployment', 'tollgate'));
    expect(fromFile['TOLLGATE_SIDECAR_WALLET_LABEL']).toBe('false');

    // A string such as "off" or even "false" is not a boolean, so the schema rejects it before the operator sees it.
    for (const text of ['off', 'false']) {
      const rejected = await helm(['template', RELEASE, CHART, '--set-string', `sidecar.walletLabel=${text}`]);
      expect(rejected.code, text).toBe(1);
      expect(rejected.stderr, text).toContain("at '/sidecar/walletLabel': got string, want boolean");
    }
  });

  it('passes the sidecar Redis Secret', async () => {
    const unset = operatorEnv(find(await template(), 'Deployment', 'tollgate'));
    expect(unset['TOLLGATE_SIDECAR_REDIS_SECRET']).toBeUndefined();
    expect(parseOperatorArgs([], unset)?.sidecarRedisSecret).toBeUndefined();

    const named = operatorEnv(find(await template(['sidecar.redisSecret.name=tollgate-redis']), 'Deployment', 'tollgate'));
    expect(named['TOLLGATE_SIDECAR_REDIS_SECRET']).toBe('tollgate-redis/redisUrl');
    expect(parseOperatorArgs([], named)?.sidecarRedisSecret).toEqual({ name: 'tollgate-redis', key: 'redisUrl' });

    const withKey = operatorEnv(find(await template(['sidecar.redisSecret.name=ledger', 'sidecar.redisSecret.key=url']), 'Deployment', 'tollgate'));
    expect(parseOperatorArgs([], withKey)?.sidecarRedisSecret).toEqual({ name: 'ledger', key: 'url' });

    const rejected = await helm(['template', RELEASE, CHART, '--set', 'sidecar.redisSecret.name=Ledger_Secret']);
    expect(rejected.code).toBe(1);
    expect(rejected.stderr).toContain("at '/sidecar/redisSecret/name': 'Ledger_Secret' does not match pattern");
  });

  it('mounts no Redis TLS Secret by default', async () => {
    const deployment = find(await template(), 'Deployment', 'tollgate');
    const pod = deployment['spec'].template.spec;
    const env = operatorEnv(deployment);

    expect(Object.keys(env).filter((name) => name.includes('TLS'))).toEqual([]);
    expect(pod.volumes.map((volume: { name: string }) => volume.name)).toEqual(['tmp']);
    expect(pod.containers[0].volumeMounts).toEqual([{ name: 'tmp', mountPath: '/tmp' }]);
    const config = parseOperatorArgs([], env);
    expect(config?.redisTls).toBeUndefined();
    expect(config?.sidecarRedisTlsSecret).toBeUndefined();
  });

  it('mounts the Redis TLS Secret for a CA', async () => {
    const deployment = find(
      await template(['ledger.redisUrl=rediss://redis.tollgate-system.svc:6380', 'ledger.tls.existingSecret=redis-tls']),
      'Deployment',
      'tollgate',
    );
    const pod = deployment['spec'].template.spec;
    const env = operatorEnv(deployment);

    expect(env['TOLLGATE_REDIS_CA_FILE']).toBe('/var/run/tollgate/redis-tls/ca.crt');
    expect(env['TOLLGATE_REDIS_CERT_FILE']).toBeUndefined();
    expect(env['TOLLGATE_REDIS_KEY_FILE']).toBeUndefined();
    expect(env['TOLLGATE_SIDECAR_REDIS_TLS_SECRET']).toBe('redis-tls');
    expect(pod.volumes).toEqual([
      { name: 'tmp', emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } },
      { name: 'redis-tls', secret: { secretName: 'redis-tls', items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
    ]);
    expect(pod.containers[0].volumeMounts).toEqual([
      { name: 'tmp', mountPath: '/tmp' },
      { name: 'redis-tls', mountPath: '/var/run/tollgate/redis-tls', readOnly: true },
    ]);
    // The operator reads the variable: the file exists only in the pod, so here the read fails and names it.
    expect(() => parseOperatorArgs([], env)).toThrow(
      'cannot read the CA certificate file "/var/run/tollgate/redis-tls/ca.crt" given by TOLLGATE_REDIS_CA_FILE (ENOENT)',
    );
  });

  it('mounts the client certificate too when enabled', async () => {
    const deployment = find(
      await template(['ledger.redisUrl=rediss://redis.tollgate-system.svc:6380', 'ledger.tls.existingSecret=redis-tls', 'ledger.tls.clientCertificate=true']),
      'Deployment',
      'tollgate',
    );
    const pod = deployment['spec'].template.spec;
    const env = operatorEnv(deployment);

    expect(env['TOLLGATE_REDIS_CA_FILE']).toBe('/var/run/tollgate/redis-tls/ca.crt');
    expect(env['TOLLGATE_REDIS_CERT_FILE']).toBe('/var/run/tollgate/redis-tls/tls.crt');
    expect(env['TOLLGATE_REDIS_KEY_FILE']).toBe('/var/run/tollgate/redis-tls/tls.key');
    expect(env['TOLLGATE_SIDECAR_REDIS_TLS_SECRET']).toBe('redis-tls');
    expect(pod.volumes[1]).toEqual({
      name: 'redis-tls',
      secret: {
        secretName: 'redis-tls',
        items: [
          { key: 'ca.crt', path: 'ca.crt' },
          { key: 'tls.crt', path: 'tls.crt' },
          { key: 'tls.key', path: 'tls.key' },
        ],
      },
    });
  });

  it('mounts only the client certificate for a server with a public CA', async () => {
    const deployment = find(
      await template([
        'ledger.redisUrl=rediss://redis.example:6380',
        'ledger.tls.existingSecret=redis-client',
        'ledger.tls.caCertificate=false',
        'ledger.tls.clientCertificate=true',
      ]),
      'Deployment',
      'tollgate',
    );
    const env = operatorEnv(deployment);

    expect(env['TOLLGATE_REDIS_CA_FILE']).toBeUndefined();
    expect(env['TOLLGATE_REDIS_CERT_FILE']).toBe('/var/run/tollgate/redis-tls/tls.crt');
    expect(env['TOLLGATE_REDIS_KEY_FILE']).toBe('/var/run/tollgate/redis-tls/tls.key');
    expect(deployment['spec'].template.spec.volumes[1]).toEqual({
      name: 'redis-tls',
      secret: {
        secretName: 'redis-client',
        items: [
          { key: 'tls.crt', path: 'tls.crt' },
          { key: 'tls.key', path: 'tls.key' },
        ],
      },
    });
  });

  it('gives the operator Redis TLS settings it accepts', async () => {
    const deployment = find(
      await template([
        'ledger.redisUrl=rediss+cluster://redis-0.redis:6380',
        'ledger.tls.existingSecret=redis-tls',
        'ledger.tls.clientCertificate=true',
        'ledger.tls.sidecarSecret=shop-redis-tls',
      ]),
      'Deployment',
      'tollgate',
    );
    const env = operatorEnv(deployment);
    expect(env['TOLLGATE_SIDECAR_REDIS_TLS_SECRET']).toBe('shop-redis-tls');

    // The files of the Secret, at the same names in a local folder in place of the pod's mount.
    const mountDir = path.join(workDir, 'redis-tls');
    await mkdir(mountDir);
    const certificate = await createWebhookCertificate({ dnsNames: ['redis-0.redis'], ipAddresses: [] });
    await writeFile(path.join(mountDir, 'ca.crt'), certificate.caCertPem);
    await writeFile(path.join(mountDir, 'tls.crt'), certificate.certPem);
    await writeFile(path.join(mountDir, 'tls.key'), certificate.keyPem);
    const local = Object.fromEntries(
      Object.entries(env).map(([name, value]) => [name, value?.replace('/var/run/tollgate/redis-tls', mountDir)]),
    ) as NodeJS.ProcessEnv;

    const config = parseOperatorArgs([], local)!;
    expect(config.redisTls).toEqual({ ca: certificate.caCertPem, cert: certificate.certPem, key: certificate.keyPem });
    expect(config.sidecarRedisTlsSecret).toBe('shop-redis-tls');
    expect(() => validateOperatorConfig(config)).not.toThrow();
  });

  it('takes the Redis URL from a Secret with TLS files', async () => {
    const env = envOf(
      find(await template(['ledger.existingSecret.name=redis-auth', 'ledger.redisUrl=', 'ledger.tls.existingSecret=redis-tls']), 'Deployment', 'tollgate'),
    );
    expect(env['TOLLGATE_REDIS_URL']).toEqual({ secretKeyRef: { name: 'redis-auth', key: 'redisUrl' } });
    expect(env['TOLLGATE_REDIS_CA_FILE']).toBe('/var/run/tollgate/redis-tls/ca.crt');
  });

  it('fails on Redis TLS settings the operator rejects', async () => {
    const cases: Array<[string[], string]> = [
      [
        ['ledger.tls.clientCertificate=true'],
        'ledger.tls.clientCertificate is true, but ledger.tls.existingSecret is empty: name the Secret in the release namespace that holds ca.crt, tls.crt and tls.key',
      ],
      [
        ['ledger.redisUrl=rediss://redis:6380', 'ledger.tls.existingSecret=redis-tls', 'ledger.tls.caCertificate=false'],
        'ledger.tls.existingSecret is set, but ledger.tls.caCertificate and ledger.tls.clientCertificate are both false, so nothing from the Secret ' +
          'is used: set one of them, or leave ledger.tls.existingSecret empty',
      ],
      [
        ['ledger.tls.sidecarSecret=redis-tls'],
        'ledger.tls.sidecarSecret is set, but ledger.tls.existingSecret is empty: the injected sidecars mount the TLS files that the operator uses, ' +
          'so set ledger.tls.existingSecret too, or leave ledger.tls.sidecarSecret empty',
      ],
      [
        ['ledger.tls.existingSecret=redis-tls'],
        'ledger.tls.existingSecret is set, but ledger.redisUrl "redis://redis:6379/0" does not use TLS: use a rediss:// or rediss+cluster:// URL, ' +
          'or leave ledger.tls.existingSecret empty',
      ],
    ];
    for (const [values, message] of cases) {
      const result = await helm(['template', RELEASE, CHART, ...values.flatMap((value) => ['--set', value])]);
      expect(result.code, values.join(' ')).toBe(1);
      expect(result.stderr, values.join(' ')).toContain(message);
    }
  });

  it('rejects invalid Redis TLS values', async () => {
    const cases: Array<[string, string, string]> = [
      ['--set', 'ledger.tls.existingSecret=Redis_TLS', "at '/ledger/tls/existingSecret': 'Redis_TLS' does not match pattern"],
      ['--set', 'ledger.tls.sidecarSecret=redis-tls/ca.crt', "at '/ledger/tls/sidecarSecret': 'redis-tls/ca.crt' does not match pattern"],
      ['--set-string', 'ledger.tls.clientCertificate=true', "at '/ledger/tls/clientCertificate': got string, want boolean"],
      ['--set', 'ledger.tls.caFile=/etc/ca.crt', "at '/ledger/tls': additional properties 'caFile' not allowed"],
    ];
    for (const [flag, value, message] of cases) {
      const result = await helm(['template', RELEASE, CHART, flag, value]);
      expect(result.code, value).toBe(1);
      expect(result.stderr, value).toContain(message);
    }
  });

  it('fails without a Redis URL', async () => {
    const result = await helm(['template', RELEASE, CHART, '--set', 'ledger.redisUrl=']);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('ledger.redisUrl or ledger.existingSecret.name is required');
  });

  it('rejects values outside the schema', async () => {
    const policy = await helm(['template', RELEASE, CHART, '--set', 'webhook.failurePolicy=Sometimes']);
    expect(policy.code).toBe(1);
    expect(policy.stderr).toContain("at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'");

    const redis = await helm(['template', RELEASE, CHART, '--set', 'ledger.redisUrl=http://redis:6379']);
    expect(redis.code).toBe(1);
    expect(redis.stderr).toContain("at '/ledger/redisUrl': 'http://redis:6379' does not match pattern");
  });

  it('rejects misspelt keys', async () => {
    // Without additionalProperties false in the schema, helm renders each of these and ignores the misspelt key.
    const cases: Array<[string, string]> = [
      ['serviceMonitors.enabled=true', "at '': additional properties 'serviceMonitors' not allowed"],
      ['ledger.redisURL=redis://x:6379', "at '/ledger': additional properties 'redisURL' not allowed"],
      ['sidecar.walletLable=false', "at '/sidecar': additional properties 'walletLable' not allowed"],
      ['webhook.failurePolicyy=Ignore', "at '/webhook': additional properties 'failurePolicyy' not allowed"],
      ['sidecar.image.tga=0.2.0', "at '/sidecar/image': additional properties 'tga' not allowed"],
      ['ledger.existingSecret.nmae=redis-auth', "at '/ledger/existingSecret': additional properties 'nmae' not allowed"],
    ];
    for (const [value, message] of cases) {
      const result = await helm(['template', RELEASE, CHART, '--set', value]);
      expect(result.code, value).toBe(1);
      expect(result.stderr, value).toContain(message);
    }
  });

  it('accepts any key in Kubernetes objects', async () => {
    const objects = await template([
      'operator.nodeSelector.foo=bar',
      'operator.resources.limits.example\\.com/device=1',
      'webhook.namespaceSelector.matchLabels.team=billing',
    ]);
    const pod = find(objects, 'Deployment', 'tollgate')['spec'].template.spec;
    expect(pod.nodeSelector).toEqual({ foo: 'bar' });
    expect(pod.containers[0].resources.limits).toEqual({ memory: '512Mi', 'example.com/device': 1 });
    const webhook = find(objects, 'MutatingWebhookConfiguration', 'tollgate')['webhooks'][0];
    expect(webhook.namespaceSelector).toEqual({ matchLabels: { team: 'billing' } });
  });

  it('accepts global values', async () => {
    const result = await helm(['template', RELEASE, CHART, '--set', 'global.x=1', '--set', 'global.imageRegistry=registry.example']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
  });

  it('selects labelled pods in the webhook', async () => {
    const configuration = find(await template(), 'MutatingWebhookConfiguration', 'tollgate');
    expect(configuration.metadata.annotations).toBeUndefined();
    expect(configuration['webhooks']).toHaveLength(1);

    const webhook = configuration['webhooks'][0];
    expect(webhook.name).toBe('pods.inject.tollgate.dev');
    expect(webhook.objectSelector).toEqual(INJECT_SELECTOR);
    expect(webhook.failurePolicy).toBe('Fail');
    expect(webhook.sideEffects).toBe('NoneOnDryRun');
    expect(webhook.admissionReviewVersions).toEqual(['v1']);
    expect(webhook.reinvocationPolicy).toBe('IfNeeded');
    expect(webhook.rules).toEqual([
      { apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE'], resources: ['pods'], scope: 'Namespaced' },
    ]);
    expect(webhook.clientConfig).toEqual({
      service: { name: 'tollgate', namespace: NAMESPACE, path: '/mutate-pods', port: 443 },
    });

    const ignoring = find(await template(['webhook.failurePolicy=Ignore']), 'MutatingWebhookConfiguration', 'tollgate');
    expect(ignoring['webhooks'][0].failurePolicy).toBe('Ignore');
  });

  it('exposes the webhook on 443 and snapshots on 8080', async () => {
    const service = find(await template(), 'Service', 'tollgate');
    expect(service['spec'].ports).toEqual([
      { name: 'webhook', port: 443, targetPort: 'webhook', protocol: 'TCP' },
      { name: 'http', port: 8080, targetPort: 'http', protocol: 'TCP' },
    ]);
    expect(service['spec'].selector).toEqual({
      'app.kubernetes.io/name': 'tollgate',
      'app.kubernetes.io/instance': RELEASE,
      'app.kubernetes.io/component': 'operator',
    });
  });

  it('grants the operator only what it uses', async () => {
    const objects = await template();
    expect(find(objects, 'ClusterRole', 'tollgate')['rules']).toEqual([
      {
        apiGroups: ['tollgate.dev'],
        resources: ['wallets', 'priceplans', 'providerroutes'],
        verbs: ['get', 'list', 'watch', 'update', 'patch'],
      },
      {
        apiGroups: ['tollgate.dev'],
        resources: ['wallets/status', 'priceplans/status', 'providerroutes/status'],
        verbs: ['get', 'update', 'patch'],
      },
      {
        apiGroups: ['tollgate.dev'],
        resources: ['wallets/finalizers', 'priceplans/finalizers', 'providerroutes/finalizers'],
        verbs: ['update'],
      },
      { apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch'] },
      { apiGroups: [''], resources: ['secrets'], verbs: ['get', 'list', 'watch'] },
      { apiGroups: ['', 'events.k8s.io'], resources: ['events'], verbs: ['create', 'patch'] },
      {
        apiGroups: ['admissionregistration.k8s.io'],
        resources: ['mutatingwebhookconfigurations'],
        resourceNames: ['tollgate'],
        verbs: ['get', 'update', 'patch'],
      },
    ]);
    expect(find(objects, 'Role', 'tollgate')['rules']).toEqual([
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'list', 'watch', 'create', 'update', 'patch'] },
      { apiGroups: [''], resources: ['secrets'], resourceNames: ['tollgate-webhook-tls'], verbs: ['get', 'update', 'patch'] },
      { apiGroups: [''], resources: ['secrets'], verbs: ['create'] },
    ]);
    expect(find(objects, 'ClusterRoleBinding', 'tollgate')['subjects']).toEqual([
      { kind: 'ServiceAccount', name: 'tollgate', namespace: NAMESPACE },
    ]);
  });

  it('limits Secret reads to the listed namespaces', async () => {
    const objects = await template(['rbac.secretNamespaces={team-a,team-b}']);
    const clusterRules = find(objects, 'ClusterRole', 'tollgate')['rules'] as Array<{ resources: string[] }>;
    expect(clusterRules.some((rule) => rule.resources.includes('secrets'))).toBe(false);

    expect(find(objects, 'ClusterRole', 'tollgate-secrets')['rules']).toEqual([
      { apiGroups: [''], resources: ['secrets'], verbs: ['get', 'list', 'watch'] },
    ]);
    const bindings = objects.filter((object) => object.kind === 'RoleBinding' && object.metadata.name === 'tollgate-secrets');
    expect(bindings.map((binding) => binding.metadata.namespace)).toEqual(['team-a', 'team-b']);
    for (const binding of bindings) {
      expect(binding['roleRef']).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'tollgate-secrets' });
    }
  });

  it('adds cert-manager objects when enabled', async () => {
    const objects = await template(['certManager.enabled=true']);
    const configuration = find(objects, 'MutatingWebhookConfiguration', 'tollgate');
    expect(configuration.metadata.annotations).toEqual({ 'cert-manager.io/inject-ca-from': `${NAMESPACE}/tollgate-webhook` });
    expect(configuration['webhooks'][0].clientConfig.caBundle).toBeUndefined();

    expect(find(objects, 'Issuer', 'tollgate-selfsigned')['spec']).toEqual({ selfSigned: {} });
    const certificate = find(objects, 'Certificate', 'tollgate-webhook');
    expect(certificate.apiVersion).toBe('cert-manager.io/v1');
    expect(certificate['spec'].secretName).toBe('tollgate-webhook-tls');
    expect(certificate['spec'].dnsNames).toEqual([`tollgate.${NAMESPACE}.svc`, `tollgate.${NAMESPACE}.svc.cluster.local`]);
    expect(certificate['spec'].issuerRef).toEqual({ name: 'tollgate-selfsigned', kind: 'Issuer', group: 'cert-manager.io' });

    const env = envOf(find(objects, 'Deployment', 'tollgate'));
    expect(env['TOLLGATE_WEBHOOK_CERT_MANAGER']).toBe('true');
    expect(env['TOLLGATE_WEBHOOK_SECRET']).toBe(certificate['spec'].secretName);

    // cert-manager writes the Secret, so the operator may not create Secrets.
    expect(find(objects, 'Role', 'tollgate')['rules']).toEqual([
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'list', 'watch', 'create', 'update', 'patch'] },
      { apiGroups: [''], resources: ['secrets'], resourceNames: ['tollgate-webhook-tls'], verbs: ['get', 'update', 'patch'] },
    ]);
  });

  it('uses a given cert-manager issuer', async () => {
    const objects = await template([
      'certManager.enabled=true',
      'certManager.issuerRef.name=cluster-ca',
      'certManager.issuerRef.kind=ClusterIssuer',
    ]);
    expect(objects.some((object) => object.kind === 'Issuer')).toBe(false);
    expect(find(objects, 'Certificate', 'tollgate-webhook')['spec'].issuerRef).toEqual({ name: 'cluster-ca', kind: 'ClusterIssuer' });
  });

  it('has no cert-manager or ServiceMonitor objects by default', async () => {
    const objectKinds = (await template()).map((object) => object.kind);
    expect(objectKinds).not.toContain('Certificate');
    expect(objectKinds).not.toContain('Issuer');
    expect(objectKinds).not.toContain('ServiceMonitor');
    expect(objectKinds).not.toContain('PodMonitor');
  });

  it('adds a ServiceMonitor when enabled', async () => {
    const monitor = find(await template(['serviceMonitor.enabled=true', 'serviceMonitor.labels.release=prometheus']), 'ServiceMonitor', 'tollgate');
    expect(monitor.metadata.labels?.['release']).toBe('prometheus');
    expect(monitor['spec'].endpoints).toEqual([{ port: 'http', path: '/metrics', interval: '30s', scrapeTimeout: '10s', honorLabels: true }]);
    expect(monitor['spec'].namespaceSelector).toEqual({ matchNames: [NAMESPACE] });
  });

  it('adds a PodMonitor for the sidecars', async () => {
    const monitor = find(await template(['serviceMonitor.enabled=true']), 'PodMonitor', 'tollgate-sidecars');
    expect(monitor['spec'].selector).toEqual({ matchLabels: { 'tollgate.dev/inject': 'true' } });
    expect(monitor['spec'].namespaceSelector).toEqual({ any: true });
    expect(monitor['spec'].podMetricsEndpoints).toEqual([{ port: 'tollgate-admin', path: '/metrics', interval: '30s', scrapeTimeout: '10s', honorLabels: true }]);
  });

  it('drops the PodDisruptionBudget for one replica', async () => {
    const objectKinds = (await template(['operator.replicas=1'])).map((object) => object.kind);
    expect(objectKinds).not.toContain('PodDisruptionBudget');
  });

  it('includes the CRDs of crds/ unchanged', async () => {
    const objects = await template([], ['--include-crds']);
    const rendered = objects.filter((object) => object.kind === 'CustomResourceDefinition');
    const files = (await readdir(path.join(REPOSITORY_ROOT, 'crds'))).filter((name) => name.endsWith('.yaml')).sort();
    expect(files).toHaveLength(3);

    const expected = await Promise.all(
      files.map(async (name) => parseYaml(await readFile(path.join(REPOSITORY_ROOT, 'crds', name), 'utf8')) as KubeObject),
    );
    const byName = (a: KubeObject, b: KubeObject): number => a.metadata.name.localeCompare(b.metadata.name);
    expect(rendered.sort(byName)).toEqual(expected.sort(byName));
  });
});

describe('Grafana dashboards', () => {
  const expectedMetrics: Record<string, string[]> = {
    'margins.json': ['tollgate_charged_total', 'tollgate_provider_cost_total'],
    'enforcement.json': [
      'tollgate_requests_total',
      'tollgate_denials_total',
      'tollgate_proxy_overhead_seconds_bucket',
      'tollgate_ledger_duration_seconds_bucket',
    ],
    'wallets.json': ['tollgate_wallet_balance', 'tollgate_wallet_reserved', 'tollgate_charged_total'],
  };

  async function renderedDashboards(): Promise<Map<string, any>> {
    const configMaps = (await template()).filter((object) => object.kind === 'ConfigMap');
    const dashboards = new Map<string, any>();
    for (const configMap of configMaps) {
      expect(configMap.metadata.labels?.['grafana_dashboard']).toBe('1');
      for (const [key, text] of Object.entries(configMap['data'] as Record<string, string>)) {
        dashboards.set(key, JSON.parse(text));
      }
    }
    return dashboards;
  }

  it('ship as labelled ConfigMaps', async () => {
    const dashboards = await renderedDashboards();
    expect([...dashboards.keys()].sort()).toEqual(['enforcement.json', 'margins.json', 'wallets.json']);
    expect([...dashboards.values()].map((dashboard) => dashboard.uid).sort()).toEqual([
      'tollgate-enforcement',
      'tollgate-margins',
      'tollgate-wallets',
    ]);
  });

  it('query the Tollgate metrics', async () => {
    const dashboards = await renderedDashboards();
    for (const [file, metrics] of Object.entries(expectedMetrics)) {
      const queries = dashboardQueries(dashboards.get(file)).join('\n');
      for (const metric of metrics) {
        expect(queries, `${file} queries ${metric}`).toContain(metric);
      }
    }
  });

  it('group margins by model, route, namespace and wallet', async () => {
    const queries = dashboardQueries((await renderedDashboards()).get('margins.json'));
    for (const grouping of ['sum by (model)', 'sum by (route)', 'sum by (namespace)', 'sum by (namespace, wallet)']) {
      expect(queries.some((query) => query.includes(grouping)), grouping).toBe(true);
    }
  });

  it('have unique panel ids and datasource variables', async () => {
    for (const [file, dashboard] of await renderedDashboards()) {
      const ids = (dashboard.panels as Array<{ id: number }>).map((panel) => panel.id);
      expect(new Set(ids).size, file).toBe(ids.length);
      expect(dashboard.templating.list[0], file).toMatchObject({ name: 'datasource', type: 'datasource', query: 'prometheus' });
    }
  });

  it('hold valid PromQL', async () => {
    const promtool = await findPromtool();
    const rules = [];
    for (const [file, dashboard] of await renderedDashboards()) {
      for (const [index, query] of dashboardQueries(dashboard).entries()) {
        // Record names only need to be unique; promtool rejects duplicates.
        const record = `tollgate:dashboard_check:${path.basename(file, '.json')}_${index}`;
        rules.push({ record, expr: substituteGrafanaVariables(query) });
      }
    }
    expect(rules.length).toBeGreaterThan(20);

    const rulesPath = path.join(workDir, 'dashboard-queries.yaml');
    await writeFile(rulesPath, JSON.stringify({ groups: [{ name: 'dashboards', rules }] }));
    const result = await run(promtool, ['check', 'rules', rulesPath]);
    expect(result.stdout + result.stderr).toContain(`SUCCESS: ${rules.length} rules found`);
    expect(result.code).toBe(0);
  });
});

/** Replaces Grafana's variables with values that make the query plain PromQL. */
function substituteGrafanaVariables(query: string): string {
  return query
    .replaceAll('$__rate_interval', '5m')
    .replaceAll('$__range', '1h')
    .replaceAll('$window', '6h')
    .replace(/\$\w+/g, 'value');
}

async function findPromtool(): Promise<string> {
  for (const dir of (process.env['PATH'] ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, 'promtool');
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not in this folder of PATH.
    }
  }
  throw new Error('promtool not found on PATH; install the Debian package "prometheus" (apt-get install prometheus)');
}

describe('helm install on a real API server', () => {
  let apiServer: ApiServer;
  let cacheDir: string;

  function kubectl(args: string[]): Promise<CommandResult> {
    return run(kubectlBinary, ['--kubeconfig', apiServer.kubeconfigPath, '--cache-dir', cacheDir, ...args]);
  }

  async function getJson(args: string[]): Promise<KubeObject> {
    return JSON.parse(await succeed(kubectl([...args, '-o', 'json']), `kubectl ${args.join(' ')}`)) as KubeObject;
  }

  async function canI(args: string[]): Promise<string> {
    const result = await kubectl(['auth', 'can-i', ...args, '--as', SERVICE_ACCOUNT]);
    return result.stdout.trim();
  }

  beforeAll(async () => {
    apiServer = await startApiServer();
    cacheDir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-kubectl-cache-'));
    await succeed(
      helm(['install', RELEASE, CHART, '--namespace', NAMESPACE, '--create-namespace', '--kubeconfig', apiServer.kubeconfigPath]),
      'helm install',
    );
  }, 180_000);

  afterAll(async () => {
    await apiServer?.stop();
    if (cacheDir !== undefined) await rm(cacheDir, { recursive: true, force: true });
  }, 30_000);

  it('creates established CRDs', async () => {
    for (const name of ['wallets.tollgate.dev', 'priceplans.tollgate.dev', 'providerroutes.tollgate.dev']) {
      await succeed(kubectl(['wait', '--for=condition=Established', '--timeout=60s', `crd/${name}`]), `kubectl wait crd/${name}`);
      const crd = await getJson(['get', 'crd', name]);
      expect(crd['spec'].versions.map((version: { name: string }) => version.name)).toEqual(['v1alpha1']);
    }
  });

  it('stores the operator Deployment', async () => {
    const deployment = await getJson(['get', '-n', NAMESPACE, 'deployment', 'tollgate']);
    expect(deployment['spec'].replicas).toBe(2);
    const container = deployment['spec'].template.spec.containers[0];
    expect(container.image).toBe('tollgate:0.1.0');
    expect(container.command).toEqual(['node', 'src/cli/main.ts', 'operator']);
    expect(deployment['spec'].template.spec.serviceAccountName).toBe('tollgate');
  });

  it('stores the webhook configuration and Service', async () => {
    const configuration = await getJson(['get', 'mutatingwebhookconfiguration', 'tollgate']);
    const webhook = configuration['webhooks'][0];
    expect(webhook.objectSelector).toEqual(INJECT_SELECTOR);
    expect(webhook.failurePolicy).toBe('Fail');
    expect(webhook.sideEffects).toBe('NoneOnDryRun');
    expect(webhook.clientConfig.service).toEqual({ name: 'tollgate', namespace: NAMESPACE, path: '/mutate-pods', port: 443 });

    const service = await getJson(['get', '-n', NAMESPACE, 'service', 'tollgate']);
    expect(service['spec'].ports.map((port: { name: string; port: number }) => [port.name, port.port])).toEqual([
      ['webhook', 443],
      ['http', 8080],
    ]);
  });

  it('stores the dashboards', async () => {
    const list = await getJson(['get', '-n', NAMESPACE, 'configmaps', '-l', 'grafana_dashboard=1']);
    const names = (list['items'] as KubeObject[]).map((item) => item.metadata.name).sort();
    expect(names).toEqual(['tollgate-dashboard-enforcement', 'tollgate-dashboard-margins', 'tollgate-dashboard-wallets']);
  });

  it('authorizes what the operator does', async () => {
    expect(await canI(['update', 'wallets.tollgate.dev', '--subresource=status', '-n', 'team-a'])).toBe('yes');
    expect(await canI(['patch', 'priceplans.tollgate.dev', '-n', 'team-a'])).toBe('yes');
    expect(await canI(['update', 'wallets.tollgate.dev', '--subresource=finalizers', '-n', 'team-a'])).toBe('yes');
    expect(await canI(['watch', 'pods', '--all-namespaces'])).toBe('yes');
    expect(await canI(['get', 'secrets', '-n', 'team-a'])).toBe('yes');
    expect(await canI(['create', 'events', '-n', 'team-a'])).toBe('yes');
    expect(await canI(['create', 'events.events.k8s.io', '-n', 'team-a'])).toBe('yes');
    expect(await canI(['patch', 'mutatingwebhookconfigurations/tollgate'])).toBe('yes');
    expect(await canI(['create', 'leases.coordination.k8s.io', '-n', NAMESPACE])).toBe('yes');
  });

  it('denies what the operator does not need', async () => {
    expect(await canI(['delete', 'pods', '-n', 'team-a'])).toBe('no');
    expect(await canI(['delete', 'wallets.tollgate.dev', '-n', 'team-a'])).toBe('no');
    expect(await canI(['create', 'secrets', '-n', 'team-a'])).toBe('no');
    expect(await canI(['patch', 'mutatingwebhookconfigurations/another-webhook'])).toBe('no');
    expect(await canI(['create', 'leases.coordination.k8s.io', '-n', 'team-a'])).toBe('no');
  });

  it('lets the examples apply', async () => {
    const output = await succeed(kubectl(['apply', '-n', 'default', '-f', 'examples/']), 'kubectl apply examples/');
    expect(output).toContain('wallet.tollgate.dev/demo created');
  });

  it('keeps the operator-set caBundle on upgrade', async () => {
    const caBundle = Buffer.from('-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n').toString('base64');
    const patch = JSON.stringify([{ op: 'add', path: '/webhooks/0/clientConfig/caBundle', value: caBundle }]);
    await succeed(
      kubectl(['patch', 'mutatingwebhookconfiguration', 'tollgate', '--type=json', '-p', patch, '--field-manager=tollgate-operator']),
      'kubectl patch caBundle',
    );

    await succeed(
      helm([
        'upgrade', RELEASE, CHART, '--namespace', NAMESPACE, '--kubeconfig', apiServer.kubeconfigPath,
        '--set', 'webhook.timeoutSeconds=5',
      ]),
      'helm upgrade',
    );

    const webhook = (await getJson(['get', 'mutatingwebhookconfiguration', 'tollgate']))['webhooks'][0];
    expect(webhook.timeoutSeconds).toBe(5);
    expect(webhook.clientConfig.caBundle).toBe(caBundle);
  });

  it('keeps the CRDs on uninstall', async () => {
    await succeed(helm(['uninstall', RELEASE, '--namespace', NAMESPACE, '--kubeconfig', apiServer.kubeconfigPath]), 'helm uninstall');

    const deployment = await kubectl(['get', '-n', NAMESPACE, 'deployment', 'tollgate']);
    expect(deployment.code).toBe(1);
    expect(deployment.stderr).toContain('NotFound');
    const crds = await succeed(kubectl(['get', 'crd', '-o', 'name']), 'kubectl get crd');
    expect(crds.trim().split('\n').sort()).toEqual([
      'customresourcedefinition.apiextensions.k8s.io/priceplans.tollgate.dev',
      'customresourcedefinition.apiextensions.k8s.io/providerroutes.tollgate.dev',
      'customresourcedefinition.apiextensions.k8s.io/wallets.tollgate.dev',
    ]);
    const wallet = await succeed(kubectl(['get', '-n', 'default', 'wallet', 'demo', '-o', 'name']), 'kubectl get wallet');
    expect(wallet.trim()).toBe('wallet.tollgate.dev/demo');
  });
});
