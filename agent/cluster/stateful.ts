/**
 * Stateful apps across the cluster: their snapshots and where their data goes.
 *
 * On every node:
 * - runs the data operations the leader sends (snapshot, sync, handoff,
 *   restore, retire, purge);
 * - snapshots the stateful apps it runs on their schedule and has peers pull
 *   each new snapshot (replication);
 * - fences, through its QuorumFence (agent/fence/quorum-fence.ts): a node
 *   that no longer sees a quorum stops its stateful apps, well before the
 *   majority's failover restores them elsewhere (invariant 1).
 *
 * The leader's side, the long operations that send these (a move, a
 * failover, a rollback), is journalled steps: procedures.ts and
 * scheduler/procedure.ts. A retired stale copy (an older generation, back
 * from a partition) keeps its data as a labelled snapshot listed to the user.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import {
  SNAPSHOT_QUERY_PROTOCOL, decodeReplicateReply, decodeSnapshotList, decodeSnapshotQuery, decodeTakeReply,
  type Op, type OpResponse, type SnapshotInfo, type SnapshotQuery
} from '../../proto/cluster.ts'
import type { DesiredApp } from '../../proto/plan.ts'
import type { SnapshotView } from '../../proto/api.ts'
import { RpcError, rpcCall, type RpcServer } from '../mesh/rpc.ts'
import type { Mesh } from '../mesh/mesh.ts'
import type { Membership } from '../status/membership.ts'
import type { DesiredStore } from './desired-store.ts'
import type { ElectionDriver } from './election-driver.ts'
import type { AppRuntime } from '../runtime/apps.ts'
import { snapshotPolicy, type SnapshotService } from '../snapshots/service.ts'
import { KEEP_DEFAULTS } from '../../scheduler/retention.ts'
import { nextSnapshotDue } from '../../scheduler/snapshot-cadence.ts'
import type { Logger } from '../util/log.ts'
import { QuorumFence } from '../fence/quorum-fence.ts'

const SCHEDULE_CHECK_MS = 5000
const REPLICATE_TIMEOUT_MS = 10 * 60_000
/** How often each repository held here is checked against the retention rule. */
const RETENTION_CHECK_MS = 10 * 60_000

export interface DataPlaneInit {
  mesh: Mesh
  rpc: RpcServer
  membership: Membership
  election: ElectionDriver
  store: DesiredStore
  runtime: AppRuntime
  snapshots: SnapshotService
  log: Logger
  selfName: () => string
  nodeName: (id: string) => string
  /** Runs the app here (the coordinator's deploy, with image transfer); `restored`: its volumes were just restored for its generation. */
  deploy: (app: DesiredApp, term: number, signal: AbortSignal, restored: boolean) => Promise<void>
  /** Gets the app's images from peers ahead of a move, so no transfer happens while it is stopped. */
  prefetchImages: (app: DesiredApp, signal: AbortSignal) => Promise<void>
  /** The local apps' states (from the last Docker refresh). */
  localApps: () => Array<{ name: string, state: string, generation?: number }>
  /** Something changed that peers should hear of now (holdings, app states). */
  announce: () => void
  /** How often retention runs; default RETENTION_CHECK_MS. */
  retentionEveryMs?: number
}

export interface DataCounters { snapshots: number, snapshotFailures: number, replications: number, retired: number }

export class DataPlane {
  readonly counters: DataCounters = { snapshots: 0, snapshotFailures: 0, replications: 0, retired: 0 }
  private readonly init: DataPlaneInit
  private timers: NodeJS.Timeout[] = []
  private holdingsCache: Array<{ app: string, id: string, time: number }> = []
  /** Per app: its newest snapshot's time, how long the last take-and-replicate took, when the last one failed (scheduler/snapshot-cadence.ts). */
  private readonly cadence = new Map<string, { lastSnapshotAt: number | null, lastCycleMs: number, lastFailureAt: number | null }>()
  private readonly taking = new Set<string>()
  /** Fencing: this node's stateful apps stop when it no longer sees a quorum. */
  readonly fence: QuorumFence
  private retaining = false
  private readonly controller = new AbortController()
  private started = false

