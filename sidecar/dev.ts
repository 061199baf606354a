import type { ConnectionOptions } from 'node:tls';
import type { Logger } from 'pino';
import type { ProviderRoute } from '../src/api/provider-route.ts';
import { loadManifests, type ResourceSet } from '../src/config/manifests.ts';
import { secretsResolver, type CredentialResolver } from '../src/config/snapshot.ts';
import { GrantExpiredError, LedgerUnavailableError, type Ledger, type WalletKey } from '../src/ledger/ledger.ts';
import { MemoryLedger } from '../src/ledger/memory.ts';
import { RedisLedger } from '../src/ledger/redis.ts';
import { REDIS_TLS_OPTIONS, watchRedisTls } from '../src/ledger/redis-tls.ts';
import { DEFAULT_SETTLED_RETENTION_MS } from '../src/ledger/retention.ts';
import { formatAmount, parseAmount } from '../src/money/money.ts';
import { describeBelowCost, modelsBelowCost, type ModelBelowCost } from '../src/rating/margin.ts';
import { startSimulator } from '../src/simulator/index.ts';
import { createSidecarMetrics } from '../src/telemetry/metrics.ts';
import { startTelemetry } from '../src/telemetry/tracing.ts';
import { compileSnapshot, ManifestConfig } from './config-source.ts';
import { createSidecar, DEFAULT_SIDECAR_OPTIONS, type Sidecar, type SidecarOptions } from './server.ts';

export interface DevOptions {
  /** Folder or file of manifests (Wallet, PricePlan, ProviderRoute, Secret). */
  manifests: string;
  host: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** Redis URL of the ledger; the in-memory ledger when undefined. */
  redisUrl: string | undefined;
  /** TLS settings of the Redis connection from loadRedisTls, whose files dev reads again while it runs; Node.js's defaults when undefined. */
  redisTls?: ConnectionOptions | undefined;
  /** The wallet that pays when a request names none ("namespace/name" or "name"). */
  wallet: string | undefined;
  /** How long the ledger keeps settled requests, in milliseconds; the ledger's default (7 days) when undefined. */
  settledRetentionMs?: number | undefined;
  /** How long a Redis ledger operation waits for a reply, in milliseconds; RedisLedger's default (2 s) when undefined. */
  ledgerTimeoutMs?: number | undefined;
  /** File that keeps queued commits across a restart (see CommitJournal); in memory only when undefined. */
  commitJournal?: string | undefined;
  /** Environment that may hold provider keys (OPENAI_API_KEY, AZURE_OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY). */
  env: NodeJS.ProcessEnv;
  log: Logger;
  /** Whether to reload manifests when they change. */
  watch: boolean;
  sidecar?: Partial<SidecarOptions>;
}

export interface DevServer extends Sidecar {
  url: string;
  simulatorUrl: string | undefined;
  /** Routes that were pointed at the simulator because they had no credential. */
  simulated: string[];
  ledger: Ledger;
  config: ManifestConfig;
  close(): Promise<void>;
}

const KEY_VARIABLES: Record<string, string> = {
  openai: 'OPENAI_API_KEY',
  'openai-compatible': 'OPENAI_API_KEY',
  'azure-openai': 'AZURE_OPENAI_API_KEY',
  anthropic: 'ANTHROPIC_API_KEY',
  gemini: 'GEMINI_API_KEY',
};
const SIMULATOR_KEY = 'tollgate-simulator-key';

/**
 * Entries per wallet that dev's in-memory ledger keeps in its log before it
 * folds the older half into the wallet's checkpoint, an estimated 3 MB per
 * wallet. Nothing in local mode reads old entries except verify.
 */
const DEV_MAX_LOG_ENTRIES = 10_000;

/**
 * Starts local mode: the sidecar on manifests from disk, the in-memory or a
 * Redis ledger, and the provider simulator for every route that has no
 * credential, neither in a Secret manifest nor in the environment.
 */
