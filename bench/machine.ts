/** The machine and software versions that a benchmark result belongs to. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { peersCacheDir } from './peers/peers.ts';
import { REPO_ROOT } from './processes.ts';
import { vegetaBinary } from './vegeta.ts';

export interface Machine {
  /** ISO 8601 time at which the run started. */
  startedAt: string;
  cpus: number;
  cpuModel: string;
  memoryBytes: number;
  kernel: string;
  /** 1, 5 and 15 minute load averages when the run started; other work on the machine skews results. */
  loadAverage: number[];
  /** Git commit of the repository, with `+changes` when the working tree differs from it. */
  commit: string;
  /** The speed check's time when the run started; left out by runs recorded before it existed. */
  speedCheckMs?: number;
}

export function describeMachine(): Machine {
  return {
    startedAt: new Date().toISOString(),
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown',
    memoryBytes: os.totalmem(),
    kernel: `${os.type()} ${os.release()}`,
    loadAverage: os.loadavg(),
    commit: gitCommit(),
    speedCheckMs: speedCheckMs(),
  };
}

/**
 * Times a fixed single-threaded loop, the median of three, in milliseconds.
 * A virtual machine that shares its host runs at a speed that drifts: up to
 * twice as slow at times on the machine this benchmark was written on. The
 * check at the start and at the end of a run shows whether its results are
 * comparable with another run's.
 */
export function speedCheckMs(): number {
  const times: number[] = [];
  for (let round = 0; round < 3; round++) {
    const started = performance.now();
    let sum = 0;
    for (let i = 0; i < 100_000_000; i++) sum += i % 7;
    // Using the sum keeps the loop from being optimized away.
    if (sum !== 299_999_995) throw new Error(`the speed check computed ${sum}`);
    times.push(performance.now() - started);
  }
  return times.sort((a, b) => a - b)[1]!;
}

function gitCommit(): string {
  const git = (args: string[]) => execFileSync('git', args, { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
  try {
    const commit = git(['rev-parse', '--short', 'HEAD']);
    return git(['status', '--porcelain']) === '' ? commit : `${commit}+changes`;
  } catch {
    return 'unknown (not a git checkout)';
  }
}

/** Versions of the measured software and the tools, by name. */
export function describeVersions(): Record<string, string> {
  return {
    node: process.version,
    fastify: packageVersion(join(REPO_ROOT, 'node_modules', 'fastify')),
    undici: packageVersion(join(REPO_ROOT, 'node_modules', 'undici')),
    ioredis: packageVersion(join(REPO_ROOT, 'node_modules', 'ioredis')),
    'redis-server': firstMatch(() => execFileSync('redis-server', ['--version'], { encoding: 'utf8' }), /v=(\S+)/),
    vegeta: firstMatch(() => execFileSync('go', ['version', '-m', vegetaBinary()], { encoding: 'utf8' }), /\bmod\s+\S+\s+(v\S+)/),
    '@portkey-ai/gateway': packageVersion(join(peersCacheDir(), 'portkey', 'node_modules', '@portkey-ai', 'gateway')),
    '@hono/node-server (Portkey)': packageVersion(join(peersCacheDir(), 'portkey', 'node_modules', '@hono', 'node-server')),
    litellm: firstMatch(
      () => execFileSync(join(peersCacheDir(), 'litellm-venv', 'bin', 'python'), ['-c', 'import importlib.metadata as m; print(m.version("litellm"))'], { encoding: 'utf8' }),
      /(\S+)/,
    ),
  };
}

function packageVersion(dir: string): string {
  try {
    return (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'not installed';
  }
}

function firstMatch(read: () => string, pattern: RegExp): string {
  try {
    return pattern.exec(read())?.[1] ?? 'unknown';
  } catch {
    return 'not installed';
  }
}
