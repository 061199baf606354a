/**
 * The simulator's Azure OpenAI endpoints, called by the `AzureOpenAI` client
 * of the `openai` package and, for the requests that client cannot send, by
 * raw HTTP in the same form.
 */
import OpenAI, { AzureOpenAI } from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { generatedText, startSimulator, type Simulator } from './index.ts';

const KEY = 'sim-azure-key';
const API_VERSION = '2024-10-21';

let sim: Simulator;
let open: Simulator;

beforeAll(async () => {
  sim = await startSimulator({ expectedKey: KEY, azureDeployments: { 'prod-4o': 'gpt-4o-2024-11-20', embedder: 'text-embedding-3-small' } });
  open = await startSimulator({ expectedKey: KEY });
});

afterAll(async () => {
  await sim.close();
  await open.close();
});

beforeEach(() => {
  sim.resetStats();
});

/** "hotel" and "alpha delta echo" are one token per word, so the prompt is 4 tokens. */
const MESSAGES: OpenAI.Chat.ChatCompletionMessageParam[] = [
  { role: 'system', content: 'hotel' },
  { role: 'user', content: 'alpha delta echo' },
];

const CLEAN_COMPLETION = {
  hate: { filtered: false, severity: 'safe' },
  protected_material_code: { filtered: false, detected: false },
  protected_material_text: { filtered: false, detected: false },
  self_harm: { filtered: false, severity: 'safe' },
  sexual: { filtered: false, severity: 'safe' },
  violence: { filtered: false, severity: 'safe' },
};

const PROMPT_FILTER_RESULTS = [
  {
    prompt_index: 0,
    content_filter_results: {
      hate: { filtered: false, severity: 'safe' },
      jailbreak: { filtered: false, detected: false },
      self_harm: { filtered: false, severity: 'safe' },
      sexual: { filtered: false, severity: 'safe' },
      violence: { filtered: false, severity: 'safe' },
    },
  },
];

function azure(simulator: Simulator, deployment?: string): AzureOpenAI {
  return new AzureOpenAI({
    endpoint: simulator.url,
    apiKey: KEY,
    apiVersion: API_VERSION,
    ...(deployment === undefined ? {} : { deployment }),
    maxRetries: 0,
  });
}

async function post(path: string, headers: Record<string, string>, body: unknown = { messages: MESSAGES }) {
  const response = await fetch(`${sim.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  return { status: response.status, json: (await response.json()) as Record<string, unknown> };
}

describe('simulator: Azure chat completions', () => {
  it('answers with the deployment model and filter results', async () => {
    const completion = await azure(sim, 'prod-4o').chat.completions.create({ model: 'anything', messages: MESSAGES });
    const raw = completion as unknown as Record<string, unknown>;

    expect(completion.model).toBe('gpt-4o-2024-11-20');
    expect(completion.choices[0]?.message.content).toBe(generatedText(16));
    expect(completion.usage?.prompt_tokens).toBe(4);
    expect(completion.usage?.completion_tokens).toBe(16);
    expect(raw['prompt_filter_results']).toEqual(PROMPT_FILTER_RESULTS);
    expect((completion.choices[0] as unknown as Record<string, unknown>)['content_filter_results']).toEqual(CLEAN_COMPLETION);
    expect(sim.stats().lastUrl).toBe(`/openai/deployments/prod-4o/chat/completions?api-version=${API_VERSION}`);
    expect(sim.stats().lastCredential).toBe(KEY);
    expect(sim.stats().byEndpoint.chat).toBe(1);
  });

  it('streams a leading prompt filter chunk', async () => {
    const stream = await azure(sim, 'prod-4o').chat.completions.create({
      model: 'anything',
      messages: MESSAGES,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.Chat.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);

    // Prompt filter chunk, role chunk, 16 content chunks, finish chunk and usage chunk.
    expect(chunks).toHaveLength(1 + 1 + 16 + 1 + 1);
    expect(chunks[0]).toEqual({ choices: [], created: 0, id: '', model: '', object: '', prompt_filter_results: PROMPT_FILTER_RESULTS });
    expect((chunks[1]!.choices[0] as unknown as Record<string, unknown>)['content_filter_results']).toEqual({});
    expect((chunks[2]!.choices[0] as unknown as Record<string, unknown>)['content_filter_results']).toEqual(CLEAN_COMPLETION);
    expect(chunks[2]!.model).toBe('gpt-4o-2024-11-20');
    expect(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join('')).toBe(generatedText(16));
    expect(chunks[19]!.choices).toEqual([]);
    expect(chunks[19]!.usage?.prompt_tokens).toBe(4);
    expect(chunks[19]!.usage?.completion_tokens).toBe(16);
  });

  it('rejects an unknown deployment as Azure does', async () => {
    const error = await azure(sim, 'staging')
      .chat.completions.create({ model: 'gpt-4o', messages: MESSAGES })
      .catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(AzureOpenAI.NotFoundError);
    const apiError = error as InstanceType<typeof AzureOpenAI.NotFoundError>;
    expect(apiError.code).toBe('DeploymentNotFound');
    expect(apiError.message).toBe(
      '404 The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.',
    );
  });

  it('serves any deployment when none are configured', async () => {
    const completion = await azure(open, 'whatever').chat.completions.create({ model: 'gpt-4.1', messages: MESSAGES });
    expect(completion.model).toBe('gpt-4.1');

    const unnamed = await fetch(`${open.url}/openai/deployments/whatever/chat/completions?api-version=${API_VERSION}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'api-key': KEY },
      body: JSON.stringify({ messages: MESSAGES }),
    });
    expect(((await unnamed.json()) as { model: string }).model).toBe('whatever');
  });
});

