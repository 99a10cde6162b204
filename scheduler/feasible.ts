/**
 * Feasibility: can this node take this app now? Each check returns null or a
 * reason a person can act on; the first failing check, in a fixed order, is
 * the node's rejection (`dcloud app why NAME` prints it). The reasons are
 * listed in docs/scheduler.md.
 */
import type { AppManifest } from '../proto/app.ts'
import type { DesiredApp } from '../proto/plan.ts'
import { grantedDevices, hasDevice } from '../proto/permissions.ts'
import { freeMemory, portsOf, type NodeUsage } from './usage.ts'

const MIB = 1024 * 1024

/** Memory needed, in MiB rounded up (a request is never shown as smaller than it is). */
export function mibUp (bytes: number): string {
  return `${Math.ceil(bytes / MIB)} MiB`
}

/** Memory free, in MiB rounded down (and never below zero). */
export function mibDown (bytes: number): string {
  return `${Math.max(0, Math.floor(bytes / MIB))} MiB`
}

const constraintCache = new WeakMap<AppManifest, Array<[string, string]>>()

/** An app's constraints sorted by label, computed once per manifest (feasibility runs for every app on every node). */
function constraintsOf (m: AppManifest): Array<[string, string]> {
  let c = constraintCache.get(m)
  if (c === undefined) {
    c = Object.entries(m.constraints).sort((a, b) => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)
    constraintCache.set(m, c)
  }
  return c
}

/**
 * Why `u.node` cannot take `app`, or null when it can. `names` maps node ids
 * to display names for the reasons (the pinned node).
 */
export function feasible (app: DesiredApp, u: NodeUsage, names?: ReadonlyMap<string, string>): string | null {
  const node = u.node
  const m = app.manifest
  if (node.state !== 'alive') return `node is ${node.state}`
  if (node.unavailable != null) return node.unavailable
  if (node.drained === true) return 'drained by the user (`dcloud node undrain` takes it back)'
  if (app.pinnedNode !== null && app.pinnedNode !== node.id) return `pinned to ${names?.get(app.pinnedNode) ?? app.pinnedNode}`
  if (m.architectures.length > 0 && !m.architectures.includes(node.arch)) return `arch ${node.arch} not in [${m.architectures.join(', ')}]`
  for (const [key, want] of constraintsOf(m)) {
    const have = Object.hasOwn(node.labels, key) ? node.labels[key] : undefined
    if (have !== want) return have === undefined ? `label ${key}=${want} missing` : `label ${key}=${want} missing (node has ${key}=${have})`
  }
  for (const device of grantedDevices(m, app.grants)) {
    if (node.devices === undefined) return `needs the device ${device}; the node does not report its devices`
    if (!hasDevice(node.devices, device)) return `needs the device ${device}, which the node does not have`
  }
  if (m.requests.cpus > node.cores) return `needs ${m.requests.cpus} CPUs, node has ${node.cores}`
  const free = freeMemory(u)
  if (m.requests.memoryBytes > free) {
    const after = u.plannedApps === 0 ? '' : ` after ${u.plannedApps} planned app${u.plannedApps === 1 ? '' : 's'}`
    return `needs ${mibUp(m.requests.memoryBytes)}, ${mibDown(free)} free${after}`
  }
  for (const port of portsOf(m)) {
    const holder = u.ports.get(port)
    if (holder !== undefined && holder !== app.name) return `host port ${port} used by app ${holder}`
  }
  return null
}
