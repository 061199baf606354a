// Kubernetes Events for injection decisions, recorded on the Pod's top controller
// (such as the Deployment of a ReplicaSet's Pod), where people look with
// `kubectl describe`, or on the Pod when it has no owner.

import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { CoreV1Event, V1ObjectReference, V1OwnerReference, V1Pod } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { describeKubeError, type KubeClients } from '../kube.ts';

/** Owners above the Pod that are followed, such as ReplicaSet then Deployment. */
const MAX_OWNER_DEPTH = 2;
/** The length at which client-go cuts Event messages, kept here for the same readers. */
const MAX_MESSAGE_LENGTH = 1024;
const MAX_NAME_PREFIX_LENGTH = 200;

export type EventType = 'Normal' | 'Warning';

export interface EventRecorderOptions {
  clients: Pick<KubeClients, 'core' | 'objects'>;
  log: Logger;
  component: string;
}

/**
 * Records Events in the background, so that admission responses do not wait for them.
 * A failed write is logged and dropped. `flush` waits for writes in progress.
 */
export class EventRecorder {
  private readonly options: EventRecorderOptions;
  private readonly pending = new Set<Promise<void>>();
  private readonly instance = os.hostname();

  constructor(options: EventRecorderOptions) {
    this.options = options;
  }

  /** Starts recording an Event about a Pod that is being admitted. */
  recordForPod(pod: V1Pod, namespace: string, type: EventType, reason: string, message: string): void {
    const write = this.write(pod, namespace, type, reason, message).catch((error: unknown) => {
      this.options.log.error(
        { err: error, namespace, pod: describePod(pod), reason },
        'failed to record an injection Event',
      );
    });
    this.pending.add(write);
    void write.finally(() => this.pending.delete(write));
  }

  async flush(): Promise<void> {
    await Promise.all([...this.pending]);
  }

  private async write(pod: V1Pod, namespace: string, type: EventType, reason: string, message: string): Promise<void> {
    const target = await this.eventTarget(pod, namespace);
    const now = new Date();
    const body: CoreV1Event = {
      metadata: { name: eventName(target.name || pod.metadata?.generateName || 'pod'), namespace },
      involvedObject: target,
      type,
      reason,
      // The message names the pod when the Event is not on the named Pod itself.
      message: truncate(target.kind === 'Pod' && target.name !== '' ? message : `pod ${describePod(pod)}: ${message}`, MAX_MESSAGE_LENGTH),
      source: { component: this.options.component },
      reportingComponent: this.options.component,
      reportingInstance: this.instance,
      firstTimestamp: now,
      lastTimestamp: now,
      count: 1,
    };
    await this.options.clients.core.createNamespacedEvent({ namespace, body });
  }

  /** Returns the topmost controller owner that can be read, or the Pod itself. */
  private async eventTarget(pod: V1Pod, namespace: string): Promise<V1ObjectReference> {
    let owner = controllerOf(pod.metadata?.ownerReferences);
    if (owner === undefined) {
      const name = pod.metadata?.name ?? '';
      return { apiVersion: 'v1', kind: 'Pod', namespace, name, ...(pod.metadata?.uid ? { uid: pod.metadata.uid } : {}) };
    }

    let target = referenceTo(owner, namespace);
    for (let depth = 1; depth < MAX_OWNER_DEPTH; depth++) {
      try {
        const object = await this.options.clients.objects.read({
          apiVersion: owner.apiVersion,
          kind: owner.kind,
          metadata: { name: owner.name, namespace },
        });
        owner = controllerOf(object.metadata?.ownerReferences);
      } catch (error) {
        this.options.log.debug({ owner: target, error: describeKubeError(error) }, 'cannot read the owner; recording the Event on it');
        break;
      }
      if (owner === undefined) {
        break;
      }
      target = referenceTo(owner, namespace);
    }
    return target;
  }
}

function controllerOf(owners: readonly V1OwnerReference[] | undefined): V1OwnerReference | undefined {
  return owners?.find((owner) => owner.controller === true) ?? owners?.[0];
}

function referenceTo(owner: V1OwnerReference, namespace: string): V1ObjectReference {
  return { apiVersion: owner.apiVersion, kind: owner.kind, name: owner.name, uid: owner.uid, namespace };
}

/** Returns the Pod's name, or its generateName with `*` when the name is not generated yet. */
export function describePod(pod: V1Pod): string {
  return pod.metadata?.name ?? (pod.metadata?.generateName === undefined ? '(no name)' : `${pod.metadata.generateName}*`);
}

/** Returns a unique Event name `<object>.<hex>`, the form client-go uses, cut to a valid DNS subdomain. */
export function eventName(objectName: string): string {
  const prefix = objectName.toLowerCase().replace(/[^a-z0-9.-]/g, '-').slice(0, MAX_NAME_PREFIX_LENGTH).replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '');
  const suffix = `${Date.now().toString(16)}${randomBytes(4).toString('hex')}`;
  return `${prefix === '' ? 'pod' : prefix}.${suffix}`;
}

function truncate(text: string, maxLength: number): string {
  return text.length <= maxLength ? text : `${text.slice(0, maxLength - 3)}...`;
}
