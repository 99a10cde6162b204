import { describe, expect, it } from 'vitest'
import type { Placement, SchedNode } from '../../proto/plan.ts'
import { best, rank } from '../../scheduler/rank.ts'
import { usageOf } from '../../scheduler/usage.ts'
import { GiB, mockApp, mockNode } from '../builders.ts'

/** Usages with `apps` counted as the planner would. */
function usages (nodes: Array<SchedNode & { apps?: number }>): ReturnType<typeof usageOf>['nodes'] {
  const u = usageOf({ nodes, desired: [], actual: [] as Placement[] })
  for (const n of nodes) u.byId.get(n.id)!.apps = n.apps ?? 0
  return u.nodes
}

const app = mockApp('a')

describe('ranking', () => {
  it.each([
    ['spread: fewest apps first', 'spread', [{ id: 'n1', apps: 3 }, { id: 'n2', apps: 1 }, { id: 'n3', apps: 2 }], ['n2', 'n3', 'n1']],
    ['spread: then most free memory', 'spread', [{ id: 'n1', apps: 1, memFree: 2 * GiB }, { id: 'n2', apps: 1, memFree: 4 * GiB }, { id: 'n3', apps: 0, memFree: 1 * GiB }], ['n3', 'n2', 'n1']],
    ['spread: then lowest load', 'spread', [{ id: 'n1', apps: 1, load: 80 }, { id: 'n2', apps: 1, load: 5 }], ['n2', 'n1']],
    ['binpack: least free memory first', 'binpack', [{ id: 'n1', memFree: 2 * GiB }, { id: 'n2', memFree: 1 * GiB }, { id: 'n3', memFree: 4 * GiB }], ['n2', 'n1', 'n3']],
    ['binpack: then most apps', 'binpack', [{ id: 'n1', apps: 1 }, { id: 'n2', apps: 5 }], ['n2', 'n1']],
    ['binpack: then lowest load', 'binpack', [{ id: 'n1', apps: 1, load: 50 }, { id: 'n2', apps: 1, load: 20 }], ['n2', 'n1']]
  ] as const)('%s', (_title, strategy, nodes, expected) => {
    const ranked = rank(app, usages(nodes.map(n => ({ ...mockNode(n), apps: 'apps' in n ? n.apps : 0 }))), strategy, 1)
    expect(ranked.map(u => u.node.id)).toEqual(expected)
    expect(best(app, usages(nodes.map(n => ({ ...mockNode(n), apps: 'apps' in n ? n.apps : 0 }))), strategy, 1)?.node.id).toBe(expected[0])
  })

  it('breaks exact ties with the seed, not with the order nodes come in', () => {
    const nodes = Array.from({ length: 8 }, (_, i) => mockNode({ id: `n${i}` }))
    const winners = new Set<string>()
    for (let seed = 0; seed < 50; seed++) {
      const forward = best(app, usages(nodes), 'spread', seed)!.node.id
      const backward = best(app, usages([...nodes].reverse()), 'spread', seed)!.node.id
      expect(backward).toBe(forward)
      winners.add(forward)
    }
    // Different seeds spread the choice over the tied nodes.
    expect(winners.size).toBeGreaterThan(3)
  })

  it('has no best among no candidates', () => {
    expect(best(app, [], 'spread', 1)).toBeNull()
  })
})
