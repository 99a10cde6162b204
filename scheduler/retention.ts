/**
 * Which snapshots an app's repository may forget: a pure rule, the same on
 * every node, so that all copies of one repository converge on the same set
 * (replication merges copies by union; a snapshot one node forgot and
 * another still holds comes back, and is forgotten again at the next pass).
 *
 * Only what the system took by itself on a schedule or for a move is ever
 * forgotten. Never forgotten:
 * - snapshots holding a copy the user must decide about: `divergent`,
 *   `replaced`, `fenced` (data is sacred: the system keeps the other copy);
 * - `manual` snapshots and `imported` ones (the user asked for them);
 * - the newest snapshot that may be restored automatically (what a failover
 *   would use), and any snapshot named in `keepIds` (the one the user was
 *   told the app came from).
 *
 * Of the rest, the rule keeps the newest `last`, and the newest of each of
 * the last `hourly` hours, `daily` days and `weekly` weeks that hold one
 * (restic's own GFS rule, in UTC).
 */
import { KEEP_DEFAULTS } from '../proto/app.ts'

export interface KeepRule {
  last: number
  hourly: number
  daily: number
  weekly: number
}

export { KEEP_DEFAULTS }

export interface RetainedSnapshot {
  id: string
  /** ms since the epoch */
  time: number
  purpose: string
}

/** Purposes of snapshots the system took by itself: only these are ever forgotten. */
const AUTOMATIC = new Set(['scheduled', 'pre-move', 'final', 'prepass', 'backup'])
/** Purposes a failover may restore (see service.ts NOT_RESTORABLE). */
const NOT_RESTORABLE = new Set(['divergent', 'replaced', 'prepass', 'fenced'])

const HOUR = 3600_000
const DAY = 24 * HOUR
const WEEK = 7 * DAY

/** The ids to forget, oldest first. */
export function snapshotsToForget (snapshots: RetainedSnapshot[], rule: KeepRule, keepIds: ReadonlySet<string> = new Set()): string[] {
  const newestFirst = [...snapshots].sort((a, b) => b.time - a.time || (a.id < b.id ? -1 : 1))
  const keep = new Set<string>()
  const newestRestorable = newestFirst.find(s => !NOT_RESTORABLE.has(s.purpose))
  if (newestRestorable !== undefined) keep.add(newestRestorable.id)
  for (const s of newestFirst) if (!AUTOMATIC.has(s.purpose) || keepIds.has(s.id)) keep.add(s.id)

  const candidates = newestFirst.filter(s => AUTOMATIC.has(s.purpose))
  for (const s of candidates.slice(0, rule.last)) keep.add(s.id)
  for (const [size, count] of [[HOUR, rule.hourly], [DAY, rule.daily], [WEEK, rule.weekly]] as const) {
    const buckets = new Set<number>()
    for (const s of candidates) {
      if (buckets.size >= count) break
      // Weeks start on Monday (the epoch was a Thursday).
      const bucket = size === WEEK ? Math.floor((s.time + 3 * DAY) / WEEK) : Math.floor(s.time / size)
      if (buckets.has(bucket)) continue
      buckets.add(bucket)
      keep.add(s.id)
    }
  }
  return candidates.filter(s => !keep.has(s.id)).reverse().map(s => s.id)
}
