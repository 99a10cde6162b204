/**
 * The chaos run's judgements (scripts/lab/chaos/checks.ts), pure: container
 * runs rebuilt from Docker's events and inspect times, overlaps of two
 * copies, losses judged against the RPO, divergent copies kept, convergence.
 */
import { describe, expect, it } from 'vitest'
import { containerRuns, convergenceViolations, findOverlaps, findUnkeptCopies, groupLosses, inferRelocations, judgeConvergence, judgeLoss, judgeWrites, type Ack, type DockerEvent, type DockerInspection, type Relocation } from '../../scripts/lab/chaos/checks.ts'

const T = 1_700_000_000_000
const s = (sec: number): number => T + sec * 1000

function ev (node: string, action: string, sec: number, container = `c-${node}`): DockerEvent {
  return { node, container, app: 'notes', action, time: s(sec) }
}
function insp (node: string, o: Partial<DockerInspection> & { observedAt: number }, container = `c-${node}`): DockerInspection {
  return { node, container, app: 'notes', startedAt: null, finishedAt: null, running: false, paused: false, ...o }
}
function ack (node: string | null, sec: number, id = `w ${sec}`): Ack {
  return { app: 'notes', id, node, at: s(sec) }
}

describe('container runs from Docker', () => {
  it('joins a start event and StartedAt into one run, ended by die', () => {
    const runs = containerRuns([ev('n1', 'start', 10.002), ev('n1', 'die', 50)], [insp('n1', { startedAt: s(10), running: true, observedAt: s(20) })], [])
    expect(runs).toEqual([{ app: 'notes', node: 'n1', container: 'c-n1', start: s(10), end: s(50), paused: [] }])
  })

  it('counts each restart of the same container as its own run', () => {
    const runs = containerRuns([ev('n1', 'start', 10), ev('n1', 'die', 20), ev('n1', 'start', 30)], [insp('n1', { startedAt: s(30), running: true, observedAt: s(40) })], [])
    expect(runs.map(r => [r.start, r.end])).toEqual([[s(10), s(20)], [s(30), null]])
  })

  it('ends runs at a node death, not at the FinishedAt its dockerd stamps when it comes back', () => {
    // Killed at 40; dockerd back at 90 says the container finished at 90, then its restart policy starts it at 91.
    const runs = containerRuns([ev('n1', 'start', 10), ev('n1', 'start', 91)], [
      insp('n1', { startedAt: s(10), running: true, observedAt: s(30) }),
      insp('n1', { startedAt: s(10), finishedAt: s(90), running: false, observedAt: s(90.5) })
    ], [{ node: 'n1', at: s(40) }])
    expect(runs.map(r => [r.start, r.end])).toEqual([[s(10), s(40)], [s(91), null]])
  })

  it('uses only inspect times for a container whose events were missed (removed, or while the stream was down)', () => {
    const runs = containerRuns([], [insp('n2', { startedAt: s(5), finishedAt: s(8), observedAt: s(9) })], [])
    expect(runs.map(r => [r.node, r.start, r.end])).toEqual([['n2', s(5), s(8)]])
  })

  it('records pauses, also one that lasts until the container dies', () => {
    const runs = containerRuns([ev('n1', 'start', 0), ev('n1', 'pause', 10), ev('n1', 'unpause', 11), ev('n1', 'pause', 20), ev('n1', 'die', 25)], [], [])
    expect(runs[0]?.paused).toEqual([{ start: s(10), end: s(11) }, { start: s(20), end: s(25) }])
  })
})

