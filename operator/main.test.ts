import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KubeObject, ResourceKind } from './kube.ts';
import { ConfigurationError, keysFor, parseListen, parseOperatorArgs, redisUrlHasCredentials, validateOperatorConfig } from './main.ts';
import { createWebhookCertificate } from './webhook/certs.ts';

describe('parseOperatorArgs', () => {
  it('applies defaults', () => {
    const config = parseOperatorArgs(['--redis', 'redis://127.0.0.1:6379', '--namespace', 'tollgate-system'], {});
    expect(config).toMatchObject({
      namespace: 'tollgate-system',
      redisUrl: 'redis://127.0.0.1:6379',
      httpHost: '0.0.0.0',
      httpPort: 8080,
      webhook: true,
      webhookHost: '0.0.0.0',
      webhookPort: 9443,
      leaseName: 'tollgate-operator',
      leaseDurationMs: 15_000,
      renewDeadlineMs: 10_000,
      retryPeriodMs: 2_000,
      resyncMs: 60_000,
      watchSilenceMs: 180_000,
      statusIntervalMs: 10_000,
      secretRecheckMs: 30_000,
      workers: 4,
      webhookService: 'tollgate',
      webhookConfiguration: 'tollgate',
      certManager: false,
      configUrl: 'http://tollgate.tollgate-system.svc:8080',
      watchNamespace: undefined,
      sidecarImage: undefined,
    });
    expect(config?.identity).toMatch(/-[0-9a-f]{6}$/);
  });

  it('reads the environment the chart sets', () => {
    const config = parseOperatorArgs([], {
      TOLLGATE_NAMESPACE: 'billing',
      TOLLGATE_POD_NAME: 'tollgate-7d9f-abcde',
      TOLLGATE_REDIS_URL: 'redis://redis.billing:6379',
      TOLLGATE_HTTP_LISTEN: '0.0.0.0:8081',
      TOLLGATE_WEBHOOK_LISTEN: ':9444',
      TOLLGATE_LEASE_NAME: 'tollgate',
      TOLLGATE_WEBHOOK_SERVICE: 'tollgate',
      TOLLGATE_WEBHOOK_CONFIGURATION: 'tollgate-injector',
      TOLLGATE_WEBHOOK_SECRET: 'tollgate-webhook-tls',
      TOLLGATE_WEBHOOK_CERT_MANAGER: 'true',
      TOLLGATE_CONFIG_URL: 'http://tollgate.billing.svc:8081',
      TOLLGATE_SIDECAR_IMAGE: 'ghcr.io/example/tollgate:0.1.0',
    });
    expect(config).toMatchObject({
      namespace: 'billing',
      identity: 'tollgate-7d9f-abcde',
      redisUrl: 'redis://redis.billing:6379',
      httpPort: 8081,
      webhookHost: '0.0.0.0',
      webhookPort: 9444,
      leaseName: 'tollgate',
      webhookConfiguration: 'tollgate-injector',
      webhookSecret: 'tollgate-webhook-tls',
      certManager: true,
      configUrl: 'http://tollgate.billing.svc:8081',
      sidecarImage: 'ghcr.io/example/tollgate:0.1.0',
    });
  });

  it('prefers flags over the environment', () => {
    const config = parseOperatorArgs(
      ['--redis', 'redis://flag:1', '--lease-duration', '2', '--renew-deadline', '1.5', '--retry-period', '0.5', '--no-webhook', '--resync', '5'],
      { TOLLGATE_REDIS_URL: 'redis://env:1', TOLLGATE_LEASE_DURATION: '30', TOLLGATE_NAMESPACE: 'x' },
    );
    expect(config).toMatchObject({
      redisUrl: 'redis://flag:1',
      leaseDurationMs: 2_000,
      renewDeadlineMs: 1_500,
      retryPeriodMs: 500,
      webhook: false,
      resyncMs: 5_000,
      secretRecheckMs: 5_000,
    });
  });

  it('returns undefined for --help', () => {
    expect(parseOperatorArgs(['--help'], {})).toBeUndefined();
  });

  it('rejects missing and invalid values', () => {
    expect(() => parseOperatorArgs([], {})).toThrow('missing Redis URL: pass --redis redis://host:port or set TOLLGATE_REDIS_URL');
    expect(() => parseOperatorArgs(['--redis', 'r', '--resync', 'soon'], {})).toThrow(
      'invalid TOLLGATE_RESYNC / flag value "soon": use a positive number of seconds',
    );
    expect(() => parseOperatorArgs(['--redis', 'r', '--lease-duration', '2.5'], {})).toThrow(
      'invalid --lease-duration 2.5: the Lease stores whole seconds',
    );
    expect(() => parseOperatorArgs(['--redis', 'r', '--workers', '0'], {})).toThrow(ConfigurationError);
    expect(() => parseOperatorArgs(['--unknown'], {})).toThrow();
  });

  it('reads the ledger retention and compaction settings', () => {
    expect(parseOperatorArgs(['--redis', 'r'], {})).toMatchObject({ settledRetentionMs: undefined, compactAfterMs: undefined });
    expect(parseOperatorArgs([], { TOLLGATE_REDIS_URL: 'r', TOLLGATE_LEDGER_RETENTION: '36h', TOLLGATE_LEDGER_COMPACT_AFTER: '90d' })).toMatchObject({
      settledRetentionMs: 36 * 3_600_000,
      compactAfterMs: 90 * 86_400_000,
    });
    expect(parseOperatorArgs(['--redis', 'r', '--ledger-retention', '2d', '--compact-after', '1d12h'], { TOLLGATE_LEDGER_RETENTION: '36h' })).toMatchObject({
      settledRetentionMs: 2 * 86_400_000,
      compactAfterMs: 36 * 3_600_000,
    });
  });

  it('rejects an invalid Redis Cluster URL at start', () => {
    expect(() => parseOperatorArgs(['--redis', 'redis+cluster://redis-0.redis:6379?db=1'], {})).toThrow(ConfigurationError);
    expect(() => parseOperatorArgs([], { TOLLGATE_REDIS_URL: 'redis+cluster://redis-0.redis:6379?db=1' })).toThrow(
      'invalid Redis URL "redis+cluster://redis-0.redis:6379?db=***": unknown query parameter "db"',
    );
    expect(parseOperatorArgs(['--redis', 'redis+cluster://redis-0.redis:6379?node=redis-1.redis:6379'], {})).toMatchObject({
      redisUrl: 'redis+cluster://redis-0.redis:6379?node=redis-1.redis:6379',
    });
  });

  it('reads the ledger timeout, the flag over the variable', () => {
    expect(parseOperatorArgs(['--redis', 'r'], {})).toMatchObject({ ledgerTimeoutMs: undefined });
    expect(parseOperatorArgs([], { TOLLGATE_REDIS_URL: 'r', TOLLGATE_LEDGER_TIMEOUT: '750ms' })).toMatchObject({ ledgerTimeoutMs: 750 });
    expect(parseOperatorArgs(['--redis', 'r', '--ledger-timeout', '5s'], { TOLLGATE_LEDGER_TIMEOUT: '750ms' })).toMatchObject({ ledgerTimeoutMs: 5000 });
    expect(parseOperatorArgs(['--redis', 'r', '--ledger-timeout', '0s'], {})).toMatchObject({ ledgerTimeoutMs: 0 });
    expect(() => parseOperatorArgs(['--redis', 'r', '--ledger-timeout', '5ms'], {})).toThrow(
      'invalid --ledger-timeout "5ms": use a duration from 10ms to 10m, such as 2s, or 0s for no limit',
    );
    expect(() => parseOperatorArgs(['--redis', 'r', '--ledger-timeout', 'soon'], {})).toThrow(ConfigurationError);
  });

  it('rejects a retention below an hour and an invalid duration', () => {
    expect(() => parseOperatorArgs(['--redis', 'r', '--ledger-retention', '30m'], {})).toThrow(
      'invalid retention of settled records 30m: use at least 1h (in whole milliseconds)',
    );
    expect(() => parseOperatorArgs(['--redis', 'r', '--ledger-retention', '30m'], {})).toThrow(ConfigurationError);
    expect(() => parseOperatorArgs(['--redis', 'r', '--compact-after', 'ninety days'], {})).toThrow(
      'invalid TOLLGATE_LEDGER_COMPACT_AFTER / flag value "ninety days": use a duration such as 7d, 36h, 90m or 45s (units ms, s, m, h, d)',
    );
    expect(() => parseOperatorArgs(['--redis', 'r', '--compact-after', '0d'], {})).toThrow(ConfigurationError);
  });

  it('reads the sidecar body limit', () => {
    expect(parseOperatorArgs(['--redis', 'r'], {})?.sidecarBodyLimit).toBeUndefined();
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_BODY_LIMIT: '' })?.sidecarBodyLimit).toBeUndefined();
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_BODY_LIMIT: '8388608' })?.sidecarBodyLimit).toBe(8_388_608);
    expect(parseOperatorArgs(['--redis', 'r', '--sidecar-body-limit', '1'], {})?.sidecarBodyLimit).toBe(1);
    expect(
      parseOperatorArgs(['--redis', 'r', '--sidecar-body-limit', '16777216'], { TOLLGATE_SIDECAR_BODY_LIMIT: '8388608' })?.sidecarBodyLimit,
    ).toBe(16_777_216);
  });

  it('rejects an invalid sidecar body limit', () => {
    const hint = 'use a whole number of bytes from 1 to 9007199254740991, such as 8388608 for 8 MiB';
    for (const text of ['8MiB', '0', '-1', '8.5', '1e6', ' 1024', '9007199254740992']) {
      expect(() => parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_BODY_LIMIT: text }), text).toThrow(
        `invalid TOLLGATE_SIDECAR_BODY_LIMIT "${text}": ${hint}`,
      );
    }
    expect(() => parseOperatorArgs(['--redis', 'r', '--sidecar-body-limit', '4MB'], { TOLLGATE_SIDECAR_BODY_LIMIT: '8388608' })).toThrow(
      `invalid --sidecar-body-limit "4MB": ${hint}`,
    );
    expect(() => parseOperatorArgs(['--redis', 'r', '--sidecar-body-limit', ''], {})).toThrow(`invalid --sidecar-body-limit "": ${hint}`);
    expect(() => parseOperatorArgs(['--redis', 'r', '--sidecar-body-limit', 'big'], {})).toThrow(ConfigurationError);
  });

  it('reads the sidecar tool use limit', () => {
    expect(parseOperatorArgs(['--redis', 'r'], {})?.sidecarMaxToolUses).toBeUndefined();
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_MAX_TOOL_USES: '' })?.sidecarMaxToolUses).toBeUndefined();
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_MAX_TOOL_USES: '12' })?.sidecarMaxToolUses).toBe(12);
    expect(parseOperatorArgs(['--redis', 'r', '--sidecar-max-tool-uses', '1000'], {})?.sidecarMaxToolUses).toBe(1000);
    expect(parseOperatorArgs(['--redis', 'r', '--sidecar-max-tool-uses', '2'], { TOLLGATE_SIDECAR_MAX_TOOL_USES: '12' })?.sidecarMaxToolUses).toBe(2);
  });

  it('rejects an invalid sidecar tool use limit', () => {
    const hint = 'use a whole number of tool uses from 1 to 1000, such as 10';
    for (const text of ['0', '1001', '-1', '2.5', '1e2', ' 10', 'many']) {
      expect(() => parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_MAX_TOOL_USES: text }), text).toThrow(
        `invalid TOLLGATE_SIDECAR_MAX_TOOL_USES "${text}": ${hint}`,
      );
    }
    expect(() => parseOperatorArgs(['--redis', 'r', '--sidecar-max-tool-uses', '5000'], { TOLLGATE_SIDECAR_MAX_TOOL_USES: '12' })).toThrow(
      `invalid --sidecar-max-tool-uses "5000": ${hint}`,
    );
    expect(() => parseOperatorArgs(['--redis', 'r', '--sidecar-max-tool-uses', ''], {})).toThrow(`invalid --sidecar-max-tool-uses "": ${hint}`);
    expect(() => parseOperatorArgs(['--redis', 'r', '--sidecar-max-tool-uses', '0'], {})).toThrow(ConfigurationError);
  });

  it('reads the sidecar wallet label setting', () => {
    expect(parseOperatorArgs(['--redis', 'r'], {})?.sidecarWalletLabel).toBe(true);
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_WALLET_LABEL: '' })?.sidecarWalletLabel).toBe(true);
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_WALLET_LABEL: 'true' })?.sidecarWalletLabel).toBe(true);
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_WALLET_LABEL: 'false' })?.sidecarWalletLabel).toBe(false);
    expect(parseOperatorArgs(['--redis', 'r', '--no-sidecar-wallet-label'], {})?.sidecarWalletLabel).toBe(false);
    expect(parseOperatorArgs(['--redis', 'r', '--no-sidecar-wallet-label'], { TOLLGATE_SIDECAR_WALLET_LABEL: 'true' })?.sidecarWalletLabel).toBe(false);
  });

  it('rejects an invalid sidecar wallet label setting', () => {
    for (const text of ['yes', 'False', '0', ' true']) {
      expect(() => parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_WALLET_LABEL: text }), text).toThrow(
        `invalid TOLLGATE_SIDECAR_WALLET_LABEL "${text}": use true or false`,
      );
    }
    expect(() => parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_WALLET_LABEL: 'off' })).toThrow(ConfigurationError);
    expect(() => parseOperatorArgs(['--redis', 'r', '--no-sidecar-wallet-label=false'], {})).toThrow();
  });

  it('reads the sidecar Redis Secret', () => {
    expect(parseOperatorArgs(['--redis', 'r'], {})?.sidecarRedisSecret).toBeUndefined();
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_REDIS_SECRET: '' })?.sidecarRedisSecret).toBeUndefined();
    expect(parseOperatorArgs(['--redis', 'r', '--sidecar-redis-secret', 'tollgate-redis'], {})?.sidecarRedisSecret).toEqual({ name: 'tollgate-redis', key: 'redisUrl' });
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_REDIS_SECRET: 'ledger.v1/url_2' })?.sidecarRedisSecret).toEqual({ name: 'ledger.v1', key: 'url_2' });
  });

  it('rejects an invalid sidecar Redis Secret', () => {
    for (const text of ['Tollgate', 'a/b/c', '/key', 'name/', 'name-', 'name/k y']) {
      expect(() => parseOperatorArgs(['--redis', 'r', '--sidecar-redis-secret', text], {}), text).toThrow(
        `invalid --sidecar-redis-secret "${text}": use a Secret name, optionally followed by /KEY`,
      );
    }
    expect(() => parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_REDIS_SECRET: 'UPPER' })).toThrow('invalid TOLLGATE_SIDECAR_REDIS_SECRET "UPPER"');
  });

  it('reads the sidecar Redis TLS Secret', () => {
    expect(parseOperatorArgs(['--redis', 'r'], {})?.sidecarRedisTlsSecret).toBeUndefined();
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_REDIS_TLS_SECRET: '' })?.sidecarRedisTlsSecret).toBeUndefined();
    expect(parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_REDIS_TLS_SECRET: 'redis-tls' })?.sidecarRedisTlsSecret).toBe('redis-tls');
    expect(
      parseOperatorArgs(['--redis', 'r', '--sidecar-redis-tls-secret', 'ledger.client-tls'], { TOLLGATE_SIDECAR_REDIS_TLS_SECRET: 'redis-tls' })?.sidecarRedisTlsSecret,
    ).toBe('ledger.client-tls');
  });

  it('rejects an invalid sidecar Redis TLS Secret', () => {
    const hint = 'use a Secret name such as redis-tls (lowercase letters, digits, "-" and ".")';
    for (const text of ['Redis-TLS', 'redis-tls/ca.crt', 'redis_tls', 'redis-', '', 'a'.repeat(254)]) {
      expect(() => parseOperatorArgs(['--redis', 'r', '--sidecar-redis-tls-secret', text], {}), text).toThrow(
        new ConfigurationError(`invalid --sidecar-redis-tls-secret "${text}": ${hint}`),
      );
    }
    expect(() => parseOperatorArgs(['--redis', 'r'], { TOLLGATE_SIDECAR_REDIS_TLS_SECRET: 'UPPER' })).toThrow(
      new ConfigurationError(`invalid TOLLGATE_SIDECAR_REDIS_TLS_SECRET "UPPER": ${hint}`),
    );
  });
});

