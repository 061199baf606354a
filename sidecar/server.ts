import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { constants as bufferConstants } from 'node:buffer';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { CompiledRoute, CompiledWallet } from '../src/config/snapshot.ts';
import { LedgerUnavailableError, type Ledger, type WalletState } from '../src/ledger/ledger.ts';
import { formatAmount } from '../src/money/money.ts';
import { trackUnusedConnections } from '../src/net/unused-connections.ts';
import { adapterFor, supportsProtocol } from '../src/providers/index.ts';
import type { SidecarMetrics } from '../src/telemetry/metrics.ts';
import type { ConfigSource } from './config-source.ts';
import { Proxy, ProxyError, type ProxyOptions } from './proxy.ts';

export interface SidecarOptions extends ProxyOptions {
  /** Largest request body accepted, in bytes. */
  bodyLimit: number;
  /** Setting that raises bodyLimit, named in the error for a request over it. */
  bodyLimitSetting: string;
}

export const DEFAULT_SIDECAR_OPTIONS: Omit<SidecarOptions, 'walletPolicy'> = {
  bodyLimit: 4 * 1024 * 1024,
  bodyLimitSetting: 'tollgate dev --body-limit BYTES, or the Helm value sidecar.bodyLimit for a sidecar in a pod',
  defaultMaxOutputTokens: 4096,
  minOutputTokens: 16,
  defaultMaxToolUses: 5,
  holdTtlSeconds: 900,
  maxResponseBytes: 32 * 1024 * 1024,
  walletLabel: true,
};

export interface Sidecar {
  app: FastifyInstance<Server, IncomingMessage, ServerResponse, FastifyBaseLogger>;
  proxy: Proxy;
}

/** URL pattern of the proxy's catch-all route. */
const PROXY_ROUTE_URL = '/*';

/**
 * Builds the sidecar's HTTP server: the proxy on every route prefix, plus
 * health and metrics. Every request that is not for health, metrics or the
 * wallet list is counted once in tollgate_requests_total, including those
 * rejected here before the proxy's handler runs.
 */
export function createSidecar(config: ConfigSource, ledger: Ledger, metrics: SidecarMetrics, options: SidecarOptions, log: Logger): Sidecar {
  const proxy = new Proxy(config, ledger, metrics, options, log);
  const toLoggedProxyError = (error: FastifyError, request: FastifyRequest): ProxyError => {
    const proxyError = toProxyError(error, request, options);
    // The proxy logs a refusal for an unavailable ledger itself, without a stack (see Proxy.countRejected).
    if (proxyError.status >= 500 && proxyError.code !== 'ledger_unavailable') log.error({ err: error, url: request.url }, 'request failed');
    return proxyError;
  };

  // No fastify logger: it would build a child logger for every request. The
  // proxy logs one line per settled request itself, and errors below.
  // NOTE: while the server closes, fastify responds to new requests with 503 itself, and those are not counted.
  const app = Fastify({
    bodyLimit: options.bodyLimit,
    return503OnClosing: true,
    // Errors fastify raises before routing, such as a malformed percent-encoding in the path.
    frameworkErrors: (error, request, reply) => rejectProxyRequest(reply, proxy, request.url, toLoggedProxyError(error, request)),
  });

  // Bodies stay raw, because the proxy needs their exact bytes and returns parse errors in the provider's format.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));

  registerHealthRoutes(app, config, metrics);
  app.get('/tollgate/v1/wallets', async () => {
    const wallets = [...config.current().wallets.values()];
    try {
      return { wallets: await Promise.all(wallets.map(async (wallet) => walletView(wallet, await ledger.state(wallet.key)))) };
    } catch (error) {
      if (!(error instanceof LedgerUnavailableError)) throw error;
      throw new ProxyError(503, 'ledger_unavailable', `the billing ledger is unavailable, so the wallet balances cannot be read; retry shortly (${error.message})`, { cause: error });
    }
  });
  rejectOtherMethods(app, '/tollgate/v1/wallets');

  app.route({
    method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
    url: PROXY_ROUTE_URL,
    // onRequest runs before fastify reads the body, so a request that the route does not serve is rejected unread.
    onRequest: async (request) => {
      proxy.checkRequest(request);
    },
    handler: (request, reply) => proxy.handle(request, reply),
  });

  app.setNotFoundHandler((request, reply) => {
    rejectProxyRequest(reply, proxy, request.url, new ProxyError(404, 'unknown_route', `no provider route serves path "${request.url}"; use one of the prefixes: ${proxy.knownPrefixes()}`));
  });

  closeUnusedConnectionsOnClose(app);
  app.setErrorHandler((error: FastifyError, request, reply) => {
    const proxyError = toLoggedProxyError(error, request);
    // Failures of the health, metrics and wallet routes are not model requests, so they get an error response but are not counted.
    const routeUrl = request.routeOptions.url;
    if (routeUrl === undefined || routeUrl === PROXY_ROUTE_URL) rejectProxyRequest(reply, proxy, request.url, proxyError);
    else sendProxyError(reply, undefined, proxyError);
  });

  return { app, proxy };
}

