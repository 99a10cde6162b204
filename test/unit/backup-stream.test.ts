/**
 * Backup files through the API, in process, over a real HTTP server on a Unix
 * socket and real files: the backups directory's path rule, a backup
 * downloaded and uploaded with the CLI's own helpers, and every bad upload
 * (not a backup, no length, truncated, too large for the disk, the disk
 * filling meanwhile) refused with its code, counted, and leaving no file.
 *
 * The routes are the agent's (agent/api/backups.ts); the cluster behind them
 * is reduced to the file side of the Coordinator's calls (the real archive
 * writer, reader and verifier; installing the app is the lab's part:
 * test/lab/big-backup.test.ts).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { connect } from 'node:net'
import { request } from 'node:http'
import { mkdir, mkdtemp, readdir, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { ApiServer } from '../../agent/api/server.ts'
import { backupRoutes, type BackupCluster } from '../../agent/api/backups.ts'
import { BackupFiles, BackupFileExistsError, OutsideBackupsDirError, TEMP_PREFIX } from '../../agent/snapshots/backup-files.ts'
import { readBackupMeta } from '../../agent/snapshots/app-file.ts'
import { extractArchive, verifyArchive, writeArchive } from '../../agent/snapshots/archive.ts'
import { ApiCallError, apiDownload, apiRequest, apiUpload, type ApiTarget } from '../../agent/cli/client.ts'
import { createLogger } from '../../agent/util/log.ts'
import { Progress } from '../../agent/cli/progress.ts'
import type { BackupFileView, RestoreView } from '../../proto/api.ts'
import { mockManifest } from '../builders.ts'

const run = promisify(execFile)
const MiB = 1024 * 1024
const signal = (): AbortSignal => AbortSignal.timeout(60_000)

let base: string
let files: BackupFiles
let server: ApiServer
let target: ApiTarget
let volume: string
const restored: string[] = []

/** The file side of Coordinator.backup / restoreFile, with the real archive code. */
const cluster: BackupCluster = {
  checkRestore: (opts) => { if (opts.name === 'taken') throw new BackupFileExistsError('app taken') },
  backup: async (name, file, sig) => {
    const r = await writeArchive(file, { app: name, manifest: mockManifest(name, { stateful: true }), settings: {}, volumes: [{ name: 'data', dir: volume }], signal: sig })
    return { file: r.file, bytes: r.bytes, snapshot: null, volumes: r.meta.volumes }
  },
  restoreFile: async (file, opts, sig) => {
    const meta = await readBackupMeta(file, sig)
    const out = join(base, `restored-${restored.length}`)
    await extractArchive(file, out, { signal: sig })
    restored.push(out)
    return { name: opts.name ?? meta.app, snapshot: null, revision: 1 }
  }
}

async function listBackups (): Promise<string[]> {
  return (await readdir(files.dir)).sort()
}

/** Sends a raw HTTP request on the socket, `body` chunks with a pause hook in between; returns what came back (or '' if the connection was cut). */
async function rawUpload (headers: string[], chunks: Array<Buffer | (() => Promise<void>)>, end: 'close' | 'wait'): Promise<string> {
  const sock = connect(target.socketPath as string)
  let answer = ''
  sock.on('data', (b: Buffer) => { answer += b.toString() })
  sock.on('error', () => {})
  await new Promise(resolve => sock.once('connect', resolve))
  sock.write(['POST /v1/backups/restore?name=up HTTP/1.1', 'host: agent', ...headers, '', ''].join('\r\n'))
  for (const c of chunks) {
    if (typeof c === 'function') await c()
    else await new Promise(resolve => sock.write(c, resolve))
  }
  if (end === 'close') sock.destroy()
  else await new Promise(resolve => sock.once('close', resolve))
  return answer
}

async function until (check: () => boolean, what: string): Promise<void> {
  const start = Date.now()
  while (!check()) {
    if (Date.now() - start > 10_000) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'dcloud-bstream-'))
  volume = join(base, 'volume')
  await mkdir(join(volume, 'sub'), { recursive: true })
  await writeFile(join(volume, 'big.bin'), randomBytes(3 * MiB))
  await writeFile(join(volume, 'sub', 'small.txt'), 'hello\n')
  files = new BackupFiles(join(base, 'data'))
  await files.start()
  server = new ApiServer({
    socketPath: join(base, 'api.sock'),
    tcp: null,
    token: 't',
    log: createLogger('test', () => {}),
    routes: backupRoutes({ files, cluster: () => cluster })
  })
  await server.start()
  target = { socketPath: join(base, 'api.sock'), describe: 'test' }
})

