import { cp, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ResourceSet } from '../src/config/manifests.ts';
import { secretsResolver } from '../src/config/snapshot.ts';
import { compileSnapshot, ManifestConfig, OperatorConfig } from './config-source.ts';
import { credentialsFingerprint, fileCredentials } from './main.ts';

/** Returns a logger that keeps each line it writes, as parsed JSON. */
function recordingLogger(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, lines };
}

const compile = (resources: ResourceSet) => compileSnapshot(resources, () => 'test-key');

/** Returns the level and message of each line, and the error message where a line has one. */
function summary(lines: Record<string, unknown>[]): Array<[unknown, unknown, unknown?]> {
  return lines.map((line) => {
    const error = line['err'] as { message?: string } | undefined;
    return error === undefined ? [line['level'], line['msg']] : [line['level'], line['msg'], error.message];
  });
}

let folder: string;
let walletsFile: string;
let original: string;

beforeEach(async () => {
  folder = await mkdtemp(path.join(os.tmpdir(), 'tollgate-config-source-test-'));
  await cp(path.join(import.meta.dirname, '..', 'examples'), folder, { recursive: true });
  walletsFile = path.join(folder, 'wallets.yaml');
  original = await readFile(walletsFile, 'utf8');
});

afterEach(async () => {
  await rm(folder, { recursive: true, force: true });
});

describe('ManifestConfig reload', () => {
  it('keeps last good configuration on error', async () => {
    const { log, lines } = recordingLogger();
    const config = await ManifestConfig.load(folder, compile, log);
    const before = config.current();
    expect(before.wallets.get('default/acme')?.limits.maxPerRequest).toBe(500_000_000n);

    await writeFile(walletsFile, original.replace('  limits:\n', '  limts:\n'));
    await config.reload();

    expect(config.current()).toBe(before);
    expect(summary(lines)).toEqual([
      [
        50,
        'configuration reload failed; keeping the previous configuration',
        `invalid Wallet "acme" in ${walletsFile} (document 2): unknown field "spec.limts"; remove it or fix its spelling; ` +
          'the known fields are currency, pricePlanRef, grants, limits, lowBalanceThreshold, endUsers',
      ],
    ]);
  });

  it('logs valid again after a revert', async () => {
    const { log, lines } = recordingLogger();
    const config = await ManifestConfig.load(folder, compile, log);
    const before = config.current();

    await writeFile(walletsFile, original.replace('kind: Wallet', 'kind: Walet'));
    await config.reload();
    await writeFile(walletsFile, original);
    await config.reload();
    await config.reload();

    expect(config.current()).toBe(before);
    expect(summary(lines)).toEqual([
      [
        50,
        'configuration reload failed; keeping the previous configuration',
        `invalid resource "demo" in ${walletsFile} (document 1): kind "Walet" is unknown; ` +
          'the known kinds of tollgate.dev are ProviderRoute, PricePlan, Wallet',
      ],
      [30, 'configuration is valid again and matches the one in use'],
    ]);
    expect(lines[1]?.['version']).toBe(before.version);
  });

  it('logs valid again with a change', async () => {
    const { log, lines } = recordingLogger();
    const config = await ManifestConfig.load(folder, compile, log);
    const before = config.current();

    await writeFile(walletsFile, original.replace('apiVersion: tollgate.dev/v1alpha1', 'apiVersion: tollgate.dev/v1'));
    await config.reload();
    await writeFile(walletsFile, original.replace('daily: "10.00"', 'daily: "12.00"'));
    await config.reload();
    await writeFile(walletsFile, original);
    await config.reload();

    expect(config.current().version).toBe(before.version);
    expect(config.current()).not.toBe(before);
    expect(summary(lines)).toEqual([
      [
        50,
        'configuration reload failed; keeping the previous configuration',
        `invalid Wallet "demo" in ${walletsFile} (document 1): apiVersion "tollgate.dev/v1" is not served; use "tollgate.dev/v1alpha1"`,
      ],
      [30, 'configuration is valid again and reloaded'],
      [30, 'configuration reloaded'],
    ]);
  });

  it('counts failed beforeReplace as failure', async () => {
    const { log, lines } = recordingLogger();
    let rejectNext = true;
    const config = await ManifestConfig.load(folder, compile, log, async () => {
      if (rejectNext) throw new Error('ledger unavailable');
    });
    const before = config.current();

    await writeFile(walletsFile, original.replace('daily: "10.00"', 'daily: "12.00"'));
    await config.reload();
    expect(config.current()).toBe(before);
    rejectNext = false;
    await config.reload();

    expect(config.current().wallets.get('default/acme')?.limits.dailyCap).toBe(12_000_000_000n);
    expect(summary(lines)).toEqual([
      [50, 'configuration reload failed; keeping the previous configuration', 'ledger unavailable'],
      [30, 'configuration is valid again and reloaded'],
    ]);
  });
  it('reloads when only a Secret manifest changes', async () => {
    const secretFile = path.join(folder, 'secret.yaml');
    const secret = (key: string) =>
      `apiVersion: v1\nkind: Secret\nmetadata:\n  name: openai-credentials\nstringData:\n  apiKey: ${key}\n`;
    await writeFile(secretFile, secret('sk-first'));
    const { log, lines } = recordingLogger();
    const config = await ManifestConfig.load(folder, (resources) => compileSnapshot(resources, secretsResolver(resources)), log);
    const before = config.current();
    expect(before.routes.get('/openai')?.credential).toBe('sk-first');

    await writeFile(secretFile, secret('sk-second'));
    await config.reload();
    await config.reload();

    expect(config.current().routes.get('/openai')?.credential).toBe('sk-second');
    expect(config.current().version).toBe(before.version);
    expect(summary(lines)).toEqual([[30, 'configuration reloaded']]);
    expect(lines[0]?.['routes']).toEqual(['/openai', '/anthropic']);
    expect(lines[0]?.['wallets']).toBe(2);
    expect(JSON.stringify(lines)).not.toContain('sk-');
  });
});

