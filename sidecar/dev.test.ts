import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { addManifest, emptyResourceSet } from '../src/config/manifests.ts';
import { MemoryLedger } from '../src/ledger/memory.ts';
import { applyGrants, CreditedGrants, MarginWarnings, startDev } from './dev.ts';

const HOUR_MS = 3_600_000;

/** Returns a logger that keeps each line it writes, as parsed JSON. */
function recordingLogger(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, lines };
}

function walletWithGrants(grants: Record<string, unknown>[], currency = 'USD') {
  const set = emptyResourceSet();
  addManifest(
    set,
    {
      apiVersion: 'tollgate.dev/v1alpha1',
      kind: 'Wallet',
      metadata: { name: 'team-a', namespace: 'shop' },
      spec: { currency, pricePlanRef: { name: 'standard' }, grants },
    },
    'test',
  );
  return set;
}

describe('applyGrants', () => {
  it('credits grants with their expiry', async () => {
    const ledger = new MemoryLedger();
    const expiresAt = new Date(Date.now() + HOUR_MS).toISOString();
    const { log } = recordingLogger();
    await applyGrants(ledger, walletWithGrants([{ id: 'paid', amount: '5' }, { id: 'promo', amount: '2', expiresAt }]), log);

    const wallet = { namespace: 'shop', name: 'team-a' };
    expect((await ledger.state(wallet)).balance).toBe(7_000_000_000n);
    await ledger.sweep(wallet, Date.parse(expiresAt));
    const after = await ledger.state(wallet);
    expect(after.expired).toBe(2_000_000_000n);
    expect(after.balance).toBe(5_000_000_000n);
  });

  it('skips a grant that expired before it was applied', async () => {
    const ledger = new MemoryLedger();
    const { log, lines } = recordingLogger();
    await applyGrants(ledger, walletWithGrants([{ id: 'stale', amount: '3', expiresAt: '2020-01-01T00:00:00Z' }, { id: 'paid', amount: '1' }]), log);

    expect((await ledger.state({ namespace: 'shop', name: 'team-a' })).granted).toBe(1_000_000_000n);
    const warnings = lines.filter((line) => line['level'] === 40);
    expect(warnings.map((line) => [line['msg'], line['grant'], line['expiresAt']])).toEqual([
      ['grant expired before it was applied; skipped', 'stale', '2020-01-01T00:00:00Z'],
    ]);
  });
});

describe('applyGrants changed grants', () => {
  const wallet = { namespace: 'shop', name: 'team-a' };
  const topUpHint = 'the ledger credits each grant id once, so the change does not apply. To top up, add a new grant with a new id';

  function warnings(lines: Record<string, unknown>[]): unknown[][] {
    return lines
      .filter((line) => line['level'] === 40)
      .map((line) => [line['msg'], line['wallet'], line['grant'], line['credited'], line['requested']]);
  }

  it('warns once about a changed amount', async () => {
    const ledger = new MemoryLedger();
    const credited = new CreditedGrants();
    const { log, lines } = recordingLogger();
    await applyGrants(ledger, walletWithGrants([{ id: 'invoice-1', amount: '25.00' }]), log, credited);
    await applyGrants(ledger, walletWithGrants([{ id: 'invoice-1', amount: '30.00' }]), log, credited);
    await applyGrants(ledger, walletWithGrants([{ id: 'invoice-1', amount: '30.00' }]), log, credited);

    expect((await ledger.state(wallet)).granted).toBe(25_000_000_000n);
    expect(warnings(lines)).toEqual([
      [
        `grant "invoice-1" of wallet shop/team-a was already credited as 25.00 USD and now reads 30.00 USD; ${topUpHint}`,
        'shop/team-a',
        'invoice-1',
        '25.00 USD',
        '30.00 USD',
      ],
    ]);
  });

  it('warns about a changed currency', async () => {
    const ledger = new MemoryLedger();
    const credited = new CreditedGrants();
    const { log, lines } = recordingLogger();
    await applyGrants(ledger, walletWithGrants([{ id: 'invoice-1', amount: '25.00' }]), log, credited);
    await applyGrants(ledger, walletWithGrants([{ id: 'invoice-1', amount: '25.00' }], 'EUR'), log, credited);

    expect(warnings(lines)).toEqual([
      [
        `grant "invoice-1" of wallet shop/team-a was already credited as 25.00 USD and now reads 25.00 EUR; ${topUpHint}`,
        'shop/team-a',
        'invoice-1',
        '25.00 USD',
        '25.00 EUR',
      ],
    ]);
  });

  it('reads the credited amount from the ledger', async () => {
    const ledger = new MemoryLedger();
    await ledger.credit(wallet, 'other', 1_000_000_000n);
    await ledger.credit(wallet, 'invoice-1', 25_000_000_000n);
    // Compaction folds the grant entries into a checkpoint, and the ledger still returns each grant's amount.
    expect(await ledger.compact(wallet, Date.now() + 1)).toMatchObject({ folded: 2 });
    const { log, lines } = recordingLogger();
    await applyGrants(ledger, walletWithGrants([{ id: 'other', amount: '1' }, { id: 'invoice-1', amount: '30.00' }]), log, new CreditedGrants());

    expect(warnings(lines)).toEqual([
      [
        `grant "invoice-1" of wallet shop/team-a was already credited as 25.00 USD and now reads 30.00 USD; ${topUpHint}`,
        'shop/team-a',
        'invoice-1',
        '25.00 USD',
        '30.00 USD',
      ],
    ]);
  });

  it('stays quiet about unchanged grants', async () => {
    const ledger = new MemoryLedger();
    const credited = new CreditedGrants();
    const { log, lines } = recordingLogger();
    const grants = [{ id: 'invoice-1', amount: '25.00' }, { id: 'promo', amount: '0.5' }];
    await applyGrants(ledger, walletWithGrants(grants), log, credited);
    await applyGrants(ledger, walletWithGrants([...grants, { id: 'invoice-2', amount: '5' }]), log, credited);

    expect(warnings(lines)).toEqual([]);
    expect(lines.map((line) => [line['msg'], line['grant']])).toEqual([
      ['grant applied', 'invoice-1'],
      ['grant applied', 'promo'],
      ['grant applied', 'invoice-2'],
    ]);
  });
});

