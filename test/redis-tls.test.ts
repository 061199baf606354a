/**
 * The ledger over TLS to real redis-server processes whose certificates a
 * private CA signed, as cert-manager or a managed Redis service issues
 * them: one server that asks for client certificates (redis-server's
 * default), one that does not and whose certificate names another host, and
 * a three-master cluster with TLS on its bus too. It covers the ledger
 * itself, `tollgate dev` serving the official openai client, `tollgate
 * ledger`, and the messages for each wrong or missing TLS setting.
 */

import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { copyFile, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';

import { LedgerTimeoutError, LedgerUnavailableError, type WalletKey } from '../src/ledger/ledger.ts';
import { keySlot, RedisLedger, walletKeys } from '../src/ledger/redis.ts';
import { loadRedisTls, REDIS_TLS_ENV, REDIS_TLS_OPTIONS, watchRedisTls, type RedisTlsFiles } from '../src/ledger/redis-tls.ts';
import { startDevProcess } from './support/dev-process.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';
import { startRedisCluster, type RunningRedisCluster } from './support/redis-cluster.ts';
import { createExpiredClientCertificate, createTestCertificates, type TestCertificates } from './support/tls.ts';

const ROOT = path.join(import.meta.dirname, '..');
const run = promisify(execFile);

let certs: TestCertificates;
/** A second CA, which signed neither server. */
let other: TestCertificates;
/** Asks for client certificates. */
let redis: RunningRedis;

beforeAll(async () => {
  [certs, other] = await Promise.all([createTestCertificates(), createTestCertificates('other')]);
  redis = await startRedis({ tls: { certFile: certs.serverCertFile, keyFile: certs.serverKeyFile, caFile: certs.caFile } });
});

afterAll(async () => {
  await redis?.stop();
  await Promise.all([certs?.remove(), other?.remove()]);
});

const wallet: WalletKey = { namespace: 'tls', name: 'team' };
const hold = { fixed: 0n, perUnit: 1000n, minUnits: 1, maxUnits: 10, ttlSeconds: 60, fingerprint: 'f' };
const usage = { charged: 7000n, providerCost: 3000n, model: 'gpt-4o-mini', route: 'openai', tokens: { input: 4, output: 3 }, estimated: false };

/** The full client setting: the private CA and a client certificate. */
const clientFiles = (): RedisTlsFiles => ({ caFile: certs.caFile, certFile: certs.clientCertFile, keyFile: certs.clientKeyFile });

function ledgerFor(url: string, files: RedisTlsFiles, timeoutMs = 2000): RedisLedger {
  return new RedisLedger(url, { tls: loadRedisTls(url, files, REDIS_TLS_OPTIONS), timeoutMs });
}

/** Runs `fn` with a ledger and quits it afterwards. */
async function withLedger<T>(ledger: RedisLedger, fn: (ledger: RedisLedger) => Promise<T>): Promise<T> {
  try {
    return await fn(ledger);
  } finally {
    await ledger.quit();
  }
}

/** Returns the error of the first credit on a ledger whose connection cannot come up. */
async function creditError(ledger: RedisLedger): Promise<Error> {
  return withLedger(ledger, async (opened) => {
    const error = await opened.credit(wallet, 'grant-1', 1n).then(
      () => undefined,
      (caught: unknown) => caught as Error,
    );
    if (error === undefined) throw new Error('the credit succeeded, but the connection should have failed');
    return error;
  });
}

describe('RedisLedger over TLS to one server', () => {
  it('serves every step of a request with the private CA and a client certificate', async () => {
    const tlsWallet = { namespace: 'tls', name: 'served' };
    await withLedger(ledgerFor(redis.tlsUrl!, clientFiles()), async (ledger) => {
      expect(await ledger.credit(tlsWallet, 'grant-1', 50_000n)).toEqual({ status: 'credited', replayed: false, balance: 50_000n, amount: 50_000n });
      expect(await ledger.reserve(tlsWallet, 'req-1', hold)).toEqual({ status: 'reserved', amount: 10_000n, units: 10, replayed: false });
      expect(await ledger.commit(tlsWallet, 'req-1', usage)).toEqual({ status: 'committed', charged: 7000n, released: 3000n, replayed: false });
      expect(await ledger.state(tlsWallet)).toEqual({
        granted: 50_000n,
        spent: 7000n,
        expired: 0n,
        reserved: 0n,
        balance: 43_000n,
        available: 43_000n,
        providerCost: 3000n,
        chargedWithoutCost: 0n,
        holds: 0,
        closed: false,
      });
      expect(await ledger.verify(tlsWallet)).toMatchObject({ ok: true, entries: 2 });
    });
  });

  it('names the CA setting when the server certificate is not trusted', async () => {
    const port = new URL(redis.tlsUrl!).port;
    const failure = `ledger credit for wallet tls/team failed because Redis at 127.0.0.1:${port} is unavailable: self-signed certificate in certificate chain.`;

    // Node.js's built-in CA list does not include a private CA.
    const withoutCa = await creditError(ledgerFor(redis.tlsUrl!, { certFile: certs.clientCertFile, keyFile: certs.clientKeyFile }));
    expect(withoutCa).toBeInstanceOf(LedgerUnavailableError);
    expect(withoutCa.message).toBe(
      `${failure} The ledger does not trust the Redis server's TLS certificate: give it the CA that signed that certificate in TOLLGATE_REDIS_CA_FILE.`,
    );

    const wrongCa = await creditError(ledgerFor(redis.tlsUrl!, { ...clientFiles(), caFile: other.caFile }));
    expect(wrongCa.message).toBe(`${failure} The ledger does not trust the Redis server's TLS certificate: check that the CA in TOLLGATE_REDIS_CA_FILE signed it.`);
  });

  it('names the settings as the caller gives them', async () => {
    const ledger = new RedisLedger(redis.tlsUrl!, {
      tls: loadRedisTls(redis.tlsUrl!, { certFile: certs.clientCertFile, keyFile: certs.clientKeyFile }, REDIS_TLS_OPTIONS),
      tlsSettingNames: REDIS_TLS_OPTIONS,
    });
    const error = await creditError(ledger);
    expect(error.message).toMatch(/ The ledger does not trust the Redis server's TLS certificate: give it the CA that signed that certificate in --redis-ca\.$/);
  });

  it('connects with TLS for a scheme in upper case', async () => {
    const upper = redis.tlsUrl!.replace('rediss://', 'REDISS://');
    const tlsWallet = { namespace: 'tls', name: 'upper' };
    await withLedger(ledgerFor(upper, clientFiles()), async (ledger) => {
      expect(await ledger.credit(tlsWallet, 'grant-1', 5n)).toEqual({ status: 'credited', replayed: false, balance: 5n, amount: 5n });
    });

    // Without TLS files, only the scheme asks for TLS; a plain port then never completes the handshake.
    const plainPort = await creditError(new RedisLedger(`REDISS://127.0.0.1:${redis.port}`, { timeoutMs: 300 }));
    expect(plainPort).toBeInstanceOf(LedgerTimeoutError);
    expect(plainPort.message).toContain("The connection's TLS handshake has not completed");
  });

  it('gives the certificate advice on a timeout', async () => {
    const ledger = ledgerFor(redis.tlsUrl!, { caFile: certs.caFile }, 10);
    const port = new URL(redis.tlsUrl!).port;
    try {
      // Let the first connection attempt fail, so that the call waits for a connection that keeps failing.
      await new Promise((resolve) => setTimeout(resolve, 500));
      const error = await ledger.state(wallet).then(
        () => undefined,
        (caught: unknown) => caught as Error,
      );
      expect(error).toBeInstanceOf(LedgerTimeoutError);
      expect(error?.message).toMatch(
        new RegExp(
          `^ledger state for wallet tls/team got no answer from Redis at 127\\.0\\.0\\.1:${port} within 10 ms ` +
            '\\((?:connection: (?:read|write) ECONNRESET\\)\\. Check that Redis is running and reachable there\\. If it asks for client certificates ' +
            "\\(redis-server's tls-auth-clients\\), give one|connection: TLS error: tlsv13 alert certificate required\\)\\. Redis asks for a client certificate: give one) " +
            'in TOLLGATE_REDIS_CERT_FILE and TOLLGATE_REDIS_KEY_FILE; the operation may still run when Redis catches up',
        ),
      );
    } finally {
      await ledger.quit();
    }
  });

  it('says that the server asks for a client certificate', async () => {
    const error = await creditError(ledgerFor(redis.tlsUrl!, { caFile: certs.caFile }));
    expect(error).toBeInstanceOf(LedgerUnavailableError);
    const port = new URL(redis.tlsUrl!).port;
    // Under TLS 1.3 the client may write before the server's alert arrives, so it gets either the reset or the alert.
    expect(error.message).toMatch(
      new RegExp(
        `^ledger credit for wallet tls/team failed because Redis at 127\\.0\\.0\\.1:${port} is unavailable: ` +
          '(?:(?:read|write) ECONNRESET\\. Check that Redis is running and reachable there\\. If it asks for client certificates ' +
          "\\(redis-server's tls-auth-clients\\), give one|TLS error: tlsv13 alert certificate required\\. Redis asks for a client certificate: give one) " +
          'in TOLLGATE_REDIS_CERT_FILE and TOLLGATE_REDIS_KEY_FILE\\.$',
      ),
    );
  });

  it('says when the server refuses the client certificate', async () => {
    const error = await creditError(ledgerFor(redis.tlsUrl!, { caFile: certs.caFile, certFile: other.clientCertFile, keyFile: other.clientKeyFile }));
    expect(error).toBeInstanceOf(LedgerUnavailableError);
    const port = new URL(redis.tlsUrl!).port;
    expect(error.message).toMatch(
      new RegExp(
        `^ledger credit for wallet tls/team failed because Redis at 127\\.0\\.0\\.1:${port} is unavailable: ` +
          "(?:TLS error: tlsv1 alert unknown ca\\. Redis rejected the ledger's client certificate: check that a CA in " +
          "redis-server's tls-ca-cert-file signed the certificate in TOLLGATE_REDIS_CERT_FILE, and that it has not expired\\." +
          '|(?:read|write) ECONNRESET\\. Check that Redis is running and reachable there\\. If it rejected the client certificate, ' +
          "check that a CA in redis-server's tls-ca-cert-file signed the certificate in TOLLGATE_REDIS_CERT_FILE\\.)$",
      ),
    );
  });

  it('suggests rediss:// for a TLS port reached without TLS', async () => {
    const plainUrl = redis.tlsUrl!.replace('rediss://', 'redis://');
    const error = await creditError(new RedisLedger(plainUrl, { timeoutMs: 2000 }));
    expect(error).toBeInstanceOf(LedgerUnavailableError);
    expect(error.message).toMatch(
      new RegExp(
        `^ledger credit for wallet tls/team failed because Redis at 127\\.0\\.0\\.1:${new URL(plainUrl).port} is unavailable: ` +
          "(?:read|write) ECONNRESET\\. Check that Redis is running and reachable there\\. If that port serves TLS \\(redis-server's tls-port\\), use a rediss:// URL\\.$",
      ),
    );
  });

  it('points at the handshake when a plain port is reached with TLS', async () => {
    const url = `rediss://127.0.0.1:${redis.port}`;
    const error = await creditError(ledgerFor(url, clientFiles(), 300));
    expect(error).toBeInstanceOf(LedgerTimeoutError);
    expect(error.message).toBe(
      `ledger credit for wallet tls/team got no answer from Redis at 127.0.0.1:${redis.port} within 300 ms. ` +
        "The connection's TLS handshake has not completed: check that this port serves TLS (redis-server's tls-port), " +
        'or use a redis:// URL for a port without TLS; ' +
        'the operation may still run when Redis catches up, which the ledger tolerates (its operations are idempotent)',
    );
  });
});

describe('RedisLedger with renewed TLS files', () => {
  let rotating: RunningRedis;
  let dir: string;
  /** The ledger's files, which the test replaces as the kubelet updates a mounted Secret. */
  let files: RedisTlsFiles;

  beforeAll(async () => {
    rotating = await startRedis({ tls: { certFile: certs.serverCertFile, keyFile: certs.serverKeyFile, caFile: certs.caFile } });
    dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-tls-files-'));
    files = { caFile: path.join(dir, 'ca.crt'), certFile: path.join(dir, 'tls.crt'), keyFile: path.join(dir, 'tls.key') };
  });

  afterAll(async () => {
    await rotating?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** Writes the CA and client certificate of `source` into the ledger's files, each by a rename, so no reader sees half a file. */
  async function installFiles(source: { caFile: string; clientCertFile: string; clientKeyFile: string }): Promise<void> {
    const pairs: Array<[string, string]> = [
      [source.caFile, files.caFile!],
      [source.clientCertFile, files.certFile!],
      [source.clientKeyFile, files.keyFile!],
    ];
    for (const [from, to] of pairs) {
      await copyFile(from, `${to}.new`);
      await rename(`${to}.new`, to);
    }
  }

  /** Waits until `entries` has `count` entries, or 5 s. */
  async function waitForLog(entries: object[], count: number): Promise<void> {
    for (let attempt = 0; entries.length < count && attempt < 250; attempt += 1) await new Promise((resolve) => setTimeout(resolve, 20));
  }

  it('uses renewed certificates for the next connection', async () => {
    const renewed = await createTestCertificates('renewed');
    const logged: object[] = [];
    const warnings: object[] = [];
    const logger = { info: (details: object) => logged.push(details), warn: (details: object) => warnings.push(details) };
    const url = rotating.tlsUrl!;
    await installFiles(certs);
    const tls = loadRedisTls(url, files, REDIS_TLS_ENV)!;
    const stopWatch = watchRedisTls(tls, logger, 50);
    const admin = new Redis(rotating.url);
    const renewedWallet = { namespace: 'tls', name: 'renewed' };
    try {
      await withLedger(new RedisLedger(url, { tls, timeoutMs: 2000 }), async (ledger) => {
        await ledger.credit(renewedWallet, 'grant-1', 5000n);

        // The new CA signed both the server's and the client's new certificates, so only the new files connect.
        await installFiles(renewed);
        await waitForLog(logged, 1);
        expect(logged).toEqual([{ files: [files.caFile, files.certFile, files.keyFile], clientCertificateExpires: expiryOf(renewed.clientCertFile) }]);
        await admin.config('SET', 'tls-cert-file', renewed.serverCertFile, 'tls-key-file', renewed.serverKeyFile, 'tls-ca-cert-file', renewed.caFile);
        // The open connection keeps its session until it is dropped.
        expect((await ledger.state(renewedWallet)).balance).toBe(5000n);
        expect(await admin.client('KILL', 'TYPE', 'normal', 'SKIPME', 'yes')).toBeGreaterThan(0);

        let balance: bigint | undefined;
        for (let attempt = 0; balance === undefined && attempt < 100; attempt += 1) {
          await new Promise((resolve) => setTimeout(resolve, 50));
          balance = await ledger.state(renewedWallet).then(
            (state) => state.balance,
            () => undefined,
          );
        }
        expect(balance).toBe(5000n);
        expect(warnings).toEqual([]);
      });
    } finally {
      stopWatch();
      admin.disconnect();
      await renewed.remove();
    }
  });

  it('notices files renewed before the watch starts', async () => {
    const logged: object[] = [];
    const logger = { info: (details: object) => logged.push(details), warn: (details: object) => logged.push(details) };
    await installFiles(certs);
    const tls = loadRedisTls(rotating.tlsUrl!, files, REDIS_TLS_ENV)!;
    // The sidecar loads the files, then waits for its configuration before the watch starts; a renewal can land between.
    await installFiles(other);
    const stopWatch = watchRedisTls(tls, logger, 20);
    try {
      await waitForLog(logged, 1);
      expect(logged).toHaveLength(1);
      expect(tls.ca).toBe(await readFile(other.caFile, 'utf8'));
      expect(tls.cert).toBe(await readFile(other.clientCertFile, 'utf8'));
    } finally {
      stopWatch();
    }
  });

  it('keeps the previous files while the new ones do not fit', async () => {
    const logged: object[] = [];
    const warnings: Array<{ reason: string; files: string[] }> = [];
    const logger = { info: (details: object) => logged.push(details), warn: (details: object) => warnings.push(details as { reason: string; files: string[] }) };
    await installFiles(certs);
    const tls = loadRedisTls(rotating.tlsUrl!, files, REDIS_TLS_ENV)!;
    const before = { ...tls };
    const stopWatch = watchRedisTls(tls, logger, 20);
    try {
      // A certificate written before its key: the new certificate belongs to another key.
      await copyFile(other.clientCertFile, `${files.certFile}.new`);
      await rename(`${files.certFile}.new`, files.certFile!);
      await waitForLog(warnings, 1);
      // Several more checks run on the same files and log nothing more.
      await new Promise((resolve) => setTimeout(resolve, 200));

      expect(warnings).toHaveLength(1);
      expect(warnings[0]!.reason).toMatch(/^the Redis TLS files \(.*\) cannot be used: .*; check that TOLLGATE_REDIS_CERT_FILE and TOLLGATE_REDIS_KEY_FILE belong together/);
      expect(logged).toEqual([]);
      expect(tls).toEqual(before);

      // The key arrives, and the pair is taken.
      await copyFile(other.clientKeyFile, `${files.keyFile}.new`);
      await rename(`${files.keyFile}.new`, files.keyFile!);
      await waitForLog(logged, 1);
      expect(logged).toHaveLength(1);
      expect(tls.cert).toBe(await readFile(other.clientCertFile, 'utf8'));
      expect(tls.key).toBe(await readFile(other.clientKeyFile, 'utf8'));
      expect(tls.ca).toBe(before.ca);
    } finally {
      stopWatch();
    }
  });
});

describe('RedisLedger over TLS after its connection was up', () => {
  let server: RunningRedis;

  beforeEach(async () => {
    server = await startRedis({ tls: { certFile: certs.serverCertFile, keyFile: certs.serverKeyFile, caFile: certs.caFile } });
  });

  afterEach(async () => {
    server?.resume();
    await server?.stop();
  });

  /** Returns the messages of `count` state calls made 250 ms apart. */
  async function failures(ledger: RedisLedger, count: number): Promise<string[]> {
    const messages: string[] = [];
    for (let call = 0; call < count; call += 1) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      messages.push(await ledger.state(wallet).then(() => 'ok', (error: Error) => error.message));
    }
    return messages;
  }

  it('names the rejected client certificate on every call', async () => {
    const admin = new Redis(server.url);
    await withLedger(ledgerFor(server.tlsUrl!, clientFiles()), async (ledger) => {
      await ledger.credit(wallet, 'grant-1', 10n);
      // The server stops trusting the client certificate's CA, and the open connection drops.
      await admin.config('SET', 'tls-ca-cert-file', other.caFile);
      await admin.client('KILL', 'TYPE', 'normal', 'SKIPME', 'yes');

      const messages = await failures(ledger, 10);
      // Under TLS 1.3 the client may see the server's alert or the reset that follows it. Until the first attempt
      // to connect again fails, a call's error reports only that the connection is down.
      const certificate = /Redis rejected the ledger's client certificate|If it rejected the client certificate/;
      for (const message of messages) expect(message).toMatch(new RegExp(`${certificate.source}|the connection is down and the client is reconnecting`));
      expect(messages.filter((message) => certificate.test(message)).length).toBeGreaterThanOrEqual(8);
    }).finally(() => admin.disconnect());
  });

  it('names a client certificate that expired', async () => {
    // A certificate that expires while the process runs: loadRedisTls refuses one that has expired already.
    const expired = await createExpiredClientCertificate(certs);
    const tls = { ca: await readFile(certs.caFile, 'utf8'), cert: await readFile(expired.certFile, 'utf8'), key: await readFile(expired.keyFile, 'utf8') };
    const error = await creditError(new RedisLedger(server.tlsUrl!, { tls }));
    expect(error.message).toMatch(
      /(?:alert certificate expired\. Redis rejected the ledger's client certificate|ECONNRESET\. .*If it rejected the client certificate).* in TOLLGATE_REDIS_CERT_FILE/,
    );
  });

  it('does not blame the port when the server stalls', async () => {
    await withLedger(ledgerFor(server.tlsUrl!, clientFiles(), 200), async (ledger) => {
      await ledger.credit(wallet, 'grant-1', 10n);
      server.pause();
      // Calls overlap, as a sidecar's do. After five timeouts the ledger drops the silent connection, the new one's
      // handshake waits for the stalled server, and the calls sent before the drop time out meanwhile.
      const calls: Array<Promise<string>> = [];
      for (let call = 0; call < 30; call += 1) {
        calls.push(ledger.state(wallet).then(() => 'ok', (error: Error) => error.message));
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const messages = await Promise.all(calls);
      expect(messages.filter((message) => message.includes('got no answer')).length).toBeGreaterThan(5);
      for (const message of messages) {
        expect(message).not.toContain('TLS handshake');
        expect(message).toMatch(/Check that Redis is running, reachable and not blocked|no reply from Redis for 5 ledger timeouts of 200 ms/);
      }
    });
  });
});

/** Returns the end of a certificate's validity as an ISO timestamp. */
function expiryOf(certFile: string): string {
  return new Date(new X509Certificate(readFileSync(certFile)).validTo).toISOString();
}

describe('RedisLedger over TLS to a server that names another host', () => {
  let named: TestCertificates;
  let namedRedis: RunningRedis;

  beforeAll(async () => {
    named = await createTestCertificates('named', 'DNS:redis.tollgate.svc');
    namedRedis = await startRedis({ tls: { certFile: named.serverCertFile, keyFile: named.serverKeyFile, caFile: named.caFile, authClients: false } });
  });

  afterAll(async () => {
    await namedRedis?.stop();
    await named?.remove();
  });

  it('connects with the CA alone when the server asks for no client certificate', async () => {
    // Node.js checks the certificate against the host that ioredis connects to; here only the CA is wrong or right.
    const tlsUrl = namedRedis.tlsUrl!;
    const error = await creditError(ledgerFor(tlsUrl, { caFile: named.caFile }));
    expect(error.message).toBe(
      `ledger credit for wallet tls/team failed because Redis at 127.0.0.1:${new URL(tlsUrl).port} is unavailable: ` +
        "Hostname/IP does not match certificate's altnames: IP: 127.0.0.1 is not in the cert's list: . " +
        "The Redis server's TLS certificate does not name the host in the Redis URL: use a host name or address that the certificate names.",
    );
  });
});

describe('tollgate dev and tollgate ledger over TLS', () => {
  let manifests: string;

  beforeAll(async () => {
    manifests = await mkdtemp(path.join(os.tmpdir(), 'tollgate-tls-dev-'));
    await writeFile(
      path.join(manifests, 'resources.yaml'),
      [
        'apiVersion: tollgate.dev/v1alpha1\nkind: ProviderRoute\nmetadata: { name: openai }\nspec:\n  protocol: openai\n' +
          '  baseURL: https://api.openai.com\n  credentialSecretRef: { name: openai-credentials, key: apiKey }\n  models: [gpt-4o-mini]\n' +
          '  costs:\n    gpt-4o-mini: { input: "0.50", output: "1.00" }\n',
        'apiVersion: tollgate.dev/v1alpha1\nkind: PricePlan\nmetadata: { name: plan }\nspec:\n  currency: USD\n' +
          '  versions:\n    - effectiveFrom: "2026-01-01T00:00:00Z"\n      models:\n        gpt-4o-mini: { input: "1.00", output: "2.00" }\n',
        'apiVersion: tollgate.dev/v1alpha1\nkind: Wallet\nmetadata: { name: tls-team }\nspec:\n  currency: USD\n' +
          '  pricePlanRef: { name: plan }\n  grants: [{ id: initial, amount: "10" }]\n',
      ].join('---\n'),
    );
  });

  afterAll(async () => {
    if (manifests) await rm(manifests, { recursive: true, force: true });
  });

  const tlsArgs = () => ['--redis-ca', certs.caFile, '--redis-cert', certs.clientCertFile, '--redis-key', certs.clientKeyFile];
  const env = () => ({ ...process.env, LOG_LEVEL: 'warn', OPENAI_API_KEY: '', ANTHROPIC_API_KEY: '', GEMINI_API_KEY: '', AZURE_OPENAI_API_KEY: '' });

  it('serves an openai chat completion from tollgate dev and reads it back with tollgate ledger', async () => {
    const dev = await startDevProcess(['--manifests', manifests, '--redis', redis.tlsUrl!, ...tlsArgs()]);
    try {
      expect(dev.stdout()).toContain(`\n  ledger: Redis at 127.0.0.1:${new URL(redis.tlsUrl!).port} over TLS\n`);
      const client = new OpenAI({ baseURL: `${dev.url}/openai/v1`, apiKey: 'placeholder', maxRetries: 0 });
      const simulatedUsage = { prompt_tokens: 1_000_000, completion_tokens: 1000, total_tokens: 1_001_000 };
      const { data: completion, response } = await client.chat.completions
        .create(
          { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'How much?' }], max_tokens: 1000 },
          { headers: { 'x-sim-usage': JSON.stringify(simulatedUsage) } },
        )
        .withResponse();
      expect(completion.usage).toEqual(simulatedUsage);
      // One million input tokens at 1.00 plus 1000 output tokens at 2.00 per million.
      expect(response.headers.get('x-tollgate-charged')).toBe('1.002');
    } finally {
      await dev.stop();
    }
    expect(dev.stderr()).toBe('');

    const { stdout: state } = await run(
      process.execPath,
      ['src/cli/main.ts', 'ledger', 'state', '--redis', redis.tlsUrl!, ...tlsArgs(), '--wallet', 'default/tls-team'],
      { cwd: ROOT, env: env() },
    );
    expect(state).toBe(
      [
        'wallet         default/tls-team',
        'granted        10.000000000',
        'spent          1.002000000',
        'expired        0.000000000',
        'reserved       0.000000000 in 0 holds',
        'balance        8.998000000',
        'available      8.998000000',
        'provider cost  0.501000000',
        'margin         0.501000000',
        '',
      ].join('\n'),
    );

    // The files can come from the environment too, as in a pod.
    const { stdout: verified } = await run(
      process.execPath,
      ['src/cli/main.ts', 'ledger', 'verify', '--redis', redis.tlsUrl!, '--wallet', 'default/tls-team'],
      {
        cwd: ROOT,
        env: {
          ...env(),
          TOLLGATE_REDIS_CA_FILE: certs.caFile,
          TOLLGATE_REDIS_CERT_FILE: certs.clientCertFile,
          TOLLGATE_REDIS_KEY_FILE: certs.clientKeyFile,
        },
      },
    );
    expect(verified).toBe('replayed 2 entries: granted 10.000000000, spent 1.002000000, expired 0.000000000\nok: balance = grants - debits - expired\n');
  });

  it('names the option and the variable of a setting given neither way', async () => {
    const failed = await run(
      process.execPath,
      ['src/cli/main.ts', 'ledger', 'state', '--redis', redis.tlsUrl!, '--redis-ca', certs.caFile, '--wallet', 'default/tls-team'],
      { cwd: ROOT, env: { ...env(), TOLLGATE_REDIS_CERT_FILE: '', TOLLGATE_REDIS_KEY_FILE: '' } },
    ).then(
      () => undefined,
      (error: { code: number; stderr: string }) => error,
    );
    expect(failed?.code).toBe(1);
    // The server's alert or the reset that follows it: both name the client certificate settings as this command reads them.
    expect(failed?.stderr).toContain('give one in --redis-cert (or TOLLGATE_REDIS_CERT_FILE) and --redis-key (or TOLLGATE_REDIS_KEY_FILE).');
  });

  it('refuses TLS files without a TLS URL at start, naming the option', async () => {
    const devWithoutRedis = await run(process.execPath, ['src/cli/main.ts', 'dev', '--port', '0', '--redis-ca', certs.caFile], { cwd: ROOT, env: env() }).then(
      () => undefined,
      (error: { code: number; stderr: string }) => error,
    );
    expect(devWithoutRedis?.code).toBe(2);
    expect(devWithoutRedis?.stderr).toBe(
      '--redis-ca, --redis-cert and --redis-key apply to the Redis ledger; give --redis rediss://HOST:PORT too, or remove them\n',
    );

    const ledgerPlain = await run(
      process.execPath,
      ['src/cli/main.ts', 'ledger', 'state', '--redis', redis.url, '--wallet', 'default/tls-team'],
      { cwd: ROOT, env: { ...env(), TOLLGATE_REDIS_CA_FILE: certs.caFile } },
    ).then(
      () => undefined,
      (error: { code: number; stderr: string }) => error,
    );
    const emptyOption = await run(process.execPath, ['src/cli/main.ts', 'dev', '--port', '0', '--redis', redis.tlsUrl!, '--redis-ca', ''], { cwd: ROOT, env: env() }).then(
      () => undefined,
      (error: { code: number; stderr: string }) => error,
    );
    expect(emptyOption?.code).toBe(2);
    expect(emptyOption?.stderr).toBe('--redis-ca is empty; give the path of a PEM file, or leave the option out\n');

    expect(ledgerPlain?.code).toBe(2);
    expect(ledgerPlain?.stderr.split('\n')[0]).toBe(
      `TOLLGATE_REDIS_CA_FILE is set, but the Redis URL "${redis.url}" does not use TLS; use a rediss:// or rediss+cluster:// URL, or remove TOLLGATE_REDIS_CA_FILE`,
    );
  });
});

describe('RedisLedger over TLS to a Redis Cluster', () => {
  let cluster: RunningRedisCluster;

  beforeAll(async () => {
    cluster = await startRedisCluster({ nodes: 3, tls: { certFile: certs.serverCertFile, keyFile: certs.serverKeyFile, caFile: certs.caFile } });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  it('serves a wallet on each master through TLS seeds', async () => {
    const [seed, further] = cluster.tlsNodes;
    const url = `rediss+cluster://127.0.0.1:${seed!.port}?node=127.0.0.1:${further!.port}`;

    // One wallet per master, by the slot of its keys.
    const slotsByMaster = await masterSlotRanges(cluster);
    const wallets = new Map<number, WalletKey>();
    for (let index = 0; index < 1000 && wallets.size < slotsByMaster.size; index += 1) {
      const candidate = { namespace: 'tls', name: `team-${index}` };
      const slot = keySlot(walletKeys(candidate)[0]!);
      for (const [port, ranges] of slotsByMaster) {
        if (!wallets.has(port) && ranges.some(([from, to]) => slot >= from && slot <= to)) wallets.set(port, candidate);
      }
    }
    expect(wallets.size).toBe(3);

    await withLedger(ledgerFor(url, clientFiles()), async (ledger) => {
      for (const each of wallets.values()) {
        expect(await ledger.credit(each, 'grant-1', 50_000n)).toEqual({ status: 'credited', replayed: false, balance: 50_000n, amount: 50_000n });
        expect(await ledger.reserve(each, 'req-1', hold)).toEqual({ status: 'reserved', amount: 10_000n, units: 10, replayed: false });
        expect(await ledger.commit(each, 'req-1', usage)).toEqual({ status: 'committed', charged: 7000n, released: 3000n, replayed: false });
        expect(await ledger.state(each)).toMatchObject({ spent: 7000n, balance: 43_000n, reserved: 0n, holds: 0 });
      }
    });
  });

  it('names the CA setting when a seed certificate is not trusted', async () => {
    const seed = cluster.tlsNodes[0]!;
    const error = await creditError(ledgerFor(`rediss+cluster://127.0.0.1:${seed.port}`, { ...clientFiles(), caFile: other.caFile }));
    expect(error).toBeInstanceOf(LedgerUnavailableError);
    expect(error.message).toBe(
      `ledger credit for wallet tls/team failed because the Redis Cluster at seed 127.0.0.1:${seed.port} is unavailable: ` +
        `no cluster node answered (last tried 127.0.0.1:${seed.port}: self-signed certificate in certificate chain). ` +
        "The ledger does not trust the Redis server's TLS certificate: check that the CA in TOLLGATE_REDIS_CA_FILE signed it.",
    );
  });

  it('suggests rediss+cluster:// for TLS ports reached without TLS', async () => {
    const seed = cluster.tlsNodes[0]!;
    const error = await creditError(new RedisLedger(`redis+cluster://127.0.0.1:${seed.port}`, { timeoutMs: 2000 }));
    expect(error).toBeInstanceOf(LedgerUnavailableError);
    expect(error.message).toMatch(
      new RegExp(
        `^ledger credit for wallet tls/team failed because the Redis Cluster at seed 127\\.0\\.0\\.1:${seed.port} is unavailable: ` +
          `no cluster node answered \\(last tried 127\\.0\\.0\\.1:${seed.port}: (?:read|write) ECONNRESET\\)\\. ` +
          "Check that Redis is running and reachable there\\. If that port serves TLS \\(redis-server's tls-port\\), use a rediss\\+cluster:// URL\\.$",
      ),
    );
  });
});

/** Returns the slot ranges of each master, by its plain port, from CLUSTER SLOTS over a connection without TLS. */
async function masterSlotRanges(cluster: RunningRedisCluster): Promise<Map<number, Array<[number, number]>>> {
  const { Redis } = await import('ioredis');
  const connection = new Redis(cluster.nodes[0]!);
  try {
    const slots = (await connection.cluster('SLOTS')) as unknown as Array<[number, number, [string, number]]>;
    const byMaster = new Map<number, Array<[number, number]>>();
    for (const [from, to, [, port]] of slots) byMaster.set(port, [...(byMaster.get(port) ?? []), [from, to]]);
    return byMaster;
  } finally {
    await connection.quit();
  }
}

describe('RedisLedger over TLS to a Redis Cluster whose certificates name only a host', () => {
  let named: TestCertificates;
  let cluster: RunningRedisCluster;

  beforeAll(async () => {
    named = await createTestCertificates('named-cluster', 'DNS:localhost');
    cluster = await startRedisCluster({ nodes: 3, tls: { certFile: named.serverCertFile, keyFile: named.serverKeyFile, caFile: named.caFile } });
  });

  afterAll(async () => {
    await cluster?.stop();
    await named?.remove();
  });

  it('names the node and its certificate error', async () => {
    // The seed is reached by the name in the URL, which its certificate names, and the other nodes by the IP addresses they announce.
    const seed = cluster.tlsNodes[0]!;
    const url = `rediss+cluster://localhost:${seed.port}`;
    const error = await creditError(new RedisLedger(url, { tls: loadRedisTls(url, { caFile: named.caFile, certFile: named.clientCertFile, keyFile: named.clientKeyFile }, REDIS_TLS_OPTIONS) }));
    expect(error).toBeInstanceOf(LedgerUnavailableError);
    expect(error.message).toMatch(
      new RegExp(
        `^ledger credit for wallet tls/team failed because the Redis Cluster at seed localhost:${seed.port} is unavailable: ` +
          'the cluster is not ready: a node did not report cluster_state:ok in CLUSTER INFO ' +
          "\\(last node error 127\\.0\\.0\\.1:\\d+: Hostname/IP does not match certificate's altnames: IP: 127\\.0\\.0\\.1 is not in the cert's list: \\)\\. " +
          "The Redis node's TLS certificate does not name the address the ledger connected to\\. The ledger reaches the seeds by the host in the URL " +
          'and the other nodes by the address they announce in CLUSTER SLOTS, an IP address unless the cluster announces host names ' +
          '\\(cluster-announce-hostname with cluster-preferred-endpoint-type hostname\\), so the node certificates must name those addresses\\.$',
      ),
    );
  });
});
