/**
 * Summarizes a V8 CPU profile (the .cpuprofile JSON that `node --cpu-prof`
 * writes): self time per function and per package or project folder.
 *
 *   node bench/profile.ts FILE.cpuprofile [--top N]
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  /** Zero-based. */
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}

interface CpuProfile {
  nodes: ProfileNode[];
  /** Microseconds on the monotonic clock, the clock of `process.hrtime`. */
  startTime: number;
  samples: number[];
  /** Microseconds since the previous sample, one per sample. */
  timeDeltas: number[];
}

export interface SelfTime {
  name: string;
  /** Milliseconds of self time. */
  ms: number;
  /** Share of the busy time, from 0 to 1. */
  share: number;
}

export interface ProfileSummary {
  /** Milliseconds covered by samples. */
  totalMs: number;
  /** Milliseconds in which the process was idle (waiting in the event loop). */
  idleMs: number;
  topFunctions: SelfTime[];
  categories: SelfTime[];
}

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
/** V8's pseudo-frames that stand for no JavaScript function. */
const IDLE = '(idle)';

export interface SummaryOptions {
  /** Rows of each table (default 15). */
  top?: number;
  /**
   * Skips samples taken before this time, in microseconds of the monotonic
   * clock (`process.hrtime.bigint() / 1000n`), such as the sidecar's startup.
   */
  sinceUs?: number;
}

/** Reads a .cpuprofile file and returns self times, busy shares excluding idle time. */
export function summarizeProfile(file: string, options: SummaryOptions = {}): ProfileSummary {
  const top = options.top ?? 15;
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const frames = new Map(profile.nodes.map((node) => [node.id, node.callFrame]));

  const byFunction = new Map<string, number>();
  const byCategory = new Map<string, number>();
  let totalUs = 0;
  let idleUs = 0;
  let sampledAt = profile.startTime;
  for (let index = 0; index < profile.samples.length; index++) {
    const frame = frames.get(profile.samples[index]!);
    const us = profile.timeDeltas[index] ?? 0;
    sampledAt += us;
    if (!frame || us <= 0 || sampledAt < (options.sinceUs ?? 0)) continue;
    totalUs += us;
    if (frame.functionName === IDLE) {
      idleUs += us;
      continue;
    }
    add(byFunction, functionLabel(frame), us);
    add(byCategory, categoryOf(frame), us);
  }

  const busyUs = totalUs - idleUs;
  const ranked = (table: Map<string, number>, limit: number): SelfTime[] =>
    [...table.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, limit)
      .map(([name, us]) => ({ name, ms: us / 1000, share: busyUs > 0 ? us / busyUs : 0 }));

  return { totalMs: totalUs / 1000, idleMs: idleUs / 1000, topFunctions: ranked(byFunction, top), categories: ranked(byCategory, top) };
}

function add(table: Map<string, number>, key: string, us: number): void {
  table.set(key, (table.get(key) ?? 0) + us);
}

/** Returns `name (file:line)`, with project files relative to the repository and packages by package path. */
function functionLabel(frame: CallFrame): string {
  const name = frame.functionName || '(anonymous)';
  if (frame.url === '') return name;
  return `${name} (${shortPath(frame.url)}:${frame.lineNumber + 1})`;
}

function shortPath(url: string): string {
  const path = url.startsWith('file://') ? fileURLToPath(url) : url;
  const packageStart = path.lastIndexOf('/node_modules/');
  if (packageStart !== -1) return path.slice(packageStart + '/node_modules/'.length);
  if (path.startsWith(REPO_ROOT)) return relative(REPO_ROOT, path);
  return path;
}

/**
 * Returns where the time went: a package name, a project folder (such as
 * `sidecar` or `src/ledger`), Node's own modules, or a V8 pseudo-frame such
 * as `(garbage collector)`. Built-ins without a script, such as JSON.parse,
 * count as `(V8 built-ins)`.
 */
export function categoryOf(frame: CallFrame): string {
  if (frame.url === '') return frame.functionName.startsWith('(') ? frame.functionName : '(V8 built-ins)';
  if (frame.url.startsWith('node:')) return 'node: core modules';
  const path = frame.url.startsWith('file://') ? fileURLToPath(frame.url) : frame.url;
  const packageStart = path.lastIndexOf('/node_modules/');
  if (packageStart !== -1) {
    const parts = path.slice(packageStart + '/node_modules/'.length).split('/');
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  if (path.startsWith(REPO_ROOT)) {
    const parts = relative(REPO_ROOT, path).split('/');
    return parts[0] === 'src' && parts.length > 2 ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  return path;
}

/** Renders a summary as two Markdown tables. */
export function profileMarkdown(summary: ProfileSummary): string {
  const percent = (share: number) => `${(share * 100).toFixed(1)} %`;
  const table = (title: string, rows: SelfTime[]) => [
    `| ${title} | self time (ms) | share of busy time |`,
    '|---|---:|---:|',
    ...rows.map((row) => `| \`${row.name.replaceAll('|', '\\|')}\` | ${row.ms.toFixed(0)} | ${percent(row.share)} |`),
  ];
  const busyMs = summary.totalMs - summary.idleMs;
  return [
    `Sampled ${(summary.totalMs / 1000).toFixed(1)} s, busy ${(busyMs / 1000).toFixed(1)} s (${percent(busyMs / summary.totalMs)}).`,
    '',
    ...table('where (package, folder)', summary.categories),
    '',
    ...table('function', summary.topFunctions),
  ].join('\n');
}

function main(): void {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '15' } } });
  const file = positionals[0];
  const top = Number(values.top);
  if (file === undefined || !Number.isInteger(top) || top < 1) {
    console.error('Usage: node bench/profile.ts FILE.cpuprofile [--top N]');
    process.exitCode = 2;
    return;
  }
  console.log(profileMarkdown(summarizeProfile(file, { top })));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();