describe('simulator: Azure request checks', () => {
  const CHAT = '/openai/deployments/prod-4o/chat/completions';

  it('answers 404 without api-version', async () => {
    const { status, json } = await post(CHAT, { 'api-key': KEY });
    expect(status).toBe(404);
    expect(json).toEqual({ error: { code: '404', message: 'Resource not found' } });
  });

  it('answers 400 for a malformed api-version', async () => {
    const { status, json } = await post(`${CHAT}?api-version=v1`, { 'api-key': KEY });
    expect(status).toBe(400);
    expect(json).toEqual({ error: { code: 'BadRequest', message: 'API version not supported' } });
  });

  it('takes the key only from api-key on deployment paths', async () => {
    const bearer = await post(`${CHAT}?api-version=${API_VERSION}`, { authorization: `Bearer ${KEY}` });
    expect(bearer.status).toBe(401);
    expect(bearer.json).toEqual({ error: { code: '401', message: 'missing API key' } });

    const wrong = await post(`${CHAT}?api-version=${API_VERSION}`, { 'api-key': 'wrong' });
    expect(wrong.status).toBe(401);
    expect(sim.stats().unauthorized).toBe(2);
  });

  it('answers unknown Azure paths in Azure format', async () => {
    const { status, json } = await post(`/openai/deployments/prod-4o/images/generations?api-version=${API_VERSION}`, { 'api-key': KEY });
    expect(status).toBe(404);
    expect(json).toEqual({ error: { code: '404', message: 'Resource not found' } });
  });
});

describe('simulator: Azure embeddings and v1 paths', () => {
  it('answers embeddings for a deployment', async () => {
    const response = await azure(sim).embeddings.create({ model: 'embedder', input: ['alpha delta', 'echo'] });
    expect(response.model).toBe('text-embedding-3-small');
    expect(response.data).toHaveLength(2);
    expect(response.usage).toEqual({ prompt_tokens: 3, total_tokens: 3 });
    expect(sim.stats().byEndpoint.embeddings).toBe(1);
  });

  it('serves v1 chat with the deployment as model', async () => {
    const client = new OpenAI({ apiKey: KEY, baseURL: `${sim.url}/openai/v1`, maxRetries: 0 });
    const completion = await client.chat.completions.create({ model: 'prod-4o', messages: MESSAGES });
    expect(completion.model).toBe('gpt-4o-2024-11-20');
    expect((completion as unknown as Record<string, unknown>)['prompt_filter_results']).toEqual(PROMPT_FILTER_RESULTS);

    const withKey = await post('/openai/v1/embeddings', { 'api-key': KEY }, { model: 'embedder', input: 'alpha' });
    expect(withKey.status).toBe(200);
    expect(withKey.json['model']).toBe('text-embedding-3-small');
  });

  it('rejects a v1 model that is no deployment', async () => {
    const { status, json } = await post('/openai/v1/chat/completions', { 'api-key': KEY }, { model: 'gpt-4o', messages: MESSAGES });
    expect(status).toBe(404);
    expect((json['error'] as { code: string }).code).toBe('DeploymentNotFound');
  });
});
