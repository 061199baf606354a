import { randomUUID, hash } from 'node:crypto';
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { Agent, type Dispatcher } from 'undici';
import type { CompiledRoute, CompiledWallet, Snapshot } from '../src/config/snapshot.ts';
import type { CommitEntry, CommitResult, HoldRequest, Ledger, ReserveResult } from '../src/ledger/ledger.ts';
import { LedgerTimeoutError, LedgerUnavailableError } from '../src/ledger/ledger.ts';
import { formatDuration, MIN_SETTLED_RETENTION_MS } from '../src/ledger/retention.ts';
import { formatAmount } from '../src/money/money.ts';
import type { ProviderAdapter, RequestChanges, RequestInfo, ToolUseLimit } from '../src/providers/adapter.ts';
import { InvalidRequestError } from '../src/providers/adapter.ts';
import { adapterFor, estimatePromptFromBody, estimatePromptTokens, UnsupportedProtocolError, type EndpointKind } from '../src/providers/index.ts';
import { shortestBodyBytes } from '../src/providers/shortest-body.ts';
import { UnknownModelError } from '../src/rating/plan.ts';
import type { RateCard } from '../src/rating/rates.ts';
import { rate, worstCaseRates, type Price, type WorstCaseRates } from '../src/rating/rating.ts';
import { worstCaseUnitCharge } from '../src/rating/units.ts';
import type { Usage } from '../src/rating/usage.ts';
import type { SidecarMetrics } from '../src/telemetry/metrics.ts';
import { createGenAiTelemetry, GEN_AI, responseAttributes, responseMetadataAttributes, type Span } from '../src/telemetry/tracing.ts';
import { propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { CommitJournal } from './commit-journal.ts';
import { CommitQueue, DEFAULT_COMMIT_QUEUE_OPTIONS, type AbandonReason, type CommitQueueOptions, type PendingCommit } from './commit-queue.ts';
import type { ConfigSource } from './config-source.ts';
import { RefusalLog, type RefusalLogOptions } from './refusal-log.ts';
import { resolveWallet, WalletResolutionError, type WalletPolicy } from './wallets.ts';

export interface ProxyOptions {
  walletPolicy: WalletPolicy;
  /** Output limit set on requests that carry none, when the model's rates set no maxOutputTokens. */
  defaultMaxOutputTokens: number;
  /** The smallest output limit worth forwarding when the wallet cannot afford the default one. */
  minOutputTokens: number;
  /**
   * Use limit set on each server tool that the plan charges per use (web search, web fetch)
   * where the client set none, lowered to what the wallet affords.
   */
  defaultMaxToolUses: number;
  /** Seconds a hold lives before the sweeper settles it; longer than any upstream call. */
  holdTtlSeconds: number;
  /** Largest JSON response read to find its usage. */
  maxResponseBytes: number;
  /** Whether metrics carry a wallet label. */
  walletLabel: boolean;
  /**
   * The ledger's retention of settled records in milliseconds (its
   * settledRetentionMs). A commit waits in the commit queue at most this
   * long, because once the ledger has removed the record of a hold that the
   * sweeper charged, a late commit would charge the request again. Default
   * MIN_SETTLED_RETENTION_MS, which is safe for every ledger.
   * NOTE: records are kept by the retention of the process that settled them
   * (a sidecar's reserve or the operator's sweep). Give every process the same
   * retention, or a commit queued longer than the shortest one may be charged twice.
   */
  settledRetentionMs?: number;
  /** Changes to the commit queue's limits and waits (DEFAULT_COMMIT_QUEUE_OPTIONS). */
  commitQueue?: Partial<Omit<CommitQueueOptions, 'maxAgeMs'>>;
  /**
   * Path of the commit journal file (see CommitJournal). The commits it
   * holds from a previous process are queued again at construction. Without
   * it, queued commits live in memory only.
   */
  commitJournal?: string;
  /** Window and clock of the warnings for requests refused while the ledger is unavailable (see RefusalLog). */
  refusalLog?: RefusalLogOptions;
}

/** Attempts of a commit in the request path before it goes to the commit queue, and the waits between them. */
const COMMIT_ATTEMPT_WAITS_MS = [50, 100];
/** No attempt in the request path starts this long after the first, so that an outage delays a response by this plus at most one attempt. */
const COMMIT_IN_PATH_BUDGET_MS = 500;

/**
 * Outcome of a served request's commit: the ledger took it, it waits in the
 * commit queue, or the sweeper will settle its hold.
 */
type CommitOutcome = 'committed' | 'queued' | 'not_committed';

/** Values of the reason label of tollgate_denials_total: the error code, except that spend limits name the limit. */
const DENIAL_REASONS = [
  'insufficient_funds',
  'max_per_request',
  'daily_limit',
  'monthly_limit',
  'wallet_closed',
  'wallet_not_found',
  'wallet_not_allowed',
  'unknown_model',
  'request_id_conflict',
] as const;
export type DenialReason = (typeof DENIAL_REASONS)[number];

/** How many label sets of the money counters the sidecar creates ahead of their first charge, per configuration. */
const MAX_INITIAL_SERIES = 1000;

/**
 * Values of the outcome label of tollgate_requests_total. Each request on a
 * proxy route is counted once, under one of them:
 * - admitted: reserved, forwarded and billed, including responses cut short
 * - denied: rejected by policy, and also counted in tollgate_denials_total
 * - invalid: any other client error (4xx) that the sidecar returned itself
 * - upstream_error: the provider returned an error status, could not be
 *   reached, or cut a pass-through response
 * - ledger_error: the ledger was unavailable, so nothing was forwarded
 * - internal_error: any other 5xx that the sidecar returned itself
 * - passthrough: a GET or HEAD of an endpoint that lists or describes
 *   models, forwarded without billing
 */
export type RequestOutcome = 'admitted' | 'denied' | 'invalid' | 'upstream_error' | 'ledger_error' | 'internal_error' | 'passthrough';

/** Route label of requests whose path matches no route. Kubernetes accepts no object name with parentheses, so no ProviderRoute in a cluster has it. */
export const NO_ROUTE = '(none)';
/** Model label of requests whose model was not priced, so that clients cannot add series by sending made-up names. */
export const UNKNOWN_MODEL = 'unknown';

export interface ProxyErrorOptions extends ErrorOptions {
  /** Set when policy denies the request, so that it is counted as denied. */
  denialReason?: DenialReason;
  /** The request field the error is about, for the `param` of OpenAI-format errors. */
  param?: string | undefined;
  /** Headers to send with the error response, such as `allow` on a 405. */
  headers?: Record<string, string>;
}

/** An error returned in the provider's own format, with nothing forwarded and nothing debited. */
export class ProxyError extends Error {
  override readonly name = 'ProxyError';
  readonly status: number;
  readonly code: string;
  readonly denialReason: DenialReason | undefined;
  readonly param: string | undefined;
  readonly headers: Readonly<Record<string, string>>;
  /** The requested model, once it was priced. Before pricing it is whatever the client sent. */
  model: string | undefined;
  /** The request id and the paying wallet, once they are known, for the log line of the rejection. */
  requestId: string | undefined;
  wallet: string | undefined;

  constructor(status: number, code: string, message: string, options?: ProxyErrorOptions) {
    super(message, options);
    this.status = status;
    this.code = code;
    this.denialReason = options?.denialReason;
    this.param = options?.param;
    this.headers = options?.headers ?? {};
  }
}

/** Headers that must not cross the proxy: hop-by-hop ones, and credentials the application must not choose. */
const DROPPED_REQUEST_HEADERS = new Set([
  'host',
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
  'content-length',
  'accept-encoding',
  'authorization',
  'x-api-key',
  'api-key',
  'x-goog-api-key',
  'idempotency-key',
]);
/**
 * Paths the upstream might normalize into another endpoint than the adapter
 * inspected: dot segments, empty segments, and encoded dots or slashes.
 */
const UNSAFE_PATH = /(^|\/)\.{1,2}(\/|$)|\/\/|%2e|%2f|%5c|\\/i;

const DROPPED_RESPONSE_HEADERS = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'content-encoding']);

interface Admitted {
  snapshot: Snapshot;
  route: CompiledRoute;
  adapter: ProviderAdapter;
  wallet: CompiledWallet;
  info: RequestInfo;
  price: Price;
  requestId: string;
  promptEstimate: number;
  hold: bigint;
  body: string;
  startedNs: bigint;
  span: Span;
  /** Set once the request is counted in tollgate_requests_total, so that a later failure does not count it again. */
  counted: boolean;
}

