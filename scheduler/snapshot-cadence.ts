/**
 * When a stateful app's next scheduled snapshot is due: a pure rule.
 *
 * The app's snapshot interval is its RPO: whatever instant its node is lost,
 * a copy at most `everyMs` old must already be on another node. A snapshot
 * protects nothing until a peer holds it, and taking plus replicating takes
 * time (a second for a small app, minutes for a big first copy). So the next
 * snapshot starts early enough that its replica lands before the previous
 * one is `everyMs` old: `everyMs` after the previous snapshot's own time,
 * less what the last cycle took (with some slack, and the check tick). The
 * lead is capped at half the interval: an app whose cycle takes longer than
 * that cannot meet its RPO, and snapshotting back to back would not help.
 *
 * A cycle that failed (no snapshot, or no replica where one was asked for) is
 * retried after a sixth of the interval, not at the next interval: the RPO is
 * already at risk.
 */
export interface CadenceInput {
  everyMs: number
  /** The newest snapshot's own time (when it started), or null when the app has none. */
  lastSnapshotAt: number | null
  /** How long the last take-and-replicate took, ms (0 when unknown). */
  lastCycleMs: number
  /** When the last cycle failed, or null when it succeeded (or never ran). */
  lastFailureAt: number | null
  /** How often the agent checks: a due time can be missed by up to this much. */
  checkEveryMs: number
}

/** Slack on the measured cycle: the next one may be slower (a bigger increment, a busier peer). */
export const CYCLE_SLACK = 1.5
export const CYCLE_SLACK_MS = 1000
export const RETRY_FRACTION = 6
export const MIN_RETRY_MS = 5000

/** When the next snapshot is due (ms since the epoch; 0 means now). */
export function nextSnapshotDue (c: CadenceInput): number {
  if (c.everyMs <= 0) return Number.POSITIVE_INFINITY
  if (c.lastSnapshotAt === null && c.lastFailureAt === null) return 0
  const retryAt = c.lastFailureAt === null ? 0 : c.lastFailureAt + Math.max(MIN_RETRY_MS, c.everyMs / RETRY_FRACTION)
  if (c.lastSnapshotAt === null) return retryAt
  const lead = Math.min(c.everyMs / 2, c.lastCycleMs * CYCLE_SLACK + CYCLE_SLACK_MS + c.checkEveryMs)
  const regular = c.lastSnapshotAt + c.everyMs - lead
  if (c.lastFailureAt === null || c.lastFailureAt <= c.lastSnapshotAt) return regular
  // The last try failed: retry after the pause, or at the regular time if that comes first.
  return regular > c.lastFailureAt ? Math.min(regular, retryAt) : retryAt
}
