/**
 * The `tollgate operator` command. Every replica lists and watches the
 * Tollgate resources, serves configuration snapshots, metrics and health
 * probes, and serves the admission webhook. The replica that holds the
 * leader Lease also runs the reconcilers.
 */

import type { V1ResourceRequirements } from '@kubernetes/client-node';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type { ConnectionOptions } from 'node:tls';
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { DEFAULT_SIDECAR_OPTIONS, MAX_TOOL_USE_LIMIT, parseBodyLimit, parseMaxToolUses, parseWalletLabel } from '../sidecar/server.ts';
import { parseLedgerTimeout, RedisLedger } from '../src/ledger/redis.ts';
import { parseRedisUrl } from '../src/ledger/redis-connect.ts';
import { loadRedisTls, REDIS_TLS_ENV, REDIS_TLS_OPTIONS, rejectEmptyOptions, watchRedisTls, type RedisTlsFiles, type RedisTlsSettingNames } from '../src/ledger/redis-tls.ts';
import { DEFAULT_SETTLED_RETENTION_MS, formatDuration, parseDurationMs, validateSettledRetention } from '../src/ledger/retention.ts';
import { createLogger } from '../src/telemetry/logger.ts';
import { EventRecorder } from './events.ts';
import { Informer, type InformerEvent } from './informer.ts';
import { createKubeClients, loadKubeConfig, objectKey, parseObjectKey, RESOURCE_KINDS, type KubeClients, type KubeObject, type ResourceKind } from './kube.ts';
import { LeaderElector, validateLeaseTimings } from './leader.ts';
import { createOperatorMetrics, type OperatorMetrics } from './metrics.ts';
import { WorkQueue, runWorkers, type ReconcileResult } from './queue.ts';
import { PlanReconciler } from './reconcile-plan.ts';
import { RouteReconciler } from './reconcile-route.ts';
import { WalletReconciler } from './reconcile-wallet.ts';
import { SnapshotService, startOperatorHttpServer, type ResourceSource } from './snapshot-server.ts';
import { redisTlsSecretKeys, type RedisTlsSecretRef, type SecretKeyRef } from './webhook/inject.ts';
import { startWebhook, type WebhookServer } from './webhook/server.ts';

const USAGE = `Usage: tollgate operator [options]

Runs the Tollgate operator: reconcilers (on the elected leader), the
configuration snapshot server, metrics, and the sidecar admission webhook.
Each option falls back to the environment variable named after it.

Options:
  --kubeconfig PATH          Kubeconfig file (default: in-cluster service account, else KUBECONFIG or ~/.kube/config)
  --namespace NS             Namespace of the operator and its Lease [TOLLGATE_NAMESPACE] (default: the Pod's namespace, else "default")
  --watch-namespace NS       Watch Tollgate resources in this namespace only [TOLLGATE_WATCH_NAMESPACE] (default: all namespaces)
  --redis URL                Redis ledger URL, redis://host:port [TOLLGATE_REDIS_URL] (required);
                             redis+cluster://host:port for a Redis Cluster
  --redis-ca FILE            PEM file of the CA that signed the Redis server's TLS certificate, for a rediss://
                             URL, in place of Node.js's built-in CA list [TOLLGATE_REDIS_CA_FILE]
  --redis-cert FILE          PEM file of a client certificate, for a Redis server that asks for one (with
                             --redis-key) [TOLLGATE_REDIS_CERT_FILE]
  --redis-key FILE           PEM file of the client certificate's private key, unencrypted [TOLLGATE_REDIS_KEY_FILE]
  --ledger-retention DURATION  How long the ledger keeps settled requests, so that a retried request
                             is not billed again, such as 7d or 36h; at least 1h [TOLLGATE_LEDGER_RETENTION]
                             (default: 7d). Give the sidecars the same value.
  --ledger-timeout DURATION  How long a ledger operation waits for Redis, for the operator and the
                             injected sidecars, whose requests then fail with 503, such as 2s or 500ms;
                             0s for no limit [TOLLGATE_LEDGER_TIMEOUT] (default: 2s)
  --compact-after DURATION   At each resync, fold each wallet's ledger entries older than this, such as
                             90d, into its checkpoint and delete them from Redis [TOLLGATE_LEDGER_COMPACT_AFTER]
                             (default: off). Export the entries first to keep them.
  --http-listen HOST:PORT    Snapshot, /metrics and health server [TOLLGATE_HTTP_LISTEN] (default: 0.0.0.0:8080)
  --webhook-listen HOST:PORT Admission webhook server [TOLLGATE_WEBHOOK_LISTEN] (default: 0.0.0.0:9443)
  --no-webhook               Do not serve the admission webhook [TOLLGATE_WEBHOOK=false]
  --identity NAME            This replica's leader-election identity [TOLLGATE_POD_NAME] (default: host name and a random suffix)
  --lease-name NAME          Leader-election Lease name [TOLLGATE_LEASE_NAME] (default: tollgate-operator)
  --lease-duration SECONDS   How long a Lease stays valid without renewal, whole seconds [TOLLGATE_LEASE_DURATION] (default: 15)
  --renew-deadline SECONDS   How long the leader retries renewing before it steps down [TOLLGATE_RENEW_DEADLINE] (default: 10)
  --retry-period SECONDS     Interval between Lease attempts [TOLLGATE_RETRY_PERIOD] (default: 2)
  --resync SECONDS           Interval of the full resync, which also mirrors ledger balances [TOLLGATE_RESYNC] (default: 60)
  --watch-silence SECONDS    Restart a watch that received nothing, not even a bookmark, for this long [TOLLGATE_WATCH_SILENCE] (default: 180)
  --status-interval SECONDS  Minimum time between balance-only status writes of one wallet [TOLLGATE_STATUS_INTERVAL] (default: 10)
  --workers N                Concurrent reconciles [TOLLGATE_WORKERS] (default: 4)
  --webhook-service NAME     Service in front of the webhook, for its certificate [TOLLGATE_WEBHOOK_SERVICE] (default: tollgate)
  --webhook-configuration NAME  MutatingWebhookConfiguration to keep the caBundle of [TOLLGATE_WEBHOOK_CONFIGURATION] (default: tollgate)
  --webhook-secret NAME      Secret holding the webhook's serving certificate [TOLLGATE_WEBHOOK_SECRET]
  --cert-manager             cert-manager issues the webhook certificate [TOLLGATE_WEBHOOK_CERT_MANAGER=true]
  --config-url URL           Snapshot server URL the injected sidecars use [TOLLGATE_CONFIG_URL] (default: http://<webhook service>.<namespace>.svc:<http port>)
  --sidecar-image IMAGE      Image of the injected sidecar [TOLLGATE_SIDECAR_IMAGE] (required with the webhook)
  --sidecar-body-limit BYTES Largest request body the injected sidecars accept, in bytes, such as 8388608
                             [TOLLGATE_SIDECAR_BODY_LIMIT] (default: ${DEFAULT_SIDECAR_OPTIONS.bodyLimit})
  --sidecar-max-tool-uses N  Use limit the injected sidecars set on each charged server tool, such as web
                             search, in a request that sets none, lowered to what the wallet affords; from 1
                             to ${MAX_TOOL_USE_LIMIT} [TOLLGATE_SIDECAR_MAX_TOOL_USES] (default: ${DEFAULT_SIDECAR_OPTIONS.defaultMaxToolUses})
  --no-sidecar-wallet-label  Injected sidecars leave the wallet label of tollgate_charged_total and
                             tollgate_provider_cost_total empty, which keeps one series per model and
                             route instead of one per wallet [TOLLGATE_SIDECAR_WALLET_LABEL=false]
  --sidecar-redis-secret NAME[/KEY]  Injected sidecars read the Redis URL from this Secret key in their
                             own namespace (key "redisUrl" by default) instead of a plain value in the
                             pod spec; use it when the URL carries a password [TOLLGATE_SIDECAR_REDIS_SECRET]
  --sidecar-redis-tls-secret NAME  Secret in each namespace of injected pods that the injected sidecars mount
                             their Redis TLS files from: key ca.crt with --redis-ca, keys tls.crt and tls.key
                             with --redis-cert; required with those options while the webhook is on
                             [TOLLGATE_SIDECAR_REDIS_TLS_SECRET]
  -h, --help                 Show this help

The log level comes from LOG_LEVEL (default info).`;

