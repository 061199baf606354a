/**
 * The `tollgate` command as a user runs it: a real process, a real
 * redis-server for the ledger commands.
 */
import { execFile, spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisLedger } from '../src/ledger/redis.ts';
import { parseAmount } from '../src/money/money.ts';
import { startSimulator } from '../src/simulator/index.ts';
import { startDevProcess, type DevProcess } from './support/dev-process.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';

const run = promisify(execFile);
const ROOT = path.join(import.meta.dirname, '..');

/** Runs the command to its end; a run still going after `timeoutMs` is killed and reports the signal. */
async function tollgate(args: string[], timeoutMs = 0): Promise<{ code: number; signal?: string; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['src/cli/main.ts', ...args], {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: 'warn' },
      timeout: timeoutMs,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failure = error as { code: number; signal?: string; stdout: string; stderr: string };
    return { code: failure.code, ...(failure.signal ? { signal: failure.signal } : {}), stdout: failure.stdout, stderr: failure.stderr };
  }
}

let redis: RunningRedis;
const wallet = { namespace: 'team-a', name: 'cli' };

beforeAll(async () => {
  redis = await startRedis();
  const ledger = new RedisLedger(redis.url);
  await ledger.credit(wallet, 'grant-1', parseAmount('2.50'));
  await ledger.reserve(wallet, 'r1', { fixed: parseAmount('1.00'), perUnit: 0n, minUnits: 0, maxUnits: 0, ttlSeconds: 60, fingerprint: 'f' });
  await ledger.commit(wallet, 'r1', { charged: parseAmount('0.75'), providerCost: parseAmount('0.60'), model: 'm', route: 'openai', tokens: {}, estimated: false });
  await ledger.quit();
});

afterAll(async () => {
  await redis?.stop();
});

