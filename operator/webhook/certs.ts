// The webhook's serving certificate when the operator manages it itself: a private CA
// and a serving certificate, kept in one Secret that every replica shares, and the CA
// bundle patched into the MutatingWebhookConfiguration. With cert-manager, only the
// Secret is read.
//
// node:crypto can parse X.509 certificates but not create them, so creation runs the
// openssl command line tool (OpenSSL 1.1.1 or later) on files in a private temp dir.

import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey, generateKeyPair, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { PatchStrategy, setHeaderOptions, type V1Secret } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { describeKubeError, statusCodeOf, type KubeClients } from '../kube.ts';
import type { JsonPatchOp } from './inject.ts';

const execFileAsync = promisify(execFile);

export const WEBHOOK_TLS_SECRET_NAME = 'tollgate-webhook-tls';
export const DEFAULT_CERTIFICATE_VALIDITY_DAYS = 365;
export const DEFAULT_ROTATE_BEFORE_DAYS = 30;
const MAX_WRITE_ATTEMPTS = 5;
const DAY_MS = 24 * 60 * 60 * 1000;

const TLS_CERT_KEY = 'tls.crt';
const TLS_KEY_KEY = 'tls.key';
const CA_CERT_KEY = 'ca.crt';

/** A serving certificate with its key and the CA bundle that verifies it, all PEM. */
export interface WebhookCertificate {
  /** One or more CA certificates: the current CA first, then the previous one while it is still valid. */
  caBundlePem: string;
  certPem: string;
  keyPem: string;
}

/** Hosts the serving certificate must cover. */
export interface CertificateHosts {
  dnsNames: string[];
  ipAddresses: string[];
}

/** Returns the names the API server uses to reach a webhook Service: `<service>.<namespace>.svc` and the cluster.local form. */
export function serviceDnsNames(serviceName: string, namespace: string): string[] {
  return [`${serviceName}.${namespace}.svc`, `${serviceName}.${namespace}.svc.cluster.local`];
}

// Creation