export interface OperatorConfig {
  kubeconfig: string | undefined;
  namespace: string;
  watchNamespace: string | undefined;
  redisUrl: string;
  /** TLS settings of the operator's Redis connection, read at start from the files of --redis-ca, --redis-cert and --redis-key; Node.js's defaults when undefined. */
  redisTls?: ConnectionOptions | undefined;
  /** How long the ledger keeps settled records, in milliseconds; the ledger's default when undefined. */
  settledRetentionMs?: number | undefined;
  /** How long a ledger operation waits for Redis, in milliseconds, here and in the injected sidecars; RedisLedger's default when undefined. */
  ledgerTimeoutMs?: number | undefined;
  /** Age in milliseconds beyond which the resync compacts a wallet's entries; no compaction when undefined. */
  compactAfterMs?: number | undefined;
  httpHost: string;
  httpPort: number;
  webhook: boolean;
  webhookHost: string;
  webhookPort: number;
  identity: string;
  leaseName: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  resyncMs: number;
  watchSilenceMs: number;
  statusIntervalMs: number;
  /** Delay before a ProviderRoute whose Secret is missing is checked again. */
  secretRecheckMs: number;
  workers: number;
  webhookService: string;
  webhookConfiguration: string;
  webhookSecret: string | undefined;
  certManager: boolean;
  configUrl: string;
  sidecarImage: string | undefined;
  /** Request body limit of the injected sidecars, in bytes, or undefined for the sidecar's default. */
  sidecarBodyLimit?: number | undefined;
  /** Use limit the injected sidecars set on charged server tools, or undefined for the sidecar's default. */
  sidecarMaxToolUses?: number | undefined;
  /** Whether the injected sidecars fill the wallet label of their money counters. Undefined means true. */
  sidecarWalletLabel?: boolean | undefined;
  /** Secret key in each pod's namespace that contains the Redis URL for the injected sidecars, or undefined for a plain value. */
  sidecarRedisSecret?: SecretKeyRef | undefined;
  /** Secret in each pod's namespace that the injected sidecars mount the Redis TLS files from (ca.crt, tls.crt, tls.key), or undefined for none. */
  sidecarRedisTlsSecret?: string | undefined;
  sidecarImagePullPolicy: string | undefined;
  sidecarResources: V1ResourceRequirements | undefined;
}

export class ConfigurationError extends Error {
  override readonly name = 'ConfigurationError';
}

const SERVICE_ACCOUNT_NAMESPACE_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

