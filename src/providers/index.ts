import type { Protocol, ProviderAdapter } from './adapter.ts';
import { AnthropicAdapter } from './anthropic.ts';
import { AzureOpenAIAdapter } from './azure.ts';
import { GeminiAdapter } from './gemini.ts';
import { OpenAIAdapter } from './openai.ts';

export * from './adapter.ts';
export { isModelsPath, type EndpointKind } from './endpoints.ts';
export { estimatePromptFromBody, estimatePromptTokens, estimateTokensFromText, countTextTokens } from './estimate.ts';
export { SseSplitter, SseEventTooLargeError, type SseEvent, type SseVisitor } from './sse.ts';

/** Adapters hold no per-request state, so one instance of each serves every request. */
const ADAPTERS: ReadonlyMap<Protocol, ProviderAdapter> = new Map<Protocol, ProviderAdapter>([
  ['openai', new OpenAIAdapter('openai')],
  ['openai-compatible', new OpenAIAdapter('openai-compatible')],
  ['anthropic', new AnthropicAdapter()],
  ['gemini', new GeminiAdapter()],
  ['azure-openai', new AzureOpenAIAdapter()],
]);

export class UnsupportedProtocolError extends Error {
  override readonly name = 'UnsupportedProtocolError';
}

/** Tells whether a protocol has an adapter. */
export function supportsProtocol(protocol: Protocol): boolean {
  return ADAPTERS.has(protocol);
}

/** Returns the shared adapter of a protocol, or throws UnsupportedProtocolError when it has none yet. */
export function adapterFor(protocol: Protocol): ProviderAdapter {
  const adapter = ADAPTERS.get(protocol);
  if (adapter === undefined) {
    const supported = [...ADAPTERS.keys()].join(', ');
    throw new UnsupportedProtocolError(`no adapter for protocol "${protocol}": supported protocols are ${supported}`);
  }
  return adapter;
}
