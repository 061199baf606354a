import { watch, type FSWatcher } from 'node:fs';
import type { Logger } from 'pino';
import { API_GROUP_VERSION } from '../src/api/common.ts';
import { addManifest, emptyResourceSet, loadManifests, type ResourceSet, type SkipHandler } from '../src/config/manifests.ts';
import { Snapshot, type CredentialResolver } from '../src/config/snapshot.ts';

/** Supplies the sidecar's current configuration; request handling reads `current()` once per request. */
export interface ConfigSource {
  current(): Snapshot;
  close(): void;
}

export class StaticConfig implements ConfigSource {
  private snapshot: Snapshot;

  constructor(snapshot: Snapshot) {
    this.snapshot = snapshot;
  }

  current(): Snapshot {
    return this.snapshot;
  }

  /** Swaps in a new snapshot; requests already in flight keep the one they started with. */
  replace(snapshot: Snapshot): void {
    this.snapshot = snapshot;
  }

  close(): void {}
}

export function compileSnapshot(resources: ResourceSet, credentialOf: CredentialResolver): Snapshot {
  const snapshot = new Snapshot(resources, credentialOf);
  snapshot.precompile();
  return snapshot;
}

/** Turns loaded resources into a snapshot; throws when they are inconsistent. */
export type Compiler = (resources: ResourceSet) => Snapshot;

/** Runs before a reloaded snapshot replaces the current one; a rejection keeps the current one. */
export type BeforeReplace = (snapshot: Snapshot) => Promise<void>;

/**
 * Reads manifests from a file or folder and reloads them when they change.
 * A change that fails to load or compile is logged and the previous
 * configuration stays in force; the next reload that succeeds logs that the
 * configuration is valid again.
 */
export class ManifestConfig extends StaticConfig {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastReloadFailed = false;
  private readonly path: string;
  private readonly compile: Compiler;
  private readonly log: Logger;
  private readonly beforeReplace: BeforeReplace | undefined;
  private readonly onSkip: SkipHandler;

  static async load(path: string, compile: Compiler, log: Logger, beforeReplace?: BeforeReplace): Promise<ManifestConfig> {
    const onSkip = skipLoggerOnce(log);
    const snapshot = compile(await loadManifests(path, onSkip));
    return new ManifestConfig(path, snapshot, compile, log, beforeReplace, onSkip);
  }

  private constructor(path: string, snapshot: Snapshot, compile: Compiler, log: Logger, beforeReplace: BeforeReplace | undefined, onSkip: SkipHandler) {
    super(snapshot);
    this.path = path;
    this.compile = compile;
    this.log = log;
    this.beforeReplace = beforeReplace;
    this.onSkip = onSkip;
  }

  /** Starts watching the manifests; changes are applied about 200 ms after the last write. */
  watch(): this {
    this.watcher = watch(this.path, () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.reload(), 200);
    });
    return this;
  }

  async reload(): Promise<void> {
    let snapshot: Snapshot;
    try {
      snapshot = this.compile(await loadManifests(this.path, this.onSkip));
      // The version digests specs only, so a changed Secret manifest shows only in the routes' credentials.
      if (snapshot.version !== this.current().version || credentialsDiffer(snapshot, this.current())) {
        await this.beforeReplace?.(snapshot);
        this.replace(snapshot);
      }
    } catch (error) {
      this.lastReloadFailed = true;
      this.log.error({ err: error, path: this.path }, 'configuration reload failed; keeping the previous configuration');
      return;
    }

    const changed = snapshot === this.current();
    const current = this.current();
    const fields = { version: current.version, path: this.path, routes: [...current.routes.keys()], wallets: current.wallets.size };
    if (this.lastReloadFailed) {
      this.lastReloadFailed = false;
      this.log.info(fields, changed ? 'configuration is valid again and reloaded' : 'configuration is valid again and matches the one in use');
    } else if (changed) {
      this.log.info(fields, 'configuration reloaded');
    }
  }

  override close(): void {
    clearTimeout(this.timer);
    this.watcher?.close();
  }
}

/**
 * Returns a handler that logs each skipped document at info level, once per file,
 * document, apiVersion, kind and name, so that a reload does not repeat the line.
 */
function skipLoggerOnce(log: Logger): SkipHandler {
  const logged = new Set<string>();
  return (skipped) => {
    const key = JSON.stringify([skipped.where, skipped.apiVersion, skipped.kind, skipped.name]);
    if (logged.has(key)) return;
    logged.add(key);
    log.info(
      { where: skipped.where, apiVersion: skipped.apiVersion, kind: skipped.kind, name: skipped.name },
      `skipped a document that is no Tollgate resource; local mode reads only ${API_GROUP_VERSION} resources and v1 Secrets`,
    );
  };
}

/** How often OperatorConfig reads the provider credentials again by default, in milliseconds. */
export const DEFAULT_CREDENTIALS_CHECK_MS = 10_000;

export interface OperatorConfigOptions {
  /**
   * Reads the credentials that a resource set's routes use, such as the
   * mounted Secret files, and returns a value that changes when any of them
   * changes. The operator's snapshot carries no credentials, so a rotated
   * provider key would otherwise wait for the next snapshot.
   */
  credentialsOf?: (resources: ResourceSet) => string;
  /** How often to call credentialsOf, in milliseconds; default DEFAULT_CREDENTIALS_CHECK_MS. */
  credentialsCheckMs?: number;
}