/** Parses the command line with environment fallbacks; returns undefined for --help. Throws ConfigurationError on a bad value. */
export function parseOperatorArgs(args: string[], env: NodeJS.ProcessEnv = process.env): OperatorConfig | undefined {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      kubeconfig: { type: 'string' },
      namespace: { type: 'string' },
      'watch-namespace': { type: 'string' },
      redis: { type: 'string' },
      'redis-ca': { type: 'string' },
      'redis-cert': { type: 'string' },
      'redis-key': { type: 'string' },
      'ledger-retention': { type: 'string' },
      'ledger-timeout': { type: 'string' },
      'compact-after': { type: 'string' },
      'http-listen': { type: 'string' },
      'webhook-listen': { type: 'string' },
      'no-webhook': { type: 'boolean' },
      identity: { type: 'string' },
      'lease-name': { type: 'string' },
      'lease-duration': { type: 'string' },
      'renew-deadline': { type: 'string' },
      'retry-period': { type: 'string' },
      resync: { type: 'string' },
      'watch-silence': { type: 'string' },
      'status-interval': { type: 'string' },
      workers: { type: 'string' },
      'webhook-service': { type: 'string' },
      'webhook-configuration': { type: 'string' },
      'webhook-secret': { type: 'string' },
      'cert-manager': { type: 'boolean' },
      'config-url': { type: 'string' },
      'sidecar-image': { type: 'string' },
      'sidecar-body-limit': { type: 'string' },
      'sidecar-max-tool-uses': { type: 'string' },
      'no-sidecar-wallet-label': { type: 'boolean' },
      'sidecar-redis-secret': { type: 'string' },
      'sidecar-redis-tls-secret': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return undefined;

  const pick = (flag: string | undefined, variable: string): string | undefined => flag ?? (env[variable] || undefined);
  const seconds = (flag: string | undefined, variable: string, fallback: number): number => {
    const text = pick(flag, variable);
    if (text === undefined) return fallback * 1000;
    const value = Number(text);
    if (!Number.isFinite(value) || value <= 0) {
      throw new ConfigurationError(`invalid ${variable} / flag value "${text}": use a positive number of seconds`);
    }
    return Math.round(value * 1000);
  };

  const redisUrl = pick(values.redis, 'TOLLGATE_REDIS_URL');
  if (!redisUrl) throw new ConfigurationError('missing Redis URL: pass --redis redis://host:port or set TOLLGATE_REDIS_URL');
  try {
    parseRedisUrl(redisUrl);
  } catch (error) {
    throw new ConfigurationError((error as Error).message, { cause: error });
  }
  const redisTls = loadOperatorRedisTls(redisUrl, { caFile: values['redis-ca'], certFile: values['redis-cert'], keyFile: values['redis-key'] }, env);
  const duration = (flag: string | undefined, variable: string, check?: (ms: number) => void): number | undefined => {
    const text = pick(flag, variable);
    if (text === undefined) return undefined;
    try {
      const ms = parseDurationMs(text, `${variable} / flag value`);
      check?.(ms);
      return ms;
    } catch (error) {
      throw new ConfigurationError((error as Error).message, { cause: error });
    }
  };
  const settledRetentionMs = duration(values['ledger-retention'], 'TOLLGATE_LEDGER_RETENTION', validateSettledRetention);
  const ledgerTimeoutText = pick(values['ledger-timeout'], 'TOLLGATE_LEDGER_TIMEOUT');
  let ledgerTimeoutMs: number | undefined;
  try {
    ledgerTimeoutMs = ledgerTimeoutText === undefined ? undefined : parseLedgerTimeout(ledgerTimeoutText, values['ledger-timeout'] === undefined ? 'TOLLGATE_LEDGER_TIMEOUT' : '--ledger-timeout');
  } catch (error) {
    throw new ConfigurationError((error as Error).message, { cause: error });
  }
  const compactAfterMs = duration(values['compact-after'], 'TOLLGATE_LEDGER_COMPACT_AFTER', (ms) => {
    if (ms <= 0) throw new RangeError(`invalid TOLLGATE_LEDGER_COMPACT_AFTER / flag value ${ms} ms: use a positive duration such as 90d`);
  });
  const http = parseListen(pick(values['http-listen'], 'TOLLGATE_HTTP_LISTEN') ?? '0.0.0.0:8080', '--http-listen');
  const webhook = parseListen(pick(values['webhook-listen'], 'TOLLGATE_WEBHOOK_LISTEN') ?? '0.0.0.0:9443', '--webhook-listen');
  const namespace = pick(values.namespace, 'TOLLGATE_NAMESPACE') ?? podNamespace() ?? 'default';
  const webhookService = pick(values['webhook-service'], 'TOLLGATE_WEBHOOK_SERVICE') ?? 'tollgate';
  const workersText = pick(values.workers, 'TOLLGATE_WORKERS') ?? '4';
  const workers = Number(workersText);
  if (!Number.isInteger(workers) || workers < 1) {
    throw new ConfigurationError(`invalid --workers "${workersText}": use a whole number of at least 1`);
  }
  const leaseDurationMs = seconds(values['lease-duration'], 'TOLLGATE_LEASE_DURATION', 15);
  if (leaseDurationMs % 1000 !== 0) {
    throw new ConfigurationError(`invalid --lease-duration ${leaseDurationMs / 1000}: the Lease stores whole seconds`);
  }
  const resyncMs = seconds(values.resync, 'TOLLGATE_RESYNC', 60);
  const sidecarBodyLimit = parseSidecarSetting(values['sidecar-body-limit'], '--sidecar-body-limit', 'TOLLGATE_SIDECAR_BODY_LIMIT', env, parseBodyLimit);
  const sidecarMaxToolUses = parseSidecarSetting(values['sidecar-max-tool-uses'], '--sidecar-max-tool-uses', 'TOLLGATE_SIDECAR_MAX_TOOL_USES', env, parseMaxToolUses);
  const sidecarWalletLabel = values['no-sidecar-wallet-label'] ? false : parseSidecarWalletLabel(env);
  const redisSecretText = pick(values['sidecar-redis-secret'], 'TOLLGATE_SIDECAR_REDIS_SECRET');
  const sidecarRedisSecret = redisSecretText === undefined ? undefined : parseSecretKeyRef(redisSecretText, values['sidecar-redis-secret'] === undefined ? 'TOLLGATE_SIDECAR_REDIS_SECRET' : '--sidecar-redis-secret');
  const redisTlsSecretText = pick(values['sidecar-redis-tls-secret'], 'TOLLGATE_SIDECAR_REDIS_TLS_SECRET');
  const sidecarRedisTlsSecret =
    redisTlsSecretText === undefined
      ? undefined
      : parseSecretName(redisTlsSecretText, values['sidecar-redis-tls-secret'] === undefined ? 'TOLLGATE_SIDECAR_REDIS_TLS_SECRET' : '--sidecar-redis-tls-secret');

  return {
    kubeconfig: values.kubeconfig,
    namespace,
    watchNamespace: pick(values['watch-namespace'], 'TOLLGATE_WATCH_NAMESPACE'),
    redisUrl,
    redisTls,
    settledRetentionMs,
    ledgerTimeoutMs,
    compactAfterMs,
    httpHost: http.host,
    httpPort: http.port,
    webhook: !(values['no-webhook'] ?? env['TOLLGATE_WEBHOOK'] === 'false'),
    webhookHost: webhook.host,
    webhookPort: webhook.port,
    identity: pick(values.identity, 'TOLLGATE_POD_NAME') ?? `${os.hostname()}-${randomBytes(3).toString('hex')}`,
    leaseName: pick(values['lease-name'], 'TOLLGATE_LEASE_NAME') ?? 'tollgate-operator',
    leaseDurationMs,
    renewDeadlineMs: seconds(values['renew-deadline'], 'TOLLGATE_RENEW_DEADLINE', 10),
    retryPeriodMs: seconds(values['retry-period'], 'TOLLGATE_RETRY_PERIOD', 2),
    resyncMs,
    watchSilenceMs: seconds(values['watch-silence'], 'TOLLGATE_WATCH_SILENCE', 180),
    statusIntervalMs: seconds(values['status-interval'], 'TOLLGATE_STATUS_INTERVAL', 10),
    secretRecheckMs: Math.min(resyncMs, 30_000),
    workers,
    webhookService,
    webhookConfiguration: pick(values['webhook-configuration'], 'TOLLGATE_WEBHOOK_CONFIGURATION') ?? 'tollgate',
    webhookSecret: pick(values['webhook-secret'], 'TOLLGATE_WEBHOOK_SECRET'),
    certManager: values['cert-manager'] ?? env['TOLLGATE_WEBHOOK_CERT_MANAGER'] === 'true',
    configUrl: pick(values['config-url'], 'TOLLGATE_CONFIG_URL') ?? `http://${webhookService}.${namespace}.svc:${http.port}`,
    sidecarImage: pick(values['sidecar-image'], 'TOLLGATE_SIDECAR_IMAGE'),
    sidecarBodyLimit,
    sidecarMaxToolUses,
    sidecarWalletLabel,
    sidecarRedisSecret,
    sidecarRedisTlsSecret,
    sidecarImagePullPolicy: env['TOLLGATE_SIDECAR_IMAGE_PULL_POLICY'] || undefined,
    sidecarResources: parseResources(env['TOLLGATE_SIDECAR_RESOURCES']),
  };
}

