/**
 * Launches the LiteLLM proxy (litellm[proxy] from PyPI, installed by
 * bench/peers/install.sh) with one model routed to an OpenAI-compatible
 * upstream and its Redis-backed enforcement turned on.
 *
 * LiteLLM's budgets per virtual key, user, team and end user, and its
 * proxy-wide `max_budget`, are enforced only with a Postgres database that it
 * reaches through Prisma, and Prisma's engine binaries cannot be installed
 * from a package registry. What runs without a database is the router's
 * deployment budget (`max_budget` and `budget_duration` on the model) and its
 * deployment rate limit (`rpm` with the `enforce_model_rate_limits` check),
 * both counted in Redis, so this launcher configures those.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatAmount } from '../../src/money/index.ts';
import { assertPortFree, defaultLogFile, launch, peersCacheDir, type PeerGateway } from './process.ts';

/** A money amount in USD: a decimal string such as `"0.0000025"`, or a bigint of nano-USD. */
export type UsdAmount = string | bigint;

export interface LiteLLMOptions {
  /** Port on which the proxy listens on 127.0.0.1. */
  port: number;
  /** Upstream OpenAI base URL including `/v1`, such as `http://127.0.0.1:40123/v1`. */
  upstreamUrl: string;
  /** Redis URL for the router's budget and rate counters and the proxy's coordination cache. */
  redisUrl: string;
  /** Model id that clients request. The upstream receives the same id. */
  model: string;
  /** Spend after which the router rejects requests to the model, in USD. */
  budgetUsd: UsdAmount;
  /** Price of one input token, in USD. */
  inputPricePerToken: UsdAmount;
  /** Price of one output token, in USD. */
  outputPricePerToken: UsdAmount;
  /** Window after which the budget resets, in LiteLLM's duration syntax (`30s`, `1h`, `30d`, `1mo`; default `30d`). */
  budgetDuration?: string;
  /**
   * Requests per minute allowed to the model, counted in Redis. The default,
   * 100 000 000, never rejects but keeps the check on every request, and 0
   * turns the check off.
   */
  rpmLimit?: number;
  /** Uvicorn worker processes (default 1). Each keeps its own in-memory counters, synchronised with Redis about once a second. */
  workers?: number;
  /** Key that clients present as `Authorization: Bearer` (default `sk-bench-master`). LiteLLM requires the `sk-` prefix. */
  masterKey?: string;
  /** Key that LiteLLM sends to the upstream (default `sk-bench-upstream`). */
  upstreamApiKey?: string;
  /** Milliseconds to wait for readiness (default 180 000 per worker; one worker started in 15 to 32 s on 2 cores). */
  readyTimeoutMs?: number;
  /** File for the proxy's output (default in the system temporary folder). */
  logFile?: string;
}

/** Path of the `litellm` command inside the peers cache. */
export function litellmExecutable(): string {
  return join(peersCacheDir(), 'litellm-venv', 'bin', 'litellm');
}

const DECIMAL_USD = /^\d+(?:\.\d+)?$/;
const MODEL_ID = /^[A-Za-z0-9._:/-]+$/;
const DURATION = /^\d+(?:s|m|h|d|mo)$/;

/** Writes an amount as the plain decimal text that goes into the YAML file, so no float is computed here. */
export function usdText(amount: UsdAmount, fieldName: string): string {
  if (typeof amount === 'bigint') {
    if (amount < 0n) throw new RangeError(`invalid ${fieldName} ${amount} nano-USD: expected zero or more`);
    return formatAmount(amount, 0);
  }
  if (!DECIMAL_USD.test(amount)) {
    throw new RangeError(`invalid ${fieldName} "${amount}": expected a non-negative decimal string such as "0.0000025"`);
  }
  return amount;
}

function assertAbsoluteUrl(text: string, fieldName: string): void {
  try {
    new URL(text);
  } catch (error) {
    throw new RangeError(`invalid ${fieldName} "${text}": expected an absolute URL`, { cause: error });
  }
}

