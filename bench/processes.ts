/**
 * The benchmark's own processes: the provider simulator and Tollgate
 * sidecars, each in its own process so that they do not share an event loop
 * with the load generator. Peer gateways are started by bench/peers.
 */
import { execFileSync, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { EventLoopDelayProbe } from './overhead.ts';
import { launch } from './peers/process.ts';

/** The repository root, so that commands run from any working directory. */
export const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));

/** A process that the benchmark started and measures. */
export interface BenchProcess {
  readonly url: string;
  readonly pid: number;
  stop(): Promise<void>;
}

/** Returns a port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const SIMULATOR_START_TIMEOUT_MS = 30_000;

/** Starts bench/simulator.ts and resolves with its URL once it listens. */
export async function startSimulatorProcess(expectedKey: string): Promise<BenchProcess> {
  const child = spawn(process.execPath, ['bench/simulator.ts', '--port', '0', '--key', expectedKey], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  process.once('exit', () => child.kill('SIGKILL'));

  const url = await new Promise<string>((resolve, reject) => {
    let output = '';
    const timer = setTimeout(() => reject(new Error(`the simulator did not start within ${SIMULATOR_START_TIMEOUT_MS} ms; output: ${output}`)), SIMULATOR_START_TIMEOUT_MS);
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
      const match = /simulator listening on (\S+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the simulator exited with ${signal ?? `code ${code}`} before it listened; output: ${output}`));
    });
  });

  return {
    url,
    pid: child.pid!,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

export interface TollgateOptions {
  /** Folder of manifests for `tollgate dev --manifests`. */
  manifests: string;
  /** Redis URL of the ledger; the sidecar uses its in-memory ledger when undefined. */
  redisUrl: string | undefined;
  /** Wallet that pays when a request names none. */
  wallet: string;
  logFile: string;
  /** When set, the sidecar runs under `node --cpu-prof` and writes its profile here when it stops. */
  cpuProfileDir?: string;
}

/**
 * Starts `tollgate dev` as its own process, with
 * LOG_LEVEL=warn so that it writes no log line per request, and resolves once
 * /readyz responds with 200.
 */
export async function startTollgate(options: TollgateOptions): Promise<BenchProcess> {
  const port = await freePort();
  const profiling = options.cpuProfileDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', options.cpuProfileDir];
  const launched = await launch({
    name: 'tollgate',
    command: process.execPath,
    args: [
      ...profiling,
      'src/cli/main.ts',
      'dev',
      ...['--manifests', options.manifests, '--port', String(port)],
      ...(options.redisUrl === undefined ? [] : ['--redis', options.redisUrl]),
      ...['--wallet', options.wallet, '--no-watch'],
    ],
    env: { ...process.env, LOG_LEVEL: 'warn' },
    cwd: REPO_ROOT,
    logFile: options.logFile,
    readyUrl: `http://127.0.0.1:${port}/readyz`,
    readyTimeoutMs: 60_000,
  });
  return { url: `http://127.0.0.1:${port}`, pid: launched.pid, stop: launched.stop };
}

/** Resident memory of one process, in bytes. */
export interface ProcessMemory {
  /** VmRSS: resident set size now. */
  rss: number;
  /** VmHWM: the peak resident set size since the process started. */
  hwm: number;
}

/** Reads VmRSS and VmHWM from /proc/<pid>/status (Linux only). */
export function processMemory(pid: number): ProcessMemory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kilobytes = (field: string): number => {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status);
    if (!match) throw new Error(`/proc/${pid}/status has no ${field} line`);
    return Number(match[1]) * 1024;
  };
  return { rss: kilobytes('VmRSS'), hwm: kilobytes('VmHWM') };
}

let clockTicksPerSecond: number | undefined;

/** Returns USER_HZ, the unit of the CPU times in /proc/<pid>/stat. */
function clockTicks(): number {
  clockTicksPerSecond ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
  return clockTicksPerSecond;
}