/** Adds /healthz, /readyz and /metrics to a server. */
function registerHealthRoutes(app: FastifyInstance<Server, IncomingMessage, ServerResponse, FastifyBaseLogger>, config: ConfigSource, metrics: SidecarMetrics): void {
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async () => {
    const snapshot = config.current();
    return { status: 'ready', config: snapshot.version, routes: snapshot.routes.size, wallets: snapshot.wallets.size };
  });
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  for (const path of ['/healthz', '/readyz', '/metrics']) rejectOtherMethods(app, path);
}

/**
 * Responds with 405 to a method other than GET or HEAD on a path of the sidecar's
 * own, which would otherwise fall through to the proxy routes and get a
 * misleading "no provider route" 404 counted as a model request.
 */
function rejectOtherMethods(app: FastifyInstance<Server, IncomingMessage, ServerResponse, FastifyBaseLogger>, path: string): void {
  app.route({
    method: ['POST', 'PUT', 'PATCH', 'DELETE'],
    url: path,
    handler: (request, reply) => {
      reply.header('allow', 'GET, HEAD');
      sendProxyError(reply, undefined, new ProxyError(405, 'method_not_allowed', `${request.method} is not allowed on ${path}; use GET`));
    },
  });
}

/**
 * Builds the admin server: health and metrics only, no proxy routes, so it
 * can listen on the pod IP for the kubelet's probes and for Prometheus while
 * the proxy stays on loopback.
 */
export function createAdminServer(config: ConfigSource, metrics: SidecarMetrics): FastifyInstance<Server, IncomingMessage, ServerResponse, FastifyBaseLogger> {
  const app = Fastify();
  closeUnusedConnectionsOnClose(app);
  registerHealthRoutes(app, config, metrics);
  return app;
}

/** Makes the server's close end the connections that have not sent a request yet. */
function closeUnusedConnectionsOnClose(app: FastifyInstance<Server, IncomingMessage, ServerResponse, FastifyBaseLogger>): void {
  const unused = trackUnusedConnections(app.server);
  app.addHook('preClose', (done) => {
    unused.destroy();
    done();
  });
}

/**
 * Formats a wallet's ledger state for people and scripts: each amount as an
 * exact decimal string in its shortest form ("12.5", "0.000141", "0"), and
 * all but available and margin again as integer nano-units under `nano`.
 * The margin is spent minus chargedWithoutCost minus providerCost: the
 * margin of the calls whose provider cost is known.
 */
export function walletView(wallet: CompiledWallet, state: WalletState) {
  const exact = (nano: bigint) => formatAmount(nano, 0);
  return {
    wallet: wallet.id,
    currency: wallet.currency,
    granted: exact(state.granted),
    spent: exact(state.spent),
    expired: exact(state.expired),
    reserved: exact(state.reserved),
    balance: exact(state.balance),
    available: exact(state.available),
    providerCost: exact(state.providerCost),
    chargedWithoutCost: exact(state.chargedWithoutCost),
    // The charges without a known provider cost would count in full as margin, so the margin leaves them out.
    margin: exact(state.spent - state.chargedWithoutCost - state.providerCost),
    nano: {
      granted: state.granted.toString(),
      balance: state.balance.toString(),
      spent: state.spent.toString(),
      expired: state.expired.toString(),
      reserved: state.reserved.toString(),
      providerCost: state.providerCost.toString(),
      chargedWithoutCost: state.chargedWithoutCost.toString(),
    },
  };
}

