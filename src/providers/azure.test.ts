import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { AzureOpenAI } from 'openai';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidRequestError, type RequestInfo, type RouteContext } from './adapter.ts';
import { AzureOpenAIAdapter } from './azure.ts';

const azure = new AzureOpenAIAdapter();

const ROUTE: RouteContext = {
  name: 'azure-east',
  deployments: new Map([
    ['prod-4o', 'gpt-4o'],
    ['reasoner', 'o3-mini'],
    ['embedder', 'text-embedding-3-small'],
  ]),
};

const CHAT = '/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21';
const MESSAGES = [{ role: 'user', content: 'hi' }];

function chatInfo(overrides: Partial<RequestInfo> = {}): RequestInfo {
  return { model: 'gpt-4o', stream: true, maxOutputTokens: undefined, clientWantsStreamUsage: false, operation: 'chat', ...overrides };
}

function inspectError(path: string, body: Record<string, unknown>, route: RouteContext | null = ROUTE): InvalidRequestError {
  try {
    azure.inspect(path, body, route ?? undefined);
  } catch (error) {
    if (error instanceof InvalidRequestError) return error;
    throw error;
  }
  throw new Error(`inspect accepted ${path}`);
}

const FILTERS = {
  hate: { filtered: false, severity: 'safe' },
  self_harm: { filtered: false, severity: 'safe' },
  sexual: { filtered: false, severity: 'safe' },
  violence: { filtered: false, severity: 'safe' },
};

/** The first chunk of an Azure stream: no choices, only the prompt's filter results. */
const PROMPT_FILTER_EVENT = `data: ${JSON.stringify({
  choices: [],
  created: 0,
  id: '',
  model: '',
  object: '',
  prompt_filter_results: [{ prompt_index: 0, content_filter_results: FILTERS }],
})}\n\n`;

function chunkEvent(delta: Record<string, unknown>, finishReason: string | null, usageNull: boolean): string {
  const chunk: Record<string, unknown> = {
    choices: [{ content_filter_results: delta['content'] ? FILTERS : {}, delta, finish_reason: finishReason, index: 0, logprobs: null }],
    created: 1700000000,
    id: 'chatcmpl-1',
    model: 'gpt-4o-2024-11-20',
    object: 'chat.completion.chunk',
    system_fingerprint: 'fp_1',
  };
  if (usageNull) chunk['usage'] = null;
  return `data: ${JSON.stringify(chunk)}\n\n`;
}

const STREAM_USAGE = {
  completion_tokens: 4,
  completion_tokens_details: { reasoning_tokens: 0 },
  prompt_tokens: 40,
  prompt_tokens_details: { cached_tokens: 8 },
  total_tokens: 44,
};

const USAGE_EVENT = `data: ${JSON.stringify({
  choices: [],
  created: 1700000000,
  id: 'chatcmpl-1',
  model: 'gpt-4o-2024-11-20',
  object: 'chat.completion.chunk',
  system_fingerprint: 'fp_1',
  usage: STREAM_USAGE,
})}\n\n`;
const DONE = 'data: [DONE]\n\n';

/** Events after the prompt filter chunk, for the text "alpha delta echo hotel" (four tokens). */
function contentEvents(usageNull: boolean): string[] {
  return [
    chunkEvent({ content: '', refusal: null, role: 'assistant' }, null, usageNull),
    chunkEvent({ content: 'alpha' }, null, usageNull),
    chunkEvent({ content: ' delta echo' }, null, usageNull),
    chunkEvent({ content: ' hotel' }, null, usageNull),
    chunkEvent({}, 'stop', usageNull),
  ];
}

/** Pushes `input` through a meter in pieces cut at `cuts` and returns what the client receives. */
function meter(info: RequestInfo, input: string, cuts: number[]) {
  const streamMeter = azure.createStreamMeter(info, 40);
  const bytes = Buffer.from(input);
  const parts: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    parts.push(streamMeter.push(bytes.subarray(from, cut)));
    from = cut;
  }
  parts.push(streamMeter.flush());
  return { output: Buffer.concat(parts).toString('utf8'), result: streamMeter.result(), metadata: streamMeter.responseMetadata() };
}

