import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { anthropicProvider, messagesEndpoint } from './anthropic.ts';
import { azureProvider, createAzureEndpoints, isAzurePath, looksLikeAzurePath } from './azure.ts';
import { InvalidControlError, readControls, type Controls } from './controls.ts';
import { geminiEndpointFor, geminiProvider, looksLikeGeminiPath } from './gemini.ts';
import { modelsEndpointFor, type ModelsEndpoint } from './models.ts';
import { chatCompletionsEndpoint, embeddingsEndpoint, openaiProvider } from './openai.ts';
import type { SimEndpoint, SimProvider, SimResponse } from './response.ts';
import { responsesEndpoint } from './responses.ts';

export interface SimulatorOptions {
  /** Port to listen on. The default, 0, picks a free one. */
  port?: number;
  /** Address to listen on (default 127.0.0.1). */
  host?: string;
  /**
   * The only credential accepted. When unset, any non-empty credential is
   * accepted. A request without one is rejected either way.
   */
  expectedKey?: string;
  /**
   * Azure OpenAI deployments served, by name, with the model each runs. A
   * request for another deployment gets Azure's 404 DeploymentNotFound. When
   * unset, every deployment is served.
   */
  azureDeployments?: Readonly<Record<string, string>>;
}

export interface SimulatorStats {
  /** Requests received, whether served, rejected or cut. */
  requests: number;
  /** Requests rejected with 401 for a missing or wrong credential. */
  unauthorized: number;
  /**
   * Requests received per endpoint, with GET and HEAD of the models endpoints
   * under `models` and unserved paths and methods under `other`.
   */
  byEndpoint: Record<SimEndpoint['name'] | 'models' | 'other', number>;
  /** Parsed body of the latest authorized request, or undefined when it was a models request, which has no body. */
  lastRequest: Record<string, unknown> | undefined;
  /**
   * Credential of the latest authorized request, so a test can check which key
   * a proxy added. It is the simulator's own test key, never a provider's.
   */
  lastCredential: string | undefined;
  /** Headers of the latest authorized request, with credential values replaced by `<redacted>`. */
  lastHeaders: Record<string, string> | undefined;
  /** Path and query string of the latest authorized request, as received. */
  lastUrl: string | undefined;
}

export interface Simulator {
  /** Base URL, such as `http://127.0.0.1:40123`. OpenAI clients append `/v1`. */
  readonly url: string;
  /** Returns a copy of this simulator's counters. */
  stats(): SimulatorStats;
  resetStats(): void;
  /** Stops listening and closes every open connection. */
  close(): Promise<void>;
}

const MAX_BODY_BYTES = 32 * 1024 * 1024;
const CREDENTIAL_HEADERS = new Set(['authorization', 'x-api-key', 'api-key', 'x-goog-api-key']);

function emptyStats(): SimulatorStats {
  return {
    requests: 0,
    unauthorized: 0,
    byEndpoint: { chat: 0, responses: 0, embeddings: 0, messages: 0, generateContent: 0, embedContent: 0, models: 0, other: 0 },
    lastRequest: undefined,
    lastCredential: undefined,
    lastHeaders: undefined,
    lastUrl: undefined,
  };
}

/** Counters of every simulator started in this process, for `stats()` in index.ts. */
export const processStats: SimulatorStats = emptyStats();

/**
 * Finds the endpoint of a request by its method and whole path, as each
 * provider serves them from its API root. Every endpoint takes POST only,
 * and modelsEndpointFor finds the GET and HEAD endpoints.
 * A path with an extra prefix, a missing `/v1` or a trailing slash matches
 * none, because the real provider rejects it with 404.
 */
function endpointFor(method: string | undefined, path: string, azure: ReturnType<typeof createAzureEndpoints>): SimEndpoint | undefined {
  // NOTE: The providers serve more than the simulator, such as OpenAI's list of stored
  // completions on GET /v1/chat/completions and Anthropic's /v1/messages/count_tokens.
  // Those requests get the same 404 here, which a real provider would not send.
  if (method !== 'POST') return undefined;

  switch (path) {
    case '/v1/chat/completions':
      return chatCompletionsEndpoint;
    case '/v1/responses':
      return responsesEndpoint;
    case '/v1/embeddings':
      return embeddingsEndpoint;
    case '/v1/messages':
      return messagesEndpoint;
  }
  if (isAzurePath(path)) return path.endsWith('/embeddings') ? azure.embeddings : azure.chat;
  return geminiEndpointFor(path);
}

