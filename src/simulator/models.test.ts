/**
 * The simulator's models endpoints, called by the official `openai`,
 * `@anthropic-ai/sdk` and `@google/genai` clients and, for HEAD, errors
 * and paging, by raw HTTP.
 */
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import OpenAI, { AzureOpenAI } from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from './index.ts';

const KEY = 'sim-models-key';
const API_VERSION = '2024-10-21';

const OPENAI_IDS = ['gpt-4o', 'gpt-4o-mini', 'gpt-4.1', 'o4-mini', 'text-embedding-3-small'];

/** 2024-07-18T00:00:00Z in Unix seconds. */
const GPT_4O_MINI_CREATED = 1_721_260_800;

let sim: Simulator;
let azureSim: Simulator;

beforeAll(async () => {
  sim = await startSimulator({ expectedKey: KEY });
  azureSim = await startSimulator({ expectedKey: KEY, azureDeployments: { 'prod-4o': 'gpt-4o-2024-11-20', embedder: 'text-embedding-3-small' } });
});

afterAll(async () => {
  await sim.close();
  await azureSim.close();
});

beforeEach(() => {
  sim.resetStats();
  azureSim.resetStats();
});

interface RawResponse {
  status: number;
  headers: Headers;
  text: string;
}

async function send(method: string, url: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  const response = await fetch(url, { method, headers });
  return { status: response.status, headers: response.headers, text: await response.text() };
}

/** Returns the error a promise rejects with, or fails the test when it resolves. */
async function rejectionOf<T>(promise: Promise<unknown>): Promise<T> {
  return promise.then(
    () => expect.fail('the call succeeded, but it should have been rejected'),
    (error: unknown) => error as T,
  );
}

describe('simulator models: OpenAI', () => {
  const client = () => new OpenAI({ apiKey: KEY, baseURL: `${sim.url}/v1`, maxRetries: 0 });

  it('lists the catalog', async () => {
    const page = await client().models.list();

    expect(page.data.map((model) => model.id)).toEqual(OPENAI_IDS);
    expect(page.data[1]).toEqual({ id: 'gpt-4o-mini', object: 'model', created: GPT_4O_MINI_CREATED, owned_by: 'system' });
    expect(sim.stats().byEndpoint.models).toBe(1);
    expect(sim.stats().lastUrl).toBe('/v1/models');
    expect(sim.stats().lastCredential).toBe(KEY);
  });

  it('retrieves one model', async () => {
    const model = await client().models.retrieve('gpt-4o-mini');

    expect(model).toEqual({ id: 'gpt-4o-mini', object: 'model', created: GPT_4O_MINI_CREATED, owned_by: 'system' });
  });

  it('rejects an unknown model with 404', async () => {
    const error = await rejectionOf<InstanceType<typeof OpenAI.NotFoundError>>(client().models.retrieve('ft:gpt-4o-mini:acme::abc123'));

    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    expect(error.error).toEqual({
      message: "model 'ft:gpt-4o-mini:acme::abc123' not found. GET /v1/models lists the models the simulator serves",
      type: 'invalid_request_error',
      param: 'model',
      code: 'model_not_found',
    });
    expect(error.headers?.get('x-request-id')).toMatch(/^req_sim\d{8}$/);
  });

  it('answers HEAD with headers only', async () => {
    const get = await send('GET', `${sim.url}/v1/models`, { authorization: `Bearer ${KEY}` });
    const head = await send('HEAD', `${sim.url}/v1/models`, { authorization: `Bearer ${KEY}` });
    const headModel = await send('HEAD', `${sim.url}/v1/models/o4-mini`, { authorization: `Bearer ${KEY}` });
    const headUnknown = await send('HEAD', `${sim.url}/v1/models/gpt-2`, { authorization: `Bearer ${KEY}` });

    expect(head.status).toBe(200);
    expect(head.text).toBe('');
    expect(head.headers.get('content-type')).toBe('application/json');
    expect(head.headers.get('content-length')).toBe(String(Buffer.byteLength(get.text)));
    expect(headModel.status).toBe(200);
    expect(headUnknown.status).toBe(404);
    expect(headUnknown.text).toBe('');
    expect(sim.stats().byEndpoint.models).toBe(4);
  });

  it('rejects a missing or wrong key with 401', async () => {
    const missing = await send('GET', `${sim.url}/v1/models`);
    const wrong = await rejectionOf<InstanceType<typeof OpenAI.AuthenticationError>>(
      new OpenAI({ apiKey: 'wrong-key', baseURL: `${sim.url}/v1`, maxRetries: 0 }).models.list(),
    );

    expect(missing.status).toBe(401);
    expect(JSON.parse(missing.text)).toEqual({ error: { message: 'missing API key', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } });
    expect(wrong).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(wrong.error).toEqual({ message: 'invalid API key', type: 'invalid_request_error', param: null, code: 'invalid_api_key' });
    expect(sim.stats().unauthorized).toBe(2);
    expect(sim.stats().lastCredential).toBeUndefined();
  });

  it('serves only GET and HEAD of exact paths', async () => {
    const headers = { authorization: `Bearer ${KEY}` };
    const served = await send('GET', `${sim.url}/v1/models/gpt-4o`, headers);
    expect(served.status).toBe(200);

    for (const [method, path] of [
      ['POST', '/v1/models'],
      ['DELETE', '/v1/models/gpt-4o'],
      ['GET', '/v1/models/'],
      ['GET', '/v1/models/gpt-4o/extra'],
      ['GET', '/models'],
    ] as const) {
      const response = await send(method, `${sim.url}${path}`, headers);
      expect(response.status, `${method} ${path}`).toBe(404);
      expect(JSON.parse(response.text).error.message, `${method} ${path}`).toBe(`Invalid URL (${method} ${path})`);
    }
    expect(sim.stats().byEndpoint.models).toBe(1);
    expect(sim.stats().byEndpoint.other).toBe(5);
  });

  it('obeys x-sim-status', async () => {
    const response = await send('GET', `${sim.url}/v1/models`, { authorization: `Bearer ${KEY}`, 'x-sim-status': '503' });

    expect(response.status).toBe(503);
    expect(JSON.parse(response.text)).toEqual({ error: { message: 'simulated failure with status 503', type: 'server_error', param: null, code: null } });
  });
});

