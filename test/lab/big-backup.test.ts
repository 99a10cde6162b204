/**
 * A 1 GiB app backed up and restored through the API, from the CLI, on two
 * real lab nodes (lab `tbigbk`): `dcloud backup` downloads the file over TCP
 * with the node's token (as from a laptop), `dcloud restore` uploads it under
 * another name; both print progress, and the restored app's data is the
 * original, byte for byte. Then the real agent's refusals: a path outside the
 * backups directory, a backup onto an existing file, not a backup, no length,
 * a truncated upload, and an upload larger than the disk's room (a tmpfs over
 * the backups directory), each counted in /v1/metrics and leaving nothing.
 *
 * The measured throughputs are printed (console.log) for docs/benchmarks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createHash, randomFillSync } from 'node:crypto'
import { connect } from 'node:net'
import { request } from 'node:http'
import { createReadStream } from 'node:fs'
import { mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { LabHandle, waitFor } from './harness.ts'
import { StatefulKit, sh } from './stateful-kit.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { ApiCallError, apiRequest, apiUpload, type ApiTarget } from '../../agent/cli/client.ts'
import { verifyArchive } from '../../agent/snapshots/archive.ts'
import type { AppView } from '../../proto/api.ts'

const lab = new LabHandle('tbigbk')
const kit = new StatefulKit(lab)
const { dc, dcOk, app } = kit
const BIGVOL = join(PROJECT_ROOT, 'apps', 'examples', 'bigvol')
const MiB = 1024 * 1024
const FILES = 16
const FILE_MB = 64
const TOTAL = FILES * FILE_MB * MiB

let work: string
const sums = new Map<string, string>()

async function mountpoint (node: string, volume: string): Promise<string> {
  const r = await sh('docker', ['-H', `unix://${lab.lab.dockerSocket(node)}`, 'volume', 'inspect', volume, '--format', '{{.Mountpoint}}'])
  if (r.code !== 0) throw new Error(`docker volume inspect ${volume} on ${node}: ${r.stderr}`)
  return r.stdout.trim()
}

/** 1 GiB of random bytes (nothing for compression to take away) in 16 files, each one's sha256 kept. */
async function fill (dir: string): Promise<void> {
  const buf = Buffer.alloc(16 * MiB)
  for (let i = 0; i < FILES; i++) {
    const name = `blob-${String(i).padStart(2, '0')}`
    const h = createHash('sha256')
    const fh = await open(join(dir, name), 'w')
    try {
      for (let done = 0; done < FILE_MB; done += 16) {
        randomFillSync(buf)
        h.update(buf)
        await fh.write(buf)
      }
    } finally { await fh.close() }
    sums.set(name, h.digest('hex'))
  }
}

async function sha256 (file: string): Promise<string> {
  const h = createHash('sha256')
  for await (const c of createReadStream(file, { highWaterMark: 4 * MiB })) h.update(c as Buffer)
  return h.digest('hex')
}

/** Progress lines of a label on stderr, as the CLI prints them without a terminal: one a second. */
function progressLines (stderr: string, label: string): Array<{ percent: number, line: string }> {
  return stderr.split('\n').filter(l => l.includes(`${label}:`) && /\(\d+%\)/.test(l)).map(line => ({ percent: Number(/\((\d+)%\)/.exec(line)?.[1]), line }))
}

const mbps = (bytesPerSecond: number): string => (bytesPerSecond / 1e6).toFixed(1)

