/**
 * Overspend under concurrency: a burst of requests at once against a wallet
 * (or a budget) that pays for exactly N of them, spread over several gateway
 * processes that share one Redis, with upstream latency so that the requests
 * overlap. Every admitted request beyond N is spend beyond what the wallet
 * or budget paid for.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { RedisLedger } from '../src/ledger/redis.ts';
import { startLiteLLM } from './peers/peers.ts';
import type { BenchPlan } from './plan.ts';
import { freePort, startTollgate } from './processes.ts';
import { progress } from './progress.ts';
import { BUDGET_MODEL, LITELLM_PRICES, OVERSPEND_WALLET, overspendRequest, type CostedRequest } from './workload.ts';

export interface BurstTarget {
  /** Chat completions URLs of the gateway processes; requests go to them in turn. */
  urls: string[];
  headers: Record<string, string>;
}

export interface BurstOptions {
  requests: number;
  request: CostedRequest;
}

export interface BurstResult {
  requests: number;
  /** Responses with status 200. */
  admitted: number;
  statusCodes: Record<string, number>;
  /** Status of one more request sent after the burst settled. */
  statusAfterBurst: number;
}

/** Wait before the request after the burst, longer than the one-second interval at which LiteLLM syncs its counters with Redis. */
const AFTER_BURST_DELAY_MS = 3000;

/** Sends all requests at once, waits for every response, then sends one more. */
export async function sendBurst(name: string, target: BurstTarget, options: BurstOptions): Promise<BurstResult> {
  const agent = new Agent({ connections: null, keepAliveTimeout: 30_000, headersTimeout: 120_000, bodyTimeout: 120_000 });
  const headers = { ...target.headers, ...options.request.headers, 'content-type': 'application/json' };
  const send = async (index: number): Promise<number> => {
    try {
      const url = target.urls[index % target.urls.length]!;
      const response = await request(url, { method: 'POST', headers, body: options.request.body, dispatcher: agent });
      await response.body.dump();
      return response.statusCode;
    } catch {
      // A connection error is counted as status 0.
      return 0;
    }
  };

  try {
    progress(`${name}: ${options.requests} requests at once over ${countOf(target.urls.length, 'process', 'processes')}`);
    const statuses = await Promise.all(Array.from({ length: options.requests }, (_, index) => send(index)));
    const statusCodes: Record<string, number> = {};
    for (const status of statuses) statusCodes[status] = (statusCodes[status] ?? 0) + 1;

    await sleep(AFTER_BURST_DELAY_MS);
    const statusAfterBurst = await send(0);
    return { requests: options.requests, admitted: statusCodes['200'] ?? 0, statusCodes, statusAfterBurst };
  } finally {
    await agent.close();
  }
}

/** The outcome of the scenario for one gateway, with amounts in nano-USD. */
export interface OverspendResult {
  gateway: string;
  processes: number;
  /** Requests that the wallet's grant or the budget pays for, at `costNano` each. */
  affordable: number;
  costNano: bigint;
  limitNano: bigint;
  spentNano: bigint;
  /** `max(0, spent − limit)`. */
  overspendNano: bigint;
  burst: BurstResult;
  /** Notes on how the gateway enforces the limit and how the spend was established. */
  note: string;
}

/** Processes and settings that both scenarios share. */
export interface OverspendSetup {
  scenario: BenchPlan['overspend'];
  redisUrl: string;
  simulatorUrl: string;
  /** Manifests folder with the overspend wallet, granted `scenario.affordable` requests' cost. */
  manifests: string;
  /** Folder for the gateways' logs. */
  workDir: string;
}

