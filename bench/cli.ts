/**
 * Command-line checks shared by the benchmark's entry points, so that a
 * mistake prints one line and exits with status 2 instead of a stack trace.
 */
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';

/** Exit status of a command line that was rejected, as most Unix tools use it. */
export const USAGE_EXIT_CODE = 2;

/** A command line or an argument's value that the program rejects; the message is one line that names the value and the fix. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/**
 * Throws a UsageError for the first mistake in `args`: an unknown option, a
 * missing value, a value given to a flag, or a positional argument. Call it
 * before the strict `parseArgs`, whose own errors span several lines and
 * suggest fixes that do not apply here.
 */
export function checkCommandLine(args: string[], options: ParseArgsOptionsConfig): void {
  const { tokens } = parseArgs({ args, options, strict: false, allowPositionals: true, tokens: true });
  for (const token of tokens) {
    if (token.kind === 'positional') throw new UsageError(`unexpected argument "${token.value}"`);
    if (token.kind !== 'option') continue;

    const option = options[token.name];
    if (option === undefined) throw new UsageError(`unknown option ${token.rawName}`);
    if (option.type === 'boolean') {
      if (token.value !== undefined) throw new UsageError(`${token.rawName} takes no value, but got "${token.value}"`);
      continue;
    }
    if (token.value === undefined || token.value === '') throw new UsageError(`missing value for ${token.rawName}`);
    // Without `=`, a value that starts with a dash is almost always the next option.
    if (!token.inlineValue && token.value.startsWith('-')) {
      throw new UsageError(`missing value for ${token.rawName}: "${token.value}" is an option (write ${token.rawName}=${token.value} for a value that starts with a dash)`);
    }
  }
}

/**
 * Runs an entry point and sets the exit code: its own result, 2 with one
 * line for a UsageError, and 1 with the stack for any other error.
 * `helpCommand` is the command that prints the help, `program` names the
 * program in the message of an unexpected error.
 */
export function runEntryPoint(main: () => Promise<number>, names: { helpCommand: string; program: string }): void {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      if (error instanceof UsageError) {
        console.error(`error: ${error.message}. Run \`${names.helpCommand}\` for the options.`);
        process.exitCode = USAGE_EXIT_CODE;
        return;
      }
      console.error(error instanceof Error ? `${names.program} failed: ${error.stack ?? error.message}` : error);
      process.exitCode = 1;
    },
  );
}
