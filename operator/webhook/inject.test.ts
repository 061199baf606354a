import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { ProviderRoute } from '../../src/api/provider-route.ts';
import {
  API_KEY_PLACEHOLDER,
  credentialSecretVolumes,
  credentialVolumeName,
  escapeJsonPointer,
  injectSidecar,
  redisTlsSecretKeys,
  resolveWallet,
  sdkEnvironment,
  type InjectionContext,
  type JsonPatchOp,
  type WalletRef,
} from './inject.ts';

// A minimal RFC 6902 applier for the operations the injector emits, so that tests
// check the patched Pod and not only the operations.
function applyPatch<T>(document: T, patch: readonly JsonPatchOp[]): T {
  const root = structuredClone(document) as unknown;
  for (const operation of patch) {
    const segments = operation.path
      .split('/')
      .slice(1)
      .map((segment) => segment.replaceAll('~1', '/').replaceAll('~0', '~'));
    const last = segments.pop();
    if (last === undefined) {
      throw new Error(`cannot patch the root: ${operation.path}`);
    }
    let parent = root as Record<string, unknown> | unknown[];
    for (const segment of segments) {
      const next = Array.isArray(parent) ? parent[Number(segment)] : parent[segment];
      if (typeof next !== 'object' || next === null) {
        throw new Error(`path ${operation.path} does not exist at "${segment}"`);
      }
      parent = next as Record<string, unknown> | unknown[];
    }
    if (operation.op !== 'add') {
      throw new Error(`unexpected operation ${operation.op}`);
    }
    if (Array.isArray(parent)) {
      const index = last === '-' ? parent.length : Number(last);
      if (!Number.isInteger(index) || index > parent.length) {
        throw new Error(`array index ${last} out of range in ${operation.path}`);
      }
      parent.splice(index, 0, operation.value);
    } else {
      parent[last] = operation.value;
    }
  }
  return root as T;
}

function route(name: string, spec: Record<string, unknown>): ProviderRoute {
  return ProviderRoute.parse({
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'ProviderRoute',
    metadata: { name, namespace: 'shop' },
    spec: { models: ['gpt-4o-mini'], ...spec },
  });
}

const OPENAI = route('openai', {
  protocol: 'openai',
  baseURL: 'https://api.openai.com',
  credentialSecretRef: { name: 'openai-credentials' },
});
const ANTHROPIC = route('anthropic', {
  protocol: 'anthropic',
  baseURL: 'https://api.anthropic.com',
  credentialSecretRef: { name: 'anthropic-credentials', key: 'token' },
});
const AZURE = route('azure', {
  protocol: 'azure-openai',
  baseURL: 'https://shop.openai.azure.com',
  credentialSecretRef: { name: 'azure-credentials' },
  deployments: [{ name: 'prod-mini', model: 'gpt-4o-mini' }],
});

function context(overrides: Partial<InjectionContext> = {}): InjectionContext {
  return {
    sidecarImage: 'ghcr.io/tollgate/tollgate:0.1.0',
    configUrl: 'http://tollgate-operator.tollgate-system.svc:8080',
    redisUrl: 'redis://tollgate-redis.tollgate-system.svc:6379',
    routes: [OPENAI, ANTHROPIC],
    wallets: [{ name: 'team-a', annotations: { 'tollgate.dev/default': 'true' } }, { name: 'team-b' }],
    ...overrides,
  };
}

function labelledPod(spec: Partial<V1Pod['spec']> = {}, metadata: V1Pod['metadata'] = {}): V1Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'web', namespace: 'shop', ...metadata, labels: { 'tollgate.dev/inject': 'true', ...metadata.labels } },
    spec: { containers: [{ name: 'app', image: 'shop/web:1' }], ...spec },
  };
}

function sidecarOf(pod: V1Pod): V1Container {
  const sidecar = pod.spec?.initContainers?.find((container) => container.name === 'tollgate-sidecar');
  if (sidecar === undefined) {
    throw new Error('the patched pod has no tollgate-sidecar init container');
  }
  return sidecar;
}

function envOf(container: V1Container): Record<string, string | undefined> {
  return Object.fromEntries((container.env ?? []).map((variable) => [variable.name, variable.value]));
}

