/**
 * Renders a benchmark run as Markdown and writes it into docs/benchmarks.md
 * between the result markers, leaving the rest of the page as it is.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { formatAmount } from '../src/money/index.ts';
import type { LedgerResult } from './ledger.ts';
import type { Machine } from './machine.ts';
import { KEPT_UP, keptUp, type LoadRun, type TargetLoad } from './overhead.ts';
import type { OverspendResult } from './overspend.ts';
import type { BenchPlan } from './plan.ts';
import { profileMarkdown, type ProfileSummary } from './profile.ts';
import type { StreamResult } from './streaming.ts';
import { SLOW_THRESHOLD_MS, SLOW_WINDOW_MS, type AttackResult } from './vegeta.ts';

export interface ProfileRun {
  rate: number;
  seconds: number;
  /** The profiled sidecar's load run; the profiler slows it, so it is not an overhead result. */
  result: AttackResult;
  /** CPU seconds that the profiled sidecar used during the run, in user mode and in the kernel. */
  cpu: { user: number; system: number };
  summary: ProfileSummary;
}

export interface RunResults {
  plan: BenchPlan;
  command: string;
  machine: Machine;
  versions: Record<string, string>;
  loads: TargetLoad[];
  streams: StreamResult[];
  ledger?: LedgerResult;
  overspend: OverspendResult[];
  profile?: ProfileRun;
  /** Sections that failed, with the error message. */
  failures: string[];
  durationSeconds: number;
  loadAverageAtEnd: number[];
  /** The speed check's time when the run ended; left out by runs recorded before it existed. */
  speedCheckMsAtEnd?: number;
}

export const RESULTS_START = '<!-- bench:results:start -->';
export const RESULTS_END = '<!-- bench:results:end -->';

/** Replaces the text between the result markers of the page with `markdown`. */
export async function writeResults(page: string, markdown: string): Promise<void> {
  const text = await readFile(page, 'utf8');
  const { start, end } = findMarkers(page, text);
  await writeFile(page, `${text.slice(0, start + RESULTS_START.length)}\n${markdown}\n${text.slice(end)}`);
}

/** Throws when the page cannot be read or lacks the result markers, which writeResults needs. */
export async function checkResultsPage(page: string): Promise<void> {
  findMarkers(page, await readFile(page, 'utf8'));
}

function findMarkers(page: string, text: string): { start: number; end: number } {
  const start = text.indexOf(RESULTS_START);
  const end = text.indexOf(RESULTS_END);
  if (start === -1 || end < start) {
    throw new Error(`${page} has no "${RESULTS_START}" and "${RESULTS_END}" lines; add them where the results belong`);
  }
  return { start, end };
}

/** The team's targets for Tollgate: added latency at the highest fixed rate, and ledger throughput as a share of the EVALSHA ceiling. */
export const GOALS = { addedP50Ms: 1, addedP99Ms: 3, ledgerShare: 0.8 };

export function renderResults(results: RunResults): string {
  return [
    header(results),
    machineSection(results),
    goalsSection(results),
    overheadSection(results),
    streamingSection(results),
    ledgerSection(results),
    overspendSection(results),
    memorySection(results),
    profileSection(results),
    failuresSection(results),
  ]
    .filter((section) => section !== '')
    .join('\n\n');
}

function header(results: RunResults): string {
  const { machine, plan } = results;
  return [
    `Recorded ${machine.startedAt.slice(0, 16).replace('T', ' ')} UTC with \`${results.command}\` (${plan.mode} mode) at commit ${machine.commit}; the run took ${(results.durationSeconds / 60).toFixed(1)} minutes.`,
    'Absolute times depend on the machine; compare the targets with each other within one run.',
  ].join(' ');
}

