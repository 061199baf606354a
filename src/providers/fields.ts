import { InvalidRequestError } from './adapter.ts';

/** Helpers that read request and response fields shared by the adapters. */

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Reads a token count from a response. Returns undefined for anything that
 * is not a non-negative safe integer, because a missing or malformed count
 * is unknown, never zero.
 */
export function readCount(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

/** Returns the path without its query string. */
export function pathOnly(path: string): string {
  const query = path.indexOf('?');
  return query === -1 ? path : path.slice(0, query);
}

/** Reads the required `model` field. */
export function requireModel(body: Record<string, unknown>): string {
  const model = body['model'];
  if (typeof model !== 'string' || model.length === 0) {
    throw new InvalidRequestError(
      model === undefined
        ? 'missing required field "model": set it to the id of the model to call'
        : `invalid field "model": expected a non-empty string, got ${describe(model)}`,
      400,
      'invalid_request',
      'model',
    );
  }
  return model;
}

/** Reads an optional boolean field, treating null as absent. */
export function readFlag(body: Record<string, unknown>, field: string): boolean {
  const value = body[field];
  if (value === undefined || value === null) return false;
  if (typeof value !== 'boolean') {
    throw new InvalidRequestError(`invalid field "${field}": expected true or false, got ${describe(value)}`, 400, 'invalid_request', field);
  }
  return value;
}

/** Reads an optional positive integer field, treating null as absent. */
export function readPositiveInteger(body: Record<string, unknown>, field: string): number | undefined {
  const value = body[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new InvalidRequestError(`invalid field "${field}": expected a positive integer, got ${describe(value)}`, 400, 'invalid_request', field);
  }
  return value;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return Array.isArray(value) ? 'an array' : `a ${typeof value}`;
}

/**
 * Choices or candidates per response whose finish reason a stream meter
 * keeps. A reason at a higher index is dropped, so a malformed stream cannot
 * grow the list without bound.
 */
const MAX_FINISH_REASONS = 128;

/**
 * Finish reasons of a streamed response by choice or candidate index. A
 * reason repeated for one index replaces the earlier one. Nothing is
 * allocated until the first reason arrives.
 */
export class FinishReasons {
  #byIndex: string[] | undefined;

  /**
   * Records the reason of one choice or candidate. `index` is its `index`
   * field, and `position` (its place in the event's array) is used instead
   * when that field is missing or not a non-negative integer.
   */
  record(index: unknown, position: number, reason: string): void {
    const at = typeof index === 'number' && Number.isSafeInteger(index) && index >= 0 ? index : position;
    if (at >= MAX_FINISH_REASONS) return;
    this.#byIndex ??= [];
    this.#byIndex[at] = reason;
  }

  /** Returns a new array of the reasons in index order, without the indexes that reported none. */
  list(): string[] {
    // filter skips the holes that indexes without a reason leave.
    return this.#byIndex === undefined ? [] : this.#byIndex.filter(() => true);
  }
}