/**
 * Parses a numeric setting of the injected sidecars with the sidecar's own parser, so
 * that the operator rejects at start a value that every injected sidecar would reject.
 * Returns undefined when neither the flag nor the variable is set. The error names
 * the flag when it is given, else the variable.
 */
function parseSidecarSetting(
  flag: string | undefined,
  flagName: string,
  variable: string,
  env: NodeJS.ProcessEnv,
  parse: (text: string, setting: string) => number,
): number | undefined {
  const text = flag ?? (env[variable] || undefined);
  if (text === undefined) return undefined;

  const setting = flag === undefined ? variable : flagName;
  try {
    return parse(text, setting);
  } catch (error) {
    throw new ConfigurationError((error as Error).message, { cause: error });
  }
}

const SECRET_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const SECRET_KEY = /^[-._a-zA-Z0-9]+$/;

/** Parses a Secret key reference written NAME or NAME/KEY, where KEY defaults to "redisUrl". */
export function parseSecretKeyRef(text: string, setting: string): SecretKeyRef {
  const [name = '', key = 'redisUrl', ...rest] = text.split('/');
  if (rest.length > 0 || name.length > 253 || !SECRET_NAME.test(name) || key.length > 253 || !SECRET_KEY.test(key)) {
    throw new ConfigurationError(
      `invalid ${setting} "${text}": use a Secret name, optionally followed by /KEY, such as tollgate-redis or tollgate-redis/redisUrl ` +
        '(names are lowercase letters, digits, "-" and "."; keys are letters, digits, "-", "_" and ".")',
    );
  }
  return { name, key };
}