function machineSection(results: RunResults): string {
  const { machine } = results;
  const load = (values: number[]) => values.map((value) => value.toFixed(2)).join(', ');
  return [
    '### Machine and versions',
    '',
    '| | |',
    '|---|---|',
    `| CPUs (nproc) | ${machine.cpus}, ${machine.cpuModel} |`,
    `| memory | ${(machine.memoryBytes / 2 ** 30).toFixed(1)} GiB |`,
    `| kernel | ${machine.kernel} |`,
    `| load average (1, 5, 15 min) | ${load(machine.loadAverage)} at the start, ${load(results.loadAverageAtEnd)} at the end |`,
    ...(machine.speedCheckMs === undefined
      ? []
      : [`| speed check (a fixed JavaScript loop; lower is faster) | ${machine.speedCheckMs.toFixed(0)} ms at the start, ${results.speedCheckMsAtEnd?.toFixed(0) ?? '–'} ms at the end |`]),
    ...Object.entries(results.versions).map(([name, version]) => `| ${name} | ${version} |`),
    '',
    `The load generator, the upstream simulator, the proxy under test and redis-server share these ${machine.cpus} CPUs, so every number below includes their contention.`,
  ].join('\n');
}

function goalsSection(results: RunResults): string {
  const highest = Math.max(...results.plan.rates);
  const rows: string[] = [];
  let comparesWithPeers = false;
  const tollgate = addedAt(results, 'tollgate', highest);
  if (tollgate) {
    rows.push(goalRow(`Tollgate added p50 at ${highest} rps`, `≤ ${GOALS.addedP50Ms} ms`, ms(tollgate.p50), tollgate.p50 <= GOALS.addedP50Ms));
    rows.push(goalRow(`Tollgate added p99 at ${highest} rps`, `≤ ${GOALS.addedP99Ms} ms`, ms(tollgate.p99), tollgate.p99 <= GOALS.addedP99Ms));
  }
  for (const rate of results.plan.rates) {
    const comparison = compareWithPeers(results, rate);
    if (comparison) {
      rows.push(goalRow(`Tollgate added p50 and p99 at ${rate} rps`, "lower than each peer's", comparison.measured, comparison.met));
      comparesWithPeers = true;
    }
  }
  if (results.ledger) {
    const share = ledgerShare(results.ledger);
    rows.push(goalRow('ledger script executions per second', `≥ ${GOALS.ledgerShare * 100} % of the EVALSHA ceiling`, `${percent(share)} of the trivial-script ceiling`, share >= GOALS.ledgerShare));
  }
  const tollgateOverspend = results.overspend.find((result) => result.gateway === 'tollgate');
  if (tollgateOverspend) {
    rows.push(goalRow('Tollgate overspend', '0', usd(tollgateOverspend.overspendNano), tollgateOverspend.overspendNano === 0n));
  }
  if (rows.length === 0) return '';
  return ['### Targets', '', '| what | target | measured | met |', '|---|---|---|---|', ...rows, ...(comparesWithPeers ? ['', PEER_RULE] : [])].join('\n');
}

/** The rule behind the rows "lower than each peer's", printed below the Targets table; compareWithPeers applies it. */
export const PEER_RULE =
  `"Lower than each peer's": a target kept up with a fixed rate when vegeta sent at least ${percent(KEPT_UP.sentShare, 0)} of the planned rate ` +
  `and at least ${percent(KEPT_UP.success, 0)} of the requests succeeded. Where Tollgate and a peer both kept up, Tollgate must add less latency at p50 and at p99. ` +
  'A peer that did not keep up counts as beaten whatever its latency, as long as Tollgate kept up, and a peer that kept up beats a Tollgate that did not. ' +
  'Where neither kept up, both latencies measure queueing, and the row is undecided.';

/**
 * Compares Tollgate's added latency at one rate with each peer's. A target
 * that did not keep up with the rate loses to one that did; when neither
 * did, their latencies measure queueing rather than overhead, and the
 * comparison is undecided.
 */
