/**
 * Leader election through a coordination.k8s.io/v1 Lease, in the manner of
 * client-go's leaderelection package:
 *
 * - A candidate takes the Lease when it has no holder, or when its record
 *   (holder, renew time, transitions) has not changed for leaseDuration.
 *   The candidate measures that time on its own clock from when it last saw
 *   the record change, so clock skew between replicas does not matter.
 * - The leader renews every retryPeriod. When no renewal succeeded for
 *   renewDeadline, which must be shorter than leaseDuration, it steps down
 *   before another replica may take over.
 * - Every write carries the resourceVersion read just before, so two
 *   candidates cannot both win.
 * - `stop({ release: true })` clears the holder, so that another replica
 *   takes over at its next retry instead of after leaseDuration.
 */

import { V1MicroTime, type V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { describeKubeError, isConflict, isNotFound, missingNamespaceOf, type KubeClients } from './kube.ts';

export interface LeaderElectionOptions {
  clients: KubeClients;
  namespace: string;
  /** Name of the Lease, such as "tollgate-operator". */
  name: string;
  /** This replica's identity, unique among replicas (the Pod name in a cluster). */
  identity: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  /** Logger that already names this replica's identity, because the elector adds only the Lease to each line. */
  log: Logger;
  /** Called when this replica becomes the leader. */
  onStartedLeading: () => void;
  /** Called when this replica stops being the leader: lost the Lease, or stopped. */
  onStoppedLeading: () => void;
}

export type LeaseDecision = 'acquire' | 'renew' | 'held';

/** Decides what a candidate may do at `nowMs` with a Lease record it first observed at `observedAtMs` (both on its own clock). */
export function decideLease(
  holder: string | undefined,
  leaseDurationSeconds: number | undefined,
  identity: string,
  observedAtMs: number,
  nowMs: number,
): LeaseDecision {
  if (holder === identity) return 'renew';
  if (!holder) return 'acquire';
  const durationMs = (leaseDurationSeconds ?? 0) * 1000;
  return observedAtMs + durationMs <= nowMs ? 'acquire' : 'held';
}

/** Throws when the timings cannot give one leader at a time. */
export function validateLeaseTimings(leaseDurationMs: number, renewDeadlineMs: number, retryPeriodMs: number): void {
  if (!(retryPeriodMs > 0 && renewDeadlineMs > retryPeriodMs && leaseDurationMs > renewDeadlineMs)) {
    throw new RangeError(
      `invalid lease timings: need leaseDuration (${leaseDurationMs} ms) > renewDeadline (${renewDeadlineMs} ms) > retryPeriod (${retryPeriodMs} ms) > 0`,
    );
  }
  if (leaseDurationMs % 1000 !== 0) {
    throw new RangeError(`invalid lease duration ${leaseDurationMs} ms: the Lease stores whole seconds`);
  }
}

export class LeaderElector {
  readonly #options: LeaderElectionOptions;
  readonly #log: Logger;
  #leader = false;
  #stopped = false;
  #lastRenewMs = 0;
  /** The last Lease record seen and when it was first seen in that state, on this replica's clock. */
  #observedRecord = '';
  #observedAtMs = 0;
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;
  /** Description of the last failed Lease attempt, so that a repeat of the same failure is not logged again at warn. */
  #lastFailure: string | undefined;
  /** Failed attempts since the last success. */
  #failedAttempts = 0;

  constructor(options: LeaderElectionOptions) {
    validateLeaseTimings(options.leaseDurationMs, options.renewDeadlineMs, options.retryPeriodMs);
    this.#options = options;
    this.#log = options.log.child({ lease: `${options.namespace}/${options.name}` });
  }

  get isLeader(): boolean {
    return this.#leader;
  }

  start(): void {
    this.#loop ??= this.#run();
  }

  /**
   * Stops campaigning. A leader steps down first (onStoppedLeading runs) and,
   * with `release`, clears the Lease holder. Without it the Lease stays until
   * it expires, as after a crash.
   */
  async stop(options: { release: boolean }): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.#loop;
    if (this.#leader) this.#stepDown('stopped');
    // The last attempt may have taken the Lease just as the loop stopped, so release checks the holder, not #leader.
    if (options.release) await this.#release();
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      const started = Date.now();
      const outcome = await this.#tryAcquireOrRenew();
      if (this.#stopped) return;
      if (outcome !== 'failed') this.#recovered();

      if (outcome === 'leading') {
        this.#lastRenewMs = started;
        if (!this.#leader) {
          this.#leader = true;
          this.#log.info('became the leader');
          this.#options.onStartedLeading();
        }
      } else if (this.#leader) {
        if (outcome === 'lost') this.#stepDown('another replica holds the lease');
        else if (Date.now() - this.#lastRenewMs >= this.#options.renewDeadlineMs) this.#stepDown('could not renew before the renew deadline');
      }

      // Candidates add up to 20 % jitter, so that replicas started together do not retry in step.
      const jitter = this.#leader ? 0 : Math.random() * 0.2 * this.#options.retryPeriodMs;
      await this.#sleep(this.#options.retryPeriodMs + jitter);
    }
  }

  #stepDown(reason: string): void {
    this.#leader = false;
    if (this.#stopped) this.#log.info({ reason }, 'stopped being the leader');
    else this.#log.warn({ reason }, 'stopped being the leader');
    this.#options.onStoppedLeading();
  }

  /** Returns 'leading' when this replica holds the Lease now, 'lost' when another does, 'failed' on an API error. */
  async #tryAcquireOrRenew(): Promise<'leading' | 'lost' | 'failed'> {
    const { clients, namespace, name, identity } = this.#options;
    const leaseDurationSeconds = this.#options.leaseDurationMs / 1000;
    try {
      let lease: V1Lease;
      try {
        lease = await this.#withDeadline(clients.coordination.readNamespacedLease({ namespace, name }));
      } catch (error) {
        if (!isNotFound(error)) throw error;
        const now = new V1MicroTime();
        const created = await this.#withDeadline(
          clients.coordination.createNamespacedLease({
            namespace,
            body: {
              metadata: { name, namespace },
              spec: { holderIdentity: identity, leaseDurationSeconds, acquireTime: now, renewTime: now, leaseTransitions: 0 },
            },
          }),
        );
        this.#observe(created, Date.now());
        return 'leading';
      }

      const nowMs = Date.now();
      this.#observe(lease, nowMs);
      const spec = lease.spec ?? {};
      const decision = decideLease(spec.holderIdentity, spec.leaseDurationSeconds, identity, this.#observedAtMs, nowMs);
      if (decision === 'held') return 'lost';

      const now = new V1MicroTime(nowMs);
      const renewing = decision === 'renew';
      const replaced = await this.#withDeadline(
        clients.coordination.replaceNamespacedLease({
          namespace,
          name,
          body: {
            metadata: { name, namespace, resourceVersion: lease.metadata?.resourceVersion },
            spec: {
              holderIdentity: identity,
              leaseDurationSeconds,
              acquireTime: renewing && spec.acquireTime ? new V1MicroTime(String(spec.acquireTime)) : now,
              renewTime: now,
              leaseTransitions: (spec.leaseTransitions ?? 0) + (renewing ? 0 : 1),
            },
          },
        }),
      );
      this.#observe(replaced, Date.now());
      if (!renewing) this.#log.info({ previousHolder: spec.holderIdentity ?? null }, 'acquired the lease');
      return 'leading';
    } catch (error) {
      if (isConflict(error)) return this.#leader ? 'failed' : 'lost';
      this.#reportFailure(error);
      return 'failed';
    }
  }

  /**
   * Logs a failed Lease attempt at warn the first time the failure occurs, and
   * repeats of the same failure, one per retry period, only at debug.
   */
  #reportFailure(error: unknown): void {
    const description = describeKubeError(error);
    this.#failedAttempts += 1;
    if (description === this.#lastFailure) {
      this.#log.debug({ err: description, failedAttempts: this.#failedAttempts }, 'the lease attempt failed again');
      return;
    }
    this.#lastFailure = description;

    const namespace = missingNamespaceOf(error);
    if (namespace !== undefined && namespace === this.#options.namespace) {
      this.#log.warn(
        { err: description, namespace },
        `the Lease namespace "${namespace}" does not exist, so this replica cannot take part in leader election; ` +
          `create it (kubectl create namespace ${namespace}), or set --namespace or TOLLGATE_NAMESPACE to an existing namespace. ` +
          'The same failure is logged again at debug only',
      );
      return;
    }
    this.#log.warn({ err: description }, 'reading or updating the lease failed. The same failure is logged again at debug only');
  }

  #recovered(): void {
    if (this.#lastFailure === undefined) return;
    this.#log.info({ failedAttempts: this.#failedAttempts }, 'reading and updating the lease succeeded again');
    this.#lastFailure = undefined;
    this.#failedAttempts = 0;
  }

  async #release(): Promise<void> {
    const { clients, namespace, name, identity } = this.#options;
    try {
      const lease = await clients.coordination.readNamespacedLease({ namespace, name });
      if (lease.spec?.holderIdentity !== identity) return;
      const now = new V1MicroTime();
      await clients.coordination.replaceNamespacedLease({
        namespace,
        name,
        body: {
          metadata: { name, namespace, resourceVersion: lease.metadata?.resourceVersion },
          // Without a holder, any candidate acquires at its next retry.
          spec: { leaseDurationSeconds: 1, acquireTime: now, renewTime: now, leaseTransitions: lease.spec?.leaseTransitions ?? 0 },
        },
      });
      this.#log.info('released the lease');
    } catch (error) {
      this.#log.warn({ err: describeKubeError(error) }, 'releasing the lease failed; another replica takes over once it expires');
    }
  }

  #observe(lease: V1Lease, nowMs: number): void {
    const spec = lease.spec ?? {};
    const record = JSON.stringify([spec.holderIdentity ?? '', String(spec.renewTime ?? ''), spec.leaseTransitions ?? 0]);
    if (record !== this.#observedRecord) {
      this.#observedRecord = record;
      this.#observedAtMs = nowMs;
    }
  }

  /** Fails a Lease call that takes longer than the renew deadline, so a hung request cannot keep a stale leader. */
  #withDeadline<T>(call: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`lease request timed out after ${this.#options.renewDeadlineMs} ms`)), this.#options.renewDeadlineMs);
    });
    return Promise.race([call, deadline]).finally(() => clearTimeout(timer));
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
    });
  }
}
