/**
 * The control plane on one node: replicates the desired state, answers the
 * cluster's RPCs, executes operations the leader sends (refusing those of an
 * older term), and, on the elected leader, keeps actual state converging on
 * desired state with the pure scheduler.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import {
  APP_QUERY_PROTOCOL, CHANGE_PROTOCOL, OP_PROTOCOL,
  decodeAppQuery, decodeChange, decodeChangeResponse, decodeOpRequest, decodeOpResponse,
  decodeLogsReply, decodeSnapshotInfo, decodeWhyReply, LOGS_MAX_CHARS,
  type ChangeResponse, type DesiredChange, type Op, type OpRequest, type OpResponse, type SnapshotInfo
} from '../../proto/cluster.ts'
import { isStateful } from '../../proto/app.ts'
import { checkGrants } from '../../proto/permissions.ts'
import { ValidationError } from '../../proto/validate.ts'
import type { AppView, SnapshotView, WhyView } from '../../proto/api.ts'
import type { ClusterBeat, AppReport, NodeResources } from '../../proto/status.ts'
import type { AppStorage, ClusterSnapshot, DesiredApp, Operation, Placement, Plan, SchedNode, SchedulerPolicy } from '../../proto/plan.ts'
import { DEFAULT_POLICY, plan as makePlan } from '../../scheduler/plan.ts'
import { RpcError, rpcCall, type RpcServer } from '../mesh/rpc.ts'
import type { Mesh } from '../mesh/mesh.ts'
import type { Membership } from '../status/membership.ts'
import type { StatusGossip } from '../status/gossip.ts'
import type { ResourceCollector } from '../status/collector.ts'
import type { DesiredStore } from './desired-store.ts'
import { LEADER_WAIT_MS, type Replicator } from './replication.ts'
import type { ElectionDriver } from './election-driver.ts'
import type { AppRuntime } from '../runtime/apps.ts'
import { fetchImageFromPeers } from '../runtime/image-transfer.ts'
import { hasImage } from '../runtime/images.ts'
import type { SnapshotService } from '../snapshots/service.ts'
import { backupToFile, importBackup, readBackupMeta, type BackupFileResult } from '../snapshots/app-file.ts'
import { DataPlane } from './stateful.ts'
import { appViews, formatOp, whyView, type NodeReports } from './read-model.ts'
import { Procedures, operationOf } from './procedures.ts'
import type Docker from 'dockerode'
import { ThrottledLog, type Logger } from '../util/log.ts'

const RECONCILE_MS = 1000
/** How long a follower waits for the leader to commit a change it forwarded. */
const FORWARD_WAIT_MS = 15_000
/** An operation sent but not yet visible in the target's reports counts as placed this long. */
const INFLIGHT_GRACE_MS = 15_000
const OP_TIMEOUT_MS = 10 * 60_000

export interface CoordinatorInit {
  mesh: Mesh
  rpc: RpcServer
  membership: Membership
  gossip: StatusGossip
  collector: ResourceCollector
  store: DesiredStore
  election: ElectionDriver
  replicator: Replicator
  runtime: AppRuntime
  docker: Docker
  snapshots: SnapshotService
  policy?: SchedulerPolicy
  /** This node's front door, when it runs one: told before a copy of an app stops here. */
  frontDoor?: { withdraw: (app: string) => Promise<void>, release: (app: string) => void }
  /** How often retention runs (DataPlane); default 10 minutes. */
  retentionEveryMs?: number
  log: Logger
}

interface Inflight { op: Operation, startedAt: number, done: boolean, error: string | null }

/** After an operation failed on a node, that node gets no new app for this long: no retry storm. */
const FAILED_NODE_COOLDOWN_MS = 10_000

export interface CoordinatorCounters { opsExecuted: number, opsRefused: number, opsFailed: number, plans: number }