describe('parseOperatorArgs Redis TLS files', () => {
  const TLS_URL = 'rediss://redis.tollgate-system.svc:6380';
  let dir: string;
  let pem: { ca: string; cert: string; key: string; otherKey: string };
  let files: { ca: string; cert: string; key: string; otherKey: string; notPem: string; missing: string };

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-operator-tls-'));
    const hosts = { dnsNames: ['redis.tollgate-system.svc'], ipAddresses: [] };
    const [first, second] = await Promise.all([createWebhookCertificate(hosts), createWebhookCertificate(hosts)]);
    pem = { ca: first.caCertPem, cert: first.certPem, key: first.keyPem, otherKey: second.keyPem };
    files = {
      ca: path.join(dir, 'ca.crt'),
      cert: path.join(dir, 'tls.crt'),
      key: path.join(dir, 'tls.key'),
      otherKey: path.join(dir, 'other.key'),
      notPem: path.join(dir, 'ca.der'),
      missing: path.join(dir, 'missing.crt'),
    };
    await writeFile(files.ca, pem.ca);
    await writeFile(files.cert, pem.cert);
    await writeFile(files.key, pem.key);
    await writeFile(files.otherKey, pem.otherKey);
    await writeFile(files.notPem, 'not a certificate\n');
  });

  afterAll(async () => {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it('uses no TLS files by default', () => {
    expect(parseOperatorArgs(['--redis', TLS_URL], {})?.redisTls).toBeUndefined();
    expect(parseOperatorArgs(['--redis', TLS_URL], { TOLLGATE_REDIS_CA_FILE: '', TOLLGATE_REDIS_CERT_FILE: '', TOLLGATE_REDIS_KEY_FILE: '' })?.redisTls).toBeUndefined();
  });

  it('reads the files given by flags', () => {
    const config = parseOperatorArgs(['--redis', TLS_URL, '--redis-ca', files.ca, '--redis-cert', files.cert, '--redis-key', files.key], {});
    expect(config?.redisTls).toEqual({ ca: pem.ca, cert: pem.cert, key: pem.key });
  });

  it('reads the files from the variables', () => {
    const caOnly = parseOperatorArgs([], { TOLLGATE_REDIS_URL: TLS_URL, TOLLGATE_REDIS_CA_FILE: files.ca });
    expect(caOnly?.redisTls).toEqual({ ca: pem.ca });

    const clientOnly = parseOperatorArgs([], { TOLLGATE_REDIS_URL: TLS_URL, TOLLGATE_REDIS_CERT_FILE: files.cert, TOLLGATE_REDIS_KEY_FILE: files.key });
    expect(clientOnly?.redisTls).toEqual({ cert: pem.cert, key: pem.key });
  });

  it('prefers a flag over its variable', () => {
    const config = parseOperatorArgs(['--redis', TLS_URL, '--redis-ca', files.ca], { TOLLGATE_REDIS_CA_FILE: files.missing });
    expect(config?.redisTls).toEqual({ ca: pem.ca });
  });

  it('names the flag or the variable of an unreadable file', () => {
    expect(() => parseOperatorArgs(['--redis', TLS_URL, '--redis-ca', files.missing], {})).toThrow(
      new ConfigurationError(
        `cannot read the CA certificate file "${files.missing}" given by --redis-ca (ENOENT); check the path and that the file is readable`,
      ),
    );
    expect(() => parseOperatorArgs([], { TOLLGATE_REDIS_URL: TLS_URL, TOLLGATE_REDIS_CA_FILE: files.missing })).toThrow(
      new ConfigurationError(
        `cannot read the CA certificate file "${files.missing}" given by TOLLGATE_REDIS_CA_FILE (ENOENT); check the path and that the file is readable`,
      ),
    );
  });

  it('rejects a file that contains no PEM certificate', () => {
    expect(() => parseOperatorArgs(['--redis', TLS_URL, '--redis-ca', files.notPem], {})).toThrow(
      new ConfigurationError(
        `--redis-ca "${files.notPem}" contains no PEM certificate (a "-----BEGIN CERTIFICATE-----" block); give the CA certificate in PEM format`,
      ),
    );
  });

  it('rejects TLS files with a URL without TLS', () => {
    expect(() => parseOperatorArgs(['--redis', 'redis://redis:6379', '--redis-ca', files.ca], {})).toThrow(
      new ConfigurationError('--redis-ca is set, but the Redis URL "redis://redis:6379" does not use TLS; use a rediss:// or rediss+cluster:// URL, or remove --redis-ca'),
    );
    expect(() => parseOperatorArgs([], { TOLLGATE_REDIS_URL: 'redis://redis:6379', TOLLGATE_REDIS_CERT_FILE: files.cert, TOLLGATE_REDIS_KEY_FILE: files.key })).toThrow(
      new ConfigurationError(
        'TOLLGATE_REDIS_CERT_FILE is set, but the Redis URL "redis://redis:6379" does not use TLS; ' +
          'use a rediss:// or rediss+cluster:// URL, or remove TOLLGATE_REDIS_CERT_FILE',
      ),
    );
  });

  it('rejects a certificate without its key', () => {
    const hint = 'a client certificate needs both its certificate file and its private key file';
    expect(() => parseOperatorArgs(['--redis', TLS_URL, '--redis-cert', files.cert], {})).toThrow(
      new ConfigurationError(`--redis-cert is set without --redis-key; ${hint}`),
    );
    expect(() => parseOperatorArgs([], { TOLLGATE_REDIS_URL: TLS_URL, TOLLGATE_REDIS_KEY_FILE: files.key })).toThrow(
      new ConfigurationError(`TOLLGATE_REDIS_KEY_FILE is set without TOLLGATE_REDIS_CERT_FILE; ${hint}`),
    );
    // A flag for one file and the variable for the other still pair up.
    expect(parseOperatorArgs(['--redis', TLS_URL, '--redis-cert', files.cert], { TOLLGATE_REDIS_KEY_FILE: files.key })?.redisTls).toEqual({
      cert: pem.cert,
      key: pem.key,
    });
  });

  it('rejects a key that does not belong to the certificate', () => {
    const parse = () => parseOperatorArgs(['--redis', TLS_URL, '--redis-cert', files.cert, '--redis-key', files.otherKey], {});
    expect(parse).toThrow(ConfigurationError);
    expect(parse).toThrow(`the Redis TLS files (${files.cert}, ${files.otherKey}) cannot be used: `);
    expect(parse).toThrow('; check that --redis-cert and --redis-key belong together and that each file is valid PEM');
  });
});