describe('injectSidecar decisions', () => {
  it('skips a pod without the label', () => {
    const pod: V1Pod = { metadata: { name: 'plain' }, spec: { containers: [{ name: 'app' }] } };
    const result = injectSidecar(pod, context());

    expect(result.decision).toBe('InjectionSkipped');
    expect(result.reason).toBe('InjectionSkipped');
    expect(result.message).toBe('pod has no tollgate.dev/inject label');
    expect(result.patch).toEqual([]);
  });

  it('skips a pod labelled false', () => {
    const result = injectSidecar(labelledPod({}, { labels: { 'tollgate.dev/inject': 'false' } }), context());

    expect(result.decision).toBe('InjectionSkipped');
    expect(result.message).toBe('pod has tollgate.dev/inject="false"; only "true" requests injection');
    expect(result.patch).toEqual([]);
  });

  it('skips a hostNetwork pod', () => {
    const result = injectSidecar(labelledPod({ hostNetwork: true }), context());

    expect(result.decision).toBe('InjectionSkipped');
    expect(result.message).toMatch(/^pod uses hostNetwork/);
    expect(result.patch).toEqual([]);
  });

  it('leaves a pod with the sidecar init container alone', () => {
    const pod = labelledPod({ initContainers: [{ name: 'tollgate-sidecar', image: 'custom', restartPolicy: 'Always' }] });
    const result = injectSidecar(pod, context());

    expect(result.decision).toBe('AlreadyInjected');
    expect(result.reason).toBe('InjectionSkipped');
    expect(result.patch).toEqual([]);
  });

  it('leaves a pod with a sidecar-named app container alone', () => {
    const pod = labelledPod({ containers: [{ name: 'app' }, { name: 'tollgate-sidecar' }] });

    expect(injectSidecar(pod, context()).decision).toBe('AlreadyInjected');
  });

  it('returns an empty patch when run on its own output', () => {
    const first = injectSidecar(labelledPod(), context());
    const patched = applyPatch(labelledPod(), first.patch);
    const second = injectSidecar(patched, context());

    expect(first.decision).toBe('Injected');
    expect(second.decision).toBe('AlreadyInjected');
    expect(second.patch).toEqual([]);
  });
});

describe('injectSidecar patch', () => {
  it('adds whole arrays when the pod has none', () => {
    const result = injectSidecar(labelledPod(), context());

    expect(result.decision).toBe('Injected');
    expect(result.reason).toBe('Injected');
    expect(result.patch.map((operation) => [operation.op, operation.path])).toEqual([
      ['add', '/spec/initContainers'],
      ['add', '/spec/volumes'],
      ['add', '/spec/containers/0/env'],
      ['add', '/metadata/annotations'],
    ]);
  });

  it('inserts and appends into existing arrays', () => {
    const pod = labelledPod(
      {
        initContainers: [{ name: 'migrate', image: 'shop/migrate:1' }],
        volumes: [{ name: 'data', emptyDir: {} }],
        containers: [
          { name: 'app', image: 'shop/web:1', env: [{ name: 'LOG_LEVEL', value: 'debug' }] },
          { name: 'worker', image: 'shop/worker:1' },
        ],
      },
      { annotations: { 'example.com/owner': 'shop' } },
    );
    const result = injectSidecar(pod, context());
    const paths = result.patch.map((operation) => operation.path);

    expect(paths[0]).toBe('/spec/initContainers/0');
    expect(paths.filter((path) => path === '/spec/volumes/-')).toHaveLength(4);
    expect(paths.filter((path) => path === '/spec/containers/0/env/-')).toHaveLength(4);
    expect(paths).toContain('/spec/containers/1/env');
    expect(paths).toContain('/metadata/annotations/tollgate.dev~1sidecar-image');
    expect(paths).toContain('/metadata/annotations/tollgate.dev~1injected-wallet');
  });

  it('places the sidecar before other init containers', () => {
    const pod = labelledPod({ initContainers: [{ name: 'migrate', image: 'shop/migrate:1' }] });
    const patched = applyPatch(pod, injectSidecar(pod, context()).patch);

    expect(patched.spec?.initContainers?.map((container) => container.name)).toEqual(['tollgate-sidecar', 'migrate']);
  });

  it('keeps existing volumes, env and annotations', () => {
    const pod = labelledPod(
      {
        volumes: [{ name: 'data', emptyDir: {} }],
        containers: [{ name: 'app', image: 'shop/web:1', env: [{ name: 'LOG_LEVEL', value: 'debug' }] }],
      },
      { annotations: { 'example.com/owner': 'shop' } },
    );
    const patched = applyPatch(pod, injectSidecar(pod, context()).patch);

    expect(patched.spec?.volumes?.[0]).toEqual({ name: 'data', emptyDir: {} });
    expect(patched.spec?.containers[0]?.env?.[0]).toEqual({ name: 'LOG_LEVEL', value: 'debug' });
    expect(patched.metadata?.annotations).toEqual({
      'example.com/owner': 'shop',
      'tollgate.dev/sidecar-image': 'ghcr.io/tollgate/tollgate:0.1.0',
      'tollgate.dev/injected-wallet': 'team-a',
    });
  });

  it('treats null arrays as absent', () => {
    const pod = labelledPod({ initContainers: null as unknown as undefined, volumes: null as unknown as undefined });
    const result = injectSidecar(pod, context());

    expect(result.patch[0]).toMatchObject({ op: 'add', path: '/spec/initContainers' });
    expect(result.patch[1]).toMatchObject({ op: 'add', path: '/spec/volumes' });
  });

  it('escapes slash and tilde in pointers', () => {
    expect(escapeJsonPointer('tollgate.dev/wallet')).toBe('tollgate.dev~1wallet');
    expect(escapeJsonPointer('a~b/c~1')).toBe('a~0b~1c~01');
    expect(escapeJsonPointer('plain')).toBe('plain');
  });
});

