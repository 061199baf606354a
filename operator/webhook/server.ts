// The mutating admission webhook: an HTTPS server that responds to AdmissionReviews of
// Pod creation with the sidecar patch from inject.ts, records an Event and counts
// each decision, and keeps its serving certificate current.
//
// Failure policy: when the ProviderRoutes or Wallets of the pod's namespace cannot be
// listed, the pod is rejected with a message that names the failed lookup. Admitting
// it without the sidecar would let a labelled workload call providers unmetered, and
// admitting it with a guessed configuration could mount the wrong Secrets. The chart
// registers the webhook with failurePolicy: Fail, so an unreachable webhook rejects
// labelled pods as well; unlabelled pods never reach it (objectSelector).

import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { V1ResourceRequirements, V1Secret } from '@kubernetes/client-node';
import { Counter, register as defaultRegistry, type Registry } from 'prom-client';
import type { Logger } from 'pino';
import {
  allowResponse,
  denyResponse,
  isPodCreate,
  parseAdmissionReview,
  type AdmissionRequest,
  type AdmissionReviewResponse,
} from './admission.ts';
import {
  certificateHosts,
  ensureWebhookCertificate,
  patchWebhookCaBundle,
  readWebhookCertificate,
  WEBHOOK_TLS_SECRET_NAME,
  type WebhookCertificate,
} from './certs.ts';
import { createKubeClients, isNotFound, loadKubeConfig, type KubeClients } from '../kube.ts';
import { trackUnusedConnections } from '../../src/net/unused-connections.ts';
import { describePod, EventRecorder } from './events.ts';
import {
  checkInjectionNeeded,
  injectSidecar,
  InjectionEventReason,
  redisTlsSecretKeys,
  type InjectionResult,
  type RedisTlsSecretRef,
  type SecretKeyRef,
} from './inject.ts';
import { loadNamespaceResources, ResourceLookupError } from './namespace-resources.ts';

export const MUTATE_PODS_PATH = '/mutate-pods';
const EVENT_COMPONENT = 'tollgate-webhook';
/** Pod manifests are limited to about 1.5 MiB by etcd; the review wraps one, and an old copy on updates. */
const MAX_BODY_BYTES = 8 * 1024 * 1024;
const DEFAULT_CERTIFICATE_CHECK_INTERVAL_MS = 60 * 60 * 1000;
/** Below the 10 s webhook timeout of the chart, so that a slow API server gets our message, not a bare timeout. */
const DEFAULT_LOOKUP_TIMEOUT_MS = 5_000;

export interface WebhookOptions {
  port: number;
  /** Listen address; default 0.0.0.0. A specific IP is also added to the self-managed certificate. */
  host?: string;
  /** The operator's API clients; without them the webhook builds its own from `kubeconfigPath`. */
  clients?: KubeClients;
  /** Kubeconfig file, read only when `clients` is absent. Without it, loadKubeConfig uses the in-cluster service account or the default lookup. */
  kubeconfigPath?: string;
  /** Namespace of the operator, its webhook Service and the TLS Secret. */
  namespace: string;
  serviceName: string;
  webhookConfigName: string;
  /** When true, cert-manager writes the TLS Secret and injects the caBundle; the operator only reads the Secret. */
  certManager?: boolean;
  sidecarImage: string;
  sidecarImagePullPolicy?: string;
  sidecarResources?: V1ResourceRequirements;
  /** Base URL of the operator's snapshot server, for the sidecar's TOLLGATE_CONFIG_URL. */
  configUrl: string;
  redisUrl: string;
  /** Secret key in each pod's namespace that contains the Redis URL; injected sidecars read it from there instead of a plain value. */
  sidecarRedisSecret?: SecretKeyRef;
  /** Secret in each pod's namespace that injected sidecars mount their Redis TLS files from, and which files they use. */
  sidecarRedisTlsSecret?: RedisTlsSecretRef;
  /** Retention of the ledger's settled records that injected sidecars get, in milliseconds. */
  settledRetentionMs?: number;
  /** Ledger timeout that injected sidecars get as TOLLGATE_LEDGER_TIMEOUT, in milliseconds, or absent for the sidecar's default. */
  ledgerTimeoutMs?: number;
  /** Request body limit in bytes that injected sidecars get as TOLLGATE_BODY_LIMIT, or absent for the sidecar's default. */
  sidecarBodyLimit?: number;
  /** Tool use limit that injected sidecars get as TOLLGATE_MAX_TOOL_USES, or absent for the sidecar's default. */
  sidecarMaxToolUses?: number;
  /** Whether injected sidecars fill the wallet label of their money counters. False sets TOLLGATE_WALLET_LABEL=false on them, and absent means true. */
  sidecarWalletLabel?: boolean;
  log: Logger;
  /** Registry for tollgate_injections_total; prom-client's default registry when absent. */
  registry?: Registry;
  tlsSecretName?: string;
  /** How often the certificate is checked for rotation (and the caBundle for drift), in milliseconds. */
  certificateCheckIntervalMs?: number;
  rotateBeforeDays?: number;
  /** Maximum time for listing a namespace's ProviderRoutes and Wallets, in milliseconds. */
  lookupTimeoutMs?: number;
}