describe('a 1 GiB app through the API', () => {
  beforeAll(async () => {
    work = await mkdtemp(join('/var/tmp', 'dcloud-bigbackup-'))
    // 1 GiB of data lives three times on n1 at the peak (the volume, its snapshot, the backup file being built), and its replica on n2.
    await lab.up(2, [], { diskSize: '10G' })
    await waitFor(async () => (await lab.status('n1')).leader ?? undefined, 60_000, 'a leader')
    await dcOk('n1', ['app', 'install', BIGVOL, '--node', 'n1'])
    await waitFor(async () => (await app('n1', 'bigvol'))?.state === 'running' ? true : undefined, 120_000, 'bigvol running', 500)
    await fill(await mountpoint('n1', 'dcloud-bigvol-data'))
  }, 300_000)

  afterAll(async () => {
    await sh('umount', [join(lab.lab.agentDataDir('n2'), 'backups')])
    await lab.down()
    await rm(work, { recursive: true, force: true })
  }, 120_000)

  it('dcloud backup downloads it over TCP with the token, with progress; dcloud restore uploads it under another name, with progress; the data is the same', async () => {
    const file = join(work, 'bigvol.dcloud-backup')
    const token = (await readFile(join(lab.lab.agentDataDir('n1'), 'api.token'), 'utf8')).trim()
    // As from a laptop: TCP and the token, no socket.
    const b = await lab.exec('n1', ['env', 'DCLOUD_API=http://127.0.0.1:7371', `DCLOUD_TOKEN=${token}`, 'dcloud', 'backup', 'bigvol', '-o', file, '--json'])
    if (b.code !== 0) throw new Error(`dcloud backup exited ${b.code}\n${b.stderr}`)
    const backup = JSON.parse(b.stdout) as { bytes: number, seconds: number, snapshot: string | null, volumes: Array<{ name: string, bytes: number }>, download: { seconds: number, bytesPerSecond: number } }
    const down = progressLines(b.stderr, 'bigvol: downloading')
    process.stderr.write(b.stderr)
    expect(down.length).toBeGreaterThanOrEqual(1)
    expect(down.at(-1)?.percent).toBe(100)
    expect(down.at(-1)?.line).toMatch(/of 1\.0 GiB \(100%\) in [\d.]+ s, [\d.]+ MiB\/s/)
    expect(b.stderr).toMatch(/checking .*: 1\.0 GiB of 1\.0 GiB \(100%\)/)
    expect(backup.bytes).toBe((await stat(file)).size)
    expect(backup.bytes).toBeGreaterThan(TOTAL)
    expect(backup.volumes).toEqual([expect.objectContaining({ name: 'data', bytes: TOTAL })])
    expect((await verifyArchive(file, { signal: AbortSignal.timeout(120_000) })).app).toBe('bigvol')
    // Nothing stays in the node's backups directory.
    expect(await readdir(join(lab.lab.agentDataDir('n1'), 'backups'))).toEqual([])

    const r = await dc('n2', ['restore', file, '--name', 'bigvol2', '--node', 'n2', '--yes', '--json'])
    if (r.code !== 0) throw new Error(`dcloud restore exited ${r.code}\n${r.stderr}`)
    process.stderr.write(r.stderr)
    const restored = JSON.parse(r.stdout) as AppView & { upload: { bytes: number, seconds: number, bytesPerSecond: number } }
    const up = progressLines(r.stderr, 'bigvol2: uploading')
    expect(up.length).toBeGreaterThanOrEqual(1)
    expect(up.at(-1)?.percent).toBe(100)
    expect(restored).toMatchObject({ name: 'bigvol2', node: 'n2', state: 'running' })
    expect(restored.upload.bytes).toBe(backup.bytes)
    expect(await readdir(join(lab.lab.agentDataDir('n2'), 'backups'))).toEqual([])

    const dir = await mountpoint('n2', 'dcloud-bigvol2-data')
    const names = (await readdir(dir)).sort()
    expect(names).toEqual([...sums.keys()].sort())
    for (const name of names) expect(await sha256(join(dir, name)), name).toBe(sums.get(name))

    const m1 = await lab.metrics('n1')
    const m2 = await lab.metrics('n2')
    expect(m1.backups.downloads).toBe(1)
    expect(m2.backups.uploads).toBe(1)
    console.log(`1 GiB backup: download ${backup.download.seconds.toFixed(1)} s, ${mbps(backup.download.bytesPerSecond)} MB/s (the whole \`dcloud backup\`: ${backup.seconds.toFixed(1)} s); ` +
      `restore upload ${restored.upload.seconds.toFixed(1)} s, ${mbps(restored.upload.bytesPerSecond)} MB/s`)
  }, 600_000)

  it('the agent refuses paths outside its backups directory, replacing a file, not-a-backup, no length, truncated and too-large uploads: counted, nothing left', async () => {
    const target: ApiTarget = { socketPath: lab.lab.agentSocket('n2'), describe: 'n2' }
    const backups = join(lab.lab.agentDataDir('n2'), 'backups')
    const before = (await lab.metrics('n2')).backups
    const refused = async (p: Promise<unknown>): Promise<ApiCallError> => {
      const e = await p.then(() => null, (err: unknown) => err)
      expect(e).toBeInstanceOf(ApiCallError)
      return e as ApiCallError
    }

    const outside = await refused(apiRequest('POST', '/v1/backups/restore', { file: `${backups}/../api.token`, name: 'x' }, target))
    expect(outside.status).toBe(400)
    expect(outside.message).toContain(`inside this node's backups directory ${backups}`)
    const outsideWrite = await refused(apiRequest('POST', '/v1/apps/bigvol2/backup', { file: '/tmp/bigvol2.tar' }, target))
    expect(outsideWrite.status).toBe(400)
    await writeFile(join(backups, 'taken.tar'), 'x')
    const taken = await refused(apiRequest('POST', '/v1/apps/bigvol2/backup', { file: join(backups, 'taken.tar') }, target))
    expect(taken.status).toBe(409)
    expect(taken.message).toMatch(/already exists; refusing to replace it/)
    await rm(join(backups, 'taken.tar'))
    // Through the CLI too: its message, not "internal".
    const cli = await dc('n2', ['restore', '/dev/null', '--yes'])
    expect(cli.code).not.toBe(0)

    const junk = join(work, 'junk.bin')
    await writeFile(junk, Buffer.alloc(3 * MiB, 7))
    const notBackup = await refused(apiUpload('/v1/backups/restore?name=junk', junk, { target }))
    expect(notBackup.status).toBe(400)
    expect(notBackup.message).toMatch(/not a dcloud backup/)

    const noLength = await new Promise<number>((resolve, reject) => {
      const req = request({ socketPath: target.socketPath, method: 'POST', path: '/v1/backups/restore?name=nolen', headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } }, (res) => { res.resume(); resolve(res.statusCode ?? 0) })
      req.on('error', reject)
      req.end(Buffer.alloc(1000))
    })
    expect(noLength).toBe(411)

    // Half of the backup file, then the connection closes.
    const file = join(work, 'bigvol.dcloud-backup')
    const size = (await stat(file)).size
    const sock = connect(target.socketPath as string)
    sock.on('error', () => {})
    await new Promise(resolve => sock.once('connect', resolve))
    sock.write(`POST /v1/backups/restore?name=trunc HTTP/1.1\r\nhost: agent\r\ncontent-type: application/octet-stream\r\ncontent-length: ${size}\r\n\r\n`)
    const head = await open(file, 'r')
    const part = Buffer.alloc(64 * MiB)
    await head.read(part, 0, part.length, 0)
    await head.close()
    await new Promise(resolve => sock.write(part, resolve))
    sock.destroy()
    await waitFor(async () => (await lab.metrics('n2')).backups.uploadsRefused >= before.uploadsRefused + 3 ? true : undefined, 30_000, 'the truncated upload counted')

    // A disk with less room than the upload: refused before reading it.
    await sh('mount', ['-t', 'tmpfs', '-o', 'size=64m,mode=0700', 'tmpfs', backups])
    try {
      const t0 = Date.now()
      const full = await refused(apiUpload('/v1/backups/restore?name=nospace', file, { target }))
      expect(full.status).toBe(507)
      expect(full.code).toBe('insufficient_storage')
      expect(Date.now() - t0).toBeLessThan(10_000)
      expect(await readdir(backups)).toEqual([])
    } finally {
      await sh('umount', [backups])
    }

    const after = (await lab.metrics('n2')).backups
    expect(after.uploadsRefused).toBe(before.uploadsRefused + 4)
    expect(after.uploads).toBe(before.uploads)
    expect(await readdir(backups)).toEqual([])
    const names = (JSON.parse(await dcOk('n1', ['app', 'ls', '--json'])) as AppView[]).map(a => a.name).sort()
    expect(names).toEqual(['bigvol', 'bigvol2'])
  }, 180_000)
})
