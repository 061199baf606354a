/**
 * The operator's only access to the Kubernetes API: builds the KubeConfig and
 * the typed clients, and wraps the few custom-resource calls the reconcilers
 * make. Other operator modules import clients and helpers from here.
 */

import {
  AdmissionregistrationV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  KubernetesObjectApi,
  PatchStrategy,
  Watch,
  setHeaderOptions,
  type V1Secret,
} from '@kubernetes/client-node';
import type { z } from 'zod';
import { API_GROUP, API_VERSION, parseIgnoringUnknownFields, type Condition } from '../src/api/common.ts';
import { PricePlan } from '../src/api/price-plan.ts';
import { ProviderRoute } from '../src/api/provider-route.ts';
import { Wallet } from '../src/api/wallet.ts';
import { stableJson } from '../src/config/stable-json.ts';

/** The custom resource kinds the operator watches, with their URL plural. */
export const RESOURCES = {
  Wallet: { plural: 'wallets' },
  PricePlan: { plural: 'priceplans' },
  ProviderRoute: { plural: 'providerroutes' },
} as const;

export type ResourceKind = keyof typeof RESOURCES;

export const RESOURCE_KINDS = Object.keys(RESOURCES) as ResourceKind[];

/** Object metadata as the API server sends it in JSON (times are RFC 3339 strings). */
export interface KubeMetadata {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  finalizers?: string[];
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** A namespaced custom resource as read from the API, before schema validation. */
export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: KubeMetadata;
  spec?: unknown;
  status?: Record<string, unknown>;
}

export interface KubeClients {
  kubeConfig: KubeConfig;
  core: CoreV1Api;
  coordination: CoordinationV1Api;
  custom: CustomObjectsApi;
  watch: Watch;
  /** Client for the webhook's MutatingWebhookConfiguration. */
  admission: AdmissionregistrationV1Api;
  /** Client for objects of any kind, such as the owners of a Pod. */
  objects: KubernetesObjectApi;
}

export interface KubeConfigOptions {
  /** Path of a kubeconfig file; without it, the in-cluster service account when running in a Pod, else the default lookup. */
  kubeconfig?: string | undefined;
}

/** Loads the KubeConfig: an explicit file, else the in-cluster service account, else KUBECONFIG or ~/.kube/config. */
export function loadKubeConfig(options: KubeConfigOptions = {}): KubeConfig {
  const kubeConfig = new KubeConfig();
  if (options.kubeconfig) {
    kubeConfig.loadFromFile(options.kubeconfig);
  } else if (process.env['KUBERNETES_SERVICE_HOST']) {
    kubeConfig.loadFromCluster();
  } else {
    kubeConfig.loadFromDefault();
  }
  if (!kubeConfig.getCurrentCluster()) {
    throw new Error(
      'no Kubernetes cluster is configured: pass --kubeconfig PATH, set KUBECONFIG, or run the operator in a Pod with a service account',
    );
  }
  return kubeConfig;
}

export function createKubeClients(kubeConfig: KubeConfig): KubeClients {
  return {
    kubeConfig,
    core: kubeConfig.makeApiClient(CoreV1Api),
    coordination: kubeConfig.makeApiClient(CoordinationV1Api),
    custom: kubeConfig.makeApiClient(CustomObjectsApi),
    watch: new Watch(kubeConfig),
    admission: kubeConfig.makeApiClient(AdmissionregistrationV1Api),
    objects: KubernetesObjectApi.makeApiClient(kubeConfig),
  };
}

/** Request options that send a patch body as a JSON merge patch (RFC 7386) instead of the client's default JSON patch. */
export const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/** Returns the queue key of an object, "Kind/namespace/name". */
export function objectKey(kind: string, namespace: string, name: string): string {
  return `${kind}/${namespace}/${name}`;
}

/** Splits a queue key "Kind/namespace/name"; throws on any other shape. */
export function parseObjectKey(key: string): { kind: string; namespace: string; name: string } {
  const parts = key.split('/');
  if (parts.length !== 3 || parts.some((part) => part === '')) {
    throw new Error(`invalid queue key "${key}": expected "Kind/namespace/name"`);
  }
  const [kind, namespace, name] = parts as [string, string, string];
  return { kind, namespace, name };
}

/** Returns the API path that lists or watches a kind, across all namespaces unless one is given. */
export function resourcePath(kind: ResourceKind, namespace?: string): string {
  const scope = namespace ? `/namespaces/${encodeURIComponent(namespace)}` : '';
  return `/apis/${API_GROUP}/${API_VERSION}${scope}/${RESOURCES[kind].plural}`;
}

/** Returns the HTTP status of a failed API call, or undefined for network and other errors. */
export function statusCodeOf(error: unknown): number | undefined {
  if (error === null || typeof error !== 'object') return undefined;
  const { code, statusCode } = error as { code?: unknown; statusCode?: unknown };
  if (typeof code === 'number') return code;
  if (typeof statusCode === 'number') return statusCode;
  return undefined;
}

export function isNotFound(error: unknown): boolean {
  return statusCodeOf(error) === 404;
}

export function isConflict(error: unknown): boolean {
  return statusCodeOf(error) === 409;
}

/**
 * Returns the namespace named by a 404 whose Status reports that the namespace
 * itself does not exist, which the API server returns for a create in a
 * missing namespace. Returns undefined for every other error, including a 404 for a
 * missing object in an existing namespace.
 */
