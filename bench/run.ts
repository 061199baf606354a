/**
 * Tollgate's benchmark: proxy overhead against direct calls and two peer
 * gateways, streaming cost, ledger throughput, overspend under concurrency
 * and memory, in one run that sends traffic only to 127.0.0.1.
 *
 *   npm run bench              # full run, about 12 minutes; updates docs/benchmarks.md
 *   npm run bench -- --quick   # about 4 minutes; prints the results only
 *   npm run bench -- --help    # the other options
 *
 * See docs/benchmarks.md for what each section measures.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { startRedis, type RunningRedis } from '../test/support/redis.ts';
import { runEntryPoint } from './cli.ts';
import { describeMachine, describeVersions, speedCheckMs } from './machine.ts';
import { measureLedger } from './ledger.ts';
import { measureLoad, type TargetProbe } from './overhead.ts';
import { litellmOverspend, tollgateOverspend } from './overspend.ts';
import { startLiteLLM, startPortkey, type PeerGateway } from './peers/peers.ts';
import { checkOutPage, decideWrite, HELP_COMMAND, parseOptions, readResultsFile, USAGE, type Options } from './options.ts';
import type { BenchPlan } from './plan.ts';
import { summarizeProfile } from './profile.ts';
import {
  freePort,
  groupCpuSeconds,
  processCpuSeconds,
  processCpuTimes,
  processMemory,
  redisServerPid,
  sidecarEventLoopDelay,
  REPO_ROOT,
  startSimulatorProcess,
  startTollgate,
  type BenchProcess,
} from './processes.ts';
import { progress } from './progress.ts';
import { addedAt, GOALS, renderResults, writeResults, type RunResults } from './report.ts';
import { measureStreaming, type StreamTarget } from './streaming.ts';
import { attack, type HttpTarget } from './vegeta.ts';
import {
  BENCH_WALLET,
  BUDGET_MODEL,
  chatBody,
  LITELLM_PRICES,
  MODEL,
  overspendRequest,
  SIMULATOR_HEADERS,
  UPSTREAM_KEY,
  writeManifests,
} from './workload.ts';

/** A LiteLLM budget that the overhead runs never reach, in USD. */
const UNREACHABLE_BUDGET_USD = '1000000';

/** Everything a section needs: the shared processes and the work folder. */
interface Context {
  plan: BenchPlan;
  workDir: string;
  manifests: string;
  redis: RunningRedis;
  redisPid: number;
  simulator: BenchProcess;
  results: RunResults;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (!options) {
    console.log(USAGE);
    return 0;
  }
  if (options.from !== undefined) {
    await renderEarlierRun(options, options.from);
    return 0;
  }
  const { plan } = options;
  const write = decideWrite(options, plan.mode);
  if (write) await checkOutPage(options.out);
  const started = performance.now();
  // Exiting through process.exit runs the exit hooks that kill the child processes.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
  setTimeout(() => {
    console.error(`the benchmark exceeded its ${plan.deadlineMinutes} minute limit and was stopped`);
    process.exit(1);
  }, plan.deadlineMinutes * 60_000).unref();

  if (options.install) install(options.peers);
  const machine = describeMachine();
  if (machine.loadAverage[0]! > machine.cpus / 2) {
    console.warn(`warning: the 1-minute load average is ${machine.loadAverage[0]!.toFixed(2)} on ${machine.cpus} CPUs; other work will skew the results`);
  }
  const workDir = await mkdtemp(join(os.tmpdir(), 'tollgate-bench-'));
  progress(`${plan.mode} run; logs and raw results in ${workDir}`);

  const results: RunResults = {
    plan,
    command: commandLine(),
    machine,
    versions: describeVersions(),
    loads: [],
    streams: [],
    overspend: [],
    failures: [],
    durationSeconds: 0,
    loadAverageAtEnd: [],
  };
  await runSections(options, workDir, results);
  results.durationSeconds = (performance.now() - started) / 1000;
  results.loadAverageAtEnd = os.loadavg();
  results.speedCheckMsAtEnd = speedCheckMs();

  await publish(options.out, write, workDir, results);
  return results.failures.length === 0 ? 0 : 1;
}

