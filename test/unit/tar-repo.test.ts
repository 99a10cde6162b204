/**
 * The tar snapshot repository (restic's fallback) on real directories: a
 * backup of two directories side by side and its restore compared entry by
 * entry; equal data, equal tree; listing filters; a damaged archive, a
 * hostile archive under a valid name and a missing archive (a partial
 * replica); forget; and replication: the layout is what repo-sync lists and
 * checks, copied by hand and pulled over a real mesh.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, chown, cp, link, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, symlink, unlink, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { listingDigest } from '../../agent/snapshots/tree.ts'
import { RepoCorruptError, RepoExistsError, RepoMissingError, SnapshotNotFoundError, parseSnapshot } from '../../agent/snapshots/restic.ts'
import { listRepoFiles, pullRepo, serveRepos } from '../../agent/snapshots/repo-sync.ts'
import {
  TarRepoCorruptError, TarSnapshotNotFoundError, initTarRepository, isTarRepository, tarBackup, tarForget, tarGetSnapshot,
  tarRestore, tarSnapshots, tarTreeDigest
} from '../../agent/snapshots/tar-repo.ts'
import { encodeEntry, endOfArchive, padding } from '../../agent/snapshots/tar.ts'
import { Mesh } from '../../agent/mesh/mesh.ts'
import { newClusterKey } from '../../agent/mesh/cluster-key.ts'
import { createLogger } from '../../agent/util/log.ts'
import { UserError } from '../../agent/util/errors.ts'
import { parseRepoPath } from '../../proto/snapshots.ts'

const IS_ROOT = process.getuid?.() === 0
const signal = (): AbortSignal => AbortSignal.timeout(60_000)
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
const DATA = 'dcloud-notes-data'
const CACHE = 'dcloud-notes-cache'
const NAMES = [DATA, CACHE]
const T0 = 1_700_000_000

/**
 * Every entry under each name: type, mode, owner, size, content hash or link
 * target, whole-second mtime, and which earlier file it shares an inode with.
 */
async function describeTree (within: string, names: string[]): Promise<string[]> {
  const out: string[] = []
  const inodes = new Map<number, string>()
  const walk = async (abs: string, rel: string): Promise<void> => {
    const s = await lstat(abs)
    const type = s.isDirectory() ? 'd' : s.isSymbolicLink() ? 'l' : s.isFile() ? 'f' : '?'
    let what = '-'
    if (type === 'f') what = sha256(await readFile(abs))
    if (type === 'l') what = `-> ${await readlink(abs)}`
    let shared = ''
    if (type === 'f' && s.nlink > 1) {
      shared = inodes.get(s.ino) ?? ''
      if (shared === '') inodes.set(s.ino, rel)
    }
    out.push(`${rel} ${type} ${(s.mode & 0o7777).toString(8)} ${s.uid}:${s.gid} ${type === 'f' ? s.size : 0} ${what} ${Math.floor(s.mtimeMs / 1000)}${shared === '' ? '' : ` = ${shared}`}`)
    if (type === 'd') for (const n of (await readdir(abs)).sort()) await walk(join(abs, n), `${rel}/${n}`)
  }
  for (const n of names) await walk(join(within, n), n)
  return out
}