/** Starts a provider simulator that speaks the OpenAI, Azure OpenAI, Anthropic and Gemini wire formats. */
export async function startSimulator(options: SimulatorOptions = {}): Promise<Simulator> {
  let stats = emptyStats();
  let sequence = 0;
  const azure = createAzureEndpoints(options.azureDeployments);

  const server = createServer((request, response) => {
    const id = `sim${(++sequence).toString().padStart(8, '0')}`;
    handle(request, response, id).catch((error: unknown) => {
      // A failure here is a simulator bug, so respond with 500 rather than leave the client waiting.
      console.error(`provider simulator failed on request ${id}:`, error);
      if (!response.headersSent) {
        response.writeHead(500, { 'content-type': 'application/json' });
        response.end(JSON.stringify({ error: { message: `simulator failed: ${(error as Error).message}`, type: 'server_error' } }));
      } else {
        response.destroy();
      }
    });
  });

  async function handle(request: IncomingMessage, response: ServerResponse, id: string): Promise<void> {
    // Joined as text, so a path that starts with // stays a path.
    const url = new URL(`http://simulator${request.url ?? '/'}`);
    const path = url.pathname;
    const models = modelsEndpointFor(request.method, path, request.headers, url, options.azureDeployments);
    if (models !== undefined) return handleModels(request, response, id, url, models);

    const endpoint = endpointFor(request.method, path, azure);
    count(stats, endpoint?.name);
    count(processStats, endpoint?.name);

    if (endpoint === undefined) {
      await readBody(request);
      const provider = providerForUnserved(path, request.headers, url);
      const message = provider.notFoundMessage(request.method ?? 'GET', path);
      return sendJson(response, 404, provider, provider.errorBody(404, message, id), id);
    }
    const provider = endpoint.provider;

    const credential = await authenticate(request, response, provider, url, id);
    if (credential === undefined) return;

    const raw = await readBody(request);
    if (raw === undefined) return sendJson(response, 413, provider, provider.errorBody(413, `request body exceeds ${MAX_BODY_BYTES} bytes`, id), id);
    let body: unknown;
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch {
      return sendJson(response, 400, provider, provider.errorBody(400, 'request body is not valid JSON', id), id);
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      return sendJson(response, 400, provider, provider.errorBody(400, 'request body must be a JSON object', id), id);
    }
    record(stats, request, body as Record<string, unknown>, credential);
    record(processStats, request, body as Record<string, unknown>, credential);

    const controls = await applyControls(request, response, provider, id);
    if (controls === undefined) return;

    const result = endpoint.respond(body as Record<string, unknown>, controls, id, url);
    await send(response, result, controls, provider, id);
  }

  /** Serves a GET or HEAD of a models endpoint, which has no body to read. */
  async function handleModels(request: IncomingMessage, response: ServerResponse, id: string, url: URL, models: ModelsEndpoint): Promise<void> {
    count(stats, 'models');
    count(processStats, 'models');
    const provider = models.provider;

    const credential = await authenticate(request, response, provider, url, id);
    if (credential === undefined) return;
    await readBody(request);
    record(stats, request, undefined, credential);
    record(processStats, request, undefined, credential);

    const controls = await applyControls(request, response, provider, id);
    if (controls === undefined) return;
    const result = models.respond(url, id);
    if (result.kind !== 'json') throw new Error('a models endpoint returned a stream');
    sendJson(response, result.status, provider, result.body, id);
  }

  /**
   * Returns the request's credential, or sends the provider's 401 and returns
   * undefined when it is missing or is not `expectedKey`.
   */
  async function authenticate(request: IncomingMessage, response: ServerResponse, provider: SimProvider, url: URL, id: string): Promise<string | undefined> {
    const credential = provider.credential(request.headers, url);
    if (credential !== undefined && (options.expectedKey === undefined || credential === options.expectedKey)) return credential;

    stats.unauthorized++;
    processStats.unauthorized++;
    await readBody(request);
    const message = credential === undefined ? 'missing API key' : 'invalid API key';
    sendJson(response, 401, provider, provider.errorBody(401, message, id), id);
    return undefined;
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });

  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    url: `http://${host}:${address.port}`,
    stats: () => structuredClone(stats),
    resetStats: () => {
      stats = emptyStats();
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}

