/**
 * Incremental server-sent events splitter for proxied response streams.
 *
 * It cuts a byte stream into events at blank lines (LF, CRLF or CR line
 * endings, as the WHATWG event-stream format allows), reads each event's
 * `event` and `data` fields, and hands them to a visitor. It keeps no more
 * than the bytes of the one event that is still incomplete.
 */

const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
const SPACE = 0x20;

const EMPTY = Buffer.alloc(0);

/** Default upper bound of one event's size. A larger event fails the stream. */
export const DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024;

/**
 * One parsed event. The splitter reuses a single instance, so a visitor must
 * copy whatever it keeps beyond the call.
 */
export interface SseEvent {
  /** Value of the `event` field, or undefined when the event has none (type `message`). */
  event: string | undefined;
  /** Values of the `data` fields joined with `\n`, or undefined when the event has none. */
  data: string | undefined;
  /** The event's bytes as received, including the blank line that ends it. */
  raw: Buffer;
}

/**
 * Decides what the client receives for one event: `true` forwards its bytes
 * unchanged, `false` drops them, and a Buffer replaces them. Only a splitter
 * created with `filter: true` applies the decision.
 */
export type SseVisitor = (event: SseEvent) => boolean | Buffer;

export interface SseSplitterOptions {
  /**
   * When true, `push` returns only the complete events the visitor kept, and
   * holds back the incomplete tail until it completes. When false, `push`
   * returns every chunk unchanged at once and the visitor only observes.
   */
  filter?: boolean;
  /** Largest event accepted, in bytes (default DEFAULT_MAX_EVENT_BYTES). */
  maxEventBytes?: number;
}

export class SseEventTooLargeError extends Error {
  override readonly name = 'SseEventTooLargeError';
}

export class SseSplitter {
  readonly #visit: SseVisitor;
  readonly #filter: boolean;
  readonly #maxEventBytes: number;

  /** Copies of the bytes of the current incomplete event. */
  #pending: Buffer[] = [];
  #pendingBytes = 0;

  /** True when the current line has at least one byte. */
  #lineHasBytes = false;
  /** True when the previous byte was a CR that ended a non-blank line, so a LF right after it belongs to it. */
  #afterCR = false;
  /** True when a blank line ending in CR closed the pending event at the end of the last chunk. */
  #closedByCR = false;

  readonly #event: SseEvent = { event: undefined, data: undefined, raw: EMPTY };
  readonly #output: Buffer[] = [];

  constructor(visit: SseVisitor, options: SseSplitterOptions = {}) {
    this.#visit = visit;
    this.#filter = options.filter ?? false;
    this.#maxEventBytes = options.maxEventBytes ?? DEFAULT_MAX_EVENT_BYTES;
  }

