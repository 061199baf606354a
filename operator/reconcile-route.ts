/**
 * The ProviderRoute reconciler: validates the route and checks that its
 * credential Secret and key exist and that the operator may read them, and
 * reports the result in the Ready condition. It reads the Secret only to see
 * which keys it has and never keeps or logs the credential.
 */

import type { V1Secret } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { ProviderRoute } from '../src/api/provider-route.ts';
import { EventReason, targetOf, type EventRecorder } from './events.ts';
import type { Informer } from './informer.ts';
import {
  buildConditions,
  describeKubeError,
  findCondition,
  parseResource,
  patchStatus,
  readSecret,
  sameJson,
  statusCodeOf,
  type DesiredCondition,
  type KubeClients,
  type KubeObject,
  type ResourceStatus,
} from './kube.ts';
import type { ReconcileResult } from './queue.ts';

/** Returns the path prefix the sidecar serves a route under. */
export function pathPrefixOf(route: ProviderRoute): string {
  return route.spec.pathPrefix ?? `/${route.metadata.name}`;
}

/** Orders routes so that, of two with the same path prefix, the first keeps it: the older one, then by name. */
export function compareRouteAge(a: KubeObject, b: KubeObject): number {
  const created = (object: KubeObject) => object.metadata.creationTimestamp ?? '';
  if (created(a) !== created(b)) return created(a) < created(b) ? -1 : 1;
  if (a.metadata.name === b.metadata.name) return 0;
  return a.metadata.name < b.metadata.name ? -1 : 1;
}

/**
 * Returns the name of the route that keeps the path prefix `route` also
 * claims, or undefined when `route` keeps it. Invalid routes claim nothing.
 */
export function prefixOwner(route: KubeObject, prefix: string, namespaceRoutes: readonly KubeObject[]): string | undefined {
  const claimants = namespaceRoutes
    .filter((other) => !other.metadata.deletionTimestamp)
    .filter((other) => {
      const parsed = parseResource('ProviderRoute', other);
      return parsed.ok && pathPrefixOf(parsed.value) === prefix;
    })
    .sort(compareRouteAge);
  const owner = claimants[0];
  return owner && owner.metadata.name !== route.metadata.name ? owner.metadata.name : undefined;
}

/** Checks the credential reference against the Secret as read (undefined when it does not exist). */
export function checkCredential(route: ProviderRoute, secret: V1Secret | undefined): DesiredCondition | undefined {
  const ref = route.spec.credentialSecretRef;
  if (!ref) return undefined;
  const namespace = route.metadata.namespace ?? 'default';
  if (!secret) {
    return {
      type: 'Ready',
      status: 'False',
      reason: EventReason.SecretMissing,
      message: `Secret "${ref.name}" (key "${ref.key}") not found in namespace "${namespace}"; create it with the provider credential under key "${ref.key}"`,
    };
  }
  const keys = new Set([...Object.keys(secret.data ?? {}), ...Object.keys(secret.stringData ?? {})]);
  if (!keys.has(ref.key)) {
    const present = [...keys].sort().join(', ') || 'none';
    return {
      type: 'Ready',
      status: 'False',
      reason: EventReason.SecretMissing,
      message: `Secret "${ref.name}" in namespace "${namespace}" has no key "${ref.key}" (keys: ${present}); add it or fix spec.credentialSecretRef.key`,
    };
  }
  return undefined;
}

/**
 * Builds the Ready condition of a route whose credential Secret the operator
 * may not read (HTTP 403). This happens when the chart value
 * rbac.secretNamespaces grants Secret access in other namespaces only.
 * `detail` is the API server's error, as describeKubeError returns it.
 */
export function secretForbiddenCondition(namespace: string, secretName: string, detail: string): DesiredCondition {
  return {
    type: 'Ready',
    status: 'False',
    reason: EventReason.SecretForbidden,
    message:
      `the operator may not read Secret "${secretName}" in namespace "${namespace}" (${detail}); ` +
      `add "${namespace}" to the Helm value rbac.secretNamespaces, ` +
      `or grant the operator's service account get, list and watch on Secrets in namespace "${namespace}"`,
  };
}

