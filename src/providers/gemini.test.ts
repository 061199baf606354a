import { describe, expect, it } from 'vitest';
import { InvalidRequestError, type RequestInfo } from './adapter.ts';
import { GeminiAdapter } from './gemini.ts';

const gemini = new GeminiAdapter();

const GENERATE = '/v1beta/models/gemini-2.5-flash:generateContent';
const STREAM = '/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse';
const CONTENTS = [{ role: 'user', parts: [{ text: 'alpha delta echo' }] }];

function chatInfo(overrides: Partial<RequestInfo> = {}): RequestInfo {
  return { model: 'gemini-2.5-flash', stream: true, maxOutputTokens: undefined, clientWantsStreamUsage: true, operation: 'chat', ...overrides };
}

function usage(fields: Partial<Record<'input' | 'cacheRead' | 'output' | 'reasoning', number>>, estimated = false) {
  return { input: 0, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 0, reasoning: 0, ...fields, estimated };
}

/** Builds one streamed GenerateContentResponse event, written as the Gemini API writes it. */
function chunk(text: string | undefined, usageMetadata: Record<string, unknown> | undefined, finishReason?: string): string {
  const candidate: Record<string, unknown> = { index: 0 };
  if (text !== undefined) candidate['content'] = { parts: [{ text }], role: 'model' };
  if (finishReason !== undefined) candidate['finishReason'] = finishReason;
  const response: Record<string, unknown> = { candidates: [candidate], modelVersion: 'gemini-2.5-flash', responseId: 'resp-1' };
  if (usageMetadata !== undefined) response['usageMetadata'] = usageMetadata;
  return `data: ${JSON.stringify(response)}\r\n\r\n`;
}

/** C3: usage repeats in every chunk with cumulative counts. The text is "alpha delta echo hotel", four tokens. */
const C3_STREAM = [
  chunk('alpha', { promptTokenCount: 1200, candidatesTokenCount: 5 }),
  chunk(' delta echo', { promptTokenCount: 1200, candidatesTokenCount: 12 }),
  chunk(' hotel', { promptTokenCount: 1200, candidatesTokenCount: 20, totalTokenCount: 1220 }, 'STOP'),
].join('');

function meter(input: string, cuts: number[], promptEstimate = 30) {
  const streamMeter = gemini.createStreamMeter(chatInfo(), promptEstimate);
  const bytes = Buffer.from(input);
  const parts: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    parts.push(streamMeter.push(bytes.subarray(from, cut)));
    from = cut;
  }
  parts.push(streamMeter.flush());
  return { output: Buffer.concat(parts), result: streamMeter.result(), metadata: streamMeter.responseMetadata() };
}

