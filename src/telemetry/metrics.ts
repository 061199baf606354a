import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { formatAmount } from '../money/money.ts';

/**
 * A Prometheus counter of money in currency units. It adds exact nano-units
 * and converts each total to a float only when scraped, so a scrape shows the
 * exact total rounded once. A float counter would instead round on every
 * addition, and its error would grow with the number of requests (0.1 + 0.2
 * would show as 0.30000000000000004).
 */
export class MoneyCounter<T extends string> {
  readonly #labelNames: readonly T[];
  readonly #totals = new Map<string, { labels: Record<T, string>; nano: bigint }>();

  constructor(config: { name: string; help: string; labelNames: readonly T[]; registers: Registry[] }) {
    this.#labelNames = config.labelNames;
    const totals = this.#totals;
    new Counter<T>({
      ...config,
      collect() {
        this.reset();
        for (const { labels, nano } of totals.values()) this.inc(labels, Number(formatAmount(nano, 0)));
      },
    });
  }

  /** Adds an amount in nano-units, which must not be negative. */
  add(labels: Record<T, string>, nano: bigint): void {
    if (nano < 0n) throw new RangeError(`a money counter cannot go down, but ${nano} nano-units were added`);
    let key = '';
    for (const name of this.#labelNames) key += `${labels[name]}\u0000`;
    const total = this.#totals.get(key);
    if (total) total.nano += nano;
    else this.#totals.set(key, { labels: { ...labels }, nano });
  }
}

/**
 * The sidecar's Prometheus metrics. Money counters are in currency units,
 * exact up to the one rounding of a scrape (see MoneyCounter). The wallet
 * label is filled only when enabled, because per-end-user wallets would make
 * the series count unbounded. It holds the Wallet's name and `namespace` its
 * namespace, as on the operator's wallet gauges, so the two join.
 */
export interface SidecarMetrics {
  registry: Registry;
  requests: Counter<'route' | 'model' | 'outcome'>;
  tokens: Counter<'route' | 'model' | 'kind'>;
  units: Counter<'route' | 'model' | 'unit'>;
  charged: MoneyCounter<MoneyLabel>;
  providerCost: MoneyCounter<MoneyLabel>;
  denials: Counter<'route' | 'reason'>;
  estimatedUsage: Counter<'route' | 'reason'>;
  ledgerDuration: Histogram<'operation'>;
  upstreamDuration: Histogram<'route'>;
  overhead: Histogram<'route'>;
  commitFailures: Counter<'route'>;
  pendingCommits: Gauge;
  abandonedCommits: Counter<'route' | 'reason'>;
}

type MoneyLabel = 'currency' | 'route' | 'model' | 'namespace' | 'wallet';
const MONEY_LABELS: readonly MoneyLabel[] = ['currency', 'route', 'model', 'namespace', 'wallet'];

const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
const UPSTREAM_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export function createSidecarMetrics(options: { defaultMetrics?: boolean } = {}): SidecarMetrics {
  const registry = new Registry();
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: 'tollgate_sidecar_' });
  const registers = [registry];

  return {
    registry,
    requests: new Counter({
      name: 'tollgate_requests_total',
      help:
        "Requests to the sidecar's proxy routes, each counted once, by outcome: admitted (forwarded and billed), denied (rejected by policy), " +
        'invalid (any other client error, such as an unknown route, an unsafe path, a body over the size limit or invalid JSON), ' +
        'upstream_error (the provider returned an error status, could not be reached or cut a pass-through response), ledger_error (the ledger was unavailable), ' +
        'internal_error (any other server error of the sidecar, such as a protocol without an adapter) ' +
        'or passthrough (a GET or HEAD of an endpoint that lists or describes models, forwarded without billing). ' +
        'The route label is "(none)" when the path matches no route, and the model label is "unknown" unless the model was priced. ' +
        'Not counted: /healthz, /readyz, /metrics and /tollgate/v1/wallets, and requests rejected with 503 while the sidecar shuts down.',
      labelNames: ['route', 'model', 'outcome'],
      registers,
    }),
    tokens: new Counter({
      name: 'tollgate_tokens_total',
      help: 'Tokens metered, by kind (input, cache_read, cache_write_5m, cache_write_1h, output, reasoning).',
      labelNames: ['route', 'model', 'kind'],
      registers,
    }),
    units: new Counter({
      name: 'tollgate_units_total',
      help: 'Priced units other than tokens that calls used, such as web_search and web_fetch, by unit name.',
      labelNames: ['route', 'model', 'unit'],
      registers,
    }),
    charged: new MoneyCounter({
      name: 'tollgate_charged_total',
      help:
        "Amount charged to wallets by the sidecar's commits, in currency units, counted when the ledger takes the commit: a queued commit counts once a retry succeeds. " +
        'Holds that the sweeper settles are not counted (see tollgate_commits_abandoned_total).',
      labelNames: MONEY_LABELS,
      registers,
    }),
    providerCost: new MoneyCounter({
      name: 'tollgate_provider_cost_total',
      help: 'Provider cost of the requests counted in tollgate_charged_total, in currency units, counted at the same time.',
      labelNames: MONEY_LABELS,
      registers,
    }),
    denials: new Counter({
      name: 'tollgate_denials_total',
      help:
        'Requests denied by policy before reaching the provider, by reason: insufficient_funds, max_per_request, daily_limit, monthly_limit, ' +
        'wallet_closed, wallet_not_found, wallet_not_allowed, unknown_model or request_id_conflict. Each is also counted once in tollgate_requests_total with outcome "denied", ' +
        'so the denial rate is sum(tollgate_denials_total) / sum(tollgate_requests_total).',
      labelNames: ['route', 'reason'],
      registers,
    }),
    estimatedUsage: new Counter({
      name: 'tollgate_usage_estimated_total',
      help: 'Requests billed on estimated token counts, by reason (missing_usage, client_disconnect, upstream_cut, response_too_large).',
      labelNames: ['route', 'reason'],
      registers,
    }),
    ledgerDuration: new Histogram({
      name: 'tollgate_ledger_duration_seconds',
      help: 'Ledger operation latency.',
      labelNames: ['operation'],
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    upstreamDuration: new Histogram({
      name: 'tollgate_upstream_duration_seconds',
      help: 'Time from sending a request upstream to the end of its response.',
      labelNames: ['route'],
      buckets: UPSTREAM_BUCKETS,
      registers,
    }),
    overhead: new Histogram({
      name: 'tollgate_proxy_overhead_seconds',
      help: 'Time the sidecar adds to a request: its total time minus the upstream time.',
      labelNames: ['route'],
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    commitFailures: new Counter({
      name: 'tollgate_commit_failures_total',
      help:
        'Served requests whose commit to the ledger failed in the request path (three attempts). ' +
        'Their commits are queued and retried in the background (tollgate_commits_pending) unless the queue is full.',
      labelNames: ['route'],
      registers,
    }),
    pendingCommits: new Gauge({
      name: 'tollgate_commits_pending',
      help: 'Commits of served requests that wait in the queue for the ledger to be available again.',
      registers,
    }),
    abandonedCommits: new Counter({
      name: 'tollgate_commits_abandoned_total',
      help:
        'Commits of served requests that the sidecar gave up on, by reason: queue_full, too_old (waited as long as the ledger keeps settled records), ' +
        'rejected (the ledger failed the commit with another error than being unavailable) or shutdown. ' +
        'The sweeper settles their holds, charging answered holds at the held amount instead of the actual cost.',
      labelNames: ['route', 'reason'],
      registers,
    }),
  };
}
