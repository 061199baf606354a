/**
 * Starts `tollgate dev` from the source tree as a user runs it, for tests that
 * need the whole command rather than the server module.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { stopProcess, trackChild } from './processes.ts';

const ROOT = path.join(import.meta.dirname, '..', '..');

/**
 * Variables that dev reads provider keys from. Dev treats an empty one as
 * unset, so emptying them sends a route without a key in a Secret manifest to
 * dev's built-in simulator, whatever the developer's shell exports.
 */
const PROVIDER_KEY_VARIABLES = ['OPENAI_API_KEY', 'AZURE_OPENAI_API_KEY', 'ANTHROPIC_API_KEY', 'GEMINI_API_KEY'];

export interface DevProcessOptions {
  /** LOG_LEVEL of the process (default `warn`). */
  logLevel?: string;
  /** Variables set after the provider keys are emptied, so a key given here is kept. */
  env?: NodeJS.ProcessEnv;
}

export interface DevProcess {
  /** Base URL from the banner's first line, such as `http://127.0.0.1:40123`. */
  url: string;
  child: ChildProcessByStdio<null, Readable, Readable>;
  /** Everything the process wrote to stdout so far: the banner and its JSON log lines. */
  stdout(): string;
  stderr(): string;
  /**
   * Sends `signal`, then SIGKILL if the process is still running after 10 s.
   * Resolves once it has exited and its output is read, with its exit code,
   * which is null when a signal ended it.
   */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Runs `tollgate dev --port 0 --no-watch` followed by `args`, and resolves
 * once the whole banner is on stdout. Rejects with the process output when
 * the process exits before that.
 */
export async function startDevProcess(args: string[], options: DevProcessOptions = {}): Promise<DevProcess> {
  const env: NodeJS.ProcessEnv = { ...process.env, LOG_LEVEL: options.logLevel ?? 'warn' };
  for (const variable of PROVIDER_KEY_VARIABLES) env[variable] = '';
  Object.assign(env, options.env);

  const child = spawn(process.execPath, ['src/cli/main.ts', 'dev', '--port', '0', '--no-watch', ...args], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  trackChild(child);
  // 'close' comes after 'exit' and after both pipes have ended, so no output is missed.
  const closed = once(child, 'close');

  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));

  const url = await new Promise<string>((resolve, reject) => {
    // The banner starts with the listening line and ends with the Balances line.
    const onData = () => {
      const listening = /listening on (http:\/\/\S+)/.exec(stdout);
      if (listening && /^Balances: /m.test(stdout)) {
        child.stdout.off('data', onData);
        resolve(listening[1]!);
      }
    };
    child.stdout.on('data', onData);
    closed.then(
      () => reject(new Error(`tollgate dev exited with ${child.exitCode ?? child.signalCode} before it listened: ${stdout}${stderr}`)),
      reject,
    );
  });

  return {
    url,
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      await stopProcess(child, 10_000, signal);
      await closed;
      return child.exitCode;
    },
  };
}