/** The part of a hold for server tool uses that the plan charges per use. */
interface ToolHold {
  /** Nano-units held for tool uses, part of the hold's fixed amount. */
  amount: bigint;
  /** Each charged limit with the worst-case charge of one use and the uses held. */
  limits: { limit: ToolUseLimit; perUse: bigint; uses: number }[];
  /** Use limit the sidecar sets on the charged limits the client left unset, or undefined when there are none. */
  sidecarMaxUses: number | undefined;
}

/** Maximum number of extra reserves per request, each with a lower sidecar tool use limit than the rejected one before it. */
const MAX_TOOL_LIMIT_RETRIES = 3;

interface Settlement {
  usage: Usage;
  complete: boolean;
  reason: 'final' | 'missing_usage' | 'client_disconnect' | 'upstream_cut' | 'response_too_large';
  /** A complete JSON response, sent to the client once it is billed. */
  response?: { status: number; headers: Record<string, string>; body: Buffer };
}

/**
 * The enforcing proxy. It prices the worst case of each request, reserves it
 * in the ledger, forwards with the sidecar's credential, streams the response
 * back while reading usage, and commits the actual cost.
 */
export class Proxy {
  /** HTTP clients by connect timeout in milliseconds (see agentFor). */
  private readonly agents = new Map<number, Agent>();
  private readonly config: ConfigSource;
  private readonly ledger: Ledger;
  private readonly metrics: SidecarMetrics;
  private readonly options: ProxyOptions;
  private readonly log: Logger;
  private readonly telemetry = createGenAiTelemetry();
  private readonly worstCases = new WeakMap<RateCard, { markupPpm: bigint; rates: WorstCaseRates }>();
  /** The snapshot whose metric series exist (see initializeSeries). */
  private seriesSnapshot: Snapshot | undefined;
  /** Commits that failed because the ledger was unavailable, retried in the background. */
  private readonly commits: CommitQueue;
  /** The commit queue's journal on disk, when ProxyOptions.commitJournal sets one. */
  private readonly journal: CommitJournal | undefined;
  /** Warnings for requests refused while the ledger is unavailable, one per window during an outage. */
  private readonly refusals: RefusalLog;

  constructor(config: ConfigSource, ledger: Ledger, metrics: SidecarMetrics, options: ProxyOptions, log: Logger) {
    this.config = config;
    this.ledger = ledger;
    this.metrics = metrics;
    this.options = options;
    this.log = log;
    this.refusals = new RefusalLog(log, options.refusalLog);
    this.initializeSeries(config.current());
    const opened = options.commitJournal === undefined ? undefined : CommitJournal.open(options.commitJournal, log);
    this.journal = opened?.journal;
    this.commits = new CommitQueue(
      ledger,
      log,
      { ...DEFAULT_COMMIT_QUEUE_OPTIONS, ...options.commitQueue, maxAgeMs: options.settledRetentionMs ?? MIN_SETTLED_RETENTION_MS },
      {
        committed: (commit, result) => this.onCommitted(commit, result),
        abandoned: (commit, reason) => this.onAbandoned(commit, reason),
        pendingChanged: (pending) => metrics.pendingCommits.set(pending),
      },
      this.journal,
    );
    for (const { commit, queuedAtMs } of opened?.recovered ?? []) this.commits.addRecovered(commit, queuedAtMs);
  }

  /**
   * Returns the HTTP client for a route's connect timeout (spec.timeouts.connectSeconds).
   * Each client keeps one connection pool per upstream origin, so routes with the same
   * timeout share their connections, and a new timeout gets a client of its own.
   */
  private agentFor(route: CompiledRoute): Agent {
    let agent = this.agents.get(route.connectTimeoutMs);
    if (!agent) {
      agent = new Agent({ keepAliveTimeout: 30_000, connections: 256, connect: { timeout: route.connectTimeoutMs } });
      this.agents.set(route.connectTimeoutMs, agent);
    }
    return agent;
  }

  /**
   * Creates at 0 the series of the money, request and denial counters for
   * each route, listed model and wallet this sidecar may charge. Prometheus's
   * increase() has no sample of a series from before its first increment and
   * leaves that increment out, so series created by their first charge make
   * the dashboards' range totals read low. Runs once per configuration
   * snapshot. Models outside spec.models (dated snapshots) and end-user
   * wallets still get their series on first use, as do all series beyond
   * MAX_INITIAL_SERIES label sets.
   */
  private initializeSeries(snapshot: Snapshot): void {
    this.seriesSnapshot = snapshot;
    const { defaultWallet, allowWalletHeader } = this.options.walletPolicy;
    const wallets = allowWalletHeader ? [...snapshot.wallets.values()] : [...snapshot.wallets.values()].filter((wallet) => wallet.id === defaultWallet);
    let created = 0;
    for (const route of snapshot.routes.values()) {
      for (const reason of DENIAL_REASONS) this.metrics.denials.inc({ route: route.name, reason }, 0);
      for (const model of route.resource.spec.models) {
        for (const outcome of ['admitted', 'denied'] as const) this.metrics.requests.inc({ route: route.name, model, outcome }, 0);
        for (const wallet of wallets) {
          if (created >= MAX_INITIAL_SERIES) break;
          created++;
          const labels = { currency: wallet.currency, route: route.name, model, namespace: wallet.key.namespace, wallet: this.options.walletLabel ? wallet.key.name : '' };
          this.metrics.charged.add(labels, 0n);
          this.metrics.providerCost.add(labels, 0n);
        }
      }
    }
  }

  /**
   * Tries to commit what the commit queue holds for a few seconds
   * (shutdownFlushMs), logs what is left, then closes the HTTP clients.
   * Close the server first, so that no request settles afterwards.
   */
  async close(): Promise<void> {
    this.refusals.close();
    await this.commits.close();
    this.journal?.close();
    await Promise.all([...this.agents.values()].map((agent) => agent.close()));
  }

  /** Finds the route for a URL path by its first segment. */
  routeFor(url: string): { route: CompiledRoute; upstreamPath: string } | undefined {
    const snapshot = this.config.current();
    const end = url.indexOf('/', 1);
    const prefix = end === -1 ? url.split('?')[0]! : url.slice(0, end);
    const route = snapshot.routes.get(prefix);
    if (!route) return undefined;
    return { route, upstreamPath: route.basePath + (end === -1 ? '/' : url.slice(end)) };
  }

  knownPrefixes(): string {
    return [...this.config.current().routes.keys()].join(', ') || '(none configured)';
  }

  /**
   * Serves one request on a proxy route and counts it once. An error thrown
   * from here goes to the server's error handler, which sends the error
   * response and counts the request with countRejected. A response sent here
   * after hijacking is counted here.
   */
  async handle(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const startedNs = process.hrtime.bigint();
    // The server runs checkRequest before reading the body too. It runs again here, because the
    // configuration may have changed since, and the route of the current snapshot must serve the request.
    const { route, upstreamPath, adapter } = this.checkRequest(request);

    if (request.method === 'GET' || request.method === 'HEAD') {
      await this.passThrough(request, reply, route, adapter, upstreamPath);
      return;
    }

    let admitted: Admitted;
    try {
      admitted = await this.admit(request, route, adapter, upstreamPath, startedNs);
    } catch (error) {
      // A rejection before the reserve still names the caller's own request id in its log line.
      if (error instanceof ProxyError && error.requestId === undefined) error.requestId = loggableRequestId(request.headers);
      throw error;
    }
    try {
      await this.forward(request, reply, admitted, upstreamPath);
    } catch (error) {
      // The response is hijacked by now, so fastify's error handler cannot send it.
      this.log.error({ err: error, requestId: admitted.requestId }, 'forwarding failed');
      await this.releaseQuietly(admitted, 'internal_error');
      if (!admitted.counted) this.count(admitted, 'internal_error');
      this.sendError(reply.raw, adapter, new ProxyError(500, 'internal_error', `the sidecar failed while forwarding: ${(error as Error).message}`));
    }
  }

  /**
   * Checks what can be checked before the body is read: the route, the path,
   * the method and the content type. Only POST is metered. GET and HEAD are
   * forwarded only to the endpoints that list or describe models (see
   * ProviderAdapter.endpointKind), because the other GET endpoints read data
   * of the provider account that all tenants share. Any other method gets a
   * 405 on a metered or models path and a 404 elsewhere. Throws ProxyError,
   * with the caller's request id for the log line.
   */
  checkRequest(request: FastifyRequest): { route: CompiledRoute; upstreamPath: string; adapter: ProviderAdapter } {
    try {
      const target = this.targetOf(request.url);
      checkMethod(request, target.route, target.adapter, target.upstreamPath);
      if (request.method === 'POST') checkContentType(request.headers['content-type'], target.adapter);
      return target;
    } catch (error) {
      if (error instanceof ProxyError && error.requestId === undefined) error.requestId = loggableRequestId(request.headers);
      throw error;
    }
  }

