/** Prints a progress line with the time of day, so that a long run shows where it is. */
export function progress(message: string): void {
  console.log(`[${new Date().toISOString().slice(11, 19)}] ${message}`);
}
