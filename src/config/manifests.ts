import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { z } from 'zod';
import { API_GROUP_VERSION } from '../api/common.ts';
import { PricePlan } from '../api/price-plan.ts';
import { ProviderRoute } from '../api/provider-route.ts';
import { Wallet } from '../api/wallet.ts';

/** A Kubernetes Secret as far as Tollgate reads it: string data by key. */
export interface SecretData {
  namespace: string;
  name: string;
  data: Record<string, string>;
}

export interface ResourceSet {
  routes: ProviderRoute[];
  plans: PricePlan[];
  wallets: Wallet[];
  secrets: SecretData[];
}

export class ManifestError extends Error {
  override readonly name = 'ManifestError';
}

const SCHEMAS = { ProviderRoute, PricePlan, Wallet } as const;

function formatIssues(error: z.ZodError): string {
  return error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`).join('; ');
}

/**
 * Validates one parsed manifest and adds it to the set. Unrelated kinds are
 * skipped, so a folder may also hold Deployments and the like.
 */
export function addManifest(set: ResourceSet, doc: unknown, where: string, defaultNamespace = 'default'): void {
  if (doc === null || typeof doc !== 'object') return;
  const { apiVersion, kind } = doc as { apiVersion?: unknown; kind?: unknown };

  if (apiVersion === 'v1' && kind === 'Secret') {
    set.secrets.push(readSecret(doc as Record<string, unknown>, defaultNamespace));
    return;
  }
  if (apiVersion !== API_GROUP_VERSION || typeof kind !== 'string' || !(kind in SCHEMAS)) return;

  const parsed = SCHEMAS[kind as keyof typeof SCHEMAS].safeParse(doc);
  if (!parsed.success) {
    throw new ManifestError(`invalid ${kind} in ${where}: ${formatIssues(parsed.error)}`);
  }
  const resource = parsed.data;
  resource.metadata.namespace ??= defaultNamespace;
  if (resource.kind === 'ProviderRoute') set.routes.push(resource);
  else if (resource.kind === 'PricePlan') set.plans.push(resource);
  else set.wallets.push(resource);
}

function readSecret(doc: Record<string, unknown>, defaultNamespace: string): SecretData {
  const metadata = (doc.metadata ?? {}) as { name?: string; namespace?: string };
  const data: Record<string, string> = {};
  for (const [key, value] of Object.entries((doc.data ?? {}) as Record<string, string>)) {
    data[key] = Buffer.from(value, 'base64').toString('utf8');
  }
  Object.assign(data, (doc.stringData ?? {}) as Record<string, string>);
  return { namespace: metadata.namespace ?? defaultNamespace, name: metadata.name ?? '', data };
}

/** Parses every YAML document of one file's text into the set. */
export function addYaml(set: ResourceSet, text: string, file: string): void {
  const docs = parseAllDocuments(text);
  docs.forEach((doc, index) => {
    if (doc.errors.length > 0) {
      throw new ManifestError(`invalid YAML in ${file} (document ${index + 1}): ${doc.errors[0]!.message}`);
    }
    const value = doc.toJS() as unknown;
    const items = isList(value) ? value.items : [value];
    for (const item of items) addManifest(set, item, `${file} (document ${index + 1})`);
  });
}

function isList(value: unknown): value is { items: unknown[] } {
  return typeof value === 'object' && value !== null && Array.isArray((value as { items?: unknown }).items);
}

export function emptyResourceSet(): ResourceSet {
  return { routes: [], plans: [], wallets: [], secrets: [] };
}

/** Reads every .yaml, .yml and .json file of a folder (not recursive), or one file. */
export async function loadManifests(path: string): Promise<ResourceSet> {
  const set = emptyResourceSet();
  const info = await stat(path).catch((cause: unknown) => {
    throw new ManifestError(`cannot read manifests from "${path}": no such file or folder`, { cause });
  });
  const files = info.isDirectory()
    ? (await readdir(path))
        .filter((name) => /\.(ya?ml|json)$/.test(name))
        .sort()
        .map((name) => join(path, name))
    : [path];

  for (const file of files) addYaml(set, await readFile(file, 'utf8'), file);
  return set;
}
