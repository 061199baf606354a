/**
 * Every query of every Grafana dashboard the chart ships returns data from a
 * real Prometheus. It scrapes a sidecar on a real Redis ledger, called through
 * the official openai and @anthropic-ai/sdk clients, and the operator's
 * metrics registry, whose wallet gauges mirror the same ledger.
 */
import Anthropic from '@anthropic-ai/sdk';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Registry } from 'prom-client';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOperatorMetrics, type OperatorMetrics } from '../operator/metrics.ts';
import { LedgerUnavailableError, type WalletKey } from '../src/ledger/ledger.ts';
import { startPrometheus, type RunningPrometheus, type Sample } from './support/prometheus.ts';
import { startStack, SIMULATOR_KEY, type Stack } from './support/stack.ts';

const REPOSITORY_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DASHBOARD_DIR = path.join(REPOSITORY_ROOT, 'charts/tollgate/dashboards');

/** Namespace of the wallets, plans and routes, and of the application pod that runs the sidecar. */
const NAMESPACE = 'team-a';
/** Namespace of the operator's pod, which a Kubernetes scrape adds as a target label to the operator's series. */
const OPERATOR_NAMESPACE = 'tollgate-system';

/** How long the traffic runs while Prometheus scrapes every second. */
const TRAFFIC_MS = 10_000;
/** Pause between rounds of traffic. */
const ROUND_PAUSE_MS = 250;
/** Times into the traffic at which a commit failure is provoked: two, so the counter rises between scrapes. */
const COMMIT_FAILURE_AT_MS = [2_000, 6_000];
/** How often the emulated wallet reconciler copies ledger state into the gauges. */
const WALLET_SYNC_MS = 500;

/**
 * Values of Grafana's built-in interval variables. A 1m rate window covers the
 * whole traffic phase, so operations that happen once per round (release)
 * still have a rate when the queries run.
 */
const BUILTIN_INTERVALS = { __rate_interval: '1m', __interval: '15s' };

const MANIFESTS = `
apiVersion: v1
kind: Secret
metadata: { name: provider-keys, namespace: ${NAMESPACE} }
stringData: { apiKey: ${SIMULATOR_KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai, namespace: ${NAMESPACE} }
spec:
  protocol: openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: provider-keys, key: apiKey }
  models: [gpt-4o-mini, drain-model]
  costs:
    gpt-4o-mini: { input: "0.15", cachedInput: "0.075", output: "0.60" }
    drain-model: { input: "50", output: "200" }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: anthropic, namespace: ${NAMESPACE} }
spec:
  protocol: anthropic
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: provider-keys, key: apiKey }
  models: [claude-sonnet-4-5]
  costs:
    claude-sonnet-4-5: { input: "3.00", cacheWrite5m: "3.75", cachedInput: "0.30", output: "15.00" }
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: dashboards, namespace: ${NAMESPACE} }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      markupPercent: "20"
      models:
        drain-model: { input: "100", output: "400" }
${Object.entries({ main: '100.00', drain: '5.00', stall: '1.00', empty: '0' })
  .map(
    ([name, amount]) => `---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name}, namespace: ${NAMESPACE} }
spec:
  currency: USD
  pricePlanRef: { name: dashboards }
  grants: [{ id: initial, amount: "${amount}" }]`,
  )
  .join('\n')}
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: capped, namespace: ${NAMESPACE} }
spec:
  currency: USD
  pricePlanRef: { name: dashboards }
  grants: [{ id: initial, amount: "1.00" }]
  limits: { maxPerRequest: "0.01" }
`;

/** What one round of sendRound adds to tollgate_requests_total, by outcome. */
const ROUND_OUTCOMES = { admitted: 7, denied: 6, upstream_error: 1 };
/** What one round of sendRound adds to tollgate_denials_total, by reason. The counts add up to the denied outcome. */
const ROUND_DENIALS = { insufficient_funds: 2, max_per_request: 1, request_id_conflict: 1, unknown_model: 1, wallet_not_found: 1 };
/** Requests per round, of every outcome. */
const ROUND_REQUESTS = ROUND_OUTCOMES.admitted + ROUND_OUTCOMES.denied + ROUND_OUTCOMES.upstream_error;

