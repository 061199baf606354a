import { describe, expect, it } from 'vitest';
import { withoutKeyParameter } from './proxy.ts';

describe('withoutKeyParameter', () => {
  it('drops a client key from the query', () => {
    expect(withoutKeyParameter('/v1beta/models?key=client-secret')).toBe('/v1beta/models');
    expect(withoutKeyParameter('/v1beta/models?pageSize=5&key=client-secret')).toBe('/v1beta/models?pageSize=5');
  });

  it('leaves other paths unchanged', () => {
    expect(withoutKeyParameter('/v1/models')).toBe('/v1/models');
    expect(withoutKeyParameter('/v1/models?limit=5')).toBe('/v1/models?limit=5');
  });
});
