/**
 * Whole-app backup files: one tar archive holding everything needed to bring
 * an app back on any dcloud, or to read its data by hand with plain `tar`.
 *
 *   dcloud-backup.json          what it is: format version, app name, manifest,
 *                               settings, creation time, and per volume its
 *                               name, entry count, byte count and the sha256 of
 *                               its content listing
 *   volumes/<name>/             each volume's root directory (mode, owner)
 *   volumes/<name>/...          its directories, files, symlinks, hardlinks
 *
 * The metadata comes first, so a reader knows what it is reading (and which
 * volumes may appear) before it writes anything. Its checksums are only known
 * at the end: the writer leaves fixed-width placeholders and fills them in
 * once every volume is written, so each file is read once.
 *
 * Reading is the security boundary of a restore: a backup file may come from
 * anywhere. Every check runs before the bytes of an entry reach the disk, the
 * extraction goes to a fresh directory next to the target that is renamed into
 * place only after the whole archive verified, and nothing is ever written
 * through a symlink. See docs/snapshots.md for the rules.
 *
 * This file is the format: the metadata, its checksums, the order of
 * entries. The trees themselves are written and read by tree.ts
 * (scanTree/writeTree and TreeExtractor), which know nothing of the
 * metadata: tar-repo.ts builds its snapshot archives (`NAME/...` side by
 * side) with the same ones, so both formats obey one set of safety rules.
 */
import { randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { link, lstat, mkdtemp, open, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import type { AppManifest } from '../../proto/app.ts'
import { APP_NAME, decodeManifest } from '../../proto/cluster.ts'
import { DOCKER_NAME, ValidationError, array, number, record, string, type Json } from '../../proto/validate.ts'
import { UserError, EXIT } from '../util/errors.ts'
import { mustBeEmptyOrAbsent, renameError } from './restore-target.ts'
import { ArchiveError, TarReader, encodeEntry, endOfArchive, padding } from './tar.ts'
import { CHUNK, FileSink, TreeExtractor, diskFull, scanTree, strictUtf8, writeTree, type TreeResult, type TreeScan } from './tree.ts'

export { ArchiveError } from './tar.ts'

export const FORMAT = 'dcloud-backup'
export const FORMAT_VERSION = 1
export const META_FILE = 'dcloud-backup.json'
export const MAX_META_BYTES = 1024 * 1024
const MAX_VOLUMES = 64
/** Docker's and compose's rule for a volume name (proto/cluster.ts checks manifests with it too). */
const SHA256_HEX = /^[0-9a-f]{64}$/
const PROGRESS_EVERY_MS = 100

export interface BackupVolume {
  name: string
  /** Entries in the volume, its root directory included. */
  entries: number
  /** Bytes of file content. */
  bytes: number
  /** sha256 of the volume's content listing (see listingLine). */
  listingSha256: string
}

export interface BackupMeta {
  format: typeof FORMAT
  version: typeof FORMAT_VERSION
  app: string
  /** ISO 8601. */
  createdAt: string
  manifest: AppManifest
  /** What the user chose for this install (variables, pinned node, ...): kept as given. */
  settings: Record<string, Json>
  volumes: BackupVolume[]
}

export interface ArchiveProgress {
  phase: 'scan' | 'write' | 'read'
  volume: string | null
  entries: number
  bytesDone: number
  /** Null when the size is not known (a stream). */
  bytesTotal: number | null
}

export interface WriteArchiveOptions {
  app: string
  manifest: AppManifest
  settings: Record<string, Json>
  /** Each volume's name (declared by the manifest) and the directory holding its data (a Docker volume's `_data`). */
  volumes: Array<{ name: string, dir: string }>
  signal: AbortSignal
  progress?: (p: ArchiveProgress) => void
  /** The creation time to record; default now. */
  now?: Date
}

export interface WriteArchiveResult {
  file: string
  meta: BackupMeta
  /** Size of the archive in bytes. */
  bytes: number
  /** Sockets, fifos and device nodes found in volumes: they hold no data and are not archived. */
  skipped: string[]
}

export interface ReadOptions {
  signal: AbortSignal
  progress?: (p: ArchiveProgress) => void
}

export interface ExtractResult {
  meta: BackupMeta
  /** Where each volume's data now is: `<target>/<volume>`. */
  dirs: Record<string, string>
}

export type ArchiveSource = string | AsyncIterable<Uint8Array>

// ---------------------------------------------------------------------------
// Writing

/**
 * Writes a whole-app backup file. The archive is written to `FILE.part-…`
 * next to `file` and linked into place when complete, so `file` either is a
 * whole backup or does not exist; an existing `file` is never replaced.
 *
 * Each volume is walked twice: once to count (progress, and every refusal
 * before a byte is written), once to write. A volume that changes in between,
 * or a file that changes while it is read, fails the backup: its data would
 * be inconsistent. Stop the app first.
 */
export async function writeArchive (file: string, opts: WriteArchiveOptions): Promise<WriteArchiveResult> {
  const { signal } = opts
  signal.throwIfAborted()
  const out = resolve(file)
  const app = checkInput(() => string(opts.app, 'app', { max: 40, pattern: APP_NAME }))
  const manifest = checkInput(() => decodeManifest(opts.manifest, 'manifest'))
  const settings = checkInput(() => record(opts.settings, 'settings')) as Record<string, Json>
  if (opts.volumes.length > MAX_VOLUMES) throw new UserError(`an app with more than ${MAX_VOLUMES} volumes cannot be archived`, { exitCode: EXIT.usage })
  const names = new Set<string>()
  for (const v of opts.volumes) {
    if (!DOCKER_NAME.test(v.name)) throw new UserError(`${JSON.stringify(v.name)} is not a volume name`, { exitCode: EXIT.usage })
    if (!(v.name in manifest.compose.volumes)) throw new UserError(`volume ${v.name} is not declared by ${app}'s manifest`, { exitCode: EXIT.usage, hint: `its volumes are: ${Object.keys(manifest.compose.volumes).join(', ') || 'none'}` })
    if (names.has(v.name)) throw new UserError(`volume ${v.name} is given twice`, { exitCode: EXIT.usage })
    names.add(v.name)
  }
  if (await exists(out)) throw new UserError(`${out} already exists; refusing to replace it`, { exitCode: EXIT.cantCreate, hint: 'choose another file name, or move the old backup away first' })

  // Pass 1: count, and refuse what cannot be archived, before creating anything.
  const scanned: Array<TreeScan & { name: string }> = []
  const skipped: string[] = []
  let total = 0
  for (const v of opts.volumes) {
    const scan = await scanTree({ dir: v.dir, prefix: `volumes/${v.name}/`, label: `volume ${v.name}`, noun: 'volume' }, signal, skipped)
    scanned.push({ ...scan, name: v.name })
    total += scan.bytes
    opts.progress?.({ phase: 'scan', volume: v.name, entries: scan.entries, bytesDone: 0, bytesTotal: total })
  }

  const placeholders = scanned.map(() => randomBytes(32).toString('hex'))
  const meta: BackupMeta = {
    format: FORMAT,
    version: FORMAT_VERSION,
    app,
    createdAt: (opts.now ?? new Date()).toISOString(),
    manifest,
    settings,
    volumes: scanned.map((s, i) => ({ name: s.name, entries: s.entries, bytes: s.bytes, listingSha256: placeholders[i] as string }))
  }
  const metaBytes = Buffer.from(JSON.stringify(meta, null, 2) + '\n', 'utf8')
  if (metaBytes.length > MAX_META_BYTES) throw new UserError(`the backup's metadata would be ${metaBytes.length} bytes, more than the limit of ${MAX_META_BYTES}`, { exitCode: EXIT.dataError, hint: 'the manifest or the settings are too large' })
  const metaHeader = encodeEntry({ path: META_FILE, type: 'file', mode: 0o644, uid: 0, gid: 0, size: metaBytes.length, mtime: Date.parse(meta.createdAt) / 1000 })
  // Where each placeholder sits in the file, to be overwritten with the real checksum.
  const patchAt = placeholders.map(p => metaHeader.length + metaBytes.indexOf(p))

  const part = `${out}.part-${randomBytes(4).toString('hex')}`
  let fh: FileHandle | null = null
  try {
    fh = await open(part, 'wx', 0o600)
    const sink = new FileSink(fh)
    await sink.write(metaHeader)
    await sink.write(metaBytes)
    await sink.write(Buffer.alloc(padding(metaBytes.length)))
    let done = 0
    let last = 0
    const report = (volume: string, entries: number, force = false): void => {
      if (opts.progress === undefined) return
      const now = Date.now()
      if (!force && now - last < PROGRESS_EVERY_MS) return
      last = now
      opts.progress({ phase: 'write', volume, entries, bytesDone: done, bytesTotal: total })
    }

    for (const [i, v] of scanned.entries()) {
      const digest = await writeTree(sink, v, signal, (entries, moved) => { done += moved; report(v.name, entries) })
      const volume = meta.volumes[i] as BackupVolume
      volume.listingSha256 = digest
      report(v.name, v.entries, true)
    }
    await sink.write(endOfArchive())
    await sink.flush()
    signal.throwIfAborted()
    for (const [i, at] of patchAt.entries()) {
      await fh.write(Buffer.from((meta.volumes[i] as BackupVolume).listingSha256, 'latin1'), 0, 64, at)
    }
    await fh.sync()
    const size = sink.size
    await fh.close()
    fh = null
    // link() and not rename(): it fails if `file` appeared meanwhile instead of replacing it.
    try {
      await link(part, out)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new UserError(`${out} appeared while the backup was written; refusing to replace it`, { exitCode: EXIT.cantCreate, hint: 'choose another file name' })
      throw err
    }
    await unlink(part)
    return { file: out, meta, bytes: size, skipped }
  } catch (err) {
    await fh?.close().catch(() => {})
    await rm(part, { force: true })
    throw diskFull(err, dirname(out), 'writing the backup') ?? err
  }
}

// ---------------------------------------------------------------------------
// Reading

/**
 * Validates the metadata: the format and its version first (so an archive
 * from a newer dcloud says so), then every field.
 */
export function decodeBackupMeta (raw: unknown): BackupMeta {
  const r = checkField(() => record(raw, META_FILE))
  if (r.format !== FORMAT) throw new ArchiveError(`not a dcloud backup: ${META_FILE} has no "format": "${FORMAT}"`)
  if (r.version === undefined) throw new ArchiveError(`${META_FILE} has no format version`)
  if (r.version !== FORMAT_VERSION) {
    throw new ArchiveError(`backup format version ${JSON.stringify(r.version)}: this dcloud reads version ${FORMAT_VERSION}`, null,
      typeof r.version === 'number' && r.version > FORMAT_VERSION ? 'the backup was made by a newer dcloud: upgrade this one to restore it' : 'the file is damaged or was not made by dcloud; nothing was restored from it')
  }
  return checkField(() => {
    const manifest = decodeManifest(r.manifest, 'manifest')
    const createdAt = string(r.createdAt, 'createdAt', { max: 40, pattern: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/ })
    if (Number.isNaN(Date.parse(createdAt))) throw new ValidationError('createdAt', 'is not a date')
    const volumes = array(r.volumes, 'volumes', MAX_VOLUMES, (v, f) => {
      const o = record(v, f)
      const name = string(o.name, `${f}.name`, { max: 63, pattern: DOCKER_NAME })
      if (!(name in manifest.compose.volumes)) throw new ValidationError(`${f}.name`, `volume ${name} is not declared by the manifest`)
      return {
        name,
        entries: number(o.entries, `${f}.entries`, { min: 1, max: Number.MAX_SAFE_INTEGER, integer: true }),
        bytes: number(o.bytes, `${f}.bytes`, { min: 0, max: Number.MAX_SAFE_INTEGER, integer: true }),
        listingSha256: string(o.listingSha256, `${f}.listingSha256`, { max: 64, pattern: SHA256_HEX })
      }
    })
    const seen = new Set<string>()
    for (const v of volumes) {
      if (seen.has(v.name)) throw new ValidationError('volumes', `volume ${v.name} appears twice`)
      seen.add(v.name)
    }
    return {
      format: FORMAT,
      version: FORMAT_VERSION,
      app: string(r.app, 'app', { max: 40, pattern: APP_NAME }),
      createdAt,
      manifest,
      settings: record(r.settings, 'settings') as Record<string, Json>,
      volumes
    }
  })
}

/** Only the metadata: what the backup is, without reading the volumes. */
export async function readArchiveMeta (source: ArchiveSource, opts: ReadOptions): Promise<BackupMeta> {
  return (await readArchive(source, null, opts, true)).meta
}

/** Reads the whole archive and checks every rule and checksum; writes nothing. */
export async function verifyArchive (source: ArchiveSource, opts: ReadOptions): Promise<BackupMeta> {
  return (await readArchive(source, null, opts, false)).meta
}

/**
 * Extracts a backup into `target` (which must not exist, or be an empty
 * directory): `<target>/<volume>/...` for each volume. Everything goes into a
 * fresh directory next to `target` first (mode 0700), renamed into place only
 * once the whole archive verified; a bad archive leaves nothing behind.
 *
 * Owners are restored when running as root. Setuid and setgid bits of files
 * are dropped: a backup file must not be a way to plant a privileged program.
 */
export async function extractArchive (source: ArchiveSource, target: string, opts: ReadOptions): Promise<ExtractResult> {
  opts.signal.throwIfAborted()
  const dest = resolve(target)
  await mustBeEmptyOrAbsent(dest)
  const staging = await mkdtemp(join(dirname(dest), `.${basename(dest)}.extract-`))
  try {
    const { meta } = await readArchive(source, staging, opts, false)
    try {
      await rename(staging, dest)
    } catch (err) {
      throw renameError(err, dest)
    }
    return { meta, dirs: Object.fromEntries(meta.volumes.map(v => [v.name, join(dest, v.name)])) }
  } catch (err) {
    await rm(staging, { recursive: true, force: true })
    throw err
  }
}

async function readArchive (source: ArchiveSource, root: string | null, opts: ReadOptions, metaOnly: boolean): Promise<{ meta: BackupMeta }> {
  const { signal } = opts
  signal.throwIfAborted()
  let input: AsyncIterable<Uint8Array>
  let totalBytes: number | null = null
  if (typeof source === 'string') {
    const st = await stat(source).catch(() => null)
    if (st === null || !st.isFile()) throw new UserError(`${source} is not a file`, { exitCode: EXIT.noInput, hint: 'give the path of a dcloud backup file' })
    totalBytes = st.size
    input = createReadStream(source, { highWaterMark: CHUNK, signal })
  } else {
    input = source
  }
  const tar = new TarReader(input, { notTar: 'not a dcloud backup' })
  try {
    const first = await tar.next()
    if (first === null) throw new ArchiveError('not a dcloud backup: the archive is empty')
    if (first.path !== META_FILE || first.type !== 'file') throw new ArchiveError(`not a dcloud backup: the archive starts with ${JSON.stringify(first.path)}, not ${META_FILE}`)
    if (first.size > MAX_META_BYTES) throw new ArchiveError(`${META_FILE} is ${first.size} bytes, more than the limit of ${MAX_META_BYTES} (1 MiB)`, META_FILE)
    const chunks: Buffer[] = []
    for await (const c of tar.content(META_FILE)) chunks.push(Buffer.from(c))
    let raw: unknown
    try {
      raw = JSON.parse(strictUtf8.decode(Buffer.concat(chunks)))
    } catch {
      throw new ArchiveError(`${META_FILE} is not UTF-8 JSON`, META_FILE)
    }
    const meta = decodeBackupMeta(raw)
    if (metaOnly) return { meta }

    const trees = new TreeExtractor(meta.volumes.map(v => v.name), root, {
      base: ['volumes'],
      noun: 'volume',
      declaredIn: META_FILE,
      reserved: [META_FILE],
      outside: `is outside volumes/<name>/ and is not ${META_FILE}`
    })
    await trees.begin()
    let lastReport = 0
    const report = (volume: string | null, force = false): void => {
      if (opts.progress === undefined) return
      const now = Date.now()
      if (!force && now - lastReport < PROGRESS_EVERY_MS) return
      lastReport = now
      opts.progress({ phase: 'read', volume, entries: trees.entries, bytesDone: tar.offset, bytesTotal: totalBytes })
    }

    for (let e = await tar.next(); e !== null; e = await tar.next()) {
      signal.throwIfAborted()
      report(await trees.entry(tar, e))
    }

    const found = new Map(trees.finish().map(t => [t.name, t]))
    for (const v of meta.volumes) {
      const t = found.get(v.name) as TreeResult
      if (t.entries !== v.entries || t.bytes !== v.bytes) {
        throw new ArchiveError(`volume ${v.name} holds ${t.entries} entries and ${t.bytes} bytes, ${META_FILE} says ${v.entries} and ${v.bytes}`)
      }
      if (t.listingSha256 !== v.listingSha256) throw new ArchiveError(`volume ${v.name}'s content does not match its checksum in ${META_FILE}: the archive was modified or damaged`)
    }
    await trees.settle()
    report(null, true)
    return { meta }
  } finally {
    await tar.close().catch(() => {})
  }
}

/** Runs a validator; its ValidationError becomes an ArchiveError naming the field. */
function checkField<T> (fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    if (err instanceof ValidationError) throw new ArchiveError(`${META_FILE}: ${err.message}`)
    throw err
  }
}

/** The writer's own inputs: a bad one is the caller's mistake, said as such. */
function checkInput<T> (fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    if (err instanceof ValidationError) throw new UserError(`cannot write a backup: ${err.message}`, { exitCode: EXIT.usage })
    throw err
  }
}

async function exists (path: string): Promise<boolean> {
  return await lstat(path).then(() => true, () => false)
}

