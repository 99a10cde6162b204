/**
 * The restic wrapper against the real restic (Debian's, 0.14): repositories in
 * temporary directories, a few MB of data. Proves that what we write is a plain
 * restic repository the ordinary `restic` command lists and restores.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, chown, cp, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  DiskFullError, RepoCorruptError, RepoExistsError, RepoMissingError, ResticMissingError, SnapshotNotFoundError, WrongPasswordError,
  backup, check, forget, initRepo, newPasswordFile, prune, restore, snapshots, volumeTags,
  type BackupProgress, type ResticRepo
} from '../../agent/snapshots/restic.ts'
import { listingDigest } from '../../agent/snapshots/tree.ts'
import { applyIncrement } from '../../agent/snapshots/increment.ts'
import { restoreAsIs } from '../../agent/snapshots/restic.ts'
import { UserError } from '../../agent/util/errors.ts'
import { need } from './need.ts'

const signal = (): AbortSignal => AbortSignal.timeout(60_000)
let base: string
let repo: ResticRepo
let source: string

/** Plain restic, as a user would run it: only the password file in the environment. */
async function plainRestic (args: string[], passwordFile = repo.passwordFile): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    execFile('restic', ['--cache-dir', join(base, 'plain-cache'), ...args], { env: { PATH: process.env.PATH, HOME: base, RESTIC_PASSWORD_FILE: passwordFile }, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : Number((err as { code?: unknown }).code ?? 1), stdout, stderr })
    })
  })
}

async function fillSource (dir: string): Promise<void> {
  await mkdir(join(dir, 'db', 'base'), { recursive: true })
  await writeFile(join(dir, 'db', 'base', 'table1'), randomBytes(1024 * 1024))
  await writeFile(join(dir, 'db', 'base', 'table2'), randomBytes(512 * 1024))
  await writeFile(join(dir, 'PG_VERSION'), '16\n')
  await writeFile(join(dir, 'settings.conf'), 'max_connections = 10\n')
  await symlink('db/base/table1', join(dir, 'current'))
  // A database's data directory: its owner and mode matter (postgres refuses to start otherwise).
  await chmod(dir, 0o750)
  if (process.getuid?.() === 0) await chown(dir, 999, 999)
}

beforeAll(async () => {
  await need(['restic'])
  base = await mkdtemp(join(tmpdir(), 'dcloud-restic-'))
  const passwordFile = join(base, 'restic.pw')
  await newPasswordFile(passwordFile)
  repo = { repo: join(base, 'repo'), passwordFile, cacheDir: join(base, 'cache') }
  source = join(base, 'dcloud-notes-data', '_data')
  await mkdir(source, { recursive: true })
  await fillSource(source)
})

afterAll(async () => {
  if (base !== undefined) await rm(base, { recursive: true, force: true })
})

