/**
 * Settings that bound the ledger's memory: how long settled records are
 * kept, and how durations for it and for compaction are written.
 */

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** Default time a settled record is kept after the request settled: 7 days. */
export const DEFAULT_SETTLED_RETENTION_MS = 7 * UNIT_MS.d;

/**
 * Shortest allowed retention of settled records: 1 hour. A record must
 * outlive every later call that carries the same request id and has to see
 * the first result. That is a commit after the sweeper settled an expired
 * hold, whose hold lived up to the sidecar's hold TTL (15 minutes). The
 * sidecar keeps a commit that the ledger could not take for at most the
 * retention, so every retention leaves room for those retries.
 */
export const MIN_SETTLED_RETENTION_MS = UNIT_MS.h;

/**
 * Parses a duration such as `7d`, `36h`, `90m`, `45s`, `500ms` or `1d12h`
 * into milliseconds. Throws a RangeError that names `setting` when the text
 * is not one or more whole numbers, each followed by a unit.
 */
export function parseDurationMs(text: string, setting: string): number {
  const trimmed = text.trim();
  let total = Number.NaN;
  if (/^(\d+(ms|s|m|h|d))+$/.test(trimmed)) {
    total = 0;
    for (const [, count, unit] of trimmed.matchAll(/(\d+)(ms|s|m|h|d)/g)) total += Number(count) * UNIT_MS[unit as keyof typeof UNIT_MS];
  }
  if (!Number.isSafeInteger(total)) {
    throw new RangeError(`invalid ${setting} "${text}": use a duration such as 7d, 36h, 90m or 45s (units ms, s, m, h, d)`);
  }
  return total;
}

/** Formats milliseconds as the largest whole unit that fits, such as `7d` or `90m`. */
export function formatDuration(ms: number): string {
  for (const unit of ['d', 'h', 'm', 's'] as const) {
    if (ms >= UNIT_MS[unit] && ms % UNIT_MS[unit] === 0) return `${ms / UNIT_MS[unit]}${unit}`;
  }
  return `${ms}ms`;
}

/** Throws a RangeError unless `retentionMs` is a whole number of milliseconds of at least MIN_SETTLED_RETENTION_MS. */
export function validateSettledRetention(retentionMs: number): void {
  if (!Number.isSafeInteger(retentionMs) || retentionMs < MIN_SETTLED_RETENTION_MS) {
    const text = Number.isSafeInteger(retentionMs) && retentionMs > 0 ? formatDuration(retentionMs) : String(retentionMs);
    throw new RangeError(
      `invalid retention of settled records ${text}: use at least ${formatDuration(MIN_SETTLED_RETENTION_MS)} ` +
        `(in whole milliseconds), longer than the sidecar's hold TTL (15m) plus its commit retries, ` +
        'so that a late commit still finds its request and a retry is not billed twice; the default is ' +
        formatDuration(DEFAULT_SETTLED_RETENTION_MS),
    );
  }
}

/**
 * Parses a point in time for compaction and export: a duration (`30d`) is
 * that long before `nowMs`, anything else must be a date that Date.parse
 * reads, such as `2025-06-01T00:00:00Z`. Returns epoch milliseconds.
 */
export function parseCutoffMs(text: string, setting: string, nowMs: number): number {
  if (/^\s*\d/.test(text) && /(ms|s|m|h|d)\s*$/.test(text)) return nowMs - parseDurationMs(text, setting);
  const parsed = Date.parse(text);
  if (Number.isNaN(parsed)) {
    throw new RangeError(`invalid ${setting} "${text}": use an age such as 30d or a time such as 2025-06-01T00:00:00Z`);
  }
  return parsed;
}
