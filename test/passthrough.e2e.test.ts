/**
 * What the sidecar forwards without billing, and what it rejects before
 * reading a body. The official openai, @anthropic-ai/sdk and @google/genai
 * clients call a real sidecar on a Redis ledger. GET and HEAD go to stand-in
 * upstreams that serve models lists and record every request they receive,
 * so a test can tell exactly which requests reached the provider with the
 * sidecar's key. Metered POST requests go to the provider simulator.
 */
import Anthropic from '@anthropic-ai/sdk';
import { ApiError, GoogleGenAI } from '@google/genai';
import OpenAI, { AzureOpenAI, toFile } from 'openai';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

/** The provider key of the stand-in upstreams' routes, which only the sidecar holds. */
const PROVIDER_KEY = 'sk-platform-shared-key';

interface RecordedRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

interface Recorder {
  url: string;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

/**
 * Starts a loopback upstream that records every request and responds with
 * 200 and the JSON that `respond` returns for a method and path, or with 404
 * where it returns undefined.
 */
async function startRecorder(respond: (method: string, path: string) => unknown): Promise<Recorder> {
  const requests: RecordedRequest[] = [];
  const server: Server = createServer((incoming, response) => {
    incoming.resume();
    const url = incoming.url ?? '/';
    const method = incoming.method ?? 'GET';
    requests.push({ method, url, headers: incoming.headers });
    const body = respond(method, url.split('?')[0]!);
    const text = JSON.stringify(body ?? { error: { message: `no stand-in for ${method} ${url}` } });
    response.writeHead(body === undefined ? 404 : 200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    response.end(method === 'HEAD' ? undefined : text);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Returns OpenAI's models list and model object for `/v1/models` and `/v1/models/{model}`, under any base path. */
function openaiModels(method: string, path: string): unknown {
  if (method !== 'GET' && method !== 'HEAD') return undefined;
  if (path.endsWith('/v1/models')) return { object: 'list', data: [{ id: 'gpt-4o-mini', object: 'model', created: 1721172741, owned_by: 'system' }] };
  const model = /\/v1\/models\/([^/]+)$/.exec(path);
  if (model !== null) return { id: decodeURIComponent(model[1]!), object: 'model', created: 1721172741, owned_by: 'acme' };
  return undefined;
}

function anthropicModels(method: string, path: string): unknown {
  const model = { type: 'model', id: 'claude-sonnet-4-5', display_name: 'Claude Sonnet 4.5', created_at: '2025-09-29T00:00:00Z' };
  if (method !== 'GET') return undefined;
  if (path === '/v1/models') return { data: [model], has_more: false, first_id: model.id, last_id: model.id };
  if (path === '/v1/models/claude-sonnet-4-5') return model;
  return undefined;
}

function geminiModels(method: string, path: string): unknown {
  const model = { name: 'models/gemini-2.5-flash', displayName: 'Gemini 2.5 Flash', inputTokenLimit: 1048576, outputTokenLimit: 65536 };
  if (method !== 'GET') return undefined;
  // @google/genai 3.3 calls the Gemini API's v1 by default, and v1beta when its apiVersion option sets it.
  if (path === '/v1/models' || path === '/v1beta/models') return { models: [model] };
  if (path === '/v1/models/gemini-2.5-flash' || path === '/v1beta/models/gemini-2.5-flash') return model;
  return undefined;
}

function azureModels(method: string, path: string): unknown {
  if (method !== 'GET') return undefined;
  if (path === '/openai/models' || path === '/openai/v1/models') return { object: 'list', data: [{ id: 'gpt-4o', object: 'model', created: 1715558400 }] };
  return undefined;
}

/** Largest request body the test sidecar reads, kept small so that a test can send a body over it. */
const BODY_LIMIT = 64 * 1024;

let stack: Stack;
let recorders: Record<'openai' | 'anthropic' | 'gemini' | 'azure', Recorder>;
const logLines: Record<string, unknown>[] = [];

function manifests(): string {
  const route = (name: string, protocol: string, baseURL: string, extra = '') => `---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: ${name} }
spec:
  protocol: ${protocol}
  baseURL: ${baseURL}
  credentialSecretRef: { name: shared, key: apiKey }
  models: [gpt-4o-mini]${extra}
`;
  return `
apiVersion: v1
kind: Secret
metadata: { name: sim }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: v1
kind: Secret
metadata: { name: shared }
stringData: { apiKey: ${PROVIDER_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai }
spec:
  protocol: openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: sim, key: apiKey }
  models: [gpt-4o-mini]
${route('listed', 'openai', recorders.openai.url)}${route('compatible', 'openai-compatible', `${recorders.openai.url}/openai`)}${route('anthropic', 'anthropic', recorders.anthropic.url)}${route('gemini', 'gemini', recorders.gemini.url)}${route(
    'azure',
    'azure-openai',
    recorders.azure.url,
    '\n  deployments: [{ name: prod-4o, model: gpt-4o-mini }]',
  )}---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: plan }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gpt-4o-mini: { input: "1", output: "2" }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: team }
spec:
  currency: USD
  pricePlanRef: { name: plan }
  grants: [{ id: start, amount: "1.00" }]
`;
}

beforeAll(async () => {
  recorders = {
    openai: await startRecorder(openaiModels),
    anthropic: await startRecorder(anthropicModels),
    gemini: await startRecorder(geminiModels),
    azure: await startRecorder(azureModels),
  };
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') logLines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  stack = await startStack(manifests(), { bodyLimit: BODY_LIMIT, walletPolicy: { defaultWallet: 'default/team', allowWalletHeader: false } }, pino({ level: 'debug' }, sink));
});

afterAll(async () => {
  await stack?.close();
  for (const recorder of Object.values(recorders ?? {})) await recorder.close();
});

beforeEach(() => {
  for (const recorder of Object.values(recorders)) recorder.requests.length = 0;
  logLines.length = 0;
});

/** Returns the method and URL of each request a stand-in upstream received. */
function received(recorder: Recorder): string[] {
  return recorder.requests.map(({ method, url }) => `${method} ${url}`);
}

async function requestCounters(): Promise<Record<string, number>> {
  const text = await (await fetch(`${stack.url}/metrics`)).text();
  const counters: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (!line.startsWith('tollgate_requests_total{')) continue;
    const space = line.lastIndexOf(' ');
    counters[line.slice(0, space)] = Number(line.slice(space + 1));
  }
  return counters;
}

/** Runs a call and returns how much each tollgate_requests_total series grew, leaving out the ones that did not. */
async function countsOf(call: () => Promise<unknown>): Promise<Record<string, number>> {
  const before = await requestCounters();
  await call();
  const after = await requestCounters();
  return Object.fromEntries(
    Object.entries(after)
      .map(([series, value]) => [series, value - (before[series] ?? 0)] as const)
      .filter(([, grown]) => grown !== 0),
  );
}

function series(route: string, outcome: string): string {
  return `tollgate_requests_total{route="${route}",model="unknown",outcome="${outcome}"}`;
}

async function send(method: string, path: string, headers: Record<string, string> = {}, body?: string) {
  const response = await request(`${stack.url}${path}`, { method: method as 'GET', headers, body });
  return { status: response.statusCode, headers: response.headers, text: await response.body.text() };
}

/** Returns the error a promise rejects with, or fails the test when it resolves. */
async function rejectionOf<T extends Error>(promise: Promise<unknown>): Promise<T> {
  return promise.then(
    () => expect.fail('the call succeeded, but it should have been rejected'),
    (error: unknown) => error as T,
  );
}

const OPENAI_SERVED =
  'this route meters POST to /v1/chat/completions, /v1/responses and /v1/embeddings, and forwards GET and HEAD without billing only to /v1/models and /v1/models/{model}';

function openaiAt(prefix: string): OpenAI {
  return new OpenAI({ baseURL: `${stack.url}/${prefix}/v1`, apiKey: 'tenant-key', maxRetries: 0 });
}

describe('models endpoints without billing', () => {
  it('forwards OpenAI models list and model', async () => {
    const client = openaiAt('listed');
    let models: string[] = [];
    const counts = await countsOf(async () => {
      models = (await client.models.list()).data.map((model) => model.id);
    });
    const fineTuned = await client.models.retrieve('ft:gpt-4o-mini:acme::abc123');

    expect(models).toEqual(['gpt-4o-mini']);
    expect(fineTuned.id).toBe('ft:gpt-4o-mini:acme::abc123');
    expect(counts).toEqual({ [series('listed', 'passthrough')]: 1 });
    expect(received(recorders.openai)).toEqual(['GET /v1/models', 'GET /v1/models/ft:gpt-4o-mini:acme::abc123']);
    for (const { headers } of recorders.openai.requests) expect(headers['authorization']).toBe(`Bearer ${PROVIDER_KEY}`);
  });

  it('rejects other OpenAI GET endpoints', async () => {
    const client = openaiAt('listed');
    let error: InstanceType<typeof OpenAI.NotFoundError> | undefined;
    const counts = await countsOf(async () => {
      error = await rejectionOf<InstanceType<typeof OpenAI.NotFoundError>>(client.responses.retrieve('resp_123'));
    });

    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    expect(error?.code).toBe('unsupported_endpoint');
    expect(error?.error).toEqual({
      message: `unsupported endpoint GET /v1/responses/resp_123: ${OPENAI_SERVED}`,
      type: 'invalid_request_error',
      code: 'unsupported_endpoint',
      param: null,
    });
    expect(counts).toEqual({ [series('listed', 'invalid')]: 1 });

    for (const call of [() => client.files.list(), () => client.batches.list(), () => client.fineTuning.jobs.list(), () => client.chat.completions.list()]) {
      const rejected = await rejectionOf<InstanceType<typeof OpenAI.APIError>>(call());
      expect(rejected.status).toBe(404);
      expect(rejected.code).toBe('unsupported_endpoint');
    }
    expect(received(recorders.openai)).toEqual([]);
  });

  it('logs a pass-through at debug and a rejection at info', async () => {
    await openaiAt('listed').models.list();
    await rejectionOf(openaiAt('listed').files.list());

    const forwarded = logLines.filter((line) => line['msg'] === 'forwarded without billing');
    expect(forwarded).toHaveLength(1);
    expect(forwarded[0]).toMatchObject({ level: 20, route: 'listed', method: 'GET', path: '/listed/v1/models', status: 200, outcome: 'passthrough' });
    const rejected = logLines.filter((line) => line['msg'] === 'request rejected');
    expect(rejected).toHaveLength(1);
    expect(rejected[0]).toMatchObject({ level: 30, route: 'listed', status: 404, code: 'unsupported_endpoint', reason: `unsupported endpoint GET /v1/files: ${OPENAI_SERVED}` });
  });

  it('forwards HEAD only to models endpoints', async () => {
    const models = await send('HEAD', '/listed/v1/models');
    const responses = await send('HEAD', '/listed/v1/responses/resp_123');

    expect(models.status).toBe(200);
    expect(responses.status).toBe(404);
    expect(received(recorders.openai)).toEqual(['HEAD /v1/models']);
  });

  it('anchors models paths at the base path', async () => {
    const listed = await send('GET', '/compatible/v1/models');
    const smuggled = await send('GET', '/compatible/v1/files/file-1/content/v1/models');

    expect(listed.status).toBe(200);
    expect(JSON.parse(listed.text).data[0].id).toBe('gpt-4o-mini');
    expect(smuggled.status).toBe(404);
    expect(JSON.parse(smuggled.text).error.message).toBe(`unsupported endpoint GET /openai/v1/files/file-1/content/v1/models: ${OPENAI_SERVED}`);
    expect(received(recorders.openai)).toEqual(['GET /openai/v1/models']);
  });

  it('forwards Anthropic models list and model', async () => {
    const client = new Anthropic({ baseURL: `${stack.url}/anthropic`, apiKey: 'tenant-key', maxRetries: 0 });
    const listed = await client.models.list();
    const model = await client.models.retrieve('claude-sonnet-4-5');
    const batches = await rejectionOf<InstanceType<typeof Anthropic.NotFoundError>>(client.messages.batches.list());

    expect(listed.data.map((entry) => entry.id)).toEqual(['claude-sonnet-4-5']);
    expect(model.display_name).toBe('Claude Sonnet 4.5');
    expect(batches).toBeInstanceOf(Anthropic.NotFoundError);
    expect(batches.error).toEqual({
      type: 'error',
      error: {
        type: 'not_found_error',
        message:
          'unsupported endpoint GET /v1/messages/batches: this route meters POST to /v1/messages, and forwards GET and HEAD without billing only to /v1/models and /v1/models/{model_id}',
        details: { error_code: 'unsupported_endpoint' },
      },
      request_id: null,
    });
    expect(received(recorders.anthropic)).toEqual(['GET /v1/models', 'GET /v1/models/claude-sonnet-4-5']);
    for (const { headers } of recorders.anthropic.requests) expect(headers['x-api-key']).toBe(PROVIDER_KEY);
  });

  it('forwards Gemini models list and model', async () => {
    const ai = new GoogleGenAI({ apiKey: 'tenant-key', httpOptions: { baseUrl: `${stack.url}/gemini`, retryOptions: { attempts: 1 } } });
    const names: string[] = [];
    for await (const model of await ai.models.list()) names.push(model.name ?? '');
    const model = await ai.models.get({ model: 'gemini-2.5-flash' });
    const files = await rejectionOf<ApiError>(ai.files.list());

    expect(names).toEqual(['models/gemini-2.5-flash']);
    expect(model.displayName).toBe('Gemini 2.5 Flash');
    expect(files).toBeInstanceOf(ApiError);
    expect(files.status).toBe(404);
    expect(JSON.parse(files.message).error).toEqual({
      code: 404,
      message:
        'unsupported endpoint GET /v1/files: this route meters POST to /v1beta/models/{model}:generateContent, :streamGenerateContent?alt=sse, :embedContent and :batchEmbedContents, ' +
        'and forwards GET and HEAD without billing only to /v1beta/models and /v1beta/models/{model} (also under /v1 and /v1alpha)',
      status: 'NOT_FOUND',
      details: [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', domain: 'tollgate.dev', reason: 'UNSUPPORTED_ENDPOINT' }],
    });
    expect(received(recorders.gemini).map((line) => line.split('?')[0])).toEqual(['GET /v1/models', 'GET /v1/models/gemini-2.5-flash']);
    for (const { headers } of recorders.gemini.requests) expect(headers['x-goog-api-key']).toBe(PROVIDER_KEY);
  });

  it('rejects Gemini methods, tuned models and keys in logs', async () => {
    const method = await send('GET', '/gemini/v1beta/models/gemini-2.5-flash:generateContent');
    const tuned = await send('GET', '/gemini/v1beta/tunedModels');
    const keyed = await send('GET', '/gemini/v1beta/models?key=tenant-key&pageSize=5');

    expect(method.status).toBe(404);
    expect(tuned.status).toBe(404);
    expect(keyed.status).toBe(200);
    expect(received(recorders.gemini)).toEqual(['GET /v1beta/models?pageSize=5']);
    expect(JSON.stringify(logLines)).not.toContain('tenant-key');
  });

  it('forwards Azure models lists', async () => {
    const azure = new AzureOpenAI({ endpoint: `${stack.url}/azure`, apiKey: 'tenant-key', apiVersion: '2024-10-21', maxRetries: 0 });
    const v1 = new OpenAI({ baseURL: `${stack.url}/azure/openai/v1`, apiKey: 'tenant-key', maxRetries: 0 });
    const scoped = await azure.models.list();
    const plain = await v1.models.list();
    const files = await rejectionOf<InstanceType<typeof OpenAI.APIError>>(azure.files.list());

    expect(scoped.data.map((model) => model.id)).toEqual(['gpt-4o']);
    expect(plain.data.map((model) => model.id)).toEqual(['gpt-4o']);
    expect(files.status).toBe(404);
    expect(received(recorders.azure)).toEqual(['GET /openai/models?api-version=2024-10-21', 'GET /openai/v1/models']);
    for (const { headers } of recorders.azure.requests) expect(headers['api-key']).toBe(PROVIDER_KEY);
  });
});

describe('methods other than GET, HEAD and POST', () => {
  it('rejects PUT on a metered endpoint with 405', async () => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 });
    const before = await stack.ledger.state({ namespace: 'default', name: 'team' });
    const chatsBefore = stack.simulator.stats().byEndpoint.chat;
    let result: Awaited<ReturnType<typeof send>> | undefined;
    const counts = await countsOf(async () => {
      result = await send('PUT', '/openai/v1/chat/completions', { 'content-type': 'application/json' }, body);
    });

    expect(result?.status).toBe(405);
    expect(result?.headers['allow']).toBe('POST');
    expect(JSON.parse(result!.text).error).toEqual({
      message: `PUT is not allowed on /openai/v1/chat/completions: ${OPENAI_SERVED}`,
      type: 'invalid_request_error',
      code: 'method_not_allowed',
      param: null,
    });
    expect(counts).toEqual({ [series('openai', 'invalid')]: 1 });
    expect(stack.simulator.stats().byEndpoint.chat).toBe(chatsBefore);
    expect((await stack.ledger.state({ namespace: 'default', name: 'team' })).spent).toBe(before.spent);
  });

  it('rejects DELETE of a model with 405', async () => {
    const error = await rejectionOf<InstanceType<typeof OpenAI.APIError>>(openaiAt('listed').models.delete('ft:gpt-4o-mini:acme::abc123'));

    expect(error.status).toBe(405);
    expect(error.headers?.get('allow')).toBe('GET, HEAD');
    expect(error.code).toBe('method_not_allowed');
    expect(received(recorders.openai)).toEqual([]);
  });

  it('rejects DELETE of a response as an unknown endpoint', async () => {
    const result = await send('DELETE', '/openai/v1/responses/resp_123');

    // The route serves no method on this path, so it is unknown rather than a wrong method.
    expect(result.status).toBe(404);
    expect(result.headers['allow']).toBeUndefined();
    expect(JSON.parse(result.text).error.message).toBe(`unsupported endpoint DELETE /v1/responses/resp_123: ${OPENAI_SERVED}`);
    expect(received(recorders.openai)).toEqual([]);
  });

  it('rejects before reading the body', async () => {
    // A body over the limit would get a 413 if the sidecar read it.
    const result = await send('PATCH', '/anthropic/v1/messages', { 'content-type': 'application/json' }, 'x'.repeat(BODY_LIMIT * 2));

    expect(result.status).toBe(405);
    expect(result.headers['allow']).toBe('POST');
    expect(JSON.parse(result.text)).toMatchObject({ type: 'error', error: { type: 'invalid_request_error', details: { error_code: 'method_not_allowed' } } });
  });
});

describe('Responses API input items', () => {
  it('rejects an item reference without a type', async () => {
    const client = openaiAt('openai');
    const before = await stack.ledger.state({ namespace: 'default', name: 'team' });
    const responsesBefore = stack.simulator.stats().byEndpoint.responses;
    // The openai package's types allow an item reference without `type`.
    const error = await rejectionOf<InstanceType<typeof OpenAI.BadRequestError>>(client.responses.create({ model: 'gpt-4o-mini', input: [{ id: 'msg_123' }] }));

    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect(error.error).toEqual({
      message:
        'unsupported input item 0 without "type" and "role": the provider reads it as an item_reference and adds the stored item it names, ' +
        'which the sidecar cannot see or price; send the item itself in "input", with its "type" (or its "role" for a message)',
      type: 'invalid_request_error',
      code: 'unsupported_parameter',
      param: 'input[0]',
    });
    expect(stack.simulator.stats().byEndpoint.responses).toBe(responsesBefore);
    expect((await stack.ledger.state({ namespace: 'default', name: 'team' })).spent).toBe(before.spent);
  });

  it('bills a message without a type', async () => {
    const response = await openaiAt('openai').responses.create({ model: 'gpt-4o-mini', input: [{ role: 'user', content: 'hi' }], max_output_tokens: 16 });

    expect(response.status).toBe('completed');
    expect(stack.simulator.stats().lastRequest?.['input']).toEqual([{ role: 'user', content: 'hi' }]);
  });

  it('names the field of an unsupported parameter', async () => {
    const error = await rejectionOf<InstanceType<typeof OpenAI.BadRequestError>>(
      openaiAt('openai').responses.create({ model: 'gpt-4o-mini', input: 'hi', previous_response_id: 'resp_1' }),
    );

    expect(error.param).toBe('previous_response_id');
    expect(error.code).toBe('unsupported_parameter');
  });
});

describe('content types', () => {
  const UPLOAD_MESSAGE =
    'the request body is multipart/form-data, but this route takes only JSON bodies, on the endpoints it meters (/v1/chat/completions, /v1/responses and /v1/embeddings). ' +
    'The sidecar does not forward uploads such as files or audio; send a JSON object with content-type: application/json';

  it('rejects an audio upload naming uploads', async () => {
    const file = await toFile(Buffer.from('RIFF0000WAVE'), 'speech.wav', { type: 'audio/wav' });
    const error = await rejectionOf<InstanceType<typeof OpenAI.APIError>>(openaiAt('openai').audio.transcriptions.create({ file, model: 'whisper-1' }));

    expect(error.status).toBe(415);
    expect(error.error).toEqual({ message: UPLOAD_MESSAGE, type: 'invalid_request_error', code: 'unsupported_media_type', param: null });
  });

  it('rejects a multipart chat body', async () => {
    const form = new FormData();
    form.append('model', 'gpt-4o-mini');
    const chatsBefore = stack.simulator.stats().byEndpoint.chat;
    const response = await fetch(`${stack.url}/openai/v1/chat/completions`, { method: 'POST', body: form });

    expect(response.status).toBe(415);
    expect(((await response.json()) as { error: { message: string } }).error.message).toBe(UPLOAD_MESSAGE);
    expect(stack.simulator.stats().byEndpoint.chat).toBe(chatsBefore);
  });

  it('accepts JSON under another content type', async () => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 });
    for (const contentType of ['application/x-www-form-urlencoded', 'text/plain;charset=UTF-8', 'application/octet-stream']) {
      const result = await send('POST', '/openai/v1/chat/completions', { 'content-type': contentType }, body);
      expect(result.status, contentType).toBe(200);
    }
    const bare = await send('POST', '/openai/v1/chat/completions', {}, body);
    expect(bare.status).toBe(200);
  });
});
