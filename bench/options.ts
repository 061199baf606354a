/** The command line of `npm run bench`: its options, the rule for writing into the page, and the checks of its files. */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { checkCommandLine, UsageError } from './cli.ts';
import { planFor, type BenchPlan } from './plan.ts';
import { REPO_ROOT } from './processes.ts';
import { checkResultsPage, type RunResults } from './report.ts';

export const HELP_COMMAND = 'npm run bench -- --help';

export const USAGE = `Usage: npm run bench -- [options]

A full run takes about 12 minutes and writes its results into the page.

Options:
  --quick         Shorter runs (about 4 minutes in all); the results are printed, not written into the page
  --write         Write the results into the page, also those of a quick run
  --no-write      Print the results without writing them into the page
  --out FILE      Page with the result markers to update (default docs/benchmarks.md)
  --profile       Profile the sidecar even when it meets its latency targets
  --skip-peers    Leave out Portkey and LiteLLM, and do not install them: bench/install.sh then
                  only builds vegeta and checks the Redis tools, and needs neither Python 3 nor
                  access to the npm registry and PyPI
  --no-install    Do not run bench/install.sh first
  --from FILE     Measure nothing: render the results.json of an earlier run and write it into the page.
                  The results of a quick run are rejected unless --no-write (print only) or --write
                  (write anyway) is given, the same rule as for --quick
  -h, --help      Print this help`;

export interface Options {
  plan: BenchPlan;
  /** `--write` (true) or `--no-write` (false); undefined leaves it to the run's mode. */
  write: boolean | undefined;
  out: string;
  profile: boolean;
  peers: boolean;
  install: boolean;
  /** results.json of an earlier run to render instead of measuring. */
  from?: string;
}

const OPTIONS = {
  quick: { type: 'boolean' },
  write: { type: 'boolean' },
  'no-write': { type: 'boolean' },
  out: { type: 'string' },
  profile: { type: 'boolean' },
  'skip-peers': { type: 'boolean' },
  'no-install': { type: 'boolean' },
  from: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Parses the arguments after `npm run bench --`; returns undefined for `--help` and throws a UsageError for a mistake. */
export function parseOptions(args: string[]): Options | undefined {
  checkCommandLine(args, OPTIONS);
  const { values } = parseArgs({ args, options: OPTIONS });
  if (values.help) return undefined;
  if (values.write && values['no-write']) throw new UsageError('--write and --no-write contradict each other; give one of them');

  let write: boolean | undefined;
  if (values.write) write = true;
  if (values['no-write']) write = false;
  return {
    plan: planFor(values.quick ?? false),
    write,
    out: values.out ?? join(REPO_ROOT, 'docs', 'benchmarks.md'),
    profile: values.profile ?? false,
    peers: !values['skip-peers'],
    install: !values['no-install'],
    from: values.from,
  };
}

/**
 * Decides whether results of the given mode go into the page. A full run's
 * results do and a quick run's do not, unless `--write` or `--no-write` sets
 * it. A quick run's results read with `--from` are rejected without
 * one of the two, because the user who renders a file may not know which
 * mode recorded it.
 */
export function decideWrite(options: Options, mode: BenchPlan['mode']): boolean {
  if (options.write !== undefined) return options.write;
  if (mode === 'full') return true;
  if (options.from === undefined) return false;
  throw new UsageError(
    `--from ${options.from} contains a quick run's results, which are printed, not written into the page: ` +
      `add --no-write to print them only, or --write to write them into ${options.out} anyway`,
  );
}

/** Checks that the page of `--out` exists and has the result markers, so that a run does not fail at its end. */
export async function checkOutPage(page: string): Promise<void> {
  try {
    await checkResultsPage(page);
  } catch (error) {
    throw new UsageError(`--out ${page}: ${describeError(error)}`);
  }
}

/** Reads a results.json that a run saved, with the nano-unit amounts turned back into bigint. */
export async function readResultsFile(file: string): Promise<RunResults> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new UsageError(`--from ${file}: ${describeError(error)}; give the results.json that a run saved in the folder it printed`);
  }

  let results: RunResults;
  try {
    results = JSON.parse(text) as RunResults;
  } catch (error) {
    throw new UsageError(`--from ${file} is not valid JSON (${describeError(error)})`);
  }
  const mode = (results as { plan?: { mode?: unknown } } | null)?.plan?.mode;
  if (mode !== 'full' && mode !== 'quick') {
    throw new UsageError(`--from ${file} is not the results.json of a benchmark run: it has no plan.mode "full" or "quick"`);
  }

  // JSON has no bigint, so the run wrote the nano-unit amounts as decimal strings.
  for (const overspend of results.overspend) {
    overspend.costNano = BigInt(overspend.costNano);
    overspend.limitNano = BigInt(overspend.limitNano);
    overspend.spentNano = BigInt(overspend.spentNano);
    overspend.overspendNano = BigInt(overspend.overspendNano);
  }
  return results;
}

/** Returns an error's message as one line, with "file not found" for ENOENT. */
function describeError(error: unknown): string {
  if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'file not found';
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0]!;
}