/** Sends the burst to Tollgate sidecars sharing the Redis ledger, and reads the spend from the ledger. */
export async function tollgateOverspend(setup: OverspendSetup): Promise<OverspendResult> {
  const { scenario } = setup;
  const costed = overspendRequest(BUDGET_MODEL, scenario.upstreamLatencyMs);
  progress(`tollgate overspend: starting ${scenario.sidecars} sidecars on one Redis ledger`);
  const sidecars = await Promise.all(
    Array.from({ length: scenario.sidecars }, (_, index) =>
      startTollgate({
        manifests: setup.manifests,
        redisUrl: setup.redisUrl,
        wallet: OVERSPEND_WALLET,
        logFile: join(setup.workDir, `tollgate-overspend-${index}.log`),
      }),
    ),
  );
  let burst: BurstResult;
  try {
    const urls = sidecars.map((sidecar) => `${sidecar.url}/openai/v1/chat/completions`);
    burst = await sendBurst('tollgate overspend', { urls, headers: {} }, { requests: scenario.requests, request: costed });
  } finally {
    await Promise.all(sidecars.map((sidecar) => sidecar.stop()));
  }

  const ledger = new RedisLedger(setup.redisUrl);
  try {
    const [namespace, name] = OVERSPEND_WALLET.split('/') as [string, string];
    const state = await ledger.state({ namespace, name });
    const verified = await ledger.verify({ namespace, name });
    const replay = verified.ok ? 'found balance = grants − debits − expired' : `found problems: ${verified.problems.join('; ')}`;
    return {
      gateway: 'tollgate',
      processes: scenario.sidecars,
      affordable: scenario.affordable,
      costNano: costed.costNano,
      limitNano: state.granted,
      spentNano: state.spent,
      overspendNano: overspendOf(state.spent, state.granted),
      burst,
      note:
        `spent is the ledger's total debit (RedisLedger.state); ${state.reserved} nano-USD stayed reserved and ${state.holds} holds stayed open after the run. ` +
        `The replay of the entry stream (RedisLedger.verify, which \`tollgate ledger verify\` runs) ${replay}.`,
    };
  } finally {
    await ledger.quit();
  }
}

/**
 * Sends the burst to LiteLLM with a deployment budget of the same requests'
 * cost. LiteLLM's spend is the admitted requests times their cost, which
 * LiteLLM computes from the same reported usage at the same per-token prices.
 */
export async function litellmOverspend(setup: OverspendSetup): Promise<OverspendResult> {
  const { scenario } = setup;
  const costed = overspendRequest(BUDGET_MODEL, scenario.upstreamLatencyMs);
  const budget = costed.costNano * BigInt(scenario.affordable);
  progress(`litellm overspend: starting LiteLLM with ${countOf(scenario.litellmWorkers, 'worker', 'workers')} and a budget of ${budget} nano-USD`);
  const gateway = await startLiteLLM({
    port: await freePort(),
    upstreamUrl: `${setup.simulatorUrl}/v1`,
    redisUrl: setup.redisUrl,
    model: BUDGET_MODEL,
    budgetUsd: budget,
    ...LITELLM_PRICES,
    workers: scenario.litellmWorkers,
    logFile: join(setup.workDir, 'litellm-overspend.log'),
  });
  let burst: BurstResult;
  try {
    const target = { urls: [`${gateway.url}/chat/completions`], headers: gateway.headers };
    burst = await sendBurst('litellm overspend', target, { requests: scenario.requests, request: costed });
  } finally {
    await gateway.stop();
  }

  const spent = costed.costNano * BigInt(burst.admitted);
  return {
    gateway: 'litellm',
    processes: scenario.litellmWorkers,
    affordable: scenario.affordable,
    costNano: costed.costNano,
    limitNano: budget,
    spentNano: spent,
    overspendNano: overspendOf(spent, budget),
    burst,
    note:
      "its strongest enforcement that runs without a Postgres database: the router's deployment budget (`max_budget` on the model, spend counted in Redis), " +
      `with ${countOf(scenario.litellmWorkers, 'uvicorn worker', 'uvicorn workers')} behind one port. Spent is the admitted requests × ${costed.costNano} nano-USD.`,
  };
}

export function overspendOf(spent: bigint, limit: bigint): bigint {
  return spent > limit ? spent - limit : 0n;
}

/** Formats a count with the singular or plural form of its noun: "1 process", "3 processes". */
export function countOf(count: number, singular: string, plural: string): string {
  return `${count} ${count === 1 ? singular : plural}`;
}
