import { describe, expect, it } from 'vitest'
import type { DesiredApp, Placement, Plan, SchedNode } from '../../proto/plan.ts'
import { plan } from '../../scheduler/plan.ts'
import { reconcile, WAITING_STATEFUL_DEAD } from '../../scheduler/reconcile.ts'
import { why } from '../../scheduler/why.ts'
import { GiB, MiB, applyPlan, mockApp, mockInput, mockNode, mockNodes, mockPlacement } from '../builders.ts'

function ops (p: Plan): string[] {
  return p.operations.map(o => o.op === 'move' || o.op === 'migrate'
    ? `${o.op} ${o.app} ${o.from}->${o.to}`
    : o.op === 'restore' ? `restore ${o.app} ${o.node} ${o.snapshot} from ${o.source}` : `${o.op} ${o.app} ${o.node}`)
}

function countsOf (actual: Placement[], nodes: SchedNode[]): number[] {
  return nodes.map(n => actual.filter(p => p.node === n.id).length)
}

describe('reconcile', () => {
  it('sorts what it finds into needs, stops, waiting and conflicts', () => {
    const nodes = [mockNode({ id: 'n1' }), mockNode({ id: 'n2', state: 'dead' }), mockNode({ id: 'n3', state: 'suspect' })]
    const desired = [
      mockApp('fresh'),
      mockApp('orphaned-stateless'),
      mockApp('orphaned-stateful', { stateful: true }),
      mockApp('crashed'),
      mockApp('twice'),
      mockApp('twice-stateful', { stateful: true }),
      mockApp('on-suspect'),
      mockApp('pinned', { pinnedNode: 'n3' }),
      mockApp('fine')
    ]
    const actual = [
      mockPlacement('orphaned-stateless', 'n2'),
      mockPlacement('orphaned-stateful', 'n2'),
      mockPlacement('crashed', 'n1', 'failed'),
      mockPlacement('twice', 'n1'),
      mockPlacement('twice', 'n2'),
      mockPlacement('twice', 'n1', 'starting'),
      mockPlacement('twice-stateful', 'n1'),
      mockPlacement('twice-stateful', 'n3', 'stopped'),
      mockPlacement('on-suspect', 'n3'),
      mockPlacement('pinned', 'n1'),
      mockPlacement('fine', 'n1'),
      mockPlacement('uninstalled', 'n1'),
      mockPlacement('uninstalled', 'n3')
    ]
    const r = reconcile({ nodes, desired, actual })
    expect(r.needs.map(n => `${n.kind} ${n.app.name} ${n.current ?? '-'}`)).toEqual([
      'restart crashed n1',
      'new fresh -',
      'dead orphaned-stateless -'
      // 'pinned' is pinned to n3, which is suspect: a pin to a node that is not alive moves nothing.
    ])
    expect(r.stops).toEqual([{ app: 'uninstalled', node: 'n1', reason: 'not desired any more' }])
    expect(r.waiting.map(w => `${w.app} ${w.node}`)).toEqual(['on-suspect n3', 'orphaned-stateful n2'])
    expect(r.waiting.find(w => w.app === 'orphaned-stateful')?.reason).toBe(WAITING_STATEFUL_DEAD)
    expect(r.conflicts.map(c => `${c.app} ${c.nodes.join(',')}`)).toEqual(['twice-stateful n1,n3'])
    expect(r.keep.filter(k => k.movable).map(k => k.app.name).sort()).toEqual(['fine', 'twice'])
  })
})

