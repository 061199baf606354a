import { closeSync, fsyncSync, ftruncateSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { PendingCommit } from './commit-queue.ts';

/**
 * A commit read back from the journal at start, with the epoch milliseconds
 * at which the commit queue first took it.
 */
export interface RecoveredCommit {
  commit: PendingCommit;
  queuedAtMs: number;
}

/** The commits still pending in a journal file, and how much of the file to keep. */
interface JournalContents {
  recovered: RecoveredCommit[];
  /** Byte length of the complete lines. Bytes after it are a torn last line. */
  completeBytes: number;
  /** Whether the last line is complete but has no newline. */
  missingNewline: boolean;
  /** Lines other than a torn last one that did not parse. */
  damaged: number;
}

/**
 * Size from which a journal whose lines are mostly done is rewritten with
 * only its open lines. Without it, the file grows while any commit stays
 * open, as while a ledger keeps failing now and then. It would fill the
 * emptyDir volume it lives in (64 MiB in a pod, whose kubelet evicts the pod
 * beyond that).
 */
export const COMPACT_MIN_BYTES = 1024 * 1024;

/** A nano-unit amount, written as a decimal string because JSON numbers lose precision above 2^53. */
const amount = z.string().regex(/^-?(0|[1-9][0-9]*)$/, 'expected an integer as a decimal string');

const addLine = z.object({
  op: z.literal('add'),
  requestId: z.string().min(1),
  queuedAt: z.number().int().nonnegative(),
  wallet: z.object({ namespace: z.string().min(1), name: z.string().min(1) }),
  walletId: z.string(),
  currency: z.string(),
  held: amount,
  entry: z.object({
    charged: amount,
    providerCost: amount,
    model: z.string(),
    route: z.string(),
    tokens: z.record(z.string(), z.number()),
    estimated: z.boolean(),
  }),
});

const doneLine = z.object({ op: z.literal('done'), requestId: z.string().min(1) });

const journalLine = z.discriminatedUnion('op', [addLine, doneLine]);

type AddLine = z.infer<typeof addLine>;

/** Maximum characters of a damaged line in its error log line, which is kept so that the commit can be corrected by hand. */
const MAX_LOGGED_LINE_CHARS = 2000;

/**
 * A write-ahead journal of the commit queue: an append-only file of JSON
 * lines, one `add` line for each commit the queue takes and one `done` line
 * when the ledger takes it or the queue gives up on it for good. A sidecar
 * that stops before the ledger is back replays the open commits at its next
 * start (see open).
 *
 * Each line is written with one synchronous write on a file descriptor opened
 * once, so that the line is in the kernel's page cache before the call
 * returns and survives a crash of the process.
 * NOTE: lines are not fsynced, so a crash of the node can lose the last ones.
 * In a pod the journal lives in an emptyDir volume, which is gone with the
 * node anyway.
 *
 * A journal file belongs to one process at a time: two processes that share
 * one would truncate each other's lines.
 */
export class CommitJournal {
  readonly path: string;
  readonly #log: Logger;
  #fd: number;
  /** The `add` lines of the commits without a `done` line, by request id, oldest first. */
  readonly #open = new Map<string, string[]>();
  #openCount = 0;
  /** Bytes of the open `add` lines, and bytes in the file. */
  #openBytes = 0;
  #size = 0;
  /** Whether the last write failed, so that a failing disk is logged once until a write succeeds again. */
  #failing = false;
  #closed = false;

  private constructor(path: string, fd: number, log: Logger) {
    this.path = path;
    this.#fd = fd;
    this.#log = log;
  }

  /**
   * Opens the journal at `path`, creating the file when it is missing, and
   * returns the commits that are still pending in it, in the order they were
   * queued. Their `add` lines stay in the file until `done` is called for
   * them. A torn last line is cut off, and a file with nothing pending is
   * truncated. Throws when the file cannot be read or opened for appending.
   */
  static open(path: string, log: Logger): { journal: CommitJournal; recovered: RecoveredCommit[] } {
    let data: Buffer;
    try {
      data = readExisting(path);
    } catch (error) {
      throw openError(path, error);
    }
    const contents = parseJournal(data, path, log);
    if (contents.damaged > 0) keepDamagedCopy(path, data, contents.damaged, log);

    // The file starts over with only the open add lines: done lines, a torn or damaged line and a missing newline go.
    const lines = contents.recovered.map(({ commit, queuedAtMs }) => formatAddLine(commit, queuedAtMs));
    const text = lines.join('');
    let fd: number;
    let size: number;
    try {
      fd = replaceFile(path, text);
      size = Buffer.byteLength(text);
    } catch (error) {
      // A rewrite needs room for a second copy, which a full volume lacks. The file is then repaired where it is.
      log.warn({ err: error, journal: path }, 'could not rewrite the commit journal at start; repairing it in place');
      try {
        ({ fd, size } = repairInPlace(path, contents));
      } catch (repairError) {
        throw openError(path, repairError);
      }
    }

    const journal = new CommitJournal(path, fd, log);
    contents.recovered.forEach(({ commit }, index) => journal.#markOpen(commit.requestId, lines[index]!));
    journal.#size = size;
    if (contents.recovered.length > 0) {
      log.info({ journal: path, recovered: contents.recovered.length }, 'recovered commits from the commit journal; retrying them until the ledger takes them');
    }
    return { journal, recovered: contents.recovered };
  }

  /** Appends the `add` line of a commit that the queue took at `queuedAtMs` (epoch milliseconds). */
  append(commit: PendingCommit, queuedAtMs: number): void {
    if (this.#closed) return;
    const line = formatAddLine(commit, queuedAtMs);
    if (this.#write(line)) this.#markOpen(commit.requestId, line);
  }

  /**
   * Appends the `done` line of a commit whose `add` line this journal holds,
   * and truncates the file once no commit is open. Does nothing for a request
   * id without an open `add` line.
   */
  done(requestId: string): void {
    if (this.#closed) return;
    const lines = this.#open.get(requestId);
    if (lines === undefined) return;
    const line = lines.shift()!;
    if (lines.length === 0) this.#open.delete(requestId);
    this.#openCount--;
    this.#openBytes -= Buffer.byteLength(line);

    // The done line goes first, so that the file stays correct when the truncation fails.
    this.#write(`${JSON.stringify({ op: 'done', requestId })}\n`);
    // Every line in the file is settled, so the file starts over.
    if (this.#openCount === 0) this.#truncate();
    else if (this.#size >= COMPACT_MIN_BYTES && this.#size > 4 * this.#openBytes) this.#compact();
  }

  /** The number of commits with an `add` line and no `done` line. */
  get open(): number {
    return this.#openCount;
  }

  /** Closes the file. Open commits stay in it for the next start. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeSync(this.#fd);
  }

  #markOpen(requestId: string, line: string): void {
    const lines = this.#open.get(requestId);
    if (lines === undefined) this.#open.set(requestId, [line]);
    else lines.push(line);
    this.#openCount++;
    this.#openBytes += Buffer.byteLength(line);
  }

  #truncate(): void {
    try {
      ftruncateSync(this.#fd, 0);
      this.#size = 0;
      this.#succeeded();
    } catch (error) {
      this.#failed(error, 'truncate');
    }
  }

  /**
   * Replaces the file with one that holds only the open `add` lines: written
   * to a temporary file, synced, and renamed over the journal, so that a
   * crash leaves either the old file or the new one. On failure the old file
   * stays in use.
   */
  #compact(): void {
    const text = [...this.#open.values()].flat().join('');
    try {
      const fd = replaceFile(this.path, text);
      closeSync(this.#fd);
      this.#fd = fd;
      this.#size = Buffer.byteLength(text);
      this.#succeeded();
    } catch (error) {
      this.#failed(error, 'compact');
    }
  }

  /** Writes one line and returns whether it was written. A failure is logged, not thrown, because the call it belongs to was served. */
  #write(line: string): boolean {
    try {
      this.#size += writeAll(this.#fd, line);
      this.#succeeded();
      return true;
    } catch (error) {
      // A write that failed part way, as on a full disk, leaves part of the line. The file is cut back to its last
      // whole line, or the next line would be appended to that part and lost with it at the next start.
      try {
        ftruncateSync(this.#fd, this.#size);
      } catch {
        // The next start skips the partial line, and the line after it, as damaged.
      }
      this.#failed(error, 'write');
      return false;
    }
  }

  #succeeded(): void {
    if (!this.#failing) return;
    this.#failing = false;
    this.#log.info({ journal: this.path }, 'commit journal writes succeed again');
  }

  #failed(error: unknown, operation: 'write' | 'truncate' | 'compact'): void {
    if (this.#failing) return;
    this.#failing = true;
    this.#log.error(
      { err: error, journal: this.path, operation },
      'commit journal update failed; queued commits are still retried, but those without a journal line are lost if the sidecar stops before the ledger takes them',
    );
  }
}

/**
 * Reads the lines of a journal file and pairs each `done` line with the
 * earliest open `add` line of its request id.
 *
 * A last line without a newline is a write that a crash cut short. It is
 * skipped with a warning, unless it is a complete line. Any other line that
 * does not parse is skipped and logged at error with its line number and
 * text. Failing the start instead would stop the sidecar from serving every
 * call of the pod over one damaged record. A skipped `add` line costs what
 * a sidecar without a journal loses, and a skipped `done` line only replays
 * a commit, which the ledger's idempotent commit absorbs.
 */
function parseJournal(data: Buffer, path: string, log: Logger): JournalContents {
  const entries: (RecoveredCommit | undefined)[] = [];
  const openIndexes = new Map<string, number[]>();
  let offset = 0;
  let lineNumber = 0;
  let completeBytes = 0;
  let missingNewline = false;
  let damaged = 0;

  while (offset < data.length) {
    lineNumber++;
    const newline = data.indexOf(0x0a, offset);
    const end = newline === -1 ? data.length : newline;
    const text = data.subarray(offset, end).toString('utf8');
    offset = end + 1;
    const line = parseLine(text);

    if (newline === -1) {
      if (line === undefined) {
        log.warn({ journal: path, line: lineNumber, bytes: end - completeBytes }, 'skipped a torn last line of the commit journal, left by a crash during a write');
        break;
      }
      missingNewline = true;
    }
    completeBytes = Math.min(offset, data.length);

    if (line === undefined) {
      if (text.trim() !== '') {
        damaged++;
        log.error({ journal: path, line: lineNumber, text: text.slice(0, MAX_LOGGED_LINE_CHARS) }, 'skipped an invalid line of the commit journal; if it is an add line, its commit is not replayed');
      }
      continue;
    }
    if (line.op === 'add') {
      const indexes = openIndexes.get(line.requestId) ?? [];
      indexes.push(entries.length);
      openIndexes.set(line.requestId, indexes);
      entries.push(toRecovered(line));
    } else {
      const index = openIndexes.get(line.requestId)?.shift();
      if (index !== undefined) entries[index] = undefined;
    }
  }

  const recovered = entries.filter((entry): entry is RecoveredCommit => entry !== undefined);
  return { recovered, completeBytes, missingNewline, damaged };
}

/** Formats the `add` line of a commit, with its amounts as decimal strings. */
export function formatAddLine(commit: PendingCommit, queuedAtMs: number): string {
  const { entry } = commit;
  const line: AddLine = {
    op: 'add',
    requestId: commit.requestId,
    queuedAt: queuedAtMs,
    wallet: { namespace: commit.wallet.namespace, name: commit.wallet.name },
    walletId: commit.walletId,
    currency: commit.currency,
    held: commit.held.toString(),
    entry: {
      charged: entry.charged.toString(),
      providerCost: entry.providerCost.toString(),
      model: entry.model,
      route: entry.route,
      tokens: entry.tokens,
      estimated: entry.estimated,
    },
  };
  return `${JSON.stringify(line)}\n`;
}

function parseLine(text: string): z.infer<typeof journalLine> | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  const result = journalLine.safeParse(value);
  return result.success ? result.data : undefined;
}

function toRecovered(line: AddLine): RecoveredCommit {
  return {
    queuedAtMs: line.queuedAt,
    commit: {
      wallet: line.wallet,
      walletId: line.walletId,
      currency: line.currency,
      requestId: line.requestId,
      held: BigInt(line.held),
      entry: {
        charged: BigInt(line.entry.charged),
        providerCost: BigInt(line.entry.providerCost),
        model: line.entry.model,
        route: line.entry.route,
        tokens: line.entry.tokens,
        estimated: line.entry.estimated,
      },
    },
  };
}

/** Returns the file's bytes, or none when it does not exist yet. */
function readExisting(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return Buffer.alloc(0);
    throw error;
  }
}

/** Writes the whole string, continuing after a partial write, and returns its length in bytes. */
function writeAll(fd: number, text: string): number {
  const bytes = Buffer.from(text, 'utf8');
  let written = 0;
  while (written < bytes.length) written += writeSync(fd, bytes, written, bytes.length - written);
  return bytes.length;
}

/**
 * Replaces the file at `path` with `text`: a temporary file beside it is
 * written, synced and renamed over it, so that a crash leaves the old file
 * or the new one whole. An empty text truncates the file, or creates it.
 * Returns a descriptor of the file, opened for appending.
 */
function replaceFile(path: string, text: string): number {
  if (text === '') {
    const fd = openSync(path, 'a', 0o600);
    ftruncateSync(fd, 0);
    return fd;
  }
  const temporary = `${path}.new`;
  try {
    const fd = openSync(temporary, 'w', 0o600);
    try {
      writeAll(fd, text);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, path);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw error;
  }
  return openSync(path, 'a', 0o600);
}

/**
 * Opens the journal for appending without rewriting it: cuts a torn last
 * line off and ends a last line that lacks its newline. Damaged lines stay,
 * and the next start logs them again. Returns the descriptor and the size.
 */
function repairInPlace(path: string, contents: JournalContents): { fd: number; size: number } {
  const fd = openSync(path, 'a', 0o600);
  try {
    ftruncateSync(fd, contents.completeBytes);
    const size = contents.completeBytes + (contents.missingNewline ? writeAll(fd, '\n') : 0);
    return { fd, size };
  } catch (error) {
    closeSync(fd);
    throw error;
  }
}

/**
 * Copies a journal with damaged lines aside before the start rewrites it
 * without them, so that their commits can still be corrected by hand.
 */
function keepDamagedCopy(path: string, data: Buffer, damaged: number, log: Logger): void {
  const copy = `${path}.damaged-${Date.now()}`;
  try {
    writeFileSync(copy, data, { mode: 0o600 });
    log.warn({ journal: path, copy, damaged }, 'kept a copy of the commit journal with its damaged lines before rewriting it without them');
  } catch (error) {
    log.error({ err: error, journal: path, copy, damaged }, 'failed to keep a copy of the commit journal with its damaged lines; the logged lines are the only copy');
  }
}

/** Returns the error for a journal that cannot be read or written at start, with the fix for its cause. */
function openError(path: string, error: unknown): Error {
  const code = (error as NodeJS.ErrnoException).code;
  const fixes: Record<string, string> = {
    ENOENT: 'its folder does not exist; create it, or give a path in an existing folder',
    EACCES: 'the process may not write there; give a path in a writable folder',
    EPERM: 'the process may not write there; give a path in a writable folder',
    EROFS: 'its file system is read-only; give a path on a writable volume',
    EISDIR: 'the path names a folder; give the path of a file in it, such as commits.ndjson',
    ENOSPC: 'its file system is full; free space, or give a path on another volume',
  };
  const fix = (code !== undefined ? fixes[code] : undefined) ?? 'check that its folder exists and is writable';
  return new Error(`failed to open the commit journal ${path}: ${(error as Error).message}; ${fix}`, { cause: error });
}
