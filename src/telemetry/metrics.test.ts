import { describe, expect, it } from 'vitest';
import { parseAmount } from '../money/money.ts';
import { createSidecarMetrics } from './metrics.ts';

const LABELS = { currency: 'USD', route: 'openai', model: 'gpt-4o-mini', namespace: 'team-a', wallet: '' };

/** Returns the value of one series of a metric in the registry's text exposition. */
async function sample(metrics: ReturnType<typeof createSidecarMetrics>, name: string, labels: Record<string, string>): Promise<string | undefined> {
  const text = await metrics.registry.metrics();
  const selector = Object.entries(labels)
    .map(([key, value]) => `${key}="${value}"`)
    .join(',');
  return text.split('\n').find((line) => line.startsWith(`${name}{${selector}} `))?.split(' ')[1];
}

describe('money counters', () => {
  it('expose exact sums, rounded once', async () => {
    const metrics = createSidecarMetrics({ defaultMetrics: false });
    metrics.charged.add(LABELS, parseAmount('0.1'));
    metrics.charged.add(LABELS, parseAmount('0.2'));
    // Float addition of the same amounts gives 0.30000000000000004.
    expect(await sample(metrics, 'tollgate_charged_total', LABELS)).toBe('0.3');
  });

  it('do not drift over many small charges', async () => {
    const metrics = createSidecarMetrics({ defaultMetrics: false });
    let float = 0;
    for (let i = 0; i < 100_000; i++) {
      metrics.providerCost.add(LABELS, 23_000n);
      float += 0.000023;
    }
    expect(float).not.toBe(2.3);
    expect(await sample(metrics, 'tollgate_provider_cost_total', LABELS)).toBe('2.3');
  });

  it('keep counting after a scrape', async () => {
    const metrics = createSidecarMetrics({ defaultMetrics: false });
    const other = { ...LABELS, model: 'gpt-4o' };
    metrics.charged.add(LABELS, 1_500_000_000n);
    metrics.charged.add(other, 0n);
    expect(await sample(metrics, 'tollgate_charged_total', LABELS)).toBe('1.5');
    expect(await sample(metrics, 'tollgate_charged_total', other)).toBe('0');
    metrics.charged.add(LABELS, 1_000_000_000n);
    expect(await sample(metrics, 'tollgate_charged_total', LABELS)).toBe('2.5');
  });

  it('reject a negative amount', () => {
    const metrics = createSidecarMetrics({ defaultMetrics: false });
    expect(() => metrics.charged.add(LABELS, -1n)).toThrow(/cannot go down, but -1 nano-units/);
  });
});
