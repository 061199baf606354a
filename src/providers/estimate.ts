import { createRequire } from 'node:module';
import { emptyUsage, type Usage } from '../rating/usage.ts';
import { isRecord } from './fields.ts';

/**
 * Token estimates for holds and for responses that arrive without usage.
 * Counts use the o200k_base encoding from gpt-tokenizer, the encoding of
 * OpenAI's GPT-4o and later models, and an approximation for other models.
 */

/** Encode special-token strings such as `<|endoftext|>` as plain text instead of throwing. */
const PLAIN_TEXT = { disallowedSpecial: new Set<string>() };

/**
 * Text is tokenized in batches of about this many UTF-16 code units, so a
 * meter keeps at most one batch of a long stream, and each tokenizing step
 * blocks the event loop only briefly.
 */
const BATCH_CHARS = 8192;

/**
 * Returns an upper bound of the prompt tokens in a request body of
 * `bodyBytes` bytes, for the worst-case hold. A byte-level BPE token covers
 * at least one byte of text, and JSON escaping only makes text longer, so
 * the body's length bounds the tokens of the text it carries.
 *
 * NOTE: content the provider fetches or expands is not bounded by the body:
 * images, documents and files given by URL or file id, audio input, the
 * system prompt some providers add when tools are defined, and the results of
 * tools the provider runs itself (the Responses API's web_search, file_search,
 * MCP and code_interpreter tools). Such requests can use more prompt tokens
 * than this.
 */
export function estimatePromptTokens(bodyBytes: number): number {
  return wholeTokens(bodyBytes);
}

/** Rounds a token count up to a non-negative integer. NaN, infinities and negatives become 0. */
export function wholeTokens(value: number): number {
  return Number.isFinite(value) && value > 0 ? Math.ceil(value) : 0;
}

/**
 * Returns a quick estimate of the tokens in `text` without tokenizing it:
 * about four ASCII characters per token, and one token per other UTF-16 code
 * unit (most CJK characters and emoji take one token or more each). It is an
 * estimate, not a bound.
 */
export function estimateTokensFromText(text: string): number {
  let ascii = 0;
  let other = 0;
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) < 0x80) ascii++;
    else other++;
  }
  return Math.ceil(ascii / 4) + other;
}

/**
 * Top-level request fields whose text is not sent to the model: the model
 * name, fields for the caller's own records, settings that name options
 * rather than carry text (the Responses API's, Gemini's safety and tool
 * settings and embedding task type), and stop sequences. Of Gemini's
 * generationConfig only the response schema counts (RESPONSE_SCHEMA_FIELDS),
 * because the model reads it as input.
 */
const NON_PROMPT_FIELDS = new Set([
  'model',
  'metadata',
  'user',
  'safety_identifier',
  'prompt_cache_key',
  'service_tier',
  'include',
  'reasoning',
  'truncation',
  'prompt_cache_retention',
  'tool_choice',
  'stop',
  'stop_sequences',
  'encoding_format',
  'modalities',
  'safetySettings',
  'safety_settings',
  'toolConfig',
  'tool_config',
  'cachedContent',
  'cached_content',
  'taskType',
  'task_type',
]);

/** Gemini's generation settings, whose other fields name options, such as stop sequences and a MIME type. */
const GENERATION_CONFIG_FIELDS = new Set(['generationConfig', 'generation_config']);
const RESPONSE_SCHEMA_FIELDS = ['responseSchema', 'response_schema', 'responseJsonSchema', 'response_json_schema'];

/**
 * Returns an estimate of the prompt tokens of a parsed request body, for
 * billing a response that arrives without usage (a stream the client left, an
 * upstream that omits usage, Gemini's embedContent). It adds up the
 * estimateTokensFromText of every string in the body, so messages, system
 * prompts, tool definitions and role names count, while JSON syntax, field
 * names, numbers and the fields in NON_PROMPT_FIELDS do not.
 *
 * NOTE: inline media (a `data` field, as in Anthropic's and Gemini's base64
 * images, or a `data:` URL) counts as nothing, because providers bill images
 * and audio by size or duration, not by the length of their encoding.
 */