describe('redisUrlHasCredentials', () => {
  it('finds a password or a user name', () => {
    expect(redisUrlHasCredentials('redis://:secret@redis:6379/0')).toBe(true);
    expect(redisUrlHasCredentials('rediss://ledger:secret@redis:6380')).toBe(true);
    expect(redisUrlHasCredentials('redis://ledger@redis:6379')).toBe(true);
  });

  it('finds none in a plain URL', () => {
    expect(redisUrlHasCredentials('redis://redis.tollgate-system.svc:6379/0')).toBe(false);
    expect(redisUrlHasCredentials('not a url')).toBe(false);
  });
});

describe('parseListen', () => {
  it('parses host and port forms', () => {
    expect(parseListen('127.0.0.1:8080', '--http-listen')).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(parseListen(':9443', '--webhook-listen')).toEqual({ host: '0.0.0.0', port: 9443 });
    expect(parseListen('[::1]:8080', '--http-listen')).toEqual({ host: '::1', port: 8080 });
  });

  it('rejects other forms', () => {
    expect(() => parseListen('8080', '--http-listen')).toThrow('invalid --http-listen "8080": use HOST:PORT such as 0.0.0.0:8080');
    expect(() => parseListen('host:99999', '--http-listen')).toThrow('invalid --http-listen');
  });
});