export function compareWithPeers(results: RunResults, rate: number): { measured: string; met: boolean | undefined } | undefined {
  const tollgate = runOf(results, 'tollgate', rate);
  const peers = ['portkey', 'litellm'].filter((name) => runOf(results, name, rate) !== undefined);
  if (!tollgate || peers.length === 0) return undefined;

  const describe = (name: string): string => {
    const run = runOf(results, name, rate)!;
    if (!run.result) return `${name} not run`;
    const added = addedAt(results, name, rate);
    const latency = added ? `${signedMs(added.p50)} / ${signedMs(added.p99)}` : '–';
    if (keptUp(run.result, rate)) return `${name} ${latency}`;
    return `${name} ${latency} (did not keep up: sent ${run.result.rate.toFixed(0)} of ${rate} rps, ${percent(run.result.success)} success)`;
  };
  const tollgateKeptUp = tollgate.result !== undefined && keptUp(tollgate.result, rate);
  const outcomes = peers.map((name) => {
    const peer = runOf(results, name, rate)!;
    const peerKeptUp = peer.result !== undefined && keptUp(peer.result, rate);
    if (tollgateKeptUp !== peerKeptUp) return tollgateKeptUp;
    if (!tollgateKeptUp) return undefined;
    const ours = addedAt(results, 'tollgate', rate)!;
    const theirs = addedAt(results, name, rate)!;
    return ours.p50 < theirs.p50 && ours.p99 < theirs.p99;
  });
  const met = outcomes.includes(false) ? false : outcomes.includes(undefined) ? undefined : true;
  return { measured: ['tollgate', ...peers].map(describe).join('; '), met };
}

function goalRow(what: string, goal: string, measured: string, met: boolean | undefined): string {
  let verdict = 'undecided: neither kept up';
  if (met !== undefined) verdict = met ? 'yes' : '**no**';
  return `| ${what} | ${goal} | ${measured} | ${verdict} |`;
}

/**
 * Tollgate's or a peer's latency minus the direct call's at the same fixed
 * rate: the direct calls sent just before the run, or, for runs recorded
 * without that baseline, the direct target's own run.
 */
export function addedAt(results: RunResults, target: string, rate: number): { p50: number; p99: number } | undefined {
  const run = runOf(results, target, rate);
  const direct = run?.baselineLatencyMs ?? runOf(results, 'direct', rate)?.result?.latencyMs;
  if (!run?.result || !direct) return undefined;
  return { p50: run.result.latencyMs.p50 - direct.p50, p99: run.result.latencyMs.p99 - direct.p99 };
}

function runOf(results: RunResults, target: string, rate: number): LoadRun | undefined {
  return results.loads.find((load) => load.target === target)?.runs.find((run) => run.rate === rate);
}

/** Script executions per second through RedisLedger, as a share of the trivial script's best redis-benchmark rate. */
export function ledgerShare(ledger: LedgerResult): number {
  return ledger.scriptsPerSecond / Math.max(ledger.trivialCeiling.unpipelined, ledger.trivialCeiling.pipelined);
}

