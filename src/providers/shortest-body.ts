import type { Protocol, RequestInfo } from './adapter.ts';
import { isResponsesRequest } from './openai-responses.ts';

/**
 * Returns the byte length of the shortest body that the route's endpoint
 * accepts for this operation. It has a one-character prompt, and the model
 * unless the protocol names it in the path (Azure, Gemini). It sets an
 * output limit of 1 when the request sets a limit, and always for Anthropic,
 * which requires one. OpenAI-style chat bodies use max_tokens, the shorter of
 * the two limit fields, and Responses API bodies max_output_tokens.
 */
export function shortestBodyBytes(protocol: Protocol, info: RequestInfo): number {
  const prompt = 'x';
  const messages = [{ role: 'user', content: prompt }];
  const limit = info.maxOutputTokens === undefined ? {} : { max_tokens: 1 };
  const embeddings = info.operation === 'embeddings';
  let body: Record<string, unknown>;
  switch (protocol) {
    case 'openai':
    case 'openai-compatible':
      if (isResponsesRequest(info)) {
        // The Responses API takes the prompt as a string, and no output limit below 16.
        body = { model: info.model, input: prompt, ...(info.maxOutputTokens === undefined ? {} : { max_output_tokens: 16 }) };
      } else {
        body = embeddings ? { model: info.model, input: prompt } : { model: info.model, messages, ...limit };
      }
      break;
    case 'azure-openai':
      body = embeddings ? { input: prompt } : { messages, ...limit };
      break;
    case 'anthropic':
      body = { model: info.model, max_tokens: 1, messages };
      break;
    case 'gemini': {
      const generationConfig = info.maxOutputTokens === undefined ? {} : { generationConfig: { maxOutputTokens: 1 } };
      body = embeddings ? { content: { parts: [{ text: prompt }] } } : { contents: [{ parts: [{ text: prompt }] }], ...generationConfig };
      break;
    }
  }
  return Buffer.byteLength(JSON.stringify(body));
}
