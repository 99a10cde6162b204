/**
 * The election of the scheduler: the pure rules of a Raft-style leader
 * election without a log. The agent does the I/O: it feeds events (a clock
 * tick, a message) into `step`, then carries out the returned actions in
 * order (a `persist` must be durable before the sends that follow it).
 *
 * - Terms: every election starts a new term; a node votes at most once per
 *   term (term and vote are persisted by the caller and passed back at start).
 * - Quorum: a majority of the voters, floor(n/2)+1. In a cluster with an even
 *   number of voters, exactly half also wins when it includes the tie-breaker
 *   (the voter with the lowest id), the candidate reaches the witness (its LAN
 *   gateway, probed by the caller), and every voter outside it has been silent
 *   for `halfQuorumAfterMs`. Two halves cannot both hold the tie-breaker, so
 *   any two quorums share a voter, and a term never has two leaders. In a
 *   cluster of two this means: the lower-id node may lead alone once the other
 *   has been silent as long as it takes to be declared dead; the higher-id
 *   node never leads alone. See docs/scheduler.md for the failure cases.
 * - Lease: a leader leads while a quorum acknowledged a heartbeat it sent
 *   within `leaseMs`; a voter that heard from a leader (or granted a vote)
 *   refuses other candidates for `electionTimeoutMinMs` > `leaseMs`. So an old
 *   leader's lease has run out before anyone can gather a quorum against it,
 *   and at any moment at most one node believes it leads (with clock rates
 *   within (electionTimeoutMinMs / leaseMs - 1) of each other: 33 % by default).
 * - Any message with a higher term makes a node adopt it (a leader steps down);
 *   operations carry their term, and `acceptFromLeader` takes only those of
 *   the current term's leader. Terms rise only through the election's own
 *   messages, never through an operation or an append.
 */
import { mulberry32Step } from './random.ts'

export interface ElectionConfig {
  /** How often a leader sends heartbeats. */
  heartbeatIntervalMs: number
  /** How long an acknowledged heartbeat keeps a leader's lease. */
  leaseMs: number
  /** A follower starts an election after a random silence in [min, max). Min must exceed leaseMs. */
  electionTimeoutMinMs: number
  electionTimeoutMaxMs: number
  /** How long the other half of an even cluster must be silent before a half may elect (the liveness dead timeout). */
  halfQuorumAfterMs: number
  /**
   * Raft's PreVote: before raising its term, a node asks whether it could win.
   * A node cut off for a moment (a flapping link) then never comes back with a
   * higher term that would depose a healthy leader.
   */
  preVote: boolean
}

export const DEFAULT_ELECTION: ElectionConfig = {
  heartbeatIntervalMs: 500,
  leaseMs: 1500,
  electionTimeoutMinMs: 2000,
  electionTimeoutMaxMs: 3500,
  halfQuorumAfterMs: 4000,
  preVote: false
}

export type Role = 'follower' | 'precandidate' | 'candidate' | 'leader'

export interface ElectionState {
  self: string
  config: ElectionConfig
  /** Voter ids, sorted and unique: every member ever known, removed only by a person. */
  voters: string[]
  term: number
  /** Whom this node voted for in `term` (persisted). */
  votedFor: string | null
  role: Role
  /** The leader of `term`, when known. */
  leader: string | null
  /** Candidate: the voters that granted their vote in `term`, itself included. */
  votes: string[]
  /** Precandidate: the voters that would vote for it in `term + 1`, itself included. */
  preVotes: string[]
  /** Follower or candidate: when to start the next election. */
  electionDeadline: number
  electionStartedAt: number
  /** When this node last accepted a heartbeat from a leader, or granted a vote: it refuses other candidates for electionTimeoutMinMs after. */
  leaderContactAt: number | null
  /** When each voter was last heard from, by any election message. */
  lastHeard: Record<string, number>
  /** Leader: per voter, when the newest heartbeat it acknowledged was sent (by this node's clock). */
  acks: Record<string, number>
  nextHeartbeatAt: number
  /** The caller's latest probe of the witness (the LAN gateway by default). */
  witnessReachable: boolean
  /** State of the seeded PRNG drawing election timeouts. */
  rng: number
}