afterAll(async () => {
  await server.stop()
  await run('umount', [files.dir]).catch(() => {})
  await rm(base, { recursive: true, force: true })
})

describe('the backups directory', () => {
  it('is DATA_DIR/backups, mode 0700, and a start removes temp files left behind', async () => {
    expect(files.dir).toBe(join(base, 'data', 'backups'))
    expect((await stat(files.dir)).mode & 0o777).toBe(0o700)
    await writeFile(join(files.dir, `${TEMP_PREFIX}upload-abc`), 'x')
    await writeFile(join(files.dir, 'kept.tar'), 'x')
    await files.start()
    expect(await listBackups()).toEqual(['kept.tar'])
    await rm(join(files.dir, 'kept.tar'))
  })

  it('reads and writes by path only inside it: .., symlinks leading out and other directories refused', async () => {
    const outside = join(base, 'outside')
    await mkdir(outside)
    await writeFile(join(outside, 'secret.tar'), 'x')
    await writeFile(join(files.dir, 'in.tar'), 'x')
    await mkdir(join(files.dir, 'sub'))
    await writeFile(join(files.dir, 'sub', 'deep.tar'), 'x')
    await symlink(join(outside, 'secret.tar'), join(files.dir, 'link.tar'))
    await symlink(outside, join(files.dir, 'escape'))
    await symlink(join(files.dir, 'in.tar'), join(files.dir, 'inner-link.tar'))
    try {
      expect(await files.existing(join(files.dir, 'in.tar'))).toBe(join(files.dir, 'in.tar'))
      expect(await files.existing(join(files.dir, 'sub', 'deep.tar'))).toBe(join(files.dir, 'sub', 'deep.tar'))
      expect(await files.existing(join(files.dir, 'inner-link.tar'))).toBe(join(files.dir, 'in.tar'))
      for (const bad of [
        join(outside, 'secret.tar'),
        `${files.dir}/../../outside/secret.tar`,
        `${files.dir}/sub/../../data/backups/../../outside/secret.tar`,
        join(files.dir, 'link.tar'),
        join(files.dir, 'escape', 'secret.tar'),
        '/etc/passwd',
        files.dir + '-evil/x.tar'
      ]) {
        await expect(files.existing(bad), bad).rejects.toThrow(OutsideBackupsDirError)
        await expect(files.existing(bad)).rejects.toThrow(`inside this node's backups directory ${files.dir}`)
      }
      await expect(files.existing('relative.tar')).rejects.toThrow(/absolute path/)
      expect(await files.fresh(join(files.dir, 'new.tar'))).toBe(join(files.dir, 'new.tar'))
      await expect(files.fresh(join(files.dir, 'escape', 'new.tar'))).rejects.toThrow(OutsideBackupsDirError)
      await expect(files.fresh(`${files.dir}/../new.tar`)).rejects.toThrow(OutsideBackupsDirError)
      await expect(files.fresh(join(files.dir, 'in.tar'))).rejects.toThrow(BackupFileExistsError)
      // A dangling symlink is a name taken too: nothing is written through it.
      await symlink(join(outside, 'planted'), join(files.dir, 'dangling.tar'))
      await expect(files.fresh(join(files.dir, 'dangling.tar'))).rejects.toThrow(BackupFileExistsError)
    } finally {
      for (const f of await readdir(files.dir)) await rm(join(files.dir, f), { recursive: true, force: true })
    }
  })

  it('answers a path outside with 400 naming the directory, and a backup onto an existing file with 409', async () => {
    const err = await apiRequest('POST', '/v1/backups/restore', { file: '/etc/passwd' }, target).catch(e => e as ApiCallError)
    expect(err).toBeInstanceOf(ApiCallError)
    expect((err as ApiCallError).status).toBe(400)
    expect((err as ApiCallError).message).toContain(files.dir)
    expect((err as ApiCallError).hint).toMatch(/dcloud restore FILE/)
    const inspect = await apiRequest('POST', '/v1/backups/inspect', { file: `${files.dir}/../api.token` }, target).catch(e => e as ApiCallError)
    expect((inspect as ApiCallError).status).toBe(400)
    const made = await apiRequest<BackupFileView>('POST', '/v1/apps/notes/backup', { file: join(files.dir, 'notes.tar') }, target, 60_000)
    expect(made.file).toBe(join(files.dir, 'notes.tar'))
    const again = await apiRequest('POST', '/v1/apps/notes/backup', { file: join(files.dir, 'notes.tar') }, target, 60_000).catch(e => e as ApiCallError)
    expect((again as ApiCallError).status).toBe(409)
    expect((again as ApiCallError).code).toBe('conflict')
    expect((again as ApiCallError).message).toMatch(/already exists; refusing to replace it/)
    // And a file in the directory restores by path.
    const r = await apiRequest<RestoreView>('POST', '/v1/backups/restore', { file: join(files.dir, 'notes.tar'), name: 'bypath' }, target, 60_000)
    expect(r.name).toBe('bypath')
    await rm(join(files.dir, 'notes.tar'))
  })
})

