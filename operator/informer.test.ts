// The informer against a scripted HTTP server on loopback that serves list and
// watch requests the way kube-apiserver does, so that each recovery path
// (server close, 410 Gone, HTTP error, silent watch) can be driven on purpose.
// test/operator.test.ts runs informers against a real kube-apiserver.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Informer, cacheKey, diffList, type InformerEvent, type WatchRestartReason } from './informer.ts';
import { createKubeClients, type KubeObject } from './kube.ts';

const silent = pino({ level: 'silent' });

function wallet(name: string, resourceVersion: string, namespace = 'team'): KubeObject {
  return { apiVersion: 'tollgate.dev/v1alpha1', kind: 'Wallet', metadata: { name, namespace, resourceVersion } };
}

interface WatchRequest {
  query: URLSearchParams;
  response: http.ServerResponse;
  send(type: string, object: unknown): void;
}

/** A loopback server that serves list requests from `lists` and hands each watch request to the test. */
class FakeApiServer {
  readonly lists: Array<{ items: KubeObject[]; resourceVersion: string }> = [];
  readonly listRequests: URLSearchParams[] = [];
  readonly watches: WatchRequest[] = [];
  /** HTTP statuses returned to the next watch requests, instead of a stream. */
  failWatches: number[] = [];
  #server = http.createServer((request, response) => this.#handle(request, response));
  #watchWaiters: Array<() => void> = [];

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise((resolve) => this.#server.close(resolve));
  }

  /** Resolves with watch request number `index` (0-based) once it arrived. */
  async watch(index: number): Promise<WatchRequest> {
    while (this.watches.length <= index) await new Promise<void>((resolve) => this.#watchWaiters.push(resolve));
    return this.watches[index]!;
  }

  #handle(request: http.IncomingMessage, response: http.ServerResponse): void {
    const url = new URL(request.url ?? '/', 'http://fake');
    if (url.pathname !== '/apis/tollgate.dev/v1alpha1/wallets') {
      response.writeHead(404).end();
      return;
    }
    if (url.searchParams.get('watch') !== 'true') {
      this.listRequests.push(url.searchParams);
      const list = this.lists.shift() ?? { items: [], resourceVersion: '1' };
      response.writeHead(200, { 'Content-Type': 'application/json' });
      response.end(JSON.stringify({ kind: 'WalletList', apiVersion: 'tollgate.dev/v1alpha1', metadata: { resourceVersion: list.resourceVersion }, items: list.items }));
      return;
    }

    const failure = this.failWatches.shift();
    if (failure !== undefined) {
      response.writeHead(failure, { 'Content-Type': 'application/json' }).end('{"kind":"Status","message":"injected failure"}');
    } else {
      response.writeHead(200, { 'Content-Type': 'application/json' });
      response.flushHeaders();
    }
    this.watches.push({
      query: url.searchParams,
      response,
      send: (type, object) => response.write(`${JSON.stringify({ type, object })}\n`),
    });
    for (const wake of this.#watchWaiters.splice(0)) wake();
  }
}

interface Harness {
  server: FakeApiServer;
  informer: Informer;
  events: Array<[InformerEvent, string]>;
  restarts: WatchRestartReason[];
}

let cleanup: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const step of cleanup.reverse()) await step();
  cleanup = [];
});

async function startHarness(options: { watchSilenceMs?: number; resyncMs?: number; lists?: FakeApiServer['lists'] } = {}): Promise<Harness> {
  const server = new FakeApiServer();
  server.lists.push(...(options.lists ?? []));
  const url = await server.listen();
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [{ name: 'fake', server: url, skipTLSVerify: true }],
    users: [{ name: 'nobody' }],
    contexts: [{ name: 'fake', cluster: 'fake', user: 'nobody' }],
    currentContext: 'fake',
  });

  const events: Array<[InformerEvent, string]> = [];
  const restarts: WatchRestartReason[] = [];
  const informer = new Informer({
    kind: 'Wallet',
    clients: createKubeClients(kubeConfig),
    log: silent,
    resyncMs: options.resyncMs ?? 0,
    watchSilenceMs: options.watchSilenceMs ?? 60_000,
    backoff: { baseMs: 10, capMs: 50 },
    onWatchRestart: (reason) => restarts.push(reason),
  });
  informer.subscribe((event, object) => events.push([event, cacheKey(object)]));
  informer.start();
  cleanup.push(() => server.close(), () => informer.stop());
  return { server, informer, events, restarts };
}

