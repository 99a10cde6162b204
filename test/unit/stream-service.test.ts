/**
 * The pieces the bulk-stream protocols (images, restic repositories) share,
 * written once: agent/mesh/stream-service.ts (frames, the server's
 * skeleton) and agent/util/async.ts (sleep, the keyed mutex, the idle
 * watchdog). The image server runs here over real in-process meshes with a
 * stand-in Docker that has no images: its refusals are the skeleton's.
 * The last test keeps each of these, and the shared name patterns of
 * proto/validate.ts, defined in one place.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import type Docker from 'dockerode'
import { Mesh } from '../../agent/mesh/mesh.ts'
import { newClusterKey } from '../../agent/mesh/cluster-key.ts'
import { readFrame } from '../../agent/mesh/stream-service.ts'
import { ImageServer, ImageTransferError, fetchImageFromPeers } from '../../agent/runtime/image-transfer.ts'
import { KeyedMutex, Watchdog, sleep } from '../../agent/util/async.ts'
import { createLogger } from '../../agent/util/log.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { IMAGE_PROTOCOL, decodeImageHeaderBytes, encodeJson } from '../../proto/runtime.ts'
import { ValidationError, lengthPrefixed } from '../../proto/validate.ts'

const log = createLogger('test-stream-service', () => {})

describe('readFrame', () => {
  /** A reader over `bytes` that counts what it was asked for. */
  const reader = (bytes: number[]): { read: (n: number) => Promise<Uint8Array>, asked: number[] } => {
    let at = 0
    const asked: number[] = []
    return {
      asked,
      read: async (n) => {
        asked.push(n)
        if (at + n > bytes.length) throw new Error('unexpected end')
        const out = Uint8Array.from(bytes.slice(at, at + n))
        at += n
        return out
      }
    }
  }

  it('reads one varint-prefixed frame, and an empty one', async () => {
    expect([...await readFrame(reader([3, 7, 8, 9, 10]).read, 16, 'x')]).toEqual([7, 8, 9])
    expect([...await readFrame(reader([0]).read, 16, 'x')]).toEqual([])
    const long = [...lengthPrefixed(new Uint8Array(300).fill(5))]
    expect((await readFrame(reader(long).read, 300, 'x')).length).toBe(300)
  })

  it('refuses a length over the limit, or a prefix over 4 bytes, before reading the frame', async () => {
    const over = reader([...lengthPrefixed(new Uint8Array(17))])
    await expect(readFrame(over.read, 16, 'request')).rejects.toThrow(new ValidationError('request', 'is 17 bytes, more than 16 (too long)'))
    expect(over.asked).toEqual([1])
    const endless = reader([0xff, 0xff, 0xff, 0xff, 0xff, 1])
    await expect(readFrame(endless.read, 1 << 30, 'header')).rejects.toThrow('header: has a length prefix that is too long')
    expect(endless.asked).toEqual([1, 1, 1, 1])
  })
})

describe('sleep, KeyedMutex, Watchdog', () => {
  it('sleep waits, and ends with the signal\'s reason', async () => {
    const t = performance.now()
    await sleep(30, AbortSignal.timeout(5000))
    expect(performance.now() - t).toBeGreaterThanOrEqual(25)
    const c = new AbortController()
    const reason = new Error('stopped')
    setTimeout(() => { c.abort(reason) }, 10)
    await expect(sleep(10_000, c.signal)).rejects.toBe(reason)
    await expect(sleep(1, c.signal)).rejects.toBe(reason)
  })

  it('KeyedMutex runs one holder of a key at a time, in order, past failures; other keys do not wait', async () => {
    const m = new KeyedMutex()
    const order: string[] = []
    const job = (name: string, ms: number, fail = false) => async (): Promise<string> => {
      order.push(`${name}+`)
      await sleep(ms, AbortSignal.timeout(5000))
      order.push(`${name}-`)
      if (fail) throw new Error(name)
      return name
    }
    const a = m.run('app', job('a', 30, true))
    const b = m.run('app', job('b', 5))
    const other = m.run('other', job('o', 1))
    expect(m.isLocked('app')).toBe(true)
    await expect(a).rejects.toThrow('a')
    expect(await b).toBe('b')
    expect(await other).toBe('o')
    expect(order.filter(x => x !== 'o+' && x !== 'o-')).toEqual(['a+', 'a-', 'b+', 'b-'])
    expect(order.indexOf('o-')).toBeLessThan(order.indexOf('a-'))
    // Forgotten once free: the map does not grow with every key.
    expect(m.isLocked('app')).toBe(false)
    const release = await m.acquire('app')
    release()
    release()
    expect(m.isLocked('app')).toBe(false)
  })

  it('Watchdog aborts when not touched for its time; a touch puts it off; unarmed, it starts at the first touch', async () => {
    const w = new Watchdog(40, () => new Error('idle'))
    await sleep(25, AbortSignal.timeout(1000))
    w.touch()
    await sleep(25, AbortSignal.timeout(1000))
    expect(w.signal.aborted).toBe(false)
    await sleep(40, AbortSignal.timeout(1000))
    expect(w.signal.aborted).toBe(true)
    expect((w.signal.reason as Error).message).toBe('idle')
    const lazy = new Watchdog(10, () => new Error('idle'), false)
    await sleep(30, AbortSignal.timeout(1000))
    expect(lazy.signal.aborted).toBe(false)
    lazy.touch()
    await sleep(30, AbortSignal.timeout(1000))
    expect(lazy.signal.aborted).toBe(true)
    const stopped = new Watchdog(10, () => new Error('idle'))
    stopped.stop()
    await sleep(30, AbortSignal.timeout(1000))
    expect(stopped.signal.aborted).toBe(false)
  })
})

