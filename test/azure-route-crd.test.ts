// The deployment rules of the generated ProviderRoute CRD on a real kube-apiserver:
// an azure-openai route needs deployments, other protocols must not have them,
// names are unique, and each base model must be served by spec.models.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify as stringifyYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findTestBinary, startApiServer, type ApiServer } from './support/apiserver.ts';

const REPOSITORY_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const NAMESPACE = 'azure-routes';

let apiServer: ApiServer;
let kubectlBinary: string;
let cacheDir: string;

function kubectl(args: string[], input = ''): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const fullArgs = ['--kubeconfig', apiServer.kubeconfigPath, '--cache-dir', cacheDir, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(kubectlBinary, fullArgs, { cwd: REPOSITORY_ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input);
  });
}

async function kubectlOk(args: string[], input?: string): Promise<string> {
  const result = await kubectl(args, input);
  if (result.code !== 0) throw new Error(`kubectl ${args.join(' ')} exited with ${result.code}:\n${result.stderr}${result.stdout}`);
  return result.stdout;
}

function route(name: string, spec: Record<string, unknown>): string {
  return stringifyYaml({
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'ProviderRoute',
    metadata: { name, namespace: NAMESPACE },
    spec: { protocol: 'azure-openai', baseURL: 'https://shop.openai.azure.com', models: ['gpt-4o', 'gpt-4o-mini'], ...spec },
  });
}

beforeAll(async () => {
  kubectlBinary = await findTestBinary('kubectl');
  apiServer = await startApiServer();
  cacheDir = await mkdtemp(path.join(os.tmpdir(), 'tollgate-kubectl-cache-'));

  await kubectlOk(['apply', '--server-side', '-f', 'crds/tollgate.dev_providerroutes.yaml']);
  await kubectlOk(['wait', '--for=condition=Established', '--timeout=60s', 'crd/providerroutes.tollgate.dev']);
  await kubectlOk(['create', 'namespace', NAMESPACE]);
}, 180_000);

afterAll(async () => {
  await apiServer?.stop();
  if (cacheDir !== undefined) await rm(cacheDir, { recursive: true, force: true });
}, 30_000);

describe('ProviderRoute deployments on a real API server', () => {
  it('accepts an azure route with deployments', async () => {
    const manifest = route('azure', {
      deployments: [
        { name: 'prod-4o', model: 'gpt-4o' },
        { name: 'pinned-mini', model: 'gpt-4o-mini-2024-07-18' },
      ],
    });
    await kubectlOk(['apply', '-f', '-'], manifest);

    const stored = JSON.parse(await kubectlOk(['get', '-n', NAMESPACE, 'providerroute', 'azure', '-o', 'json'])) as { spec: { deployments: unknown } };
    expect(stored.spec.deployments).toEqual([
      { name: 'prod-4o', model: 'gpt-4o' },
      { name: 'pinned-mini', model: 'gpt-4o-mini-2024-07-18' },
    ]);
  });

  it('accepts the largest route within the rule cost budget', async () => {
    // Each deployment names a dated snapshot of the last model, so every rule check walks the whole list.
    // Listed ids of 189 characters leave room for the 11-character date suffix within 200.
    const models = Array.from({ length: 256 }, (_, index) => `m${String(index).padStart(3, '0')}-`.padEnd(189, 'x'));
    const deployments = Array.from({ length: 32 }, (_, index) => ({ name: `d${String(index).padStart(3, '0')}`, model: `${models[255]}-2025-01-31` }));
    await kubectlOk(['apply', '-f', '-'], route('largest', { models, deployments }));
  });

  const rejected: Array<{ name: string; spec: Record<string, unknown>; fragment: string }> = [
    {
      name: 'an azure route without deployments',
      spec: {},
      fragment:
        'spec.deployments: Required value: protocol "azure-openai" needs at least one deployment: list each deployment with the base model it runs, such as {name: prod-gpt-4o, model: gpt-4o}',
    },
    {
      name: 'an azure route with an empty list',
      spec: { deployments: [] },
      fragment: 'spec.deployments: Required value: protocol "azure-openai" needs at least one deployment',
    },
    {
      name: 'deployments on an openai route',
      spec: { protocol: 'openai', deployments: [{ name: 'prod-4o', model: 'gpt-4o' }] },
      fragment:
        'spec.deployments: Forbidden: only protocol "azure-openai" uses deployments; remove the field, because the other protocols name the model in each request',
    },
    {
      name: 'a deployment model that spec.models does not serve',
      spec: { deployments: [{ name: 'prod-41', model: 'gpt-4.1' }] },
      fragment:
        'spec.deployments: Invalid value: every deployment\'s model must be listed in spec.models, exactly or as a dated snapshot "<id>-YYYY-MM-DD" of a listed id',
    },
    {
      name: 'a model that only starts like a listed one',
      spec: { deployments: [{ name: 'prod', model: 'gpt-4o-audio' }] },
      fragment: "spec.deployments: Invalid value: every deployment's model must be listed in spec.models",
    },
    {
      name: 'a duplicate deployment name',
      spec: {
        deployments: [
          { name: 'prod', model: 'gpt-4o' },
          { name: 'prod', model: 'gpt-4o-mini' },
        ],
      },
      fragment: 'spec.deployments[1]: Duplicate value: {"name":"prod"}',
    },
    {
      name: 'an invalid deployment name',
      spec: { deployments: [{ name: 'prod/4o', model: 'gpt-4o' }] },
      fragment: 'spec.deployments[0].name: Invalid value: "prod/4o": spec.deployments[0].name in body should match',
    },
  ];

  for (const testCase of rejected) {
    it(`rejects ${testCase.name}`, async () => {
      const name = testCase.name.replaceAll(' ', '-').replaceAll(/[^a-z0-9-]/g, '');
      const result = await kubectl(['apply', '-f', '-'], route(name, testCase.spec));
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(testCase.fragment);

      const lookup = await kubectl(['get', '-n', NAMESPACE, 'providerroute', name]);
      expect(lookup.stderr).toContain('NotFound');
    });
  }
});
