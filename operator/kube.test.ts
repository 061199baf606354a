import { ApiException } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import {
  buildConditions,
  describeKubeError,
  isConflict,
  isNotFound,
  missingNamespaceOf,
  objectKey,
  parseObjectKey,
  parseResource,
  resourcePath,
  sameJson,
  statusCodeOf,
  type KubeObject,
} from './kube.ts';

describe('object keys', () => {
  it('round-trips Kind/namespace/name', () => {
    const key = objectKey('Wallet', 'team-a', 'acme');
    expect(key).toBe('Wallet/team-a/acme');
    expect(parseObjectKey(key)).toEqual({ kind: 'Wallet', namespace: 'team-a', name: 'acme' });
  });

  it('rejects malformed keys', () => {
    expect(() => parseObjectKey('Wallet/acme')).toThrow('invalid queue key "Wallet/acme": expected "Kind/namespace/name"');
    expect(() => parseObjectKey('Wallet//acme')).toThrow('invalid queue key');
  });
});

describe('resourcePath', () => {
  it('builds cluster-wide and namespaced paths', () => {
    expect(resourcePath('Wallet')).toBe('/apis/tollgate.dev/v1alpha1/wallets');
    expect(resourcePath('PricePlan', 'team-a')).toBe('/apis/tollgate.dev/v1alpha1/namespaces/team-a/priceplans');
    expect(resourcePath('ProviderRoute', 'b')).toBe('/apis/tollgate.dev/v1alpha1/namespaces/b/providerroutes');
  });
});

describe('API errors', () => {
  const notFound = new ApiException(404, 'Not Found', JSON.stringify({ kind: 'Status', message: 'wallets.tollgate.dev "acme" not found' }), {});

  it('reads the status code of client and watch errors', () => {
    expect(statusCodeOf(notFound)).toBe(404);
    expect(statusCodeOf(Object.assign(new Error('Gone'), { statusCode: 410 }))).toBe(410);
    expect(statusCodeOf(new Error('socket hang up'))).toBeUndefined();
    expect(statusCodeOf('text')).toBeUndefined();
    expect(isNotFound(notFound)).toBe(true);
    expect(isConflict(new ApiException(409, 'Conflict', {}, {}))).toBe(true);
  });

  it('describes an error by its Status message', () => {
    expect(describeKubeError(notFound)).toBe('HTTP 404: wallets.tollgate.dev "acme" not found');
    expect(describeKubeError(new ApiException(409, 'Conflict', { message: 'the object has been modified' }, {}))).toBe(
      'HTTP 409: the object has been modified',
    );
    expect(describeKubeError(new Error('connect ECONNREFUSED 127.0.0.1:6443'))).toBe('connect ECONNREFUSED 127.0.0.1:6443');
  });

  it('finds a missing namespace only in its own 404', () => {
    const status = { kind: 'Status', message: 'namespaces "tollgate-system" not found', reason: 'NotFound', details: { name: 'tollgate-system', kind: 'namespaces' }, code: 404 };
    expect(missingNamespaceOf(new ApiException(404, 'Not Found', JSON.stringify(status), {}))).toBe('tollgate-system');
    expect(missingNamespaceOf(new ApiException(404, 'Not Found', status, {}))).toBe('tollgate-system');
    expect(missingNamespaceOf(notFound)).toBeUndefined();
    expect(missingNamespaceOf(new ApiException(403, 'Forbidden', JSON.stringify(status), {}))).toBeUndefined();
    expect(missingNamespaceOf(new ApiException(404, 'Not Found', '<html>not found</html>', {}))).toBeUndefined();
    expect(missingNamespaceOf(new Error('socket hang up'))).toBeUndefined();
  });
});

describe('buildConditions', () => {
  const earlier = '2026-01-01T00:00:00Z';
  const now = '2026-01-02T00:00:00Z';

  it('keeps the transition time of an unchanged status', () => {
    const previous = [{ type: 'Ready', status: 'True' as const, reason: 'Valid', message: 'old', lastTransitionTime: earlier }];
    const built = buildConditions(previous, [{ type: 'Ready', status: 'True', reason: 'Valid', message: 'new' }], 3, now);
    expect(built).toEqual([{ type: 'Ready', status: 'True', reason: 'Valid', message: 'new', lastTransitionTime: earlier, observedGeneration: 3 }]);
  });

  it('stamps a changed or new condition with now', () => {
    const previous = [{ type: 'Ready', status: 'True' as const, reason: 'Valid', message: 'm', lastTransitionTime: earlier }];
    const built = buildConditions(
      previous,
      [
        { type: 'Ready', status: 'False', reason: 'SecretMissing', message: 'm' },
        { type: 'LowBalance', status: 'False', reason: 'NoThreshold', message: 'm' },
      ],
      undefined,
      now,
    );
    expect(built.map((condition) => condition.lastTransitionTime)).toEqual([now, now]);
    expect(built[0]).not.toHaveProperty('observedGeneration');
  });
});

describe('sameJson', () => {
  it('ignores key order and undefined fields', () => {
    expect(sameJson({ a: 1, b: { c: [1, 2], d: 'x' } }, { b: { d: 'x', c: [1, 2] }, a: 1, e: undefined })).toBe(true);
  });

  it('sees changed values and array order', () => {
    expect(sameJson({ a: [1, 2] }, { a: [2, 1] })).toBe(false);
    expect(sameJson({ a: '1.00' }, { a: '1.0' })).toBe(false);
    expect(sameJson(undefined, {})).toBe(false);
  });
});

describe('parseResource', () => {
  const wallet: KubeObject = {
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'Wallet',
    metadata: { name: 'acme', namespace: 'team' },
    spec: { currency: 'USD', pricePlanRef: { name: 'standard' }, grants: [{ id: 'g1', amount: '10.00' }] },
  };

  it('returns the validated resource with defaults', () => {
    const parsed = parseResource('Wallet', { ...wallet, spec: { currency: 'USD', pricePlanRef: { name: 'standard' } } });
    expect(parsed.ok).toBe(true);
    if (parsed.ok) expect(parsed.value.spec.grants).toEqual([]);
  });

  it('names each invalid field', () => {
    const parsed = parseResource('Wallet', { ...wallet, spec: { currency: 'usd', pricePlanRef: { name: 'standard' }, grants: [{ id: 'g 1', amount: '-1' }] } });
    expect(parsed).toEqual({
      ok: false,
      message:
        'spec.currency: must be three uppercase letters, such as the ISO 4217 code "USD", not "usd"; ' +
        'spec.grants.0.id: must contain only letters, digits and . _ : -; ' +
        'spec.grants.0.amount: must be a non-negative decimal string such as "12.50" (at most 9 decimals) or nano-units such as "120n", not "-1"',
    });
  });
});