export type ElectionEvent =
  /** The clock moved; carries the latest witness probe when the caller has one. */
  | { type: 'tick', witnessReachable?: boolean }
  /**
   * `candidateBehind`: the caller compared the candidate's desired state
   * (term, revision) with its own and found it older; the vote is refused
   * (Raft's election restriction, with the desired state as the log).
   */
  | { type: 'voteRequest', from: string, term: number, candidateBehind?: boolean }
  | { type: 'voteResponse', from: string, term: number, granted: boolean }
  /** PreVote: would this node vote for `from` in `term` (the candidate's current term + 1)? Changes nothing here. */
  | { type: 'preVoteRequest', from: string, term: number, candidateBehind?: boolean }
  /** `term` is the voter's own current term; `granted` answers for the term the request proposed. */
  | { type: 'preVoteResponse', from: string, term: number, granted: boolean }
  | { type: 'leaderHeartbeat', from: string, term: number, sentAt: number }
  | { type: 'heartbeatAck', from: string, term: number, ok: boolean, sentAt: number }
  /** The voter set changed (a node joined, or a person removed one). */
  | { type: 'membershipChange', voters: string[] }

export type ElectionAction =
  /** Store term and vote durably before carrying out the actions after it. */
  | { type: 'persist', term: number, votedFor: string | null }
  | { type: 'sendVoteRequests', term: number, to: string[] }
  | { type: 'sendVote', to: string, term: number, granted: boolean }
  | { type: 'sendPreVoteRequests', term: number, to: string[] }
  | { type: 'sendPreVote', to: string, term: number, granted: boolean }
  | { type: 'sendHeartbeats', term: number, to: string[], sentAt: number }
  | { type: 'sendHeartbeatAck', to: string, term: number, ok: boolean, sentAt: number }
  | { type: 'becomeLeader', term: number }
  /** This node stops leading `term`: stop scheduling at once. */
  | { type: 'stepDown', term: number, reason: string }

export interface ElectionInit {
  self: string
  voters: string[]
  /** Persisted term and vote; 0 and null on a node's first start. */
  term?: number
  votedFor?: string | null
  seed: number
  now: number
  config?: Partial<ElectionConfig>
  witnessReachable?: boolean
}

/** Problems with a configuration that would make the lease unsafe or elections impossible; empty when fine. */
export function checkElectionConfig (c: ElectionConfig): string[] {
  const problems: string[] = []
  for (const [k, v] of Object.entries(c)) {
    if (k === 'preVote') { if (typeof v !== 'boolean') problems.push('preVote must be true or false'); continue }
    if (!(typeof v === 'number' && Number.isFinite(v) && v > 0)) problems.push(`${k} must be a positive number`)
  }
  if (c.electionTimeoutMinMs <= c.leaseMs) problems.push('electionTimeoutMinMs must exceed leaseMs (or two leaders could overlap)')
  if (c.electionTimeoutMaxMs < c.electionTimeoutMinMs) problems.push('electionTimeoutMaxMs must be at least electionTimeoutMinMs')
  if (c.heartbeatIntervalMs >= c.leaseMs) problems.push('heartbeatIntervalMs must be below leaseMs (or a healthy leader loses its lease)')
  return problems
}

function sortedVoters (ids: string[]): string[] {
  return [...new Set(ids)].sort((a, b) => a < b ? -1 : a > b ? 1 : 0)
}

export function initElection (init: ElectionInit): ElectionState {
  const config = { ...DEFAULT_ELECTION, ...init.config }
  const problems = checkElectionConfig(config)
  if (problems.length > 0) throw new RangeError(`bad election config: ${problems.join('; ')}`)
  const voters = sortedVoters(init.voters)
  const lastHeard: Record<string, number> = {}
  for (const v of voters) lastHeard[v] = init.now
  const s: ElectionState = {
    self: init.self,
    config,
    voters,
    term: init.term ?? 0,
    votedFor: init.votedFor ?? null,
    role: 'follower',
    leader: null,
    votes: [],
    preVotes: [],
    electionDeadline: init.now,
    electionStartedAt: init.now,
    // A node that just started may have acknowledged a leader right before it
    // went down: it refuses candidates for one minimum election timeout.
    leaderContactAt: init.now,
    lastHeard,
    acks: {},
    nextHeartbeatAt: init.now,
    witnessReachable: init.witnessReachable ?? false,
    rng: init.seed | 0
  }
  resetDeadline(s, init.now)
  return s
}

