/**
 * The scheduler's pipeline, in the order it runs:
 *
 *   reconcile (reconcile.ts)  desired vs actual: what needs a node, what stops, what waits
 *   feasible  (feasible.ts)   which nodes can take each app, and why the others cannot
 *   rank      (rank.ts)       the best of the feasible nodes (spread or binpack)
 *   plan      (this file)     the operations, in order, with the usage of each node
 *                             updated after every decision; then rebalancing
 *
 * Pure: the time and the seed are inputs, and the same input gives the same
 * plan whatever the order of the arrays in it (everything is sorted first).
 */
import { isStateful } from '../proto/app.ts'
import type { DesiredApp, Operation, Plan, PlanInput, Rejection, SchedulerPolicy, Waiting } from '../proto/plan.ts'
import { feasible } from './feasible.ts'
import { best } from './rank.ts'
import { reconcile, type Keep, type Need } from './reconcile.ts'
import { byString, nameOf, reserve, usageOf, type NodeUsage, type Usage } from './usage.ts'

export const DEFAULT_POLICY: SchedulerPolicy = {
  strategy: 'spread',
  rebalanceSpread: 2,
  maxMovesPerPlan: 2
}

interface Choice {
  chosen: NodeUsage | null
  rejections: Rejection[]
  feasibleCount: number
  candidates: NodeUsage[]
}

/**
 * The app as placement sees it: a pin to a node that is not alive does not
 * hold, so an app pinned to a dead node fails over like any other (and moves
 * back once its node is alive again).
 */
export function placeable (app: DesiredApp, usage: Usage): DesiredApp {
  if (app.pinnedNode === null || usage.byId.get(app.pinnedNode)?.node.state === 'alive') return app
  return { ...app, pinnedNode: null }
}

/** Runs feasibility over every node (except `exclude`) and ranks the survivors. */
function choose (original: DesiredApp, usage: Usage, input: PlanInput, exclude: string | null): Choice {
  const app = placeable(original, usage)
  const rejections: Rejection[] = []
  const candidates: NodeUsage[] = []
  for (const u of usage.nodes) {
    if (u.node.id === exclude) continue
    const reason = feasible(app, u, usage.names)
    if (reason === null) candidates.push(u)
    else rejections.push({ node: u.node.id, reason })
  }
  if (original.pinnedNode !== null && !usage.byId.has(original.pinnedNode)) {
    rejections.push({ node: original.pinnedNode, reason: 'pinned here, but not a member of the cluster' })
  }
  return { chosen: best(app, candidates, input.policy.strategy, input.seed), rejections, feasibleCount: candidates.length, candidates }
}

/** Pinned apps first (they have one choice), then the largest requests (first-fit decreasing), then by name. */
function needOrder (a: Need, b: Need): number {
  const pa = a.app.pinnedNode === null ? 1 : 0
  const pb = b.app.pinnedNode === null ? 1 : 0
  if (pa !== pb) return pa - pb
  const ma = a.app.manifest.requests.memoryBytes
  const mb = b.app.manifest.requests.memoryBytes
  if (ma !== mb) return mb - ma
  return byString(a.app.name, b.app.name)
}

