import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { z } from 'zod';
import { API_GROUP, API_GROUP_VERSION, parseIgnoringUnknownFields } from '../api/common.ts';
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

/** A document that the loader skipped because it is not a Tollgate resource or a v1 Secret. */
export interface SkippedDocument {
  /** File and document number, such as "wallets.yaml (document 2)". */
  where: string;
  apiVersion: string | undefined;
  kind: string | undefined;
  name: string | undefined;
}

/** Callback that receives each document the loader skipped. */
export type SkipHandler = (skipped: SkippedDocument) => void;

const SCHEMAS = { ProviderRoute, PricePlan, Wallet } as const;
const KNOWN_KINDS = Object.keys(SCHEMAS).join(', ');

function formatIssues(error: z.ZodError): string {
  return error.issues.map(formatIssue).join('; ');
}

/** Formats one issue as "path: message". An unknown-field message names its full path itself. */
function formatIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') return issue.message;
  return `${issue.path.join('.') || '(root)'}: ${issue.message}`;
}

/**
 * Validates one parsed manifest and adds it to the set. Documents of other API groups are
 * skipped and passed to `onSkip`, so a folder may also hold Deployments and the like. A
 * document in the tollgate.dev group with an unknown kind or version is an error.
 */
export function addManifest(
  set: ResourceSet,
  doc: unknown,
  where: string,
  defaultNamespace = 'default',
  onSkip?: SkipHandler,
  unknownFields: 'reject' | 'ignore' = 'reject',
): void {
  if (doc === null || typeof doc !== 'object') return;
  const { apiVersion, kind, metadata } = doc as { apiVersion?: unknown; kind?: unknown; metadata?: { name?: unknown } };
  const name = typeof metadata?.name === 'string' ? metadata.name : undefined;

  if (apiVersion === 'v1' && kind === 'Secret') {
    set.secrets.push(readSecret(doc as Record<string, unknown>, defaultNamespace));
    return;
  }
  if (typeof apiVersion !== 'string' || !isTollgateGroup(apiVersion)) {
    onSkip?.({ where, apiVersion: typeof apiVersion === 'string' ? apiVersion : undefined, kind: typeof kind === 'string' ? kind : undefined, name });
    return;
  }

  const knownKind = typeof kind === 'string' && Object.hasOwn(SCHEMAS, kind) ? kind : 'resource';
  const label = `${knownKind}${name === undefined ? '' : ` "${name}"`}`;
  const typeProblems = apiTypeProblems(apiVersion, kind);
  if (typeProblems.length > 0) throw new ManifestError(`invalid ${label} in ${where}: ${typeProblems.join('; ')}`);

  const schema = SCHEMAS[kind as keyof typeof SCHEMAS];
  const parsed = unknownFields === 'ignore' ? parseIgnoringUnknownFields(schema, doc) : schema.safeParse(doc);
  if (!parsed.success) {
    throw new ManifestError(`invalid ${label} in ${where}: ${formatIssues(parsed.error)}`);
  }
  const resource = parsed.data;
  resource.metadata.namespace ??= defaultNamespace;
  if (resource.kind === 'ProviderRoute') set.routes.push(resource);
  else if (resource.kind === 'PricePlan') set.plans.push(resource);
  else set.wallets.push(resource);
}

/** True for "tollgate.dev/<any version>", and for a bare "tollgate.dev" that lacks its version. */
function isTollgateGroup(apiVersion: string): boolean {
  return apiVersion === API_GROUP || apiVersion.startsWith(`${API_GROUP}/`);
}

/** Lists what is wrong with the apiVersion and kind of a document in the tollgate.dev group. */
function apiTypeProblems(apiVersion: string, kind: unknown): string[] {
  const problems: string[] = [];
  if (apiVersion !== API_GROUP_VERSION) {
    problems.push(`apiVersion "${apiVersion}" is not served; use "${API_GROUP_VERSION}"`);
  }
  if (typeof kind !== 'string') {
    problems.push(`kind is missing; the known kinds of ${API_GROUP} are ${KNOWN_KINDS}`);
  } else if (!Object.hasOwn(SCHEMAS, kind)) {
    problems.push(`kind "${kind}" is unknown; the known kinds of ${API_GROUP} are ${KNOWN_KINDS}`);
  }
  return problems;
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
export function addYaml(set: ResourceSet, text: string, file: string, onSkip?: SkipHandler): void {
  const docs = parseAllDocuments(text);
  docs.forEach((doc, index) => {
    if (doc.errors.length > 0) {
      throw new ManifestError(`invalid YAML in ${file} (document ${index + 1}): ${doc.errors[0]!.message}`);
    }
    const value = doc.toJS() as unknown;
    const items = isList(value) ? value.items : [value];
    for (const item of items) addManifest(set, item, `${file} (document ${index + 1})`, 'default', onSkip);
  });
}

function isList(value: unknown): value is { items: unknown[] } {
  return typeof value === 'object' && value !== null && Array.isArray((value as { items?: unknown }).items);
}

export function emptyResourceSet(): ResourceSet {
  return { routes: [], plans: [], wallets: [], secrets: [] };
}

/**
 * Reads every .yaml, .yml and .json file of a folder (not recursive), or one file.
 * Throws a ManifestError on the first invalid document.
 */
export async function loadManifests(path: string, onSkip?: SkipHandler): Promise<ResourceSet> {
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

  for (const file of files) addYaml(set, await readFile(file, 'utf8'), file, onSkip);
  return set;
}
