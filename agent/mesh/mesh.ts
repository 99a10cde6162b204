/**
 * The mesh: this node's libp2p host inside the cluster's private network.
 *
 * TCP, then the pre-shared-key protector (a peer without the cluster key fails
 * here), then Noise and Yamux on top, as libp2p private networks recommend: the
 * cluster key keeps strangers out, Noise authenticates each peer id.
 */
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { mdns } from '@libp2p/mdns'
import { preSharedKey } from '@libp2p/pnet'
import { chunkPnetCipher } from './pnet-guard.ts'
import { gossipsub, type GossipSub } from '@libp2p/gossipsub'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey, PeerId, PeerInfo } from '@libp2p/interface'
import type { Logger } from '../util/log.ts'
import { networkInterfaces, type NetworkInterfaceInfo } from 'node:os'

// Before any connection: large streams must not exhaust pnet's cipher memory (pnet-guard.ts).
chunkPnetCipher()

/** The service tag of our mDNS announcements: agents of other products on the LAN ignore them. */
export const MDNS_SERVICE_TAG = '_dcloud-agent._udp.local'

/**
 * mDNS query interval. Every node answers every query, so queries cost N²
 * packets; a starting node queries at once and is answered at once, and
 * members we lost are redialled from their known addresses, so the periodic
 * query only finds nodes that started while we could not hear them.
 */
const MDNS_QUERY_MS = 60_000

/** Interfaces of container engines and hypervisors: their addresses mean nothing to another machine. */
const VIRTUAL_INTERFACE = /^(docker\d*|br-[0-9a-f]+|veth.*|cni\d*|flannel.*|virbr\d*|podman\d*|lxcbr\d*)$/

/**
 * The addresses worth telling peers: not those of Docker's bridges (another
 * node dialling 172.17.0.1 reaches its own docker0), and loopback only when
 * there is nothing else.
 */
export function announceable (addrs: Multiaddr[], interfaces: NodeJS.Dict<NetworkInterfaceInfo[]>): Multiaddr[] {
  const virtual = new Set<string>()
  for (const [name, infos] of Object.entries(interfaces)) {
    if (VIRTUAL_INTERFACE.test(name)) for (const info of infos ?? []) virtual.add(info.address)
  }
  const host = (a: Multiaddr): string => a.getComponents().find(c => c.name === 'ip4' || c.name === 'ip6')?.value ?? ''
  const useful = addrs.filter(a => !virtual.has(host(a)))
  const outside = useful.filter(a => !/^(127\.|::1$)/.test(host(a)))
  return outside.length > 0 ? outside : useful
}

export interface MeshInit {
  privateKey: PrivateKey
  clusterKey: Uint8Array
  listen: string[]
  mdns: boolean
  /** mDNS query interval; peers also answer each other's queries at once. */
  mdnsIntervalMs?: number
  /** Addresses to keep dialling where multicast does not reach (`--peer`). */
  peers: string[]
  agentVersion: string
  log: Logger
}

export interface MeshCounters {
  dialFailures: number
  lastDialError: string | null
}

export type MeshHost = Libp2p<{ pubsub: GossipSub, identify: ReturnType<ReturnType<typeof identify>> }>

export class Mesh {
  readonly host: MeshHost
  readonly counters: MeshCounters = { dialFailures: 0, lastDialError: null }
  private readonly init: MeshInit
  private readonly staticPeers: Multiaddr[]
  private redialTimer: NodeJS.Timeout | undefined
  private readonly dialing = new Set<string>()
  private started = false

  private constructor (host: MeshHost, init: MeshInit, staticPeers: Multiaddr[]) {
    this.host = host
    this.init = init
    this.staticPeers = staticPeers
  }

