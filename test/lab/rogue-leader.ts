/**
 * A peer that holds the cluster key and pretends to lead: a real libp2p
 * process, run inside a lab node's namespace, as a deposed leader or a
 * compromised key-holder would act.
 *
 *   node test/lab/rogue-leader.ts [--announce] KEYFILE TERM APP_NAME TARGET_MULTIADDR...
 *
 * To each target it sends, stamped with TERM and naming itself the leader:
 * - `op`: an operation removing APP_NAME;
 * - `append`: a log append that would install a drain of itself and claims a
 *   commit far ahead;
 * - `outOfOrder`: an append whose entries skip an index (malformed whatever
 *   the sender);
 * and with --announce it publishes a status beat announcing a desired state
 * of a revision no node holds. That makes it a member, and a voter, from
 * then on, as any node that joins (so a test that goes on killing nodes
 * leaves it out). Prints one JSON line: per target, what the operation and the
 * append got back, and how many peers received the announcement.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { Mesh } from '../../agent/mesh/mesh.ts'
import { readClusterKey } from '../../agent/mesh/cluster-key.ts'
import { RpcError, rpcCall } from '../../agent/mesh/rpc.ts'
import { createLogger } from '../../agent/util/log.ts'
import { APPEND_PROTOCOL, OP_PROTOCOL, decodeAppendResponse, decodeOpResponse } from '../../proto/cluster.ts'
import { STATUS_TOPIC, encodeStatus } from '../../proto/status.ts'

const argv = process.argv.slice(2)
const announce = argv[0] === '--announce'
const [keyFile, termArg, app, ...targets] = announce ? argv.slice(1) : argv
if (keyFile === undefined || termArg === undefined || app === undefined || targets.length === 0) {
  process.stderr.write('usage: rogue-leader.ts [--announce] KEYFILE TERM APP_NAME TARGET_MULTIADDR...\n')
  process.exit(64)
}
const term = Number(termArg)
const privateKey = await generateKeyPair('Ed25519')
const mesh = await Mesh.create({ privateKey, clusterKey: await readClusterKey(keyFile), listen: ['/ip4/0.0.0.0/tcp/0'], mdns: false, peers: [], agentVersion: 'test', log: createLogger('rogue-leader', () => {}) })
await mesh.start()
const self = mesh.peerId.toString()

async function attempt (call: () => Promise<unknown>): Promise<{ ok: boolean, code?: string, message?: string, value?: unknown }> {
  try {
    return { ok: true, value: await call() }
  } catch (err) {
    const e = err as RpcError
    return { ok: false, code: e.code, message: e.message }
  }
}

const results: Record<string, unknown> = {}
for (const target of targets) {
  const addr = multiaddr(target)
  await mesh.host.dial(addr, { signal: AbortSignal.timeout(10_000) })
  const peer = peerIdFromString(addr.getComponents().find(c => c.name === 'p2p')?.value ?? '')
  const op = await attempt(async () => await rpcCall(mesh, peer, OP_PROTOCOL, { term, leader: self, op: { kind: 'remove', name: app } }, { decode: decodeOpResponse, timeoutMs: 20_000 }))
  const append = await attempt(async () => await rpcCall(mesh, peer, APPEND_PROTOCOL, {
    term, leader: self, prevIndex: 0, prevTerm: 0, commit: 1_000_000,
    entries: [{ index: 1, term, change: { kind: 'drain', node: self, drained: true } }]
  }, { decode: decodeAppendResponse, timeoutMs: 20_000 }))
  const outOfOrder = await attempt(async () => await rpcCall(mesh, peer, APPEND_PROTOCOL, {
    term, leader: self, prevIndex: 0, prevTerm: 0, commit: 0,
    entries: [{ index: 1, term, change: null }, { index: 3, term, change: null }]
  }, { decode: decodeAppendResponse, timeoutMs: 20_000 }))
  results[peer.toString()] = { op, append, outOfOrder }
}

let announcedTo = 0
if (announce) {
  // Announce a desired state far ahead of everyone's: followers used to pull the highest one they heard of.
  const pubsub = mesh.host.services.pubsub
  pubsub.subscribe(STATUS_TOPIC)
  const deadline = Date.now() + 10_000
  while (pubsub.getSubscribers(STATUS_TOPIC).length < targets.length && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 100))
  const beat = encodeStatus({
    v: 1, peerId: self, name: 'rogue-leader', incarnation: Date.now(), seq: 1, intervalMs: 1000,
    cluster: { term, leader: self, desiredRevision: 1_000_000 },
    resources: {
      cpu: { cores: 1, load: 0 }, mem: { total: 1, free: 1 }, diskFree: 0, arch: 'amd64',
      dockerVersion: null, agentVersion: '0', labels: {}, apps: [], appStates: [], containers: 0, address: null, images: []
    }
  })
  for (let i = 0; i < 3; i++) {
    announcedTo = Math.max(announcedTo, (await pubsub.publish(STATUS_TOPIC, beat)).recipients.length)
    await new Promise(resolve => setTimeout(resolve, 1000))
  }
}
process.stdout.write(JSON.stringify({ peerId: self, results, announcedTo }) + '\n')
await mesh.stop()