describe('AzureOpenAIAdapter.inspect', () => {
  it('rates a deployment path at its base model', () => {
    const info = azure.inspect(CHAT, { messages: MESSAGES, stream: true, max_tokens: 300, n: 2 }, ROUTE);
    expect(info).toEqual({ model: 'gpt-4o', stream: true, maxOutputTokens: 600, clientWantsStreamUsage: false, operation: 'chat' });
  });

  it('ignores the body model on a deployment path', () => {
    const info = azure.inspect(CHAT, { model: 'gpt-4.1', messages: MESSAGES }, ROUTE);
    expect(info.model).toBe('gpt-4o');
  });

  it('reads client stream usage', () => {
    const info = azure.inspect(CHAT, { messages: MESSAGES, stream: true, stream_options: { include_usage: true } }, ROUTE);
    expect(info.clientWantsStreamUsage).toBe(true);
  });

  it('reads a deployment embeddings path', () => {
    const info = azure.inspect('/openai/deployments/embedder/embeddings?api-version=2024-10-21', { input: 'hello' }, ROUTE);
    expect(info).toEqual({
      model: 'text-embedding-3-small',
      stream: false,
      maxOutputTokens: undefined,
      clientWantsStreamUsage: false,
      operation: 'embeddings',
    });
  });

  it('takes the deployment from the body on v1 paths', () => {
    const chat = azure.inspect('/openai/v1/chat/completions', { model: 'reasoner', messages: MESSAGES, max_completion_tokens: 50 }, ROUTE);
    expect(chat.model).toBe('o3-mini');
    expect(chat.maxOutputTokens).toBe(50);

    const embeddings = azure.inspect('/openai/v1/embeddings?api-version=preview', { model: 'embedder', input: 'hello' }, ROUTE);
    expect(embeddings.model).toBe('text-embedding-3-small');
    expect(embeddings.operation).toBe('embeddings');
  });

  it('accepts a base path before /openai', () => {
    const info = azure.inspect('/gateway/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21', { messages: MESSAGES }, ROUTE);
    expect(info.model).toBe('gpt-4o');
  });

  it('rejects an unknown deployment naming the configured ones', () => {
    const error = inspectError('/openai/deployments/staging-4o/chat/completions?api-version=2024-10-21', { messages: MESSAGES });
    expect(error.status).toBe(404);
    expect(error.code).toBe('DeploymentNotFound');
    expect(error.message).toBe(
      'deployment "staging-4o" is not configured on provider route "azure-east" (its deployments are prod-4o, reasoner, embedder); ' +
        "call one of those, or add the deployment with its base model to the ProviderRoute's spec.deployments",
    );
  });

  it('rejects a v1 model that is no deployment', () => {
    const error = inspectError('/openai/v1/chat/completions', { model: 'gpt-4o', messages: MESSAGES });
    expect(error.status).toBe(404);
    expect(error.message).toMatch(/^deployment "gpt-4o" is not configured on provider route "azure-east"/);
  });

  it('rejects every deployment without a route', () => {
    const error = inspectError(CHAT, { messages: MESSAGES }, null);
    expect(error.message).toMatch(/^deployment "prod-4o" is not configured on this provider route \(it lists no deployments\)/);
  });

  it('rejects a deployment path without api-version', () => {
    for (const path of ['/openai/deployments/prod-4o/chat/completions', '/openai/deployments/prod-4o/chat/completions?api-version=']) {
      const error = inspectError(path, { messages: MESSAGES });
      expect(error.status).toBe(400);
      expect(error.code).toBe('missing_api_version');
      expect(error.message).toMatch(/^missing query parameter "api-version"/);
    }
  });

  it('rejects a v1 request without a model', () => {
    const error = inspectError('/openai/v1/chat/completions', { messages: MESSAGES });
    expect(error.status).toBe(400);
    expect(error.message).toBe('missing or invalid field "model": on /openai/v1 paths it must be the name of an Azure deployment, as a non-empty string');
  });

  it('rejects an endpoint it cannot meter', () => {
    for (const path of [
      '/openai/deployments/prod-4o/completions?api-version=2024-10-21',
      '/openai/deployments/prod-4o/images/generations?api-version=2024-10-21',
      '/v1/chat/completions',
    ]) {
      const error = inspectError(path, { model: 'prod-4o', messages: MESSAGES });
      expect(error.status).toBe(404);
      expect(error.code).toBe('unsupported_endpoint');
    }
  });
});

