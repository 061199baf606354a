import { describe, expect, it } from 'vitest';
import type { ProviderRoute } from '../src/api/provider-route.ts';
import { parseResource, type KubeObject } from './kube.ts';
import { checkCredential, compareRouteAge, pathPrefixOf, prefixOwner, secretForbiddenCondition } from './reconcile-route.ts';

function routeObject(name: string, created: string, spec: Record<string, unknown> = {}): KubeObject {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'ProviderRoute',
    metadata: { name, namespace: 'team', creationTimestamp: created },
    spec: { protocol: 'openai', baseURL: 'https://api.openai.com', models: ['gpt-4o-mini'], ...spec },
  };
}

function parsed(object: KubeObject): ProviderRoute {
  const result = parseResource('ProviderRoute', object);
  if (!result.ok) throw new Error(result.message);
  return result.value;
}

describe('pathPrefixOf', () => {
  it('defaults to the route name', () => {
    expect(pathPrefixOf(parsed(routeObject('openai', '2026-01-01T00:00:00Z')))).toBe('/openai');
    expect(pathPrefixOf(parsed(routeObject('primary', '2026-01-01T00:00:00Z', { pathPrefix: '/openai' })))).toBe('/openai');
  });
});

describe('prefixOwner', () => {
  const older = routeObject('openai', '2026-01-01T00:00:00Z');
  const newer = routeObject('backup', '2026-02-01T00:00:00Z', { pathPrefix: '/openai' });

  it('gives a shared prefix to the older route', () => {
    expect(prefixOwner(older, '/openai', [newer, older])).toBeUndefined();
    expect(prefixOwner(newer, '/openai', [newer, older])).toBe('openai');
  });

  it('breaks a tie of creation times by name', () => {
    const a = routeObject('a', '2026-01-01T00:00:00Z', { pathPrefix: '/x' });
    const b = routeObject('b', '2026-01-01T00:00:00Z', { pathPrefix: '/x' });
    expect([b, a].sort(compareRouteAge).map((route) => route.metadata.name)).toEqual(['a', 'b']);
    expect(prefixOwner(b, '/x', [a, b])).toBe('a');
  });

  it('ignores deleting and invalid routes', () => {
    const deleting = { ...older, metadata: { ...older.metadata, deletionTimestamp: '2026-03-01T00:00:00Z' } };
    const invalid = routeObject('broken', '2025-01-01T00:00:00Z', { pathPrefix: '/openai', protocol: 'smtp' });
    expect(prefixOwner(newer, '/openai', [deleting, invalid, newer])).toBeUndefined();
  });
});

describe('checkCredential', () => {
  const route = parsed(routeObject('openai', '2026-01-01T00:00:00Z', { credentialSecretRef: { name: 'openai-key' } }));

  it('accepts a Secret with the key in data or stringData', () => {
    expect(checkCredential(route, { data: { apiKey: 'c2stdGVzdA==' } })).toBeUndefined();
    expect(checkCredential(route, { stringData: { apiKey: 'sk-test' } })).toBeUndefined();
  });

  it('reports a missing Secret with its name and key', () => {
    expect(checkCredential(route, undefined)).toEqual({
      type: 'Ready',
      status: 'False',
      reason: 'SecretMissing',
      message: 'Secret "openai-key" (key "apiKey") not found in namespace "team"; create it with the provider credential under key "apiKey"',
    });
  });

  it('reports a missing key and lists the keys present', () => {
    expect(checkCredential(route, { data: { token: 'eA==', other: 'eQ==' } })?.message).toBe(
      'Secret "openai-key" in namespace "team" has no key "apiKey" (keys: other, token); add it or fix spec.credentialSecretRef.key',
    );
    expect(checkCredential(route, {})?.message).toContain('(keys: none)');
  });

  it('accepts a route without a credential', () => {
    expect(checkCredential(parsed(routeObject('local', '2026-01-01T00:00:00Z')), undefined)).toBeUndefined();
  });
});

describe('secretForbiddenCondition', () => {
  it('names the namespace, the API error and both fixes', () => {
    const detail = 'HTTP 403: secrets "openai-key" is forbidden: User "system:serviceaccount:tollgate-system:tollgate" cannot get resource "secrets"';
    expect(secretForbiddenCondition('team-b', 'openai-key', detail)).toEqual({
      type: 'Ready',
      status: 'False',
      reason: 'SecretForbidden',
      message:
        'the operator may not read Secret "openai-key" in namespace "team-b" (' + detail + '); ' +
        'add "team-b" to the Helm value rbac.secretNamespaces, ' +
        'or grant the operator\'s service account get, list and watch on Secrets in namespace "team-b"',
    });
  });
});
