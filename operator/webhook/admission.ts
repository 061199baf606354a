// AdmissionReview (admission.k8s.io/v1) parsing and responses, without I/O.

import type { V1Pod } from '@kubernetes/client-node';
import type { JsonPatchOp } from './inject.ts';

export const ADMISSION_API_VERSION = 'admission.k8s.io/v1';

/** The fields of an AdmissionReview request that the injector reads. */
export interface AdmissionRequest {
  uid: string;
  kind: { group: string; version: string; kind: string };
  operation: string;
  namespace: string;
  /** Empty for a Pod created with generateName, because the name is generated after admission. */
  name: string;
  dryRun: boolean;
  object: V1Pod;
}

export interface AdmissionResponse {
  uid: string;
  allowed: boolean;
  patchType?: 'JSONPatch';
  /** Base64 of the JSON patch. */
  patch?: string;
  warnings?: string[];
  status?: { status: 'Failure'; code: number; reason: string; message: string };
}

export interface AdmissionReviewResponse {
  apiVersion: typeof ADMISSION_API_VERSION;
  kind: 'AdmissionReview';
  response: AdmissionResponse;
}

export class InvalidAdmissionReview extends Error {
  override readonly name = 'InvalidAdmissionReview';
}

/** Parses the body of a webhook call; throws InvalidAdmissionReview with the missing field. */
export function parseAdmissionReview(body: unknown): AdmissionRequest {
  if (!isRecord(body)) {
    throw new InvalidAdmissionReview('the body is not a JSON object');
  }
  if (body['apiVersion'] !== ADMISSION_API_VERSION || body['kind'] !== 'AdmissionReview') {
    throw new InvalidAdmissionReview(
      `expected apiVersion ${ADMISSION_API_VERSION} and kind AdmissionReview, got ${String(body['apiVersion'])} ${String(body['kind'])}; ` +
        `set admissionReviewVersions: ["v1"] in the webhook configuration`,
    );
  }
  const request = body['request'];
  if (!isRecord(request) || typeof request['uid'] !== 'string' || request['uid'] === '') {
    throw new InvalidAdmissionReview('request.uid is missing');
  }
  const kind = request['kind'];
  if (!isRecord(kind)) {
    throw new InvalidAdmissionReview('request.kind is missing');
  }
  const object = request['object'];
  return {
    uid: request['uid'],
    kind: { group: stringOr(kind['group']), version: stringOr(kind['version']), kind: stringOr(kind['kind']) },
    operation: stringOr(request['operation']),
    namespace: stringOr(request['namespace']),
    name: stringOr(request['name']),
    dryRun: request['dryRun'] === true,
    object: (isRecord(object) ? object : {}) as V1Pod,
  };
}

/** Returns whether the request creates a core/v1 Pod, the only request the injector changes. */
export function isPodCreate(request: AdmissionRequest): boolean {
  return request.kind.group === '' && request.kind.version === 'v1' && request.kind.kind === 'Pod' && request.operation === 'CREATE';
}

/** Builds a response that admits the object, with the patch when it has operations. */
export function allowResponse(uid: string, patch: readonly JsonPatchOp[], warnings: readonly string[] = []): AdmissionReviewResponse {
  const response: AdmissionResponse = { uid, allowed: true };
  if (patch.length > 0) {
    response.patchType = 'JSONPatch';
    response.patch = Buffer.from(JSON.stringify(patch)).toString('base64');
  }
  if (warnings.length > 0) {
    response.warnings = [...warnings];
  }
  return { apiVersion: ADMISSION_API_VERSION, kind: 'AdmissionReview', response };
}

/** Builds a response that rejects the object; the API server returns `message` to the client that made the request. */
export function denyResponse(uid: string, code: number, reason: string, message: string): AdmissionReviewResponse {
  return {
    apiVersion: ADMISSION_API_VERSION,
    kind: 'AdmissionReview',
    response: { uid, allowed: false, status: { status: 'Failure', code, reason, message } },
  };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function stringOr(value: unknown): string {
  return typeof value === 'string' ? value : '';
}