describe('simulator models: Anthropic', () => {
  const client = () => new Anthropic({ apiKey: KEY, baseURL: sim.url, maxRetries: 0 });

  const SONNET = {
    type: 'model',
    id: 'claude-sonnet-4-5',
    display_name: 'Claude Sonnet 4.5',
    created_at: '2025-09-29T00:00:00Z',
    capabilities: null,
    deprecated_at: null,
    lifecycle: 'active',
    line: 'sonnet',
    max_input_tokens: 200_000,
    max_tokens: 64_000,
    retires_at: null,
  };

  it('lists the catalog newest first', async () => {
    const page = await client().models.list();

    expect(page.data.map((model) => model.id)).toEqual(['claude-haiku-4-5', 'claude-sonnet-4-5']);
    expect(page.data[1]).toEqual(SONNET);
    expect(page.has_more).toBe(false);
    expect(page.first_id).toBe('claude-haiku-4-5');
    expect(page.last_id).toBe('claude-sonnet-4-5');
  });

  it('pages with limit and after_id', async () => {
    const first = await client().models.list({ limit: 1 });
    const ids: string[] = [];
    for await (const model of client().models.list({ limit: 1 })) ids.push(model.id);

    expect(first.data.map((model) => model.id)).toEqual(['claude-haiku-4-5']);
    expect(first.has_more).toBe(true);
    expect(first.last_id).toBe('claude-haiku-4-5');
    expect(ids).toEqual(['claude-haiku-4-5', 'claude-sonnet-4-5']);
    expect(sim.stats().lastUrl).toBe('/v1/models?limit=1&after_id=claude-haiku-4-5');
  });

  it('pages back with before_id', async () => {
    const headers = { 'x-api-key': KEY, 'anthropic-version': '2023-06-01' };
    const back = await send('GET', `${sim.url}/v1/models?before_id=claude-sonnet-4-5&limit=5`, headers);
    const unknown = await send('GET', `${sim.url}/v1/models?after_id=claude-2`, headers);
    const tooMany = await send('GET', `${sim.url}/v1/models?limit=1001`, headers);

    expect(JSON.parse(back.text)).toMatchObject({ has_more: false, first_id: 'claude-haiku-4-5', last_id: 'claude-haiku-4-5' });
    expect(JSON.parse(back.text).data.map((model: { id: string }) => model.id)).toEqual(['claude-haiku-4-5']);
    expect(unknown.status).toBe(400);
    expect(JSON.parse(unknown.text).error).toEqual({ type: 'invalid_request_error', message: 'after_id: unknown model id "claude-2"' });
    expect(tooMany.status).toBe(400);
  });

  it('retrieves one model', async () => {
    const model = await client().models.retrieve('claude-sonnet-4-5');

    expect(model).toEqual(SONNET);
  });

  it('rejects an unknown model with 404', async () => {
    const error = await rejectionOf<InstanceType<typeof Anthropic.NotFoundError>>(client().models.retrieve('claude-2'));

    expect(error).toBeInstanceOf(Anthropic.NotFoundError);
    expect(error.error).toMatchObject({
      type: 'error',
      error: { type: 'not_found_error', message: 'model: claude-2 not found. GET /v1/models lists the models the simulator serves' },
    });
  });

  it('rejects a wrong key in its format', async () => {
    const error = await rejectionOf<InstanceType<typeof Anthropic.AuthenticationError>>(
      new Anthropic({ apiKey: 'wrong-key', baseURL: sim.url, maxRetries: 0 }).models.list(),
    );

    expect(error).toBeInstanceOf(Anthropic.AuthenticationError);
    expect(error.error).toMatchObject({ type: 'error', error: { type: 'authentication_error', message: 'invalid API key' } });
  });
});