/** Creates a new CA and a serving certificate it signs, both valid for `validityDays`. */
export async function createWebhookCertificate(
  hosts: CertificateHosts,
  validityDays = DEFAULT_CERTIFICATE_VALIDITY_DAYS,
): Promise<{ caCertPem: string; certPem: string; keyPem: string }> {
  if (hosts.dnsNames.length === 0 && hosts.ipAddresses.length === 0) {
    throw new Error('cannot create a serving certificate without a DNS name or IP address');
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-webhook-cert-'));
  try {
    const file = (name: string): string => path.join(dir, name);
    const [caKeyPem, keyPem] = await Promise.all([generateEcKey(), generateEcKey()]);
    await writeFile(file('ca.key'), caKeyPem, { mode: 0o600 });
    await writeFile(file('tls.key'), keyPem, { mode: 0o600 });

    await writeFile(
      file('ca.cnf'),
      opensslConfig(`tollgate-webhook-ca-${randomBytes(4).toString('hex')}`, [
        'basicConstraints = critical,CA:TRUE,pathlen:0',
        'keyUsage = critical,keyCertSign,cRLSign',
        'subjectKeyIdentifier = hash',
      ]),
    );
    await runOpenssl([
      'req', '-x509', '-new', '-sha256', '-config', file('ca.cnf'), '-extensions', 'extensions',
      '-key', file('ca.key'), '-days', String(validityDays), '-out', file('ca.crt'),
    ]);

    const subjectAltNames = [
      ...hosts.dnsNames.map((name) => `DNS:${name}`),
      ...hosts.ipAddresses.map((address) => `IP:${address}`),
    ];
    await writeFile(
      file('tls.cnf'),
      opensslConfig(hosts.dnsNames[0] ?? hosts.ipAddresses[0] ?? 'tollgate-webhook', [
        'basicConstraints = critical,CA:FALSE',
        'keyUsage = critical,digitalSignature',
        'extendedKeyUsage = serverAuth',
        'authorityKeyIdentifier = keyid',
        `subjectAltName = ${subjectAltNames.join(',')}`,
      ]),
    );
    await runOpenssl(['req', '-new', '-config', file('tls.cnf'), '-key', file('tls.key'), '-out', file('tls.csr')]);
    await runOpenssl([
      'x509', '-req', '-sha256', '-in', file('tls.csr'), '-CA', file('ca.crt'), '-CAkey', file('ca.key'),
      '-set_serial', `0x${randomBytes(16).toString('hex')}`, '-days', String(validityDays),
      '-extfile', file('tls.cnf'), '-extensions', 'extensions', '-out', file('tls.crt'),
    ]);

    const [caCertPem, certPem] = await Promise.all([readFile(file('ca.crt'), 'utf8'), readFile(file('tls.crt'), 'utf8')]);
    return { caCertPem, certPem, keyPem };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function opensslConfig(commonName: string, extensions: string[]): string {
  return ['[req]', 'prompt = no', 'distinguished_name = subject', '[subject]', `CN = ${commonName}`, '[extensions]', ...extensions, ''].join('\n');
}

async function runOpenssl(args: string[]): Promise<void> {
  try {
    await execFileAsync('openssl', args);
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? '';
    throw new Error(`openssl ${args[0]} failed while creating the webhook certificate: ${stderr.trim() || String(error)}`, {
      cause: error,
    });
  }
}

async function generateEcKey(): Promise<string> {
  const { privateKey } = await promisify(generateKeyPair)('ec', {
    namedCurve: 'prime256v1',
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return privateKey;
}

// Checks

/** Splits a PEM bundle into its certificates. */
export function splitPemCertificates(bundle: string): string[] {
  return bundle.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)?.map((pem) => `${pem}\n`) ?? [];
}

/**
 * Returns why a stored certificate must be replaced, or undefined when it can stay:
 * it must parse, match its key, be issued by a CA of the bundle, cover every host and
 * stay valid for more than `rotateBeforeDays` after `now`.
 */
export function replacementReason(
  certificate: WebhookCertificate,
  hosts: CertificateHosts,
  now: Date,
  rotateBeforeDays: number,
): string | undefined {
  let serving: X509Certificate;
  try {
    serving = new X509Certificate(certificate.certPem);
    if (!serving.checkPrivateKey(createPrivateKey(certificate.keyPem))) {
      return 'the private key does not match the certificate';
    }
  } catch (error) {
    return `the certificate or key does not parse: ${(error as Error).message}`;
  }

  const issuedByBundle = splitPemCertificates(certificate.caBundlePem).some((pem) => {
    try {
      const ca = new X509Certificate(pem);
      return serving.checkIssued(ca) && serving.verify(ca.publicKey);
    } catch {
      return false;
    }
  });
  if (!issuedByBundle) {
    return 'no CA certificate of the bundle issued the serving certificate';
  }

  const rotateAt = serving.validToDate.getTime() - rotateBeforeDays * DAY_MS;
  if (now.getTime() >= rotateAt) {
    return `the certificate expires at ${serving.validToDate.toISOString()}, within ${rotateBeforeDays} days`;
  }

  const covered = new Set((serving.subjectAltName ?? '').split(/,\s*/));
  const missing = [
    ...hosts.dnsNames.filter((name) => !covered.has(`DNS:${name}`)),
    ...hosts.ipAddresses.filter((address) => !covered.has(`IP Address:${address}`)),
  ];
  if (missing.length > 0) {
    return `the certificate does not cover ${missing.join(', ')}`;
  }
  return undefined;
}

/** Returns the current (first) CA of a bundle while it is valid at `now`, else an empty string. */
function currentCaWhileValid(bundle: string, now: Date): string {
  const [first] = splitPemCertificates(bundle);
  if (first === undefined) {
    return '';
  }
  try {
    return new X509Certificate(first).validToDate.getTime() > now.getTime() ? first : '';
  } catch {
    return '';
  }
}

// The shared Secret

export interface EnsureCertificateOptions {
  clients: Pick<KubeClients, 'core'>;
  namespace: string;
  secretName?: string;
  hosts: CertificateHosts;
  validityDays?: number;
  rotateBeforeDays?: number;
  log: Logger;
  /** Clock for the expiry check; tests pass a later time to force a rotation. */
  now?: () => Date;
}

/**
 * Returns a valid serving certificate from the shared Secret, creating or rotating it
 * when needed. Replicas that race get the winner's certificate: a create that conflicts
 * with an existing Secret, or a replace that conflicts on resourceVersion, re-reads it.
 */
export async function ensureWebhookCertificate(options: EnsureCertificateOptions): Promise<WebhookCertificate> {
  const { core } = options.clients;
  const secretName = options.secretName ?? WEBHOOK_TLS_SECRET_NAME;
  const rotateBeforeDays = options.rotateBeforeDays ?? DEFAULT_ROTATE_BEFORE_DAYS;
  const now = options.now ?? (() => new Date());
  const where = { namespace: options.namespace, secret: secretName };

  for (let attempt = 1; attempt <= MAX_WRITE_ATTEMPTS; attempt++) {
    const existing = await readSecretOrUndefined(options.clients, options.namespace, secretName);
    const current = existing === undefined ? undefined : certificateFromSecret(existing);
    const reason = current === undefined
      ? existing === undefined ? 'the Secret does not exist' : 'the Secret lacks tls.crt, tls.key or ca.crt'
      : replacementReason(current, options.hosts, now(), rotateBeforeDays);
    if (current !== undefined && reason === undefined) {
      return current;
    }

    const created = await createWebhookCertificate(options.hosts, options.validityDays);
    // The previous CA stays in the bundle (until it expires or the next rotation), so that
    // replicas still serving the previous certificate are trusted until they load the new one.
    const previousCa = current === undefined ? '' : currentCaWhileValid(current.caBundlePem, now());
    const next: WebhookCertificate = {
      caBundlePem: created.caCertPem + previousCa,
      certPem: created.certPem,
      keyPem: created.keyPem,
    };
    const body = secretFromCertificate(secretName, next, existing?.metadata?.resourceVersion);

    try {
      if (existing === undefined) {
        await core.createNamespacedSecret({ namespace: options.namespace, body });
        options.log.info(where, 'created the webhook serving certificate');
      } else {
        await core.replaceNamespacedSecret({ name: secretName, namespace: options.namespace, body });
        options.log.info({ ...where, reason }, 'rotated the webhook serving certificate');
      }
      return next;
    } catch (error) {
      if (statusCodeOf(error) !== 409) {
        throw new Error(`failed to write Secret ${options.namespace}/${secretName}: ${describeKubeError(error)}`, { cause: error });
      }
      // Another replica wrote the Secret first; the next pass reads its certificate.
      options.log.info({ ...where, attempt }, 'another replica wrote the webhook certificate first; reading it');
    }
  }
  throw new Error(
    `gave up writing Secret ${options.namespace}/${secretName} after ${MAX_WRITE_ATTEMPTS} conflicting writes; ` +
      `check whether another controller keeps changing it`,
  );
}

/**
 * Reads a certificate that someone else manages, such as cert-manager, from its Secret.
 * The CA bundle is empty when the Secret has no ca.crt.
 */
export async function readWebhookCertificate(
  clients: Pick<KubeClients, 'core'>,
  namespace: string,
  secretName = WEBHOOK_TLS_SECRET_NAME,
): Promise<WebhookCertificate> {
  const secret = await readSecretOrUndefined(clients, namespace, secretName);
  if (secret === undefined) {
    throw new Error(
      `Secret ${namespace}/${secretName} with the webhook certificate does not exist; ` +
        `check that cert-manager has issued the Certificate that writes it`,
    );
  }
  const data = secret.data ?? {};
  const certPem = decodeBase64(data[TLS_CERT_KEY]);
  const keyPem = decodeBase64(data[TLS_KEY_KEY]);
  if (certPem === '' || keyPem === '') {
    throw new Error(`Secret ${namespace}/${secretName} lacks ${TLS_CERT_KEY} or ${TLS_KEY_KEY}; wait for cert-manager to issue it`);
  }
  return { caBundlePem: decodeBase64(data[CA_CERT_KEY]), certPem, keyPem };
}

async function readSecretOrUndefined(
  clients: Pick<KubeClients, 'core'>,
  namespace: string,
  name: string,
): Promise<V1Secret | undefined> {
  try {
    return await clients.core.readNamespacedSecret({ name, namespace });
  } catch (error) {
    if (statusCodeOf(error) === 404) {
      return undefined;
    }
    throw new Error(`failed to read Secret ${namespace}/${name}: ${describeKubeError(error)}`, { cause: error });
  }
}

function certificateFromSecret(secret: V1Secret): WebhookCertificate | undefined {
  const data = secret.data ?? {};
  const certificate = {
    caBundlePem: decodeBase64(data[CA_CERT_KEY]),
    certPem: decodeBase64(data[TLS_CERT_KEY]),
    keyPem: decodeBase64(data[TLS_KEY_KEY]),
  };
  return Object.values(certificate).some((value) => value === '') ? undefined : certificate;
}

function secretFromCertificate(name: string, certificate: WebhookCertificate, resourceVersion: string | undefined): V1Secret {
  const base64 = (text: string): string => Buffer.from(text).toString('base64');
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name,
      labels: { 'app.kubernetes.io/managed-by': 'tollgate-operator' },
      ...(resourceVersion === undefined ? {} : { resourceVersion }),
    },
    type: 'kubernetes.io/tls',
    data: {
      [TLS_CERT_KEY]: base64(certificate.certPem),
      [TLS_KEY_KEY]: base64(certificate.keyPem),
      [CA_CERT_KEY]: base64(certificate.caBundlePem),
    },
  };
}

function decodeBase64(value: string | undefined): string {
  return value === undefined ? '' : Buffer.from(value, 'base64').toString('utf8');
}

// The MutatingWebhookConfiguration

export type CaBundlePatchResult = 'patched' | 'unchanged' | 'not-found';

/**
 * Sets `clientConfig.caBundle` of every webhook in the configuration to the bundle.
 * The patch tests the resourceVersion it read, so a concurrent change makes it retry on
 * fresh data instead of overwriting. A missing configuration is not an error, because
 * the chart may create it after the operator starts; the caller retries later.
 */
export async function patchWebhookCaBundle(options: {
  clients: Pick<KubeClients, 'admission'>;
  webhookConfigName: string;
  caBundlePem: string;
  log: Logger;
}): Promise<CaBundlePatchResult> {
  const { admission } = options.clients;
  const name = options.webhookConfigName;
  const caBundle = Buffer.from(options.caBundlePem).toString('base64');

  for (let attempt = 1; attempt <= MAX_WRITE_ATTEMPTS; attempt++) {
    let configuration;
    try {
      configuration = await admission.readMutatingWebhookConfiguration({ name });
    } catch (error) {
      if (statusCodeOf(error) === 404) {
        options.log.warn({ webhookConfiguration: name }, 'MutatingWebhookConfiguration not found; its caBundle will be set when it exists');
        return 'not-found';
      }
      throw new Error(`failed to read MutatingWebhookConfiguration ${name}: ${describeKubeError(error)}`, { cause: error });
    }

    const patch = caBundlePatch(configuration.metadata?.resourceVersion ?? '', configuration.webhooks ?? [], caBundle);
    if (patch.length === 1) {
      return 'unchanged';
    }
    try {
      await admission.patchMutatingWebhookConfiguration({ name, body: patch }, setHeaderOptions('Content-Type', PatchStrategy.JsonPatch));
      options.log.info({ webhookConfiguration: name, webhooks: patch.length - 1 }, 'patched the webhook caBundle');
      return 'patched';
    } catch (error) {
      const status = statusCodeOf(error);
      // 409 and 422 are what a failed `test` of the resourceVersion returns: read again.
      if (status !== 409 && status !== 422) {
        throw new Error(`failed to patch the caBundle of MutatingWebhookConfiguration ${name}: ${describeKubeError(error)}`, { cause: error });
      }
      options.log.info({ webhookConfiguration: name, attempt, status }, 'MutatingWebhookConfiguration changed while patching; retrying');
    }
  }
  throw new Error(`gave up patching the caBundle of MutatingWebhookConfiguration ${name} after ${MAX_WRITE_ATTEMPTS} conflicts`);
}

/** Builds the JSON patch: a test of the resourceVersion, then one `add` per webhook whose caBundle differs. */
export function caBundlePatch(
  resourceVersion: string,
  webhooks: readonly { clientConfig?: { caBundle?: string } }[],
  caBundle: string,
): JsonPatchOp[] {
  const patch: JsonPatchOp[] = [{ op: 'test', path: '/metadata/resourceVersion', value: resourceVersion }];
  webhooks.forEach((webhook, index) => {
    if (webhook.clientConfig?.caBundle !== caBundle) {
      // `add` sets the member whether or not it exists; clientConfig itself is required by the API.
      patch.push({ op: 'add', path: `/webhooks/${index}/clientConfig/caBundle`, value: caBundle });
    }
  });
  return patch;
}

/** Returns the hosts for a serving certificate: the Service's DNS names, plus the listen address when it is one specific IP. */
export function certificateHosts(serviceName: string, namespace: string, listenHost: string | undefined): CertificateHosts {
  const ipAddresses = listenHost !== undefined && isIP(listenHost) !== 0 && listenHost !== '0.0.0.0' && listenHost !== '::' ? [listenHost] : [];
  return { dnsNames: serviceDnsNames(serviceName, namespace), ipAddresses };
}
