/**
 * An informer for one custom resource kind: lists the objects, keeps them in a
 * cache, and follows changes with a watch. It
 *
 * - restarts a watch the server closed (its timeout) from the last
 *   resourceVersion, and one that failed after an exponential backoff;
 * - lists again when the server returns 410 Gone (the resourceVersion is too
 *   old to watch from);
 * - asks for bookmarks (`allowWatchBookmarks`), so a healthy watch on an idle
 *   kind still receives events, and restarts a watch that received nothing for
 *   longer than `watchSilenceMs` (a half-open connection looks like that);
 * - tells listeners about every object again each `resyncMs` ("resync").
 */

import type { Logger } from 'pino';
import { backoffDelay, type BackoffOptions } from './queue.ts';
import { describeKubeError, listResources, resourcePath, statusCodeOf, type KubeClients, type KubeObject, type ResourceKind } from './kube.ts';

export type InformerEvent = 'add' | 'update' | 'delete' | 'resync';
/** Receives each change; `old` is the cached copy an update replaced. */
export type InformerListener = (event: InformerEvent, object: KubeObject, old?: KubeObject) => void;
export type WatchRestartReason = 'closed' | 'error' | 'expired' | 'silent';

export interface InformerOptions {
  kind: ResourceKind;
  clients: KubeClients;
  log: Logger;
  /** Watch one namespace only; all namespaces when absent. */
  namespace?: string | undefined;
  /** Interval of the resync that replays every cached object to the listeners; 0 turns it off. */
  resyncMs: number;
  /** A watch that received no event (bookmarks count) for this long is restarted. */
  watchSilenceMs: number;
  /** Delay between failed list or watch attempts. */
  backoff?: BackoffOptions;
  /** Server-side watch timeout range in seconds; each watch picks a random value in it, so informers do not reconnect together. */
  watchTimeoutSeconds?: { min: number; max: number };
  onWatchRestart?: (reason: WatchRestartReason) => void;
}

const DEFAULT_RETRY_BACKOFF: BackoffOptions = { baseMs: 500, capMs: 30_000 };
const DEFAULT_WATCH_TIMEOUT = { min: 300, max: 600 };

/** Returns the cache key of an object, "namespace/name". */
export function cacheKey(object: KubeObject): string {
  return `${object.metadata.namespace ?? 'default'}/${object.metadata.name}`;
}

/** Compares a fresh list with the cache and returns the events that turn the cache into the list. */
export function diffList(
  cache: ReadonlyMap<string, KubeObject>,
  items: KubeObject[],
): Array<[InformerEvent, KubeObject, KubeObject | undefined]> {
  const events: Array<[InformerEvent, KubeObject, KubeObject | undefined]> = [];
  const listed = new Set<string>();
  for (const item of items) {
    const key = cacheKey(item);
    listed.add(key);
    const cached = cache.get(key);
    if (!cached) events.push(['add', item, undefined]);
    else if (cached.metadata.resourceVersion !== item.metadata.resourceVersion) events.push(['update', item, cached]);
  }
  for (const [key, cached] of cache) {
    if (!listed.has(key)) events.push(['delete', cached, undefined]);
  }
  return events;
}

export class Informer {
  readonly kind: ResourceKind;
  readonly #options: InformerOptions;
  readonly #log: Logger;
  readonly #cache = new Map<string, KubeObject>();
  readonly #listeners = new Set<InformerListener>();
  readonly #backoff: BackoffOptions;
  #resourceVersion = '';
  #synced = false;
  #syncWaiters: Array<() => void> = [];
  #stopped = false;
  /** Incremented for every watch; callbacks of an older watch are ignored. */
  #watchId = 0;
  #watching = false;
  #abort: AbortController | undefined;
  #lastActivity = 0;
  #failures = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  #resyncTimer: NodeJS.Timeout | undefined;
  #watchdogTimer: NodeJS.Timeout | undefined;

