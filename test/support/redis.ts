/**
 * Starts a real redis-server for tests, on a free loopback port, with its
 * files in a temporary directory.
 */

import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { findFreePort, sleep, stopProcess, trackChild } from './processes.ts';

export interface StartRedisOptions {
  /** Enables the append-only file (default false, which with `--save ''` keeps nothing on disk). */
  appendonly?: boolean;
  /** fsync policy of the append-only file (default `everysec`). */
  appendfsync?: 'always' | 'everysec' | 'no';
  /**
   * Data directory to use instead of a fresh temporary one, for example to
   * restart a server on the files of a stopped one. It is not deleted on stop.
   */
  dir?: string;
  /** Extra redis-server arguments, such as `['--maxmemory', '10mb']`. */
  args?: string[];
  /** How long to wait for the first PONG, in milliseconds (default 10000). */
  startTimeoutMs?: number;
  /** Port to listen on, for example the port of a stopped server that clients still point at; a free one by default. */
  port?: number;
  /**
   * Also listens for TLS on a second free port, with this certificate and
   * key, and trusts client certificates signed by `caFile`. The plain port
   * stays open for the start-up check and for tests that inspect the server.
   */
  tls?: RedisServerTls;
}

export interface RedisServerTls {
  certFile: string;
  keyFile: string;
  caFile: string;
  /** Whether clients must present a certificate (redis-server's `tls-auth-clients`); its default, true, when unset. */
  authClients?: boolean;
}

export interface RunningRedis {
  url: string;
  port: number;
  /** `rediss://127.0.0.1:<TLS port>` when started with `tls`, else undefined. */
  tlsUrl: string | undefined;
  /** The data directory. */
  dir: string;
  /**
   * Pauses the process (SIGSTOP): it keeps its connections and its port but
   * replies to nothing, like a server blocked by a long command or behind a
   * network that drops packets.
   */
  pause(): void;
  /** Lets a paused process run again (SIGCONT). */
  resume(): void;
  /** Stops the server (SIGTERM, then SIGKILL after 10 s) and deletes a temporary data directory; safe to call twice. */
  stop(): Promise<void>;
}

const FALLBACK_BINARY = '/usr/bin/redis-server';
const PORT_ATTEMPTS = 5;
const OUTPUT_LIMIT = 4000;


/** Starts redis-server and resolves once it replies to PING. */
export async function startRedis(options: StartRedisOptions = {}): Promise<RunningRedis> {
  const binary = findRedisServer();
  const ownsDir = options.dir === undefined;
  const dir = options.dir ?? (await mkdtemp(path.join(os.tmpdir(), 'tollgate-redis-')));

  let lastError: Error | undefined;
  for (let attempt = 0; attempt < (options.port === undefined ? PORT_ATTEMPTS : 1); attempt += 1) {
    const port = options.port ?? (await findFreePort());
    const tlsPort = options.tls === undefined ? undefined : await findFreePort();
    try {
      const child = await launch(binary, port, dir, options, tlsPort);
      return {
        url: `redis://127.0.0.1:${port}`,
        port,
        tlsUrl: tlsPort === undefined ? undefined : `rediss://127.0.0.1:${tlsPort}`,
        dir,
        pause: () => void child.kill('SIGSTOP'),
        resume: () => void child.kill('SIGCONT'),
        stop: async () => {
          // A paused process would not act on SIGTERM.
          child.kill('SIGCONT');
          await stopProcess(child);
          if (ownsDir) await rm(dir, { recursive: true, force: true });
        },
      };
    } catch (error) {
      lastError = error as Error;
      // Another process may have taken the port between the probe and the bind.
      if (!/Address already in use/i.test(lastError.message)) break;
    }
  }

  if (ownsDir) await rm(dir, { recursive: true, force: true });
  throw lastError ?? new Error('redis-server did not start');
}

function findRedisServer(): string {
  const candidates = [
    process.env.REDIS_SERVER_BIN,
    ...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean).map((entry) => path.join(entry, 'redis-server')),
    FALLBACK_BINARY,
  ];
  for (const candidate of candidates) {
    if (!candidate) continue;
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not here; try the next candidate.
    }
  }
  throw new Error(
    'redis-server is not installed: it was not found on PATH, in REDIS_SERVER_BIN or at /usr/bin/redis-server. ' +
      'Install it with `apt-get install redis-server`, or set REDIS_SERVER_BIN to its path.',
  );
}


async function launch(binary: string, port: number, dir: string, options: StartRedisOptions, tlsPort: number | undefined): Promise<ChildProcess> {
  const tls = options.tls;
  const args = [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--dir', dir,
    '--save', '',
    '--appendonly', options.appendonly ? 'yes' : 'no',
    '--appendfsync', options.appendfsync ?? 'everysec',
    '--daemonize', 'no',
    '--logfile', '',
    ...(tls === undefined || tlsPort === undefined
      ? []
      : [
          '--tls-port', String(tlsPort),
          '--tls-cert-file', tls.certFile,
          '--tls-key-file', tls.keyFile,
          '--tls-ca-cert-file', tls.caFile,
          '--tls-auth-clients', tls.authClients === false ? 'no' : 'yes',
        ]),
    ...(options.args ?? []),
  ];
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(child);

  let output = '';
  const collect = (chunk: Buffer) => {
    if (output.length < OUTPUT_LIMIT) output += chunk.toString('utf8');
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);

  let exited: string | undefined;
  child.once('exit', (code, signal) => {
    exited = `exited with ${signal ?? `code ${code}`}`;
  });
  child.once('error', (error) => {
    exited = `failed to start: ${error.message}`;
  });

  const deadline = Date.now() + (options.startTimeoutMs ?? 10_000);
  while (Date.now() < deadline) {
    if (exited) throw new Error(`redis-server on port ${port} ${exited}. Its output:\n${output.trim()}`);
    if (await answersPing(port)) return child;
    await sleep(25);
  }

  await stopProcess(child);
  throw new Error(`redis-server on port ${port} did not answer PING within ${options.startTimeoutMs ?? 10_000} ms. Its output:\n${output.trim()}`);
}

/** Sends one PING over a raw connection and returns whether the reply was PONG. */
function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let reply = '';
    const finish = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => finish(false));
    socket.once('error', () => finish(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('utf8');
      if (reply.includes('\r\n')) finish(reply.startsWith('+PONG'));
    });
  });
}



