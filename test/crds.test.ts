// The generated CRDs on a real kube-apiserver: they install and become Established, the
// examples apply, `kubectl get` prints the printer columns, and invalid resources are
// rejected by the API server with readable messages.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { stringify as stringifyYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildResourceSchema, RESOURCE_KINDS } from '../src/api/crd.ts';
import { findTestBinary, startApiServer, type ApiServer } from './support/apiserver.ts';

const REPOSITORY_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const NAMESPACE = 'tollgate-crds';
const CRD_NAMES = ['wallets.tollgate.dev', 'priceplans.tollgate.dev', 'providerroutes.tollgate.dev'];
const DUPLICATE_EFFECTIVE_FROM =
  'spec.versions: Invalid value: effectiveFrom must be unique across versions, so that one version is in effect at any time; ' +
  'the same instant with another offset, such as "2026-01-01T00:00:00Z" and "2026-01-01T00:00:00+00:00", is a duplicate too, ' +
  'so give each version a different effectiveFrom, or merge the duplicates into one version';

interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

let apiServer: ApiServer;
let kubectlBinary: string;
let cacheDir: string;

/** Runs kubectl against the test API server, with `input` on standard input. */
function kubectl(args: string[], input?: string): Promise<CommandResult> {
  const fullArgs = ['--kubeconfig', apiServer.kubeconfigPath, '--cache-dir', cacheDir, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(kubectlBinary, fullArgs, { cwd: REPOSITORY_ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input ?? '');
  });
}

/** Runs kubectl and throws with its output unless it exits 0. */
async function kubectlOk(args: string[], input?: string): Promise<string> {
  const result = await kubectl(args, input);
  if (result.code !== 0) {
    throw new Error(`kubectl ${args.join(' ')} exited with ${result.code}:\n${result.stderr}${result.stdout}`);
  }
  return result.stdout;
}

async function getJson(args: string[]): Promise<Record<string, any>> {
  return JSON.parse(await kubectlOk([...args, '-o', 'json'])) as Record<string, any>;
}

/** Splits `kubectl get` table output into rows of cells. */
function tableRows(output: string): string[][] {
  return output
    .trimEnd()
    .split('\n')
    .map((line) => line.trim().split(/\s{2,}/));
}

function wallet(name: string, spec: Record<string, unknown>): Record<string, unknown> {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'Wallet',
    metadata: { name, namespace: NAMESPACE },
    spec: { currency: 'USD', pricePlanRef: { name: 'standard' }, ...spec },
  };
}

/** Grants with distinct ids of the maximum length (128 characters), for the CEL cost limits. */
function grantList(count: number): Array<{ id: string; amount: string }> {
  return Array.from({ length: count }, (_, index) => ({
    id: `grant-${String(index).padStart(4, '0')}-`.padEnd(128, 'x'),
    amount: '9007199.254740992',
  }));
}

function pricePlan(name: string, spec: Record<string, unknown>): Record<string, unknown> {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'PricePlan',
    metadata: { name, namespace: NAMESPACE },
    spec: { currency: 'USD', versions: [{ effectiveFrom: '2026-01-01T00:00:00Z', markupPercent: '20' }], ...spec },
  };
}

/** Price versions one day apart from 2026-01-01, written with a "+00:00" offset. */
function dailyVersions(count: number): Array<{ effectiveFrom: string; markupPercent: string }> {
  return Array.from({ length: count }, (_, index) => ({
    effectiveFrom: new Date(Date.UTC(2026, 0, 1 + index)).toISOString().replace('.000Z', '+00:00'),
    markupPercent: '20',
  }));
}

function providerRoute(name: string, spec: Record<string, unknown>): Record<string, unknown> {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'ProviderRoute',
    metadata: { name, namespace: NAMESPACE },
    spec: { protocol: 'openai', baseURL: 'https://api.openai.com', models: ['gpt-4o-mini'], ...spec },
  };
}

beforeAll(async () => {
  kubectlBinary = await findTestBinary('kubectl');
  apiServer = await startApiServer();
  cacheDir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-kubectl-cache-'));

  await kubectlOk(['apply', '--server-side', '-f', 'crds/']);
  await kubectlOk(['wait', '--for=condition=Established', '--timeout=60s', ...CRD_NAMES.map((name) => `crd/${name}`)]);
  await kubectlOk(['create', 'namespace', NAMESPACE]);
}, 180_000);

afterAll(async () => {
  await apiServer?.stop();
  if (cacheDir !== undefined) await rm(cacheDir, { recursive: true, force: true });
}, 30_000);

