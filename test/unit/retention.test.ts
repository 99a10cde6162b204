/** The retention rule: what may be forgotten, and what never is. */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { KEEP_DEFAULTS, snapshotsToForget, type RetainedSnapshot } from '../../scheduler/retention.ts'
import { parseManifest } from '../../apps/manifest.ts'
import { decodeManifest } from '../../proto/cluster.ts'

const H = 3600_000
const t0 = Date.UTC(2026, 10, 2, 0, 30) // a Monday, half past midnight

function hourly (n: number, purpose = 'scheduled'): RetainedSnapshot[] {
  return Array.from({ length: n }, (_, i) => ({ id: `s${String(i).padStart(4, '0')}`, time: t0 + i * H, purpose }))
}

describe('snapshot retention', () => {
  it('keeps everything while there is little', () => {
    expect(snapshotsToForget(hourly(20), KEEP_DEFAULTS)).toEqual([])
  })

  it('thins hourly snapshots to the last 24 hours, then one a day, then one a week', () => {
    const snaps = hourly(24 * 40) // 40 days of hourly snapshots
    const forget = new Set(snapshotsToForget(snaps, KEEP_DEFAULTS))
    const kept = snaps.filter(s => !forget.has(s.id))
    // 24 hours, 7 days (one of them the newest hour's), 4 weeks (some shared with days): a few dozen, not 960.
    expect(kept.length).toBeGreaterThanOrEqual(24)
    expect(kept.length).toBeLessThanOrEqual(24 + 7 + 4)
    expect(kept.at(-1)?.id).toBe(snaps.at(-1)?.id)
    const days = new Set(kept.map(s => Math.floor(s.time / (24 * H))))
    expect(days.size).toBeGreaterThanOrEqual(7)
  })

  it('never forgets what the user must decide about or asked for, nor the newest restorable, nor a named one', () => {
    const old = t0 - 400 * 24 * H
    const special: RetainedSnapshot[] = ['divergent', 'replaced', 'fenced', 'manual', 'imported'].map((purpose, i) => ({ id: `x${i}`, time: old + i, purpose }))
    const named = { id: 'told', time: old + 100, purpose: 'final' }
    const snaps = [...special, named, ...hourly(24 * 30)]
    const forget = snapshotsToForget(snaps, KEEP_DEFAULTS, new Set(['told']))
    for (const s of [...special, named]) expect(forget).not.toContain(s.id)
    // A divergent copy newer than everything does not count as the newest restorable one.
    const withNewDivergent = [...snaps, { id: 'newest-divergent', time: t0 + 10_000 * H, purpose: 'divergent' }]
    const f2 = snapshotsToForget(withNewDivergent, KEEP_DEFAULTS)
    expect(f2).not.toContain(snaps.at(-1)!.id)
    expect(f2).not.toContain('newest-divergent')
  })

  it('is deterministic, forgets only automatic snapshots, and always keeps the newest restorable one', () => {
    const purposes = ['scheduled', 'pre-move', 'final', 'prepass', 'backup', 'manual', 'divergent', 'replaced', 'fenced', 'imported']
    fc.assert(fc.property(
      fc.array(fc.record({ id: fc.stringMatching(/^[0-9a-f]{8}$/), time: fc.integer({ min: 0, max: 200 * 24 * H }), purpose: fc.constantFrom(...purposes) }), { maxLength: 300 }),
      fc.record({ last: fc.integer({ min: 0, max: 10 }), hourly: fc.integer({ min: 0, max: 48 }), daily: fc.integer({ min: 0, max: 14 }), weekly: fc.integer({ min: 0, max: 8 }) }),
      (raw, rule) => {
        const snaps = [...new Map(raw.map(s => [s.id, s])).values()]
        const forget = snapshotsToForget(snaps, rule)
        expect(snapshotsToForget([...snaps].reverse(), rule)).toEqual(forget)
        const byId = new Map(snaps.map(s => [s.id, s]))
        for (const id of forget) expect(['scheduled', 'pre-move', 'final', 'prepass', 'backup']).toContain(byId.get(id)?.purpose)
        const restorable = snaps.filter(s => !['divergent', 'replaced', 'prepass', 'fenced'].includes(s.purpose)).sort((a, b) => b.time - a.time || (a.id < b.id ? -1 : 1))[0]
        if (restorable !== undefined) expect(forget).not.toContain(restorable.id)
      }
    ))
  })
})

describe('an app\'s own keep rule (x-dcloud.snapshots.keep)', () => {
  const withKeep = (keep: string): string => `services: {db: {image: busybox, volumes: ["data:/d"]}}\nvolumes: {data: {}}\nx-dcloud:\n  id: k\n  snapshots: { every: 30m, keep: ${keep} }\n`

  it('takes the cluster\'s defaults for what it leaves out, and travels to peers intact', () => {
    const m = parseManifest(withKeep('{ last: 2, daily: 0 }'), 'k.yaml').manifest
    expect(m.snapshots?.keep).toEqual({ ...KEEP_DEFAULTS, last: 2, daily: 0 })
    expect(decodeManifest(JSON.parse(JSON.stringify(m)), 'manifest').snapshots?.keep).toEqual(m.snapshots?.keep)
    expect(parseManifest(withKeep('{}'), 'k.yaml').manifest.snapshots?.keep).toEqual(KEEP_DEFAULTS)
  })

  it.each([
    ['{ last: -1 }', /x-dcloud\.snapshots\.keep\.last: must be a whole number from 0 to 1000/],
    ['{ hourly: 1.5 }', /x-dcloud\.snapshots\.keep\.hourly/],
    ['{ weekly: "4" }', /x-dcloud\.snapshots\.keep\.weekly/],
    ['{ monthly: 3 }', /x-dcloud\.snapshots\.keep/],
    ['[1, 2]', /x-dcloud\.snapshots\.keep/]
  ])('refuses %s, naming the field', (keep, message) => {
    expect(() => parseManifest(withKeep(keep), 'k.yaml')).toThrow(message)
  })

  it('a peer\'s manifest with a keep rule out of bounds is refused', () => {
    const m = parseManifest(withKeep('{ last: 2 }'), 'k.yaml').manifest
    const raw = JSON.parse(JSON.stringify(m)) as { snapshots: { keep: Record<string, unknown> } }
    raw.snapshots.keep.last = 1e9
    expect(() => decodeManifest(raw, 'manifest')).toThrow(/snapshots\.keep\.last/)
  })
})