/** Majority of n voters. */
export function majority (n: number): number {
  return Math.floor(n / 2) + 1
}

/** The two-node (even cluster) tie-breaker: the voter with the lowest id. */
export function tieBreaker (voters: readonly string[]): string | null {
  return voters.length > 0 && voters.length % 2 === 0 ? voters[0]! : null
}

/**
 * Whether `set` is a quorum of the voters: a majority, or (even clusters) a
 * half holding the tie-breaker while the witness is reachable. With
 * `checkSilence`, as when gaining leadership, a half also needs every voter
 * outside it silent for halfQuorumAfterMs.
 */
function isQuorum (s: ElectionState, set: ReadonlySet<string>, now: number, checkSilence: boolean): boolean {
  const n = s.voters.length
  if (n === 0) return false
  let count = 0
  for (const v of s.voters) if (set.has(v)) count++
  if (count >= majority(n)) return true
  const tb = tieBreaker(s.voters)
  if (tb === null || count !== n / 2 || !set.has(tb) || !s.witnessReachable) return false
  if (!checkSilence) return true
  for (const v of s.voters) {
    if (!set.has(v) && now - (s.lastHeard[v] ?? -Infinity) < s.config.halfQuorumAfterMs) return false
  }
  return true
}

/**
 * Whether the voters in `reachable` make a quorum (a majority, or in an even
 * cluster the half holding the tie-breaker while the witness answers): the
 * fencing test, pure so it is tested with the election's rules.
 */
export function reachesQuorum (voters: readonly string[], reachable: ReadonlySet<string>, witnessReachable: boolean): boolean {
  const n = voters.length
  if (n === 0) return true
  let count = 0
  for (const v of voters) if (reachable.has(v)) count++
  if (count >= majority(n)) return true
  const tb = tieBreaker(voters)
  return tb !== null && count === n / 2 && reachable.has(tb) && witnessReachable
}

/**
 * The newest time by which a quorum of the voters had heard this node: each
 * voter's echo is the send time of the newest beat of ours it reported
 * receiving (self: now, or later). Judged with reachesQuorum's rule, so in an
 * even cluster the half holding the tie-breaker counts while the witness
 * answers. -Infinity when no quorum ever echoed us.
 *
 * Hearing a quorum (seesQuorum) is not being heard by one: over a link that
 * fails one way the node still hears the others while they declare it dead.
 * Its fencing lease is held only until this time plus a span shorter than
 * the others' wait before they declare it dead (agent/fence/lease.ts).
 */
export function heardByQuorumAt (voters: readonly string[], self: string, echoes: ReadonlyMap<string, number>, witnessReachable: boolean): number {
  const echoOf = (v: string): number => v === self ? Infinity : (echoes.get(v) ?? -Infinity)
  const times = [...new Set(voters.map(echoOf))].sort((a, b) => b - a)
  for (const t of times) {
    if (reachesQuorum(voters, new Set(voters.filter(v => echoOf(v) >= t)), witnessReachable)) return t
  }
  return -Infinity
}

/** Until when a leader's lease holds, from the heartbeats its voters acknowledged (Infinity for a leader that needs no one else). */
export function leaseExpiry (s: ElectionState): number {
  if (s.role !== 'leader' || !s.voters.includes(s.self)) return -Infinity
  const ackOf = (v: string): number => v === s.self ? Infinity : (s.acks[v] ?? -Infinity)
  const times = s.voters.map(ackOf).sort((a, b) => b - a)
  let newest = times[majority(s.voters.length) - 1]!
  const tb = tieBreaker(s.voters)
  if (tb !== null && s.witnessReachable) {
    const half = s.voters.length / 2
    const others = s.voters.filter(v => v !== tb).map(ackOf).sort((a, b) => b - a)
    const halfTime = Math.min(ackOf(tb), half === 1 ? Infinity : others[half - 2]!)
    newest = Math.max(newest, halfTime)
  }
  return newest + s.config.leaseMs
}