describe('CRDs on a real API server', () => {
  it('are established with their names', async () => {
    for (const name of CRD_NAMES) {
      const crd = await getJson(['get', 'crd', name]);
      const established = (crd['status']['conditions'] as Array<{ type: string; status: string }>).find(
        (condition) => condition.type === 'Established',
      );
      expect(established?.status).toBe('True');
      expect(crd['status']['acceptedNames']['kind']).toBe(crd['spec']['names']['kind']);
    }
  });

  it('accept the examples', async () => {
    const output = await kubectlOk(['apply', '-n', NAMESPACE, '-f', 'examples/']);
    expect(output.trimEnd().split('\n').sort()).toEqual([
      'priceplan.tollgate.dev/standard created',
      'providerroute.tollgate.dev/anthropic created',
      'providerroute.tollgate.dev/openai created',
      'wallet.tollgate.dev/acme created',
      'wallet.tollgate.dev/demo created',
    ]);
  });

  it('apply schema defaults', async () => {
    const plan = await getJson(['get', '-n', NAMESPACE, 'priceplan', 'standard']);
    expect(plan['spec']['unknownModels']).toEqual({ policy: 'reject' });

    const route = await getJson(['get', '-n', NAMESPACE, 'providerroute', 'anthropic']);
    expect(route['spec']['timeouts']).toEqual({ connectSeconds: 10, requestSeconds: 600 });
    expect(route['spec']['credentialSecretRef']).toEqual({ name: 'anthropic-credentials', key: 'apiKey' });

    const noGrants = wallet('no-grants', {});
    await kubectlOk(['apply', '-f', '-'], stringifyYaml(noGrants));
    const created = await getJson(['get', '-n', NAMESPACE, 'wallet', 'no-grants']);
    expect(created['spec']['grants']).toEqual([]);
  });

  it('print wallet columns from status', async () => {
    const status = {
      status: {
        balance: '24.75',
        reserved: '0.25',
        spent: '0.25',
        granted: '25.00',
        appliedGrants: ['invoice-2026-12-001'],
        observedGeneration: 1,
        conditions: [
          {
            type: 'Ready',
            status: 'True',
            reason: 'LedgerSynced',
            message: 'balance mirrored from the ledger',
            lastTransitionTime: '2026-01-01T00:00:00Z',
          },
        ],
      },
    };
    await kubectlOk([
      'patch', '-n', NAMESPACE, 'wallet', 'acme', '--subresource=status', '--type=merge', '-p', JSON.stringify(status),
    ]);

    const rows = tableRows(await kubectlOk(['get', '-n', NAMESPACE, 'wallets', 'acme']));
    expect(rows[0]).toEqual(['NAME', 'BALANCE', 'RESERVED', 'PLAN', 'READY', 'AGE']);
    expect(rows[1]?.slice(0, 5)).toEqual(['acme', '24.75', '0.25', 'standard', 'True']);
    expect(rows[1]?.[5]).toMatch(/^\d+s$/);

    const wide = tableRows(await kubectlOk(['get', '-n', NAMESPACE, 'wal', 'acme', '-o', 'wide']));
    expect(wide[0]).toEqual(['NAME', 'BALANCE', 'RESERVED', 'PLAN', 'READY', 'AGE', 'CURRENCY', 'SPENT']);
    expect(wide[1]?.slice(-2)).toEqual(['USD', '0.25']);
  });

  it('print price plan and route columns', async () => {
    const plans = tableRows(await kubectlOk(['get', '-n', NAMESPACE, 'pp', '-o', 'wide']));
    expect(plans[0]).toEqual(['NAME', 'CURRENCY', 'READY', 'AGE', 'VERSIONS']);
    expect(plans[1]?.slice(0, 2)).toEqual(['standard', 'USD']);
    expect(plans[1]?.at(-1)).toBe('2026-01-01T00:00:00Z');

    const routes = tableRows(await kubectlOk(['get', '-n', NAMESPACE, 'pr']));
    expect(routes[0]).toEqual(['NAME', 'PROTOCOL', 'BASE URL', 'READY', 'AGE']);
    expect(routes.slice(1).map((row) => row.slice(0, 3))).toEqual([
      ['anthropic', 'anthropic', 'https://api.anthropic.com'],
      ['openai', 'openai', 'https://api.openai.com'],
    ]);
  });

  it('accept a wallet with the maximum of grants', async () => {
    const output = await kubectlOk(['apply', '-f', '-'], stringifyYaml(wallet('many-grants', { grants: grantList(200) })));
    expect(output.trim()).toBe('wallet.tollgate.dev/many-grants created');
  });

  it('accept a price plan with the maximum of versions', async () => {
    const output = await kubectlOk(['apply', '-f', '-'], stringifyYaml(pricePlan('many-versions', { versions: dailyVersions(100) })));
    expect(output.trim()).toBe('priceplan.tollgate.dev/many-versions created');
  });

  it('are listed together under the tollgate category', async () => {
    const output = await kubectlOk(['get', '-n', NAMESPACE, 'tollgate', '-o', 'name']);
    expect(output.trimEnd().split('\n').sort()).toEqual([
      'priceplan.tollgate.dev/many-versions',
      'priceplan.tollgate.dev/standard',
      'providerroute.tollgate.dev/anthropic',
      'providerroute.tollgate.dev/openai',
      'wallet.tollgate.dev/acme',
      'wallet.tollgate.dev/demo',
      'wallet.tollgate.dev/many-grants',
      'wallet.tollgate.dev/no-grants',
    ]);
  });

  it('explain fields with their descriptions', async () => {
    const walletKind = RESOURCE_KINDS.find((resource) => resource.kind === 'Wallet');
    if (walletKind === undefined) throw new Error('no Wallet resource kind');
    const grants = buildResourceSchema(walletKind).properties?.['spec']?.properties?.['grants'];
    const grantsText = grants?.description ?? '';
    const idText = grants?.items?.properties?.['id']?.description ?? '';
    expect(grantsText).not.toBe('');
    expect(idText).not.toBe('');

    // The API server publishes a new CRD's OpenAPI schema, which explain reads, a few seconds after the CRD is Established.
    let result = await kubectl(['explain', 'wallet.spec.grants']);
    for (let attempt = 1; result.code !== 0 && attempt < 60; attempt++) {
      await sleep(500);
      result = await kubectl(['explain', 'wallet.spec.grants']);
    }
    expect(result.stderr).toBe('');

    // kubectl wraps descriptions at 80 columns, so compare the words.
    const words = (text: string) => text.split(/\s+/).filter((word) => word !== '').join(' ');
    expect(words(result.stdout)).toContain(`DESCRIPTION: ${words(grantsText)} FIELDS:`);
    expect(words(result.stdout)).toContain(`id <string> -required- ${words(idText)}`);
  });
});