  static async create (init: MeshInit): Promise<Mesh> {
    const staticPeers = init.peers.map(p => multiaddr(p))
    const host = await createLibp2p({
      start: false,
      privateKey: init.privateKey,
      nodeInfo: { userAgent: `dcloud-agent/${init.agentVersion}` },
      addresses: { listen: init.listen, announceFilter: (addrs) => announceable(addrs, networkInterfaces()) },
      transports: [tcp()],
      connectionProtector: preSharedKey({ psk: init.clusterKey }),
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      peerDiscovery: init.mdns ? [mdns({ serviceTag: MDNS_SERVICE_TAG, interval: init.mdnsIntervalMs ?? MDNS_QUERY_MS })] : [],
      connectionManager: { maxConnections: 64 },
      // A peer that died without closing its connections (power cut) leaves a
      // zombie connection; pings close it. Faster is not needed: membership does
      // not wait for it, and a peer that comes back resets the old connection
      // at our next heartbeat.
      connectionMonitor: { pingInterval: 10_000, pingTimeout: { minTimeout: 5000, maxTimeout: 10_000 } },
      services: {
        identify: identify(),
        pubsub: gossipsub({
          allowPublishToZeroTopicPeers: true,
          emitSelf: false,
          floodPublish: true,
          fallbackToFloodsub: false,
          // A home cluster is a handful of nodes on one LAN, mostly all connected
          // to each other. A mesh degree of 3 still relays every heartbeat along
          // several paths (one bad link does not silence a node) at half the
          // duplicate traffic of the default 6 (docs/membership.md).
          D: 3,
          Dlo: 2,
          Dhi: 5,
          Dout: 1,
          Dscore: 2,
          Dlazy: 3,
          // Our messages are a few KiB at most; refuse multi-megabyte RPCs before decoding.
          maxInboundDataLength: 1024 * 1024
        })
      }
    }) as unknown as MeshHost
    return new Mesh(host, init, staticPeers)
  }

  get peerId (): PeerId {
    return this.host.peerId
  }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    this.host.addEventListener('peer:discovery', this.onDiscovery)
    await this.host.start()
    for (const addr of this.staticPeers) void this.dial(addr)
    // Keep dialling the static peers: a node that was down comes back without help.
    this.redialTimer = setInterval(() => { this.redialStatic() }, 2000)
    this.redialTimer.unref()
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    clearInterval(this.redialTimer)
    this.host.removeEventListener('peer:discovery', this.onDiscovery)
    await this.host.stop()
  }

  listenAddrs (): string[] {
    return this.host.getMultiaddrs().map(a => a.toString())
  }

  /** The first announced IPv4 address: where other machines reach this node's published ports. */
  primaryAddress (): string | null {
    for (const a of this.host.getMultiaddrs()) {
      const ip = a.getComponents().find(c => c.name === 'ip4')?.value
      if (ip !== undefined && !ip.startsWith('127.')) return ip
    }
    return null
  }

  connectionCount (): number {
    return this.host.getConnections().length
  }

  isConnected (peerId: string): boolean {
    return this.host.getConnections().some(c => c.remotePeer.toString() === peerId)
  }

  private readonly onDiscovery = (evt: CustomEvent<PeerInfo>): void => {
    const peer = evt.detail
    if (peer.id.equals(this.host.peerId)) return
    if (this.isConnected(peer.id.toString())) return
    void this.dial(peer.id, peer.multiaddrs)
  }

  /** Dials the given peers (by id, from addresses learned before) where no connection is open. */
  redial (peerIds: string[]): void {
    for (const id of peerIds) {
      if (this.isConnected(id)) continue
      void this.dial(peerIdFromString(id))
    }
  }

  /** Closes every connection to a peer we declared dead: whatever comes back starts afresh. */
  async hangUp (peerId: string): Promise<void> {
    for (const conn of this.host.getConnections()) {
      if (conn.remotePeer.toString() === peerId) conn.abort(new Error('peer declared dead'))
    }
  }

  private redialStatic (): void {
    for (const addr of this.staticPeers) {
      const id = addr.getComponents().find(c => c.name === 'p2p')?.value
      if (id !== undefined && this.isConnected(id)) continue
      void this.dial(addr)
    }
  }

  private async dial (target: PeerId | Multiaddr, addrs: Multiaddr[] = []): Promise<void> {
    const key = target.toString()
    if (this.dialing.has(key)) return
    this.dialing.add(key)
    try {
      if (addrs.length > 0 && 'equals' in target && !('getComponents' in target)) {
        await this.host.peerStore.merge(target, { multiaddrs: addrs })
      }
      await this.host.dial(target, { signal: AbortSignal.timeout(5000) })
    } catch (err) {
      this.counters.dialFailures++
      this.counters.lastDialError = `${key}: ${(err as Error).message}`
      this.init.log.debug('dial failed', { target: key, error: (err as Error).message })
    } finally {
      this.dialing.delete(key)
    }
  }
}
