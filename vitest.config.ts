import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'sidecar/**/*.test.ts', 'operator/**/*.test.ts', 'test/**/*.test.ts', 'bench/**/*.test.ts'],
    // Suites start real servers (redis-server, kube-apiserver with etcd), so both time limits are generous.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Two cores: one file at a time per core keeps start-up of the real servers from starving each other.
    maxWorkers: 2,
    // The JSON report lets .ci/run print a plain "N passed, N failed" line.
    reporters: ['default', ['json', { outputFile: '.cache/vitest-report.json' }]],
  },
});