/**
 * Follows the operator's snapshot endpoint for one namespace by long-polling
 * with the last version as ETag. A failed poll keeps the current
 * configuration and retries with backoff, so an operator restart does not
 * stop a running sidecar. With `credentialsOf`, it also compiles the current
 * resources again when the provider credentials change.
 */
export class OperatorConfig extends StaticConfig {
  private stopped = false;
  private readonly url: string;
  private readonly compile: Compiler;
  private readonly log: Logger;
  private readonly controller = new AbortController();
  private resources: ResourceSet;
  private credentialsOf: ((resources: ResourceSet) => string) | undefined;
  private credentialsSeen: string | undefined;
  private credentialsTimer: NodeJS.Timeout | undefined;

  static async connect(url: string, compile: Compiler, log: Logger, options: OperatorConfigOptions = {}): Promise<OperatorConfig> {
    let first: ResourceSet | undefined;
    try {
      first = await fetchSnapshot(url, undefined, 0, undefined);
    } catch (error) {
      // fetch reports only "fetch failed"; the reason, such as ECONNREFUSED, is its cause.
      const cause = (error as Error).cause instanceof Error ? ((error as Error).cause as Error).message : (error as Error).message;
      throw new Error(`could not read the configuration from the operator at ${url}: ${cause}; check TOLLGATE_CONFIG_URL and that the operator is running`, {
        cause: error,
      });
    }
    if (!first) throw new Error(`the operator at ${url} returned no configuration`);
    const config = new OperatorConfig(url, first, compile(first), compile, log);
    if (options.credentialsOf) config.checkCredentials(options.credentialsOf, options.credentialsCheckMs ?? DEFAULT_CREDENTIALS_CHECK_MS);
    void config.follow();
    return config;
  }

  private constructor(url: string, resources: ResourceSet, snapshot: Snapshot, compile: Compiler, log: Logger) {
    super(snapshot);
    this.url = url;
    this.resources = resources;
    this.compile = compile;
    this.log = log;
  }

  /** Compiles the current resources again whenever `credentialsOf` returns a new value, checked every `everyMs`. */
  private checkCredentials(credentialsOf: (resources: ResourceSet) => string, everyMs: number): void {
    this.credentialsOf = credentialsOf;
    this.credentialsSeen = credentialsOf(this.resources);
    // The credentials that failed to compile, so that the next checks do not log the same failure again.
    let failed: string | undefined;
    this.credentialsTimer = setInterval(() => {
      let seen: string | undefined;
      try {
        seen = credentialsOf(this.resources);
        if (seen === this.credentialsSeen || seen === failed) return;
        const snapshot = this.compile(this.resources);
        this.credentialsSeen = seen;
        this.replace(snapshot);
        this.log.info({ version: snapshot.version }, 'provider credentials changed; the configuration uses them from now on');
      } catch (error) {
        failed = seen;
        this.log.warn({ err: error }, 'compiling the configuration with the changed provider credentials failed; keeping the current one until they change again');
      }
    }, everyMs);
    this.credentialsTimer.unref();
  }

  private async follow(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        const resources = await fetchSnapshot(this.url, this.current().version, 30, this.controller.signal);
        failures = 0;
        if (!resources) continue;
        // Read before the compile, so that a key changed in between makes the next check compile again.
        const seen = this.credentialsOf?.(resources);
        const snapshot = this.compile(resources);
        this.resources = resources;
        this.credentialsSeen = seen;
        this.replace(snapshot);
        this.log.info({ version: snapshot.version }, 'configuration updated from the operator');
      } catch (error) {
        if (this.stopped) return;
        failures++;
        const delayMs = Math.min(30_000, 250 * 2 ** Math.min(failures, 7));
        this.log.warn({ err: error, url: this.url, delayMs }, 'configuration poll failed; keeping the current configuration');
        await new Promise((resolve) => setTimeout(resolve, delayMs).unref());
      }
    }
  }

  override close(): void {
    this.stopped = true;
    clearInterval(this.credentialsTimer);
    this.controller.abort();
  }
}

/** Fetches a snapshot; returns undefined when the version is unchanged (HTTP 304). */
async function fetchSnapshot(url: string, version: string | undefined, waitSeconds: number, signal: AbortSignal | undefined): Promise<ResourceSet | undefined> {
  const target = new URL(url);
  if (waitSeconds > 0) target.searchParams.set('waitSeconds', String(waitSeconds));
  const headers: Record<string, string> = { accept: 'application/json' };
  if (version !== undefined) headers['if-none-match'] = `"${version}"`;

  const response = await fetch(target, { headers, signal: signal ?? null });
  if (response.status === 304) return undefined;
  if (!response.ok) throw new Error(`GET ${target} returned HTTP ${response.status}: ${(await response.text()).slice(0, 200)}`);
  const body = (await response.json()) as { resources: unknown };
  const set = emptyResourceSet();
  const resources = body.resources as Record<string, unknown[]>;
  for (const item of [...(resources.routes ?? []), ...(resources.plans ?? []), ...(resources.wallets ?? [])]) {
    // A newer operator may send fields this sidecar does not know yet, and they must not stop its configuration updates.
    addManifest(set, item, `snapshot from ${url}`, 'default', undefined, 'ignore');
  }
  return set;
}

/** True when a route of `next` has another credential than the route with its prefix in `previous`. */
function credentialsDiffer(next: Snapshot, previous: Snapshot): boolean {
  for (const [prefix, route] of next.routes) {
    if (previous.routes.get(prefix)?.credential !== route.credential) return true;
  }
  return false;
}