export function estimatePromptFromBody(body: Record<string, unknown>): number {
  let tokens = 0;
  for (const key in body) {
    if (NON_PROMPT_FIELDS.has(key)) continue;
    const value = body[key];
    // Gemini's batchEmbedContents carries one embedContent body per item, each with its own model name.
    if (key === 'requests' && Array.isArray(value)) {
      for (const item of value) tokens += isRecord(item) ? estimatePromptFromBody(item) : estimateStringTokens(item);
      continue;
    }
    if (GENERATION_CONFIG_FIELDS.has(key)) {
      if (isRecord(value)) for (const field of RESPONSE_SCHEMA_FIELDS) tokens += estimateStringTokens(value[field]);
      continue;
    }
    tokens += estimateStringTokens(value);
  }
  return tokens;
}

/** Adds up the token estimates of the strings in a JSON value, leaving out `data` fields and `data:` URLs. */
function estimateStringTokens(value: unknown): number {
  if (typeof value === 'string') return value.startsWith('data:') ? 0 : estimateTokensFromText(value);
  let tokens = 0;
  if (Array.isArray(value)) {
    for (const item of value) tokens += estimateStringTokens(item);
  } else if (value !== null && typeof value === 'object') {
    for (const key in value) {
      if (key !== 'data') tokens += estimateStringTokens((value as Record<string, unknown>)[key]);
    }
  }
  return tokens;
}

type Tokenizer = typeof import('gpt-tokenizer');
let loadedTokenizer: Tokenizer | undefined;

/**
 * Loads gpt-tokenizer on first use. Its encoding tables take about 70 MiB of
 * memory, and only responses without usage need them, so a sidecar that
 * never meets one never loads them. The first such response waits for the load.
 */
function tokenizer(): Tokenizer {
  loadedTokenizer ??= createRequire(import.meta.url)('gpt-tokenizer') as Tokenizer;
  return loadedTokenizer;
}

/** Counts the tokens of `text` with the o200k_base tokenizer. */
export function countTextTokens(text: string): number {
  if (text.length === 0) return 0;
  return tokenizer().countTokens(text, PLAIN_TEXT);
}

/** Generated text of a response, tokenized only when its count is needed. */
export interface OutputText {
  /** True when the response carried any non-empty text. */
  readonly sawText: boolean;
  /** Returns the tokens of all the text. */
  total(): number;
}

/**
 * Returns usage made only of estimates, for a response without usage: the
 * caller's prompt estimate as input and the counted text as output.
 */
export function estimatedUsage(promptEstimate: number, output: OutputText): Usage {
  const usage = emptyUsage();
  usage.input = promptEstimate;
  usage.output = output.total();
  usage.estimated = true;
  return usage;
}

/** The text of a complete response body, already in memory as strings. */
export class ResponseText implements OutputText {
  readonly #parts: string[] = [];
  #sawText = false;

  add(text: unknown): void {
    if (typeof text !== 'string' || text.length === 0) return;
    this.#parts.push(text);
    this.#sawText = true;
  }

  get sawText(): boolean {
    return this.#sawText;
  }

  total(): number {
    let tokens = 0;
    for (const part of this.#parts) tokens += countTextTokens(part);
    return tokens;
  }
}

/**
 * Counts the tokens of text that arrives in pieces, such as the deltas of a
 * stream. It tokenizes only when a batch fills up or when `total` is called,
 * so a stream whose provider reports usage usually costs no tokenizing, and
 * memory stays bounded by one batch.
 */
export class StreamedTextCounter implements OutputText {
  #pending = '';
  #counted = 0;
  #sawText = false;

  add(text: unknown): void {
    if (typeof text !== 'string' || text.length === 0) return;
    this.#sawText = true;
    this.#pending += text;
    if (this.#pending.length >= BATCH_CHARS) this.#countBatch();
  }

  /** True when any non-empty text was added. */
  get sawText(): boolean {
    return this.#sawText;
  }

  /** Returns the tokens of all text added so far. */
  total(): number {
    if (this.#pending.length > 0) {
      this.#counted += countTextTokens(this.#pending);
      this.#pending = '';
    }
    return this.#counted;
  }

  /**
   * Counts the pending text up to its last whitespace and keeps the rest, so
   * that a batch boundary rarely splits a word into two tokens.
   */
  #countBatch(): void {
    const text = this.#pending;
    let cut = text.length;
    for (let i = text.length - 1; i > 0; i--) {
      const code = text.charCodeAt(i);
      if (code === 0x20 || code === 0x0a || code === 0x09 || code === 0x0d) {
        cut = i;
        break;
      }
    }
    this.#counted += countTextTokens(text.slice(0, cut));
    this.#pending = text.slice(cut);
  }
}