/** Starts Redis and the simulator, which every section shares, and runs the sections in turn. */
async function runSections(options: Options, workDir: string, results: RunResults): Promise<void> {
  const { plan } = options;
  const redis = await startRedis();
  const simulator = await startSimulatorProcess(UPSTREAM_KEY);
  try {
    const overspend = overspendRequest(BUDGET_MODEL, plan.overspend.upstreamLatencyMs);
    const manifests = join(workDir, 'manifests');
    await writeManifests(manifests, simulator.url, overspend.costNano * BigInt(plan.overspend.affordable));
    const context: Context = { plan, workDir, manifests, redis, redisPid: redisServerPid(redis.port), simulator, results };

    await section(context, 'direct', () => measureDirect(context));
    await section(context, 'tollgate', () => measureTollgate(context, 'redis'));
    await section(context, 'tollgate-memory', () => measureTollgate(context, 'memory'));
    if (options.peers) {
      await section(context, 'portkey', () => measurePortkey(context));
      await section(context, 'litellm', () => measureLiteLLM(context));
    }
    if (options.profile || missesLatencyTargets(results)) await section(context, 'profile', () => profileTollgate(context));

    const setup = { scenario: plan.overspend, redisUrl: redis.url, simulatorUrl: simulator.url, manifests, workDir };
    await section(context, 'tollgate overspend', async () => {
      results.overspend.push(await tollgateOverspend(setup));
    });
    if (options.peers) {
      await section(context, 'litellm overspend', async () => {
        results.overspend.push(await litellmOverspend(setup));
      });
    }

    await section(context, 'ledger', async () => {
      results.ledger = await measureLedger({
        redisUrl: redis.url,
        redisPort: redis.port,
        seconds: plan.ledgerSeconds,
        concurrency: plan.ledgerConcurrency,
        benchmarkSeconds: plan.redisBenchmarkSeconds,
      });
    });
  } finally {
    await simulator.stop();
    await redis.stop();
  }
}

/** Prints the results, saves them in the work folder and, with `write`, writes them into the page. */
async function publish(page: string, write: boolean, workDir: string, results: RunResults): Promise<void> {
  const markdown = renderResults(results);
  const json = JSON.stringify(results, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value), 2);
  await writeFile(join(workDir, 'results.json'), `${json}\n`);
  await writeFile(join(workDir, 'results.md'), `${markdown}\n`);
  console.log(`\n${markdown}\n`);
  if (write) {
    await writeResults(page, markdown);
    progress(`results written to ${page}`);
  }
  progress(`raw results in ${workDir}`);
}

/** Renders the results.json of an earlier run, for example after a change to the report's layout. */
async function renderEarlierRun(options: Options, file: string): Promise<void> {
  const results = await readResultsFile(file);
  const write = decideWrite(options, results.plan.mode);
  if (write) await checkOutPage(options.out);
  const markdown = renderResults(results);
  console.log(markdown);
  if (write) {
    await writeResults(options.out, markdown);
    progress(`results of ${file} written to ${options.out}`);
  }
}

/** Runs one section; a failure is recorded in the results and the run goes on. */
async function section(context: Context, name: string, run: () => Promise<void>): Promise<void> {
  try {
    await run();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    console.error(`section "${name}" failed: ${message}`);
    context.results.failures.push(`${name}: ${message.split('\n')[0]}`);
  }
}

/** Runs bench/install.sh; without `peers` it installs only vegeta and checks the Redis tools. */
function install(peers: boolean): void {
  const args = [join(REPO_ROOT, 'bench', 'install.sh'), ...(peers ? [] : ['--skip-peers'])];
  const result = spawnSync('bash', args, { stdio: 'inherit' });
  if (result.status !== 0) throw new Error(`bench/install.sh failed with exit code ${result.status}`);
}

function commandLine(): string {
  const args = process.argv.slice(2);
  return args.length === 0 ? 'npm run bench' : `npm run bench -- ${args.join(' ')}`;
}

function chatTarget(name: string, url: string, headers: Record<string, string>, model: string): HttpTarget {
  return { name, url, headers, body: chatBody(model) };
}

/** Measures a target's load runs and streaming; every target but direct itself gets direct calls as a paired baseline. */
async function measureTarget(context: Context, http: HttpTarget, stream: StreamTarget, probe: TargetProbe): Promise<void> {
  const { plan, results } = context;
  const baseline = http.name === 'direct' ? undefined : directTarget(context);
  results.loads.push(await measureLoad(http, plan, context.workDir, probe, baseline));
  results.streams.push(await measureStreaming(stream, { chunks: plan.streamChunks, runs: plan.streamRuns, warmupRuns: plan.streamWarmupRuns }));
}

function directTarget(context: Context): HttpTarget {
  return chatTarget('direct', `${context.simulator.url}/v1/chat/completions`, { authorization: `Bearer ${UPSTREAM_KEY}` }, MODEL);
}

async function measureDirect(context: Context): Promise<void> {
  const http = directTarget(context);
  const probe = { cpuSeconds: () => processCpuSeconds(context.simulator.pid) };
  await measureTarget(context, http, { name: 'direct', url: http.url, headers: http.headers, model: MODEL }, probe);
}

/**
 * Measures a sidecar on the Redis ledger as `tollgate`, or on its in-memory
 * ledger as `tollgate-memory`, which separates the proxy's own cost from the
 * Redis ledger's.
 */
