import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { parseBenchmarkCsv } from './ledger.ts';
import { keptUp } from './overhead.ts';
import { countOf, overspendOf, sendBurst } from './overspend.ts';
import { planFor } from './plan.ts';
import { categoryOf, summarizeProfile } from './profile.ts';
import { addedAt, checkResultsPage, compareWithPeers, renderResults, RESULTS_END, RESULTS_START, writeResults, type RunResults } from './report.ts';
import { percentile } from './streaming.ts';
import { metricValue } from './processes.ts';
import { csvTimings, slowRequests, type AttackResult } from './vegeta.ts';
import { NANO_PER_INPUT_TOKEN, NANO_PER_OUTPUT_TOKEN, overspendRequest } from './workload.ts';

let dir: string;
const repoRoot = fileURLToPath(new URL('..', import.meta.url));

beforeEach(async () => {
  dir = await mkdtemp(join(os.tmpdir(), 'tollgate-bench-test-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('parseBenchmarkCsv', () => {
  it('reads the rate of a command with spaces', () => {
    const csv = [
      '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"',
      '"EVALSHA e0e1f9fabfc9d4800c877a703b823ac0578ff8db 0","25445.29","1.281","0.400","1.255","1.943","2.607","3.463"',
    ].join('\n');
    expect(parseBenchmarkCsv(csv)).toBe(25445.29);
  });

  it('rejects output without a result row', () => {
    expect(() => parseBenchmarkCsv('ERR unknown command')).toThrow('unexpected redis-benchmark output: ERR unknown command');
  });
});

describe('percentile', () => {
  it('uses the nearest rank', () => {
    const values = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6];
    expect(percentile(values, 0.5)).toBe(5);
    expect(percentile(values, 0.99)).toBe(10);
    expect(percentile(values, 0.1)).toBe(1);
  });

  it('returns NaN without values', () => {
    expect(percentile([], 0.5)).toBeNaN();
  });
});

describe('overspendRequest', () => {
  it('costs its worst-case hold exactly', () => {
    const request = overspendRequest('bench-budget-model', 1000);
    const promptTokens = Buffer.byteLength(request.body);
    expect(JSON.parse(request.headers['x-sim-usage']!)).toEqual({ prompt_tokens: promptTokens, completion_tokens: 16, total_tokens: promptTokens + 16 });
    expect(request.headers['x-sim-latency-ms']).toBe('1000');
    expect(request.costNano).toBe(BigInt(promptTokens) * NANO_PER_INPUT_TOKEN + 16n * NANO_PER_OUTPUT_TOKEN);
  });
});

describe('overspendOf', () => {
  it('counts only spend above the limit', () => {
    expect(overspendOf(7_050_000n, 7_050_000n)).toBe(0n);
    expect(overspendOf(100n, 7_050_000n)).toBe(0n);
    expect(overspendOf(39_621_000n, 7_050_000n)).toBe(32_571_000n);
  });
});

describe('countOf', () => {
  it('uses the singular only for one', () => {
    expect(countOf(1, 'process', 'processes')).toBe('1 process');
    expect(countOf(0, 'process', 'processes')).toBe('0 processes');
    expect(countOf(3, 'uvicorn worker', 'uvicorn workers')).toBe('3 uvicorn workers');
  });
});

describe('sendBurst', () => {
  let server: http.Server;
  let url: string;

  beforeEach(async () => {
    server = http.createServer((request, response) => {
      request.resume();
      request.on('end', () => response.end('{}'));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/chat/completions`;
  });

  afterEach(async () => {
    vi.restoreAllMocks();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('names one process in the singular', async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    const burst = await sendBurst('test burst', { urls: [url], headers: {} }, { requests: 3, request: overspendRequest('bench-budget-model', 0) });
    expect(burst).toEqual({ requests: 3, admitted: 3, statusCodes: { '200': 3 }, statusAfterBurst: 200 });
    expect(log).toHaveBeenCalledTimes(1);
    expect(log.mock.calls[0]![0]).toMatch(/^\[\d\d:\d\d:\d\d\] test burst: 3 requests at once over 1 process$/);
  });
});

describe('summarizeProfile', () => {
  const file = () => join(dir, 'test.cpuprofile');
  const frame = (functionName: string, url = '') => ({ functionName, url, lineNumber: 9, scriptId: '1', columnNumber: 0 });

  beforeEach(async () => {
    const profile = {
      nodes: [
        { id: 1, callFrame: frame('(root)') },
        { id: 2, callFrame: frame('(idle)') },
        { id: 3, callFrame: frame('admit', `file://${repoRoot}sidecar/proxy.ts`) },
        { id: 4, callFrame: frame('parse', `file://${repoRoot}node_modules/ioredis/built/parser.js`) },
        { id: 5, callFrame: frame('(garbage collector)') },
      ],
      startTime: 1_000_000,
      samples: [3, 2, 3, 4, 5, 3],
      timeDeltas: [1000, 4000, 3000, 2000, 1000, 3000],
    };
    await writeFile(file(), JSON.stringify(profile));
  });

  it('sums self time by function and package', () => {
    const summary = summarizeProfile(file());
    expect(summary.totalMs).toBe(14);
    expect(summary.idleMs).toBe(4);
    expect(summary.topFunctions.map((row) => [row.name, row.ms])).toEqual([
      ['admit (sidecar/proxy.ts:10)', 7],
      ['parse (ioredis/built/parser.js:10)', 2],
      ['(garbage collector)', 1],
    ]);
    expect(summary.categories.map((row) => [row.name, row.ms])).toEqual([
      ['sidecar', 7],
      ['ioredis', 2],
      ['(garbage collector)', 1],
    ]);
    expect(summary.topFunctions[0]!.share).toBeCloseTo(7 / 10, 10);
  });

  it('skips samples before sinceUs', () => {
    // Sample times are 1,001,000, 1,005,000, 1,008,000, 1,010,000, 1,011,000 and 1,014,000 µs.
    const summary = summarizeProfile(file(), { sinceUs: 1_009_000 });
    expect(summary.totalMs).toBe(6);
    expect(summary.topFunctions.map((row) => [row.name, row.ms])).toEqual([
      ['admit (sidecar/proxy.ts:10)', 3],
      ['parse (ioredis/built/parser.js:10)', 2],
      ['(garbage collector)', 1],
    ]);
  });
});

describe('categoryOf', () => {
  it('names scoped packages, core modules and built-ins', () => {
    expect(categoryOf({ functionName: 'serve', url: 'file:///x/node_modules/@hono/node-server/dist/index.js', lineNumber: 0 })).toBe('@hono/node-server');
    expect(categoryOf({ functionName: 'writev', url: 'node:net', lineNumber: 0 })).toBe('node: core modules');
    expect(categoryOf({ functionName: 'parse', url: '', lineNumber: -1 })).toBe('(V8 built-ins)');
    expect(categoryOf({ functionName: '(program)', url: '', lineNumber: -1 })).toBe('(program)');
  });
});

describe('writeResults', () => {
  it('replaces only the text between the markers', async () => {
    const page = join(dir, 'page.md');
    await writeFile(page, `# Title\n\nintro\n\n${RESULTS_START}\nold results\n${RESULTS_END}\n\n## After\n`);
    await writeResults(page, 'new results');
    expect(await readFile(page, 'utf8')).toBe(`# Title\n\nintro\n\n${RESULTS_START}\nnew results\n${RESULTS_END}\n\n## After\n`);
  });

  it('rejects a page without markers', async () => {
    const page = join(dir, 'page.md');
    await writeFile(page, '# Title\n');
    await expect(writeResults(page, 'x')).rejects.toThrow(`has no "${RESULTS_START}" and "${RESULTS_END}" lines`);
  });
});

describe('checkResultsPage', () => {
  it('accepts a page with markers', async () => {
    const page = join(dir, 'page.md');
    await writeFile(page, `${RESULTS_START}\n${RESULTS_END}\n`);
    await expect(checkResultsPage(page)).resolves.toBeUndefined();
  });

  it('rejects a page without markers', async () => {
    const page = join(dir, 'page.md');
    await writeFile(page, '# Title\n');
    await expect(checkResultsPage(page)).rejects.toThrow(`${page} has no "${RESULTS_START}" and "${RESULTS_END}" lines; add them where the results belong`);
  });

  it('rejects a missing page', async () => {
    await expect(checkResultsPage(join(dir, 'missing.md'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

const result = (p50: number, p99: number, rate = 500): AttackResult => ({
  requests: 100,
  rate,
  throughput: rate,
  success: 1,
  latencyMs: { mean: p50, p50, p90: p99, p99, max: p99 },
  statusCodes: { '200': 100 },
  errors: [],
  slow: { thresholdMs: 10, windowMs: 100, count: 0, windows: 0, largestWindow: 0 },
});

describe('addedAt', () => {
  it('subtracts the direct percentiles at the same rate', () => {
    const results = {
      loads: [
        { target: 'direct', runs: [{ rate: 500, result: result(0.5, 2) }] },
        { target: 'tollgate', runs: [{ rate: 500, result: result(1.25, 3.5) }, { rate: 2000, skipped: 'overloaded' }] },
      ],
    } as unknown as RunResults;
    expect(addedAt(results, 'tollgate', 500)).toEqual({ p50: 0.75, p99: 1.5 });
    expect(addedAt(results, 'tollgate', 2000)).toBeUndefined();
    expect(addedAt(results, 'portkey', 500)).toBeUndefined();
  });

  it('prefers the paired baseline', () => {
    const results = {
      loads: [
        { target: 'direct', runs: [{ rate: 500, result: result(0.5, 2) }] },
        { target: 'tollgate', runs: [{ rate: 500, result: result(1.25, 3.5), baselineLatencyMs: { p50: 0.25, p99: 3 } }] },
      ],
    } as unknown as RunResults;
    expect(addedAt(results, 'tollgate', 500)).toEqual({ p50: 1, p99: 0.5 });
  });
});

describe('compareWithPeers', () => {
  const results = (tollgate: AttackResult, portkey: AttackResult | undefined) =>
    ({
      loads: [
        { target: 'direct', runs: [{ rate: 500, result: result(0.5, 2) }] },
        { target: 'tollgate', runs: [{ rate: 500, result: tollgate }] },
        { target: 'portkey', runs: [portkey ? { rate: 500, result: portkey } : { rate: 500, skipped: 'overloaded' }] },
      ],
    }) as unknown as RunResults;

  it('compares latencies when both kept up', () => {
    expect(compareWithPeers(results(result(1.5, 4), result(20.5, 50)), 500)).toEqual({
      measured: 'tollgate +1.00 ms / +2.00 ms; portkey +20.00 ms / +48.00 ms',
      met: true,
    });
    expect(compareWithPeers(results(result(1.5, 60), result(20.5, 50)), 500)?.met).toBe(false);
  });

  it('lets the target that kept up win', () => {
    const slowPeer = results(result(1.5, 4), result(300.5, 9000, 300));
    expect(compareWithPeers(slowPeer, 500)).toEqual({
      measured: 'tollgate +1.00 ms / +2.00 ms; portkey +300.00 ms / +8998.00 ms (did not keep up: sent 300 of 500 rps, 100.0 % success)',
      met: true,
    });
    expect(compareWithPeers(results(result(1.5, 4, 300), result(20.5, 50)), 500)?.met).toBe(false);
  });

  it('counts a peer under 90 % success as beaten', () => {
    const failingPeer = results(result(1.5, 4), { ...result(0.6, 1), success: 0.8 });
    expect(compareWithPeers(failingPeer, 500)).toEqual({
      measured: 'tollgate +1.00 ms / +2.00 ms; portkey +0.10 ms / −1.00 ms (did not keep up: sent 500 of 500 rps, 80.0 % success)',
      met: true,
    });
  });

  it('leaves it undecided when neither kept up', () => {
    const comparison = compareWithPeers(results(result(200.5, 400, 400), undefined), 500);
    expect(comparison).toEqual({ measured: 'tollgate +200.00 ms / +398.00 ms (did not keep up: sent 400 of 500 rps, 100.0 % success); portkey not run', met: undefined });
  });
});

describe('keptUp', () => {
  it('needs 90 % of the rate and 90 % success', () => {
    expect(keptUp({ ...result(1, 2, 450), success: 0.9 }, 500)).toBe(true);
    expect(keptUp({ ...result(1, 2, 449), success: 1 }, 500)).toBe(false);
    expect(keptUp({ ...result(1, 2, 500), success: 0.89 }, 500)).toBe(false);
  });
});

describe('targets section', () => {
  const rule =
    '"Lower than each peer\'s": a target kept up with a fixed rate when vegeta sent at least 90 % of the planned rate and at least 90 % of the requests succeeded. ' +
    'Where Tollgate and a peer both kept up, Tollgate must add less latency at p50 and at p99. ' +
    'A peer that did not keep up counts as beaten whatever its latency, as long as Tollgate kept up, and a peer that kept up beats a Tollgate that did not. ' +
    'Where neither kept up, both latencies measure queueing, and the row is undecided.';
  const latencies: Record<string, [number, number]> = { direct: [0.5, 2], tollgate: [1.5, 4], portkey: [2.5, 6] };
  const results = (targets: string[]) =>
    ({
      plan: planFor(false),
      command: 'npm run bench',
      machine: { startedAt: '2026-12-05T06:17:40.848Z', cpus: 2, cpuModel: 'Test CPU', memoryBytes: 2 ** 31, kernel: 'Linux 6.0', loadAverage: [0.5, 0.4, 0.3], commit: 'abc1234' },
      versions: {},
      loads: targets.map((target) => ({ target, runs: [{ rate: 500, result: result(...latencies[target]!) }] })),
      streams: [],
      overspend: [],
      failures: [],
      durationSeconds: 600,
      loadAverageAtEnd: [0.5, 0.4, 0.3],
    }) as unknown as RunResults;

  it('states the rule below a peer comparison', () => {
    const markdown = renderResults(results(['direct', 'tollgate', 'portkey']));
    const targets = markdown.slice(markdown.indexOf('### Targets'), markdown.indexOf('### 1.'));
    expect(targets).toBe(
      [
        '### Targets',
        '',
        '| what | target | measured | met |',
        '|---|---|---|---|',
        "| Tollgate added p50 and p99 at 500 rps | lower than each peer's | tollgate +1.00 ms / +2.00 ms; portkey +2.00 ms / +4.00 ms | yes |",
        '',
        rule,
        '',
        '',
      ].join('\n'),
    );
  });

  it('leaves the rule out without peers', () => {
    expect(renderResults(results(['direct', 'tollgate']))).not.toContain('Lower than each peer');
  });
});

describe('csvTimings', () => {
  it('reads send time and latency of each row', () => {
    const csv = [
      '1796431116000000000,200,1500000,52,310,"",e30=,,0,POST,http://127.0.0.1:1/v1,',
      '1796431116000500000,0,10000000000,0,0,"Post ""http://127.0.0.1:1/v1"": timeout",,,1,POST,http://127.0.0.1:1/v1,',
      '',
    ].join('\n');
    expect(csvTimings(csv)).toEqual([
      { sentNs: 1796431116000000000, latencyNs: 1_500_000 },
      { sentNs: 1796431116000500000, latencyNs: 10_000_000_000 },
    ]);
  });
});

describe('slowRequests', () => {
  const ms = 1e6;
  it('groups slow requests by send window', () => {
    const timings = [
      { sentNs: 1_000 * ms, latencyNs: 2 * ms },
      { sentNs: 1_010 * ms, latencyNs: 40 * ms },
      { sentNs: 1_090 * ms, latencyNs: 11 * ms },
      { sentNs: 1_100 * ms, latencyNs: 10 * ms },
      { sentNs: 1_350 * ms, latencyNs: 25 * ms },
    ];
    expect(slowRequests(timings, 10, 100)).toEqual({ thresholdMs: 10, windowMs: 100, count: 3, windows: 2, largestWindow: 2 });
  });

  it('counts nothing without slow requests', () => {
    expect(slowRequests([{ sentNs: 5 * ms, latencyNs: ms }], 10, 100)).toEqual({ thresholdMs: 10, windowMs: 100, count: 0, windows: 0, largestWindow: 0 });
  });
});

describe('metricValue', () => {
  const text = [
    '# HELP tollgate_sidecar_nodejs_eventloop_lag_max_seconds The maximum recorded event loop delay.',
    '# TYPE tollgate_sidecar_nodejs_eventloop_lag_max_seconds gauge',
    'tollgate_sidecar_nodejs_eventloop_lag_max_seconds 0.012345',
    'tollgate_sidecar_nodejs_eventloop_lag_max_seconds_total 3',
  ].join('\n');

  it('reads an unlabelled sample', () => {
    expect(metricValue(text, 'tollgate_sidecar_nodejs_eventloop_lag_max_seconds')).toBe(0.012345);
  });

  it('rejects a missing sample', () => {
    expect(() => metricValue(text, 'tollgate_sidecar_nodejs_eventloop_lag_p99_seconds')).toThrow(
      'the metrics have no sample "tollgate_sidecar_nodejs_eventloop_lag_p99_seconds"',
    );
  });
});