describe('injectSidecar sidecar container', () => {
  const patched = applyPatch(labelledPod(), injectSidecar(labelledPod(), context()).patch);
  const sidecar = sidecarOf(patched);

  it('is a native sidecar running the sidecar command', () => {
    expect(sidecar.restartPolicy).toBe('Always');
    expect(sidecar.image).toBe('ghcr.io/tollgate/tollgate:0.1.0');
    expect(sidecar.imagePullPolicy).toBe('IfNotPresent');
    expect(sidecar.command).toEqual(['node', 'src/cli/main.ts', 'sidecar']);
    expect(sidecar.args).toBeUndefined();
  });

  it('gets the contract environment', () => {
    expect(sidecar.env).toEqual([
      { name: 'TOLLGATE_NAMESPACE', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } } },
      { name: 'TOLLGATE_WALLET', value: 'team-a' },
      { name: 'TOLLGATE_CONFIG_URL', value: 'http://tollgate-operator.tollgate-system.svc:8080' },
      { name: 'TOLLGATE_REDIS_URL', value: 'redis://tollgate-redis.tollgate-system.svc:6379' },
      { name: 'TOLLGATE_CREDENTIALS_DIR', value: '/var/run/tollgate/credentials' },
      { name: 'TOLLGATE_LISTEN', value: '127.0.0.1:8787' },
      { name: 'TOLLGATE_ADMIN_LISTEN', value: '0.0.0.0:9464' },
      { name: 'TOLLGATE_COMMIT_JOURNAL', value: '/var/lib/tollgate/commits.ndjson' },
    ]);
  });

  it('passes the ledger retention when set', () => {
    const withRetention = sidecarOf(applyPatch(labelledPod(), injectSidecar(labelledPod(), context({ settledRetentionMs: 36 * 3_600_000 })).patch));
    expect(withRetention.env?.find((variable) => variable.name === 'TOLLGATE_LEDGER_RETENTION')).toEqual({
      name: 'TOLLGATE_LEDGER_RETENTION',
      value: '129600000ms',
    });
  });

  it('passes the ledger timeout when set', () => {
    const withTimeout = sidecarOf(applyPatch(labelledPod(), injectSidecar(labelledPod(), context({ ledgerTimeoutMs: 750 })).patch));
    expect(withTimeout.env?.find((variable) => variable.name === 'TOLLGATE_LEDGER_TIMEOUT')).toEqual({ name: 'TOLLGATE_LEDGER_TIMEOUT', value: '750ms' });
    const noLimit = sidecarOf(applyPatch(labelledPod(), injectSidecar(labelledPod(), context({ ledgerTimeoutMs: 0 })).patch));
    expect(noLimit.env?.find((variable) => variable.name === 'TOLLGATE_LEDGER_TIMEOUT')).toEqual({ name: 'TOLLGATE_LEDGER_TIMEOUT', value: '0ms' });
    expect(sidecar.env?.find((variable) => variable.name === 'TOLLGATE_LEDGER_TIMEOUT')).toBeUndefined();
  });

  it('passes the body limit when set', () => {
    const withLimit = sidecarOf(applyPatch(labelledPod(), injectSidecar(labelledPod(), context({ bodyLimit: 16_777_216 })).patch));
    expect(withLimit.env?.find((variable) => variable.name === 'TOLLGATE_BODY_LIMIT')).toEqual({ name: 'TOLLGATE_BODY_LIMIT', value: '16777216' });
    expect(sidecar.env?.find((variable) => variable.name === 'TOLLGATE_BODY_LIMIT')).toBeUndefined();
  });

  it('passes the tool use limit when set', () => {
    const withLimit = sidecarOf(applyPatch(labelledPod(), injectSidecar(labelledPod(), context({ maxToolUses: 12 })).patch));
    expect(withLimit.env?.filter((variable) => variable.name === 'TOLLGATE_MAX_TOOL_USES')).toEqual([{ name: 'TOLLGATE_MAX_TOOL_USES', value: '12' }]);
    expect(sidecar.env?.find((variable) => variable.name === 'TOLLGATE_MAX_TOOL_USES')).toBeUndefined();
  });

  it('reads the Redis URL from a Secret when set', () => {
    const fromSecret = sidecarOf(applyPatch(labelledPod(), injectSidecar(labelledPod(), context({ redisUrlSecret: { name: 'tollgate-redis', key: 'url' } })).patch));
    const variables = fromSecret.env?.filter((variable) => variable.name === 'TOLLGATE_REDIS_URL');

    expect(variables).toEqual([{ name: 'TOLLGATE_REDIS_URL', valueFrom: { secretKeyRef: { name: 'tollgate-redis', key: 'url' } } }]);
    expect(JSON.stringify(fromSecret)).not.toContain(context().redisUrl);
  });

  it('turns the wallet label off only when told', () => {
    const envOf = (walletLabel: boolean | undefined) =>
      sidecarOf(applyPatch(labelledPod(), injectSidecar(labelledPod(), context(walletLabel === undefined ? {} : { walletLabel })).patch)).env ?? [];
    const labelVariables = (walletLabel: boolean | undefined) => envOf(walletLabel).filter((variable) => variable.name === 'TOLLGATE_WALLET_LABEL');

    expect(labelVariables(false)).toEqual([{ name: 'TOLLGATE_WALLET_LABEL', value: 'false' }]);
    expect(labelVariables(true)).toEqual([]);
    expect(labelVariables(undefined)).toEqual([]);
    expect(envOf(false).map((variable) => variable.name)).toEqual([
      'TOLLGATE_NAMESPACE',
      'TOLLGATE_WALLET',
      'TOLLGATE_CONFIG_URL',
      'TOLLGATE_REDIS_URL',
      'TOLLGATE_WALLET_LABEL',
      'TOLLGATE_CREDENTIALS_DIR',
      'TOLLGATE_LISTEN',
      'TOLLGATE_ADMIN_LISTEN',
      'TOLLGATE_COMMIT_JOURNAL',
    ]);
  });

  it('probes /readyz on the admin port', () => {
    const httpGet = { path: '/readyz', port: 9464 };

    expect(sidecar.startupProbe).toEqual({ httpGet, timeoutSeconds: 5, periodSeconds: 1, failureThreshold: 60 });
    expect(sidecar.readinessProbe).toEqual({ httpGet, timeoutSeconds: 5, periodSeconds: 10, failureThreshold: 3 });
    expect(sidecar.ports).toEqual([{ name: 'tollgate-admin', containerPort: 9464, protocol: 'TCP' }]);
  });

  it('has resources and a restricted security context', () => {
    expect(sidecar.resources).toEqual({ requests: { cpu: '50m', memory: '64Mi' }, limits: { memory: '256Mi' } });
    expect(sidecar.securityContext).toEqual({
      runAsNonRoot: true,
      runAsUser: 65532,
      runAsGroup: 65532,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    });
  });

  it('takes resources, pull policy and command from the context', () => {
    const custom = context({ resources: { requests: { cpu: '10m' } }, imagePullPolicy: 'Always', command: ['tollgate', 'sidecar'] });
    const result = applyPatch(labelledPod(), injectSidecar(labelledPod(), custom).patch);

    expect(sidecarOf(result).resources).toEqual({ requests: { cpu: '10m' } });
    expect(sidecarOf(result).imagePullPolicy).toBe('Always');
    expect(sidecarOf(result).command).toEqual(['tollgate', 'sidecar']);
  });

  it('mounts each credential Secret read-only', () => {
    expect(sidecar.volumeMounts).toEqual([
      { name: 'tollgate-sidecar-tmp', mountPath: '/tmp' },
      { name: 'tollgate-state', mountPath: '/var/lib/tollgate' },
      { name: 'tollgate-cred-anthropic-credentials', mountPath: '/var/run/tollgate/credentials/anthropic-credentials', readOnly: true },
      { name: 'tollgate-cred-openai-credentials', mountPath: '/var/run/tollgate/credentials/openai-credentials', readOnly: true },
    ]);
  });

  it('adds Secret, tmp and state volumes to the pod', () => {
    expect(patched.spec?.volumes).toEqual([
      { name: 'tollgate-sidecar-tmp', emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } },
      { name: 'tollgate-state', emptyDir: { sizeLimit: '64Mi' } },
      { name: 'tollgate-cred-anthropic-credentials', secret: { secretName: 'anthropic-credentials', defaultMode: 0o444, optional: true } },
      { name: 'tollgate-cred-openai-credentials', secret: { secretName: 'openai-credentials', defaultMode: 0o444, optional: true } },
    ]);
  });

  it('mounts no Secret into app containers', () => {
    const app = patched.spec?.containers[0];

    expect(app?.volumeMounts).toBeUndefined();
  });

  it('omits TOLLGATE_WALLET when no wallet resolves', () => {
    const result = injectSidecar(labelledPod(), context({ wallets: [] }));
    const names = sidecarOf(applyPatch(labelledPod(), result.patch)).env?.map((variable) => variable.name);

    expect(names).not.toContain('TOLLGATE_WALLET');
    expect(result.wallet).toBeUndefined();
    expect(result.warnings).toHaveLength(1);
  });
});

