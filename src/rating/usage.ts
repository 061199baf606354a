/**
 * Token usage of one request, normalized across providers so that every
 * field is disjoint from the others: no token is counted in two fields.
 *
 * Providers count differently, and adapters convert:
 * - OpenAI and Gemini include cached tokens in the prompt count; the adapter
 *   subtracts them, so `input` holds only uncached prompt tokens.
 * - Anthropic's `input_tokens` already excludes cache reads and writes.
 * - OpenAI's `reasoning_tokens` are part of `completion_tokens`; the adapter
 *   moves them out of `output` into `reasoning`.
 * - Gemini's `thoughtsTokenCount` is separate from `candidatesTokenCount`.
 */
export interface Usage {
  /** Prompt tokens read at the plain input rate. */
  input: number;
  /** Prompt tokens served from the provider's prompt cache. */
  cacheRead: number;
  /** Prompt tokens written to a cache that lives about five minutes. */
  cacheWrite5m: number;
  /** Prompt tokens written to a cache that lives about one hour. */
  cacheWrite1h: number;
  /** Generated tokens other than reasoning tokens. */
  output: number;
  /** Reasoning (thinking) tokens, billed at the reasoning rate, or the output rate when the plan sets none. */
  reasoning: number;
  /** Priced units other than tokens, by unit name (for example `web_search`). */
  units?: Record<string, number>;
  /**
   * True when some count is an estimate (the upstream sent no usage, or
   * an impossible value, or the client disconnected before the final usage).
   */
  estimated: boolean;
}

export function emptyUsage(): Usage {
  return { input: 0, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, output: 0, reasoning: 0, estimated: false };
}

export function totalTokens(usage: Usage): number {
  return usage.input + usage.cacheRead + usage.cacheWrite5m + usage.cacheWrite1h + usage.output + usage.reasoning;
}