/** Whether this node may act as the scheduler right now: it leads and its lease holds. */
export function isLeader (s: ElectionState, now: number): boolean {
  return s.role === 'leader' && now < leaseExpiry(s)
}

/** When `step` next needs a tick if no message arrives (the caller may also just tick often). */
export function nextTickAt (s: ElectionState): number {
  if (s.role === 'leader') return Math.min(s.nextHeartbeatAt, leaseExpiry(s))
  let at = s.electionDeadline
  // A candidate holding half of an even cluster may win when the other half's silence gets long enough.
  if ((s.role === 'candidate' || s.role === 'precandidate') && tieBreaker(s.voters) !== null) {
    const have = s.role === 'candidate' ? s.votes : s.preVotes
    for (const v of s.voters) if (!have.includes(v)) at = Math.min(at, (s.lastHeard[v] ?? 0) + s.config.halfQuorumAfterMs)
  }
  return at
}

export type Fencing =
  | { accepted: true }
  | { accepted: false, code: 'stale_term' | 'not_leader', reason: string }

/**
 * Fencing: a node carries out an operation (or takes a log append) only from
 * the leader it knows for its own current term. An older term is a deposed
 * leader's; a newer one, or another sender, is nobody this node elected: a
 * term never rises through an operation, only through the election's own
 * messages (PreVote, RequestVote, the leader's heartbeat), so a peer that
 * merely holds the cluster key cannot raise it by claiming one.
 */
export function acceptFromLeader (local: { term: number, leader: string | null }, msg: { term: number, sender: string }): Fencing {
  if (!Number.isSafeInteger(msg.term) || msg.term < 0) return { accepted: false, code: 'stale_term', reason: `the message carries no valid term (${String(msg.term)})` }
  if (msg.term < local.term) return { accepted: false, code: 'stale_term', reason: `term ${msg.term} is older than term ${local.term}: its leader has been replaced` }
  if (msg.term > local.term) return { accepted: false, code: 'not_leader', reason: `term ${msg.term} is newer than this node's term ${local.term}, and terms rise only through elections` }
  if (local.leader !== msg.sender) return { accepted: false, code: 'not_leader', reason: `${msg.sender} is not the leader of term ${msg.term}${local.leader !== null ? ` (${local.leader} is)` : ' (none is known yet)'}` }
  return { accepted: true }
}

function resetDeadline (s: ElectionState, now: number): void {
  const r = mulberry32Step(s.rng)
  s.rng = r.state
  const { electionTimeoutMinMs: min, electionTimeoutMaxMs: max } = s.config
  s.electionDeadline = now + min + Math.floor(r.value * (max - min))
}

function clone (s: ElectionState): ElectionState {
  return { ...s, voters: [...s.voters], votes: [...s.votes], preVotes: [...s.preVotes], lastHeard: { ...s.lastHeard }, acks: { ...s.acks } }
}

function others (s: ElectionState): string[] {
  return s.voters.filter(v => v !== s.self)
}

function toFollower (s: ElectionState, now: number, actions: ElectionAction[], reason: string): void {
  if (s.role === 'leader') actions.push({ type: 'stepDown', term: s.term, reason })
  if (s.role !== 'follower') resetDeadline(s, now)
  s.role = 'follower'
  s.votes = []
  s.preVotes = []
  s.acks = {}
  if (s.leader === s.self) s.leader = null
}

function adoptTerm (s: ElectionState, term: number, now: number, actions: ElectionAction[]): void {
  if (term <= s.term) return
  toFollower(s, now, actions, `saw the newer term ${term}`)
  s.term = term
  s.votedFor = null
  s.leader = null
  actions.push({ type: 'persist', term: s.term, votedFor: null })
}