export function plan (input: PlanInput): Plan {
  const { snapshot, policy } = input
  const rec = reconcile(snapshot)
  const usage = usageOf(snapshot)
  const name = (id: string): string => nameOf(usage, id)

  const operations: Operation[] = []
  const rejections: Record<string, Rejection[]> = {}
  const unplaced: string[] = []
  const waiting: Waiting[] = [...rec.waiting]
  /** Apps this plan already places or moves: never touched twice. */
  const touched = new Set<string>()

  for (const k of rec.keep) {
    const u = usage.byId.get(k.node)
    if (u !== undefined) u.apps++
  }
  for (const s of rec.stops) operations.push({ op: 'stop', app: s.app, node: s.node, reason: s.reason })
  for (const r of rec.retires) {
    if (touched.has(r.app)) continue // one operation per app and plan: another stale copy waits for the next plan
    touched.add(r.app)
    operations.push({ op: 'retire', app: r.app, node: r.node, reason: r.reason })
  }

  const strategyNote = (c: Choice): string => `${policy.strategy}, ${c.feasibleCount} of ${usage.nodes.length} nodes fit`

  for (const need of [...rec.needs].sort(needOrder)) {
    const app = need.app
    const stateful = isStateful(app.manifest)
    if (touched.has(app.name)) {
      // Its stale copy is retired in this plan: a move onto that node now would restore over the
      // stale data before it is kept as a divergent snapshot. The next plan moves it.
      waiting.push({ app: app.name, node: need.current ?? '', reason: `${need.reason}: waits for its stale copy to be retired first` })
      continue
    }

    if (need.kind === 'restart' && need.current !== null) {
      const here = usage.byId.get(need.current)
      const refusal = here === undefined ? 'not a member of the cluster' : feasible(app, here, usage.names)
      if (here !== undefined && refusal === null) {
        reserve(here, app)
        touched.add(app.name)
        operations.push({ op: 'place', app: app.name, node: here.node.id, reason: `restart: ${need.reason}` })
        continue
      }
      const reason = refusal ?? 'not a member of the cluster'
      if (stateful && here !== undefined && here.node.unavailable != null) {
        // Its data is on that node and nobody can take it from there now (a move starts with a
        // snapshot there): it waits for the node rather than starting over from an older snapshot.
        waiting.push({ app: app.name, node: need.current, reason: `stateful: waits for ${name(need.current)}, where its data is: ${here.node.unavailable}` })
        continue
      }
      const c = choose(app, usage, input, need.current)
      rejections[app.name] = [{ node: need.current, reason }, ...c.rejections]
      if (c.chosen === null) {
        if (stateful) waiting.push({ app: app.name, node: need.current, reason: `stateful: cannot restart on ${name(need.current)} (${reason}) and no other node can take it; it waits` })
        else unplaced.push(app.name)
        continue
      }
      if (stateful && here === undefined) {
        // Its node left the cluster: nobody can copy its data from there.
        waiting.push({ app: app.name, node: need.current, reason: `stateful: its node ${name(need.current)} is not a member of the cluster; it waits` })
        continue
      }
      reserve(c.chosen, app)
      touched.add(app.name)
      operations.push({ op: stateful ? 'migrate' : 'move', app: app.name, from: need.current, to: c.chosen.node.id, reason: `${need.reason}, which cannot take it again: ${reason} (${strategyNote(c)})` })
      continue
    }

    if ((need.kind === 'pinned' || need.kind === 'drain') && need.current !== null) {
      const c = choose(app, usage, input, need.current)
      rejections[app.name] = c.rejections
      if (c.chosen === null) {
        const there = need.kind === 'pinned' ? `it cannot take it (${c.rejections.find(r => r.node === app.pinnedNode)?.reason ?? 'unknown'})` : 'no other node can take it'
        waiting.push({ app: app.name, node: need.current, reason: `${need.reason}, but ${there}: it stays on ${name(need.current)}` })
        continue
      }
      const from = usage.byId.get(need.current)
      if (from !== undefined) from.apps--
      reserve(c.chosen, app)
      touched.add(app.name)
      operations.push({ op: stateful ? 'migrate' : 'move', app: app.name, from: need.current, to: c.chosen.node.id, reason: need.reason })
      continue
    }

    if (need.kind === 'restore' && need.snapshot !== undefined) {
      const snap = need.snapshot
      const c = choose(app, usage, input, null)
      rejections[app.name] = c.rejections
      // A node that already holds the snapshot restores it without a transfer.
      const holders = c.candidates.filter(u => snap.holders.includes(u.node.id))
      const chosen = best(app, holders, policy.strategy, input.seed) ?? c.chosen
      if (chosen === null) {
        unplaced.push(app.name)
        continue
      }
      const source = snap.holders.includes(chosen.node.id) ? chosen.node.id : snap.holders[0]!
      reserve(chosen, app)
      touched.add(app.name)
      operations.push({ op: 'restore', app: app.name, node: chosen.node.id, snapshot: snap.id, snapshotTime: snap.time, source, reason: `${need.reason} (snapshot ${snap.id}, held by ${snap.holders.map(name).join(', ')}; ${strategyNote(c)})` })
      continue
    }

    // New apps, and stateless apps whose node died.
    const c = choose(app, usage, input, null)
    rejections[app.name] = c.rejections
    if (c.chosen === null) {
      unplaced.push(app.name)
      continue
    }
    reserve(c.chosen, app)
    touched.add(app.name)
    operations.push({ op: 'place', app: app.name, node: c.chosen.node.id, reason: `${need.reason} (${strategyNote(c)})` })
  }

  operations.push(...rebalance(rec.keep, usage, input, touched))

  unplaced.sort(byString)
  waiting.sort((a, b) => byString(a.app, b.app) || byString(a.node, b.node))
  return { term: input.term, createdAt: input.now, operations, rejections, unplaced, waiting, conflicts: rec.conflicts }
}

