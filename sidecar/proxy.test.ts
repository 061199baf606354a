import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addYaml, emptyResourceSet } from '../src/config/manifests.ts';
import { secretsResolver } from '../src/config/snapshot.ts';
import { MemoryLedger } from '../src/ledger/memory.ts';
import { parseAmount } from '../src/money/money.ts';
import { createSidecarMetrics } from '../src/telemetry/metrics.ts';
import { compileSnapshot, StaticConfig } from './config-source.ts';
import { withoutKeyParameter } from './proxy.ts';
import { createSidecar, DEFAULT_SIDECAR_OPTIONS, type Sidecar } from './server.ts';

describe('withoutKeyParameter', () => {
  it('drops a client key from the query', () => {
    expect(withoutKeyParameter('/v1beta/models?key=client-secret')).toBe('/v1beta/models');
    expect(withoutKeyParameter('/v1beta/models?pageSize=5&key=client-secret')).toBe('/v1beta/models?pageSize=5');
  });

  it('leaves other paths unchanged', () => {
    expect(withoutKeyParameter('/v1/models')).toBe('/v1/models');
    expect(withoutKeyParameter('/v1/models?limit=5')).toBe('/v1/models?limit=5');
  });
});

/*
 * The refusals below never reach an upstream, so the routes point at a
 * loopback port that nothing listens on. The model "dear" costs 0.001 USD per
 * prompt token (the hold counts one per body byte), 0.002 USD per output
 * token and 0.01 USD per request, with explicit rates and so no markup.
 * The sidecar's minimum output limit is 16 tokens (DEFAULT_SIDECAR_OPTIONS).
 */
const ROUTES = ['openai', 'anthropic', 'gemini']
  .map(
    (protocol) => `
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: ${protocol} }
spec:
  protocol: ${protocol}
  baseURL: http://127.0.0.1:9
  models: [dear]
`,
  )
  .join('---');

const PLAN = `
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: plan }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        dear: { input: "1000", output: "2000", perRequest: "0.01" }
`;

function walletYaml(name: string, extra = ''): string {
  return `
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: ${name} }
spec:
  currency: USD
  pricePlanRef: { name: plan }
${extra}`;
}

const WALLETS = [
  walletYaml('funded'),
  walletYaml('capped', '  limits: { maxPerRequest: "0.05" }\n'),
  walletYaml('daily', '  limits: { daily: "0.09" }\n'),
  walletYaml('platform', '  endUsers: { allowed: true, prefix: user- }\n'),
];

/** A 200-byte prompt, which alone adds 0.2 USD to the hold of a request. */
const LONG = 'x'.repeat(200);

let sidecar: Sidecar;
let ledger: MemoryLedger;
let walletCount = 0;

beforeAll(async () => {
  const resources = emptyResourceSet();
  addYaml(resources, [ROUTES, PLAN, ...WALLETS].join('---'), 'test manifests');
  for (let index = 0; index < 40; index++) addYaml(resources, walletYaml(`w${index}`), 'test manifests');
  ledger = new MemoryLedger();
  sidecar = createSidecar(
    new StaticConfig(compileSnapshot(resources, secretsResolver(resources))),
    ledger,
    createSidecarMetrics({ defaultMetrics: false }),
    { ...DEFAULT_SIDECAR_OPTIONS, walletPolicy: { defaultWallet: undefined, allowWalletHeader: true } },
    pino({ level: 'silent' }),
  );
  await sidecar.app.ready();
});

afterAll(async () => {
  await sidecar.app.close();
  await sidecar.proxy.close();
});

/** Returns a wallet of its own for one case, holding `amount` USD (none when undefined). */
async function walletWith(amount: string | undefined): Promise<string> {
  const name = `w${walletCount++}`;
  if (amount !== undefined) await ledger.credit({ namespace: 'default', name }, 'grant', parseAmount(amount));
  return name;
}

/** Sends a POST and returns its status and the error code and message of its provider-format error body. */
async function refusal(path: string, body: unknown, headers: Record<string, string>): Promise<{ status: number; code: unknown; message: string }> {
  const response = await sidecar.app.inject({ method: 'POST', url: path, headers: { 'content-type': 'application/json', ...headers }, payload: JSON.stringify(body) });
  const parsed = JSON.parse(response.body) as { error: { code?: unknown; type?: unknown; message: string } };
  return { status: response.statusCode, code: parsed.error.code, message: parsed.error.message };
}

function chat(content: string, maxTokens?: number): Record<string, unknown> {
  return { model: 'dear', messages: [{ role: 'user', content }], ...(maxTokens === undefined ? {} : { max_tokens: maxTokens }) };
}

/** Sends an OpenAI chat request billed to `wallet` and returns the refusal message. */
async function chatRefusal(wallet: string, content: string, maxTokens?: number): Promise<string> {
  const { status, code, message } = await refusal('/openai/v1/chat/completions', chat(content, maxTokens), { 'x-tollgate-wallet': wallet });
  expect(status).toBe(402);
  expect(code).toMatch(/^(insufficient_funds|spend_limit_exceeded)$/);
  return message;
}