/**
 * Guesses which provider a request that no endpoint serves was meant for, so
 * that its 404 comes in the format that provider's SDK reads. Headers that
 * only one provider's SDK sends decide first, then the shape of the path.
 * Anything else gets OpenAI's format.
 */
function providerForUnserved(path: string, headers: IncomingHttpHeaders, url: URL): SimProvider {
  if (headers['anthropic-version'] !== undefined || headers['x-api-key'] !== undefined) return anthropicProvider;
  if (headers['x-goog-api-key'] !== undefined || url.searchParams.has('key') || looksLikeGeminiPath(path)) return geminiProvider;
  if (headers['api-key'] !== undefined || looksLikeAzurePath(path)) return azureProvider;
  if (path.endsWith('/messages')) return anthropicProvider;
  return openaiProvider;
}

function count(stats: SimulatorStats, endpoint: keyof SimulatorStats['byEndpoint'] | undefined): void {
  stats.requests++;
  stats.byEndpoint[endpoint ?? 'other']++;
}

/**
 * Reads the request's controls and applies its latency and error status.
 * Returns undefined once it has sent a response (an invalid control or the
 * simulated error) or the client has gone.
 */
async function applyControls(request: IncomingMessage, response: ServerResponse, provider: SimProvider, id: string): Promise<Controls | undefined> {
  let controls: Controls;
  try {
    controls = readControls(request.headers);
  } catch (error) {
    if (!(error instanceof InvalidControlError)) throw error;
    sendJson(response, 400, provider, provider.errorBody(400, error.message, id), id);
    return undefined;
  }

  if (controls.latencyMs > 0) {
    await sleep(controls.latencyMs);
    if (response.destroyed) return undefined;
  }
  if (controls.status !== undefined) {
    sendJson(response, controls.status, provider, provider.errorBody(controls.status, `simulated failure with status ${controls.status}`, id), id);
    return undefined;
  }
  return controls;
}

function record(stats: SimulatorStats, request: IncomingMessage, body: Record<string, unknown> | undefined, credential: string): void {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(request.headers)) {
    if (value === undefined) continue;
    headers[name] = CREDENTIAL_HEADERS.has(name) ? '<redacted>' : Array.isArray(value) ? value.join(', ') : value;
  }
  stats.lastRequest = body;
  stats.lastCredential = credential;
  stats.lastHeaders = headers;
  stats.lastUrl = request.url;
}

/** Reads the whole request body, or returns undefined when it exceeds MAX_BODY_BYTES. */
async function readBody(request: IncomingMessage): Promise<Buffer | undefined> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of request) {
    size += (part as Buffer).length;
    if (size > MAX_BODY_BYTES) {
      request.resume();
      return undefined;
    }
    parts.push(part as Buffer);
  }
  return Buffer.concat(parts);
}

function sendJson(response: ServerResponse, status: number, provider: SimProvider, body: unknown, id: string): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    [provider.requestIdHeader]: `req_${id}`,
  });
  response.end(text);
}

async function send(response: ServerResponse, result: SimResponse, controls: Controls, provider: SimProvider, id: string): Promise<void> {
  if (result.kind === 'json') {
    // A cut before any content chunk: the connection closes without a response.
    if (controls.cutAfter !== undefined && result.status === 200) {
      response.socket?.destroy();
      return;
    }
    return sendJson(response, result.status, provider, result.body, id);
  }

  response.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    [provider.requestIdHeader]: `req_${id}`,
  });

  if (controls.chunkDelayMs === 0 && controls.cutAfter === undefined) {
    let text = '';
    for (const event of result.events) text += event.text;
    response.end(text);
    return;
  }

  let sent = 0;
  for (const event of result.events) {
    if (event.content) {
      if (controls.cutAfter !== undefined && sent >= controls.cutAfter) {
        await cut(response);
        return;
      }
      if (sent > 0 && controls.chunkDelayMs > 0) await sleep(controls.chunkDelayMs);
      if (response.destroyed) return;
      sent++;
    }
    response.write(event.text);
  }
  response.end();
}

/** Destroys the connection once the bytes written so far have reached the socket. */
async function cut(response: ServerResponse): Promise<void> {
  await new Promise<void>((resolve) => response.write('', () => resolve()));
  response.socket?.destroy();
}
