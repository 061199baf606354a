/**
 * Drives vegeta (github.com/tsenart/vegeta v12), an open-loop HTTP load
 * generator: at a fixed rate it sends each request on schedule whether or
 * not earlier ones have returned, so a slow target cannot slow the load down
 * and hide its own queueing. bench/install.sh installs it.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

/** One kind of request, sent over and over. */
export interface HttpTarget {
  /** Name of the target in reports (`direct`, `tollgate`, ...). */
  name: string;
  url: string;
  headers: Record<string, string>;
  body: string;
}

export interface AttackOptions {
  /** Requests per second; 0 sends as fast as `maxWorkers` concurrent requests allow. */
  rate: number;
  seconds: number;
  /** Upper bound of concurrent requests (vegeta's workers). */
  maxWorkers: number;
  /** A request that takes longer counts as failed. */
  timeoutSeconds: number;
}

/** Summary of one attack from vegeta's JSON report. Latencies are in milliseconds. */
export interface AttackResult {
  requests: number;
  /** Rate at which requests were sent, per second. */
  rate: number;
  /** Successful responses per second, including the wait for the last responses. */
  throughput: number;
  /** Fraction of responses with a 2xx status. */
  success: number;
  latencyMs: { mean: number; p50: number; p90: number; p99: number; max: number };
  statusCodes: Record<string, number>;
  /** Distinct error messages, such as timeouts or refused connections. */
  errors: string[];
  /** The slowest requests, grouped by when they were sent. */
  slow: SlowRequests;
}

/** Requests slower than a threshold, and how many windows of send time they fall in. */
export interface SlowRequests {
  thresholdMs: number;
  windowMs: number;
  count: number;
  /** Distinct windows that hold at least one slow request. */
  windows: number;
  /** The largest number of slow requests in one window. */
  largestWindow: number;
}

/** Latency above which a request counts as slow in `AttackResult.slow`. */
export const SLOW_THRESHOLD_MS = 10;
/** Length of the send-time windows that slow requests are grouped by. */
export const SLOW_WINDOW_MS = 100;

/** Finds the vegeta binary: $VEGETA, then the benchmark's cache, then PATH. */
export function vegetaBinary(): string {
  const cached = join(process.env['TOLLGATE_CACHE'] || join(homedir(), '.cache', 'tollgate'), 'bin', 'vegeta');
  return process.env['VEGETA'] || (existsSync(cached) ? cached : 'vegeta');
}

/** Writes the target and its body as a vegeta `http` format targets file and returns its path. */
async function writeTargetFile(target: HttpTarget, workDir: string): Promise<string> {
  const bodyFile = join(workDir, `${target.name}.body.json`);
  const targetFile = join(workDir, `${target.name}.targets.txt`);
  const lines = [`POST ${target.url}`, 'Content-Type: application/json'];
  for (const [name, value] of Object.entries(target.headers)) lines.push(`${name}: ${value}`);
  lines.push(`@${bodyFile}`);
  await writeFile(bodyFile, target.body);
  await writeFile(targetFile, `${lines.join('\n')}\n`);
  return targetFile;
}

/** Runs one vegeta attack on the target and returns its report. */
export async function attack(target: HttpTarget, options: AttackOptions, workDir: string, label: string): Promise<AttackResult> {
  const targetFile = await writeTargetFile(target, workDir);
  const resultsFile = join(workDir, `${target.name}-${label}.bin`);
  const rate = options.rate === 0 ? '0' : `${options.rate}/1s`;
  await run(vegetaBinary(), [
    'attack',
    `-targets=${targetFile}`,
    `-rate=${rate}`,
    `-duration=${options.seconds}s`,
    `-timeout=${options.timeoutSeconds}s`,
    `-max-workers=${options.maxWorkers}`,
    `-output=${resultsFile}`,
  ]);
  const report = JSON.parse(await run(vegetaBinary(), ['report', '-type=json', resultsFile])) as VegetaReport;
  // Read line by line: at saturation the CSV, which carries every response body, can exceed a string's maximum length.
  const timings: RequestTiming[] = [];
  await runLines(vegetaBinary(), ['encode', '--to=csv', resultsFile], (line) => {
    const timing = csvTiming(line);
    if (timing !== undefined) timings.push(timing);
  });
  return { ...fromReport(report), slow: slowRequests(timings, SLOW_THRESHOLD_MS, SLOW_WINDOW_MS) };
}

