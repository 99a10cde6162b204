/**
 * Runs the election: feeds clock ticks and peers' messages into the pure
 * rules of scheduler/election.ts and carries out the actions they return
 * (persist term and vote, send vote requests and leader heartbeats).
 *
 * Term and vote are on disk before any message that depends on them leaves
 * this node: a restarted node never votes twice in one term.
 */
import { randomInt } from 'node:crypto'
import { createConnection } from 'node:net'
import { readFile } from 'node:fs/promises'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import {
  HEARTBEAT_PROTOCOL, VOTE_PROTOCOL, decodeHeartbeatAck, decodeLeaderHeartbeat, decodeVoteRequest, decodeVoteResponse, moreUpToDate,
  type HeartbeatAck, type VoteResponse
} from '../../proto/cluster.ts'
import { PEER_ID } from '../../proto/validate.ts'
import { acceptFromLeader, heardByQuorumAt, initElection, isLeader, reachesQuorum, step, type Fencing, type ElectionAction, type ElectionConfig, type ElectionEvent, type ElectionState } from '../../scheduler/election.ts'
import { rpcCall, type RpcServer } from '../mesh/rpc.ts'
import type { Mesh } from '../mesh/mesh.ts'
import type { Membership } from '../status/membership.ts'
import type { DesiredStore } from './desired-store.ts'
import type { Logger } from '../util/log.ts'
import { writeFileDurable } from '../util/durable.ts'

/**
 * Faster than the rules' defaults: a LAN answers in milliseconds, and a new
 * leader within about 2 s of the old one's death matters more than the few
 * extra heartbeats (docs/scheduler.md).
 */
export const AGENT_ELECTION: Partial<ElectionConfig> = {
  heartbeatIntervalMs: 300,
  leaseMs: 900,
  electionTimeoutMinMs: 1200,
  electionTimeoutMaxMs: 1800,
  // A node whose link flaps must not come back with a raised term and depose a healthy leader.
  preVote: true
}

const TICK_MS = 25
const WITNESS_PROBE_MS = 1000

export interface ElectionDriverInit {
  mesh: Mesh
  rpc: RpcServer
  membership: Membership
  store: DesiredStore
  dataDir: string
  /** host or host:port probed for the two-node rule; null: the default gateway, if any. */
  witness: string | null
  log: Logger
  onLeadership?: (leading: boolean, term: number) => void
}

export class ElectionDriver {
  private state: ElectionState | undefined
  private readonly init: ElectionDriverInit
  private timers: NodeJS.Timeout[] = []
  private persisting: Promise<void> = Promise.resolve()
  private witnessReachable = false
  private voterKey = ''
  /** Every member ever known, persisted: a restarted node must not think it is alone and elect itself. */
  private knownVoters = new Set<string>()
  private started = false

  constructor (init: ElectionDriverInit) {
    this.init = init
  }

  get term (): number { return this.state?.term ?? 0 }
  get leader (): string | null { return this.state?.leader ?? null }
  /** Leads, with a lease a quorum acknowledged: only then may this node schedule. */
  get isLeader (): boolean { return this.state !== undefined && isLeader(this.state, monotonic()) }