describe('injectSidecar Redis TLS files', () => {
  const withTls = (caCertificate: boolean, clientCertificate: boolean, pod = labelledPod()) =>
    injectSidecar(pod, context({ redisTlsSecret: { name: 'redis-tls', caCertificate, clientCertificate } }));
  const tmpVolume = { name: 'tollgate-sidecar-tmp', emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } };
  const stateVolume = { name: 'tollgate-state', emptyDir: { sizeLimit: '64Mi' } };
  const credentialVolumes = [
    { name: 'tollgate-cred-anthropic-credentials', secret: { secretName: 'anthropic-credentials', defaultMode: 0o444, optional: true } },
    { name: 'tollgate-cred-openai-credentials', secret: { secretName: 'openai-credentials', defaultMode: 0o444, optional: true } },
  ];
  const tlsMount = { name: 'tollgate-redis-tls', mountPath: '/var/run/tollgate/redis-tls', readOnly: true };

  it('mounts ca.crt for a CA file', () => {
    const patched = applyPatch(labelledPod(), withTls(true, false).patch);

    expect(patched.spec?.volumes).toEqual([
      tmpVolume,
      stateVolume,
      ...credentialVolumes,
      { name: 'tollgate-redis-tls', secret: { secretName: 'redis-tls', defaultMode: 0o444, items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
    ]);
    expect(sidecarOf(patched).volumeMounts?.at(-1)).toEqual(tlsMount);
    expect(sidecarOf(patched).env?.slice(3, 5)).toEqual([
      { name: 'TOLLGATE_REDIS_URL', value: 'redis://tollgate-redis.tollgate-system.svc:6379' },
      { name: 'TOLLGATE_REDIS_CA_FILE', value: '/var/run/tollgate/redis-tls/ca.crt' },
    ]);
    expect(envOf(sidecarOf(patched))).not.toHaveProperty('TOLLGATE_REDIS_CERT_FILE');
    expect(envOf(sidecarOf(patched))).not.toHaveProperty('TOLLGATE_REDIS_KEY_FILE');
  });

  it('mounts the CA and the client certificate', () => {
    const patched = applyPatch(labelledPod(), withTls(true, true).patch);

    expect(patched.spec?.volumes?.at(-1)).toEqual({
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
    expect(sidecarOf(patched).volumeMounts?.at(-1)).toEqual(tlsMount);
    expect(sidecarOf(patched).env).toEqual([
      { name: 'TOLLGATE_NAMESPACE', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } } },
      { name: 'TOLLGATE_WALLET', value: 'team-a' },
      { name: 'TOLLGATE_CONFIG_URL', value: 'http://tollgate-operator.tollgate-system.svc:8080' },
      { name: 'TOLLGATE_REDIS_URL', value: 'redis://tollgate-redis.tollgate-system.svc:6379' },
      { name: 'TOLLGATE_REDIS_CA_FILE', value: '/var/run/tollgate/redis-tls/ca.crt' },
      { name: 'TOLLGATE_REDIS_CERT_FILE', value: '/var/run/tollgate/redis-tls/tls.crt' },
      { name: 'TOLLGATE_REDIS_KEY_FILE', value: '/var/run/tollgate/redis-tls/tls.key' },
      { name: 'TOLLGATE_CREDENTIALS_DIR', value: '/var/run/tollgate/credentials' },
      { name: 'TOLLGATE_LISTEN', value: '127.0.0.1:8787' },
      { name: 'TOLLGATE_ADMIN_LISTEN', value: '0.0.0.0:9464' },
      { name: 'TOLLGATE_COMMIT_JOURNAL', value: '/var/lib/tollgate/commits.ndjson' },
    ]);
  });

  it('mounts only the client certificate', () => {
    const patched = applyPatch(labelledPod(), withTls(false, true).patch);

    expect(patched.spec?.volumes?.at(-1)?.secret?.items).toEqual([
      { key: 'tls.crt', path: 'tls.crt' },
      { key: 'tls.key', path: 'tls.key' },
    ]);
    expect(sidecarOf(patched).env?.filter((variable) => variable.name.startsWith('TOLLGATE_REDIS_'))).toEqual([
      { name: 'TOLLGATE_REDIS_URL', value: 'redis://tollgate-redis.tollgate-system.svc:6379' },
      { name: 'TOLLGATE_REDIS_CERT_FILE', value: '/var/run/tollgate/redis-tls/tls.crt' },
      { name: 'TOLLGATE_REDIS_KEY_FILE', value: '/var/run/tollgate/redis-tls/tls.key' },
    ]);
  });

  it('adds no volume or variable without a TLS Secret', () => {
    for (const result of [injectSidecar(labelledPod(), context()), withTls(false, false)]) {
      const patched = applyPatch(labelledPod(), result.patch);

      expect(patched.spec?.volumes).toEqual([tmpVolume, stateVolume, ...credentialVolumes]);
      expect(sidecarOf(patched).volumeMounts?.map((mount) => mount.name)).toEqual([
        'tollgate-sidecar-tmp',
        'tollgate-state',
        'tollgate-cred-anthropic-credentials',
        'tollgate-cred-openai-credentials',
      ]);
      expect(sidecarOf(patched).env?.filter((variable) => variable.name.startsWith('TOLLGATE_REDIS_')).map((variable) => variable.name)).toEqual([
        'TOLLGATE_REDIS_URL',
      ]);
    }
  });

  it('mounts the files into the sidecar only', () => {
    const patched = applyPatch(labelledPod(), withTls(true, true).patch);

    expect(patched.spec?.containers[0]?.volumeMounts).toBeUndefined();
    expect(Object.keys(envOf(patched.spec?.containers[0]!)).filter((name) => name.startsWith('TOLLGATE_'))).toEqual([]);
  });

  it('avoids a volume name the pod uses', () => {
    const pod = labelledPod({ volumes: [{ name: 'tollgate-redis-tls', configMap: { name: 'app-redis' } }] });
    const result = withTls(true, false, pod);
    const patched = applyPatch(pod, result.patch);

    expect(result.patch.filter((operation) => operation.path === '/spec/volumes/-')).toHaveLength(5);
    expect(patched.spec?.volumes?.[0]).toEqual({ name: 'tollgate-redis-tls', configMap: { name: 'app-redis' } });
    expect(patched.spec?.volumes?.at(-1)?.name).toBe('tollgate-redis-tls-2');
    expect(sidecarOf(patched).volumeMounts?.at(-1)).toEqual({ ...tlsMount, name: 'tollgate-redis-tls-2' });
  });

  it('returns an empty patch when run on its own output', () => {
    const first = withTls(true, true);
    const patched = applyPatch(labelledPod(), first.patch);
    const second = injectSidecar(patched, context({ redisTlsSecret: { name: 'redis-tls', caCertificate: true, clientCertificate: true } }));

    expect(first.decision).toBe('Injected');
    expect(second.decision).toBe('AlreadyInjected');
    expect(second.patch).toEqual([]);
  });
});

describe('redisTlsSecretKeys', () => {
  it('lists the keys the sidecar reads', () => {
    expect(redisTlsSecretKeys({ caCertificate: true, clientCertificate: false })).toEqual(['ca.crt']);
    expect(redisTlsSecretKeys({ caCertificate: false, clientCertificate: true })).toEqual(['tls.crt', 'tls.key']);
    expect(redisTlsSecretKeys({ caCertificate: true, clientCertificate: true })).toEqual(['ca.crt', 'tls.crt', 'tls.key']);
    expect(redisTlsSecretKeys({ caCertificate: false, clientCertificate: false })).toEqual([]);
  });
});

describe('injectSidecar app environment', () => {
  it('sets base URLs and key placeholders', () => {
    const patched = applyPatch(labelledPod(), injectSidecar(labelledPod(), context()).patch);

    expect(patched.spec?.containers[0]?.env).toEqual([
      { name: 'OPENAI_BASE_URL', value: 'http://127.0.0.1:8787/openai/v1' },
      { name: 'ANTHROPIC_BASE_URL', value: 'http://127.0.0.1:8787/anthropic' },
      { name: 'OPENAI_API_KEY', value: API_KEY_PLACEHOLDER },
      { name: 'ANTHROPIC_API_KEY', value: API_KEY_PLACEHOLDER },
    ]);
  });

  it('sets the variables in every app container', () => {
    const pod = labelledPod({ containers: [{ name: 'app' }, { name: 'worker' }] });
    const patched = applyPatch(pod, injectSidecar(pod, context()).patch);

    expect(envOf(patched.spec!.containers[1]!)['OPENAI_BASE_URL']).toBe('http://127.0.0.1:8787/openai/v1');
  });

  it('never overwrites variables the container sets', () => {
    const pod = labelledPod({
      containers: [
        {
          name: 'app',
          env: [
            { name: 'OPENAI_BASE_URL', value: 'http://example.internal/v1' },
            { name: 'ANTHROPIC_API_KEY', valueFrom: { secretKeyRef: { name: 'own-key', key: 'key' } } },
          ],
        },
      ],
    });
    const patched = applyPatch(pod, injectSidecar(pod, context()).patch);
    const env = patched.spec?.containers[0]?.env ?? [];

    expect(env.filter((variable) => variable.name === 'OPENAI_BASE_URL')).toEqual([{ name: 'OPENAI_BASE_URL', value: 'http://example.internal/v1' }]);
    expect(env.filter((variable) => variable.name === 'ANTHROPIC_API_KEY')).toEqual([
      { name: 'ANTHROPIC_API_KEY', valueFrom: { secretKeyRef: { name: 'own-key', key: 'key' } } },
    ]);
    expect(env.map((variable) => variable.name)).toEqual(['OPENAI_BASE_URL', 'ANTHROPIC_API_KEY', 'ANTHROPIC_BASE_URL', 'OPENAI_API_KEY']);
  });

  it('adds no env operation when everything is set', () => {
    const env = sdkEnvironment([OPENAI, ANTHROPIC]).map((variable) => ({ name: variable.name, value: 'mine' }));
    const pod = labelledPod({ containers: [{ name: 'app', env }] });
    const paths = injectSidecar(pod, context()).patch.map((operation) => operation.path);

    expect(paths.some((path) => path.startsWith('/spec/containers/'))).toBe(false);
  });

  it('points the AzureOpenAI client at the sidecar', () => {
    const patched = applyPatch(labelledPod(), injectSidecar(labelledPod(), context({ routes: [AZURE] })).patch);

    expect(patched.spec?.containers[0]?.env).toEqual([
      { name: 'AZURE_OPENAI_ENDPOINT', value: 'http://127.0.0.1:8787/azure' },
      { name: 'AZURE_OPENAI_API_KEY', value: API_KEY_PLACEHOLDER },
      { name: 'OPENAI_API_VERSION', value: '2024-10-21' },
    ]);
    expect(sidecarOf(patched).volumeMounts).toContainEqual({
      name: 'tollgate-cred-azure-credentials',
      mountPath: '/var/run/tollgate/credentials/azure-credentials',
      readOnly: true,
    });
  });

  it('keeps the azure variables a container sets', () => {
    const pod = labelledPod({
      containers: [
        {
          name: 'app',
          env: [
            { name: 'OPENAI_API_VERSION', value: '2025-04-01-preview' },
            { name: 'AZURE_OPENAI_API_KEY', valueFrom: { secretKeyRef: { name: 'own-key', key: 'key' } } },
          ],
        },
      ],
    });
    const patched = applyPatch(pod, injectSidecar(pod, context({ routes: [AZURE] })).patch);

    expect(patched.spec?.containers[0]?.env).toEqual([
      { name: 'OPENAI_API_VERSION', value: '2025-04-01-preview' },
      { name: 'AZURE_OPENAI_API_KEY', valueFrom: { secretKeyRef: { name: 'own-key', key: 'key' } } },
      { name: 'AZURE_OPENAI_ENDPOINT', value: 'http://127.0.0.1:8787/azure' },
    ]);
  });

  it('sets no app variables without routes', () => {
    const result = injectSidecar(labelledPod(), context({ routes: [] }));
    const patched = applyPatch(labelledPod(), result.patch);

    expect(result.decision).toBe('Injected');
    expect(patched.spec?.containers[0]?.env).toBeUndefined();
    expect(patched.spec?.volumes).toEqual([
      { name: 'tollgate-sidecar-tmp', emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } },
      { name: 'tollgate-state', emptyDir: { sizeLimit: '64Mi' } },
    ]);
    expect(result.warnings[0]).toMatch(/^namespace has no valid ProviderRoute/);
  });
});