/** Two Docker-volume-like directories with files, subdirectories, symlinks, a hardlink, modes and times. */
async function makeSource (within: string): Promise<void> {
  const d = join(within, DATA, '_data')
  await mkdir(join(d, 'sub', 'deep'), { recursive: true })
  await writeFile(join(d, 'a.txt'), 'hello world\n')
  await writeFile(join(d, 'sub', 'b.bin'), randomBytes(300 * 1024))
  await writeFile(join(d, 'sub', 'deep', 'empty'), '')
  await writeFile(join(d, 'run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 })
  await writeFile(join(d, 'secret'), 'key\n', { mode: 0o600 })
  await writeFile(join(d, 'naïve – ünïcode.txt'), 'utf-8 name\n')
  await writeFile(join(d, `${'x'.repeat(120)}.long`), 'a name longer than ustar holds\n')
  await link(join(d, 'a.txt'), join(d, 'a.hard'))
  await symlink('a.txt', join(d, 'link'))
  await symlink('sub/deep', join(d, 'dirlink'))
  await chmod(join(d, 'sub', 'deep'), 0o750)
  if (IS_ROOT) await chown(join(d, 'secret'), 999, 998)
  const c = join(within, CACHE, '_data')
  await mkdir(c, { recursive: true })
  await writeFile(join(c, 'x'), 'cache\n')
  await chmod(join(within, CACHE), 0o700)
  // Fixed times, directories last (writing into a directory changes its mtime).
  for (const f of [join(d, 'a.txt'), join(d, 'sub', 'b.bin'), join(d, 'run.sh'), join(c, 'x')]) await utimes(f, T0, T0 + 1)
  for (const dir of [join(d, 'sub', 'deep'), join(d, 'sub'), d, c, join(within, DATA), join(within, CACHE)]) await utimes(dir, T0, T0 + 2)
}

let tmp: string
let within: string
let root: string
let repo: string

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'dcloud-tar-repo-'))
  within = join(tmp, 'volumes')
  root = join(tmp, 'repos')
  repo = join(root, 'notes')
  await mkdir(within)
  await mkdir(root)
  await makeSource(within)
})

afterAll(async () => {
  if (tmp !== undefined) await rm(tmp, { recursive: true, force: true })
})

/** A copy of the main repository for a test that damages it. */
async function copyRepo (name: string): Promise<string> {
  const to = join(tmp, 'copies', name)
  await mkdir(dirname(to), { recursive: true })
  await cp(repo, to, { recursive: true })
  return to
}

