/**
 * restic repositories replicated over libp2p: real repositories made by the
 * restic binary, real meshes (private network and all) on loopback. A full
 * pull, incremental pulls, an unchanged pull; hostile servers (a raw handler
 * under the protocol) and hostile requests; a diverged repository; an abort
 * in the middle; the owner's lock.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import type { Stream } from '@libp2p/interface'
import { Mesh } from '../../agent/mesh/mesh.ts'
import { newClusterKey } from '../../agent/mesh/cluster-key.ts'
import { createLogger } from '../../agent/util/log.ts'
import { backup, check, initRepo, newPasswordFile, restore, snapshots, type ResticRepo } from '../../agent/snapshots/restic.ts'
import { listingDigest } from '../../agent/snapshots/tree.ts'
import { KeyedMutex } from '../../agent/util/async.ts'
import {
  RepoSyncError, listRepoFiles, pullRepo, serveRepos, type RepoServer, type SyncProgress
} from '../../agent/snapshots/repo-sync.ts'
import {
  REPO_PULL_PROTOCOL, decodeRepoListingBytes, decodeRepoStreamFrameBytes, encodeRepoFrame, parseRepoPath,
  type RepoListing, type RepoStreamFrame
} from '../../proto/snapshots.ts'

const log = createLogger('test-repo-sync', () => {})
const MB = 1e6
const te = new TextEncoder()

async function newMesh (clusterKey: Uint8Array): Promise<Mesh> {
  const mesh = await Mesh.create({ privateKey: await generateKeyPair('Ed25519'), clusterKey, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, peers: [], agentVersion: 'test', log })
  await mesh.start()
  return mesh
}

async function connect (from: Mesh, to: Mesh): Promise<void> {
  await from.host.dial(multiaddr(to.listenAddrs()[0] as string), { signal: AbortSignal.timeout(5000) })
}

/** The error a pull fails with; a pull that succeeds fails the test. */
async function failure (p: Promise<unknown>): Promise<RepoSyncError> {
  const r = await p.then(() => undefined, (e: unknown) => e)
  if (!(r instanceof RepoSyncError)) throw new Error(`expected a RepoSyncError, got ${String(r)}`)
  return r
}

/** Every entry under `dir`: path, type, size, mode. Equal listings: nothing was written, nothing left behind. */
async function tree (dir: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const name of (await readdir(d)).sort()) {
      const s = await lstat(join(d, name))
      const r = rel === '' ? name : `${rel}/${name}`
      out.push(`${r} ${s.isDirectory() ? 'd' : s.isSymbolicLink() ? 'l' : 'f'} ${s.isDirectory() ? 0 : s.size} ${(s.mode & 0o7777).toString(8)}`)
      if (s.isDirectory()) await walk(join(d, name), r)
    }
  }
  await walk(dir, '')
  return out
}

const temps = (t: string[]): string[] => t.filter(l => l.includes('.dcloud-pull-'))
const sum = (files: Array<{ size: number }>): number => files.reduce((n, f) => n + f.size, 0)

/** Random bytes named by their hash, as a data pack would be. */
function fakePack (size: number): { path: string, content: Buffer } {
  const content = randomBytes(size)
  const id = createHash('sha256').update(content).digest('hex')
  return { path: `data/${id.slice(0, 2)}/${id}`, content }
}

