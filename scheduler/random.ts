/**
 * Seeded randomness for the scheduler and the election: the scheduler has no
 * randomness of its own, so the same seed always gives the same choices.
 */

/** mulberry32: a tiny 32-bit PRNG. Returns the next value in [0, 1) and the next state. */
export function mulberry32Step (state: number): { value: number, state: number } {
  const next = (state + 0x6d2b79f5) | 0
  let t = next
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return { value: ((t ^ (t >>> 14)) >>> 0) / 4294967296, state: next }
}

/** A stateful generator over mulberry32Step, for loops that draw many values. */
export function mulberry32 (seed: number): () => number {
  let state = seed | 0
  return () => {
    const r = mulberry32Step(state)
    state = r.state
    return r.value
  }
}

/** FNV-1a, 32 bits: a stable hash of a string (node ids, app names). */
export function hashString (s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

/** Mixes 32-bit values into one well-spread 32-bit value (murmur3's finaliser). */
export function mix (...values: number[]): number {
  let h = 0x9e3779b9
  for (const v of values) {
    h = Math.imul(h ^ (v >>> 0), 0x85ebca6b)
    h ^= h >>> 13
    h = Math.imul(h, 0xc2b2ae35)
    h ^= h >>> 16
  }
  return h >>> 0
}