export class Coordinator {
  readonly counters: CoordinatorCounters = { opsExecuted: 0, opsRefused: 0, opsFailed: 0, plans: 0 }
  private readonly init: CoordinatorInit
  /** Operations refused at the fence, logged with their sender. */
  private readonly refusals: ThrottledLog
  private readonly inflight = new Map<string, Inflight>()
  private lastPlan: Plan | null = null
  /** Nodes whose last operation failed, and until when they get no new apps. */
  private readonly cooling = new Map<string, { until: number, reason: string }>()
  private readonly imageFetches = new Map<string, Promise<void>>()
  private timers: NodeJS.Timeout[] = []
  private reconciling = false
  private started = false
  private readonly controller = new AbortController()

  /** Snapshots, replication and fencing, on every node. */
  readonly data: DataPlane
  /** The leader's long operations on data (moves, failovers, rollbacks), journalled in the replicated state. */
  readonly procedures: Procedures

  constructor (init: CoordinatorInit) {
    this.init = init
    this.refusals = new ThrottledLog(init.log)
    this.data = new DataPlane({
      mesh: init.mesh,
      rpc: init.rpc,
      membership: init.membership,
      election: init.election,
      store: init.store,
      runtime: init.runtime,
      snapshots: init.snapshots,
      ...(init.retentionEveryMs !== undefined ? { retentionEveryMs: init.retentionEveryMs } : {}),
      log: init.log.child('data'),
      selfName: () => init.gossip.current().name,
      nodeName: (id) => this.nodeName(id),
      deploy: async (app, term, signal, restored) => { await this.deploy(app, term, signal, restored) },
      prefetchImages: async (app, signal) => {
        for (const ref of new Set(Object.values(app.manifest.compose.services).map(s => s.image))) {
          if (!(await hasImage(this.init.docker, ref, signal))) await this.fetchImage(ref, signal)
        }
      },
      localApps: () => this.init.gossip.current().resources.appStates,
      announce: () => { this.init.gossip.announceChange() }
    })
    this.procedures = new Procedures({
      store: init.store,
      membership: init.membership,
      selfId: () => this.selfId,
      nodeName: (id) => this.nodeName(id),
      send: async (node, op, term) => await this.send(node, op, term),
      commit: async (change) => { await this.commit(change) },
      snapshots: async (name, signal) => await this.data.list(name, signal),
      log: init.log.child('data')
    })
  }

  private get selfId (): string {
    return this.init.mesh.peerId.toString()
  }

