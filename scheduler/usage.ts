/**
 * What each node holds while a plan is being built: the snapshot's apps plus
 * the apps this same plan has already put there. Feasibility and ranking read
 * it; the planner updates it after every decision, so two apps decided in one
 * plan never count the same free memory or claim the same host port.
 */
import { hostPorts } from '../proto/app.ts'
import type { AppManifest } from '../proto/app.ts'
import type { ClusterSnapshot, DesiredApp, SchedNode } from '../proto/plan.ts'
import { hashString } from './random.ts'

export interface NodeUsage {
  node: SchedNode
  /** Desired apps on the node once the plan so far is applied (kept copies and apps planned here): what spread counts. */
  apps: number
  /** Apps this plan puts on the node (placements and moves to it). */
  plannedApps: number
  /** Memory requested by the apps this plan puts on the node; the node's own memFree already counts what runs. */
  plannedMemory: number
  /** Host ports in use on the node ("8080/tcp"), and by which app. */
  ports: Map<string, string>
  /** A stable hash of the node id, for seeded tie-breaking. */
  hash: number
}

export interface Usage {
  /** Every node of the snapshot, sorted by id. */
  nodes: NodeUsage[]
  byId: Map<string, NodeUsage>
  /** Node id to display name, for reasons people read. */
  names: Map<string, string>
}

const portCache = new WeakMap<AppManifest, string[]>()

/** Host ports of an app, computed once per manifest object. */
export function portsOf (manifest: AppManifest): string[] {
  let ports = portCache.get(manifest)
  if (ports === undefined) {
    ports = [...new Set(hostPorts(manifest))].sort()
    portCache.set(manifest, ports)
  }
  return ports
}

export function byString (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

/**
 * The usage of every node before any decision: host ports held by the desired
 * apps that have a copy there, in any state (a stopped container gets its
 * ports back when it restarts). Apps that are not desired any more are
 * unknown here (no manifest), so their ports are not counted.
 * `apps` starts at 0: the planner counts the copies it keeps.
 */
export function usageOf (snapshot: ClusterSnapshot): Usage {
  const nodes = [...snapshot.nodes].sort((a, b) => byString(a.id, b.id))
  const byId = new Map<string, NodeUsage>()
  const names = new Map<string, string>()
  for (const node of nodes) {
    if (byId.has(node.id)) continue
    byId.set(node.id, { node, apps: 0, plannedApps: 0, plannedMemory: 0, ports: new Map(), hash: hashString(node.id) })
    names.set(node.id, node.name === '' ? node.id : node.name)
  }
  const desired = new Map<string, DesiredApp>()
  for (const app of snapshot.desired) if (!desired.has(app.name)) desired.set(app.name, app)
  const placements = [...snapshot.actual].sort((a, b) => byString(a.app, b.app) || byString(a.node, b.node))
  for (const p of placements) {
    const app = desired.get(p.app)
    const u = byId.get(p.node)
    if (app === undefined || u === undefined) continue
    for (const port of portsOf(app.manifest)) if (!u.ports.has(port)) u.ports.set(port, app.name)
  }
  return { nodes: [...byId.values()], byId, names }
}

/** Records that this plan puts `app` on the node. */
export function reserve (u: NodeUsage, app: DesiredApp): void {
  u.apps++
  u.plannedApps++
  u.plannedMemory += app.manifest.requests.memoryBytes
  for (const port of portsOf(app.manifest)) if (!u.ports.has(port)) u.ports.set(port, app.name)
}

/** Free memory once the apps planned on the node so far run. */
export function freeMemory (u: NodeUsage): number {
  return u.node.memFree - u.plannedMemory
}

export function nameOf (usage: Usage, id: string): string {
  return usage.names.get(id) ?? id
}
