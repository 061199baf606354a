import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createExpiredClientCertificate, createTestCertificates, type TestCertificates } from '../../test/support/tls.ts';
import { loadRedisTls, REDIS_TLS_ENV, REDIS_TLS_OPTIONS, RedisTlsFileError, usesTls } from './redis-tls.ts';

let certs: TestCertificates;
let other: TestCertificates;

beforeAll(async () => {
  [certs, other] = await Promise.all([createTestCertificates(), createTestCertificates('other')]);
});

afterAll(async () => {
  await Promise.all([certs?.remove(), other?.remove()]);
});

const TLS_URL = 'rediss://redis.tollgate:6380';

describe('loadRedisTls', () => {
  it('returns nothing when no file is set, whatever the URL', () => {
    expect(loadRedisTls('redis://127.0.0.1:6379', {}, REDIS_TLS_OPTIONS)).toBeUndefined();
    expect(loadRedisTls(TLS_URL, { caFile: '', certFile: undefined, keyFile: '' }, REDIS_TLS_ENV)).toBeUndefined();
  });

  it('reads the CA, the client certificate and its key', () => {
    expect(loadRedisTls(TLS_URL, { caFile: certs.caFile, certFile: certs.clientCertFile, keyFile: certs.clientKeyFile }, REDIS_TLS_OPTIONS)).toEqual({
      ca: readFileSync(certs.caFile, 'utf8'),
      cert: readFileSync(certs.clientCertFile, 'utf8'),
      key: readFileSync(certs.clientKeyFile, 'utf8'),
    });
    expect(loadRedisTls('rediss+cluster://redis-0.redis:6379', { caFile: certs.caFile }, REDIS_TLS_OPTIONS)).toEqual({
      ca: readFileSync(certs.caFile, 'utf8'),
    });
  });

  it('refuses files for a URL without TLS, naming the setting', () => {
    expect(() => loadRedisTls('redis://:secret@redis.tollgate:6379', { caFile: certs.caFile }, REDIS_TLS_ENV)).toThrow(
      new RangeError(
        'TOLLGATE_REDIS_CA_FILE is set, but the Redis URL "redis://:***@redis.tollgate:6379" does not use TLS; ' +
          'use a rediss:// or rediss+cluster:// URL, or remove TOLLGATE_REDIS_CA_FILE',
      ),
    );
    expect(() => loadRedisTls('redis+cluster://redis-0:6379', { certFile: certs.clientCertFile, keyFile: certs.clientKeyFile }, REDIS_TLS_OPTIONS)).toThrow(
      '--redis-cert is set, but the Redis URL "redis+cluster://redis-0:6379" does not use TLS',
    );
  });

  it('needs the client certificate and its key together', () => {
    expect(() => loadRedisTls(TLS_URL, { certFile: certs.clientCertFile }, REDIS_TLS_OPTIONS)).toThrow(
      new RangeError('--redis-cert is set without --redis-key; a client certificate needs both its certificate file and its private key file'),
    );
    expect(() => loadRedisTls(TLS_URL, { caFile: certs.caFile, keyFile: certs.clientKeyFile }, REDIS_TLS_ENV)).toThrow(
      new RangeError(
        'TOLLGATE_REDIS_KEY_FILE is set without TOLLGATE_REDIS_CERT_FILE; a client certificate needs both its certificate file and its private key file',
      ),
    );
  });

  it('names a file it cannot read', () => {
    const missing = path.join(certs.dir, 'missing.crt');
    expect(() => loadRedisTls(TLS_URL, { caFile: missing }, REDIS_TLS_OPTIONS)).toThrow(
      new RedisTlsFileError(`cannot read the CA certificate file "${missing}" given by --redis-ca (ENOENT); check the path and that the file is readable`),
    );
    expect(() => loadRedisTls(TLS_URL, { certFile: certs.clientCertFile, keyFile: certs.dir }, REDIS_TLS_ENV)).toThrow(
      new RedisTlsFileError(
        `cannot read the private key file "${certs.dir}" given by TOLLGATE_REDIS_KEY_FILE (EISDIR); check the path and that the file is readable`,
      ),
    );
  });

  it('names a file that contains no PEM of its kind', () => {
    expect(() => loadRedisTls(TLS_URL, { caFile: certs.clientKeyFile }, REDIS_TLS_OPTIONS)).toThrow(
      new RedisTlsFileError(
        `--redis-ca "${certs.clientKeyFile}" contains no PEM certificate (a "-----BEGIN CERTIFICATE-----" block); give the CA certificate in PEM format`,
      ),
    );
    expect(() => loadRedisTls(TLS_URL, { certFile: certs.clientKeyFile, keyFile: certs.clientKeyFile }, REDIS_TLS_OPTIONS)).toThrow(
      `--redis-cert "${certs.clientKeyFile}" contains no PEM certificate`,
    );
    expect(() => loadRedisTls(TLS_URL, { certFile: certs.clientCertFile, keyFile: certs.clientCertFile }, REDIS_TLS_OPTIONS)).toThrow(
      new RedisTlsFileError(
        `--redis-key "${certs.clientCertFile}" contains no PEM private key (a "-----BEGIN PRIVATE KEY-----" block); ` +
          "give the client certificate's key in PEM format, unencrypted",
      ),
    );
  });

  it('refuses a key that does not belong to the certificate', () => {
    expect(() => loadRedisTls(TLS_URL, { certFile: certs.clientCertFile, keyFile: other.clientKeyFile }, REDIS_TLS_OPTIONS)).toThrow(
      new RedisTlsFileError(
        `the Redis TLS files (${certs.clientCertFile}, ${other.clientKeyFile}) cannot be used: ` +
          'error:05800074:x509 certificate routines::key values mismatch; ' +
          'check that --redis-cert and --redis-key belong together and that each file is valid PEM',
      ),
    );
  });

  it('refuses a CA bundle whose last certificate is cut off', async () => {
    const bundle = path.join(certs.dir, 'half-written.crt');
    const second = readFileSync(other.caFile, 'utf8');
    await writeFile(bundle, readFileSync(certs.caFile, 'utf8') + second.slice(0, second.length / 2));
    const load = () => loadRedisTls(TLS_URL, { caFile: bundle }, REDIS_TLS_OPTIONS);
    expect(load).toThrow(RedisTlsFileError);
    expect(load).toThrow(
      `--redis-ca "${bundle}": certificate 2 of 2 is incomplete (it has no "-----END CERTIFICATE-----" line); ` +
        'give the CA certificate as complete PEM, or wait until the file is written in full',
    );
  });

  it('names the first certificate when it is cut off', async () => {
    const bundle = path.join(certs.dir, 'first-cut.crt');
    const first = readFileSync(certs.caFile, 'utf8');
    await writeFile(bundle, first.replace('-----END CERTIFICATE-----', '') + readFileSync(other.caFile, 'utf8'));
    expect(() => loadRedisTls(TLS_URL, { caFile: bundle }, REDIS_TLS_OPTIONS)).toThrow(
      `--redis-ca "${bundle}": certificate 1 of 2 is incomplete (it has no "-----END CERTIFICATE-----" line); ` +
        'give the CA certificate as complete PEM, or wait until the file is written in full',
    );
  });

  it('names a key file that is cut off', async () => {
    const key = path.join(certs.dir, 'half-written.key');
    const full = readFileSync(certs.clientKeyFile, 'utf8');
    await writeFile(key, full.slice(0, full.length / 2));
    const load = () => loadRedisTls(TLS_URL, { certFile: certs.clientCertFile, keyFile: key }, REDIS_TLS_ENV);
    expect(load).toThrow(RedisTlsFileError);
    expect(load).toThrow(new RegExp(`^TOLLGATE_REDIS_KEY_FILE "${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}": the private key cannot be parsed \\(.+\\); give the client certificate's key in PEM format, complete and unencrypted$`));
  });

  it('refuses an expired client certificate', async () => {
    const expired = await createExpiredClientCertificate(certs);
    const load = () => loadRedisTls(TLS_URL, { certFile: expired.certFile, keyFile: expired.keyFile }, REDIS_TLS_OPTIONS);
    expect(load).toThrow(RedisTlsFileError);
    expect(load).toThrow(
      `--redis-cert "${expired.certFile}": the client certificate expired at 2025-02-01T00:00:00.000Z, so Redis would reject it; give a certificate that is valid now`,
    );
  });

  it('refuses a broken certificate block', async () => {
    const broken = path.join(certs.dir, 'broken.crt');
    await writeFile(broken, '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n');
    // OpenSSL's reason differs between its versions, so only the rest of the message is compared.
    const escaped = broken.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    expect(() => loadRedisTls(TLS_URL, { caFile: broken }, REDIS_TLS_OPTIONS)).toThrow(
      new RegExp(`^--redis-ca "${escaped}": certificate 1 of 1 cannot be parsed \\(error:[^)]+\\); give the CA certificate in PEM format$`),
    );
  });
});

describe('usesTls', () => {
  it('tells the TLS schemes from the others', () => {
    expect(usesTls('rediss://127.0.0.1:6380')).toBe(true);
    expect(usesTls('REDISS://127.0.0.1:6380')).toBe(true);
    expect(usesTls('rediss+cluster://127.0.0.1:6380')).toBe(true);
    expect(usesTls('redis://127.0.0.1:6379')).toBe(false);
    expect(usesTls('redis+cluster://127.0.0.1:6379')).toBe(false);
    expect(usesTls('127.0.0.1:6379')).toBe(false);
  });
});
