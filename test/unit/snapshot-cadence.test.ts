import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { MIN_RETRY_MS, nextSnapshotDue } from '../../scheduler/snapshot-cadence.ts'

const base = { everyMs: 30_000, lastCycleMs: 0, lastFailureAt: null, checkEveryMs: 5000 }

describe('snapshot cadence', () => {
  it('takes the first snapshot at once', () => {
    expect(nextSnapshotDue({ ...base, lastSnapshotAt: null })).toBe(0)
  })

  it('never, when the app has no interval', () => {
    expect(nextSnapshotDue({ ...base, everyMs: 0, lastSnapshotAt: null })).toBe(Number.POSITIVE_INFINITY)
  })

  it('starts early by the last cycle (with slack) and the check tick, so the replica lands within the interval', () => {
    // 2 s cycle: 2 * 1.5 + 1 + 5 = 9 s early.
    expect(nextSnapshotDue({ ...base, lastSnapshotAt: 100_000, lastCycleMs: 2000 })).toBe(100_000 + 30_000 - 9000)
  })

  it('leads by at most half the interval, however slow the cycle', () => {
    expect(nextSnapshotDue({ ...base, lastSnapshotAt: 100_000, lastCycleMs: 600_000 })).toBe(115_000)
  })

  it('retries a failed cycle after a sixth of the interval (at least 5 s), not at the next interval', () => {
    const hour = 3_600_000
    expect(nextSnapshotDue({ ...base, everyMs: hour, lastSnapshotAt: 0, lastFailureAt: 2 * hour })).toBe(2 * hour + hour / 6)
    expect(nextSnapshotDue({ ...base, lastSnapshotAt: 0, lastFailureAt: 200_000 })).toBe(200_000 + MIN_RETRY_MS)
    expect(nextSnapshotDue({ ...base, lastSnapshotAt: null, lastFailureAt: 200_000 })).toBe(200_000 + MIN_RETRY_MS)
  })

  it('a failure before the regular time does not postpone it', () => {
    // A manual snapshot failed 1 s after a good one: the regular time (26 s on) is sooner than nothing.
    expect(nextSnapshotDue({ ...base, lastSnapshotAt: 100_000, lastFailureAt: 101_000 })).toBe(Math.min(100_000 + 30_000 - 6000, 101_000 + MIN_RETRY_MS))
  })

  it('property: with cycles that keep their pace, a replica is never older than the interval', () => {
    // Simulates a run: each cycle starts at the first check tick at or after its due time, and its
    // replica lands cycleMs later. Between landings, the newest replica's age stays within everyMs.
    fc.assert(fc.property(
      fc.integer({ min: 10_000, max: 3_600_000 }),
      fc.array(fc.integer({ min: 100, max: 20_000 }), { minLength: 2, maxLength: 30 }),
      (everyMs, cycles) => {
        fc.pre(Math.max(...cycles) * 1.5 + 1000 + 5000 <= everyMs / 2)
        let t = 0
        let last: number | null = null
        let lastCycle = 0
        let landedSnapshotAt: number | null = null
        for (let i = 0; i < cycles.length; i++) {
          // The next cycle may be up to 1.5x slower than the last (the slack's promise).
          const cycle = Math.min(cycles[i] as number, lastCycle === 0 ? (cycles[i] as number) : Math.floor(lastCycle * 1.5))
          const due = nextSnapshotDue({ everyMs, lastSnapshotAt: last, lastCycleMs: lastCycle, lastFailureAt: null, checkEveryMs: 5000 })
          const start = Math.ceil(Math.max(due, t) / 5000) * 5000
          const landed = start + cycle
          if (landedSnapshotAt !== null) expect(landed - landedSnapshotAt).toBeLessThanOrEqual(everyMs)
          last = start
          lastCycle = cycle
          landedSnapshotAt = start
          t = landed
        }
      }), { numRuns: 300 })
  })
})
