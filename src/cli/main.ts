#!/usr/bin/env node
import { parseArgs } from 'node:util';
import type { ConnectionOptions } from 'node:tls';

const USAGE = `Usage: tollgate <command> [options]

Commands:
  dev       Run the enforcing sidecar locally on manifests from a folder
  demo      Start local mode and make OpenAI SDK calls until the wallet runs out
  sidecar   Run the sidecar in a pod (configured by the environment the injector sets)
  operator  Run the Kubernetes operator and admission webhook
  ledger    Inspect, export or compact a Redis ledger: "tollgate ledger state|verify|export|compact --redis URL --wallet NS/NAME"

Run "tollgate <command> --help" for the options of a command.`;

const DEV_USAGE = `Usage: tollgate dev [options]

Options:
  --manifests PATH   Folder or file of Wallet, PricePlan, ProviderRoute and Secret manifests (default: examples)
  --host HOST        Address to listen on (default: 127.0.0.1)
  --port PORT        Port to listen on (default: 8787; 0 picks a free port)
  --redis URL        Use the Redis ledger at URL instead of the in-memory ledger:
                     redis://HOST:PORT, or redis+cluster://HOST:PORT for a
                     Redis Cluster (rediss:// and rediss+cluster:// with TLS)
  --redis-ca FILE    PEM file of the CA that signed the Redis server's TLS
                     certificate, when it is not one Node.js trusts already
  --redis-cert FILE  PEM file of the client certificate, for a Redis server
                     that asks for one (with --redis-key)
  --redis-key FILE   PEM file of the client certificate's private key
  --wallet NAME      Wallet that pays when a request names none, as NAMESPACE/NAME or NAME
  --ledger-retention DURATION
                     How long the ledger keeps settled requests, so that a retry
                     with the same request id is not billed again: 7d by
                     default, at least 1h
  --ledger-timeout DURATION
                     How long a Redis ledger operation waits for an answer
                     before the request fails with 503: 2s by default, 0s for
                     no limit
  --commit-journal FILE
                     File in which commits that wait for an unavailable Redis
                     ledger are kept, so that a restarted dev still charges
                     them (with --redis; one dev process per file). Without
                     it, they are lost when dev stops before Redis is back
  --body-limit BYTES Largest request body the sidecar accepts, in bytes
                     (default: 4194304, which is 4 MiB)
  --max-tool-uses N  Use limit the sidecar sets on each charged server tool,
                     such as web search, in a request that sets none, lowered
                     to what the wallet affords; from 1 to 1000 (default: 5)
  --no-wallet-label  Leave the wallet label of tollgate_charged_total and
                     tollgate_provider_cost_total empty, so that the metrics keep
                     one series per model and route instead of one per wallet
  --no-watch         Do not reload manifests when they change

Routes without a provider key (in a Secret manifest or in OPENAI_API_KEY,
AZURE_OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY) are served by the
built-in provider simulator.`;

