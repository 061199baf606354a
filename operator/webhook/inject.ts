// Sidecar injection as a pure function: a Pod and the Tollgate resources of its
// namespace in, a JSON patch (RFC 6902) and a decision out. The admission server in
// server.ts does the I/O around it.

import { createHash } from 'node:crypto';
import type {
  V1Container,
  V1EnvVar,
  V1Pod,
  V1Probe,
  V1ResourceRequirements,
  V1Volume,
  V1VolumeMount,
} from '@kubernetes/client-node';
import type { ProviderRoute } from '../../src/api/provider-route.ts';
import { REDIS_TLS_ENV } from '../../src/ledger/redis-tls.ts';

export const INJECT_LABEL = 'tollgate.dev/inject';
export const WALLET_ANNOTATION = 'tollgate.dev/wallet';
export const DEFAULT_WALLET_ANNOTATION = 'tollgate.dev/default';
/** Set on injected pods: the sidecar image, for `kubectl get pod -o yaml` readers and upgrades. */
export const SIDECAR_IMAGE_ANNOTATION = 'tollgate.dev/sidecar-image';
/** Set on injected pods when a wallet was resolved: the Wallet that pays for the pod's calls. */
export const INJECTED_WALLET_ANNOTATION = 'tollgate.dev/injected-wallet';

export const SIDECAR_CONTAINER_NAME = 'tollgate-sidecar';
export const SIDECAR_HOST = '127.0.0.1';
export const SIDECAR_PORT = 8787;
/** Port of the sidecar's admin server (/metrics, /healthz, /readyz) on the pod IP, for probes and Prometheus. */
export const SIDECAR_ADMIN_PORT = 9464;
export const SIDECAR_URL = `http://${SIDECAR_HOST}:${SIDECAR_PORT}`;
export const CREDENTIALS_DIR = '/var/run/tollgate/credentials';
/** Mount path of the Redis TLS Secret (RedisTlsSecretRef) in the sidecar. */
export const REDIS_TLS_DIR = '/var/run/tollgate/redis-tls';
/**
 * Mount path of the sidecar's state volume, an emptyDir: its files outlive a
 * restart of the sidecar's container, though not the pod.
 */
export const STATE_DIR = '/var/lib/tollgate';
/** The commit journal (TOLLGATE_COMMIT_JOURNAL), which keeps commits that wait for Redis across a restart of the sidecar. */
export const COMMIT_JOURNAL_PATH = `${STATE_DIR}/commits.ndjson`;
/** Keys of the Redis TLS Secret, as in a kubernetes.io/tls Secret and the Secrets that cert-manager writes. */
export const REDIS_TLS_SECRET_KEYS = { ca: 'ca.crt', cert: 'tls.crt', key: 'tls.key' } as const;
/** Value of API key variables set for SDKs that refuse to start without one; the sidecar adds the real key. */
export const API_KEY_PLACEHOLDER = 'tollgate-sidecar-holds-the-key';
/**
 * OPENAI_API_VERSION set for the `AzureOpenAI` client, whose constructor throws without an
 * API version: 2024-10-21, a generally available Azure OpenAI data-plane version. The
 * sidecar forwards whichever version a request carries.
 */
export const AZURE_OPENAI_API_VERSION = '2024-10-21';

/** Reasons of the Events recorded for each admission decision. */
export const InjectionEventReason = {
  Injected: 'Injected',
  InjectionSkipped: 'InjectionSkipped',
  InjectionFailed: 'InjectionFailed',
} as const;
export type InjectionEventReason = (typeof InjectionEventReason)[keyof typeof InjectionEventReason];

export type InjectionDecision = 'Injected' | 'InjectionSkipped' | 'AlreadyInjected';

/** One RFC 6902 operation. The injector emits only `add`; the others serve callers such as the CA bundle patch. */
export type JsonPatchOp =
  | { op: 'add' | 'replace' | 'test'; path: string; value: unknown }
  | { op: 'remove'; path: string };

/** A Wallet as far as injection reads it: its name and annotations. */
export interface WalletRef {
  name: string;
  annotations?: Record<string, string> | undefined;
}

/** A key of a Secret in the pod's namespace. */
export interface SecretKeyRef {
  name: string;
  key: string;
}

/**
 * A Secret in the pod's namespace with the Redis TLS files in the keys of
 * REDIS_TLS_SECRET_KEYS, and which of the files the sidecar uses: the same
 * ones as the operator.
 */