describe('GeminiAdapter.inspect', () => {
  it('reads the model from the path', () => {
    expect(gemini.inspect(GENERATE, { contents: CONTENTS })).toEqual(chatInfo({ stream: false }));
  });

  it('reads a streamed request with alt=sse', () => {
    expect(gemini.inspect(STREAM, { contents: CONTENTS })).toEqual(chatInfo());
    expect(gemini.inspect('/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?key2=x&alt=sse', {}).model).toBe('gemini-2.5-pro');
  });

  it('accepts the stable v1 API and dated model ids', () => {
    expect(gemini.inspect('/v1/models/gemini-2.5-flash-preview-05-20:generateContent', {}).model).toBe('gemini-2.5-flash-preview-05-20');
  });

  it('rejects a stream without alt=sse', () => {
    const path = '/v1beta/models/gemini-2.5-flash:streamGenerateContent';
    expect(() => gemini.inspect(path, {})).toThrow(InvalidRequestError);
    expect(() => gemini.inspect(path, {})).toThrow(/add \?alt=sse to the URL/);
    expect(() => gemini.inspect(`${path}?alt=json`, {})).toThrow(/alt=sse/);
  });

  it('rejects countTokens and unknown methods as unsupported', () => {
    for (const path of ['/v1beta/models/gemini-2.5-flash:countTokens', '/v1beta/models/gemini-2.5-flash:predict', '/v1beta/models', '/v1beta/tunedModels/mine:generateContent']) {
      let caught: unknown;
      try {
        gemini.inspect(path, {});
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(InvalidRequestError);
      expect((caught as InvalidRequestError).status).toBe(404);
      expect((caught as InvalidRequestError).code).toBe('unsupported_endpoint');
      expect((caught as Error).message).toContain(':generateContent, :streamGenerateContent?alt=sse, :embedContent and :batchEmbedContents');
    }
  });

  it('rejects unusual model id characters', () => {
    expect(() => gemini.inspect('/v1beta/models/gemini%2D2.5-flash:generateContent', {})).toThrow(/unsupported endpoint/);
    expect(() => gemini.inspect('/v1beta/models/:generateContent', {})).toThrow(/unsupported endpoint/);
  });

  it('rejects a key in the query string', () => {
    expect(() => gemini.inspect(`${GENERATE}?key=client-key`, {})).toThrow(/remove the "key" query parameter/);
  });

  it('rejects a body model that differs from the path', () => {
    expect(gemini.inspect(GENERATE, { model: 'models/gemini-2.5-flash' }).model).toBe('gemini-2.5-flash');
    expect(gemini.inspect(GENERATE, { model: 'gemini-2.5-flash' }).model).toBe('gemini-2.5-flash');
    expect(() => gemini.inspect(GENERATE, { model: 'models/gemini-2.5-pro' })).toThrow(/the body names "models\/gemini-2.5-pro" but the URL names "models\/gemini-2.5-flash"/);
  });

  it('reads maxOutputTokens', () => {
    expect(gemini.inspect(GENERATE, { generationConfig: { maxOutputTokens: 300 } }).maxOutputTokens).toBe(300);
  });

  it('adds a positive thinking budget to the output limit', () => {
    const body = { generationConfig: { maxOutputTokens: 300, thinkingConfig: { thinkingBudget: 1024 } } };
    expect(gemini.inspect(GENERATE, body).maxOutputTokens).toBe(1324);
  });

  it('bounds dynamic thinking by maxOutputTokens', () => {
    for (const thinkingBudget of [-1, 0]) {
      const body = { generationConfig: { maxOutputTokens: 300, thinkingConfig: { thinkingBudget } } };
      expect(gemini.inspect(GENERATE, body).maxOutputTokens).toBe(300);
    }
    expect(gemini.inspect(GENERATE, { generationConfig: { maxOutputTokens: 300, thinkingConfig: { thinkingLevel: 'high' } } }).maxOutputTokens).toBe(300);
  });

  it('multiplies the limit by candidateCount', () => {
    const body = { generationConfig: { maxOutputTokens: 300, candidateCount: 3, thinkingConfig: { thinkingBudget: 100 } } };
    expect(gemini.inspect(GENERATE, body).maxOutputTokens).toBe(1200);
  });

  it('leaves the limit unset when the client set none', () => {
    expect(gemini.inspect(GENERATE, { generationConfig: { thinkingConfig: { thinkingBudget: 1024 } } }).maxOutputTokens).toBeUndefined();
    expect(gemini.inspect(GENERATE, { generationConfig: { temperature: 0.5 } }).maxOutputTokens).toBeUndefined();
  });

  it('reads the snake_case spellings the API also accepts', () => {
    const body = { generation_config: { max_output_tokens: 200, candidate_count: 2, thinking_config: { thinking_budget: 50 } } };
    expect(gemini.inspect(GENERATE, body).maxOutputTokens).toBe(500);
  });

  it('rejects a field set in both spellings', () => {
    const body = { generationConfig: { maxOutputTokens: 200, max_output_tokens: 90000 } };
    expect(() => gemini.inspect(GENERATE, body)).toThrow(/sets both "maxOutputTokens" and "max_output_tokens"/);
    expect(() => gemini.inspect(GENERATE, { generationConfig: {}, generation_config: {} })).toThrow(/"generationConfig" and "generation_config"/);
  });

  it('rejects malformed limits naming the field', () => {
    expect(() => gemini.inspect(GENERATE, { generationConfig: { maxOutputTokens: '300' } })).toThrow(/invalid field "maxOutputTokens"/);
    expect(() => gemini.inspect(GENERATE, { generationConfig: { thinkingConfig: { thinkingBudget: -2 } } })).toThrow(/invalid field "thinkingBudget"/);
    expect(() => gemini.inspect(GENERATE, { generationConfig: 'fast' })).toThrow(/invalid field "generationConfig"/);
  });

  it('reads embeddings requests', () => {
    const embed = gemini.inspect('/v1beta/models/gemini-embedding-001:embedContent', { content: { parts: [{ text: 'alpha' }] } });
    expect(embed).toEqual({ model: 'gemini-embedding-001', stream: false, maxOutputTokens: undefined, clientWantsStreamUsage: false, operation: 'embeddings' });
    const batch = { requests: [{ model: 'models/gemini-embedding-001', content: { parts: [{ text: 'alpha' }] } }] };
    expect(gemini.inspect('/v1beta/models/gemini-embedding-001:batchEmbedContents', batch).operation).toBe('embeddings');
  });

  it('rejects a batch entry naming another model', () => {
    const batch = { requests: [{ model: 'models/text-embedding-004', content: { parts: [{ text: 'alpha' }] } }] };
    expect(() => gemini.inspect('/v1beta/models/gemini-embedding-001:batchEmbedContents', batch)).toThrow(/the body names "models\/text-embedding-004"/);
  });
});

describe('GeminiAdapter.endpointKind', () => {
  it('classifies metered and models endpoints', () => {
    const cases: Array<[string, ReturnType<typeof gemini.endpointKind>]> = [
      ['/v1beta/models/gemini-2.5-flash:generateContent', 'metered'],
      ['/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse', 'metered'],
      ['/v1/models/gemini-embedding-001:batchEmbedContents', 'metered'],
      ['/v1beta/models', 'models'],
      ['/v1beta/models?pageSize=50&pageToken=abc', 'models'],
      ['/v1/models/gemini-2.5-flash', 'models'],
      ['/v1alpha/models/gemini-2.0-flash-001', 'models'],
      ['/v1beta/models/gemini-2.5-flash:countTokens', undefined],
      ['/v1beta/models/gemini-2.5-flash:predict', undefined],
      ['/v1beta/tunedModels', undefined],
      ['/v1beta/tunedModels/my-model', undefined],
      ['/v1beta/files', undefined],
      ['/v1beta/cachedContents', undefined],
      ['/v1beta/batches/b1', undefined],
      ['/models', undefined],
      ['/v1beta/files/f1/v1beta/models', undefined],
    ];
    for (const [path, kind] of cases) expect(gemini.endpointKind(path, ''), path).toBe(kind);
  });
});

describe('GeminiAdapter.prepare', () => {
  it('sets maxOutputTokens without modifying the client body', () => {
    const body = { contents: CONTENTS, generationConfig: { temperature: 0.2 } };
    const prepared = gemini.prepare(body, gemini.inspect(GENERATE, body), { maxOutputTokens: 2000 });
    expect(prepared).toEqual({ contents: CONTENTS, generationConfig: { temperature: 0.2, maxOutputTokens: 2000 } });
    expect(body).toEqual({ contents: CONTENTS, generationConfig: { temperature: 0.2 } });
  });

  it('adds generationConfig when the body has none', () => {
    const body = { contents: CONTENTS };
    expect(gemini.prepare(body, gemini.inspect(GENERATE, body), { maxOutputTokens: 64 })).toEqual({ contents: CONTENTS, generationConfig: { maxOutputTokens: 64 } });
  });

  it('returns the body unchanged when nothing changes', () => {
    const body = { contents: CONTENTS };
    expect(gemini.prepare(body, gemini.inspect(STREAM, body), {})).toBe(body);
  });

  it('fits thinking budget and limit together', () => {
    const body = { generationConfig: { thinkingConfig: { thinkingBudget: 24576, includeThoughts: true } } };
    const prepared = gemini.prepare(body, gemini.inspect(GENERATE, body), { maxOutputTokens: 4096 });
    expect(prepared).toEqual({ generationConfig: { maxOutputTokens: 2048, thinkingConfig: { thinkingBudget: 2048, includeThoughts: true } } });
  });

  it('keeps a thinking budget that fits', () => {
    const body = { generationConfig: { thinkingConfig: { thinkingBudget: 512 } } };
    const prepared = gemini.prepare(body, gemini.inspect(GENERATE, body), { maxOutputTokens: 4096 });
    expect(prepared).toEqual({ generationConfig: { maxOutputTokens: 3584, thinkingConfig: { thinkingBudget: 512 } } });
  });

  it('leaves dynamic thinking to maxOutputTokens', () => {
    const body = { generationConfig: { thinkingConfig: { thinkingBudget: -1 } } };
    const prepared = gemini.prepare(body, gemini.inspect(GENERATE, body), { maxOutputTokens: 4096 });
    expect(prepared).toEqual({ generationConfig: { maxOutputTokens: 4096, thinkingConfig: { thinkingBudget: -1 } } });
  });

  it('divides the limit among candidates', () => {
    const body = { generationConfig: { candidateCount: 3 } };
    expect(gemini.prepare(body, gemini.inspect(GENERATE, body), { maxOutputTokens: 100 })).toEqual({ generationConfig: { candidateCount: 3, maxOutputTokens: 33 } });
  });

  it('writes the spelling the client used', () => {
    const body = { generation_config: { max_output_tokens: 9000, thinking_config: { thinking_budget: 1000 } } };
    const prepared = gemini.prepare(body, gemini.inspect(GENERATE, body), { maxOutputTokens: 1000 });
    expect(prepared).toEqual({ generation_config: { max_output_tokens: 500, thinking_config: { thinking_budget: 500 } } });
  });

  it('never changes an embeddings request', () => {
    const body = { content: { parts: [{ text: 'alpha' }] } };
    const info = gemini.inspect('/v1beta/models/gemini-embedding-001:embedContent', body);
    expect(gemini.prepare(body, info, { maxOutputTokens: 10 })).toBe(body);
  });
});

describe('Gemini usage normalization', () => {
  it('keeps thinking tokens apart from the answer (C6)', () => {
    const body = {
      candidates: [{ content: { parts: [{ text: 'alpha' }], role: 'model' }, finishReason: 'STOP', index: 0 }],
      usageMetadata: { promptTokenCount: 55021, candidatesTokenCount: 923, thoughtsTokenCount: 785, totalTokenCount: 56729 },
    };
    expect(gemini.usageFromJson(body, chatInfo({ stream: false }), 60000)).toEqual({
      usage: usage({ input: 55021, output: 923, reasoning: 785 }),
      complete: true,
    });
  });

  it('moves cached tokens out of the prompt count', () => {
    const body = { usageMetadata: { promptTokenCount: 10000, cachedContentTokenCount: 8000, candidatesTokenCount: 50, totalTokenCount: 10050 } };
    expect(gemini.usageFromJson(body, chatInfo(), 1).usage).toEqual(usage({ input: 2000, cacheRead: 8000, output: 50 }));
  });

  it('bills tool-use prompt tokens as input', () => {
    const raw = { promptTokenCount: 151, candidatesTokenCount: 1089, toolUsePromptTokenCount: 18329, thoughtsTokenCount: 1120, totalTokenCount: 20689 };
    expect(gemini.usageFromJson({ usageMetadata: raw }, chatInfo(), 1).usage).toEqual(usage({ input: 18480, output: 1089, reasoning: 1120 }));
  });

  it('reads a left-out count as zero without text', () => {
    // A model that spent the whole limit thinking returns no text and no candidatesTokenCount.
    const body = {
      candidates: [{ content: { role: 'model' }, finishReason: 'MAX_TOKENS', index: 0 }],
      usageMetadata: { promptTokenCount: 12, thoughtsTokenCount: 100, totalTokenCount: 112 },
    };
    expect(gemini.usageFromJson(body, chatInfo(), 20)).toEqual({ usage: usage({ input: 12, reasoning: 100 }), complete: true });
  });

  it('estimates a response without usage (C14)', () => {
    const body = { candidates: [{ content: { parts: [{ text: 'alpha delta echo' }], role: 'model' }, finishReason: 'STOP' }] };
    expect(gemini.usageFromJson(body, chatInfo(), 40)).toEqual({ usage: usage({ input: 40, output: 3 }, true), complete: false });
  });

  it('estimates a missing or impossible zero prompt count (C14)', () => {
    const text = { candidates: [{ content: { parts: [{ text: 'alpha' }] } }] };
    expect(gemini.usageFromJson({ ...text, usageMetadata: { candidatesTokenCount: 1 } }, chatInfo(), 40).usage).toEqual(usage({ input: 40, output: 1 }, true));
    expect(gemini.usageFromJson({ ...text, usageMetadata: { promptTokenCount: 0, candidatesTokenCount: 1 } }, chatInfo(), 40).usage).toEqual(
      usage({ input: 40, output: 1 }, true),
    );
  });

  it('estimates a missing candidates count', () => {
    const body = {
      candidates: [{ content: { parts: [{ text: 'thinking about it', thought: true }, { text: 'alpha delta' }] } }],
      usageMetadata: { promptTokenCount: 7, thoughtsTokenCount: 90 },
    };
    expect(gemini.usageFromJson(body, chatInfo(), 40).usage).toEqual(usage({ input: 7, output: 2, reasoning: 90 }, true));
  });

  it('counts function call arguments in an estimate', () => {
    const body = { candidates: [{ content: { parts: [{ functionCall: { name: 'lookup', args: { city: 'Paris' } } }] } }] };
    const { usage: estimated } = gemini.usageFromJson(body, chatInfo(), 10);
    expect(estimated.output).toBeGreaterThan(2);
    expect(estimated.estimated).toBe(true);
  });

  it('estimates embeddings, whose responses carry no usage', () => {
    const info = gemini.inspect('/v1beta/models/gemini-embedding-001:embedContent', {});
    expect(gemini.usageFromJson({ embedding: { values: [0.1, 0.2] } }, info, 9)).toEqual({ usage: usage({ input: 9 }, true), complete: false });
    expect(gemini.usageFromJson({ embedding: { values: [0.1] }, usageMetadata: { promptTokenCount: 6 } }, info, 9)).toEqual({
      usage: usage({ input: 6 }),
      complete: true,
    });
  });
});

describe('Gemini stream meter', () => {
  it('takes the latest usage, not the sum (C3)', () => {
    const { output, result } = meter(C3_STREAM, []);
    expect(output.toString()).toBe(C3_STREAM);
    expect(result).toEqual({ usage: usage({ input: 1200, output: 20 }), complete: true });
  });

  it('reads the same usage at every split point', () => {
    const expected = { usage: usage({ input: 1200, output: 20 }), complete: true };
    const bytes = Buffer.byteLength(C3_STREAM);
    for (let cut = 1; cut < bytes; cut += 7) {
      const { output, result } = meter(C3_STREAM, [cut, Math.min(cut + 3, bytes)]);
      expect(output.toString()).toBe(C3_STREAM);
      expect(result).toEqual(expected);
    }
  });

  it('keeps fields that later chunks leave out', () => {
    const stream = [
      chunk(undefined, { promptTokenCount: 900, cachedContentTokenCount: 600, thoughtsTokenCount: 40 }),
      chunk('alpha', { promptTokenCount: 900, candidatesTokenCount: 1, thoughtsTokenCount: 75 }),
      chunk(' delta', { promptTokenCount: 900, candidatesTokenCount: 2, totalTokenCount: 977 }, 'STOP'),
    ].join('');
    expect(meter(stream, [50]).result).toEqual({ usage: usage({ input: 300, cacheRead: 600, output: 2, reasoning: 75 }), complete: true });
  });

  it('estimates a stream that carries no usage (C14)', () => {
    const stream = [chunk('alpha', undefined), chunk(' delta echo', undefined, 'STOP')].join('');
    expect(meter(stream, [10], 25).result).toEqual({ usage: usage({ input: 25, output: 3 }, true), complete: false });
  });

  it('marks usage seen before a cut as estimated', () => {
    const stream = [chunk('alpha', { promptTokenCount: 1200, candidatesTokenCount: 5 }), chunk(' delta echo', { promptTokenCount: 1200, candidatesTokenCount: 12 })].join('');
    expect(meter(stream, []).result).toEqual({ usage: usage({ input: 1200, output: 12 }, true), complete: false });
  });

  it('reads events that end with a plain LF', () => {
    const stream = C3_STREAM.replaceAll('\r\n', '\n');
    expect(meter(stream, [100]).result).toEqual({ usage: usage({ input: 1200, output: 20 }), complete: true });
  });
});

describe('Gemini stream meter response metadata', () => {
  it('reads metadata at every split point', () => {
    const bytes = Buffer.byteLength(C3_STREAM);
    for (let cut = 0; cut <= bytes; cut += 7) {
      const { metadata } = meter(C3_STREAM, [cut]);
      expect(metadata, `cut at ${cut}`).toEqual({ id: 'resp-1', model: 'gemini-2.5-flash', finishReasons: ['STOP'] });
    }
  });

  it('orders finish reasons by candidate index', () => {
    const candidates = [
      { index: 1, content: { parts: [{ text: 'b' }], role: 'model' }, finishReason: 'MAX_TOKENS' },
      { index: 0, content: { parts: [{ text: 'a' }], role: 'model' }, finishReason: 'STOP' },
    ];
    const stream = `data: ${JSON.stringify({ candidates, modelVersion: 'gemini-2.5-pro', responseId: 'resp-2' })}\r\n\r\n`;
    expect(meter(stream, []).metadata).toEqual({ id: 'resp-2', model: 'gemini-2.5-pro', finishReasons: ['STOP', 'MAX_TOKENS'] });
  });

  it('places a candidate without index by position', () => {
    const candidates = [{ finishReason: 'STOP' }, { finishReason: 'SAFETY' }];
    const stream = `data: ${JSON.stringify({ candidates, modelVersion: 'gemini-2.5-pro', responseId: 'resp-3' })}\r\n\r\n`;
    expect(meter(stream, []).metadata.finishReasons).toEqual(['STOP', 'SAFETY']);
  });

  it('reads a stream cut before finishing', () => {
    const stream = chunk('alpha', { promptTokenCount: 1200, candidatesTokenCount: 5 });
    expect(meter(stream, []).metadata).toEqual({ id: 'resp-1', model: 'gemini-2.5-flash', finishReasons: [] });
  });
});

describe('Gemini error body', () => {
  it('writes the google.rpc status format', () => {
    expect(gemini.errorBody({ status: 402, code: 'insufficient_funds', message: 'wallet "team-a" is out of funds' })).toEqual({
      error: {
        code: 402,
        message: 'wallet "team-a" is out of funds',
        status: 'RESOURCE_EXHAUSTED',
        details: [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'INSUFFICIENT_FUNDS', domain: 'tollgate.dev' }],
      },
    });
  });

  it('maps HTTP statuses to google.rpc codes', () => {
    const statusOf = (status: number) => (gemini.errorBody({ status, code: 'x', message: 'm' })['error'] as { status: string }).status;
    expect(statusOf(400)).toBe('INVALID_ARGUMENT');
    expect(statusOf(404)).toBe('NOT_FOUND');
    expect(statusOf(413)).toBe('INVALID_ARGUMENT');
    expect(statusOf(503)).toBe('UNAVAILABLE');
    expect(statusOf(502)).toBe('UNAVAILABLE');
    expect(statusOf(422)).toBe('FAILED_PRECONDITION');
    expect(statusOf(507)).toBe('INTERNAL');
  });

  it('sends the credential as x-goog-api-key', () => {
    expect(gemini.credentialHeaders('AIza-test')).toEqual({ 'x-goog-api-key': 'AIza-test' });
    expect(gemini.defaultHeaders).toEqual({});
  });
});