/** When one request was sent, and how long its response took, both in nanoseconds. */
export interface RequestTiming {
  sentNs: number;
  latencyNs: number;
}

/**
 * Reads send times and latencies from `vegeta encode --to=csv`, whose rows
 * start with the timestamp, the status code and the latency, all integers.
 * Send times lose sub-microsecond precision as numbers, which windows of
 * milliseconds do not notice.
 */
export function csvTimings(csv: string): RequestTiming[] {
  const timings: RequestTiming[] = [];
  for (const line of csv.split('\n')) {
    const timing = csvTiming(line);
    if (timing !== undefined) timings.push(timing);
  }
  return timings;
}

/** Reads the send time and latency of one row of `vegeta encode --to=csv`; undefined for a line that is no row. */
function csvTiming(line: string): RequestTiming | undefined {
  const first = line.indexOf(',');
  const second = line.indexOf(',', first + 1);
  const third = line.indexOf(',', second + 1);
  if (first <= 0 || third === -1) return undefined;
  return { sentNs: Number(line.slice(0, first)), latencyNs: Number(line.slice(second + 1, third)) };
}

/**
 * Counts the requests slower than `thresholdMs` and the `windowMs` windows of
 * send time they fall in. Slow requests spread over many windows point to
 * steady queueing. A few crowded windows point to pauses that stalled
 * everything in flight.
 */
export function slowRequests(timings: readonly RequestTiming[], thresholdMs: number, windowMs: number): SlowRequests {
  const windows = new Map<number, number>();
  let count = 0;
  for (const timing of timings) {
    if (timing.latencyNs <= thresholdMs * NS_PER_MS) continue;
    count++;
    const window = Math.floor(timing.sentNs / (windowMs * NS_PER_MS));
    windows.set(window, (windows.get(window) ?? 0) + 1);
  }
  return { thresholdMs, windowMs, count, windows: windows.size, largestWindow: Math.max(0, ...windows.values()) };
}

interface VegetaReport {
  latencies: { mean: number; '50th': number; '90th': number; '99th': number; max: number };
  requests: number;
  rate: number;
  throughput: number;
  success: number;
  status_codes: Record<string, number>;
  errors: string[] | null;
}

const NS_PER_MS = 1e6;

function fromReport(report: VegetaReport): Omit<AttackResult, 'slow'> {
  const ms = (ns: number) => ns / NS_PER_MS;
  return {
    requests: report.requests,
    rate: report.rate,
    throughput: report.throughput,
    success: report.success,
    latencyMs: {
      mean: ms(report.latencies.mean),
      p50: ms(report.latencies['50th']),
      p90: ms(report.latencies['90th']),
      p99: ms(report.latencies['99th']),
      max: ms(report.latencies.max),
    },
    statusCodes: report.status_codes,
    errors: report.errors ?? [],
  };
}

/** Runs a command and passes each line of its stdout to `onLine`; rejects with its stderr when it fails. */
function runLines(command: string, args: string[], onLine: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const stderr: Buffer[] = [];
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    const lines = createInterface({ input: child.stdout, crlfDelay: Infinity });
    lines.on('line', onLine);
    const closed = new Promise<void>((resolveLines) => lines.once('close', () => resolveLines()));
    child.once('error', (error) => reject(new Error(`failed to run ${command}: ${error.message}; run bench/install.sh to install vegeta`, { cause: error })));
    child.once('exit', (code) => {
      if (code !== 0) {
        reject(new Error(`${command} ${args[0]} exited with code ${code}: ${Buffer.concat(stderr).toString('utf8').trim()}`));
        return;
      }
      // The exit can come before the last lines are read.
      void closed.then(() => resolve());
    });
  });
}

/** Runs a command and resolves with its stdout; rejects with its stderr when it fails. */
function run(command: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.once('error', (error) => reject(new Error(`failed to run ${command}: ${error.message}; run bench/install.sh to install vegeta`, { cause: error })));
    child.once('exit', (code) => {
      if (code === 0) resolve(Buffer.concat(stdout).toString('utf8'));
      else reject(new Error(`${command} ${args[0]} exited with code ${code}: ${Buffer.concat(stderr).toString('utf8').trim()}`));
    });
  });
}