describe('restic repository replication over libp2p', () => {
  let tmp: string
  let srcRoot: string
  let dstRoot: string
  let data: string
  let passwordFile: string
  let src: ResticRepo
  let dst: ResticRepo
  let serverMesh: Mesh
  let client: Mesh
  let rogue: Mesh
  let otherMesh: Mesh
  let slowMesh: Mesh
  let server: RepoServer
  let other: RepoServer
  let slow: RepoServer
  const locks = new KeyedMutex()

  /** What the rogue server does after it read the request. */
  let rogueMode = 'garbage'
  /** The config the rogue serves: the real one, so that the puller goes on to the files. */
  let realConfig: Buffer

  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'dcloud-repo-sync-'))
    srcRoot = join(tmp, 'src')
    dstRoot = join(tmp, 'dst')
    data = join(tmp, 'data', 'vol')
    await mkdir(srcRoot)
    await mkdir(dstRoot)
    await mkdir(data, { recursive: true })
    passwordFile = join(tmp, 'restic.pw')
    await newPasswordFile(passwordFile)
    // Separate caches: source and replica are the same repository (same id), and one cache would hide a missing file.
    src = { repo: join(srcRoot, 'notes'), passwordFile, cacheDir: join(tmp, 'cache-src') }
    dst = { repo: join(dstRoot, 'notes'), passwordFile, cacheDir: join(tmp, 'cache-dst') }
    for (let i = 0; i < 3; i++) await writeFile(join(data, `blob-${i}`), randomBytes(8 * 1024 * 1024))
    for (let i = 0; i < 40; i++) await writeFile(join(data, `note-${i}.txt`), `note ${i}\n`.repeat(i + 1))
    await initRepo(src, { signal: AbortSignal.timeout(30_000) })
    await backup(src, { dir: data }, { signal: AbortSignal.timeout(60_000), host: 'n1' })

    const key = newClusterKey()
    ;[serverMesh, client, rogue, otherMesh, slowMesh] = await Promise.all([newMesh(key), newMesh(key), newMesh(key), newMesh(key), newMesh(key)])
    server = await serveRepos(serverMesh, { root: srcRoot, log, lock: async (app) => await locks.acquire(app), lockWaitMs: 1500 })
    // Another repository that happens to be called notes too.
    const otherRoot = join(tmp, 'other')
    await mkdir(otherRoot)
    await initRepo({ repo: join(otherRoot, 'notes'), passwordFile, cacheDir: join(tmp, 'cache-other') }, { signal: AbortSignal.timeout(30_000) })
    other = await serveRepos(otherMesh, { root: otherRoot, log })
    // The same source, slowly and one pull at a time: a pull long enough to abort in the middle.
    slow = await serveRepos(slowMesh, { root: srcRoot, log, maxBytesPerSecond: 8 * MB, maxConcurrent: 1 })
    for (const m of [serverMesh, rogue, otherMesh, slowMesh]) await connect(client, m)

    await rogue.host.handle(REPO_PULL_PROTOCOL, (stream: Stream) => {
      void playRogue(stream, rogueMode, realConfig).catch(() => { stream.abort(new Error('rogue done')) })
    })
  }, 120_000)

  afterAll(async () => {
    await Promise.all([server?.stop(), other?.stop(), slow?.stop()].map(async p => { await p?.catch(() => {}) }))
    await Promise.all([serverMesh, client, rogue, otherMesh, slowMesh].map(async m => { await m?.stop().catch(() => {}) }))
    if (tmp !== undefined) await rm(tmp, { recursive: true, force: true })
  })

  it('(a) pulls a whole repository: same files, check --read-data passes, same snapshots, a restore equals the data', async () => {
    const progress: SyncProgress[] = []
    const r = await pullRepo(client, serverMesh.peerId, 'notes', dstRoot, { signal: AbortSignal.timeout(60_000), progress: (p) => progress.push(p) })
    const files = await listRepoFiles(src.repo)
    expect(r).toMatchObject({ files: files.length, bytes: sum(files), skipped: 0 })
    expect(await listRepoFiles(dst.repo)).toEqual(files)
    // restic's own layout and modes: private directories, read-only files.
    expect(((await lstat(join(dst.repo, 'config'))).mode & 0o777).toString(8)).toBe('400')
    expect(((await lstat(dst.repo)).mode & 0o777).toString(8)).toBe('700')
    expect((await readdir(join(dst.repo, 'data'))).length).toBe(256)
    expect(progress.at(-1)).toMatchObject({ done: true, files: files.length, filesTotal: files.length, bytes: sum(files), bytesTotal: sum(files) })
    expect(temps(await tree(tmp))).toEqual([])

    await check(dst, { signal: AbortSignal.timeout(60_000), readData: true })
    const signal = AbortSignal.timeout(30_000)
    const [a, b] = await Promise.all([snapshots(src, { signal }), snapshots(dst, { signal })])
    expect(b.map(s => s.id)).toEqual(a.map(s => s.id))
    const target = join(tmp, 'restored')
    await restore(dst, (a[0] as { id: string }).id, target, { signal })
    expect((await listingDigest(target, { signal })).sha256).toBe((await listingDigest(data, { signal })).sha256)
    await rm(target, { recursive: true })
    console.log(`full pull: ${r.files} files, ${(r.bytes / MB).toFixed(2)} MB in ${Math.round(r.ms)} ms = ${(r.bytes / MB / (r.ms / 1000)).toFixed(1)} MB/s, ${progress.length} progress reports`)
  })

  it('(b) after a second backup pulls only the new files; (c) an unchanged repository transfers nothing', async () => {
    await writeFile(join(data, 'note-3.txt'), 'changed\n')
    await writeFile(join(data, 'new-blob'), randomBytes(300 * 1024))
    await backup(src, { dir: data }, { signal: AbortSignal.timeout(60_000), host: 'n1' })
    const have = new Set((await listRepoFiles(dst.repo)).map(f => f.path))
    const all = await listRepoFiles(src.repo)
    const fresh = all.filter(f => !have.has(f.path))
    // One snapshot, one index, and the packs of the changed data and trees.
    expect(fresh.filter(f => f.path.startsWith('snapshots/'))).toHaveLength(1)
    expect(fresh.filter(f => f.path.startsWith('index/'))).toHaveLength(1)

    const r = await pullRepo(client, serverMesh.peerId, 'notes', dstRoot, { signal: AbortSignal.timeout(60_000) })
    expect(r).toMatchObject({ files: fresh.length, bytes: sum(fresh), skipped: all.length - fresh.length })
    expect(await listRepoFiles(dst.repo)).toEqual(all)
    const signal = AbortSignal.timeout(30_000)
    const [a, b] = await Promise.all([snapshots(src, { signal }), snapshots(dst, { signal })])
    expect(b.map(s => s.id)).toEqual(a.map(s => s.id))
    expect(b).toHaveLength(2)
    console.log(`incremental pull: ${r.files} files (${fresh.map(f => f.path.split('/')[0]).join(', ')}), ${(r.bytes / 1024).toFixed(1)} KiB in ${Math.round(r.ms)} ms; ${r.skipped} skipped`)

    const before = await tree(tmp)
    const progress: SyncProgress[] = []
    const again = await pullRepo(client, serverMesh.peerId, 'notes', dstRoot, { signal: AbortSignal.timeout(30_000), progress: (p) => progress.push(p) })
    expect(again).toMatchObject({ files: 0, bytes: 0, skipped: all.length })
    expect(progress.at(-1)).toMatchObject({ done: true, files: 1, filesTotal: 1 })
    expect(await tree(tmp)).toEqual(before)
    console.log(`unchanged pull: 0 files in ${Math.round(again.ms)} ms (only the ${sum(all.filter(f => f.path === 'config'))}-byte config crosses, to compare)`)
  })

  it('(d) a hostile server is refused with the right code, and nothing is written or left behind', async () => {
    realConfig = await readFile(join(dst.repo, 'config'))
    const cases: Array<[string, string, RegExp]> = [
      ['garbage', 'protocol', /not valid JSON/],
      ['garbage-frame', 'protocol', /not valid JSON/],
      ['dotdot-listing', 'protocol', /not a restic repository file/],
      ['locks-listing', 'protocol', /not a restic repository file/],
      ['bad-prefix', 'protocol', /not a restic repository file/],
      ['no-config', 'protocol', /no config/],
      ['too_large', 'too_large', /more than the limit of 4294967296/],
      ['dotdot-header', 'protocol', /not a restic repository file/],
      ['unrequested', 'protocol', /not asked for/],
      ['size-mismatch', 'protocol', /listed as 1000/],
      ['hash', 'hash', /SHA-256/],
      ['truncated', 'protocol', /truncated/],
      ['reset', 'failed', /.+/],
      ['stall', 'idle', /no bytes/],
      ['error-frame', 'busy', /come back later/],
      ['huge-frame', 'protocol', /too long/]
    ]
    for (const [mode, code, message] of cases) {
      rogueMode = mode
      const before = await tree(tmp)
      const err = await failure(pullRepo(client, rogue.peerId, 'notes', dstRoot, { signal: AbortSignal.timeout(20_000), idleTimeoutMs: 1000 }))
      expect({ mode, code: err.code }).toEqual({ mode, code })
      expect(err.message, mode).toMatch(message)
      expect(await tree(tmp), mode).toEqual(before)
    }

    // A valid file and then one more than asked for: the valid one stays (it is the content its name says), the pull fails.
    rogueMode = 'extra'
    const before = await tree(tmp)
    const err = await failure(pullRepo(client, rogue.peerId, 'notes', dstRoot, { signal: AbortSignal.timeout(20_000), idleTimeoutMs: 1000 }))
    expect(err.code).toBe('protocol')
    const after = await tree(tmp)
    const added = after.filter(l => !before.includes(l))
    expect(added).toEqual([`dst/notes/${EXTRA.path} f 1000 400`])
    expect(temps(after)).toEqual([])
    await rm(join(dst.repo, EXTRA.path))
  })

  it('replaces a replica\'s file whose size cannot be its content (a damaged pack), and only that file', async () => {
    const pack = (await listRepoFiles(dst.repo)).find(f => f.path.startsWith('data/') && f.size > 1024 * 1024) as { path: string, size: number }
    const path = join(dst.repo, pack.path)
    await rm(path)
    await writeFile(path, (await readFile(join(src.repo, pack.path))).subarray(0, 4096), { mode: 0o400 })
    const r = await pullRepo(client, serverMesh.peerId, 'notes', dstRoot, { signal: AbortSignal.timeout(30_000) })
    expect(r).toMatchObject({ files: 1, bytes: pack.size })
    expect(await listRepoFiles(dst.repo)).toEqual(await listRepoFiles(src.repo))
    expect(temps(await tree(tmp))).toEqual([])
    await check(dst, { signal: AbortSignal.timeout(60_000), readData: true })
  })

  it('(e) a repository with the same name but another config is refused as diverged, nothing written', async () => {
    const before = await tree(tmp)
    const err = await failure(pullRepo(client, otherMesh.peerId, 'notes', dstRoot, { signal: AbortSignal.timeout(20_000) }))
    expect(err.code).toBe('diverged')
    expect(err.message).toMatch(/diverged: another repository with the same name/)
    expect(await tree(tmp)).toEqual(before)
    // Into a new replica the other repository is just a repository.
    const fresh = join(tmp, 'dst-other')
    await mkdir(fresh)
    const r = await pullRepo(client, otherMesh.peerId, 'notes', fresh, { signal: AbortSignal.timeout(20_000) })
    expect(r.files).toBeGreaterThanOrEqual(2)
  })

  it('(f) an abort in the middle leaves no temp file and a repository restic checks; the next pull completes it', async () => {
    const root = join(tmp, 'dst-abort')
    await mkdir(root)
    const replica: ResticRepo = { repo: join(root, 'notes'), passwordFile, cacheDir: join(tmp, 'cache-abort') }
    const controller = new AbortController()
    let last: SyncProgress | undefined
    // Stop once config, key and a pack are in place and 6 MB have come: with restic's packs of up to 16 MiB in
    // random order, at least one big pack is still on its way (the abort comes within 250 ms, 2 MB at this rate).
    const pull = pullRepo(client, slowMesh.peerId, 'notes', root, {
      signal: controller.signal,
      progress: (p) => { last = p; if (p.files >= 3 && p.bytes > 6 * MB) controller.abort(new Error('enough')) }
    }).then(() => null, (e: Error) => e)
    // The slow server serves one pull at a time.
    while (slow.activePulls === 0) await new Promise(resolve => setTimeout(resolve, 10))
    const busyRoot = join(tmp, 'dst-busy')
    await mkdir(busyRoot)
    expect((await failure(pullRepo(client, slowMesh.peerId, 'notes', busyRoot, { signal: AbortSignal.timeout(10_000) }))).code).toBe('busy')
    const aborted = await pull
    expect(aborted?.message).toBe('enough')
    expect(last?.bytes).toBeLessThan(sum(await listRepoFiles(src.repo)))
    const t = await tree(root)
    expect(temps(t)).toEqual([])
    const got = await listRepoFiles(replica.repo)
    expect(got.some(f => f.path.startsWith('data/'))).toBe(true)
    expect(got.some(f => f.path.startsWith('snapshots/'))).toBe(false)
    await check(replica, { signal: AbortSignal.timeout(30_000) })

    const r = await pullRepo(client, serverMesh.peerId, 'notes', root, { signal: AbortSignal.timeout(60_000) })
    const all = await listRepoFiles(src.repo)
    // The config is fetched again to compare, not written again.
    expect(r.files + got.length).toBe(all.length)
    expect(await listRepoFiles(replica.repo)).toEqual(all)
    await check(replica, { signal: AbortSignal.timeout(60_000), readData: true })
    console.log(`aborted after ${((last?.bytes ?? 0) / MB).toFixed(1)} MB (${got.length} files kept); the next pull brought the other ${r.files}`)
  })

  it('(g) bad requests get an error answer, and the server keeps serving', async () => {
    const rejected = server.counters.rejected
    const ask = async (bytes: Uint8Array): Promise<RepoListing> => {
      const stream = await client.host.dialProtocol(serverMesh.peerId, REPO_PULL_PROTOCOL, { signal: AbortSignal.timeout(5000) })
      stream.send(bytes)
      const answer = decodeRepoListingBytes((await lpStream(stream, { maxDataLength: 4096 }).read({ signal: AbortSignal.timeout(10_000) })).subarray())
      stream.abort(new Error('done'))
      return answer
    }
    const askListing = async (): Promise<RepoListing> => {
      const stream = await client.host.dialProtocol(serverMesh.peerId, REPO_PULL_PROTOCOL, { signal: AbortSignal.timeout(5000) })
      const lp = lpStream(stream, { maxDataLength: 32 * 1024 * 1024 })
      await lp.write(te.encode(JSON.stringify({ app: 'notes' })))
      const listing = decodeRepoListingBytes((await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray())
      stream.abort(new Error('done'))
      return listing
    }
    expect(await ask(encodeRepoFrame({ app: '../etc' }))).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    expect(await ask(encodeRepoFrame({ app: 'Notes' }))).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    expect(await ask(encodeRepoFrame({ app: 'a'.repeat(41) }))).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    expect(await ask(encodeRepoFrame({ app: 'notes', extra: 'x'.repeat(2000) }))).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    expect(await ask(encodeRepoFrame([1, 2, 3]))).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    expect(await ask(new Uint8Array([6, 0xde, 0xad, 0xbe, 0xef, 0x00, 0xff]))).toMatchObject({ ok: false, error: { code: 'bad_request' } })
    expect(await ask(new Uint8Array(16).fill(0xff))).toMatchObject({ ok: false, error: { code: 'bad_request', message: /too long/ } })
    expect(server.counters.rejected - rejected).toBe(7)

    // No repository, and a repository reached through a symlink: neither is served.
    expect(await ask(encodeRepoFrame({ app: 'nothing' }))).toMatchObject({ ok: false, error: { code: 'not_found' } })
    await symlink(src.repo, join(srcRoot, 'alias'))
    expect(await ask(encodeRepoFrame({ app: 'alias' }))).toMatchObject({ ok: false, error: { code: 'not_found' } })
    // A symlink with a repository file's name inside the repository is neither listed nor followed.
    const planted = join(src.repo, FAKE)
    await symlink('/etc/passwd', planted)
    expect((await listRepoFiles(src.repo)).map(f => f.path)).not.toContain(FAKE)
    const listed = await askListing()
    await rm(planted)
    expect(listed.ok && listed.files.map(f => f.path)).not.toContain(FAKE)

    // A want naming a file that was not listed.
    const stream = await client.host.dialProtocol(serverMesh.peerId, REPO_PULL_PROTOCOL, { signal: AbortSignal.timeout(5000) })
    const lp = lpStream(stream, { maxDataLength: 32 * 1024 * 1024 })
    await lp.write(te.encode(JSON.stringify({ app: 'notes' })))
    expect(decodeRepoListingBytes((await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray())).toMatchObject({ ok: true })
    await lp.write(te.encode(JSON.stringify({ want: ['config', `data/ab/ab${'0'.repeat(62)}`] })))
    expect(decodeRepoStreamFrameBytes((await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray())).toMatchObject({ error: { code: 'bad_request', message: /not in the listing/ } })
    stream.abort(new Error('done'))

    const r = await pullRepo(client, serverMesh.peerId, 'notes', dstRoot, { signal: AbortSignal.timeout(30_000) })
    expect(r.files).toBe(0)
    expect(server.activePulls).toBe(0)
  })

  it('waits for the owner\'s lock (a backup running), and answers busy when it is held too long', async () => {
    const release = await locks.acquire('notes')
    const started = performance.now()
    setTimeout(release, 500)
    await pullRepo(client, serverMesh.peerId, 'notes', dstRoot, { signal: AbortSignal.timeout(30_000) })
    expect(performance.now() - started).toBeGreaterThanOrEqual(450)

    const held = await locks.acquire('notes')
    const err = await failure(pullRepo(client, serverMesh.peerId, 'notes', dstRoot, { signal: AbortSignal.timeout(30_000) }))
    held()
    expect(err.code).toBe('busy')
    expect(err.message).toMatch(/in use/)
    // The server gave up waiting; the lock it got afterwards was handed straight back.
    await locks.run('notes', async () => {})
    expect(locks.isLocked('notes')).toBe(false)
  })

  it('refuses bad names and a replica reached through a symlink before dialling', async () => {
    expect((await failure(pullRepo(client, serverMesh.peerId, '../x', dstRoot, { signal: AbortSignal.timeout(5000) }))).code).toBe('bad_request')
    const root = join(tmp, 'dst-link')
    await mkdir(root)
    await mkdir(join(tmp, 'elsewhere'))
    await symlink(join(tmp, 'elsewhere'), join(root, 'notes'))
    expect((await failure(pullRepo(client, serverMesh.peerId, 'notes', root, { signal: AbortSignal.timeout(5000) }))).message).toMatch(/symlink/)
    expect(await readdir(join(tmp, 'elsewhere'))).toEqual([])
  })
})

describe('KeyedMutex', () => {
  it('runs one holder of a key at a time, other keys at once, and frees a key when its holder throws', async () => {
    const m = new KeyedMutex()
    const order: string[] = []
    const step = async (name: string, ms: number): Promise<void> => {
      order.push(`${name}+`)
      await new Promise(resolve => setTimeout(resolve, ms))
      order.push(`${name}-`)
    }
    await Promise.all([
      m.run('a', async () => { await step('a1', 30) }),
      m.run('a', async () => { await step('a2', 5) }),
      m.run('b', async () => { await step('b1', 5) }),
      m.run('a', async () => { throw new Error('boom') }).catch(() => {})
    ])
    expect(order.indexOf('a2+')).toBeGreaterThan(order.indexOf('a1-'))
    expect(order.indexOf('b1+')).toBeLessThan(order.indexOf('a1-'))
    expect(await m.run('a', async () => 42)).toBe(42)
    expect(m.isLocked('a')).toBe(false)
    expect(m.isLocked('b')).toBe(false)
  })
})

describe('repository paths', () => {
  it('accepts restic\'s names only', () => {
    const id = 'ab'.repeat(32)
    for (const p of ['config', `keys/${id}`, `snapshots/${id}`, `index/${id}`, `data/ab/${id}`]) expect(parseRepoPath(p), p).not.toBeNull()
    for (const p of ['', 'locks/' + id, `data/cd/${id}`, `data/ab/${id}/x`, `keys/${id.toUpperCase()}`, `keys/${id}0`, '../config', `data/../${id}`, 'config/', `/keys/${id}`, `keys//${id}`, `keys/./${id}`]) {
      expect(parseRepoPath(p), p).toBeNull()
    }
  })
})

// ---------------------------------------------------------------------------
// The rogue server

const FAKE = `data/ab/ab${'0'.repeat(62)}`
const OTHER = `data/cd/cd${'0'.repeat(62)}`
const EXTRA = fakePack(1000)

async function playRogue (stream: Stream, mode: string, config: Buffer): Promise<void> {
  const lp = lpStream(stream, { maxDataLength: 32 * 1024 * 1024 })
  await lp.read()
  const send = async (value: unknown): Promise<void> => { await lp.write(te.encode(JSON.stringify(value))) }
  const file = async (path: string, size: number, content: Uint8Array): Promise<void> => {
    const header: RepoStreamFrame = { file: { path, size } }
    await send(header)
    if (!stream.send(content)) await stream.onDrain()
  }
  const configEntry = { path: 'config', size: config.byteLength }
  switch (mode) {
    case 'garbage': await lp.write(te.encode('{"ok": tru')); await stream.close(); return
    case 'dotdot-listing': await send({ ok: true, files: [configEntry, { path: 'data/../../../etc/evil', size: 10 }] }); break
    case 'locks-listing': await send({ ok: true, files: [configEntry, { path: `locks/${'a'.repeat(64)}`, size: 10 }] }); break
    case 'bad-prefix': await send({ ok: true, files: [configEntry, { path: `data/cd/${'a'.repeat(64)}`, size: 10 }] }); break
    case 'no-config': await send({ ok: true, files: [{ path: FAKE, size: 10 }] }); break
    case 'too_large': await send({ ok: true, files: [configEntry, { path: FAKE, size: 5 * 1024 ** 3 }] }); break
    case 'error-frame': await send({ ok: false, error: { code: 'busy', message: 'come back later' } }); break
    case 'huge-frame': stream.send(new Uint8Array([0x80, 0x80, 0x80, 0x80, 0x01])); break
    case 'extra': await send({ ok: true, files: [configEntry, { path: EXTRA.path, size: 1000 }] }); break
    default: await send({ ok: true, files: [configEntry, { path: FAKE, size: 1000 }] })
  }
  const want = await lp.read().catch(() => null)
  if (want === null) return
  await file('config', config.byteLength, config)
  const junk = randomBytes(1000)
  switch (mode) {
    case 'garbage-frame': await lp.write(te.encode('not json at all')); break
    case 'dotdot-header': await file('data/ab/../../../../evil', 1000, junk); break
    case 'unrequested': await file(OTHER, 1000, junk); break
    case 'size-mismatch': await file(FAKE, 999, junk.subarray(0, 999)); break
    case 'hash': await file(FAKE, 1000, junk); await send({ end: { files: 2, bytes: 1000 + config.byteLength } }); break
    case 'truncated': await file(FAKE, 1000, junk.subarray(0, 500)); await stream.close(); return
    case 'reset': await file(FAKE, 1000, junk.subarray(0, 500)); await new Promise(resolve => setTimeout(resolve, 100)); stream.abort(new Error('rogue reset')); return
    case 'stall': await file(FAKE, 1000, junk.subarray(0, 500)); return // silence, stream left open
    case 'extra': await file(EXTRA.path, 1000, EXTRA.content); await file(OTHER, 1000, junk); break
  }
  await stream.close()
}
