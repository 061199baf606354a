import { describe, expect, it } from 'vitest';
import type { RequestInfo } from './adapter.ts';
import { shortestBodyBytes } from './shortest-body.ts';

function info(operation: RequestInfo['operation'], maxOutputTokens?: number): RequestInfo {
  return { operation, model: 'm1', stream: false, maxOutputTokens } as RequestInfo;
}

describe('shortestBodyBytes', () => {
  it('measures the shortest OpenAI chat body, with a limit only when the request set one', () => {
    expect(shortestBodyBytes('openai', info('chat'))).toBe('{"model":"m1","messages":[{"role":"user","content":"x"}]}'.length);
    expect(shortestBodyBytes('openai-compatible', info('chat', 100))).toBe('{"model":"m1","messages":[{"role":"user","content":"x"}],"max_tokens":1}'.length);
    expect(shortestBodyBytes('openai', info('embeddings'))).toBe('{"model":"m1","input":"x"}'.length);
  });

  it('leaves out the model where the path names it', () => {
    expect(shortestBodyBytes('azure-openai', info('chat'))).toBe('{"messages":[{"role":"user","content":"x"}]}'.length);
    expect(shortestBodyBytes('azure-openai', info('embeddings'))).toBe('{"input":"x"}'.length);
    expect(shortestBodyBytes('gemini', info('chat', 8))).toBe('{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"maxOutputTokens":1}}'.length);
    expect(shortestBodyBytes('gemini', info('embeddings'))).toBe('{"content":{"parts":[{"text":"x"}]}}'.length);
  });

  it('measures a Responses API body with its own input and limit fields', () => {
    const responses = (maxOutputTokens?: number) => ({ ...info('chat', maxOutputTokens), api: 'responses' }) as RequestInfo;
    expect(shortestBodyBytes('openai', responses())).toBe('{"model":"m1","input":"x"}'.length);
    expect(shortestBodyBytes('openai', responses(500))).toBe('{"model":"m1","input":"x","max_output_tokens":16}'.length);
  });

  it('always sets the output limit Anthropic requires', () => {
    expect(shortestBodyBytes('anthropic', info('chat'))).toBe('{"model":"m1","max_tokens":1,"messages":[{"role":"user","content":"x"}]}'.length);
  });
});
