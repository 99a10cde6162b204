import { describe, expect, it } from 'vitest'
import {
  DEFAULT_ELECTION, acceptFromLeader, checkElectionConfig, heardByQuorumAt, initElection, isLeader, leaseExpiry, majority, nextTickAt, step, tieBreaker,
  type ElectionAction, type ElectionEvent, type ElectionState
} from '../../scheduler/election.ts'

const { leaseMs, electionTimeoutMinMs, electionTimeoutMaxMs, halfQuorumAfterMs, heartbeatIntervalMs } = DEFAULT_ELECTION

/** Feeds events in order; returns the final state and every action. */
function run (state: ElectionState, events: Array<[ElectionEvent, number]>): { state: ElectionState, actions: ElectionAction[] } {
  const actions: ElectionAction[] = []
  for (const [event, now] of events) {
    const r = step(state, event, now)
    state = r.state
    actions.push(...r.actions)
  }
  return { state, actions }
}

const tick = (witnessReachable?: boolean): ElectionEvent => witnessReachable === undefined ? { type: 'tick' } : { type: 'tick', witnessReachable }

/** A candidate of term 1 in a 3-node cluster (a, b, c), self a, started at t = 0. */
function candidate (): ElectionState {
  const s = initElection({ self: 'a', voters: ['a', 'b', 'c'], seed: 1, now: 0 })
  return step(s, tick(), s.electionDeadline).state
}