/**
 * Spread only: while the busiest alive node runs at least
 * `policy.rebalanceSpread` more apps than the least busy one, move a
 * stateless, unpinned, running app from a busier node to a node with at least
 * two apps fewer (so every move narrows the gap and plans converge), at most
 * `policy.maxMovesPerPlan` times per plan. Sources are tried busiest first,
 * apps by name, targets by rank.
 */
function rebalance (keep: Keep[], usage: Usage, input: PlanInput, touched: Set<string>): Operation[] {
  const { policy, seed } = input
  const ops: Operation[] = []
  if (policy.strategy !== 'spread' || policy.maxMovesPerPlan <= 0) return ops
  const alive = usage.nodes.filter(u => u.node.state === 'alive')
  if (alive.length < 2) return ops

  const movable = new Map<string, Keep[]>()
  for (const k of keep) {
    if (!k.movable) continue
    let list = movable.get(k.node)
    if (list === undefined) movable.set(k.node, list = [])
    list.push(k)
  }
  // Stateless apps first: moving them costs a restart, a stateful app's move costs a copy and a stop.
  for (const list of movable.values()) list.sort((a, b) => Number(isStateful(a.app.manifest)) - Number(isStateful(b.app.manifest)) || byString(a.app.name, b.app.name))

  let moves = 0
  while (moves < policy.maxMovesPerPlan) {
    let max = -Infinity
    let min = Infinity
    for (const u of alive) {
      if (u.apps > max) max = u.apps
      if (u.apps < min) min = u.apps
    }
    if (max - min < Math.max(1, policy.rebalanceSpread)) break
    const sources = alive.filter(u => u.apps >= min + 2 && (movable.get(u.node.id)?.length ?? 0) > 0)
      .sort((a, b) => b.apps - a.apps || byString(a.node.id, b.node.id))
    let moved = false
    for (const src of sources) {
      const list = movable.get(src.node.id)!
      for (let i = 0; i < list.length && !moved; i++) {
        const k = list[i]!
        if (touched.has(k.app.name)) continue
        const targets = alive.filter(u => u.apps <= src.apps - 2 && feasible(k.app, u, usage.names) === null)
        const to = best(k.app, targets, 'spread', seed)
        if (to === null) continue
        ops.push({ op: isStateful(k.app.manifest) ? 'migrate' : 'move', app: k.app.name, from: src.node.id, to: to.node.id, reason: `rebalance: ${nameOf(usage, src.node.id)} runs ${src.apps} apps, ${nameOf(usage, to.node.id)} runs ${to.apps} (spread policy moves apps when the gap is ${policy.rebalanceSpread} or more)` })
        src.apps--
        reserve(to, k.app)
        touched.add(k.app.name)
        list.splice(i, 1)
        moved = true
      }
      if (moved) break
    }
    if (!moved) break
    moves++
  }
  return ops
}