  constructor(options: InformerOptions) {
    this.kind = options.kind;
    this.#options = options;
    this.#log = options.log.child({ kind: options.kind });
    this.#backoff = options.backoff ?? DEFAULT_RETRY_BACKOFF;
  }

  /** Starts listing and watching; use `waitForSync` to wait for the first list. */
  start(): void {
    void this.#relist();
    if (this.#options.resyncMs > 0) {
      this.#resyncTimer = setInterval(() => this.#resync(), this.#options.resyncMs);
    }
    const checkEvery = Math.max(100, Math.min(this.#options.watchSilenceMs / 4, 5_000));
    this.#watchdogTimer = setInterval(() => this.#checkWatchdog(), checkEvery);
  }

  stop(): void {
    this.#stopped = true;
    this.#watchId += 1;
    this.#abort?.abort();
    clearTimeout(this.#retryTimer);
    clearInterval(this.#resyncTimer);
    clearInterval(this.#watchdogTimer);
    for (const waiter of this.#syncWaiters.splice(0)) waiter();
  }

  get hasSynced(): boolean {
    return this.#synced;
  }

  /** Resolves once the first list has filled the cache (or the informer stops). */
  waitForSync(): Promise<void> {
    if (this.#synced || this.#stopped) return Promise.resolve();
    return new Promise((resolve) => this.#syncWaiters.push(resolve));
  }

  /** Subscribes to changes; returns the function that unsubscribes. */
  subscribe(listener: InformerListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  get(namespace: string, name: string): KubeObject | undefined {
    return this.#cache.get(`${namespace}/${name}`);
  }

  /** Returns the cached objects, of one namespace if given. */
  list(namespace?: string): KubeObject[] {
    const all = [...this.#cache.values()];
    return namespace === undefined ? all : all.filter((object) => (object.metadata.namespace ?? 'default') === namespace);
  }

  /**
   * Replaces a cached object with the newer copy a write returned, so that the
   * next reconcile does not read an older state before the watch event
   * arrives. An object no longer in the cache (deleted) is not added back.
   */
  update(object: KubeObject): void {
    const key = cacheKey(object);
    const cached = this.#cache.get(key);
    if (!cached) return;
    // NOTE: resourceVersions are opaque by contract; comparing them as numbers relies on the
    // API server using etcd revisions, as kube-apiserver does.
    if (cached && Number(cached.metadata.resourceVersion) > Number(object.metadata.resourceVersion)) return;
    this.#cache.set(key, object);
  }

  async #relist(): Promise<void> {
    if (this.#stopped) return;
    try {
      // A list that hangs would leave the informer with neither a cache nor a watch; the watchdog bound applies to it too.
      const { items, resourceVersion } = await withTimeout(
        listResources(this.#options.clients, this.kind, this.#options.namespace),
        this.#options.watchSilenceMs,
      );
      if (this.#stopped) return;
      const events = diffList(this.#cache, items);
      this.#cache.clear();
      for (const item of items) this.#cache.set(cacheKey(item), item);
      this.#resourceVersion = resourceVersion;
      this.#markSynced();
      this.#log.debug({ objects: items.length, resourceVersion }, 'listed');
      for (const [event, object, old] of events) this.#emit(event, object, old);
      void this.#watch();
    } catch (error) {
      this.#retry('list failed', error, () => void this.#relist());
    }
  }

  async #watch(): Promise<void> {
    if (this.#stopped) return;
    const id = ++this.#watchId;
    this.#watching = true;
    this.#lastActivity = Date.now();
    const { min, max } = this.#options.watchTimeoutSeconds ?? DEFAULT_WATCH_TIMEOUT;
    const timeoutSeconds = Math.floor(min + Math.random() * (max - min));

    try {
      const controller = await this.#options.clients.watch.watch(
        resourcePath(this.kind, this.#options.namespace),
        { allowWatchBookmarks: true, resourceVersion: this.#resourceVersion, timeoutSeconds },
        (type: string, object: unknown) => this.#onWatchEvent(id, type, object),
        (error: unknown) => this.#onWatchDone(id, error),
      );
      if (id === this.#watchId) this.#abort = controller;
      else controller.abort();
    } catch (error) {
      this.#onWatchDone(id, error);
    }
  }

  #onWatchEvent(id: number, type: string, raw: unknown): void {
    if (id !== this.#watchId || this.#stopped) return;
    this.#lastActivity = Date.now();
    const object = raw as KubeObject;

    switch (type) {
      case 'ADDED':
      case 'MODIFIED': {
        this.#failures = 0;
        this.#resourceVersion = object.metadata.resourceVersion ?? this.#resourceVersion;
        const old = this.#cache.get(cacheKey(object));
        this.#cache.set(cacheKey(object), object);
        this.#emit(old ? 'update' : 'add', object, old);
        return;
      }
      case 'DELETED':
        this.#failures = 0;
        this.#resourceVersion = object.metadata.resourceVersion ?? this.#resourceVersion;
        this.#cache.delete(cacheKey(object));
        this.#emit('delete', object);
        return;
      case 'BOOKMARK':
        this.#failures = 0;
        this.#resourceVersion = object.metadata.resourceVersion ?? this.#resourceVersion;
        return;
      case 'ERROR': {
        const status = raw as { code?: number; message?: string };
        this.#endWatch();
        if (status.code === 410) {
          this.#log.info({ message: status.message }, 'watch resourceVersion expired; listing again');
          this.#options.onWatchRestart?.('expired');
          void this.#relist();
        } else {
          this.#options.onWatchRestart?.('error');
          this.#retry('watch returned an error', new Error(status.message ?? `status ${status.code}`), () => void this.#watch());
        }
        return;
      }
      default:
        this.#log.warn({ type }, 'ignored a watch event of unknown type');
    }
  }

  #onWatchDone(id: number, error: unknown): void {
    if (id !== this.#watchId || this.#stopped) return;
    this.#endWatch();

    if (error === null || error === undefined) {
      // The server closes every watch at its timeout; carry on from the last resourceVersion.
      this.#options.onWatchRestart?.('closed');
      void this.#watch();
    } else if (statusCodeOf(error) === 410) {
      this.#options.onWatchRestart?.('expired');
      void this.#relist();
    } else {
      this.#options.onWatchRestart?.('error');
      this.#retry('watch failed', error, () => void this.#watch());
    }
  }

  #endWatch(): void {
    this.#watchId += 1;
    this.#watching = false;
    this.#abort?.abort();
    this.#abort = undefined;
  }

  #checkWatchdog(): void {
    if (this.#stopped || !this.#watching) return;
    const silentMs = Date.now() - this.#lastActivity;
    if (silentMs <= this.#options.watchSilenceMs) return;

    this.#log.warn({ silentMs, limitMs: this.#options.watchSilenceMs }, 'watch silent for too long; restarting it');
    this.#endWatch();
    this.#options.onWatchRestart?.('silent');
    void this.#watch();
  }

  #retry(what: string, error: unknown, again: () => void): void {
    if (this.#stopped) return;
    this.#failures += 1;
    const delayMs = backoffDelay(this.#failures, this.#backoff);
    this.#log.warn({ err: describeKubeError(error), failures: this.#failures, retryInMs: delayMs }, `${what}; retrying`);
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(again, delayMs);
  }

  #resync(): void {
    if (!this.#synced || this.#stopped) return;
    for (const object of this.#cache.values()) this.#emit('resync', object);
  }

  #markSynced(): void {
    if (this.#synced) return;
    this.#synced = true;
    for (const waiter of this.#syncWaiters.splice(0)) waiter();
  }

  #emit(event: InformerEvent, object: KubeObject, old?: KubeObject): void {
    for (const listener of this.#listeners) {
      try {
        listener(event, object, old);
      } catch (error) {
        this.#log.error({ err: error, event, object: cacheKey(object) }, 'informer listener failed');
      }
    }
  }
}

/** Rejects when `promise` does not settle within `ms`; the late result is dropped. */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`request timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
