/**
 * The membership table: every node this agent has heard from, its latest
 * status, and its liveness. Transitions use the pure rules of
 * scheduler/liveness.ts with this agent's clock.
 */
import { livenessOf, isNewer, type LivenessPolicy, DEFAULT_LIVENESS } from '../../scheduler/liveness.ts'
import type { NodeState } from '../../proto/api.ts'
import type { NodeResources, NodeStatus } from '../../proto/status.ts'

export interface Member {
  /** The latest message; its `resources` may be absent (a plain beat). */
  status: NodeStatus
  /** The latest full report, null until the first one arrives. */
  resources: NodeResources | null
  firstHeardAt: number
  lastHeardAt: number
  state: NodeState
  stateSince: number
}

export interface MembershipInit {
  now: () => number
  isConnected: (peerId: string) => boolean
  policy?: LivenessPolicy
  onTransition?: (member: Member, from: NodeState | null) => void
  /** A member's report of the apps running on it changed (or is its first): the front door routes by it. */
  onAppsChanged?: (member: Member) => void
  /** Beyond this many members, the longest-dead are forgotten first. */
  maxMembers?: number
}

export class Membership {
  private readonly members = new Map<string, Member>()
  private readonly init: MembershipInit

  constructor (init: MembershipInit) {
    this.init = init
  }

  /** Records a validated status; returns false when it is older than what we have. */
  observe (status: NodeStatus): boolean {
    const now = this.init.now()
    const known = this.members.get(status.peerId)
    if (!isNewer(known?.status, status)) return false
    if (known === undefined) {
      const member: Member = { status, resources: status.resources ?? null, firstHeardAt: now, lastHeardAt: now, state: 'alive', stateSince: now }
      this.members.set(status.peerId, member)
      this.evictIfFull()
      this.init.onTransition?.(member, null)
      if (member.resources !== null) this.init.onAppsChanged?.(member)
      return true
    }
    known.status = status
    if (status.resources !== undefined) {
      const changed = appsKey(known.resources) !== appsKey(status.resources)
      known.resources = status.resources
      if (changed) this.init.onAppsChanged?.(known)
    }
    known.lastHeardAt = now
    this.setState(known, 'alive', now)
    return true
  }

  /** Re-evaluates liveness of every member; call it on a short timer. */
  tick (): void {
    const now = this.init.now()
    for (const member of this.members.values()) {
      const state = livenessOf({
        now,
        lastHeardAt: member.lastHeardAt,
        intervalMs: member.status.intervalMs,
        connected: this.init.isConnected(member.status.peerId)
      }, this.init.policy ?? DEFAULT_LIVENESS)
      this.setState(member, state, now)
    }
  }

  /**
   * The echo this node publishes (NodeStatus.heard): for each member not
   * dead, the send time of its newest beat received here. The most recently
   * heard first, at most `max`.
   */
  heard (max = 256): Record<string, number> {
    const out: Record<string, number> = {}
    const members = [...this.members.values()].filter(m => m.state !== 'dead' && m.status.sent !== undefined).sort((a, b) => b.lastHeardAt - a.lastHeardAt).slice(0, max)
    for (const m of members) out[m.status.peerId] = m.status.sent as number
    return out
  }

  list (): Member[] {
    return [...this.members.values()]
  }

  get (peerId: string): Member | undefined {
    return this.members.get(peerId)
  }

  private setState (member: Member, state: NodeState, now: number): void {
    if (member.state === state) return
    const from = member.state
    member.state = state
    member.stateSince = now
    this.init.onTransition?.(member, from)
  }

  private evictIfFull (): void {
    const max = this.init.maxMembers ?? 1024
    if (this.members.size <= max) return
    const dead = [...this.members.values()].filter(m => m.state === 'dead').sort((a, b) => a.lastHeardAt - b.lastHeardAt)
    for (const m of dead.slice(0, this.members.size - max)) this.members.delete(m.status.peerId)
  }
}

/** What a report says runs where, for telling a change: each app's name, state and generation. */
function appsKey (r: NodeResources | null): string {
  return JSON.stringify((r?.appStates ?? []).map(a => [a.name, a.state, a.generation ?? 1]))
}
