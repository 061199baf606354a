import { describe, expect, it } from 'vitest';
import type { KubeObject } from './kube.ts';
import { evaluatePlan } from './reconcile-plan.ts';

const NOW = Date.parse('2026-06-01T00:00:00Z');

function plan(spec: Record<string, unknown>, name = 'standard'): KubeObject {
  return { apiVersion: 'tollgate.dev/v1alpha1', kind: 'PricePlan', metadata: { name, namespace: 'team' }, spec };
}

function route(name: string, models: string[], costs: Record<string, unknown> = {}): KubeObject {
  return {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'ProviderRoute',
    metadata: { name, namespace: 'team' },
    spec: { protocol: 'openai', baseURL: 'https://api.openai.com', models, costs },
  };
}

const markupPlan = plan({
  currency: 'USD',
  versions: [{ effectiveFrom: '2026-01-01T00:00:00Z', markupPercent: '20', models: { 'gpt-4.1': { input: '2.50', output: '10.00' } } }],
});

describe('evaluatePlan', () => {
  it('is ready when every served model has a price', () => {
    const routes = [route('openai', ['gpt-4.1', 'gpt-4o-mini'], { 'gpt-4o-mini': { input: '0.15', output: '0.60' } })];
    expect(evaluatePlan(markupPlan, routes, NOW)).toEqual({
      ready: { type: 'Ready', status: 'True', reason: 'Valid', message: 'compiled for 1 ProviderRoute(s) in plan currency USD' },
    });
  });

  it('names served models without a price', () => {
    const routes = [route('openai', ['gpt-4.1', 'o4-mini']), route('azure', ['gpt-4o'])];
    const { ready } = evaluatePlan(markupPlan, routes, NOW);
    expect(ready.status).toBe('True');
    expect(ready.message).toBe(
      'compiled for 2 ProviderRoute(s) in plan currency USD; requests for these served models are rejected because the plan has no price for them: openai/o4-mini, azure/gpt-4o',
    );
  });

  it('names models priced below cost', () => {
    const explicit = plan({
      currency: 'USD',
      versions: [{ effectiveFrom: '2026-01-01T00:00:00Z', models: { 'gpt-4.1': { input: '2.50', output: '7.00' }, 'gpt-4o-mini': { input: '0.20', output: '0.80' } } }],
    });
    const routes = [route('openai', ['gpt-4.1', 'gpt-4o-mini'], { 'gpt-4.1': { input: '2.00', output: '8.00' }, 'gpt-4o-mini': { input: '0.15', output: '0.60' } })];
    const { ready, belowCost } = evaluatePlan(explicit, routes, NOW);
    expect(ready.status).toBe('True');
    expect(ready.message).toBe(
      "compiled for 1 ProviderRoute(s) in plan currency USD; 1 model(s) have rates below the provider's cost, so calls made mostly " +
        'of those tokens or units are charged less than they cost: openai/gpt-4.1 (output)',
    );
    expect(belowCost).toBe('openai/gpt-4.1 (output)');
  });

  it('says when the namespace has no routes', () => {
    expect(evaluatePlan(markupPlan, [], NOW).ready.message).toBe('compiled; no ProviderRoute in this namespace yet');
  });

  it('ignores invalid and deleting routes', () => {
    const deleting = { ...route('old', ['x-model']), metadata: { name: 'old', namespace: 'team', deletionTimestamp: '2026-05-01T00:00:00Z' } };
    const invalid = { ...route('bad', []), spec: { protocol: 'smtp' } };
    expect(evaluatePlan(markupPlan, [deleting, invalid], NOW).ready.message).toBe('compiled; no ProviderRoute in this namespace yet');
  });

  it('rejects an invalid spec', () => {
    const { ready } = evaluatePlan(plan({ currency: 'USD', versions: [] }), [], NOW);
    expect(ready).toEqual({
      type: 'Ready',
      status: 'False',
      reason: 'InvalidSpec',
      message: 'invalid PricePlan: spec.versions: Too small: expected array to have >=1 items',
    });
  });

  it('waits for the first version to take effect', () => {
    const future = plan({ currency: 'USD', versions: [{ effectiveFrom: '2026-07-01T00:00:00Z', markupPercent: '10' }] });
    expect(evaluatePlan(future, [], NOW)).toEqual({
      ready: {
        type: 'Ready',
        status: 'False',
        reason: 'NotYetEffective',
        message: 'no price version is in effect yet; the first starts at 2026-07-01T00:00:00.000Z',
      },
      effectiveAtMs: Date.parse('2026-07-01T00:00:00Z'),
    });
  });

  it('prices every model with a default rate', () => {
    const open = plan({
      currency: 'USD',
      versions: [{ effectiveFrom: '2026-01-01T00:00:00Z' }],
      unknownModels: { policy: 'default', defaultRates: { input: '1', output: '2' } },
    });
    expect(evaluatePlan(open, [route('openai', ['anything'])], NOW).ready.message).toBe('compiled for 1 ProviderRoute(s) in plan currency USD');
  });
});
