/**
 * Kubernetes Events (core/v1) about Tollgate resources, with constant
 * reasons, so that `kubectl describe` and alerting can match on them.
 * Repeats of the same event within a window update the count of the first
 * instead of creating another object.
 */

import { randomBytes } from 'node:crypto';
import type { CoreV1Event } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { MERGE_PATCH, describeKubeError, isNotFound, type KubeClients, type KubeObject } from './kube.ts';

/** Event reasons used by the operator and the admission webhook. */
export const EventReason = {
  GrantApplied: 'GrantApplied',
  GrantRejected: 'GrantRejected',
  GrantExpired: 'GrantExpired',
  GrantLapsed: 'GrantLapsed',
  LowBalance: 'LowBalance',
  Exhausted: 'Exhausted',
  Ready: 'Ready',
  LedgerClosed: 'LedgerClosed',
  LedgerReopened: 'LedgerReopened',
  LedgerCurrencyMismatch: 'LedgerCurrencyMismatch',
  InvalidSpec: 'InvalidSpec',
  BelowCost: 'BelowCost',
  PricePlanNotFound: 'PricePlanNotFound',
  SecretMissing: 'SecretMissing',
  SecretForbidden: 'SecretForbidden',
  LedgerUnavailable: 'LedgerUnavailable',
  Injected: 'Injected',
  InjectionSkipped: 'InjectionSkipped',
} as const;

export type EventReason = (typeof EventReason)[keyof typeof EventReason];
export type EventType = 'Normal' | 'Warning';

/** The object an event is about. */
export interface EventTarget {
  apiVersion: string;
  kind: string;
  namespace: string;
  name: string;
  uid?: string | undefined;
  resourceVersion?: string | undefined;
}

/** Messages are cut at 1 KiB, the limit events.k8s.io/v1 sets for an event's note. */
const MAX_MESSAGE_LENGTH = 1024;
const DEFAULT_DEDUPE_WINDOW_MS = 10 * 60_000;

export function targetOf(object: KubeObject): EventTarget {
  return {
    apiVersion: object.apiVersion,
    kind: object.kind,
    namespace: object.metadata.namespace ?? 'default',
    name: object.metadata.name,
    uid: object.metadata.uid,
    resourceVersion: object.metadata.resourceVersion,
  };
}

/** Builds a new core/v1 Event for the target. */
export function buildEvent(
  target: EventTarget,
  type: EventType,
  reason: EventReason,
  message: string,
  source: { component: string; instance: string },
  now: Date,
): CoreV1Event {
  const suffix = `${now.getTime().toString(16)}${randomBytes(4).toString('hex')}`;
  return {
    metadata: { name: `${target.name}.${suffix}`, namespace: target.namespace },
    involvedObject: {
      apiVersion: target.apiVersion,
      kind: target.kind,
      namespace: target.namespace,
      name: target.name,
      uid: target.uid,
      resourceVersion: target.resourceVersion,
    },
    type,
    reason,
    message: message.length > MAX_MESSAGE_LENGTH ? `${message.slice(0, MAX_MESSAGE_LENGTH - 3)}...` : message,
    count: 1,
    firstTimestamp: now,
    lastTimestamp: now,
    source: { component: source.component },
    reportingComponent: source.component,
    reportingInstance: source.instance,
  };
}

export interface EventRecorderOptions {
  clients: KubeClients;
  log: Logger;
  /** Component name shown as the event's source, such as "tollgate-operator". */
  component: string;
  /** This replica's identity. */
  instance: string;
  dedupeWindowMs?: number;
}

export class EventRecorder {
  readonly #options: EventRecorderOptions;
  readonly #recent = new Map<string, { name: string; namespace: string; count: number; at: number }>();

  constructor(options: EventRecorderOptions) {
    this.#options = options;
  }

  /** Records an event; logs and swallows API errors, because a missing event must not fail a reconcile. */
  async record(target: EventTarget, type: EventType, reason: EventReason, message: string): Promise<void> {
    const { clients, log } = this.#options;
    const now = new Date();
    const window = this.#options.dedupeWindowMs ?? DEFAULT_DEDUPE_WINDOW_MS;
    const dedupeKey = `${target.namespace}/${target.kind}/${target.name}/${target.uid ?? ''}|${type}|${reason}|${message}`;
    this.#prune(now.getTime() - window);

    try {
      const recent = this.#recent.get(dedupeKey);
      if (recent && now.getTime() - recent.at < window && (await this.#bump(recent, now))) return;

      const event = buildEvent(target, type, reason, message, this.#options, now);
      await clients.core.createNamespacedEvent({ namespace: target.namespace, body: event });
      this.#recent.set(dedupeKey, { name: event.metadata.name!, namespace: target.namespace, count: 1, at: now.getTime() });
      const fields = { kind: target.kind, namespace: target.namespace, name: target.name, reason, type };
      if (type === 'Warning') log.warn(fields, message);
      else log.info(fields, message);
    } catch (error) {
      log.error({ err: describeKubeError(error), kind: target.kind, namespace: target.namespace, name: target.name, reason }, 'recording an event failed');
    }
  }

  /** Raises the count of an event created earlier; returns false when it no longer exists. */
  async #bump(recent: { name: string; namespace: string; count: number; at: number }, now: Date): Promise<boolean> {
    try {
      await this.#options.clients.core.patchNamespacedEvent(
        { name: recent.name, namespace: recent.namespace, body: { count: recent.count + 1, lastTimestamp: now.toISOString() } },
        MERGE_PATCH,
      );
    } catch (error) {
      if (isNotFound(error)) return false;
      throw error;
    }
    recent.count += 1;
    recent.at = now.getTime();
    return true;
  }

  #prune(before: number): void {
    for (const [key, recent] of this.#recent) {
      if (recent.at < before) this.#recent.delete(key);
    }
  }
}
