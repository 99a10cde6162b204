/**
 * Status gossip: publishes this node's status every heartbeat and validates
 * every status received. A bad message is rejected inside gossipsub's
 * validation step (so it is never forwarded), counted by reason, and logged at
 * debug level: input from the network never throws out of here.
 */
import { TopicValidatorResult, type Message } from '@libp2p/gossipsub'
import type { PeerId } from '@libp2p/interface'
import { monotonicMs } from '../fence/lease.ts'
import { STATUS_TOPIC, STATUS_VERSION, StatusDropError, decodeStatus, encodeStatus, type ClusterBeat, type DropReason, type NodeResources, type NodeStatus } from '../../proto/status.ts'
import type { Mesh } from '../mesh/mesh.ts'
import type { Membership } from './membership.ts'
import type { ResourceCollector } from './collector.ts'
import type { Logger } from '../util/log.ts'

/** Every how many beats the resources ride along even when nothing changed (load and memory drift). */
const FULL_EVERY = 5

export interface StatusGossipInit {
  mesh: Mesh
  membership: Membership
  collector: ResourceCollector
  name: string
  labels: Record<string, string>
  agentVersion: string
  incarnation: number
  intervalMs: number
  log: Logger
  /** The control plane's view, sent on every beat. */
  cluster?: () => ClusterBeat
  /** The newest restorable snapshot of each app held here, sent with the resources. */
  snapshots?: () => Array<{ app: string, id: string, time: number }>
}

export class StatusGossip {
  readonly dropped: Record<DropReason, number> = { oversized: 0, malformed: 0, version: 0, forged: 0, unsigned: 0, stale: 0 }
  published = 0
  accepted = 0
  private seq = 0
  /** Set when a peer may lack our resources (it just connected) or they changed. */
  private fullNext = true
  private lastFull: string | null = null
  private timer: NodeJS.Timeout | undefined
  private soon: NodeJS.Timeout | undefined
  private started = false
  private readonly init: StatusGossipInit

  constructor (init: StatusGossipInit) {
    this.init = init
  }

  start (): void {
    if (this.started) return
    this.started = true
    const pubsub = this.init.mesh.host.services.pubsub
    pubsub.topicValidators.set(STATUS_TOPIC, this.validate)
    pubsub.subscribe(STATUS_TOPIC)
    // A new neighbour learns about us at once rather than at the next beat.
    this.init.mesh.host.addEventListener('peer:connect', this.publishSoon)
    pubsub.addEventListener('subscription-change', this.publishSoon)
    this.timer = setInterval(() => { void this.publish() }, this.init.intervalMs)
    void this.publish()
  }

  stop (): void {
    if (!this.started) return
    this.started = false
    clearInterval(this.timer)
    clearTimeout(this.soon)
    const pubsub = this.init.mesh.host.services.pubsub
    this.init.mesh.host.removeEventListener('peer:connect', this.publishSoon)
    pubsub.removeEventListener('subscription-change', this.publishSoon)
    pubsub.topicValidators.delete(STATUS_TOPIC)
  }

  /** The status this node publishes now, with its resources. */
  current (): NodeStatus & { resources: NodeResources } {
    return {
      v: STATUS_VERSION,
      peerId: this.init.mesh.peerId.toString(),
      name: this.init.name,
      incarnation: this.init.incarnation,
      seq: this.seq,
      intervalMs: this.init.intervalMs,
      resources: this.resources()
    }
  }

  private resources (): NodeResources {
    const s = this.init.collector.latest()
    return {
      cpu: { cores: s.cores, load: s.load },
      mem: { total: s.memTotal, free: s.memFree },
      diskFree: s.diskFree,
      arch: s.arch,
      dockerVersion: s.dockerVersion,
      agentVersion: this.init.agentVersion,
      labels: this.init.labels,
      apps: s.apps,
      appStates: s.appStates,
      containers: s.containers,
      address: this.init.mesh.primaryAddress(),
      images: s.images,
      devices: s.devices,
      ...(this.init.snapshots !== undefined ? { snapshots: this.init.snapshots() } : {})
    }
  }

  /** Publishes a full report at once (after an app started or stopped here). */
  announceChange (): void {
    this.publishSoon()
  }

  private readonly publishSoon = (): void => {
    this.fullNext = true
    if (this.soon !== undefined || !this.started) return
    this.soon = setTimeout(() => {
      this.soon = undefined
      void this.publish()
    }, 50)
  }

  private async publish (): Promise<void> {
    if (!this.started) return
    this.seq++
    const status: NodeStatus = this.current()
    // Resources go out every FULL_EVERY beats, and at once when they changed in
    // a way others act on (apps, labels) or a new peer needs them.
    const full = JSON.stringify({ ...status.resources, cpu: undefined, mem: undefined, diskFree: undefined })
    const cluster = this.init.cluster?.()
    if (cluster !== undefined) status.cluster = cluster
    status.sent = monotonicMs()
    status.heard = this.init.membership.heard()
    if (this.fullNext || full !== this.lastFull || this.seq % FULL_EVERY === 0) {
      this.fullNext = false
      this.lastFull = full
    } else {
      delete status.resources
    }
    try {
      await this.init.mesh.host.services.pubsub.publish(STATUS_TOPIC, encodeStatus(status))
      this.published++
    } catch (err) {
      this.init.log.debug('status publish failed', { error: (err as Error).message })
    }
  }

  private readonly validate = (_from: PeerId, msg: Message): TopicValidatorResult => {
    try {
      const signer = msg.type === 'signed' ? msg.from.toString() : undefined
      const status = decodeStatus(msg.data, signer)
      if (status.peerId === this.init.mesh.peerId.toString()) return TopicValidatorResult.Ignore
      if (!this.init.membership.observe(status)) {
        this.dropped.stale++
        return TopicValidatorResult.Ignore
      }
      this.accepted++
      return TopicValidatorResult.Accept
    } catch (err) {
      const reason: DropReason = err instanceof StatusDropError ? err.reason : 'malformed'
      this.dropped[reason]++
      this.init.log.debug('dropped status message', { reason, from: _from.toString(), error: (err as Error).message })
      return TopicValidatorResult.Reject
    }
  }
}