  /** Finds the route and adapter of a URL, rejecting an unknown route or an unsafe path. */
  private targetOf(url: string): { route: CompiledRoute; upstreamPath: string; adapter: ProviderAdapter } {
    const matched = this.routeFor(url);
    if (!matched) {
      throw new ProxyError(404, 'unknown_route', `no provider route serves path "${url.split('?')[0]}"; use one of the prefixes: ${this.knownPrefixes()}`);
    }
    const { route, upstreamPath } = matched;
    if (UNSAFE_PATH.test(upstreamPath.split('?')[0]!)) {
      throw new ProxyError(400, 'invalid_path', `the path "${url.split('?')[0]}" has dot segments, empty segments or encoded slashes or dots; send the endpoint's plain path`);
    }
    return { route, upstreamPath, adapter: this.adapterOf(route) };
  }

  private adapterOf(route: CompiledRoute): ProviderAdapter {
    try {
      return adapterFor(route.protocol);
    } catch (error) {
      if (error instanceof UnsupportedProtocolError) {
        throw new ProxyError(501, 'unsupported_protocol', `provider route "${route.name}" cannot be served: ${error.message}`);
      }
      throw error;
    }
  }

  /** Validates, prices and reserves; throws ProxyError for anything that must not be forwarded. */
  private async admit(request: FastifyRequest, route: CompiledRoute, adapter: ProviderAdapter, upstreamPath: string, startedNs: bigint): Promise<Admitted> {
    const raw = request.body;
    if (!Buffer.isBuffer(raw) || raw.length === 0) {
      throw new ProxyError(400, 'invalid_request', 'the request body is empty; send a JSON object');
    }
    const text = raw.toString('utf8');
    const parsed = parseJsonObject(text);
    const info = inspect(adapter, upstreamPath, parsed, route);
    // Attributes are set when the span starts, because samplers read them only then. The span continues
    // the application's trace when the request carries one (a traceparent header, with the SDK's propagators).
    const span = this.telemetry.tracer.startSpan(
      `${info.operation} ${info.model}`,
      {
        kind: SpanKind.CLIENT,
        attributes: {
          [GEN_AI.operation]: info.operation,
          [GEN_AI.provider]: route.protocol,
          [GEN_AI.requestModel]: info.model,
          'server.address': route.host,
          'server.port': route.port,
          'tollgate.route': route.name,
          ...(info.maxOutputTokens === undefined ? {} : { [GEN_AI.maxTokens]: info.maxOutputTokens }),
        },
      },
      propagation.extract(ROOT_CONTEXT, request.headers),
    );

    let priced = false;
    let knownWallet: string | undefined;
    let knownRequestId: string | undefined;
    try {
      const snapshot = this.config.current();
      if (snapshot !== this.seriesSnapshot) this.initializeSeries(snapshot);
      const wallet = this.walletFor(snapshot, request.headers);
      knownWallet = wallet.id;
      if (span.isRecording()) span.setAttribute('tollgate.wallet', wallet.id);
      const price = this.priceFor(snapshot, wallet, route, info.model);
      priced = true;

      // Holds use a bound on prompt tokens; usage the upstream leaves out is billed on an estimate instead.
      const promptBound = estimatePromptTokens(raw.length);
      const promptEstimate = estimatePromptFromBody(parsed);
      const clientId = clientRequestId(request.headers);
      const requestId = clientId ?? randomUUID();
      knownRequestId = requestId;
      // Only a caller-chosen id can come back with another body, so only then is the body fingerprinted.
      const fingerprint = clientId === undefined ? '' : hash('sha256', raw, 'base64url');
      const { result, hold, tools } = await this.reserve(price, info, promptBound, wallet, fingerprint, requestId);
      const units = this.checkReserve(result, wallet, route, info, requestId, hold, price, tools);

      const changes: RequestChanges = info.maxOutputTokens === undefined && info.operation === 'chat' ? { maxOutputTokens: units } : {};
      if (tools.sidecarMaxUses !== undefined) changes.toolUseLimits = sidecarToolLimits(tools);
      // The body is serialized again even when nothing changed, so that the upstream reads the fields that were
      // priced: a client's bytes could repeat a key ("max_tokens" twice) that another JSON parser resolves differently.
      const body = JSON.stringify(adapter.prepare(parsed, info, changes));

      return {
        snapshot,
        route,
        adapter,
        wallet,
        info,
        price,
        requestId,
        promptEstimate,
        hold: result.status === 'reserved' ? result.amount : 0n,
        body,
        startedNs,
        span,
        counted: false,
      };
    } catch (error) {
      // Only a priced model is a safe metric label, because before pricing a client could add series by sending made-up names.
      if (error instanceof ProxyError) {
        if (priced) error.model = info.model;
        error.wallet = knownWallet;
        error.requestId = knownRequestId;
      }
      endSpanWithError(span, error);
      throw error;
    }
  }

  /**
   * Counts a request that got an error response before anything was
   * forwarded, once in tollgate_requests_total, under NO_ROUTE when its path
   * matched no route. A request denied by policy is counted as denied there
   * and once more in tollgate_denials_total under its reason, so both
   * counters agree.
   */
  countRejected(route: CompiledRoute | undefined, error: ProxyError): void {
    const routeLabel = route?.name ?? NO_ROUTE;
    this.metrics.requests.inc({ route: routeLabel, model: error.model ?? UNKNOWN_MODEL, outcome: outcomeOf(error) });
    if (error.denialReason !== undefined) {
      this.metrics.denials.inc({ route: routeLabel, reason: error.denialReason });
    }
    // One line per rejected request, like the line per settled one. The server logs other 5xx errors itself, with
    // their stack. A refusal during a ledger outage gets a warning without one, because the ledger logs the outage,
    // and RefusalLog folds its repeats into one summary line per window.
    if (error.status < 500 && this.log.isLevelEnabled('info')) {
      this.log.info({ requestId: error.requestId, wallet: error.wallet, route: routeLabel, status: error.status, code: error.code, reason: error.message }, 'request rejected');
    } else if (error.code === 'ledger_unavailable') {
      this.refusals.record({ requestId: error.requestId, wallet: error.wallet, route: routeLabel, status: error.status, code: error.code, reason: error.message });
    }
  }

  private walletFor(snapshot: Snapshot, headers: IncomingHttpHeaders): CompiledWallet {
    try {
      return resolveWallet(snapshot, headers, this.options.walletPolicy);
    } catch (error) {
      if (error instanceof WalletResolutionError) {
        // A malformed wallet header is a client error like any other, not a denial by policy.
        if (error.code === 'invalid_request') throw new ProxyError(error.status, error.code, error.message);
        throw new ProxyError(error.status, error.code, error.message, { denialReason: error.code });
      }
      throw error;
    }
  }

  private priceFor(snapshot: Snapshot, wallet: CompiledWallet, route: CompiledRoute, model: string): Price {
    try {
      return snapshot.pricerFor(wallet, route).priceOf(model, Date.now());
    } catch (error) {
      if (error instanceof UnknownModelError) {
        throw new ProxyError(400, 'unknown_model', error.message, { denialReason: 'unknown_model' });
      }
      throw error;
    }
  }

  /**
   * Reserves the worst case of a request. When the ledger rejects the hold
   * with the sidecar's tool use limit (defaultMaxToolUses), it reserves again
   * with the largest limit that fits, down to one use. So a request is
   * rejected only when one use does not fit.
   */
  private async reserve(
    price: Price,
    info: RequestInfo,
    promptBound: number,
    wallet: CompiledWallet,
    fingerprint: string,
    requestId: string,
  ): Promise<{ result: ReserveResult; hold: HoldRequest; tools: ToolHold }> {
    let tools = this.toolHoldFor(price, info, this.options.defaultMaxToolUses);
    let hold = this.holdFor(price, info, promptBound, wallet, fingerprint, tools);
    let result = await this.timedLedger('reserve', () => this.ledger.reserve(wallet.key, requestId, hold));
    for (let retry = 0; retry < MAX_TOOL_LIMIT_RETRIES; retry++) {
      const uses = affordableToolUses(result, hold, tools);
      if (uses === undefined) break;
      tools = this.toolHoldFor(price, info, uses);
      hold = this.holdFor(price, info, promptBound, wallet, fingerprint, tools);
      result = await this.timedLedger('reserve', () => this.ledger.reserve(wallet.key, requestId, hold));
    }
    return { result, hold, tools };
  }

