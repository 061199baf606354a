/**
 * Launches Portkey's open-source gateway (@portkey-ai/gateway, installed by
 * bench/peers/install.sh) in front of an OpenAI-compatible upstream.
 *
 * Portkey keeps no route configuration of its own: every request names the
 * provider and the upstream base URL in `x-portkey-*` headers, which
 * `startPortkey` returns for the client to send.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { assertPortFree, defaultLogFile, launch, peersCacheDir, type PeerGateway } from './process.ts';

export interface PortkeyOptions {
  /** Port on which the gateway listens. NOTE: Portkey 1.15.2 binds every interface, not only loopback. */
  port: number;
  /** Upstream OpenAI base URL including `/v1`, such as `http://127.0.0.1:40123/v1`. */
  upstreamUrl: string;
  /** Model id that clients request. Portkey passes it through unchanged. */
  model: string;
  /** Bearer token that Portkey forwards to the upstream (default `sk-bench-upstream`). */
  upstreamApiKey?: string;
  /**
   * Request headers that Portkey copies to the upstream, such as the simulator's
   * `x-sim-*` controls. Portkey drops any header not listed here.
   */
  forwardHeaders?: readonly string[];
  /** Milliseconds to wait for readiness (default 60 000). */
  readyTimeoutMs?: number;
  /** File for the gateway's output (default in the system temporary folder). */
  logFile?: string;
}

/** Path of the gateway's Node entry point inside the peers cache. */
export function portkeyEntryPoint(): string {
  return join(peersCacheDir(), 'portkey', 'node_modules', '@portkey-ai', 'gateway', 'build', 'start-server.js');
}

/** Headers that route a request through Portkey to an OpenAI-compatible upstream. */
export function portkeyHeaders(upstreamUrl: string, upstreamApiKey: string, forwardHeaders: readonly string[]): Record<string, string> {
  const url = new URL(upstreamUrl);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`invalid upstreamUrl "${upstreamUrl}": expected an http or https URL`);
  }
  const headers: Record<string, string> = {
    'x-portkey-provider': 'openai',
    'x-portkey-custom-host': upstreamUrl.replace(/\/+$/, ''),
    authorization: `Bearer ${upstreamApiKey}`,
  };
  if (forwardHeaders.length > 0) headers['x-portkey-forward-headers'] = forwardHeaders.join(',');
  return headers;
}

/**
 * Starts the gateway with Node (the one running this module), waits until it
 * responds, and returns the URL and headers a client must use.
 */
export async function startPortkey(options: PortkeyOptions): Promise<PeerGateway> {
  const entryPoint = portkeyEntryPoint();
  if (!existsSync(entryPoint)) {
    throw new Error(`Portkey gateway not found at ${entryPoint}: run bench/peers/install.sh first`);
  }
  const headers = portkeyHeaders(options.upstreamUrl, options.upstreamApiKey ?? 'sk-bench-upstream', options.forwardHeaders ?? []);
  await assertPortFree(options.port);

  const env: NodeJS.ProcessEnv = { ...process.env, NODE_ENV: 'production' };
  // A Redis connection string turns on Portkey's Redis cache backend; the benchmark runs it without one.
  delete env['REDIS_CONNECTION_STRING'];
  delete env['PORT'];

  const logFile = options.logFile ?? defaultLogFile('portkey', options.port);
  const launched = await launch({
    name: 'portkey',
    command: process.execPath,
    // --headless drops the log viewer UI and its /log/stream endpoint.
    args: [entryPoint, `--port=${options.port}`, '--headless'],
    env,
    cwd: join(peersCacheDir(), 'portkey'),
    logFile,
    readyUrl: `http://127.0.0.1:${options.port}/`,
    readyTimeoutMs: options.readyTimeoutMs ?? 60_000,
  });

  return {
    name: 'portkey',
    url: `http://127.0.0.1:${options.port}/v1`,
    headers,
    model: options.model,
    pid: launched.pid,
    startupMs: launched.startupMs,
    logFile,
    rssBytes: launched.rssBytes,
    stop: launched.stop,
  };
}