describe('election rules', () => {
  it('majority is floor(n/2)+1; the tie-breaker exists only for even clusters', () => {
    expect([1, 2, 3, 4, 5, 6].map(majority)).toEqual([1, 2, 2, 3, 3, 4])
    expect(tieBreaker(['b', 'a'].sort())).toBe('a')
    expect(tieBreaker(['a', 'b', 'c'])).toBeNull()
  })

  it('a cluster of one elects itself once its election timeout passes, and stays leader', () => {
    const s = initElection({ self: 'a', voters: ['a'], seed: 7, now: 0 })
    expect(s.electionDeadline).toBeGreaterThanOrEqual(electionTimeoutMinMs)
    expect(s.electionDeadline).toBeLessThan(electionTimeoutMaxMs)
    expect(step(s, tick(), s.electionDeadline - 1).actions).toEqual([])
    const r = step(s, tick(), s.electionDeadline)
    expect(r.actions).toEqual([{ type: 'persist', term: 1, votedFor: 'a' }, { type: 'becomeLeader', term: 1 }])
    expect(isLeader(r.state, 10 ** 12)).toBe(true)
    expect(step(r.state, tick(), 10 ** 12).actions).toEqual([])
  })

  it('draws its election timeouts from the seed: the same seed, the same timeouts', () => {
    const deadlines = (seed: number): number[] => {
      let s = initElection({ self: 'a', voters: ['a', 'b', 'c'], seed, now: 0 })
      const out = [s.electionDeadline]
      for (let i = 0; i < 5; i++) {
        s = step(s, tick(), s.electionDeadline).state
        out.push(s.electionDeadline)
      }
      return out
    }
    expect(deadlines(5)).toEqual(deadlines(5))
    expect(deadlines(5)).not.toEqual(deadlines(6))
  })

  it('a candidate asks the other voters, and leads with a majority, heartbeating at once', () => {
    const c = candidate()
    expect(c.role).toBe('candidate')
    const start = c.electionStartedAt
    const r = run(c, [[{ type: 'voteResponse', from: 'b', term: 1, granted: true }, start + 10]])
    expect(r.actions).toEqual([{ type: 'becomeLeader', term: 1 }, { type: 'sendHeartbeats', term: 1, to: ['b', 'c'], sentAt: start + 10 }])
    expect(isLeader(r.state, start + 10)).toBe(true)
    // Its lease counts from when it asked for the votes.
    expect(leaseExpiry(r.state)).toBe(start + leaseMs)
  })

  it('a refused vote, or one of another term, does not count', () => {
    const c = candidate()
    const r = run(c, [
      [{ type: 'voteResponse', from: 'b', term: 1, granted: false }, c.electionStartedAt + 1],
      [{ type: 'voteResponse', from: 'c', term: 0, granted: true }, c.electionStartedAt + 2]
    ])
    expect(r.state.role).toBe('candidate')
  })

  it('votes once per term, persisting the vote before answering', () => {
    const s = initElection({ self: 'a', voters: ['a', 'b', 'c'], seed: 1, now: 0 })
    const t = electionTimeoutMinMs
    const r = run(s, [
      [{ type: 'voteRequest', from: 'b', term: 3 }, t + 10],
      [{ type: 'voteRequest', from: 'c', term: 3 }, t + 20],
      [{ type: 'voteRequest', from: 'b', term: 3 }, t + 30]
    ])
    expect(r.actions).toEqual([
      { type: 'persist', term: 3, votedFor: null },
      { type: 'persist', term: 3, votedFor: 'b' },
      { type: 'sendVote', to: 'b', term: 3, granted: true },
      { type: 'sendVote', to: 'c', term: 3, granted: false },
      { type: 'sendVote', to: 'b', term: 3, granted: true }
    ])
  })

  it('a node that just started refuses candidates for the minimum election timeout (it may have acknowledged a leader just before)', () => {
    const s = initElection({ self: 'a', voters: ['a', 'b', 'c'], seed: 1, now: 1000 })
    expect(step(s, { type: 'voteRequest', from: 'b', term: 1 }, 1000 + electionTimeoutMinMs - 1).actions).toEqual([{ type: 'sendVote', to: 'b', term: 0, granted: false }])
    expect(step(s, { type: 'voteRequest', from: 'b', term: 1 }, 1000 + electionTimeoutMinMs).actions.at(-1)).toEqual({ type: 'sendVote', to: 'b', term: 1, granted: true })
  })

  it('remembers a persisted vote across a restart', () => {
    const s = initElection({ self: 'a', voters: ['a', 'b', 'c'], term: 3, votedFor: 'b', seed: 1, now: 0 })
    expect(step(s, { type: 'voteRequest', from: 'c', term: 3 }, electionTimeoutMinMs + 10).actions).toEqual([{ type: 'sendVote', to: 'c', term: 3, granted: false }])
    expect(step(s, { type: 'voteRequest', from: 'b', term: 3 }, electionTimeoutMinMs + 10).actions).toEqual([{ type: 'sendVote', to: 'b', term: 3, granted: true }])
  })

  it('refuses candidates of older terms, and candidates whose desired state is behind (while adopting their term)', () => {
    const s = initElection({ self: 'a', voters: ['a', 'b', 'c'], term: 5, seed: 1, now: 0 })
    expect(step(s, { type: 'voteRequest', from: 'b', term: 4 }, 10).actions).toEqual([{ type: 'sendVote', to: 'b', term: 5, granted: false }])
    const r = step(s, { type: 'voteRequest', from: 'b', term: 6, candidateBehind: true }, electionTimeoutMinMs)
    expect(r.actions).toEqual([{ type: 'persist', term: 6, votedFor: null }, { type: 'sendVote', to: 'b', term: 6, granted: false }])
  })

  it('ignores election messages from non-voters', () => {
    const s = initElection({ self: 'a', voters: ['a', 'b', 'c'], seed: 1, now: 0 })
    expect(step(s, { type: 'voteRequest', from: 'mallory', term: 99 }, 10)).toEqual({ state: { ...s }, actions: [] })
    expect(step(s, { type: 'leaderHeartbeat', from: 'mallory', term: 99, sentAt: 0 }, 10).actions).toEqual([])
  })

  it('a follower that heard its leader refuses other candidates for the minimum election timeout, without adopting their term', () => {
    const s = initElection({ self: 'a', voters: ['a', 'b', 'c'], term: 2, seed: 1, now: 0 })
    const r = run(s, [
      [{ type: 'leaderHeartbeat', from: 'b', term: 2, sentAt: 100 }, 100],
      [{ type: 'voteRequest', from: 'c', term: 3 }, 100 + electionTimeoutMinMs - 1]
    ])
    expect(r.actions.at(-1)).toEqual({ type: 'sendVote', to: 'c', term: 2, granted: false })
    expect(r.state.term).toBe(2)
    const later = step(r.state, { type: 'voteRequest', from: 'c', term: 3 }, 100 + electionTimeoutMinMs)
    expect(later.actions.at(-1)).toEqual({ type: 'sendVote', to: 'c', term: 3, granted: true })
  })

  it('a follower acknowledges heartbeats of its term and newer, and tells an old leader its term', () => {
    const s = initElection({ self: 'a', voters: ['a', 'b', 'c'], term: 4, seed: 1, now: 0 })
    expect(step(s, { type: 'leaderHeartbeat', from: 'b', term: 3, sentAt: 5 }, 10).actions).toEqual([{ type: 'sendHeartbeatAck', to: 'b', term: 4, ok: false, sentAt: 5 }])
    const r = step(s, { type: 'leaderHeartbeat', from: 'c', term: 4, sentAt: 5 }, 10)
    expect(r.actions).toEqual([{ type: 'sendHeartbeatAck', to: 'c', term: 4, ok: true, sentAt: 5 }])
    expect(r.state.leader).toBe('c')
    // The heartbeat pushes the next election out.
    expect(r.state.electionDeadline).toBeGreaterThanOrEqual(10 + electionTimeoutMinMs)
  })

  it('a leader heartbeats every interval and keeps its lease while a majority acknowledges', () => {
    const c = candidate()
    const t0 = c.electionStartedAt
    let { state } = run(c, [[{ type: 'voteResponse', from: 'b', term: 1, granted: true }, t0 + 5]])
    const actions: ElectionAction[] = []
    for (let t = t0 + 100; t < t0 + 10_000; t += 100) {
      const r = step(state, tick(), t)
      state = r.state
      actions.push(...r.actions)
      for (const a of r.actions) {
        if (a.type === 'sendHeartbeats') state = step(state, { type: 'heartbeatAck', from: 'c', term: 1, ok: true, sentAt: a.sentAt }, t + 20).state
      }
      expect(isLeader(state, t)).toBe(true)
    }
    const beats = actions.filter(a => a.type === 'sendHeartbeats').length
    expect(beats).toBeGreaterThanOrEqual(Math.floor(9_900 / heartbeatIntervalMs) - 1)
    expect(actions.some(a => a.type === 'stepDown')).toBe(false)
  })

  it('a leader steps down when no majority acknowledged within the lease', () => {
    const c = candidate()
    const t0 = c.electionStartedAt
    const { state } = run(c, [[{ type: 'voteResponse', from: 'b', term: 1, granted: true }, t0 + 5]])
    expect(isLeader(state, t0 + leaseMs - 1)).toBe(true)
    expect(isLeader(state, t0 + leaseMs)).toBe(false)
    const r = step(state, tick(), t0 + leaseMs)
    expect(r.actions).toEqual([{ type: 'stepDown', term: 1, reason: 'lost its quorum: no heartbeat acknowledged by enough voters within the lease' }])
    expect(r.state.role).toBe('follower')
  })

  it('a leader steps down at once when it sees a higher term', () => {
    const c = candidate()
    const { state } = run(c, [[{ type: 'voteResponse', from: 'b', term: 1, granted: true }, c.electionStartedAt + 5]])
    for (const event of [
      { type: 'heartbeatAck', from: 'c', term: 2, ok: false, sentAt: 0 },
      { type: 'leaderHeartbeat', from: 'c', term: 2, sentAt: 0 }
    ] as const) {
      const r = step(state, event, c.electionStartedAt + 10)
      expect(r.actions.slice(0, 2)).toEqual([{ type: 'stepDown', term: 1, reason: 'saw the newer term 2' }, { type: 'persist', term: 2, votedFor: null }])
      expect(r.state.role).toBe('follower')
      expect(r.state.term).toBe(2)
    }
  })

  it('a leader removed from the voters steps down', () => {
    const s = initElection({ self: 'a', voters: ['a'], seed: 1, now: 0 })
    const leader = step(s, tick(), s.electionDeadline).state
    const r = step(leader, { type: 'membershipChange', voters: ['b', 'c'] }, s.electionDeadline + 1)
    expect(r.actions).toEqual([{ type: 'stepDown', term: 1, reason: 'no longer a voter' }])
  })

  it('a voter added to a cluster of one makes its leader need two acknowledgements', () => {
    const s = initElection({ self: 'a', voters: ['a'], seed: 1, now: 0 })
    const leader = step(s, tick(), s.electionDeadline).state
    const t = s.electionDeadline
    const grown = step(leader, { type: 'membershipChange', voters: ['a', 'b', 'c'] }, t + 1).state
    expect(isLeader(grown, t + 1)).toBe(false)
    expect(step(grown, tick(), t + 2).actions[0]).toMatchObject({ type: 'stepDown' })
  })

  it('tells the caller when to tick next', () => {
    const s = initElection({ self: 'a', voters: ['a', 'b', 'c'], seed: 1, now: 0 })
    expect(nextTickAt(s)).toBe(s.electionDeadline)
  })

  it('refuses configurations that would let two leaders overlap', () => {
    expect(checkElectionConfig(DEFAULT_ELECTION)).toEqual([])
    expect(checkElectionConfig({ ...DEFAULT_ELECTION, leaseMs: electionTimeoutMinMs })).toContain('electionTimeoutMinMs must exceed leaseMs (or two leaders could overlap)')
    expect(() => initElection({ self: 'a', voters: ['a'], seed: 1, now: 0, config: { heartbeatIntervalMs: 5000 } })).toThrow(RangeError)
  })
})

