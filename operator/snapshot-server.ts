/**
 * Serves the compiled configuration of each namespace to sidecars, from the
 * informers' caches, and hosts /metrics and the health probes on the same
 * HTTP server. Every replica serves it, leader or not.
 *
 * `GET /v1/snapshot/<namespace>` returns
 * `{"version": "<Snapshot.version>", "resources": {"routes": [...], "plans": [...], "wallets": [...], "secrets": []}}`
 * with `ETag: "<version>"`. A request whose `If-None-Match` names the
 * current version gets 304; with `?waitSeconds=N` it is held up to N seconds
 * and returns as soon as the version changes. Secret contents are never
 * served: sidecars read credentials from their mounted files.
 *
 * Only valid resources are served, so that one bad object cannot break a
 * namespace's configuration: an invalid object, a route whose path prefix an
 * older route already serves, a plan that does not compile for a served
 * route, and a wallet whose plan is missing or in another currency are left
 * out. Their reconcilers report why in their status.
 */

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { PricePlan } from '../src/api/price-plan.ts';
import type { ProviderRoute } from '../src/api/provider-route.ts';
import type { Wallet } from '../src/api/wallet.ts';
import { emptyResourceSet, type ResourceSet } from '../src/config/manifests.ts';
import { Snapshot } from '../src/config/snapshot.ts';
import { Pricer } from '../src/rating/plan.ts';
import { parseResource, type KubeObject, type ResourceKind } from './kube.ts';
import { compareRouteAge, pathPrefixOf } from './reconcile-route.ts';

/** Maximum long-poll duration a request may ask for, in seconds. */
export const MAX_WAIT_SECONDS = 300;
const NAMESPACE_PATTERN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Source of the resources the snapshot server compiles: the informers' caches. */
export interface ResourceSource {
  list(kind: ResourceKind, namespace: string): KubeObject[];
  /** Calls the listener with the namespace of every added, changed or deleted object; returns the unsubscribe function. */
  subscribe(listener: (namespace: string) => void): () => void;
  /** True once every kind has been listed, so that an empty namespace is really empty. */
  hasSynced(): boolean;
}

export interface CompiledNamespace {
  version: string;
  /** The response body, serialized once per version. */
  body: string;
  /** "Kind/name: why" for each resource left out. */
  skipped: string[];
}

/** A resource as served: kind, name, namespace and the validated spec, so the body changes only with the version. */
function served<T extends { apiVersion: string; kind: string; metadata: { name: string }; spec: unknown }>(resource: T, namespace: string): T {
  return { apiVersion: resource.apiVersion, kind: resource.kind, metadata: { name: resource.metadata.name, namespace }, spec: resource.spec } as unknown as T;
}

/** Compiles the valid resources of one namespace into a Snapshot and its response body. */
export function compileNamespace(namespace: string, source: Pick<ResourceSource, 'list'>): CompiledNamespace {
  const skipped: string[] = [];
  const valid = <K extends ResourceKind>(kind: K) =>
    source
      .list(kind, namespace)
      .filter((object) => !object.metadata.deletionTimestamp)
      .sort(compareRouteAge)
      .flatMap((object) => {
        const parsed = parseResource(kind, object);
        if (parsed.ok) return [served(parsed.value, namespace)];
        skipped.push(`${kind}/${object.metadata.name}: invalid: ${parsed.message}`);
        return [];
      });

  const routes: ProviderRoute[] = [];
  const prefixes = new Map<string, string>();
  for (const route of valid('ProviderRoute')) {
    const prefix = pathPrefixOf(route);
    const owner = prefixes.get(prefix);
    if (owner !== undefined) {
      skipped.push(`ProviderRoute/${route.metadata.name}: path prefix ${prefix} is served by ProviderRoute/${owner}`);
      continue;
    }
    prefixes.set(prefix, route.metadata.name);
    routes.push(route);
  }

  const plans = new Map<string, PricePlan>();
  for (const plan of valid('PricePlan')) {
    const failure = compileFailure(plan, routes);
    if (failure) skipped.push(`PricePlan/${plan.metadata.name}: ${failure}`);
    else plans.set(plan.metadata.name, plan);
  }

  const wallets: Wallet[] = [];
  for (const wallet of valid('Wallet')) {
    const plan = plans.get(wallet.spec.pricePlanRef.name);
    if (!plan) skipped.push(`Wallet/${wallet.metadata.name}: PricePlan ${wallet.spec.pricePlanRef.name} is missing or invalid`);
    else if (plan.spec.currency !== wallet.spec.currency) skipped.push(`Wallet/${wallet.metadata.name}: currency differs from its PricePlan`);
    else wallets.push(wallet);
  }

  const resources: ResourceSet = { ...emptyResourceSet(), routes, plans: [...plans.values()], wallets };
  const snapshot = new Snapshot(resources, () => undefined);
  const body = JSON.stringify({ version: snapshot.version, resources });
  return { version: snapshot.version, body, skipped };
}