describe('streams', () => {
  afterEach(async () => {
    expect(await listBackups()).toEqual([])
  })

  it('downloads a backup (Content-Length, file name) and uploads it back, with progress, leaving no temp file', async () => {
    const before = { ...files.counters }
    const file = join(base, 'down.dcloud-backup')
    const seen: Array<[number, number | null]> = []
    const got = await apiDownload('/v1/apps/notes/backup', file, { target, progress: (d, t) => { seen.push([d, t]) } })
    expect(got.bytes).toBe((await stat(file)).size)
    expect(got.filename).toMatch(/^notes-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ\.dcloud-backup$/)
    expect(seen.at(-1)).toEqual([got.bytes, got.bytes])
    expect((await verifyArchive(file, { signal: signal() })).app).toBe('notes')
    await expect(apiDownload('/v1/apps/notes/backup', file, { target })).rejects.toThrow(/already exists/)
    expect(files.counters.downloads).toBe(before.downloads + 1)

    const sent: number[] = []
    const up = await apiUpload<RestoreView>('/v1/backups/restore?name=copy', file, { target, progress: (d) => { sent.push(d) } })
    expect(up.answer).toMatchObject({ name: 'copy', uploaded: got.bytes })
    expect(sent.at(-1)).toBe(got.bytes)
    expect(files.counters.uploads).toBe(before.uploads + 1)
    const out = restored.at(-1) as string
    expect((await stat(join(out, 'data', 'big.bin'))).size).toBe(3 * MiB)
  })

  it('refuses a body that is not a backup with 400 from the verifier', async () => {
    const before = files.counters.uploadsRefused
    const junk = join(base, 'junk.bin')
    await writeFile(junk, randomBytes(200_000))
    const err = await apiUpload('/v1/backups/restore?name=junk', junk, { target }).catch(e => e as ApiCallError)
    expect(err).toBeInstanceOf(ApiCallError)
    expect((err as ApiCallError).status).toBe(400)
    expect((err as ApiCallError).message).toMatch(/not a dcloud backup/)
    expect(files.counters.uploadsRefused).toBe(before + 1)
  })

  it('refuses a name taken before reading the body, and an upload without a length with 411', async () => {
    const file = join(base, 'down.dcloud-backup')
    const taken = await apiUpload('/v1/backups/restore?name=taken', file, { target }).catch(e => e as ApiCallError)
    expect(taken).toBeInstanceOf(ApiCallError)
    expect((taken as ApiCallError).status).toBe(409)
    const answer = await new Promise<{ status: number, body: string }>((resolve, reject) => {
      const req = request({ socketPath: target.socketPath, path: '/v1/backups/restore?name=x', method: 'POST', headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } }, (res) => {
        let body = ''
        res.on('data', (b: Buffer) => { body += b.toString() })
        res.on('end', () => { resolve({ status: res.statusCode ?? 0, body }) })
      })
      req.on('error', reject)
      req.write(randomBytes(1000))
      req.end()
    })
    expect(answer.status).toBe(411)
    expect(JSON.parse(answer.body)).toMatchObject({ error: { code: 'length_required' } })
    const wrongType = await apiRequest('POST', '/v1/backups/restore', 'x', target).catch(e => e as ApiCallError)
    expect(wrongType).toBeInstanceOf(ApiCallError)
  })

  it('a truncated upload (fewer bytes than Content-Length, then the connection closes) restores nothing and leaves no file', async () => {
    const before = files.counters.uploadsRefused
    const file = join(base, 'down.dcloud-backup')
    const size = (await stat(file)).size
    const { readFile } = await import('node:fs/promises')
    const bytes = await readFile(file)
    const n = restored.length
    await rawUpload(['content-type: application/octet-stream', `content-length: ${size}`], [bytes.subarray(0, Math.floor(size / 2))], 'close')
    await until(() => files.counters.uploadsRefused === before + 1, 'the upload to be counted as refused')
    expect(restored.length).toBe(n)
  })
})

