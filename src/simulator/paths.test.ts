/**
 * Paths and methods that the real providers do not serve: the simulator must
 * respond to them with the provider's own 404, so that a wrong base URL fails
 * locally the way it fails against the real API.
 */
import Anthropic from '@anthropic-ai/sdk';
import { ApiError, GoogleGenAI } from '@google/genai';
import OpenAI, { AzureOpenAI } from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from './index.ts';

const KEY = 'sim-paths-key';
const API_VERSION = '2024-10-21';

const CHAT_BODY = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'alpha' }] };
const MESSAGES_BODY = { model: 'claude-sonnet-4-5', max_tokens: 5, messages: [{ role: 'user', content: 'alpha' }] };
const GEMINI_BODY = { contents: [{ role: 'user', parts: [{ text: 'alpha' }] }] };

let sim: Simulator;

beforeAll(async () => {
  sim = await startSimulator({ expectedKey: KEY });
});

afterAll(async () => {
  await sim.close();
});

beforeEach(() => {
  sim.resetStats();
});

interface RawResponse {
  status: number;
  headers: Headers;
  json: unknown;
}

async function send(method: string, path: string, headers: Record<string, string>, body?: unknown): Promise<RawResponse> {
  const response = await fetch(`${sim.url}${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...headers },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: response.status, headers: response.headers, json: await response.json() };
}

function openaiNotFound(method: string, path: string): unknown {
  return { error: { message: `Invalid URL (${method} ${path})`, type: 'invalid_request_error', param: null, code: null } };
}

function geminiNotFound(method: string, path: string): unknown {
  return { error: { code: 404, message: `${method} ${path} is not a Gemini API method that the simulator serves`, status: 'NOT_FOUND' } };
}

const AZURE_NOT_FOUND = { error: { code: '404', message: 'Resource not found' } };

describe('simulator paths: OpenAI', () => {
  const bearer = { authorization: `Bearer ${KEY}` };

  it('rejects a base URL without /v1 in the SDK', async () => {
    const client = new OpenAI({ apiKey: KEY, baseURL: sim.url, maxRetries: 0 });
    const error = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'alpha' }] }).catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    const apiError = error as InstanceType<typeof OpenAI.APIError>;
    expect(apiError.status).toBe(404);
    expect(apiError.error).toEqual({ message: 'Invalid URL (POST /chat/completions)', type: 'invalid_request_error', param: null, code: null });
    expect(sim.stats().byEndpoint.chat).toBe(0);
    expect(sim.stats().byEndpoint.other).toBe(1);
  });

  it('rejects paths outside /v1 with 404', async () => {
    const paths = [
      '/chat/completions',
      '/embeddings',
      '/api/v1/chat/completions',
      '/v1/v1/chat/completions',
      '/v2/chat/completions',
      '/v1/chat/completions/',
      '//v1/chat/completions',
      '/v1/chat',
      '/v1/completions',
      '/',
    ];
    for (const path of paths) {
      const response = await send('POST', path, bearer, CHAT_BODY);
      expect(response.status, path).toBe(404);
      expect(response.json, path).toEqual(openaiNotFound('POST', path));
      expect(response.headers.get('x-request-id'), path).toMatch(/^req_sim\d{8}$/);
    }
    expect(sim.stats().byEndpoint.other).toBe(paths.length);
    expect(sim.stats().lastRequest).toBeUndefined();
  });

  it('rejects methods other than POST', async () => {
    for (const method of ['GET', 'PUT', 'DELETE', 'PATCH']) {
      for (const path of ['/v1/chat/completions', '/v1/embeddings']) {
        const response = await send(method, path, bearer, method === 'GET' || method === 'DELETE' ? undefined : CHAT_BODY);
        expect(response.status, `${method} ${path}`).toBe(404);
        expect(response.json, `${method} ${path}`).toEqual(openaiNotFound(method, path));
      }
    }
    const counters = sim.stats();
    expect(counters.byEndpoint.chat).toBe(0);
    expect(counters.byEndpoint.embeddings).toBe(0);
    expect(counters.byEndpoint.other).toBe(8);
  });

  it('rejects unknown path before credential check', async () => {
    const response = await send('POST', '/chat/completions', {}, CHAT_BODY);
    expect(response.status).toBe(404);
    expect(response.json).toEqual(openaiNotFound('POST', '/chat/completions'));
    expect(sim.stats().unauthorized).toBe(0);
  });

  it('still serves the exact paths', async () => {
    const chat = await send('POST', '/v1/chat/completions?trace=1', bearer, CHAT_BODY);
    expect(chat.status).toBe(200);
    expect((chat.json as { object: string }).object).toBe('chat.completion');

    const embeddings = await send('POST', '/v1/embeddings', bearer, { model: 'text-embedding-3-small', input: 'alpha' });
    expect(embeddings.status).toBe(200);
    expect((embeddings.json as { object: string }).object).toBe('list');
  });
});

describe('simulator paths: Anthropic', () => {
  const anthropicHeaders = { 'x-api-key': KEY, 'anthropic-version': '2023-06-01' };
  const anthropicNotFound = (id: string) => ({ type: 'error', error: { type: 'not_found_error', message: 'Not Found' }, request_id: `req_${id}` });

  it('rejects a base URL ending in /v1 in the SDK', async () => {
    const client = new Anthropic({ apiKey: KEY, baseURL: `${sim.url}/v1`, maxRetries: 0 });
    const error = await client.messages.create(MESSAGES_BODY as Anthropic.MessageCreateParamsNonStreaming).catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(Anthropic.NotFoundError);
    const apiError = error as InstanceType<typeof Anthropic.APIError>;
    expect(apiError.status).toBe(404);
    expect(apiError.type).toBe('not_found_error');
    expect(apiError.apiMessage).toBe('Not Found');
    expect(sim.stats().byEndpoint.messages).toBe(0);
  });

  it('rejects paths other than /v1/messages with 404', async () => {
    for (const path of ['/messages', '/v1/v1/messages', '/api/v1/messages', '/v1/messages/', '/v1/message', '/anthropic/v1/messages']) {
      const response = await send('POST', path, anthropicHeaders, MESSAGES_BODY);
      expect(response.status, path).toBe(404);
      const id = response.headers.get('request-id')!.slice('req_'.length);
      expect(response.json, path).toEqual(anthropicNotFound(id));
    }
  });

  it('rejects GET on /v1/messages', async () => {
    const response = await send('GET', '/v1/messages', anthropicHeaders);
    expect(response.status).toBe(404);
    const id = response.headers.get('request-id')!.slice('req_'.length);
    expect(response.json).toEqual(anthropicNotFound(id));
    expect(sim.stats().byEndpoint.messages).toBe(0);
  });

  it('rejects bare /messages in Anthropic format', async () => {
    const response = await send('POST', '/messages', {}, MESSAGES_BODY);
    expect(response.status).toBe(404);
    expect((response.json as { error: { type: string } }).error.type).toBe('not_found_error');
  });
});

describe('simulator paths: Gemini', () => {
  const geminiHeaders = { 'x-goog-api-key': KEY };

  it('rejects a base URL with an extra prefix in the SDK', async () => {
    const client = new GoogleGenAI({ apiKey: KEY, apiVersion: 'v1beta', httpOptions: { baseUrl: `${sim.url}/gemini`, retryOptions: { attempts: 1 } } });
    const error = await client.models.generateContent({ model: 'gemini-2.5-flash', contents: 'alpha' }).catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).status).toBe(404);
    expect(JSON.parse((error as ApiError).message)).toEqual(geminiNotFound('POST', '/gemini/v1beta/models/gemini-2.5-flash:generateContent'));
    expect(sim.stats().byEndpoint.generateContent).toBe(0);
  });

  it('rejects model paths outside a published version', async () => {
    const paths = [
      '/models/gemini-2.5-flash:generateContent',
      '/v2/models/gemini-2.5-flash:generateContent',
      '/api/v1beta/models/gemini-2.5-flash:generateContent',
      '/v1beta/v1beta/models/gemini-2.5-flash:generateContent',
      '/v1beta/models/gemini-2.5-flash',
      '/v1beta/models/gemini-2.5-flash:generatecontent',
      '/v1beta/gemini-2.5-flash:generateContent',
    ];
    for (const path of paths) {
      const response = await send('POST', path, geminiHeaders, GEMINI_BODY);
      expect(response.status, path).toBe(404);
      expect(response.json, path).toEqual(geminiNotFound('POST', path));
    }
    expect(sim.stats().byEndpoint.other).toBe(paths.length);
  });

  it('rejects GET on a model method', async () => {
    const path = '/v1beta/models/gemini-2.5-flash:generateContent';
    const response = await send('GET', path, geminiHeaders);
    expect(response.status).toBe(404);
    expect(response.json).toEqual(geminiNotFound('GET', path));
  });

  it('serves the v1, v1beta and v1alpha versions', async () => {
    for (const version of ['v1', 'v1beta', 'v1alpha']) {
      const response = await send('POST', `/${version}/models/gemini-2.5-flash:generateContent`, geminiHeaders, GEMINI_BODY);
      expect(response.status, version).toBe(200);
      expect((response.json as { modelVersion: string }).modelVersion, version).toBe('gemini-2.5-flash');
    }
    expect(sim.stats().byEndpoint.generateContent).toBe(3);
  });
});

describe('simulator paths: Azure OpenAI', () => {
  const azureHeaders = { 'api-key': KEY };

  it('rejects an endpoint with an extra path in the SDK', async () => {
    const client = new AzureOpenAI({ endpoint: `${sim.url}/azure`, apiKey: KEY, apiVersion: API_VERSION, deployment: 'prod-4o', maxRetries: 0 });
    const error = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'alpha' }] }).catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    expect((error as InstanceType<typeof OpenAI.APIError>).error).toEqual({ code: '404', message: 'Resource not found' });
    expect(sim.stats().byEndpoint.chat).toBe(0);
  });

  it('rejects paths outside the two Azure forms', async () => {
    const paths = [
      `/azure/openai/deployments/prod-4o/chat/completions?api-version=${API_VERSION}`,
      `/openai/deployments/prod-4o/completions?api-version=${API_VERSION}`,
      `/openai/deployments/chat/completions?api-version=${API_VERSION}`,
      `/openai/deployments/prod-4o/chat/completions/?api-version=${API_VERSION}`,
      '/openai/chat/completions',
      '/openai/v2/chat/completions',
      '/api/openai/v1/embeddings',
    ];
    for (const path of paths) {
      const response = await send('POST', path, azureHeaders, CHAT_BODY);
      expect(response.status, path).toBe(404);
      expect(response.json, path).toEqual(AZURE_NOT_FOUND);
      expect(response.headers.get('apim-request-id'), path).toMatch(/^req_sim\d{8}$/);
    }
  });

  it('rejects GET on both path forms', async () => {
    for (const path of [`/openai/deployments/prod-4o/chat/completions?api-version=${API_VERSION}`, '/openai/v1/chat/completions']) {
      const response = await send('GET', path, azureHeaders);
      expect(response.status, path).toBe(404);
      expect(response.json, path).toEqual(AZURE_NOT_FOUND);
    }
    expect(sim.stats().byEndpoint.chat).toBe(0);
  });
});