/**
 * Parses a body limit setting: a whole number of bytes, from 1 to the largest
 * buffer Node.js can allocate. `setting` names the option or variable in the
 * error message.
 */
export function parseBodyLimit(text: string, setting: string): number {
  const bytes = /^[0-9]+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 1 || bytes > bufferConstants.MAX_LENGTH) {
    throw new RangeError(`invalid ${setting} "${text}": use a whole number of bytes from 1 to ${bufferConstants.MAX_LENGTH}, such as 8388608 for 8 MiB`);
  }
  return bytes;
}

/**
 * Largest tool use limit an operator can set, an estimate rather than a
 * provider limit. Each use adds its results to the model's context, so a
 * request is expected to fill its context window long before this many uses.
 * A higher limit would only make the sidecar hold more of the wallet for every
 * request with the tool, which leaves less for concurrent requests.
 */
export const MAX_TOOL_USE_LIMIT = 1000;

/**
 * Parses a tool use limit setting, the sidecar's defaultMaxToolUses: a whole
 * number from 1 to MAX_TOOL_USE_LIMIT. `setting` names the option or variable
 * in the error message.
 */
export function parseMaxToolUses(text: string, setting: string): number {
  const uses = /^[0-9]+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(uses) || uses < 1 || uses > MAX_TOOL_USE_LIMIT) {
    throw new RangeError(`invalid ${setting} "${text}": use a whole number of tool uses from 1 to ${MAX_TOOL_USE_LIMIT}, such as 10`);
  }
  return uses;
}

/**
 * Parses a wallet label setting: "true" or "false". Undefined or empty text
 * means the setting is unset and gives the default, true. `setting` names the
 * option or variable in the error message.
 */
export function parseWalletLabel(text: string | undefined, setting: string): boolean {
  if (text === undefined || text === '' || text === 'true') return true;
  if (text === 'false') return false;
  throw new RangeError(`invalid ${setting} "${text}": use true or false`);
}

function toProxyError(error: FastifyError, request: FastifyRequest, options: SidecarOptions): ProxyError {
  if (error instanceof ProxyError) return error;
  if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return new ProxyError(413, 'request_too_large', bodyTooLargeMessage(request.headers['content-length'], options));
  }
  if (error.statusCode !== undefined && error.statusCode < 500) {
    return new ProxyError(error.statusCode, 'invalid_request', error.message);
  }
  return new ProxyError(500, 'internal_error', `the sidecar failed to handle the request: ${error.message}`, { cause: error });
}

/** Returns the message for a body over the limit, with the body's size when the request declared it in content-length. */
export function bodyTooLargeMessage(contentLength: string | undefined, options: Pick<SidecarOptions, 'bodyLimit' | 'bodyLimitSetting'>): string {
  // Without content-length (a chunked body), the sidecar stops reading at the limit, so the full size is unknown.
  const size = contentLength !== undefined && /^[0-9]+$/.test(contentLength) ? `of ${contentLength} bytes ` : '';
  return `the request body ${size}is larger than the sidecar's limit of ${options.bodyLimit} bytes; send a smaller request, or raise the limit with ${options.bodyLimitSetting}`;
}

/** Counts a proxy request that gets an error response, then sends that error in the format of the route its path matches. */
function rejectProxyRequest(reply: FastifyReply, proxy: Proxy, url: string, error: ProxyError): void {
  const route = proxy.routeFor(url)?.route;
  proxy.countRejected(route, error);
  sendProxyError(reply, route, error);
}

function sendProxyError(reply: FastifyReply, route: CompiledRoute | undefined, error: ProxyError): void {
  const protocol = route?.protocol ?? 'openai';
  // A protocol without an adapter gets its error in OpenAI's format, the one most clients read.
  const adapter = supportsProtocol(protocol) ? adapterFor(protocol) : adapterFor('openai');
  const body = adapter.errorBody({ status: error.status, code: error.code, message: error.message, param: error.param });
  if (reply.sent || reply.raw.headersSent) {
    reply.raw.destroy();
    return;
  }
  void reply.code(error.status).headers(error.headers).header('content-type', 'application/json').send(body);
}
