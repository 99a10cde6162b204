/**
 * The replicated log's pure rules (scheduler/replication.ts): table tests of
 * what a follower does with an append, and a property test that drives a
 * simulated cluster (pure logic, named as such: no network, no disk) through
 * random leader changes and lost messages, checking Raft's safety: no two
 * nodes ever commit different entries at one index, and nothing committed is
 * ever dropped.
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { decideAppend, lastIndex, leaderCommit, nextAfterRefusal, termAt, type LogView } from '../../scheduler/replication.ts'
import type { LogEntry } from '../../proto/cluster.ts'

const e = (index: number, term: number): LogEntry => ({ index, term, change: { kind: 'drain', node: `n${index}x${term}`.padEnd(46, 'a'), drained: true } })
const view = (terms: number[], commitIndex = 0, snapshot: [number, number] = [0, 0]): LogView => ({
  snapshotIndex: snapshot[0],
  snapshotTerm: snapshot[1],
  entries: terms.map((t, i) => e(snapshot[0] + i + 1, t)),
  commitIndex
})

describe('a follower and an append', () => {
  it.each([
    ['appends to an empty log', view([]), { prevIndex: 0, prevTerm: 0, entries: [e(1, 1), e(2, 1)], commit: 1 }, { kind: 'accept', truncateAfter: null, appended: [1, 2], commit: 1 }],
    ['refuses a gap, so the leader backs up', view([1]), { prevIndex: 3, prevTerm: 1, entries: [e(4, 1)], commit: 0 }, { kind: 'refuse', reason: 'gap' }],
    ['refuses a mismatched previous entry', view([1, 1]), { prevIndex: 2, prevTerm: 2, entries: [e(3, 2)], commit: 0 }, { kind: 'refuse', reason: 'mismatch' }],
    ['drops an uncommitted tail of an older term that conflicts', view([1, 1, 1], 1), { prevIndex: 1, prevTerm: 1, entries: [e(2, 2)], commit: 2 }, { kind: 'accept', truncateAfter: 1, appended: [2], commit: 2 }],
    ['never drops a committed entry: the sender is no true leader', view([1, 1, 1], 3), { prevIndex: 1, prevTerm: 1, entries: [e(2, 2)], commit: 2 }, { kind: 'refuse', reason: 'conflicts_committed' }],
    ['refuses a previous entry that contradicts a committed one', view([1, 1], 2), { prevIndex: 2, prevTerm: 3, entries: [], commit: 2 }, { kind: 'refuse', reason: 'conflicts_committed' }],
    ['a replayed append changes nothing', view([1, 1], 2), { prevIndex: 0, prevTerm: 0, entries: [e(1, 1), e(2, 1)], commit: 2 }, { kind: 'accept', truncateAfter: null, appended: [], commit: 2 }],
    ['an old, shorter append does not cut a longer log that agrees with it', view([1, 1, 1]), { prevIndex: 0, prevTerm: 0, entries: [e(1, 1)], commit: 0 }, { kind: 'accept', truncateAfter: null, appended: [], commit: 0 }],
    ['commits only what the append proved matches', view([1, 1, 2]), { prevIndex: 1, prevTerm: 1, entries: [], commit: 3 }, { kind: 'accept', truncateAfter: null, appended: [], commit: 1 }],
    ['never lowers the commit index', view([1, 1], 2), { prevIndex: 2, prevTerm: 1, entries: [], commit: 1 }, { kind: 'accept', truncateAfter: null, appended: [], commit: 2 }],
    ['skips what its snapshot already covers', view([3], 5, [5, 2]), { prevIndex: 3, prevTerm: 2, entries: [e(4, 2), e(5, 2), e(6, 3), e(7, 3)], commit: 7 }, { kind: 'accept', truncateAfter: null, appended: [7], commit: 7 }],
    ['refuses entries that contradict its committed snapshot', view([], 5, [5, 2]), { prevIndex: 4, prevTerm: 2, entries: [e(5, 4)], commit: 5 }, { kind: 'refuse', reason: 'conflicts_committed' }]
  ] as const)('%s', (_what, v, req, expected) => {
    const d = decideAppend(v, { ...req, entries: [...req.entries] })
    expect(d.kind).toBe(expected.kind)
    if (d.kind === 'refuse' && expected.kind === 'refuse') {
      expect(d.reason).toBe(expected.reason)
      expect(d.message.length).toBeGreaterThan(10)
    }
    if (d.kind === 'accept' && expected.kind === 'accept') {
      expect(d.truncateAfter).toBe(expected.truncateAfter)
      expect(d.append.map(x => x.index)).toEqual(expected.appended)
      expect(d.commit).toBe(expected.commit)
    }
  })

  it('resumes after a refusal just past the follower\'s log, or one before the last try', () => {
    expect(nextAfterRefusal(9, 3)).toBe(4)
    expect(nextAfterRefusal(5, 8)).toBe(5)
    expect(nextAfterRefusal(0, 0)).toBe(1)
  })
})

describe('the leader\'s commit', () => {
  const voters = ['a', 'b', 'c']
  const majority = (who: ReadonlySet<string>): boolean => who.size >= 2
  it('commits what a majority holds in its own term', () => {
    expect(leaderCommit(view([1, 2, 2]), { term: 2, self: 'a', voters, match: { b: 3, c: 0 }, holds: majority })).toBe(3)
    expect(leaderCommit(view([1, 2, 2]), { term: 2, self: 'a', voters, match: { b: 2, c: 0 }, holds: majority })).toBe(2)
  })
  it('never commits an older term\'s entry by counting copies (Raft figure 8)', () => {
    expect(leaderCommit(view([1, 1, 3]), { term: 3, self: 'a', voters, match: { b: 2, c: 2 }, holds: majority })).toBe(0)
    // ...but commits it with an entry of its own term.
    expect(leaderCommit(view([1, 1, 3]), { term: 3, self: 'a', voters, match: { b: 3, c: 0 }, holds: majority })).toBe(3)
  })
  it('a lone voter commits at once', () => {
    expect(leaderCommit(view([1, 1]), { term: 1, self: 'a', voters: ['a'], match: {}, holds: () => true })).toBe(2)
  })
})

/** A node of the simulation: its term-stamped log and its commit index. */
interface SimNode { log: number[], commit: number }

