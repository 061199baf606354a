/**
 * A provider simulator for tests, benchmarks and local mode: a plain HTTP
 * server that serves OpenAI Chat Completions, Responses and Embeddings
 * (Chat Completions and Embeddings also on Azure OpenAI's deployment and v1
 * paths), Anthropic Messages, and Gemini
 * generateContent, streamGenerateContent (alt=sse), embedContent and
 * batchEmbedContents requests, JSON and streamed, with deterministic text
 * and usage.
 *
 * It serves POST on the providers' exact paths only: `/v1/chat/completions`,
 * `/v1/responses`, `/v1/embeddings`, `/v1/messages`, `/{v1,v1beta,v1alpha}/models/{model}:{method}`,
 * `/openai/deployments/{deployment}/{chat/completions,embeddings}` and
 * `/openai/v1/{chat/completions,embeddings}`. It serves GET and HEAD on the
 * models endpoints of each provider from a fixed catalog (see models.ts).
 * Any other path or method gets
 * a 404 in the format of the provider it looks meant for, as the real
 * provider would send, so a wrong base URL fails here as it fails there.
 *
 * Requests steer it through headers:
 * - `x-sim-usage`: JSON of the exact usage object to report, in the provider's shape
 * - `x-sim-omit-usage: 1`: report no usage
 * - `x-sim-status`: respond with this error status (400-599)
 * - `x-sim-latency-ms`: wait before responding
 * - `x-sim-chunks`: number of content chunks of a stream
 * - `x-sim-chunk-delay-ms`: wait between content chunks
 * - `x-sim-cut-after`: destroy the connection after this many content chunks
 * - `x-sim-output-tokens`: output length (default 16), capped by the request's output limit
 */
import { processStats, type SimulatorStats } from './server.ts';

export { startSimulator, type Simulator, type SimulatorOptions, type SimulatorStats } from './server.ts';
export { DEFAULT_OUTPUT_TOKENS, generatedText } from './text.ts';
export { DEFAULT_EMBEDDING_DIMENSIONS } from './openai.ts';

/** Returns a copy of the counters of every simulator started in this process. */
export function stats(): SimulatorStats {
  return structuredClone(processStats);
}
