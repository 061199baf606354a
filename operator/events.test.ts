// The Event body. Recording against a real API server, with reasons and counts,
// is checked in test/operator.test.ts.

import { describe, expect, it } from 'vitest';
import { buildEvent, targetOf } from './events.ts';

const now = new Date('2026-04-01T12:00:00.000Z');
const source = { component: 'tollgate-operator', instance: 'replica-1' };

describe('buildEvent', () => {
  const target = targetOf({
    apiVersion: 'tollgate.dev/v1alpha1',
    kind: 'Wallet',
    metadata: { name: 'acme', namespace: 'team', uid: 'u-1', resourceVersion: '42' },
  });

  it('describes the involved object and the source', () => {
    const event = buildEvent(target, 'Warning', 'LowBalance', 'balance 1.00 USD is below the low-balance threshold 2.00 USD', source, now);
    expect(event).toMatchObject({
      metadata: { namespace: 'team' },
      involvedObject: { apiVersion: 'tollgate.dev/v1alpha1', kind: 'Wallet', namespace: 'team', name: 'acme', uid: 'u-1', resourceVersion: '42' },
      type: 'Warning',
      reason: 'LowBalance',
      message: 'balance 1.00 USD is below the low-balance threshold 2.00 USD',
      count: 1,
      firstTimestamp: now,
      lastTimestamp: now,
      source: { component: 'tollgate-operator' },
      reportingComponent: 'tollgate-operator',
      reportingInstance: 'replica-1',
    });
    expect(event.metadata.name).toMatch(/^acme\.[0-9a-f]+$/);
  });

  it('gives each event a unique name', () => {
    const first = buildEvent(target, 'Normal', 'Ready', 'ready', source, now);
    const second = buildEvent(target, 'Normal', 'Ready', 'ready', source, now);
    expect(first.metadata.name).not.toBe(second.metadata.name);
  });

  it('cuts long messages to 1 KiB', () => {
    const event = buildEvent(target, 'Warning', 'InvalidSpec', 'x'.repeat(5_000), source, now);
    expect(event.message).toHaveLength(1024);
    expect(event.message?.endsWith('...')).toBe(true);
  });
});