describe('ManifestConfig skipped documents', () => {
  it('logs a document of another API group once', async () => {
    await writeFile(
      path.join(folder, 'app.yaml'),
      'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n',
    );
    const { log, lines } = recordingLogger();
    const config = await ManifestConfig.load(folder, compile, log);
    await writeFile(walletsFile, original.replace('daily: "10.00"', 'daily: "12.00"'));
    await config.reload();
    await config.reload();

    const skipMessage = 'skipped a document that is no Tollgate resource; local mode reads only tollgate.dev/v1alpha1 resources and v1 Secrets';
    const appFile = path.join(folder, 'app.yaml');
    expect(lines.map((line) => [line['level'], line['msg'], line['where'], line['apiVersion'], line['kind'], line['name']])).toEqual([
      [30, skipMessage, `${appFile} (document 1)`, 'apps/v1', 'Deployment', 'web'],
      [30, skipMessage, `${appFile} (document 2)`, 'v1', 'ConfigMap', 'settings'],
      [30, 'configuration reloaded', undefined, undefined, undefined, undefined],
    ]);
  });
});

describe('OperatorConfig', () => {
  it('names the URL and the reason when the operator is unreachable', async () => {
    // A port that was just free: nothing listens there, so the connection is refused.
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    await new Promise((resolve) => server.close(resolve));
    const url = `http://127.0.0.1:${port}/v1/snapshot/team-a`;

    await expect(OperatorConfig.connect(url, (resources) => compileSnapshot(resources, () => undefined), pino({ level: 'silent' }))).rejects.toThrow(
      `could not read the configuration from the operator at ${url}: connect ECONNREFUSED 127.0.0.1:${port}; check TOLLGATE_CONFIG_URL and that the operator is running`,
    );
  });
});