/** Parses a Secret name, a DNS-1123 subdomain such as redis-tls. */
function parseSecretName(text: string, setting: string): string {
  if (text.length > 253 || !SECRET_NAME.test(text)) {
    throw new ConfigurationError(`invalid ${setting} "${text}": use a Secret name such as redis-tls (lowercase letters, digits, "-" and ".")`);
  }
  return text;
}

/**
 * Reads the Redis TLS files of --redis-ca, --redis-cert and --redis-key, each
 * falling back to its TOLLGATE_REDIS_*_FILE variable. Returns undefined when
 * none is set. An error names the flag when it is given, else the variable. A
 * setting that is missing is named as a flag when any of the files came from
 * a flag, and as a variable otherwise.
 */
function loadOperatorRedisTls(redisUrl: string, flags: RedisTlsFiles, env: NodeJS.ProcessEnv): ConnectionOptions | undefined {
  try {
    rejectEmptyOptions(flags);
  } catch (error) {
    throw new ConfigurationError((error as Error).message, { cause: error });
  }
  const anyFlag = flags.caFile !== undefined || flags.certFile !== undefined || flags.keyFile !== undefined;
  const setting = (name: keyof RedisTlsFiles) => {
    const fromEnv = env[REDIS_TLS_ENV[name]] || undefined;
    const byVariable = flags[name] === undefined && (fromEnv !== undefined || !anyFlag);
    return { file: flags[name] ?? fromEnv, name: byVariable ? REDIS_TLS_ENV[name] : REDIS_TLS_OPTIONS[name] };
  };
  const ca = setting('caFile');
  const cert = setting('certFile');
  const key = setting('keyFile');
  try {
    return loadRedisTls(redisUrl, { caFile: ca.file, certFile: cert.file, keyFile: key.file }, { caFile: ca.name, certFile: cert.name, keyFile: key.name });
  } catch (error) {
    throw new ConfigurationError((error as Error).message, { cause: error });
  }
}

/** The operator's TLS settings as its connection errors name them: the flag, and the variable that the Helm chart sets. */
const OPERATOR_TLS_SETTINGS: RedisTlsSettingNames = {
  caFile: `${REDIS_TLS_OPTIONS.caFile} (${REDIS_TLS_ENV.caFile})`,
  certFile: `${REDIS_TLS_OPTIONS.certFile} (${REDIS_TLS_ENV.certFile})`,
  keyFile: `${REDIS_TLS_OPTIONS.keyFile} (${REDIS_TLS_ENV.keyFile})`,
};

/** Returns whether a Redis URL carries a user name or a password. */
export function redisUrlHasCredentials(redisUrl: string): boolean {
  try {
    const url = new URL(redisUrl);
    return url.username !== '' || url.password !== '';
  } catch {
    return false;
  }
}

/** Parses TOLLGATE_SIDECAR_WALLET_LABEL with the sidecar's own parser: "true", "false", or unset for true. */
function parseSidecarWalletLabel(env: NodeJS.ProcessEnv): boolean {
  try {
    return parseWalletLabel(env['TOLLGATE_SIDECAR_WALLET_LABEL'], 'TOLLGATE_SIDECAR_WALLET_LABEL');
  } catch (error) {
    throw new ConfigurationError((error as Error).message, { cause: error });
  }
}

/** Parses the sidecar's resource requirements from JSON, as the chart writes them. */
function parseResources(text: string | undefined): V1ResourceRequirements | undefined {
  if (!text) return undefined;
  try {
    return JSON.parse(text) as V1ResourceRequirements;
  } catch (error) {
    throw new ConfigurationError(`invalid TOLLGATE_SIDECAR_RESOURCES: ${(error as Error).message}; set it to JSON such as {"requests":{"cpu":"50m"}}`);
  }
}

/** Parses "HOST:PORT", "[IPv6]:PORT" or ":PORT" (all addresses). */
export function parseListen(text: string, flag: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || !Number.isInteger(port) || port > 65535) {
    throw new ConfigurationError(`invalid ${flag} "${text}": use HOST:PORT such as 0.0.0.0:8080`);
  }
  return { host: match[1] ?? (match[2] || '0.0.0.0'), port };
}

