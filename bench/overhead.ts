/**
 * Proxy overhead: the latency of a small non-streamed chat completion at
 * fixed rates and at saturation, for one target. Overhead is the difference
 * to the same percentile of direct calls to the upstream.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { BenchPlan } from './plan.ts';
import { benchmarkCpuSeconds, machineCpuTimes } from './processes.ts';
import { progress } from './progress.ts';
import { attack, type AttackOptions, type AttackResult, type HttpTarget } from './vegeta.ts';

/** One attack: at a fixed rate, or at saturation (`rate` 0). */
export interface LoadRun {
  rate: number;
  /** Undefined when the run was skipped. */
  result?: AttackResult;
  /**
   * Latency of direct calls to the upstream at the same rate, sent just
   * before this run, so that the added latency compares runs minutes apart
   * on a machine whose speed drifts.
   */
  baselineLatencyMs?: { p50: number; p99: number };
  /** CPU time that the target's processes used per request sent, in microseconds. */
  cpuPerRequestUs?: number;
  /** CPU time that the target's Redis server used per request sent, in microseconds, for targets that use Redis. */
  redisCpuPerRequestUs?: number;
  /** Share of all the machine's CPU time that was busy during the run, from 0 to 1. */
  machineBusy?: number;
  /** Share of all the machine's CPU time used by processes outside the benchmark during the run, from 0 to 1. */
  outsideBusy?: number;
  /** Maximum event-loop delay of the target's process during the run, in milliseconds, for targets that report it. */
  eventLoopDelayMaxMs?: number;
  /** Reason the run was skipped. */
  skipped?: string;
}

/** Resident memory of a target in bytes, sampled around its load runs. */
export interface MemoryTrace {
  idle: number;
  /** The largest sample taken during the measured runs. */
  underLoad: number;
  /** A sample after the last run, once the target is quiet again. */
  afterLoad: number;
  /** The peak resident set since the process started (VmHWM), where it can be read. */
  peak?: number;
}

export interface TargetLoad {
  target: string;
  runs: LoadRun[];
  memory?: MemoryTrace;
}

/** Reads what a target's processes use. */
export interface TargetProbe {
  /** CPU seconds (user and system) used so far. */
  cpuSeconds(): number;
  /** CPU seconds used so far by the Redis server that the target uses, if it uses one. */
  redisCpuSeconds?(): number;
  /** Resident memory now, in bytes; left out when the target's memory is not reported. */
  rss?(): number;
  /** VmHWM in bytes, when the target is one process. */
  peak?(): number;
  /** The target's event-loop delay, for a Node process that exports it. */
  eventLoopDelay?: EventLoopDelayProbe;
}

/** Reads the largest event-loop delay since the last reading. */
export interface EventLoopDelayProbe {
  /** Returns the largest delay since the previous call, in milliseconds, and starts a new interval. */
  takeMaxMs(): Promise<number>;
}

const MEMORY_SAMPLE_MS = 250;
/** Pause between runs, so that one run's stragglers do not slow the next. */
const SETTLE_MS = 2000;

/**
 * Warms the target up, then runs it at each fixed rate of the plan and at
 * saturation, and samples its memory meanwhile. With a `baseline`, each fixed
 * rate run is preceded by direct calls at the same rate.
 */
export async function measureLoad(target: HttpTarget, plan: BenchPlan, workDir: string, probe: TargetProbe, baseline?: HttpTarget): Promise<TargetLoad> {
  const idle = probe.rss?.();
  progress(`${target.name}: warm-up at ${plan.rates[0]} rps for ${plan.warmupSeconds} s`);
  await attack(target, fixedRate(plan, plan.rates[0]!, plan.warmupSeconds), workDir, 'warmup');
  await settle(target, plan.recoverySeconds);

  const sampler = probe.rss ? sampleMemory(probe.rss) : undefined;
  const runs = await runFixedRates(target, plan, workDir, probe, baseline);
  progress(`${target.name}: saturation with ${plan.saturationWorkers} concurrent requests for ${plan.saturationSeconds} s`);
  const saturation = { rate: 0, seconds: plan.saturationSeconds, maxWorkers: plan.saturationWorkers, timeoutSeconds: plan.requestTimeoutSeconds };
  runs.push(await measuredAttack(target, saturation, workDir, 'saturation', probe));
  const underLoad = sampler?.stop();
  await settle(target, plan.recoverySeconds);

  const memory =
    probe.rss && idle !== undefined && underLoad !== undefined ? { idle, underLoad, afterLoad: probe.rss(), peak: probe.peak?.() } : undefined;
  return { target: target.name, runs, memory };
}

function fixedRate(plan: BenchPlan, rate: number, seconds: number): AttackOptions {
  return { rate, seconds, maxWorkers: plan.fixedRateMaxWorkers, timeoutSeconds: plan.requestTimeoutSeconds };
}