describe('two copies', () => {
  it('finds two unpaused copies on different nodes at once, with the writes each answered', () => {
    const runs = containerRuns([ev('n1', 'start', 0), ev('n1', 'die', 30), ev('n3', 'start', 20)], [], [])
    const o = findOverlaps(runs, [ack('n1', 25), ack('n3', 26), ack('n3', 27)], s(100))
    expect(o).toHaveLength(1)
    expect(o[0]).toMatchObject({ app: 'notes', from: s(20), to: s(30), ms: 10_000, acksA: 1, acksB: 2, excused: null })
    expect(o[0]?.a.node).toBe('n1')
  })

  it('finds none when one stops before the other starts (a move), nor on the same node', () => {
    const runs = containerRuns([ev('n1', 'start', 0), ev('n1', 'die', 10), ev('n2', 'start', 10.5), ev('n2', 'die', 20), ev('n2', 'start', 19)], [], [])
    expect(findOverlaps(runs, [], s(100))).toEqual([])
  })

  it('closes a copy still running at the end of observation', () => {
    const runs = containerRuns([ev('n1', 'start', 0), ev('n2', 'start', 50)], [], [])
    expect(findOverlaps(runs, [], s(60))[0]?.ms).toBe(10_000)
  })

  it('does not count paused time; excuses a copy fenced by a pause that answered no write, not one that did', () => {
    // n1 paused at 19 (fenced), killed at 40; n3 starts at 20. Unpaused overlap: none.
    const fenced = containerRuns([ev('n1', 'start', 0), ev('n1', 'pause', 19), ev('n1', 'die', 40), ev('n3', 'start', 20)], [], [])
    expect(findOverlaps(fenced, [], s(100))).toEqual([])
    // Paused late (at 25): 5 s unpaused overlap. No write answered by n1 in it: excused.
    const late = containerRuns([ev('n1', 'start', 0), ev('n1', 'pause', 25), ev('n1', 'die', 40), ev('n3', 'start', 20)], [], [])
    const quiet = findOverlaps(late, [ack('n3', 22)], s(100))
    expect(quiet[0]?.ms).toBe(5000)
    expect(quiet[0]?.excused).toMatch(/n1 was fenced/)
    // The same, but n1 answered a write at 22: both accepted writes.
    expect(findOverlaps(late, [ack('n1', 22)], s(100))[0]?.excused).toBeNull()
  })

  it('does not excuse a copy paused only for a moment (a snapshot) that answered no write', () => {
    // The stale copy on n2 keeps running and answering; the new one on n3 was paused 1 s for its first snapshot.
    const runs = containerRuns([ev('n2', 'start', 0), ev('n2', 'die', 110), ev('n3', 'start', 85), ev('n3', 'pause', 90), ev('n3', 'unpause', 91)], [], [])
    const o = findOverlaps(runs, [ack('n2', 95)], s(120))
    expect(o[0]?.ms).toBe(24_000)
    expect(o[0]?.excused).toBeNull()
  })
})

describe('writes and the RPO', () => {
  const failover: Relocation = { app: 'notes', kind: 'failover', at: s(100), snapshotTime: s(60), from: 'n1', to: 'n2' }
  const move: Relocation = { app: 'notes', kind: 'move', at: s(200), snapshotTime: s(199), from: 'n2', to: 'n3' }

  it('allows a loss after the snapshot a failover restored, within the RPO', () => {
    expect(judgeLoss(ack('n1', 80), [failover], 60_000)).toMatchObject({ kind: 'within-rpo', ageMs: 20_000 })
  })

  it('calls a loss beyond the RPO, before the snapshot, after the failover, or across a move a violation', () => {
    expect(judgeLoss(ack('n1', 95), [failover], 30_000)).toMatchObject({ kind: 'beyond-rpo', ageMs: 35_000 })
    expect(judgeLoss(ack('n1', 50), [failover], 60_000).kind).toBe('unexplained')
    // Acknowledged by a stale copy after the failover: nothing explains losing it.
    expect(judgeLoss(ack('n1', 101), [failover], 60_000).kind).toBe('unexplained')
    expect(judgeLoss(ack('n2', 199.5), [failover, move], 60_000).kind).toBe('unexplained')
    expect(judgeLoss({ ...ack('n1', 80), app: 'postgres' }, [failover], 60_000).kind).toBe('unexplained')
  })

  it('counts the RPO up to the instant the copy was cut off, not up to each record', () => {
    // n1 was cut off at 85 s; the restored snapshot is of 60 s: 25 s old at the cut.
    const cut = [{ node: 'n1', from: s(85), to: s(120) }]
    expect(judgeLoss(ack('n1', 70), [failover], 30_000, cut)).toMatchObject({ kind: 'within-rpo', ageMs: 25_000 })
    // The same records with the snapshot older than the RPO at the cut: a violation, even for one acknowledged soon after that snapshot.
    expect(judgeLoss(ack('n1', 62), [failover], 20_000, cut)).toMatchObject({ kind: 'beyond-rpo', ageMs: 25_000 })
  })

  it('leaves what a copy acknowledged after it was cut off to the kept check', () => {
    const cut = [{ node: 'n1', from: s(85), to: s(120) }]
    expect(judgeLoss(ack('n1', 90), [failover], 10_000, cut)).toMatchObject({ kind: 'cut-off', cutAt: s(85) })
    // A cut of another node, or one over before the snapshot, says nothing about n1's copy.
    expect(judgeLoss(ack('n1', 90), [failover], 10_000, [{ node: 'n2', from: s(85), to: s(120) }]).kind).toBe('beyond-rpo')
    expect(judgeLoss(ack('n1', 90), [failover], 10_000, [{ node: 'n1', from: s(10), to: s(20) }]).kind).toBe('beyond-rpo')
    // After the failover nothing excuses it, cut or not.
    expect(judgeLoss(ack('n1', 101), [failover], 60_000, cut).kind).toBe('unexplained')
  })

  it('sorts acknowledged records into present, allowed and lost', () => {
    const acks = [ack('n1', 10, 'a'), ack('n1', 80, 'b'), ack('n2', 150, 'c')]
    const v = judgeWrites('notes', acks, id => id === 'a', [failover], 60_000)
    expect(v.acked).toBe(3)
    expect(v.present).toBe(1)
    expect(v.allowed.map(x => x.ack.id)).toEqual(['b'])
    expect(v.lost.map(x => x.ack.id)).toEqual(['c'])
  })
})