export interface WebhookServer {
  /** `https://<host>:<port>`; append MUTATE_PODS_PATH for the webhook URL. */
  url: string;
  /** Base64 of the PEM CA bundle, the value of `clientConfig.caBundle`. Empty when cert-manager's Secret has no ca.crt. */
  caBundle: string;
  close(): Promise<void>;
}

/** Starts the webhook server after loading (or creating) its certificate and patching the caBundle. */
export async function startWebhook(options: WebhookOptions): Promise<WebhookServer> {
  const log = options.log.child({ component: 'webhook' });
  const clients = options.clients ?? createKubeClients(loadKubeConfig({ kubeconfig: options.kubeconfigPath }));
  const certificates = new CertificateKeeper(clients, options, log);
  const certificate = await certificates.load();

  const handler = new AdmissionHandler(clients, options, log);
  const server = https.createServer({ cert: certificate.certPem, key: certificate.keyPem, minVersion: 'TLSv1.2' }, (request, response) => {
    void handler.serve(request, response);
  });
  certificates.onChange = (next) => server.setSecureContext({ cert: next.certPem, key: next.keyPem });
  const unused = trackUnusedConnections(server);

  const host = options.host ?? '0.0.0.0';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  certificates.startPeriodicCheck(options.certificateCheckIntervalMs ?? DEFAULT_CERTIFICATE_CHECK_INTERVAL_MS);
  log.info({ host, port, certManager: options.certManager === true }, 'admission webhook listening');

  let closed = false;
  return {
    url: `https://${host.includes(':') ? `[${host}]` : host}:${port}`,
    caBundle: Buffer.from(certificate.caBundlePem).toString('base64'),
    close: async () => {
      if (closed) {
        return;
      }
      closed = true;
      certificates.stopPeriodicCheck();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        unused.destroy();
      });
      await handler.events.flush();
      log.info({ port }, 'admission webhook stopped');
    },
  };
}

// Admission

class AdmissionHandler {
  readonly events: EventRecorder;
  private readonly clients: KubeClients;
  private readonly options: WebhookOptions;
  private readonly log: Logger;
  private readonly decisions: Counter<'decision'>;

  constructor(clients: KubeClients, options: WebhookOptions, log: Logger) {
    this.clients = clients;
    this.options = options;
    this.log = log;
    this.events = new EventRecorder({ clients, log, component: EVENT_COMPONENT });
    this.decisions = injectionCounter(options.registry ?? defaultRegistry);
  }

