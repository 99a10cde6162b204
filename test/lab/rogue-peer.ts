/**
 * A hostile peer for the lab tests: it holds the cluster key (so it gets in)
 * but publishes status messages that are garbage, oversized, of a wrong
 * version, or forged (claiming another node's peer id). A real libp2p process,
 * run inside a lab node's namespace:
 *
 *   dcloud lab exec n3 -- node test/lab/rogue-peer.ts KEYFILE PEER_MULTIADDR...
 *
 * Prints one JSON line with what it sent and to whom.
 */
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { preSharedKey } from '@libp2p/pnet'
import { gossipsub, type GossipSub } from '@libp2p/gossipsub'
import { multiaddr } from '@multiformats/multiaddr'
import { readClusterKey } from '../../agent/mesh/cluster-key.ts'
import { STATUS_TOPIC, encodeStatus, type NodeStatus } from '../../proto/status.ts'

const [keyFile, victimId, ...peers] = process.argv.slice(2)
if (keyFile === undefined || victimId === undefined || peers.length === 0) {
  process.stderr.write('usage: rogue-peer.ts KEYFILE VICTIM_PEER_ID PEER_MULTIADDR...\n')
  process.exit(64)
}

const host = await createLibp2p({
  addresses: { listen: ['/ip4/0.0.0.0/tcp/0'] },
  transports: [tcp()],
  connectionProtector: preSharedKey({ psk: await readClusterKey(keyFile) }),
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), pubsub: gossipsub({ allowPublishToZeroTopicPeers: false, floodPublish: true, maxInboundDataLength: 4 * 1024 * 1024 }) }
})
const pubsub = host.services.pubsub as unknown as GossipSub
pubsub.subscribe(STATUS_TOPIC)
for (const p of peers) await host.dial(multiaddr(p), { signal: AbortSignal.timeout(10_000) })

const deadline = Date.now() + 15_000
while (pubsub.getSubscribers(STATUS_TOPIC).length < peers.length && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 100))

const self = host.peerId.toString()
const good: NodeStatus = {
  v: 1, peerId: self, name: 'rogue', incarnation: Date.now(), seq: 1, intervalMs: 1000,
  resources: {
    cpu: { cores: 1, load: 0 }, mem: { total: 1, free: 1 }, diskFree: 0, arch: 'amd64',
    dockerVersion: null, agentVersion: '0', labels: {}, apps: [], appStates: [], containers: 0, address: null, images: []
  }
}
const te = new TextEncoder()
const messages: Array<[string, Uint8Array]> = [
  ['garbage', new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0x00, 0xff])],
  // Past our 64 KiB status limit, below gossipsub's own 1 MiB: our validator must catch it.
  ['oversized', te.encode(JSON.stringify({ ...good, resources: { ...good.resources, images: Array.from({ length: 8000 }, (_, i) => `some/image-${i}:latest`) } }))],
  ['version', te.encode(JSON.stringify({ ...good, v: 99 }))],
  ['forged', encodeStatus({ ...good, peerId: victimId, name: 'impostor' })],
  ['malformed', te.encode(JSON.stringify({ ...good, resources: { ...good.resources, mem: { total: 'lots' } } }))],
  // Last: past gossipsub's own 1 MiB limit the receiver closes our stream, and later messages would not arrive.
  ['huge', new Uint8Array(2 * 1024 * 1024).fill(0x7b)]
]
const sent: Record<string, number> = {}
for (const [kind, data] of messages) {
  try {
    const r = await pubsub.publish(STATUS_TOPIC, data)
    sent[kind] = r.recipients.length
  } catch (err) {
    sent[kind] = -1
    process.stderr.write(`${kind}: ${(err as Error).message}\n`)
  }
  await new Promise(resolve => setTimeout(resolve, 200))
}
process.stdout.write(JSON.stringify({ peerId: self, subscribers: pubsub.getSubscribers(STATUS_TOPIC).map(String), sent }) + '\n')
await host.stop()
