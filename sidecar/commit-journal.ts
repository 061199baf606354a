import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
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
export interface JournalContents {
  recovered: RecoveredCommit[];
  /** Byte length of the complete lines. Bytes after it are a torn last line. */
  completeBytes: number;
  /** Whether the last line is complete but has no newline, so the next append must start with one. */
  missingNewline: boolean;
}

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
  readonly #fd: number;
  readonly #log: Logger;
  /** Commits with an `add` line and no `done` line, counted by request id. */
  readonly #open = new Map<string, number>();
  #openCount = 0;
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
    let contents: JournalContents;
    let fd: number;
    try {
      contents = parseJournal(readExisting(path), path, log);
      fd = openSync(path, 'a', 0o600);
    } catch (error) {
      throw new Error(`failed to open the commit journal ${path}: ${(error as Error).message}; check that its folder exists and is writable`, { cause: error });
    }

    const journal = new CommitJournal(path, fd, log);
    for (const { commit } of contents.recovered) journal.#markOpen(commit.requestId);
    try {
      if (contents.recovered.length === 0) ftruncateSync(fd, 0);
      else if (contents.missingNewline) writeAll(fd, '\n');
      else ftruncateSync(fd, contents.completeBytes);
    } catch (error) {
      closeSync(fd);
      throw new Error(`failed to repair the commit journal ${path}: ${(error as Error).message}`, { cause: error });
    }

    if (contents.recovered.length > 0) {
      log.info({ journal: path, recovered: contents.recovered.length }, 'recovered commits from the commit journal; retrying them until the ledger takes them');
    }
    return { journal, recovered: contents.recovered };
  }

  /** Appends the `add` line of a commit that the queue took at `queuedAtMs` (epoch milliseconds). */
  append(commit: PendingCommit, queuedAtMs: number): void {
    if (this.#closed) return;
    if (this.#write(formatAddLine(commit, queuedAtMs))) this.#markOpen(commit.requestId);
  }

  /**
   * Appends the `done` line of a commit whose `add` line this journal holds,
   * and truncates the file once no commit is open. Does nothing for a request
   * id without an open `add` line.
   */
  done(requestId: string): void {
    if (this.#closed) return;
    const count = this.#open.get(requestId);
    if (count === undefined) return;
    if (count === 1) this.#open.delete(requestId);
    else this.#open.set(requestId, count - 1);
    this.#openCount--;

    // The done line goes first, so that the file stays correct when the truncation fails.
    this.#write(`${JSON.stringify({ op: 'done', requestId })}\n`);
    // Every line in the file is settled, so the file starts over.
    if (this.#openCount === 0) this.#truncate();
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

  #markOpen(requestId: string): void {
    this.#open.set(requestId, (this.#open.get(requestId) ?? 0) + 1);
    this.#openCount++;
  }

  #truncate(): void {
    try {
      ftruncateSync(this.#fd, 0);
      this.#succeeded();
    } catch (error) {
      this.#failed(error, 'truncate');
    }
  }

  /** Writes one line and returns whether it was written. A failure is logged, not thrown, because the call it belongs to was served. */
  #write(line: string): boolean {
    try {
      writeAll(this.#fd, line);
      this.#succeeded();
      return true;
    } catch (error) {
      this.#failed(error, 'write');
      return false;
    }
  }

  #succeeded(): void {
    if (!this.#failing) return;
    this.#failing = false;
    this.#log.info({ journal: this.path }, 'commit journal writes succeed again');
  }

  #failed(error: unknown, operation: 'write' | 'truncate'): void {
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
export function parseJournal(data: Buffer, path: string, log: Logger): JournalContents {
  const entries: (RecoveredCommit | undefined)[] = [];
  const openIndexes = new Map<string, number[]>();
  let offset = 0;
  let lineNumber = 0;
  let completeBytes = 0;
  let missingNewline = false;

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
  return { recovered, completeBytes, missingNewline };
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

/** Writes the whole string, continuing after a partial write. */
function writeAll(fd: number, text: string): void {
  const bytes = Buffer.from(text, 'utf8');
  let written = 0;
  while (written < bytes.length) written += writeSync(fd, bytes, written, bytes.length - written);
}
