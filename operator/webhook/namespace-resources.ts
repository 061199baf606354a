// The Tollgate resources of one namespace that injection needs: ProviderRoutes (for
// credential Secrets and route prefixes) and Wallets (for the default wallet).

import { API_GROUP, API_VERSION, parseIgnoringUnknownFields } from '../../src/api/common.ts';
import { ProviderRoute } from '../../src/api/provider-route.ts';
import { describeKubeError, statusCodeOf, type KubeClients } from '../kube.ts';
import { compareStrings, type WalletRef } from './inject.ts';

export interface NamespaceResources {
  routes: ProviderRoute[];
  wallets: WalletRef[];
  /** One line per ProviderRoute that failed validation and was left out. */
  invalidRoutes: string[];
}

/** A failed lookup. The message names the resource, the namespace and the API server's error. */
export class ResourceLookupError extends Error {
  override readonly name = 'ResourceLookupError';
}

interface ListedObject {
  metadata?: { name?: string; annotations?: Record<string, string> };
}

/**
 * Lists the ProviderRoutes and Wallets of a namespace. Throws ResourceLookupError when
 * either list fails or takes longer than `timeoutMs`, so that the webhook can respond
 * with a clear message before the API server's own webhook timeout expires.
 */
export async function loadNamespaceResources(
  clients: Pick<KubeClients, 'custom'>,
  namespace: string,
  timeoutMs: number,
): Promise<NamespaceResources> {
  const [routeItems, walletItems] = await Promise.all([
    withTimeout(listCustomObjects(clients, namespace, 'providerroutes', 'ProviderRoutes'), timeoutMs, `listing ProviderRoutes in namespace "${namespace}"`),
    withTimeout(listCustomObjects(clients, namespace, 'wallets', 'Wallets'), timeoutMs, `listing Wallets in namespace "${namespace}"`),
  ]);

  const routes: ProviderRoute[] = [];
  const invalidRoutes: string[] = [];
  for (const item of routeItems) {
    const parsed = parseIgnoringUnknownFields(ProviderRoute, item);
    if (parsed.success) {
      routes.push(parsed.data);
    } else {
      const issues = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`).join('; ');
      invalidRoutes.push(`ProviderRoute "${(item as ListedObject).metadata?.name ?? '(no name)'}" is invalid and was ignored: ${issues}`);
    }
  }
  routes.sort((left, right) => compareStrings(left.metadata.name, right.metadata.name));

  const wallets = walletItems.flatMap((item): WalletRef[] => {
    const metadata = (item as ListedObject).metadata;
    return metadata?.name === undefined ? [] : [{ name: metadata.name, annotations: metadata.annotations }];
  });
  return { routes, wallets, invalidRoutes };
}

async function listCustomObjects(
  clients: Pick<KubeClients, 'custom'>,
  namespace: string,
  plural: string,
  kindPlural: string,
): Promise<unknown[]> {
  try {
    const list = (await clients.custom.listNamespacedCustomObject({ group: API_GROUP, version: API_VERSION, namespace, plural })) as {
      items?: unknown[];
    };
    return list.items ?? [];
  } catch (error) {
    const status = statusCodeOf(error);
    throw new ResourceLookupError(
      `could not list ${kindPlural} (${plural}.${API_GROUP}) in namespace "${namespace}": ${describeKubeError(error)}` +
        (status === undefined ? '' : ` (HTTP ${status})`),
      { cause: error },
    );
  }
}

/** Rejects with ResourceLookupError when `promise` does not settle within `timeoutMs`; the request itself keeps running. */
function withTimeout<T>(promise: Promise<T>, timeoutMs: number, operation: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new ResourceLookupError(`timed out after ${timeoutMs} ms ${operation}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
