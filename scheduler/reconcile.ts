/**
 * Reconcile: the difference between desired and actual state, before any
 * node is chosen. For every desired app it decides which copy is kept, which
 * copies are stopped, and whether the app needs a node; every placement of an
 * app nobody wants any more is stopped.
 *
 * Stateful apps are never stopped here: their data lives on their node. They
 * move only with their data (a migrate: pinned elsewhere, a drained node, a
 * node that cannot restart them), come back from the newest snapshot a live
 * node holds when their node is dead (a restore), and a copy of an older data
 * generation (left behind by a failover, found when its node comes back) is
 * retired: its data is kept as a snapshot, its containers go.
 *
 * Node states: only alive nodes are acted on. Copies on a suspect node are
 * left alone (the node may be back in a second); copies on a dead node (or a
 * node no longer in the snapshot) count as gone.
 */
import { isStateful } from '../proto/app.ts'
import type { NodeState } from '../proto/api.ts'
import type { ClusterSnapshot, Conflict, DesiredApp, Placement, PlacementState, Waiting } from '../proto/plan.ts'
import { byString } from './usage.ts'

export type NeedKind =
  /** Runs nowhere, and never did on a node we know. */
  | 'new'
  /** Its only copies are on dead nodes. */
  | 'dead'
  /** Its copy on an alive node is stopped or failed. */
  | 'restart'
  /** It runs on an alive node other than the one it is pinned to. */
  | 'pinned'
  /** It runs on a node the user drained. */
  | 'drain'
  /** Stateful, runs nowhere live: its newest snapshot held by a live node is restored. */
  | 'restore'

export interface Need {
  app: DesiredApp
  kind: NeedKind
  /** The alive node holding the copy to restart or to move away from; null for new apps and apps of dead nodes. */
  current: string | null
  /** State of that copy. */
  currentState: PlacementState | null
  reason: string
  /** kind 'restore': the newest snapshot live nodes hold, and which of them hold it. */
  snapshot?: { id: string, time: number, holders: string[] }
}

/** A stale copy of a stateful app to retire (its data kept as a snapshot). */
export interface RetireDecision {
  app: string
  node: string
  reason: string
}

/** A copy that stays where it is (unless a 'pinned' need moves it, or rebalancing does). */
export interface Keep {
  app: DesiredApp
  node: string
  state: PlacementState
  /** Rebalancing may move it: not pinned, running on an alive node that is not drained (stateful apps move with their data). */
  movable: boolean
}

export interface StopDecision {
  app: string
  node: string
  reason: string
}

export interface Reconciliation {
  /** Desired apps sorted by name (first of each name). */
  desired: DesiredApp[]
  needs: Need[]
  keep: Keep[]
  stops: StopDecision[]
  retires: RetireDecision[]
  waiting: Waiting[]
  conflicts: Conflict[]
}

export const WAITING_STATEFUL_DEAD = 'stateful: no live node holds a snapshot of it; it waits for its node to come back'

const STATE_ORDER: Record<PlacementState, number> = { running: 0, starting: 1, stopped: 2, failed: 3 }

/** Which copy of an app is kept when there are several: deterministic, whatever the input order. */
function betterCopy (a: Placement, b: Placement, nodeState: (id: string) => NodeState, pinned: string | null): number {
  const la = STATE_ORDER[a.state] < 2 ? 0 : 1
  const lb = STATE_ORDER[b.state] < 2 ? 0 : 1
  if (la !== lb) return la - lb
  const sa = nodeState(a.node) === 'alive' ? 0 : 1
  const sb = nodeState(b.node) === 'alive' ? 0 : 1
  if (sa !== sb) return sa - sb
  const pa = a.node === pinned ? 0 : 1
  const pb = b.node === pinned ? 0 : 1
  if (pa !== pb) return pa - pb
  if (a.revision !== b.revision) return b.revision - a.revision
  if (a.state !== b.state) return STATE_ORDER[a.state] - STATE_ORDER[b.state]
  return byString(a.node, b.node)
}