describe('restic wrapper', () => {
  let first: Awaited<ReturnType<typeof backup>>
  let second: Awaited<ReturnType<typeof backup>>

  it('creates a repository with a private password file, and refuses to create it twice', async () => {
    expect((await stat(repo.passwordFile)).mode & 0o777).toBe(0o600)
    await initRepo(repo, { signal: signal() })
    expect((await readdir(repo.repo)).sort()).toEqual(expect.arrayContaining(['config', 'data', 'index', 'keys', 'locks', 'snapshots']))
    await expect(initRepo(repo, { signal: signal() })).rejects.toThrow(RepoExistsError)
    await expect(newPasswordFile(repo.passwordFile)).rejects.toThrow(/already exists/)
  })

  it('backs up a directory with progress, then again incrementally adding little', async () => {
    const progress: BackupProgress[] = []
    first = await backup(repo, { dir: source }, { tags: volumeTags('notes', 'data'), host: 'node-a', signal: signal(), progress: p => progress.push(p) })
    expect(first.snapshot.id).toMatch(/^[0-9a-f]{64}$/)
    expect(first.snapshot.id.startsWith(first.snapshotId)).toBe(true)
    expect(first.snapshot.tags).toEqual(['dcloud.app=notes', 'dcloud.volume=data'])
    expect(first.snapshot.hostname).toBe('node-a')
    expect(first.snapshot.paths).toEqual([source])
    expect(first.filesNew).toBe(4)
    expect(first.dataAdded).toBeGreaterThan(1.5 * 1024 * 1024)
    expect(progress.length).toBeGreaterThan(0)
    for (const p of progress) {
      expect(p.percent).toBeGreaterThanOrEqual(0)
      expect(p.percent).toBeLessThanOrEqual(100)
    }

    await writeFile(join(source, 'settings.conf'), 'max_connections = 20\n')
    second = await backup(repo, { dir: source }, { tags: volumeTags('notes', 'data'), host: 'node-a', signal: signal() })
    expect(second.snapshot.parent).toBe(first.snapshot.id)
    expect(second.filesChanged).toBe(1)
    expect(second.filesUnmodified).toBe(3)
    expect(second.dataAdded).toBeLessThan(first.dataAdded / 50)
  })

  it('lists snapshots by tags', async () => {
    const other = join(base, 'dcloud-wiki-db', '_data')
    await mkdir(other, { recursive: true })
    await writeFile(join(other, 'x'), 'wiki\n')
    await backup(repo, { dir: other }, { tags: volumeTags('wiki', 'db'), host: 'node-a', signal: signal() })

    const notes = await snapshots(repo, { tags: volumeTags('notes', 'data'), signal: signal() })
    expect(notes.map(s => s.id)).toEqual([first.snapshot.id, second.snapshot.id])
    expect(await snapshots(repo, { tags: ['dcloud.app=wiki'], signal: signal() })).toHaveLength(1)
    // Every tag must match, not any.
    expect(await snapshots(repo, { tags: ['dcloud.app=wiki', 'dcloud.volume=data'], signal: signal() })).toHaveLength(0)
    expect(await snapshots(repo, { signal: signal() })).toHaveLength(3)
    expect(await snapshots(repo, { host: 'node-b', signal: signal() })).toHaveLength(0)
  })

  it('restores a snapshot as the directory it was, owner and mode included, with equal checksums', async () => {
    const target = join(base, 'restored-1')
    await restore(repo, second.snapshot.id, target, { signal: signal() })
    expect(await listingDigest(target, { signal: signal() })).toEqual(await listingDigest(source, { signal: signal() }))
    const st = await stat(target)
    expect(st.mode & 0o777).toBe(0o750)
    if (process.getuid?.() === 0) expect(st.uid).toBe(999)
    expect(await readFile(join(target, 'settings.conf'), 'utf8')).toBe('max_connections = 20\n')

    // The older snapshot still has the older file; an empty existing directory is a fine target.
    const older = join(base, 'restored-0')
    await mkdir(older)
    await restore(repo, first.snapshot.shortId, older, { signal: signal(), verify: true })
    expect(await readFile(join(older, 'settings.conf'), 'utf8')).toBe('max_connections = 10\n')
  })

  it('refuses to restore over a non-empty directory and leaves nothing behind', async () => {
    const target = join(base, 'full')
    await mkdir(target)
    await writeFile(join(target, 'keep'), 'mine')
    const before = await readdir(base)
    await expect(restore(repo, second.snapshot.id, target, { signal: signal() })).rejects.toThrow(/is not empty; refusing to restore over it/)
    await expect(restore(repo, 'deadbeef', join(base, 'nope'), { signal: signal() })).rejects.toThrow(SnapshotNotFoundError)
    await expect(restore(repo, '--help', join(base, 'nope'), { signal: signal() })).rejects.toThrow(/is not a snapshot id/)
    expect(await readdir(base)).toEqual(before)
    expect(await readdir(target)).toEqual(['keep'])
  })

  it('makes a plain restic repository: `restic snapshots --json` and `restic restore` read it', async () => {
    const listed = await plainRestic(['-r', repo.repo, 'snapshots', '--json', '--tag', 'dcloud.app=notes'])
    expect(listed.code).toBe(0)
    const ids = (JSON.parse(listed.stdout) as Array<{ id: string }>).map(s => s.id)
    expect(ids).toEqual([first.snapshot.id, second.snapshot.id])

    const target = join(base, 'plain-restore')
    const restored = await plainRestic(['-r', repo.repo, 'restore', second.snapshot.id, '--target', target])
    expect(restored.code, restored.stderr).toBe(0)
    // Plain restic puts the directory itself under the target.
    expect(await readdir(target)).toEqual(['_data'])
    expect(await listingDigest(join(target, '_data'), { signal: signal() })).toEqual(await listingDigest(source, { signal: signal() }))
  })

  it('says so clearly when the password is wrong, the repository missing, or restic absent', async () => {
    const wrong = join(base, 'wrong.pw')
    await writeFile(wrong, 'not the password\n', { mode: 0o600 })
    const err = await snapshots({ ...repo, passwordFile: wrong }, { signal: signal() }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(WrongPasswordError)
    expect((err as UserError).message).toBe(`cannot list snapshots: the password in ${wrong} does not open the repository ${repo.repo}`)
    expect((err as UserError).hint).toMatch(/password file the repository was created with/)
    expect((err as UserError).exitCode).toBe(77)

    await expect(snapshots({ ...repo, repo: join(base, 'no-repo') }, { signal: signal() })).rejects.toThrow(RepoMissingError)
    await expect(snapshots({ ...repo, passwordFile: join(base, 'no.pw') }, { signal: signal() })).rejects.toThrow(/restic password file .* does not exist/)
    const missing = await snapshots({ ...repo, binary: join(base, 'no-restic') }, { signal: signal() }).catch((e: unknown) => e)
    expect(missing).toBeInstanceOf(ResticMissingError)
    expect((missing as UserError).hint).toBe('install it: apt-get install restic')
  })

  it('says a damaged repository is damaged', async () => {
    const garbled = join(base, 'repo-garbled')
    await cp(repo.repo, garbled, { recursive: true })
    await chmod(join(garbled, 'config'), 0o600)
    await writeFile(join(garbled, 'config'), 'garbage\n')
    await expect(snapshots({ ...repo, repo: garbled }, { signal: signal() })).rejects.toThrow(RepoCorruptError)

    const damaged = join(base, 'repo-damaged')
    await cp(repo.repo, damaged, { recursive: true })
    for (const sub of await readdir(join(damaged, 'data'))) {
      for (const pack of await readdir(join(damaged, 'data', sub))) {
        const p = join(damaged, 'data', sub, pack)
        await chmod(p, 0o600)
        const bytes = await readFile(p)
        const mid = Math.floor(bytes.length / 2)
        bytes[mid] = (bytes[mid] as number) ^ 0xff
        await writeFile(p, bytes)
      }
    }
    const err = await check({ ...repo, repo: damaged }, { signal: signal(), readData: true }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(RepoCorruptError)
    expect((err as UserError).message).toMatch(/is damaged: .*ciphertext verification failed/)
    expect((err as UserError).hint).toMatch(/check --read-data/)
    const before = await readdir(base)
    await expect(restore({ ...repo, repo: damaged }, second.snapshot.id, join(base, 'from-damaged'), { signal: signal() })).rejects.toThrow(RepoCorruptError)
    expect(await readdir(base)).toEqual(before)
  })

  it('says the disk is full when it is', async (ctx) => {
    if (process.getuid?.() !== 0) ctx.skip()
    const mnt = join(base, 'small')
    await mkdir(mnt)
    const mount = async (args: string[]): Promise<void> => { await new Promise<void>((resolve, reject) => { execFile(args[0] as string, args.slice(1), (err) => { if (err === null) resolve(); else reject(err) }) }) }
    await mount(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt])
    try {
      const small = { ...repo, repo: join(mnt, 'repo') }
      await initRepo(small, { signal: signal() })
      const err = await backup(small, { dir: source }, { signal: signal() }).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(DiskFullError)
      expect((err as UserError).hint).toMatch(/free space/)
    } finally {
      await mount(['umount', mnt])
    }
  })

  it('stops restic on abort and leaves the repository consistent', async () => {
    const big = join(base, 'big')
    await mkdir(big)
    for (let i = 0; i < 4; i++) await writeFile(join(big, `f${i}`), randomBytes(1024 * 1024))
    const before = await snapshots(repo, { signal: signal() })
    const controller = new AbortController()
    const progress: BackupProgress[] = []
    let sawProgress = false
    const started = Date.now()
    // Throttled to 256 KiB/s, 4 MB takes ~16 s: the abort lands in the middle.
    const run = backup(repo, { dir: big }, {
      signal: controller.signal,
      limitUploadKiB: 256,
      progress: (p) => {
        progress.push(p)
        if (!sawProgress) setTimeout(() => { controller.abort() }, 1500)
        sawProgress = true
      }
    })
    await expect(run).rejects.toThrow(/aborted/i)
    expect(Date.now() - started).toBeLessThan(10_000)
    expect(sawProgress).toBe(true)
    expect(progress.some(p => p.bytesTotal === 4 * 1024 * 1024 && p.bytesDone > 0 && p.filesTotal === 4)).toBe(true)
    expect(await readdir(join(repo.repo, 'locks'))).toEqual([])
    expect((await snapshots(repo, { signal: signal() })).map(s => s.id)).toEqual(before.map(s => s.id))
    await check(repo, { signal: signal() })
    const plain = await plainRestic(['-r', repo.repo, 'check'])
    expect(plain.code, plain.stderr).toBe(0)
    // The repository takes the next backup at once: no lock left behind.
    const again = await backup(repo, { dir: big }, { signal: signal() })
    expect(again.filesNew).toBe(4)
  })

  it('forgets and prunes only when asked, then still checks clean', async () => {
    const all = await snapshots(repo, { signal: signal() })
    expect(all.length).toBeGreaterThanOrEqual(4)
    const { removed } = await forget(repo, { ids: [first.snapshot.shortId] }, { signal: signal() })
    expect(removed).toEqual([first.snapshot.id])
    await expect(forget(repo, { ids: [first.snapshot.id] }, { signal: signal() })).rejects.toThrow(SnapshotNotFoundError)
    await backup(repo, { dir: source }, { tags: volumeTags('notes', 'data'), host: 'node-a', signal: signal() })
    const policy = await forget(repo, { keep: { last: 1 }, tags: volumeTags('notes', 'data') }, { signal: signal() })
    expect(policy.removed).toEqual([second.snapshot.id])
    await expect(forget(repo, { keep: {} }, { signal: signal() })).rejects.toThrow(/must keep something/)
    expect(await snapshots(repo, { tags: volumeTags('notes', 'data'), signal: signal() })).toHaveLength(1)
    await prune(repo, { signal: signal() })
    await check(repo, { signal: signal(), readData: true })
  })

  it('backs up paths with their full names, and restores them so', async () => {
    const etc = join(base, 'etc-like')
    await mkdir(etc)
    await writeFile(join(etc, 'a.conf'), 'a\n')
    await writeFile(join(etc, 'b.conf'), 'b\n')
    const r = await backup(repo, { paths: [join(etc, 'a.conf'), join(etc, 'b.conf')] }, { tags: ['paths-test'], signal: signal() })
    expect(r.snapshot.paths).toEqual([join(etc, 'a.conf'), join(etc, 'b.conf')])
    const target = join(base, 'paths-restored')
    await restore(repo, r.snapshot.id, target, { signal: signal() })
    expect(await readFile(join(target, etc, 'b.conf'), 'utf8')).toBe('b\n')
  })

  it('gives restic the password only as a file, and none of our own RESTIC_* variables', async () => {
    const fake = join(base, 'fake-restic')
    const dump = join(base, 'fake-dump')
    await writeFile(fake, `#!/bin/sh\nprintf '%s\\n' "$@" > ${dump}.argv\nenv > ${dump}.env\necho '[]'\n`, { mode: 0o755 })
    process.env.RESTIC_PASSWORD = 'leaked-password'
    process.env.RESTIC_REPOSITORY = '/somewhere/else'
    try {
      expect(await snapshots({ ...repo, repo: 'relative/repo', binary: fake }, { tags: ['a', 'b'], signal: signal() })).toEqual([])
    } finally {
      delete process.env.RESTIC_PASSWORD
      delete process.env.RESTIC_REPOSITORY
    }
    const argv = (await readFile(`${dump}.argv`, 'utf8')).trim().split('\n')
    expect(argv).toEqual(['--repo', join(process.cwd(), 'relative/repo'), '--cache-dir', repo.cacheDir, 'snapshots', '--json', '--tag', 'a,b'])
    const env = await readFile(`${dump}.env`, 'utf8')
    expect(env).toContain(`RESTIC_PASSWORD_FILE=${repo.passwordFile}\n`)
    expect(env).not.toMatch(/RESTIC_PASSWORD=|RESTIC_REPOSITORY=|leaked-password/)
    expect(argv.join(' ')).not.toContain(await readFile(repo.passwordFile, 'utf8').then(t => t.trim()))
  })

  it('refuses tags and hosts restic would misread', async () => {
    await expect(backup(repo, { dir: source }, { tags: ['a,b'], signal: signal() })).rejects.toMatchObject({ message: 'snapshot tag "a,b" is not allowed', hint: expect.stringMatching(/no comma/) })
    await expect(backup(repo, { dir: source }, { host: '--repo=/tmp', signal: signal() })).rejects.toThrow(/host .* is not allowed/)
    await expect(backup(repo, { dir: join(base, 'nothing-here') }, { signal: signal() })).rejects.toThrow(/does not exist/)
  })

  it('brings a staged restore up to a later snapshot by its increment alone: added, removed, changed, retyped, odd names, directory modes', async () => {
    const within = join(base, 'inc-src')
    const vol = join(within, 'dcloud-inc-data', '_data')
    await mkdir(join(vol, 'sub', 'deep'), { recursive: true })
    await writeFile(join(vol, 'big'), randomBytes(3 * 1024 * 1024))
    await writeFile(join(vol, 'gone'), 'removed later\n')
    await mkdir(join(vol, 'gonedir'))
    await writeFile(join(vol, 'gonedir', 'f'), 'x')
    await writeFile(join(vol, 'sub', 'x'), 'hello\n')
    await writeFile(join(vol, 'becomes-dir'), 'a file first\n')
    await writeFile(join(vol, 'sub', 'deep', 'keep'), randomBytes(4096))
    const host = 'inc-host'
    const tags = ['dcloud.app=inc']
    const first = await backup(repo, { within, names: ['dcloud-inc-data'] }, { tags, host, signal: signal() })
    const stage = join(base, 'inc-stage')
    await restoreAsIs(repo, first.snapshot.id, stage, { signal: signal() })

    // The increment: every kind of change restic's diff reports.
    const fh = await (await import('node:fs/promises')).open(join(vol, 'big'), 'r+')
    await fh.write(Buffer.alloc(100_000, 7), 0, 100_000, 1024 * 1024)
    await fh.close()
    await rm(join(vol, 'gone'))
    await rm(join(vol, 'gonedir'), { recursive: true })
    await writeFile(join(vol, 'sub', 'x'), 'hi\n') // shorter: the old bytes must not linger
    await rm(join(vol, 'becomes-dir'))
    await mkdir(join(vol, 'becomes-dir'))
    await writeFile(join(vol, 'becomes-dir', 'inside'), 'now a directory\n')
    await writeFile(join(vol, 'we*rd [name]?'), 'glob characters in a name\n')
    await mkdir(join(vol, 'newdir', 'nested'), { recursive: true })
    await writeFile(join(vol, 'newdir', 'nested', 'n'), 'new\n')
    await chmod(join(vol, 'sub', 'deep'), 0o700)
    await chmod(vol, 0o770)
    const second = await backup(repo, { within, names: ['dcloud-inc-data'] }, { tags, host, signal: signal() })

    const changes = await applyIncrement(repo, first.snapshot.id, second.snapshot.id, stage, { signal: signal(), maxPaths: 100 })
    expect(changes).toBeGreaterThanOrEqual(8)
    const fresh = join(base, 'inc-fresh')
    await restoreAsIs(repo, second.snapshot.id, fresh, { signal: signal() })
    const digest = async (d: string): Promise<string> => (await listingDigest(join(d, 'dcloud-inc-data'), { signal: signal() })).sha256
    const [a, b, c] = [await digest(stage), await digest(fresh), await digest(within)]
    expect(a).toBe(b)
    expect(a).toBe(c)
    expect((await stat(join(stage, 'dcloud-inc-data', '_data', 'sub', 'deep'))).mode & 0o777).toBe(0o700)
    expect((await stat(join(stage, 'dcloud-inc-data', '_data'))).mode & 0o777).toBe(0o770)

    // More changes than may go on a command line: it says so, and the caller restores in full.
    await writeFile(join(vol, 'another'), 'x')
    await writeFile(join(vol, 'and-another'), 'y')
    const third = await backup(repo, { within, names: ['dcloud-inc-data'] }, { tags, host, signal: signal() })
    await expect(applyIncrement(repo, second.snapshot.id, third.snapshot.id, stage, { signal: signal(), maxPaths: 1 })).rejects.toThrow(/more than the 1 restored one by one/)
  })
})