export async function startDev(options: DevOptions): Promise<DevServer> {
  // What startup has opened so far, closed in reverse when a later step fails, so that a
  // failed start exits instead of leaving a simulator or a Redis connection running.
  const opened: (() => Promise<void> | void)[] = [];
  try {
    return await startDevSteps(options, opened);
  } catch (error) {
    for (const close of opened.reverse()) {
      try {
        await close();
      } catch (closeError) {
        options.log.warn({ err: closeError }, 'failed to close a resource after a failed start');
      }
    }
    throw error;
  }
}

async function startDevSteps(options: DevOptions, opened: (() => Promise<void> | void)[]): Promise<DevServer> {
  const { log } = options;
  const simulated: string[] = [];
  let simulator: Awaited<ReturnType<typeof startSimulator>> | undefined;

  const credentialOf = (resources: ResourceSet): CredentialResolver => {
    const fromSecrets = secretsResolver(resources);
    // An empty variable counts as unset, so `OPENAI_API_KEY= tollgate dev` uses the simulator instead of calling the provider with no key.
    return (route: ProviderRoute) => fromSecrets(route) ?? (options.env[KEY_VARIABLES[route.spec.protocol] ?? ''] || undefined);
  };

  const initial = await loadManifests(options.manifests);
  if (initial.routes.some((route) => credentialOf(initial)(route) === undefined)) {
    simulator = await startSimulator({ host: '127.0.0.1', port: 0, expectedKey: SIMULATOR_KEY });
    opened.push(() => simulator!.close());
  }

  // Routes without a credential are pointed at the simulator before the snapshot is compiled.
  const compile = (resources: ResourceSet) => {
    const resolve = credentialOf(resources);
    const credentials = new Map<ProviderRoute, string | undefined>();
    for (const route of resources.routes) {
      let credential = resolve(route);
      if (credential === undefined && simulator) {
        route.spec.baseURL = simulator.url;
        credential = SIMULATOR_KEY;
        if (!simulated.includes(route.metadata.name)) simulated.push(route.metadata.name);
      }
      credentials.set(route, credential);
    }
    return compileSnapshot(resources, (route) => credentials.get(route));
  };
  const ledgerOptions = options.settledRetentionMs === undefined ? {} : { settledRetentionMs: options.settledRetentionMs };
  const ledger: Ledger = options.redisUrl
    ? new RedisLedger(options.redisUrl, { ...ledgerOptions, timeoutMs: options.ledgerTimeoutMs, tls: options.redisTls, tlsSettingNames: REDIS_TLS_OPTIONS, logger: log })
    : new MemoryLedger({ ...ledgerOptions, maxLogEntries: DEV_MAX_LOG_ENTRIES });
  opened.push(() => ledger.quit());
  const stopTlsWatch = options.redisTls === undefined ? undefined : watchRedisTls(options.redisTls, log);
  opened.push(async () => stopTlsWatch?.());
  // Grants added to the manifests while it runs are credited before the new configuration serves.
  const credited = new CreditedGrants();
  const margins = new MarginWarnings();
  const config = await ManifestConfig.load(options.manifests, compile, log, (snapshot) => {
    margins.check(snapshot.resources, log);
    return applyGrants(ledger, snapshot.resources, log, credited);
  });
  opened.push(() => config.close());
  margins.check(config.current().resources, log);
  await applyGrants(ledger, config.current().resources, log, credited);

  const stopTelemetry = await startTelemetry('tollgate-dev', log, options.env);
  opened.push(stopTelemetry);

  const defaultWallet = qualify(options.wallet ?? onlyWallet(config.current().resources), 'default');
  const metrics = createSidecarMetrics();
  const sidecarOptions: SidecarOptions = {
    ...DEFAULT_SIDECAR_OPTIONS,
    walletPolicy: { defaultWallet, allowWalletHeader: true },
    // Queued commits are kept no longer than the ledger keeps the records they may settle.
    settledRetentionMs: options.settledRetentionMs ?? DEFAULT_SETTLED_RETENTION_MS,
    commitJournal: options.commitJournal,
    ...options.sidecar,
  };
  const sidecar = createSidecar(config, ledger, metrics, sidecarOptions, log);
  opened.push(async () => {
    await sidecar.app.close();
    await sidecar.proxy.close();
  });
  const address = await sidecar.app.listen({ host: options.host, port: options.port });
  if (options.watch) config.watch();

  const sweeper = setInterval(() => void sweepWallets(ledger, [...config.current().wallets.values()], log), SWEEP_INTERVAL_MS);
  sweeper.unref();

  return {
    ...sidecar,
    url: address,
    simulatorUrl: simulator?.url,
    simulated,
    ledger,
    config,
    async close() {
      clearInterval(sweeper);
      stopTlsWatch?.();
      config.close();
      await sidecar.app.close();
      await sidecar.proxy.close();
      await ledger.quit();
      await simulator?.close();
      await stopTelemetry();
    },
  };
}

