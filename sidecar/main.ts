import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ProviderRoute } from '../src/api/provider-route.ts';
import type { ResourceSet } from '../src/config/manifests.ts';
import { DEFAULT_LEDGER_TIMEOUT_MS, parseLedgerTimeout, RedisLedger } from '../src/ledger/redis.ts';
import { loadRedisTls, REDIS_TLS_ENV, watchRedisTls, type RedisTlsFiles } from '../src/ledger/redis-tls.ts';
import { DEFAULT_SETTLED_RETENTION_MS, parseDurationMs, validateSettledRetention } from '../src/ledger/retention.ts';
import { createLogger } from '../src/telemetry/logger.ts';
import { createSidecarMetrics } from '../src/telemetry/metrics.ts';
import { startTelemetry } from '../src/telemetry/tracing.ts';
import { compileSnapshot, OperatorConfig } from './config-source.ts';
import { createAdminServer, createSidecar, DEFAULT_SIDECAR_OPTIONS, parseBodyLimit, parseMaxToolUses, parseWalletLabel } from './server.ts';

/**
 * Reads a route's credential from the Secret files the injector mounts at
 * <dir>/<secret name>/<key>. Read at each configuration change and, through
 * credentialsFingerprint, at each credentials check of OperatorConfig, so
 * that a rotated key is picked up without a restart.
 */
export function fileCredentials(dir: string): (route: ProviderRoute) => string | undefined {
  return (route) => {
    const ref = route.spec.credentialSecretRef;
    if (!ref) return undefined;
    try {
      return readFileSync(join(dir, ref.name, ref.key), 'utf8').trim();
    } catch {
      return undefined;
    }
  };
}

/**
 * Returns a function that hashes the credentials of every route of a
 * resource set, so that the sidecar notices when the kubelet updates a
 * mounted provider Secret, without keeping another copy of the keys.
 */
export function credentialsFingerprint(credentialOf: (route: ProviderRoute) => string | undefined): (resources: ResourceSet) => string {
  return (resources) => {
    const hash = createHash('sha256');
    for (const route of resources.routes) hash.update(`${route.metadata.name}\0${credentialOf(route) ?? ''}\0`);
    return hash.digest('hex');
  };
}

function required(env: NodeJS.ProcessEnv, name: string): string {
  const value = env[name];
  if (!value) throw new Error(`environment variable ${name} is not set; the injector sets it, or set it by hand`);
  return value;
}

/**
 * Returns the retention of settled records from TOLLGATE_LEDGER_RETENTION (a
 * duration such as 7d), or the ledger's default when it is unset. The
 * operator reads the same variable, and its webhook passes its own setting
 * to the sidecars it injects, so both hold the same value.
 */
export function settledRetention(env: NodeJS.ProcessEnv): number | undefined {
  const text = env.TOLLGATE_LEDGER_RETENTION;
  if (!text) return undefined;
  const retentionMs = parseDurationMs(text, 'TOLLGATE_LEDGER_RETENTION');
  validateSettledRetention(retentionMs);
  return retentionMs;
}

/**
 * Returns how long a ledger operation waits for Redis, in milliseconds, from
 * TOLLGATE_LEDGER_TIMEOUT (a duration such as 2s; 0s for no limit), or the
 * default when it is unset. The webhook sets it from the operator's setting.
 */
export function ledgerTimeout(env: NodeJS.ProcessEnv): number {
  const text = env.TOLLGATE_LEDGER_TIMEOUT;
  if (!text) return DEFAULT_LEDGER_TIMEOUT_MS;
  return parseLedgerTimeout(text, 'TOLLGATE_LEDGER_TIMEOUT');
}

/**
 * Returns the largest request body the sidecar accepts, in bytes, from
 * TOLLGATE_BODY_LIMIT, or the default when it is unset.
 */
export function bodyLimit(env: NodeJS.ProcessEnv): number {
  const text = env.TOLLGATE_BODY_LIMIT;
  if (!text) return DEFAULT_SIDECAR_OPTIONS.bodyLimit;
  return parseBodyLimit(text, 'TOLLGATE_BODY_LIMIT');
}

/**
 * Returns the use limit that the sidecar sets on each charged server tool of a
 * request that sets none, from TOLLGATE_MAX_TOOL_USES, or the default when it
 * is unset.
 */
export function maxToolUses(env: NodeJS.ProcessEnv): number {
  const text = env.TOLLGATE_MAX_TOOL_USES;
  if (!text) return DEFAULT_SIDECAR_OPTIONS.defaultMaxToolUses;
  return parseMaxToolUses(text, 'TOLLGATE_MAX_TOOL_USES');
}

