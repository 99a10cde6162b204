/**
 * How long the pure scheduler takes to plan 1000 apps on 100 simulated nodes
 * (target: under 50 ms). Two cases:
 *
 * - placement: nothing runs yet; every app goes through feasibility on every
 *   node and ranking (the worst case: 100 000 feasibility checks).
 * - failover: all 1000 run, one node (about 10 apps) has just died; its
 *   stateless apps are re-placed, then rebalancing looks for moves.
 *
 * `benchPlan()` returns the figures (the benchmark report calls it);
 * `node scripts/bench/scheduler-plan.ts` prints them.
 */
import { fileURLToPath } from 'node:url'
import type { DesiredApp, PlanInput, SchedNode } from '../../proto/plan.ts'
import { plan } from '../../scheduler/plan.ts'
import { mulberry32 } from '../../scheduler/random.ts'
import { GiB, applyPlan, mockApp, mockInput, mockNode } from '../../test/builders.ts'

export interface Timing {
  medianMs: number
  p95Ms: number
  minMs: number
  maxMs: number
}

export interface SchedulerBench extends Timing {
  apps: number
  nodes: number
  iterations: number
  /** Apps placed by one placement plan, and apps that fit nowhere. */
  placed: number
  unplaced: number
  /** The failover case: one node of 100 dead, its apps re-placed. */
  failover: Timing & { replaced: number, waiting: number }
  node: string
}

/** 100 nodes: three quarters amd64, a quarter arm64, 4 to 16 GiB free, a third with an SSD. */
export function benchNodes (count = 100, seed = 1): SchedNode[] {
  const rand = mulberry32(seed)
  return Array.from({ length: count }, (_, i) => mockNode({
    id: `node-${String(i).padStart(3, '0')}`,
    arch: i % 4 === 3 ? 'arm64' : 'amd64',
    cores: 4 + 4 * (i % 2),
    load: Math.floor(rand() * 80),
    memTotal: 16 * GiB,
    memFree: (4 + Math.floor(rand() * 12)) * GiB,
    labels: i % 3 === 0 ? { ssd: 'true' } : {}
  }))
}

/** 1000 apps: 64 to 512 MiB, one in ten stateful, one in five with a host port, one in twenty wanting an SSD, one in ten amd64 only. */
export function benchApps (count = 1000, seed = 2): DesiredApp[] {
  const rand = mulberry32(seed)
  return Array.from({ length: count }, (_, i) => mockApp(`app-${String(i).padStart(4, '0')}`, {
    memoryMiB: 64 * (1 + Math.floor(rand() * 8)),
    stateful: i % 10 === 0,
    hostPorts: i % 5 === 0 ? [10_000 + (i % 300)] : [],
    constraints: i % 20 === 0 ? { ssd: 'true' } : {},
    architectures: i % 10 === 1 ? ['amd64'] : []
  }))
}

function timing (samples: number[]): Timing {
  const s = [...samples].sort((a, b) => a - b)
  const at = (q: number): number => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!
  const mid = Math.floor(s.length / 2)
  const median = s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
  return { medianMs: round(median), p95Ms: round(at(0.95)), minMs: round(s[0]!), maxMs: round(s[s.length - 1]!) }
}

function round (ms: number): number {
  return Math.round(ms * 100) / 100
}

function measure (input: PlanInput, warmup: number, iterations: number): number[] {
  for (let i = 0; i < warmup; i++) plan({ ...input, seed: i })
  const samples: number[] = []
  for (let i = 0; i < iterations; i++) {
    const started = performance.now()
    plan({ ...input, seed: 1000 + i })
    samples.push(performance.now() - started)
  }
  return samples
}

export async function benchPlan (opts: { apps?: number, nodes?: number, iterations?: number, warmup?: number } = {}): Promise<SchedulerBench> {
  const appCount = opts.apps ?? 1000
  const nodeCount = opts.nodes ?? 100
  const iterations = opts.iterations ?? 20
  const warmup = opts.warmup ?? 10
  const nodes = benchNodes(nodeCount)
  const desired = benchApps(appCount)

  const fresh = mockInput({ nodes, desired, actual: [] })
  const first = plan(fresh)
  const placement = timing(measure(fresh, warmup, iterations))

  // Everything placed, then the node with the most apps dies.
  const actual = applyPlan([], first.operations, desired)
  const perNode = new Map<string, number>()
  for (const p of actual) perNode.set(p.node, (perNode.get(p.node) ?? 0) + 1)
  const victim = [...perNode.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0]![0]
  const failed = mockInput({ nodes: nodes.map(n => n.id === victim ? { ...n, state: 'dead' as const } : n), desired, actual })
  const after = plan(failed)
  const replaced = after.operations.filter(o => o.op === 'place').length
  const waiting = after.waiting.length
  const failover = timing(measure(failed, warmup, iterations))

  return {
    ...placement,
    apps: appCount,
    nodes: nodeCount,
    iterations,
    placed: first.operations.length,
    unplaced: first.unplaced.length,
    failover: { ...failover, replaced, waiting },
    node: process.version
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const r = await benchPlan()
  console.log(`scheduler: ${r.apps} apps on ${r.nodes} nodes, ${r.iterations} runs after warm-up, Node ${r.node}`)
  console.log(`  placement (nothing running yet): median ${r.medianMs} ms, p95 ${r.p95Ms} ms, min ${r.minMs} ms, max ${r.maxMs} ms; ${r.placed} placed, ${r.unplaced} unplaced`)
  console.log(`  failover (one node dead: ${r.failover.replaced} stateless apps re-placed, ${r.failover.waiting} stateful wait): median ${r.failover.medianMs} ms, p95 ${r.failover.p95Ms} ms, max ${r.failover.maxMs} ms`)
  console.log(`  target: under 50 ms`)
}
