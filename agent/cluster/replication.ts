/**
 * Replication of the desired state as a log (Raft's log replication; the
 * election is election-driver.ts). The leader appends each change to its log,
 * sends it to the followers, and commits it once a quorum holds it; only
 * committed entries change the state anyone acts on. A follower takes
 * appends only from the leader it knows for its current term, checks them
 * against its log with the pure rules of scheduler/replication.ts, and has
 * them on disk before it says yes.
 *
 * Nothing is sent while every follower is in step: the leader's election
 * heartbeats already carry its liveness. A follower that was away is caught
 * up from where its log ends, or from the leader's committed state when the
 * leader no longer keeps the entries it lacks.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import {
  APPEND_MAX_BYTES, APPEND_MAX_ENTRIES, APPEND_PROTOCOL, decodeAppendRequest, decodeAppendResponse,
  type AppendRequest, type AppendResponse, type ChangeResponse, type DesiredChange, type LogEntry
} from '../../proto/cluster.ts'
import { decideAppend, leaderCommit, nextAfterRefusal, type RefusalReason } from '../../scheduler/replication.ts'
import { RpcError, rpcCall, type RpcServer } from '../mesh/rpc.ts'
import type { Mesh } from '../mesh/mesh.ts'
import type { Membership } from '../status/membership.ts'
import { applyChange, type DesiredStore } from './desired-store.ts'
import type { ElectionDriver } from './election-driver.ts'
import { KeyedMutex } from '../util/async.ts'
import { ThrottledLog, type Logger } from '../util/log.ts'

const PUMP_MS = 200
/** How long a change waits to be committed before the caller hears that it may not have been. */
const COMMIT_WAIT_MS = 10_000
/** A follower whose beats show it behind the commit for this long is probed even if we think it is in step. */
const BEHIND_PROBE_MS = 3000
/** How long a follower waits to hear the election name the sender as leader of its term (the heartbeat is on its way). */
export const LEADER_WAIT_MS = 1000

export interface ReplicatorInit {
  mesh: Mesh
  rpc: RpcServer
  store: DesiredStore
  election: ElectionDriver
  membership: Membership
  log: Logger
}

/** What the leader knows of one follower in its term. */
interface Follower {
  /** The next index to send. */
  next: number
  /** The highest index known to be on its disk (0: unknown yet). */
  match: number
  /** The commit index last sent to it. */
  sentCommit: number
  inflight: boolean
  lastOkAt: number
}

interface Leading {
  term: number
  followers: Map<string, Follower>
  /** The no-op this leader appended; once committed, its committed state holds everything earlier leaders committed. */
  noopIndex: number
}

export type AppendRefusal = RefusalReason | 'stale_term' | 'not_leader' | 'bad_request'

export interface ReplicationCounters {
  appendsSent: number
  snapshotsSent: number
  /** Appends this node refused, by reason, and appends its followers refused to it as leader. */
  refused: Record<AppendRefusal, number>
  refusedByFollowers: number
  commits: number
}

export class Replicator {
  readonly counters: ReplicationCounters = {
    appendsSent: 0,
    snapshotsSent: 0,
    refused: { gap: 0, mismatch: 0, conflicts_committed: 0, stale_term: 0, not_leader: 0, bad_request: 0 },
    refusedByFollowers: 0,
    commits: 0
  }

  private readonly init: ReplicatorInit
  private readonly refusals: ThrottledLog
  private leading: Leading | null = null
  private readonly proposals = new KeyedMutex()
  private readonly appends = new KeyedMutex()
  private timer: NodeJS.Timeout | undefined
  private readonly controller = new AbortController()
  private started = false

  constructor (init: ReplicatorInit) {
    this.init = init
    this.refusals = new ThrottledLog(init.log)
  }

