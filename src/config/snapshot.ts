import { createHash } from 'node:crypto';
import type { PricePlan } from '../api/price-plan.ts';
import type { ProviderRoute } from '../api/provider-route.ts';
import type { Wallet } from '../api/wallet.ts';
import type { SpendLimits, WalletKey } from '../ledger/ledger.ts';
import { parseAmount } from '../money/money.ts';
import { Pricer } from '../rating/plan.ts';
import type { ResourceSet } from './manifests.ts';
import { stableJson } from './stable-json.ts';

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export interface CompiledRoute {
  namespace: string;
  name: string;
  protocol: ProviderRoute['spec']['protocol'];
  /** Path prefix such as "/openai". */
  prefix: string;
  /** Upstream origin ("https://api.openai.com") and path prefix ("" or "/v1"). */
  origin: string;
  basePath: string;
  /** Host name and port of the origin, for the server.address and server.port span attributes. */
  host: string;
  port: number;
  credential: string | undefined;
  /** Azure deployment names with the base model each runs; empty for the other protocols. */
  deployments: ReadonlyMap<string, string>;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  resource: ProviderRoute;
}

export interface CompiledWallet {
  key: WalletKey;
  id: string;
  currency: string;
  planName: string;
  limits: SpendLimits;
  lowBalanceThreshold: bigint | undefined;
  endUsersAllowed: boolean;
  endUserPrefix: string;
  resource: Wallet;
}

/** Finds the credential of a route, for example in a mounted Secret file. */
export type CredentialResolver = (route: ProviderRoute) => string | undefined;

function keyOf(namespace: string | undefined, name: string): string {
  return `${namespace ?? 'default'}/${name}`;
}

/**
 * Everything a sidecar needs, compiled once per configuration change: routes
 * by path prefix, wallets by id, and a Pricer per (plan, route) pair. Request
 * handling only reads maps from it.
 */
export class Snapshot {
  readonly version: string;
  readonly routes = new Map<string, CompiledRoute>();
  readonly wallets = new Map<string, CompiledWallet>();
  readonly resources: ResourceSet;
  private readonly pricers = new Map<string, Pricer>();
  private readonly plans = new Map<string, PricePlan>();

  constructor(resources: ResourceSet, credentialOf: CredentialResolver) {
    this.resources = resources;
    this.version = versionOf(resources);

    for (const plan of resources.plans) this.plans.set(keyOf(plan.metadata.namespace, plan.metadata.name), plan);
    for (const route of resources.routes) this.addRoute(route, credentialOf(route));
    for (const wallet of resources.wallets) this.addWallet(wallet);
  }

  private addRoute(route: ProviderRoute, credential: string | undefined): void {
    const prefix = route.spec.pathPrefix ?? `/${route.metadata.name}`;
    const existing = this.routes.get(prefix);
    if (existing) {
      throw new ConfigError(
        `provider routes "${existing.name}" and "${route.metadata.name}" both serve path prefix "${prefix}"; give one of them another spec.pathPrefix`,
      );
    }
    const url = new URL(route.spec.baseURL);
    const defaultPort = url.protocol === 'https:' ? 443 : 80;
    this.routes.set(prefix, {
      namespace: route.metadata.namespace ?? 'default',
      name: route.metadata.name,
      protocol: route.spec.protocol,
      prefix,
      origin: url.origin,
      basePath: url.pathname.replace(/\/+$/, ''),
      host: url.hostname,
      port: url.port === '' ? defaultPort : Number(url.port),
      credential,
      deployments: new Map((route.spec.deployments ?? []).map((deployment) => [deployment.name, deployment.model])),
      connectTimeoutMs: route.spec.timeouts.connectSeconds * 1000,
      requestTimeoutMs: route.spec.timeouts.requestSeconds * 1000,
      resource: route,
    });
  }

  private addWallet(wallet: Wallet): void {
    const namespace = wallet.metadata.namespace ?? 'default';
    const id = keyOf(namespace, wallet.metadata.name);
    const plan = this.plans.get(keyOf(namespace, wallet.spec.pricePlanRef.name));
    if (!plan) {
      throw new ConfigError(
        `wallet "${id}" refers to price plan "${wallet.spec.pricePlanRef.name}", which does not exist in namespace "${namespace}"; create it or fix spec.pricePlanRef.name`,
      );
    }
    if (plan.spec.currency !== wallet.spec.currency) {
      throw new ConfigError(
        `wallet "${id}" is in ${wallet.spec.currency} but its price plan "${plan.metadata.name}" is in ${plan.spec.currency}; use a plan in the wallet's currency`,
      );
    }
    const money = (value: string | undefined, field: string) => (value === undefined ? undefined : parseAmount(value, `wallet ${id} ${field}`));
    const limits: SpendLimits = {};
    const maxPerRequest = money(wallet.spec.limits?.maxPerRequest, 'spec.limits.maxPerRequest');
    const dailyCap = money(wallet.spec.limits?.daily, 'spec.limits.daily');
    const monthlyCap = money(wallet.spec.limits?.monthly, 'spec.limits.monthly');
    if (maxPerRequest !== undefined) limits.maxPerRequest = maxPerRequest;
    if (dailyCap !== undefined) limits.dailyCap = dailyCap;
    if (monthlyCap !== undefined) limits.monthlyCap = monthlyCap;

    this.wallets.set(id, {
      key: { namespace, name: wallet.metadata.name },
      id,
      currency: wallet.spec.currency,
      planName: plan.metadata.name,
      limits,
      lowBalanceThreshold: money(wallet.spec.lowBalanceThreshold, 'spec.lowBalanceThreshold'),
      endUsersAllowed: wallet.spec.endUsers?.allowed ?? false,
      endUserPrefix: wallet.spec.endUsers?.prefix ?? `${wallet.metadata.name}-`,
      resource: wallet,
    });
  }

  /** Returns the Pricer for a wallet's plan on a route, compiling it on first use. */
  pricerFor(wallet: CompiledWallet, route: CompiledRoute): Pricer {
    const key = `${wallet.key.namespace}/${wallet.planName}|${route.namespace}/${route.name}`;
    let pricer = this.pricers.get(key);
    if (!pricer) {
      const plan = this.plans.get(keyOf(wallet.key.namespace, wallet.planName))!;
      pricer = new Pricer(plan, route.resource);
      this.pricers.set(key, pricer);
    }
    return pricer;
  }

  /** Compiles every (plan, route) pair now, so that a bad rate fails at load time instead of on a request. */
  precompile(): void {
    for (const wallet of this.wallets.values()) {
      for (const route of this.routes.values()) this.pricerFor(wallet, route);
    }
  }
}

/** Computes a short content digest of the resources' specs, stable across key order. */
function versionOf(resources: ResourceSet): string {
  const hash = createHash('sha256');
  const specs = [...resources.routes, ...resources.plans, ...resources.wallets]
    .map((r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}=${stableJson(r.spec)}`)
    .sort();
  for (const spec of specs) hash.update(spec).update('\n');
  return hash.digest('hex').slice(0, 12);
}

/** Finds credentials among Secret manifests of the same set (local mode). */
export function secretsResolver(resources: ResourceSet): CredentialResolver {
  return (route) => {
    const ref = route.spec.credentialSecretRef;
    if (!ref) return undefined;
    const secret = resources.secrets.find((s) => s.name === ref.name && s.namespace === (route.metadata.namespace ?? 'default'));
    return secret?.data[ref.key];
  };
}