describe('two-node rule', () => {
  /** Node `self` of a two-node cluster (n1 is the lower id) that last heard the other at t = 0 and is a candidate. */
  function alone (self: 'n1' | 'n2', witness: boolean): { state: ElectionState, actions: ElectionAction[], at: (t: number) => { state: ElectionState, actions: ElectionAction[] } } {
    let state = initElection({ self, voters: ['n1', 'n2'], seed: 3, now: 0, witnessReachable: witness })
    const actions: ElectionAction[] = []
    const at = (t: number): { state: ElectionState, actions: ElectionAction[] } => {
      const r = step(state, tick(witness), t)
      state = r.state
      actions.push(...r.actions)
      return { state, actions }
    }
    return { get state () { return state }, actions, at }
  }

  it('the lower-id node leads alone once the other has been silent for halfQuorumAfterMs, when it reaches the witness', () => {
    const lo = alone('n1', true)
    for (let t = 0; t < halfQuorumAfterMs; t += 50) lo.at(t)
    expect(lo.actions.some(a => a.type === 'becomeLeader')).toBe(false)
    for (let t = halfQuorumAfterMs; t < halfQuorumAfterMs + 200; t += 50) lo.at(t)
    expect(lo.actions.filter(a => a.type === 'becomeLeader')).toHaveLength(1)
    expect(isLeader(lo.state, halfQuorumAfterMs + 10 ** 9)).toBe(true)
  })

  it('the lower-id node does not lead alone without the witness', () => {
    const lo = alone('n1', false)
    for (let t = 0; t < 60_000; t += 50) lo.at(t)
    expect(lo.actions.some(a => a.type === 'becomeLeader')).toBe(false)
  })

  it('the higher-id node never leads alone, witness or not', () => {
    const hi = alone('n2', true)
    for (let t = 0; t < 60_000; t += 50) hi.at(t)
    expect(hi.actions.some(a => a.type === 'becomeLeader')).toBe(false)
    expect(hi.actions.filter(a => a.type === 'sendVoteRequests').length).toBeGreaterThan(10)
  })

  it('the lower-id leader alone steps down when it loses the witness', () => {
    const lo = alone('n1', true)
    for (let t = 0; t <= halfQuorumAfterMs + 200; t += 50) lo.at(t)
    const r = step(lo.state, tick(false), halfQuorumAfterMs + 300)
    expect(r.actions[0]).toMatchObject({ type: 'stepDown' })
  })

  it('with both nodes up, either may lead with both votes', () => {
    let hi = initElection({ self: 'n2', voters: ['n1', 'n2'], seed: 3, now: 0 })
    hi = step(hi, tick(), hi.electionDeadline).state
    const r = step(hi, { type: 'voteResponse', from: 'n1', term: 1, granted: true }, hi.electionDeadline)
    expect(r.actions[0]).toEqual({ type: 'becomeLeader', term: 1 })
  })
})