describe('insufficient funds refusal', () => {
  it('states what is available', async () => {
    // 273 body bytes at 0.001, the fee of 0.01 and one output token at 0.002 make 0.285.
    const wallet = await walletWith('0.03');
    expect(await chatRefusal(wallet, LONG, 1)).toBe(
      `wallet "default/${wallet}" has insufficient funds for this request: it may cost up to 0.285 USD, but only 0.03 USD is available; top up the wallet`,
    );
  });

  it('states an empty wallet', async () => {
    const wallet = await walletWith(undefined);
    expect(await chatRefusal(wallet, LONG, 1)).toBe(
      `wallet "default/${wallet}" has insufficient funds for this request: it may cost up to 0.285 USD, but only 0.00 USD is available; top up the wallet`,
    );
  });

  it('states an available amount below zero', async () => {
    const wallet = await walletWith('0.01');
    const key = { namespace: 'default', name: wallet };
    await ledger.commit(key, 'unreserved', { charged: parseAmount('0.015'), providerCost: 0n, model: 'dear', route: 'openai', tokens: {}, estimated: false });
    expect(await chatRefusal(wallet, LONG, 1)).toBe(
      `wallet "default/${wallet}" has insufficient funds for this request: it may cost up to 0.285 USD, but nothing is available (-0.005 USD); top up the wallet`,
    );
  });
});

describe('refusal advice', () => {
  // The shortest OpenAI chat body with a limit, {"model":"dear","messages":[{"role":"user","content":"x"}],"max_tokens":1},
  // has 74 bytes, so the hold of the cheapest such request is 0.074 + 0.01 + 0.002 = 0.086 USD.
  it('suggests a shorter request that fits', async () => {
    const wallet = await walletWith('0.086');
    expect(await chatRefusal(wallet, LONG, 1)).toBe(
      `wallet "default/${wallet}" has insufficient funds for this request: it may cost up to 0.285 USD, but only 0.086 USD is available; ` +
        'top up the wallet or send a shorter request',
    );
  });

  it('suggests nothing below the cheapest request', async () => {
    const wallet = await walletWith('0.085999999');
    expect(await chatRefusal(wallet, LONG, 1)).toBe(
      `wallet "default/${wallet}" has insufficient funds for this request: it may cost up to 0.285 USD, but only 0.085999999 USD is available; top up the wallet`,
    );
  });

  // A 77-byte body adds 0.087 USD to the hold with the fee, and its 100 output tokens add 0.2 USD more.
  it('suggests a lower output limit', async () => {
    const wallet = await walletWith('0.089');
    expect(await chatRefusal(wallet, 'hi', 100)).toBe(
      `wallet "default/${wallet}" has insufficient funds for this request: it may cost up to 0.287 USD, but only 0.089 USD is available; ` +
        'top up the wallet or lower the output limit',
    );
  });

  it('suggests both when one is not enough', async () => {
    const wallet = await walletWith('0.088999999');
    expect(await chatRefusal(wallet, 'hi', 100)).toBe(
      `wallet "default/${wallet}" has insufficient funds for this request: it may cost up to 0.287 USD, but only 0.088999999 USD is available; ` +
        'top up the wallet or send a shorter request with a lower output limit',
    );
  });

  // Without a limit the shortest body has 59 bytes and the sidecar reserves 16 output tokens: 0.059 + 0.01 + 0.032 = 0.101 USD.
  // The long body has 258 bytes, so its hold is at least 0.268 + 0.032 = 0.30 USD.
  it('counts the minimum output without a limit', async () => {
    const fits = await walletWith('0.101');
    expect(await chatRefusal(fits, LONG)).toBe(
      `wallet "default/${fits}" has insufficient funds for this request: it may cost up to 0.30 USD, but only 0.101 USD is available; ` +
        'top up the wallet or send a shorter request',
    );
    const short = await walletWith('0.100999999');
    expect(await chatRefusal(short, LONG)).toBe(
      `wallet "default/${short}" has insufficient funds for this request: it may cost up to 0.30 USD, but only 0.100999999 USD is available; top up the wallet`,
    );
  });

  // {"model":"dear","input":"x"} has 28 bytes: 0.028 + 0.01 = 0.038 USD. The long body has 227 bytes.
  it('prices the shortest embeddings body', async () => {
    const body = { model: 'dear', input: LONG };
    const fits = await walletWith('0.038');
    const fitting = await refusal('/openai/v1/embeddings', body, { 'x-tollgate-wallet': fits });
    expect(fitting.message).toBe(
      `wallet "default/${fits}" has insufficient funds for this request: it may cost up to 0.237 USD, but only 0.038 USD is available; ` +
        'top up the wallet or send a shorter request',
    );
    const short = await walletWith('0.037999999');
    const refused = await refusal('/openai/v1/embeddings', body, { 'x-tollgate-wallet': short });
    expect(refused.message).toBe(
      `wallet "default/${short}" has insufficient funds for this request: it may cost up to 0.237 USD, but only 0.037999999 USD is available; top up the wallet`,
    );
  });

  // {"model":"dear","max_tokens":1,"messages":[{"role":"user","content":"x"}]} has 74 bytes: 0.086 USD, as for OpenAI.
  it('prices the shortest Anthropic body', async () => {
    const body = { model: 'dear', max_tokens: 1, messages: [{ role: 'user', content: LONG }] };
    const fits = await walletWith('0.086');
    const fitting = await refusal('/anthropic/v1/messages', body, { 'x-tollgate-wallet': fits });
    expect(fitting.status).toBe(402);
    expect(fitting.message).toBe(
      `wallet "default/${fits}" has insufficient funds for this request: it may cost up to 0.285 USD, but only 0.086 USD is available; ` +
        'top up the wallet or send a shorter request',
    );
    const short = await walletWith('0.085999999');
    const refused = await refusal('/anthropic/v1/messages', body, { 'x-tollgate-wallet': short });
    expect(refused.message).toBe(
      `wallet "default/${short}" has insufficient funds for this request: it may cost up to 0.285 USD, but only 0.085999999 USD is available; top up the wallet`,
    );
  });

  // {"contents":[{"parts":[{"text":"x"}]}]} has 39 bytes, and without a limit 16 output tokens are held: 0.039 + 0.01 + 0.032 = 0.081 USD.
  // The long body has 238 bytes: 0.248 + 0.032 = 0.28 USD.
  it('prices the shortest Gemini body', async () => {
    const body = { contents: [{ parts: [{ text: LONG }] }] };
    const path = '/gemini/v1beta/models/dear:generateContent';
    const fits = await walletWith('0.081');
    const fitting = await refusal(path, body, { 'x-tollgate-wallet': fits });
    expect(fitting.status).toBe(402);
    expect(fitting.message).toBe(
      `wallet "default/${fits}" has insufficient funds for this request: it may cost up to 0.28 USD, but only 0.081 USD is available; ` +
        'top up the wallet or send a shorter request',
    );
    const short = await walletWith('0.080999999');
    const refused = await refusal(path, body, { 'x-tollgate-wallet': short });
    expect(refused.message).toBe(
      `wallet "default/${short}" has insufficient funds for this request: it may cost up to 0.28 USD, but only 0.080999999 USD is available; top up the wallet`,
    );
  });
});

