/**
 * CI's chaos run: a seeded five-minute `dcloud lab chaos` on a 3-node lab of
 * its own (lab `tchaos`) with both workloads, which must find 0 violations
 * (the four checks of issue 12: one copy by Docker's times, writes against
 * the RPO, divergent copies kept, convergence).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LabHandle, dcloud } from './harness.ts'
import type { ChaosResult } from '../../scripts/lab/chaos/run.ts'

const lab = new LabHandle('tchaos')
/** Fixed: CI's run must be the same run every time. */
const SEED = 20261205
const MINUTES = 5

describe('chaos', () => {
  beforeAll(async () => {
    await lab.up(3)
  }, 300_000)

  afterAll(async () => {
    await lab.down()
  }, 180_000)

  it(`seed ${SEED}, ${MINUTES} minutes, notes and postgres: no violation`, async () => {
    const r = await dcloud(['lab', '--lab', lab.name, 'chaos', '--minutes', String(MINUTES), '--seed', String(SEED), '--json'], { timeoutMs: (MINUTES + 12) * 60_000 })
    process.stderr.write(r.stderr)
    expect([0, 1], `dcloud lab chaos exited ${r.code}:\n${r.stderr}`).toContain(r.code)
    const result = JSON.parse(r.stdout) as ChaosResult
    // The same seed gives the same schedule: every fault kind this lab can do was injected.
    expect(result.faults.length).toBeGreaterThan(3)
    expect(result.checks.map(c => c.name)).toEqual(expect.arrayContaining(['one-copy', 'writes', 'kept', 'convergence']))
    expect(result.violations.map(v => `[${v.check}] ${v.text}`)).toEqual([])
    expect(r.code).toBe(0)
  }, (MINUTES + 15) * 60_000)
})
