import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, chown, link, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import {
  FORMAT_VERSION, META_FILE, extractArchive, readArchiveMeta, verifyArchive, writeArchive,
  type ArchiveProgress, type WriteArchiveOptions
} from '../../agent/snapshots/archive.ts'
import { listingDigest } from '../../agent/snapshots/tree.ts'
import { UserError } from '../../agent/util/errors.ts'
import { mockManifest } from '../builders.ts'

const IS_ROOT = process.getuid?.() === 0
const signal = (): AbortSignal => AbortSignal.timeout(30_000)
let base: string

function manifest (): WriteArchiveOptions['manifest'] {
  const m = mockManifest('notes', { stateful: true })
  m.compose.volumes.config = { labels: {} }
  return m
}

async function sh (cmd: string, args: string[]): Promise<string> {
  return await new Promise((resolve, reject) => {
    execFile(cmd, args, (err, stdout, stderr) => { if (err === null) resolve(stdout); else reject(new Error(`${cmd} ${args.join(' ')}: ${stderr}`)) })
  })
}

/** A volume with what real ones hold: nested directories, empty files, long and non-ASCII names, links of both kinds. */
async function makeVolume (dir: string): Promise<void> {
  await mkdir(join(dir, 'db', 'base', 'empty-dir'), { recursive: true })
  await writeFile(join(dir, 'db', 'base', 'table'), randomBytes(700_000))
  await writeFile(join(dir, 'db', 'empty'), '')
  await writeFile(join(dir, 'PG_VERSION'), '16\n')
  await writeFile(join(dir, 'ünïcødé ✓.txt'), 'unicode name\n')
  const long = join(dir, 'd'.repeat(90), 'e'.repeat(90))
  await mkdir(long, { recursive: true })
  await writeFile(join(long, `${'f'.repeat(200)}.bin`), randomBytes(1000))
  await symlink('db/base/table', join(dir, 'current'))
  await symlink('../PG_VERSION', join(dir, 'db', 'version-link'))
  await symlink('missing-on-purpose', join(dir, 'dangling'))
  await link(join(dir, 'PG_VERSION'), join(dir, 'db', 'PG_VERSION.hardlink'))
  await chmod(join(dir, 'db', 'base'), 0o750)
  await chmod(join(dir, 'PG_VERSION'), 0o640)
  await chmod(dir, 0o700)
  if (IS_ROOT) {
    await chown(dir, 999, 999)
    await chown(join(dir, 'db', 'base', 'table'), 999, 998)
  }
}

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'dcloud-archive-'))
})

afterAll(async () => {
  await rm(base, { recursive: true, force: true })
})

