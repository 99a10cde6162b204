/**
 * The chaos run's fault schedule (scripts/lab/chaos/schedule.ts): a pure
 * function of (seed, minutes, nodes). Determinism and the rules that let the
 * cluster converge, over many seeds.
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { FAULT_KINDS, DURATIONS, affectedAt, chaosSchedule, checkScheduleInput, formatFault, isPartition, type ChaosPlan } from '../../scripts/lab/chaos/schedule.ts'

const N3 = ['n1', 'n2', 'n3']
const N5 = ['n1', 'n2', 'n3', 'n4', 'n5']

/** Every instant where something changes: the starts and repairs. */
function instants (plan: ChaosPlan): number[] {
  return [...new Set(plan.faults.flatMap(f => [f.at, f.repairAt]))].sort((a, b) => a - b)
}

function checkRules (plan: ChaosPlan): void {
  expect(plan.faults.map(f => f.id)).toEqual(plan.faults.map((_, i) => i + 1))
  for (const [i, f] of plan.faults.entries()) {
    // Paired with its repair, inside the window.
    expect(f.repairAt).toBeGreaterThan(f.at)
    expect(f.at).toBeGreaterThanOrEqual(plan.warmupMs)
    expect(f.repairAt).toBeLessThanOrEqual(plan.quietFromMs)
    const [lo, hi] = DURATIONS[f.kind]
    expect(f.repairAt - f.at).toBeGreaterThanOrEqual(lo)
    expect(f.repairAt - f.at).toBeLessThanOrEqual(hi)
    if (i > 0) expect(f.at).toBeGreaterThanOrEqual(plan.faults[i - 1]!.at)
    for (const n of f.nodes) expect(plan.nodes).toContain(n)
    if (f.kind === 'partition-1-1-1') {
      expect(f.groups).toHaveLength(3)
      for (const g of f.groups!) expect(g.length * 2).toBeLessThan(plan.nodes.length + (plan.nodes.length % 2 === 0 ? 1 : 0))
      expect(f.groups!.flat().sort()).toEqual([...plan.nodes].sort())
    }
    if (f.kind === 'partition-2-1' || f.kind === 'flap-link') {
      expect(f.groups).toHaveLength(2)
      expect(f.groups![0]).toEqual(f.nodes)
      expect(f.nodes.length * 2).toBeLessThan(plan.nodes.length)
      expect(f.groups!.flat().sort()).toEqual([...plan.nodes].sort())
    }
    if (f.kind === 'flap-link') expect(f.flapPeriodMs).toBe(1500)
  }
  for (const t of instants(plan)) {
    const active = plan.faults.filter(f => f.at <= t && t < f.repairAt)
    // One partition at a time; the three-way split overlaps nothing.
    expect(active.filter(f => isPartition(f.kind)).length).toBeLessThanOrEqual(1)
    if (active.some(f => f.kind === 'partition-1-1-1')) expect(active).toHaveLength(1)
    // Otherwise at most a minority affected.
    else expect(affectedAt(plan, t).length).toBeLessThanOrEqual(plan.maxAffected)
    // No node hit by two faults at once.
    const nodes = active.flatMap(f => f.nodes)
    if (!active.some(f => f.kind === 'partition-1-1-1')) expect(new Set(nodes).size).toBe(nodes.length)
  }
}

describe('chaos schedule', () => {
  it('is the same for the same seed, minutes and nodes (in any order), and differs for another seed', () => {
    const a = chaosSchedule({ seed: 42, minutes: 10, nodes: N3 })
    const b = chaosSchedule({ seed: 42, minutes: 10, nodes: ['n3', 'n1', 'n2'] })
    expect(b).toEqual(a)
    expect(JSON.stringify(chaosSchedule({ seed: 42, minutes: 10, nodes: N3 }))).toBe(JSON.stringify(a))
    expect(chaosSchedule({ seed: 43, minutes: 10, nodes: N3 }).faults).not.toEqual(a.faults)
  })

  it('keeps a warm-up, a quiet end of a minute, and at least one fault a minute of chaos', () => {
    const plan = chaosSchedule({ seed: 7, minutes: 5, nodes: N3 })
    expect(plan.warmupMs).toBe(20_000)
    expect(plan.quietFromMs).toBe(240_000)
    expect(plan.endMs).toBe(300_000)
    expect(plan.faults.length).toBeGreaterThanOrEqual(3)
    expect(plan.maxAffected).toBe(1)
    checkRules(plan)
    for (const f of plan.faults) expect(formatFault(f)).toMatch(new RegExp(`^#${f.id} .* ${f.kind} `))
  })

  it('never affects more than a minority, pairs every fault with its repair, for any seed (3 and 5 nodes)', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 2, max: 40 }), fc.boolean(), (seed, minutes, five) => {
      checkRules(chaosSchedule({ seed, minutes, nodes: five ? N5 : N3 }))
    }), { numRuns: 300 })
  })

  it('uses every kind of fault over a long run, and overlaps faults only where a minority allows it', () => {
    const plan = chaosSchedule({ seed: 1, minutes: 60, nodes: N3 })
    expect(new Set(plan.faults.map(f => f.kind))).toEqual(new Set(FAULT_KINDS))
    for (let i = 1; i < plan.faults.length; i++) expect(plan.faults[i]!.at).toBeGreaterThanOrEqual(plan.faults[i - 1]!.repairAt)
    const five = chaosSchedule({ seed: 1, minutes: 60, nodes: N5 })
    expect(five.maxAffected).toBe(2)
    expect(five.faults.some((f, i) => i > 0 && f.at < five.faults[i - 1]!.repairAt)).toBe(true)
    expect(five.faults.some(f => f.kind === 'partition-2-1' && f.nodes.length === 2)).toBe(true)
  })

  it('refuses what cannot be scheduled, saying why', () => {
    expect(checkScheduleInput({ seed: 1, minutes: 5, nodes: ['n1', 'n2'] })[0]).toMatch(/at least 3 nodes/)
    expect(checkScheduleInput({ seed: 1, minutes: 1, nodes: N3 })[0]).toMatch(/--minutes/)
    expect(checkScheduleInput({ seed: -1, minutes: 5, nodes: N3 })[0]).toMatch(/--seed/)
    expect(checkScheduleInput({ seed: 1.5, minutes: 5, nodes: N3 })[0]).toMatch(/--seed/)
    expect(() => chaosSchedule({ seed: 1, minutes: 5, nodes: ['n1'] })).toThrow(/at least 3 nodes/)
  })
})