export interface RedisTlsSecretRef {
  name: string;
  /** Whether the sidecar checks the server's certificate against ca.crt. */
  caCertificate: boolean;
  /** Whether the sidecar presents tls.crt, with its key tls.key, as its client certificate. */
  clientCertificate: boolean;
}

export interface InjectionContext {
  sidecarImage: string;
  /** Base URL of the operator's snapshot server; the sidecar appends `/v1/snapshot/<namespace>`. */
  configUrl: string;
  redisUrl: string;
  /**
   * Secret key in the pod's namespace that contains the Redis URL. When set, the
   * pod spec names this key instead of carrying `redisUrl` in plain text.
   */
  redisUrlSecret?: SecretKeyRef;
  /** Secret in the pod's namespace that the sidecar mounts its Redis TLS files from; no TLS files when absent. */
  redisTlsSecret?: RedisTlsSecretRef;
  /** Retention of the ledger's settled records, in milliseconds; the sidecar's default when undefined. */
  settledRetentionMs?: number;
  /** How long a ledger operation waits for Redis, in milliseconds (0 for no limit); the sidecar's default when undefined. */
  ledgerTimeoutMs?: number;
  /** Largest request body the sidecar accepts, in bytes, or undefined for the sidecar's default. */
  bodyLimit?: number;
  /** Use limit the sidecar sets on each charged server tool of a request that sets none, or undefined for the sidecar's default. */
  maxToolUses?: number;
  /** Whether the sidecar fills the wallet label of its money counters. Undefined keeps the sidecar's default, true. */
  walletLabel?: boolean;
  /** Validated ProviderRoutes of the pod's namespace. */
  routes: readonly ProviderRoute[];
  /** Wallets of the pod's namespace. */
  wallets: readonly WalletRef[];
  imagePullPolicy?: string;
  resources?: V1ResourceRequirements;
  /** Command of the sidecar container; DEFAULT_SIDECAR_COMMAND when absent. */
  command?: readonly string[];
}

export interface InjectionResult {
  decision: InjectionDecision;
  /** Event reason for the decision: `AlreadyInjected` is recorded as `InjectionSkipped`. */
  reason: InjectionEventReason;
  message: string;
  /** Empty unless the decision is `Injected`. */
  patch: JsonPatchOp[];
  /** Admission warnings, which kubectl prints to the user that created the pod. */
  warnings: string[];
  /** The Wallet named in TOLLGATE_WALLET, when one was resolved. */
  wallet?: string;
}

/** Runs the sidecar from the Tollgate image, whose working directory is the repository root. */
export const DEFAULT_SIDECAR_COMMAND: readonly string[] = ['node', 'src/cli/main.ts', 'sidecar'];

export const DEFAULT_SIDECAR_RESOURCES: V1ResourceRequirements = {
  requests: { cpu: '50m', memory: '64Mi' },
  limits: { memory: '256Mi' },
};

/** User and group the sidecar runs as: the conventional "nonroot" id of distroless images. */
const SIDECAR_USER_ID = 65532;
const TMP_VOLUME_BASE_NAME = 'tollgate-sidecar-tmp';
const STATE_VOLUME_BASE_NAME = 'tollgate-state';
const CREDENTIAL_VOLUME_PREFIX = 'tollgate-cred-';
const REDIS_TLS_VOLUME_BASE_NAME = 'tollgate-redis-tls';
const MAX_VOLUME_NAME_LENGTH = 63;
/**
 * Secret files are readable by every user, because the sidecar's non-root user does not
 * own them. Only the sidecar mounts them. Optional, so that a Secret created after the
 * pod still reaches it (the kubelet refreshes Secret volumes).
 */
const SECRET_FILE_MODE = 0o444;

/**
 * Decides whether a Pod gets the Tollgate sidecar and returns the JSON patch that
 * adds it. A Pod that already has a container named `tollgate-sidecar` gets an empty
 * patch, so a second call (webhook reinvocation) changes nothing.
 */