const SIDECAR_USAGE = `Usage: tollgate sidecar

Runs the enforcing sidecar in a pod. The operator's webhook injects it and
sets its environment:

  TOLLGATE_NAMESPACE         Namespace of the pod and its wallets (required)
  TOLLGATE_CONFIG_URL        The operator's snapshot server, such as http://tollgate.tollgate-system.svc:8080 (required)
  TOLLGATE_REDIS_URL         Redis ledger URL, redis://host:port (required);
                             redis+cluster://host:port for a Redis Cluster, rediss:// and rediss+cluster:// with TLS
  TOLLGATE_REDIS_CA_FILE     PEM file of the CA that signed the Redis server's TLS certificate
  TOLLGATE_REDIS_CERT_FILE   PEM file of a client certificate for Redis, with TOLLGATE_REDIS_KEY_FILE
  TOLLGATE_REDIS_KEY_FILE    PEM file of that client certificate's private key
  TOLLGATE_WALLET            Wallet of the namespace that pays for the pod's calls
  TOLLGATE_CREDENTIALS_DIR   Folder of the mounted provider Secrets, <secret>/<key> (default /var/run/tollgate/credentials)
  TOLLGATE_LISTEN            Proxy address (default 127.0.0.1:8787)
  TOLLGATE_ADMIN_LISTEN      Address of /metrics, /healthz and /readyz (off when unset)
  TOLLGATE_LEDGER_RETENTION  How long settled requests are kept, such as 7d (the ledger's default when unset)
  TOLLGATE_LEDGER_TIMEOUT    How long a ledger operation waits for Redis before the request fails with 503 (default 2s; 0s for no limit)
  TOLLGATE_BODY_LIMIT        Largest request body in bytes (default 4194304)
  TOLLGATE_MAX_TOOL_USES     Use limit set on each charged server tool (web search) in a request that sets none, 1 to 1000 (default 5)
  TOLLGATE_WALLET_LABEL      false leaves the wallet label of the money counters empty (default true)
  TOLLGATE_COMMIT_JOURNAL    File that keeps commits waiting for Redis across a restart of the sidecar
                             (the webhook sets /var/lib/tollgate/commits.ndjson; in memory only when unset)
  OTEL_EXPORTER_OTLP_ENDPOINT  Turns on OpenTelemetry export; the SDK reads the other OTEL_* variables
  LOG_LEVEL                  pino log level (default info)`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'dev':
      return dev(rest);
    case 'demo': {
      const { runDemo } = await import('../../sidecar/demo.ts');
      return runDemo(rest);
    }
    case 'sidecar': {
      if (rest.length === 1 && (rest[0] === '--help' || rest[0] === '-h')) {
        console.log(SIDECAR_USAGE);
        return 0;
      }
      if (rest.length > 0) {
        console.error(`tollgate sidecar takes no arguments, but got "${rest.join(' ')}"; it reads its settings from the environment\n\n${SIDECAR_USAGE}`);
        return 2;
      }
      const { runSidecar } = await import('../../sidecar/main.ts');
      await runSidecar();
      return new Promise<number>(() => {});
    }
    case 'operator': {
      const { runOperator } = await import('../../operator/main.ts');
      return runOperator(rest);
    }
    case 'ledger': {
      const { runLedgerCommand } = await import('./ledger.ts');
      return runLedgerCommand(rest);
    }
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      console.log(USAGE);
      return command === undefined ? 2 : 0;
    default:
      console.error(`unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

async function dev(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      manifests: { type: 'string', default: 'examples' },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8787' },
      redis: { type: 'string' },
      'redis-ca': { type: 'string' },
      'redis-cert': { type: 'string' },
      'redis-key': { type: 'string' },
      wallet: { type: 'string' },
      'ledger-retention': { type: 'string' },
      'ledger-timeout': { type: 'string' },
      'commit-journal': { type: 'string' },
      'body-limit': { type: 'string' },
      'max-tool-uses': { type: 'string' },
      'no-wallet-label': { type: 'boolean', default: false },
      'no-watch': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(DEV_USAGE);
    return 0;
  }
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`invalid --port "${values.port}": use a whole number from 0 to 65535`);
    return 2;
  }
  let settledRetentionMs: number | undefined;
  let ledgerTimeoutMs: number | undefined;
  let redisTls: ConnectionOptions | undefined;
  const { parseDurationMs, validateSettledRetention } = await import('../ledger/retention.ts');
  const { parseLedgerTimeout } = await import('../ledger/redis.ts');
  const { parseRedisUrl } = await import('../ledger/redis-connect.ts');
  const { loadRedisTls, REDIS_TLS_OPTIONS, RedisTlsFileError, rejectEmptyOptions } = await import('../ledger/redis-tls.ts');
  try {
    if (values.redis !== undefined) parseRedisUrl(values.redis);
    const tlsFiles = { caFile: values['redis-ca'], certFile: values['redis-cert'], keyFile: values['redis-key'] };
    rejectEmptyOptions(tlsFiles);
    if (values.redis === undefined && Object.values(tlsFiles).some((file) => file !== undefined)) {
      throw new RangeError('--redis-ca, --redis-cert and --redis-key apply to the Redis ledger; give --redis rediss://HOST:PORT too, or remove them');
    }
    if (values.redis !== undefined) redisTls = loadRedisTls(values.redis, tlsFiles, REDIS_TLS_OPTIONS);
    if (values['ledger-retention'] !== undefined) {
      settledRetentionMs = parseDurationMs(values['ledger-retention'], '--ledger-retention');
      validateSettledRetention(settledRetentionMs);
    }
    if (values['ledger-timeout'] !== undefined) ledgerTimeoutMs = parseLedgerTimeout(values['ledger-timeout'], '--ledger-timeout');
    // Only the Redis ledger can be unavailable, and the in-memory one starts empty, so a journal would replay into nothing.
    if (values['commit-journal'] !== undefined && values.redis === undefined) {
      throw new RangeError('--commit-journal applies to the Redis ledger; give --redis URL too, or remove it');
    }
    if (values['commit-journal'] === '') throw new RangeError('invalid --commit-journal "": give the path of a file');
  } catch (error) {
    console.error((error as Error).message);
    // Exit status 2 means a misuse of the options; a TLS file that cannot be used is a failure like a missing Redis.
    return error instanceof RedisTlsFileError ? 1 : 2;
  }

  // The sidecar is the top of the dependency tree, so the command loads it lazily.
  const { parseBodyLimit, parseMaxToolUses } = await import('../../sidecar/server.ts');
  let bodyLimit: number | undefined;
  let defaultMaxToolUses: number | undefined;
  try {
    if (values['body-limit'] !== undefined) bodyLimit = parseBodyLimit(values['body-limit'], '--body-limit');
    if (values['max-tool-uses'] !== undefined) defaultMaxToolUses = parseMaxToolUses(values['max-tool-uses'], '--max-tool-uses');
  } catch (error) {
    console.error((error as Error).message);
    return 2;
  }

  const { startDev } = await import('../../sidecar/dev.ts');
  const { createLogger } = await import('../telemetry/logger.ts');
  const log = createLogger('tollgate-dev');
  let server: Awaited<ReturnType<typeof startDev>>;
  try {
    server = await startDev({
      manifests: values.manifests,
      host: values.host,
      port,
      redisUrl: values.redis,
      redisTls,
      wallet: values.wallet,
      settledRetentionMs,
      ledgerTimeoutMs,
      commitJournal: values['commit-journal'],
      env: process.env,
      log,
      watch: !values['no-watch'],
      sidecar: {
        ...(bodyLimit === undefined ? {} : { bodyLimit }),
        bodyLimitSetting: 'tollgate dev --body-limit BYTES',
        ...(defaultMaxToolUses === undefined ? {} : { defaultMaxToolUses }),
        walletLabel: !values['no-wallet-label'],
      },
    });
  } catch (error) {
    const { LedgerUnavailableError } = await import('../ledger/ledger.ts');
    if (error instanceof LedgerUnavailableError && values['commit-journal'] !== undefined) {
      // The journal is replayed only after the ledger is reachable, so its commits are still in the file.
      throw new Error(`${error.message.replace(/\.+$/, '')}. Commits waiting in ${values['commit-journal']} stay there and are applied at the next start that reaches Redis`, {
        cause: error,
      });
    }
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
    console.error(`tollgate: port ${port} on ${values.host} is already in use; stop the process that listens there, or pick another port with --port PORT (--port 0 picks a free one)`);
    return 1;
  }
  const stop = async (signal: NodeJS.Signals) => {
    log.info({ signal }, 'stopping');
    await server.close();
    log.info('stopped');
    process.exit(0);
  };
  // The handlers go in before the banner: a signal that arrives while none is installed ends the process at once, without the stop.
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  printBanner(server, await describeLedger(values.redis));
  return new Promise<number>(() => {});
}

/**
 * Names the ledger for the banner: the Redis server's or cluster's address
 * without credentials, and whether it connects over TLS, or the in-memory ledger.
 */
async function describeLedger(redisUrl: string | undefined): Promise<string> {
  if (redisUrl === undefined) return 'in memory (lost when dev stops; --redis URL keeps it in Redis)';
  const { describeCluster, parseRedisUrl } = await import('../ledger/redis-connect.ts');
  const { usesTls } = await import('../ledger/redis-tls.ts');
  const overTls = usesTls(redisUrl) ? ' over TLS' : '';
  const target = parseRedisUrl(redisUrl);
  if (target.kind === 'cluster') return `${describeCluster(target.seeds).replace(/^the /, '')}${overTls}`;
  try {
    const url = new URL(redisUrl);
    return `Redis at ${url.host}${url.pathname.length > 1 ? ` database ${url.pathname.slice(1)}` : ''}${overTls}`;
  } catch {
    return `Redis${overTls}`;
  }
}

function printBanner(
  server: { url: string; simulated: string[]; config: { current(): { routes: Map<string, { name: string; protocol: string }>; wallets: Map<string, unknown> } } },
  ledger: string,
): void {
  const snapshot = server.config.current();
  const lines = [`Tollgate sidecar listening on ${server.url}`, ''];
  for (const [prefix, route] of snapshot.routes) {
    const simulated = server.simulated.includes(route.name) ? ' (provider simulator: no key configured)' : '';
    lines.push(`  route ${route.name}: ${server.url}${prefix}${simulated}`);
  }
  lines.push(`  wallets: ${[...snapshot.wallets.keys()].join(', ')}`);
  lines.push(`  ledger: ${ledger}`);
  lines.push('', 'Point an SDK at it:');
  lines.push(`  OPENAI_BASE_URL=${server.url}/openai/v1 OPENAI_API_KEY=unused`);
  lines.push(`  ANTHROPIC_BASE_URL=${server.url}/anthropic ANTHROPIC_API_KEY=unused`);
  if ([...snapshot.routes.values()].some((route) => route.protocol === 'gemini')) {
    lines.push(`  GOOGLE_GEMINI_BASE_URL=${server.url}/gemini GEMINI_API_KEY=unused`);
  }
  lines.push(`Metrics:  curl -s ${server.url}/metrics`);
  // The tests wait for this line, so it stays the banner's last.
  lines.push(`Balances: curl -s ${server.url}/tollgate/v1/wallets`);
  console.log(lines.join('\n'));
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    console.error(error instanceof Error ? `tollgate: ${error.message}` : error);
    // A failed command may have opened connections and timers first, such as the ledger's Redis client or
    // telemetry. They would keep the process alive, but a sidecar that fails at start must exit.
    process.exit(1);
  },
);
