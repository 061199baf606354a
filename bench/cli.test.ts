import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkCommandLine, UsageError } from './cli.ts';
import { decideWrite, parseOptions, readResultsFile, type Options } from './options.ts';
import { planFor } from './plan.ts';
import { renderResults, RESULTS_END, RESULTS_START, type RunResults } from './report.ts';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(os.tmpdir(), 'tollgate-bench-cli-test-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Runs a script of the repository with the Node that runs the tests. */
function runScript(script: string, args: string[]) {
  const result = spawnSync(process.execPath, [join(repoRoot, script), ...args], { cwd: repoRoot, encoding: 'utf8' });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** A run's results with one Tollgate overspend entry, so that reading them back must turn its amounts into bigint. */
function runResults(mode: 'full' | 'quick'): RunResults {
  return {
    plan: planFor(mode === 'quick'),
    command: mode === 'quick' ? 'npm run bench -- --quick' : 'npm run bench',
    machine: { startedAt: '2026-12-05T06:17:40.848Z', cpus: 2, cpuModel: 'Test CPU', memoryBytes: 2 ** 31, kernel: 'Linux 6.0', loadAverage: [0.5, 0.4, 0.3], commit: 'abc1234', speedCheckMs: 180 },
    versions: { node: 'v24.0.0' },
    loads: [],
    streams: [],
    overspend: [
      {
        gateway: 'tollgate',
        processes: 3,
        affordable: 50,
        costNano: 141_000n,
        limitNano: 7_050_000n,
        spentNano: 7_050_000n,
        overspendNano: 0n,
        burst: { requests: 300, admitted: 50, statusCodes: { '200': 50, '402': 250 }, statusAfterBurst: 402 },
        note: 'test note',
      },
    ],
    failures: [],
    durationSeconds: 660,
    loadAverageAtEnd: [1, 0.8, 0.6],
    speedCheckMsAtEnd: 170,
  };
}

/** Saves results the way a run does, with bigint amounts as decimal strings, and returns the file. */
async function saveResults(mode: 'full' | 'quick'): Promise<string> {
  const file = join(dir, `${mode}.json`);
  await writeFile(file, JSON.stringify(runResults(mode), (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value), 2));
  return file;
}

const PAGE = `# Page\n\n${RESULTS_START}\nold results\n${RESULTS_END}\n\n## After\n`;

async function savePage(): Promise<string> {
  const page = join(dir, 'page.md');
  await writeFile(page, PAGE);
  return page;
}

describe('checkCommandLine', () => {
  const options = { quick: { type: 'boolean' }, from: { type: 'string' }, help: { type: 'boolean', short: 'h' } } as const;
  const mistakes: [string[], string][] = [
    [['--bogus'], 'unknown option --bogus'],
    [['-x'], 'unknown option -x'],
    [['--from'], 'missing value for --from'],
    [['--from='], 'missing value for --from'],
    [['--from', '--quick'], 'missing value for --from: "--quick" is an option (write --from=--quick for a value that starts with a dash)'],
    [['--quick=yes'], '--quick takes no value, but got "yes"'],
    [['results.json'], 'unexpected argument "results.json"'],
  ];

  for (const [args, message] of mistakes) {
    it(`rejects ${args.join(' ')}`, () => {
      expect(() => checkCommandLine(args, options)).toThrow(new UsageError(message));
    });
  }

  it('accepts valid arguments', () => {
    expect(() => checkCommandLine(['--quick', '--from', 'a.json', '-h', '--from=-odd.json'], options)).not.toThrow();
  });
});

describe('parseOptions', () => {
  it('returns undefined for --help', () => {
    expect(parseOptions(['--help'])).toBeUndefined();
    expect(parseOptions(['-h'])).toBeUndefined();
  });

  it('leaves writing to the mode by default', () => {
    const options = parseOptions([])!;
    expect(options.plan.mode).toBe('full');
    expect(options.write).toBeUndefined();
    expect(options.out).toBe(join(repoRoot, 'docs', 'benchmarks.md'));
    expect(options.peers).toBe(true);
    expect(options.install).toBe(true);
    expect(options.from).toBeUndefined();
  });

  it('reads the flags', () => {
    const options = parseOptions(['--quick', '--no-write', '--skip-peers', '--no-install', '--out', 'page.md', '--from', 'run.json'])!;
    expect(options.plan.mode).toBe('quick');
    expect(options.write).toBe(false);
    expect(options.out).toBe('page.md');
    expect(options.peers).toBe(false);
    expect(options.install).toBe(false);
    expect(options.from).toBe('run.json');
    expect(parseOptions(['--write'])!.write).toBe(true);
  });

  it('rejects --write with --no-write', () => {
    expect(() => parseOptions(['--write', '--no-write'])).toThrow(new UsageError('--write and --no-write contradict each other; give one of them'));
  });
});

describe('decideWrite', () => {
  const options = (args: string[]): Options => parseOptions([...args, '--out', 'page.md'])!;

  it('writes a live full run and prints a live quick run', () => {
    expect(decideWrite(options([]), 'full')).toBe(true);
    expect(decideWrite(options(['--quick']), 'quick')).toBe(false);
    expect(decideWrite(options(['--quick', '--write']), 'quick')).toBe(true);
    expect(decideWrite(options(['--no-write']), 'full')).toBe(false);
  });

  it('writes an earlier full run', () => {
    expect(decideWrite(options(['--from', 'full.json']), 'full')).toBe(true);
    expect(decideWrite(options(['--from', 'full.json', '--no-write']), 'full')).toBe(false);
  });

  it('rejects an earlier quick run without a choice', () => {
    expect(() => decideWrite(options(['--from', 'quick.json']), 'quick')).toThrow(
      new UsageError(
        "--from quick.json contains a quick run's results, which are printed, not written into the page: add --no-write to print them only, or --write to write them into page.md anyway",
      ),
    );
    expect(decideWrite(options(['--from', 'quick.json', '--no-write']), 'quick')).toBe(false);
    expect(decideWrite(options(['--from', 'quick.json', '--write']), 'quick')).toBe(true);
  });
});

describe('readResultsFile', () => {
  it('turns the amounts back into bigint', async () => {
    const results = await readResultsFile(await saveResults('full'));
    expect(results).toEqual(runResults('full'));
    expect(typeof results.overspend[0]!.spentNano).toBe('bigint');
  });

  it('rejects a missing file', async () => {
    const file = join(dir, 'missing.json');
    await expect(readResultsFile(file)).rejects.toThrow(
      new UsageError(`--from ${file}: file not found; give the results.json that a run saved in the folder it printed`),
    );
  });

  it('rejects a file that is not JSON', async () => {
    const file = join(dir, 'page.md');
    await writeFile(file, '# Page\n');
    await expect(readResultsFile(file)).rejects.toThrow(`--from ${file} is not valid JSON (`);
  });

  it('rejects JSON without a mode', async () => {
    const file = join(dir, 'other.json');
    await writeFile(file, '{"plan": {}}');
    await expect(readResultsFile(file)).rejects.toThrow(
      new UsageError(`--from ${file} is not the results.json of a benchmark run: it has no plan.mode "full" or "quick"`),
    );
  });
});

describe('npm run bench command line', () => {
  const help = 'Run `npm run bench -- --help` for the options.';

  it('prints the help', () => {
    const result = runScript('bench/run.ts', ['--help']);
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/^Usage: npm run bench -- \[options\]\n/);
    expect(result.stdout).toContain('The results of a quick run are rejected unless --no-write (print only) or --write');
    expect(result.stdout).toContain('--skip-peers    Leave out Portkey and LiteLLM, and do not install them');
  });

  const mistakes: [string[], string][] = [
    [['--bogus'], 'unknown option --bogus'],
    [['--from'], 'missing value for --from'],
    [['--from', '/missing.json'], '--from /missing.json: file not found; give the results.json that a run saved in the folder it printed'],
  ];
  for (const [args, message] of mistakes) {
    it(`prints one line for ${args.join(' ')}`, () => {
      const result = runScript('bench/run.ts', args);
      expect(result.status).toBe(2);
      expect(result.stdout).toBe('');
      expect(result.stderr).toBe(`error: ${message}. ${help}\n`);
    });
  }

  it('rejects writing a quick run from --from', async () => {
    const file = await saveResults('quick');
    const page = await savePage();
    const result = runScript('bench/run.ts', ['--from', file, '--out', page]);
    expect(result.status).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(
      `error: --from ${file} contains a quick run's results, which are printed, not written into the page: add --no-write to print them only, or --write to write them into ${page} anyway. ${help}\n`,
    );
    expect(await readFile(page, 'utf8')).toBe(PAGE);
  });

  it('prints a quick run with --no-write', async () => {
    const file = await saveResults('quick');
    const page = await savePage();
    const result = runScript('bench/run.ts', ['--from', file, '--out', page, '--no-write']);
    expect(result.status).toBe(0);
    expect(result.stdout).toBe(`${renderResults(runResults('quick'))}\n`);
    expect(await readFile(page, 'utf8')).toBe(PAGE);
  });

  it('writes a quick run with --write', async () => {
    const file = await saveResults('quick');
    const page = await savePage();
    const result = runScript('bench/run.ts', ['--from', file, '--out', page, '--write']);
    expect(result.status).toBe(0);
    expect(await readFile(page, 'utf8')).toBe(`# Page\n\n${RESULTS_START}\n${renderResults(runResults('quick'))}\n${RESULTS_END}\n\n## After\n`);
  });

  it('writes a full run by default', async () => {
    const file = await saveResults('full');
    const page = await savePage();
    const result = runScript('bench/run.ts', ['--from', file, '--out', page]);
    expect(result.status).toBe(0);
    expect(result.stdout.startsWith(`${renderResults(runResults('full'))}\n`)).toBe(true);
    expect(await readFile(page, 'utf8')).toBe(`# Page\n\n${RESULTS_START}\n${renderResults(runResults('full'))}\n${RESULTS_END}\n\n## After\n`);
  });

  it('rejects a page without markers before rendering', async () => {
    const file = await saveResults('full');
    const page = join(dir, 'plain.md');
    await writeFile(page, '# Page\n');
    const result = runScript('bench/run.ts', ['--from', file, '--out', page]);
    expect(result.status).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(`error: --out ${page}: ${page} has no "${RESULTS_START}" and "${RESULTS_END}" lines; add them where the results belong. ${help}\n`);
  });
});

describe('floor.ts command line', () => {
  const help = 'Run `node bench/floor.ts --help` for the options.';

  it('prints the help', () => {
    const result = runScript('bench/floor.ts', ['--help']);
    expect(result.status).toBe(0);
    expect(result.stderr).toBe('');
    expect(result.stdout).toMatch(/^Usage: node bench\/floor.ts \[options\]\n/);
    expect(result.stdout).toContain('  --rate N      Requests per second that vegeta sends to each server (default 2000)\n');
    expect(result.stdout).toContain('  --seconds N   Length of each measured run in seconds, after a 3 s warm-up (default 10)\n');
    expect(result.stdout).toContain('  --rounds N    Rounds; each round measures both servers once (default 2)\n');
  });

  const mistakes: [string[], string][] = [
    [['--bogus'], 'unknown option --bogus'],
    [['--rate'], 'missing value for --rate'],
    [['--rate', 'fast'], 'invalid --rate "fast": expected a whole number of 1 or more'],
    [['--seconds', '0'], 'invalid --seconds "0": expected a whole number of 1 or more'],
    [['--rounds', '1.5'], 'invalid --rounds "1.5": expected a whole number of 1 or more'],
  ];
  for (const [args, message] of mistakes) {
    it(`prints one line for ${args.join(' ')}`, () => {
      const result = runScript('bench/floor.ts', args);
      expect(result.status).toBe(2);
      expect(result.stdout).toBe('');
      expect(result.stderr).toBe(`error: ${message}. ${help}\n`);
    });
  }
});

describe('bench/install.sh', () => {
  /** Returns the absolute path of a command on the test's PATH. */
  const commandPath = (command: string): string => {
    const result = spawnSync('sh', ['-c', `command -v ${command}`], { encoding: 'utf8' });
    if (result.status !== 0) throw new Error(`${command} is not on PATH`);
    return result.stdout.trim();
  };

  /**
   * Runs the script with a PATH that contains only the tools it uses with
   * --skip-peers, a stand-in vegeta in the cache, and no Go, so that the
   * stand-in counts as installed.
   */
  async function runInstall(args: string[]) {
    const bin = join(dir, 'path');
    const cache = join(dir, 'cache');
    await mkdir(bin);
    await mkdir(join(cache, 'bin'), { recursive: true });
    for (const tool of ['redis-server', 'redis-benchmark', 'redis-cli', 'awk', 'dirname']) await symlink(commandPath(tool), join(bin, tool));
    await writeFile(join(cache, 'bin', 'vegeta'), '#!/bin/sh\nexit 0\n');
    await chmod(join(cache, 'bin', 'vegeta'), 0o755);
    const result = spawnSync(commandPath('bash'), [join(repoRoot, 'bench', 'install.sh'), ...args], {
      encoding: 'utf8',
      env: { PATH: bin, HOME: dir, TOLLGATE_CACHE: cache },
    });
    return { status: result.status, stdout: result.stdout, stderr: result.stderr, cache };
  }

  it('installs no peers with --skip-peers', async () => {
    const redisVersion = /v=(\S+)/.exec(spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout)![1]!;
    const result = await runInstall(['--skip-peers']);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.stdout).toBe(
      [
        `vegeta: v12.12.0 already installed in ${join(result.cache, 'bin')}, skipping`,
        `redis: ${redisVersion}, redis-benchmark and redis-cli found`,
        'peers: skipped (--skip-peers)',
        '',
      ].join('\n'),
    );
    expect(existsSync(join(result.cache, 'peers'))).toBe(false);
  });

  it('rejects an unknown argument', async () => {
    const result = await runInstall(['--no-peers']);
    expect(result.status).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe('bench/install.sh: unknown argument "--no-peers"; the only one is --skip-peers\n');
  });
});