describe('divergent copies kept', () => {
  it('wants a snapshot from the diverged node taken after its last missing record', () => {
    const acks = [ack('n1', 10, 'a'), ack('n1', 20, 'b'), ack('n3', 30, 'c')]
    const present = (id: string): boolean => id === 'c'
    expect(findUnkeptCopies('notes', acks, present, [{ id: 's1', node: 'n1', time: s(25), purpose: 'divergent', label: 'divergent-n1-x' }])).toEqual([])
    expect(findUnkeptCopies('notes', acks, present, [{ id: 's1', node: 'n1', time: s(15), purpose: 'scheduled', label: null }, { id: 's2', node: 'n3', time: s(40), purpose: 'divergent', label: null }]))
      .toEqual([{ app: 'notes', node: 'n1', missing: 2, lastAckAt: s(20) }])
  })
})

describe('convergence', () => {
  const sample = (sec: number, running: Record<string, string[]>, live = ['n1', 'n2', 'n3']): { at: number, running: Record<string, string[]>, live: string[] } => ({ at: s(sec), running, live })

  it('measures from the quiet start to the first sample where every app runs once on a live node', () => {
    const v = judgeConvergence([
      sample(99, { notes: ['n1'] }),
      sample(101, { notes: ['n1', 'n2'], postgres: ['n3'] }),
      sample(110, { notes: ['n2'], postgres: ['n3'] }, ['n1', 'n2']),
      sample(112, { notes: ['n2'], postgres: ['n3'] })
    ], ['notes', 'postgres'], s(100))
    expect(v).toEqual({ convergedAfterMs: 12_000, brokenAt: [], lastProblem: null })
    expect(convergenceViolations(v, 30_000)).toEqual([])
    expect(convergenceViolations(v, 10_000)[0]).toMatch(/only after 12.0 s/)
  })

  it('says why it never converged, and when it broke again', () => {
    const never = judgeConvergence([sample(101, { notes: [] })], ['notes'], s(100))
    expect(convergenceViolations(never, 30_000)).toEqual(['did not converge: notes runs nowhere'])
    const broke = judgeConvergence([sample(101, { notes: ['n1'] }), sample(103, { notes: ['n1', 'n3'] })], ['notes'], s(100))
    expect(convergenceViolations(broke, 30_000)[0]).toMatch(/notes runs on n1 and n3/)
  })
})

describe('restores the agents did not record', () => {
  it('infers one from a run that starts on another node, with the newest snapshot before it (not a divergent one)', () => {
    const runs = containerRuns([ev('n2', 'start', 0), ev('n2', 'die', 45), ev('n1', 'start', 54), ev('n1', 'die', 60), ev('n1', 'start', 61)], [], [])
    const snaps = [
      { app: 'notes', id: 'a', node: 'n2', time: s(22), purpose: 'scheduled', label: null },
      { app: 'notes', id: 'b', node: 'n2', time: s(50), purpose: 'divergent', label: 'divergent-n2-x' },
      { app: 'notes', id: 'c', node: 'n1', time: s(58), purpose: 'scheduled', label: null }
    ]
    const inferred = inferRelocations(runs, [], snaps)
    expect(inferred).toEqual([{ app: 'notes', kind: 'failover', at: s(54), snapshotTime: s(22), from: 'n2', to: 'n1', inferred: true }])
    // A recorded relocation near that start: nothing inferred.
    expect(inferRelocations(runs, [{ app: 'notes', kind: 'failover', at: s(56), snapshotTime: s(22), from: 'n2', to: 'n1' }], snaps)).toEqual([])
    // And it explains losses after its snapshot, within the RPO.
    expect(judgeLoss(ack('n2', 40), inferred, 30_000).kind).toBe('within-rpo')
  })

  it('groups lost records by node and cause for the report', () => {
    const f: Relocation = { app: 'notes', kind: 'failover', at: s(100), snapshotTime: s(60), from: 'n1', to: 'n2' }
    const losses = [ack('n1', 70, 'a'), ack('n1', 80, 'b'), ack('n3', 90, 'c')].map(a => ({ ack: a, verdict: judgeLoss(a, [f], 60_000) }))
    const g = groupLosses([...losses, { ack: ack('n1', 200, 'd'), verdict: { kind: 'unexplained' as const } }])
    expect(g.map(x => [x.node, x.verdict, x.count, x.maxAgeMs])).toEqual([['n1', 'within-rpo', 2, 20_000], ['n3', 'within-rpo', 1, 30_000], ['n1', 'unexplained', 1, null]])
  })
})