describe('API server rejects', () => {
  const cases: Array<{ name: string; manifest: Record<string, unknown>; fragments: string[] }> = [
    {
      name: 'a float amount',
      manifest: wallet('float-amount', { grants: [{ id: 'g1', amount: 12.5 }] }),
      fragments: ['spec.grants[0].amount: Invalid value: "number": spec.grants[0].amount in body must be of type string: "number"'],
    },
    {
      name: 'a negative amount',
      manifest: wallet('negative-amount', { grants: [{ id: 'g1', amount: '-5.00' }] }),
      fragments: [
        'spec.grants[0].amount: Invalid value: "-5.00": spec.grants[0].amount in body should match \'^(\\d+(\\.\\d{1,9})?|\\d+n)$\'',
      ],
    },
    {
      name: 'an amount with 10 decimals',
      manifest: wallet('ten-decimals', { grants: [{ id: 'g1', amount: '1.0000000001' }] }),
      fragments: [
        'spec.grants[0].amount: Invalid value: "1.0000000001": spec.grants[0].amount in body should match \'^(\\d+(\\.\\d{1,9})?|\\d+n)$\'',
      ],
    },
    {
      name: 'duplicate grant ids',
      manifest: wallet('duplicate-grants', {
        grants: [
          { id: 'welcome', amount: '1.00' },
          { id: 'top-up', amount: '2.00' },
          { id: 'welcome', amount: '3.00' },
        ],
      }),
      fragments: [
        'spec.grants: Invalid value: grant ids must be unique within a wallet, because the ledger applies each id once',
      ],
    },
    {
      name: 'a grant above the ledger maximum',
      manifest: wallet('huge-grant', { grants: [{ id: 'g1', amount: '9007199.254740993' }] }),
      fragments: [
        'spec.grants[0].amount: Invalid value: "9007199.254740993": must be at most 9007199.254740992 (9007199254740992n), ' +
          'the largest balance the ledger stores exactly; split larger amounts across wallets',
      ],
    },
    {
      name: 'a nano-unit grant above the ledger maximum',
      manifest: wallet('huge-nano-grant', { grants: [{ id: 'g1', amount: '9007199254740993n' }] }),
      fragments: ['spec.grants[0].amount: Invalid value: "9007199254740993n": must be at most 9007199.254740992 (9007199254740992n)'],
    },
    {
      name: 'an unknown protocol',
      manifest: providerRoute('grpc-route', { protocol: 'grpc' }),
      fragments: [
        'spec.protocol: Unsupported value: "grpc": supported values: "openai", "anthropic", "gemini", "azure-openai", "openai-compatible"',
      ],
    },
    {
      name: 'a base URL without http(s)',
      manifest: providerRoute('ftp-route', { baseURL: 'ftp://files.example.com' }),
      fragments: ['spec.baseURL: Invalid value: "ftp://files.example.com": must be an absolute http(s) URL such as "https://api.openai.com"'],
    },
    {
      name: 'an invalid model id as a cost key',
      manifest: providerRoute('bad-cost-key', { costs: { '-bad model': { input: '1', output: '2' } } }),
      fragments: ['spec.costs: Invalid value: every key must be a model id such as "gpt-4o-mini" (1 to 200 characters)'],
    },
    {
      name: 'an invalid model id in a price version',
      manifest: pricePlan('bad-model-key', {
        versions: [{ effectiveFrom: '2026-01-01T00:00:00Z', models: { 'gpt 4o': { input: '1', output: '2' } } }],
      }),
      fragments: ['spec.versions[0].models: Invalid value: every key must be a model id such as "gpt-4o-mini" (1 to 200 characters)'],
    },
    {
      name: 'duplicate effectiveFrom instants',
      manifest: pricePlan('duplicate-versions', {
        versions: [
          { name: 'a', effectiveFrom: '2026-01-01T00:00:00Z', markupPercent: '20' },
          { name: 'b', effectiveFrom: '2026-01-01T01:00:00+01:00', markupPercent: '25' },
        ],
      }),
      fragments: [DUPLICATE_EFFECTIVE_FROM],
    },
    {
      name: 'the same effectiveFrom with Z and +00:00',
      manifest: pricePlan('same-instant-utc', {
        versions: [
          { effectiveFrom: '2026-03-01T12:00:00Z', markupPercent: '20' },
          { effectiveFrom: '2026-01-01T00:00:00Z', markupPercent: '10' },
          { effectiveFrom: '2026-03-01T12:00:00.000+00:00', markupPercent: '25' },
        ],
      }),
      fragments: [DUPLICATE_EFFECTIVE_FROM],
    },
    {
      // The API server drops digits beyond nanoseconds, as local mode does.
      name: 'effectiveFrom times less than a nanosecond apart',
      manifest: pricePlan('same-nanosecond', {
        versions: [
          { effectiveFrom: '2026-01-01T00:00:00.0000000001Z', markupPercent: '20' },
          { effectiveFrom: '2026-01-01T00:00:00.0000000002Z', markupPercent: '25' },
        ],
      }),
      fragments: [DUPLICATE_EFFECTIVE_FROM],
    },
    {
      name: 'a repeated effectiveFrom among the maximum of versions',
      manifest: pricePlan('same-instant-max', {
        versions: [...dailyVersions(99), { effectiveFrom: '2026-02-01T01:00:00+01:00', markupPercent: '30' }],
      }),
      fragments: [DUPLICATE_EFFECTIVE_FROM],
    },
    {
      name: 'an effectiveFrom that is no time',
      manifest: pricePlan('bad-time', { versions: [{ effectiveFrom: 'next tuesday', markupPercent: '20' }] }),
      fragments: ['spec.versions[0].effectiveFrom: Invalid value: "next tuesday": spec.versions[0].effectiveFrom in body must be of type date-time: "next tuesday"'],
    },
    {
      name: 'the default policy without defaultRates',
      manifest: pricePlan('default-without-rates', { unknownModels: { policy: 'default' } }),
      fragments: ['spec.unknownModels: Required value: defaultRates is required when policy is "default"'],
    },
    {
      name: 'a lower-case currency',
      manifest: wallet('lower-currency', { currency: 'usd' }),
      fragments: ['spec.currency: Invalid value: "usd": spec.currency in body should match \'^[A-Z]{3}$\''],
    },
    {
      name: 'more grants than the maximum',
      manifest: wallet('too-many-grants', { grants: grantList(201) }),
      fragments: ['spec.grants: Too many: 201: must have at most 200 items'],
    },
    {
      name: 'an amount longer than 32 characters',
      manifest: wallet('long-amount', { grants: [{ id: 'g1', amount: `${'0'.repeat(30)}1.5` }] }),
      fragments: ['spec.grants[0].amount: Too long: may not be more than 32 bytes'],
    },
    {
      // kubectl validates fields strictly by default, as local mode does.
      name: 'a misspelled spec field',
      manifest: wallet('misspelled-limits', { limts: { maxPerRequest: '0.50' } }),
      fragments: ['unknown field "spec.limts"'],
    },
    {
      name: 'an unknown field in a grant',
      manifest: wallet('grant-field', { grants: [{ id: 'g1', amount: '1.00', expires: '2027-01-01T00:00:00Z' }] }),
      fragments: ['unknown field "spec.grants[0].expires"'],
    },
    {
      name: 'a wallet without a price plan',
      manifest: { ...wallet('no-plan', {}), spec: { currency: 'USD' } },
      fragments: ['spec.pricePlanRef: Required value'],
    },
  ];

  for (const testCase of cases) {
    it(testCase.name, async () => {
      const result = await kubectl(['apply', '-f', '-'], stringifyYaml(testCase.manifest));
      expect(result.code).toBe(1);
      for (const fragment of testCase.fragments) {
        expect(result.stderr).toContain(fragment);
      }

      const name = (testCase.manifest['metadata'] as { name: string }).name;
      const kind = String(testCase.manifest['kind']).toLowerCase();
      const lookup = await kubectl(['get', '-n', NAMESPACE, kind, name]);
      expect(lookup.code).toBe(1);
      expect(lookup.stderr).toContain('NotFound');
    });
  }

  it('a currency change of a wallet', async () => {
    const original = wallet('immutable-currency', { grants: [{ id: 'g1', amount: '1.00' }] });
    await kubectlOk(['apply', '-f', '-'], stringifyYaml(original));

    const changed = wallet('immutable-currency', { currency: 'EUR', grants: [{ id: 'g1', amount: '1.00' }] });
    const result = await kubectl(['apply', '-f', '-'], stringifyYaml(changed));
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      'spec.currency: Invalid value: "EUR": is immutable because the ledger keeps the balance in this currency; create a new Wallet instead',
    );

    const stored = await getJson(['get', '-n', NAMESPACE, 'wallet', 'immutable-currency']);
    expect(stored['spec']['currency']).toBe('USD');
  });

  it('a changed amount or expiry of a grant', async () => {
    const expiresAt = '2030-01-01T00:00:00Z';
    const original = wallet('fixed-grants', { grants: [{ id: 'paid', amount: '25.00' }, { id: 'promo', amount: '5.00', expiresAt }] });
    await kubectlOk(['apply', '-f', '-'], stringifyYaml(original));
    const message = 'spec.grants: Invalid value: a grant keeps the amount and expiry it was created with, because the ledger credits each grant id once; ' +
      'to top up, add a grant with a new id';

    const changes = [
      [{ id: 'paid', amount: '30.00' }, { id: 'promo', amount: '5.00', expiresAt }],
      [{ id: 'paid', amount: '25.00' }, { id: 'promo', amount: '5.00', expiresAt: '2031-01-01T00:00:00Z' }],
      [{ id: 'paid', amount: '25.00', expiresAt }, { id: 'promo', amount: '5.00', expiresAt }],
      [{ id: 'paid', amount: '25.00' }, { id: 'promo', amount: '5.00' }],
    ];
    for (const grants of changes) {
      const result = await kubectl(['apply', '-f', '-'], stringifyYaml(wallet('fixed-grants', { grants })));
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(message);
    }

    // Adding a grant, reordering and removing grants are allowed.
    const topUp = [{ id: 'top-up', amount: '10.00' }, { id: 'promo', amount: '5.00', expiresAt }, { id: 'paid', amount: '25.00' }];
    expect(await kubectlOk(['apply', '-f', '-'], stringifyYaml(wallet('fixed-grants', { grants: topUp })))).toContain('configured');
    expect(await kubectlOk(['apply', '-f', '-'], stringifyYaml(wallet('fixed-grants', { grants: [topUp[0]] })))).toContain('configured');
    const stored = await getJson(['get', '-n', NAMESPACE, 'wallet', 'fixed-grants']);
    expect(stored['spec']['grants']).toEqual([{ id: 'top-up', amount: '10.00' }]);
  });

  it('a second error only once per malformed amount', async () => {
    const result = await kubectl(
      ['apply', '-f', '-'],
      stringifyYaml(wallet('one-error', { grants: [{ id: 'g1', amount: '12.5.0' }] })),
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('spec.grants[0].amount in body should match');
    expect(result.stderr).not.toContain('must be at most');
  });
});