function compileFailure(plan: PricePlan, routes: ProviderRoute[]): string | undefined {
  for (const route of routes) {
    try {
      new Pricer(plan, route);
    } catch (error) {
      return `does not compile for ProviderRoute ${route.metadata.name}: ${(error as Error).message}`;
    }
  }
  return undefined;
}

/** Parses an If-None-Match header into the versions it names (quotes and weak markers removed). */
export function parseIfNoneMatch(header: string | undefined): string[] {
  if (!header) return [];
  return header
    .split(',')
    .map((tag) => tag.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1'))
    .filter((tag) => tag !== '');
}

interface Waiter {
  version: string;
  wake: () => void;
}

/** Compiled snapshots per namespace, recompiled after changes, with long-poll waiters. */
export class SnapshotService {
  readonly #source: ResourceSource;
  readonly #log: Logger;
  readonly #compiled = new Map<string, CompiledNamespace>();
  readonly #waiters = new Map<string, Set<Waiter>>();
  readonly #unsubscribe: () => void;

  constructor(source: ResourceSource, log: Logger) {
    this.#source = source;
    this.#log = log;
    this.#unsubscribe = source.subscribe((namespace) => this.#changed(namespace));
  }

  get ready(): boolean {
    return this.#source.hasSynced();
  }

  /** Returns the namespace's current compiled snapshot, compiling it if a change made the cached one stale. */
  get(namespace: string): CompiledNamespace {
    let compiled = this.#compiled.get(namespace);
    if (!compiled) {
      compiled = compileNamespace(namespace, this.#source);
      this.#compiled.set(namespace, compiled);
      if (compiled.skipped.length > 0) this.#log.debug({ namespace, skipped: compiled.skipped }, 'left invalid resources out of the snapshot');
    }
    return compiled;
  }

  /** Resolves when the namespace's version differs from `version`, or after `timeoutMs`; returns whether it changed. */
  waitForChange(namespace: string, version: string, timeoutMs: number, signal: AbortSignal): Promise<boolean> {
    if (this.get(namespace).version !== version) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiters = this.#waiters.get(namespace) ?? new Set<Waiter>();
      this.#waiters.set(namespace, waiters);
      const finish = (changed: boolean) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        waiters.delete(waiter);
        if (waiters.size === 0) this.#waiters.delete(namespace);
        resolve(changed);
      };
      const onAbort = () => finish(false);
      const waiter: Waiter = { version, wake: () => finish(true) };
      const timer = setTimeout(() => finish(false), timeoutMs);
      signal.addEventListener('abort', onAbort, { once: true });
      waiters.add(waiter);
    });
  }

  close(): void {
    this.#unsubscribe();
    for (const waiters of this.#waiters.values()) for (const waiter of [...waiters]) waiter.wake();
  }

  #changed(namespace: string): void {
    this.#compiled.delete(namespace);
    const waiters = this.#waiters.get(namespace);
    if (!waiters || waiters.size === 0) return;
    let version: string;
    try {
      version = this.get(namespace).version;
    } catch (error) {
      this.#log.error({ err: error, namespace }, 'compiling the snapshot failed');
      return;
    }
    for (const waiter of [...waiters]) if (waiter.version !== version) waiter.wake();
  }
}