/** How often local mode settles expired holds and grants of every wallet. */
const SWEEP_INTERVAL_MS = 30_000;

/**
 * Settles the expired holds and grants of each wallet, all at once. Failures
 * because the ledger is unavailable are logged as one warning for the round,
 * with their number and the first reason, because during an outage every
 * wallet fails for the same reason. Any other failure gets a warning of its
 * own, with its wallet and error.
 */
export async function sweepWallets(ledger: Ledger, wallets: readonly { id: string; key: WalletKey }[], log: Logger): Promise<void> {
  const results = await Promise.allSettled(wallets.map((wallet) => ledger.sweep(wallet.key)));

  const unavailable: { wallet: string; error: LedgerUnavailableError }[] = [];
  results.forEach((result, index) => {
    if (result.status === 'fulfilled') {
      if (result.value.charged > 0) {
        log.warn(
          { wallet: wallets[index]!.id, chargedHolds: result.value.charged },
          'charged expired holds of answered calls at their held amount, because they were never committed; their provider cost is not known',
        );
      }
      return;
    }
    const wallet = wallets[index]!.id;
    if (result.reason instanceof LedgerUnavailableError) unavailable.push({ wallet, error: result.reason });
    else log.warn({ err: result.reason, wallet }, 'sweep failed');
  });
  if (unavailable.length === 0) return;

  const [first] = unavailable;
  log.warn(
    { failed: unavailable.length, wallets: wallets.length, firstWallet: first!.wallet, reason: first!.error.message, retryInMs: SWEEP_INTERVAL_MS },
    'sweep failed because the ledger is unavailable',
  );
}

/**
 * Credits every grant of every wallet, with its expiry. The ledger ignores
 * grants it has already applied. A grant that expired before it was applied
 * is skipped with a warning, as the operator skips it. With `credited`, a
 * grant id that was already credited with another amount or currency gets a
 * warning, because the ledger keeps the first amount.
 */
export async function applyGrants(ledger: Ledger, resources: ResourceSet, log: Logger, credited?: CreditedGrants): Promise<void> {
  for (const wallet of resources.wallets) {
    const key = { namespace: wallet.metadata.namespace ?? 'default', name: wallet.metadata.name };
    const walletId = `${key.namespace}/${key.name}`;
    const currency = wallet.spec.currency;
    for (const grant of wallet.spec.grants) {
      const amount = parseAmount(grant.amount, `wallet ${walletId} grant ${grant.id}`);
      const options = { reason: grant.reason, ...(grant.expiresAt === undefined ? {} : { expiresAtMs: Date.parse(grant.expiresAt) }) };
      try {
        const result = await ledger.credit(key, grant.id, amount, options);
        if (result.replayed) {
          credited?.checkUnchanged(walletId, grant.id, result.amount, { amount, currency }, log);
        } else {
          credited?.record(walletId, grant.id, currency);
          log.info({ wallet: walletId, grant: grant.id, amount: grant.amount, expiresAt: grant.expiresAt }, 'grant applied');
        }
      } catch (error) {
        if (!(error instanceof GrantExpiredError)) throw error;
        log.warn({ wallet: walletId, grant: grant.id, expiresAt: grant.expiresAt }, 'grant expired before it was applied; skipped');
      }
    }
  }
}