describe('AzureOpenAIAdapter.endpointKind', () => {
  it('classifies metered and models endpoints', () => {
    const cases: Array<[string, ReturnType<typeof azure.endpointKind>]> = [
      ['/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21', 'metered'],
      ['/openai/deployments/embedder/embeddings?api-version=2024-10-21', 'metered'],
      ['/openai/v1/chat/completions', 'metered'],
      ['/openai/v1/embeddings', 'metered'],
      ['/openai/models?api-version=2024-10-21', 'models'],
      ['/openai/models/gpt-4o-2024-08-06?api-version=2024-10-21', 'models'],
      ['/openai/v1/models', 'models'],
      ['/openai/v1/models/gpt-4o', 'models'],
      ['/openai/deployments?api-version=2022-12-01', 'models'],
      ['/openai/deployments/prod-4o?api-version=2022-12-01', 'models'],
      ['/openai/v1/responses/resp_1', undefined],
      ['/openai/files?api-version=2024-10-21', undefined],
      ['/openai/v1/files', undefined],
      ['/openai/fine_tuning/jobs?api-version=2024-10-21', undefined],
      ['/openai/batches?api-version=2024-10-21', undefined],
      ['/openai/files/file-1/openai/models', undefined],
    ];
    for (const [path, kind] of cases) expect(azure.endpointKind(path, ''), path).toBe(kind);
  });
});

describe('AzureOpenAIAdapter.prepare', () => {
  it('sets max_tokens for a non-reasoning base model', () => {
    const prepared = azure.prepare({ messages: MESSAGES, stream: true }, chatInfo(), { maxOutputTokens: 512 });
    expect(prepared).toEqual({ messages: MESSAGES, stream: true, stream_options: { include_usage: true }, max_tokens: 512 });
  });

  it('sets max_completion_tokens for a reasoning base model', () => {
    const prepared = azure.prepare({ messages: MESSAGES }, chatInfo({ model: 'o3-mini', stream: false }), { maxOutputTokens: 512 });
    expect(prepared).toEqual({ messages: MESSAGES, max_completion_tokens: 512 });
  });

  it('lowers the limit field the client used', () => {
    const prepared = azure.prepare({ messages: MESSAGES, max_completion_tokens: 9000 }, chatInfo({ stream: false }), { maxOutputTokens: 100 });
    expect(prepared).toEqual({ messages: MESSAGES, max_completion_tokens: 100 });
  });
});

describe('AzureOpenAIAdapter usage', () => {
  it('reads a response with content filter fields', () => {
    const body = {
      choices: [
        {
          content_filter_results: FILTERS,
          finish_reason: 'stop',
          index: 0,
          logprobs: null,
          message: { content: 'alpha delta', refusal: null, role: 'assistant' },
        },
      ],
      created: 1700000000,
      id: 'chatcmpl-1',
      model: 'gpt-4o-2024-11-20',
      object: 'chat.completion',
      prompt_filter_results: [{ prompt_index: 0, content_filter_results: FILTERS }],
      system_fingerprint: 'fp_1',
      usage: { completion_tokens: 2, prompt_tokens: 30, prompt_tokens_details: { cached_tokens: 10 }, total_tokens: 32 },
    };
    const { usage, complete } = azure.usageFromJson(body, chatInfo({ stream: false }), 25);
    expect(complete).toBe(true);
    expect(usage).toEqual({ input: 20, cacheRead: 10, cacheWrite5m: 0, cacheWrite1h: 0, output: 2, reasoning: 0, estimated: false });
  });

  it('reads embeddings usage as input only', () => {
    const body = { object: 'list', data: [], model: 'text-embedding-3-small', usage: { prompt_tokens: 7, total_tokens: 7 } };
    const { usage } = azure.usageFromJson(body, chatInfo({ operation: 'embeddings', stream: false }), 9);
    expect(usage.input).toBe(7);
    expect(usage.output).toBe(0);
  });
});