/** Returns the fields of /proc/<pid>/stat after the command name, which may contain spaces and brackets. */
function statFields(pid: number | string): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** Returns the CPU seconds that a process has used in user mode and in the kernel (Linux only). */
export function processCpuTimes(pid: number): { user: number; system: number } {
  const fields = statFields(pid);
  // utime and stime are fields 14 and 15 of the stat line, 12 and 13 after the command name.
  return { user: Number(fields[11]) / clockTicks(), system: Number(fields[12]) / clockTicks() };
}

/** Returns the CPU seconds (user and system) that a process has used (Linux only). */
export function processCpuSeconds(pid: number): number {
  const { user, system } = processCpuTimes(pid);
  return user + system;
}

/** Returns the CPU seconds used by the live processes of a process group, such as a gateway and its workers (Linux only). */
export function groupCpuSeconds(pgid: number): number {
  let total = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const fields = statFields(entry);
      if (Number(fields[2]) === pgid) total += (Number(fields[11]) + Number(fields[12])) / clockTicks();
    } catch {
      // The process exited while it was being read.
    }
  }
  return total;
}

/** CPU time of the whole machine since boot, in seconds: busy, and total (busy plus idle and I/O wait). */
export interface MachineCpuTimes {
  busy: number;
  total: number;
}

/** Reads the aggregate `cpu` line of /proc/stat (Linux only). */
export function machineCpuTimes(): MachineCpuTimes {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  // Fields: user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user and nice.
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number) as number[];
  const busy = user! + nice! + system! + irq! + softirq! + steal!;
  return { busy: busy / clockTicks(), total: (busy + idle! + iowait!) / clockTicks() };
}

/** Returns the process id of the redis-server listening on a loopback port, from INFO server. */
export function redisServerPid(port: number): number {
  const info = execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), 'INFO', 'server'], { encoding: 'utf8' });
  const match = /^process_id:(\d+)/m.exec(info);
  if (!match) throw new Error(`INFO server of the redis-server on port ${port} has no process_id line`);
  return Number(match[1]);
}

/**
 * Returns the CPU seconds used by this process and all its descendants,
 * including those already exited and reaped (the cutime and cstime of their
 * parents), such as finished vegeta runs. Compared with machineCpuTimes, it
 * shows how much CPU work outside the benchmark took during a run.
 */
export function benchmarkCpuSeconds(): number {
  const parents = new Map<number, number>();
  const times = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const fields = statFields(entry);
      // ppid is field 4; utime, stime, cutime and cstime are fields 14 to 17.
      parents.set(Number(entry), Number(fields[1]));
      times.set(Number(entry), (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / clockTicks());
    } catch {
      // The process exited while it was being read.
    }
  }

  let total = 0;
  for (const [pid, seconds] of times) {
    let ancestor: number | undefined = pid;
    while (ancestor !== undefined && ancestor !== process.pid && ancestor > 1) ancestor = parents.get(ancestor);
    if (ancestor === process.pid) total += seconds;
  }
  return total;
}

/** Name of the sidecar's largest event-loop delay since the last scrape (prom-client's default metrics). */
const SIDECAR_EVENT_LOOP_MAX = 'tollgate_sidecar_nodejs_eventloop_lag_max_seconds';

/**
 * Reads the largest event-loop delay of a sidecar from its /metrics. The
 * sidecar's metrics library measures the delay with monitorEventLoopDelay
 * and starts a new interval on every scrape.
 */
export function sidecarEventLoopDelay(sidecarUrl: string): EventLoopDelayProbe {
  return {
    async takeMaxMs() {
      const response = await fetch(`${sidecarUrl}/metrics`, { signal: AbortSignal.timeout(10_000) });
      if (!response.ok) throw new Error(`GET ${sidecarUrl}/metrics failed with status ${response.status}`);
      return metricValue(await response.text(), SIDECAR_EVENT_LOOP_MAX) * 1000;
    },
  };
}

/** Returns the value of an unlabelled sample in Prometheus text format; throws when the text has none. */
export function metricValue(text: string, name: string): number {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${name} `));
  if (line === undefined) throw new Error(`the metrics have no sample "${name}"`);
  return Number(line.slice(name.length + 1).split(' ')[0]);
}
