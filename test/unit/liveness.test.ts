import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { DEFAULT_LIVENESS, isNewer, livenessOf, nextLivenessChangeAt } from '../../scheduler/liveness.ts'

describe('liveness', () => {
  it.each([
    // silence (ms), connected, expected
    [0, true, 'alive'],
    [2400, true, 'alive'],
    [2500, true, 'suspect'],
    [1400, false, 'alive'],
    [1500, false, 'suspect'],
    [3999, true, 'suspect'],
    [4000, true, 'dead'],
    [4000, false, 'dead'],
    [60_000, true, 'dead']
  ] as const)('after %i ms of silence (connected: %s) a node is %s', (silence, connected, expected) => {
    expect(livenessOf({ now: 10_000 + silence, lastHeardAt: 10_000, intervalMs: 1000, connected })).toBe(expected)
  })

  it('judges silence in the sender\'s own interval', () => {
    expect(livenessOf({ now: 6000, lastHeardAt: 0, intervalMs: 2000, connected: true })).toBe('suspect')
    expect(livenessOf({ now: 8000, lastHeardAt: 0, intervalMs: 2000, connected: true })).toBe('dead')
  })

  it('never goes from dead back to alive without a message, and only gets worse with silence', () => {
    const order = { alive: 0, suspect: 1, dead: 2 }
    fc.assert(fc.property(fc.integer({ min: 0, max: 100_000 }), fc.integer({ min: 0, max: 100_000 }), fc.integer({ min: 100, max: 60_000 }), fc.boolean(), (a, b, interval, connected) => {
      const [t1, t2] = a <= b ? [a, b] : [b, a]
      const s1 = livenessOf({ now: t1, lastHeardAt: 0, intervalMs: interval, connected })
      const s2 = livenessOf({ now: t2, lastHeardAt: 0, intervalMs: interval, connected })
      return order[s2] >= order[s1]
    }))
  })

  it('predicts the next change exactly', () => {
    const input = { now: 1000, lastHeardAt: 1000, intervalMs: 1000, connected: true }
    const at = nextLivenessChangeAt(input) as number
    expect(at).toBe(1000 + DEFAULT_LIVENESS.suspectAfterIntervals * 1000)
    expect(livenessOf({ ...input, now: at - 1 })).toBe('alive')
    expect(livenessOf({ ...input, now: at })).toBe('suspect')
  })

  it('orders messages by incarnation, then sequence', () => {
    expect(isNewer(undefined, { incarnation: 1, seq: 1 })).toBe(true)
    expect(isNewer({ incarnation: 1, seq: 5 }, { incarnation: 1, seq: 6 })).toBe(true)
    expect(isNewer({ incarnation: 1, seq: 5 }, { incarnation: 1, seq: 5 })).toBe(false)
    expect(isNewer({ incarnation: 1, seq: 5 }, { incarnation: 2, seq: 1 })).toBe(true)
    expect(isNewer({ incarnation: 2, seq: 1 }, { incarnation: 1, seq: 99 })).toBe(false)
  })
})