function overheadSection(results: RunResults): string {
  if (results.loads.length === 0) return '';
  const { plan } = results;
  const fixedRows: string[] = [];
  const tailRows: string[] = [];
  const saturationRows: string[] = [];
  const directSaturation = runOf(results, 'direct', 0);
  for (const load of results.loads) {
    for (const run of load.runs) {
      const { result } = run;
      if (result === undefined) {
        fixedRows.push(`| ${load.target} | ${run.rate} | not run: ${run.skipped} | | | | | | | | | | |`);
        continue;
      }
      if (run.rate === 0) {
        const share = directSaturation?.result ? ` (${percent(result.throughput / directSaturation.result.throughput)} of direct)` : '';
        saturationRows.push(
          `| ${load.target} | ${result.throughput.toFixed(0)}${share} | ${percent(result.success)} | ${ms(result.latencyMs.p50)} | ${ms(result.latencyMs.p99)} | ${costColumns(run)} | ${statusSummary(result)} |`,
        );
        continue;
      }
      const tail = tailRow(load.target, run);
      if (tail !== undefined) tailRows.push(tail);
      const added = load.target === 'direct' ? undefined : addedAt(results, load.target, run.rate);
      fixedRows.push(
        `| ${load.target} | ${run.rate} | ${result.rate.toFixed(0)} | ${percent(result.success)} | ${ms(result.latencyMs.p50)} | ${ms(result.latencyMs.p99)} | ${baselineCell(run)} | ${added ? signedMs(added.p50) : '–'} | ${added ? signedMs(added.p99) : '–'} | ${costColumns(run)} | ${statusSummary(result)} |`,
      );
    }
  }
  return [
    '### 1. Proxy overhead (non-streamed chat completion)',
    '',
    `Open-loop load from vegeta: ${plan.rateSeconds} s per fixed rate after a ${plan.warmupSeconds} s warm-up, at most ${plan.fixedRateMaxWorkers} requests in flight, requests time out after ${plan.requestTimeoutSeconds} s. ` +
      'Before each fixed-rate run of a gateway, direct calls at the same rate run for as long ("direct before"), and "added" is the gateway\'s percentile minus theirs, so that a machine whose speed drifts during the benchmark skews no comparison. "CPU per request" is the CPU time of the target\'s processes (for direct, the simulator\'s) divided by the requests sent; ' +
      '"Redis CPU per request" is the same for the Redis server of Tollgate\'s ledger and LiteLLM\'s counters. "Machine CPU busy" is the busy share of all CPUs during the run (/proc/stat), ' +
      'and in brackets the share used by processes that are not part of the benchmark: where it is high, other work slowed the run.',
    '',
    '| target | rate (rps) | sent (rps) | success | p50 | p99 | direct before: p50 / p99 | added p50 | added p99 | CPU per request | Redis CPU per request | machine CPU busy (outside the benchmark) | statuses |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|',
    ...fixedRows,
    ...tailTable(tailRows),
    '',
    `Saturation: vegeta \`-rate=0 -max-workers=${plan.saturationWorkers}\` for ${plan.saturationSeconds} s.`,
    '',
    '| target | throughput (rps) | success | p50 | p99 | CPU per request | Redis CPU per request | machine CPU busy (outside the benchmark) | statuses |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---|',
    ...saturationRows,
  ].join('\n');
}

/** Formats the paired direct baseline of a run, or a dash for direct itself and for runs recorded without one. */
function baselineCell(run: LoadRun): string {
  const baseline = run.baselineLatencyMs;
  return baseline === undefined ? '–' : `${baseline.p50.toFixed(2)} / ${ms(baseline.p99)}`;
}

/**
 * Renders where a fixed-rate run's slow requests came from: how many windows
 * of send time they fall in, and the sidecar's longest event-loop delay.
 * Runs recorded before these fields existed render no row.
 */
function tailRow(target: string, run: LoadRun): string | undefined {
  const slow = run.result?.slow;
  if (slow === undefined) return undefined;
  const delay = run.eventLoopDelayMaxMs === undefined ? '–' : ms(run.eventLoopDelayMaxMs);
  const share = run.result!.requests > 0 ? ` (${percent(slow.count / run.result!.requests)})` : '';
  return `| ${target} | ${run.rate} | ${ms(run.result!.latencyMs.p99)} | ${slow.count}${share} | ${slow.windows} | ${slow.largestWindow} | ${delay} |`;
}

function tailTable(rows: string[]): string[] {
  if (rows.length === 0) return [];
  return [
    '',
    `Where the slowest requests come from. For each run: the requests slower than ${SLOW_THRESHOLD_MS} ms, the ${SLOW_WINDOW_MS} ms windows of send time they fall in, and the most in one window. ` +
      'The last column is the longest event-loop delay of the sidecar process during the run, from its `/metrics`. ' +
      'Slow requests in a few crowded windows mean pauses that held up every request in flight. The same count spread over many windows means steady queueing.',
    '',
    `| target | rate (rps) | p99 | requests over ${SLOW_THRESHOLD_MS} ms | windows | most in one window | sidecar event-loop delay, max |`,
    '|---|---:|---:|---:|---:|---:|---:|',
    ...rows,
  ];
}

function statusSummary(result: AttackResult): string {
  const codes = Object.entries(result.statusCodes).map(([code, count]) => `${code === '0' ? 'no response' : code}: ${count}`);
  return codes.join(', ');
}