  /**
   * Prices the server tool uses a request may make: each use limit at the
   * worst-case charge of one use, with `sidecarMaxUses` uses where the client
   * set no limit. Tools whose units the plan does not charge are left out,
   * and their limits are not changed.
   */
  private toolHoldFor(price: Price, info: RequestInfo, sidecarMaxUses: number): ToolHold {
    const tools: ToolHold = { amount: 0n, limits: [], sidecarMaxUses: undefined };
    for (const limit of info.toolUseLimits ?? []) {
      let perUse = 0n;
      for (const unit of limit.units) {
        const charge = worstCaseUnitCharge(price, unit);
        if (charge > perUse) perUse = charge;
      }
      if (perUse === 0n) continue;
      if (limit.maxUses === undefined) tools.sidecarMaxUses = sidecarMaxUses;
      const uses = limit.maxUses ?? sidecarMaxUses;
      tools.amount += perUse * BigInt(uses);
      tools.limits.push({ limit, perUse, uses });
    }
    return tools;
  }

  /**
   * Builds the worst-case hold: every prompt token at the dearest prompt rate
   * (the body's byte length bounds its token count), the per-request fee, the
   * server tool uses, plus the output limit at the dearest output rate.
   * Without a client limit, the ledger picks the largest output limit the
   * wallet can afford.
   */
  private holdFor(price: Price, info: RequestInfo, promptBound: number, wallet: CompiledWallet, fingerprint: string, tools: ToolHold): HoldRequest {
    const worst = this.worstCaseOf(price);
    const modelMax = price.charge?.maxOutputTokens ?? price.cost.maxOutputTokens ?? this.options.defaultMaxOutputTokens;
    let minUnits = 0;
    let maxUnits = 0;
    if (info.operation === 'chat') {
      maxUnits = info.maxOutputTokens ?? modelMax;
      minUnits = info.maxOutputTokens ?? Math.min(this.options.minOutputTokens, modelMax);
    }
    return {
      fixed: BigInt(promptBound) * worst.perPromptToken + worst.perRequest + tools.amount,
      perUnit: worst.perOutputToken,
      minUnits,
      maxUnits,
      ttlSeconds: this.options.holdTtlSeconds,
      fingerprint,
      // Only a client's own id is fingerprinted, so an empty fingerprint marks a random id made for this request.
      exclusiveId: fingerprint === '',
      limits: wallet.limits,
    };
  }

  /** Returns the worst-case rates of a price, computing them once per rate card and markup. */
  private worstCaseOf(price: Price): WorstCaseRates {
    const card = price.charge ?? price.cost;
    const cached = this.worstCases.get(card);
    if (cached && cached.markupPpm === price.markupPpm) return cached.rates;
    const rates = worstCaseRates(price);
    this.worstCases.set(card, { markupPpm: price.markupPpm, rates });
    return rates;
  }

  private checkReserve(
    result: ReserveResult,
    wallet: CompiledWallet,
    route: CompiledRoute,
    info: RequestInfo,
    requestId: string,
    hold: HoldRequest,
    price: Price,
    tools: ToolHold,
  ): number {
    const currency = wallet.currency;
    switch (result.status) {
      case 'reserved':
        // A replayed reserve means that an earlier request with the same id and body has the hold: it is still being
        // served, or its sidecar stopped before settling it. Forwarding again would pay the provider twice.
        // NOTE: an ioredis client can send a command again when the connection drops before its reply: a Cluster
        // client by default (retryDelayOnFailover), and a single-server client when the ledger has no timeout. If
        // Redis had run that reserve, a request with the client's own id gets this 409, and its hold waits for the
        // sweeper (holdTtlSeconds). A request with the sidecar's random id takes the hold as its own
        // (HoldRequest.exclusiveId).
        if (result.replayed) {
          throw new ProxyError(
            409,
            'request_in_progress',
            `request id "${requestId}" is already being served by an earlier request with the same body, so this one was not forwarded; ` +
              'wait for that response, or retry after it has finished. If the sidecar that served it stopped, send a new Idempotency-Key ' +
              `to make the call again (the ledger settles that request's hold at most ${formatDuration(this.options.holdTtlSeconds * 1000)} after it started)`,
            { denialReason: 'request_id_conflict' },
          );
        }
        return result.units;
      case 'insufficient_funds': {
        const cheaper = this.cheaperRequests(route, info, hold, price, result.available, tools);
        const message = insufficientFundsMessage(wallet.id, result, currency, toolFeeClause(tools, currency), cheaper);
        throw new ProxyError(402, 'insufficient_funds', message, { denialReason: 'insufficient_funds' });
      }
      case 'limit_exceeded': {
        const cheaper = this.cheaperRequests(route, info, hold, price, result.remaining, tools);
        throw new ProxyError(402, 'spend_limit_exceeded', spendLimitMessage(wallet.id, result, currency, toolFeeClause(tools, currency), cheaper), {
          denialReason: SPEND_LIMITS[result.limit].denialReason,
        });
      }
      case 'conflict':
        // A key reused with another body gets 422, the status the IETF Idempotency-Key draft specifies.
        if (result.reason === 'fingerprint_mismatch') {
          throw new ProxyError(422, 'request_id_conflict', `request id "${requestId}" was already used for a different request body; send a new Idempotency-Key`, {
            denialReason: 'request_id_conflict',
          });
        }
        if (result.uncharged) {
          throw new ProxyError(
            400,
            'request_id_conflict',
            `request id "${requestId}" was settled without a charge: its hold expired before a sidecar recorded a response, as when ` +
              'the sidecar serving it stops mid-call; whether the provider served it is not known, so send a new Idempotency-Key to make the call again',
            { denialReason: 'request_id_conflict' },
          );
        }
        throw new ProxyError(400, 'request_id_conflict', `request id "${requestId}" was already served and billed; send a new Idempotency-Key to make another call`, {
          denialReason: 'request_id_conflict',
        });
      case 'wallet_closed':
        throw new ProxyError(403, 'wallet_closed', `wallet "${wallet.id}" is closed and accepts no new requests`, { denialReason: 'wallet_closed' });
    }
  }

  /**
   * Returns the changes that would each make a rejected request fit `budget`:
   * the token change of cheaperRequest with the tool uses unchanged, a lower
   * client tool use limit, and removing the charged tools. When no single
   * change fits but one combined with removing the tools does, it returns the
   * combination. It returns an empty list when no request to this model on
   * this route fits.
   */
  private cheaperRequests(route: CompiledRoute, info: RequestInfo, hold: HoldRequest, price: Price, budget: bigint, tools: ToolHold): string[] {
    const tokenFixed = hold.fixed - tools.amount;
    const tokensOnly = (fixed: bigint, tokenBudget: bigint) => this.cheaperRequest(route, info, { ...hold, fixed }, price, tokenBudget);
    const keptTools = tokensOnly(tokenFixed, budget - tools.amount);
    if (tools.limits.length === 0) return keptTools === undefined ? [] : [keptTools];

    const alternatives: string[] = keptTools === undefined ? [] : [keptTools];
    const outputFloor = hold.perUnit * BigInt(info.maxOutputTokens === undefined ? hold.minUnits : Math.min(1, hold.minUnits));
    const lowerable = tools.limits.filter(({ limit, uses }) => limit.maxUses !== undefined && uses > 1);
    const oneUseEach = tools.limits.reduce((sum, { perUse }) => sum + perUse, 0n);
    if (lowerable.length > 0 && tokenFixed + oneUseEach + outputFloor <= budget) {
      alternatives.push(`lower ${lowerable.map(({ limit }) => limit.field).join(' and ')}`);
    }
    const removal = `remove ${tools.limits.map(({ limit }) => limit.tools).join(' and ')}`;
    if (tokenFixed + outputFloor <= budget) {
      alternatives.push(removal);
    } else if (alternatives.length === 0) {
      const withoutTools = tokensOnly(tokenFixed, budget);
      if (withoutTools !== undefined) alternatives.push(`${removal} and ${withoutTools}`);
    }
    return alternatives;
  }