async function measureTollgate(context: Context, ledger: 'redis' | 'memory'): Promise<void> {
  const name = ledger === 'redis' ? 'tollgate' : 'tollgate-memory';
  progress(`${name}: starting the sidecar on the ${ledger === 'redis' ? 'Redis' : 'in-memory'} ledger`);
  const sidecar = await startTollgate({
    manifests: context.manifests,
    redisUrl: ledger === 'redis' ? context.redis.url : undefined,
    wallet: BENCH_WALLET,
    logFile: join(context.workDir, `${name}.log`),
  });
  try {
    const url = `${sidecar.url}/openai/v1/chat/completions`;
    const probe: TargetProbe = {
      cpuSeconds: () => processCpuSeconds(sidecar.pid),
      rss: () => processMemory(sidecar.pid).rss,
      peak: () => processMemory(sidecar.pid).hwm,
      eventLoopDelay: sidecarEventLoopDelay(sidecar.url),
    };
    if (ledger === 'redis') probe.redisCpuSeconds = () => processCpuSeconds(context.redisPid);
    await measureTarget(context, chatTarget(name, url, {}, MODEL), { name, url, headers: {}, model: MODEL }, probe);
  } finally {
    await sidecar.stop();
  }
}

/** Measures a peer gateway and stops it. With `usesRedis`, the benchmark's Redis server counts as part of its cost. */
async function measurePeer(context: Context, gateway: PeerGateway, usesRedis: boolean): Promise<void> {
  try {
    const url = `${gateway.url}/chat/completions`;
    const headers = { ...gateway.headers };
    const probe: TargetProbe = { cpuSeconds: () => groupCpuSeconds(gateway.pid), rss: () => gateway.rssBytes() };
    if (usesRedis) probe.redisCpuSeconds = () => processCpuSeconds(context.redisPid);
    await measureTarget(context, chatTarget(gateway.name, url, headers, gateway.model), { name: gateway.name, url, headers, model: gateway.model }, probe);
  } finally {
    await gateway.stop();
  }
}

async function measurePortkey(context: Context): Promise<void> {
  progress('portkey: starting');
  const gateway = await startPortkey({
    port: await freePort(),
    upstreamUrl: `${context.simulator.url}/v1`,
    model: MODEL,
    forwardHeaders: SIMULATOR_HEADERS,
    logFile: join(context.workDir, 'portkey.log'),
  });
  await measurePeer(context, gateway, false);
}

async function measureLiteLLM(context: Context): Promise<void> {
  progress('litellm: starting (this takes a while)');
  const gateway = await startLiteLLM({
    port: await freePort(),
    upstreamUrl: `${context.simulator.url}/v1`,
    redisUrl: context.redis.url,
    model: MODEL,
    budgetUsd: UNREACHABLE_BUDGET_USD,
    ...LITELLM_PRICES,
    logFile: join(context.workDir, 'litellm.log'),
  });
  await measurePeer(context, gateway, true);
}

function missesLatencyTargets(results: RunResults): boolean {
  const added = addedAt(results, 'tollgate', Math.max(...results.plan.rates));
  return added === undefined || added.p50 > GOALS.addedP50Ms || added.p99 > GOALS.addedP99Ms;
}

/** Runs a sidecar under `node --cpu-prof` at the highest fixed rate and summarizes where its CPU time went. */
async function profileTollgate(context: Context): Promise<void> {
  const { plan, results } = context;
  const profileDir = join(context.workDir, 'profile');
  const rate = Math.max(...plan.rates);
  progress(`profile: sidecar under node --cpu-prof at ${rate} rps`);
  const sidecar = await startTollgate({
    manifests: context.manifests,
    redisUrl: context.redis.url,
    wallet: BENCH_WALLET,
    logFile: join(context.workDir, 'tollgate-profiled.log'),
    cpuProfileDir: profileDir,
  });

  const target = chatTarget('tollgate-profiled', `${sidecar.url}/openai/v1/chat/completions`, {}, MODEL);
  const load = (seconds: number) => ({ rate, seconds, maxWorkers: plan.fixedRateMaxWorkers, timeoutSeconds: plan.requestTimeoutSeconds });
  let profiled;
  try {
    await attack(target, load(plan.warmupSeconds), context.workDir, 'warmup');
    const sinceUs = Number(process.hrtime.bigint() / 1000n);
    const before = processCpuTimes(sidecar.pid);
    const result = await attack(target, load(plan.profileSeconds), context.workDir, 'profiled');
    const after = processCpuTimes(sidecar.pid);
    profiled = { sinceUs, result, cpu: { user: after.user - before.user, system: after.system - before.system } };
  } finally {
    // The profile is written when the process exits.
    await sidecar.stop();
  }

  const files = (await readdir(profileDir)).filter((file) => file.endsWith('.cpuprofile'));
  if (files.length !== 1) throw new Error(`expected one .cpuprofile file in ${profileDir}, found ${files.length}`);
  const summary = summarizeProfile(join(profileDir, files[0]!), { sinceUs: profiled.sinceUs });
  results.profile = { rate, seconds: plan.profileSeconds, result: profiled.result, cpu: profiled.cpu, summary };
}

runEntryPoint(main, { helpCommand: HELP_COMMAND, program: 'benchmark' });