  async serve(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const path = (request.url ?? '').split('?')[0];
    if (request.method === 'GET' && (path === '/healthz' || path === '/readyz')) {
      sendJson(response, 200, { status: 'ok' });
      return;
    }
    if (path !== MUTATE_PODS_PATH) {
      sendJson(response, 404, { message: `no handler for ${path}; the webhook serves POST ${MUTATE_PODS_PATH}` });
      return;
    }
    if (request.method !== 'POST') {
      sendJson(response, 405, { message: `use POST for ${MUTATE_PODS_PATH}` });
      return;
    }

    let admission: AdmissionRequest;
    try {
      admission = parseAdmissionReview(JSON.parse(await readBody(request)) as unknown);
    } catch (error) {
      const status = error instanceof BodyTooLarge ? 413 : 400;
      const message = error instanceof Error ? error.message : String(error);
      this.log.warn({ err: error, status }, 'rejected an invalid admission request');
      sendJson(response, status, { message: `invalid AdmissionReview: ${message}` });
      return;
    }

    let review: AdmissionReviewResponse;
    try {
      review = await this.review(admission);
    } catch (error) {
      // An unexpected failure still gets a readable denial instead of a bare HTTP 500.
      this.log.error({ err: error, uid: admission.uid, namespace: admission.namespace }, 'admission review failed');
      review = denyResponse(admission.uid, 500, 'InternalError', `Tollgate sidecar injection failed unexpectedly: ${(error as Error).message}`);
    }
    sendJson(response, 200, review);
  }

  private async review(admission: AdmissionRequest): Promise<AdmissionReviewResponse> {
    if (!isPodCreate(admission)) {
      return allowResponse(admission.uid, []);
    }
    const pod = admission.object;
    const namespace = admission.namespace || pod.metadata?.namespace || '';

    const noInjection = checkInjectionNeeded(pod);
    if (noInjection !== undefined) {
      this.finish(admission, namespace, noInjection);
      return allowResponse(admission.uid, []);
    }

    let resources;
    try {
      resources = await loadNamespaceResources(this.clients, namespace, this.options.lookupTimeoutMs ?? DEFAULT_LOOKUP_TIMEOUT_MS);
    } catch (error) {
      if (!(error instanceof ResourceLookupError)) {
        throw error;
      }
      return this.deny(admission, namespace, error);
    }

    const result = injectSidecar(pod, {
      sidecarImage: this.options.sidecarImage,
      configUrl: this.options.configUrl,
      redisUrl: this.options.redisUrl,
      ...(this.options.sidecarRedisSecret === undefined ? {} : { redisUrlSecret: this.options.sidecarRedisSecret }),
      ...(this.options.sidecarRedisTlsSecret === undefined ? {} : { redisTlsSecret: this.options.sidecarRedisTlsSecret }),
      ...(this.options.settledRetentionMs === undefined ? {} : { settledRetentionMs: this.options.settledRetentionMs }),
      ...(this.options.ledgerTimeoutMs === undefined ? {} : { ledgerTimeoutMs: this.options.ledgerTimeoutMs }),
      ...(this.options.sidecarBodyLimit === undefined ? {} : { bodyLimit: this.options.sidecarBodyLimit }),
      ...(this.options.sidecarMaxToolUses === undefined ? {} : { maxToolUses: this.options.sidecarMaxToolUses }),
      ...(this.options.sidecarWalletLabel === undefined ? {} : { walletLabel: this.options.sidecarWalletLabel }),
      routes: resources.routes,
      wallets: resources.wallets,
      ...(this.options.sidecarImagePullPolicy === undefined ? {} : { imagePullPolicy: this.options.sidecarImagePullPolicy }),
      ...(this.options.sidecarResources === undefined ? {} : { resources: this.options.sidecarResources }),
    });
    const warnings = [...resources.invalidRoutes, ...result.warnings];
    if (result.patch.length > 0) {
      const secretWarnings = await Promise.all([this.checkRedisSecret(namespace), this.checkRedisTlsSecret(namespace)]);
      warnings.push(...secretWarnings.filter((warning) => warning !== undefined));
    }
    this.finish(admission, namespace, { ...result, warnings });
    return allowResponse(admission.uid, result.patch, warnings.map((warning) => `tollgate: ${warning}`));
  }

