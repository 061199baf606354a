import { watch, type FSWatcher } from 'node:fs';
import type { Logger } from 'pino';
import { addManifest, emptyResourceSet, loadManifests, type ResourceSet } from '../src/config/manifests.ts';
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
 * configuration stays in force.
 */
export class ManifestConfig extends StaticConfig {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly path: string;
  private readonly compile: Compiler;
  private readonly log: Logger;
  private readonly beforeReplace: BeforeReplace | undefined;

  static async load(path: string, compile: Compiler, log: Logger, beforeReplace?: BeforeReplace): Promise<ManifestConfig> {
    return new ManifestConfig(path, compile(await loadManifests(path)), compile, log, beforeReplace);
  }

  private constructor(path: string, snapshot: Snapshot, compile: Compiler, log: Logger, beforeReplace: BeforeReplace | undefined) {
    super(snapshot);
    this.path = path;
    this.compile = compile;
    this.log = log;
    this.beforeReplace = beforeReplace;
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
    try {
      const snapshot = this.compile(await loadManifests(this.path));
      if (snapshot.version === this.current().version) return;
      await this.beforeReplace?.(snapshot);
      this.replace(snapshot);
      this.log.info({ version: snapshot.version, path: this.path }, 'configuration reloaded');
    } catch (error) {
      this.log.error({ err: error, path: this.path }, 'configuration reload failed; keeping the previous configuration');
    }
  }

  override close(): void {
    clearTimeout(this.timer);
    this.watcher?.close();
  }
}

/**
 * Follows the operator's snapshot endpoint for one namespace by long-polling
 * with the last version as ETag. A failed poll keeps the current
 * configuration and retries with backoff, so an operator restart does not
 * stop a running sidecar.
 */
export class OperatorConfig extends StaticConfig {
  private stopped = false;
  private readonly url: string;
  private readonly compile: Compiler;
  private readonly log: Logger;
  private readonly controller = new AbortController();

  static async connect(url: string, compile: Compiler, log: Logger): Promise<OperatorConfig> {
    const first = await fetchSnapshot(url, undefined, 0, undefined);
    if (!first) throw new Error(`the operator at ${url} returned no configuration`);
    const config = new OperatorConfig(url, compile(first), compile, log);
    void config.follow();
    return config;
  }

  private constructor(url: string, snapshot: Snapshot, compile: Compiler, log: Logger) {
    super(snapshot);
    this.url = url;
    this.compile = compile;
    this.log = log;
  }

  private async follow(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        const resources = await fetchSnapshot(this.url, this.current().version, 30, this.controller.signal);
        failures = 0;
        if (!resources) continue;
        const snapshot = this.compile(resources);
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
    addManifest(set, item, `snapshot from ${url}`);
  }
  return set;
}