  /**
   * Returns the change that would make a refused request fit `budget`, or
   * undefined when no request to this model on this route would fit. The
   * cheapest request is priced as holdFor prices any: the per-request fee,
   * one prompt token per byte of the shortest body, and the minimum output.
   * That minimum is 1 token when the client sets an output limit, and the
   * sidecar's minimum output limit (hold.minUnits) when it sets none.
   */
  private cheaperRequest(route: CompiledRoute, info: RequestInfo, hold: HoldRequest, price: Price, budget: bigint): CheaperRequest | undefined {
    const worst = this.worstCaseOf(price);
    const shortestFixed = BigInt(estimatePromptTokens(shortestBodyBytes(route.protocol, info))) * worst.perPromptToken + worst.perRequest;
    // A body shorter than the estimate of the shortest one cannot get shorter.
    const fixedFloor = shortestFixed < hold.fixed ? shortestFixed : hold.fixed;
    const outputFloor = info.maxOutputTokens === undefined ? hold.minUnits : Math.min(1, hold.minUnits);
    const outputCost = (units: number) => hold.perUnit * BigInt(units);

    if (fixedFloor + outputCost(outputFloor) > budget) return undefined;
    if (hold.fixed + outputCost(outputFloor) <= budget) return 'lower the output limit';
    // From here on the body must get shorter, and it can, because fixedFloor < hold.fixed.
    if (fixedFloor + outputCost(hold.minUnits) <= budget) return 'send a shorter request';
    return 'send a shorter request with a lower output limit';
  }

  private async forward(request: FastifyRequest, reply: FastifyReply, admitted: Admitted, upstreamPath: string): Promise<void> {
    const { route, adapter } = admitted;
    const abort = new AbortController();
    const res = reply.raw;
    reply.hijack();
    const onClose = () => {
      if (!res.writableFinished) abort.abort(new Error('client disconnected'));
    };
    res.on('close', onClose);

    const upstreamStartNs = process.hrtime.bigint();
    let upstream: Dispatcher.ResponseData;
    try {
      upstream = await this.agentFor(route).request({
        origin: route.origin,
        path: upstreamPath,
        method: 'POST',
        headers: this.upstreamHeaders(request.headers, route, adapter, admitted.body),
        body: admitted.body,
        signal: abort.signal,
        headersTimeout: route.requestTimeoutMs,
        bodyTimeout: route.requestTimeoutMs,
      });
    } catch (error) {
      res.off('close', onClose);
      await this.releaseQuietly(admitted, 'upstream_unreachable');
      this.count(admitted, 'upstream_error');
      endSpanWithError(admitted.span, error);
      this.recordFailedCall(admitted, error instanceof Error ? error.name : 'error');
      if (abort.signal.aborted) {
        this.log.info({ requestId: admitted.requestId, route: route.name }, 'client disconnected before the upstream responded; nothing was charged');
        return;
      }
      const failure = new ProxyError(502, 'upstream_unreachable', `provider route "${route.name}" could not be reached at ${route.origin}: ${(error as Error).message}; nothing was charged`);
      this.log.warn({ requestId: admitted.requestId, wallet: admitted.wallet.id, route: route.name, status: failure.status, code: failure.code, reason: failure.message }, 'request failed');
      this.sendError(res, adapter, failure);
      return;
    }

    if (upstream.statusCode >= 400) {
      await this.relayUpstreamError(res, admitted, upstream);
      res.off('close', onClose);
      return;
    }
    const isStream = String(upstream.headers['content-type'] ?? '').includes('text/event-stream');
    if (isStream) {
      // A stream can last minutes, and a sidecar that dies meanwhile leaves its hold to the sweeper, which
      // charges answered holds. A JSON response is committed within milliseconds, so it skips this round trip.
      void this.ledger.markAnswered(admitted.wallet.key, admitted.requestId).catch((error: unknown) => {
        this.log.warn({ err: error, requestId: admitted.requestId }, 'marking the hold as answered failed; an expired hold will be released instead of charged');
      });
    }

    const settlement = isStream
      ? await this.relayStream(res, admitted, upstream, abort.signal)
      : await this.relayJson(admitted, upstream);
    res.off('close', onClose);
    this.metrics.upstreamDuration.observe({ route: route.name }, seconds(process.hrtime.bigint() - upstreamStartNs));
    await this.settle(res, admitted, settlement, upstreamStartNs);
  }

