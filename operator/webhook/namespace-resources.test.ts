// The parsing and timeout paths of the lookup, with a stand-in for CustomObjectsApi.
// The listing itself runs against a real API server in test/webhook.test.ts.

import type { CustomObjectsApi } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { loadNamespaceResources, ResourceLookupError } from './namespace-resources.ts';

function clientsListing(items: Record<string, unknown[]>, delayMs = 0) {
  const customObjects = {
    listNamespacedCustomObject: async ({ plural }: { plural: string }) => {
      if (delayMs > 0) {
        await new Promise((resolve) => setTimeout(resolve, delayMs));
      }
      return { items: items[plural] ?? [] };
    },
  } as unknown as CustomObjectsApi;
  return { custom: customObjects };
}

const VALID_ROUTE = {
  apiVersion: 'tollgate.dev/v1alpha1',
  kind: 'ProviderRoute',
  metadata: { name: 'openai', namespace: 'shop', managedFields: [{ manager: 'kubectl' }] },
  spec: { protocol: 'openai', baseURL: 'https://api.openai.com', models: ['gpt-4o-mini'] },
};

describe('loadNamespaceResources', () => {
  it('parses routes and wallet references', async () => {
    const clients = clientsListing({
      providerroutes: [VALID_ROUTE],
      wallets: [{ metadata: { name: 'team-a', annotations: { 'tollgate.dev/default': 'true' } } }, { metadata: {} }],
    });
    const resources = await loadNamespaceResources(clients, 'shop', 1_000);

    expect(resources.routes.map((route) => [route.metadata.name, route.spec.protocol, route.spec.timeouts.requestSeconds])).toEqual([
      ['openai', 'openai', 600],
    ]);
    expect(resources.wallets).toEqual([{ name: 'team-a', annotations: { 'tollgate.dev/default': 'true' } }]);
    expect(resources.invalidRoutes).toEqual([]);
  });

  it('leaves out invalid routes with a reason', async () => {
    const invalid = { ...VALID_ROUTE, metadata: { name: 'broken' }, spec: { ...VALID_ROUTE.spec, baseURL: 'not a url' } };
    const resources = await loadNamespaceResources(clientsListing({ providerroutes: [invalid, VALID_ROUTE] }), 'shop', 1_000);

    expect(resources.routes.map((route) => route.metadata.name)).toEqual(['openai']);
    expect(resources.invalidRoutes).toEqual([
      'ProviderRoute "broken" is invalid and was ignored: spec.baseURL: must be an absolute http(s) URL such as "https://api.openai.com"',
    ]);
  });

  it('sorts routes by name', async () => {
    const second = { ...VALID_ROUTE, metadata: { name: 'b-route' } };
    const first = { ...VALID_ROUTE, metadata: { name: 'a-route' } };
    const resources = await loadNamespaceResources(clientsListing({ providerroutes: [VALID_ROUTE, second, first] }), 'shop', 1_000);

    expect(resources.routes.map((route) => route.metadata.name)).toEqual(['a-route', 'b-route', 'openai']);
  });

  it('times out a slow listing', async () => {
    const lookup = loadNamespaceResources(clientsListing({}, 1_000), 'shop', 20);

    await expect(lookup).rejects.toBeInstanceOf(ResourceLookupError);
    await expect(lookup).rejects.toThrow('timed out after 20 ms listing ProviderRoutes in namespace "shop"');
  });
});