export function reconcile (snapshot: ClusterSnapshot): Reconciliation {
  const nodes = new Map<string, { state: NodeState, name: string, drained: boolean }>()
  const sortedNodes = [...snapshot.nodes].sort((a, b) => byString(a.id, b.id))
  for (const n of sortedNodes) {
    if (!nodes.has(n.id)) nodes.set(n.id, { state: n.state, name: n.name === '' ? n.id : n.name, drained: n.drained === true })
  }
  /** The newest snapshot of `app` a live node holds, with every live holder of it; null when none does. */
  const newestSnapshot = (app: string, seed: DesiredApp['seed']): { id: string, time: number, holders: string[] } | null => {
    let found: { id: string, time: number, holders: string[] } | null = null
    for (const n of sortedNodes) {
      // A backup's snapshot counts from the moment the user restores it, before its holder's next report.
      const seeded = seed != null && seed.node === n.id ? { id: seed.snapshot, time: seed.time } : undefined
      const reported = n.snapshots?.[app]
      const h = n.state !== 'alive' ? undefined : seeded !== undefined && (reported === undefined || reported.time <= seeded.time) ? seeded : reported
      if (h === undefined) continue
      if (found === null || h.time > found.time || (h.time === found.time && h.id < found.id)) found = { id: h.id, time: h.time, holders: [n.id] }
      else if (h.id === found.id) found.holders.push(n.id)
    }
    return found
  }
  /** A node we no longer know of is as good as dead. */
  const nodeState = (id: string): NodeState => nodes.get(id)?.state ?? 'dead'
  const name = (id: string): string => nodes.get(id)?.name ?? id

  const desired: DesiredApp[] = []
  const byName = new Map<string, DesiredApp>()
  for (const app of [...snapshot.desired].sort((a, b) => byString(a.name, b.name) || b.revision - a.revision)) {
    if (byName.has(app.name)) continue
    byName.set(app.name, app)
    desired.push(app)
  }

  // Copies by app; one entry per (app, node), the best state if Docker reported two.
  const copies = new Map<string, Placement[]>()
  const sorted = [...snapshot.actual].sort((a, b) => byString(a.app, b.app) || byString(a.node, b.node) || STATE_ORDER[a.state] - STATE_ORDER[b.state] || b.revision - a.revision)
  for (const p of sorted) {
    let list = copies.get(p.app)
    if (list === undefined) copies.set(p.app, list = [])
    if (list.length > 0 && list[list.length - 1]!.node === p.node) continue
    list.push(p)
  }

  const out: Reconciliation = { desired, needs: [], keep: [], stops: [], retires: [], waiting: [], conflicts: [] }

  // Orphans: apps nobody wants any more. Stopping never deletes volumes.
  for (const [app, list] of copies) {
    if (byName.has(app)) continue
    for (const p of list) {
      if (nodeState(p.node) === 'alive') out.stops.push({ app, node: p.node, reason: 'not desired any more' })
    }
  }

  for (const app of desired) {
    const stateful = isStateful(app.manifest)
    const generation = app.generation ?? 1
    let list = copies.get(app.name) ?? []
    let staleAlive = 0
    if (stateful) {
      // Copies of an older data generation are never started again: the data moved on.
      for (const p of list.filter(p => (p.generation ?? 1) < generation)) {
        const state = nodeState(p.node)
        if (state === 'alive') {
          staleAlive++
          out.retires.push({ app: app.name, node: p.node, reason: `stale copy (data generation ${p.generation ?? 1}; the live data is generation ${generation}): its data is kept as a snapshot` })
        } else if (state === 'suspect') {
          out.keep.push({ app, node: p.node, state: p.state, movable: false })
        }
      }
      list = list.filter(p => (p.generation ?? 1) >= generation)
    }
    const present = list.filter(p => nodeState(p.node) !== 'dead')
    const gone = list.filter(p => nodeState(p.node) === 'dead')

    if (present.length === 0) {
      if (!stateful) {
        if (gone.length > 0) out.needs.push({ app, kind: 'dead', current: null, currentState: null, reason: `node ${gone.map(p => name(p.node)).join(', ')} is dead` })
        else out.needs.push({ app, kind: 'new', current: null, currentState: null, reason: 'new app' })
        continue
      }
      const snap = newestSnapshot(app.name, app.seed)
      const where = gone.length > 0 ? `node ${gone.map(p => name(p.node)).join(', ')} is dead` : 'its data runs nowhere'
      if (staleAlive > 0) {
        out.waiting.push({ app: app.name, node: out.retires.find(r => r.app === app.name)!.node, reason: 'stateful: its stale copy is retired first, then its newest snapshot is restored' })
      } else if (snap !== null) {
        out.needs.push({ app, kind: 'restore', current: null, currentState: null, reason: `${where}: restore its newest snapshot`, snapshot: snap })
      } else if (gone.length === 0 && generation === 1) {
        out.needs.push({ app, kind: 'new', current: null, currentState: null, reason: 'new app' })
      } else {
        out.waiting.push({ app: app.name, node: gone[0]?.node ?? '', reason: WAITING_STATEFUL_DEAD })
      }
      continue
    }

    if (stateful && present.length > 1) {
      out.conflicts.push({
        app: app.name,
        nodes: present.map(p => p.node),
        reason: `stateful app on ${present.length} nodes (${present.map(p => `${name(p.node)}: ${p.state}`).join(', ')}): no copy is stopped automatically, each may hold data the other lacks`
      })
      for (const p of present) out.keep.push({ app, node: p.node, state: p.state, movable: false })
      continue
    }

    const ordered = [...present].sort((a, b) => betterCopy(a, b, nodeState, app.pinnedNode))
    const kept = ordered[0]!
    for (const other of ordered.slice(1)) {
      // Only stateless apps get here with several copies.
      if (nodeState(other.node) === 'alive') {
        out.stops.push({ app: app.name, node: other.node, reason: `duplicate: the copy on ${name(kept.node)} is kept` })
      } else {
        // On a suspect node: left alone, but it still occupies the node.
        out.keep.push({ app, node: other.node, state: other.state, movable: false })
      }
    }

    if (nodeState(kept.node) === 'suspect') {
      out.keep.push({ app, node: kept.node, state: kept.state, movable: false })
      out.waiting.push({ app: app.name, node: kept.node, reason: `node ${name(kept.node)} is suspect: left where it is until it is alive again or declared dead` })
      continue
    }

    if (kept.state === 'stopped' || kept.state === 'failed') {
      out.needs.push({ app, kind: 'restart', current: kept.node, currentState: kept.state, reason: `${kept.state} on ${name(kept.node)}` })
      continue
    }

    // A pin to a node that is not alive does not move anything (see placeable() in plan.ts).
    const pinnedElsewhere = app.pinnedNode !== null && app.pinnedNode !== kept.node && nodeState(app.pinnedNode) === 'alive'
    const drained = nodes.get(kept.node)?.drained === true
    // The owner granted or revoked a permission since this copy started: it is deployed again where
    // it is, and the runtime makes anew the containers whose powers changed (at least one: every
    // permission belongs to a service), labelled with the new revision, so this holds once. Only a
    // running copy: a starting one may be an operation under way (its revision is not known yet).
    if (!pinnedElsewhere && !(drained && app.pinnedNode === null) && kept.state === 'running' && kept.revision > 0 && kept.revision < (app.grantsRevision ?? 0)) {
      out.needs.push({ app, kind: 'restart', current: kept.node, currentState: kept.state, reason: `its permissions changed since it started (revision ${kept.revision}, now ${app.grantsRevision ?? 0})` })
      continue
    }
    out.keep.push({ app, node: kept.node, state: kept.state, movable: app.pinnedNode === null && kept.state === 'running' && !drained })
    if (pinnedElsewhere) {
      out.needs.push({ app, kind: 'pinned', current: kept.node, currentState: kept.state, reason: `pinned to ${name(app.pinnedNode!)}` })
    } else if (drained && app.pinnedNode === null) {
      out.needs.push({ app, kind: 'drain', current: kept.node, currentState: kept.state, reason: `node ${name(kept.node)} is drained` })
    }
  }
  return out
}