/** Starts tollgate dev on a copy of the examples folder, without a Redis ledger and without watching the folder. */
async function startExampleDev(env: NodeJS.ProcessEnv, log: pino.Logger): Promise<{ server: Awaited<ReturnType<typeof startDev>>; manifests: string }> {
  const manifests = await mkdtemp(path.join(os.tmpdir(), 'tollgate-dev-test-'));
  await cp(path.join(import.meta.dirname, '..', 'examples'), manifests, { recursive: true });
  const server = await startDev({ manifests, host: '127.0.0.1', port: 0, redisUrl: undefined, wallet: undefined, env, log, watch: false });
  return { server, manifests };
}

/** A plan in namespace shop that charges `output` for gpt-4.1, and a route in `routeNamespace` that pays 8.00 for it. */
function planAndRoute(output: string, routeNamespace = 'shop') {
  const set = emptyResourceSet();
  addManifest(
    set,
    {
      apiVersion: 'tollgate.dev/v1alpha1',
      kind: 'PricePlan',
      metadata: { name: 'resale', namespace: 'shop' },
      spec: { currency: 'USD', versions: [{ effectiveFrom: '2026-01-01T00:00:00Z', models: { 'gpt-4.1': { input: '2.00', output } } }] },
    },
    'test',
  );
  addManifest(
    set,
    {
      apiVersion: 'tollgate.dev/v1alpha1',
      kind: 'ProviderRoute',
      metadata: { name: 'openai', namespace: routeNamespace },
      spec: { protocol: 'openai', baseURL: 'https://api.openai.com', models: ['gpt-4.1'], costs: { 'gpt-4.1': { input: '2.00', output: '8.00' } } },
    },
    'test',
  );
  return set;
}

describe('MarginWarnings', () => {
  it('warns once per change of a plan below cost', () => {
    const margins = new MarginWarnings();
    const { log, lines } = recordingLogger();
    const warned = () => lines.filter((line) => line['level'] === 40).map((line) => line['msg']);

    margins.check(planAndRoute('7.00'), log);
    // A reload of the same manifests logs nothing again.
    margins.check(planAndRoute('7.00'), log);
    expect(warned()).toEqual([
      "price plan shop/resale has rates below the provider's cost for 1 model(s), so calls made mostly of those tokens or units " +
        'are charged less than they cost: openai/gpt-4.1 (output). Raise those rates (or unknownModels.defaultRates), or price the models with markupPercent',
    ]);
    expect(lines.find((line) => line['level'] === 40)?.['rates']).toEqual({ 'openai/gpt-4.1': { output: '7.00 USD < 8.00 USD per million tokens' } });

    // Fixed, then below cost again: the second time is a new change, so it warns again.
    margins.check(planAndRoute('9.00'), log);
    margins.check(planAndRoute('6.00'), log);
    expect(warned()).toHaveLength(2);
    expect(lines.filter((line) => line['level'] === 40)[1]?.['rates']).toEqual({ 'openai/gpt-4.1': { output: '6.00 USD < 8.00 USD per million tokens' } });
  });
});

