/**
 * Liveness: how long a silent node stays alive, becomes suspect, and is declared dead.
 *
 * Pure: the caller passes the clock. Silence is measured in the sender's own
 * heartbeat intervals, so a node that reports every 2 s is judged by 2 s, not
 * by ours. Heartbeats travel over the gossip mesh, so one broken link between
 * two nodes does not silence a node that others still relay (the indirect-probe
 * idea of SWIM, for free). See docs/membership.md for why these numbers.
 */
import type { NodeState } from '../proto/api.ts'

export interface LivenessPolicy {
  /** Silence, in sender intervals, after which a connected node is suspect. */
  suspectAfterIntervals: number
  /** Silence, in sender intervals, after which a node is suspect when we have no connection to it. */
  disconnectedSuspectAfterIntervals: number
  /** Silence, in sender intervals, after which a node is dead. */
  deadAfterIntervals: number
}

export const DEFAULT_HEARTBEAT_MS = 1000

export const DEFAULT_LIVENESS: LivenessPolicy = {
  suspectAfterIntervals: 2.5,
  disconnectedSuspectAfterIntervals: 1.5,
  deadAfterIntervals: 4
}

export interface LivenessInput {
  now: number
  lastHeardAt: number
  /** The sender's declared heartbeat interval. */
  intervalMs: number
  /** Whether we hold an open connection to the node right now. */
  connected: boolean
}

export function livenessOf (input: LivenessInput, policy: LivenessPolicy = DEFAULT_LIVENESS): NodeState {
  const silentIntervals = (input.now - input.lastHeardAt) / input.intervalMs
  if (silentIntervals >= policy.deadAfterIntervals) return 'dead'
  const suspectAfter = input.connected ? policy.suspectAfterIntervals : policy.disconnectedSuspectAfterIntervals
  if (silentIntervals >= suspectAfter) return 'suspect'
  return 'alive'
}

/** When the state of a node will next change if nothing is heard from it: lets callers sleep exactly. */
export function nextLivenessChangeAt (input: LivenessInput, policy: LivenessPolicy = DEFAULT_LIVENESS): number | null {
  const state = livenessOf(input, policy)
  if (state === 'dead') return null
  const suspectAfter = input.connected ? policy.suspectAfterIntervals : policy.disconnectedSuspectAfterIntervals
  const intervals = state === 'alive' ? suspectAfter : policy.deadAfterIntervals
  return input.lastHeardAt + intervals * input.intervalMs
}

/**
 * Whether a message is newer than the last one accepted from the same node.
 * A restarted agent has a larger incarnation and starts its seq again.
 */
export function isNewer (last: { incarnation: number, seq: number } | undefined, next: { incarnation: number, seq: number }): boolean {
  if (last === undefined) return true
  if (next.incarnation !== last.incarnation) return next.incarnation > last.incarnation
  return next.seq > last.seq
}