function streamingSection(results: RunResults): string {
  if (results.streams.length === 0) return '';
  const direct = results.streams.find((stream) => stream.target === 'direct');
  const rows = results.streams.map((stream) => {
    const addedFirst = direct && stream !== direct ? signedMs(stream.ttftMs.p50 - direct.ttftMs.p50) : '–';
    const addedFirstTail = direct && stream !== direct ? signedMs(stream.ttftMs.p99 - direct.ttftMs.p99) : '–';
    const perChunk = direct && stream !== direct ? `${(((stream.totalMs.p50 - direct.totalMs.p50) / stream.chunks) * 1000).toFixed(1)} µs` : '–';
    return `| ${stream.target} | ${stream.runs - stream.failures}/${stream.runs} | ${ms(stream.ttftMs.p50)} | ${ms(stream.ttftMs.p99)} | ${addedFirst} | ${addedFirstTail} | ${ms(stream.totalMs.p50)} | ${perChunk} |`;
  });
  const chunks = results.streams[0]!.chunks;
  return [
    '### 2. Streaming',
    '',
    `One client sends streamed completions of ${chunks} content chunks one after another (\`x-sim-chunks: ${chunks}\`, no delay between chunks). Time to first token (TTFT) ends when the first content chunk arrives. "Per chunk" is (median total time − direct median total time) / ${chunks}.`,
    '',
    '| target | complete runs | TTFT p50 | TTFT p99 | added TTFT p50 | added TTFT p99 | total p50 | added per chunk |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
    ...rows,
  ].join('\n');
}

function ledgerSection(results: RunResults): string {
  const ledger = results.ledger;
  if (!ledger) return '';
  const rate = (value: number) => `${Math.round(value).toLocaleString('en-US')}/s`;
  return [
    '### 3. Ledger throughput',
    '',
    `RedisLedger from one Node process, ${ledger.concurrency} reserve-then-commit pairs in flight (scripts sent in the same event-loop turn share one socket write), for ${ledger.seconds} s; then redis-benchmark against the same server with 50 connections.`,
    '',
    '| measurement | executions per second |',
    '|---|---:|',
    `| RedisLedger reserve + commit pairs | ${rate(ledger.pairsPerSecond)} pairs |`,
    `| RedisLedger script executions (2 per pair) | ${rate(ledger.scriptsPerSecond)} |`,
    `| redis-benchmark \`EVALSHA <return 1> 0\`, 1 per round trip | ${rate(ledger.trivialCeiling.unpipelined)} |`,
    `| redis-benchmark \`EVALSHA <return 1> 0\`, pipelined 16 deep | ${rate(ledger.trivialCeiling.pipelined)} |`,
    `| redis-benchmark reserve script, 1 per round trip | ${rate(ledger.reserveCeiling.unpipelined)} |`,
    `| redis-benchmark reserve script, pipelined 16 deep | ${rate(ledger.reserveCeiling.pipelined)} |`,
    '',
    `Ratio of RedisLedger script executions to the trivial-script ceiling (the better of the two redis-benchmark runs): **${percent(ledgerShare(ledger))}**. ` +
      `To the reserve-script ceiling: ${percent(ledger.scriptsPerSecond / Math.max(ledger.reserveCeiling.unpipelined, ledger.reserveCeiling.pipelined))}. ` +
      `During the RedisLedger run the Node process used ${ledger.clientCpu.toFixed(2)} CPU and redis-server ${ledger.serverCpu.toFixed(2)} CPU (CPU seconds per second). ` +
      `Redis spent ${ledger.serverUsPerScript.toFixed(1)} µs executing each ledger script (INFO commandstats), which bounds one Redis at about ${rate(1e6 / ledger.serverUsPerScript)} ledger scripts; RedisLedger reached ${percent(ledger.scriptsPerSecond / (1e6 / ledger.serverUsPerScript))} of that bound.`,
  ].join('\n');
}