// ---------------------------------------------------------------------------
// Dashboards: panels, targets and template variables

interface GrafanaTarget {
  refId: string;
  expr?: string;
}

interface GrafanaPanel {
  type: string;
  title: string;
  targets?: GrafanaTarget[];
  /** Panels inside a row. */
  panels?: GrafanaPanel[];
}

interface GrafanaVariable {
  name: string;
  type: string;
  query?: string | { query: string };
  current?: { value?: string | string[] };
  options?: Array<{ value: string }>;
  includeAll?: boolean;
  allValue?: string | null;
  sort?: number;
}

interface Dashboard {
  file: string;
  title: string;
  time: { from: string; to: string };
  templating: { list: GrafanaVariable[] };
  panels: GrafanaPanel[];
}

interface DashboardQuery {
  file: string;
  dashboard: string;
  panel: string;
  refId: string;
  expr: string;
}

function loadDashboards(): Dashboard[] {
  return readdirSync(DASHBOARD_DIR)
    .filter((name) => name.endsWith('.json'))
    .sort()
    .map((file) => ({ ...(JSON.parse(readFileSync(path.join(DASHBOARD_DIR, file), 'utf8')) as Omit<Dashboard, 'file'>), file }));
}

/** Returns the panels of a dashboard, with the panels of rows flattened in. */
function panelsOf(panels: GrafanaPanel[]): GrafanaPanel[] {
  return panels.flatMap((panel) => [panel, ...panelsOf(panel.panels ?? [])]);
}

function queriesOf(dashboard: Dashboard): DashboardQuery[] {
  return panelsOf(dashboard.panels).flatMap((panel) =>
    (panel.targets ?? []).map((target) => {
      if (target.expr === undefined || target.expr.trim() === '') {
        throw new Error(`${dashboard.file}: panel "${panel.title}" target ${target.refId} has no PromQL expression (expr)`);
      }
      return { file: dashboard.file, dashboard: dashboard.title, panel: panel.title, refId: target.refId, expr: target.expr };
    }),
  );
}