  constructor (init: DataPlaneInit) {
    this.init = init
    this.fence = new QuorumFence({
      seesQuorum: () => init.election.seesQuorum(),
      desired: () => init.store.current().apps,
      localApps: () => init.localApps(),
      quiesce: async (app, how, signal, stopTimeoutS) => await init.runtime.quiesce(app, how, signal, stopTimeoutS),
      announce: () => { init.announce() },
      log: init.log
    })
  }

  private get selfId (): string {
    return this.init.mesh.peerId.toString()
  }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    await this.init.snapshots.start()
    await this.init.snapshots.dropStages(AbortSignal.timeout(30_000)).catch((err: Error) => { this.init.log.warn('cannot clear stage directories of unfinished moves', { error: err.message }) })
    await this.init.rpc.register({
      protocol: SNAPSHOT_QUERY_PROTOCOL,
      decode: decodeSnapshotQuery,
      handle: async (q, from, signal) => await this.answer(q, from.toString(), signal),
      timeoutMs: REPLICATE_TIMEOUT_MS
    })
    await this.refreshHoldings()
    this.fence.start()
    this.timers.push(setInterval(() => { void this.scheduledSnapshots() }, SCHEDULE_CHECK_MS))
    this.timers.push(setInterval(() => { void this.retention() }, this.init.retentionEveryMs ?? RETENTION_CHECK_MS))
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    this.controller.abort()
    this.fence.stop()
    for (const t of this.timers) clearInterval(t)
    this.timers = []
  }

  /** The newest restorable snapshot of each app held here, for the status gossip. */
  holdings (): Array<{ app: string, id: string, time: number }> {
    return this.holdingsCache
  }

  private async refreshHoldings (): Promise<void> {
    try {
      const next = await this.init.snapshots.holdings(AbortSignal.timeout(60_000))
      const changed = JSON.stringify(next) !== JSON.stringify(this.holdingsCache)
      this.holdingsCache = next
      if (changed) this.init.announce()
    } catch (err) {
      this.init.log.warn('cannot list the snapshots held here', { error: (err as Error).message })
    }
  }

  /** The cadence facts of an app. Its newest snapshot held here counts too: after a restart, or one replicated here before the app moved in. */
  private cadenceOf (name: string): { lastSnapshotAt: number | null, lastCycleMs: number, lastFailureAt: number | null } {
    const known = this.cadence.get(name) ?? { lastSnapshotAt: null, lastCycleMs: 0, lastFailureAt: null }
    const held = this.holdingsCache.filter(h => h.app === name).map(h => h.time)
    const newest = Math.max(known.lastSnapshotAt ?? -1, ...held)
    return { ...known, lastSnapshotAt: newest < 0 ? null : newest }
  }

  private desired (name: string): DesiredApp {
    const app = this.init.store.current().apps.find(a => a.name === name)
    if (app === undefined) throw new RpcError('not_found', `no app named ${name}`)
    return app
  }

  // ---- operations on this node --------------------------------------------

  /** Runs a data operation the leader sent; null for operations that are not data operations. */
  async runOp (op: Op, term: number, signal: AbortSignal): Promise<OpResponse | null> {
    const { snapshots, runtime, log } = this.init
    switch (op.kind) {
      case 'snapshot': {
        const app = this.desired(op.name)
        const info = await this.takeAndReplicate(app, op.purpose, signal, op.purpose === 'pre-move' ? 'none' : undefined)
        return { done: true, detail: `snapshot ${info.id}`, snapshot: info }
      }
      case 'sync': {
        const app = this.init.store.current().apps.find(a => a.name === op.name)
        if (app !== undefined) {
          await this.init.prefetchImages(app, signal).catch((err: Error) => { log.warn('could not fetch the app\'s images ahead of its move', { app: op.name, error: err.message }) })
        }
        const r = await snapshots.pullFrom(op.from, op.name, signal)
        await this.refreshHoldings()
        // Found by test/lab/full-disk.test.ts: a target with room for the repository but not for the
        // restored data accepted the sync, the source then stopped the app and took its final snapshot,
        // and the restore failed here for want of space; the app stayed down, its move retried (stopping
        // it again) until the disk had room. Refused now, while the app still runs on the source, and
        // before a stage that could only fill the disk.
        if (op.restoreBytes !== undefined) await snapshots.checkRestoreRoom(op.name, app?.storage ?? null, op.restoreBytes, signal)
        // Refused while the app still runs on the source: its storage directory is not for this node to write.
        if (app !== undefined) await runtime.checkStorage(app)
        let staged = ''
        if (op.snapshot !== null) {
          // Not fatal: without a stage the restore copies everything, only slower.
          await snapshots.stage(op.name, op.snapshot, app?.storage ?? null, signal).then(() => { staged = `; staged ${op.snapshot}` }, (err: Error) => {
            log.warn('could not stage the copy ahead of a move', { app: op.name, snapshot: op.snapshot, error: err.message })
          })
        }
        return { done: true, detail: `fetched ${r.files} files, ${r.bytes} bytes${staged}` }
      }
      case 'handoff': {
        const app = this.desired(op.name)
        await runtime.quiesce(op.name, 'stop', signal)
        const info = await snapshots.take(app, { purpose: 'final', generation: app.generation ?? 1, signal, quiesce: 'none', hook: null, describe: false })
        this.counters.snapshots++
        log.info('handed off: stopped, final snapshot taken', { app: op.name, snapshot: info.id })
        return { done: true, detail: `stopped; final snapshot ${info.id}`, snapshot: info }
      }
      case 'restore': {
        // Sent again by a leader that resumed a journal (the first one died after the restore, before
        // recording it): the copy here already runs this generation and may have taken writes since.
        // Restoring over it would lose them; it only has to run.
        const here = (await runtime.list(signal)).find(a => a.app === op.app.name)
        if (here !== undefined && here.generation >= (op.app.generation ?? 1)) {
          await this.init.deploy(op.app, term, signal, false)
          return { done: true, detail: `runs data generation ${here.generation} already: not restored again` }
        }
        // Fetch what is missing first (only the last increment on a move: the bulk came with `sync`).
        if (op.from !== null) {
          const r = await snapshots.pullFrom(op.from, op.app.name, signal)
          log.info('fetched snapshots for a restore', { app: op.app.name, from: this.init.nodeName(op.from), files: r.files, bytes: r.bytes })
        }
        await runtime.checkStorage(op.app)
        await runtime.quiesce(op.app.name, 'stop', signal)
        await snapshots.restoreVolumes(op.app, op.snapshot, { signal, progress: (line) => { log.info(line, { app: op.app.name }) } })
        await this.init.deploy(op.app, term, signal, true)
        void this.refreshHoldings()
        return { done: true, detail: `restored snapshot ${op.snapshot} and started` }
      }
      case 'retire': {
        const app = this.init.store.current().apps.find(a => a.name === op.name)
        await runtime.quiesce(op.name, 'stop', signal)
        let info: SnapshotInfo | null = null
        if (app !== undefined && (await runtime.volumes(op.name, signal)).length > 0) {
          const label = `divergent-${this.init.selfName()}-${stamp(Date.now())}`.replace(/[^A-Za-z0-9_.:=/@+-]/g, '-')
          const generation = Math.min(...this.init.localApps().filter(a => a.name === op.name).map(a => a.generation ?? 1), app.generation ?? 1)
          info = await this.takeAndReplicate(app, 'divergent', signal, 'none', label, generation)
          const live = op.liveSnapshot === null ? null : await snapshots.find(op.name, op.liveSnapshot, signal)
          if (live !== null && live.tree === info.tree) log.info('the stale copy holds the same data as the live snapshot', { app: op.name, snapshot: info.id, live: live.id })
          else log.warn('a stale copy was kept as a snapshot', { app: op.name, snapshot: info.id, label })
        }
        const kept = await runtime.remove(op.name, signal)
        this.counters.retired++
        return { done: true, detail: `retired; data kept as snapshot ${info?.id ?? '(no volumes)'}; volumes kept: ${kept.join(', ')}`, ...(info !== null ? { snapshot: info } : {}) }
      }
      case 'purge': {
        const final = await snapshots.find(op.name, op.snapshot, signal)
        if (final === null) throw new RpcError('not_found', `the final snapshot ${op.snapshot} of ${op.name} is not here: the old copy is kept`)
        await runtime.remove(op.name, signal)
        const removed = await runtime.removeVolumes(op.name, signal)
        log.info('old copy removed after a move', { app: op.name, volumes: removed, finalSnapshot: final.id })
        return { done: true, detail: `removed volumes ${removed.join(', ')}` }
      }
      default:
        return null
    }
  }

  /** Takes a snapshot here and has peers pull it (as many as the app's policy asks); returns it with where it went. */
  async takeAndReplicate (app: DesiredApp, purpose: SnapshotInfo['purpose'] & string, signal: AbortSignal, quiesce?: 'none', label?: string, generation?: number): Promise<SnapshotInfo & { replicatedTo: string[] }> {
    const began = Date.now()
    const info = await this.init.snapshots.take(app, { purpose: purpose as never, generation: generation ?? app.generation ?? 1, signal, ...(quiesce !== undefined ? { quiesce } : {}), ...(label !== undefined ? { label } : {}) })
    this.counters.snapshots++
    await this.refreshHoldings()
    const replicatedTo = purpose === 'pre-move' ? [] : await this.replicate(app, signal)
    const want = snapshotPolicy(app)?.replicas ?? 0
    // Protected only once a peer holds it: a cycle short of its replicas counts as failed for the cadence.
    const short = purpose !== 'pre-move' && replicatedTo.length < want
    this.cadence.set(app.name, { lastSnapshotAt: info.time, lastCycleMs: Date.now() - began, lastFailureAt: short ? Date.now() : null })
    return { ...info, replicatedTo }
  }

  /**
   * Has `replicas` peers pull the app's repository from here. Peers that
   * already hold it come first (they need only the increment), then those
   * with the most free disk.
   */
  async replicate (app: DesiredApp, signal: AbortSignal): Promise<string[]> {
    const want = snapshotPolicy(app)?.replicas ?? 1
    if (want === 0) return []
    const peers = this.init.membership.list()
      .filter(m => m.state === 'alive' && m.resources !== null)
      .sort((a, b) => {
        const ha = a.resources?.snapshots?.some(s => s.app === app.name) === true ? 0 : 1
        const hb = b.resources?.snapshots?.some(s => s.app === app.name) === true ? 0 : 1
        return ha - hb || (b.resources?.diskFree ?? 0) - (a.resources?.diskFree ?? 0) || (a.status.peerId < b.status.peerId ? -1 : 1)
      })
    const done: string[] = []
    for (const m of peers) {
      if (done.length >= want) break
      try {
        await rpcCall(this.init.mesh, peerIdFromString(m.status.peerId), SNAPSHOT_QUERY_PROTOCOL, { kind: 'replicate', name: app.name }, { decode: decodeReplicateReply, signal, timeoutMs: REPLICATE_TIMEOUT_MS })
        done.push(m.status.name)
        this.counters.replications++
      } catch (err) {
        this.init.log.warn('a peer could not take a replica', { app: app.name, peer: m.status.name, error: (err as Error).message })
      }
    }
    if (done.length < want) this.init.log.warn('fewer replicas than asked for', { app: app.name, want, got: done.length })
    return done
  }

  private async answer (q: SnapshotQuery, from: string, signal: AbortSignal): Promise<unknown> {
    switch (q.kind) {
      case 'list':
        return await this.init.snapshots.list(q.name, signal)
      case 'take': {
        const app = this.desired(q.name)
        if (!this.init.localApps().some(a => a.name === q.name)) throw new RpcError('not_found', `${q.name} does not run on ${this.init.selfName()}`)
        return await this.takeAndReplicate(app, 'manual', signal)
      }
      case 'replicate': {
        // Only ever from the asker: a peer cannot make this node fetch from a third party.
        const r = await this.init.snapshots.pullFrom(from, q.name, signal)
        await this.refreshHoldings()
        return { files: r.files, bytes: r.bytes }
      }
    }
  }

  // ---- schedule ------------------------------------------------------------

  /** Snapshots each stateful app running here when its interval has passed (and at once when it has none yet). */
  private async scheduledSnapshots (): Promise<void> {
    const now = Date.now()
    for (const local of this.init.localApps()) {
      if (local.state !== 'running' || this.taking.has(local.name)) continue
      const app = this.init.store.current().apps.find(a => a.name === local.name)
      const policy = app === undefined ? null : snapshotPolicy(app)
      if (app === undefined || policy === null || policy.everyMs === 0) continue
      if ((local.generation ?? 1) !== (app.generation ?? 1)) continue // a stale copy is not ours to snapshot
      const due = nextSnapshotDue({ everyMs: policy.everyMs, ...this.cadenceOf(app.name), checkEveryMs: SCHEDULE_CHECK_MS })
      if (now < due) continue
      this.taking.add(app.name)
      this.takeAndReplicate(app, 'scheduled', this.controller.signal)
        .catch((err: Error) => {
          this.counters.snapshotFailures++
          this.cadence.set(app.name, { ...this.cadenceOf(app.name), lastFailureAt: Date.now() })
          this.init.log.warn('scheduled snapshot failed', { app: app.name, error: err.message })
        })
        .finally(() => { this.taking.delete(app.name) })
    }
  }

  /**
   * Applies the retention rule to every repository held here, the running
   * app's and the replicas alike (the same rule everywhere, so the copies
   * converge). The snapshot the user was told the app came from is kept.
   */
  private async retention (): Promise<void> {
    if (this.retaining) return
    this.retaining = true
    try {
      for (const name of await this.init.snapshots.apps()) {
        const app = this.init.store.current().apps.find(a => a.name === name)
        const keep = new Set<string>(app?.relocation?.snapshot !== undefined ? [app.relocation.snapshot] : [])
        try {
          const forgotten = await this.init.snapshots.applyRetention(name, app?.manifest.snapshots?.keep ?? KEEP_DEFAULTS, keep, this.controller.signal)
          if (forgotten.length > 0) await this.refreshHoldings()
        } catch (err) {
          this.init.log.warn('retention failed', { app: name, error: (err as Error).message })
        }
      }
    } finally {
      this.retaining = false
    }
  }

  // ---- views -------------------------------------------------------------------

  /** Every copy of the app's snapshots on live nodes, merged by id, oldest first. */
  async list (name: string, signal: AbortSignal): Promise<Array<SnapshotView & { holderIds: string[] }>> {
    const asks: Array<Promise<{ node: string, id: string, list: SnapshotInfo[] }>> = [
      this.init.snapshots.list(name, signal).then(list => ({ node: this.init.selfName(), id: this.selfId, list }))
    ]
    for (const m of this.init.membership.list()) {
      if (m.state === 'dead') continue
      asks.push(rpcCall(this.init.mesh, peerIdFromString(m.status.peerId), SNAPSHOT_QUERY_PROTOCOL, { kind: 'list', name }, {
        decode: decodeSnapshotList,
        signal,
        timeoutMs: 30_000,
        maxResponseBytes: 8 * 1024 * 1024
      }).then(list => ({ node: m.status.name, id: m.status.peerId, list }), () => ({ node: m.status.name, id: m.status.peerId, list: [] })))
    }
    const merged = new Map<string, SnapshotView & { holderIds: string[] }>()
    for (const r of await Promise.all(asks)) {
      for (const s of r.list) {
        const v = merged.get(s.id) ?? { ...s, holders: [], holderIds: [] }
        v.holders.push(r.node)
        v.holderIds.push(r.id)
        merged.set(s.id, v)
      }
    }
    return [...merged.values()].sort((a, b) => a.time - b.time || (a.id < b.id ? -1 : 1))
  }

  /** Takes a snapshot now on the node running the app. */
  async take (name: string, node: string, signal: AbortSignal): Promise<SnapshotInfo & { replicatedTo: string[] }> {
    if (node === this.selfId) return await this.answer({ kind: 'take', name }, this.selfId, signal) as SnapshotInfo & { replicatedTo: string[] }
    return await rpcCall(this.init.mesh, peerIdFromString(node), SNAPSHOT_QUERY_PROTOCOL, { kind: 'take', name }, {
      decode: decodeTakeReply,
      signal,
      timeoutMs: REPLICATE_TIMEOUT_MS
    })
  }
}

function stamp (ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')
}