  /** Bytes held for the incomplete event at the end of the input so far. */
  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  /**
   * Consumes one chunk, visits every event it completes and returns the bytes
   * to forward (see SseSplitterOptions.filter). The chunk is not kept: the
   * incomplete tail is copied.
   */
  push(chunk: Buffer): Buffer {
    if (chunk.length === 0) return chunk;
    const output = this.#output;
    output.length = 0;
    let eventStart = 0;
    let i = 0;

    if (this.#closedByCR) {
      this.#closedByCR = false;
      if (chunk.length > 0 && chunk[0] === LF) i = 1;
      this.#dispatchPending(chunk, i);
      eventStart = i;
    }

    // Kept events that lie wholly inside this chunk are forwarded as one
    // contiguous slice [runStart, eventStart), without copying.
    let runStart = eventStart;
    const length = chunk.length;
    let lineHasBytes = this.#lineHasBytes;
    let afterCR = this.#afterCR;
    // Positions of the next LF and CR at or after i: -1 when there is none, -2 before the first search.
    let nextLF = -2;
    let nextCR = -2;

    for (; i < length; i++) {
      let byte = chunk[i];
      if (byte !== LF && byte !== CR) {
        // Skip to the end of the line with native searches instead of byte by byte.
        if (nextLF !== -1 && nextLF < i) nextLF = chunk.indexOf(LF, i);
        if (nextCR !== -1 && nextCR < i) nextCR = chunk.indexOf(CR, i);
        afterCR = false;
        lineHasBytes = true;
        let stop = nextLF;
        if (stop === -1 || (nextCR !== -1 && nextCR < stop)) stop = nextCR;
        if (stop === -1) {
          i = length;
          break;
        }
        i = stop;
        byte = chunk[i];
      }

      if (byte === LF) {
        if (afterCR) {
          afterCR = false;
          continue;
        }
        if (lineHasBytes) {
          lineHasBytes = false;
          continue;
        }
      } else {
        afterCR = false;
        if (lineHasBytes) {
          lineHasBytes = false;
          afterCR = true;
          continue;
        }
        if (i + 1 === length) {
          // The LF of a CRLF blank line may arrive with the next chunk.
          this.#closedByCR = true;
          break;
        }
        if (chunk[i + 1] === LF) i++;
      }

      // A blank line ends the event at i (inclusive).
      const end = i + 1;
      if (this.#pendingBytes > 0) {
        // Only the first event of a chunk can have begun in earlier chunks.
        this.#dispatchPending(chunk, end);
        runStart = end;
      } else {
        const verdict = this.#dispatch(chunk.subarray(eventStart, end));
        if (verdict !== true && this.#filter) {
          if (runStart < eventStart) output.push(chunk.subarray(runStart, eventStart));
          if (verdict !== false) output.push(verdict);
          runStart = end;
        }
      }
      eventStart = end;
    }
    this.#lineHasBytes = lineHasBytes;
    this.#afterCR = afterCR;

    if (this.#filter && runStart < eventStart) output.push(chunk.subarray(runStart, eventStart));
    this.#keepTail(chunk, eventStart);
    if (!this.#filter) return chunk;
    return join(output);
  }

  /**
   * Ends the stream: visits the incomplete trailing event, if any, as if it
   * were complete, and returns the bytes of it to forward (always empty
   * without `filter`, because `push` forwarded them already).
   */
  flush(): Buffer {
    this.#closedByCR = false;
    this.#lineHasBytes = false;
    this.#afterCR = false;
    if (this.#pendingBytes === 0) return EMPTY;

    const raw = this.#takePending(EMPTY, 0);
    const verdict = this.#dispatch(raw);
    if (!this.#filter || verdict === false) return EMPTY;
    return verdict === true ? raw : verdict;
  }

  /** Completes the pending event with chunk[0, end) and dispatches it. */
  #dispatchPending(chunk: Buffer, end: number): void {
    const raw = this.#takePending(chunk, end);
    const verdict = this.#dispatch(raw);
    if (!this.#filter || verdict === false) return;
    this.#output.push(verdict === true ? raw : verdict);
  }

  #takePending(chunk: Buffer, end: number): Buffer {
    if (end > 0) this.#pending.push(chunk.subarray(0, end));
    const raw = this.#pending.length === 1 ? this.#pending[0]! : Buffer.concat(this.#pending);
    this.#pending = [];
    this.#pendingBytes = 0;
    return raw;
  }

  #keepTail(chunk: Buffer, from: number): void {
    if (from >= chunk.length) return;
    const size = this.#pendingBytes + chunk.length - from;
    if (size > this.#maxEventBytes) {
      throw new SseEventTooLargeError(
        `server-sent event exceeds ${this.#maxEventBytes} bytes without a blank line; the upstream stream is malformed or the limit is too low`,
      );
    }
    this.#pending.push(Buffer.from(chunk.subarray(from)));
    this.#pendingBytes = size;
  }

  #dispatch(raw: Buffer): boolean | Buffer {
    const event = this.#event;
    if (!parseFields(raw, event)) return true;
    event.raw = raw;
    const verdict = this.#visit(event);
    event.raw = EMPTY;
    event.data = undefined;
    event.event = undefined;
    return verdict;
  }
}

function join(parts: Buffer[]): Buffer {
  if (parts.length === 0) return EMPTY;
  if (parts.length === 1) return parts[0]!;
  return Buffer.concat(parts);
}

/**
 * Reads the `event` and `data` fields of one event into `into`. Returns false
 * when the event has neither (only comments, `id` or `retry`), so there is
 * nothing to visit.
 */
function parseFields(raw: Buffer, into: SseEvent): boolean {
  let data: string | undefined;
  let type: string | undefined;
  let lineStart = 0;
  const length = raw.length;
  let nextCR = raw.indexOf(CR);

  while (lineStart < length) {
    let lineEnd = raw.indexOf(LF, lineStart);
    if (lineEnd === -1) lineEnd = length;
    if (nextCR !== -1 && nextCR < lineStart) nextCR = raw.indexOf(CR, lineStart);
    if (nextCR !== -1 && nextCR < lineEnd) lineEnd = nextCR;
    if (lineEnd === lineStart) break;

    if (raw[lineStart] !== COLON) {
      let nameEnd = raw.indexOf(COLON, lineStart);
      if (nameEnd === -1 || nameEnd > lineEnd) nameEnd = lineEnd;
      let valueStart = nameEnd < lineEnd ? nameEnd + 1 : lineEnd;
      if (valueStart < lineEnd && raw[valueStart] === SPACE) valueStart++;

      const nameLength = nameEnd - lineStart;
      if (nameLength === 4 && isData(raw, lineStart)) {
        const value = raw.toString('utf8', valueStart, lineEnd);
        data = data === undefined ? value : `${data}\n${value}`;
      } else if (nameLength === 5 && isEvent(raw, lineStart)) {
        type = raw.toString('utf8', valueStart, lineEnd);
      }
    }

    lineStart = lineEnd;
    if (lineStart < length && raw[lineStart] === CR) lineStart++;
    if (lineStart < length && raw[lineStart] === LF) lineStart++;
  }

  if (data === undefined && type === undefined) return false;
  into.data = data;
  into.event = type;
  return true;
}

function isData(raw: Buffer, at: number): boolean {
  return raw[at] === 0x64 && raw[at + 1] === 0x61 && raw[at + 2] === 0x74 && raw[at + 3] === 0x61;
}

function isEvent(raw: Buffer, at: number): boolean {
  return raw[at] === 0x65 && raw[at + 1] === 0x76 && raw[at + 2] === 0x65 && raw[at + 3] === 0x6e && raw[at + 4] === 0x74;
}