describe('sdkEnvironment', () => {
  it('uses pathPrefix over the route name', () => {
    const custom = route('main', { protocol: 'anthropic', baseURL: 'https://api.anthropic.com', pathPrefix: '/claude' });

    expect(sdkEnvironment([custom])).toEqual([
      { name: 'ANTHROPIC_BASE_URL', value: 'http://127.0.0.1:8787/claude' },
      { name: 'ANTHROPIC_API_KEY', value: API_KEY_PLACEHOLDER },
    ]);
  });

  it('omits /v1 when the upstream URL has a path', () => {
    const groq = route('groq', { protocol: 'openai-compatible', baseURL: 'https://api.groq.com/openai/v1' });

    expect(sdkEnvironment([groq])[0]).toEqual({ name: 'OPENAI_BASE_URL', value: 'http://127.0.0.1:8787/groq' });
  });

  it('prefers the openai protocol over compatible ones', () => {
    const compatible = route('aaa', { protocol: 'openai-compatible', baseURL: 'https://llm.example.com/v1' });
    const openai = route('zzz', { protocol: 'openai', baseURL: 'https://api.openai.com' });

    expect(sdkEnvironment([compatible, openai])[0]).toEqual({ name: 'OPENAI_BASE_URL', value: 'http://127.0.0.1:8787/zzz/v1' });
  });

  it('prefers the conventional prefix, then the name', () => {
    const first = route('a-openai', { protocol: 'openai', baseURL: 'https://api.openai.com' });
    const conventional = route('primary', { protocol: 'openai', baseURL: 'https://api.openai.com', pathPrefix: '/openai' });
    const second = route('b-openai', { protocol: 'openai', baseURL: 'https://api.openai.com' });

    expect(sdkEnvironment([first, conventional, second])[0]?.value).toBe('http://127.0.0.1:8787/openai/v1');
    expect(sdkEnvironment([second, first])[0]?.value).toBe('http://127.0.0.1:8787/a-openai/v1');
  });

  it('covers gemini and azure', () => {
    const gemini = route('gemini', { protocol: 'gemini', baseURL: 'https://generativelanguage.googleapis.com' });

    expect(sdkEnvironment([AZURE, gemini])).toEqual([
      { name: 'GEMINI_BASE_URL', value: 'http://127.0.0.1:8787/gemini' },
      { name: 'GOOGLE_GEMINI_BASE_URL', value: 'http://127.0.0.1:8787/gemini' },
      { name: 'AZURE_OPENAI_ENDPOINT', value: 'http://127.0.0.1:8787/azure' },
      { name: 'GEMINI_API_KEY', value: API_KEY_PLACEHOLDER },
      { name: 'AZURE_OPENAI_API_KEY', value: API_KEY_PLACEHOLDER },
      { name: 'OPENAI_API_VERSION', value: '2024-10-21' },
    ]);
  });

  it('prefers the conventional azure prefix', () => {
    const conventional = route('primary', {
      protocol: 'azure-openai',
      baseURL: 'https://shop.openai.azure.com',
      pathPrefix: '/azure-openai',
      deployments: [{ name: 'chat', model: 'gpt-4o-mini' }],
    });

    expect(sdkEnvironment([AZURE, conventional])[0]).toEqual({ name: 'AZURE_OPENAI_ENDPOINT', value: 'http://127.0.0.1:8787/azure-openai' });
  });
});

