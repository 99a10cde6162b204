/**
 * Images from peer to peer on real engines: two libp2p meshes in the test
 * process (the real Mesh, private network and all, on loopback), one serving
 * n1's dockerd, the other loading into n2's. Plus a rogue mesh that speaks
 * the protocol badly, to show that the requester leaves nothing half-loaded
 * and that the server shrugs off hostile requests.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import Docker from 'dockerode'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import type { Stream } from '@libp2p/interface'
import { LabHandle, waitFor } from './harness.ts'
import { Mesh } from '../../agent/mesh/mesh.ts'
import { newClusterKey } from '../../agent/mesh/cluster-key.ts'
import { createLogger } from '../../agent/util/log.ts'
import {
  ImageTransferError, fetchImageFromPeers, lengthPrefixed, serveImages, type ImageServer, type ImageTransferProgress
} from '../../agent/runtime/image-transfer.ts'
import { imageId, saveImage } from '../../agent/runtime/images.ts'
import { IMAGE_PROTOCOL, decodeImageHeaderBytes, encodeJson, type ImageHeader } from '../../proto/runtime.ts'

const lab = new LabHandle('timg')
const IMAGE = 'dcloud/busybox:lab'
const BIG = 'dcloud/big:lab'
const log = createLogger('test-images', () => {})
const MB = 1e6

async function newMesh (clusterKey: Uint8Array): Promise<Mesh> {
  const mesh = await Mesh.create({
    privateKey: await generateKeyPair('Ed25519'),
    clusterKey,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    mdns: false,
    peers: [],
    agentVersion: 'test',
    log
  })
  await mesh.start()
  return mesh
}

async function sh (cmd: string, args: string[]): Promise<string> {
  return await new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 16 * 1024 * 1024, timeout: 300_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr}`))
      else resolve(stdout)
    })
  })
}

/** The error a transfer fails with; a transfer that succeeds fails the test. */
async function failure (p: Promise<unknown>): Promise<ImageTransferError> {
  const r = await p.then(() => undefined, (e: unknown) => e)
  if (!(r instanceof ImageTransferError)) throw new Error(`expected an ImageTransferError, got ${String(r)}`)
  return r
}

/** Opens a raw stream to the server and reads its one header, whatever we sent. */
async function rawExchange (from: Mesh, to: Mesh, send: Uint8Array): Promise<ImageHeader> {
  const stream = await from.host.dialProtocol(to.peerId, IMAGE_PROTOCOL, { signal: AbortSignal.timeout(5000) })
  stream.send(send)
  const header = decodeImageHeaderBytes((await lpStream(stream, { maxDataLength: 4096 }).read({ signal: AbortSignal.timeout(10_000) })).subarray())
  stream.abort(new Error('done'))
  return header
}

