/**
 * Creates a private CA and certificates signed by it, as PEM files in a
 * temporary directory, with the openssl command line tool: a server
 * certificate for 127.0.0.1 and localhost, and a client certificate. They
 * stand in for what cert-manager or a managed Redis service issues.
 */

import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export interface TestCertificates {
  dir: string;
  /** The CA's certificate. */
  caFile: string;
  /** Server certificate, for IP 127.0.0.1 and DNS localhost by default, also valid as a client certificate (the cluster bus uses it both ways). */
  serverCertFile: string;
  serverKeyFile: string;
  /** Client certificate (CN tollgate-client). */
  clientCertFile: string;
  clientKeyFile: string;
  /** Deletes the directory. */
  remove(): Promise<void>;
}

/**
 * Creates a CA, a server and a client certificate. `name` goes into the CA's
 * subject, to tell the CAs of one test apart; `serverNames` are the server certificate's
 * subject alternative names, in openssl's syntax.
 */
export async function createTestCertificates(name = 'tollgate-test', serverNames = 'IP:127.0.0.1,DNS:localhost'): Promise<TestCertificates> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-tls-'));
  const file = (base: string) => path.join(dir, base);
  try {
    await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', file('ca.key')]);
    await writeFile(file('ca.cnf'), config(`${name} CA`, ['basicConstraints = critical,CA:TRUE', 'keyUsage = critical,keyCertSign,cRLSign']));
    await openssl(['req', '-x509', '-new', '-sha256', '-config', file('ca.cnf'), '-extensions', 'extensions', '-key', file('ca.key'), '-days', '2', '-out', file('ca.crt')]);

    // The two keys use the two encodings that cert-manager can write: SEC1 ("EC PRIVATE KEY") and PKCS#8.
    await issue(file, 'server', 'redis', 'sec1', [
      'basicConstraints = critical,CA:FALSE',
      'extendedKeyUsage = serverAuth,clientAuth',
      `subjectAltName = ${serverNames}`,
    ]);
    await issue(file, 'client', 'tollgate-client', 'pkcs8', ['basicConstraints = critical,CA:FALSE', 'extendedKeyUsage = clientAuth']);
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    dir,
    caFile: file('ca.crt'),
    serverCertFile: file('server.crt'),
    serverKeyFile: file('server.key'),
    clientCertFile: file('client.crt'),
    clientKeyFile: file('client.key'),
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/**
 * Issues a client certificate that the CA in `certs` signed and that expired
 * on 1 February 2025, with `openssl ca`, the openssl command that sets the
 * dates. Returns the paths of the certificate and its key, in `certs.dir`.
 */
export async function createExpiredClientCertificate(certs: TestCertificates): Promise<{ certFile: string; keyFile: string }> {
  const file = (base: string) => path.join(certs.dir, base);
  await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', file('expired.key')]);
  await writeFile(file('expired.cnf'), config('tollgate-expired', ['basicConstraints = critical,CA:FALSE', 'extendedKeyUsage = clientAuth']));
  await openssl(['req', '-new', '-config', file('expired.cnf'), '-key', file('expired.key'), '-out', file('expired.csr')]);
  await writeFile(file('index.txt'), '');
  await writeFile(file('serial'), '1000\n');
  const caConfig = ['[ca]', 'default_ca = test', '[test]', `database = ${file('index.txt')}`, `new_certs_dir = ${certs.dir}`, `serial = ${file('serial')}`,
    'default_md = sha256', 'policy = any', '[any]', 'commonName = supplied', ''].join('\n');
  await writeFile(file('ca-dates.cnf'), caConfig);
  await openssl([
    'ca', '-batch', '-config', file('ca-dates.cnf'), '-cert', certs.caFile, '-keyfile', file('ca.key'), '-in', file('expired.csr'),
    '-out', file('expired.crt'), '-startdate', '20250101000000Z', '-enddate', '20250201000000Z',
  ]);
  return { certFile: file('expired.crt'), keyFile: file('expired.key') };
}

/** Writes `<base>.key` and `<base>.crt`, signed by the CA in the same directory. */
async function issue(file: (base: string) => string, base: string, commonName: string, keyEncoding: 'sec1' | 'pkcs8', extensions: string[]): Promise<void> {
  await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', file(keyEncoding === 'sec1' ? `${base}.key` : `${base}.ec`)]);
  if (keyEncoding === 'pkcs8') await openssl(['pkcs8', '-topk8', '-nocrypt', '-in', file(`${base}.ec`), '-out', file(`${base}.key`)]);
  await writeFile(file(`${base}.cnf`), config(commonName, extensions));
  await openssl(['req', '-new', '-config', file(`${base}.cnf`), '-key', file(`${base}.key`), '-out', file(`${base}.csr`)]);
  await openssl([
    'x509', '-req', '-sha256', '-in', file(`${base}.csr`), '-CA', file('ca.crt'), '-CAkey', file('ca.key'), '-CAcreateserial',
    '-days', '2', '-extfile', file(`${base}.cnf`), '-extensions', 'extensions', '-out', file(`${base}.crt`),
  ]);
}

function config(commonName: string, extensions: string[]): string {
  return ['[req]', 'prompt = no', 'distinguished_name = subject', '[subject]', `CN = ${commonName}`, '[extensions]', ...extensions, ''].join('\n');
}

async function openssl(args: string[]): Promise<void> {
  try {
    await execFileAsync('openssl', args);
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? '';
    throw new Error(`openssl ${args[0]} failed: ${stderr.trim() || String(error)}; the TLS tests need the openssl command (apt-get install openssl)`, { cause: error });
  }
}