async function until(what: string, check: () => boolean, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('diffList', () => {
  it('turns a relist into add, update and delete events', () => {
    const cache = new Map([
      ['team/kept', wallet('kept', '5')],
      ['team/changed', wallet('changed', '5')],
      ['team/removed', wallet('removed', '5')],
    ]);
    const events = diffList(cache, [wallet('kept', '5'), wallet('changed', '9'), wallet('new', '9')]);
    expect(events.map(([event, object, old]) => [event, object.metadata.name, old?.metadata.resourceVersion])).toEqual([
      ['update', 'changed', '5'],
      ['add', 'new', undefined],
      ['delete', 'removed', undefined],
    ]);
  });
});

describe('Informer', () => {
  it('lists, then watches from the list resourceVersion with bookmarks', async () => {
    const { server, informer, events } = await startHarness({ lists: [{ items: [wallet('acme', '10')], resourceVersion: '10' }] });
    await informer.waitForSync();
    expect(informer.get('team', 'acme')?.metadata.resourceVersion).toBe('10');

    const watch = await server.watch(0);
    expect(watch.query.get('resourceVersion')).toBe('10');
    expect(watch.query.get('allowWatchBookmarks')).toBe('true');
    const timeout = Number(watch.query.get('timeoutSeconds'));
    expect(timeout).toBeGreaterThanOrEqual(300);
    expect(timeout).toBeLessThanOrEqual(600);

    watch.send('ADDED', wallet('beta', '11'));
    watch.send('MODIFIED', wallet('acme', '12'));
    watch.send('DELETED', wallet('beta', '13'));
    await until('three watch events', () => events.length === 4);
    expect(events).toEqual([
      ['add', 'team/acme'],
      ['add', 'team/beta'],
      ['update', 'team/acme'],
      ['delete', 'team/beta'],
    ]);
    expect(informer.list().map((object) => object.metadata.resourceVersion)).toEqual(['12']);
  });

  it('resumes after a server close from the last bookmark', async () => {
    const { server, restarts, events } = await startHarness({ lists: [{ items: [], resourceVersion: '20' }] });
    const first = await server.watch(0);
    first.send('BOOKMARK', { kind: 'Wallet', apiVersion: 'tollgate.dev/v1alpha1', metadata: { resourceVersion: '25' } });
    await new Promise((resolve) => setTimeout(resolve, 50));
    first.response.end();

    const second = await server.watch(1);
    expect(second.query.get('resourceVersion')).toBe('25');
    expect(restarts).toEqual(['closed']);
    expect(server.listRequests).toHaveLength(1);
    expect(events).toEqual([]);
  });

  it('lists again after 410 Gone and reports deletions', async () => {
    const { server, informer, restarts, events } = await startHarness({
      lists: [
        { items: [wallet('old', '30'), wallet('stays', '30')], resourceVersion: '30' },
        { items: [wallet('stays', '30')], resourceVersion: '40' },
      ],
    });
    const first = await server.watch(0);
    first.send('ERROR', { kind: 'Status', code: 410, reason: 'Expired', message: 'too old resource version: 30 (35)' });

    const second = await server.watch(1);
    expect(second.query.get('resourceVersion')).toBe('40');
    expect(restarts).toEqual(['expired']);
    expect(server.listRequests).toHaveLength(2);
    expect(events).toEqual([
      ['add', 'team/old'],
      ['add', 'team/stays'],
      ['delete', 'team/old'],
    ]);
    expect(informer.list().map((object) => object.metadata.name)).toEqual(['stays']);
  });

  it('retries a failed watch with backoff', async () => {
    const { server, restarts } = await startHarness({ lists: [{ items: [], resourceVersion: '50' }] });
    server.failWatches.push(500, 503);
    const third = await server.watch(2);
    expect(third.query.get('resourceVersion')).toBe('50');
    expect(restarts).toEqual(['error', 'error']);
    expect(server.listRequests).toHaveLength(1);
  });

  it('restarts a silent watch', async () => {
    const { server, restarts } = await startHarness({ watchSilenceMs: 200, lists: [{ items: [], resourceVersion: '60' }] });
    await server.watch(0);
    const second = await server.watch(1);
    expect(second.query.get('resourceVersion')).toBe('60');
    expect(restarts[0]).toBe('silent');
  });

  it('keeps a watch that receives bookmarks', async () => {
    const { server, restarts } = await startHarness({ watchSilenceMs: 300, lists: [{ items: [], resourceVersion: '70' }] });
    const watch = await server.watch(0);
    for (let i = 1; i <= 8; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      watch.send('BOOKMARK', { metadata: { resourceVersion: String(70 + i) } });
    }
    expect(server.watches).toHaveLength(1);
    expect(restarts).toEqual([]);
  });

  it('replays the cache on resync', async () => {
    const { events } = await startHarness({ resyncMs: 100, lists: [{ items: [wallet('acme', '80')], resourceVersion: '80' }] });
    await until('a resync', () => events.some(([event]) => event === 'resync'));
    expect(events.slice(0, 2)).toEqual([
      ['add', 'team/acme'],
      ['resync', 'team/acme'],
    ]);
  });
});