/** Renders the LiteLLM proxy config file for the given options. */
export function renderLiteLLMConfig(options: LiteLLMOptions): string {
  if (!MODEL_ID.test(options.model)) {
    throw new RangeError(`invalid model "${options.model}": expected letters, digits and . _ : / -`);
  }
  const budgetDuration = options.budgetDuration ?? '30d';
  if (!DURATION.test(budgetDuration)) {
    throw new RangeError(`invalid budgetDuration "${budgetDuration}": expected a number followed by s, m, h, d or mo`);
  }
  const rpmLimit = options.rpmLimit ?? 100_000_000;
  if (!Number.isInteger(rpmLimit) || rpmLimit < 0) {
    throw new RangeError(`invalid rpmLimit ${rpmLimit}: expected a non-negative integer`);
  }
  const masterKey = options.masterKey ?? 'sk-bench-master';
  if (!masterKey.startsWith('sk-')) {
    throw new RangeError(`invalid masterKey "${masterKey}": LiteLLM requires the "sk-" prefix`);
  }
  assertAbsoluteUrl(options.upstreamUrl, 'upstreamUrl');
  assertAbsoluteUrl(options.redisUrl, 'redisUrl');

  const quote = (text: string): string => JSON.stringify(text);
  const lines = [
    'model_list:',
    `  - model_name: ${quote(options.model)}`,
    '    litellm_params:',
    `      model: ${quote(`openai/${options.model}`)}`,
    `      api_base: ${quote(options.upstreamUrl.replace(/\/+$/, ''))}`,
    `      api_key: ${quote(options.upstreamApiKey ?? 'sk-bench-upstream')}`,
    `      input_cost_per_token: ${usdText(options.inputPricePerToken, 'inputPricePerToken')}`,
    `      output_cost_per_token: ${usdText(options.outputPricePerToken, 'outputPricePerToken')}`,
    `      max_budget: ${usdText(options.budgetUsd, 'budgetUsd')}`,
    `      budget_duration: ${quote(budgetDuration)}`,
    // Retries are off, as in Portkey's default, so each client request makes one upstream call.
    '      max_retries: 0',
    ...(rpmLimit > 0 ? [`      rpm: ${rpmLimit}`] : []),
    'general_settings:',
    `  master_key: ${quote(masterKey)}`,
    '  coordination_redis:',
    `    url: ${quote(options.redisUrl)}`,
    // Passes the client's x-* headers (such as the simulator's x-sim-* controls) to the upstream.
    '  forward_client_headers_to_llm_api: true',
    'router_settings:',
    `  redis_url: ${quote(options.redisUrl)}`,
    '  num_retries: 0',
    // A failed upstream call would otherwise take the only deployment out of rotation for a while.
    '  disable_cooldowns: true',
    ...(rpmLimit > 0 ? ['  optional_pre_call_checks: ["enforce_model_rate_limits"]'] : []),
  ];
  return `${lines.join('\n')}\n`;
}

/** Environment of the proxy process: no remote fetches, no per-request access log, no inherited database or Redis. */
export function litellmEnvironment(base: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  // Inherited values would attach a database or a second Redis that this setup does not describe.
  for (const name of ['DATABASE_URL', 'REDIS_HOST', 'REDIS_PORT', 'REDIS_URL', 'REDIS_PASSWORD', 'REDIS_CLUSTER_NODES', 'LITELLM_LOG']) {
    delete env[name];
  }
  return {
    ...env,
    // Without these LiteLLM downloads its model price map and other catalogs from GitHub at startup.
    LITELLM_LOCAL_MODEL_COST_MAP: 'True',
    LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS: 'True',
    LITELLM_LOCAL_AUTOROUTER_PRESETS: 'True',
    LITELLM_LOCAL_BLOG_POSTS: 'True',
    LITELLM_LOCAL_POLICY_TEMPLATES: 'True',
    // ERROR also silences uvicorn's access log line per request.
    LITELLM_LOG: 'ERROR',
    // DEV mode would read a .env file from the working directory.
    LITELLM_MODE: 'PRODUCTION',
    PYTHONUNBUFFERED: '1',
  };
}

/**
 * Writes the config to a fresh temporary folder (removed by `stop`), starts the proxy, waits
 * until `/health/liveliness` returns 200, and returns the URL and headers a
 * client must use.
 */
export async function startLiteLLM(options: LiteLLMOptions): Promise<PeerGateway> {
  const executable = litellmExecutable();
  if (!existsSync(executable)) {
    throw new Error(`LiteLLM not found at ${executable}: run bench/peers/install.sh first`);
  }
  const workers = options.workers ?? 1;
  if (!Number.isInteger(workers) || workers < 1) {
    throw new RangeError(`invalid workers ${workers}: expected a positive integer`);
  }
  const config = renderLiteLLMConfig(options);
  await assertPortFree(options.port);

  const workDir = join(tmpdir(), 'tollgate-bench-peers');
  mkdirSync(workDir, { recursive: true });
  const configDir = mkdtempSync(join(workDir, `litellm-${options.port}-`));
  const configFile = join(configDir, 'config.yaml');
  writeFileSync(configFile, config, { mode: 0o600 });

  const logFile = options.logFile ?? defaultLogFile('litellm', options.port);
  const removeConfig = (): void => rmSync(configDir, { recursive: true, force: true });
  const launched = await launch({
    name: 'litellm',
    command: executable,
    args: [
      ...['--config', configFile, '--host', '127.0.0.1', '--port', String(options.port), '--num_workers', String(workers)],
      // Uvicorn 0.55's supervisor kills a worker that does not reply to its health ping within
      // 5 s by default. A LiteLLM worker takes far longer to import, so without this flag every
      // worker is killed and respawned forever and the proxy never becomes ready.
      ...(workers > 1 ? ['--timeout_worker_healthcheck', '600'] : []),
    ],
    env: litellmEnvironment(process.env),
    cwd: configDir,
    logFile,
    readyUrl: `http://127.0.0.1:${options.port}/health/liveliness`,
    readyTimeoutMs: options.readyTimeoutMs ?? 180_000 * workers,
  }).catch((error: unknown) => {
    removeConfig();
    throw error;
  });

  return {
    name: 'litellm',
    url: `http://127.0.0.1:${options.port}/v1`,
    headers: { authorization: `Bearer ${options.masterKey ?? 'sk-bench-master'}` },
    model: options.model,
    pid: launched.pid,
    startupMs: launched.startupMs,
    logFile,
    rssBytes: launched.rssBytes,
    stop: async () => {
      await launched.stop();
      removeConfig();
    },
  };
}
