/**
 * Starts a real Prometheus server for tests, on a free loopback port, with its
 * configuration and TSDB in a temporary directory, and wraps the parts of its
 * HTTP API that the tests use.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { findFreePort, sleep, stopProcess, trackChild } from './processes.ts';

export interface ScrapeJob {
  /** Becomes the `job` label of every series scraped from the target. */
  name: string;
  /** `host:port` on loopback. */
  target: string;
  /** Path of the metrics endpoint (default /metrics). */
  metricsPath?: string;
  /** Target labels added to every scraped series, as Kubernetes service discovery would add `namespace` or `pod`. */
  labels?: Record<string, string>;
}

export interface StartPrometheusOptions {
  jobs: ScrapeJob[];
  /** Scrape interval in seconds (default 1). */
  scrapeIntervalSeconds?: number;
  /** How long to wait for /-/ready, in milliseconds (default 20000). */
  startTimeoutMs?: number;
}

/** One series of an instant query: its labels and its value as Prometheus formats it ("NaN", "+Inf", "0.25"). */
export interface Sample {
  metric: Record<string, string>;
  value: string;
}

export interface TargetHealth {
  job: string;
  health: string;
  lastError: string;
}

export interface RunningPrometheus {
  url: string;
  /** Runs an instant query at the current time and returns its series. A scalar or string result becomes one series without labels. */
  query(expression: string): Promise<Sample[]>;
  /** Returns the values of a label over the series that match a selector (`label_values(selector, label)` in Grafana). */
  labelValues(label: string, selector?: string): Promise<string[]>;
  /** Returns the health of every active scrape target. */
  targets(): Promise<TargetHealth[]>;
  /** Resolves once every target has been scraped successfully, or throws with the targets' last errors. */
  waitForTargetsUp(timeoutMs?: number): Promise<void>;
  /** Stops the server (SIGTERM, then SIGKILL after 10 s) and deletes its directory. It is safe to call twice. */
  stop(): Promise<void>;
}

const BINARY_CANDIDATES = ['/usr/bin/prometheus'];
const PORT_ATTEMPTS = 5;
const OUTPUT_LIMIT = 8000;


/** Returns the path of the prometheus binary, or throws with the install command. */
export function findPrometheus(): string {
  const candidates = [
    process.env.PROMETHEUS_BIN,
    ...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean).map((entry) => path.join(entry, 'prometheus')),
    ...BINARY_CANDIDATES,
  ];
  for (const candidate of candidates) {
    if (!candidate) continue;
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not here; try the next candidate.
    }
  }
  throw new Error(
    'prometheus is not installed: it was not found on PATH, in PROMETHEUS_BIN or at /usr/bin/prometheus. ' +
      'Install the Debian package with `apt-get install prometheus` (version 2.42 is tested), or set PROMETHEUS_BIN to its path.',
  );
}

/** Starts Prometheus scraping the given jobs and resolves once it reports ready. */
export async function startPrometheus(options: StartPrometheusOptions): Promise<RunningPrometheus> {
  const binary = findPrometheus();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-prometheus-'));

  const configPath = path.join(dir, 'prometheus.yml');
  // JSON is valid YAML, so the configuration needs no YAML writer.
  await writeFile(configPath, JSON.stringify(scrapeConfig(options), null, 2));

  let lastError: Error | undefined;
  for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt += 1) {
    const port = await findFreePort();
    try {
      const child = await launch(binary, port, dir, configPath, options.startTimeoutMs ?? 20_000);
      return client(`http://127.0.0.1:${port}`, child, dir);
    } catch (error) {
      lastError = error as Error;
      // Another process may have taken the port between the probe and the bind.
      if (!/address already in use/i.test(lastError.message)) break;
    }
  }

  await rm(dir, { recursive: true, force: true });
  throw lastError ?? new Error('prometheus did not start');
}

