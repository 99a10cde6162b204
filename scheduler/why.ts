/**
 * `dcloud app why NAME`: what the plan did with an app, and why each node it
 * did not use could not take it, for people. Pure formatting of a Plan (and,
 * when given, the snapshot it was made from, for node names and where the app
 * runs now).
 */
import type { ClusterSnapshot, Plan } from '../proto/plan.ts'
import { byString } from './usage.ts'

const MAX_NODES_PER_LINE = 6

function listNodes (names: string[]): string {
  if (names.length <= MAX_NODES_PER_LINE) return names.join(', ')
  return `${names.slice(0, MAX_NODES_PER_LINE - 1).join(', ')} and ${names.length - MAX_NODES_PER_LINE + 1} more`
}

export function why (plan: Plan, app: string, snapshot?: ClusterSnapshot): string {
  const names = new Map<string, string>()
  const states = new Map<string, string>()
  for (const n of snapshot?.nodes ?? []) {
    names.set(n.id, n.name === '' ? n.id : n.name)
    states.set(n.id, n.state)
  }
  const name = (id: string): string => names.get(id) ?? id
  const lines: string[] = []

  for (const op of plan.operations) {
    if (op.app !== app) continue
    if (op.op === 'place') lines.push(`${app}: placed on ${name(op.node)}: ${op.reason}.`)
    else if (op.op === 'move') lines.push(`${app}: moves from ${name(op.from)} to ${name(op.to)}: ${op.reason}.`)
    else if (op.op === 'migrate') lines.push(`${app}: moves with its data from ${name(op.from)} to ${name(op.to)}: ${op.reason}.`)
    else if (op.op === 'restore') lines.push(`${app}: restored on ${name(op.node)} from snapshot ${op.snapshot}: ${op.reason}.`)
    else if (op.op === 'retire') lines.push(`${app}: stale copy retired on ${name(op.node)} (its data kept as a snapshot): ${op.reason}.`)
    else lines.push(`${app}: stopped on ${name(op.node)}: ${op.reason}.`)
  }
  for (const w of plan.waiting) if (w.app === app) lines.push(`${app}: waits on ${name(w.node)}: ${w.reason}.`)
  for (const c of plan.conflicts) if (c.app === app) lines.push(`${app}: conflict on ${c.nodes.map(name).join(' and ')}: ${c.reason}.`)
  if (plan.unplaced.includes(app)) lines.push(`${app}: not placed: no node can take it.`)

  const rejections = plan.rejections[app] ?? []
  if (rejections.length > 0) {
    lines.push(lines.length === 0 ? `${app}: nodes that cannot take it:` : 'Nodes that cannot take it:')
    // Nodes with the same reason share a line; reasons in the order of their first node's name.
    const byReason = new Map<string, string[]>()
    const sorted = [...rejections].sort((a, b) => byString(name(a.node), name(b.node)))
    for (const r of sorted) {
      let list = byReason.get(r.reason)
      if (list === undefined) byReason.set(r.reason, list = [])
      list.push(name(r.node))
    }
    for (const [reason, nodes] of byReason) lines.push(`  ${listNodes(nodes)}: ${reason}`)
  }

  if (lines.length === 0) {
    const desired = snapshot?.desired.some(d => d.name === app)
    const where = (snapshot?.actual ?? []).filter(p => p.app === app).map(p => `${name(p.node)} (${p.state}${states.get(p.node) === 'alive' ? '' : `, node ${states.get(p.node) ?? 'unknown'}`})`).sort(byString)
    if (snapshot !== undefined && desired === false) lines.push(`${app}: not installed.`)
    else if (where.length > 0) lines.push(`${app}: nothing to change: it runs on ${where.join(', ')}.`)
    else lines.push(`${app}: nothing to change in this plan.`)
  }
  return lines.join('\n')
}
