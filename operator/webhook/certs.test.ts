import { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  caBundlePatch,
  certificateHosts,
  createWebhookCertificate,
  replacementReason,
  serviceDnsNames,
  splitPemCertificates,
  type WebhookCertificate,
} from './certs.ts';

const DAY_MS = 24 * 60 * 60 * 1000;
const HOSTS = { dnsNames: serviceDnsNames('tollgate-webhook', 'tollgate-system'), ipAddresses: ['127.0.0.1'] };

describe('createWebhookCertificate', () => {
  let created: { caCertPem: string; certPem: string; keyPem: string };
  let serving: X509Certificate;
  let ca: X509Certificate;

  beforeAll(async () => {
    created = await createWebhookCertificate(HOSTS, 30);
    serving = new X509Certificate(created.certPem);
    ca = new X509Certificate(created.caCertPem);
  }, 30_000);

  it('covers the service names and the IP', () => {
    expect(serving.subjectAltName).toBe(
      'DNS:tollgate-webhook.tollgate-system.svc, DNS:tollgate-webhook.tollgate-system.svc.cluster.local, IP Address:127.0.0.1',
    );
    expect(serving.subject).toBe('CN=tollgate-webhook.tollgate-system.svc');
  });

  it('is signed by a CA that is not itself a server', () => {
    expect(serving.checkIssued(ca)).toBe(true);
    expect(serving.verify(ca.publicKey)).toBe(true);
    expect(ca.ca).toBe(true);
    expect(serving.ca).toBe(false);
  });

  it('is valid for the requested days', () => {
    const lifetimeDays = (serving.validToDate.getTime() - serving.validFromDate.getTime()) / DAY_MS;

    expect(lifetimeDays).toBe(30);
  });

  it('matches its key', () => {
    expect(replacementReason({ caBundlePem: created.caCertPem, ...created }, HOSTS, new Date(), 7)).toBeUndefined();
  });

  it('rejects an empty host list', async () => {
    await expect(createWebhookCertificate({ dnsNames: [], ipAddresses: [] })).rejects.toThrow(
      'cannot create a serving certificate without a DNS name or IP address',
    );
  });
});

describe('replacementReason', () => {
  let current: WebhookCertificate;
  let other: { caCertPem: string; certPem: string; keyPem: string };

  beforeAll(async () => {
    const created = await createWebhookCertificate(HOSTS, 90);
    current = { caBundlePem: created.caCertPem, certPem: created.certPem, keyPem: created.keyPem };
    other = await createWebhookCertificate(HOSTS, 90);
  }, 30_000);

  it('keeps a fresh certificate', () => {
    expect(replacementReason(current, HOSTS, new Date(), 30)).toBeUndefined();
  });

  it('replaces one close to expiry', () => {
    const expiry = new X509Certificate(current.certPem).validToDate;
    const reason = replacementReason(current, HOSTS, new Date(Date.now() + 61 * DAY_MS), 30);

    expect(reason).toBe(`the certificate expires at ${expiry.toISOString()}, within 30 days`);
  });

  it('replaces one missing a host', () => {
    const hosts = { dnsNames: [...HOSTS.dnsNames, 'tollgate-webhook.other.svc'], ipAddresses: ['127.0.0.1', '10.0.0.7'] };

    expect(replacementReason(current, hosts, new Date(), 30)).toBe('the certificate does not cover tollgate-webhook.other.svc, 10.0.0.7');
  });

  it('replaces one with a foreign key', () => {
    expect(replacementReason({ ...current, keyPem: other.keyPem }, HOSTS, new Date(), 30)).toBe('the private key does not match the certificate');
  });

  it('replaces one the bundle did not issue', () => {
    expect(replacementReason({ ...current, caBundlePem: other.caCertPem }, HOSTS, new Date(), 30)).toBe(
      'no CA certificate of the bundle issued the serving certificate',
    );
  });

  it('accepts an issuer later in the bundle', () => {
    expect(replacementReason({ ...current, caBundlePem: other.caCertPem + current.caBundlePem }, HOSTS, new Date(), 30)).toBeUndefined();
  });

  it('replaces garbage', () => {
    expect(replacementReason({ ...current, certPem: 'not a certificate' }, HOSTS, new Date(), 30)).toMatch(
      /^the certificate or key does not parse: /,
    );
  });
});

describe('splitPemCertificates', () => {
  it('splits a bundle in order', async () => {
    const first = await createWebhookCertificate(HOSTS, 1);
    const second = await createWebhookCertificate(HOSTS, 1);
    const parts = splitPemCertificates(first.caCertPem + second.caCertPem);

    expect(parts).toHaveLength(2);
    expect(new X509Certificate(parts[0]!).fingerprint256).toBe(new X509Certificate(first.caCertPem).fingerprint256);
    expect(new X509Certificate(parts[1]!).fingerprint256).toBe(new X509Certificate(second.caCertPem).fingerprint256);
  }, 30_000);

  it('returns nothing for text without certificates', () => {
    expect(splitPemCertificates('')).toEqual([]);
  });
});

describe('caBundlePatch', () => {
  it('tests the resourceVersion and sets differing bundles', () => {
    const webhooks = [{ clientConfig: {} }, { clientConfig: { caBundle: 'TkVX' } }, { clientConfig: { caBundle: 'T0xE' } }];

    expect(caBundlePatch('42', webhooks, 'TkVX')).toEqual([
      { op: 'test', path: '/metadata/resourceVersion', value: '42' },
      { op: 'add', path: '/webhooks/0/clientConfig/caBundle', value: 'TkVX' },
      { op: 'add', path: '/webhooks/2/clientConfig/caBundle', value: 'TkVX' },
    ]);
  });

  it('is only the test when all bundles match', () => {
    expect(caBundlePatch('7', [{ clientConfig: { caBundle: 'TkVX' } }], 'TkVX')).toEqual([
      { op: 'test', path: '/metadata/resourceVersion', value: '7' },
    ]);
  });
});

describe('certificateHosts', () => {
  it('adds a specific listen IP', () => {
    expect(certificateHosts('hook', 'ops', '127.0.0.1')).toEqual({
      dnsNames: ['hook.ops.svc', 'hook.ops.svc.cluster.local'],
      ipAddresses: ['127.0.0.1'],
    });
  });

  it('ignores wildcard and missing addresses', () => {
    expect(certificateHosts('hook', 'ops', '0.0.0.0').ipAddresses).toEqual([]);
    expect(certificateHosts('hook', 'ops', '::').ipAddresses).toEqual([]);
    expect(certificateHosts('hook', 'ops', undefined).ipAddresses).toEqual([]);
    expect(certificateHosts('hook', 'ops', 'localhost').ipAddresses).toEqual([]);
  });
});
