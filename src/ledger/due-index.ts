/**
 * The in-memory counterpart of the Redis ledger's expiry index (`:hexp`): a
 * score in epoch milliseconds per request id, read lowest score first, and
 * equal scores by id in byte order, as a Redis sorted set orders them. It is
 * a binary heap with lazy deletion, so that taking the due members costs
 * time in proportion to their number, not to the size of the index.
 */

interface HeapItem {
  score: number;
  id: string;
  /** The id's version when the item was pushed; an item of an older version is stale. */
  version: number;
}

export class DueIndex {
  readonly #current = new Map<string, { score: number; version: number }>();
  readonly #heap: HeapItem[] = [];
  #versions = 0;

  get size(): number {
    return this.#current.size;
  }

  /** Adds `id` with `score`, or moves it to `score` when it is already in the index. */
  set(id: string, score: number): void {
    const version = ++this.#versions;
    this.#current.set(id, { score, version });
    this.#push({ score, id, version });
  }

  delete(id: string): void {
    this.#current.delete(id);
  }

  /**
   * Removes and returns up to `limit` ids whose score is at or before
   * `nowMs`, lowest first. The caller sets each again or leaves it removed.
   */
  takeDue(nowMs: number, limit: number): string[] {
    const due: string[] = [];
    while (due.length < limit && this.#heap.length > 0) {
      const top = this.#heap[0]!;
      const current = this.#current.get(top.id);
      if (current?.version !== top.version) {
        this.#pop();
        continue;
      }
      if (top.score > nowMs) break;
      this.#pop();
      this.#current.delete(top.id);
      due.push(top.id);
    }
    return due;
  }

  #push(item: HeapItem): void {
    const heap = this.#heap;
    heap.push(item);
    let index = heap.length - 1;
    while (index > 0) {
      const parent = (index - 1) >> 1;
      if (!before(heap[index]!, heap[parent]!)) break;
      [heap[index], heap[parent]] = [heap[parent]!, heap[index]!];
      index = parent;
    }
  }

  #pop(): void {
    const heap = this.#heap;
    const last = heap.pop()!;
    if (heap.length === 0) return;
    heap[0] = last;
    let index = 0;
    for (;;) {
      const left = 2 * index + 1;
      const right = left + 1;
      let smallest = index;
      if (left < heap.length && before(heap[left]!, heap[smallest]!)) smallest = left;
      if (right < heap.length && before(heap[right]!, heap[smallest]!)) smallest = right;
      if (smallest === index) return;
      [heap[index], heap[smallest]] = [heap[smallest]!, heap[index]!];
      index = smallest;
    }
  }
}

function before(a: HeapItem, b: HeapItem): boolean {
  if (a.score !== b.score) return a.score < b.score;
  return compareBytes(a.id, b.id) < 0;
}

/** Compares two strings by their UTF-8 bytes, the order Redis gives sorted-set members of equal score. */
export function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}