describe('OperatorConfig provider credentials', () => {
  const route = (name: string) => ({
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'ProviderRoute',
    metadata: { name, namespace: 'team-a' },
    spec: { protocol: 'openai', baseURL: 'https://api.openai.com', credentialSecretRef: { name: 'keys', key: name }, models: [`model-${name}`] },
  });
  const CHANGED = 'provider credentials changed; the configuration uses them from now on';
  const credentialOf = (config: OperatorConfig, name: string) => [...config.current().routes.values()].find((each) => each.name === name)?.credential;

  it('compiles again when a key file changes, and only then', async () => {
    const keys = path.join(folder, 'keys');
    await mkdir(keys);
    await writeFile(path.join(keys, 'first'), 'sk-first-1');
    await writeFile(path.join(keys, 'second'), 'sk-second-1');

    // A snapshot endpoint that answers the first poll with one route, and the next one, once released, with two.
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const held: http.ServerResponse[] = [];
    let polls = 0;
    const server = http.createServer((request, response) => {
      polls += 1;
      const send = (routes: unknown[]) => response.end(JSON.stringify({ resources: { routes, plans: [], wallets: [] } }));
      if (polls === 1) send([route('first')]);
      else if (polls === 2) void released.then(() => send([route('first'), route('second')]));
      else held.push(response);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;

    const { log, lines } = recordingLogger();
    // The sidecar reads <folder>/<Secret name>/<key>, here <folder>/keys/first and <folder>/keys/second.
    const credentials = fileCredentials(folder);
    const config = await OperatorConfig.connect(`http://127.0.0.1:${port}/v1/snapshot/team-a`, (resources) => compileSnapshot(resources, credentials), log, {
      credentialsOf: credentialsFingerprint(credentials),
      credentialsCheckMs: 10,
    });
    const changes = () => lines.filter((line) => line['msg'] === CHANGED).length;
    try {
      // A snapshot that adds a route reads that route's key with it, which is no change of credentials.
      const before = config.current().version;
      release();
      await vi.waitFor(() => expect(config.current().version).not.toBe(before));
      expect(credentialOf(config, 'second')).toBe('sk-second-1');
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(changes()).toBe(0);

      // The kubelet swaps a Secret's files in at once, never half written; a rename does the same here.
      await writeFile(path.join(keys, 'second.new'), 'sk-second-2');
      await rename(path.join(keys, 'second.new'), path.join(keys, 'second'));
      await vi.waitFor(() => expect(changes()).toBe(1));
      expect(credentialOf(config, 'second')).toBe('sk-second-2');
      expect(JSON.stringify(lines)).not.toContain('sk-second');
    } finally {
      config.close();
      for (const response of held) response.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
  it('logs a failed compile once per change', async () => {
    const keys = path.join(folder, 'keys');
    await mkdir(keys);
    await writeFile(path.join(keys, 'first'), 'sk-first-1');
    const server = http.createServer((request, response) => {
      // The long poll for a newer version waits for a change that never comes.
      if (request.url?.includes('version=')) return;
      response.end(JSON.stringify({ resources: { routes: [route('first')], plans: [], wallets: [] } }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;

    const { log, lines } = recordingLogger();
    const credentials = fileCredentials(folder);
    // A compile that rejects the second key, as one with a defect in the resources would.
    const compile = (resources: ResourceSet) => {
      if (credentials(resources.routes[0]!) === 'sk-first-2') throw new Error('the route cannot be compiled');
      return compileSnapshot(resources, credentials);
    };
    const config = await OperatorConfig.connect(`http://127.0.0.1:${port}/v1/snapshot/team-a`, compile, log, {
      credentialsOf: credentialsFingerprint(credentials),
      credentialsCheckMs: 10,
    });
    const failures = () => lines.filter((line) => String(line['msg']).startsWith('compiling the configuration with the changed provider credentials failed')).length;
    try {
      await writeFile(path.join(keys, 'first.new'), 'sk-first-2');
      await rename(path.join(keys, 'first.new'), path.join(keys, 'first'));
      await vi.waitFor(() => expect(failures()).toBe(1));
      // Twenty more checks see the same key.
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(failures()).toBe(1);
      expect(credentialOf(config, 'first')).toBe('sk-first-1');

      await writeFile(path.join(keys, 'first.new'), 'sk-first-3');
      await rename(path.join(keys, 'first.new'), path.join(keys, 'first'));
      await vi.waitFor(() => expect(credentialOf(config, 'first')).toBe('sk-first-3'));
      expect(failures()).toBe(1);
      expect(lines.filter((line) => line['msg'] === CHANGED)).toHaveLength(1);
    } finally {
      config.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