  private deny(admission: AdmissionRequest, namespace: string, error: ResourceLookupError): AdmissionReviewResponse {
    const message =
      `Tollgate could not inject its sidecar, so the pod was rejected: ${error.message}. ` +
      `Check that the Tollgate CRDs are installed and that the operator may list providerroutes and wallets, ` +
      `or remove the tollgate.dev/inject label to run the pod without metering.`;
    const pod = admission.object;
    this.decisions.inc({ decision: InjectionEventReason.InjectionFailed });
    this.log.error({ err: error, uid: admission.uid, namespace, pod: describePod(pod) }, 'rejected a pod because the injection lookup failed');
    if (!admission.dryRun) {
      this.events.recordForPod(pod, namespace, 'Warning', InjectionEventReason.InjectionFailed, message);
    }
    return denyResponse(admission.uid, 500, 'InternalError', message);
  }

  /**
   * Returns a warning when the Secret that injected sidecars read the Redis
   * URL from is missing in the pod's namespace, or lacks the key: such a pod
   * does not start. Says nothing when the operator may not read Secrets
   * there or the lookup fails, because the pod may still be fine.
   */
  private async checkRedisSecret(namespace: string): Promise<string | undefined> {
    const ref = this.options.sidecarRedisSecret;
    if (ref === undefined) return undefined;
    const fix = `create it with: kubectl create secret generic ${ref.name} -n ${namespace} --from-literal=${ref.key}=redis://...`;
    const secret = await this.readSecret(ref.name, namespace);
    if (secret === undefined) return undefined;
    if (secret === null) {
      return `Secret "${ref.name}" not found in namespace "${namespace}": the sidecar reads the Redis URL from its key "${ref.key}", so the pod will not start until it exists; ${fix}`;
    }
    if (hasSecretKey(secret, ref.key)) return undefined;
    return `Secret "${ref.name}" in namespace "${namespace}" has no key "${ref.key}", which the sidecar reads the Redis URL from, so the pod will not start; add the key`;
  }

  /**
   * Returns a warning when the Secret that injected sidecars mount their Redis
   * TLS files from is missing in the pod's namespace, or lacks a key they use:
   * such a pod does not start. Says nothing when the lookup fails, as
   * checkRedisSecret does.
   */
  private async checkRedisTlsSecret(namespace: string): Promise<string | undefined> {
    const ref = this.options.sidecarRedisTlsSecret;
    if (ref === undefined) return undefined;
    const keys = redisTlsSecretKeys(ref);
    if (keys.length === 0) return undefined;
    const keyList = keys.map((key) => `"${key}"`).join(', ');
    const secret = await this.readSecret(ref.name, namespace);
    if (secret === undefined) return undefined;
    if (secret === null) {
      const fix = `create it from files named like its keys with: kubectl create secret generic ${ref.name} -n ${namespace} ${keys.map((key) => `--from-file=${key}`).join(' ')}`;
      return `Secret "${ref.name}" not found in namespace "${namespace}": the sidecar mounts its keys ${keyList} for the TLS connection to Redis, so the pod will not start until it exists; ${fix}`;
    }
    const missing = keys.filter((key) => !hasSecretKey(secret, key));
    if (missing.length === 0) return undefined;
    const missingList = missing.map((key) => `"${key}"`).join(', ');
    const noun = missing.length === 1 ? 'key' : 'keys';
    return (
      `Secret "${ref.name}" in namespace "${namespace}" has no ${noun} ${missingList}, which the sidecar mounts for the TLS connection to Redis, ` +
      `so the pod will not start; add the ${noun}`
    );
  }

  /**
   * Reads a Secret of the pod's namespace for a check. Returns null when it does not exist, and undefined when the
   * operator may not read it, the lookup fails or it takes longer than the lookup timeout.
   */
  private async readSecret(name: string, namespace: string): Promise<V1Secret | null | undefined> {
    try {
      const lookup = this.clients.core.readNamespacedSecret({ name, namespace });
      const timeout = new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), this.options.lookupTimeoutMs ?? DEFAULT_LOOKUP_TIMEOUT_MS).unref());
      return await Promise.race([lookup, timeout]);
    } catch (error) {
      return isNotFound(error) ? null : undefined;
    }
  }

  /** Counts, logs and records the Event of a decision; a dry run records no Event, because it must have no side effects. */
  private finish(admission: AdmissionRequest, namespace: string, result: InjectionResult): void {
    const pod = admission.object;
    this.decisions.inc({ decision: result.decision });
    this.log.info(
      { uid: admission.uid, namespace, pod: describePod(pod), decision: result.decision, wallet: result.wallet, warnings: result.warnings, dryRun: admission.dryRun },
      result.message,
    );
    if (admission.dryRun) {
      return;
    }
    const message = result.warnings.length === 0 ? result.message : `${result.message}; warnings: ${result.warnings.join('; ')}`;
    this.events.recordForPod(pod, namespace, 'Normal', result.reason, message);
  }
}