describe('a simulated cluster (pure logic) keeps committed entries', () => {
  it('no two nodes commit different entries at an index, and no commit is ever lost', () => {
    fc.assert(fc.property(
      fc.array(fc.record({ leader: fc.integer({ min: 0, max: 4 }), appends: fc.integer({ min: 0, max: 3 }), deliver: fc.array(fc.boolean(), { minLength: 5, maxLength: 5 }) }), { minLength: 1, maxLength: 25 }),
      (rounds) => {
        const n = 5
        const nodes: SimNode[] = Array.from({ length: n }, () => ({ log: [], commit: 0 }))
        const v = (x: SimNode): LogView => ({ snapshotIndex: 0, snapshotTerm: 0, entries: x.log.map((t, i) => e(i + 1, t)), commitIndex: x.commit })
        const committed = new Map<number, number>()
        let term = 0
        for (const round of rounds) {
          term++
          const l = nodes[round.leader] as SimNode
          // The election's restriction: only a node whose log is at least as up to date as a majority's may lead.
          const upToDate = nodes.filter(x => {
            const a = v(l); const b = v(x)
            const la = termAt(a, lastIndex(a)) ?? 0; const lb = termAt(b, lastIndex(b)) ?? 0
            return la !== lb ? la > lb : lastIndex(a) >= lastIndex(b)
          }).length
          if (upToDate < 3) continue
          for (let k = 0; k < round.appends + 1; k++) l.log.push(term)
          const match: Record<string, number> = {}
          for (const [i, f] of nodes.entries()) {
            if (f === l || round.deliver[i] !== true) continue
            // The leader sends everything after the follower's longest matching prefix.
            let prev = Math.min(f.log.length, l.log.length)
            while (prev > 0 && f.log[prev - 1] !== l.log[prev - 1]) prev--
            const d = decideAppend(v(f), { prevIndex: prev, prevTerm: prev === 0 ? 0 : l.log[prev - 1] as number, entries: l.log.slice(prev).map((t, j) => e(prev + j + 1, t)), commit: l.commit })
            expect(d.kind).toBe('accept')
            if (d.kind !== 'accept') continue
            if (d.truncateAfter !== null) f.log = f.log.slice(0, d.truncateAfter)
            for (const x of d.append) f.log.push(x.term)
            f.commit = d.commit
            match[String(i)] = l.log.length
          }
          l.commit = leaderCommit(v(l), { term, self: String(round.leader), voters: ['0', '1', '2', '3', '4'], match, holds: (who) => who.size >= 3 })
          for (const x of nodes) {
            for (let i = 1; i <= x.commit; i++) {
              const t = x.log[i - 1] as number
              if (committed.has(i)) expect(t).toBe(committed.get(i))
              else committed.set(i, t)
            }
          }
        }
        // Every entry ever committed is still in every log that reached it.
        for (const [i, t] of committed) expect(nodes.some(x => x.log[i - 1] === t)).toBe(true)
      }
    ), { numRuns: 300 })
  })
})