describe('spend limit refusal', () => {
  it('suggests only raising a limit no request fits', async () => {
    await ledger.credit({ namespace: 'default', name: 'capped' }, 'grant', parseAmount('1.00'));
    expect(await chatRefusal('capped', LONG, 1)).toBe(
      'wallet "default/capped" allows at most 0.05 USD per request (spec.limits.maxPerRequest), and this request may cost up to 0.285 USD; ' +
        'raise spec.limits.maxPerRequest',
    );
  });

  it('suggests a shorter request under a daily limit', async () => {
    await ledger.credit({ namespace: 'default', name: 'daily' }, 'grant', parseAmount('1.00'));
    expect(await chatRefusal('daily', LONG, 1)).toBe(
      'wallet "default/daily" would exceed its spec.limits.daily limit: this request may cost up to 0.285 USD and 0.09 USD remains under the limit; ' +
        'wait for the next UTC day, raise spec.limits.daily or send a shorter request',
    );
  });
});

describe('wallet refusal codes', () => {
  async function denials(reason: string): Promise<string | undefined> {
    const metrics = await sidecar.app.inject({ method: 'GET', url: '/metrics' });
    return metrics.body.split('\n').find((line) => line.startsWith(`tollgate_denials_total{route="openai",reason="${reason}"} `));
  }

  it('codes a missing end-user wallet as not found', async () => {
    const before = await denials('wallet_not_found');
    const result = await refusal('/openai/v1/chat/completions', chat('hi', 1), { 'x-tollgate-wallet': 'platform', 'x-tollgate-end-user': 'bob' });
    expect(result).toEqual({
      status: 403,
      code: 'wallet_not_found',
      message: 'wallet "default/user-bob" not found; create a Wallet resource named "user-bob" in namespace default',
    });
    expect(before).toBe('tollgate_denials_total{route="openai",reason="wallet_not_found"} 0');
    expect(await denials('wallet_not_found')).toBe('tollgate_denials_total{route="openai",reason="wallet_not_found"} 1');
  });

  it('codes a missing named wallet as not found', async () => {
    const result = await refusal('/openai/v1/chat/completions', chat('hi', 1), { 'x-tollgate-wallet': 'shop/nobody' });
    expect(result).toEqual({
      status: 403,
      code: 'wallet_not_found',
      message: 'wallet "shop/nobody" not found, and namespace shop has no wallets; create a Wallet resource named "nobody" in namespace shop',
    });
  });

  it('codes a disallowed end user as not allowed', async () => {
    const result = await refusal('/openai/v1/chat/completions', chat('hi', 1), { 'x-tollgate-wallet': 'funded', 'x-tollgate-end-user': 'bob' });
    expect(result).toEqual({
      status: 403,
      code: 'wallet_not_allowed',
      message: 'wallet "default/funded" does not allow end-user wallets; set spec.endUsers.allowed to true to use the x-tollgate-end-user header',
    });
  });
});