export function injectSidecar(pod: V1Pod, context: InjectionContext): InjectionResult {
  const noInjection = checkInjectionNeeded(pod);
  if (noInjection !== undefined) {
    return noInjection;
  }

  const warnings: string[] = [];
  const wallet = resolveWallet(pod, context.wallets, warnings);
  const { volumes, mounts } = sidecarVolumes(context.routes, context.redisTlsSecret, pod.spec?.volumes ?? []);
  const sidecar = buildSidecarContainer(context, wallet, mounts);
  const sdkVariables = sdkEnvironment(context.routes);

  const patch: JsonPatchOp[] = [
    ...addToArrayFront(pod.spec?.initContainers, '/spec/initContainers', sidecar),
    ...appendToArray(pod.spec?.volumes, '/spec/volumes', volumes),
    ...(pod.spec?.containers ?? []).flatMap((container, index) =>
      appendToArray(container.env, `/spec/containers/${index}/env`, missingVariables(container, sdkVariables)),
    ),
    ...setAnnotations(pod, {
      [SIDECAR_IMAGE_ANNOTATION]: context.sidecarImage,
      ...(wallet === undefined ? {} : { [INJECTED_WALLET_ANNOTATION]: wallet }),
    }),
  ];

  const prefixes = context.routes.map(routePrefix);
  const routeText = prefixes.length === 0 ? 'no provider routes yet' : `routes ${prefixes.join(', ')}`;
  const walletText = wallet === undefined ? 'no wallet' : `wallet "${wallet}"`;
  if (prefixes.length === 0) {
    warnings.push(
      `namespace has no valid ProviderRoute, so application containers get no provider base-URL variables; ` +
        `create ProviderRoutes before the pods that use them`,
    );
  }
  return {
    decision: 'Injected',
    reason: InjectionEventReason.Injected,
    message: `injected ${SIDECAR_CONTAINER_NAME} (${context.sidecarImage}) with ${walletText} and ${routeText}`,
    patch,
    warnings,
    ...(wallet === undefined ? {} : { wallet }),
  };
}

/**
 * Returns the result for a pod that gets no sidecar (not labelled, hostNetwork, or
 * already injected), or undefined when the pod needs one. It reads only the pod, so
 * callers can use it before looking up the namespace's resources.
 */
export function checkInjectionNeeded(pod: V1Pod): InjectionResult | undefined {
  const skip = skipReason(pod);
  if (skip !== undefined) {
    return { decision: 'InjectionSkipped', reason: InjectionEventReason.InjectionSkipped, message: skip, patch: [], warnings: [] };
  }
  if (hasSidecar(pod)) {
    return {
      decision: 'AlreadyInjected',
      reason: InjectionEventReason.InjectionSkipped,
      message: `pod already has a container named ${SIDECAR_CONTAINER_NAME}, so nothing was injected`,
      patch: [],
      warnings: [],
    };
  }
  return undefined;
}

function skipReason(pod: V1Pod): string | undefined {
  const label = pod.metadata?.labels?.[INJECT_LABEL];
  if (label !== 'true') {
    return label === undefined
      ? `pod has no ${INJECT_LABEL} label`
      : `pod has ${INJECT_LABEL}="${label}"; only "true" requests injection`;
  }
  if (pod.spec?.hostNetwork === true) {
    return (
      `pod uses hostNetwork, so the sidecar's listener on ${SIDECAR_HOST}:${SIDECAR_PORT} would bind on the node ` +
      `and collide with other pods; run the pod without hostNetwork to meter its model calls`
    );
  }
  return undefined;
}

function hasSidecar(pod: V1Pod): boolean {
  const containers = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])];
  return containers.some((container) => container.name === SIDECAR_CONTAINER_NAME);
}

/**
 * Returns the paying Wallet: the one named by the pod's annotation, else the single
 * Wallet of the namespace annotated as default. Appends a warning when the result is
 * missing, unknown or ambiguous, because the sidecar then rejects model calls.
 */
export function resolveWallet(pod: V1Pod, wallets: readonly WalletRef[], warnings: string[]): string | undefined {
  const named = pod.metadata?.annotations?.[WALLET_ANNOTATION];
  if (named !== undefined && named !== '') {
    if (!wallets.some((wallet) => wallet.name === named)) {
      warnings.push(
        `Wallet "${named}" named by annotation ${WALLET_ANNOTATION} does not exist in this namespace; ` +
          `the sidecar rejects model calls until it is created`,
      );
    }
    return named;
  }

  const defaults = wallets
    .filter((wallet) => wallet.annotations?.[DEFAULT_WALLET_ANNOTATION] === 'true')
    .map((wallet) => wallet.name)
    .sort();
  if (defaults.length === 1) {
    return defaults[0];
  }
  if (defaults.length === 0) {
    warnings.push(
      `no Wallet pays for this pod: set annotation ${WALLET_ANNOTATION} on the pod, ` +
        `or annotate one Wallet of the namespace with ${DEFAULT_WALLET_ANNOTATION}: "true"`,
    );
  } else {
    warnings.push(
      `several Wallets are annotated ${DEFAULT_WALLET_ANNOTATION}: "true" (${defaults.join(', ')}), so none was chosen; ` +
        `set annotation ${WALLET_ANNOTATION} on the pod or keep one default`,
    );
  }
  return undefined;
}

