import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { emptyResourceSet } from '../src/config/manifests.ts';
import { Snapshot } from '../src/config/snapshot.ts';
import type { KubeObject, ResourceKind } from './kube.ts';
import { SnapshotService, compileNamespace, parseIfNoneMatch, startOperatorHttpServer, type ResourceSource } from './snapshot-server.ts';

const silent = pino({ level: 'silent' });

/** An in-memory ResourceSource whose contents a test changes. */
class MemorySource implements ResourceSource {
  objects: KubeObject[] = [];
  synced = true;
  readonly #listeners = new Set<(namespace: string) => void>();

  list(kind: ResourceKind, namespace: string): KubeObject[] {
    return this.objects.filter((object) => object.kind === kind && object.metadata.namespace === namespace);
  }

  subscribe(listener: (namespace: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  hasSynced(): boolean {
    return this.synced;
  }

  put(object: KubeObject): void {
    this.objects = this.objects.filter((other) => !(other.kind === object.kind && other.metadata.name === object.metadata.name && other.metadata.namespace === object.metadata.namespace));
    this.objects.push(object);
    for (const listener of this.#listeners) listener(object.metadata.namespace!);
  }
}

function object(kind: ResourceKind, name: string, spec: Record<string, unknown>, extra: Partial<KubeObject['metadata']> = {}): KubeObject {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind,
    metadata: { name, namespace: 'team', creationTimestamp: '2026-01-01T00:00:00Z', resourceVersion: '1', uid: `uid-${name}`, ...extra },
    spec,
    status: { conditions: [] },
  };
}

function plan(name: string, input: string, currency = 'USD'): KubeObject {
  return object('PricePlan', name, {
    currency,
    versions: [{ effectiveFrom: '2026-01-01T00:00:00Z', models: { 'gpt-4o-mini': { input, output: '0.60' } } }],
  });
}

function route(name: string, extra: Record<string, unknown> = {}, created = '2026-01-01T00:00:00Z'): KubeObject {
  return object(
    'ProviderRoute',
    name,
    { protocol: 'openai', baseURL: 'https://api.openai.com/v1', models: ['gpt-4o-mini'], credentialSecretRef: { name: 'key' }, ...extra },
    { creationTimestamp: created },
  );
}

function wallet(name: string, planName = 'standard', currency = 'USD'): KubeObject {
  return object('Wallet', name, { currency, pricePlanRef: { name: planName }, grants: [{ id: 'g1', amount: '5.00' }] });
}

describe('compileNamespace', () => {
  it('serves valid resources with their specs only', () => {
    const source = new MemorySource();
    source.objects = [plan('standard', '0.15'), route('openai'), wallet('acme')];
    const compiled = compileNamespace('team', source);
    const body = JSON.parse(compiled.body) as { version: string; resources: Record<string, Array<Record<string, unknown>>> };

    expect(compiled.skipped).toEqual([]);
    expect(body.version).toBe(compiled.version);
    expect(body.resources['secrets']).toEqual([]);
    expect(body.resources['wallets']).toEqual([
      {
        apiVersion: 'tollgate.dev/v1alpha1',
        kind: 'Wallet',
        metadata: { name: 'acme', namespace: 'team' },
        spec: { currency: 'USD', pricePlanRef: { name: 'standard' }, grants: [{ id: 'g1', amount: '5.00' }] },
      },
    ]);
    expect(body.resources['routes']![0]!['spec']).toMatchObject({ credentialSecretRef: { name: 'key', key: 'apiKey' }, costs: {} });
  });

  it('computes the version a sidecar computes from the served body', () => {
    const source = new MemorySource();
    source.objects = [plan('standard', '0.15'), route('openai'), wallet('acme')];
    const compiled = compileNamespace('team', source);
    const { resources } = JSON.parse(compiled.body) as { resources: ReturnType<typeof emptyResourceSet> };
    expect(new Snapshot(resources, () => undefined).version).toBe(compiled.version);
  });

  it('keeps the version when only status or metadata change', () => {
    const source = new MemorySource();
    source.objects = [plan('standard', '0.15'), wallet('acme')];
    const before = compileNamespace('team', source);
    source.objects = [
      { ...plan('standard', '0.15'), status: { observedGeneration: 4 }, metadata: { name: 'standard', namespace: 'team', resourceVersion: '99' } },
      wallet('acme'),
    ];
    const after = compileNamespace('team', source);
    expect(after.version).toBe(before.version);
    expect(after.body).toBe(before.body);
  });

  it('changes the version with a rate', () => {
    const source = new MemorySource();
    source.objects = [plan('standard', '0.15')];
    const before = compileNamespace('team', source).version;
    source.objects = [plan('standard', '0.20')];
    expect(compileNamespace('team', source).version).not.toBe(before);
  });

  it('leaves out invalid and conflicting resources', () => {
    const source = new MemorySource();
    source.objects = [
      plan('standard', '0.15'),
      plan('euro', '0.15', 'EUR'),
      object('PricePlan', 'broken', { currency: 'USD', versions: [] }),
      route('openai'),
      route('shadow', { pathPrefix: '/openai' }, '2026-02-01T00:00:00Z'),
      wallet('acme'),
      wallet('orphan', 'missing'),
      wallet('mixed', 'euro'),
      { ...wallet('leaving'), metadata: { ...wallet('leaving').metadata, deletionTimestamp: '2026-03-01T00:00:00Z' } },
      object('Wallet', 'other-namespace', {}, { namespace: 'elsewhere' }),
    ];
    const compiled = compileNamespace('team', source);
    const body = JSON.parse(compiled.body) as { resources: Record<string, Array<{ metadata: { name: string } }>> };
    expect(body.resources['routes']!.map((r) => r.metadata.name)).toEqual(['openai']);
    expect(body.resources['plans']!.map((p) => p.metadata.name).sort()).toEqual(['euro', 'standard']);
    expect(body.resources['wallets']!.map((w) => w.metadata.name)).toEqual(['acme']);
    expect(compiled.skipped).toEqual([
      'ProviderRoute/shadow: path prefix /openai is served by ProviderRoute/openai',
      'PricePlan/broken: invalid: spec.versions: Too small: expected array to have >=1 items',
      'Wallet/mixed: currency differs from its PricePlan',
      'Wallet/orphan: PricePlan missing is missing or invalid',
    ]);
  });
});

describe('parseIfNoneMatch', () => {
  it('reads strong, weak and listed tags', () => {
    expect(parseIfNoneMatch('"abc"')).toEqual(['abc']);
    expect(parseIfNoneMatch('W/"abc", "def"')).toEqual(['abc', 'def']);
    expect(parseIfNoneMatch(undefined)).toEqual([]);
    expect(parseIfNoneMatch('')).toEqual([]);
  });
});

describe('operator HTTP server', () => {
  let close: (() => Promise<void>) | undefined;

  afterEach(async () => {
    await close?.();
    close = undefined;
  });

  async function start(source: MemorySource): Promise<string> {
    const registry = new Registry();
    registry.setDefaultLabels({});
    const snapshots = new SnapshotService(source, silent);
    const server = await startOperatorHttpServer({ host: '127.0.0.1', port: 0, snapshots, registry, log: silent });
    close = server.close;
    return `http://127.0.0.1:${server.port}`;
  }

  it('answers 503 until the caches are synced', async () => {
    const source = new MemorySource();
    source.synced = false;
    const base = await start(source);
    const response = await fetch(`${base}/v1/snapshot/team`);
    expect(response.status).toBe(503);
    expect(response.headers.get('retry-after')).toBe('1');
    expect((await fetch(`${base}/readyz`)).status).toBe(503);
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
  });

  it('serves a snapshot with an ETag and answers 304 to it', async () => {
    const source = new MemorySource();
    source.objects = [plan('standard', '0.15'), wallet('acme')];
    const base = await start(source);

    const response = await fetch(`${base}/v1/snapshot/team`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('application/json');
    const body = (await response.json()) as { version: string };
    expect(response.headers.get('etag')).toBe(`"${body.version}"`);

    const cached = await fetch(`${base}/v1/snapshot/team`, { headers: { 'If-None-Match': `"${body.version}"` } });
    expect(cached.status).toBe(304);
    expect(cached.headers.get('etag')).toBe(`"${body.version}"`);

    const stale = await fetch(`${base}/v1/snapshot/team`, { headers: { 'If-None-Match': '"000000000000"' } });
    expect(stale.status).toBe(200);
  });

  it('answers a long poll when the version changes', async () => {
    const source = new MemorySource();
    source.objects = [plan('standard', '0.15')];
    const base = await start(source);
    const first = (await (await fetch(`${base}/v1/snapshot/team`)).json()) as { version: string };

    const polling = fetch(`${base}/v1/snapshot/team?waitSeconds=30`, { headers: { 'If-None-Match': `"${first.version}"` } });
    await new Promise((resolve) => setTimeout(resolve, 100));
    source.put(object('Wallet', 'unrelated', {}, { namespace: 'elsewhere' }));
    source.put({ ...plan('standard', '0.15'), status: { observedGeneration: 2 } });
    source.put(plan('standard', '0.25'));

    const response = await polling;
    expect(response.status).toBe(200);
    const second = (await response.json()) as { version: string; resources: { plans: Array<{ spec: { versions: Array<{ models: Record<string, { input: string }> }> } }> } };
    expect(second.version).not.toBe(first.version);
    expect(second.resources.plans[0]!.spec.versions[0]!.models['gpt-4o-mini']!.input).toBe('0.25');
  });

  it('answers 304 when a long poll sees no change', async () => {
    const source = new MemorySource();
    const base = await start(source);
    const first = (await (await fetch(`${base}/v1/snapshot/team`)).json()) as { version: string };
    const response = await fetch(`${base}/v1/snapshot/team?waitSeconds=0.2`, { headers: { 'If-None-Match': `"${first.version}"` } });
    expect(response.status).toBe(304);
  });

  it('rejects bad namespaces, waits and methods', async () => {
    const base = await start(new MemorySource());
    const badNamespace = await fetch(`${base}/v1/snapshot/Team_A`);
    expect(badNamespace.status).toBe(400);
    expect(((await badNamespace.json()) as { error: string }).error).toBe('invalid namespace "Team_A": use a Kubernetes namespace name such as "default"');
    expect((await fetch(`${base}/v1/snapshot/team?waitSeconds=-1`)).status).toBe(400);
    expect((await fetch(`${base}/v1/snapshot/team`, { method: 'POST' })).status).toBe(405);
    expect((await fetch(`${base}/v2/other`)).status).toBe(404);
  });

  it('serves the metrics registry', async () => {
    const base = await start(new MemorySource());
    const response = await fetch(`${base}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toContain('text/plain');
  });
});