function becomeLeader (s: ElectionState, now: number, actions: ElectionAction[]): void {
  s.role = 'leader'
  s.leader = s.self
  s.acks = {}
  // Each vote was granted after the request went out: the lease counts from then.
  for (const v of s.votes) if (v !== s.self) s.acks[v] = s.electionStartedAt
  s.votes = []
  actions.push({ type: 'becomeLeader', term: s.term })
  const to = others(s)
  if (to.length > 0) actions.push({ type: 'sendHeartbeats', term: s.term, to, sentAt: now })
  s.nextHeartbeatAt = now + s.config.heartbeatIntervalMs
}

function startElection (s: ElectionState, now: number, actions: ElectionAction[]): void {
  s.term++
  s.role = 'candidate'
  s.votedFor = s.self
  s.votes = [s.self]
  s.leader = null
  s.electionStartedAt = now
  resetDeadline(s, now)
  actions.push({ type: 'persist', term: s.term, votedFor: s.self })
  const to = others(s)
  if (to.length > 0) actions.push({ type: 'sendVoteRequests', term: s.term, to })
  if (isQuorum(s, new Set(s.votes), now, true)) becomeLeader(s, now, actions)
}

/** PreVote: ask whether a majority would vote for us in the next term, without raising ours. */
function startPreVote (s: ElectionState, now: number, actions: ElectionAction[]): void {
  s.role = 'precandidate'
  s.preVotes = [s.self]
  s.leader = null
  s.electionStartedAt = now
  resetDeadline(s, now)
  const to = others(s)
  if (to.length > 0) actions.push({ type: 'sendPreVoteRequests', term: s.term + 1, to })
  if (isQuorum(s, new Set(s.preVotes), now, true)) startElection(s, now, actions)
}

/** Refuses other candidates while a leader (or a granted vote) was heard within the minimum election timeout. */
function sticky (s: ElectionState, now: number): boolean {
  if (s.role === 'leader') return now < leaseExpiry(s)
  return s.leaderContactAt !== null && now - s.leaderContactAt < s.config.electionTimeoutMinMs
}