describe('AzureOpenAIAdapter stream meter', () => {
  it('keeps the prompt filter chunk and hides the usage it requested', () => {
    const upstream = [PROMPT_FILTER_EVENT, ...contentEvents(true), USAGE_EVENT, DONE].join('');
    const expected = [PROMPT_FILTER_EVENT, ...contentEvents(false), DONE].join('');
    for (const cuts of [[], [5], [PROMPT_FILTER_EVENT.length], [PROMPT_FILTER_EVENT.length + 3, upstream.length - 30]]) {
      const { output, result } = meter(chatInfo(), upstream, cuts);
      expect(output).toBe(expected);
      expect(result.complete).toBe(true);
      expect(result.usage).toEqual({ input: 32, cacheRead: 8, cacheWrite5m: 0, cacheWrite1h: 0, output: 4, reasoning: 0, estimated: false });
    }
  });

  it('passes the stream unchanged when the client asked for usage', () => {
    const upstream = [PROMPT_FILTER_EVENT, ...contentEvents(true), USAGE_EVENT, DONE].join('');
    const { output, result } = meter(chatInfo({ clientWantsStreamUsage: true }), upstream, [17]);
    expect(output).toBe(upstream);
    expect(result.usage.output).toBe(4);
  });

  it('estimates a stream cut after the prompt filter chunk', () => {
    const events = contentEvents(true);
    const { result } = meter(chatInfo(), PROMPT_FILTER_EVENT + events[0]! + events[1]!, []);
    expect(result.complete).toBe(false);
    expect(result.usage.input).toBe(40);
    expect(result.usage.output).toBe(1);
    expect(result.usage.estimated).toBe(true);
  });
});

describe('AzureOpenAIAdapter stream meter response metadata', () => {
  it('reads past the prompt filter chunk', () => {
    const upstream = [PROMPT_FILTER_EVENT, ...contentEvents(true), USAGE_EVENT, DONE].join('');
    for (const cuts of [[], [PROMPT_FILTER_EVENT.length], [upstream.length - 30]]) {
      expect(meter(chatInfo(), upstream, cuts).metadata).toEqual({ id: 'chatcmpl-1', model: 'gpt-4o-2024-11-20', finishReasons: ['stop'] });
    }
  });

  it('skips a blank id and model', () => {
    expect(meter(chatInfo(), PROMPT_FILTER_EVENT, []).metadata).toEqual({ id: undefined, model: undefined, finishReasons: [] });
  });

  it('keeps metadata after a blank chunk', () => {
    const events = contentEvents(true);
    const { metadata } = meter(chatInfo(), events[0]! + PROMPT_FILTER_EVENT, []);
    expect(metadata).toEqual({ id: 'chatcmpl-1', model: 'gpt-4o-2024-11-20', finishReasons: [] });
  });
});

describe('Azure wire format with the AzureOpenAI client', () => {
  let server: Server | undefined;
  afterEach(() => {
    server?.close();
    server = undefined;
  });

  /** Starts a server that records the request and responds with `status` and `body`. */
  async function answer(status: number, body: unknown): Promise<{ url: string; seen: { url?: string; headers?: IncomingHttpHeaders } }> {
    const seen: { url?: string; headers?: IncomingHttpHeaders } = {};
    server = createServer((request, response) => {
      seen.url = request.url;
      seen.headers = request.headers;
      request.resume();
      response.writeHead(status, { 'content-type': 'application/json' });
      response.end(JSON.stringify(body));
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    return { url: `http://127.0.0.1:${port}`, seen };
  }

  it('surfaces the error message through the client', async () => {
    const body = azure.errorBody({ status: 402, code: 'insufficient_funds', message: 'wallet team-a cannot pay 0.05 USD; add funds' });
    const { url, seen } = await answer(402, body);
    const client = new AzureOpenAI({ endpoint: url, apiKey: 'client-key', apiVersion: '2024-10-21', deployment: 'prod-4o', maxRetries: 0 });

    const error = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(AzureOpenAI.APIError);
    const apiError = error as InstanceType<typeof AzureOpenAI.APIError>;
    expect(apiError.status).toBe(402);
    expect(apiError.message).toBe('402 wallet team-a cannot pay 0.05 USD; add funds');
    expect(apiError.code).toBe('insufficient_funds');

    // The path and credential header the adapter reads are the ones this client sends.
    expect(seen.url).toBe('/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21');
    expect(seen.headers?.['api-key']).toBe('client-key');
    expect(seen.headers?.['authorization']).toBeUndefined();
  });

  it('sends the credential in api-key', () => {
    expect(azure.credentialHeaders('azure-key')).toEqual({ 'api-key': 'azure-key' });
    expect(azure.defaultHeaders).toEqual({});
  });
});
