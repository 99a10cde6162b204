import { defineConfig, mergeConfig } from 'vitest/config'
import base from './vitest.config.ts'

// CI's chaos run (test/lab/chaos.run.ts), kept out of the default suite until
// the fencing fix of issue 12 lands: `vitest run --config vitest.chaos.config.ts`.
export default mergeConfig(base, defineConfig({ test: { include: ['test/lab/chaos.run.ts'] } }))