describe('resolveWallet', () => {
  const wallets: WalletRef[] = [
    { name: 'team-a', annotations: { 'tollgate.dev/default': 'true' } },
    { name: 'team-b', annotations: { 'tollgate.dev/default': 'false' } },
  ];

  it('takes the pod annotation first', () => {
    const warnings: string[] = [];
    const pod = labelledPod({}, { annotations: { 'tollgate.dev/wallet': 'team-b' } });

    expect(resolveWallet(pod, wallets, warnings)).toBe('team-b');
    expect(warnings).toEqual([]);
  });

  it('warns about an unknown named wallet', () => {
    const warnings: string[] = [];
    const pod = labelledPod({}, { annotations: { 'tollgate.dev/wallet': 'team-z' } });

    expect(resolveWallet(pod, wallets, warnings)).toBe('team-z');
    expect(warnings).toEqual([
      'Wallet "team-z" named by annotation tollgate.dev/wallet does not exist in this namespace; the sidecar rejects model calls until it is created',
    ]);
  });

  it('falls back to the default wallet', () => {
    const warnings: string[] = [];

    expect(resolveWallet(labelledPod(), wallets, warnings)).toBe('team-a');
    expect(warnings).toEqual([]);
  });

  it('picks none of several defaults', () => {
    const warnings: string[] = [];
    const twoDefaults = [...wallets, { name: 'team-c', annotations: { 'tollgate.dev/default': 'true' } }];

    expect(resolveWallet(labelledPod(), twoDefaults, warnings)).toBeUndefined();
    expect(warnings[0]).toMatch(/^several Wallets are annotated tollgate.dev\/default: "true" \(team-a, team-c\)/);
  });

  it('warns when no wallet pays', () => {
    const warnings: string[] = [];

    expect(resolveWallet(labelledPod(), [{ name: 'team-b' }], warnings)).toBeUndefined();
    expect(warnings[0]).toMatch(/^no Wallet pays for this pod/);
  });
});

