import type { OperatorConfig } from '../../operator/main.ts';

/**
 * Returns operator settings for tests: loopback ports chosen by the system,
 * no webhook, and lease and resync timings short enough for failover and
 * status changes to show within seconds.
 */
export function testOperatorConfig(options: { kubeconfig: string; redisUrl: string; identity: string }): OperatorConfig {
  return {
    kubeconfig: options.kubeconfig,
    namespace: 'tollgate-system',
    watchNamespace: undefined,
    redisUrl: options.redisUrl,
    httpHost: '127.0.0.1',
    httpPort: 0,
    webhook: false,
    webhookHost: '127.0.0.1',
    webhookPort: 0,
    identity: options.identity,
    leaseName: 'tollgate-operator',
    leaseDurationMs: 2_000,
    renewDeadlineMs: 1_500,
    retryPeriodMs: 500,
    resyncMs: 1_000,
    watchSilenceMs: 30_000,
    statusIntervalMs: 1_000,
    secretRecheckMs: 1_000,
    workers: 2,
    webhookService: 'tollgate',
    webhookConfiguration: 'tollgate',
    webhookSecret: undefined,
    certManager: false,
    configUrl: 'http://127.0.0.1:0',
    sidecarImage: undefined,
    sidecarImagePullPolicy: undefined,
    sidecarResources: undefined,
  };
}
