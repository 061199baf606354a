/**
 * The container image, laid out from the Dockerfile without a container
 * runtime (see support/image.ts): only production dependencies, the folders
 * the Dockerfile copies, files the image's user cannot write, and that user.
 * The operator and the sidecar run from it against a real kube-apiserver with
 * etcd, a real redis-server and the provider simulator, and bill a call that
 * the official openai client makes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisLedger } from '../src/ledger/redis.ts';
import { startSimulator } from '../src/simulator/index.ts';
import { DEFAULT_SIDECAR_COMMAND } from '../operator/webhook/inject.ts';
import { runKubectl, startApiServer, type ApiServer } from './support/apiserver.ts';
import { imageUser, stageImage, type StagedImage } from './support/image.ts';
import { startRedis, type RunningRedis } from './support/redis.ts';

const NAMESPACE = 'team-a';
const KEY = 'sk-image-test';
const WALLET = { namespace: NAMESPACE, name: 'app' };

const RESOURCES = `
apiVersion: v1
kind: Namespace
metadata: { name: ${NAMESPACE} }
---
apiVersion: v1
kind: Namespace
metadata: { name: tollgate-system }
---
apiVersion: v1
kind: Secret
metadata: { name: openai-key, namespace: ${NAMESPACE} }
stringData: { apiKey: ${KEY} }
---
apiVersion: tollgate.dev/v1alpha1
kind: ProviderRoute
metadata: { name: openai, namespace: ${NAMESPACE} }
spec:
  protocol: openai
  baseURL: SIMULATOR_URL
  credentialSecretRef: { name: openai-key, key: apiKey }
  models: [gpt-4o-mini]
---
apiVersion: tollgate.dev/v1alpha1
kind: PricePlan
metadata: { name: standard, namespace: ${NAMESPACE} }
spec:
  currency: USD
  versions:
    - effectiveFrom: "2026-01-01T00:00:00Z"
      models:
        gpt-4o-mini: { input: "0.15", output: "0.60" }
---
apiVersion: tollgate.dev/v1alpha1
kind: Wallet
metadata: { name: app, namespace: ${NAMESPACE} }
spec:
  currency: USD
  pricePlanRef: { name: standard }
  grants: [{ id: start, amount: "5.00" }]
`;

let image: StagedImage;
let apiServer: ApiServer;
let redis: RunningRedis;
let simulator: Awaited<ReturnType<typeof startSimulator>>;
let ledger: RedisLedger;
const children: ChildProcess[] = [];

interface ImageProcess {
  child: ChildProcess;
  exited: Promise<number | null>;
  output(): { stdout: string; stderr: string };
}

/** Starts the image's entrypoint with `args` as the image's user, in its working directory. */
function startFromImage(args: readonly string[], env: Record<string, string> = {}): ImageProcess {
  const child = spawn(image.node, [...image.entrypoint.slice(1), ...args], {
    cwd: image.workdir,
    // The image has no HOME of its user, and nothing in it may depend on one.
    env: { PATH: path.dirname(image.node), HOME: '/nonexistent', LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...imageUser(image),
  });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  return { child, exited, output: () => ({ stdout, stderr }) };
}

function kubectl(args: string[], input?: string): Promise<string> {
  return runKubectl(apiServer, args, input);
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function waitFor<T>(what: string, processes: ImageProcess[], probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    const exited = processes.find((started) => started.child.exitCode !== null);
    if (exited) throw new Error(`a process of the image exited with ${exited.child.exitCode} while waiting for ${what}: ${exited.output().stderr}${exited.output().stdout}`);
    if (Date.now() > deadline) {
      const logs = processes.map((started) => started.output().stderr + started.output().stdout).join('\n');
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; the image's processes wrote:\n${logs}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

beforeAll(async () => {
  // Each is assigned as soon as it starts, so that afterAll stops the others when one fails.
  const started = await Promise.allSettled([
    stageImage().then((staged) => (image = staged)),
    startApiServer().then((server) => (apiServer = server)),
    startRedis().then((server) => (redis = server)),
    startSimulator({ host: '127.0.0.1', port: 0, expectedKey: KEY }).then((server) => (simulator = server)),
  ]);
  const failed = started.find((result) => result.status === 'rejected');
  if (failed) throw failed.reason;
  ledger = new RedisLedger(redis.url);
  await kubectl(['apply', '--server-side', '-f', 'crds/']);
  await kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/wallets.tollgate.dev', 'crd/priceplans.tollgate.dev', 'crd/providerroutes.tollgate.dev']);
  await kubectl(['apply', '-f', '-'], RESOURCES.replace('SIMULATOR_URL', simulator.url));
});

afterAll(async () => {
  for (const child of children) child.kill('SIGKILL');
  await ledger?.quit();
  await simulator?.close();
  await redis?.stop();
  await apiServer?.stop();
  await image?.remove();
});

describe('the container image', () => {
  it('uses the tested Node.js major', () => {
    expect(image.nodeMajor).toBe(Number(process.versions.node.split('.')[0]));
  });

  it('prints usage by default', async () => {
    const started = startFromImage(image.cmd);
    expect(await started.exited).toBe(0);
    expect(started.output().stdout).toContain('Usage: tollgate <command> [options]');
    expect(started.output().stderr).toBe('');
  });

  it('bills a call from its operator and sidecar', async () => {
    // The cluster would provide these: a kubeconfig in place of the service account, and the mounted Secret.
    const kubeconfig = path.join(image.root, 'var', 'run', 'kubeconfig.yaml');
    const credentials = path.join(image.root, 'var', 'run', 'tollgate', 'credentials');
    await mkdir(path.join(credentials, 'openai-key'), { recursive: true, mode: 0o755 });
    await writeFile(path.join(credentials, 'openai-key', 'apiKey'), KEY, { mode: 0o644 });
    await writeFile(kubeconfig, await kubectl(['config', 'view', '--raw']), { mode: 0o644 });

    const [operatorPort, port, adminPort] = [await freePort(), await freePort(), await freePort()];
    const operator = startFromImage(
      ['operator', '--kubeconfig', kubeconfig, '--redis', redis.url, '--no-webhook', '--http-listen', `127.0.0.1:${operatorPort}`, '--namespace', 'tollgate-system'],
      { TOLLGATE_POD_NAME: 'image-test' },
    );
    await waitFor('the grant in the ledger', [operator], async () => ((await ledger.state(WALLET)).granted === 5_000_000_000n ? true : undefined));

    const [command, ...commandArgs] = DEFAULT_SIDECAR_COMMAND;
    expect([command, ...commandArgs.slice(0, 1)]).toEqual(image.entrypoint);
    const sidecar = startFromImage(commandArgs.slice(1), {
      TOLLGATE_NAMESPACE: NAMESPACE,
      TOLLGATE_WALLET: 'app',
      TOLLGATE_CONFIG_URL: `http://127.0.0.1:${operatorPort}`,
      TOLLGATE_REDIS_URL: redis.url,
      TOLLGATE_CREDENTIALS_DIR: credentials,
      TOLLGATE_LISTEN: `127.0.0.1:${port}`,
      TOLLGATE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
    });
    await waitFor('the sidecar to be ready', [operator, sidecar], async () => ((await fetch(`http://127.0.0.1:${adminPort}/readyz`)).ok ? true : undefined));

    // 20 input tokens at 0.15 and 200 output tokens at 0.60 per million: 0.000003 + 0.00012 USD. The
    // usage stays within the hold (the body's bytes bound the prompt), so the sidecar has nothing to warn about.
    const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/openai/v1`, apiKey: 'placeholder', maxRetries: 0 });
    const usage = { prompt_tokens: 20, completion_tokens: 200, total_tokens: 220 };
    const { response } = await client.chat.completions
      .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'from the image' }], max_tokens: 300 }, { headers: { 'x-sim-usage': JSON.stringify(usage) } })
      .withResponse();
    expect(response.headers.get('x-tollgate-charged')).toBe('0.000123');
    expect((await ledger.state(WALLET)).spent).toBe(123_000n);

    sidecar.child.kill('SIGTERM');
    operator.child.kill('SIGTERM');
    expect(await sidecar.exited).toBe(0);
    expect(await operator.exited).toBe(0);
    // At LOG_LEVEL=warn a clean run writes nothing, so a failed write to the read-only files would show here.
    expect(sidecar.output()).toEqual({ stdout: '', stderr: '' });
    expect(operator.output()).toEqual({ stdout: '', stderr: '' });
  });
});