/**
 * Remembers the currency of each grant this process credits, and warns when
 * a manifest changes the amount or currency of a grant that the ledger
 * already credited. The ledger reports the first amount of a replayed grant
 * id. It keeps no currency, so a currency change is noticed only for grants
 * credited since this process started, and the warning shows an earlier
 * grant in the wallet's current currency.
 */
export class CreditedGrants {
  private readonly currencies = new Map<string, string>();
  private readonly warned = new Set<string>();

  record(walletId: string, grantId: string, currency: string): void {
    this.currencies.set(grantKey(walletId, grantId), currency);
  }

  /** Logs a warning, once per new amount and currency, when a replayed grant reads differently in the manifests. */
  checkUnchanged(walletId: string, grantId: string, creditedAmount: bigint, requested: { amount: bigint; currency: string }, log: Logger): void {
    const creditedCurrency = this.currencies.get(grantKey(walletId, grantId));
    const currencyChanged = creditedCurrency !== undefined && creditedCurrency !== requested.currency;
    if (creditedAmount === requested.amount && !currencyChanged) return;

    const warningKey = `${grantKey(walletId, grantId)}=${requested.amount} ${requested.currency}`;
    if (this.warned.has(warningKey)) return;
    this.warned.add(warningKey);

    const creditedText = formatMoney(creditedAmount, creditedCurrency ?? requested.currency);
    const requestedText = formatMoney(requested.amount, requested.currency);
    log.warn(
      { wallet: walletId, grant: grantId, credited: creditedText, requested: requestedText },
      `grant "${grantId}" of wallet ${walletId} was already credited as ${creditedText} and now reads ${requestedText}; ` +
        'the ledger credits each grant id once, so the change does not apply. To top up, add a new grant with a new id',
    );
  }
}

/**
 * Warns about price plans with explicit rates below the provider's cost, once
 * per plan until its list of such models changes, so that a reload of
 * unchanged manifests logs nothing again.
 */
export class MarginWarnings {
  private readonly warned = new Map<string, string>();

  check(resources: ResourceSet, log: Logger, nowMs = Date.now()): void {
    for (const plan of resources.plans) {
      const namespace = plan.metadata.namespace ?? 'default';
      // dev serves every route by its path prefix, so a wallet of any namespace can reach each one.
      const routes = resources.routes;
      const id = `${namespace}/${plan.metadata.name}`;
      let below: ModelBelowCost[];
      try {
        below = modelsBelowCost(plan, routes, nowMs);
      } catch {
        // A plan whose rates do not compile is reported where a wallet uses it.
        continue;
      }
      const listed = describeBelowCost(below);
      if (this.warned.get(id) === listed) continue;
      this.warned.set(id, listed);
      if (below.length === 0) continue;
      const rates = Object.fromEntries(below.map((model) => [model.model, Object.fromEntries(model.rates.map((rate) => [rate.rate, rate.detail]))]));
      log.warn(
        { plan: id, rates },
        `price plan ${id} has rates below the provider's cost for ${below.length} model(s), so calls made mostly of those tokens or units ` +
          `are charged less than they cost: ${listed}. Raise those rates (or unknownModels.defaultRates), or price the models with markupPercent`,
      );
    }
  }
}

function grantKey(walletId: string, grantId: string): string {
  return `${walletId}#${grantId}`;
}

function formatMoney(amount: bigint, currency: string): string {
  return `${formatAmount(amount)} ${currency}`;
}

function onlyWallet(resources: ResourceSet): string | undefined {
  const wallets = resources.wallets.filter((wallet) => wallet.metadata.annotations?.['tollgate.dev/default'] === 'true');
  const candidates = wallets.length > 0 ? wallets : resources.wallets;
  return candidates.length === 1 ? `${candidates[0]!.metadata.namespace}/${candidates[0]!.metadata.name}` : undefined;
}

function qualify(wallet: string | undefined, namespace: string): string | undefined {
  if (wallet === undefined) return undefined;
  return wallet.includes('/') ? wallet : `${namespace}/${wallet}`;
}