/**
 * Returns whether the money counters carry the paying wallet's id in their
 * wallet label, from TOLLGATE_WALLET_LABEL: "false" turns the label off, and
 * "true" or unset keeps it on. The webhook sets "false" when the operator's
 * setting turns it off.
 */
export function walletLabel(env: NodeJS.ProcessEnv): boolean {
  return parseWalletLabel(env.TOLLGATE_WALLET_LABEL, 'TOLLGATE_WALLET_LABEL');
}

/** Returns the paths of the Redis TLS files from TOLLGATE_REDIS_CA_FILE, TOLLGATE_REDIS_CERT_FILE and TOLLGATE_REDIS_KEY_FILE, which the webhook sets. */
export function redisTlsFiles(env: NodeJS.ProcessEnv): RedisTlsFiles {
  return { caFile: env[REDIS_TLS_ENV.caFile], certFile: env[REDIS_TLS_ENV.certFile], keyFile: env[REDIS_TLS_ENV.keyFile] };
}

/** Runs the sidecar in a pod: configuration from the operator, the Redis ledger, credentials from files. */
export async function runSidecar(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const log = createLogger('tollgate-sidecar');
  const stopTelemetry = await startTelemetry('tollgate-sidecar', log, env);
  const namespace = required(env, 'TOLLGATE_NAMESPACE');
  const configUrl = `${required(env, 'TOLLGATE_CONFIG_URL').replace(/\/+$/, '')}/v1/snapshot/${namespace}`;
  const credentials = fileCredentials(env.TOLLGATE_CREDENTIALS_DIR ?? '/var/run/tollgate/credentials');
  const wallet = env.TOLLGATE_WALLET ? `${namespace}/${env.TOLLGATE_WALLET}` : undefined;
  const maxBodyBytes = bodyLimit(env);
  const defaultMaxToolUses = maxToolUses(env);
  const labelWallets = walletLabel(env);
  const timeoutMs = ledgerTimeout(env);
  const redisUrl = required(env, 'TOLLGATE_REDIS_URL');
  const tls = loadRedisTls(redisUrl, redisTlsFiles(env), REDIS_TLS_ENV);

  const config = await OperatorConfig.connect(configUrl, (resources) => compileSnapshot(resources, credentials), log, {
    credentialsOf: credentialsFingerprint(credentials),
  });
  const settledRetentionMs = settledRetention(env) ?? DEFAULT_SETTLED_RETENTION_MS;
  const ledger = new RedisLedger(redisUrl, { settledRetentionMs, timeoutMs, tls, logger: log });
  // cert-manager renews the certificates in the mounted Secret while the pod runs.
  const stopTlsWatch = tls === undefined ? undefined : watchRedisTls(tls, log);
  const metrics = createSidecarMetrics();
  const sidecar = createSidecar(
    config,
    ledger,
    metrics,
    {
      ...DEFAULT_SIDECAR_OPTIONS,
      bodyLimit: maxBodyBytes,
      // The webhook sets TOLLGATE_BODY_LIMIT from the operator's setting, so a user raises it there.
      bodyLimitSetting: 'the Helm value sidecar.bodyLimit of the tollgate chart (the operator flag --sidecar-body-limit)',
      walletPolicy: { defaultWallet: wallet, allowWalletHeader: false },
      defaultMaxToolUses,
      walletLabel: labelWallets,
      // Queued commits are kept no longer than the ledger keeps the records they may settle.
      settledRetentionMs,
      // The webhook points it into an emptyDir volume, which outlives a restart of the sidecar's container.
      commitJournal: env.TOLLGATE_COMMIT_JOURNAL || undefined,
    },
    log,
  );
  const admin = env.TOLLGATE_ADMIN_LISTEN ? createAdminServer(config, metrics) : undefined;

  const stop = async () => {
    log.info('stopping');
    config.close();
    stopTlsWatch?.();
    await admin?.close();
    await sidecar.app.close();
    await sidecar.proxy.close();
    await ledger.quit();
    await stopTelemetry();
    process.exit(0);
  };
  // Installed before the servers listen: a signal that arrives while no handler is installed ends the process without the stop.
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);

  const [host = '127.0.0.1', port = '8787'] = (env.TOLLGATE_LISTEN ?? '127.0.0.1:8787').split(':');
  const address = await sidecar.app.listen({ host, port: Number(port) });
  log.info({ address }, 'sidecar listening');
  if (admin) {
    const [adminHost = '0.0.0.0', adminPort = '9464'] = env.TOLLGATE_ADMIN_LISTEN!.split(':');
    const adminAddress = await admin.listen({ host: adminHost, port: Number(adminPort) });
    log.info({ address: adminAddress }, 'admin server listening');
  }
}
