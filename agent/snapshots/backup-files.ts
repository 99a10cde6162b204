/**
 * The node's backups directory, `DATA_DIR/backups` (mode 0700): the one place
 * the API reads or writes a backup file by path, and where the files that
 * travel through the API are staged.
 *
 * - A path given to the API must resolve (`realpath`, so no `..` and no
 *   symlink leads out) inside this directory; a backup written by path never
 *   replaces a file.
 * - A download (`GET /v1/apps/:name/backup`) is built into a temp file here,
 *   opened, and unlinked before its first byte is sent: the open descriptor
 *   is all that is left of it, so nothing remains however the transfer ends.
 * - An upload (`POST /v1/backups/restore` with a body) is written to a temp
 *   file here after the free space was checked against its Content-Length
 *   (less what uploads in flight have claimed), and removed in every outcome.
 *
 * Temp files are `.dcloud-tmp-*`; a crashed agent's are removed at start.
 */
import { randomBytes } from 'node:crypto'
import { type ReadStream } from 'node:fs'
import { chmod, lstat, mkdir, open, readdir, realpath, rm, stat, statfs, unlink } from 'node:fs/promises'
import { basename, dirname, isAbsolute, join, resolve, sep } from 'node:path'
import { Transform, type Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { BackupCounters } from '../../proto/api.ts'
import { EXIT, NoSpaceError, UserError } from '../util/errors.ts'
import { diskFull } from './tree.ts'

export const TEMP_PREFIX = '.dcloud-tmp-'
const MiB = 1024 * 1024
/** Kept free after an upload: the smaller of 16 MiB and 1% of the file system. */
const RESERVE_BYTES = 16 * MiB
/** An upload that sends nothing for this long is cut. */
const UPLOAD_IDLE_MS = 120_000

/** A path the API was given that is not inside the backups directory. */
export class OutsideBackupsDirError extends UserError {
  override name = 'OutsideBackupsDirError'

  constructor (file: string, dir: string) {
    super(`${file} is not inside this node's backups directory ${dir}; the agent reads and writes backup files by path only there`, {
      exitCode: EXIT.usage,
      hint: `put the file in ${dir} (root only), or let the CLI send it: \`dcloud restore FILE\` uploads it and \`dcloud backup APP -o FILE\` downloads it`
    })
  }
}

export class BackupFileExistsError extends UserError {
  override name = 'BackupFileExistsError'

  constructor (file: string) {
    super(`${file} already exists; refusing to replace it`, { exitCode: EXIT.cantCreate, hint: 'choose another file name, or move the old backup away first' })
  }
}

/** The upload ended before Content-Length bytes came. */
export class TruncatedUploadError extends UserError {
  override name = 'TruncatedUploadError'

  constructor (got: number, expected: number, why: string) {
    super(`the upload ended after ${got} of ${expected} bytes (${why}); nothing was restored`, { exitCode: EXIT.dataError, hint: 'send the whole file again' })
  }
}

export interface StagedDownload {
  /** The backup's bytes; the file behind it is already unlinked. */
  stream: ReadStream
  bytes: number
}

export class BackupFiles {
  /** The directory as configured (`DATA_DIR/backups`), as error messages name it. */
  readonly dir: string
  readonly counters: BackupCounters = { uploads: 0, uploadsRefused: 0, downloads: 0, downloadsFailed: 0 }
  /** Bytes claimed by uploads being received. */
  private claimed = 0

  constructor (dataDir: string) {
    this.dir = join(resolve(dataDir), 'backups')
  }

  /** Creates the directory (0700) and removes temp files a previous run left. Safe to call twice. */
  async start (): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 })
    await chmod(this.dir, 0o700)
    for (const name of await readdir(this.dir)) {
      if (name.startsWith(TEMP_PREFIX)) await rm(join(this.dir, name), { recursive: true, force: true })
    }
  }

  /**
   * The real path of an existing backup file inside the directory. The path
   * is checked as written first (nothing outside is even looked at), then as
   * `realpath` resolves it (a symlink may not lead out).
   */
  async existing (file: unknown): Promise<string> {
    const given = await this.lexical(file)
    let real: string
    try {
      real = await realpath(given)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new UserError(`no file ${given}`, { exitCode: EXIT.noInput, hint: `backup files on the node go in ${this.dir}` })
      throw err
    }
    if (!inside(real, await this.root())) throw new OutsideBackupsDirError(given, this.dir)
    const st = await stat(real)
    if (!st.isFile()) throw new UserError(`${given} is not a file`, { exitCode: EXIT.noInput, hint: 'give the path of a dcloud backup file' })
    return real
  }

  /** Where a new backup file may be written: inside the directory (its parent resolved), not an existing name. */
  async fresh (file: unknown): Promise<string> {
    const given = await this.lexical(file)
    const name = basename(given)
    if (name.startsWith(TEMP_PREFIX)) throw new UserError(`${name}: names starting with ${TEMP_PREFIX} are the agent's temp files`, { exitCode: EXIT.usage })
    let parent: string
    try {
      parent = await realpath(dirname(given))
    } catch {
      throw new UserError(`no directory ${dirname(given)}`, { exitCode: EXIT.noInput, hint: `create it inside ${this.dir} first` })
    }
    if (!inside(parent, await this.root(), true)) throw new OutsideBackupsDirError(given, this.dir)
    const out = join(parent, name)
    if (await lstat(out).then(() => true, () => false)) throw new BackupFileExistsError(given)
    return out
  }

  /** A name for a temp file in the directory (not created). */
  tempPath (kind: 'upload' | 'download'): string {
    return join(this.dir, `${TEMP_PREFIX}${kind}-${randomBytes(6).toString('hex')}`)
  }

  /**
   * Builds a download: `build` writes a file at the path it is given (which
   * must not exist yet); the file is opened and unlinked before its stream is
   * returned. Counts the download when its stream is read to the end, or as
   * failed when it is closed before.
   */
  async stageDownload<R> (build: (file: string) => Promise<R>): Promise<StagedDownload & { result: R }> {
    await this.start()
    const file = this.tempPath('download')
    try {
      const result = await build(file)
      const fh = await open(file, 'r')
      try {
        await unlink(file)
        const bytes = (await fh.stat()).size
        const stream = fh.createReadStream({ highWaterMark: MiB })
        let ended = false
        stream.once('end', () => { ended = true; this.counters.downloads++ })
        stream.once('close', () => { if (!ended) this.counters.downloadsFailed++ })
        return { stream, bytes, result }
      } catch (err) {
        await fh.close()
        throw err
      }
    } catch (err) {
      await rm(file, { force: true })
      this.counters.downloadsFailed++
      throw err
    }
  }

  /** Free bytes an upload may take now: the file system's free space, less the reserve and what other uploads claimed. */
  async room (): Promise<number> {
    const s = await statfs(this.dir)
    const reserve = Math.min(RESERVE_BYTES, Math.floor(s.blocks * s.bsize / 100))
    return s.bavail * s.bsize - reserve - this.claimed
  }

  /**
   * Receives an upload of exactly `length` bytes into a temp file and hands
   * its path to `use`; the file is removed when `use` settles, whatever
   * happened. Refused before a byte is read when the disk has no room for it
   * (NoSpaceError); a body that ends short is a TruncatedUploadError; a disk
   * that fills meanwhile a NoSpaceError. Counts the upload as done when `use`
   * succeeds, as refused otherwise.
   */
  async receive<R> (body: Readable, length: number, signal: AbortSignal, use: (file: string) => Promise<R>): Promise<R> {
    let file: string | null = null
    let done = false
    try {
      await this.start()
      const room = await this.room()
      if (length > room) throw new NoSpaceError(`the upload is ${length} bytes and the disk holding ${this.dir} has room for ${Math.max(0, room)}`, 'free space on the node (or restore on another node) and try again; nothing was written')
      this.claimed += length
      try {
        file = this.tempPath('upload')
        await this.write(body, file, length, signal)
      } finally {
        this.claimed -= length
      }
      const r = await use(file)
      done = true
      return r
    } finally {
      // Counted once the temp file is gone: whoever reads the counter finds nothing left.
      if (file !== null) await rm(file, { force: true })
      if (done) this.counters.uploads++
      else this.counters.uploadsRefused++
    }
  }

  private async write (body: Readable, file: string, length: number, signal: AbortSignal): Promise<void> {
    let got = 0
    let idle: NodeJS.Timeout | undefined
    const count = new Transform({
      transform (chunk: Buffer, _enc, done) {
        got += chunk.length
        if (got > length) { done(new UserError(`the upload is longer than its Content-Length of ${length} bytes`, { exitCode: EXIT.dataError })); return }
        idle?.refresh()
        done(null, chunk)
      }
    })
    const out = await open(file, 'wx', 0o600)
    const controller = new AbortController()
    idle = setTimeout(() => { controller.abort(new TruncatedUploadError(got, length, `nothing came for ${UPLOAD_IDLE_MS / 1000} s`)) }, UPLOAD_IDLE_MS)
    // The body is piped, not part of the pipeline: a failure here (a full disk)
    // must leave the connection open for the answer; the server discards the rest.
    const cut = (): void => { if (!body.readableEnded) count.destroy(new TruncatedUploadError(got, length, 'the connection closed')) }
    body.once('close', cut)
    body.once('error', cut)
    try {
      const done = pipeline(count, out.createWriteStream({ highWaterMark: MiB }), { signal: AbortSignal.any([signal, controller.signal]) })
      body.pipe(count)
      await done
    } catch (err) {
      body.unpipe(count)
      if (controller.signal.aborted) throw controller.signal.reason as Error
      if (err instanceof UserError) throw err
      const full = diskFull(err, this.dir, 'receiving the upload')
      if (full !== null) throw full
      if (got < length) throw new TruncatedUploadError(got, length, (err as Error).message)
      throw err
    } finally {
      body.off('close', cut)
      body.off('error', cut)
      clearTimeout(idle)
      await out.close().catch(() => {})
    }
    if (got !== length) throw new TruncatedUploadError(got, length, 'the connection closed')
  }

  private async lexical (file: unknown): Promise<string> {
    if (typeof file !== 'string' || !isAbsolute(file) || file.length > 4096 || file.includes('\0')) {
      throw new UserError(`file must be an absolute path inside this node's backups directory ${this.dir}`, { exitCode: EXIT.usage })
    }
    const given = resolve(file)
    if (!inside(given, this.dir) && !inside(given, await this.root())) throw new OutsideBackupsDirError(file, this.dir)
    return given
  }

  private async root (): Promise<string> {
    await this.start()
    return await realpath(this.dir)
  }
}

function inside (path: string, dir: string, orEqual = false): boolean {
  return path.startsWith(dir.endsWith(sep) ? dir : dir + sep) || (orEqual && path === dir)
}