  private get self (): string { return this.init.mesh.peerId.toString() }
  private get path (): string { return join(this.init.dataDir, 'election.json') }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    let saved: { term?: number, votedFor?: string | null, voters?: unknown } = {}
    try { saved = JSON.parse(await readFile(this.path, 'utf8')) } catch {}
    if (Array.isArray(saved.voters)) for (const v of saved.voters) if (typeof v === 'string' && PEER_ID.test(v)) this.knownVoters.add(v)
    this.state = initElection({
      self: this.self,
      voters: this.voters(),
      term: typeof saved.term === 'number' ? saved.term : 0,
      votedFor: typeof saved.votedFor === 'string' ? saved.votedFor : null,
      seed: randomInt(2 ** 31),
      now: monotonic(),
      config: AGENT_ELECTION
    })
    this.voterKey = this.voters().join(',')
    const { rpc } = this.init
    await rpc.register({
      protocol: VOTE_PROTOCOL,
      decode: decodeVoteRequest,
      maxRequestBytes: 1024,
      handle: async (req, from) => {
        if (req.candidate !== from.toString()) return { term: this.term, granted: false, reason: 'the candidate must ask for itself' }
        const { store } = this.init
        const behind = moreUpToDate({ lastTerm: store.lastTerm, lastIndex: store.lastIndex }, { lastTerm: req.lastLogTerm, lastIndex: req.lastLogIndex })
        const actions = await this.apply({ type: req.preVote ? 'preVoteRequest' : 'voteRequest', from: req.candidate, term: req.term, candidateBehind: behind })
        const vote = actions.find(a => a.type === (req.preVote ? 'sendPreVote' : 'sendVote'))
        const granted = (vote?.type === 'sendVote' || vote?.type === 'sendPreVote') && vote.granted
        return { term: this.term, granted, reason: granted ? 'granted' : behind ? 'the candidate\'s log is behind ours' : 'refused' } satisfies VoteResponse
      }
    })
    await rpc.register({
      protocol: HEARTBEAT_PROTOCOL,
      decode: decodeLeaderHeartbeat,
      maxRequestBytes: 1024,
      handle: async (hb, from) => {
        if (hb.leader !== from.toString()) return { term: this.term, ok: false, sentAt: hb.sentAt }
        const actions = await this.apply({ type: 'leaderHeartbeat', from: hb.leader, term: hb.term, sentAt: hb.sentAt })
        const ack = actions.find(a => a.type === 'sendHeartbeatAck')
        return { term: this.term, ok: ack?.type === 'sendHeartbeatAck' && ack.ok, sentAt: hb.sentAt } satisfies HeartbeatAck
      }
    })
    this.timers.push(setInterval(() => { void this.tick() }, TICK_MS))
    this.timers.push(setInterval(() => { void this.probeWitness() }, WITNESS_PROBE_MS))
    void this.probeWitness()
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    await this.persisting
  }

  /**
   * Whether `sender` is the leader of `term`, this node's current term
   * (scheduler/election.ts, `acceptFromLeader`). A message from a leader can
   * arrive a moment before its first heartbeat does: while the answer is
   * "not yet known", it waits up to `waitMs` for the election to say.
   */
  async acceptFromLeader (term: number, sender: string, waitMs: number): Promise<Fencing> {
    const deadline = monotonic() + waitMs
    for (;;) {
      const verdict = acceptFromLeader({ term: this.term, leader: this.leader }, { term, sender })
      if (verdict.accepted || monotonic() >= deadline || term < this.term || (term === this.term && this.leader !== null)) return verdict
      await new Promise(resolve => setTimeout(resolve, TICK_MS))
    }
  }

  /** Whether `who` (peer ids) is a quorum of the voters, by the same rule as the election's. */
  isQuorum (who: ReadonlySet<string>): boolean {
    return reachesQuorum(this.voters(), who, this.witnessReachable)
  }

  /**
   * Voters: this node and every member it has ever heard of, remembered across
   * restarts (dead ones too: they still count toward the majority).
   */
  voters (): string[] {
    for (const m of this.init.membership.list()) this.knownVoters.add(m.status.peerId)
    this.knownVoters.add(this.self)
    return [...this.knownVoters].sort()
  }

  /** Whether this node sees a quorum of the voters alive, itself included; one that does not fences its stateful apps. */
  seesQuorum (): boolean {
    const alive = new Set([this.self, ...this.init.membership.list().filter(m => m.state === 'alive').map(m => m.status.peerId)])
    return reachesQuorum(this.voters(), alive, this.witnessReachable)
  }

  /**
   * When a quorum of the voters had last heard this node, on this machine's
   * monotonic clock: each peer echoes the send time of our newest beat it
   * got (NodeStatus.heard). A peer of an older version echoes nothing; while
   * it is alive it counts as hearing us now, as before.
   */
  heardByQuorumAt (monotonicNow: number): number {
    const echoes = new Map<string, number>()
    for (const m of this.init.membership.list()) {
      const echo = m.status.heard?.[this.self]
      if (echo !== undefined) echoes.set(m.status.peerId, echo)
      else if (m.status.heard === undefined && m.state === 'alive') echoes.set(m.status.peerId, monotonicNow)
    }
    return heardByQuorumAt(this.voters(), this.self, echoes, this.witnessReachable)
  }

  /** Whether the election already counts every member we know of (membership can run a tick ahead). */
  votersCurrent (): boolean {
    return this.voters().join(',') === this.voterKey
  }

  private async tick (): Promise<void> {
    if (this.state === undefined) return
    const voters = this.voters()
    const key = voters.join(',')
    if (key !== this.voterKey) {
      this.voterKey = key
      await this.apply({ type: 'membershipChange', voters })
      await this.save()
    }
    await this.apply({ type: 'tick', witnessReachable: this.witnessReachable })
  }

  /**
   * Steps the rules with one event and carries out the actions; returns them so
   * an RPC handler can answer with its vote or ack (after the persist).
   */
  private async apply (event: ElectionEvent): Promise<ElectionAction[]> {
    if (this.state === undefined) return []
    const before = this.state
    const { state, actions } = step(before, event, monotonic())
    this.state = state
    for (const action of actions) await this.carryOut(action)
    return actions
  }

  private async carryOut (action: ElectionAction): Promise<void> {
    const { log } = this.init
    switch (action.type) {
      case 'persist':
        await this.save(action.term, action.votedFor)
        return
      case 'sendVoteRequests':
      case 'sendPreVoteRequests': {
        const preVote = action.type === 'sendPreVoteRequests'
        const { store } = this.init
        const request = { term: action.term, candidate: this.self, lastLogTerm: store.lastTerm, lastLogIndex: store.lastIndex, preVote }
        if (!preVote) log.info('asking for votes', { term: action.term, voters: action.to.length + 1 })
        for (const to of action.to) {
          void rpcCall(this.init.mesh, peerIdFromString(to), VOTE_PROTOCOL, request, { decode: decodeVoteResponse, timeoutMs: 1000 })
            .then(async (r) => { await this.apply({ type: preVote ? 'preVoteResponse' : 'voteResponse', from: to, term: r.term, granted: r.granted }) }, () => {})
        }
        return
      }
      case 'sendHeartbeats': {
        const hb = { term: action.term, leader: this.self, sentAt: action.sentAt }
        for (const to of action.to) {
          void rpcCall(this.init.mesh, peerIdFromString(to), HEARTBEAT_PROTOCOL, hb, { decode: decodeHeartbeatAck, timeoutMs: 1000 })
            .then(async (r) => { await this.apply({ type: 'heartbeatAck', from: to, term: r.term, ok: r.ok, sentAt: r.sentAt }) }, () => {})
        }
        return
      }
      case 'becomeLeader':
        log.info('elected scheduler', { term: action.term })
        this.init.onLeadership?.(true, action.term)
        return
      case 'stepDown':
        log.warn('no longer the scheduler', { term: action.term, reason: action.reason })
        this.init.onLeadership?.(false, action.term)
        return
      case 'sendVote':
      case 'sendPreVote':
      case 'sendHeartbeatAck':
        return // answered by the RPC handler that caused them
    }
  }

  /** Writes term, vote and voters durably (serialised; fsynced, renamed, directory fsynced) before any vote leaves. */
  private async save (term = this.term, votedFor = this.state?.votedFor ?? null): Promise<void> {
    const text = JSON.stringify({ term, votedFor, voters: [...this.knownVoters].sort() })
    this.persisting = this.persisting.then(async () => { await writeFileDurable(this.path, text) })
    await this.persisting
  }

  /** Any TCP answer (even a refusal) proves the witness is reachable; silence does not. */
  private async probeWitness (): Promise<void> {
    const target = parseWitness(this.init.witness ?? defaultGateway())
    if (target === null) { this.witnessReachable = false; return }
    this.witnessReachable = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: target.host, port: target.port, timeout: 800 })
      const done = (ok: boolean): void => { socket.destroy(); resolve(ok) }
      socket.once('connect', () => { done(true) })
      socket.once('timeout', () => { done(false) })
      socket.once('error', (err: NodeJS.ErrnoException) => { done(err.code === 'ECONNREFUSED') })
    })
  }
}

/** Leases are timed with a clock that never jumps (NTP corrections, a Pi's clock set at boot). */
function monotonic (): number {
  return performance.now()
}

function parseWitness (value: string | null): { host: string, port: number } | null {
  if (value === null || value === '') return null
  const m = /^\[?([^\]]+?)\]?(?::(\d+))?$/.exec(value)
  if (m === null) return null
  return { host: m[1] as string, port: m[2] !== undefined ? Number(m[2]) : 53 }
}

/** The IPv4 default gateway from the kernel's routing table, or null. */
export function defaultGateway (routes = readRoutes()): string | null {
  for (const line of routes.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    if (f[1] === '00000000' && f[2] !== undefined && f[2] !== '00000000') {
      const hex = f[2]
      return [6, 4, 2, 0].map(i => parseInt(hex.slice(i, i + 2), 16)).join('.')
    }
  }
  return null
}

function readRoutes (): string {
  try { return readFileSync('/proc/net/route', 'utf8') } catch { return '' }
}