function podNamespace(): string | undefined {
  try {
    return readFileSync(SERVICE_ACCOUNT_NAMESPACE_FILE, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

export interface RunningOperator {
  identity: string;
  /** The port of the snapshot, metrics and health server. */
  httpPort: number;
  metrics: OperatorMetrics;
  isLeader(): boolean;
  /** Stops every part. With `releaseLease: false` the Lease is left to expire, as after a crash. */
  stop(options?: { releaseLease?: boolean }): Promise<void>;
}

export interface StartOperatorOptions {
  log: Logger;
  /** Registers prom-client's process metrics (default true); tests that run several operators in one process turn it off. */
  defaultMetrics?: boolean;
}

const MISSING_SIDECAR_IMAGE = 'missing sidecar image: pass --sidecar-image or set TOLLGATE_SIDECAR_IMAGE, or turn the webhook off with --no-webhook';

/**
 * Checks the settings that depend on each other, so that a bad combination
 * fails before the operator connects to anything or starts serving. Throws
 * ConfigurationError.
 */
export function validateOperatorConfig(config: OperatorConfig): void {
  if (config.webhook && !config.sidecarImage) throw new ConfigurationError(MISSING_SIDECAR_IMAGE);
  validateSidecarRedisTls(config);
  try {
    validateLeaseTimings(config.leaseDurationMs, config.renewDeadlineMs, config.retryPeriodMs);
  } catch (error) {
    const message = `${(error as Error).message}. Change --lease-duration, --renew-deadline or --retry-period, or their environment variables`;
    throw new ConfigurationError(message, { cause: error });
  }
}

/**
 * Checks that the injected sidecars get the Redis TLS files that the operator
 * uses, because a sidecar without them cannot connect to a Redis that needs
 * them, and that a Secret for them is named only along with such files.
 */
function validateSidecarRedisTls(config: OperatorConfig): void {
  const tls = sidecarRedisTls(config.redisTls, config.sidecarRedisTlsSecret ?? '');
  const keys = redisTlsSecretKeys(tls);
  if (config.sidecarRedisTlsSecret !== undefined && keys.length === 0) {
    throw new ConfigurationError(
      `--sidecar-redis-tls-secret [TOLLGATE_SIDECAR_REDIS_TLS_SECRET] names Secret "${config.sidecarRedisTlsSecret}", but the operator uses no Redis TLS file, ` +
        'so the injected sidecars would have nothing to mount from it; also pass --redis-ca FILE, or --redis-cert FILE and --redis-key FILE ' +
        '(or their TOLLGATE_REDIS_*_FILE variables), or remove --sidecar-redis-tls-secret',
    );
  }
  if (config.webhook && config.sidecarRedisTlsSecret === undefined && keys.length > 0) {
    const used = (['caFile', 'certFile', 'keyFile'] as const).filter((file) => (file === 'caFile' ? tls.caCertificate : tls.clientCertificate));
    const flags = used.map((file) => REDIS_TLS_OPTIONS[file]);
    const variables = used.map((file) => REDIS_TLS_ENV[file]);
    throw new ConfigurationError(
      `the operator connects to Redis with ${flags.join(', ')} [${variables.join(', ')}], but --sidecar-redis-tls-secret [TOLLGATE_SIDECAR_REDIS_TLS_SECRET] is not set, ` +
        `so the injected sidecars could not connect; pass --sidecar-redis-tls-secret NAME, naming a Secret with the keys ${keys.join(', ')} ` +
        'in each namespace of injected pods, or turn the webhook off with --no-webhook',
    );
  }
}

/** Returns which Redis TLS files the injected sidecars mount from Secret `secretName`: those the operator itself uses. */
function sidecarRedisTls(tls: ConnectionOptions | undefined, secretName: string): RedisTlsSecretRef {
  return { name: secretName, caCertificate: tls?.ca !== undefined, clientCertificate: tls?.cert !== undefined };
}

/** Starts an operator replica; resolves once its servers listen. Throws ConfigurationError before starting anything when the settings are invalid. */
export async function startOperator(config: OperatorConfig, options: StartOperatorOptions): Promise<RunningOperator> {
  validateOperatorConfig(config);
  const log = options.log.child({ identity: config.identity });
  const clients = createKubeClients(loadKubeConfig({ kubeconfig: config.kubeconfig }));
  const metrics = createOperatorMetrics({ defaultMetrics: options.defaultMetrics ?? true });
  const ledger = new RedisLedger(config.redisUrl, {
    settledRetentionMs: config.settledRetentionMs,
    timeoutMs: config.ledgerTimeoutMs,
    tls: config.redisTls,
    tlsSettingNames: OPERATOR_TLS_SETTINGS,
    logger: log,
  });
  // cert-manager renews the certificates in the mounted Secret while the operator runs.
  const stopTlsWatch = config.redisTls === undefined ? undefined : watchRedisTls(config.redisTls, log);
  const events = new EventRecorder({ clients, log, component: 'tollgate-operator', instance: config.identity });

  const informers = {} as Record<ResourceKind, Informer>;
  for (const kind of RESOURCE_KINDS) {
    informers[kind] = new Informer({
      kind,
      clients,
      log,
      namespace: config.watchNamespace,
      resyncMs: config.resyncMs,
      watchSilenceMs: config.watchSilenceMs,
      onWatchRestart: (reason) => metrics.watchRestarts.inc({ kind, reason }),
    });
  }

  const snapshots = new SnapshotService(informerSource(informers), log);
  const controller = new Controller(config, log, metrics, {
    Wallet: new WalletReconciler({
      clients,
      wallets: informers.Wallet,
      plans: informers.PricePlan,
      ledger,
      events,
      metrics,
      log,
      statusIntervalMs: config.statusIntervalMs,
      compactAfterMs: config.compactAfterMs,
      compactIntervalMs: config.resyncMs,
    }),
    PricePlan: new PlanReconciler({ clients, plans: informers.PricePlan, routes: informers.ProviderRoute, events, log }),
    ProviderRoute: new RouteReconciler({ clients, routes: informers.ProviderRoute, events, log, secretRecheckMs: config.secretRecheckMs }),
  }, informers);

  const elector = new LeaderElector({
    clients,
    namespace: config.namespace,
    name: config.leaseName,
    identity: config.identity,
    leaseDurationMs: config.leaseDurationMs,
    renewDeadlineMs: config.renewDeadlineMs,
    retryPeriodMs: config.retryPeriodMs,
    log,
    onStartedLeading: () => controller.start(),
    onStoppedLeading: () => controller.stop(),
  });

  let http: Awaited<ReturnType<typeof startOperatorHttpServer>> | undefined;
  let webhook: WebhookServer | undefined;
  try {
    for (const informer of Object.values(informers)) informer.start();
    http = await startOperatorHttpServer({ host: config.httpHost, port: config.httpPort, snapshots, registry: metrics.registry, log });
    if (config.webhook) webhook = await startWebhookServer(config, clients, metrics, log);
    elector.start();
  } catch (error) {
    for (const informer of Object.values(informers)) informer.stop();
    await http?.close();
    stopTlsWatch?.();
    await ledger.quit();
    throw error;
  }
  log.info(
    {
      namespace: config.namespace,
      lease: config.leaseName,
      watchNamespace: config.watchNamespace ?? 'all',
      ledgerRetention: formatDuration(config.settledRetentionMs ?? DEFAULT_SETTLED_RETENTION_MS),
      compactAfter: config.compactAfterMs === undefined ? 'off' : formatDuration(config.compactAfterMs),
    },
    'operator started',
  );

  let stopping: Promise<void> | undefined;
  return {
    identity: config.identity,
    httpPort: http.port,
    metrics,
    isLeader: () => elector.isLeader && controller.running,
    stop: (stopOptions = {}) =>
      (stopping ??= (async () => {
        await elector.stop({ release: stopOptions.releaseLease ?? true });
        // Stopped informers release a reconciler start that still waits for their first list.
        for (const informer of Object.values(informers)) informer.stop();
        await controller.idle();
        await webhook?.close();
        await http.close();
        stopTlsWatch?.();
        await ledger.quit();
        log.info('operator stopped');
      })()),
  };
}

/** Starts the admission webhook, on the operator's own API clients. */
async function startWebhookServer(config: OperatorConfig, clients: KubeClients, metrics: OperatorMetrics, log: Logger): Promise<WebhookServer> {
  if (!config.sidecarImage) throw new ConfigurationError(MISSING_SIDECAR_IMAGE);
  if (config.sidecarRedisSecret === undefined && redisUrlHasCredentials(config.redisUrl)) {
    log.warn(
      {},
      'the Redis URL carries credentials, and the webhook writes it into the spec of every pod it injects, where anyone who can read pods sees it; ' +
        'create a Secret with the URL in each namespace of injected pods and pass --sidecar-redis-secret NAME[/KEY] (Helm value sidecar.redisSecret.name)',
    );
  }
  return startWebhook({
    port: config.webhookPort,
    host: config.webhookHost,
    clients,
    namespace: config.namespace,
    serviceName: config.webhookService,
    webhookConfigName: config.webhookConfiguration,
    certManager: config.certManager,
    sidecarImage: config.sidecarImage,
    configUrl: config.configUrl,
    redisUrl: config.redisUrl,
    ...(config.sidecarRedisSecret === undefined ? {} : { sidecarRedisSecret: config.sidecarRedisSecret }),
    ...(config.sidecarRedisTlsSecret === undefined ? {} : { sidecarRedisTlsSecret: sidecarRedisTls(config.redisTls, config.sidecarRedisTlsSecret) }),
    ...(config.settledRetentionMs === undefined ? {} : { settledRetentionMs: config.settledRetentionMs }),
    ...(config.ledgerTimeoutMs === undefined ? {} : { ledgerTimeoutMs: config.ledgerTimeoutMs }),
    ...(config.sidecarBodyLimit === undefined ? {} : { sidecarBodyLimit: config.sidecarBodyLimit }),
    ...(config.sidecarMaxToolUses === undefined ? {} : { sidecarMaxToolUses: config.sidecarMaxToolUses }),
    ...(config.sidecarWalletLabel === undefined ? {} : { sidecarWalletLabel: config.sidecarWalletLabel }),
    log,
    registry: metrics.registry,
    ...(config.webhookSecret ? { tlsSecretName: config.webhookSecret } : {}),
    ...(config.sidecarImagePullPolicy ? { sidecarImagePullPolicy: config.sidecarImagePullPolicy } : {}),
    ...(config.sidecarResources ? { sidecarResources: config.sidecarResources } : {}),
  });
}

/** Presents the informers' caches to the snapshot server. */
function informerSource(informers: Record<ResourceKind, Informer>): ResourceSource {
  return {
    list: (kind, namespace) => informers[kind].list(namespace),
    subscribe: (listener) => {
      const unsubscribers = Object.values(informers).map((informer) =>
        informer.subscribe((event, object) => {
          if (event !== 'resync') listener(object.metadata.namespace ?? 'default');
        }),
      );
      return () => unsubscribers.forEach((unsubscribe) => unsubscribe());
    },
    hasSynced: () => Object.values(informers).every((informer) => informer.hasSynced),
  };
}

interface Reconciler {
  reconcile(namespace: string, name: string): Promise<ReconcileResult>;
}

/** Returns the keys a change queues: the object's own key, and those of objects whose status depends on it. */
export function keysFor(
  kind: ResourceKind,
  event: InformerEvent,
  object: KubeObject,
  old: KubeObject | undefined,
  list: (kind: ResourceKind, namespace: string) => KubeObject[],
): string[] {
  const namespace = object.metadata.namespace ?? 'default';
  const keys = [objectKey(kind, namespace, object.metadata.name)];
  // A status write or a resync changes nothing that other objects read.
  const specChanged =
    event === 'add' ||
    event === 'delete' ||
    (event === 'update' &&
      (old?.metadata.generation !== object.metadata.generation || old?.metadata.deletionTimestamp !== object.metadata.deletionTimestamp));
  if (!specChanged) return keys;

  if (kind === 'PricePlan') {
    for (const wallet of list('Wallet', namespace)) {
      const ref = (wallet.spec as { pricePlanRef?: { name?: string } } | undefined)?.pricePlanRef?.name;
      if (ref === object.metadata.name) keys.push(objectKey('Wallet', namespace, wallet.metadata.name));
    }
  } else if (kind === 'ProviderRoute') {
    for (const plan of list('PricePlan', namespace)) keys.push(objectKey('PricePlan', namespace, plan.metadata.name));
    for (const route of list('ProviderRoute', namespace)) {
      if (route.metadata.name !== object.metadata.name) keys.push(objectKey('ProviderRoute', namespace, route.metadata.name));
    }
  }
  return keys;
}

/** Runs the reconcilers while this replica leads: one queue fed by the informers, drained by workers. */
class Controller {
  readonly #config: OperatorConfig;
  readonly #log: Logger;
  readonly #metrics: OperatorMetrics;
  readonly #reconcilers: Record<ResourceKind, Reconciler>;
  readonly #informers: Record<ResourceKind, Informer>;
  /** Start and stop run one after another, in call order. */
  #transition: Promise<void> = Promise.resolve();
  #queue: WorkQueue | undefined;
  #workers: Promise<void> | undefined;
  #unsubscribers: Array<() => void> = [];
  /** Whether the last call was start (true) or stop (false). */
  #wanted = false;

  constructor(
    config: OperatorConfig,
    log: Logger,
    metrics: OperatorMetrics,
    reconcilers: Record<ResourceKind, Reconciler>,
    informers: Record<ResourceKind, Informer>,
  ) {
    this.#config = config;
    this.#log = log;
    this.#metrics = metrics;
    this.#reconcilers = reconcilers;
    this.#informers = informers;
  }

  get running(): boolean {
    return this.#queue !== undefined;
  }

  start(): void {
    this.#wanted = true;
    this.#transition = this.#transition.then(() => this.#start());
  }

  stop(): void {
    this.#wanted = false;
    this.#transition = this.#transition.then(() => this.#stop());
  }

  /** Resolves after the last start or stop finished. */
  idle(): Promise<void> {
    return this.#transition;
  }

  async #start(): Promise<void> {
    if (this.#queue) return;
    await Promise.all(Object.values(this.#informers).map((informer) => informer.waitForSync()));
    // Leadership may have ended while the caches were filling.
    if (!this.#wanted) return;
    const queue = new WorkQueue();
    this.#queue = queue;
    const list = (kind: ResourceKind, namespace: string) => this.#informers[kind].list(namespace);

    for (const kind of RESOURCE_KINDS) {
      const informer = this.#informers[kind];
      this.#unsubscribers.push(
        informer.subscribe((event, object, old) => {
          for (const key of keysFor(kind, event, object, old, list)) queue.add(key);
        }),
      );
      for (const object of informer.list()) queue.add(objectKey(kind, object.metadata.namespace ?? 'default', object.metadata.name));
    }

    this.#workers = runWorkers(queue, (key) => this.#reconcile(key), {
      concurrency: this.#config.workers,
      log: this.#log,
      onResult: (key, outcome, seconds) => {
        const kind = key.slice(0, key.indexOf('/'));
        this.#metrics.reconciles.inc({ kind, outcome });
        this.#metrics.reconcileDuration.observe({ kind }, seconds);
      },
    });
    this.#metrics.leader.set(1);
    this.#log.info({ workers: this.#config.workers }, 'started the reconcilers');
  }

  async #stop(): Promise<void> {
    if (!this.#queue) return;
    for (const unsubscribe of this.#unsubscribers.splice(0)) unsubscribe();
    this.#queue.shutDown();
    // In-flight reconciles finish; the queue hands out no new keys.
    await this.#workers;
    this.#queue = undefined;
    this.#workers = undefined;
    this.#metrics.leader.set(0);
    this.#metrics.clearWallets();
    this.#log.info('stopped the reconcilers');
  }

  #reconcile(key: string): Promise<ReconcileResult> {
    const { kind, namespace, name } = parseObjectKey(key);
    const reconciler = this.#reconcilers[kind as ResourceKind];
    if (!reconciler) throw new Error(`no reconciler for kind "${kind}" of queue key "${key}"`);
    return reconciler.reconcile(namespace, name);
  }
}

/** Entry point of `tollgate operator`: runs until SIGTERM or SIGINT, then stops cleanly and releases the Lease. */
export async function runOperator(args: string[]): Promise<number> {
  let config: OperatorConfig | undefined;
  try {
    config = parseOperatorArgs(args);
    if (config) validateOperatorConfig(config);
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (!config) {
    console.log(USAGE);
    return 0;
  }

  const log = createLogger('tollgate-operator');
  // Listening before the start: a signal that arrives while no handler is installed ends the process at once, and a
  // replica that became leader during its start would then keep the Lease until it expires.
  const signalled = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  let operator: RunningOperator;
  try {
    operator = await startOperator(config, { log });
  } catch (error) {
    log.fatal({ err: error }, 'the operator failed to start');
    return 1;
  }

  const signal = await signalled;
  log.info({ signal }, 'shutting down');
  await operator.stop({ releaseLease: true });
  return 0;
}