  private get self (): string { return this.init.mesh.peerId.toString() }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    await this.init.rpc.register({
      protocol: APPEND_PROTOCOL,
      decode: (raw) => {
        try {
          return decodeAppendRequest(raw)
        } catch (err) {
          // Out-of-order entries, terms going backwards, a snapshot that contradicts itself:
          // refused before anything is read (the RPC server logs it with its sender).
          this.counters.refused.bad_request++
          throw err
        }
      },
      maxRequestBytes: APPEND_MAX_BYTES,
      handle: async (req, from) => await this.onAppend(req, from.toString())
    })
    this.timer = setInterval(() => { this.pump() }, PUMP_MS)
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    this.controller.abort()
    clearInterval(this.timer)
  }

  /**
   * Whether this node leads and its state holds everything committed before
   * its term (its own no-op is committed): only then may it plan.
   */
  get ready (): boolean {
    return this.init.election.isLeader && this.leading !== null && this.leading.term === this.init.election.term && this.init.store.committed >= this.leading.noopIndex
  }

  /**
   * The leader's way to change the desired state: appends the change, and
   * answers once a quorum holds it and it is committed. A change that does
   * not fit the state is refused before anything is written.
   */
  async propose (change: DesiredChange, signal?: AbortSignal): Promise<ChangeResponse> {
    const { store, election } = this.init
    const index = await this.proposals.run('propose', async () => {
      const leading = await this.lead()
      const entry: LogEntry = { index: store.lastIndex + 1, term: leading.term, change }
      applyChange(store.tip(), change, entry) // throws, with a reason for the user, when it does not fit
      await store.appendEntries(null, [entry])
      return entry.index
    })
    await this.advanceCommit()
    this.pump()
    const deadline = Date.now() + COMMIT_WAIT_MS
    while (store.committed < index) {
      const lost = !election.isLeader || this.leading === null
      if (lost || Date.now() > deadline || signal?.aborted === true) {
        throw new RpcError('unavailable', `the change (log entry ${index}) was not committed: ${lost ? 'this node lost the leadership' : `only ${this.holders(index)} of ${election.voters().length} nodes hold it`}; it may still take effect once a majority is reachable, so check \`dcloud app ls\` before trying again`)
      }
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    return { revision: index, replicatedTo: this.holders(index) }
  }

  /** How many nodes hold the log up to `index`, this one included. */
  private holders (index: number): number {
    let n = this.init.store.lastIndex >= index ? 1 : 0
    for (const f of this.leading?.followers.values() ?? []) if (f.match >= index) n++
    return n
  }

  /** The leader's state for its current term; a new term starts with a no-op entry (Raft §8). */
  private async lead (): Promise<Leading> {
    const { election, store } = this.init
    if (!election.isLeader) throw new RpcError('no_leader', 'this node is not the scheduler (anymore); try again in a few seconds')
    const term = election.term
    if (this.leading?.term === term) return this.leading
    const followers = new Map<string, Follower>()
    const leading: Leading = { term, followers, noopIndex: store.lastIndex + 1 }
    for (const id of election.voters()) if (id !== this.self) followers.set(id, { next: leading.noopIndex, match: 0, sentCommit: 0, inflight: false, lastOkAt: 0 })
    await store.appendEntries(null, [{ index: leading.noopIndex, term, change: null }])
    this.leading = leading
    this.init.log.info('leading the replicated log', { term, lastIndex: store.lastIndex, committed: store.committed })
    return leading
  }

  /** Sends what each follower lacks; cheap when there is nothing to send. */
  private pump (): void {
    const { election } = this.init
    if (!this.started) return
    if (!election.isLeader) {
      this.leading = null
      return
    }
    if (this.leading?.term !== election.term) {
      void this.proposals.run('propose', async () => { await this.lead() }).then(async () => { await this.advanceCommit(); this.pump() }).catch((err: Error) => {
        this.init.log.debug('could not start leading the log', { error: err.message })
      })
      return
    }
    const leading = this.leading
    for (const id of election.voters()) {
      if (id !== this.self && !leading.followers.has(id)) leading.followers.set(id, { next: this.init.store.lastIndex + 1, match: 0, sentCommit: 0, inflight: false, lastOkAt: 0 })
    }
    const now = Date.now()
    for (const [id, f] of leading.followers) {
      if (f.inflight) continue
      const member = this.init.membership.get(id)
      if (member === undefined || member.state === 'dead') continue
      const store = this.init.store
      const behindByBeat = (member.status.cluster?.desiredRevision ?? 0) < store.committed && now - f.lastOkAt > BEHIND_PROBE_MS
      if (f.match > 0 && f.next > store.lastIndex && f.sentCommit >= store.committed && !behindByBeat) continue
      void this.sendTo(id, f, leading)
    }
  }

  private async sendTo (id: string, f: Follower, leading: Leading): Promise<void> {
    const { store, mesh } = this.init
    f.inflight = true
    try {
      let prevIndex = f.next - 1
      let prevTerm = store.termAt(prevIndex)
      let snapshot: AppendRequest['snapshot']
      if (prevTerm === null) {
        // The entries it lacks are folded into our snapshot: send the committed state instead.
        const state = store.current()
        prevIndex = state.revision
        prevTerm = state.term
        snapshot = { index: state.revision, term: state.term, state }
        this.counters.snapshotsSent++
      }
      const entries = store.entriesFrom(prevIndex + 1, APPEND_MAX_ENTRIES)
      const commit = store.committed
      const req: AppendRequest = { term: leading.term, leader: this.self, prevIndex, prevTerm, entries, commit, ...(snapshot !== undefined ? { snapshot } : {}) }
      this.counters.appendsSent++
      const res = await rpcCall(mesh, peerIdFromString(id), APPEND_PROTOCOL, req, { decode: decodeAppendResponse, timeoutMs: 5000, signal: this.controller.signal })
      if (this.leading !== leading) return
      if (res.ok) {
        f.match = Math.max(f.match, prevIndex + entries.length)
        f.next = f.match + 1
        f.sentCommit = Math.max(f.sentCommit, commit)
        f.lastOkAt = Date.now()
        await this.advanceCommit()
      } else {
        this.counters.refusedByFollowers++
        f.next = nextAfterRefusal(prevIndex, res.lastIndex)
        f.match = Math.min(f.match, res.lastIndex)
        this.init.log.debug('a follower refused an append', { follower: id, prevIndex, reason: res.reason })
      }
    } catch (err) {
      this.init.log.debug('append failed', { follower: id, error: (err as Error).message })
    } finally {
      f.inflight = false
    }
    // More to send (a long catch-up, or a commit that just advanced): go on without waiting for the timer.
    if (this.leading === leading && (f.next <= store.lastIndex || f.sentCommit < store.committed) && f.lastOkAt > 0) this.pump()
  }

  /** Commits what a quorum holds, if it belongs to this term. */
  private async advanceCommit (): Promise<void> {
    const { store, election } = this.init
    const leading = this.leading
    if (leading === null || !election.isLeader) return
    const match: Record<string, number> = {}
    for (const [id, f] of leading.followers) match[id] = f.match
    const n = leaderCommit(store.view(), { term: leading.term, self: this.self, voters: election.voters(), match, holds: (who) => election.isQuorum(who) })
    if (n > store.committed) {
      await store.commit(n)
      this.counters.commits++
    }
  }

  /** A follower's side: an append is taken only from the leader of this node's current term. */
  private async onAppend (req: AppendRequest, from: string): Promise<AppendResponse> {
    const { store, election } = this.init
    const refuse = (reason: AppendRefusal, message: string): AppendResponse => {
      this.counters.refused[reason]++
      this.refusals.warn(reason, 'refused a log append', { from, reason, message, term: req.term, prevIndex: req.prevIndex, entries: req.entries.length })
      return { term: election.term, ok: false, lastIndex: store.lastIndex, reason: message }
    }
    if (req.leader !== from) return refuse('not_leader', `the append names ${req.leader} as leader but comes from ${from}`)
    const fence = await election.acceptFromLeader(req.term, from, LEADER_WAIT_MS)
    if (!fence.accepted) return refuse(fence.code, fence.reason)
    return await this.appends.run('append', async () => {
      if (req.snapshot !== undefined && req.snapshot.index > store.committed) {
        await store.installSnapshot(req.snapshot.index, req.snapshot.term, req.snapshot.state)
      }
      const decision = decideAppend(store.view(), req)
      if (decision.kind === 'refuse') {
        // A mismatch or gap is the normal way a leader finds where a follower's log ends: no warning for those.
        if (decision.reason !== 'conflicts_committed') {
          this.counters.refused[decision.reason]++
          return { term: election.term, ok: false, lastIndex: store.lastIndex, reason: decision.message }
        }
        return refuse(decision.reason, decision.message)
      }
      await store.appendEntries(decision.truncateAfter, decision.append)
      await store.commit(decision.commit)
      return { term: election.term, ok: true, lastIndex: store.lastIndex, reason: 'ok' }
    })
  }
}
