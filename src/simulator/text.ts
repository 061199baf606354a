import { countTextTokens } from '../providers/estimate.ts';

/**
 * Deterministic generated text. Each word is a single o200k_base token both
 * alone and after a space, so a text of n words is exactly n tokens and a
 * tokenizer-based estimate of it matches the reported usage.
 */
const WORDS = [
  'alpha', 'delta', 'echo', 'hotel', 'india', 'uniform', 'river', 'stone',
  'cloud', 'light', 'green', 'water', 'north', 'paper', 'table', 'music',
];

/** Output length, in tokens, when neither the request nor a control header sets one. */
export const DEFAULT_OUTPUT_TOKENS = 16;

/** Largest output a request can ask for through `x-sim-output-tokens`. */
export const MAX_OUTPUT_TOKENS = 100_000;

/**
 * Returns the generated text of `tokens` tokens cut into `chunks` pieces of
 * nearly equal word counts, which joined make the whole text. `chunks`
 * is clamped to between 1 and `tokens`.
 */
export function generatedPieces(tokens: number, chunks: number): string[] {
  if (tokens <= 0) return [];
  const count = Math.min(Math.max(chunks, 1), tokens);
  const pieces: string[] = [];
  let word = 0;
  for (let chunk = 0; chunk < count; chunk++) {
    const end = Math.floor(((chunk + 1) * tokens) / count);
    let piece = '';
    for (; word < end; word++) piece += word === 0 ? WORDS[0] : ` ${WORDS[word % WORDS.length]}`;
    pieces.push(piece);
  }
  return pieces;
}

/** Returns the generated text of `tokens` tokens. */
export function generatedText(tokens: number): string {
  return generatedPieces(tokens, 1)[0] ?? '';
}

/**
 * Counts the tokens of message content: a string, or an array of parts whose
 * `text` fields are counted (OpenAI text parts, Anthropic text blocks, and
 * the string content of tool results). Other parts count nothing.
 */
export function contentTokens(content: unknown): number {
  if (typeof content === 'string') return countTextTokens(content);
  if (!Array.isArray(content)) return 0;
  let tokens = 0;
  for (const part of content) {
    if (typeof part !== 'object' || part === null) continue;
    const record = part as Record<string, unknown>;
    if (typeof record['text'] === 'string') tokens += countTextTokens(record['text']);
    else if (record['type'] === 'tool_result') tokens += contentTokens(record['content']);
  }
  return tokens;
}

/** Counts the prompt tokens of a list of chat messages by their content. */
export function messagesTokens(messages: unknown): number {
  if (!Array.isArray(messages)) return 0;
  let tokens = 0;
  for (const message of messages) {
    if (typeof message === 'object' && message !== null) tokens += contentTokens((message as Record<string, unknown>)['content']);
  }
  return tokens;
}