/** Returns the path prefix a route is served under by the sidecar. */
export function routePrefix(route: ProviderRoute): string {
  return route.spec.pathPrefix ?? `/${route.metadata.name}`;
}

// The sidecar container

function buildSidecarContainer(context: InjectionContext, wallet: string | undefined, mounts: V1VolumeMount[]): V1Container {
  const env: V1EnvVar[] = [
    { name: 'TOLLGATE_NAMESPACE', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } } },
    ...(wallet === undefined ? [] : [{ name: 'TOLLGATE_WALLET', value: wallet }]),
    { name: 'TOLLGATE_CONFIG_URL', value: context.configUrl },
    // A password in a plain value would be readable by anyone who can read the pod spec.
    context.redisUrlSecret === undefined
      ? { name: 'TOLLGATE_REDIS_URL', value: context.redisUrl }
      : { name: 'TOLLGATE_REDIS_URL', valueFrom: { secretKeyRef: { name: context.redisUrlSecret.name, key: context.redisUrlSecret.key } } },
    ...redisTlsEnvironment(context.redisTlsSecret),
    // The operator's ledger and the sidecars must keep settled records equally long.
    ...(context.settledRetentionMs === undefined ? [] : [{ name: 'TOLLGATE_LEDGER_RETENTION', value: `${context.settledRetentionMs}ms` }]),
    ...(context.ledgerTimeoutMs === undefined ? [] : [{ name: 'TOLLGATE_LEDGER_TIMEOUT', value: `${context.ledgerTimeoutMs}ms` }]),
    ...(context.bodyLimit === undefined ? [] : [{ name: 'TOLLGATE_BODY_LIMIT', value: String(context.bodyLimit) }]),
    ...(context.maxToolUses === undefined ? [] : [{ name: 'TOLLGATE_MAX_TOOL_USES', value: String(context.maxToolUses) }]),
    // The sidecar fills the wallet label by default, so only "off" needs the variable.
    ...(context.walletLabel === false ? [{ name: 'TOLLGATE_WALLET_LABEL', value: 'false' }] : []),
    { name: 'TOLLGATE_CREDENTIALS_DIR', value: CREDENTIALS_DIR },
    { name: 'TOLLGATE_LISTEN', value: `${SIDECAR_HOST}:${SIDECAR_PORT}` },
    { name: 'TOLLGATE_ADMIN_LISTEN', value: `0.0.0.0:${SIDECAR_ADMIN_PORT}` },
    { name: 'TOLLGATE_COMMIT_JOURNAL', value: COMMIT_JOURNAL_PATH },
  ];

  return {
    name: SIDECAR_CONTAINER_NAME,
    image: context.sidecarImage,
    imagePullPolicy: context.imagePullPolicy ?? 'IfNotPresent',
    command: [...(context.command ?? DEFAULT_SIDECAR_COMMAND)],
    // A native sidecar: started before the app containers, kept running beside them.
    restartPolicy: 'Always',
    env,
    ports: [{ name: 'tollgate-admin', containerPort: SIDECAR_ADMIN_PORT, protocol: 'TCP' }],
    resources: context.resources ?? DEFAULT_SIDECAR_RESOURCES,
    // The startup probe holds back the app containers until the sidecar serves.
    startupProbe: readyzProbe({ periodSeconds: 1, failureThreshold: 60 }),
    readinessProbe: readyzProbe({ periodSeconds: 10, failureThreshold: 3 }),
    securityContext: {
      runAsNonRoot: true,
      runAsUser: SIDECAR_USER_ID,
      runAsGroup: SIDECAR_USER_ID,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    volumeMounts: mounts,
  };
}

