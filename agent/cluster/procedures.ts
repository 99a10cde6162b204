/**
 * The leader's long operations on stateful apps' data: a planned move, a
 * failover, a rollback. Each is a journal of steps (scheduler/procedure.ts
 * decides them and runs them); this room gives the executor its hands: the
 * operations it sends to nodes (carried out by DataPlane.runOp there) and the
 * commits of the replicated state, where the journal itself is kept after
 * every step. A leader that takes over finds the journal with the app and
 * resumes it.
 */
import type { DesiredChange, Op, OpResponse } from '../../proto/cluster.ts'
import type { Journal, Step } from '../../proto/journal.ts'
import type { DesiredApp, Operation } from '../../proto/plan.ts'
import type { SnapshotInfo } from '../../proto/cluster.ts'
import type { SnapshotView } from '../../proto/api.ts'
import {
  failoverSteps, formatStep, moveSteps, rollbackSteps, runProcedure, snapshotOf,
  type ProcedureOutcome, type ProcedurePort
} from '../../scheduler/procedure.ts'
import { RpcError } from '../mesh/rpc.ts'
import type { Membership } from '../status/membership.ts'
import type { DesiredStore } from './desired-store.ts'
import { sleep } from '../util/async.ts'
import type { Logger } from '../util/log.ts'

/**
 * The leader restores a dead node's stateful app only once the node has been
 * dead this long: a cut-off node fences about 3 s after losing the majority,
 * the majority declares it dead after 4 s, this keeps a margin on top.
 */
export const FAILOVER_MARGIN_MS = 2000
/**
 * A move stages the copy on the target while the app runs (and after the stop
 * applies only the increment) for data of this size and more. Below it, one
 * full restore is quicker than restic's diff and a partial restore: about a
 * second of restic runs against a few hundred MB/s here, tens on a Pi's card.
 */
export const STAGE_MIN_BYTES = 64 * 1024 * 1024

export interface ProceduresInit {
  store: DesiredStore
  membership: Membership
  selfId: () => string
  nodeName: (id: string) => string
  /** Sends an operation stamped with the term to a node (the coordinator's send). */
  send: (node: string, op: Op, term: number) => Promise<OpResponse>
  /** Commits a change of the desired state on a majority (leader only); throws when no majority holds it. */
  commit: (change: DesiredChange) => Promise<void>
  /** Every copy of the app's snapshots on live nodes (DataPlane.list). */
  snapshots: (name: string, signal: AbortSignal) => Promise<Array<SnapshotView & { holderIds: string[] }>>
  log: Logger
}

export interface ProcedureCounters { migrations: number, failovers: number, resumed: number, abandoned: number }

export class Procedures {
  readonly counters: ProcedureCounters = { migrations: 0, failovers: 0, resumed: 0, abandoned: 0 }
  private readonly init: ProceduresInit
  /** Apps whose journal this leader is running now: never two executors for one app. */
  private readonly running = new Set<string>()

  constructor (init: ProceduresInit) {
    this.init = init
  }

  isRunning (app: string): boolean {
    return this.running.has(app)
  }

