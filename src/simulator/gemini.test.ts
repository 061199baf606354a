/**
 * The simulator's Gemini endpoints, called with raw HTTP requests in the form
 * the `@google/genai` SDK sends: the model and method in the path, the key in
 * `x-goog-api-key`, and `?alt=sse` on streams.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { adapterFor } from '../providers/index.ts';
import { generatedText, startSimulator, type Simulator } from './index.ts';

const KEY = 'sim-gemini-key';

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

/** "hotel" and "alpha delta echo" are one token per word, so the prompt is 4 tokens. */
const REQUEST = {
  contents: [{ role: 'user', parts: [{ text: 'alpha delta echo' }] }],
  systemInstruction: { parts: [{ text: 'hotel' }] },
};

const GENERATE = '/v1beta/models/gemini-2.5-flash:generateContent';
const STREAM = '/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse';

async function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  const response = await fetch(`${sim.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-goog-api-key': KEY, 'x-goog-api-client': 'google-genai-sdk/1.0.0 gl-node/v24', ...headers },
    body: JSON.stringify(body),
  });
  return { status: response.status, headers: response.headers, bytes: Buffer.from(await response.arrayBuffer()) };
}

async function postJson(path: string, body: unknown, headers: Record<string, string> = {}) {
  const { status, bytes } = await post(path, body, headers);
  return { status, json: JSON.parse(bytes.toString('utf8')) as Record<string, unknown> };
}

/** Splits an SSE body into the JSON of its `data:` events. */
function sseChunks(text: string): Record<string, unknown>[] {
  return text
    .split('\r\n\r\n')
    .filter((event) => event.length > 0)
    .map((event) => {
      expect(event.startsWith('data: ')).toBe(true);
      return JSON.parse(event.slice('data: '.length)) as Record<string, unknown>;
    });
}

function usageOf(chunk: Record<string, unknown>): Record<string, unknown> {
  return chunk['usageMetadata'] as Record<string, unknown>;
}

describe('simulator: Gemini generateContent', () => {
  it('answers a plain request in the GenerateContentResponse format', async () => {
    const { status, json } = await postJson(GENERATE, REQUEST);
    expect(status).toBe(200);
    expect(json['responseId']).toMatch(/^resp_sim\d{8}$/);
    expect({ ...json, responseId: 'x' }).toEqual({
      candidates: [{ content: { parts: [{ text: generatedText(16) }], role: 'model' }, finishReason: 'STOP', index: 0 }],
      usageMetadata: { promptTokenCount: 4, candidatesTokenCount: 16, totalTokenCount: 20, promptTokensDetails: [{ modality: 'TEXT', tokenCount: 4 }] },
      modelVersion: 'gemini-2.5-flash',
      responseId: 'x',
    });
    expect(sim.stats().byEndpoint.generateContent).toBe(1);
  });

  it('stops at maxOutputTokens', async () => {
    const { json } = await postJson(GENERATE, { ...REQUEST, generationConfig: { maxOutputTokens: 3, candidateCount: 2 } });
    const candidates = json['candidates'] as { content: { parts: { text: string }[] }; finishReason: string }[];
    expect(candidates.map((candidate) => candidate.content.parts[0]!.text)).toEqual(['alpha delta echo', 'alpha delta echo']);
    expect(candidates.map((candidate) => candidate.finishReason)).toEqual(['MAX_TOKENS', 'MAX_TOKENS']);
    expect(usageOf(json)['candidatesTokenCount']).toBe(6);
  });

  it('reports thinking tokens apart from the answer', async () => {
    const { json } = await postJson(GENERATE, { ...REQUEST, generationConfig: { thinkingConfig: { thinkingBudget: 1024 } } });
    expect(usageOf(json)).toEqual({
      promptTokenCount: 4,
      candidatesTokenCount: 16,
      totalTokenCount: 32,
      promptTokensDetails: [{ modality: 'TEXT', tokenCount: 4 }],
      thoughtsTokenCount: 12,
    });
  });

  it('spends maxOutputTokens on thoughts first', async () => {
    const { json } = await postJson(GENERATE, { ...REQUEST, generationConfig: { maxOutputTokens: 15, thinkingConfig: { thinkingBudget: -1 } } });
    expect(usageOf(json)).toMatchObject({ candidatesTokenCount: 3, thoughtsTokenCount: 12, totalTokenCount: 19 });
    expect((json['candidates'] as { finishReason: string }[])[0]!.finishReason).toBe('MAX_TOKENS');

    const { json: starved } = await postJson(GENERATE, { ...REQUEST, generationConfig: { maxOutputTokens: 8, thinkingConfig: { thinkingBudget: 100 } } });
    expect(usageOf(starved)).toEqual({ promptTokenCount: 4, totalTokenCount: 12, promptTokensDetails: [{ modality: 'TEXT', tokenCount: 4 }], thoughtsTokenCount: 8 });
  });

  it('reports the usage a test sets', async () => {
    const usage = { promptTokenCount: 55021, candidatesTokenCount: 923, thoughtsTokenCount: 785, totalTokenCount: 56729 };
    const { json } = await postJson(GENERATE, REQUEST, { 'x-sim-usage': JSON.stringify(usage) });
    expect(json['usageMetadata']).toEqual(usage);
  });

  it('omits usage on request', async () => {
    const { json } = await postJson(GENERATE, REQUEST, { 'x-sim-omit-usage': '1' });
    expect(json).not.toHaveProperty('usageMetadata');
    expect(json).toHaveProperty('candidates');
  });

  it('rejects a request without contents', async () => {
    const { status, json } = await postJson(GENERATE, { generationConfig: {} });
    expect(status).toBe(400);
    expect(json).toEqual({ error: { code: 400, message: '* GenerateContentRequest.contents: contents is not specified', status: 'INVALID_ARGUMENT' } });
  });

  it('fails with the requested status in Gemini format', async () => {
    const { status, json } = await postJson(GENERATE, REQUEST, { 'x-sim-status': '503', 'x-sim-latency-ms': '5' });
    expect(status).toBe(503);
    expect(json).toEqual({ error: { code: 503, message: 'simulated failure with status 503', status: 'UNAVAILABLE' } });
  });

  it('answers an unknown method with 404 in Gemini format', async () => {
    const { status, json } = await postJson('/v1beta/models/gemini-2.5-flash:countTokens', REQUEST);
    expect(status).toBe(404);
    expect(json).toEqual({ error: { code: 404, message: 'POST /v1beta/models/gemini-2.5-flash:countTokens is not a Gemini API method that the simulator serves', status: 'NOT_FOUND' } });
  });
});

describe('simulator: Gemini streamGenerateContent', () => {
  it('streams chunks with cumulative usage in each', async () => {
    const { headers, bytes } = await post(STREAM, REQUEST, { 'x-sim-chunks': '4' });
    expect(headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    const chunks = sseChunks(bytes.toString('utf8'));

    expect(chunks).toHaveLength(4);
    const texts = chunks.map((chunk) => (chunk['candidates'] as { content: { parts: { text: string }[] } }[])[0]!.content.parts[0]!.text);
    expect(texts).toEqual(['alpha delta echo hotel', ' india uniform river stone', ' cloud light green water', ' north paper table music']);
    expect(chunks.map((chunk) => usageOf(chunk)['candidatesTokenCount'])).toEqual([4, 8, 12, 16]);
    expect(chunks.map((chunk) => usageOf(chunk)['promptTokenCount'])).toEqual([4, 4, 4, 4]);
    expect(usageOf(chunks[3]!)['totalTokenCount']).toBe(20);

    const finishReasons = chunks.map((chunk) => (chunk['candidates'] as { finishReason?: string }[])[0]!.finishReason);
    expect(finishReasons).toEqual([undefined, undefined, undefined, 'STOP']);
    expect(chunks.every((chunk) => chunk['modelVersion'] === 'gemini-2.5-flash')).toBe(true);
  });

  it('accepts the key as a query parameter', async () => {
    const response = await fetch(`${sim.url}${STREAM}&key=${KEY}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(REQUEST) });
    expect(response.status).toBe(200);
    expect(sseChunks(await response.text())).toHaveLength(16);
    expect(sim.stats().lastCredential).toBe(KEY);
  });

  it('repeats the usage a test sets in every chunk', async () => {
    const usage = { promptTokenCount: 1200, candidatesTokenCount: 20, totalTokenCount: 1220 };
    const { bytes } = await post(STREAM, REQUEST, { 'x-sim-usage': JSON.stringify(usage), 'x-sim-chunks': '3' });
    expect(sseChunks(bytes.toString('utf8')).map(usageOf)).toEqual([usage, usage, usage]);
  });

  it('streams without usage on request', async () => {
    const { bytes } = await post(STREAM, REQUEST, { 'x-sim-omit-usage': '1', 'x-sim-chunks': '2' });
    const chunks = sseChunks(bytes.toString('utf8'));
    expect(chunks).toHaveLength(2);
    expect(chunks.every((chunk) => !('usageMetadata' in chunk))).toBe(true);
  });

  it('rejects a stream without alt=sse', async () => {
    const { status, json } = await postJson('/v1beta/models/gemini-2.5-flash:streamGenerateContent', REQUEST);
    expect(status).toBe(400);
    expect((json['error'] as { status: string }).status).toBe('INVALID_ARGUMENT');
  });

  it('breaks a stream after the requested chunks', async () => {
    const response = await fetch(`${sim.url}${STREAM}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-goog-api-key': KEY, 'x-sim-cut-after': '3' },
      body: JSON.stringify(REQUEST),
    });
    let text = '';
    const error = await (async () => {
      for await (const part of response.body!) text += Buffer.from(part).toString('utf8');
    })().catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(Error);
    expect(sseChunks(text).map((chunk) => usageOf(chunk)['candidatesTokenCount'])).toEqual([1, 2, 3]);
  });
});

describe('simulator: Gemini embeddings', () => {
  it('answers embedContent without usage, as the API does', async () => {
    const { status, json } = await postJson('/v1beta/models/gemini-embedding-001:embedContent', { content: { parts: [{ text: 'alpha' }] }, outputDimensionality: 3 });
    expect(status).toBe(200);
    expect(Object.keys(json)).toEqual(['embedding']);
    expect((json['embedding'] as { values: number[] }).values).toHaveLength(3);
    expect(sim.stats().byEndpoint.embedContent).toBe(1);
  });

  it('answers batchEmbedContents with one embedding per request', async () => {
    const requests = [
      { model: 'models/gemini-embedding-001', content: { parts: [{ text: 'alpha' }] } },
      { model: 'models/gemini-embedding-001', content: { parts: [{ text: 'delta' }] } },
    ];
    const { json } = await postJson('/v1beta/models/gemini-embedding-001:batchEmbedContents', { requests }, { 'x-sim-usage': '{"promptTokenCount":2}' });
    const embeddings = json['embeddings'] as { values: number[] }[];
    expect(embeddings).toHaveLength(2);
    expect(embeddings[0]!.values).toHaveLength(8);
    expect(embeddings[0]!.values).not.toEqual(embeddings[1]!.values);
    expect(json['usageMetadata']).toEqual({ promptTokenCount: 2 });
  });
});

describe('simulator: Gemini credentials', () => {
  it('rejects a wrong key with 401 UNAUTHENTICATED', async () => {
    const { status, json } = await postJson(GENERATE, REQUEST, { 'x-goog-api-key': 'wrong' });
    expect(status).toBe(401);
    expect(json).toEqual({ error: { code: 401, message: 'invalid API key', status: 'UNAUTHENTICATED' } });
    expect(sim.stats().unauthorized).toBe(1);
  });

  it('rejects a request without a key', async () => {
    const response = await fetch(`${sim.url}${GENERATE}`, { method: 'POST', body: JSON.stringify(REQUEST) });
    expect(response.status).toBe(401);
    expect(await response.json()).toEqual({ error: { code: 401, message: 'missing API key', status: 'UNAUTHENTICATED' } });
  });

  it('redacts the key in the recorded headers', async () => {
    await post(GENERATE, REQUEST);
    expect(sim.stats().lastHeaders?.['x-goog-api-key']).toBe('<redacted>');
    expect(sim.stats().lastCredential).toBe(KEY);
  });
});

describe('simulator Gemini output through the adapter', () => {
  const adapter = adapterFor('gemini');

  function pushAll(meter: { push(chunk: Buffer): Buffer; flush(): Buffer }, bytes: Buffer, size: number): Buffer {
    const parts: Buffer[] = [];
    for (let i = 0; i < bytes.length; i += size) parts.push(meter.push(bytes.subarray(i, i + size)));
    parts.push(meter.flush());
    return Buffer.concat(parts);
  }

  it('meters a stream on its last cumulative usage', async () => {
    const info = adapter.inspect(STREAM, REQUEST);
    const { bytes } = await post(STREAM, adapter.prepare(REQUEST, info, {}), { 'x-sim-output-tokens': '20', 'x-sim-chunks': '3' });
    const meter = adapter.createStreamMeter(info, 99);
    expect(pushAll(meter, bytes, 53).equals(bytes)).toBe(true);
    expect(meter.result()).toEqual({
      usage: { input: 4, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 20, reasoning: 0, estimated: false },
      complete: true,
    });
  });

  it('meters a plain response with thoughts', async () => {
    const body = { ...REQUEST, generationConfig: { maxOutputTokens: 100, thinkingConfig: { thinkingBudget: 50 } } };
    const info = adapter.inspect(GENERATE, body);
    expect(info.maxOutputTokens).toBe(150);
    const { json } = await postJson(GENERATE, body);
    expect(adapter.usageFromJson(json, info, 99)).toEqual({
      usage: { input: 4, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 16, reasoning: 12, estimated: false },
      complete: true,
    });
  });

  it('estimates a stream cut after three chunks', async () => {
    const info = adapter.inspect(STREAM, REQUEST);
    const response = await fetch(`${sim.url}${STREAM}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...adapter.credentialHeaders(KEY), 'x-sim-cut-after': '3' },
      body: JSON.stringify(REQUEST),
    });
    const meter = adapter.createStreamMeter(info, 99);
    const error = await (async () => {
      for await (const part of response.body!) meter.push(Buffer.from(part));
    })().catch((caught: unknown) => caught);
    meter.flush();
    expect(error).toBeInstanceOf(Error);
    expect(meter.result()).toEqual({
      usage: { input: 4, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 3, reasoning: 0, estimated: true },
      complete: false,
    });
  });
});