export function step (state: ElectionState, event: ElectionEvent, now: number): { state: ElectionState, actions: ElectionAction[] } {
  const s = clone(state)
  const actions: ElectionAction[] = []
  const isVoter = (id: string): boolean => s.voters.includes(id)

  switch (event.type) {
    case 'tick': {
      if (event.witnessReachable !== undefined) s.witnessReachable = event.witnessReachable
      if (s.role === 'leader') {
        if (!isVoter(s.self)) toFollower(s, now, actions, 'no longer a voter')
        else if (now >= leaseExpiry(s)) toFollower(s, now, actions, 'lost its quorum: no heartbeat acknowledged by enough voters within the lease')
        else if (now >= s.nextHeartbeatAt) {
          const to = others(s)
          if (to.length > 0) actions.push({ type: 'sendHeartbeats', term: s.term, to, sentAt: now })
          s.nextHeartbeatAt = now + s.config.heartbeatIntervalMs
        }
        break
      }
      if (s.role === 'candidate' && isVoter(s.self) && isQuorum(s, new Set(s.votes), now, true)) {
        becomeLeader(s, now, actions)
        break
      }
      if (s.role === 'precandidate' && isVoter(s.self) && isQuorum(s, new Set(s.preVotes), now, true)) {
        startElection(s, now, actions)
        break
      }
      if (now >= s.electionDeadline) {
        if (!isVoter(s.self)) resetDeadline(s, now)
        else if (s.config.preVote) startPreVote(s, now, actions)
        else startElection(s, now, actions)
      }
      break
    }

    case 'preVoteRequest': {
      if (!isVoter(event.from) || !Number.isSafeInteger(event.term) || event.from === s.self) break
      s.lastHeard[event.from] = now
      // Nothing changes here: no term adopted, no vote recorded. Only an answer.
      const granted = isVoter(s.self) && event.term > s.term && event.candidateBehind !== true && !sticky(s, now)
      actions.push({ type: 'sendPreVote', to: event.from, term: s.term, granted })
      break
    }

    case 'preVoteResponse': {
      if (!isVoter(event.from) || !Number.isSafeInteger(event.term)) break
      s.lastHeard[event.from] = now
      if (event.term > s.term) {
        adoptTerm(s, event.term, now, actions)
        break
      }
      if (s.role !== 'precandidate' || !event.granted) break
      if (!s.preVotes.includes(event.from)) s.preVotes.push(event.from)
      if (isVoter(s.self) && isQuorum(s, new Set(s.preVotes), now, true)) startElection(s, now, actions)
      break
    }

    case 'voteRequest': {
      if (!isVoter(event.from) || !Number.isSafeInteger(event.term) || event.from === s.self) break
      s.lastHeard[event.from] = now
      if (event.term < s.term || !isVoter(s.self)) {
        actions.push({ type: 'sendVote', to: event.from, term: s.term, granted: false })
        break
      }
      const again = event.term === s.term && s.votedFor === event.from
      if (!again && sticky(s, now)) {
        actions.push({ type: 'sendVote', to: event.from, term: s.term, granted: false })
        break
      }
      adoptTerm(s, event.term, now, actions)
      // A precandidate is still a follower of its term: it may vote (two precandidates must not split a vote).
      if ((s.role === 'follower' || s.role === 'precandidate') && event.candidateBehind !== true && (s.votedFor === null || s.votedFor === event.from)) {
        if (s.role === 'precandidate') toFollower(s, now, actions, '')
        if (s.votedFor === null) {
          s.votedFor = event.from
          actions.push({ type: 'persist', term: s.term, votedFor: s.votedFor })
        }
        s.leaderContactAt = now
        resetDeadline(s, now)
        actions.push({ type: 'sendVote', to: event.from, term: s.term, granted: true })
      } else {
        actions.push({ type: 'sendVote', to: event.from, term: s.term, granted: false })
      }
      break
    }

    case 'voteResponse': {
      if (!isVoter(event.from) || !Number.isSafeInteger(event.term)) break
      s.lastHeard[event.from] = now
      if (event.term > s.term) {
        adoptTerm(s, event.term, now, actions)
        break
      }
      if (s.role !== 'candidate' || event.term !== s.term || !event.granted) break
      if (!s.votes.includes(event.from)) s.votes.push(event.from)
      if (isVoter(s.self) && isQuorum(s, new Set(s.votes), now, true)) becomeLeader(s, now, actions)
      break
    }

    case 'leaderHeartbeat': {
      if (!isVoter(event.from) || !Number.isSafeInteger(event.term) || event.from === s.self) break
      s.lastHeard[event.from] = now
      if (event.term < s.term) {
        actions.push({ type: 'sendHeartbeatAck', to: event.from, term: s.term, ok: false, sentAt: event.sentAt })
        break
      }
      adoptTerm(s, event.term, now, actions)
      if (s.role === 'leader') toFollower(s, now, actions, `another leader of term ${s.term}`)
      else if (s.role === 'candidate' || s.role === 'precandidate') toFollower(s, now, actions, '')
      s.leader = event.from
      s.leaderContactAt = now
      resetDeadline(s, now)
      actions.push({ type: 'sendHeartbeatAck', to: event.from, term: s.term, ok: true, sentAt: event.sentAt })
      break
    }

    case 'heartbeatAck': {
      if (!isVoter(event.from) || !Number.isSafeInteger(event.term)) break
      s.lastHeard[event.from] = now
      if (event.term > s.term) {
        adoptTerm(s, event.term, now, actions)
        break
      }
      if (s.role === 'leader' && event.term === s.term && event.ok && event.sentAt <= now) {
        s.acks[event.from] = Math.max(s.acks[event.from] ?? -Infinity, event.sentAt)
      }
      break
    }

    case 'membershipChange': {
      s.voters = sortedVoters(event.voters)
      for (const v of s.voters) if (s.lastHeard[v] === undefined) s.lastHeard[v] = now
      if (s.role === 'leader' && !isVoter(s.self)) toFollower(s, now, actions, 'no longer a voter')
      if (s.role === 'candidate') {
        s.votes = s.votes.filter(isVoter)
        if (isVoter(s.self) && isQuorum(s, new Set(s.votes), now, true)) becomeLeader(s, now, actions)
      }
      break
    }

  }
  return { state: s, actions }
}