/**
 * Builds a probe of the sidecar's /readyz on its admin port. The proxy itself
 * listens on loopback only (so that other pods cannot spend its wallet), and
 * the kubelet's probes connect to the pod IP, so they use the admin server,
 * which serves no proxy routes.
 */
function readyzProbe(timing: { periodSeconds: number; failureThreshold: number }): V1Probe {
  return { httpGet: { path: '/readyz', port: SIDECAR_ADMIN_PORT }, timeoutSeconds: 5, ...timing };
}

// Volumes

/**
 * Returns the pod volumes the sidecar needs (tmp, state, then one per credential
 * Secret, then the Redis TLS Secret when it uses one) and its mounts of them.
 */
function sidecarVolumes(
  routes: readonly ProviderRoute[],
  redisTls: RedisTlsSecretRef | undefined,
  podVolumes: readonly V1Volume[],
): { volumes: V1Volume[]; mounts: V1VolumeMount[] } {
  const takenNames = new Set(podVolumes.map((volume) => volume.name));
  const credentialVolumes = credentialSecretVolumes(routes, takenNames);
  const tmpVolumeName = uniqueName(TMP_VOLUME_BASE_NAME, takenNames);
  const stateVolumeName = uniqueName(STATE_VOLUME_BASE_NAME, takenNames);
  const redisTlsKeys = redisTls === undefined ? [] : redisTlsSecretKeys(redisTls);
  const redisTlsVolumeName = redisTlsKeys.length === 0 ? undefined : uniqueName(REDIS_TLS_VOLUME_BASE_NAME, takenNames);

  const volumes: V1Volume[] = [
    { name: tmpVolumeName, emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } },
    // On the node's disk rather than in memory, so that the journal does not count against the sidecar's memory limit.
    { name: stateVolumeName, emptyDir: { sizeLimit: '64Mi' } },
    ...credentialVolumes.map(({ volumeName, secretName }) => ({
      name: volumeName,
      secret: { secretName, defaultMode: SECRET_FILE_MODE, optional: true },
    })),
  ];
  const mounts: V1VolumeMount[] = [
    { name: tmpVolumeName, mountPath: '/tmp' },
    { name: stateVolumeName, mountPath: STATE_DIR },
    ...credentialVolumes.map(({ volumeName, secretName }) => ({
      name: volumeName,
      mountPath: `${CREDENTIALS_DIR}/${secretName}`,
      readOnly: true,
    })),
  ];
  if (redisTls !== undefined && redisTlsVolumeName !== undefined) {
    // Not optional, and only the keys the sidecar reads are projected: a missing Secret or key then keeps the pod
    // in ContainerCreating with a FailedMount event that names it, instead of a sidecar that cannot reach Redis.
    volumes.push({
      name: redisTlsVolumeName,
      secret: { secretName: redisTls.name, defaultMode: SECRET_FILE_MODE, items: redisTlsKeys.map((key) => ({ key, path: key })) },
    });
    mounts.push({ name: redisTlsVolumeName, mountPath: REDIS_TLS_DIR, readOnly: true });
  }
  return { volumes, mounts };
}

/** Returns the keys of the Redis TLS Secret that the sidecar reads: ca.crt, then tls.crt and tls.key, each when used. */
export function redisTlsSecretKeys(redisTls: Pick<RedisTlsSecretRef, 'caCertificate' | 'clientCertificate'>): string[] {
  return [
    ...(redisTls.caCertificate ? [REDIS_TLS_SECRET_KEYS.ca] : []),
    ...(redisTls.clientCertificate ? [REDIS_TLS_SECRET_KEYS.cert, REDIS_TLS_SECRET_KEYS.key] : []),
  ];
}

/** The sidecar's variable for the path of each key of the Redis TLS Secret. */
const REDIS_TLS_FILE_VARIABLES: Record<string, string> = {
  [REDIS_TLS_SECRET_KEYS.ca]: REDIS_TLS_ENV.caFile,
  [REDIS_TLS_SECRET_KEYS.cert]: REDIS_TLS_ENV.certFile,
  [REDIS_TLS_SECRET_KEYS.key]: REDIS_TLS_ENV.keyFile,
};

/** Returns the variables that point the sidecar at its mounted Redis TLS files, in the order of redisTlsSecretKeys. */
function redisTlsEnvironment(redisTls: RedisTlsSecretRef | undefined): V1EnvVar[] {
  if (redisTls === undefined) return [];
  return redisTlsSecretKeys(redisTls).map((key) => ({ name: REDIS_TLS_FILE_VARIABLES[key]!, value: `${REDIS_TLS_DIR}/${key}` }));
}

