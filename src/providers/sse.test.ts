import { describe, expect, it } from 'vitest';
import { SseEventTooLargeError, SseSplitter, type SseEvent } from './sse.ts';

interface Seen {
  event: string | undefined;
  data: string | undefined;
  raw: string;
}

/** Feeds `input` cut at `cuts` and returns what the visitor saw and what the splitter returned. */
function run(
  input: Buffer,
  cuts: number[],
  options: { filter?: boolean; decide?: (event: SseEvent) => boolean | Buffer } = {},
): { seen: Seen[]; output: Buffer; maxPending: number } {
  const seen: Seen[] = [];
  const splitter = new SseSplitter(
    (event) => {
      seen.push({ event: event.event, data: event.data, raw: event.raw.toString('utf8') });
      return options.decide ? options.decide(event) : true;
    },
    { filter: options.filter ?? false },
  );
  const parts: Buffer[] = [];
  let maxPending = 0;
  let from = 0;
  for (const cut of [...cuts, input.length]) {
    parts.push(splitter.push(input.subarray(from, cut)));
    maxPending = Math.max(maxPending, splitter.pendingBytes);
    from = cut;
  }
  parts.push(splitter.flush());
  return { seen, output: Buffer.concat(parts), maxPending };
}

/** A small deterministic generator, so random splits are reproducible. */
function random(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return state / 2147483648;
  };
}

function randomCuts(length: number, next: () => number): number[] {
  const cuts = new Set<number>();
  const count = Math.floor(next() * 12);
  for (let i = 0; i < count; i++) cuts.add(Math.floor(next() * length));
  return [...cuts].sort((a, b) => a - b);
}

const MIXED = Buffer.from(
  [
    ': comment line\n\n',
    'event: message_start\ndata: {"a":1}\n\n',
    'data: first line\r\ndata: second line\r\n\r\n',
    'event: ping\rdata:no-space\r\r',
    'id: 7\nretry: 100\n\n',
    'data\n\n',
    'data: ünïcödé ✓\n\n',
    'data: [DONE]\n\n',
  ].join(''),
);

const EXPECTED: Omit<Seen, 'raw'>[] = [
  { event: 'message_start', data: '{"a":1}' },
  { event: undefined, data: 'first line\nsecond line' },
  { event: 'ping', data: 'no-space' },
  { event: undefined, data: '' },
  { event: undefined, data: 'ünïcödé ✓' },
  { event: undefined, data: '[DONE]' },
];

describe('SseSplitter', () => {
  it('parses events with LF, CRLF and CR line endings', () => {
    const { seen, output } = run(MIXED, []);
    expect(seen.map(({ event, data }) => ({ event, data }))).toEqual(EXPECTED);
    expect(seen[1]!.raw).toBe('data: first line\r\ndata: second line\r\n\r\n');
    expect(output.equals(MIXED)).toBe(true);
  });

  it('gives the same events for every single split point', () => {
    for (let cut = 0; cut <= MIXED.length; cut++) {
      const { seen, output } = run(MIXED, [cut]);
      expect(seen.map(({ event, data }) => ({ event, data })), `cut at ${cut}`).toEqual(EXPECTED);
      expect(output.equals(MIXED), `cut at ${cut}`).toBe(true);
    }
  });

  it('gives the same events for random multi-way splits', () => {
    const next = random(42);
    for (let round = 0; round < 500; round++) {
      const cuts = randomCuts(MIXED.length, next);
      for (const filter of [false, true]) {
        const { seen, output } = run(MIXED, cuts, { filter });
        expect(seen.map(({ event, data }) => ({ event, data })), `cuts ${cuts}`).toEqual(EXPECTED);
        expect(output.equals(MIXED), `cuts ${cuts}, filter ${filter}`).toBe(true);
      }
    }
  });

  it('gives the same events when fed one byte at a time', () => {
    const cuts = Array.from({ length: MIXED.length - 1 }, (_, i) => i + 1);
    const { seen, output } = run(MIXED, cuts, { filter: true });
    expect(seen.map(({ event, data }) => ({ event, data }))).toEqual(EXPECTED);
    expect(output.equals(MIXED)).toBe(true);
  });

  it('drops and replaces events byte-exactly in filter mode', () => {
    const input = Buffer.from('data: keep 1\n\ndata: drop\n\ndata: swap\r\n\r\ndata: keep 2\n\n');
    const expected = 'data: keep 1\n\ndata: swapped\n\ndata: keep 2\n\n';
    const decide = (event: SseEvent): boolean | Buffer => {
      if (event.data === 'drop') return false;
      if (event.data === 'swap') return Buffer.from('data: swapped\n\n');
      return true;
    };
    for (let cut = 0; cut <= input.length; cut++) {
      for (let second = cut; second <= input.length; second += 3) {
        const { output } = run(input, [cut, second], { filter: true, decide });
        expect(output.toString('utf8'), `cuts ${cut}, ${second}`).toBe(expected);
      }
    }
  });

  it('passes chunks through unchanged without filter', () => {
    const splitter = new SseSplitter(() => false);
    const chunk = Buffer.from('data: a\n\ndata: b');
    expect(splitter.push(chunk)).toBe(chunk);
    expect(splitter.flush().length).toBe(0);
  });

  it('holds back only the incomplete event in filter mode', () => {
    const splitter = new SseSplitter(() => true, { filter: true });
    const first = splitter.push(Buffer.from('data: one\n\ndata: tw'));
    expect(first.toString()).toBe('data: one\n\n');
    expect(splitter.pendingBytes).toBe('data: tw'.length);

    const second = splitter.push(Buffer.from('o\n\n'));
    expect(second.toString()).toBe('data: two\n\n');
    expect(splitter.pendingBytes).toBe(0);
  });

  it('keeps the pending size at the incomplete event for long streams', () => {
    const event = 'data: {"choices":[{"delta":{"content":"word"}}]}\n\n';
    const input = Buffer.from(event.repeat(200));
    const next = random(7);
    const cuts = randomCuts(input.length, next);
    const { maxPending } = run(input, cuts, { filter: true });
    expect(maxPending).toBeLessThan(event.length);
  });

  it('waits for the LF of a CRLF blank line split across chunks', () => {
    const input = Buffer.from('data: x\r\n\r\ndata: y\r\n\r\n');
    const cutAfterCR = 'data: x\r\n\r'.length;
    const { seen, output } = run(input, [cutAfterCR], { filter: true });
    expect(seen.map((s) => s.raw)).toEqual(['data: x\r\n\r\n', 'data: y\r\n\r\n']);
    expect(output.equals(input)).toBe(true);
  });

  it('visits an unterminated last event on flush', () => {
    const { seen, output } = run(Buffer.from('data: a\n\ndata: [DONE]'), [], { filter: true });
    expect(seen.map((s) => s.data)).toEqual(['a', '[DONE]']);
    expect(output.toString()).toBe('data: a\n\ndata: [DONE]');
  });

  it('rejects an event larger than the limit', () => {
    const splitter = new SseSplitter(() => true, { maxEventBytes: 16 });
    splitter.push(Buffer.from('data: 0123456789'));
    expect(() => splitter.push(Buffer.from('abcdef'))).toThrow(SseEventTooLargeError);
  });
});
