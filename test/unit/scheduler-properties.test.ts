/**
 * Invariants of the scheduler over random clusters, app sets and actual
 * states (fast-check): never an infeasible node, never one app twice, the
 * same plan for the same input whatever its order, stateful apps never
 * stopped or moved, a reason for every node an unplaced app could not use,
 * and repeated plans reach a fixed point.
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { isStateful } from '../../proto/app.ts'
import type { ClusterSnapshot, DesiredApp, PlanInput, Placement, SchedNode } from '../../proto/plan.ts'
import { feasible } from '../../scheduler/feasible.ts'
import { placeable, plan } from '../../scheduler/plan.ts'
import { reserve, usageOf } from '../../scheduler/usage.ts'
import { MiB, applyPlan, mockApp, mockNode, mockPlacement } from '../builders.ts'

const NODE_IDS = ['n0', 'n1', 'n2', 'n3', 'n4', 'n5', 'n6', 'n7']
const APP_NAMES = Array.from({ length: 16 }, (_, i) => `a${i}`)

const nodeArb = (id: string): fc.Arbitrary<SchedNode> => fc.record({
  state: fc.constantFrom('alive', 'alive', 'alive', 'alive', 'alive', 'suspect', 'dead'),
  arch: fc.constantFrom('amd64', 'arm64', 'arm'),
  cores: fc.integer({ min: 1, max: 8 }),
  load: fc.integer({ min: 0, max: 100 }),
  memFreeMiB: fc.integer({ min: 0, max: 64 }).map(x => x * 128),
  ssd: fc.constantFrom(undefined, 'true', 'false'),
  zone: fc.constantFrom(undefined, 'a', 'b')
}).map(r => mockNode({
  id,
  state: r.state,
  arch: r.arch,
  cores: r.cores,
  load: r.load,
  memFree: r.memFreeMiB * MiB,
  labels: { ...(r.ssd === undefined ? {} : { ssd: r.ssd }), ...(r.zone === undefined ? {} : { zone: r.zone }) }
}))

const appArb = (name: string): fc.Arbitrary<DesiredApp> => fc.record({
  memoryMiB: fc.integer({ min: 1, max: 16 }).map(x => x * 64),
  cpus: fc.constantFrom(0.1, 0.1, 0.5, 1, 2, 6),
  architectures: fc.oneof({ arbitrary: fc.constant<string[]>([]), weight: 3 }, { arbitrary: fc.subarray(['amd64', 'arm64', 'arm']), weight: 1 }),
  ssd: fc.constantFrom(undefined, undefined, undefined, 'true'),
  hostPorts: fc.oneof({ arbitrary: fc.constant<Array<number | string>>([]), weight: 2 }, { arbitrary: fc.subarray<number | string>([80, 443, 8080, '53/udp'], { maxLength: 2 }), weight: 1 }),
  stateful: fc.boolean().chain(b => b ? fc.boolean() : fc.constant(false)),
  pinnedNode: fc.option(fc.constantFrom(...NODE_IDS, 'elsewhere'), { freq: 10 }),
  revision: fc.integer({ min: 1, max: 3 })
}).map(r => mockApp(name, { ...r, constraints: r.ssd === undefined ? {} : { ssd: r.ssd }, pinnedNode: r.pinnedNode }))

const placementArb = fc.record({
  app: fc.constantFrom(...APP_NAMES, 'gone1', 'gone2'),
  // Biased towards one node, so that rebalancing has something to do.
  node: fc.oneof({ arbitrary: fc.constant('n0'), weight: 3 }, { arbitrary: fc.constantFrom(...NODE_IDS, 'unknown'), weight: 2 }),
  state: fc.constantFrom('running', 'running', 'starting', 'stopped', 'failed'),
  revision: fc.integer({ min: 1, max: 3 })
}).map(r => mockPlacement(r.app, r.node, r.state, r.revision))

const inputArb: fc.Arbitrary<PlanInput> = fc.record({
  nodeIds: fc.subarray(NODE_IDS, { minLength: 1 }),
  appNames: fc.subarray(APP_NAMES),
  actual: fc.array(placementArb, { maxLength: 30 }),
  strategy: fc.constantFrom('spread', 'spread', 'spread', 'binpack'),
  rebalanceSpread: fc.integer({ min: 1, max: 4 }),
  maxMovesPerPlan: fc.integer({ min: 0, max: 4 }),
  seed: fc.integer(),
  term: fc.nat(),
  /** Also runs every desired app on the first node: a node that just joined, for rebalancing. */
  lopsided: fc.boolean()
}).chain(r => fc.record({
  nodes: fc.tuple(...r.nodeIds.map(nodeArb)),
  desired: r.appNames.length === 0 ? fc.constant([] as DesiredApp[]) : fc.tuple(...r.appNames.map(appArb))
}).map(({ nodes, desired }) => ({
  snapshot: { nodes, desired, actual: r.lopsided ? [...desired.map(d => mockPlacement(d.name, r.nodeIds[0]!)), ...r.actual] : r.actual },
  term: r.term,
  now: 1_000_000,
  seed: r.seed,
  policy: { strategy: r.strategy, rebalanceSpread: r.rebalanceSpread, maxMovesPerPlan: r.maxMovesPerPlan }
})))