/** Runs the plan's fixed rates, lowest first; after a rate that the target cannot keep up with, the higher ones are skipped. */
async function runFixedRates(target: HttpTarget, plan: BenchPlan, workDir: string, probe: TargetProbe, baseline: HttpTarget | undefined): Promise<LoadRun[]> {
  const runs: LoadRun[] = [];
  let overloadedAt: number | undefined;
  for (const rate of [...plan.rates].sort((a, b) => a - b)) {
    if (overloadedAt !== undefined) {
      progress(`${target.name}: skipping ${rate} rps`);
      runs.push({ rate, skipped: `the target did not keep up with ${overloadedAt} rps` });
      continue;
    }

    let baselineLatencyMs: LoadRun['baselineLatencyMs'];
    if (baseline !== undefined) {
      progress(`${target.name}: direct calls at ${rate} rps for ${plan.rateSeconds} s, as the baseline of the next run`);
      const direct = await attack(baseline, fixedRate(plan, rate, plan.rateSeconds), workDir, `${target.name}-baseline-${rate}`);
      baselineLatencyMs = { p50: direct.latencyMs.p50, p99: direct.latencyMs.p99 };
      await sleep(SETTLE_MS);
    }
    progress(`${target.name}: ${rate} rps for ${plan.rateSeconds} s`);
    const run = await measuredAttack(target, fixedRate(plan, rate, plan.rateSeconds), workDir, `rate-${rate}`, probe);
    if (baselineLatencyMs !== undefined) run.baselineLatencyMs = baselineLatencyMs;
    runs.push(run);
    const result = run.result!;
    if (!keptUp(result, rate)) {
      overloadedAt = rate;
      progress(`${target.name}: did not keep up with ${rate} rps (sent ${result.rate.toFixed(0)} rps, ${(result.success * 100).toFixed(1)} % success)`);
    }
    await settle(target, plan.recoverySeconds);
  }
  return runs;
}

/** Runs one attack and divides the CPU time that the target and its Redis used by the requests sent. */
async function measuredAttack(target: HttpTarget, options: AttackOptions, workDir: string, label: string, probe: TargetProbe): Promise<LoadRun> {
  const cpuBefore = probe.cpuSeconds();
  const redisBefore = probe.redisCpuSeconds?.();
  const machineBefore = machineCpuTimes();
  const benchmarkBefore = benchmarkCpuSeconds();
  await probe.eventLoopDelay?.takeMaxMs();
  const result = await attack(target, options, workDir, label);
  const eventLoopDelayMaxMs = await probe.eventLoopDelay?.takeMaxMs();
  const machineAfter = machineCpuTimes();
  const benchmark = benchmarkCpuSeconds() - benchmarkBefore;
  const elapsed = machineAfter.total - machineBefore.total;
  const busy = machineAfter.busy - machineBefore.busy;

  const perRequestUs = (seconds: number) => (result.requests > 0 ? (seconds * 1e6) / result.requests : undefined);
  return {
    rate: options.rate,
    result,
    cpuPerRequestUs: perRequestUs(probe.cpuSeconds() - cpuBefore),
    redisCpuPerRequestUs: redisBefore === undefined ? undefined : perRequestUs(probe.redisCpuSeconds!() - redisBefore),
    machineBusy: busy / elapsed,
    outsideBusy: Math.max(0, busy - benchmark) / elapsed,
    ...(eventLoopDelayMaxMs === undefined ? {} : { eventLoopDelayMaxMs }),
  };
}

/**
 * Minimum shares of a target that kept up with a fixed rate: of the planned
 * rate that vegeta sent, and of the requests that succeeded. Vegeta sends
 * behind schedule when all its workers wait on a slow target.
 */
export const KEPT_UP = { sentShare: 0.9, success: 0.9 };

/** Returns whether the target handled a fixed rate, by the shares in KEPT_UP. */
export function keptUp(result: AttackResult, rate: number): boolean {
  return result.rate >= KEPT_UP.sentShare * rate && result.success >= KEPT_UP.success;
}

/**
 * Waits until the target is quiet: a pause, then one request that must
 * come back, so that a target still working off a backlog from the last
 * run does not start the next one behind.
 */
async function settle(target: HttpTarget, recoverySeconds: number): Promise<void> {
  await sleep(SETTLE_MS);
  try {
    const response = await fetch(target.url, {
      method: 'POST',
      headers: { ...target.headers, 'content-type': 'application/json' },
      body: target.body,
      signal: AbortSignal.timeout(recoverySeconds * 1000),
    });
    await response.arrayBuffer();
  } catch (error) {
    progress(`${target.name}: no response within ${recoverySeconds} s after the last run (${(error as Error).message}); starting the next run anyway`);
  }
}

/** Samples resident memory until stopped, and returns the largest sample. */
function sampleMemory(rss: () => number): { stop(): number } {
  let largest = rss();
  const timer = setInterval(() => {
    largest = Math.max(largest, rss());
  }, MEMORY_SAMPLE_MS);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(largest, rss());
    },
  };
}
