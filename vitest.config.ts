import { defineConfig } from 'vitest/config'

// Lab suites start real dockerd and agent processes in network namespaces:
// they run one file at a time so a 2-core machine is not oversubscribed.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 300_000,
    reporters: ['default'],
    pool: 'forks'
  }
})
