/**
 * TLS settings of the ledger's Redis connection, read from PEM files: a CA
 * that signed the server's certificate, for servers whose certificate no
 * public CA signed, and a client certificate with its private key, for
 * servers that ask for one (redis-server's `tls-auth-clients`). Without a CA
 * file, a `rediss://` connection checks the server against Node.js's
 * built-in CA list.
 *
 * The files are read and checked when the ledger is set up. So a wrong path
 * or a key that does not fit its certificate stops the process at start with
 * a message that names the setting, instead of failing each connection
 * attempt later. Long-running processes then read them again
 * (watchRedisTls), so that a renewed certificate, which cert-manager writes
 * into the mounted Secret, is used by the next connection.
 */

import { createHash, createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { ConnectionOptions } from 'node:tls';
import { parseRedisUrl, redactUrl } from './redis-connect.ts';

/** Paths of PEM files; each undefined or '' when not set. */
export interface RedisTlsFiles {
  /** CA certificates that may have signed the server's certificate. */
  caFile?: string | undefined;
  /** The client's certificate (chain). */
  certFile?: string | undefined;
  /** The client certificate's private key. */
  keyFile?: string | undefined;
}

/** The names of the settings in errors, such as `--redis-ca` or `TOLLGATE_REDIS_CA_FILE`. */
export interface RedisTlsSettingNames {
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** The command-line options for the files, which `tollgate dev`, `tollgate ledger` and the operator share. */
export const REDIS_TLS_OPTIONS: RedisTlsSettingNames = { caFile: '--redis-ca', certFile: '--redis-cert', keyFile: '--redis-key' };

/** The environment variables for the files, which the sidecar and the operator read. */
export const REDIS_TLS_ENV: RedisTlsSettingNames = {
  caFile: 'TOLLGATE_REDIS_CA_FILE',
  certFile: 'TOLLGATE_REDIS_CERT_FILE',
  keyFile: 'TOLLGATE_REDIS_KEY_FILE',
};

/**
 * Raised by loadRedisTls for a TLS file that cannot be read or used, as
 * opposed to settings that do not go together (a RangeError).
 */
export class RedisTlsFileError extends RangeError {
  override name = 'RedisTlsFileError';
}

const PEM_CERTIFICATE = '-----BEGIN CERTIFICATE-----';
const PEM_CERTIFICATE_BEGIN = /-----BEGIN CERTIFICATE-----/g;
const PEM_CERTIFICATE_END = '-----END CERTIFICATE-----';
const PEM_CERTIFICATE_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;
const PEM_PRIVATE_KEY = /-----BEGIN [A-Z ]*PRIVATE KEY-----/;

/**
 * Reads and checks the TLS files for a ledger URL. Returns undefined when no
 * file is set, else the options for Node.js's `tls.connect`, which the
 * ledger passes to every connection, to each node of a cluster too.
 *
 * Throws a RedisTlsFileError when a file cannot be read or used: an
 * incomplete or unparsable block, an expired client certificate, or a key
 * that does not fit. Throws a RangeError for settings that do not go
 * together, such as a certificate without its key or files with a URL
 * without TLS. Each error names the setting and the fix.
 */
export function loadRedisTls(url: string, files: RedisTlsFiles, names: RedisTlsSettingNames): ConnectionOptions | undefined {
  const caFile = files.caFile || undefined;
  const certFile = files.certFile || undefined;
  const keyFile = files.keyFile || undefined;
  if (caFile === undefined && certFile === undefined && keyFile === undefined) return undefined;

  if (!usesTls(url)) {
    let firstSet = names.keyFile;
    if (certFile !== undefined) firstSet = names.certFile;
    if (caFile !== undefined) firstSet = names.caFile;
    throw new RangeError(
      `${firstSet} is set, but the Redis URL "${redactUrl(url)}" does not use TLS; ` +
        `use a rediss:// or rediss+cluster:// URL, or remove ${firstSet}`,
    );
  }
  if ((certFile === undefined) !== (keyFile === undefined)) {
    const [given, missing] = certFile === undefined ? [names.keyFile, names.certFile] : [names.certFile, names.keyFile];
    throw new RangeError(`${given} is set without ${missing}; a client certificate needs both its certificate file and its private key file`);
  }

  const options: ConnectionOptions = {};
  // A digest of exactly what was read, so that watchRedisTls also notices files replaced since then.
  const contents = createHash('sha256');
  if (caFile !== undefined) {
    const ca = readPem(caFile, names.caFile, 'CA certificate');
    contents.update(ca).update('\0');
    checkCertificates(ca, caFile, names.caFile, 'the CA certificate');
    options.ca = ca;
  }
  if (certFile !== undefined && keyFile !== undefined) {
    const cert = readPem(certFile, names.certFile, 'client certificate');
    contents.update(cert).update('\0');
    checkCertificates(cert, certFile, names.certFile, 'the client certificate');
    const key = readPem(keyFile, names.keyFile, 'private key');
    contents.update(key).update('\0');
    if (!PEM_PRIVATE_KEY.test(key)) {
      throw new RedisTlsFileError(`${names.keyFile} "${keyFile}" contains no PEM private key (a "-----BEGIN PRIVATE KEY-----" block); give the client certificate's key in PEM format, unencrypted`);
    }
    try {
      createPrivateKey(key);
    } catch (error) {
      throw new RedisTlsFileError(
        `${names.keyFile} "${keyFile}": the private key cannot be parsed (${(error as Error).message}); give the client certificate's key in PEM format, complete and unencrypted`,
        { cause: error },
      );
    }
    rejectExpired(cert, certFile, names.certFile);
    options.cert = cert;
    options.key = key;
  }

  try {
    createSecureContext(options);
  } catch (error) {
    const given = [caFile, certFile, keyFile].filter((file) => file !== undefined).join(', ');
    throw new RedisTlsFileError(
      `the Redis TLS files (${given}) cannot be used: ${(error as Error).message}; ` +
        `check that ${names.certFile} and ${names.keyFile} belong together and that each file is valid PEM`,
      { cause: error },
    );
  }
  sources.set(options, { url, files: { caFile, certFile, keyFile }, names, digest: contents.digest('hex') });
  return options;
}

/** How often watchRedisTls reads the files again: 10 s, a small part of the minute or so that the kubelet takes to update a mounted Secret. */
export const DEFAULT_TLS_CHECK_MS = 10_000;

/** The logger of watchRedisTls: pino's signature, object first. */
export interface RedisTlsLogger {
  warn(details: Record<string, unknown>, message: string): void;
  info(details: Record<string, unknown>, message: string): void;
}

/** The URL, files and setting names that loadRedisTls read each options object from, and a digest of their contents, for watchRedisTls. */
const sources = new WeakMap<ConnectionOptions, { url: string; files: RedisTlsFiles; names: RedisTlsSettingNames; digest: string }>();

/**
 * Reads the TLS files of `options` (a result of loadRedisTls) again every
 * `everyMs` milliseconds. When their
 * contents changed and pass the checks of loadRedisTls, it copies the new
 * CA, certificate and key into `options`, the object that the ledger gave
 * its client, and logs it. ioredis 5 copies that object into each new
 * connection's `tls.connect` options, for every node of a cluster too, so
 * the next connection uses the new files, and open connections stay as
 * they are. Files that fail the checks, such as a certificate written
 * before its key, leave the options unchanged and are logged once until
 * they change again. Returns a function that stops the checks.
 */
export function watchRedisTls(options: ConnectionOptions, logger: RedisTlsLogger, everyMs = DEFAULT_TLS_CHECK_MS): () => void {
  const source = sources.get(options);
  if (source === undefined) throw new TypeError('watchRedisTls takes the options that loadRedisTls returned');
  const { url, files, names } = source;
  const paths = [files.caFile, files.certFile, files.keyFile].filter((file): file is string => Boolean(file));
  let seen = source.digest;

  const check = () => {
    const current = fingerprintFiles(paths);
    if (current === seen) return;
    seen = current;
    let loaded: ConnectionOptions | undefined;
    try {
      loaded = loadRedisTls(url, files, names);
    } catch (error) {
      // The message names the file and the fix; a stack trace would add nothing to a configuration error.
      logger.warn({ reason: (error as Error).message, files: paths }, 'the Redis TLS files changed but cannot be used, so new connections keep the previous ones; fix the files');
      return;
    }
    // The same files are set as at start, so `loaded` has the same fields as `options`.
    Object.assign(options, loaded);
    const details: Record<string, unknown> = { files: paths };
    if (typeof loaded?.cert === 'string') details.clientCertificateExpires = new Date(new X509Certificate(loaded.cert).validTo).toISOString();
    logger.info(details, 'the Redis TLS files changed; new connections to Redis use them');
  };
  const timer = setInterval(check, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** Returns a digest of the files' contents as loadRedisTls computes it, with the error code in place of a file that cannot be read. */
function fingerprintFiles(paths: string[]): string {
  const hash = createHash('sha256');
  for (const file of paths) {
    try {
      hash.update(readFileSync(file, 'utf8'));
    } catch (error) {
      hash.update(`unreadable:${(error as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    hash.update('\0');
  }
  return hash.digest('hex');
}

/**
 * Throws for a command-line option given an empty value, such as
 * `--redis-ca ''`, which would otherwise read as not set and leave the
 * connection without the file the user meant to give.
 */
export function rejectEmptyOptions(files: RedisTlsFiles): void {
  for (const key of ['caFile', 'certFile', 'keyFile'] as const) {
    if (files[key] === '') throw new RangeError(`${REDIS_TLS_OPTIONS[key]} is empty; give the path of a PEM file, or leave the option out`);
  }
}

/** Returns whether a ledger URL connects with TLS: `rediss://` or `rediss+cluster://`. */
export function usesTls(url: string): boolean {
  const target = parseRedisUrl(url);
  return target.kind === 'cluster' ? target.tls : /^rediss:\/\//i.test(target.url);
}

/**
 * Parses each certificate block of a PEM file, because Node.js skips a CA
 * block that it cannot parse, and the connection would then fail with an
 * untrusted certificate instead of naming the file.
 */
function checkCertificates(pem: string, file: string, setting: string, what: string): void {
  const blocks = pem.match(PEM_CERTIFICATE_BLOCK) ?? [];
  // A block without its END line, as in a file still being written, would be skipped like an unparsable one.
  const begins = [...pem.matchAll(PEM_CERTIFICATE_BEGIN)].map((match) => match.index);
  begins.forEach((start, index) => {
    const end = pem.indexOf(PEM_CERTIFICATE_END, start);
    if (end !== -1 && end < (begins[index + 1] ?? Infinity)) return;
    throw new RedisTlsFileError(
      `${setting} "${file}": certificate ${index + 1} of ${begins.length} is incomplete (it has no "${PEM_CERTIFICATE_END}" line); ` +
        `give ${what} as complete PEM, or wait until the file is written in full`,
    );
  });
  if (blocks.length === 0) {
    throw new RedisTlsFileError(`${setting} "${file}" contains no PEM certificate (a "${PEM_CERTIFICATE}" block); give ${what} in PEM format`);
  }
  blocks.forEach((block, index) => {
    try {
      new X509Certificate(block);
    } catch (error) {
      throw new RedisTlsFileError(
        `${setting} "${file}": certificate ${index + 1} of ${blocks.length} cannot be parsed (${(error as Error).message}); give ${what} in PEM format`,
        { cause: error },
      );
    }
  });
}

/** Throws when the client certificate (the first block of the chain) has expired, because Redis rejects it at every connection. */
function rejectExpired(pem: string, file: string, setting: string): void {
  const first = pem.match(PEM_CERTIFICATE_BLOCK)![0];
  const expires = new Date(new X509Certificate(first).validTo);
  if (expires.getTime() > Date.now()) return;
  throw new RedisTlsFileError(
    `${setting} "${file}": the client certificate expired at ${expires.toISOString()}, so Redis would reject it; give a certificate that is valid now`,
  );
}

function readPem(file: string, setting: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    throw new RedisTlsFileError(`cannot read the ${what} file "${file}" given by ${setting} (${reason}); check the path and that the file is readable`, {
      cause: error,
    });
  }
}