/** Placements on nodes that are not dead (an unknown node counts as dead). */
function present (snapshot: ClusterSnapshot, actual: Placement[], app: string): Set<string> {
  const state = new Map(snapshot.nodes.map(n => [n.id, n.state]))
  return new Set(actual.filter(p => p.app === app && (state.get(p.node) ?? 'dead') !== 'dead').map(p => p.node))
}

function shuffled<T> (xs: readonly T[], rand: () => number): T[] {
  const out = [...xs]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    ;[out[i], out[j]] = [out[j]!, out[i]!]
  }
  return out
}

function reversedKeys<T extends object> (o: T): T {
  return Object.fromEntries(Object.entries(o).reverse()) as T
}

const RUNS = { numRuns: 500 }

describe('scheduler properties', () => {
  it('never places or moves an app onto a node that cannot take it (each operation re-checked with feasible())', () => {
    fc.assert(fc.property(inputArb, input => {
      const p = plan(input)
      const usage = usageOf(input.snapshot)
      const desired = new Map(input.snapshot.desired.map(d => [d.name, d]))
      for (const op of p.operations) {
        if (op.op === 'stop' || op.op === 'retire') continue
        const target = op.op === 'place' || op.op === 'restore' ? op.node : op.to
        const app = desired.get(op.app)!
        const u = usage.byId.get(target)
        expect(u, `${op.app} sent to unknown node ${target}`).toBeDefined()
        expect(u!.node.state).toBe('alive')
        expect(feasible(placeable(app, usage), u!)).toBeNull()
        reserve(u!, app)
      }
    }), RUNS)
  })

  it('never places one app twice: one operation per app, and at most one copy on live nodes after the plan unless there were several before', () => {
    fc.assert(fc.property(inputArb, input => {
      const p = plan(input)
      const placed = p.operations.filter(o => o.op !== 'stop' && o.op !== 'retire').map(o => o.app)
      expect(new Set(placed).size).toBe(placed.length)
      const after = applyPlan(input.snapshot.actual, p.operations, input.snapshot.desired)
      for (const app of input.snapshot.desired) {
        const before = present(input.snapshot, input.snapshot.actual, app.name).size
        const now = present(input.snapshot, after, app.name).size
        expect(now).toBeLessThanOrEqual(Math.max(1, before))
        // Copies only multiply where the scheduler refuses to choose: stateful conflicts, or suspect nodes it leaves alone.
        if (now > 1 && !isStateful(app.manifest)) {
          const suspect = new Set(input.snapshot.nodes.filter(n => n.state === 'suspect').map(n => n.id))
          const onAlive = [...present(input.snapshot, after, app.name)].filter(n => !suspect.has(n))
          expect(onAlive.length).toBeLessThanOrEqual(1)
        }
      }
    }), RUNS)
  })

  it('gives the same plan for the same input, whatever the order of nodes, apps, placements and labels', () => {
    fc.assert(fc.property(inputArb, fc.integer(), (input, shuffleSeed) => {
      let s = shuffleSeed
      const rand = (): number => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x80000000 }
      const reordered: PlanInput = {
        ...input,
        snapshot: {
          nodes: shuffled(input.snapshot.nodes, rand).map(n => ({ ...reversedKeys(n), labels: reversedKeys(n.labels) })),
          desired: shuffled(input.snapshot.desired, rand).map(d => structuredClone(d)),
          actual: shuffled(input.snapshot.actual, rand)
        }
      }
      const a = plan(input)
      expect(plan(structuredClone(input))).toEqual(a)
      expect(plan(reordered)).toEqual(a)
    }), RUNS)
  })

  it('never stops a stateful app, and moves one only with its data (migrate, restore, retire)', () => {
    fc.assert(fc.property(inputArb, input => {
      const stateful = new Set(input.snapshot.desired.filter(d => isStateful(d.manifest)).map(d => d.name))
      for (const op of plan(input).operations) {
        if (stateful.has(op.app)) expect(['place', 'migrate', 'restore', 'retire'], `${op.op} of stateful ${op.app}`).toContain(op.op)
        else expect(['place', 'move', 'stop'], `${op.op} of stateless ${op.app}`).toContain(op.op)
      }
    }), RUNS)
  })

  it('gives every node an unplaced app could not use a reason', () => {
    fc.assert(fc.property(inputArb, input => {
      const p = plan(input)
      for (const app of p.unplaced) {
        const rejected = new Set((p.rejections[app] ?? []).map(r => r.node))
        for (const n of input.snapshot.nodes) expect(rejected.has(n.id), `${app} has no reason for ${n.id}`).toBe(true)
        for (const r of p.rejections[app] ?? []) expect(r.reason).not.toBe('')
      }
    }), RUNS)
  })

  it('reaches a fixed point when its plans are carried out and nothing else changes', () => {
    fc.assert(fc.property(inputArb, input => {
      let actual = input.snapshot.actual
      for (let round = 0; round < 30; round++) {
        const p = plan({ ...input, snapshot: { ...input.snapshot, actual } })
        if (p.operations.length === 0) return
        actual = applyPlan(actual, p.operations, input.snapshot.desired)
      }
      throw new Error('no fixed point after 30 plans')
    }), { numRuns: 150 })
  })
})