interface CredentialVolume {
  volumeName: string;
  secretName: string;
}

/** Returns one volume per distinct credential Secret of the routes, sorted by Secret name. */
export function credentialSecretVolumes(routes: readonly ProviderRoute[], takenNames: Set<string>): CredentialVolume[] {
  const secretNames = [
    ...new Set(routes.flatMap((route) => (route.spec.credentialSecretRef === undefined ? [] : [route.spec.credentialSecretRef.name]))),
  ].sort();
  return secretNames.map((secretName) => ({ secretName, volumeName: uniqueName(credentialVolumeName(secretName), takenNames) }));
}

/**
 * Returns a volume name (a DNS-1123 label of at most 63 characters) for a Secret name
 * (a DNS-1123 subdomain of up to 253 characters). Long names are cut and suffixed with
 * a hash of the full name, so that two long names cannot map to one volume.
 */
export function credentialVolumeName(secretName: string): string {
  const name = CREDENTIAL_VOLUME_PREFIX + secretName.replaceAll('.', '-');
  if (name.length <= MAX_VOLUME_NAME_LENGTH) {
    return name;
  }
  const hash = createHash('sha256').update(secretName).digest('hex').slice(0, 8);
  const head = name.slice(0, MAX_VOLUME_NAME_LENGTH - hash.length - 1).replace(/-+$/, '');
  return `${head}-${hash}`;
}

/** Returns `base`, or `base` with a numeric suffix when the pod already uses that name, and reserves it. */
function uniqueName(base: string, takenNames: Set<string>): string {
  let name = base;
  for (let suffix = 2; takenNames.has(name); suffix++) {
    const tail = `-${suffix}`;
    name = base.slice(0, MAX_VOLUME_NAME_LENGTH - tail.length) + tail;
  }
  takenNames.add(name);
  return name;
}

// Environment of the application containers

interface SdkFamily {
  /** Protocols in order of preference when several routes compete for the same variables. */
  protocols: readonly ProviderRoute['spec']['protocol'][];
  conventionalPrefix: string;
  urlVariables: readonly string[];
  keyVariable: string;
  /** Other variables the SDK needs to start, with the values to set. */
  settings?: readonly V1EnvVar[];
  /** URL path the SDK expects after the host when the route's base URL has none. */
  sdkBasePath: (route: ProviderRoute) => string;
}

const SDK_FAMILIES: readonly SdkFamily[] = [
  {
    // The OpenAI SDKs take a base URL that already ends in /v1 and append /chat/completions.
    protocols: ['openai', 'openai-compatible'],
    conventionalPrefix: '/openai',
    urlVariables: ['OPENAI_BASE_URL'],
    keyVariable: 'OPENAI_API_KEY',
    sdkBasePath: (route) => (new URL(route.spec.baseURL).pathname.replace(/\/+$/, '') === '' ? '/v1' : ''),
  },
  {
    // The Anthropic SDKs append /v1/messages themselves.
    protocols: ['anthropic'],
    conventionalPrefix: '/anthropic',
    urlVariables: ['ANTHROPIC_BASE_URL'],
    keyVariable: 'ANTHROPIC_API_KEY',
    sdkBasePath: () => '',
  },
  {
    // Google's Gen AI SDKs read GOOGLE_GEMINI_BASE_URL; GEMINI_BASE_URL is the common name in other tools.
    protocols: ['gemini'],
    conventionalPrefix: '/gemini',
    urlVariables: ['GEMINI_BASE_URL', 'GOOGLE_GEMINI_BASE_URL'],
    keyVariable: 'GEMINI_API_KEY',
    sdkBasePath: () => '',
  },
  {
    // The AzureOpenAI client of the `openai` package appends /openai/deployments/... to the
    // endpoint. NOTE: that client prefers OPENAI_BASE_URL over AZURE_OPENAI_ENDPOINT, so in a
    // pod that also has an openai route it must be given baseURL: `${AZURE_OPENAI_ENDPOINT}/openai`.
    protocols: ['azure-openai'],
    conventionalPrefix: '/azure-openai',
    urlVariables: ['AZURE_OPENAI_ENDPOINT'],
    keyVariable: 'AZURE_OPENAI_API_KEY',
    settings: [{ name: 'OPENAI_API_VERSION', value: AZURE_OPENAI_API_VERSION }],
    sdkBasePath: () => '',
  },
];