  private upstreamHeaders(incoming: IncomingHttpHeaders, route: CompiledRoute, adapter: ProviderAdapter, body: string): Record<string, string> {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(incoming)) {
      if (value === undefined || DROPPED_REQUEST_HEADERS.has(name) || name.startsWith('x-tollgate-')) continue;
      headers[name] = Array.isArray(value) ? value.join(', ') : value;
    }
    headers['content-type'] = 'application/json';
    headers['content-length'] = String(Buffer.byteLength(body));
    headers['accept-encoding'] = 'identity';
    for (const [name, value] of Object.entries(adapter.defaultHeaders)) headers[name] ??= value;
    if (route.credential !== undefined) Object.assign(headers, adapter.credentialHeaders(route.credential));
    return headers;
  }

  private async relayUpstreamError(res: ServerResponse, admitted: Admitted, upstream: Dispatcher.ResponseData): Promise<void> {
    await this.releaseQuietly(admitted, 'upstream_status');
    this.count(admitted, 'upstream_error');
    admitted.span.setAttribute('http.response.status_code', upstream.statusCode);
    // As the semantic conventions ask of HTTP errors, the error type is the status code.
    endSpanWithError(admitted.span, new Error(`upstream returned HTTP ${upstream.statusCode}`), String(upstream.statusCode));
    this.recordFailedCall(admitted, String(upstream.statusCode));
    // One line per failed request, like the line per settled one: info for the provider's client errors, warn for its server errors.
    const fields = { requestId: admitted.requestId, wallet: admitted.wallet.id, route: admitted.route.name, model: admitted.info.model, status: upstream.statusCode };
    if (upstream.statusCode >= 500) this.log.warn(fields, 'upstream returned an error; nothing was charged');
    else this.log.info(fields, 'upstream returned an error; nothing was charged');
    res.writeHead(upstream.statusCode, responseHeaders(upstream.headers));
    try {
      for await (const chunk of upstream.body) res.write(chunk);
    } catch (error) {
      this.log.warn({ err: error, requestId: admitted.requestId }, 'upstream error body was cut');
    }
    res.end();
  }

  private async relayStream(res: ServerResponse, admitted: Admitted, upstream: Dispatcher.ResponseData, signal: AbortSignal): Promise<Settlement> {
    const meter = admitted.adapter.createStreamMeter(admitted.info, admitted.promptEstimate);
    res.writeHead(upstream.statusCode, responseHeaders(upstream.headers));
    try {
      for await (const chunk of upstream.body) {
        const out = meter.push(chunk as Buffer);
        if (out.length > 0 && !res.write(out)) await waitForDrain(res, signal);
      }
      const tail = meter.flush();
      if (tail.length > 0) res.write(tail);
    } catch (error) {
      const { usage, complete } = meter.result();
      const reason = signal.aborted ? 'client_disconnect' : 'upstream_cut';
      // A client that stops reading is routine, so it gets an info line without the internal abort error.
      if (reason === 'client_disconnect') this.log.info({ requestId: admitted.requestId, reason }, 'stream ended early; charging the output seen so far');
      else this.log.warn({ err: error, requestId: admitted.requestId, reason }, 'stream ended early; charging the output seen so far');
      res.destroy();
      return { usage, complete, reason };
    } finally {
      // Set on a cut stream too, because the id and model arrive with the first events.
      if (admitted.span.isRecording()) admitted.span.setAttributes(responseMetadataAttributes(meter.responseMetadata()));
    }
    const { usage, complete } = meter.result();
    return { usage, complete, reason: complete ? 'final' : 'missing_usage' };
  }

  private async relayJson(admitted: Admitted, upstream: Dispatcher.ResponseData): Promise<Settlement> {
    let chunks: Buffer[];
    let size: number;
    try {
      ({ chunks, size } = await readUpTo(upstream.body, this.options.maxResponseBytes));
    } catch (error) {
      this.log.warn({ err: error, requestId: admitted.requestId }, 'response ended early; charging an estimate');
      const { usage } = admitted.adapter.usageFromJson(undefined, admitted.info, admitted.promptEstimate);
      return { usage, complete: false, reason: 'upstream_cut' };
    }

    if (size > this.options.maxResponseBytes) {
      // Only part of the body was kept, so it can be neither read for usage nor relayed.
      this.log.warn({ requestId: admitted.requestId, size, limit: this.options.maxResponseBytes }, 'response too large to relay; charging an estimate');
      const { usage } = admitted.adapter.usageFromJson(undefined, admitted.info, admitted.promptEstimate);
      return { usage, complete: false, reason: 'response_too_large' };
    }

    const body = Buffer.concat(chunks);
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      parsed = undefined;
    }
    const { usage, complete } = admitted.adapter.usageFromJson(parsed, admitted.info, admitted.promptEstimate);
    if (admitted.span.isRecording()) admitted.span.setAttributes(responseAttributes(parsed));
    const response = { status: upstream.statusCode, headers: responseHeaders(upstream.headers), body };
    return { usage, complete, reason: complete ? 'final' : 'missing_usage', response };
  }

  /**
   * Commits the actual cost, then finishes the client's response. A JSON
   * response goes out only after its commit, so no client holds an unbilled
   * response. A stream is ended after the commit.
   */
  private async settle(res: ServerResponse, admitted: Admitted, settlement: Settlement, upstreamStartNs: bigint): Promise<void> {
    const { usage, response } = settlement;
    const rated = rate(admitted.price, usage);
    const route = admitted.route.name;
    if (!settlement.complete) this.metrics.estimatedUsage.inc({ route, reason: settlement.reason });

    const tokens = tokenCounts(usage);
    const entry = {
      charged: rated.charged,
      providerCost: rated.providerCost,
      model: admitted.info.model,
      route,
      tokens: withUnits(tokens, usage.units),
      estimated: usage.estimated,
    };
    const upstreamNs = process.hrtime.bigint() - upstreamStartNs;
    const commit = await this.commit(admitted, entry);

    if (!res.destroyed && response) {
      response.headers['content-length'] = String(response.body.length);
      response.headers['x-tollgate-charged'] = formatAmount(rated.charged);
      response.headers['x-tollgate-currency'] = admitted.wallet.currency;
      response.headers['x-tollgate-wallet'] = admitted.wallet.id;
      if (commit !== 'committed') response.headers['x-tollgate-commit'] = commit === 'queued' ? 'queued' : 'failed';
      res.writeHead(response.status, response.headers);
      res.end(response.body);
    } else if (!res.destroyed && !res.headersSent) {
      // A JSON response that could not be relayed: the client gets an error that names the charge.
      this.sendError(res, admitted.adapter, this.unrelayedError(settlement.reason, formatAmount(rated.charged), admitted.wallet.currency));
    } else if (!res.destroyed) {
      res.end();
    }

    this.record(admitted, usage, tokens, rated, commit);
    const totalNs = process.hrtime.bigint() - admitted.startedNs;
    this.metrics.overhead.observe({ route }, seconds(totalNs - upstreamNs));
  }

  private unrelayedError(reason: Settlement['reason'], charged: string, currency: string): ProxyError {
    const billed = `the call was billed on an estimate of ${charged} ${currency}`;
    if (reason === 'response_too_large') {
      return new ProxyError(
        502,
        'response_too_large',
        `the upstream's response is larger than the sidecar's limit of ${this.options.maxResponseBytes} bytes, so it was not relayed and ${billed}; request less output or use streaming`,
      );
    }
    return new ProxyError(502, 'upstream_cut', `the upstream ended its response early, so it was not relayed and ${billed}; retry the request`);
  }

  /**
   * Commits the actual cost of a served call: up to three attempts here
   * within COMMIT_IN_PATH_BUDGET_MS (one when Redis did not reply in time),
   * then, when the ledger is unavailable, the commit queue, which keeps
   * retrying in the background. The client's response does not wait for the
   * queue.
   */
  private async commit(admitted: Admitted, entry: CommitEntry): Promise<CommitOutcome> {
    const commit: PendingCommit = {
      wallet: admitted.wallet.key,
      walletId: admitted.wallet.id,
      currency: admitted.wallet.currency,
      requestId: admitted.requestId,
      entry,
      held: admitted.hold,
    };
    let failure: unknown;
    let attempts = 0;
    const firstAttemptMs = Date.now();
    for (let attempt = 0; attempt <= COMMIT_ATTEMPT_WAITS_MS.length; attempt++) {
      if (attempt > 0) {
        await new Promise((resolve) => setTimeout(resolve, COMMIT_ATTEMPT_WAITS_MS[attempt - 1]));
        if (Date.now() - firstAttemptMs >= COMMIT_IN_PATH_BUDGET_MS) break;
      }
      attempts++;
      const end = this.metrics.ledgerDuration.startTimer({ operation: 'commit' });
      try {
        const result = await this.ledger.commit(commit.wallet, commit.requestId, entry);
        return this.onCommitted(commit, result) ? 'committed' : 'not_committed';
      } catch (error) {
        failure = error;
      } finally {
        end();
      }
      // A stalled Redis would hold up the response for a timeout per attempt; the commit queue retries instead.
      if (failure instanceof LedgerTimeoutError) break;
    }

    this.metrics.commitFailures.inc({ route: admitted.route.name });
    const fields = {
      err: failure,
      requestId: commit.requestId,
      wallet: commit.walletId,
      route: admitted.route.name,
      charged: entry.charged.toString(),
      attempts,
    };
    if (!(failure instanceof LedgerUnavailableError)) {
      this.log.error(fields, 'commit failed; the call was served, and the sweeper settles its hold, charging an answered hold in full');
      this.onAbandoned(commit, 'rejected');
      return 'not_committed';
    }
    // When the queue is full or closing, it logs why itself.
    if (!this.commits.add(commit)) return 'not_committed';
    this.log.warn(fields, 'commit failed because the ledger is unavailable; the call was served, so its commit is queued and retried until the ledger takes it');
    return 'queued';
  }

  /**
   * Counts the charge of a commit that the ledger took, now or from the
   * commit queue, and warns when it is above the hold. Returns false when
   * the ledger refused the commit.
   */
  private onCommitted(commit: PendingCommit, result: CommitResult): boolean {
    const { entry } = commit;
    if (result.status === 'conflict') {
      this.log.error(
        { requestId: commit.requestId, wallet: commit.walletId, charged: entry.charged.toString() },
        'ledger refused the commit because the hold was already released; the served call is not charged',
      );
      return false;
    }

    const labels = {
      currency: commit.currency,
      route: entry.route,
      model: entry.model,
      namespace: commit.wallet.namespace,
      wallet: this.options.walletLabel ? commit.wallet.name : '',
    };
    this.metrics.charged.add(labels, entry.charged);
    this.metrics.providerCost.add(labels, entry.providerCost);
    // Usage beyond the hold, such as hosted tool results, is charged in full, because the platform paid the provider for it.
    if (entry.charged > commit.held) {
      this.log.warn(
        { requestId: commit.requestId, wallet: commit.walletId, currency: commit.currency, held: commit.held.toString(), charged: entry.charged.toString() },
        'charge exceeds its hold; the wallet is debited in full, so it can go below zero and then rejects calls until it is topped up',
      );
    }
    return true;
  }

  private onAbandoned(commit: PendingCommit, reason: AbandonReason): void {
    this.metrics.abandonedCommits.inc({ route: commit.entry.route, reason });
  }

  private record(admitted: Admitted, usage: Usage, tokens: Record<string, number>, rated: { charged: bigint; providerCost: bigint }, commit: CommitOutcome): void {
    const { route, wallet, info } = admitted;
    this.count(admitted, 'admitted');
    this.recordTelemetry(admitted, usage, rated);
    for (const kind in tokens) {
      const count = tokens[kind]!;
      if (count > 0) this.metrics.tokens.inc({ route: route.name, model: info.model, kind }, count);
    }
    for (const unit in usage.units) {
      const count = usage.units[unit]!;
      if (count > 0) this.metrics.units.inc({ route: route.name, model: info.model, unit }, count);
    }
    if (!this.log.isLevelEnabled('info')) return;
    this.log.info(
      {
        requestId: admitted.requestId,
        wallet: wallet.id,
        route: route.name,
        model: info.model,
        stream: info.stream,
        charged: rated.charged.toString(),
        providerCost: rated.providerCost.toString(),
        estimated: usage.estimated,
        ...(usage.units === undefined || Object.keys(usage.units).length === 0 ? {} : { units: usage.units }),
        committed: commit === 'committed',
        commitQueued: commit === 'queued',
      },
      'request settled',
    );
  }

  private recordTelemetry(admitted: Admitted, usage: Usage, rated: { charged: bigint; providerCost: bigint }): void {
    const input = usage.input + usage.cacheRead + usage.cacheWrite5m + usage.cacheWrite1h;
    const output = usage.output + usage.reasoning;
    const { span, info, route } = admitted;
    if (span.isRecording()) {
      span.setAttributes({
        [GEN_AI.inputTokens]: input,
        [GEN_AI.outputTokens]: output,
        'tollgate.charged': formatAmount(rated.charged),
        'tollgate.provider_cost': formatAmount(rated.providerCost),
        'tollgate.currency': admitted.wallet.currency,
        'tollgate.usage_estimated': usage.estimated,
      });
    }
    span.end();

    const attributes = { [GEN_AI.operation]: info.operation, [GEN_AI.provider]: route.protocol, [GEN_AI.requestModel]: info.model };
    this.telemetry.tokenUsage.record(input, { ...attributes, [GEN_AI.tokenType]: 'input' });
    this.telemetry.tokenUsage.record(output, { ...attributes, [GEN_AI.tokenType]: 'output' });
    this.telemetry.operationDuration.record(seconds(process.hrtime.bigint() - admitted.startedNs), attributes);
  }

  /** Records the duration of a call that reached the upstream and failed there, with its error type. */
  private recordFailedCall(admitted: Admitted, errorType: string): void {
    const { info, route } = admitted;
    this.telemetry.operationDuration.record(seconds(process.hrtime.bigint() - admitted.startedNs), {
      [GEN_AI.operation]: info.operation,
      [GEN_AI.provider]: route.protocol,
      [GEN_AI.requestModel]: info.model,
      [GEN_AI.errorType]: errorType,
    });
  }

  private count(admitted: Admitted, outcome: RequestOutcome): void {
    admitted.counted = true;
    this.metrics.requests.inc({ route: admitted.route.name, model: admitted.info.model, outcome });
  }

  private async releaseQuietly(admitted: Admitted, reason: string): Promise<void> {
    try {
      await this.timedLedger('release', () => this.ledger.release(admitted.wallet.key, admitted.requestId));
    } catch (error) {
      this.log.error({ err: error, requestId: admitted.requestId, reason }, 'release failed; the sweeper will settle the hold');
    }
  }

  private async timedLedger<T>(operation: string, call: () => Promise<T>): Promise<T> {
    const end = this.metrics.ledgerDuration.startTimer({ operation });
    try {
      return await call();
    } catch (error) {
      if (error instanceof LedgerUnavailableError) {
        throw new ProxyError(503, 'ledger_unavailable', `the billing ledger is unavailable, so the request was not forwarded; retry shortly (${error.message})`, { cause: error });
      }
      throw error;
    } finally {
      end();
    }
  }

  /** Forwards a GET or HEAD request to a models endpoint, which checkRequest allowed, without metering or billing it. */
  private async passThrough(request: FastifyRequest, reply: FastifyReply, route: CompiledRoute, adapter: ProviderAdapter, upstreamPath: string): Promise<void> {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(request.headers)) {
      if (value === undefined || DROPPED_REQUEST_HEADERS.has(name) || name.startsWith('x-tollgate-')) continue;
      headers[name] = Array.isArray(value) ? value.join(', ') : value;
    }
    if (route.credential !== undefined) Object.assign(headers, adapter.credentialHeaders(route.credential));
    let upstream: Dispatcher.ResponseData;
    try {
      upstream = await this.agentFor(route).request({ origin: route.origin, path: withoutKeyParameter(upstreamPath), method: request.method as 'GET', headers });
    } catch (error) {
      throw new ProxyError(502, 'upstream_unreachable', `provider route "${route.name}" could not be reached at ${route.origin}: ${(error as Error).message}`, { cause: error });
    }

    reply.hijack();
    let outcome: RequestOutcome = upstream.statusCode < 400 ? 'passthrough' : 'upstream_error';
    try {
      reply.raw.writeHead(upstream.statusCode, responseHeaders(upstream.headers));
      for await (const chunk of upstream.body) reply.raw.write(chunk);
      reply.raw.end();
    } catch (error) {
      // The status line is out, so the client learns of the cut only by the connection closing.
      this.log.warn({ err: error, path: pathOf(request.url), route: route.name }, 'pass-through response was cut; closing the client connection');
      reply.raw.destroy();
      outcome = 'upstream_error';
    }
    this.metrics.requests.inc({ route: route.name, model: UNKNOWN_MODEL, outcome });
    if (this.log.isLevelEnabled('debug')) {
      this.log.debug(
        { requestId: loggableRequestId(request.headers), route: route.name, method: request.method, path: pathOf(request.url), status: upstream.statusCode, outcome },
        'forwarded without billing',
      );
    }
  }

  /** Writes a provider-format error on a hijacked response. */
  sendError(res: ServerResponse, adapter: ProviderAdapter, error: ProxyError): void {
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const body = JSON.stringify(adapter.errorBody({ status: error.status, code: error.code, message: error.message, param: error.param }));
    res.writeHead(error.status, { ...error.headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }
}

type SpendLimit = Extract<ReserveResult, { status: 'limit_exceeded' }>['limit'];

/** The Wallet spec field of each spend limit, what the caller can do about it, and its denial reason label. */
const SPEND_LIMITS: Record<SpendLimit, { field: string; wait: string | undefined; denialReason: DenialReason }> = {
  maxPerRequest: { field: 'spec.limits.maxPerRequest', wait: undefined, denialReason: 'max_per_request' },
  dailyCap: { field: 'spec.limits.daily', wait: 'wait for the next UTC day', denialReason: 'daily_limit' },
  monthlyCap: { field: 'spec.limits.monthly', wait: 'wait for the next UTC month', denialReason: 'monthly_limit' },
};

/** Builds the message of a refusal by a spend limit: the limit's field, the amounts, and the ways out. */
function spendLimitMessage(
  walletId: string,
  result: Extract<ReserveResult, { status: 'limit_exceeded' }>,
  currency: string,
  toolFees: string,
  cheaper: string[],
): string {
  const { field, wait } = SPEND_LIMITS[result.limit];
  const cost = `this request may cost up to ${formatAmount(result.required)} ${currency}${toolFees}`;
  const fixes = anyOf([wait, `raise ${field}`, ...cheaper]);
  if (wait === undefined) {
    return `wallet "${walletId}" allows at most ${formatAmount(result.remaining)} ${currency} per request (${field}), and ${cost}; ${fixes}`;
  }
  return `wallet "${walletId}" would exceed its ${field} limit: ${cost} and ${formatAmount(result.remaining)} ${currency} remains under the limit; ${fixes}`;
}

/** Builds the message of a refusal for lack of funds, true both when nothing and when too little is available. */
function insufficientFundsMessage(
  walletId: string,
  result: Extract<ReserveResult, { status: 'insufficient_funds' }>,
  currency: string,
  toolFees: string,
  cheaper: string[],
): string {
  // Commits above their holds can leave the available amount below zero.
  const available =
    result.available < 0n ? `nothing is available (${formatAmount(result.available)} ${currency})` : `only ${formatAmount(result.available)} ${currency} is available`;
  return (
    `wallet "${walletId}" has insufficient funds for this request: it may cost up to ${formatAmount(result.required)} ${currency}${toolFees}, but ${available}; ` +
    anyOf(['top up the wallet', ...cheaper])
  );
}

/** A change to a refused request that makes its hold fit, worded for the refusal message. */
type CheaperRequest = 'lower the output limit' | 'send a shorter request' | 'send a shorter request with a lower output limit';

/**
 * Describes the tool uses in a hold for a rejection message, such as
 * ", including 0.02 USD for 2 uses of the web_search_20250305 tool at 0.01 USD each",
 * or returns an empty string when the hold has none.
 */
function toolFeeClause(tools: ToolHold, currency: string): string {
  if (tools.limits.length === 0) return '';
  const parts = tools.limits.map(
    ({ limit, perUse, uses }) => `${uses} ${uses === 1 ? 'use' : 'uses'} of ${limit.tools} at ${formatAmount(perUse)} ${currency} each`,
  );
  return `, including ${formatAmount(tools.amount)} ${currency} for ${parts.join(' and ')}`;
}

/**
 * Returns the sidecar tool use limit for the next reserve after a rejected
 * one: the largest that the budget of the rejection leaves room for, with
 * the output at the hold's minimum. It is at least 1, so that a final
 * rejection states the smallest amount the request needs. Returns undefined
 * when the sidecar set no limit above 1, when the ledger rejected the hold
 * for a reason other than funds or a spend limit, or when the budget
 * already covers the current limit.
 */
function affordableToolUses(result: ReserveResult, hold: HoldRequest, tools: ToolHold): number | undefined {
  const current = tools.sidecarMaxUses;
  if (current === undefined || current <= 1) return undefined;
  let budget: bigint;
  if (result.status === 'insufficient_funds') budget = result.available;
  else if (result.status === 'limit_exceeded') budget = result.remaining;
  else return undefined;

  let perSidecarUse = 0n;
  for (const { limit, perUse } of tools.limits) if (limit.maxUses === undefined) perSidecarUse += perUse;
  const rest = hold.fixed - perSidecarUse * BigInt(current) + hold.perUnit * BigInt(hold.minUnits);
  const spare = budget - rest;
  if (spare < perSidecarUse) return 1;
  const uses = spare / perSidecarUse;
  return uses < BigInt(current) ? Number(uses) : undefined;
}

/** Returns the use limit the sidecar sets on each charged tool limit that the client left unset. */
function sidecarToolLimits(tools: ToolHold): Map<ToolUseLimit, number> {
  const limits = new Map<ToolUseLimit, number>();
  for (const { limit, uses } of tools.limits) if (limit.maxUses === undefined) limits.set(limit, uses);
  return limits;
}

/** Joins the defined alternatives as "a", "a or b", or "a, b or c". */
function anyOf(alternatives: (string | undefined)[]): string {
  const defined = alternatives.filter((alternative) => alternative !== undefined);
  const last = defined.pop();
  return defined.length === 0 ? (last ?? '') : `${defined.join(', ')} or ${last}`;
}

function outcomeOf(error: ProxyError): RequestOutcome {
  if (error.denialReason !== undefined) return 'denied';
  if (error.code === 'ledger_unavailable') return 'ledger_error';
  if (error.code === 'upstream_unreachable') return 'upstream_error';
  return error.status < 500 ? 'invalid' : 'internal_error';
}

function parseJsonObject(text: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new ProxyError(400, 'invalid_json', `the request body is not valid JSON (${(error as Error).message}); send a JSON object`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ProxyError(400, 'invalid_json', 'the request body must be a JSON object');
  }
  return value as Record<string, unknown>;
}

function inspect(adapter: ProviderAdapter, path: string, body: Record<string, unknown>, route: CompiledRoute): RequestInfo {
  try {
    return adapter.inspect(path, body, route);
  } catch (error) {
    if (error instanceof InvalidRequestError) throw new ProxyError(error.status, error.code, error.message, { param: error.param });
    throw error;
  }
}

/** Methods that checkMethod forwards. A route serves no other. */
const FORWARDED_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST']);

/** The `allow` header of a 405 on each kind of endpoint. */
const ALLOWED_METHODS: Record<EndpointKind, string> = { metered: 'POST', models: 'GET, HEAD' };

/**
 * Rejects a method that the endpoint is not served with. A GET or HEAD of
 * anything but a models endpoint gets a 404. Any method other than GET, HEAD
 * and POST gets a 405 on a metered or models path, whose `allow` header lists
 * the methods the path takes, and a 404 on a path that the route does not
 * serve. A POST to an unmetered endpoint is left to the adapter's inspect,
 * whose 404 names it.
 */
function checkMethod(request: FastifyRequest, route: CompiledRoute, adapter: ProviderAdapter, upstreamPath: string): void {
  const method = request.method;
  if (method === 'POST') return;
  const kind = adapter.endpointKind(upstreamPath, route.basePath);
  if (!FORWARDED_METHODS.has(method) && kind !== undefined) {
    throw new ProxyError(405, 'method_not_allowed', `${method} is not allowed on ${pathOf(request.url)}: ${servedEndpoints(adapter)}`, {
      headers: { allow: ALLOWED_METHODS[kind] },
    });
  }
  // A path that the route serves with no method is unknown, whatever the method.
  if (kind !== 'models') {
    throw new ProxyError(404, 'unsupported_endpoint', `unsupported endpoint ${method} ${pathOf(upstreamPath)}: ${servedEndpoints(adapter)}`);
  }
}

/** Describes what a route of the adapter's protocol serves, for the 404 and 405 messages. */
function servedEndpoints(adapter: ProviderAdapter): string {
  return `this route meters POST to ${adapter.meteredEndpoints}, and forwards GET and HEAD without billing only to ${adapter.modelsEndpoints}`;
}

/** Media types of uploads (multipart forms, audio, images, video), whose bodies are never JSON. */
const UPLOAD_MEDIA_TYPE = /^(multipart|audio|image|video)\//;

/**
 * Rejects a body whose content type is clearly not JSON. A missing or other
 * content type is accepted, because clients differ: curl's `-d` sends JSON
 * as application/x-www-form-urlencoded, for one.
 */
function checkContentType(contentType: string | undefined, adapter: ProviderAdapter): void {
  if (contentType === undefined) return;
  const mediaType = contentType.split(';', 1)[0]!.trim().toLowerCase();
  if (!UPLOAD_MEDIA_TYPE.test(mediaType)) return;
  throw new ProxyError(
    415,
    'unsupported_media_type',
    `the request body is ${mediaType}, but this route takes only JSON bodies, on the endpoints it meters (${adapter.meteredEndpoints}). ` +
      'The sidecar does not forward uploads such as files or audio; send a JSON object with content-type: application/json',
  );
}

/** Returns a URL's path without the query string, which may carry a credential (Gemini's `key`). */
function pathOf(url: string): string {
  const query = url.indexOf('?');
  return query === -1 ? url : url.slice(0, query);
}

function endSpanWithError(span: Span, error: unknown, errorType?: string): void {
  let code = errorType ?? 'error';
  if (errorType === undefined && error instanceof ProxyError) code = error.code;
  else if (errorType === undefined && error instanceof Error) code = error.name;
  span.setAttribute(GEN_AI.errorType, code);
  span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
  span.end();
}

/** Removes a `key` query parameter (Gemini's other way to pass a credential), so only the sidecar's key goes upstream. */
export function withoutKeyParameter(path: string): string {
  const query = path.indexOf('?');
  if (query === -1) return path;
  const parameters = new URLSearchParams(path.slice(query + 1));
  if (!parameters.has('key')) return path;
  parameters.delete('key');
  const rest = parameters.toString();
  return rest ? `${path.slice(0, query)}?${rest}` : path.slice(0, query);
}

/** Maximum length of a request id that a caller chooses. */
const MAX_REQUEST_ID_LENGTH = 200;

/** Returns the caller's request id for a log line, or undefined when it is missing or too long to be one. */
function loggableRequestId(headers: IncomingHttpHeaders): string | undefined {
  const { id } = requestIdHeader(headers);
  return id && id.length <= MAX_REQUEST_ID_LENGTH ? id : undefined;
}

/** Returns the header that carries the caller's request id (Idempotency-Key first) and its first value. */
function requestIdHeader(headers: IncomingHttpHeaders): { header: string; id: string | undefined } {
  const header = headers['idempotency-key'] === undefined ? 'x-tollgate-request-id' : 'idempotency-key';
  const value = headers[header];
  return { header, id: Array.isArray(value) ? value[0] : value };
}

/**
 * Returns the request id the caller chose (Idempotency-Key, else
 * x-tollgate-request-id), or undefined when there is none. An id that is
 * too long is an error, because a caller who sent one expects protection
 * against double billing, which a random id would not give.
 */
function clientRequestId(headers: IncomingHttpHeaders): string | undefined {
  const { header, id } = requestIdHeader(headers);
  if (!id) return undefined;
  if (id.length > MAX_REQUEST_ID_LENGTH) {
    throw new ProxyError(400, 'invalid_request', `the ${header} header is ${id.length} characters long; use an id of at most ${MAX_REQUEST_ID_LENGTH} characters`);
  }
  return id;
}

function responseHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || DROPPED_RESPONSE_HEADERS.has(name)) continue;
    out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