describe('tollgate command', () => {
  it('prints usage and fails on an unknown command', async () => {
    const result = await tollgate(['frobnicate']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('unknown command "frobnicate"');
  });

  it('exits when the sidecar fails at start', async () => {
    // An operator snapshot endpoint with an empty configuration, so that the sidecar gets as far as its commit journal.
    const snapshots = http.createServer((_request, response) => response.end(JSON.stringify({ resources: { routes: [], plans: [], wallets: [] } })));
    await new Promise<void>((resolve) => snapshots.listen(0, '127.0.0.1', resolve));
    const { port } = snapshots.address() as net.AddressInfo;
    const missing = path.join(os.tmpdir(), `tollgate-missing-${process.pid}`, 'commits.ndjson');
    try {
      const started = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, ['src/cli/main.ts', 'sidecar'], {
          cwd: ROOT,
          env: {
            ...process.env,
            LOG_LEVEL: 'error',
            TOLLGATE_NAMESPACE: 'team-a',
            TOLLGATE_CONFIG_URL: `http://127.0.0.1:${port}`,
            TOLLGATE_REDIS_URL: redis.url,
            TOLLGATE_LISTEN: '127.0.0.1:0',
            TOLLGATE_COMMIT_JOURNAL: missing,
          },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
        child.once('exit', (code) => resolve({ code, stderr }));
      });
      // The ledger's Redis connection was open already; the process ends all the same.
      expect(started.code).toBe(1);
      expect(started.stderr).toBe(
        `tollgate: failed to open the commit journal ${missing}: ENOENT: no such file or directory, open '${missing}'; its folder does not exist; create it, or give a path in an existing folder\n`,
      );
    } finally {
      snapshots.closeAllConnections();
      await new Promise((resolve) => snapshots.close(resolve));
    }
  });

  it('prints the sidecar environment on --help', async () => {
    const help = await tollgate(['sidecar', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Usage: tollgate sidecar');
    expect(help.stdout).toContain('TOLLGATE_REDIS_URL         Redis ledger URL, redis://host:port (required)');
    expect(help.stderr).toBe('');

    const extra = await tollgate(['sidecar', '--redis', 'redis://127.0.0.1:6379']);
    expect(extra.code).toBe(2);
    expect(extra.stderr).toContain('tollgate sidecar takes no arguments, but got "--redis redis://127.0.0.1:6379"; it reads its settings from the environment');
  });

  it('prints a wallet state', async () => {
    const result = await tollgate(['ledger', 'state', '--redis', redis.url, '--wallet', 'team-a/cli']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('granted        2.500000000');
    expect(result.stdout).toContain('spent          0.750000000');
    expect(result.stdout).toContain('balance        1.750000000');
    expect(result.stdout).toContain('provider cost  0.600000000');
    expect(result.stdout).toContain('margin         0.150000000');
    expect(result.stderr).toBe('');
  });

  it('warns on a wallet without records', async () => {
    const result = await tollgate(['ledger', 'state', '--redis', redis.url, '--wallet', 'team-a/cil']);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe(
      [
        'wallet         team-a/cil',
        'granted        0.000000000',
        'spent          0.000000000',
        'expired        0.000000000',
        'reserved       0.000000000 in 0 holds',
        'balance        0.000000000',
        'available      0.000000000',
        'provider cost  0.000000000',
        'margin         0.000000000',
        '',
      ].join('\n'),
    );
    expect(result.stderr).toBe(
      'warning: wallet team-a/cil has no records in this Redis ledger, so all its totals are zero. ' +
        "Check the namespace and name, and that the Redis URL points at the ledger's Redis.\n",
    );
  });

  it('does not warn on a zero wallet with records', async () => {
    const zero = { namespace: 'team-a', name: 'zero' };
    const ledger = new RedisLedger(redis.url);
    await ledger.credit(zero, 'grant-0', 0n);
    await ledger.quit();

    const result = await tollgate(['ledger', 'state', '--redis', redis.url, '--wallet', 'team-a/zero']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('balance        0.000000000');
    expect(result.stderr).toBe('');
  });

  it('does not warn on a wallet with only a checkpoint', async () => {
    const client = new Redis(redis.url);
    await client.hset('{w:team-a/checkpoint-only}:checkpoint', 'entries', '0', 'lastId', '1-0');
    await client.quit();

    const result = await tollgate(['ledger', 'state', '--redis', redis.url, '--wallet', 'team-a/checkpoint-only']);
    expect(result.code).toBe(0);
    expect(result.stderr).toBe('');
  });

  it('fails when the key check is not permitted', async () => {
    const client = new Redis(redis.url);
    await client.acl('SETUSER', 'no-exists', 'on', '>s3cret-pass', '~*', '+@all', '-exists');
    await client.quit();
    const { port } = new URL(redis.url);

    const result = await tollgate(['ledger', 'state', '--redis', `redis://no-exists:s3cret-pass@127.0.0.1:${port}`, '--wallet', 'team-a/acl']);
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('balance        0.000000000');
    // Redis 7.0.15 replies "NOPERM this user has no permissions ...", and other versions may word the user part differently.
    expect(result.stderr).toMatch(
      /^tollgate: failed to check whether wallet team-a\/acl has records in Redis: ledger \S+ for wallet team-a\/acl failed because Redis at 127\.0\.0\.1:\d+ does not permit it for the connection's user: NOPERM [^\n]+ has no permissions to run the 'exists' command\. Grant that user the ledger's commands and keys in its ACL\.\n$/,
    );
    expect(result.stderr).not.toContain('s3cret-pass');
  });

  it('names the refused address when Redis is down', async () => {
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as net.AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));

    const result = await tollgate(['ledger', 'state', '--redis', `redis://127.0.0.1:${port}`, '--wallet', 'team-a/cli'], 60_000);
    expect(result.signal).toBeUndefined();
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(
      `tollgate: ledger state for wallet team-a/cli failed because Redis at 127.0.0.1:${port} is unavailable: ` +
        `connect ECONNREFUSED 127.0.0.1:${port}. Check that Redis is running and reachable there.\n`,
    );
  });

  it('verifies a consistent wallet', async () => {
    const result = await tollgate(['ledger', 'verify', '--redis', redis.url, '--wallet', 'team-a/cli']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('ok: balance = grants - debits');
    expect(result.stderr).toBe('');
  });

  it('verifies one entry in the singular', async () => {
    const single = { namespace: 'team-a', name: 'single' };
    const ledger = new RedisLedger(redis.url);
    await ledger.credit(single, 'grant-1', parseAmount('1.00'));
    await ledger.quit();

    const result = await tollgate(['ledger', 'verify', '--redis', redis.url, '--wallet', 'team-a/single']);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe(
      'replayed 1 entry: granted 1.000000000, spent 0.000000000, expired 0.000000000\nok: balance = grants - debits - expired\n',
    );
    expect(result.stderr).toBe('');
  });

  it('fails to verify a wallet without records', async () => {
    const result = await tollgate(['ledger', 'verify', '--redis', redis.url, '--wallet', 'default/dmo']);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(
      'tollgate: wallet default/dmo has no records in this Redis ledger, so there is nothing to verify. ' +
        "Check the namespace and name, and that the Redis URL points at the ledger's Redis.\n",
    );
  });

  it('warns on exporting a wallet without records', async () => {
    const result = await tollgate(['ledger', 'export', '--redis', redis.url, '--wallet', 'default/dmo']);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(
      'exported 0 entries\n' +
        'warning: wallet default/dmo has no records in this Redis ledger, so it has no entries to export. ' +
        "Check the namespace and name, and that the Redis URL points at the ledger's Redis.\n",
    );
  });

  it('reports a tampered total', async () => {
    const client = new Redis(redis.url);
    await client.hset('{w:team-a/cli}:acct', 'spent', '1');
    await client.quit();
    const result = await tollgate(['ledger', 'verify', '--redis', redis.url, '--wallet', 'team-a/cli']);
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('FAILED');
  });

  it('rejects a wallet without a namespace', async () => {
    const result = await tollgate(['ledger', 'state', '--redis', redis.url, '--wallet', 'cli']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('invalid --wallet "cli": name the wallet as NAMESPACE/NAME, such as default/cli');
  });

  it('names an unknown ledger command', async () => {
    const result = await tollgate(['ledger', 'stat', '--redis', redis.url, '--wallet', 'team-a/cli']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('unknown command "stat": use one of state, verify, export, compact');
  });

  it('exports a wallet as NDJSON', async () => {
    const exported = { namespace: 'team-a', name: 'export' };
    const ledger = new RedisLedger(redis.url);
    await ledger.credit(exported, 'grant-1', parseAmount('1.00'), { reason: 'trial' });
    for (const id of ['r1', 'r2']) {
      await ledger.commit(exported, id, { charged: 5n, providerCost: 4n, model: 'm', route: 'openai', tokens: { input: 2 }, estimated: false });
    }
    await ledger.quit();
    const client = new Redis(redis.url);
    const stream = await client.xrange('{w:team-a/export}:log', '-', '+');
    await client.quit();

    const all = await tollgate(['ledger', 'export', '--redis', redis.url, '--wallet', 'team-a/export', '--page-size', '2']);
    expect(all.code).toBe(0);
    const lines = all.stdout.trimEnd().split('\n').map((line) => JSON.parse(line) as { id: string; fields: Record<string, string> });
    expect(lines.map(({ id, fields }) => [id, Object.entries(fields).flat()])).toEqual(stream);
    expect(lines[1]).toEqual({
      id: stream[1]![0],
      fields: { type: 'debit', id: 'r1', amount: '5', charged: '5', providerCost: '4', model: 'm', route: 'openai', tokens: '{"input":2}', estimated: '0' },
    });
    expect(all.stderr).toContain(`exported 3 entries, ${stream[0]![0]} through ${stream[2]![0]}`);

    const from = await tollgate(['ledger', 'export', '--redis', redis.url, '--wallet', 'team-a/export', '--from', stream[1]![0]]);
    expect(from.stdout.trimEnd().split('\n').map((line) => (JSON.parse(line) as { id: string }).id)).toEqual([stream[1]![0], stream[2]![0]]);
    const after = await tollgate(['ledger', 'export', '--redis', redis.url, '--wallet', 'team-a/export', '--after', stream[1]![0]]);
    expect(after.stdout.trimEnd().split('\n').map((line) => (JSON.parse(line) as { id: string }).id)).toEqual([stream[2]![0]]);
  });

  it('compacts a wallet and verifies it', async () => {
    const compacted = { namespace: 'team-a', name: 'compact' };
    const ledger = new RedisLedger(redis.url);
    await ledger.credit(compacted, 'grant-1', parseAmount('1.00'));
    await ledger.commit(compacted, 'r1', { charged: parseAmount('0.25'), providerCost: parseAmount('0.20'), model: 'm', route: 'openai', tokens: {}, estimated: false });
    await ledger.quit();
    const args = ['--redis', redis.url, '--wallet', 'team-a/compact'];
    const cutoff = new Date(Date.now() + 1000).toISOString();

    const first = await tollgate(['ledger', 'compact', ...args, '--before', cutoff]);
    expect(first.code).toBe(0);
    expect(first.stdout).toContain(`folded 2 entries older than ${cutoff} into the checkpoint of wallet team-a/compact`);
    expect(first.stdout).toMatch(/checkpoint: 2 entries through \d+-\d+: granted 1\.000000000, spent 0\.250000000, expired 0\.000000000, provider cost 0\.200000000/);

    const again = await tollgate(['ledger', 'compact', ...args, '--before', '1h']);
    expect(again.stdout).toContain('folded no entries: wallet team-a/compact has no entry older than');

    const verify = await tollgate(['ledger', 'verify', ...args]);
    expect(verify.code).toBe(0);
    expect(verify.stdout).toMatch(/replayed 2 entries \(2 from the checkpoint through \d+-\d+, 0 from the stream\): granted 1\.000000000, spent 0\.250000000/);
    expect(verify.stdout).toContain('ok: balance = grants - debits - expired');

    // The checkpoint is a record, so exporting its empty stream warns of nothing.
    const exported = await tollgate(['ledger', 'export', ...args]);
    expect(exported.stdout).toBe('');
    expect(exported.stderr).toBe('exported 0 entries\n');

    // A start inside the folded entries cannot be honoured, and the export warns about it.
    const end = /checkpoint: 2 entries through (\d+-\d+)/.exec(first.stdout)![1]!;
    const folded = `warning: the entries of wallet team-a/compact through ${end} were folded into its checkpoint by ledger compact and cannot be exported, so the export starts after ${end}\n`;
    for (const option of [['--from', '0-1'], ['--from', end], ['--after', '0-1']]) {
      const fromFolded = await tollgate(['ledger', 'export', ...args, ...option]);
      expect(fromFolded.stderr, option.join(' ')).toBe(`${folded}exported 0 entries\n`);
    }
    expect((await tollgate(['ledger', 'export', ...args, '--after', end])).stderr).toBe('exported 0 entries\n');
  });

  it('rejects compact without --before', async () => {
    const missing = await tollgate(['ledger', 'compact', '--redis', redis.url, '--wallet', 'team-a/cli']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('missing option: compact needs --before');

    const invalid = await tollgate(['ledger', 'compact', '--redis', redis.url, '--wallet', 'team-a/cli', '--before', 'last week']);
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toContain('invalid --before "last week": use an age such as 30d or a time such as 2025-06-01T00:00:00Z');

    const misplaced = await tollgate(['ledger', 'verify', '--redis', redis.url, '--wallet', 'team-a/cli', '--from', '1-0']);
    expect(misplaced.code).toBe(2);
    expect(misplaced.stderr).toContain('invalid option for verify: --from applies to export only');
  });

  it('rejects a dev retention below an hour', async () => {
    const result = await tollgate(['dev', '--ledger-retention', '30m']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('invalid retention of settled records 30m: use at least 1h (in whole milliseconds)');
  });

  it('a dev ledger timeout outside 10 ms to 10 minutes', async () => {
    const result = await tollgate(['dev', '--ledger-timeout', '5ms']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('invalid --ledger-timeout "5ms": use a duration from 10ms to 10m, such as 2s, or 0s for no limit');
  });

  it('an invalid Redis Cluster URL for dev and ledger', async () => {
    const url = 'redis+cluster://ledger:s3cret@127.0.0.1:7000/2';
    const expected = 'invalid Redis URL "redis+cluster://ledger:***@127.0.0.1:7000/2": database 2 is not available, because a Redis Cluster has only database 0; remove "/2" from the URL';
    for (const args of [['dev', '--redis', url], ['ledger', 'state', '--redis', url, '--wallet', 'team-a/cli']]) {
      const result = await tollgate(args);
      expect(result.code, args[0]).toBe(2);
      expect(result.stderr.split('\n')[0], args[0]).toBe(expected);
      expect(result.stderr, args[0]).not.toContain('s3cret');
    }
  });

  it('rejects an invalid dev port', async () => {
    const result = await tollgate(['dev', '--port', '99999']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('invalid --port "99999"');
  });

  it('exits when dev cannot listen', async () => {
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const result = await tollgate(['dev', '--port', String(port)], 60_000);
      expect(result.signal).toBeUndefined();
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        `tollgate: port ${port} on 127.0.0.1 is already in use; stop the process that listens there, ` +
          'or pick another port with --port PORT (--port 0 picks a free one)\n',
      );
    } finally {
      busy.close();
    }
  });

  it('rejects an invalid dev body limit', async () => {
    const result = await tollgate(['dev', '--body-limit', '4MB']);
    expect(result.code).toBe(2);
    expect(result.stderr).toBe('invalid --body-limit "4MB": use a whole number of bytes from 1 to 9007199254740991, such as 8388608 for 8 MiB\n');
  });

  it('applies the dev body limit', async () => {
    const dev = await startDevProcess(['--body-limit', '1024']);
    try {
      const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x'.repeat(2000) }] });
      const response = await fetch(`${dev.url}/openai/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      expect(response.status).toBe(413);
      const { error } = (await response.json()) as { error: { message: string } };
      expect(error.message).toBe(
        `the request body of ${Buffer.byteLength(body)} bytes is larger than the sidecar's limit of 1024 bytes; ` +
          'send a smaller request, or raise the limit with tollgate dev --body-limit BYTES',
      );
    } finally {
      await dev.stop();
    }
  });

  it('documents the tool use limit in help', async () => {
    const dev = await tollgate(['dev', '--help']);
    expect(dev.stdout).toContain(
      '  --max-tool-uses N  Use limit the sidecar sets on each charged server tool,\n' +
        '                     such as web search, in a request that sets none, lowered\n' +
        '                     to what the wallet affords; from 1 to 1000 (default: 5)\n',
    );
    const sidecar = await tollgate(['sidecar', '--help']);
    expect(sidecar.stdout).toContain(
      '  TOLLGATE_MAX_TOOL_USES     Use limit set on each charged server tool (web search) in a request that sets none, 1 to 1000 (default 5)\n',
    );
    const operator = await tollgate(['operator', '--help']);
    expect(operator.stdout).toContain(
      '  --sidecar-max-tool-uses N  Use limit the injected sidecars set on each charged server tool, such as web\n' +
        '                             search, in a request that sets none, lowered to what the wallet affords; from 1\n' +
        '                             to 1000 [TOLLGATE_SIDECAR_MAX_TOOL_USES] (default: 5)\n',
    );
  });

  it('rejects an invalid dev tool use limit', async () => {
    for (const text of ['0', '1001', 'many']) {
      const result = await tollgate(['dev', '--max-tool-uses', text]);
      expect(result.code, text).toBe(2);
      expect(result.stderr, text).toBe(`invalid --max-tool-uses "${text}": use a whole number of tool uses from 1 to 1000, such as 10\n`);
    }
  });

  it('applies the dev tool use limit', async () => {
    // The routes carry a key in a Secret manifest, so dev forwards to this simulator, whose stats record the forwarded body.
    const simulator = await startSimulator({ host: '127.0.0.1', port: 0, expectedKey: 'sk-cli-test' });
    const manifests = await mkdtemp(path.join(os.tmpdir(), 'tollgate-cli-tools-'));
    const route = (name: string, protocol: string, model: string) =>
      `apiVersion: tollgate.dev/v1alpha1\nkind: ProviderRoute\nmetadata: { name: ${name} }\nspec:\n  protocol: ${protocol}\n` +
      `  baseURL: ${simulator.url}\n  credentialSecretRef: { name: keys, key: apiKey }\n  models: [${model}]\n` +
      `  costs:\n    ${model}: { input: "1", output: "2", units: { web_search: "0.01" } }\n`;
    await writeFile(
      path.join(manifests, 'resources.yaml'),
      [
        'apiVersion: v1\nkind: Secret\nmetadata: { name: keys }\nstringData: { apiKey: sk-cli-test }\n',
        route('anthropic', 'anthropic', 'claude-sonnet-4-5'),
        route('openai', 'openai', 'gpt-4.1-mini'),
        'apiVersion: tollgate.dev/v1alpha1\nkind: PricePlan\nmetadata: { name: plan }\nspec:\n  currency: USD\n' +
          '  versions:\n    - effectiveFrom: "2026-01-01T00:00:00Z"\n      markupPercent: "20"\n',
        'apiVersion: tollgate.dev/v1alpha1\nkind: Wallet\nmetadata: { name: team }\nspec:\n  currency: USD\n' +
          '  pricePlanRef: { name: plan }\n  grants: [{ id: initial, amount: "100" }]\n',
      ].join('---\n'),
    );
    let dev: DevProcess | undefined;
    try {
      dev = await startDevProcess(['--manifests', manifests, '--max-tool-uses', '12']);
      const { url } = dev;
      const post = (urlPath: string, body: unknown) =>
        fetch(`${url}${urlPath}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

      // 12 is above the sidecar's default of 5, and the wallet affords 12 searches, so the limit in the body comes from the option.
      const message = { model: 'claude-sonnet-4-5', max_tokens: 64, messages: [{ role: 'user', content: 'alpha' }] };
      const tool = { type: 'web_search_20250305', name: 'web_search' };
      const messageResponse = await post('/anthropic/v1/messages', { ...message, tools: [tool] });
      expect(messageResponse.status).toBe(200);
      expect(simulator.stats().lastRequest).toEqual({ ...message, tools: [{ ...tool, max_uses: 12 }] });

      const request = { model: 'gpt-4.1-mini', input: 'alpha', max_output_tokens: 64, tools: [{ type: 'web_search' }] };
      const responsesResponse = await post('/openai/v1/responses', request);
      expect(responsesResponse.status).toBe(200);
      expect(simulator.stats().lastRequest).toEqual({ ...request, max_tool_calls: 12 });
    } finally {
      await dev?.stop();
      await simulator.close();
      await rm(manifests, { recursive: true, force: true });
    }
  });

  it('names its Redis ledger in the banner', async () => {
    const { port } = new URL(redis.url);
    const { stdout } = await runDevUntilListening(['--redis', `${redis.url}/2`]);
    expect(stdout).toContain(`  ledger: Redis at 127.0.0.1:${port} database 2`);
  });

  it('logs when dev stops', async () => {
    const { stdout, code } = await runDevUntilListening([]);
    expect(code).toBe(0);
    // The examples have no Gemini route, so the banner leaves out its variable.
    expect(stdout).toContain('OPENAI_BASE_URL=');
    expect(stdout).not.toContain('GOOGLE_GEMINI_BASE_URL');
    expect(stdout).toMatch(/^Metrics: {2}curl -s http:\/\/127\.0\.0\.1:\d+\/metrics$/m);
    expect(stdout).toContain('  ledger: in memory (lost when dev stops; --redis URL keeps it in Redis)');
    const messages = stdout
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { msg: string; signal?: string });
    // pino writes asynchronously, and at exit the lines still in flight can reach the pipe out of order, so only their presence is checked.
    const stopLines = messages.filter((message) => message.msg === 'stopping' || message.msg === 'stopped').map((message) => [message.msg, message.signal]);
    expect(stopLines).toHaveLength(2);
    expect(stopLines).toEqual(expect.arrayContaining([['stopping', 'SIGTERM'], ['stopped', undefined]]));
  });

  it('prints the Gemini variable for a Gemini route', async () => {
    const manifests = await mkdtemp(path.join(os.tmpdir(), 'tollgate-cli-gemini-'));
    try {
      await cp(path.join(ROOT, 'examples'), manifests, { recursive: true });
      const route = 'apiVersion: tollgate.dev/v1alpha1\nkind: ProviderRoute\nmetadata: { name: gemini }\nspec:\n  protocol: gemini\n' +
        '  baseURL: https://generativelanguage.googleapis.com\n  models: [gemini-2.5-flash]\n' +
        '  costs:\n    gemini-2.5-flash: { input: "0.30", output: "2.50" }\n';
      await writeFile(path.join(manifests, 'gemini.yaml'), route);
      const { stdout } = await runDevUntilListening(['--manifests', manifests]);
      expect(stdout).toMatch(/^ {2}GOOGLE_GEMINI_BASE_URL=http:\/\/127\.0\.0\.1:\d+\/gemini GEMINI_API_KEY=unused$/m);
    } finally {
      await rm(manifests, { recursive: true, force: true });
    }
  });

  /** Starts tollgate dev on a free port with info logs and without provider keys, waits until it listens, and stops it with SIGTERM. */
  async function runDevUntilListening(extraArgs: string[]): Promise<{ stdout: string; code: number | null }> {
    const dev = await startDevProcess(extraArgs, { logLevel: 'info' });
    const code = await dev.stop();
    return { stdout: dev.stdout(), code };
  }

  it('labels dev money metrics by wallet unless told not to', async () => {
    // The simulator's token counts vary with the prompt, so only the series, not their values, are compared.
    // The sidecar creates a series at 0 for each model and wallet it may charge, so only the charged ones count.
    const moneySeries = async (extraArgs: string[]): Promise<string[]> => {
      // Dev serves a route without a provider key from its built-in simulator on loopback, and the helper empties the key variables.
      const dev = await startDevProcess(extraArgs);
      try {
        expect(dev.stdout()).toMatch(/route openai: \S+ \(provider simulator: no key configured\)/);
        const { url } = dev;

        const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }], max_tokens: 8 });
        const response = await fetch(`${url}/openai/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
        expect(response.status, await response.text()).toBe(200);
        const metrics = await (await fetch(`${url}/metrics`)).text();
        return metrics
          .split('\n')
          .filter((line) => line.startsWith('tollgate_charged_total{') || line.startsWith('tollgate_provider_cost_total{'))
          .filter((line) => !line.endsWith(' 0'))
          .map((line) => line.slice(0, line.lastIndexOf(' ')));
      } finally {
        await dev.stop();
      }
    };

    expect(await moneySeries([])).toEqual([
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="demo"}',
      'tollgate_provider_cost_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet="demo"}',
    ]);
    expect(await moneySeries(['--no-wallet-label'])).toEqual([
      'tollgate_charged_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet=""}',
      'tollgate_provider_cost_total{currency="USD",route="openai",model="gpt-4o-mini",namespace="default",wallet=""}',
    ]);
  });

  it('exits when dev cannot reach Redis', async () => {
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as net.AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));

    const result = await tollgate(['dev', '--port', '0', '--redis', `redis://127.0.0.1:${port}`], 60_000);
    expect(result.signal).toBeUndefined();
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`127.0.0.1:${port}`);
  });

  it('runs the demo to a refusal', async () => {
    const result = await tollgate(['demo']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/call \d+ refused: HTTP 402/);
    expect(result.stdout).toContain('Balance equals grants minus recorded charges: yes');
  });
});
