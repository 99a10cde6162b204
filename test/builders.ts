/**
 * Builders for scheduler tests and benchmarks, in the manner of Nomad's
 * mock.Node() / mock.Job(): a valid default, and only what a test cares
 * about spelled out.
 */
import { serviceDefaults, type AppManifest, type ComposeService, type PortMapping } from '../proto/app.ts'
import type { ClusterSnapshot, DesiredApp, Operation, PlanInput, Placement, PlacementState, SchedNode, SchedulerPolicy } from '../proto/plan.ts'
import { DEFAULT_POLICY } from '../scheduler/plan.ts'

export const MiB = 1024 * 1024
export const GiB = 1024 * MiB

/** An alive amd64 node with 4 cores, 8 GiB of memory of which 6 GiB free, 10 % load. */
export function mockNode (over: Partial<SchedNode> & { id: string }): SchedNode {
  return {
    name: over.id,
    state: 'alive',
    arch: 'amd64',
    cores: 4,
    load: 10,
    memTotal: 8 * GiB,
    memFree: 6 * GiB,
    labels: {},
    images: [],
    ...over
  }
}

export interface ManifestOptions {
  /** Memory request in MiB (default 256). */
  memoryMiB?: number
  cpus?: number
  architectures?: string[]
  constraints?: Record<string, string>
  /** Host ports the app publishes: 8080 (tcp) or '53/udp'. */
  hostPorts?: Array<number | string>
  /** Gives the app a named volume. */
  stateful?: boolean
}

/** A one-service app (busybox) with a 256 MiB request, any architecture, no ports, no volumes. */
export function mockManifest (id: string, opts: ManifestOptions = {}): AppManifest {
  const ports: PortMapping[] = (opts.hostPorts ?? []).map(p => {
    const [port, proto] = String(p).split('/')
    return { host: Number(port), container: Number(port), protocol: proto === 'udp' ? 'udp' : 'tcp' }
  })
  const service: ComposeService = {
    image: `dcloud-test/${id}:1`,
    command: null,
    entrypoint: null,
    environment: {},
    ports,
    volumes: opts.stateful === true ? [{ source: 'data', target: '/data', kind: 'volume', readOnly: false }] : [],
    healthcheck: null,
    dependsOn: [],
    restart: 'unless-stopped',
    labels: {},
    user: null,
    ...serviceDefaults()
  }
  return {
    id,
    name: id,
    version: '1.0.0',
    description: `${id} for tests`,
    icon: null,
    category: null,
    architectures: opts.architectures ?? [],
    requests: { memoryBytes: (opts.memoryMiB ?? 256) * MiB, cpus: opts.cpus ?? 0.1 },
    web: null,
    constraints: opts.constraints ?? {},
    compose: { services: { main: service }, volumes: opts.stateful === true ? { data: { labels: {} } } : {}, configs: {} }
  }
}

/** A desired app instance; `pinnedNode` and `revision` among the options. */
export function mockApp (name: string, opts: ManifestOptions & { pinnedNode?: string | null, revision?: number } = {}): DesiredApp {
  return { name, manifest: mockManifest(name, opts), pinnedNode: opts.pinnedNode ?? null, revision: opts.revision ?? 1 }
}

export function mockPlacement (app: string, node: string, state: PlacementState = 'running', revision = 1): Placement {
  return { app, node, state, revision }
}

export function mockSnapshot (over: Partial<ClusterSnapshot> = {}): ClusterSnapshot {
  return { nodes: [], desired: [], actual: [], ...over }
}

/** A plan input at t = 1 000 000 ms, term 1, seed 42, the default policy. */
export function mockInput (snapshot: Partial<ClusterSnapshot>, over: Partial<Omit<PlanInput, 'snapshot' | 'policy'>> & { policy?: Partial<SchedulerPolicy> } = {}): PlanInput {
  return {
    snapshot: mockSnapshot(snapshot),
    term: over.term ?? 1,
    now: over.now ?? 1_000_000,
    seed: over.seed ?? 42,
    policy: { ...DEFAULT_POLICY, ...over.policy }
  }
}

/** `count` nodes n001..nNNN (zero-padded so ids sort as numbers). */
export function mockNodes (count: number, over: Partial<SchedNode> = {}): SchedNode[] {
  const width = String(count).length
  return Array.from({ length: count }, (_, i) => mockNode({ ...over, id: `n${String(i + 1).padStart(width, '0')}` }))
}

/** The actual state after carrying out a plan's operations, as the executor would. */
export function applyPlan (actual: Placement[], ops: Operation[], desired: DesiredApp[]): Placement[] {
  const revision = new Map(desired.map(d => [d.name, d.revision]))
  let out = [...actual]
  for (const op of ops) {
    if (op.op === 'stop' || op.op === 'retire') out = out.filter(p => !(p.app === op.app && p.node === op.node))
    else if (op.op === 'restore') out = [...out.filter(p => !(p.app === op.app && p.node === op.node)), mockPlacement(op.app, op.node, 'running', revision.get(op.app) ?? 1)]
    else if (op.op === 'place') out = [...out.filter(p => !(p.app === op.app && p.node === op.node)), mockPlacement(op.app, op.node, 'running', revision.get(op.app) ?? 1)]
    else out = [...out.filter(p => !(p.app === op.app && (p.node === op.from || p.node === op.to))), mockPlacement(op.app, op.to, 'running', revision.get(op.app) ?? 1)]
  }
  return out
}
