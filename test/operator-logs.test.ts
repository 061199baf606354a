// The operator's log lines as a user reads them, against a real kube-apiserver
// (with etcd) and a real redis-server. Covered: a Lease namespace that does not
// exist, the replica identity on each line, the level of Warning Events, a
// configuration error found before anything serves, and a Redis password that
// injected pod specs would carry.
// Needs KUBEBUILDER_ASSETS (see test/support/apiserver.ts).

import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { Redis } from 'ioredis';
import { pino, type Logger } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventRecorder } from '../operator/events.ts';
import { createKubeClients, loadKubeConfig } from '../operator/kube.ts';
import { ConfigurationError, startOperator, type RunningOperator } from '../operator/main.ts';
import { startApiServer, type ApiServer } from './support/apiserver.ts';
import { testOperatorConfig } from './support/operator.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';

interface LogLine {
  level: number;
  msg: string;
  /** The line as pino wrote it, to count repeated keys that JSON.parse would merge. */
  raw: string;
  [field: string]: unknown;
}

const WARN = 40;
const INFO = 30;
const DEBUG = 20;

let apiServer: ApiServer;
let redis: RunningRedis;
/** A Redis that requires a password, started by the one test that needs it. */
let passwordRedis: RunningRedis | undefined;
let core: CoreV1Api;
const started: RunningOperator[] = [];

/** Returns a debug-level logger that keeps every line it writes. */
function capturingLogger(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (raw: string) => void lines.push({ ...(JSON.parse(raw) as LogLine), raw }) });
  return { log, lines };
}