function overspendSection(results: RunResults): string {
  if (results.overspend.length === 0) return '';
  const rows = results.overspend.map((result) => {
    const statuses = Object.entries(result.burst.statusCodes).map(([code, count]) => `${code === '0' ? 'no response' : code}: ${count}`).join(', ');
    return `| ${result.gateway} | ${result.processes} | ${result.burst.requests} | ${result.affordable} | ${result.burst.admitted} | ${statuses} | ${usd(result.limitNano)} | ${usd(result.spentNano)} | **${usd(result.overspendNano)}** | ${result.burst.statusAfterBurst} |`;
  });
  const plan = results.plan.overspend;
  return [
    '### 4. Overspend under concurrency',
    '',
    `${plan.requests} requests at once, spread over the gateway's processes, each answered by the upstream after ${plan.upstreamLatencyMs} ms. The wallet (Tollgate) or the budget (LiteLLM) pays for exactly ${plan.affordable} of them, because the simulator reports the worst-case usage that Tollgate holds. A last request is sent 3 s after the burst.`,
    '',
    '| gateway | processes | requests | affordable | admitted | statuses | grant or budget | spent | overspend | status after the burst |',
    '|---|---:|---:|---:|---:|---|---:|---:|---:|---:|',
    ...rows,
    '',
    ...results.overspend.map((result) => `- ${result.gateway}: ${result.note}`),
  ].join('\n');
}

function memorySection(results: RunResults): string {
  const rows = results.loads
    .filter((load) => load.memory)
    .map((load) => {
      const memory = load.memory!;
      return `| ${load.target} | ${mib(memory.idle)} | ${mib(memory.underLoad)} | ${mib(memory.afterLoad)} | ${memory.peak === undefined ? '–' : mib(memory.peak)} |`;
    });
  if (rows.length === 0) return '';
  return [
    '### 5. Memory',
    '',
    "Resident memory of the gateway: Tollgate's sidecar process (VmRSS and VmHWM from /proc/<pid>/status), and the summed VmRSS of each peer's process group. \"Under load\" is the largest sample, taken every 250 ms, during the fixed-rate and saturation runs.",
    '',
    '| target | idle | under load | after load | peak (VmHWM) |',
    '|---|---:|---:|---:|---:|',
    ...rows,
  ].join('\n');
}

function profileSection(results: RunResults): string {
  const profile = results.profile;
  if (!profile) return '';
  return [
    '### CPU profile of the sidecar',
    '',
    `\`node --cpu-prof\` on a separate sidecar process at ${profile.rate} rps for ${profile.seconds} s (the profiler slows it: p50 ${ms(profile.result.latencyMs.p50)}, p99 ${ms(profile.result.latencyMs.p99)}, success ${percent(profile.result.success)}). Samples from before the run, such as startup, are left out. ` +
      `During the run the sidecar used ${profile.cpu.user.toFixed(1)} s of CPU time in user mode and ${profile.cpu.system.toFixed(1)} s in the kernel (/proc/<pid>/stat).`,
    '',
    profileMarkdown(profile.summary),
  ].join('\n');
}

function failuresSection(results: RunResults): string {
  if (results.failures.length === 0) return '';
  return ['### Failed sections', '', ...results.failures.map((failure) => `- ${failure}`)].join('\n');
}

/** Renders the CPU per request of the target and of its Redis, and the machine's busy share, as three table cells. */
function costColumns(run: LoadRun): string {
  const us = (value: number | undefined) => (value === undefined ? '–' : `${value.toFixed(0)} µs`);
  const outside = run.outsideBusy === undefined ? '' : ` (${percent(run.outsideBusy)})`;
  const busy = run.machineBusy === undefined ? '–' : `${percent(run.machineBusy)}${outside}`;
  return `${us(run.cpuPerRequestUs)} | ${us(run.redisCpuPerRequestUs)} | ${busy}`;
}

function ms(value: number): string {
  return Number.isNaN(value) ? '–' : `${value.toFixed(2)} ms`;
}

function signedMs(value: number): string {
  return `${value >= 0 ? '+' : '−'}${Math.abs(value).toFixed(2)} ms`;
}

function percent(share: number, digits = 1): string {
  return `${(share * 100).toFixed(digits)} %`;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

function usd(nano: bigint): string {
  return `${formatAmount(nano)} USD`;
}
