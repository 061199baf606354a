import { describe, expect, it } from 'vitest';
import { allowResponse, denyResponse, isPodCreate, parseAdmissionReview } from './admission.ts';
import { describePod, eventName } from './events.ts';

function review(request: Record<string, unknown>): unknown {
  return { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request };
}

const POD_CREATE = {
  uid: '705ab4f5-6393-11e8-b7cc-42010a800002',
  kind: { group: '', version: 'v1', kind: 'Pod' },
  operation: 'CREATE',
  namespace: 'shop',
  object: { metadata: { generateName: 'web-' }, spec: { containers: [{ name: 'app' }] } },
};

describe('parseAdmissionReview', () => {
  it('reads a pod creation', () => {
    const request = parseAdmissionReview(review(POD_CREATE));

    expect(request).toEqual({
      uid: '705ab4f5-6393-11e8-b7cc-42010a800002',
      kind: { group: '', version: 'v1', kind: 'Pod' },
      operation: 'CREATE',
      namespace: 'shop',
      name: '',
      dryRun: false,
      object: { metadata: { generateName: 'web-' }, spec: { containers: [{ name: 'app' }] } },
    });
    expect(isPodCreate(request)).toBe(true);
  });

  it('reads dryRun', () => {
    expect(parseAdmissionReview(review({ ...POD_CREATE, dryRun: true })).dryRun).toBe(true);
  });

  it('rejects v1beta1 reviews', () => {
    const body = { apiVersion: 'admission.k8s.io/v1beta1', kind: 'AdmissionReview', request: POD_CREATE };

    expect(() => parseAdmissionReview(body)).toThrow(
      'expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got admission.k8s.io/v1beta1 AdmissionReview; set admissionReviewVersions: ["v1"] in the webhook configuration',
    );
  });

  it('rejects a request without uid', () => {
    expect(() => parseAdmissionReview(review({ ...POD_CREATE, uid: '' }))).toThrow('request.uid is missing');
  });

  it('rejects a non-object body', () => {
    expect(() => parseAdmissionReview([1, 2])).toThrow('the body is not a JSON object');
  });

  it('tells other operations apart', () => {
    expect(isPodCreate(parseAdmissionReview(review({ ...POD_CREATE, operation: 'UPDATE' })))).toBe(false);
    expect(isPodCreate(parseAdmissionReview(review({ ...POD_CREATE, kind: { group: 'apps', version: 'v1', kind: 'Pod' } })))).toBe(false);
  });
});

describe('admission responses', () => {
  it('encodes the patch in base64', () => {
    const patch = [{ op: 'add' as const, path: '/metadata/annotations', value: { a: 'b' } }];
    const response = allowResponse('uid-1', patch, ['no wallet']);

    expect(response).toEqual({
      apiVersion: 'admission.k8s.io/v1',
      kind: 'AdmissionReview',
      response: {
        uid: 'uid-1',
        allowed: true,
        patchType: 'JSONPatch',
        patch: Buffer.from('[{"op":"add","path":"/metadata/annotations","value":{"a":"b"}}]').toString('base64'),
        warnings: ['no wallet'],
      },
    });
  });

  it('omits an empty patch', () => {
    expect(allowResponse('uid-2', []).response).toEqual({ uid: 'uid-2', allowed: true });
  });

  it('denies with a status', () => {
    expect(denyResponse('uid-3', 500, 'InternalError', 'lookup failed').response).toEqual({
      uid: 'uid-3',
      allowed: false,
      status: { status: 'Failure', code: 500, reason: 'InternalError', message: 'lookup failed' },
    });
  });
});

describe('event naming', () => {
  it('names an Event after its object', () => {
    expect(eventName('web-7d9f')).toMatch(/^web-7d9f\.[0-9a-f]{19,}$/);
  });

  it('trims a generateName to a valid name', () => {
    expect(eventName('web-')).toMatch(/^web\.[0-9a-f]+$/);
    expect(eventName('')).toMatch(/^pod\.[0-9a-f]+$/);
    expect(eventName('Upper_Case')).toMatch(/^upper-case\.[0-9a-f]+$/);
  });

  it('makes names unique', () => {
    expect(eventName('web')).not.toBe(eventName('web'));
  });

  it('describes pods with and without names', () => {
    expect(describePod({ metadata: { name: 'web-1' } })).toBe('web-1');
    expect(describePod({ metadata: { generateName: 'web-' } })).toBe('web-*');
    expect(describePod({})).toBe('(no name)');
  });
});
