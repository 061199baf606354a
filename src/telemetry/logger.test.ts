import { describe, expect, it } from 'vitest';
import { createLogger } from './logger.ts';

function capture(): { lines: Array<Record<string, any>>; write: (line: string) => void } {
  const lines: Array<Record<string, any>> = [];
  return { lines, write: (line) => lines.push(JSON.parse(line) as Record<string, any>) };
}

describe('createLogger', () => {
  it('logs causes as nested objects', () => {
    const sink = capture();
    const log = createLogger('test', 'info', sink);
    const connectionError = new Error('connect ECONNREFUSED 127.0.0.1:6390');
    const unavailable = new Error('the ledger is unreachable: connect ECONNREFUSED 127.0.0.1:6390', { cause: connectionError });
    log.error({ err: new Error('the billing ledger is unavailable; retry shortly', { cause: unavailable }) }, 'request failed');

    const { err } = sink.lines[0]!;
    expect(err.message).toBe('the billing ledger is unavailable; retry shortly');
    expect(err.cause.message).toBe('the ledger is unreachable: connect ECONNREFUSED 127.0.0.1:6390');
    expect(err.cause.cause.message).toBe('connect ECONNREFUSED 127.0.0.1:6390');
  });

  it('redacts credentials', () => {
    const sink = capture();
    createLogger('test', 'info', sink).info({ headers: { authorization: 'Bearer sk-secret' }, credential: 'sk-secret' }, 'call');
    expect(JSON.stringify(sink.lines[0])).not.toContain('sk-secret');
    expect(sink.lines[0]!.headers.authorization).toBe('[redacted]');
  });

  it('drops lines below the level', () => {
    const sink = capture();
    const log = createLogger('test', 'warn', sink);
    log.info('not written');
    log.warn('written');
    expect(sink.lines.map((line) => line.msg)).toEqual(['written']);
  });
});