describe('the image server on the shared skeleton', () => {
  let a: Mesh
  let b: Mesh
  let c: Mesh
  let server: ImageServer
  let full: ImageServer
  /** A Docker engine with no image at all. */
  const docker = { getImage: () => ({ inspect: async () => { throw Object.assign(new Error('no such image'), { statusCode: 404 }) } }) } as unknown as Docker

  const newMesh = async (key: Uint8Array): Promise<Mesh> => {
    const mesh = await Mesh.create({ privateKey: await generateKeyPair('Ed25519'), clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, peers: [], agentVersion: 'test', log })
    await mesh.start()
    return mesh
  }

  beforeAll(async () => {
    const key = newClusterKey()
    ;[a, b, c] = await Promise.all([newMesh(key), newMesh(key), newMesh(key)])
    server = new ImageServer(b, docker, log)
    await server.start()
    await server.start() // twice is safe
    full = new ImageServer(c, docker, log, { maxConcurrent: 0 })
    await full.start()
    for (const m of [b, c]) await a.host.dial(multiaddr(m.listenAddrs()[0] as string), { signal: AbortSignal.timeout(5000) })
  })
  afterAll(async () => {
    await server.stop()
    await server.stop()
    await full.stop()
    await Promise.all([a, b, c].map(async m => { await m.stop() }))
  })

  const ask = async (to: Mesh, frame: Uint8Array): Promise<unknown> => {
    const stream = await a.host.dialProtocol(to.peerId, IMAGE_PROTOCOL, { signal: AbortSignal.timeout(5000) })
    stream.send(frame)
    const header = decodeImageHeaderBytes((await lpStream(stream, { maxDataLength: 4096 }).read({ signal: AbortSignal.timeout(10_000) })).subarray())
    stream.abort(new Error('done'))
    return header
  }

  it('answers a bad request, a missing image and a full house with an error header, counting each', async () => {
    expect(await ask(b, lengthPrefixed(encodeJson({ ref: 'no such ref!' })))).toMatchObject({ ok: false, error: { code: 'bad_request', message: /^bad request: / } })
    expect(await ask(b, new Uint8Array(8).fill(0xff))).toMatchObject({ ok: false, error: { code: 'bad_request', message: /too long/ } })
    expect(await ask(b, lengthPrefixed(encodeJson({ ref: 'notes:1' })))).toEqual({ ok: false, error: { code: 'not_found', message: 'no image notes:1 on this node' } })
    expect(await ask(c, lengthPrefixed(encodeJson({ ref: 'notes:1' })))).toEqual({ ok: false, error: { code: 'busy', message: 'already serving 0 image transfers; try another peer or again shortly' } })
    expect(server.counters).toMatchObject({ rejected: 2, notFound: 1, busy: 0, failed: 0 })
    expect(full.counters.busy).toBe(1)
    expect(server.activeTransfers).toBe(0)
  })

  it('a requester hears not_found from every peer that lacks the image', async () => {
    const err = await fetchImageFromPeers(a, docker, 'notes:1', [b.peerId], { signal: AbortSignal.timeout(10_000) }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ImageTransferError)
    expect((err as ImageTransferError).code).toBe('not_found')
  })
})

describe('written once', () => {
  /** Every .ts file of the agent, the wire, the scheduler and the apps. */
  const sources = async (): Promise<Array<{ file: string, text: string }>> => {
    const out: Array<{ file: string, text: string }> = []
    for (const top of ['agent', 'proto', 'scheduler', 'apps']) {
      for (const entry of await readdir(join(PROJECT_ROOT, top), { recursive: true, withFileTypes: true })) {
        if (!entry.isFile() || !entry.name.endsWith('.ts')) continue
        const file = join(entry.parentPath, entry.name)
        out.push({ file: file.slice(PROJECT_ROOT.length + 1), text: await readFile(file, 'utf8') })
      }
    }
    return out
  }

  it.each([
    ['the peer-id pattern', /1-9A-HJ-NP-Za-km-z/g, ['proto/validate.ts']],
    ['Docker\'s name pattern', /\[a-zA-Z0-9\]\[a-zA-Z0-9(_\.-|\._-)\]/g, ['proto/validate.ts']],
    ['a keyed mutex', /class KeyedMutex|locks = new Map/g, ['agent/util/async.ts']],
    // agent/fence/watchdog.ts is another thing: the fencing watchdog process.
    ['an idle watchdog', /class Watchdog/g, ['agent/fence/watchdog.ts', 'agent/util/async.ts']],
    ['a sleep with a signal', /function sleep/g, ['agent/util/async.ts']],
    ['a frame reader', /function readFrame/g, ['agent/mesh/stream-service.ts']],
    ['a refusal', /function refuse/g, ['agent/mesh/stream-service.ts']]
  ])('%s', async (_what, pattern, where) => {
    const found = (await sources()).filter(s => (s.text.match(pattern) ?? []).length > 0).map(s => s.file).sort()
    expect(found).toEqual(where)
  })
})