function injectionCounter(registry: Registry): Counter<'decision'> {
  const name = 'tollgate_injections_total';
  const existing = registry.getSingleMetric(name);
  if (existing !== undefined) {
    // Several webhook servers in one process (tests) share the metric of the registry.
    return existing as Counter<'decision'>;
  }
  return new Counter({
    name,
    help: 'Pods seen by the sidecar injector, by decision (Injected, InjectionSkipped, AlreadyInjected, InjectionFailed).',
    labelNames: ['decision'],
    registers: [registry],
  });
}

class BodyTooLarge extends Error {
  override readonly name = 'BodyTooLarge';
}

async function readBody(request: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > MAX_BODY_BYTES) {
      throw new BodyTooLarge(`the request body exceeds ${MAX_BODY_BYTES} bytes`);
    }
    chunks.push(buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function hasSecretKey(secret: V1Secret, key: string): boolean {
  return secret.data?.[key] !== undefined || secret.stringData?.[key] !== undefined;
}

function sendJson(response: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  response.end(text);
}

// Certificates

/** Loads the serving certificate, re-checks it periodically and reports a changed one through `onChange`. */
class CertificateKeeper {
  onChange: (certificate: WebhookCertificate) => void = () => {};
  private readonly clients: KubeClients;
  private readonly options: WebhookOptions;
  private readonly log: Logger;
  private current: WebhookCertificate | undefined;
  private timer: NodeJS.Timeout | undefined;
  private checking = false;

  constructor(clients: KubeClients, options: WebhookOptions, log: Logger) {
    this.clients = clients;
    this.options = options;
    this.log = log;
  }

  /** Reads or creates the certificate and, unless cert-manager manages it, patches the caBundle. */
  async load(): Promise<WebhookCertificate> {
    const secretName = this.options.tlsSecretName ?? WEBHOOK_TLS_SECRET_NAME;
    const certificate = this.options.certManager === true
      ? await readWebhookCertificate(this.clients, this.options.namespace, secretName)
      : await ensureWebhookCertificate({
          clients: this.clients,
          namespace: this.options.namespace,
          secretName,
          hosts: certificateHosts(this.options.serviceName, this.options.namespace, this.options.host),
          ...(this.options.rotateBeforeDays === undefined ? {} : { rotateBeforeDays: this.options.rotateBeforeDays }),
          log: this.log,
        });
    if (this.options.certManager !== true) {
      await patchWebhookCaBundle({
        clients: this.clients,
        webhookConfigName: this.options.webhookConfigName,
        caBundlePem: certificate.caBundlePem,
        log: this.log,
      });
    }

    const changed = this.current !== undefined && this.current.certPem !== certificate.certPem;
    this.current = certificate;
    if (changed) {
      this.log.info({ secret: secretName }, 'serving a new webhook certificate');
      this.onChange(certificate);
    }
    return certificate;
  }

  startPeriodicCheck(intervalMs: number): void {
    this.timer = setInterval(() => void this.check(), intervalMs);
    this.timer.unref();
  }

  stopPeriodicCheck(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async check(): Promise<void> {
    if (this.checking) {
      return;
    }
    this.checking = true;
    try {
      await this.load();
    } catch (error) {
      // The current certificate stays in use; the next check retries.
      this.log.error({ err: error }, 'webhook certificate check failed');
    } finally {
      this.checking = false;
    }
  }
}