describe('a full disk', () => {
  beforeAll(async () => {
    await run('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0700', 'tmpfs', files.dir])
  })
  afterAll(async () => {
    await run('umount', [files.dir])
  })

  it('refuses an upload larger than the room left with 507 before reading it', async () => {
    const before = files.counters.uploadsRefused
    const big = join(base, 'big.bin')
    await writeFile(big, '')
    await truncate(big, 64 * MiB)
    const started = Date.now()
    const err = await apiUpload('/v1/backups/restore?name=big', big, { target }).catch(e => e as ApiCallError)
    expect(err).toBeInstanceOf(ApiCallError)
    expect((err as ApiCallError).status).toBe(507)
    expect((err as ApiCallError).code).toBe('insufficient_storage')
    expect((err as ApiCallError).message).toContain(files.dir)
    expect(Date.now() - started).toBeLessThan(5000)
    expect(files.counters.uploadsRefused).toBe(before + 1)
    expect(await listBackups()).toEqual([])
  })

  it('answers 507 when the disk fills during the upload, and removes what it wrote', async () => {
    const before = files.counters.uploadsRefused
    const length = 6 * MiB
    const filler = join(files.dir, 'filler')
    const answer = await rawUpload(['content-type: application/octet-stream', `content-length: ${length}`], [
      randomBytes(MiB),
      async () => { await writeFile(filler, Buffer.alloc(5 * MiB)) },
      randomBytes(5 * MiB)
    ], 'wait')
    expect(answer).toMatch(/^HTTP\/1\.1 507/)
    expect(answer).toMatch(/no space left on the disk holding/)
    expect(files.counters.uploadsRefused).toBe(before + 1)
    expect(await listBackups()).toEqual(['filler'])
    await rm(filler)
  })
})

describe('the CLI progress line', () => {
  const run = (tty: boolean): string[] => {
    let t = 0
    const out: string[] = []
    const p = new Progress('notes: downloading', { out: { write: (s: string) => out.push(s) }, tty, now: () => t })
    for (let i = 1; i <= 40; i++) { t = i * 100; p.update(i * 25 * MiB, 1000 * MiB) }
    const r = p.finish()
    expect(r).toEqual({ bytes: 1000 * MiB, seconds: 4, bytesPerSecond: 250 * MiB })
    return out
  }

  it('prints a line a second without a terminal: bytes of total, percent, rate; then the total time', () => {
    const out = run(false)
    expect(out).toEqual([
      'notes: downloading: 250 MiB of 1000 MiB (25%), 250 MiB/s\n',
      'notes: downloading: 500 MiB of 1000 MiB (50%), 250 MiB/s\n',
      'notes: downloading: 750 MiB of 1000 MiB (75%), 250 MiB/s\n',
      'notes: downloading: 1000 MiB of 1000 MiB (100%), 250 MiB/s\n',
      'notes: downloading: 1000 MiB of 1000 MiB (100%) in 4.0 s, 250 MiB/s\n'
    ])
  })

  it('rewrites one line on a terminal, a few times a second', () => {
    const out = run(true)
    expect(out.length).toBe(21)
    expect(out.every(s => s.startsWith('\r\x1b[K'))).toBe(true)
    expect(out.at(-1)).toMatch(/\(100%\) in 4\.0 s, 250 MiB\/s\n$/)
  })
})