/**
 * Reads a whole body, keeping its chunks while their total stays within
 * `limit`, and returns its full size.
 */
function readUpTo(body: Readable, limit: number): Promise<{ chunks: Buffer[]; size: number }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    body.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
    });
    body.once('end', () => resolve({ chunks, size }));
    body.once('error', reject);
  });
}

function waitForDrain(res: ServerResponse, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason as Error);
    const done = () => {
      res.off('drain', done);
      signal.removeEventListener('abort', done);
      if (signal.aborted) reject(signal.reason as Error);
      else resolve();
    };
    res.on('drain', done);
    signal.addEventListener('abort', done);
  });
}

function tokenCounts(usage: Usage): Record<string, number> {
  return {
    input: usage.input,
    cache_read: usage.cacheRead,
    cache_write_5m: usage.cacheWrite5m,
    cache_write_1h: usage.cacheWrite1h,
    output: usage.output,
    reasoning: usage.reasoning,
  };
}

/**
 * Returns the counts for a ledger entry: the token counts, and each priced
 * unit that the call used (such as web_search) under its name, so that the
 * entry explains a charge for tool uses.
 */
function withUnits(tokens: Record<string, number>, units: Usage['units']): Record<string, number> {
  let counts = tokens;
  for (const unit in units) {
    const count = units[unit]!;
    if (count <= 0) continue;
    if (counts === tokens) counts = { ...tokens };
    counts[unit] = count;
  }
  return counts;
}

function seconds(ns: bigint): number {
  return Number(ns) / 1e9;
}