describe('simulator models: Gemini', () => {
  const client = (apiVersion?: string) =>
    new GoogleGenAI({ apiKey: KEY, ...(apiVersion === undefined ? {} : { apiVersion }), httpOptions: { baseUrl: sim.url, retryOptions: { attempts: 1 } } });

  it('lists the catalog on v1 and v1beta', async () => {
    for (const apiVersion of [undefined, 'v1beta']) {
      const names: string[] = [];
      for await (const model of await client(apiVersion).models.list()) names.push(model.name ?? '');
      expect(names, apiVersion).toEqual(['models/gemini-2.5-flash', 'models/gemini-embedding-001']);
    }
    expect(sim.stats().byEndpoint.models).toBe(2);
  });

  it('pages with pageSize and pageToken', async () => {
    const names: string[] = [];
    const pager = await client('v1beta').models.list({ config: { pageSize: 1 } });
    for await (const model of pager) names.push(model.name ?? '');
    const lastUrl = sim.stats().lastUrl;
    const badToken = await send('GET', `${sim.url}/v1beta/models?pageToken=9`, { 'x-goog-api-key': KEY });

    expect(names).toEqual(['models/gemini-2.5-flash', 'models/gemini-embedding-001']);
    expect(lastUrl).toBe('/v1beta/models?pageSize=1&pageToken=1');
    expect(badToken.status).toBe(400);
    expect(JSON.parse(badToken.text)).toEqual({ error: { code: 400, message: '* ListModelsRequest.page_token: invalid page token "9"', status: 'INVALID_ARGUMENT' } });
  });

  it('gets one model', async () => {
    const model = await client('v1beta').models.get({ model: 'gemini-2.5-flash' });

    expect(model.name).toBe('models/gemini-2.5-flash');
    expect(model.displayName).toBe('Gemini 2.5 Flash');
    expect(model.inputTokenLimit).toBe(1_048_576);
    expect(model.outputTokenLimit).toBe(65_536);
    expect(model.supportedActions).toEqual(['generateContent']);
    expect(model.thinking).toBe(true);
  });

  it('rejects an unknown model with 404', async () => {
    const response = await send('GET', `${sim.url}/v1alpha/models/gemini-0`, { 'x-goog-api-key': KEY });

    expect(response.status).toBe(404);
    expect(JSON.parse(response.text)).toEqual({
      error: { code: 404, message: 'models/gemini-0 is not found for API version v1alpha. GET /v1alpha/models lists the models the simulator serves', status: 'NOT_FOUND' },
    });
  });

  it('takes the key from the query string', async () => {
    const listed = await send('GET', `${sim.url}/v1/models?key=${KEY}`);
    const wrong = await send('GET', `${sim.url}/v1/models?key=wrong-key`);

    expect(listed.status).toBe(200);
    expect(JSON.parse(listed.text).models.map((model: { name: string }) => model.name)).toEqual(['models/gemini-2.5-flash', 'models/gemini-embedding-001']);
    expect(wrong.status).toBe(401);
    expect(JSON.parse(wrong.text)).toEqual({ error: { code: 401, message: 'invalid API key', status: 'UNAUTHENTICATED' } });
  });
});

