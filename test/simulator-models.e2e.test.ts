/**
 * Local mode (`tollgate dev`) without provider keys: the models lists that
 * the sidecar forwards without billing reach the simulator, which serves
 * them in each provider's format. The manifests are the ones in examples/,
 * with the Gemini and Azure OpenAI routes of the README added. The official
 * `openai`, `@anthropic-ai/sdk` and `@google/genai` clients call the sidecar.
 */
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import OpenAI, { AzureOpenAI } from 'openai';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDev, type DevServer } from '../sidecar/dev.ts';

/** Port 9 is discard: a route that kept this base URL would fail instead of reaching a host. */
const EXTRA_ROUTES = `
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: gemini }
spec:
  protocol: gemini
  baseURL: http://127.0.0.1:9
  credentialSecretRef: { name: gemini-credentials, key: apiKey }
  models: [gemini-2.5-flash, gemini-embedding-001]
  costs:
    gemini-2.5-flash: { input: "0.30", cachedInput: "0.03", output: "2.50" }
    gemini-embedding-001: { input: "0.15", output: "0" }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: azure }
spec:
  protocol: azure-openai
  baseURL: http://127.0.0.1:9
  credentialSecretRef: { name: azure-credentials, key: apiKey }
  models: [gpt-4o, text-embedding-3-small]
  deployments:
    - { name: prod-gpt-4o, model: gpt-4o }
  costs:
    gpt-4o: { input: "2.50", cachedInput: "1.25", output: "10.00" }
    text-embedding-3-small: { input: "0.02", output: "0" }
`;

const OPENAI_IDS = ['gpt-4o', 'gpt-4o-mini', 'gpt-4.1', 'o4-mini', 'text-embedding-3-small'];

let dir: string;
let server: DevServer;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-sim-models-'));
  await cp(path.join(import.meta.dirname, '..', 'examples'), dir, { recursive: true });
  await writeFile(path.join(dir, 'more-routes.yaml'), EXTRA_ROUTES);
  server = await startDev({
    manifests: dir,
    host: '127.0.0.1',
    port: 0,
    redisUrl: undefined,
    wallet: undefined,
    env: {},
    log: pino({ level: 'silent' }),
    watch: false,
  });
});

afterAll(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

/** Returns the amount the example's default wallet has spent. */
async function spent(): Promise<bigint> {
  return (await server.ledger.state({ namespace: 'default', name: 'demo' })).spent;
}

describe('tollgate dev models lists', () => {
  it('lists and retrieves OpenAI models', async () => {
    const client = new OpenAI({ baseURL: `${server.url}/openai/v1`, apiKey: 'unused', maxRetries: 0 });
    const before = await spent();

    const listed = await client.models.list();
    const model = await client.models.retrieve('gpt-4.1');
    const unknown = await client.models.retrieve('gpt-2').catch((error: unknown) => error);

    expect([...server.simulated].sort()).toEqual(['anthropic', 'azure', 'gemini', 'openai']);
    expect(listed.data.map((entry) => entry.id)).toEqual(OPENAI_IDS);
    expect(model).toEqual({ id: 'gpt-4.1', object: 'model', created: 1_744_588_800, owned_by: 'system' });
    expect(unknown).toBeInstanceOf(OpenAI.NotFoundError);
    expect((unknown as InstanceType<typeof OpenAI.NotFoundError>).code).toBe('model_not_found');
    expect(await spent()).toBe(before);
  });

  it('answers HEAD on the OpenAI list', async () => {
    const response = await fetch(`${server.url}/openai/v1/models`, { method: 'HEAD' });

    expect(response.status).toBe(200);
    expect(await response.text()).toBe('');
  });

  it('lists and retrieves Anthropic models', async () => {
    const client = new Anthropic({ baseURL: `${server.url}/anthropic`, apiKey: 'unused', maxRetries: 0 });

    const ids: string[] = [];
    for await (const entry of client.models.list({ limit: 1 })) ids.push(entry.id);
    const model = await client.models.retrieve('claude-sonnet-4-5');

    expect(ids).toEqual(['claude-haiku-4-5', 'claude-sonnet-4-5']);
    expect(model.id).toBe('claude-sonnet-4-5');
    expect(model.display_name).toBe('Claude Sonnet 4.5');
    expect(model.type).toBe('model');
  });

  it('lists and gets Gemini models', async () => {
    const ai = new GoogleGenAI({ apiKey: 'unused', httpOptions: { baseUrl: `${server.url}/gemini`, retryOptions: { attempts: 1 } } });

    const names: string[] = [];
    for await (const entry of await ai.models.list()) names.push(entry.name ?? '');
    const model = await ai.models.get({ model: 'gemini-2.5-flash' });

    expect(names).toEqual(['models/gemini-2.5-flash', 'models/gemini-embedding-001']);
    expect(model.name).toBe('models/gemini-2.5-flash');
    expect(model.displayName).toBe('Gemini 2.5 Flash');
  });

  it('lists Azure OpenAI models', async () => {
    const azure = new AzureOpenAI({ endpoint: `${server.url}/azure`, apiKey: 'unused', apiVersion: '2024-10-21', maxRetries: 0 });
    const v1 = new OpenAI({ baseURL: `${server.url}/azure/openai/v1`, apiKey: 'unused', maxRetries: 0 });

    const scoped = await azure.models.list();
    const plain = await v1.models.list();
    const model = await azure.models.retrieve('gpt-4o');

    expect(scoped.data.map((entry) => entry.id)).toEqual(OPENAI_IDS);
    expect(plain.data.map((entry) => entry.id)).toEqual(OPENAI_IDS);
    expect(model.id).toBe('gpt-4o');
  });
});
