/**
 * The read model for the API: what `dcloud app ls` and `why` show, computed
 * from the committed desired state, every live node's report of what runs on
 * it, and the leader's last plan. Pure: the coordinator gathers the inputs.
 */
import { isStateful } from '../../proto/app.ts'
import { requestedPermissions } from '../../proto/permissions.ts'
import { appHost, appReach, clusterDomain } from '../../proto/frontdoor.ts'
import type { AppView, RelocationView, WhyView } from '../../proto/api.ts'
import type { AppReport } from '../../proto/status.ts'
import type { DesiredState } from '../../proto/cluster.ts'
import type { DesiredApp, Operation, Plan } from '../../proto/plan.ts'
import { formatProcedure } from '../../scheduler/procedure.ts'
import { RpcError } from '../mesh/rpc.ts'

/** A live node (this one included) and the apps it reports running. */
export interface NodeReports { id: string, name: string, address: string | null, reports: AppReport[] }

export interface ReadModel {
  desired: DesiredState
  nodes: NodeReports[]
  /** The last plan this node made as leader, or null. */
  lastPlan: Plan | null
  nodeName: (id: string) => string
}

export function appViews (m: ReadModel): AppView[] {
const nodes = m.nodes
const desired = m.desired
  const domain = clusterDomain(desired)
  return desired.apps.map(app => {
    const where = nodes.flatMap(n => n.reports.filter(r => r.name === app.name).map(r => ({ n, r })))
    // Prefer a running copy; during a move two copies exist for a moment.
    const best = where.find(w => w.r.state === 'running') ?? where[0]
    const stateful = isStateful(app.manifest)
    let state: AppView['state'] = 'pending'
    if (best !== undefined) state = best.r.state
    else if (m.lastPlan?.waiting.some(w => w.app === app.name) === true) state = 'waiting'
    else if (m.lastPlan?.unplaced.includes(app.name) === true) state = 'failed'
    const web = app.manifest.web
    const address = best?.n.address ?? null
    const endpoints = address === null ? [] : (best?.r.ports ?? []).map(p => `${p.protocol}://${address.includes(':') ? `[${address}]` : address}:${p.port}`)
    return {
      name: app.name,
      url: web != null ? `https://${appHost(app.name, domain)}${web.path !== undefined && web.path !== '/' ? web.path : '/'}` : null,
      app: app.manifest.id,
      version: app.manifest.version,
      node: best?.n.name ?? null,
      nodeId: best?.n.id ?? null,
      state,
      stateful,
      endpoints,
      reach: appReach(app),
      revision: app.revision,
      ...(stateful ? { generation: app.generation ?? 1, relocation: relocationView(app, m.nodeName) } : {}),
      ...(app.journal !== undefined ? { operation: { kind: app.journal.kind, id: app.journal.id, done: app.journal.done, of: app.journal.steps.length, steps: formatProcedure(app.journal, m.nodeName), recovery: app.journal.recovery ?? null } } : {}),
      ...(app.storage != null ? { hostPath: app.storage.hostPath } : {}),
      permissions: requestedPermissions(app.manifest, app.storage).map(p => p.name),
      grants: app.grants ?? []
    }
  })
}

export function whyView (name: string, m: ReadModel, flight: { op: Operation, error: string | null } | null): WhyView {
  const app = m.desired.apps.find(a => a.name === name)
  if (app === undefined) throw new RpcError('not_found', `no app named ${name}`)
  const view = appViews(m).find(a => a.name === name)
  const p = m.lastPlan
  const rejections = (p?.rejections[name] ?? []).map(r => ({ node: m.nodeName(r.node), reason: r.reason }))
  let detail = ''
  const waiting = p?.waiting.find(w => w.app === name)
  const conflict = p?.conflicts.find(c => c.app === name)
  if (conflict !== undefined) detail = `runs on ${conflict.nodes.map(n => m.nodeName(n)).join(' and ')}: ${conflict.reason}`
  else if (waiting !== undefined) detail = `waits on ${m.nodeName(waiting.node)}: ${waiting.reason}`
  else if (p?.unplaced.includes(name) === true) detail = 'no node can take it: see the reasons below'
  else if (flight?.error != null) detail = `last operation failed: ${flight.error}`
  else if (flight !== null) detail = `operation under way: ${formatOp(flight.op, m.nodeName)}`
  else if (app.pinnedNode !== null) detail = `pinned to ${m.nodeName(app.pinnedNode)} by the user`
  const grants = app.grants ?? []
  const ungranted = requestedPermissions(app.manifest, app.storage).map(r => r.name).filter(n => !grants.includes(n))
  return { app: name, node: view?.node ?? null, rejections, planTerm: p?.term ?? null, planAt: p?.createdAt ?? null, detail, grants, ungranted }
}

export function relocationView (app: DesiredApp, nodeName: (id: string) => string): RelocationView | null {
  const r = app.relocation
  if (r == null) return null
  return { kind: r.kind, snapshot: r.snapshot, snapshotTime: new Date(r.snapshotTime).toISOString(), from: r.from === null ? null : nodeName(r.from), to: nodeName(r.to), at: new Date(r.at).toISOString(), downtimeMs: r.downtimeMs }
}

export function formatOp (op: Operation, name: (id: string) => string): string {
  switch (op.op) {
    case 'place': return `place ${op.app} on ${name(op.node)}: ${op.reason}`
    case 'stop': return `stop ${op.app} on ${name(op.node)}: ${op.reason}`
    case 'move': return `move ${op.app} from ${name(op.from)} to ${name(op.to)}: ${op.reason}`
    case 'migrate': return `move ${op.app} with its data from ${name(op.from)} to ${name(op.to)}: ${op.reason}`
    case 'restore': return `restore ${op.app} on ${name(op.node)} from snapshot ${op.snapshot}: ${op.reason}`
    case 'retire': return `retire the stale copy of ${op.app} on ${name(op.node)}: ${op.reason}`
  }
}