describe('simulator models: Azure OpenAI', () => {
  const azure = (simulator: Simulator) => new AzureOpenAI({ endpoint: simulator.url, apiKey: KEY, apiVersion: API_VERSION, maxRetries: 0 });

  it('lists models with the AzureOpenAI client', async () => {
    const open = await azure(sim).models.list();
    const configured = await azure(azureSim).models.list();

    expect(open.data.map((model) => model.id)).toEqual(OPENAI_IDS);
    expect(configured.data.map((model) => model.id)).toEqual([...OPENAI_IDS, 'gpt-4o-2024-11-20']);
    expect(azureSim.stats().lastUrl).toBe(`/openai/models?api-version=${API_VERSION}`);
    expect(open.data[4]).toEqual({
      status: 'succeeded',
      capabilities: { fine_tune: false, inference: true, completion: false, chat_completion: false, embeddings: true },
      lifecycle_status: 'generally-available',
      deprecation: { inference: 1_893_456_000 },
      id: 'text-embedding-3-small',
      created_at: 1_706_140_800,
      object: 'model',
    });
  });

  it('retrieves one model', async () => {
    const model = await azure(azureSim).models.retrieve('gpt-4o-2024-11-20');
    const unknown = await rejectionOf<InstanceType<typeof OpenAI.NotFoundError>>(azure(azureSim).models.retrieve('gpt-2'));

    expect(model.id).toBe('gpt-4o-2024-11-20');
    expect((model as unknown as { capabilities: unknown }).capabilities).toEqual({
      fine_tune: false,
      inference: true,
      completion: false,
      chat_completion: true,
      embeddings: false,
    });
    expect(unknown.status).toBe(404);
    expect(unknown.error).toEqual({ code: 'NotFound', message: "model 'gpt-2' not found. GET /openai/models lists the models the simulator serves" });
  });

  it('lists models on the v1 path with a bearer token', async () => {
    const v1 = new OpenAI({ apiKey: KEY, baseURL: `${azureSim.url}/openai/v1`, maxRetries: 0 });
    const page = await v1.models.list();

    expect(page.data.map((model) => model.id)).toEqual([...OPENAI_IDS, 'gpt-4o-2024-11-20']);
    expect(azureSim.stats().lastUrl).toBe('/openai/v1/models');
  });

  it('lists deployments', async () => {
    const headers = { 'api-key': KEY };
    const configured = await send('GET', `${azureSim.url}/openai/deployments?api-version=2022-12-01`, headers);
    const open = await send('GET', `${sim.url}/openai/deployments?api-version=2022-12-01`, headers);
    const one = await send('GET', `${azureSim.url}/openai/deployments/embedder?api-version=2022-12-01`, headers);
    const unknown = await send('GET', `${azureSim.url}/openai/deployments/other?api-version=2022-12-01`, headers);

    const entries = JSON.parse(configured.text).data as { id: string; model: string }[];
    expect(entries.map(({ id, model }) => [id, model])).toEqual([
      ['prod-4o', 'gpt-4o-2024-11-20'],
      ['embedder', 'text-embedding-3-small'],
    ]);
    expect(JSON.parse(open.text).data.map((entry: { id: string }) => entry.id)).toEqual(OPENAI_IDS);
    expect(JSON.parse(one.text)).toEqual({
      scale_settings: { scale_type: 'standard' },
      model: 'text-embedding-3-small',
      owner: 'organization-owner',
      id: 'embedder',
      status: 'succeeded',
      created_at: 1_735_689_600,
      updated_at: 1_735_689_600,
      object: 'deployment',
    });
    expect(unknown.status).toBe(404);
    expect(JSON.parse(unknown.text).error.code).toBe('DeploymentNotFound');
  });

  it('checks api-version and the key', async () => {
    const noVersion = await send('GET', `${sim.url}/openai/models`, { 'api-key': KEY });
    const badVersion = await send('GET', `${sim.url}/openai/models?api-version=latest`, { 'api-key': KEY });
    const noKey = await send('GET', `${sim.url}/openai/models?api-version=${API_VERSION}`);
    const bearerOutsideV1 = await send('GET', `${sim.url}/openai/models?api-version=${API_VERSION}`, { authorization: `Bearer ${KEY}` });

    expect(noVersion.status).toBe(404);
    expect(JSON.parse(noVersion.text)).toEqual({ error: { code: '404', message: 'Resource not found' } });
    expect(badVersion.status).toBe(400);
    expect(JSON.parse(badVersion.text)).toEqual({ error: { code: 'BadRequest', message: 'API version not supported' } });
    expect(noKey.status).toBe(401);
    expect(JSON.parse(noKey.text)).toEqual({ error: { code: '401', message: 'missing API key' } });
    expect(bearerOutsideV1.status).toBe(401);
  });
});
