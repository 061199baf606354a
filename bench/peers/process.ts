/**
 * Spawns a peer gateway as its own process group, waits until it responds
 * to HTTP, measures its memory and stops it. Shared by the Portkey and LiteLLM
 * launchers.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/** A started peer gateway and what a client needs to call it. */
export interface PeerGateway {
  /** `portkey` or `litellm`. */
  readonly name: string;
  /** OpenAI base URL including `/v1`, as an OpenAI SDK takes it in `baseURL`. */
  readonly url: string;
  /** Headers that a client must send on every request. */
  readonly headers: Readonly<Record<string, string>>;
  /** Model id that a client puts in the request body. */
  readonly model: string;
  /** Process id of the gateway, which also leads its process group. */
  readonly pid: number;
  /** Milliseconds from spawn until the readiness probe returned 200. */
  readonly startupMs: number;
  /** File that receives the gateway's stdout and stderr. */
  readonly logFile: string;
  /** Sums the resident set size in bytes of every process in the gateway's process group. */
  rssBytes(): number;
  /** Stops the whole process group: SIGTERM, then SIGKILL after a grace period. */
  stop(): Promise<void>;
}

/** Root of the peer installs made by bench/peers/install.sh. */
export function peersCacheDir(): string {
  const root = process.env['TOLLGATE_CACHE'] || join(homedir(), '.cache', 'tollgate');
  return join(root, 'peers');
}

/** Default log file of one gateway instance, in the system temporary folder. */
export function defaultLogFile(name: string, port: number): string {
  return join(tmpdir(), 'tollgate-bench-peers', `${name}-${port}.log`);
}

/** Rejects a port that some process already listens on, so the readiness probe cannot hit a stranger. */
export async function assertPortFree(port: number): Promise<void> {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RangeError(`invalid port ${port}: expected an integer from 1 to 65535`);
  }
  const inUse = await new Promise<boolean>((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
  if (inUse) throw new Error(`port ${port} on 127.0.0.1 is already in use: stop that process or choose another port`);
}

export interface LaunchOptions {
  name: string;
  command: string;
  args: readonly string[];
  env: NodeJS.ProcessEnv;
  cwd: string;
  logFile: string;
  /** URL that returns 200 once the gateway serves requests. */
  readyUrl: string;
  readyTimeoutMs: number;
}

export interface LaunchedProcess {
  pid: number;
  startupMs: number;
  rssBytes(): number;
  stop(): Promise<void>;
}

const STOP_GRACE_MS = 10_000;
const READY_POLL_MS = 100;
const LOG_TAIL_BYTES = 4_000;

/** Process groups still running, killed when this Node process exits so that no gateway outlives a crashed run. */
const liveGroups = new Set<number>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const pgid of liveGroups) signalGroup(pgid, 'SIGKILL');
  });
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (error) {
    // ESRCH: every process of the group has exited already.
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

/**
 * Starts the command in a new process group with its output in `logFile`,
 * and resolves once `readyUrl` returns 200. Rejects with the tail of the
 * log when the process exits or the timeout passes first. The process group
 * is killed in both cases.
 */
export async function launch(options: LaunchOptions): Promise<LaunchedProcess> {
  mkdirSync(dirname(options.logFile), { recursive: true });
  const logFd = openSync(options.logFile, 'w');
  const startedAt = performance.now();
  const child = spawn(options.command, options.args, {
    cwd: options.cwd,
    env: options.env,
    detached: true,
    stdio: ['ignore', logFd, logFd],
  });
  closeSync(logFd);

  const spawned = await new Promise<number>((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid!));
    child.once('error', (error) => reject(new Error(`failed to start ${options.name} (${options.command}): ${error.message}`, { cause: error })));
  });
  const pgid = spawned;
  liveGroups.add(pgid);
  installExitHook();

  let exitCode: number | null | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitCode = code ?? (signal ? -1 : null);
      resolve();
    });
  });

  const stop = async (): Promise<void> => {
    if (!liveGroups.has(pgid)) return;
    signalGroup(pgid, 'SIGTERM');
    let graceTimer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      exited.then(() => false),
      new Promise<boolean>((resolve) => {
        graceTimer = setTimeout(() => resolve(true), STOP_GRACE_MS);
      }),
    ]);
    // A pending timer would keep the caller's process alive for the rest of the grace period.
    clearTimeout(graceTimer);
    // Workers may outlive their leader, so the group gets SIGKILL either way.
    signalGroup(pgid, 'SIGKILL');
    if (timedOut) await exited;
    liveGroups.delete(pgid);
  };

  const deadline = startedAt + options.readyTimeoutMs;
  for (;;) {
    if (exitCode !== undefined) {
      liveGroups.delete(pgid);
      signalGroup(pgid, 'SIGKILL');
      throw new Error(`${options.name} exited with code ${exitCode} before it was ready; log ${options.logFile}:\n${logTail(options.logFile)}`);
    }
    if (await respondsOk(options.readyUrl)) break;
    if (performance.now() > deadline) {
      await stop();
      throw new Error(
        `${options.name} was not ready at ${options.readyUrl} within ${options.readyTimeoutMs} ms; log ${options.logFile}:\n${logTail(options.logFile)}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, READY_POLL_MS));
  }

  return {
    pid: pgid,
    startupMs: Math.round(performance.now() - startedAt),
    rssBytes: () => groupRssBytes(pgid),
    stop,
  };
}

async function respondsOk(url: string): Promise<boolean> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
    await response.body?.cancel();
    return response.status === 200;
  } catch {
    return false;
  }
}

function logTail(logFile: string): string {
  if (!existsSync(logFile)) return '(no log written)';
  const text = readFileSync(logFile, 'utf8');
  return text.length > LOG_TAIL_BYTES ? text.slice(-LOG_TAIL_BYTES) : text;
}

/** Sums VmRSS over /proc for the processes whose process group is `pgid` (Linux only). */
export function groupRssBytes(pgid: number): number {
  let total = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The command name in brackets may contain spaces, so fields are counted after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) !== pgid) continue;
      const status = readFileSync(`/proc/${entry}/status`, 'utf8');
      const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
      if (match) total += Number(match[1]) * 1024;
    } catch {
      // The process exited while it was being read.
    }
  }
  return total;
}
