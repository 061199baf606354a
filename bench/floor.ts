/**
 * Measures a floor for the sidecar's CPU per request. A server reads a chat
 * request's body, parses it and responds with a fixed completion, once on
 * bare node:http and once behind fastify (with the sidecar's raw-body parser
 * and a hijacked reply). Each server runs in its own
 * process; vegeta loads it at a fixed rate, and the process's CPU time is
 * divided by the requests sent. The two kinds alternate, so that a machine
 * whose speed drifts affects both alike. Sends traffic only to 127.0.0.1.
 *
 *   node bench/floor.ts [--rate 2000] [--seconds 10] [--rounds 2]
 *   node bench/floor.ts --help
 */
import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Fastify from 'fastify';
import { checkCommandLine, runEntryPoint, UsageError } from './cli.ts';
import { freePort, processCpuSeconds } from './processes.ts';
import { attack, type HttpTarget } from './vegeta.ts';
import { chatBody, MODEL } from './workload.ts';

type Kind = 'node-http' | 'fastify';
const KINDS: Kind[] = ['node-http', 'fastify'];

const COMPLETION = JSON.stringify({
  id: 'chatcmpl-floor',
  object: 'chat.completion',
  model: MODEL,
  choices: [{ index: 0, message: { role: 'assistant', content: 'alpha delta echo hotel' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 10, completion_tokens: 4, total_tokens: 14 },
});

function answer(response: http.ServerResponse, body: Buffer): void {
  JSON.parse(body.toString('utf8'));
  response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(COMPLETION) });
  response.end(COMPLETION);
}

/** Serves the floor handler on 127.0.0.1:port and prints "listening" once it does. */
async function serve(kind: Kind, port: number): Promise<void> {
  if (kind === 'node-http') {
    const server = http.createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => answer(response, Buffer.concat(chunks)));
    });
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  } else {
    const app = Fastify();
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
    app.post('/*', async (request, reply) => {
      reply.hijack();
      answer(reply.raw, request.body as Buffer);
    });
    await app.listen({ host: '127.0.0.1', port });
  }
  console.log('listening');
}

/** Starts one floor server as a child process and returns its pid, URL and a stop function. */
async function startServer(kind: Kind): Promise<{ pid: number; url: string; stop: () => void }> {
  const port = await freePort();
  const child = spawn(process.execPath, [import.meta.filename, '--serve', kind, '--port', String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  process.once('exit', () => child.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      if (chunk.toString('utf8').includes('listening')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the ${kind} floor server exited with code ${code} before it listened`)));
  });
  return { pid: child.pid!, url: `http://127.0.0.1:${port}`, stop: () => child.kill('SIGTERM') };
}

async function measure(options: { rate: number; seconds: number; rounds: number }): Promise<void> {
  const workDir = await mkdtemp(join(os.tmpdir(), 'tollgate-floor-'));
  const load = (seconds: number) => ({ rate: options.rate, seconds, maxWorkers: 512, timeoutSeconds: 10 });
  for (let round = 1; round <= options.rounds; round++) {
    for (const kind of KINDS) {
      const server = await startServer(kind);
      try {
        const target: HttpTarget = { name: kind, url: `${server.url}/v1/chat/completions`, headers: {}, body: chatBody(MODEL) };
        await attack(target, load(3), workDir, `warmup-${round}`);
        const before = processCpuSeconds(server.pid);
        const result = await attack(target, load(options.seconds), workDir, `round-${round}`);
        const cpuUs = ((processCpuSeconds(server.pid) - before) / result.requests) * 1e6;
        console.log(
          `round ${round} ${kind.padEnd(9)} ${cpuUs.toFixed(0)} us CPU per request at ${result.rate.toFixed(0)} rps, ` +
            `p50 ${result.latencyMs.p50.toFixed(2)} ms, p99 ${result.latencyMs.p99.toFixed(2)} ms, success ${(result.success * 100).toFixed(1)} %`,
        );
      } finally {
        server.stop();
      }
    }
  }
}

const USAGE = `Usage: node bench/floor.ts [options]

Measures the CPU time per request of a bare node:http server and of a fastify
server that answer a chat completion, as a floor for the sidecar's.

Options:
  --rate N      Requests per second that vegeta sends to each server (default 2000)
  --seconds N   Length of each measured run in seconds, after a 3 s warm-up (default 10)
  --rounds N    Rounds; each round measures both servers once (default 2)
  -h, --help    Print this help`;

// --serve and --port are internal: the measuring process starts each server as `--serve KIND --port N`.
const OPTIONS = {
  rate: { type: 'string', default: '2000' },
  seconds: { type: 'string', default: '10' },
  rounds: { type: 'string', default: '2' },
  help: { type: 'boolean', short: 'h', default: false },
  serve: { type: 'string' },
  port: { type: 'string' },
} as const;

/** Parses `value` of `option` as a whole number of at least 1, or throws a UsageError naming it. */
function positiveInteger(option: string, value: string): number {
  const number = Number(value);
  if (!/^\d+$/.test(value) || number < 1) throw new UsageError(`invalid ${option} "${value}": expected a whole number of 1 or more`);
  return number;
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  checkCommandLine(args, OPTIONS);
  const { values } = parseArgs({ args, options: OPTIONS });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.serve !== undefined) {
    if (!KINDS.includes(values.serve as Kind)) throw new UsageError(`invalid --serve "${values.serve}": use ${KINDS.join(' or ')}`);
    await serve(values.serve as Kind, positiveInteger('--port', values.port ?? ''));
    return 0;
  }
  await measure({
    rate: positiveInteger('--rate', values.rate),
    seconds: positiveInteger('--seconds', values.seconds),
    rounds: positiveInteger('--rounds', values.rounds),
  });
  return 0;
}

runEntryPoint(main, { helpCommand: 'node bench/floor.ts --help', program: 'floor' });