  /** Carries out a data-moving operation of a plan; false for operations that are not. */
  async perform (op: Operation, term: number): Promise<boolean> {
    if (op.op !== 'migrate' && op.op !== 'restore' && op.op !== 'retire') return false
    const app = this.init.store.current().apps.find(a => a.name === op.app)
    if (app === undefined) return true
    if (op.op === 'retire') {
      await this.init.send(op.node, { kind: 'retire', name: op.app, liveSnapshot: app.relocation?.snapshot ?? null }, term)
      return true
    }
    const generation = (app.generation ?? 1) + 1
    if (op.op === 'migrate') {
      this.init.log.info('move: copying while the app runs', { app: app.name, from: this.init.nodeName(op.from), to: this.init.nodeName(op.to) })
      await this.run(moveSteps(app.name, op.from, op.to, generation, Date.now()), term, true)
      return true
    }
    const { membership } = this.init
    // The dead node's copy must be fenced before another starts: wait out the margin.
    const deadSince = membership.list().filter(m => m.state === 'dead').map(m => m.stateSince)
    const fencedBy = deadSince.length === 0 ? 0 : Math.max(...deadSince) + FAILOVER_MARGIN_MS
    // The node it was lost with: the dead member that last reported it.
    const previous = membership.list().find(m => m.state === 'dead' && m.resources?.appStates.some(a => a.name === app.name) === true)?.status.peerId ?? app.relocation?.to ?? null
    // An app installed from a backup file starts from its seed; any other restore replaces a copy that was lost.
    const kind = app.seed != null && (app.generation ?? 1) === 1 && (app.relocation ?? null) === null ? 'restore' : 'failover'
    this.init.log.info('restoring a stateful app from its newest snapshot', { app: app.name, node: this.init.nodeName(op.node), snapshot: op.snapshot, snapshotAgeS: Math.round((Date.now() - op.snapshotTime) / 1000) })
    await this.run(failoverSteps(app.name, { node: op.node, snapshot: { id: op.snapshot, time: op.snapshotTime }, source: op.source, previous, generation, fencedBy, kind }, Date.now()), term, true)
    return true
  }

  /** `dcloud snapshot restore APP SNAPSHOT`: the app goes back to a snapshot where it runs (its current data kept as a snapshot first). */
  async rollback (name: string, snapshot: string, term: number, where: string | null, signal: AbortSignal): Promise<SnapshotInfo> {
    const app = this.desired(name)
    if (app.journal !== undefined) throw new RpcError('conflict', `${name} is in the middle of a ${app.journal.kind} (${app.journal.id}); try again when it is done`)
    const views = await this.init.snapshots(name, signal)
    const snap = views.find(s => s.id === snapshot || s.id.startsWith(snapshot))
    if (snap === undefined) throw new RpcError('not_found', `no snapshot ${snapshot} of ${name} (\`dcloud snapshot ls ${name}\` lists them)`)
    const node = where ?? snap.holderIds[0]
    if (node === undefined) throw new RpcError('not_found', `no live node holds snapshot ${snapshot}`)
    const source = snap.holderIds.includes(node) ? null : snap.holderIds[0] ?? null
    const j = rollbackSteps(name, { where, node, snapshot: { id: snap.id, time: snap.time }, source, generation: (app.generation ?? 1) + 1 }, Date.now())
    const r = await this.run(j, term, true)
    if (r.outcome !== 'done') throw new RpcError('failed', `the rollback of ${name} did not complete: ${r.why ?? 'unknown'}`)
    this.init.log.info('rolled back to a snapshot', { app: name, snapshot: snap.id })
    return snapshotInfoOf(snap)
  }

  /** A journal found with an app by a new leader (or this one after a restart): go on from where it got. */
  async resume (j: Journal, term: number): Promise<void> {
    this.counters.resumed++
    this.init.log.info('resuming a long operation where it got', { app: j.app, journal: j.id, step: j.done, of: j.steps.length, next: j.steps[j.done] === undefined ? null : formatStep(j.steps[j.done] as Step, this.init.nodeName) })
    await this.run(j, term, false)
  }

  private async run (j: Journal, term: number, fresh: boolean): Promise<ProcedureOutcome> {
    if (this.running.has(j.app)) throw new RpcError('conflict', `an operation on ${j.app} is under way; try again when it is done`)
    this.running.add(j.app)
    try {
      const r = await runProcedure(j, this.port(term), { fresh })
      if (r.outcome === 'abandoned') {
        this.counters.abandoned++
        this.init.log.warn('a long operation did not complete', { app: j.app, journal: j.id, why: r.why })
        throw new Error(r.why ?? `${j.id} did not complete`)
      }
      if (j.kind === 'move') this.counters.migrations++
      else this.counters.failovers++
      return r
    } finally {
      this.running.delete(j.app)
    }
  }

