import { describe, expect, it } from 'vitest';
import { stableJson } from './stable-json.ts';

describe('stableJson', () => {
  it('ignores key order', () => {
    expect(stableJson({ b: 1, a: { d: [1, 2], c: 'x' } })).toBe(stableJson({ a: { c: 'x', d: [1, 2] }, b: 1 }));
    expect(stableJson({ b: 1, a: 2 })).toBe('{"a":2,"b":1}');
  });

  it('leaves out undefined members', () => {
    expect(stableJson({ a: 1, b: undefined })).toBe('{"a":1}');
  });

  it('keeps array order', () => {
    expect(stableJson([2, 1])).not.toBe(stableJson([1, 2]));
  });
});