function scrapeConfig(options: StartPrometheusOptions): unknown {
  const interval = `${options.scrapeIntervalSeconds ?? 1}s`;
  return {
    global: { scrape_interval: interval, scrape_timeout: interval, evaluation_interval: interval },
    scrape_configs: options.jobs.map((job) => ({
      job_name: job.name,
      metrics_path: job.metricsPath ?? '/metrics',
      // Tollgate's series carry the wallet's namespace in a `namespace` label, which a
      // Kubernetes scrape also sets as a target label. honor_labels keeps the scraped one,
      // where the default would rename it to exported_namespace.
      honor_labels: true,
      static_configs: [{ targets: [job.target], labels: job.labels ?? {} }],
    })),
  };
}

async function launch(binary: string, port: number, dir: string, configPath: string, timeoutMs: number): Promise<ChildProcess> {
  const args = [
    `--config.file=${configPath}`,
    `--storage.tsdb.path=${path.join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`,
    '--log.level=warn',
  ];
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(child);

  let output = '';
  const collect = (chunk: Buffer) => {
    if (output.length < OUTPUT_LIMIT) output += chunk.toString('utf8');
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);

  let exited: string | undefined;
  child.once('exit', (code, signal) => {
    exited = `exited with ${signal ?? `code ${code}`}`;
  });
  child.once('error', (error) => {
    exited = `failed to start: ${error.message}`;
  });

  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited) throw new Error(`prometheus on port ${port} ${exited}. Its output:\n${output.trim()}`);
    if (await isReady(port)) return child;
    await sleep(100);
  }

  await stopProcess(child);
  throw new Error(`prometheus on port ${port} was not ready within ${timeoutMs} ms. Its output:\n${output.trim()}`);
}

async function isReady(port: number): Promise<boolean> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/-/ready`, { signal: AbortSignal.timeout(1000) });
    await response.arrayBuffer();
    return response.status === 200;
  } catch {
    return false;
  }
}

function client(url: string, child: ChildProcess, dir: string): RunningPrometheus {
  const api = async <T>(pathAndQuery: string): Promise<T> => {
    const response = await fetch(`${url}${pathAndQuery}`, { signal: AbortSignal.timeout(10_000) });
    const body = (await response.json()) as { status: string; data: T; error?: string; errorType?: string };
    if (body.status !== 'success') {
      throw new Error(`Prometheus API ${pathAndQuery} failed with HTTP ${response.status}: ${body.errorType ?? ''} ${body.error ?? ''}`.trim());
    }
    return body.data;
  };

  const targets = async (): Promise<TargetHealth[]> => {
    const data = await api<{ activeTargets: Array<{ labels: Record<string, string>; health: string; lastError: string }> }>('/api/v1/targets');
    return data.activeTargets.map((target) => ({ job: target.labels['job'] ?? '', health: target.health, lastError: target.lastError }));
  };

  let stopped = false;

  return {
    url,

    async query(expression) {
      const data = await api<{ resultType: string; result: unknown }>(`/api/v1/query?query=${encodeURIComponent(expression)}`);
      if (data.resultType === 'vector') {
        return (data.result as Array<{ metric: Record<string, string>; value: [number, string] }>).map((series) => ({
          metric: series.metric,
          value: series.value[1],
        }));
      }
      if (data.resultType === 'scalar' || data.resultType === 'string') {
        return [{ metric: {}, value: (data.result as [number, string])[1] }];
      }
      throw new Error(`the instant query ${expression} returned a ${data.resultType}, not a vector or scalar`);
    },

    async labelValues(label, selector) {
      const match = selector === undefined ? '' : `?match[]=${encodeURIComponent(selector)}`;
      return api<string[]>(`/api/v1/label/${encodeURIComponent(label)}/values${match}`);
    },

    targets,

    async waitForTargetsUp(timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      let last: TargetHealth[] = [];
      while (Date.now() < deadline) {
        last = await targets();
        if (last.length > 0 && last.every((target) => target.health === 'up')) return;
        await sleep(200);
      }
      const report = last.map((target) => `${target.job}: ${target.health}${target.lastError ? ` (${target.lastError})` : ''}`).join('; ');
      throw new Error(`Prometheus targets were not all up within ${timeoutMs} ms: ${report || 'no active targets'}`);
    },

    async stop() {
      if (stopped) return;
      stopped = true;
      await stopProcess(child);
      await rm(dir, { recursive: true, force: true });
    },
  };
}




