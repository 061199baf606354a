import { spawn } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { DURATION_BUCKETS, diagToPino, responseAttributes, responseMetadataAttributes, TOKEN_BUCKETS } from './tracing.ts';

describe('responseAttributes', () => {
  it('reads OpenAI, Anthropic and Gemini bodies', () => {
    expect(responseAttributes({ id: 'chatcmpl-1', model: 'gpt-4o-mini-2024-07-18', choices: [{ finish_reason: 'stop' }, { finish_reason: 'length' }] })).toEqual({
      'gen_ai.response.id': 'chatcmpl-1',
      'gen_ai.response.model': 'gpt-4o-mini-2024-07-18',
      'gen_ai.response.finish_reasons': ['stop', 'length'],
    });
    expect(responseAttributes({ id: 'msg_1', type: 'message', model: 'claude-haiku-4-5', stop_reason: 'end_turn' })).toEqual({
      'gen_ai.response.id': 'msg_1',
      'gen_ai.response.model': 'claude-haiku-4-5',
      'gen_ai.response.finish_reasons': ['end_turn'],
    });
    expect(responseAttributes({ responseId: 'r-1', modelVersion: 'gemini-2.5-flash', candidates: [{ finishReason: 'STOP' }] })).toEqual({
      'gen_ai.response.id': 'r-1',
      'gen_ai.response.model': 'gemini-2.5-flash',
      'gen_ai.response.finish_reasons': ['STOP'],
    });
  });

  it('reads OpenAI Responses API objects', () => {
    const response = { id: 'resp_1', object: 'response', model: 'gpt-4.1-mini-2025-04-14', status: 'completed', incomplete_details: null, output: [] };
    expect(responseAttributes(response)).toEqual({
      'gen_ai.response.id': 'resp_1',
      'gen_ai.response.model': 'gpt-4.1-mini-2025-04-14',
      'gen_ai.response.finish_reasons': ['completed'],
    });
    const incomplete = { ...response, status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' } };
    expect(responseAttributes(incomplete)['gen_ai.response.finish_reasons']).toEqual(['max_output_tokens']);
    expect(responseAttributes({ ...response, status: undefined })).not.toHaveProperty('gen_ai.response.finish_reasons');
  });

  it('leaves out what a body lacks', () => {
    expect(responseAttributes({ object: 'list', data: [{ embedding: [0.1] }], model: 'text-embedding-3-small' })).toEqual({ 'gen_ai.response.model': 'text-embedding-3-small' });
    expect(responseAttributes(undefined)).toEqual({});
    expect(responseAttributes({ id: 7, choices: [null, { finish_reason: 3 }] })).toEqual({});
  });
});

describe('responseMetadataAttributes', () => {
  it('converts stream metadata', () => {
    expect(responseMetadataAttributes({ id: 'msg_1', model: 'claude-haiku-4-5', finishReasons: ['end_turn'] })).toEqual({
      'gen_ai.response.id': 'msg_1',
      'gen_ai.response.model': 'claude-haiku-4-5',
      'gen_ai.response.finish_reasons': ['end_turn'],
    });
  });

  it('leaves out missing fields', () => {
    expect(responseMetadataAttributes({ id: undefined, model: 'gpt-4o-mini', finishReasons: [] })).toEqual({ 'gen_ai.response.model': 'gpt-4o-mini' });
    expect(responseMetadataAttributes({ id: undefined, model: undefined, finishReasons: [] })).toEqual({});
  });
});

describe('diagToPino', () => {
  it('writes errors and warnings at warn', () => {
    const lines: Array<Record<string, unknown>> = [];
    const log = pino({ level: 'debug' }, { write: (raw: string) => void lines.push(JSON.parse(raw) as Record<string, unknown>) });
    const diag = diagToPino(log);

    diag.error('metrics export failed', new Error('connect ECONNREFUSED 127.0.0.1:4318'));
    diag.warn('dropped 3 spans');
    diag.info('started');
    diag.debug('details');

    expect(lines.map((line) => [line['level'], line['msg']])).toEqual([
      [40, 'OpenTelemetry: metrics export failed'],
      [40, 'OpenTelemetry: dropped 3 spans'],
    ]);
    expect((lines[0]!['err'] as { message: string }).message).toBe('connect ECONNREFUSED 127.0.0.1:4318');
  });

  it('writes a repeat within a minute at debug', () => {
    const lines: Array<Record<string, unknown>> = [];
    const log = pino({ level: 'debug' }, { write: (raw: string) => void lines.push(JSON.parse(raw) as Record<string, unknown>) });
    let clock = 0;
    const diag = diagToPino(log, () => clock);
    const refused = JSON.stringify({ stack: 'Error: connect ECONNREFUSED 127.0.0.1:4318\n    at ...', message: 'connect ECONNREFUSED 127.0.0.1:4318', name: 'Error' });

    diag.error(refused);
    clock = 30_000;
    diag.error(refused);
    clock = 61_000;
    diag.error(refused);

    expect(lines.map((line) => [line['level'], line['msg'], (line['err'] as { message?: string } | undefined)?.message])).toEqual([
      [40, 'OpenTelemetry: export failed', 'connect ECONNREFUSED 127.0.0.1:4318'],
      [20, 'OpenTelemetry: export failed', 'connect ECONNREFUSED 127.0.0.1:4318'],
      [40, 'OpenTelemetry: export failed', 'connect ECONNREFUSED 127.0.0.1:4318'],
    ]);
  });
});

interface Received {
  path: string;
  contentType: string;
  body: string;
}

/** Runs startTelemetry in a child process that records two metric values, with `env` added, and returns what a local OTLP receiver got. */
async function exportOnce(env: Record<string, string>): Promise<Received[]> {
  const received: Received[] = [];
  const receiver = http.createServer((request, response) => {
    let body = '';
    request.on('data', (chunk: Buffer) => (body += chunk.toString()));
    request.on('end', () => {
      received.push({ path: request.url ?? '', contentType: request.headers['content-type'] ?? '', body });
      response.writeHead(200, { 'content-type': request.headers['content-type'] ?? 'application/json' }).end();
    });
  });
  receiver.listen(0, '127.0.0.1');
  await once(receiver, 'listening');
  const { port } = receiver.address() as AddressInfo;

  // The SDK registers itself globally, so it runs in a process of its own.
  const script = `
    import { pino } from 'pino';
    import { createGenAiTelemetry, startTelemetry } from ${JSON.stringify(path.join(import.meta.dirname, 'tracing.ts'))};
    const stop = await startTelemetry('tracing-test', pino({ level: 'silent' }));
    const telemetry = createGenAiTelemetry();
    telemetry.tokenUsage.record(100, { 'gen_ai.token.type': 'input' });
    telemetry.operationDuration.record(0.05, {});
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await stop();
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    cwd: path.join(import.meta.dirname, '..', '..'),
    env: { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const [code] = (await once(child, 'exit')) as [number | null];
  receiver.close();
  expect(stderr).toBe('');
  expect(code).toBe(0);
  return received.filter((entry) => entry.path === '/v1/metrics');
}

interface ExportedHistogram {
  name: string;
  histogram: { dataPoints: Array<{ explicitBounds: number[] }> };
}

describe('OTLP export', () => {
  it('sends metrics at the interval with advised buckets', async () => {
    const exports = await exportOnce({ OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_METRIC_EXPORT_INTERVAL: '300' });

    // Exports every 300 ms during the 1.5 s wait; the default interval (60 s) would send only the final one.
    expect(exports.length).toBeGreaterThanOrEqual(3);
    expect(exports.every((entry) => entry.contentType === 'application/json')).toBe(true);
    const byName = new Map<string, ExportedHistogram>();
    for (const entry of exports) {
      const payload = JSON.parse(entry.body) as { resourceMetrics: Array<{ scopeMetrics: Array<{ metrics: ExportedHistogram[] }> }> };
      for (const metric of payload.resourceMetrics.flatMap((resource) => resource.scopeMetrics.flatMap((scope) => scope.metrics))) byName.set(metric.name, metric);
    }
    expect(byName.get('gen_ai.client.token.usage')?.histogram.dataPoints[0]?.explicitBounds).toEqual([...TOKEN_BUCKETS]);
    expect(byName.get('gen_ai.client.operation.duration')?.histogram.dataPoints[0]?.explicitBounds).toEqual([...DURATION_BUCKETS]);
    expect(TOKEN_BUCKETS.at(-1)).toBe(67_108_864);
    expect(DURATION_BUCKETS.slice(0, 3)).toEqual([0.01, 0.02, 0.04]);
    expect(DURATION_BUCKETS.at(-1)).toBe(81.92);
  }, 30_000);

  it('sends protobuf by default', async () => {
    const exports = await exportOnce({ OTEL_METRIC_EXPORT_INTERVAL: '300' });

    expect(exports.length).toBeGreaterThanOrEqual(3);
    expect(new Set(exports.map((entry) => entry.contentType))).toEqual(new Set(['application/x-protobuf']));
  }, 30_000);
});