export function missingNamespaceOf(error: unknown): string | undefined {
  if (!isNotFound(error)) return undefined;
  let body = (error as { body?: unknown }).body;
  if (typeof body === 'string') {
    try {
      body = JSON.parse(body) as unknown;
    } catch {
      return undefined;
    }
  }
  const details = (body as { details?: { kind?: unknown; name?: unknown } } | null | undefined)?.details;
  return details?.kind === 'namespaces' && typeof details.name === 'string' ? details.name : undefined;
}

/**
 * Returns a one-line description of a failed API call: the status and the
 * message of the API server's Status body. The client's own error message
 * repeats every response header, which is too long for a log line.
 */
export function describeKubeError(error: unknown): string {
  const code = statusCodeOf(error);
  const body = (error as { body?: unknown } | null)?.body;
  let message: string | undefined;
  if (typeof body === 'string') {
    try {
      message = (JSON.parse(body) as { message?: string }).message;
    } catch {
      message = body.slice(0, 300);
    }
  } else if (body && typeof body === 'object') {
    message = (body as { message?: string }).message;
  }
  message ??= error instanceof Error ? error.message.split('\n')[0] : String(error);
  return code === undefined ? message ?? 'unknown error' : `HTTP ${code}: ${message}`;
}

/** Lists one kind, across all namespaces unless one is given, and returns the items with the list's resourceVersion. */
export async function listResources(
  clients: KubeClients,
  kind: ResourceKind,
  namespace?: string,
): Promise<{ items: KubeObject[]; resourceVersion: string }> {
  const common = { group: API_GROUP, version: API_VERSION, plural: RESOURCES[kind].plural };
  const list = (namespace
    ? await clients.custom.listNamespacedCustomObject({ ...common, namespace })
    : await clients.custom.listClusterCustomObject(common)) as { items?: KubeObject[]; metadata?: { resourceVersion?: string } };
  const items = (list.items ?? []).map((item) => ({ ...item, apiVersion: `${API_GROUP}/${API_VERSION}`, kind }));
  return { items, resourceVersion: list.metadata?.resourceVersion ?? '' };
}

/** Replaces the status of a custom resource through its status subresource, with a merge patch. */
export async function patchStatus(
  clients: KubeClients,
  kind: ResourceKind,
  namespace: string,
  name: string,
  status: object,
): Promise<KubeObject> {
  return (await clients.custom.patchNamespacedCustomObjectStatus(
    { group: API_GROUP, version: API_VERSION, plural: RESOURCES[kind].plural, namespace, name, body: { status } },
    MERGE_PATCH,
  )) as KubeObject;
}

/**
 * Sets the finalizer list of a custom resource. The patch carries the
 * resourceVersion the caller read, so the API server returns 409 Conflict
 * when another writer changed the object in between.
 */
export async function patchFinalizers(
  clients: KubeClients,
  kind: ResourceKind,
  object: KubeObject,
  finalizers: string[],
): Promise<KubeObject> {
  const { name, namespace = 'default', resourceVersion } = object.metadata;
  return (await clients.custom.patchNamespacedCustomObject(
    {
      group: API_GROUP,
      version: API_VERSION,
      plural: RESOURCES[kind].plural,
      namespace,
      name,
      body: { metadata: { resourceVersion, finalizers } },
    },
    MERGE_PATCH,
  )) as KubeObject;
}

/** Reads a Secret, or returns undefined when it does not exist. */
export async function readSecret(clients: KubeClients, namespace: string, name: string): Promise<V1Secret | undefined> {
  try {
    return await clients.core.readNamespacedSecret({ namespace, name });
  } catch (error) {
    if (isNotFound(error)) return undefined;
    throw error;
  }
}

/** The status of a PricePlan or ProviderRoute: the generation it describes and its conditions. */
export interface ResourceStatus {
  observedGeneration?: number | undefined;
  conditions?: Condition[] | undefined;
}

/** A condition as a reconciler computes it; `buildConditions` adds the times. */
export interface DesiredCondition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
}

/**
 * Builds a status's conditions from the desired ones. A condition whose
 * status did not change keeps its lastTransitionTime, so that rewriting the
 * same state does not look like a transition.
 */
export function buildConditions(
  previous: readonly Condition[] | undefined,
  desired: readonly DesiredCondition[],
  observedGeneration: number | undefined,
  now: string,
): Condition[] {
  return desired.map((condition) => {
    const old = previous?.find((candidate) => candidate.type === condition.type);
    const lastTransitionTime = old && old.status === condition.status ? old.lastTransitionTime : now;
    const built: Condition = { ...condition, lastTransitionTime };
    if (observedGeneration !== undefined) built.observedGeneration = observedGeneration;
    return built;
  });
}

/** Finds a condition by type. */
export function findCondition(conditions: readonly Condition[] | undefined, type: string): Condition | undefined {
  return conditions?.find((condition) => condition.type === type);
}

/** Compares two JSON values regardless of key order. */
export function sameJson(a: unknown, b: unknown): boolean {
  return stableJson(a) === stableJson(b);
}

const SCHEMAS = { Wallet, PricePlan, ProviderRoute } as const;
type Schemas = typeof SCHEMAS;

export type ParsedResource<K extends ResourceKind> = { ok: true; value: z.infer<Schemas[K]> } | { ok: false; message: string };

/** Validates a custom resource against its schema from src/api; the message lists each invalid field. */
export function parseResource<K extends ResourceKind>(kind: K, object: KubeObject): ParsedResource<K> {
  const result = parseIgnoringUnknownFields(SCHEMAS[kind], object);
  if (result.success) return { ok: true, value: result.data as z.infer<Schemas[K]> };
  const message = result.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`).join('; ');
  return { ok: false, message };
}