describe('fencing', () => {
  const L = 'leader-of-5'
  it.each([
    ['the known leader, current term', { term: 5, leader: L }, { term: 5, sender: L }, true, null],
    ['a deposed leader', { term: 5, leader: L }, { term: 4, sender: 'old' }, false, 'stale_term'],
    ['any peer claiming the next term', { term: 5, leader: L }, { term: 6, sender: 'rogue' }, false, 'not_leader'],
    ['the current term from another peer', { term: 5, leader: L }, { term: 5, sender: 'rogue' }, false, 'not_leader'],
    ['before the leader of the term is known', { term: 5, leader: null }, { term: 5, sender: L }, false, 'not_leader'],
    ['no valid term', { term: 3, leader: L }, { term: Number.NaN, sender: L }, false, 'stale_term'],
    ['a negative term', { term: 3, leader: L }, { term: -1, sender: L }, false, 'stale_term']
  ] as const)('%s: accepted %s', (_what, local, msg, accepted, code) => {
    const r = acceptFromLeader(local, msg)
    expect(r.accepted).toBe(accepted)
    if (!r.accepted) {
      expect(r.code).toBe(code)
      expect(r.reason).toMatch(/term|leader/)
    }
  })
})

describe('heard by a quorum (the fencing lease over a link failing one way)', () => {
  const voters = ['a', 'b', 'c', 'd', 'e']
  it.each([
    ['three of five: self and the newer of the echoes', { b: 900, c: 700, d: 100 }, 700],
    ['every voter echoed', { b: 900, c: 950, d: 100, e: 50 }, 900],
    ['only one other echoed: no quorum', { b: 900 }, -Infinity],
    ['no echo at all', {}, -Infinity]
  ] as const)('%s', (_what, echoes, at) => {
    expect(heardByQuorumAt(voters, 'a', new Map(Object.entries(echoes)), false)).toBe(at)
  })

  it('a lone node needs no one; in two, the tie-breaker with the witness needs no echo, the other does', () => {
    expect(heardByQuorumAt(['a'], 'a', new Map(), false)).toBe(Infinity)
    const tb = tieBreaker(['a', 'b']) as string
    const other = tb === 'a' ? 'b' : 'a'
    expect(heardByQuorumAt(['a', 'b'], tb, new Map(), true)).toBe(Infinity)
    expect(heardByQuorumAt(['a', 'b'], tb, new Map(), false)).toBe(-Infinity)
    expect(heardByQuorumAt(['a', 'b'], other, new Map([[tb, 500]]), true)).toBe(500)
  })

  it('property: any quorum that has not heard the node since t meets the echoes, so the node was heard by a quorum no later than t', () => {
    // For every assignment of echo times, and every quorum Q of the other voters whose echoes are all <= t,
    // heardByQuorumAt <= t: the fencing lease (bounded by it) lapses before Q may restore the app.
    for (let seed = 0; seed < 500; seed++) {
      let x = seed * 2654435761 % 2 ** 32
      const rnd = (): number => { x = (x * 1664525 + 1013904223) % 2 ** 32; return x / 2 ** 32 }
      const n = 2 + Math.floor(rnd() * 5)
      const vs = Array.from({ length: n }, (_, i) => `v${i}`)
      const echoes = new Map(vs.slice(1).filter(() => rnd() < 0.8).map(v => [v, Math.floor(rnd() * 1000)] as const))
      const at = heardByQuorumAt(vs, 'v0', echoes, false)
      const others = vs.slice(1)
      for (let mask = 0; mask < 2 ** others.length; mask++) {
        const q = others.filter((_, i) => (mask & (1 << i)) !== 0)
        if (q.length < majority(n)) continue
        const t = Math.max(...q.map(v => echoes.get(v) ?? -Infinity))
        expect(at).toBeLessThanOrEqual(t)
      }
    }
  })
})
