import { describe, expect, it } from 'vitest';
import { buildResourceSchema, RESOURCE_KINDS } from './crd.ts';
import { DEPLOYMENT_MESSAGES, ProviderRoute } from './provider-route.ts';

function route(spec: Record<string, unknown>): unknown {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'ProviderRoute',
    metadata: { name: 'azure', namespace: 'team-a' },
    spec: { protocol: 'azure-openai', baseURL: 'https://shop.openai.azure.com', models: ['gpt-4o', 'text-embedding-3-small'], ...spec },
  };
}

/** Returns the issues of an invalid route as "path: message" lines. */
function issuesOf(value: unknown): string[] {
  const parsed = ProviderRoute.safeParse(value);
  if (parsed.success) throw new Error('the route parsed, but an error was expected');
  return parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
}

describe('ProviderRoute deployments', () => {
  it('parses an azure route with deployments', () => {
    const parsed = ProviderRoute.parse(
      route({
        deployments: [
          { name: 'prod-4o', model: 'gpt-4o' },
          { name: 'embed_v3.small', model: 'text-embedding-3-small' },
        ],
      }),
    );
    expect(parsed.spec.deployments).toEqual([
      { name: 'prod-4o', model: 'gpt-4o' },
      { name: 'embed_v3.small', model: 'text-embedding-3-small' },
    ]);
  });

  it('accepts a dated snapshot of a listed model', () => {
    const parsed = ProviderRoute.safeParse(route({ deployments: [{ name: 'pinned', model: 'gpt-4o-2024-08-06' }] }));
    expect(parsed.success).toBe(true);
  });

  it('requires deployments for azure-openai', () => {
    expect(issuesOf(route({}))).toEqual([`spec.deployments: ${DEPLOYMENT_MESSAGES.required}`]);
    expect(issuesOf(route({ deployments: [] }))).toEqual([`spec.deployments: ${DEPLOYMENT_MESSAGES.required}`]);
    expect(DEPLOYMENT_MESSAGES.required).toBe(
      'protocol "azure-openai" needs at least one deployment: list each deployment with the base model it runs, such as {name: prod-gpt-4o, model: gpt-4o}',
    );
  });

  it('forbids deployments for other protocols', () => {
    for (const protocol of ['openai', 'anthropic', 'gemini', 'openai-compatible']) {
      const issues = issuesOf(route({ protocol, deployments: [{ name: 'prod-4o', model: 'gpt-4o' }] }));
      expect(issues).toEqual([
        'spec.deployments: only protocol "azure-openai" uses deployments; remove the field, because the other protocols name the model in each request',
      ]);
    }
  });

  it('allows other protocols an empty list', () => {
    expect(ProviderRoute.safeParse(route({ protocol: 'openai', deployments: [] })).success).toBe(true);
    expect(ProviderRoute.safeParse(route({ protocol: 'openai' })).success).toBe(true);
  });

  it('rejects duplicate deployment names', () => {
    const deployments = [
      { name: 'prod', model: 'gpt-4o' },
      { name: 'prod', model: 'text-embedding-3-small' },
    ];
    expect(issuesOf(route({ deployments }))).toEqual(['spec.deployments: deployment names must be unique within a route']);
  });

  it('rejects a model that spec.models does not serve', () => {
    for (const model of ['gpt-4o-mini', 'gpt-4.1', 'gpt-4o-2024-08']) {
      const issues = issuesOf(route({ deployments: [{ name: 'prod', model }] }));
      expect(issues).toEqual([
        'spec.deployments: every deployment\'s model must be listed in spec.models, exactly or as a dated snapshot "<id>-YYYY-MM-DD" of a listed id',
      ]);
    }
  });

  it('rejects an invalid deployment name', () => {
    for (const name of ['', '-prod', 'prod/4o', 'x'.repeat(65)]) {
      const issues = issuesOf(route({ deployments: [{ name, model: 'gpt-4o' }] }));
      expect(issues).toEqual([
        'spec.deployments.0.name: must be an Azure deployment name: 1 to 64 letters, digits, ".", "_" or "-", starting with a letter or digit',
      ]);
    }
  });
});

describe('ProviderRoute CRD deployment rules', () => {
  const kind = RESOURCE_KINDS.find((resource) => resource.kind === 'ProviderRoute')!;
  const spec = buildResourceSchema(kind).properties!['spec']!;

  it('states the rules as CEL on spec', () => {
    expect(spec['x-kubernetes-validations']).toEqual([
      {
        rule: "self.protocol != 'azure-openai' || (has(self.deployments) && size(self.deployments) > 0)",
        message: DEPLOYMENT_MESSAGES.required,
        fieldPath: '.deployments',
        reason: 'FieldValueRequired',
      },
      {
        rule: "self.protocol == 'azure-openai' || !has(self.deployments) || size(self.deployments) == 0",
        message: DEPLOYMENT_MESSAGES.forbidden,
        fieldPath: '.deployments',
        reason: 'FieldValueForbidden',
      },
      {
        rule:
          "!has(self.deployments) || self.deployments.all(d, d.model in self.models || self.models.exists(m, d.model.startsWith(m + '-') && " +
          "d.model.substring(size(m) + 1).matches(r'^[0-9]{4}-[0-9]{2}-[0-9]{2}$')))",
        message: DEPLOYMENT_MESSAGES.unserved,
        fieldPath: '.deployments',
      },
    ]);
  });

  it('keys deployments by name', () => {
    const deployments = spec.properties!['deployments']!;
    expect(deployments['x-kubernetes-list-type']).toBe('map');
    expect(deployments['x-kubernetes-list-map-keys']).toEqual(['name']);
    expect(deployments.maxItems).toBe(32);
    expect(deployments.items?.required).toEqual(['name', 'model']);
  });
});
