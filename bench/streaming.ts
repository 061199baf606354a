/**
 * Streaming cost: time to first token and total time of a streamed chat
 * completion of a fixed number of content chunks, sent one after another
 * over a kept-alive connection. Comparing a proxy with direct calls gives the
 * time it adds before the first token and per chunk it relays.
 */
import { Agent, request } from 'undici';
import { progress } from './progress.ts';
import { streamBody } from './workload.ts';

export interface StreamTarget {
  name: string;
  /** URL of the chat completions endpoint. */
  url: string;
  headers: Record<string, string>;
  model: string;
}

export interface StreamOptions {
  chunks: number;
  runs: number;
  warmupRuns: number;
}

/** Times of the measured runs, in milliseconds. */
export interface StreamResult {
  target: string;
  chunks: number;
  runs: number;
  /** Runs that did not end with status 200 and `data: [DONE]`. */
  failures: number;
  ttftMs: { p50: number; p99: number };
  totalMs: { p50: number; p99: number };
}

/**
 * Streams `runs` completions of `chunks` content chunks each. The time to
 * first token ends when the client has read the first chunk that carries
 * content, not the role chunk before it.
 */
export async function measureStreaming(target: StreamTarget, options: StreamOptions): Promise<StreamResult> {
  const agent = new Agent({ keepAliveTimeout: 60_000, connections: 1 });
  const body = streamBody(target.model, options.chunks);
  const headers = {
    ...target.headers,
    'content-type': 'application/json',
    'x-sim-chunks': String(options.chunks),
    'x-sim-output-tokens': String(options.chunks),
  };

  progress(`${target.name}: ${options.runs} streamed completions of ${options.chunks} chunks`);
  const ttft: number[] = [];
  const total: number[] = [];
  let failures = 0;
  try {
    for (let run = 0; run < options.warmupRuns + options.runs; run++) {
      const timing = await streamOnce(agent, target.url, headers, body);
      if (run < options.warmupRuns) continue;
      if (timing === undefined) {
        failures++;
        continue;
      }
      ttft.push(timing.ttftMs);
      total.push(timing.totalMs);
    }
  } finally {
    await agent.close();
  }

  return {
    target: target.name,
    chunks: options.chunks,
    runs: options.runs,
    failures,
    ttftMs: { p50: percentile(ttft, 0.5), p99: percentile(ttft, 0.99) },
    totalMs: { p50: percentile(total, 0.5), p99: percentile(total, 0.99) },
  };
}

/** A content delta, in the field order of the simulator and of the gateways that re-encode chunks. */
const CONTENT_DELTA = /"delta":\{[^}]*"content":"[^"]/;

/** Streams one completion; returns undefined when it fails or ends early. */
async function streamOnce(agent: Agent, url: string, headers: Record<string, string>, body: string): Promise<{ ttftMs: number; totalMs: number } | undefined> {
  const started = performance.now();
  let firstContent: number | undefined;
  let tail = '';
  try {
    const response = await request(url, { method: 'POST', headers, body, dispatcher: agent });
    for await (const chunk of response.body) {
      const text = (chunk as Buffer).toString('utf8');
      if (firstContent === undefined && CONTENT_DELTA.test(tail + text)) firstContent = performance.now();
      // Keeps enough of the end to find a pattern split across two reads.
      tail = (tail + text).slice(-256);
    }
    const finished = performance.now();
    if (response.statusCode !== 200 || firstContent === undefined || !tail.includes('[DONE]')) return undefined;
    return { ttftMs: firstContent - started, totalMs: finished - started };
  } catch {
    return undefined;
  }
}

/** Returns the nearest-rank percentile of the values, or NaN when there are none. */
export function percentile(values: number[], fraction: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil(fraction * sorted.length));
  return sorted[rank - 1]!;
}
