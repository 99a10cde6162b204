/**
 * Sends one operation stamped with a given term to an agent, as a deposed
 * leader would: a real libp2p peer holding the cluster key, run inside a lab
 * node's namespace.
 *
 *   node test/lab/stale-op.ts KEYFILE TERM TARGET_MULTIADDR APP_NAME
 *
 * Prints one JSON line: {"ok": true} or {"ok": false, "code", "message"}.
 */
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { Mesh } from '../../agent/mesh/mesh.ts'
import { readClusterKey } from '../../agent/mesh/cluster-key.ts'
import { RpcError, rpcCall } from '../../agent/mesh/rpc.ts'
import { createLogger } from '../../agent/util/log.ts'
import { OP_PROTOCOL, decodeOpResponse } from '../../proto/cluster.ts'

const [keyFile, term, target, app] = process.argv.slice(2)
if (keyFile === undefined || term === undefined || target === undefined || app === undefined) {
  process.stderr.write('usage: stale-op.ts KEYFILE TERM TARGET_MULTIADDR APP_NAME\n')
  process.exit(64)
}
const privateKey = await generateKeyPair('Ed25519')
const mesh = await Mesh.create({ privateKey, clusterKey: await readClusterKey(keyFile), listen: ['/ip4/0.0.0.0/tcp/0'], mdns: false, peers: [], agentVersion: 'test', log: createLogger('stale-op', () => {}) })
await mesh.start()
const addr = multiaddr(target)
await mesh.host.dial(addr, { signal: AbortSignal.timeout(10_000) })
const peer = peerIdFromString(addr.getComponents().find(c => c.name === 'p2p')?.value ?? '')
try {
  await rpcCall(mesh, peer, OP_PROTOCOL, { term: Number(term), leader: mesh.peerId.toString(), op: { kind: 'remove', name: app } }, { decode: decodeOpResponse, timeoutMs: 20_000 })
  process.stdout.write(JSON.stringify({ ok: true }) + '\n')
} catch (err) {
  const e = err as RpcError
  process.stdout.write(JSON.stringify({ ok: false, code: e.code, message: e.message }) + '\n')
}
await mesh.stop()
