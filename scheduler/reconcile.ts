/**
 * Reconcile: the difference between desired and actual state, before any
 * node is chosen. For every desired app it decides which copy is kept, which
 * copies are stopped, and whether the app needs a node; every placement of an
 * app nobody wants any more is stopped. Stateful apps are never stopped or
 * moved here: their data lives on their node.
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

export interface Need {
  app: DesiredApp
  kind: NeedKind
  /** The alive node holding the copy to restart or to move away from; null for new apps and apps of dead nodes. */
  current: string | null
  /** State of that copy. */
  currentState: PlacementState | null
  reason: string
}

/** A copy that stays where it is (unless a 'pinned' need moves it, or rebalancing does). */
export interface Keep {
  app: DesiredApp
  node: string
  state: PlacementState
  /** Rebalancing may move it: stateless, not pinned, running on an alive node. */
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
  waiting: Waiting[]
  conflicts: Conflict[]
}

export const WAITING_STATEFUL_DEAD = 'stateful: waits for its node or a snapshot restore'

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
  const nodes = new Map<string, { state: NodeState, name: string }>()
  for (const n of [...snapshot.nodes].sort((a, b) => byString(a.id, b.id))) {
    if (!nodes.has(n.id)) nodes.set(n.id, { state: n.state, name: n.name === '' ? n.id : n.name })
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

  const out: Reconciliation = { desired, needs: [], keep: [], stops: [], waiting: [], conflicts: [] }

  // Orphans: apps nobody wants any more. Stopping never deletes volumes.
  for (const [app, list] of copies) {
    if (byName.has(app)) continue
    for (const p of list) {
      if (nodeState(p.node) === 'alive') out.stops.push({ app, node: p.node, reason: 'not desired any more' })
    }
  }

  for (const app of desired) {
    const stateful = isStateful(app.manifest)
    const list = copies.get(app.name) ?? []
    const present = list.filter(p => nodeState(p.node) !== 'dead')
    const gone = list.filter(p => nodeState(p.node) === 'dead')

    if (present.length === 0) {
      if (gone.length > 0) {
        const where = gone.map(p => name(p.node)).join(', ')
        if (stateful) {
          out.waiting.push({ app: app.name, node: gone[0]!.node, reason: WAITING_STATEFUL_DEAD })
        } else {
          out.needs.push({ app, kind: 'dead', current: null, currentState: null, reason: `node ${where} is dead` })
        }
      } else {
        out.needs.push({ app, kind: 'new', current: null, currentState: null, reason: 'new app' })
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

    const pinnedElsewhere = app.pinnedNode !== null && app.pinnedNode !== kept.node
    out.keep.push({ app, node: kept.node, state: kept.state, movable: !stateful && app.pinnedNode === null && kept.state === 'running' })
    if (pinnedElsewhere) {
      const pinned = name(app.pinnedNode!)
      if (stateful) {
        out.waiting.push({ app: app.name, node: kept.node, reason: `pinned to ${pinned}, but a stateful app stays on its node until it can move with a snapshot` })
      } else {
        out.needs.push({ app, kind: 'pinned', current: kept.node, currentState: kept.state, reason: `pinned to ${pinned}` })
      }
    }
  }
  return out
}
