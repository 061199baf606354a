/**
 * Ledger throughput: reserve and commit pairs per second through RedisLedger
 * from one Node process, beside what redis-benchmark gets from the same
 * server for a trivial script and for the ledger's own reserve script.
 */
import { spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { EXPIRED_HOLDS_SETTLED_PER_RESERVE, periodFields, type CommitEntry, type HoldRequest, type WalletKey } from '../src/ledger/ledger.ts';
import { RedisLedger, walletKeys } from '../src/ledger/redis.ts';
import { DEFAULT_SETTLED_RETENTION_MS } from '../src/ledger/retention.ts';
import { progress } from './progress.ts';

export interface LedgerOptions {
  redisUrl: string;
  redisPort: number;
  seconds: number;
  /** Pairs in flight at once. */
  concurrency: number;
  /** Seconds each redis-benchmark measurement aims for. */
  benchmarkSeconds: number;
}

/** Script executions per second that redis-benchmark reached with 50 connections. */
export interface Ceiling {
  /** One command per round trip on each connection. */
  unpipelined: number;
  /** 16 commands per round trip on each connection (`-P 16`). */
  pipelined: number;
}

export interface LedgerResult {
  concurrency: number;
  seconds: number;
  pairs: number;
  pairsPerSecond: number;
  /** Two script executions per pair: reserve and commit. */
  scriptsPerSecond: number;
  /** CPU seconds per wall second of the Node process and of redis-server during the measurement. */
  clientCpu: number;
  serverCpu: number;
  /**
   * Microseconds that Redis spent executing one ledger script on average
   * (INFO commandstats, EVALSHA), so one Redis core executes at most
   * 1,000,000 / this many ledger scripts per second.
   */
  serverUsPerScript: number;
  trivialCeiling: Ceiling;
  reserveCeiling: Ceiling;
}

const GRANT = 1_000_000_000_000_000n;
const HOLD: HoldRequest = { fixed: 3000n, perUnit: 2000n, minUnits: 16, maxUnits: 16, ttlSeconds: 900, fingerprint: 'bench' };
const ENTRY: CommitEntry = {
  charged: 23_000n,
  providerCost: 20_000n,
  model: 'bench-model',
  route: 'openai',
  tokens: { input: 3, output: 10 },
  estimated: false,
};
const PAIRS_WALLET: WalletKey = { namespace: 'bench', name: 'ledger' };
const CEILING_WALLET: WalletKey = { namespace: 'bench', name: 'ceiling' };
const WARMUP_SECONDS = 1;
const BENCHMARK_CONNECTIONS = 50;
const PIPELINE_DEPTH = 16;

export async function measureLedger(options: LedgerOptions): Promise<LedgerResult> {
  const ledger = new RedisLedger(options.redisUrl);
  try {
    await ledger.credit(PAIRS_WALLET, 'bench-grant', GRANT);
    await ledger.credit(CEILING_WALLET, 'bench-grant', GRANT);

    progress(`ledger: warm-up for ${WARMUP_SECONDS} s`);
    await runPairs(ledger, options.concurrency, WARMUP_SECONDS);

    progress(`ledger: reserve and commit pairs, ${options.concurrency} in flight, for ${options.seconds} s`);
    await redisCli(options.redisPort, ['CONFIG', 'RESETSTAT']);
    const serverBefore = await serverCpuSeconds(options.redisPort);
    const clientBefore = process.cpuUsage();
    const pairs = await runPairs(ledger, options.concurrency, options.seconds);
    const client = process.cpuUsage(clientBefore);
    const serverCpu = (await serverCpuSeconds(options.redisPort)) - serverBefore;
    const serverUsPerScript = await evalshaUsPerCall(options.redisPort);

    const reserveSha = await ledgerReserveSha(options.redisPort);
    const trivialSha = await loadScript(options.redisPort, 'return 1');

    progress('ledger: redis-benchmark ceilings');
    const trivialCeiling = await ceiling(options, ['EVALSHA', trivialSha, '0']);
    const reserveCeiling = await ceiling(options, reserveCommand(reserveSha));

    return {
      concurrency: options.concurrency,
      seconds: options.seconds,
      pairs,
      pairsPerSecond: pairs / options.seconds,
      scriptsPerSecond: (2 * pairs) / options.seconds,
      clientCpu: (client.user + client.system) / 1e6 / options.seconds,
      serverCpu: serverCpu / options.seconds,
      serverUsPerScript,
      trivialCeiling,
      reserveCeiling,
    };
  } finally {
    await ledger.quit();
  }
}

/** Runs reserve-then-commit loops on `concurrency` workers until the time is up, and returns the completed pairs. */
async function runPairs(ledger: RedisLedger, concurrency: number, seconds: number): Promise<number> {
  const deadline = performance.now() + seconds * 1000;
  let pairs = 0;
  const worker = async () => {
    while (performance.now() < deadline) {
      const requestId = randomUUID();
      const reserved = await ledger.reserve(PAIRS_WALLET, requestId, HOLD);
      if (reserved.status !== 'reserved') throw new Error(`the ledger benchmark's reserve returned ${reserved.status}`);
      await ledger.commit(PAIRS_WALLET, requestId, ENTRY);
      pairs++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return pairs;
}

/**
 * Returns the SHA1 digest of the reserve script as RedisLedger loads it:
 * common.lua, a newline, then reserve.lua. The ledger has run reserve on
 * this server already, so the server has the digest loaded unless the
 * composition here no longer matches the ledger's.
 */
async function ledgerReserveSha(port: number): Promise<string> {
  const read = (file: string) => readFileSync(new URL(`../src/ledger/lua/${file}`, import.meta.url), 'utf8');
  const sha = createHash('sha1').update(`${read('common.lua')}\n${read('reserve.lua')}`).digest('hex');
  const exists = (await redisCli(port, ['SCRIPT', 'EXISTS', sha])).trim();
  if (exists !== '1') {
    throw new Error(`the reserve script composed by bench/ledger.ts (sha ${sha}) is not the one RedisLedger loaded; update ledgerReserveSha`);
  }
  return sha;
}

/**
 * Returns the reserve command with the arguments RedisLedger sends, and a
 * random request id per call. Its deadline is an hour away, so that every
 * call runs the whole script.
 */
function reserveCommand(sha: string): string[] {
  const periods = periodFields(Date.now());
  return [
    'EVALSHA', sha, '6', ...walletKeys(CEILING_WALLET),
    'req-__rand_int__', HOLD.fingerprint, HOLD.fixed.toString(), HOLD.perUnit.toString(),
    String(HOLD.minUnits), String(HOLD.maxUnits), String(HOLD.ttlSeconds * 1000),
    periods.day, periods.month, '', '', '', String(EXPIRED_HOLDS_SETTLED_PER_RESERVE),
    String(DEFAULT_SETTLED_RETENTION_MS), String(Date.now() + 3_600_000),
  ];
}

async function ceiling(options: LedgerOptions, command: string[]): Promise<Ceiling> {
  return {
    unpipelined: await redisBenchmark(options, command, 1),
    pipelined: await redisBenchmark(options, command, PIPELINE_DEPTH),
  };
}

/**
 * Runs redis-benchmark twice: a short run estimates the rate, and the second
 * run sends as many commands as fill the planned seconds at that rate.
 */
async function redisBenchmark(options: LedgerOptions, command: string[], pipeline: number): Promise<number> {
  const measure = async (count: number) => {
    const csv = await runCommand('redis-benchmark', [
      '-h', '127.0.0.1', '-p', String(options.redisPort),
      '-c', String(BENCHMARK_CONNECTIONS), '-P', String(pipeline),
      '-n', String(count), '-r', '1000000000', '--csv',
      ...command,
    ]);
    return parseBenchmarkCsv(csv);
  };
  const estimate = await measure(10_000);
  return measure(Math.max(10_000, Math.round(estimate * options.benchmarkSeconds)));
}

/** Reads the requests per second from redis-benchmark's CSV output, whose second line is `"<command>","<rps>",...`. */
export function parseBenchmarkCsv(csv: string): number {
  const row = csv.trim().split('\n').at(-1) ?? '';
  const match = /^"[^"]*","([\d.]+)"/.exec(row);
  if (!match) throw new Error(`unexpected redis-benchmark output: ${csv.trim().slice(0, 300)}`);
  return Number(match[1]);
}

async function loadScript(port: number, source: string): Promise<string> {
  return (await redisCli(port, ['SCRIPT', 'LOAD', source])).trim();
}

/** Returns the CPU seconds (user and system) that redis-server has used, from INFO cpu. */
async function serverCpuSeconds(port: number): Promise<number> {
  const info = await redisCli(port, ['INFO', 'cpu']);
  const field = (name: string) => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? Number.NaN);
  return field('used_cpu_user') + field('used_cpu_sys');
}

/** Returns the average microseconds per EVALSHA call since the last CONFIG RESETSTAT, from INFO commandstats. */
async function evalshaUsPerCall(port: number): Promise<number> {
  const stats = await redisCli(port, ['INFO', 'commandstats']);
  const match = /^cmdstat_evalsha:.*\busec_per_call=([\d.]+)/m.exec(stats);
  if (!match) throw new Error(`INFO commandstats on port ${port} has no EVALSHA line: ${stats.trim().slice(0, 300)}`);
  return Number(match[1]);
}

function redisCli(port: number, args: string[]): Promise<string> {
  return runCommand('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args]);
}

function runCommand(command: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
    child.once('error', (error) =>
      reject(new Error(`failed to run ${command}: ${error.message}; install the redis-tools package (apt-get install redis-tools)`, { cause: error })),
    );
    child.once('exit', (code) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`${command} exited with code ${code}: ${stderr.trim() || stdout.trim()}`));
    });
  });
}