describe('tar snapshot repository', () => {
  let first: Awaited<ReturnType<typeof tarBackup>>

  it('initialises a repository once; tells it from a restic one and from nothing', async () => {
    const cfg = await initTarRepository(repo, { signal: signal() })
    expect(cfg).toMatchObject({ format: 'dcloud-tar-repository', version: 1 })
    expect(cfg.id).toMatch(/^[0-9a-f]{32}$/)
    expect(JSON.parse(await readFile(join(repo, 'config'), 'utf8'))).toEqual(cfg)
    expect((await readdir(repo)).sort()).toEqual(['config', 'data', 'index', 'keys', 'locks', 'snapshots'])
    expect(((await lstat(join(repo, 'config'))).mode & 0o777).toString(8)).toBe('400')
    expect(await isTarRepository(repo)).toBe(true)

    const again = await initTarRepository(repo, { signal: signal() }).catch((e: unknown) => e)
    expect(again).toBeInstanceOf(RepoExistsError)
    expect((again as UserError).message).toMatch(/already holds a repository/)
    expect((again as UserError).hint).toMatch(/existing repository/)
    expect(JSON.parse(await readFile(join(repo, 'config'), 'utf8'))).toEqual(cfg)

    const resticLike = join(tmp, 'restic-like')
    await mkdir(resticLike)
    await writeFile(join(resticLike, 'config'), randomBytes(200))
    expect(await isTarRepository(resticLike)).toBe(false)
    expect(await isTarRepository(join(tmp, 'nothing-here'))).toBe(false)
    await expect(tarSnapshots(resticLike, { signal: signal() })).rejects.toThrow(/is not a tar repository's config/)
    const missing = await tarSnapshots(join(tmp, 'nothing-here'), { signal: signal() }).catch((e: unknown) => e)
    // The service's `instanceof RepoMissingError` (restic.ts's class) holds for the tar backend too.
    expect(missing).toBeInstanceOf(RepoMissingError)
    expect((missing as Error).message).toMatch(/there is no tar repository at/)
  })

  it('backs up two directories side by side into one archive and one record, both named by their SHA-256', async () => {
    const progress: number[] = []
    first = await tarBackup(repo, { within, names: NAMES }, { tags: ['dcloud.app=notes', 'dcloud.purpose=manual', 'dcloud.gen=1'], host: 'node-1', signal: signal(), progress: (p) => progress.push(p.percent) })
    const s = first.snapshot
    expect(s.id).toMatch(/^[0-9a-f]{64}$/)
    expect(s.shortId).toBe(s.id.slice(0, 8))
    expect(first.snapshotId).toBe(s.id)
    expect(s).toMatchObject({ hostname: 'node-1', parent: null, tags: ['dcloud.app=notes', 'dcloud.purpose=manual', 'dcloud.gen=1'], paths: [join(within, CACHE), join(within, DATA)] })
    // The record restic.ts's parser accepts: the same type, the same rules.
    expect(parseSnapshot(JSON.parse(JSON.stringify(s)) as unknown)).toEqual(s)

    const record = await readFile(join(repo, 'snapshots', s.id))
    expect(sha256(record)).toBe(s.id)
    const archive = await readFile(join(repo, 'data', first.archive.slice(0, 2), first.archive))
    expect(sha256(archive)).toBe(first.archive)
    expect(JSON.parse(record.toString('utf8'))).toMatchObject({ format: 'dcloud-tar-snapshot', version: 1, archive: first.archive, archiveBytes: archive.length, tree: s.tree, time: s.time })
    expect(first.dataAdded).toBe(archive.length)
    let content = 0
    for (const n of NAMES) content += (await listingDigest(join(within, n), { signal: signal() })).bytes
    expect(first.bytesProcessed).toBe(content)
    expect(first).toMatchObject({ filesChanged: 0, filesUnmodified: 0, dirsNew: 6, filesNew: first.filesProcessed, skipped: [] })
    expect(progress.at(-1)).toBe(100)
    // The tree is the content's digest: what listingDigest says of the directories.
    expect(s.tree).toBe(await tarTreeDigest(within, NAMES, { signal: signal() }))
    // GNU tar reads it, with the names side by side at the top.
    const listed = execFileSync('tar', ['-tf', join(repo, 'data', first.archive.slice(0, 2), first.archive)], { encoding: 'utf8' }).split('\n').filter(l => l !== '')
    expect(listed).toContain(`${DATA}/_data/sub/b.bin`)
    expect(listed).toContain(`${CACHE}/_data/x`)
    expect(new Set(listed.map(l => l.split('/')[0]))).toEqual(new Set(NAMES))
    // Nothing left behind but the repository's own files.
    expect((await readdir(repo)).filter(n => n.startsWith('.'))).toEqual([])
  })

  it('restores byte for byte, modes, owners, times, symlinks and hardlinks included', async () => {
    const target = join(tmp, 'restored-1')
    const got = await tarRestore(repo, first.snapshot.shortId, target, { signal: signal() })
    expect(got).toEqual(first.snapshot)
    expect((await readdir(target)).sort()).toEqual([...NAMES].sort())
    const want = await describeTree(within, NAMES)
    const have = await describeTree(target, NAMES)
    expect(have).toEqual(want)
    expect(have.join('\n')).toMatch(/a\.txt f 644 .* = dcloud-notes-data\/_data\/a\.hard/)
    expect(have.join('\n')).toMatch(/link l .* -> a\.txt/)
    if (IS_ROOT) expect(have.join('\n')).toMatch(/secret f 600 999:998/)
    for (const n of NAMES) expect((await listingDigest(join(target, n), { signal: signal() })).sha256).toBe((await listingDigest(join(within, n), { signal: signal() })).sha256)
    expect((await readdir(tmp)).filter(n => n.includes('.restore-'))).toEqual([])

    // An empty target is fine; a target with anything in it is refused.
    await mkdir(join(tmp, 'restored-2'))
    await tarRestore(repo, first.snapshot.id, join(tmp, 'restored-2'), { signal: signal() })
    expect(await describeTree(join(tmp, 'restored-2'), NAMES)).toEqual(want)
    await expect(tarRestore(repo, first.snapshot.id, target, { signal: signal() })).rejects.toThrow(/is not empty; refusing to restore over it/)
  })

  it('unknown and malformed ids: SnapshotNotFoundError and a usage error', async () => {
    const err = await tarRestore(repo, 'deadbeef', join(tmp, 'never'), { signal: signal() }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(TarSnapshotNotFoundError)
    expect(err).toBeInstanceOf(SnapshotNotFoundError)
    expect((err as UserError).message).toBe(`no snapshot deadbeef in the tar repository at ${repo}`)
    expect((err as UserError).hint).toMatch(/dcloud snapshot ls/)
    expect(existsSync(join(tmp, 'never'))).toBe(false)
    await expect(tarGetSnapshot(repo, 'abc', { signal: signal() })).rejects.toMatchObject({ exitCode: 64, message: '"abc" is not a snapshot id' })
    await expect(tarBackup(repo, { within, names: ['../etc'] }, { signal: signal() })).rejects.toThrow(/not a plain entry name/)
    await expect(tarBackup(repo, { within, names: NAMES }, { tags: ['a,b'], signal: signal() })).rejects.toThrow(/snapshot tag "a,b" is not allowed/)
    await expect(tarBackup(repo, { within, names: NAMES }, { host: '-x', signal: signal() })).rejects.toThrow(/snapshot host "-x" is not allowed/)
    await expect(tarBackup(repo, { paths: [within] }, { signal: signal() })).rejects.toThrow(/not absolute paths/)
  })

  it('identical data: the same tree and the same archive, stored once; only times changed: the same tree, a new archive', async () => {
    await sleep(5)
    const second = await tarBackup(repo, { within, names: [DATA, CACHE] }, { tags: ['dcloud.app=notes', 'dcloud.purpose=prepass', 'dcloud.gen=1'], host: 'node-1', signal: signal() })
    expect(second.snapshot.id).not.toBe(first.snapshot.id)
    expect(second.snapshot.tree).toBe(first.snapshot.tree)
    expect(second.archive).toBe(first.archive)
    expect(second).toMatchObject({ dataAdded: 0, filesNew: 0, filesUnmodified: first.filesProcessed, dirsUnmodified: 6 })

    await utimes(join(within, CACHE, '_data', 'x'), T0, T0 + 100)
    await sleep(5)
    const third = await tarBackup(repo, { within, names: NAMES }, { tags: ['dcloud.app=notes', 'dcloud.purpose=manual', 'dcloud.gen=2'], host: 'node-2', signal: signal() })
    await utimes(join(within, CACHE, '_data', 'x'), T0, T0 + 1)
    expect(third.snapshot.tree).toBe(first.snapshot.tree)
    expect(third.archive).not.toBe(first.archive)
    expect(third.dataAdded).toBeGreaterThan(0)

    await writeFile(join(within, CACHE, '_data', 'y'), 'new\n')
    await sleep(5)
    const fourth = await tarBackup(repo, { dir: join(within, CACHE) }, { tags: ['dcloud.app=other'], host: 'node-2', signal: signal() })
    await unlink(join(within, CACHE, '_data', 'y'))
    await utimes(join(within, CACHE, '_data'), T0, T0 + 2)
    expect(fourth.snapshot.paths).toEqual([join(within, CACHE)])
    expect(fourth.snapshot.tree).not.toBe(first.snapshot.tree)
  })

  it('lists oldest first, by tags (all of them) and host', async () => {
    const all = await tarSnapshots(repo, { signal: signal() })
    expect(all).toHaveLength(4)
    expect(all[0]).toEqual(first.snapshot)
    expect(all.map(s => s.time)).toEqual([...all.map(s => s.time)].sort())
    expect(await tarSnapshots(repo, { tags: ['dcloud.app=notes'], signal: signal() })).toHaveLength(3)
    const manual = await tarSnapshots(repo, { tags: ['dcloud.app=notes', 'dcloud.purpose=manual'], signal: signal() })
    expect(manual.map(s => s.tags.find(t => t.startsWith('dcloud.gen=')))).toEqual(['dcloud.gen=1', 'dcloud.gen=2'])
    expect(await tarSnapshots(repo, { host: 'node-2', signal: signal() })).toHaveLength(2)
    expect(await tarSnapshots(repo, { tags: ['dcloud.app=notes'], host: 'node-2', signal: signal() })).toHaveLength(1)
    expect(await tarSnapshots(repo, { tags: ['dcloud.app=nobody'], signal: signal() })).toEqual([])
  })

  it('skips sockets, fifos and devices with a report, and refuses a symlink leaving its directory before writing anything', async () => {
    const extra = join(tmp, 'extra')
    await mkdir(join(extra, 'vol'), { recursive: true })
    await writeFile(join(extra, 'vol', 'f'), 'x')
    execFileSync('mkfifo', [join(extra, 'vol', 'pipe')])
    const r = await tarBackup(repo, { within: extra, names: ['vol'] }, { signal: signal() })
    expect(r.skipped).toEqual([`${join(extra, 'vol', 'pipe')} (fifo)`])
    await tarRestore(repo, r.snapshot.id, join(tmp, 'restored-fifo'), { signal: signal() })
    expect((await readdir(join(tmp, 'restored-fifo', 'vol'))).sort()).toEqual(['f'])

    await unlink(join(extra, 'vol', 'pipe'))
    await symlink('/etc/passwd', join(extra, 'vol', 'pw'))
    const before = (await listRepoFiles(repo)).map(f => f.path)
    const err = await tarBackup(repo, { within: extra, names: ['vol'] }, { signal: signal() }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(UserError)
    expect((err as Error).message).toMatch(/^top-level directory vol: symlink .*\/vol\/pw points outside the top-level directory \("\/etc\/passwd"\)$/)
    expect((await listRepoFiles(repo)).map(f => f.path)).toEqual(before)
    expect((await readdir(repo)).filter(n => n.startsWith('.'))).toEqual([])
    await expect(tarForget(repo, [r.snapshot.id], { signal: signal() })).resolves.toMatchObject({ removed: [r.snapshot.id] })
  })

  it('an aborted backup or restore leaves nothing behind', async () => {
    const before = await listRepoFiles(repo)
    const controller = new AbortController()
    const err = await tarBackup(repo, { within, names: NAMES }, { signal: controller.signal, progress: () => { controller.abort(new Error('stop')) } }).catch((e: unknown) => e)
    expect((err as Error).message).toBe('stop')
    expect(await listRepoFiles(repo)).toEqual(before)
    expect((await readdir(repo)).filter(n => n.startsWith('.'))).toEqual([])

    const parent = join(tmp, 'aborted-restore')
    await mkdir(parent)
    const stop = new AbortController()
    stop.abort(new Error('stopped'))
    await expect(tarRestore(repo, first.snapshot.id, join(parent, 'target'), { signal: stop.signal })).rejects.toThrow('stopped')
    expect(await readdir(parent)).toEqual([])
  })

  it('a damaged archive fails the restore, says so, and leaves no target and no staging directory', async () => {
    const copy = await copyRepo('damaged')
    const file = join(copy, 'data', first.archive.slice(0, 2), first.archive)
    const bytes = await readFile(file)
    const parent = join(tmp, 'damaged-restores')
    await mkdir(parent)

    // A byte of file content: the tar still parses, the hash does not match.
    const content = Buffer.from(bytes)
    const at = content.indexOf('hello world')
    expect(at).toBeGreaterThan(0)
    content[at] = 0x48
    await chmod(file, 0o600)
    await writeFile(file, content)
    const err = await tarRestore(copy, first.snapshot.id, join(parent, 'target'), { signal: signal() }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(TarRepoCorruptError)
    expect(err).toBeInstanceOf(RepoCorruptError)
    expect((err as Error).message).toMatch(new RegExp(`the tar repository at .* is damaged: the archive data/${first.archive.slice(0, 2)}/${first.archive} does not match its name \\(its SHA-256 is [0-9a-f]{64}\\)`))
    expect((err as UserError).hint).toMatch(/another copy/)
    expect(await readdir(parent)).toEqual([])

    // A byte of a header: the reader refuses first, and the error still says the archive is damaged.
    const header = Buffer.from(bytes)
    header[600] = header[600] === 0x41 ? 0x42 : 0x41
    await writeFile(file, header)
    const err2 = await tarRestore(copy, first.snapshot.id, join(parent, 'target'), { signal: signal() }).catch((e: unknown) => e)
    expect(err2).toBeInstanceOf(TarRepoCorruptError)
    expect((err2 as Error).message).toMatch(/does not match its name \(header at offset 512 has a bad checksum/)
    expect(await readdir(parent)).toEqual([])

    // The listing does not read archives: the snapshot is still listed (its record is intact).
    expect((await tarSnapshots(copy, { signal: signal() })).map(s => s.id)).toContain(first.snapshot.id)
  })

  it('a hostile archive planted under a valid hash name is refused, and nothing is written outside the target', async () => {
    const copy = await copyRepo('hostile')
    const parent = join(tmp, 'hostile-restores', 'p')
    await mkdir(parent, { recursive: true })
    await writeFile(join(parent, 'sentinel'), 'untouched')
    const plant = async (entries: Buffer[]): Promise<string> => {
      const archive = Buffer.concat([...entries, endOfArchive()])
      const hash = sha256(archive)
      await mkdir(join(copy, 'data', hash.slice(0, 2)), { recursive: true })
      await writeFile(join(copy, 'data', hash.slice(0, 2), hash), archive)
      const record = Buffer.from(JSON.stringify({ format: 'dcloud-tar-snapshot', version: 1, time: new Date().toISOString(), hostname: 'evil', username: '', tags: ['dcloud.app=notes'], paths: ['/x/vol'], tree: 'a'.repeat(64), archive: hash, archiveBytes: archive.length, entries: 2, bytes: 1 }))
      const id = sha256(record)
      await writeFile(join(copy, 'snapshots', id), record)
      return id
    }
    const dir = (path: string): Buffer => encodeEntry({ path, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: T0 })
    const file = (path: string, content: string): Buffer => {
      const c = Buffer.from(content)
      return Buffer.concat([encodeEntry({ path, type: 'file', mode: 0o644, uid: 0, gid: 0, size: c.length, mtime: T0 }), c, Buffer.alloc(padding(c.length))])
    }
    const sym = (path: string, target: string): Buffer => encodeEntry({ path, type: 'symlink', mode: 0o777, uid: 0, gid: 0, size: 0, mtime: T0, linkpath: target })
    const cases: Array<[string, Buffer[], RegExp]> = [
      ['a ../ path', [dir('vol/'), file('vol/../../evil', 'x')], /entry "vol\/\.\.\/\.\.\/evil": "\.\." components are not allowed/],
      ['an absolute path', [dir('vol/'), file(join(parent, 'evil'), 'x')], /absolute paths are not allowed/],
      ['a write through a symlink', [dir('vol/'), sym('vol/out', '../..'), file('vol/out/evil', 'x')], /symlink points outside its top-level directory/],
      ['a name the record does not declare', [dir('vol/'), dir('other/'), file('other/evil', 'x')], /top-level directory "other" is not in the snapshot record/]
    ]
    for (const [what, entries, message] of cases) {
      const id = await plant(entries)
      // A valid record and a present archive: listed like any other snapshot.
      expect((await tarSnapshots(copy, { signal: signal() })).map(s => s.id), what).toContain(id)
      const before = await readdir(parent)
      const err = await tarRestore(copy, id, join(parent, 'target'), { signal: signal() }).catch((e: unknown) => e)
      expect(err, what).toBeInstanceOf(TarRepoCorruptError)
      expect((err as Error).message, what).toMatch(/holds what a restore must refuse/)
      expect((err as Error).message, what).toMatch(message)
      expect(await readdir(parent), what).toEqual(before)
      for (const p of [join(parent, 'evil'), join(dirname(parent), 'evil'), join(tmp, 'evil'), join(parent, 'target')]) expect(existsSync(p), `${what}: ${p}`).toBe(false)
    }
  })

  it('a partial replica: a snapshot whose archive is missing, or a damaged record, is left out of the listing and reported', async () => {
    const copy = await copyRepo('partial')
    const fourth = (await tarSnapshots(copy, { signal: signal() })).find(s => s.tags.includes('dcloud.app=other'))
    expect(fourth).toBeDefined()
    const fourthArchive = (JSON.parse(await readFile(join(copy, 'snapshots', fourth?.id ?? ''), 'utf8')) as { archive: string }).archive
    await rm(join(copy, 'data', fourthArchive.slice(0, 2), fourthArchive))
    const junk = Buffer.from('{"not":"a record"}')
    await writeFile(join(copy, 'snapshots', 'f'.repeat(64)), junk)
    await writeFile(join(copy, 'snapshots', sha256(junk)), junk)

    const skipped: Array<[string, string]> = []
    const listed = await tarSnapshots(copy, { signal: signal(), onSkip: (path, reason) => skipped.push([path, reason]) })
    expect(listed.map(s => s.id)).toEqual((await tarSnapshots(repo, { signal: signal() })).map(s => s.id).filter(id => id !== fourth?.id))
    expect(skipped).toHaveLength(3)
    expect(skipped).toContainEqual([`snapshots/${'f'.repeat(64)}`, 'its content does not match its name (damaged)'])
    expect(skipped).toContainEqual([`snapshots/${sha256(junk)}`, expect.stringMatching(/is not a valid snapshot record \(snapshot\.format: is not "dcloud-tar-snapshot"\)/)])
    expect(skipped).toContainEqual([`snapshots/${fourth?.id ?? ''}`, expect.stringMatching(/its archive data\/.* is missing or incomplete \(a partial replica\?\)/)])
    const err = await tarRestore(copy, fourth?.id ?? '', join(tmp, 'never-2'), { signal: signal() }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(RepoCorruptError)
    expect((err as Error).message).toMatch(/is missing or incomplete/)
    expect((err as UserError).hint).toMatch(/pull the app's snapshots from a peer again/)
    expect(existsSync(join(tmp, 'never-2'))).toBe(false)

    // A replica with only the directories that held files (what a pull makes) still lists.
    const bare = join(tmp, 'copies', 'bare')
    await mkdir(bare)
    await cp(join(repo, 'config'), join(bare, 'config'))
    expect(await tarSnapshots(bare, { signal: signal() })).toEqual([])
  })

  it('forget removes records, then only the archives no remaining snapshot uses', async () => {
    const copy = await copyRepo('forget')
    const all = await tarSnapshots(copy, { signal: signal() })
    const archiveOf = async (id: string): Promise<string> => (JSON.parse(await readFile(join(copy, 'snapshots', id), 'utf8')) as { archive: string }).archive
    const shared = await archiveOf(first.snapshot.id)
    const sharers: string[] = []
    for (const s of all) if (await archiveOf(s.id) === shared) sharers.push(s.id)
    expect(sharers).toHaveLength(2)

    await expect(tarForget(copy, [first.snapshot.shortId, '0000000000'], { signal: signal() })).rejects.toBeInstanceOf(SnapshotNotFoundError)
    expect(await tarSnapshots(copy, { signal: signal() })).toHaveLength(all.length)

    const r1 = await tarForget(copy, [first.snapshot.shortId], { signal: signal() })
    expect(r1).toEqual({ removed: [first.snapshot.id], archivesRemoved: [] })
    expect(existsSync(join(copy, 'data', shared.slice(0, 2), shared))).toBe(true)
    const r2 = await tarForget(copy, [sharers[1] as string], { signal: signal() })
    expect(r2).toEqual({ removed: [sharers[1]], archivesRemoved: [`data/${shared.slice(0, 2)}/${shared}`] })
    expect(existsSync(join(copy, 'data', shared.slice(0, 2), shared))).toBe(false)
    const left = await tarSnapshots(copy, { signal: signal() })
    expect(left.map(s => s.id)).toEqual(all.map(s => s.id).filter(id => !sharers.includes(id)))
    // The others still restore.
    const third = left.find(s => s.tags.includes('dcloud.gen=2')) as { id: string, tree: string }
    await tarRestore(copy, third.id, join(tmp, 'after-forget'), { signal: signal() })
    expect(await tarTreeDigest(join(tmp, 'after-forget'), NAMES, { signal: signal() })).toBe(third.tree)
  })

  it('replicates as repo-sync does: every listed file is named by its SHA-256, and a copy of the listed files is the same repository', async () => {
    const files = await listRepoFiles(repo)
    expect(files.map(f => f.path)).toContain('config')
    expect(files.filter(f => f.path.startsWith('data/')).length).toBeGreaterThanOrEqual(3)
    expect(files.filter(f => f.path.startsWith('snapshots/')).length).toBe(4)
    for (const f of files) {
      const p = parseRepoPath(f.path)
      expect(p, f.path).not.toBeNull()
      const bytes = await readFile(join(repo, f.path))
      expect(bytes.length).toBe(f.size)
      if (p?.kind === 'config') continue
      expect(['data', 'snapshots']).toContain(p?.kind)
      expect(sha256(bytes), f.path).toBe(p?.id)
    }
    // Everything in data/ and snapshots/ is listed: nothing the replica needs is left out.
    const onDisk: string[] = []
    for (const sub of await readdir(join(repo, 'data'))) for (const f of await readdir(join(repo, 'data', sub))) onDisk.push(`data/${sub}/${f}`)
    for (const f of await readdir(join(repo, 'snapshots'))) onDisk.push(`snapshots/${f}`)
    expect(files.map(f => f.path).filter(p => p !== 'config').sort()).toEqual(onDisk.sort())

    const replica = join(tmp, 'replica', 'notes')
    for (const f of files) {
      await mkdir(dirname(join(replica, f.path)), { recursive: true })
      await cp(join(repo, f.path), join(replica, f.path))
    }
    expect(await isTarRepository(replica)).toBe(true)
    expect(await tarSnapshots(replica, { signal: signal() })).toEqual(await tarSnapshots(repo, { signal: signal() }))
    await tarRestore(replica, first.snapshot.id, join(tmp, 'from-replica'), { signal: signal() })
    expect(await describeTree(join(tmp, 'from-replica'), NAMES)).toEqual(await describeTree(within, NAMES))
    // A backup into the replica recreates the directories a copy does not carry.
    await tarBackup(replica, { within, names: NAMES }, { signal: signal() })
    expect((await readdir(replica)).sort()).toEqual(['config', 'data', 'index', 'keys', 'locks', 'snapshots'])
  })

  it('is pulled over a real mesh by repo-sync, and the replica restores the same data', async () => {
    const log = createLogger('test-tar-repo', () => {})
    const key = newClusterKey()
    const make = async (): Promise<Mesh> => {
      const m = await Mesh.create({ privateKey: await generateKeyPair('Ed25519'), clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, peers: [], agentVersion: 'test', log })
      await m.start()
      return m
    }
    const [serverMesh, client] = await Promise.all([make(), make()])
    const server = await serveRepos(serverMesh, { root, log })
    try {
      await client.host.dial(multiaddr(serverMesh.listenAddrs()[0] as string), { signal: AbortSignal.timeout(5000) })
      const dstRoot = join(tmp, 'pulled')
      await mkdir(dstRoot)
      const r = await pullRepo(client, serverMesh.peerId, 'notes', dstRoot, { signal: signal() })
      const files = await listRepoFiles(repo)
      expect(r).toMatchObject({ files: files.length, skipped: 0 })
      expect(await listRepoFiles(join(dstRoot, 'notes'))).toEqual(files)
      expect(await readFile(join(dstRoot, 'notes', 'config'))).toEqual(await readFile(join(repo, 'config')))
      expect(await tarSnapshots(join(dstRoot, 'notes'), { signal: signal() })).toEqual(await tarSnapshots(repo, { signal: signal() }))
      await tarRestore(join(dstRoot, 'notes'), first.snapshot.id, join(tmp, 'from-pull'), { signal: signal() })
      expect(await describeTree(join(tmp, 'from-pull'), NAMES)).toEqual(await describeTree(within, NAMES))

      // A new snapshot: the next pull brings only its record (the archive is the same content).
      await sleep(5)
      await tarBackup(repo, { within, names: NAMES }, { tags: ['dcloud.app=notes'], signal: signal() })
      const again = await pullRepo(client, serverMesh.peerId, 'notes', dstRoot, { signal: signal() })
      expect(again).toMatchObject({ files: 1, skipped: files.length })
    } finally {
      await server.stop().catch(() => {})
      await Promise.all([serverMesh.stop(), client.stop()].map(async p => { await p.catch(() => {}) }))
    }
  })
})