  private port (term: number): ProcedurePort {
    const { send, commit, nodeName, log } = this.init
    return {
      perform: async (step, j) => {
        const r = await send((step as { node: string }).node, this.opOf(step, j), term)
        return r.snapshot === undefined ? undefined : { id: r.snapshot.id, time: r.snapshot.time, bytes: r.snapshot.bytes }
      },
      commit: async (step, j) => {
        const app = this.desired(j.app)
        if (step.do === 'generation') {
          await commit({ kind: 'relocate', name: j.app, generation: step.generation, relocation: app.relocation ?? null })
          return
        }
        const snap = snapshotOf(j, step.snapshot)
        const now = Date.now()
        const downtimeMs = step.kind === 'move' && j.results.stoppedAt !== undefined ? now - j.results.stoppedAt : null
        if (step.kind === 'move') log.info('move: done', { app: j.app, from: step.from === null ? null : nodeName(step.from), to: nodeName(step.to), snapshot: snap.id, downtimeMs, totalMs: now - j.startedAt })
        await commit({ kind: 'relocate', name: j.app, generation: app.generation ?? 1, relocation: { kind: step.kind, snapshot: snap.id, snapshotTime: snap.time, from: step.from, to: step.to, at: now, downtimeMs } })
      },
      save: async (app, journal, replaces) => { await commit({ kind: 'journal', name: app, journal, replaces }) },
      holds: (j) => this.init.store.current().apps.find(a => a.name === j.app)?.journal?.id === j.id,
      alive: (node) => node === this.init.selfId() || (this.init.membership.get(node)?.state ?? 'dead') !== 'dead',
      now: () => Date.now(),
      sleep: async (ms) => { await sleep(ms, AbortSignal.timeout(ms + 60_000)) },
      log: (line, j) => { log.info(line, { app: j.app, journal: j.id }) }
    }
  }

  /** The operation a node's step sends. */
  private opOf (step: Step, j: Journal): Op {
    const name = j.app
    switch (step.do) {
      case 'copy': return { kind: 'snapshot', name, purpose: 'pre-move' }
      case 'sync': {
        const copy = j.results.copy
        // Staged only when restoring it whole would cost more than the two restic runs of an increment.
        const stage = copy !== undefined && copy.bytes >= STAGE_MIN_BYTES ? copy.id : null
        return { kind: 'sync', name, from: step.from, snapshot: stage, ...(copy !== undefined ? { restoreBytes: copy.bytes } : {}) }
      }
      case 'handoff': return { kind: 'handoff', name }
      case 'fetch': return { kind: 'sync', name, from: step.from, snapshot: null }
      case 'restore': return { kind: 'restore', app: this.desired(name), snapshot: snapshotOf(j, step.snapshot).id, from: step.from }
      case 'purge': return { kind: 'purge', name, snapshot: snapshotOf(j, 'final').id }
      case 'start': return { kind: 'deploy', app: this.desired(name) }
      default: throw new Error(`${step.do} is not a node's step`)
    }
  }

  private desired (name: string): DesiredApp {
    const app = this.init.store.current().apps.find(a => a.name === name)
    if (app === undefined) throw new RpcError('not_found', `no app named ${name}`)
    return app
  }
}

function snapshotInfoOf (v: SnapshotView): SnapshotInfo {
  return { id: v.id, app: v.app, time: v.time, purpose: v.purpose as SnapshotInfo['purpose'], node: v.node, generation: v.generation, label: v.label, bytes: v.bytes, added: v.added, tree: v.tree }
}

/** The plan's operation a journal carries out: what `why` and the planner see in flight while it runs. */
export function operationOf (j: Journal): Operation {
  const restore = j.steps.find(s => s.do === 'restore') as Extract<Step, { do: 'restore' }> | undefined
  const handoff = j.steps.find(s => s.do === 'handoff') as Extract<Step, { do: 'handoff' }> | undefined
  const to = restore?.node ?? handoff?.node ?? ''
  const reason = `${j.kind} ${j.id}, step ${Math.min(j.done + 1, j.steps.length)} of ${j.steps.length}`
  if (j.kind === 'move' && handoff !== undefined) return { op: 'migrate', app: j.app, from: handoff.node, to, reason }
  const snap = restore === undefined || restore.snapshot === 'final' ? j.results.final : restore.snapshot
  return { op: 'restore', app: j.app, node: to, snapshot: snap?.id ?? '', snapshotTime: snap?.time ?? 0, source: restore?.from ?? to, reason }
}