/**
 * Returns the variables that point provider SDKs at the sidecar: base URLs, then API
 * key placeholders, then other settings the SDKs need (OPENAI_API_VERSION). When
 * several routes speak one SDK's protocol, the variables point at one of them, chosen
 * by protocol, then conventional prefix, then name. The other routes stay reachable
 * under their own prefixes.
 */
export function sdkEnvironment(routes: readonly ProviderRoute[]): V1EnvVar[] {
  const baseUrls: V1EnvVar[] = [];
  const keys: V1EnvVar[] = [];
  const settings: V1EnvVar[] = [];
  for (const family of SDK_FAMILIES) {
    const route = preferredRoute(routes, family);
    if (route === undefined) {
      continue;
    }
    const url = SIDECAR_URL + routePrefix(route) + family.sdkBasePath(route);
    baseUrls.push(...family.urlVariables.map((name) => ({ name, value: url })));
    keys.push({ name: family.keyVariable, value: API_KEY_PLACEHOLDER });
    settings.push(...(family.settings ?? []));
  }
  return [...baseUrls, ...keys, ...settings];
}

function preferredRoute(routes: readonly ProviderRoute[], family: SdkFamily): ProviderRoute | undefined {
  const rank = (route: ProviderRoute): [number, number, string] => [
    family.protocols.indexOf(route.spec.protocol),
    routePrefix(route) === family.conventionalPrefix ? 0 : 1,
    route.metadata.name,
  ];
  const candidates = routes.filter((route) => family.protocols.includes(route.spec.protocol));
  candidates.sort((left, right) => compareRanks(rank(left), rank(right)));
  return candidates[0];
}

function compareRanks(left: [number, number, string], right: [number, number, string]): number {
  if (left[0] !== right[0]) {
    return left[0] - right[0];
  }
  if (left[1] !== right[1]) {
    return left[1] - right[1];
  }
  return compareStrings(left[2], right[2]);
}

/** Compares by code unit, like Array.prototype.sort without a comparator, so the order does not depend on the locale. */
export function compareStrings(left: string, right: string): number {
  if (left < right) {
    return -1;
  }
  return left > right ? 1 : 0;
}

/**
 * Returns the variables the container does not set itself. Only `env` is checked.
 * NOTE: a variable that the container gets through `envFrom` is overridden, because
 * `env` wins over `envFrom` and the referenced ConfigMaps and Secrets are not read here.
 */
function missingVariables(container: V1Container, variables: readonly V1EnvVar[]): V1EnvVar[] {
  const present = new Set((container.env ?? []).map((variable) => variable.name));
  return variables.filter((variable) => !present.has(variable.name));
}

// JSON patch helpers

/** Escapes one JSON pointer segment (RFC 6901): `~` becomes `~0`, `/` becomes `~1`. */
export function escapeJsonPointer(segment: string): string {
  return segment.replaceAll('~', '~0').replaceAll('/', '~1');
}

// An absent array (or a null one from a hand-written client) needs the whole array added,
// because RFC 6902 cannot append to a member that does not exist.
function addToArrayFront(current: readonly unknown[] | null | undefined, path: string, item: unknown): JsonPatchOp[] {
  return current == null ? [{ op: 'add', path, value: [item] }] : [{ op: 'add', path: `${path}/0`, value: item }];
}

function appendToArray(current: readonly unknown[] | null | undefined, path: string, items: readonly unknown[]): JsonPatchOp[] {
  if (items.length === 0) {
    return [];
  }
  if (current == null) {
    return [{ op: 'add', path, value: [...items] }];
  }
  return items.map((value) => ({ op: 'add', path: `${path}/-`, value }));
}

function setAnnotations(pod: V1Pod, annotations: Record<string, string>): JsonPatchOp[] {
  if (pod.metadata?.annotations == null) {
    return [{ op: 'add', path: '/metadata/annotations', value: annotations }];
  }
  // `add` on an existing member replaces it, so a stale value from a copied manifest is corrected.
  return Object.entries(annotations).map(([key, value]) => ({
    op: 'add',
    path: `/metadata/annotations/${escapeJsonPointer(key)}`,
    value,
  }));
}