describe('plan', () => {
  const cases: Array<{ title: string, nodes: SchedNode[], desired: DesiredApp[], actual?: Placement[], expected: string[], unplaced?: string[], waiting?: string[] }> = [
    {
      title: 'places a new app on the node with the fewest apps',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })],
      desired: [mockApp('a'), mockApp('b')],
      actual: [mockPlacement('a', 'n1')],
      expected: ['place b n2']
    },
    {
      title: 're-places a stateless app of a dead node on a survivor',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2', state: 'dead' }), mockNode({ id: 'n3', state: 'suspect' })],
      desired: [mockApp('a')],
      actual: [mockPlacement('a', 'n2')],
      expected: ['place a n1']
    },
    {
      title: 're-places an app of a node that left the snapshot',
      nodes: [mockNode({ id: 'n1' })],
      desired: [mockApp('a')],
      actual: [mockPlacement('a', 'gone')],
      expected: ['place a n1']
    },
    {
      title: 'leaves a stateful app of a dead node waiting when no live node holds a snapshot of it',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2', state: 'dead' })],
      desired: [mockApp('db', { stateful: true })],
      actual: [mockPlacement('db', 'n2')],
      expected: [],
      waiting: ['db n2: stateful: no live node holds a snapshot of it; it waits for its node to come back']
    },
    {
      title: 'restores the newest snapshot a live node holds when a stateful app\'s node is dead, on a holder',
      nodes: [
        mockNode({ id: 'n1', snapshots: { db: { id: 'aaaa0001', time: 1000 } } }),
        mockNode({ id: 'n2', state: 'dead', snapshots: { db: { id: 'ffff0009', time: 9000 } } }),
        mockNode({ id: 'n3', snapshots: { db: { id: 'bbbb0002', time: 2000 } } }),
        mockNode({ id: 'n4' })
      ],
      desired: [mockApp('db', { stateful: true })],
      actual: [mockPlacement('db', 'n2')],
      expected: ['restore db n3 bbbb0002 from n3']
    },
    {
      title: 'restores on a node without the snapshot when no holder can take the app, fetching it from a holder',
      nodes: [
        mockNode({ id: 'n1', memFree: 10 * MiB, snapshots: { db: { id: 'aaaa0001', time: 1000 } } }),
        mockNode({ id: 'n2', state: 'dead' }),
        mockNode({ id: 'n3' })
      ],
      desired: [mockApp('db', { stateful: true })],
      actual: [mockPlacement('db', 'n2')],
      expected: ['restore db n3 aaaa0001 from n1']
    },
    {
      title: 'retires a stale copy of an older data generation, and restores only once it is retired',
      nodes: [mockNode({ id: 'n1', snapshots: { db: { id: 'aaaa0001', time: 1000 } } }), mockNode({ id: 'n2' })],
      desired: [{ ...mockApp('db', { stateful: true }), generation: 3 }],
      actual: [{ ...mockPlacement('db', 'n2', 'stopped'), generation: 2 }],
      expected: ['retire db n2'],
      waiting: ['db n2: stateful: its stale copy is retired first, then its newest snapshot is restored']
    },
    {
      title: 'keeps the copy of the current generation and retires an older one',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })],
      desired: [{ ...mockApp('db', { stateful: true }), generation: 2 }],
      actual: [{ ...mockPlacement('db', 'n1'), generation: 2 }, { ...mockPlacement('db', 'n2', 'stopped'), generation: 1 }],
      expected: ['retire db n2']
    },
    {
      title: 'retires a stale copy on the node an app is pinned to before moving the app there',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })],
      desired: [{ ...mockApp('db', { stateful: true, pinnedNode: 'n1' }), generation: 2 }],
      actual: [{ ...mockPlacement('db', 'n2'), generation: 2 }, { ...mockPlacement('db', 'n1', 'stopped'), generation: 1 }],
      expected: ['retire db n1'],
      waiting: ['db n2: pinned to n1: waits for its stale copy to be retired first']
    },
    {
      title: 'moves apps off a drained node: stateless by restart, stateful with their data',
      nodes: [mockNode({ id: 'n1', drained: true }), mockNode({ id: 'n2' })],
      desired: [mockApp('a'), mockApp('db', { stateful: true })],
      actual: [mockPlacement('a', 'n1'), mockPlacement('db', 'n1')],
      expected: ['move a n1->n2', 'migrate db n1->n2']
    },
    {
      title: 'leaves apps of a suspect node alone',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2', state: 'suspect' })],
      desired: [mockApp('a'), mockApp('b', { stateful: true })],
      actual: [mockPlacement('a', 'n2'), mockPlacement('b', 'n2', 'failed')],
      expected: [],
      waiting: ['a n2: node n2 is suspect: left where it is until it is alive again or declared dead', 'b n2: node n2 is suspect: left where it is until it is alive again or declared dead']
    },
    {
      title: 'stops an app nobody wants any more, on alive nodes only',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2', state: 'suspect' })],
      desired: [],
      actual: [mockPlacement('old', 'n1'), mockPlacement('old', 'n2')],
      expected: ['stop old n1']
    },
    {
      title: 'keeps one copy of a stateless duplicate: running before failed',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })],
      desired: [mockApp('a')],
      actual: [mockPlacement('a', 'n1', 'failed'), mockPlacement('a', 'n2')],
      expected: ['stop a n1']
    },
    {
      title: 'keeps one copy of a stateless duplicate: the lowest node id when all else is equal',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' }), mockNode({ id: 'n3' })],
      desired: [mockApp('a')],
      actual: [mockPlacement('a', 'n3'), mockPlacement('a', 'n1'), mockPlacement('a', 'n2')],
      expected: ['stop a n2', 'stop a n3']
    },
    {
      title: 'never stops a copy of a stateful duplicate: a conflict',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })],
      desired: [mockApp('db', { stateful: true })],
      actual: [mockPlacement('db', 'n1'), mockPlacement('db', 'n2', 'stopped')],
      expected: []
    },
    {
      title: 'restarts a failed app where it was',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })],
      desired: [mockApp('a'), mockApp('db', { stateful: true })],
      actual: [mockPlacement('a', 'n1', 'failed'), mockPlacement('db', 'n1', 'stopped')],
      expected: ['place a n1', 'place db n1']
    },
    {
      title: 'moves a failed stateless app when its node cannot take it again',
      nodes: [mockNode({ id: 'n1', memFree: 100 * MiB }), mockNode({ id: 'n2' })],
      desired: [mockApp('a', { memoryMiB: 512 })],
      actual: [mockPlacement('a', 'n1', 'failed')],
      expected: ['move a n1->n2']
    },
    {
      title: 'a failed stateful app its node cannot take again moves with its data',
      nodes: [mockNode({ id: 'n1', memFree: 100 * MiB }), mockNode({ id: 'n2' })],
      desired: [mockApp('db', { memoryMiB: 512, stateful: true })],
      actual: [mockPlacement('db', 'n1', 'failed')],
      expected: ['migrate db n1->n2']
    },
    {
      title: 'a failed stateful app waits when no node can take it',
      nodes: [mockNode({ id: 'n1', memFree: 100 * MiB }), mockNode({ id: 'n2', memFree: 100 * MiB })],
      desired: [mockApp('db', { memoryMiB: 512, stateful: true })],
      actual: [mockPlacement('db', 'n1', 'failed')],
      expected: [],
      waiting: ['db n1: stateful: cannot restart on n1 (needs 512 MiB, 100 MiB free) and no other node can take it; it waits']
    },
    {
      title: 'a stateful app whose node\'s Docker does not answer waits for it, not restored elsewhere from an older snapshot',
      nodes: [mockNode({ id: 'n1', unavailable: 'its Docker engine does not answer' }), mockNode({ id: 'n2' })],
      desired: [mockApp('db', { stateful: true })],
      actual: [mockPlacement('db', 'n1', 'failed')],
      expected: [],
      waiting: ['db n1: stateful: waits for n1, where its data is: its Docker engine does not answer']
    },
    {
      title: 'a stateless app on a node whose Docker does not answer moves',
      nodes: [mockNode({ id: 'n1', unavailable: 'its Docker engine does not answer' }), mockNode({ id: 'n2' })],
      desired: [mockApp('web')],
      actual: [mockPlacement('web', 'n1', 'failed')],
      expected: ['move web n1->n2']
    },
    {
      title: 'moves a stateless app to the node it is pinned to',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })],
      desired: [mockApp('a', { pinnedNode: 'n2' })],
      actual: [mockPlacement('a', 'n1')],
      expected: ['move a n1->n2']
    },
    {
      title: 'a stateful app pinned elsewhere moves with its data',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })],
      desired: [mockApp('db', { pinnedNode: 'n2', stateful: true })],
      actual: [mockPlacement('db', 'n1')],
      expected: ['migrate db n1->n2']
    },
    {
      title: 'a pinned app whose node cannot take it stays where it runs',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2', arch: 'arm' })],
      desired: [mockApp('a', { pinnedNode: 'n2', architectures: ['amd64'] })],
      actual: [mockPlacement('a', 'n1')],
      expected: [],
      waiting: ['a n1: pinned to n2, but it cannot take it (arch arm not in [amd64]): it stays on n1']
    },
    {
      title: 'a new pinned app goes to its node only',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2', memFree: 1 * GiB })],
      desired: [mockApp('a', { pinnedNode: 'n2' })],
      expected: ['place a n2']
    },
    {
      title: 'accounts memory of apps placed earlier in the same plan',
      nodes: [mockNode({ id: 'n1', memFree: 1 * GiB })],
      desired: [mockApp('a', { memoryMiB: 600 }), mockApp('b', { memoryMiB: 600 })],
      expected: ['place a n1'],
      unplaced: ['b']
    },
    {
      title: 'accounts host ports of apps placed earlier in the same plan',
      nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })],
      desired: [mockApp('a', { hostPorts: [80] }), mockApp('b', { hostPorts: [80] }), mockApp('c', { hostPorts: [80] })],
      expected: ['place a n2', 'place b n1'],
      unplaced: ['c']
    },
    {
      title: 'places the largest requests first',
      nodes: [mockNode({ id: 'n1', memFree: 1 * GiB }), mockNode({ id: 'n2', memFree: 600 * MiB })],
      desired: [mockApp('small', { memoryMiB: 500 }), mockApp('big', { memoryMiB: 900 })],
      expected: ['place big n1', 'place small n2']
    },
    {
      title: 'binpack fills the fullest node that fits',
      nodes: [mockNode({ id: 'n1', memFree: 4 * GiB }), mockNode({ id: 'n2', memFree: 2 * GiB })],
      desired: [mockApp('a'), mockApp('b'), mockApp('c')],
      expected: ['place a n2', 'place b n2', 'place c n2']
    }
  ]

  it.each(cases)('$title', ({ title, nodes, desired, actual, expected, unplaced, waiting }) => {
    const p = plan(mockInput({ nodes, desired, actual: actual ?? [] }, { policy: { strategy: title.startsWith('binpack') ? 'binpack' : 'spread' } }))
    expect(ops(p)).toEqual(expected)
    expect(p.unplaced).toEqual(unplaced ?? [])
    if (waiting !== undefined) expect(p.waiting.map(w => `${w.app} ${w.node}: ${w.reason}`)).toEqual(waiting)
  })

  it('stamps the plan with the term and the clock it was given', () => {
    const p = plan(mockInput({ nodes: [mockNode({ id: 'n1' })] }, { term: 7, now: 1234 }))
    expect(p).toMatchObject({ term: 7, createdAt: 1234, operations: [], unplaced: [], waiting: [], conflicts: [] })
  })

  it('records a reason for every node that could not take an unplaced app', () => {
    const nodes = [
      mockNode({ id: 'n1', state: 'suspect' }),
      mockNode({ id: 'n2', arch: 'arm' }),
      mockNode({ id: 'n3' }),
      mockNode({ id: 'n4', memFree: 300 * MiB }),
      mockNode({ id: 'n5' })
    ]
    const desired = [mockApp('web1', { hostPorts: [8080] }), mockApp('a', { memoryMiB: 512, architectures: ['amd64', 'arm64'], constraints: { ssd: 'true' }, hostPorts: [8080] })]
    const p = plan(mockInput({ nodes: nodes.map(n => n.id === 'n4' || n.id === 'n5' ? { ...n, labels: { ssd: 'true' } } : n), desired, actual: [mockPlacement('web1', 'n5')] }))
    expect(p.unplaced).toEqual(['a'])
    expect(p.rejections.a).toEqual([
      { node: 'n1', reason: 'node is suspect' },
      { node: 'n2', reason: 'arch arm not in [amd64, arm64]' },
      { node: 'n3', reason: 'label ssd=true missing' },
      { node: 'n4', reason: 'needs 512 MiB, 300 MiB free' },
      { node: 'n5', reason: 'host port 8080/tcp used by app web1' }
    ])
    expect(why(p, 'a')).toBe([
      'a: not placed: no node can take it.',
      'Nodes that cannot take it:',
      '  n1: node is suspect',
      '  n2: arch arm not in [amd64, arm64]',
      '  n3: label ssd=true missing',
      '  n4: needs 512 MiB, 300 MiB free',
      '  n5: host port 8080/tcp used by app web1'
    ].join('\n'))
  })

  it('explains, for people, with node names and nodes of one reason on one line', () => {
    const nodes = [...mockNodes(9, { state: 'dead' }).map((n, i) => ({ ...n, name: `pi-${i + 1}` })), mockNode({ id: 'x', name: 'nas' })]
    const desired = [mockApp('a'), mockApp('db', { stateful: true })]
    const snapshot = { nodes, desired, actual: [mockPlacement('a', 'n1'), mockPlacement('db', 'n2')] }
    const p = plan(mockInput(snapshot))
    expect(why(p, 'a', snapshot)).toBe([
      'a: placed on nas: node pi-1 is dead (spread, 1 of 10 nodes fit).',
      'Nodes that cannot take it:',
      '  pi-1, pi-2, pi-3, pi-4, pi-5 and 4 more: node is dead'
    ].join('\n'))
    expect(why(p, 'db', snapshot)).toBe('db: waits on pi-2: stateful: no live node holds a snapshot of it; it waits for its node to come back.')
    expect(why(p, 'nothing', snapshot)).toBe('nothing: not installed.')
    const steady = { ...snapshot, actual: applyPlan(snapshot.actual, p.operations, desired) }
    expect(why(plan(mockInput(steady)), 'a', steady)).toBe('a: nothing to change: it runs on nas (running), pi-1 (running, node dead).')
  })

  it('rebalances after nodes join: 6 apps on n1, then n2 and n3 join, converge on 2/2/2 within maxMovesPerPlan per plan', () => {
    const desired = Array.from({ length: 6 }, (_, i) => mockApp(`app${i}`))
    let nodes = [mockNode({ id: 'n1' })]
    let actual: Placement[] = []
    const first = plan(mockInput({ nodes, desired, actual }))
    actual = applyPlan(actual, first.operations, desired)
    expect(countsOf(actual, nodes)).toEqual([6])

    nodes = mockNodes(3).map((n, i) => ({ ...n, id: `n${i + 1}` }))
    const history: number[][] = []
    for (let round = 0; round < 10; round++) {
      const p = plan(mockInput({ nodes, desired, actual }, { seed: round }))
      expect(p.operations.every(o => o.op === 'move')).toBe(true)
      expect(p.operations.length).toBeLessThanOrEqual(2)
      if (p.operations.length === 0) break
      actual = applyPlan(actual, p.operations, desired)
      history.push(countsOf(actual, nodes))
    }
    expect(history.at(-1)).toEqual([2, 2, 2])
    expect(history.length).toBe(2)
  })

  it('never rebalances pinned apps', () => {
    const desired = Array.from({ length: 4 }, (_, i) => mockApp(`pin${i}`, { pinnedNode: 'n1' }))
    const actual = desired.map(d => mockPlacement(d.name, 'n1'))
    const p = plan(mockInput({ nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })], desired, actual }))
    expect(p.operations).toEqual([])
  })

  it('rebalances stateless apps before stateful ones, and moves stateful ones with their data', () => {
    const desired = [mockApp('db0', { stateful: true }), mockApp('db1', { stateful: true }), mockApp('web')]
    const actual = desired.map(d => mockPlacement(d.name, 'n1'))
    const p = plan(mockInput({ nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })], desired, actual }))
    expect(ops(p)).toEqual(['move web n1->n2'])
    const only = [mockApp('db0', { stateful: true }), mockApp('db1', { stateful: true }), mockApp('db2', { stateful: true })]
    expect(ops(plan(mockInput({ nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })], desired: only, actual: only.map(d => mockPlacement(d.name, 'n1')) })))).toEqual(['migrate db0 n1->n2'])
  })

  it('does not rebalance within the spread policy, nor with binpack', () => {
    const desired = Array.from({ length: 3 }, (_, i) => mockApp(`a${i}`))
    const actual = [mockPlacement('a0', 'n1'), mockPlacement('a1', 'n1'), mockPlacement('a2', 'n2')]
    const nodes = [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })]
    expect(plan(mockInput({ nodes, desired, actual })).operations).toEqual([])
    // A gap of 1 never moves anything, even with rebalanceSpread 1: the move would only swap the gap.
    expect(plan(mockInput({ nodes, desired, actual }, { policy: { rebalanceSpread: 1 } })).operations).toEqual([])
    const lopsided = desired.map(d => mockPlacement(d.name, 'n1'))
    expect(plan(mockInput({ nodes, desired, actual: lopsided }, { policy: { strategy: 'binpack' } })).operations).toEqual([])
    expect(ops(plan(mockInput({ nodes, desired, actual: lopsided })))).toEqual(['move a0 n1->n2'])
  })

  it('moves no more than maxMovesPerPlan, and none with 0', () => {
    const desired = Array.from({ length: 20 }, (_, i) => mockApp(`a${String(i).padStart(2, '0')}`))
    const actual = desired.map(d => mockPlacement(d.name, 'n1'))
    const nodes = mockNodes(4).map((n, i) => ({ ...n, id: `n${i + 1}` }))
    expect(plan(mockInput({ nodes, desired, actual }, { policy: { maxMovesPerPlan: 5 } })).operations).toHaveLength(5)
    expect(plan(mockInput({ nodes, desired, actual }, { policy: { maxMovesPerPlan: 0 } })).operations).toHaveLength(0)
  })

  it('only moves an app to a node that can take it', () => {
    const desired = Array.from({ length: 4 }, (_, i) => mockApp(`a${i}`, { architectures: ['amd64'] }))
    const actual = desired.map(d => mockPlacement(d.name, 'n1'))
    const p = plan(mockInput({ nodes: [mockNode({ id: 'n1' }), mockNode({ id: 'n2', arch: 'arm64' })], desired, actual }))
    expect(p.operations).toEqual([])
  })
})