export interface OperatorHttpServerOptions {
  host: string;
  port: number;
  snapshots: SnapshotService;
  registry: Registry;
  log: Logger;
}

export interface OperatorHttpServer {
  /** The port the server listens on (useful when started on port 0). */
  port: number;
  close(): Promise<void>;
}

/** Starts the operator's HTTP server: /v1/snapshot/<namespace>, /metrics, /healthz and /readyz. */
export async function startOperatorHttpServer(options: OperatorHttpServerOptions): Promise<OperatorHttpServer> {
  const { snapshots, registry, log } = options;
  const server = http.createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      log.error({ err: error, url: request.url }, 'HTTP request failed');
      if (!response.headersSent) sendJson(response, 500, { error: 'internal error; see the operator log' });
      else response.destroy();
    });
  });

  const handle = async (request: http.IncomingMessage, response: http.ServerResponse): Promise<void> => {
    const url = new URL(request.url ?? '/', 'http://operator.invalid');
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      sendJson(response, 405, { error: `method ${request.method} not allowed; use GET` });
      return;
    }
    if (url.pathname === '/healthz') {
      sendJson(response, 200, { status: 'ok' });
    } else if (url.pathname === '/readyz') {
      sendJson(response, snapshots.ready ? 200 : 503, { status: snapshots.ready ? 'ok' : 'caches not synced yet' });
    } else if (url.pathname === '/metrics') {
      const text = await registry.metrics();
      response.writeHead(200, { 'Content-Type': registry.contentType });
      response.end(text);
    } else if (url.pathname.startsWith('/v1/snapshot/')) {
      await serveSnapshot(url, request, response);
    } else {
      sendJson(response, 404, { error: `no route for ${url.pathname}; use /v1/snapshot/<namespace>, /metrics, /healthz or /readyz` });
    }
  };

  const serveSnapshot = async (url: URL, request: http.IncomingMessage, response: http.ServerResponse): Promise<void> => {
    const namespace = decodeURIComponent(url.pathname.slice('/v1/snapshot/'.length));
    if (!NAMESPACE_PATTERN.test(namespace) || namespace.length > 63) {
      sendJson(response, 400, { error: `invalid namespace "${namespace}": use a Kubernetes namespace name such as "default"` });
      return;
    }
    const waitParam = url.searchParams.get('waitSeconds');
    const waitSeconds = waitParam === null ? 0 : Number(waitParam);
    if (!Number.isFinite(waitSeconds) || waitSeconds < 0) {
      sendJson(response, 400, { error: `invalid waitSeconds "${waitParam}": use a number of seconds from 0 to ${MAX_WAIT_SECONDS}` });
      return;
    }
    if (!snapshots.ready) {
      response.setHeader('Retry-After', '1');
      sendJson(response, 503, { error: 'the operator has not listed its resources yet; retry shortly' });
      return;
    }

    let compiled = snapshots.get(namespace);
    const known = parseIfNoneMatch(request.headers['if-none-match']);
    if (known.includes(compiled.version) && waitSeconds > 0) {
      const aborted = new AbortController();
      response.once('close', () => aborted.abort());
      const waitMs = Math.min(waitSeconds, MAX_WAIT_SECONDS) * 1000;
      await snapshots.waitForChange(namespace, compiled.version, waitMs, aborted.signal);
      if (aborted.signal.aborted && response.destroyed) return;
      compiled = snapshots.get(namespace);
    }

    const headers = { ETag: `"${compiled.version}"`, 'Cache-Control': 'no-cache' };
    if (known.includes(compiled.version)) {
      response.writeHead(304, headers);
      response.end();
      return;
    }
    response.writeHead(200, { ...headers, 'Content-Type': 'application/json' });
    response.end(request.method === 'HEAD' ? undefined : compiled.body);
  };

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  log.info({ host: options.host, port }, 'serving snapshots, metrics and health probes');

  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        snapshots.close();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function sendJson(response: http.ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'Content-Type': 'application/json' });
  response.end(JSON.stringify(body));
}
