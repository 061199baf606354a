/**
 * Starts the pieces of an end-to-end test: a real redis-server, the provider
 * simulator and a sidecar on the Redis ledger, configured from YAML text in
 * which `SIMULATOR_URL` stands for the simulator's address.
 */
import { pino, type Logger } from 'pino';
import { addYaml, emptyResourceSet } from '../../src/config/manifests.ts';
import { secretsResolver } from '../../src/config/snapshot.ts';
import { RedisLedger } from '../../src/ledger/redis.ts';
import { startSimulator } from '../../src/simulator/index.ts';
import { createSidecarMetrics } from '../../src/telemetry/metrics.ts';
import { compileSnapshot, StaticConfig } from '../../sidecar/config-source.ts';
import { applyGrants } from '../../sidecar/dev.ts';
import { createSidecar, DEFAULT_SIDECAR_OPTIONS, type Sidecar, type SidecarOptions } from '../../sidecar/server.ts';
import { startRedis, type RunningRedis } from './redis.ts';

export const SIMULATOR_KEY = 'sk-simulator-test-key';

/** One OpenAI route to the simulator, a plan that prices gpt-4o-mini at 1 and 2 USD per million tokens, and the wallet "team" with 1.00 USD. */
export const SMALL_MANIFESTS = `
apiVersion: v1
kind: Secret
metadata: { name: keys }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai }
spec:
  protocol: openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: keys, key: apiKey }
  models: [gpt-4o-mini]
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: plan }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gpt-4o-mini: { input: "1", output: "2" }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: team }
spec:
  currency: USD
  pricePlanRef: { name: plan }
  grants: [{ id: start, amount: "1.00" }]
`;

export interface Stack {
  url: string;
  redis: RunningRedis;
  simulator: Awaited<ReturnType<typeof startSimulator>>;
  ledger: RedisLedger;
  config: StaticConfig;
  sidecar: Sidecar;
  /** Recompiles the configuration from new YAML, as a configuration change would. */
  reconfigure(yaml: string): Promise<void>;
  close(): Promise<void>;
}

export function compileYaml(yaml: string, simulatorUrl: string) {
  const resources = emptyResourceSet();
  addYaml(resources, yaml.replaceAll('SIMULATOR_URL', simulatorUrl), 'test manifests');
  return compileSnapshot(resources, secretsResolver(resources));
}

/** Starts the stack; `log` replaces the default logger, which is silent unless LOG_LEVEL is set. */
export async function startStack(yaml: string, options: Partial<SidecarOptions> = {}, log: Logger = pino({ level: process.env.LOG_LEVEL ?? 'silent' })): Promise<Stack> {
  const redis = await startRedis();
  const simulator = await startSimulator({ host: '127.0.0.1', port: 0, expectedKey: SIMULATOR_KEY });
  const ledger = new RedisLedger(redis.url);
  const config = new StaticConfig(compileYaml(yaml, simulator.url));
  await applyGrants(ledger, config.current().resources, log);

  const sidecar = createSidecar(
    config,
    ledger,
    createSidecarMetrics({ defaultMetrics: false }),
    { ...DEFAULT_SIDECAR_OPTIONS, walletPolicy: { defaultWallet: undefined, allowWalletHeader: true }, ...options },
    log,
  );
  const url = await sidecar.app.listen({ host: '127.0.0.1', port: 0 });

  return {
    url,
    redis,
    simulator,
    ledger,
    config,
    sidecar,
    async reconfigure(next: string) {
      const snapshot = compileYaml(next, simulator.url);
      await applyGrants(ledger, snapshot.resources, log);
      config.replace(snapshot);
    },
    async close() {
      await sidecar.app.close();
      await sidecar.proxy.close();
      await ledger.quit();
      await simulator.close();
      await redis.stop();
    },
  };
}
