import type { IncomingHttpHeaders } from 'node:http';
import { MAX_OUTPUT_TOKENS } from './text.ts';

/** Test controls that a request sets through `x-sim-*` headers. */
export interface Controls {
  /** `x-sim-usage`: the exact usage object to report, in the provider's own shape. */
  usage: Record<string, unknown> | undefined;
  /** `x-sim-omit-usage: 1`: report no usage at all. */
  omitUsage: boolean;
  /** `x-sim-status`: respond with this error status instead of a result. */
  status: number | undefined;
  /** `x-sim-latency-ms`: wait this long before responding. */
  latencyMs: number;
  /** `x-sim-chunks`: number of content chunks of a stream (default: one per token). */
  chunks: number | undefined;
  /** `x-sim-chunk-delay-ms`: wait this long before each content chunk after the first. */
  chunkDelayMs: number;
  /**
   * `x-sim-cut-after`: destroy the connection after this many content chunks
   * (a stream with no more chunks than that completes). A JSON response is
   * not sent at all.
   */
  cutAfter: number | undefined;
  /** `x-sim-output-tokens`: output length when the request's limit allows it. */
  outputTokens: number | undefined;
  /**
   * `x-sim-web-searches`: web searches the model runs when the request
   * enables a web search tool (default 1), up to the request's limit on them.
   */
  webSearches: number | undefined;
}

/** An `x-sim-*` header with a value the simulator cannot use. */
export class InvalidControlError extends Error {
  override readonly name = 'InvalidControlError';
}

const MAX_DELAY_MS = 600_000;
const MAX_WEB_SEARCHES = 1000;

/** Reads the controls of one request, or throws InvalidControlError naming a malformed header. */
export function readControls(headers: IncomingHttpHeaders): Controls {
  return {
    usage: readUsage(headers['x-sim-usage']),
    omitUsage: headerValue(headers['x-sim-omit-usage']) === '1',
    status: readInteger(headers, 'x-sim-status', 400, 599),
    latencyMs: readInteger(headers, 'x-sim-latency-ms', 0, MAX_DELAY_MS) ?? 0,
    chunks: readInteger(headers, 'x-sim-chunks', 1, 1_000_000),
    chunkDelayMs: readInteger(headers, 'x-sim-chunk-delay-ms', 0, MAX_DELAY_MS) ?? 0,
    cutAfter: readInteger(headers, 'x-sim-cut-after', 0, 1_000_000),
    outputTokens: readInteger(headers, 'x-sim-output-tokens', 0, MAX_OUTPUT_TOKENS),
    webSearches: readInteger(headers, 'x-sim-web-searches', 0, MAX_WEB_SEARCHES),
  };
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function readInteger(headers: IncomingHttpHeaders, name: string, min: number, max: number): number | undefined {
  const text = headerValue(headers[name]);
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new InvalidControlError(`invalid ${name} header "${text}": expected an integer from ${min} to ${max}`);
  }
  return value;
}

function readUsage(value: string | string[] | undefined): Record<string, unknown> | undefined {
  const text = headerValue(value);
  if (text === undefined) return undefined;
  let usage: unknown;
  try {
    usage = JSON.parse(text);
  } catch {
    throw new InvalidControlError(`invalid x-sim-usage header: expected a JSON object, got ${JSON.stringify(text)}`);
  }
  if (typeof usage !== 'object' || usage === null || Array.isArray(usage)) {
    throw new InvalidControlError(`invalid x-sim-usage header: expected a JSON object, got ${JSON.stringify(text)}`);
  }
  return usage as Record<string, unknown>;
}