describe('image transfer between peers', () => {
  let n1: Docker
  let n2: Docker
  let server: Mesh
  let client: Mesh
  let rogue: Mesh
  let images: ImageServer
  /** What the rogue server does when asked for an image. */
  let rogueMode: 'stall' | 'truncate' = 'stall'

  beforeAll(async () => {
    await lab.up(2)
    n1 = new Docker({ socketPath: lab.lab.dockerSocket('n1') })
    n2 = new Docker({ socketPath: lab.lab.dockerSocket('n2') })
    const key = newClusterKey()
    server = await newMesh(key)
    client = await newMesh(key)
    rogue = await newMesh(key)
    // A short idle timeout so the stalled-requester test is quick; the limit of 2 is the default.
    images = await serveImages(server, n1, log, { idleTimeoutMs: 3000 })
    await client.host.dial(multiaddr(server.listenAddrs()[0] as string), { signal: AbortSignal.timeout(5000) })
    await client.host.dial(multiaddr(rogue.listenAddrs()[0] as string), { signal: AbortSignal.timeout(5000) })

    // The rogue answers "ok" and then misbehaves with a real image's bytes.
    await rogue.host.handle(IMAGE_PROTOCOL, (stream: Stream) => {
      void (async () => {
        const lp = lpStream(stream)
        await lp.read()
        const header: ImageHeader = { ok: true, size: 3 * MB }
        await lp.write(encodeJson(header))
        const tar = await saveImage(n1, IMAGE, AbortSignal.timeout(30_000))
        let sent = 0
        for await (const chunk of tar as AsyncIterable<Buffer>) {
          if (rogueMode === 'truncate' && sent + chunk.byteLength > 512 * 1024) {
            // Part of an archive, then a clean close: looks like the end.
            (tar as unknown as { destroy: () => void }).destroy()
            await stream.close()
            return
          }
          if (rogueMode === 'stall' && sent > 256 * 1024) {
            (tar as unknown as { destroy: () => void }).destroy()
            return // silence, stream left open
          }
          sent += chunk.byteLength
          if (!stream.send(chunk)) await stream.onDrain()
        }
      })().catch(() => {})
    })
  })

  afterAll(async () => {
    await Promise.all([images?.stop(), server?.stop(), client?.stop(), rogue?.stop()].map(async p => { await p?.catch(() => {}) }))
    await lab.down()
  })

  it('fetches an image n2 lacks from the peer that has it: same image id, progress reported', async () => {
    const want = await imageId(n1, IMAGE, AbortSignal.timeout(5000))
    expect(want).not.toBeNull()
    await n2.getImage(IMAGE).remove()
    expect(await imageId(n2, IMAGE, AbortSignal.timeout(5000))).toBeNull()

    const progress: ImageTransferProgress[] = []
    const r = await fetchImageFromPeers(client, n2, IMAGE, [server.peerId], { signal: AbortSignal.timeout(60_000), progress: (p) => progress.push(p) })
    expect(r.from).toBe(server.peerId.toString())
    expect(await imageId(n2, IMAGE, AbortSignal.timeout(5000))).toBe(want)
    expect(progress.length).toBeGreaterThan(0)
    expect(progress.at(-1)).toMatchObject({ done: true, bytes: r.bytes, peer: server.peerId.toString() })
    expect(progress.at(-1)?.total).toBeGreaterThan(0)
    expect(images.counters.served).toBe(1)
    console.log(`busybox image: ${(r.bytes / MB).toFixed(2)} MB in ${Math.round(r.ms)} ms = ${(r.bytes / MB / (r.ms / 1000)).toFixed(1)} MB/s, ${progress.length} progress reports`)
  })

  it('a peer that lacks the image answers not_found; with several candidates the next one is tried', async () => {
    const err = await failure(fetchImageFromPeers(client, n2, 'dcloud/nothing:here', [server.peerId], { signal: AbortSignal.timeout(10_000) }))
    expect(err.code).toBe('not_found')
    expect(err.message).toMatch(/no image dcloud\/nothing:here on this node/)

    // First candidate unreachable (a peer id nobody listens for), second has it.
    const stranger = (await newMesh(newClusterKey()))
    const strangerId = stranger.peerId
    await stranger.stop()
    await n2.getImage(IMAGE).remove()
    const r = await fetchImageFromPeers(client, n2, IMAGE, [strangerId, server.peerId], { signal: AbortSignal.timeout(60_000) })
    expect(r.from).toBe(server.peerId.toString())
  })

  it('hostile requests get an error answer and the server keeps serving', async () => {
    const rejectedBefore = images.counters.rejected
    const te = new TextEncoder()
    const garbage = await rawExchange(client, server, lengthPrefixed(new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0x00, 0xff])))
    expect(garbage).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    // A length prefix of 10 MB: refused before a byte of it is read.
    const oversized = await rawExchange(client, server, lengthPrefixed(new Uint8Array(10 * 1024 * 1024)).subarray(0, 64 * 1024))
    expect(oversized).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    expect((oversized as { error: { message: string } }).error.message).toMatch(/too long/)
    // A varint that never ends.
    const endless = await rawExchange(client, server, new Uint8Array(32).fill(0xff))
    expect(endless).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    for (const ref of ['../../etc/passwd', '-v', 'UPPER/case', 'a'.repeat(300), '']) {
      const h = await rawExchange(client, server, lengthPrefixed(encodeJson({ ref })))
      expect(h, ref).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    }
    const notJson = await rawExchange(client, server, lengthPrefixed(te.encode('{"ref": ')))
    expect(notJson).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    expect(images.counters.rejected - rejectedBefore).toBe(9)

    await n2.getImage(IMAGE).remove()
    await fetchImageFromPeers(client, n2, IMAGE, [server.peerId], { signal: AbortSignal.timeout(60_000) })
    expect(await imageId(n2, IMAGE, AbortSignal.timeout(5000))).toBe(await imageId(n1, IMAGE, AbortSignal.timeout(5000)))
  })

  it('serves two transfers at once; a third is told busy; a requester that stops reading is cut off', async () => {
    // Two requesters that ask and then pause: yamux stops granting window, the server's sends stall.
    const stalled: Stream[] = []
    for (let i = 0; i < 2; i++) {
      const s = await client.host.dialProtocol(server.peerId, IMAGE_PROTOCOL, { signal: AbortSignal.timeout(5000) })
      s.send(lengthPrefixed(encodeJson({ ref: IMAGE })))
      s.pause()
      stalled.push(s)
    }
    await waitFor(async () => images.activeTransfers === 2 ? true : undefined, 5000, 'two transfers in progress')
    const third = await rawExchange(client, server, lengthPrefixed(encodeJson({ ref: IMAGE })))
    expect(third).toMatchObject({ ok: false, error: { code: 'busy' } })
    // The server's idle timeout (3 s here) frees both slots.
    const { ms } = await waitFor(async () => images.activeTransfers === 0 ? true : undefined, 10_000, 'stalled transfers to be cut off')
    expect(ms).toBeLessThan(6000)
    for (const s of stalled) s.abort(new Error('done'))
    await n2.getImage(IMAGE).remove()
    await fetchImageFromPeers(client, n2, IMAGE, [server.peerId], { signal: AbortSignal.timeout(60_000) })
  })

  it('enforces the size limit and leaves nothing half-loaded', async () => {
    await n2.getImage(IMAGE).remove()
    const err = await failure(fetchImageFromPeers(client, n2, IMAGE, [server.peerId], { signal: AbortSignal.timeout(30_000), maxBytes: 1000 }))
    expect(err.code).toBe('too_large')
    expect(await imageId(n2, IMAGE, AbortSignal.timeout(5000))).toBeNull()
    // The header's estimate (the image's size) fits, the archive (tar headers and all) does not: cut off mid-stream.
    const size = (await n1.getImage(IMAGE).inspect()).Size
    const mid = await failure(fetchImageFromPeers(client, n2, IMAGE, [server.peerId], { signal: AbortSignal.timeout(30_000), maxBytes: size }))
    expect(mid.code).toBe('too_large')
    expect(mid.message).toMatch(/docker load tagged nothing/)
    expect(await imageId(n2, IMAGE, AbortSignal.timeout(5000))).toBeNull()
    expect(await n2.listImages({ all: true })).toEqual([])
  })

  it('a peer that goes silent hits the idle timeout; one that closes early leaves no image', async () => {
    rogueMode = 'stall'
    const t0 = performance.now()
    const idle = await failure(fetchImageFromPeers(client, n2, IMAGE, [rogue.peerId], { signal: AbortSignal.timeout(30_000), idleTimeoutMs: 1500 }))
    expect(idle.code).toBe('idle')
    expect(idle.message).toMatch(/docker load tagged nothing/)
    expect(performance.now() - t0).toBeLessThan(5000)
    expect(await imageId(n2, IMAGE, AbortSignal.timeout(5000))).toBeNull()

    rogueMode = 'truncate'
    const cut = await failure(fetchImageFromPeers(client, n2, IMAGE, [rogue.peerId], { signal: AbortSignal.timeout(30_000) }))
    expect(cut).toBeInstanceOf(ImageTransferError)
    expect(cut.message).toMatch(/docker load/)
    expect(await imageId(n2, IMAGE, AbortSignal.timeout(5000))).toBeNull()
    expect(await n2.listImages({ all: true })).toEqual([])
  })

  it('moves a 100 MB image (figures for docs/runtime.md)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dcloud-big-'))
    try {
      await sh('sh', ['-c', `mkdir -p ${dir}/root && head -c 100000000 /dev/urandom > ${dir}/root/blob && tar -C ${dir}/root -cf ${dir}/big.tar .`])
      await writeFile(join(dir, 'note'), 'built by image-transfer.test.ts')
      await sh('docker', ['-H', `unix://${lab.lab.dockerSocket('n1')}`, 'import', join(dir, 'big.tar'), BIG])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
    const progress: ImageTransferProgress[] = []
    const r = await fetchImageFromPeers(client, n2, BIG, [server.peerId], { signal: AbortSignal.timeout(120_000), progress: (p) => progress.push(p) })
    expect(await imageId(n2, BIG, AbortSignal.timeout(5000))).toBe(await imageId(n1, BIG, AbortSignal.timeout(5000)))
    expect(r.bytes).toBeGreaterThan(100 * MB)
    // At most one report per MiB or per second (reads can be several MiB), counting up, the last one done.
    expect(progress.length).toBeGreaterThan(2)
    expect(progress.length).toBeLessThanOrEqual(Math.ceil(r.bytes / 2 ** 20) + Math.ceil(r.ms / 1000) + 1)
    expect(progress.every((p, i) => i === 0 || p.bytes >= progress[i - 1]!.bytes)).toBe(true)
    expect(progress.filter(p => p.done)).toHaveLength(1)
    const rss = process.memoryUsage().rss
    console.log(`100 MB image: ${(r.bytes / MB).toFixed(1)} MB in ${Math.round(r.ms)} ms = ${(r.bytes / MB / (r.ms / 1000)).toFixed(1)} MB/s, ${progress.length} progress reports, test process RSS ${(rss / MB).toFixed(0)} MB`)
  })
})
