/**
 * The replicated log's rules, pure (Raft §5.3 and §5.4, without the
 * election, which lives in election.ts): what a follower does with an
 * append, and how far a leader may commit. The agent keeps the log on disk
 * and does the I/O (agent/cluster/replication.ts); it asks these functions
 * what to do and carries it out, persisting before it acknowledges.
 */
import type { AppendRequest, LogEntry } from '../proto/cluster.ts'

/** What a node's log looks like to the rules: entries after a committed snapshot, and the commit index. */
export interface LogView {
  /** The last index the snapshot covers (0: none), and that entry's term. */
  snapshotIndex: number
  snapshotTerm: number
  /** The entries after the snapshot, contiguous from snapshotIndex + 1. */
  entries: readonly LogEntry[]
  /** Entries up to here are committed: never changed again. */
  commitIndex: number
}

export function lastIndex (v: LogView): number {
  return v.snapshotIndex + v.entries.length
}

export function lastTerm (v: LogView): number {
  return v.entries.length > 0 ? (v.entries[v.entries.length - 1] as LogEntry).term : v.snapshotTerm
}

/** The term of the entry at `index`, or null when the log has no such entry (past its end, or compacted away). */
export function termAt (v: LogView, index: number): number | null {
  if (index === v.snapshotIndex) return v.snapshotTerm
  if (index < v.snapshotIndex || index > lastIndex(v)) return null
  return (v.entries[index - v.snapshotIndex - 1] as LogEntry).term
}

export type RefusalReason =
  /** The append starts past the end of this log: entries are missing before it (or it is out of order). */
  | 'gap'
  /** The entry before the append has another term here: the leader backs up and resends. */
  | 'mismatch'
  /** The append contradicts an entry this node knows is committed: no leader may send that. */
  | 'conflicts_committed'

export type AppendDecision =
  | { kind: 'refuse', reason: RefusalReason, message: string }
  | {
      kind: 'accept'
      /** When set, drop every entry after this index before appending (an uncommitted tail of an older term). */
      truncateAfter: number | null
      /** Entries to add at the end, in order; already-present ones are left out. */
      append: LogEntry[]
      /** The commit index after the append (never lower than before). */
      commit: number
    }

/**
 * A follower's answer to an append that already passed the term and leader
 * checks and the decoder's shape checks. Follows the log-matching rule:
 * the entry before the new ones must be there with the same term; an
 * existing entry that conflicts with a new one is dropped with all after it,
 * unless it is committed (then the sender is no true leader: refused).
 * Entries the log already holds are not appended again, so a replayed or
 * duplicated append changes nothing.
 */
export function decideAppend (v: LogView, req: Pick<AppendRequest, 'prevIndex' | 'prevTerm' | 'entries' | 'commit'>): AppendDecision {
  let prevIndex = req.prevIndex
  let entries = req.entries
  // What the snapshot covers is committed and agreed: skip it.
  if (prevIndex < v.snapshotIndex) {
    const skip = v.snapshotIndex - prevIndex
    if (entries.length < skip) return { kind: 'accept', truncateAfter: null, append: [], commit: v.commitIndex }
    const atSnapshot = skip === 0 ? req.prevTerm : (entries[skip - 1] as LogEntry).term
    if (atSnapshot !== v.snapshotTerm) return { kind: 'refuse', reason: 'conflicts_committed', message: `entry ${v.snapshotIndex} has term ${atSnapshot} in the append but ${v.snapshotTerm} in this node's committed snapshot` }
    entries = entries.slice(skip)
    prevIndex = v.snapshotIndex
  } else {
    const here = termAt(v, prevIndex)
    if (here === null) return { kind: 'refuse', reason: 'gap', message: `the append follows entry ${prevIndex}, but this log ends at ${lastIndex(v)}` }
    if (here !== req.prevTerm) {
      if (prevIndex <= v.commitIndex) return { kind: 'refuse', reason: 'conflicts_committed', message: `entry ${prevIndex} is committed here with term ${here}, the append says ${req.prevTerm}` }
      return { kind: 'refuse', reason: 'mismatch', message: `entry ${prevIndex} has term ${here} here, the append says ${req.prevTerm}` }
    }
  }
  let truncateAfter: number | null = null
  let firstNew = entries.length
  for (const [i, e] of entries.entries()) {
    const here = termAt(v, e.index)
    if (here === null) { firstNew = i; break }
    if (here !== e.term) {
      if (e.index <= v.commitIndex) return { kind: 'refuse', reason: 'conflicts_committed', message: `entry ${e.index} is committed here with term ${here}, the append says ${e.term}` }
      truncateAfter = e.index - 1
      firstNew = i
      break
    }
  }
  const append = entries.slice(firstNew)
  // Only what this append proved matches the leader's log may count as committed.
  const matched = prevIndex + entries.length
  const commit = Math.max(v.commitIndex, Math.min(req.commit, matched))
  return { kind: 'accept', truncateAfter, append, commit }
}

/**
 * How far a leader may commit: the highest index that a quorum of voters
 * holds (`holds` says whether a set of voters is one) and that belongs to
 * the leader's own term; entries of earlier terms commit with it, never by
 * counting copies (Raft §5.4.2, figure 8).
 */
export function leaderCommit (v: LogView, args: { term: number, self: string, voters: readonly string[], match: Readonly<Record<string, number>>, holds: (who: ReadonlySet<string>) => boolean }): number {
  for (let n = lastIndex(v); n > v.commitIndex; n--) {
    const t = termAt(v, n)
    if (t === null || t < args.term) break
    if (t !== args.term) continue
    const have = new Set(args.voters.filter(id => id === args.self || (args.match[id] ?? 0) >= n))
    if (args.holds(have)) return n
  }
  return v.commitIndex
}

/**
 * Where a leader resumes sending to a follower that refused: just after the
 * follower's own last entry, or one before where it tried, whichever is lower.
 */
export function nextAfterRefusal (triedPrevIndex: number, followerLastIndex: number): number {
  return Math.max(1, Math.min(triedPrevIndex, followerLastIndex + 1))
}
