/**
 * Model id matching. A model is known only by its exact id, or as a dated
 * snapshot "<listed id>-YYYY-MM-DD" of a listed id with a real calendar date.
 * Nothing is guessed from similar names: "gpt-5.6-sol" is not "gpt-5", and
 * "o3-pro-2025-06-10" is not "o3" (its base "o3-pro" would have to be listed).
 */

const DATED_SNAPSHOT = /^(.+)-(\d{4})-(\d{2})-(\d{2})$/;

function isRealDate(year: number, month: number, day: number): boolean {
  if (month < 1 || month > 12 || day < 1) return false;
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate();
  return day <= daysInMonth;
}

/** Returns the listed id that `model` resolves to, or undefined when it is unknown. */
export function resolveModel<T>(model: string, listed: ReadonlyMap<string, T>): { id: string; value: T } | undefined {
  const exact = listed.get(model);
  if (exact !== undefined) return { id: model, value: exact };

  const match = DATED_SNAPSHOT.exec(model);
  if (!match) return undefined;
  const [, base, year, month, day] = match;
  if (!isRealDate(Number(year), Number(month), Number(day))) return undefined;

  const alias = listed.get(base!);
  return alias === undefined ? undefined : { id: base!, value: alias };
}
