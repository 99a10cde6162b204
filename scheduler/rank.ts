/**
 * Ranking: among the nodes that can take an app, which is best.
 *
 * - spread (default): fewest apps, then most free memory, then lowest CPU load.
 * - binpack: least free memory (the fullest node that still fits), then most
 *   apps, then lowest CPU load.
 *
 * Exact ties are broken by a hash of (seed, app, node): seeded, so the same
 * inputs give the same choice, and independent of the order nodes arrive in.
 */
import type { DesiredApp, SchedulerPolicy } from '../proto/plan.ts'
import { hashString, mix } from './random.ts'
import { freeMemory, type NodeUsage } from './usage.ts'

export type Strategy = SchedulerPolicy['strategy']

/** The seeded tie-breaker of one app on one node. */
export function tieBreak (seed: number, appHash: number, u: NodeUsage): number {
  return mix(seed, appHash, u.hash)
}

/** Negative when `a` is the better node for the app. */
export function compareNodes (a: NodeUsage, b: NodeUsage, strategy: Strategy, seed: number, appHash: number): number {
  if (strategy === 'spread') {
    if (a.apps !== b.apps) return a.apps - b.apps
    const fa = freeMemory(a)
    const fb = freeMemory(b)
    if (fa !== fb) return fb - fa
  } else {
    const fa = freeMemory(a)
    const fb = freeMemory(b)
    if (fa !== fb) return fa - fb
    if (a.apps !== b.apps) return b.apps - a.apps
  }
  if (a.node.load !== b.node.load) return a.node.load - b.node.load
  const ta = tieBreak(seed, appHash, a)
  const tb = tieBreak(seed, appHash, b)
  if (ta !== tb) return ta - tb
  return a.node.id < b.node.id ? -1 : a.node.id > b.node.id ? 1 : 0
}

/** The candidates, best first. */
export function rank (app: DesiredApp, candidates: readonly NodeUsage[], strategy: Strategy, seed: number): NodeUsage[] {
  const appHash = hashString(app.name)
  return [...candidates].sort((a, b) => compareNodes(a, b, strategy, seed, appHash))
}

/** The best candidate, or null when there is none: one pass, no sort. */
export function best (app: DesiredApp, candidates: Iterable<NodeUsage>, strategy: Strategy, seed: number): NodeUsage | null {
  const appHash = hashString(app.name)
  let top: NodeUsage | null = null
  for (const u of candidates) if (top === null || compareNodes(u, top, strategy, seed, appHash) < 0) top = u
  return top
}