describe('MarginWarnings across namespaces', () => {
  it('checks routes of other namespaces', () => {
    // dev finds a route by its path prefix alone, so a wallet in shop reaches a route in platform too.
    const { log, lines } = recordingLogger();
    new MarginWarnings().check(planAndRoute('7.00', 'platform'), log);
    expect(lines.filter((line) => line['level'] === 40).map((line) => line['rates'])).toEqual([{ 'openai/gpt-4.1': { output: '7.00 USD < 8.00 USD per million tokens' } }]);
  });
});

describe('startDev', () => {
  it('credits a grant added while it runs', async () => {
    const { server, manifests } = await startExampleDev({}, pino({ level: 'silent' }));
    try {
      const demo = { namespace: 'default', name: 'demo' };
      expect((await server.ledger.state(demo)).granted).toBe(2_000_000n);

      const file = path.join(manifests, 'wallets.yaml');
      const wallets = await readFile(file, 'utf8');
      const topUp = '    - id: welcome-credit\n      amount: "0.002"\n      reason: trial credit\n    - id: top-up-2\n      amount: "1.00"\n';
      await writeFile(file, wallets.replace('    - id: welcome-credit\n      amount: "0.002"\n      reason: trial credit\n', topUp));
      await server.config.reload();

      expect((await server.ledger.state(demo)).granted).toBe(1_002_000_000n);

      const response = await fetch(`${server.url}/tollgate/v1/wallets`);
      const { wallets: views } = (await response.json()) as { wallets: Record<string, unknown>[] };
      expect(views.find((view) => view['wallet'] === 'default/demo')).toEqual({
        wallet: 'default/demo',
        currency: 'USD',
        granted: '1.002',
        spent: '0',
        expired: '0',
        reserved: '0',
        balance: '1.002',
        available: '1.002',
        providerCost: '0',
        chargedWithoutCost: '0',
        margin: '0',
        nano: { granted: '1002000000', balance: '1002000000', spent: '0', expired: '0', reserved: '0', providerCost: '0', chargedWithoutCost: '0' },
      });
    } finally {
      await server.close();
      await rm(manifests, { recursive: true, force: true });
    }
  });

  it('treats an empty provider key as none', async () => {
    const { server, manifests } = await startExampleDev({ OPENAI_API_KEY: '', ANTHROPIC_API_KEY: '' }, pino({ level: 'silent' }));
    try {
      expect(server.simulatorUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(server.simulated.sort()).toEqual(['anthropic', 'openai']);
      expect(server.config.current().routes.get('/openai')?.origin).toBe(server.simulatorUrl);
    } finally {
      await server.close();
      await rm(manifests, { recursive: true, force: true });
    }
  });

  it('warns when a reload changes a credited grant', async () => {
    const { log, lines } = recordingLogger();
    const { server, manifests } = await startExampleDev({}, log);
    try {
      const file = path.join(manifests, 'wallets.yaml');
      const wallets = await readFile(file, 'utf8');
      await writeFile(file, wallets.replace('amount: "25.00"', 'amount: "30.00"'));
      await server.config.reload();

      expect((await server.ledger.state({ namespace: 'default', name: 'acme' })).granted).toBe(25_000_000_000n);
      const reloadLines = lines.filter((line) => line['level'] === 40 || line['msg'] === 'configuration reloaded');
      expect(reloadLines.map((line) => [line['level'], line['msg']])).toEqual([
        [
          40,
          'grant "invoice-2026-12-001" of wallet default/acme was already credited as 25.00 USD and now reads 30.00 USD; ' +
            'the ledger credits each grant id once, so the change does not apply. To top up, add a new grant with a new id',
        ],
        [30, 'configuration reloaded'],
      ]);
    } finally {
      await server.close();
      await rm(manifests, { recursive: true, force: true });
    }
  });
});
