import { effectiveFromNanos, type PricePlan } from '../api/price-plan.ts';
import type { ProviderRoute } from '../api/provider-route.ts';
import { compileRates, percentToPpm, type RateCard } from './rates.ts';
import type { Price } from './rating.ts';
import { resolveModel } from './models.ts';

export class UnknownModelError extends Error {
  override readonly name = 'UnknownModelError';
  readonly model: string;

  constructor(model: string, message: string) {
    super(message);
    this.model = model;
  }
}

interface CompiledVersion {
  name: string;
  effectiveFromMs: number;
  effectiveFromNanos: bigint;
  markupPpm: bigint | undefined;
  models: Map<string, RateCard>;
}

/** Orders versions by their exact effectiveFrom instant, latest first. */
function latestFirst(a: CompiledVersion, b: CompiledVersion): number {
  if (a.effectiveFromNanos === b.effectiveFromNanos) return 0;
  return a.effectiveFromNanos > b.effectiveFromNanos ? -1 : 1;
}

/** A price plan compiled for one provider route: resolves a model to its Price at a moment. */
export class Pricer {
  readonly currency: string;
  private readonly versions: CompiledVersion[];
  private readonly costs: Map<string, RateCard>;
  private readonly served: Map<string, true>;
  private readonly defaultCharge: RateCard | undefined;
  private readonly plan: PricePlan;
  private readonly route: ProviderRoute;

  constructor(plan: PricePlan, route: ProviderRoute) {
    this.plan = plan;
    this.route = route;
    const planName = `${plan.metadata.namespace ?? 'default'}/${plan.metadata.name}`;
    this.currency = plan.spec.currency;

    // Sorted by the exact instant, latest first, so that of two versions less than a
    // millisecond apart the later one wins from that millisecond on.
    this.versions = plan.spec.versions
      .map((version, index) => ({
        name: version.name ?? version.effectiveFrom,
        effectiveFromMs: Date.parse(version.effectiveFrom),
        effectiveFromNanos: effectiveFromNanos(version.effectiveFrom),
        markupPpm:
          version.markupPercent === undefined
            ? undefined
            : percentToPpm(version.markupPercent, `PricePlan ${planName} versions[${index}].markupPercent`),
        models: new Map(
          Object.entries(version.models).map(([model, rates]) => [
            model,
            compileRates(rates, `PricePlan ${planName} versions[${index}].models["${model}"]`),
          ]),
        ),
      }))
      .sort(latestFirst);

    const routeName = `${route.metadata.namespace ?? 'default'}/${route.metadata.name}`;
    this.costs = new Map(
      Object.entries(route.spec.costs).map(([model, rates]) => [
        model,
        compileRates(rates, `ProviderRoute ${routeName} costs["${model}"]`),
      ]),
    );
    this.served = new Map(route.spec.models.map((model) => [model, true as const]));

    const unknown = plan.spec.unknownModels;
    this.defaultCharge =
      unknown.policy === 'default' && unknown.defaultRates
        ? compileRates(unknown.defaultRates, `PricePlan ${planName} unknownModels.defaultRates`)
        : undefined;
  }

  /** Resolves the price of `model` at `atMs`; throws UnknownModelError naming the model, route and plan. */
  priceOf(model: string, atMs: number): Price {
    const version = this.versions.find((v) => v.effectiveFromMs <= atMs);
    if (!version) {
      const first = this.versions.at(-1)?.effectiveFromMs;
      throw new UnknownModelError(
        model,
        `price plan "${this.plan.metadata.name}" has no version in effect yet (the earliest starts ${first === undefined ? 'never' : new Date(first).toISOString()}); add a version with an earlier effectiveFrom`,
      );
    }

    if (!resolveModel(model, this.served) && !this.defaultCharge) {
      throw new UnknownModelError(
        model,
        `model "${model}" is not served by provider route "${this.route.metadata.name}"; add it to the route's spec.models or use one of: ${[...this.served.keys()].join(', ')}`,
      );
    }

    const explicit = resolveModel(model, version.models);
    const cost = resolveModel(model, this.costs);
    if (explicit) {
      // NOTE: without a provider cost for the model, the cost side equals the charge, so its margin reads as zero.
      return { model: explicit.id, version: version.name, cost: cost?.value ?? explicit.value, charge: explicit.value, markupPpm: 0n };
    }
    if (cost && version.markupPpm !== undefined) {
      return { model: cost.id, version: version.name, cost: cost.value, charge: undefined, markupPpm: version.markupPpm };
    }
    if (this.defaultCharge) {
      return { model, version: version.name, cost: cost?.value ?? this.defaultCharge, charge: this.defaultCharge, markupPpm: 0n };
    }
    throw new UnknownModelError(
      model,
      `model "${model}" has no price in plan "${this.plan.metadata.name}" (version ${version.name}); add rates for it under spec.versions[].models, set markupPercent with a provider cost for it on route "${this.route.metadata.name}", or set spec.unknownModels.policy to "default" with defaultRates`,
    );
  }
}