describe('whole-app backup files', () => {
  it('round-trips two volumes: equal listings, owners, modes, links; metadata as given', async () => {
    const data = join(base, 'rt', 'data')
    const config = join(base, 'rt', 'config')
    await makeVolume(data)
    await mkdir(config, { recursive: true })
    await writeFile(join(config, 'app.ini'), '[app]\nname = notes\n')
    const progress: ArchiveProgress[] = []
    const file = join(base, 'rt', 'notes.dcloud-backup')
    const now = new Date('2025-01-02T03:04:05.000Z')
    const written = await writeArchive(file, {
      app: 'notes', manifest: manifest(), settings: { variables: { ADMIN: 'ann' }, pinnedNode: null },
      volumes: [{ name: 'data', dir: data }, { name: 'config', dir: config }], signal: signal(), progress: p => progress.push(p), now
    })
    expect(written.bytes).toBe((await stat(file)).size)
    expect(written.skipped).toEqual([])
    expect((await readdir(join(base, 'rt'))).sort()).toEqual(['config', 'data', 'notes.dcloud-backup'])
    const last = progress[progress.length - 1]
    expect(last).toMatchObject({ phase: 'write', volume: 'config', bytesDone: last?.bytesTotal })
    expect(progress.filter(p => p.phase === 'scan')).toHaveLength(2)

    const meta = await readArchiveMeta(file, { signal: signal() })
    expect(meta).toEqual(written.meta)
    expect(meta).toMatchObject({ format: 'dcloud-backup', version: FORMAT_VERSION, app: 'notes', createdAt: '2025-01-02T03:04:05.000Z', settings: { variables: { ADMIN: 'ann' }, pinnedNode: null } })
    expect(meta.manifest).toEqual(manifest())
    const digest = await listingDigest(data, { signal: signal() })
    expect(meta.volumes[0]).toEqual({ name: 'data', entries: digest.entries, bytes: digest.bytes, listingSha256: digest.sha256 })
    expect(await verifyArchive(file, { signal: signal() })).toEqual(meta)

    const target = join(base, 'rt-restored')
    const { dirs } = await extractArchive(file, target, { signal: signal() })
    expect(dirs).toEqual({ data: join(target, 'data'), config: join(target, 'config') })
    expect(await listingDigest(dirs.data as string, { signal: signal() })).toEqual(digest)
    expect(await listingDigest(dirs.config as string, { signal: signal() })).toEqual(await listingDigest(config, { signal: signal() }))
    expect((await readFile(join(target, 'data', 'db', 'base', 'table'))).equals(await readFile(join(data, 'db', 'base', 'table')))).toBe(true)
    const root = await stat(join(target, 'data'))
    expect(root.mode & 0o7777).toBe(0o700)
    if (IS_ROOT) expect([root.uid, root.gid]).toEqual([999, 999])
    expect((await stat(join(target, 'data', 'db', 'PG_VERSION.hardlink'))).ino).toBe((await stat(join(target, 'data', 'PG_VERSION'))).ino)
    expect((await lstat(join(target, 'data', 'current'))).isSymbolicLink()).toBe(true)
    // Modification times come back too (whole seconds).
    const mt = async (d: string): Promise<number> => Math.floor((await stat(join(d, 'db', 'base', 'table'))).mtimeMs / 1000)
    expect(await mt(join(target, 'data'))).toBe(await mt(data))
  })

  it('writes a standard tar: GNU tar lists it and extracts the same files', async () => {
    const data = join(base, 'gnu', 'data')
    await makeVolume(data)
    const file = join(base, 'gnu', 'backup.tar')
    await writeArchive(file, { app: 'notes', manifest: manifest(), settings: {}, volumes: [{ name: 'data', dir: data }], signal: signal() })
    const listed = (await sh('tar', ['-tf', file])).trim().split('\n')
    expect(listed[0]).toBe(META_FILE)
    expect(listed).toContain(`volumes/data/${'d'.repeat(90)}/${'e'.repeat(90)}/${'f'.repeat(200)}.bin`)
    expect(listed).toContain('volumes/data/ünïcødé ✓.txt')
    const out = join(base, 'gnu', 'out')
    await mkdir(out)
    await sh('tar', ['-xpf', file, '-C', out])
    expect(await listingDigest(join(out, 'volumes', 'data'), { signal: signal() })).toEqual(await listingDigest(data, { signal: signal() }))
  })

  it('reads from a stream as well as from a file', async () => {
    const data = join(base, 'stream', 'data')
    await mkdir(data, { recursive: true })
    await writeFile(join(data, 'x'), 'x')
    const file = join(base, 'stream', 'b.tar')
    await writeArchive(file, { app: 'notes', manifest: manifest(), settings: {}, volumes: [{ name: 'data', dir: data }], signal: signal() })
    const bytes = await readFile(file)
    // Chunks of 7 bytes: no read may assume a header arrives whole.
    const chunks = Array.from({ length: Math.ceil(bytes.length / 7) }, (_, i) => bytes.subarray(i * 7, i * 7 + 7))
    const { meta } = await extractArchive(Readable.from(chunks), join(base, 'stream', 'out'), { signal: signal() })
    expect(meta.app).toBe('notes')
    expect(await readFile(join(base, 'stream', 'out', 'data', 'x'), 'utf8')).toBe('x')
  })

  it('drops setuid and setgid bits of files on extraction', async () => {
    const data = join(base, 'suid', 'data')
    await mkdir(data, { recursive: true })
    await writeFile(join(data, 'tool'), '#!/bin/sh\n')
    await chmod(join(data, 'tool'), 0o6755)
    const file = join(base, 'suid', 'b.tar')
    await writeArchive(file, { app: 'notes', manifest: manifest(), settings: {}, volumes: [{ name: 'data', dir: data }], signal: signal() })
    await extractArchive(file, join(base, 'suid', 'out'), { signal: signal() })
    expect((await stat(join(base, 'suid', 'out', 'data', 'tool'))).mode & 0o7777).toBe(0o755)
  })

  it('skips sockets and fifos, and says so', async () => {
    const data = join(base, 'fifo', 'data')
    await mkdir(data, { recursive: true })
    await writeFile(join(data, 'x'), 'x')
    await sh('mkfifo', [join(data, 'pipe')])
    const written = await writeArchive(join(base, 'fifo', 'b.tar'), { app: 'notes', manifest: manifest(), settings: {}, volumes: [{ name: 'data', dir: data }], signal: signal() })
    expect(written.skipped).toEqual([`${join(data, 'pipe')} (fifo)`])
    expect(written.meta.volumes[0]?.entries).toBe(2)
  })

  it.each([
    ['an absolute symlink', async (d: string) => { await symlink('/etc/passwd', join(d, 'pw')) }, /symlink .*pw points outside the volume \("\/etc\/passwd"\)/],
    ['a symlink climbing out', async (d: string) => { await mkdir(join(d, 'a')); await symlink('../../x', join(d, 'a', 'up')) }, /symlink .*up points outside the volume/],
    ['a symlink escaping through another', async (d: string) => { await mkdir(join(d, 'sub')); await symlink('..', join(d, 'sub', 'up')); await symlink('sub/up/..', join(d, 'esc')) }, /symlink .*esc points outside the volume/]
  ])('refuses to archive a volume with %s, before writing anything', async (_what, make, message) => {
    const dir = await mkdtemp(join(base, 'refuse-'))
    const data = join(dir, 'data')
    await mkdir(data)
    await make(data)
    const err = await writeArchive(join(dir, 'b.tar'), { app: 'notes', manifest: manifest(), settings: {}, volumes: [{ name: 'data', dir: data }], signal: signal() }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(UserError)
    expect((err as Error).message).toMatch(message)
    expect(await readdir(dir)).toEqual(['data'])
  })

  it('refuses a volume the manifest does not declare, and never replaces an existing file', async () => {
    const dir = await mkdtemp(join(base, 'args-'))
    await mkdir(join(dir, 'v'))
    const opts = { app: 'notes', manifest: manifest(), settings: {}, signal: signal() }
    await expect(writeArchive(join(dir, 'b.tar'), { ...opts, volumes: [{ name: 'cache', dir: join(dir, 'v') }] })).rejects.toThrow(/volume cache is not declared by notes's manifest/)
    await writeFile(join(dir, 'b.tar'), 'older backup')
    await expect(writeArchive(join(dir, 'b.tar'), { ...opts, volumes: [{ name: 'data', dir: join(dir, 'v') }] })).rejects.toThrow(/already exists; refusing to replace it/)
    expect(await readFile(join(dir, 'b.tar'), 'utf8')).toBe('older backup')
    await expect(writeArchive(join(dir, 'c.tar'), { ...opts, app: '../x', volumes: [] })).rejects.toThrow(/cannot write a backup: app/)
  })

  it('fails, leaving no file, when a volume changes while it is archived', async () => {
    const dir = await mkdtemp(join(base, 'changed-'))
    const data = join(dir, 'data')
    await mkdir(data)
    await writeFile(join(data, 'a'), 'a')
    const err = await writeArchive(join(dir, 'b.tar'), {
      app: 'notes', manifest: manifest(), settings: {}, volumes: [{ name: 'data', dir: data }], signal: signal(),
      // Between the count and the write, the app writes a file.
      progress: (p) => { if (p.phase === 'scan') void writeFile(join(data, 'b'), 'b') }
    }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(UserError)
    expect((err as UserError).message).toMatch(/volume data changed while it was being archived/)
    expect((err as UserError).hint).toMatch(/stop the app/)
    expect(await readdir(dir)).toEqual(['data'])
  })

  it('stops on abort and leaves no partial file', async () => {
    const dir = await mkdtemp(join(base, 'abort-'))
    const data = join(dir, 'data')
    await mkdir(data)
    for (let i = 0; i < 8; i++) await writeFile(join(data, `f${i}`), randomBytes(512 * 1024))
    const controller = new AbortController()
    const err = await writeArchive(join(dir, 'b.tar'), {
      app: 'notes', manifest: manifest(), settings: {}, volumes: [{ name: 'data', dir: data }], signal: controller.signal,
      progress: (p) => { if (p.phase === 'write') controller.abort() }
    }).catch((e: unknown) => e)
    expect((err as Error).name).toBe('AbortError')
    expect(await readdir(dir)).toEqual(['data'])
  })

  it('extracts only into a new or empty directory', async () => {
    const dir = await mkdtemp(join(base, 'target-'))
    const data = join(dir, 'data')
    await mkdir(data)
    await writeFile(join(data, 'a'), 'a')
    const file = join(dir, 'b.tar')
    await writeArchive(file, { app: 'notes', manifest: manifest(), settings: {}, volumes: [{ name: 'data', dir: data }], signal: signal() })
    await mkdir(join(dir, 'full'))
    await writeFile(join(dir, 'full', 'mine'), 'mine')
    await expect(extractArchive(file, join(dir, 'full'), { signal: signal() })).rejects.toThrow(/is not empty; refusing to restore over it/)
    await mkdir(join(dir, 'empty'))
    await extractArchive(file, join(dir, 'empty'), { signal: signal() })
    expect(await readdir(join(dir, 'empty', 'data'))).toEqual(['a'])
    expect((await readdir(dir)).sort()).toEqual(['b.tar', 'data', 'empty', 'full'])
    await expect(extractArchive(join(dir, 'nope.tar'), join(dir, 'x'), { signal: signal() })).rejects.toThrow(/nope\.tar is not a file/)
  })
})