/** Converts a dashboard's relative time range ("now-24h" to "now") into the value of $__range. */
function rangeOf(dashboard: Dashboard): string {
  const match = /^now-(\d+[smhdwy])$/.exec(dashboard.time.from);
  if (match === null || dashboard.time.to !== 'now') {
    throw new Error(`${dashboard.file}: unsupported time range ${dashboard.time.from} to ${dashboard.time.to}; expected now-<duration> to now`);
  }
  return match[1]!;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Replaces Grafana variables in all their spellings ($name, ${name}, ${name:format}
 * and [[name]]) and fails on any variable left over.
 */
function substitute(text: string, values: Map<string, string>, where: string): string {
  let result = text;
  // Longest names first, so that $__range_ms is not read as $__range followed by "_ms".
  for (const name of [...values.keys()].sort((a, b) => b.length - a.length)) {
    const value = values.get(name)!;
    const pattern = new RegExp(`\\$\\{${escapeRegExp(name)}(?::[^}]*)?\\}|\\[\\[${escapeRegExp(name)}\\]\\]|\\$${escapeRegExp(name)}(?![A-Za-z0-9_])`, 'g');
    result = result.replace(pattern, () => value);
  }
  const leftover = /\$\{?[A-Za-z_]\w*|\[\[\w+\]\]/.exec(result);
  if (leftover !== null) throw new Error(`${where}: unknown Grafana variable ${leftover[0]} in ${text}`);
  return result;
}

/**
 * Resolves a dashboard's template variables the way Grafana does on load. A
 * query variable runs its label_values() query against Prometheus, which must
 * return values, and selects "All" (its allValue) where the variable offers it,
 * else the first value. A custom variable keeps its current value.
 */
async function resolveVariables(dashboard: Dashboard, prometheus: RunningPrometheus): Promise<Map<string, string>> {
  const range = rangeOf(dashboard);
  const values = new Map<string, string>([
    ...Object.entries(BUILTIN_INTERVALS),
    ['__range', range],
  ]);

  for (const variable of dashboard.templating.list) {
    const where = `${dashboard.file}: variable $${variable.name}`;
    switch (variable.type) {
      case 'datasource':
        // Only used in datasource references, never in an expression.
        break;
      case 'query': {
        const definition = typeof variable.query === 'string' ? variable.query : (variable.query?.query ?? '');
        const match = /^label_values\((?:(.+),\s*)?(\w+)\)$/.exec(definition.trim());
        if (match === null) throw new Error(`${where}: unsupported query ${definition}; expected label_values(selector, label)`);
        const selector = match[1] === undefined ? undefined : substitute(match[1], values, where);
        const options = await prometheus.labelValues(match[2]!, selector);
        if (options.length === 0) throw new Error(`${where}: ${definition} returned no values, so the dashboard's panels would be empty`);
        if (variable.sort === 1) options.sort();
        values.set(variable.name, variable.includeAll ? (variable.allValue ?? `(${options.map(escapeRegExp).join('|')})`) : options[0]!);
        break;
      }
      case 'custom': {
        const current = variable.current?.value;
        const value = Array.isArray(current) ? current[0] : current;
        if (value === undefined) throw new Error(`${where}: the custom variable has no current value; set current.value in the dashboard`);
        values.set(variable.name, value);
        break;
      }
      default:
        throw new Error(`${where}: unsupported variable type ${variable.type}`);
    }
  }
  return values;
}

const DASHBOARDS = loadDashboards();

// ---------------------------------------------------------------------------
// The scraped processes and their traffic

let stack: Stack;
let prometheus: RunningPrometheus;
let operatorMetrics: OperatorMetrics;
let operatorServer: http.Server;
let redisAdmin: Redis;
let walletSync: NodeJS.Timeout | undefined;
let walletSyncError: unknown;
/** Rounds of sendRound that generateTraffic sent. */
let rounds = 0;
/** Timestamp in ms of the scrape taken after the first round, before any other traffic. */
let baselineScrapeMs = 0;
const variablesByFile = new Map<string, Map<string, string>>();

function walletKey(name: string): WalletKey {
  return { namespace: NAMESPACE, name };
}

function openaiFor(wallet: string): OpenAI {
  return new OpenAI({
    baseURL: `${stack.url}/openai/v1`,
    apiKey: 'not-the-provider-key',
    maxRetries: 0,
    defaultHeaders: { 'x-tollgate-wallet': `${NAMESPACE}/${wallet}` },
  });
}

function anthropicFor(wallet: string): Anthropic {
  return new Anthropic({
    baseURL: `${stack.url}/anthropic`,
    apiKey: 'not-the-provider-key',
    maxRetries: 0,
    defaultHeaders: { 'x-tollgate-wallet': `${NAMESPACE}/${wallet}` },
  });
}

async function postJson(urlPath: string, body: unknown, headers: Record<string, string>): Promise<{ status: number; text: string }> {
  const response = await request(`${stack.url}${urlPath}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return { status: response.statusCode, text: await response.body.text() };
}

/** Resolves with the HTTP status of an SDK call that must fail. */
async function failureStatus(call: Promise<unknown>): Promise<number> {
  try {
    await call;
  } catch (error) {
    if (error instanceof OpenAI.APIError || error instanceof Anthropic.APIError) return error.status ?? 0;
    throw error;
  }
  throw new Error('the call succeeded, but it was expected to fail');
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Copies each wallet's ledger state into the gauges, as the operator's wallet reconciler does on every resync. */
async function syncWalletGauges(): Promise<void> {
  for (const wallet of stack.config.current().resources.wallets) {
    const key = walletKey(wallet.metadata.name);
    try {
      await stack.ledger.sweep(key);
      const state = await stack.ledger.state(key);
      operatorMetrics.setWallet(key.namespace, key.name, wallet.spec.currency, state);
    } catch (error) {
      // Redis rejects writes while a commit failure is provoked. The gauges keep their last values, as after a failed reconcile.
      if (!(error instanceof LedgerUnavailableError)) throw error;
    }
  }
}

/** Serves a prom-client registry on /metrics, like the operator's HTTP server. */
async function serveRegistry(registry: Registry): Promise<http.Server> {
  const server = http.createServer((incoming, response) => {
    if (incoming.url !== '/metrics') {
      response.writeHead(404).end();
      return;
    }
    registry.metrics().then(
      (text) => response.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (error: unknown) => response.writeHead(500).end(String(error)),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return server;
}

/**
 * Sends one round of every kind of call the dashboards count, as ROUND_OUTCOMES
 * and ROUND_DENIALS list them. These are admitted plain and streamed calls on
 * both protocols, a call without usage (billed on an estimate), a paid call
 * that drains a wallet and a call with an Idempotency-Key. Then come denials
 * for insufficient funds on both protocols, an unknown model, a per-request
 * spend limit, a wallet that does not exist and the reused Idempotency-Key
 * with another body, and last an upstream error.
 */
async function sendRound(round: number): Promise<void> {
  const messages = [{ role: 'user' as const, content: `round ${round}` }];

  const plain = await openaiFor('main').chat.completions.create({ model: 'gpt-4o-mini', messages, max_tokens: 16 });
  expect(plain.usage?.completion_tokens).toBeGreaterThan(0);

  const stream = await openaiFor('main').chat.completions.create({ model: 'gpt-4o-mini', messages, max_tokens: 16, stream: true });
  for await (const _chunk of stream) {
    // Drain the stream.
  }

  const message = await anthropicFor('main').messages.create({ model: 'claude-sonnet-4-5', max_tokens: 16, messages });
  expect(message.usage.output_tokens).toBeGreaterThan(0);

  const final = await anthropicFor('main').messages.stream({ model: 'claude-sonnet-4-5', max_tokens: 16, messages }).finalMessage();
  expect(final.usage.output_tokens).toBeGreaterThan(0);

  const withoutUsage = await openaiFor('main').chat.completions.create(
    { model: 'gpt-4o-mini', messages, max_tokens: 16, stream: true },
    { headers: { 'x-sim-omit-usage': '1' } },
  );
  for await (const _chunk of withoutUsage) {
    // Drain the stream.
  }

  await openaiFor('drain').chat.completions.create({ model: 'drain-model', messages, max_tokens: 64 });

  expect(await failureStatus(openaiFor('empty').chat.completions.create({ model: 'gpt-4o-mini', messages, max_tokens: 16 }))).toBe(402);
  expect(await failureStatus(anthropicFor('empty').messages.create({ model: 'claude-sonnet-4-5', max_tokens: 16, messages }))).toBe(402);

  const unknown = await postJson('/openai/v1/chat/completions', { model: 'gpt-unpriced', messages }, { 'x-tollgate-wallet': `${NAMESPACE}/main` });
  expect(unknown.status).toBe(400);
  expect(unknown.text).toContain('gpt-unpriced');

  // 100,000 output tokens at 0.72 USD per million alone may cost 0.072 USD, over the wallet's limit of 0.01 USD per request.
  const overLimit = await postJson('/openai/v1/chat/completions', { model: 'gpt-4o-mini', messages, max_tokens: 100_000 }, { 'x-tollgate-wallet': `${NAMESPACE}/capped` });
  expect(overLimit.status).toBe(402);
  expect(JSON.parse(overLimit.text).error.code).toBe('spend_limit_exceeded');

  const noWallet = await postJson('/openai/v1/chat/completions', { model: 'gpt-4o-mini', messages, max_tokens: 16 }, { 'x-tollgate-wallet': `${NAMESPACE}/nobody` });
  expect(noWallet.status).toBe(403);
  expect(JSON.parse(noWallet.text).error.code).toBe('wallet_not_found');

  const idempotent = { 'x-tollgate-wallet': `${NAMESPACE}/main`, 'idempotency-key': `round-${round}` };
  expect((await postJson('/openai/v1/chat/completions', { model: 'gpt-4o-mini', messages, max_tokens: 16 }, idempotent)).status).toBe(200);
  const reused = await postJson('/openai/v1/chat/completions', { model: 'gpt-4o-mini', messages, max_tokens: 17 }, idempotent);
  expect(reused.status).toBe(422);
  expect(JSON.parse(reused.text).error.code).toBe('request_id_conflict');

  const upstreamError = openaiFor('main').chat.completions.create({ model: 'gpt-4o-mini', messages, max_tokens: 16 }, { headers: { 'x-sim-status': '500' } });
  expect(await failureStatus(upstreamError)).toBe(500);
}

/**
 * Makes one commit fail: once the call is reserved, Redis is configured to require a
 * replica for writes (min-replicas-to-write 1 without replicas), so every write,
 * and with it every commit attempt, fails with NOREPLICAS while the upstream
 * answers. The client still gets its answer, and the commit waits in the
 * sidecar's commit queue until Redis takes writes again.
 */
async function provokeCommitFailure(): Promise<void> {
  const wallet = walletKey('stall');
  const reservedBefore = (await stack.ledger.state(wallet)).reserved;
  const call = postJson(
    '/openai/v1/chat/completions',
    { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'stall' }], max_tokens: 16 },
    { 'x-tollgate-wallet': `${NAMESPACE}/stall`, 'x-sim-latency-ms': '400' },
  );

  try {
    let polls = 0;
    while ((await stack.ledger.state(wallet)).reserved === reservedBefore) {
      if (++polls > 200) throw new Error('the stalled call was not reserved within 2 s');
      await sleep(10);
    }
    await redisAdmin.config('SET', 'min-replicas-to-write', '1');
    const result = await call;
    expect(result.status).toBe(200);
    // The hold is still open, because the commit could not be written.
    expect((await stack.ledger.state(wallet)).reserved).toBeGreaterThan(reservedBefore);
  } finally {
    await redisAdmin.config('SET', 'min-replicas-to-write', '0');
  }
}

/**
 * Waits for a scrape that shows exactly `requests` requests and returns its
 * timestamp in ms. The caller sends nothing meanwhile, so that scrape's samples
 * show the state before any later traffic.
 */
async function waitForScrapeOf(requests: number): Promise<number> {
  for (let polls = 0; polls < 100; polls++) {
    const [total] = await prometheus.query('sum(tollgate_requests_total)');
    if (total !== undefined && Number(total.value) === requests) {
      const [stamp] = await prometheus.query('max(timestamp(tollgate_requests_total))');
      return Math.round(Number(stamp!.value) * 1000);
    }
    await sleep(100);
  }
  throw new Error(`Prometheus did not scrape sum(tollgate_requests_total) = ${requests} within 10 s`);
}

/**
 * Sends rounds for TRAFFIC_MS with the commit failures in between. After the
 * first round, which creates every series of the request and denial counters,
 * it pauses for a baseline scrape.
 */
async function generateTraffic(): Promise<void> {
  const started = Date.now();
  let commitFailures = 0;
  for (let round = 0; Date.now() - started < TRAFFIC_MS; round++) {
    const due = COMMIT_FAILURE_AT_MS[commitFailures];
    if (due !== undefined && Date.now() - started >= due) {
      await provokeCommitFailure();
      commitFailures++;
    }
    await sendRound(round);
    rounds++;
    if (round === 0) baselineScrapeMs = await waitForScrapeOf(ROUND_REQUESTS + commitFailures);
    await sleep(ROUND_PAUSE_MS);
  }
  expect(commitFailures).toBe(COMMIT_FAILURE_AT_MS.length);
}

beforeAll(async () => {
  // The wallet label is optional in the sidecar, and the margins dashboard has a panel by wallet.
  stack = await startStack(MANIFESTS, { walletLabel: true });
  redisAdmin = new Redis(stack.redis.url, { maxRetriesPerRequest: 1 });

  operatorMetrics = createOperatorMetrics({ defaultMetrics: false });
  operatorMetrics.leader.set(1);
  await syncWalletGauges();
  operatorServer = await serveRegistry(operatorMetrics.registry);
  walletSync = setInterval(() => {
    syncWalletGauges().catch((error: unknown) => (walletSyncError ??= error));
  }, WALLET_SYNC_MS);

  prometheus = await startPrometheus({
    scrapeIntervalSeconds: 1,
    jobs: [
      { name: 'tollgate-sidecar', target: new URL(stack.url).host, labels: { namespace: NAMESPACE, pod: 'app-0', container: 'tollgate' } },
      {
        name: 'tollgate-operator',
        target: `127.0.0.1:${(operatorServer.address() as AddressInfo).port}`,
        labels: { namespace: OPERATOR_NAMESPACE, pod: 'tollgate-0', container: 'operator' },
      },
    ],
  });
  await prometheus.waitForTargetsUp();

  await generateTraffic();
  // Two more scrapes of both targets after the last call and the last gauge update.
  await sleep(WALLET_SYNC_MS + 2_500);
  if (walletSyncError !== undefined) throw walletSyncError;

  for (const dashboard of DASHBOARDS) variablesByFile.set(dashboard.file, await resolveVariables(dashboard, prometheus));
}, 90_000);

afterAll(async () => {
  if (walletSync !== undefined) clearInterval(walletSync);
  await prometheus?.stop();
  await new Promise<void>((resolve) => (operatorServer ? operatorServer.close(() => resolve()) : resolve()));
  redisAdmin?.disconnect();
  await stack?.close();
});

// ---------------------------------------------------------------------------
// The checks

async function run(query: DashboardQuery): Promise<{ expression: string; samples: Sample[] }> {
  const variables = variablesByFile.get(query.file);
  if (variables === undefined) throw new Error(`the variables of ${query.file} were not resolved; see the error of beforeAll`);
  const expression = substitute(query.expr, variables, `${query.file}: panel "${query.panel}"`);
  return { expression, samples: await prometheus.query(expression) };
}

function isFiniteValue(sample: Sample): boolean {
  return Number.isFinite(Number(sample.value));
}

function findQuery(file: string, panel: string, refId = 'A'): DashboardQuery {
  const dashboard = DASHBOARDS.find((candidate) => candidate.file === file);
  const found = dashboard && queriesOf(dashboard).find((query) => query.panel === panel && query.refId === refId);
  if (!found) throw new Error(`${file} has no panel "${panel}" with target ${refId}`);
  return found;
}

async function labelsOf(file: string, panel: string, labels: string[], refId = 'A'): Promise<string[]> {
  const { samples } = await run(findQuery(file, panel, refId));
  return samples.map((sample) => labels.map((label) => sample.metric[label] ?? '').join('/')).sort();
}

async function valueOf(file: string, panel: string): Promise<number> {
  const { expression, samples } = await run(findQuery(file, panel));
  expect(samples, `${file}, panel "${panel}": ${expression}`).toHaveLength(1);
  return Number(samples[0]!.value);
}

/** Runs a query and returns its values keyed by the values of the given labels, joined with "/". */
async function valuesBy(expression: string, labels: string[]): Promise<Record<string, number>> {
  const samples = await prometheus.query(expression);
  return Object.fromEntries(samples.map((sample) => [labels.map((label) => sample.metric[label] ?? '').join('/'), Number(sample.value)]));
}

/**
 * Runs a panel's query over the window from the baseline scrape to the latest
 * scrape, evaluated at the latest scrape's timestamp. Prometheus 2 range
 * selectors include both ends, so with samples exactly at both ends increase()
 * returns the exact difference without extrapolation.
 * NOTE: Prometheus 3 range selectors exclude their start, which would make increase() extrapolate.
 */
async function valueOverTraffic(file: string, panel: string): Promise<number> {
  const query = findQuery(file, panel);
  const [stamp] = await prometheus.query('max(timestamp(tollgate_requests_total))');
  const endMs = Math.round(Number(stamp!.value) * 1000);
  const variables = new Map(variablesByFile.get(query.file));
  variables.set('__range', `${endMs - baselineScrapeMs}ms`);
  const expression = substitute(query.expr, variables, `${query.file}: panel "${query.panel}"`);

  const url = `${prometheus.url}/api/v1/query?query=${encodeURIComponent(expression)}&time=${(endMs / 1000).toFixed(3)}`;
  const body = (await (await fetch(url, { signal: AbortSignal.timeout(10_000) })).json()) as { status: string; error?: string; data: { result: Array<{ value: [number, string] }> } };
  expect(body.status, `${expression}: ${body.error ?? ''}`).toBe('success');
  expect(body.data.result, `${file}, panel "${panel}": ${expression}`).toHaveLength(1);
  return Number(body.data.result[0]!.value[1]);
}

describe('dashboard files', () => {
  it('contain queries in every panel', () => {
    expect(DASHBOARDS.map((dashboard) => dashboard.file)).toEqual(['enforcement.json', 'margins.json', 'wallets.json']);
    for (const dashboard of DASHBOARDS) {
      for (const panel of panelsOf(dashboard.panels).filter((candidate) => candidate.type !== 'row')) {
        expect(panel.targets?.length ?? 0, `${dashboard.file}: panel "${panel.title}" has no targets`).toBeGreaterThan(0);
      }
    }
  });
});

for (const dashboard of DASHBOARDS) {
  describe(`${dashboard.title} (${dashboard.file})`, () => {
    for (const query of queriesOf(dashboard)) {
      it(`${query.panel} [${query.refId}] returns data`, async () => {
        const { expression, samples } = await run(query);
        const where = `${query.dashboard} (${query.file}), panel "${query.panel}", target ${query.refId}: ${expression}`;
        expect(samples.length, `${where} returned no series`).toBeGreaterThan(0);
        expect(samples.some(isFiniteValue), `${where} returned only NaN or infinite values: ${JSON.stringify(samples)}`).toBe(true);
      });
    }
  });
}

describe('dashboard series', () => {
  it('count the wallets and the exhausted one', async () => {
    expect(await valueOf('wallets.json', 'Wallets')).toBe(5);
    expect(await valueOf('wallets.json', 'Exhausted wallets')).toBe(1);
  });

  it('keep the wallet namespace of the gauges', async () => {
    expect(await labelsOf('wallets.json', 'Balance ($currency)', ['namespace', 'wallet', 'currency'])).toEqual([
      `${NAMESPACE}/capped/USD`,
      `${NAMESPACE}/drain/USD`,
      `${NAMESPACE}/empty/USD`,
      `${NAMESPACE}/main/USD`,
      `${NAMESPACE}/stall/USD`,
    ]);
  });

  it("label the sidecar's money counters like the operator's wallet gauges", async () => {
    // Both name a wallet by its namespace and resource name, so a query can join charges to balances.
    const joined = await valuesBy(
      'count by (namespace, wallet) (tollgate_charged_total) * on (namespace, wallet) group_left count by (namespace, wallet) (tollgate_wallet_balance)',
      ['namespace', 'wallet'],
    );
    expect(Object.keys(joined).sort()).toEqual([`${NAMESPACE}/capped`, `${NAMESPACE}/drain`, `${NAMESPACE}/empty`, `${NAMESPACE}/main`, `${NAMESPACE}/stall`]);
  });

  it("split a wallet's charges by model", async () => {
    expect(await labelsOf('wallets.json', 'Charged per hour by model ($currency)', ['model'])).toEqual(['claude-sonnet-4-5', 'drain-model', 'gpt-4o-mini']);
    const query = findQuery('wallets.json', 'Charged per hour by model ($currency)');
    const variables = new Map(variablesByFile.get(query.file));
    variables.set('wallet', 'drain');
    const samples = await prometheus.query(substitute(query.expr, variables, 'wallets.json with wallet=drain'));
    // The other models' series exist at 0, because the sidecar creates them ahead.
    expect(samples.filter((sample) => Number(sample.value) > 0).map((sample) => sample.metric['model'])).toEqual(['drain-model']);
  });

  it('show exhaustion only for falling balances', async () => {
    // "stall" falls too, by the commits that the sidecar's commit queue wrote once Redis took writes again.
    expect(await labelsOf('wallets.json', 'Time to exhaustion', ['wallet'])).toEqual(['drain', 'main', 'stall']);
  });

  it('split denials by reason', async () => {
    // The sidecar creates every reason's series at 0, so reasons without denials show too.
    expect(await labelsOf('enforcement.json', 'Denials per second by reason', ['reason'])).toEqual([
      'daily_limit',
      'insufficient_funds',
      'max_per_request',
      'monthly_limit',
      'request_id_conflict',
      'unknown_model',
      'wallet_closed',
      'wallet_not_allowed',
      'wallet_not_found',
    ]);
    expect(await labelsOf('enforcement.json', 'Requests billed on estimated usage', ['reason'])).toEqual(['missing_usage']);
  });

  it('count each denial once by reason', async () => {
    expect(await valuesBy('sum by (reason) (tollgate_denials_total)', ['reason'])).toEqual({
      daily_limit: 0,
      insufficient_funds: ROUND_DENIALS.insufficient_funds * rounds,
      max_per_request: ROUND_DENIALS.max_per_request * rounds,
      monthly_limit: 0,
      request_id_conflict: ROUND_DENIALS.request_id_conflict * rounds,
      unknown_model: ROUND_DENIALS.unknown_model * rounds,
      wallet_closed: 0,
      wallet_not_allowed: 0,
      wallet_not_found: ROUND_DENIALS.wallet_not_found * rounds,
    });
  });

  it('count every request once by outcome', async () => {
    expect(await valuesBy('sum by (outcome) (tollgate_requests_total)', ['outcome'])).toEqual({
      admitted: ROUND_OUTCOMES.admitted * rounds + COMMIT_FAILURE_AT_MS.length,
      denied: ROUND_OUTCOMES.denied * rounds,
      upstream_error: ROUND_OUTCOMES.upstream_error * rounds,
    });
  });

  it('label denials by priced models only', async () => {
    // An unpriced model and a missing wallet are denied before pricing, so their model label is "unknown", not the name the client sent.
    expect(await valuesBy('sum by (route, model) (tollgate_requests_total{outcome="denied"})', ['route', 'model'])).toEqual({
      'anthropic/claude-sonnet-4-5': rounds,
      'openai/drain-model': 0,
      'openai/gpt-4o-mini': 3 * rounds,
      'openai/unknown': 2 * rounds,
    });
  });

  it('compute the denial rate over all requests', async () => {
    // The window starts at the baseline scrape after round 0, so it contains the later rounds and both commit failures.
    const admitted = ROUND_OUTCOMES.admitted * (rounds - 1) + COMMIT_FAILURE_AT_MS.length;
    const denied = ROUND_OUTCOMES.denied * (rounds - 1);
    const requests = ROUND_REQUESTS * (rounds - 1) + COMMIT_FAILURE_AT_MS.length;
    expect(await valueOverTraffic('enforcement.json', 'Admitted')).toBe(admitted);
    expect(await valueOverTraffic('enforcement.json', 'Denied')).toBe(denied);
    expect(await valueOverTraffic('enforcement.json', 'Denied (%)')).toBe((100 * denied) / requests);
  });

  it('time every ledger operation', async () => {
    expect(await labelsOf('enforcement.json', 'Ledger latency by operation (p99)', ['operation'])).toEqual(['commit', 'release', 'reserve']);
  });

  it('count both commit failures', async () => {
    const samples = await prometheus.query('sum(tollgate_commit_failures_total)');
    expect(samples.map((sample) => sample.value)).toEqual(['2']);
    expect(await valueOf('enforcement.json', 'Commit failures')).toBeGreaterThan(0);
  });

  it('split margins by model, route and wallet', async () => {
    expect(await labelsOf('margins.json', 'Margin by model ($currency)', ['model'], 'C')).toEqual(['claude-sonnet-4-5', 'drain-model', 'gpt-4o-mini']);
    expect(await labelsOf('margins.json', 'Margin by route ($currency)', ['route'], 'C')).toEqual(['anthropic', 'openai']);
    expect(await labelsOf('margins.json', 'Margin by namespace ($currency)', ['namespace'], 'C')).toEqual([NAMESPACE]);
    // Wallets without charges show at 0, because the sidecar creates their series ahead.
    expect(await labelsOf('margins.json', 'Margin by wallet ($currency)', ['namespace', 'wallet'], 'C')).toEqual([
      `${NAMESPACE}/capped`,
      `${NAMESPACE}/drain`,
      `${NAMESPACE}/empty`,
      `${NAMESPACE}/main`,
      `${NAMESPACE}/stall`,
    ]);
  });
});
