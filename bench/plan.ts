/** Durations, rates and sizes of a benchmark run, for the full and the quick mode. */
export interface BenchPlan {
  mode: 'full' | 'quick';
  /** Seconds at the lower fixed rate before each target is measured; the results are discarded. */
  warmupSeconds: number;
  /** Fixed request rates per second of the overhead measurement. */
  rates: number[];
  rateSeconds: number;
  saturationSeconds: number;
  /** Concurrent requests at saturation (vegeta `-rate=0 -max-workers=N`). */
  saturationWorkers: number;
  /**
   * Upper bound of concurrent requests at the fixed rates: far above what a
   * target that keeps up needs, and low enough that one that does not
   * (LiteLLM on 2 CPUs) builds no backlog that lasts into the next run.
   */
  fixedRateMaxWorkers: number;
  requestTimeoutSeconds: number;
  /** Time a target that fell behind gets after a run to respond again before the next run starts anyway. */
  recoverySeconds: number;
  /** Content chunks of each streamed completion. */
  streamChunks: number;
  streamRuns: number;
  streamWarmupRuns: number;
  ledgerSeconds: number;
  /** Reserve and commit pairs in flight at once in the ledger measurement. */
  ledgerConcurrency: number;
  /** Seconds each redis-benchmark measurement aims for. */
  redisBenchmarkSeconds: number;
  overspend: {
    /** Requests sent at once. */
    requests: number;
    /** How many requests' worst case the wallet or budget pays for. */
    affordable: number;
    /** Tollgate sidecar processes sharing the Redis ledger. */
    sidecars: number;
    /** Upstream latency, so that the requests overlap. */
    upstreamLatencyMs: number;
    /** LiteLLM worker processes sharing its Redis. */
    litellmWorkers: number;
  };
  /** Seconds of the profiled run at the highest fixed rate. */
  profileSeconds: number;
  /** The whole run is stopped when it takes longer than this. */
  deadlineMinutes: number;
}

const FULL: BenchPlan = {
  mode: 'full',
  warmupSeconds: 5,
  rates: [500, 2000],
  rateSeconds: 20,
  saturationSeconds: 15,
  saturationWorkers: 64,
  fixedRateMaxWorkers: 512,
  requestTimeoutSeconds: 10,
  recoverySeconds: 30,
  streamChunks: 200,
  streamRuns: 200,
  streamWarmupRuns: 20,
  ledgerSeconds: 10,
  ledgerConcurrency: 256,
  redisBenchmarkSeconds: 5,
  overspend: { requests: 300, affordable: 50, sidecars: 3, upstreamLatencyMs: 1000, litellmWorkers: 3 },
  profileSeconds: 15,
  deadlineMinutes: 25,
};

const QUICK: BenchPlan = {
  ...FULL,
  mode: 'quick',
  warmupSeconds: 2,
  rateSeconds: 4,
  saturationSeconds: 4,
  recoverySeconds: 10,
  streamRuns: 25,
  streamWarmupRuns: 10,
  ledgerSeconds: 3,
  redisBenchmarkSeconds: 1,
  overspend: { ...FULL.overspend, litellmWorkers: 1 },
  profileSeconds: 5,
  deadlineMinutes: 8,
};

export function planFor(quick: boolean): BenchPlan {
  return quick ? QUICK : FULL;
}