describe('credential volumes', () => {
  it('deduplicates Secrets shared by routes', () => {
    const mirror = route('openai-mirror', { protocol: 'openai', baseURL: 'https://mirror.example.com', credentialSecretRef: { name: 'openai-credentials' } });
    const volumes = credentialSecretVolumes([OPENAI, mirror, ANTHROPIC], new Set());

    expect(volumes).toEqual([
      { secretName: 'anthropic-credentials', volumeName: 'tollgate-cred-anthropic-credentials' },
      { secretName: 'openai-credentials', volumeName: 'tollgate-cred-openai-credentials' },
    ]);
  });

  it('makes a valid name from a long dotted Secret name', () => {
    const secretName = `${'provider.'.repeat(10)}key`;
    const name = credentialVolumeName(secretName);

    expect(name).toHaveLength(63);
    expect(name).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
    expect(name.startsWith('tollgate-cred-provider-provider-')).toBe(true);
    expect(credentialVolumeName(`${secretName}2`)).not.toBe(name);
  });

  it('replaces dots in short names', () => {
    expect(credentialVolumeName('openai.key')).toBe('tollgate-cred-openai-key');
  });

  it('avoids volume names the pod uses', () => {
    const pod = labelledPod({
      volumes: [
        { name: 'tollgate-cred-openai-credentials', emptyDir: {} },
        { name: 'tollgate-sidecar-tmp', emptyDir: {} },
        { name: 'tollgate-state', emptyDir: {} },
      ],
    });
    const patched = applyPatch(pod, injectSidecar(pod, context({ routes: [OPENAI] })).patch);

    expect(patched.spec?.volumes?.map((volume) => volume.name)).toEqual([
      'tollgate-cred-openai-credentials',
      'tollgate-sidecar-tmp',
      'tollgate-state',
      'tollgate-sidecar-tmp-2',
      'tollgate-state-2',
      'tollgate-cred-openai-credentials-2',
    ]);
    expect(sidecarOf(patched).volumeMounts?.map((mount) => mount.name)).toEqual([
      'tollgate-sidecar-tmp-2',
      'tollgate-state-2',
      'tollgate-cred-openai-credentials-2',
    ]);
  });
});