/** Polls `probe` until it returns true, or fails after `timeoutMs` naming what it waited for. */
async function waitUntil(what: string, probe: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

beforeAll(async () => {
  // Each is kept as soon as it starts, so that afterAll stops it when the other fails.
  const started = await Promise.allSettled([startApiServer().then((server) => (apiServer = server)), startRedis().then((server) => (redis = server))]);
  for (const result of started) if (result.status === 'rejected') throw result.reason;
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(apiServer.kubeconfigPath);
  core = kubeConfig.makeApiClient(CoreV1Api);
}, 120_000);

afterAll(async () => {
  for (const instance of started) await instance.stop({ releaseLease: true });
  await passwordRedis?.stop();
  await redis?.stop();
  await apiServer?.stop();
}, 60_000);

describe('operator logs', () => {
  it('names a missing Lease namespace once', async () => {
    const namespace = 'absent-system';
    const { log, lines } = capturingLogger();
    const config = { ...testOperatorConfig({ kubeconfig: apiServer.kubeconfigPath, redisUrl: redis.url, identity: 'replica-ns' }), namespace };
    const operator = await startOperator(config, { log, defaultMetrics: false });
    started.push(operator);

    // Two repeats at debug show that the elector retried after the first failure.
    const repeats = () => lines.filter((line) => line.msg === 'the lease attempt failed again');
    await waitUntil('two repeated lease failures', () => repeats().length >= 2);
    const warnings = lines.filter((line) => line.level === WARN && line['lease'] === `${namespace}/tollgate-operator`);
    expect(warnings.map((line) => line.msg)).toEqual([
      `the Lease namespace "${namespace}" does not exist, so this replica cannot take part in leader election; ` +
        `create it (kubectl create namespace ${namespace}), or set --namespace or TOLLGATE_NAMESPACE to an existing namespace. ` +
        'The same failure is logged again at debug only',
    ]);
    expect(warnings[0]).toMatchObject({ namespace, err: `HTTP 404: namespaces "${namespace}" not found` });
    expect(repeats()[0]).toMatchObject({ level: DEBUG, err: `HTTP 404: namespaces "${namespace}" not found` });

    await core.createNamespace({ body: { metadata: { name: namespace } } });
    // No CRDs are installed here, so the reconcilers never start, but the election itself succeeds.
    await waitUntil('the replica to take the Lease', () => lines.some((line) => line.msg === 'became the leader'));
    const recovered = lines.find((line) => line.msg === 'reading and updating the lease succeeded again');
    expect(recovered?.level).toBe(INFO);
    expect(recovered?.['failedAttempts']).toBe(repeats().length + 1);
  }, 30_000);

  it('names the identity once per line', async () => {
    const { log, lines } = capturingLogger();
    const config = { ...testOperatorConfig({ kubeconfig: apiServer.kubeconfigPath, redisUrl: redis.url, identity: 'replica-id' }), namespace: 'absent-identity' };
    const operator = await startOperator(config, { log, defaultMetrics: false });
    started.push(operator);

    await waitUntil('a lease failure', () => lines.some((line) => line.level === WARN && line['lease'] !== undefined));
    const leaseLine = lines.find((line) => line.level === WARN && line['lease'] !== undefined)!;
    expect(leaseLine['identity']).toBe('replica-id');
    for (const line of lines) {
      expect(line.raw.match(/"identity":/g), line.raw).toHaveLength(1);
    }
  }, 30_000);

  it('logs Warning events at warn', async () => {
    const namespace = 'event-levels';
    await core.createNamespace({ body: { metadata: { name: namespace } } });
    const { log, lines } = capturingLogger();
    const recorder = new EventRecorder({ clients: createKubeClients(loadKubeConfig({ kubeconfig: apiServer.kubeconfigPath })), log, component: 'tollgate-operator', instance: 'test' });
    const target = { apiVersion: 'tollgate.dev/v1alpha1', kind: 'ProviderRoute', namespace, name: 'openai', uid: 'uid-openai' };

    await recorder.record(target, 'Warning', 'SecretMissing', 'Secret "openai-key" not found');
    await recorder.record(target, 'Normal', 'Ready', 'route is ready');

    expect(lines.map((line) => [line.level, line['reason'], line.msg])).toEqual([
      [WARN, 'SecretMissing', 'Secret "openai-key" not found'],
      [INFO, 'Ready', 'route is ready'],
    ]);
  });

  it('warns about a Redis password in pod specs', async () => {
    await core.createNamespace({ body: { metadata: { name: 'tollgate-system' } } });
    const guarded = await startRedis();
    passwordRedis = guarded;
    const admin = new Redis(guarded.url);
    await admin.call('CONFIG', 'SET', 'requirepass', 's3cret');
    admin.disconnect();
    const withPassword = guarded.url.replace('redis://', 'redis://:s3cret@');
    const settings = (identity: string) => ({
      ...testOperatorConfig({ kubeconfig: apiServer.kubeconfigPath, redisUrl: withPassword, identity }),
      webhook: true,
      sidecarImage: 'registry.example/tollgate:test',
    });
    const plain = capturingLogger();
    started.push(await startOperator(settings('replica-plain'), { log: plain.log, defaultMetrics: false }));
    const fromSecret = capturingLogger();
    started.push(await startOperator({ ...settings('replica-secret'), sidecarRedisSecret: { name: 'tollgate-redis', key: 'redisUrl' } }, { log: fromSecret.log, defaultMetrics: false }));

    const warning = (lines: LogLine[]) => lines.filter((line) => line.level === WARN && line.msg.startsWith('the Redis URL carries credentials'));
    expect(warning(plain.lines).map((line) => line.msg)).toEqual([
      'the Redis URL carries credentials, and the webhook writes it into the spec of every pod it injects, where anyone who can read pods sees it; ' +
        'create a Secret with the URL in each namespace of injected pods and pass --sidecar-redis-secret NAME[/KEY] (Helm value sidecar.redisSecret.name)',
    ]);
    expect(warning(fromSecret.lines)).toEqual([]);
    expect(plain.lines.some((line) => line.raw.includes('s3cret'))).toBe(false);
  }, 30_000);

  it('rejects a missing sidecar image before serving', async () => {
    const { log, lines } = capturingLogger();
    const config = { ...testOperatorConfig({ kubeconfig: apiServer.kubeconfigPath, redisUrl: redis.url, identity: 'replica-image' }), webhook: true };

    const start = startOperator(config, { log, defaultMetrics: false });
    await expect(start).rejects.toThrow(ConfigurationError);
    await expect(start).rejects.toThrow(
      'missing sidecar image: pass --sidecar-image or set TOLLGATE_SIDECAR_IMAGE, or turn the webhook off with --no-webhook',
    );
    expect(lines.map((line) => line.msg)).toEqual([]);
  });
});