describe('keysFor', () => {
  const objects: Record<ResourceKind, KubeObject[]> = {
    Wallet: [
      { apiVersion: 'tollgate.dev/v1alpha1', kind: 'Wallet', metadata: { name: 'acme', namespace: 'team' }, spec: { pricePlanRef: { name: 'standard' } } },
      { apiVersion: 'tollgate.dev/v1alpha1', kind: 'Wallet', metadata: { name: 'beta', namespace: 'team' }, spec: { pricePlanRef: { name: 'gold' } } },
    ],
    PricePlan: [
      { apiVersion: 'tollgate.dev/v1alpha1', kind: 'PricePlan', metadata: { name: 'standard', namespace: 'team', generation: 1 } },
      { apiVersion: 'tollgate.dev/v1alpha1', kind: 'PricePlan', metadata: { name: 'gold', namespace: 'team', generation: 1 } },
    ],
    ProviderRoute: [
      { apiVersion: 'tollgate.dev/v1alpha1', kind: 'ProviderRoute', metadata: { name: 'openai', namespace: 'team', generation: 1 } },
      { apiVersion: 'tollgate.dev/v1alpha1', kind: 'ProviderRoute', metadata: { name: 'anthropic', namespace: 'team', generation: 1 } },
    ],
  };
  const list = (kind: ResourceKind) => objects[kind];
  const plan = objects.PricePlan[0]!;
  const route = objects.ProviderRoute[0]!;

  it('queues the wallets of a changed plan', () => {
    expect(keysFor('PricePlan', 'update', { ...plan, metadata: { ...plan.metadata, generation: 2 } }, plan, list)).toEqual([
      'PricePlan/team/standard',
      'Wallet/team/acme',
    ]);
  });

  it('queues the plans and other routes of a new route', () => {
    expect(keysFor('ProviderRoute', 'add', route, undefined, list)).toEqual([
      'ProviderRoute/team/openai',
      'PricePlan/team/standard',
      'PricePlan/team/gold',
      'ProviderRoute/team/anthropic',
    ]);
  });

  it('queues only the object for a status write or a resync', () => {
    expect(keysFor('PricePlan', 'update', { ...plan, status: { observedGeneration: 1 } }, plan, list)).toEqual(['PricePlan/team/standard']);
    expect(keysFor('ProviderRoute', 'resync', route, undefined, list)).toEqual(['ProviderRoute/team/openai']);
  });
});