  /** What every status beat says of the control plane. */
  beat (): ClusterBeat {
    const d = this.init.store.current()
    return { term: this.init.election.term, leader: this.init.election.leader, desiredRevision: d.revision }
  }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    const { rpc } = this.init
    await rpc.register({ protocol: CHANGE_PROTOCOL, decode: decodeChange, handle: async (change, _from, signal) => await this.change(change, signal) })
    await rpc.register({ protocol: OP_PROTOCOL, decode: decodeOpRequest, handle: async (req, from, signal) => await this.execute(req, from.toString(), signal), timeoutMs: OP_TIMEOUT_MS, maxRequestBytes: 1024 * 1024 })
    await rpc.register({
      protocol: APP_QUERY_PROTOCOL,
      decode: decodeAppQuery,
      handle: async (q, _from, signal) => {
        if (q.kind === 'logs') return { node: this.selfId, text: await this.init.runtime.logs(q.name, { tail: q.tail, signal }) }
        if (q.kind === 'rollback') return await this.rollback(q.name, q.snapshot, signal)
        return this.localWhy(q.name)
      },
      timeoutMs: OP_TIMEOUT_MS
    })
    await this.data.start()
    this.init.store.onCommitted(() => { this.init.gossip.announceChange(); void this.reconcile() })
    this.timers.push(setInterval(() => { void this.reconcile() }, RECONCILE_MS))
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    this.controller.abort()
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    await this.data.stop()
  }

  // ---- desired state ---------------------------------------------------

  /** Commits a user's change through the leader's log (forwarding it to the leader from a follower). */
  async change (change: DesiredChange, signal?: AbortSignal): Promise<ChangeResponse> {
    const { election, mesh, replicator } = this.init
    if (!election.isLeader) {
      const leader = election.leader
      if (leader === null || leader === this.selfId) throw new RpcError('no_leader', 'no scheduler is elected right now; try again in a few seconds')
      return await rpcCall(mesh, peerIdFromString(leader), CHANGE_PROTOCOL, change, { decode: decodeChangeResponse, signal, timeoutMs: FORWARD_WAIT_MS })
    }
    if ((change.kind === 'move' || change.kind === 'drain') && !this.isKnownNode(change.node)) throw new RpcError('not_found', `no node ${change.node} in the cluster`)
    const r = await replicator.propose(change, signal)
    this.init.log.info('desired state changed', { revision: r.revision, change: change.kind, app: change.kind === 'install' ? change.app.name : 'name' in change && change.kind !== 'secret' ? change.name : undefined, secret: change.kind === 'secret' ? change.name : undefined, domain: change.kind === 'domain' ? change.domain ?? 'default' : undefined, reach: change.kind === 'expose' ? change.reach : undefined, node: change.kind === 'drain' || change.kind === 'move' ? this.nodeName(change.node) : undefined })
    return r
  }

  /**
   * The leader's own change (a new data generation): committed, or it
   * throws. A leader that cannot reach a majority must not move data.
   */
  private async commit (change: DesiredChange): Promise<void> {
    await this.init.replicator.propose(change)
  }

  // ---- operations on this node -----------------------------------------

  /** Runs an operation, only from the leader of this node's current term (fencing: scheduler/election.ts, acceptFromLeader). */
  async execute (req: OpRequest, from: string, signal: AbortSignal): Promise<OpResponse> {
    const { election } = this.init
    const fence = req.leader !== from
      ? { accepted: false as const, code: 'not_leader' as const, reason: `the operation names ${req.leader} as leader but comes from ${from}` }
      : await election.acceptFromLeader(req.term, from, LEADER_WAIT_MS)
    if (!fence.accepted) {
      this.counters.opsRefused++
      this.refusals.warn(fence.code, 'refused an operation', { from, term: req.term, current: election.term, op: req.op.kind, reason: fence.reason })
      throw new RpcError(fence.code, `operation refused: ${fence.reason}`)
    }
    try {
      const res = await this.runOp(req.op, req.term, signal)
      this.counters.opsExecuted++
      return res
    } catch (err) {
      this.counters.opsFailed++
      throw err
    } finally {
      await this.init.collector.refresh().catch(() => {})
      this.init.gossip.announceChange()
    }
  }

  private async runOp (op: Op, term: number, signal: AbortSignal): Promise<OpResponse> {
    const { runtime, log } = this.init
    if (op.kind === 'remove') {
      // Requests go to the app's other copy (a move) before this one stops.
      await this.init.frontDoor?.withdraw(op.name)
      const kept = await runtime.remove(op.name, signal).finally(() => { this.init.frontDoor?.release(op.name) })
      log.info('app removed', { app: op.name, volumesKept: kept })
      return { done: true, detail: kept.length > 0 ? `removed; volumes kept: ${kept.join(', ')}` : 'removed' }
    }
    if (op.kind === 'deploy') {
      await this.deploy(op.app, term, signal, false)
      return { done: true, detail: 'deployed' }
    }
    const r = await this.data.runOp(op, term, signal)
    if (r === null) throw new RpcError('bad_request', `unknown operation ${(op as { kind: string }).kind}`)
    return r
  }

  private async deploy (app: DesiredApp, term: number, signal: AbortSignal, restored: boolean): Promise<void> {
    const { runtime, log } = this.init
    if (isStateful(app.manifest)) await this.confirmGeneration(app, signal)
    await this.confirmGrants(app, signal)
    log.info('deploying app', { app: app.name, revision: app.revision, generation: app.generation ?? 1, term })
    await runtime.deploy(app, {
      term,
      signal,
      restored,
      fetchImage: async (ref, sig) => { await this.fetchImage(ref, sig) },
      progress: (line) => { log.info(line, { app: app.name }) }
    })
  }

  /**
   * A stateful app starts only on the data generation the cluster committed:
   * the leader's operation says which, and this node's own copy of the
   * committed log must agree (a majority holds it).
   */
  private async confirmGeneration (app: DesiredApp, signal: AbortSignal): Promise<void> {
    const wanted = app.generation ?? 1
    await this.untilCommitted(app.name, signal, (committed) => {
      const generation = committed === undefined ? null : committed.generation ?? 1
      if (generation === wanted) return null
      return { final: generation !== null && generation > wanted, why: `${app.name} is not started at data generation ${wanted}: the committed state here says ${generation === null ? 'it is not installed' : `generation ${generation}`}` }
    })
  }

  /**
   * Defence in depth: an app runs with no power the owner did not grant in
   * the committed log as this node holds it, whatever the operation carries
   * (a leader's bug, or a peer holding the cluster key that sends its own).
   */
  private async confirmGrants (app: DesiredApp, signal: AbortSignal): Promise<void> {
    const wanted = app.grants ?? []
    if (wanted.length === 0) return
    await this.untilCommitted(app.name, signal, (committed) => {
      const granted = new Set(committed?.grants ?? [])
      const extra = wanted.filter(g => !granted.has(g))
      return extra.length === 0 ? null : { final: false, why: `${app.name} is not deployed with ${extra.join(', ')}: the committed state here does not grant ${extra.length === 1 ? 'it' : 'them'}` }
    })
  }

  /**
   * Waits until `judge` accepts this node's committed copy of the app (null),
   * refusing at once when it says the refusal is final. The commit can reach
   * this node a moment after the leader's operation does: it waits 5 s for it.
   */
  private async untilCommitted (name: string, signal: AbortSignal, judge: (committed: DesiredApp | undefined) => { final: boolean, why: string } | null): Promise<void> {
    const deadline = Date.now() + 5000
    for (;;) {
      const verdict = judge(this.init.store.current().apps.find(a => a.name === name))
      if (verdict === null) return
      if (verdict.final || Date.now() > deadline || signal.aborted) throw new RpcError('conflict', verdict.why)
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  }

  /** Two apps deploying at once on this node and needing the same image share one transfer. */
  private async fetchImage (ref: string, signal: AbortSignal): Promise<void> {
    let fetching = this.imageFetches.get(ref)
    if (fetching === undefined) {
      fetching = this.fetchImageOnce(ref, signal).finally(() => { this.imageFetches.delete(ref) })
      this.imageFetches.set(ref, fetching)
    }
    await fetching
  }

  private async fetchImageOnce (ref: string, signal: AbortSignal): Promise<void> {
    const holders = this.init.membership.list()
      .filter(m => m.state === 'alive' && m.resources?.images.includes(ref) === true)
      .map(m => peerIdFromString(m.status.peerId))
    if (holders.length === 0) throw new Error(`no node of the cluster reports image ${ref}`)
    const r = await fetchImageFromPeers(this.init.mesh, this.init.docker, ref, holders, {
      signal,
      progress: (p) => { this.init.log.debug('image transfer', { ref, ...p }) }
    })
    this.init.log.info('image fetched from a peer', { ref, from: r.from, bytes: r.bytes, ms: Math.round(r.ms) })
  }

  // ---- the leader's loop -----------------------------------------------

  private snapshot (): ClusterSnapshot {
    const now = Date.now()
    const self = this.init.gossip.current()
    const desired = this.init.store.current()
    const drained = new Set(desired.drained ?? [])
    const nodes: SchedNode[] = [this.schedNode(self.peerId, self.name, 'alive', { ...self.resources, snapshots: this.data.holdings() }, now, drained)]
    const actual: Placement[] = placementsOf(self.peerId, self.resources.appStates)
    for (const m of this.init.membership.list()) {
      if (m.resources === null) continue
      // Dead to the scheduler (its stateful apps restored elsewhere) only when a quorum no longer hears it:
      // a node this leader lost over a one-way or partial cut may still be heard, and fenced, by no one else.
      const state = m.state === 'dead' && !this.deadToQuorum(m.status.peerId, self.peerId) ? 'suspect' : m.state
      nodes.push(this.schedNode(m.status.peerId, m.status.name, state, m.resources, now, drained))
      // A dead node's apps are gone as far as placing goes; its reports are stale.
      if (m.state !== 'dead') actual.push(...placementsOf(m.status.peerId, m.resources.appStates))
    }
    const alive = new Set(nodes.filter(n => n.state === 'alive').map(n => n.id))
    for (const [app, f] of this.inflight) {
      const target = targetOf(f.op)
      // Data moves run several steps after the app first shows up: they end when their last step did.
      const dataMove = f.op.op === 'migrate' || f.op.op === 'restore' || f.op.op === 'retire'
      const seen = !dataMove && target !== null && actual.some(p => p.app === app && p.node === target && p.state === 'running')
      // An operation toward a node that is no longer alive will not complete: plan again at once.
      const lost = target !== null && !alive.has(target)
      // A finished stop needs no grace: planning it again would only repeat a harmless removal,
      // while holding it would keep the app from being placed (as when its other copy's node died).
      const settled = f.done && (f.op.op === 'stop' || f.op.op === 'retire' || now - f.startedAt > INFLIGHT_GRACE_MS)
      if (seen || lost || settled) { this.inflight.delete(app); continue }
      const generation = desired.apps.find(a => a.name === app)?.generation
      if (target !== null && !actual.some(p => p.app === app && p.node === target)) actual.push({ app, node: target, state: 'starting', revision: 0, ...(generation !== undefined ? { generation } : {}) })
    }
    return { nodes, desired: desired.apps, actual }
  }

  /**
   * Whether a quorum of the voters other than `peerId` has declared it dead:
   * this node by its own table, each peer by leaving it out of the echoes it
   * publishes (NodeStatus.heard lists only members it has not declared dead).
   * Its fencing lease is held only while a quorum echoes its beats, and any
   * quorum meets that one: so once a quorum testifies, its lease has lapsed
   * (docs/snapshots.md). A peer of an older version, which echoes nothing,
   * does not testify.
   */
  private deadToQuorum (peerId: string, selfId: string): boolean {
    const testify = new Set<string>([selfId])
    for (const m of this.init.membership.list()) {
      if (m.status.peerId === peerId || m.state !== 'alive' || m.status.heard === undefined) continue
      if (m.status.heard[peerId] === undefined) testify.add(m.status.peerId)
    }
    return this.init.election.isQuorum(testify)
  }

  private schedNode (id: string, name: string, state: SchedNode['state'], r: NodeResources, now: number, drained: ReadonlySet<string>): SchedNode {
    const cool = this.cooling.get(id)
    let unavailable: string | null = null
    if (r.dockerVersion === null) unavailable = 'its Docker engine does not answer'
    else if (cool !== undefined && cool.until > now) unavailable = `its last operation failed ${Math.round((now - cool.until + FAILED_NODE_COOLDOWN_MS) / 1000)} s ago: ${cool.reason}`
    const snapshots = Object.fromEntries((r.snapshots ?? []).map(h => [h.app, { id: h.id, time: h.time }]))
    return { id, name, state, arch: r.arch, cores: r.cpu.cores, load: r.cpu.load, memTotal: r.mem.total, memFree: r.mem.free, labels: r.labels, images: r.images, unavailable, drained: drained.has(id), snapshots, ...(r.devices !== undefined ? { devices: r.devices } : {}) }
  }

  /**
   * Whether the leader knows enough to plan: every live member has reported
   * what runs on it. Planning earlier (just after an election, or after agents
   * restarted) would take apps whose report has not arrived for missing and
   * start second copies.
   */
  private readyToPlan (): boolean {
    return this.init.election.votersCurrent() &&
      this.init.membership.list().every(m => m.state === 'dead' || m.resources !== null) &&
      // Until its first entry is committed, a new leader's state may lack what earlier leaders committed.
      this.init.replicator.ready
  }

  private async reconcile (): Promise<void> {
    const { election } = this.init
    if (!election.isLeader || this.reconciling || !this.readyToPlan()) return
    this.reconciling = true
    try {
      const term = election.term
      this.resumeJournals(term)
      const p = makePlan({ snapshot: this.snapshot(), term, now: Date.now(), seed: term, policy: this.init.policy ?? DEFAULT_POLICY })
      this.lastPlan = p
      this.counters.plans++
      const journalled = new Set(this.init.store.current().apps.filter(a => a.journal !== undefined).map(a => a.name))
      for (const op of p.operations) {
        // An app whose long operation is under way is that operation's until it ends or gives up.
        if (this.inflight.has(op.app) || journalled.has(op.app) || this.procedures.isRunning(op.app)) continue
        this.init.log.info('plan', { term, op: formatOp(op, (id) => this.nodeName(id)) })
        this.track(op, term, async () => { await this.perform(op, term) })
      }
    } catch (err) {
      this.init.log.error('planning failed', { error: (err as Error).stack })
    } finally {
      this.reconciling = false
    }
  }

  /**
   * Journals found with apps in the committed state and not running here: an
   * earlier leader's (or this node's before a restart) long operations. Each
   * goes on from the step it reached.
   */
  private resumeJournals (term: number): void {
    for (const app of this.init.store.current().apps) {
      const j = app.journal
      if (j === undefined || this.procedures.isRunning(app.name)) continue
      this.track(operationOf(j), term, async () => { await this.procedures.resume(j, term) })
    }
  }

  /** Runs an operation, visible as in flight (to plans, `why`) until it ends; a failure cools its node down. */
  private track (op: Operation, term: number, run: () => Promise<void>): void {
    const entry: Inflight = { op, startedAt: Date.now(), done: false, error: null }
    this.inflight.set(op.app, entry)
    void run().then(() => { entry.done = true }, (err: Error) => {
      entry.done = true
      entry.error = err.message
      const target = targetOf(op) ?? (op.op === 'retire' ? op.node : '')
      this.cooling.set(target, { until: Date.now() + FAILED_NODE_COOLDOWN_MS, reason: err.message.slice(0, 200) })
      this.init.log.warn('operation failed', { term, op: formatOp(op, (id) => this.nodeName(id)), error: err.message })
      // Let the next plan try again (elsewhere, if the node cannot take it).
      this.inflight.delete(op.app)
    })
  }

  private async perform (op: Operation, term: number): Promise<void> {
    if (await this.procedures.perform(op, term)) return
    const app = this.init.store.current().apps.find(a => a.name === op.app)
    switch (op.op) {
      case 'place':
        if (app === undefined) return
        await this.send(op.node, { kind: 'deploy', app }, term)
        return
      case 'stop':
        await this.send(op.node, { kind: 'remove', name: op.app }, term)
        return
      case 'move':
        if (app === undefined) return
        // Stateless: start the new copy first, then stop the old one.
        await this.send(op.to, { kind: 'deploy', app }, term)
        await this.send(op.from, { kind: 'remove', name: op.app }, term)
    }
  }

  /** Carried out by the leader (asked of it by a follower's API): the app goes back to one of its snapshots. */
  async rollback (name: string, snapshot: string, signal?: AbortSignal): Promise<SnapshotInfo> {
    const { election, mesh } = this.init
    if (!election.isLeader) {
      const leader = election.leader
      if (leader === null || leader === this.selfId) throw new RpcError('no_leader', 'no scheduler is elected right now; try again in a few seconds')
      return await rpcCall(mesh, peerIdFromString(leader), APP_QUERY_PROTOCOL, { kind: 'rollback', name, snapshot }, { decode: (v) => decodeSnapshotInfo(v), signal, timeoutMs: OP_TIMEOUT_MS })
    }
    if (this.inflight.has(name)) throw new RpcError('conflict', `an operation on ${name} is under way; try again when it is done`)
    const view = this.apps().find(a => a.name === name)
    if (view === undefined) throw new RpcError('not_found', `no app named ${name}`)
    const term = election.term
    const entry: Inflight = { op: { op: 'retire', app: name, node: view.nodeId ?? this.selfId, reason: `rollback to ${snapshot}` }, startedAt: Date.now(), done: false, error: null }
    this.inflight.set(name, entry)
    try {
      return await this.procedures.rollback(name, snapshot, term, view.nodeId, signal ?? AbortSignal.timeout(OP_TIMEOUT_MS))
    } finally {
      this.inflight.delete(name)
    }
  }

  /** Sends an operation stamped with `term` to a node (to ourselves without the network). */
  async send (node: string, op: Op, term: number, signal?: AbortSignal): Promise<OpResponse> {
    const req: OpRequest = { term, leader: this.selfId, op }
    if (node === this.selfId) return await this.execute(req, this.selfId, signal ?? AbortSignal.timeout(OP_TIMEOUT_MS))
    return await rpcCall(this.init.mesh, peerIdFromString(node), OP_PROTOCOL, req, { decode: decodeOpResponse, timeoutMs: OP_TIMEOUT_MS, signal })
  }

  // ---- views for the API -----------------------------------------------

  apps (): AppView[] {
    return appViews({ desired: this.init.store.current(), nodes: this.reports(), lastPlan: this.lastPlan, nodeName: (id) => this.nodeName(id) })
  }

  private reports (): NodeReports[] {
    const self = this.init.gossip.current()
    const out = [{ id: self.peerId, name: self.name, address: self.resources.address, reports: self.resources.appStates }]
    for (const m of this.init.membership.list()) {
      if (m.resources === null || m.state === 'dead') continue
      out.push({ id: m.status.peerId, name: m.status.name, address: m.resources.address, reports: m.resources.appStates })
    }
    return out
  }

  /** Why an app is where it is, from the leader's last plan (asked of the leader when we are not it). */
  async why (name: string, signal?: AbortSignal): Promise<WhyView> {
    const { election, mesh } = this.init
    if (!election.isLeader && election.leader !== null && election.leader !== this.selfId) {
      return await rpcCall(mesh, peerIdFromString(election.leader), APP_QUERY_PROTOCOL, { kind: 'why', name }, { decode: decodeWhyReply, signal, timeoutMs: 10_000 })
    }
    return this.localWhy(name)
  }

  private localWhy (name: string): WhyView {
    const flight = this.inflight.get(name)
    return whyView(name, { desired: this.init.store.current(), nodes: this.reports(), lastPlan: this.lastPlan, nodeName: (id) => this.nodeName(id) }, flight === undefined ? null : { op: flight.op, error: flight.error })
  }

  async logs (name: string, tail: number, signal?: AbortSignal): Promise<{ node: string, text: string }> {
    const view = this.apps().find(a => a.name === name)
    if (view === undefined) throw new RpcError('not_found', `no app named ${name}`)
    if (view.nodeId === null) throw new RpcError('not_found', `${name} runs nowhere yet`)
    if (view.nodeId === this.selfId) return { node: view.node ?? '', text: await this.init.runtime.logs(name, { tail, signal: signal ?? AbortSignal.timeout(20_000) }) }
    const res = await rpcCall(this.init.mesh, peerIdFromString(view.nodeId), APP_QUERY_PROTOCOL, { kind: 'logs', name, tail }, { decode: decodeLogsReply, signal, timeoutMs: 20_000, maxResponseBytes: LOGS_MAX_CHARS })
    return { node: view.node ?? res.node, text: res.text }
  }

  // ---- snapshots and backups for the API -----------------------------------

  private runningNode (name: string): string {
    const view = this.apps().find(a => a.name === name)
    if (view === undefined) throw new RpcError('not_found', `no app named ${name}`)
    if (!view.stateful) throw new RpcError('bad_request', `${name} keeps no data (it has no volumes): there is nothing to snapshot`)
    if (view.nodeId === null) throw new RpcError('unavailable', `${name} runs nowhere right now; \`dcloud app why ${name}\` says why`)
    return view.nodeId
  }

  async snapshotList (name: string, signal: AbortSignal): Promise<SnapshotView[]> {
    if (!this.init.store.current().apps.some(a => a.name === name) && !(await this.init.snapshots.apps()).includes(name)) throw new RpcError('not_found', `no app named ${name}`)
    return (await this.data.list(name, signal)).map(({ holderIds: _ids, ...v }) => v)
  }

  async snapshotTake (name: string, signal: AbortSignal): Promise<SnapshotInfo & { replicatedTo: string[], nodeName: string }> {
    const node = this.runningNode(name)
    return { ...await this.data.take(name, node, signal), nodeName: this.nodeName(node) }
  }

  /** Writes app `name` into `file` on this node (a new file; the API confines it to the backups directory). */
  async backup (name: string, file: string, signal: AbortSignal): Promise<BackupFileResult> {
    const app = this.init.store.current().apps.find(a => a.name === name)
    if (app === undefined) throw new RpcError('not_found', `no app named ${name}`)
    return await backupToFile(app, file, {
      snapshots: this.init.snapshots,
      snapshotHere: async (a, sig) => {
        const node = this.runningNode(a.name)
        const info = await this.data.take(a.name, node, sig)
        if (node !== this.selfId) await this.init.snapshots.pullFrom(node, a.name, sig)
        return info
      }
    }, signal)
  }

  /** Restores a backup file as app `name` (default: the name it was backed up under), pinned to `node` if given. */
  async restoreFile (file: string, opts: { name: string | null, node: string | null, storage?: AppStorage | null, grants?: string[] }, signal: AbortSignal): Promise<{ name: string, snapshot: string | null, revision: number }> {
    this.checkRestore(opts)
    // The metadata first (what it is, under which name), refused early if it is
    // no backup; the extraction then verifies every entry and checksum before
    // anything of it is used.
    const meta = await readBackupMeta(file, signal)
    const name = opts.name ?? meta.app
    this.checkRestore({ name, node: opts.node })
    // Its permissions (and its data directory's) before a byte of it is imported: the install would refuse them anyway.
    try {
      checkGrants(meta.manifest, opts.grants ?? [], 'grants', true, opts.storage)
    } catch (err) {
      if (err instanceof ValidationError) throw new RpcError('bad_request', err.message)
      throw err
    }
    const { snapshot } = await importBackup(file, name, this.init.snapshots, signal)
    const seed = snapshot === null ? null : { snapshot: snapshot.id, time: snapshot.time, node: this.selfId }
    const r = await this.change({
      kind: 'install',
      app: { name, manifest: meta.manifest, pinnedNode: opts.node, seed, ...(opts.storage != null ? { storage: opts.storage } : {}), ...((opts.grants ?? []).length > 0 ? { grants: [...new Set(opts.grants)].sort() } : {}) }
    }, signal)
    return { name, snapshot: snapshot?.id ?? null, revision: r.revision }
  }

  /** Refuses a restore that cannot succeed (an unknown node, a name taken) before any file is read or received. */
  checkRestore (opts: { name: string | null, node: string | null }): void {
    if (opts.node !== null && !this.isKnownNode(opts.node)) throw new RpcError('not_found', `no node ${opts.node} in the cluster`)
    if (opts.name !== null && this.init.store.current().apps.some(a => a.name === opts.name)) throw new RpcError('exists', `an app named ${opts.name} is already installed; restore it under another --name`)
  }

  private nodeName (id: string): string {
    if (id === this.selfId) return this.init.gossip.current().name
    return this.init.membership.get(id)?.status.name ?? id
  }

  /**
   * A node of the cluster: one heard in this life, or a voter remembered
   * from before a restart (a restarted agent may lead before gossip brings
   * it every peer's beat; found by CI, a drain of the dead old leader refused).
   */
  private isKnownNode (id: string): boolean {
    return id === this.selfId || this.init.membership.get(id) !== undefined || this.init.election.voters().includes(id)
  }
}

function placementsOf (node: string, reports: AppReport[]): Placement[] {
  return reports.map(r => ({ app: r.name, node, state: r.state, revision: r.revision, ...(r.generation !== undefined ? { generation: r.generation } : {}) }))
}

/** The node an operation makes the app run on, if any. */
function targetOf (op: Operation): string | null {
  switch (op.op) {
    case 'place': case 'restore': return op.node
    case 'move': case 'migrate': return op.to
    default: return null
  }
}

export type { PeerId, DesiredApp }