/** Ready reasons that a change to a Secret can clear. Secrets are not watched, so these routes are checked again after a delay. */
const SECRET_REASONS: ReadonlySet<string> = new Set([EventReason.SecretMissing, EventReason.SecretForbidden]);

export interface RouteReconcilerOptions {
  clients: KubeClients;
  routes: Informer;
  events: EventRecorder;
  log: Logger;
  /** Delay before a route whose Secret is missing or forbidden is checked again, in milliseconds. Secrets are not watched. */
  secretRecheckMs: number;
}

export class RouteReconciler {
  readonly #options: RouteReconcilerOptions;

  constructor(options: RouteReconcilerOptions) {
    this.#options = options;
  }

  async reconcile(namespace: string, name: string): Promise<ReconcileResult> {
    const { clients, routes } = this.#options;
    const object = routes.get(namespace, name);
    if (!object || object.metadata.deletionTimestamp) return;

    const ready = await this.#evaluate(object, routes.list(namespace));
    const previous = object.status as ResourceStatus | undefined;
    const status = {
      observedGeneration: object.metadata.generation,
      conditions: buildConditions(previous?.conditions, [ready], object.metadata.generation, new Date().toISOString()),
    };

    const waitsForSecret = SECRET_REASONS.has(ready.reason);
    if (!sameJson(status, previous)) {
      const updated = await patchStatus(clients, 'ProviderRoute', namespace, name, status);
      routes.update(updated);
      await this.#recordTransition(object, findCondition(previous?.conditions, 'Ready'), ready);
    } else if (waitsForSecret) {
      // The event recorder logged the Warning at warn level when the condition changed, so a repeat logs at debug only.
      this.#options.log.debug(
        { kind: 'ProviderRoute', namespace, name, reason: ready.reason, recheckInMs: this.#options.secretRecheckMs },
        'route still waits for its Secret; checking again later',
      );
    }
    return waitsForSecret ? { requeueAfterMs: this.#options.secretRecheckMs } : undefined;
  }

  async #evaluate(object: KubeObject, namespaceRoutes: KubeObject[]): Promise<DesiredCondition> {
    const parsed = parseResource('ProviderRoute', object);
    if (!parsed.ok) {
      return { type: 'Ready', status: 'False', reason: EventReason.InvalidSpec, message: `invalid ProviderRoute: ${parsed.message}` };
    }
    const route = parsed.value;
    const prefix = pathPrefixOf(route);
    const owner = prefixOwner(object, prefix, namespaceRoutes);
    if (owner !== undefined) {
      return {
        type: 'Ready',
        status: 'False',
        reason: 'PathPrefixConflict',
        message: `path prefix "${prefix}" is already served by the older ProviderRoute "${owner}"; set another spec.pathPrefix`,
      };
    }

    const ref = route.spec.credentialSecretRef;
    const namespace = object.metadata.namespace ?? 'default';
    let secret: V1Secret | undefined;
    if (ref) {
      try {
        secret = await readSecret(this.#options.clients, namespace, ref.name);
      } catch (error) {
        if (statusCodeOf(error) === 403) return secretForbiddenCondition(namespace, ref.name, describeKubeError(error));
        throw error;
      }
    }
    const credentialProblem = checkCredential(route, secret);
    if (credentialProblem) return credentialProblem;

    const credential = ref ? `; credential from Secret "${ref.name}" key "${ref.key}"` : '; no credential';
    return {
      type: 'Ready',
      status: 'True',
      reason: 'Valid',
      message: `serves ${route.spec.models.length} model(s) under ${prefix}${credential}`,
    };
  }

  /** Records a Warning when Ready turns False or changes its reason while False. */
  async #recordTransition(object: KubeObject, before: { status: string; reason: string } | undefined, after: DesiredCondition): Promise<void> {
    if (after.status !== 'False' || (before?.status === 'False' && before.reason === after.reason)) return;
    const reason = SECRET_REASONS.has(after.reason) ? (after.reason as EventReason) : EventReason.InvalidSpec;
    await this.#options.events.record(targetOf(object), 'Warning', reason, after.message);
  }
}