describe('validateOperatorConfig', () => {
  const base = parseOperatorArgs(['--redis', 'r', '--sidecar-image', 'tollgate:1'], {})!;

  it('accepts the defaults with a sidecar image', () => {
    expect(() => validateOperatorConfig(base)).not.toThrow();
    expect(() => validateOperatorConfig({ ...base, sidecarImage: undefined, webhook: false })).not.toThrow();
  });

  it('rejects the webhook without a sidecar image', () => {
    expect(() => validateOperatorConfig({ ...base, sidecarImage: undefined })).toThrow(
      new ConfigurationError('missing sidecar image: pass --sidecar-image or set TOLLGATE_SIDECAR_IMAGE, or turn the webhook off with --no-webhook'),
    );
  });

  it('rejects lease timings that allow two leaders', () => {
    expect(() => validateOperatorConfig({ ...base, renewDeadlineMs: 20_000 })).toThrow(
      'invalid lease timings: need leaseDuration (15000 ms) > renewDeadline (20000 ms) > retryPeriod (2000 ms) > 0. ' +
        'Change --lease-duration, --renew-deadline or --retry-period, or their environment variables',
    );
    expect(() => validateOperatorConfig({ ...base, renewDeadlineMs: 20_000 })).toThrow(ConfigurationError);
  });

  // validateOperatorConfig reads only which files are set, so the PEM text does not matter here.
  const caOnly = { ca: 'CA PEM' };
  const clientOnly = { cert: 'CERT PEM', key: 'KEY PEM' };
  const both = { ...caOnly, ...clientOnly };

  it('accepts Redis TLS files with a Secret for the sidecars', () => {
    for (const redisTls of [caOnly, clientOnly, both]) {
      expect(() => validateOperatorConfig({ ...base, redisTls, sidecarRedisTlsSecret: 'redis-tls' })).not.toThrow();
    }
  });

  it('accepts Redis TLS files without the webhook', () => {
    expect(() => validateOperatorConfig({ ...base, webhook: false, redisTls: both })).not.toThrow();
  });

  it('rejects Redis TLS files without a Secret for the sidecars', () => {
    const fix = 'or turn the webhook off with --no-webhook';
    expect(() => validateOperatorConfig({ ...base, redisTls: caOnly })).toThrow(
      new ConfigurationError(
        'the operator connects to Redis with --redis-ca [TOLLGATE_REDIS_CA_FILE], but --sidecar-redis-tls-secret [TOLLGATE_SIDECAR_REDIS_TLS_SECRET] is not set, ' +
          `so the injected sidecars could not connect; pass --sidecar-redis-tls-secret NAME, naming a Secret with the keys ca.crt in each namespace of injected pods, ${fix}`,
      ),
    );
    expect(() => validateOperatorConfig({ ...base, redisTls: clientOnly })).toThrow(
      new ConfigurationError(
        'the operator connects to Redis with --redis-cert, --redis-key [TOLLGATE_REDIS_CERT_FILE, TOLLGATE_REDIS_KEY_FILE], ' +
          'but --sidecar-redis-tls-secret [TOLLGATE_SIDECAR_REDIS_TLS_SECRET] is not set, so the injected sidecars could not connect; ' +
          `pass --sidecar-redis-tls-secret NAME, naming a Secret with the keys tls.crt, tls.key in each namespace of injected pods, ${fix}`,
      ),
    );
    expect(() => validateOperatorConfig({ ...base, redisTls: both })).toThrow(
      new ConfigurationError(
        'the operator connects to Redis with --redis-ca, --redis-cert, --redis-key [TOLLGATE_REDIS_CA_FILE, TOLLGATE_REDIS_CERT_FILE, TOLLGATE_REDIS_KEY_FILE], ' +
          'but --sidecar-redis-tls-secret [TOLLGATE_SIDECAR_REDIS_TLS_SECRET] is not set, so the injected sidecars could not connect; ' +
          `pass --sidecar-redis-tls-secret NAME, naming a Secret with the keys ca.crt, tls.crt, tls.key in each namespace of injected pods, ${fix}`,
      ),
    );
  });

  it('rejects a Secret for the sidecars without Redis TLS files', () => {
    const message =
      '--sidecar-redis-tls-secret [TOLLGATE_SIDECAR_REDIS_TLS_SECRET] names Secret "redis-tls", but the operator uses no Redis TLS file, ' +
      'so the injected sidecars would have nothing to mount from it; also pass --redis-ca FILE, or --redis-cert FILE and --redis-key FILE ' +
      '(or their TOLLGATE_REDIS_*_FILE variables), or remove --sidecar-redis-tls-secret';
    expect(() => validateOperatorConfig({ ...base, sidecarRedisTlsSecret: 'redis-tls' })).toThrow(new ConfigurationError(message));
    expect(() => validateOperatorConfig({ ...base, webhook: false, sidecarRedisTlsSecret: 'redis-tls' })).toThrow(new ConfigurationError(message));
  });

  it('checks the Redis TLS settings as parsed', () => {
    const parsed = parseOperatorArgs(['--redis', 'r', '--sidecar-image', 'tollgate:1'], { TOLLGATE_SIDECAR_REDIS_TLS_SECRET: 'redis-tls' })!;
    expect(() => validateOperatorConfig(parsed)).toThrow('names Secret "redis-tls", but the operator uses no Redis TLS file');
  });
});
