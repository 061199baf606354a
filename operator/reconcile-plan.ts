/**
 * The PricePlan reconciler: compiles the plan with the rating Pricer against
 * every valid ProviderRoute of its namespace and reports the outcome in the
 * Ready condition, naming the served models the plan cannot price.
 */

import type { Logger } from 'pino';
import type { ProviderRoute } from '../src/api/provider-route.ts';
import { describeBelowCost, modelsBelowCost } from '../src/rating/margin.ts';
import { Pricer, UnknownModelError } from '../src/rating/plan.ts';
import { EventReason, targetOf, type EventRecorder } from './events.ts';
import type { Informer } from './informer.ts';
import {
  buildConditions,
  findCondition,
  parseResource,
  patchStatus,
  sameJson,
  type DesiredCondition,
  type KubeClients,
  type KubeObject,
  type ResourceStatus,
} from './kube.ts';
import type { ReconcileResult } from './queue.ts';

/** How many unpriced models the Ready message names before it only counts the rest. */
const LISTED_MODELS = 10;
/** Maximum wait before a plan whose first version starts later is checked again, so no timer runs for months. */
const MAX_EFFECTIVE_WAIT_MS = 60 * 60_000;

export interface PlanEvaluation {
  ready: DesiredCondition;
  /** The models with a rate below the provider's cost, and those rates (describeBelowCost); undefined when there are none. */
  belowCost?: string;
  /** When the first price version starts, for a plan that has none in effect yet. */
  effectiveAtMs?: number;
}

/** Evaluates a plan against the routes of its namespace at `nowMs`. */
export function evaluatePlan(object: KubeObject, namespaceRoutes: readonly KubeObject[], nowMs: number): PlanEvaluation {
  const parsed = parseResource('PricePlan', object);
  if (!parsed.ok) {
    return { ready: { type: 'Ready', status: 'False', reason: EventReason.InvalidSpec, message: `invalid PricePlan: ${parsed.message}` } };
  }
  const plan = parsed.value;
  const routes = namespaceRoutes
    .filter((route) => !route.metadata.deletionTimestamp)
    .map((route) => parseResource('ProviderRoute', route))
    .flatMap((result) => (result.ok ? [result.value] : []));

  const pricers: Array<[ProviderRoute, Pricer]> = [];
  for (const route of routes) {
    try {
      pricers.push([route, new Pricer(plan, route)]);
    } catch (error) {
      const message = `plan does not compile for ProviderRoute "${route.metadata.name}": ${(error as Error).message}`;
      return { ready: { type: 'Ready', status: 'False', reason: EventReason.InvalidSpec, message } };
    }
  }

  const starts = plan.spec.versions.map((version) => Date.parse(version.effectiveFrom));
  const firstStart = Math.min(...starts);
  if (firstStart > nowMs) {
    const message = `no price version is in effect yet; the first starts at ${new Date(firstStart).toISOString()}`;
    return { ready: { type: 'Ready', status: 'False', reason: 'NotYetEffective', message }, effectiveAtMs: firstStart };
  }

  const unpriced = unpricedModels(pricers, nowMs);
  let message =
    routes.length === 0
      ? 'compiled; no ProviderRoute in this namespace yet'
      : `compiled for ${routes.length} ProviderRoute(s) in plan currency ${plan.spec.currency}`;
  if (unpriced.length > 0) {
    const listed = unpriced.slice(0, LISTED_MODELS).join(', ');
    const more = unpriced.length > LISTED_MODELS ? ` and ${unpriced.length - LISTED_MODELS} more` : '';
    message += `; requests for these served models are rejected because the plan has no price for them: ${listed}${more}`;
  }
  const below = modelsBelowCost(plan, routes, nowMs);
  if (below.length === 0) return { ready: { type: 'Ready', status: 'True', reason: 'Valid', message } };
  const belowCost = describeBelowCost(below.slice(0, LISTED_MODELS)) + (below.length > LISTED_MODELS ? ` and ${below.length - LISTED_MODELS} more` : '');
  message +=
    `; ${below.length} model(s) have rates below the provider's cost, so calls made mostly of those tokens or units are ` +
    `charged less than they cost: ${belowCost}`;
  return { ready: { type: 'Ready', status: 'True', reason: 'Valid', message }, belowCost };
}

/** Lists "route/model" for each model a route serves that the plan cannot price now. */
function unpricedModels(pricers: Array<[ProviderRoute, Pricer]>, nowMs: number): string[] {
  const unpriced: string[] = [];
  for (const [route, pricer] of pricers) {
    for (const model of route.spec.models) {
      try {
        pricer.priceOf(model, nowMs);
      } catch (error) {
        if (!(error instanceof UnknownModelError)) throw error;
        unpriced.push(`${route.metadata.name}/${model}`);
      }
    }
  }
  return unpriced;
}

export interface PlanReconcilerOptions {
  clients: KubeClients;
  plans: Informer;
  routes: Informer;
  events: EventRecorder;
  log: Logger;
}

export class PlanReconciler {
  readonly #options: PlanReconcilerOptions;

  constructor(options: PlanReconcilerOptions) {
    this.#options = options;
  }

  async reconcile(namespace: string, name: string): Promise<ReconcileResult> {
    const { clients, plans, routes, events } = this.#options;
    const object = plans.get(namespace, name);
    if (!object || object.metadata.deletionTimestamp) return;

    const now = Date.now();
    const { ready, effectiveAtMs, belowCost } = evaluatePlan(object, routes.list(namespace), now);
    const previous = object.status as ResourceStatus | undefined;
    const status: ResourceStatus = {
      observedGeneration: object.metadata.generation,
      conditions: buildConditions(previous?.conditions, [ready], object.metadata.generation, new Date(now).toISOString()),
    };

    if (!sameJson(status, previous)) {
      const updated = await patchStatus(clients, 'PricePlan', namespace, name, status);
      plans.update(updated);
      const before = findCondition(previous?.conditions, 'Ready');
      if (ready.status === 'False' && !(before?.status === 'False' && before.reason === ready.reason)) {
        await events.record(targetOf(object), 'Warning', EventReason.InvalidSpec, ready.message);
      }
      // Only a change of the models or rates below cost is news; the rest of the message can change for other reasons.
      if (belowCost !== undefined && !before?.message?.endsWith(belowCost)) {
        await events.record(targetOf(object), 'Warning', EventReason.BelowCost, `rates below the provider's cost: ${belowCost}`);
      }
    }
    if (effectiveAtMs !== undefined) return { requeueAfterMs: Math.min(effectiveAtMs - now + 1_000, MAX_EFFECTIVE_WAIT_MS) };
    return undefined;
  }
}
