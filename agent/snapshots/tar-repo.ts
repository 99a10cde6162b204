/**
 * The snapshot repository of nodes without the `restic` binary: tar is the
 * fallback where restic is missing. Same calls and result types as restic.ts
 * (tarBackup ~ backup, tarSnapshots ~ snapshots, tarRestore ~ restoreAsIs,
 * tarForget ~ forget({ ids })), so the snapshot service can pick a backend
 * per repository (isTarRepository), and a layout repo-sync.ts replicates
 * unchanged:
 *
 *   config                 {"format":"dcloud-tar-repository","version":1,"id":"<32 hex>"}:
 *                          written once by initTarRepository, never rewritten;
 *                          replicas hold the same bytes (repo-sync compares them)
 *   keys/ index/ locks/    empty: the layout restic's replication expects
 *   data/XX/<sha256>       one uncompressed tar archive per distinct content,
 *                          named by the SHA-256 of its bytes (XX: its first
 *                          two hex digits)
 *   snapshots/<sha256>     one JSON record per snapshot, named by the SHA-256
 *                          of its bytes; its id is that hash
 *
 * Every file but config is named by the hash of its bytes, as restic's are:
 * repo-sync checks each one against its name, and so does this module
 * (records when listed, archives while restored). Files are written to a
 * hidden temp file in the repository directory, fsynced, made read-only and
 * hard-linked into place (which never replaces a file), then the directory
 * is fsynced: a crash leaves whole files or a temp file, never half a file
 * under a good name. An archive is written before the record naming it, and
 * forgotten after it: a record never points to an archive that was not there.
 *
 * An archive holds a backup's entries side by side, as restic's
 * `{ within, names }` source does: `NAME/...` for each name, with mode,
 * owner and modification time, written by tree.ts's writer and read
 * back by its safe extractor (no `..`, no absolute paths, no symlink leaving
 * its top-level directory, nothing written through a symlink). Archives are
 * deterministic (sorted names, no access times), so a backup of unchanged
 * data (the quiesced pass after a prepass) finds its archive already there
 * and adds nothing.
 *
 * Differences from restic, on purpose:
 * - Not incremental: each distinct content is a whole archive. The fallback
 *   keeps data safe and movable; restic stays the way to keep many versions.
 * - Sockets, fifos and device nodes are skipped and reported in `skipped`
 *   (they hold no data; a program recreates its socket), as whole-app
 *   backup files do. Top-level names must be directories.
 * - A symlink leading outside its top-level directory (absolute, or `..`
 *   past it) fails the backup before anything is written, because the
 *   restore would refuse it: a snapshot that cannot be restored is worse
 *   than a clear error now.
 * - Setuid and setgid bits of files are dropped on restore (tree.ts's
 *   rule: a replica's archive must not be a way to plant a privileged
 *   program).
 * - No locks of its own: callers serialise calls on one repository (the
 *   snapshot service holds the app's lock around every call and pull).
 * - One archive per snapshot content: repo-sync's default 4 GiB cap per file
 *   (`maxFileBytes`) caps what a replica accepts.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto'
import { constants, type Dirent } from 'node:fs'
import { link, lstat, mkdir, mkdtemp, open, readdir, rename, rm, unlink, type FileHandle } from 'node:fs/promises'
import { hostname, userInfo } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'
import { ValidationError, array, isRecord, number, record, string } from '../../proto/validate.ts'
import { UserError, EXIT } from '../util/errors.ts'
import { FileSink, TreeExtractor, diskFull, listingDigest, scanTree, writeTree, type TarSink, type TreeResult, type TreeScan } from './tree.ts'
import { mustBeEmptyOrAbsent, renameError } from './restore-target.ts'
import {
  RepoCorruptError, RepoExistsError, RepoMissingError, SNAPSHOT_TAG, SnapshotNotFoundError, checkHost, checkSnapshotId, checkTag,
  type BackupOptions, type BackupProgress, type BackupResult, type BackupSource, type FailureContext,
  type RestoreOptions, type SignalOptions, type Snapshot, type SnapshotsOptions
} from './restic.ts'
import { ArchiveError, TarReader, endOfArchive } from './tar.ts'

export const TAR_REPO_FORMAT = 'dcloud-tar-repository'
export const TAR_REPO_VERSION = 1
export const TAR_SNAPSHOT_FORMAT = 'dcloud-tar-snapshot'
export const TAR_SNAPSHOT_VERSION = 1

/** Our config is about 90 bytes; repo-sync caps config at 1 MiB, we are stricter. */
const MAX_CONFIG_BYTES = 4096
/** A record is a few hundred bytes; tags and paths are capped below it. */
const MAX_RECORD_BYTES = 1024 * 1024
const MAX_TAGS = 1000
const MAX_NAMES = 1000
/** restic leaves its files read-only and its directories private; so do we (and repo-sync's replicas). */
const FILE_MODE = 0o400
const DIR_MODE = 0o700
const SUBDIRS = ['keys', 'data', 'index', 'snapshots', 'locks'] as const
const TEMP = /^\.dcloud-tar-[0-9a-f]{16}\.tmp$/
/** A temp file untouched this long belongs to a crashed backup (a running one writes, or links, well within it). */
const STALE_TEMP_MS = 60 * 60 * 1000
const CHUNK = 256 * 1024
const PROGRESS_MS = 250
const HEX64 = /^[0-9a-f]{64}$/
const CONFIG_ID = /^[0-9a-f]{32}$/
const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/

// ---------------------------------------------------------------------------
// Errors: subclasses of restic.ts's, so a caller's `instanceof RepoMissingError`
// (the service's) holds whichever backend failed, with words about tar.

function tarContext (action: string, dir: string): FailureContext {
  return { action, repo: dir, passwordFile: '', code: null, stderr: '' }
}

export class TarRepoMissingError extends RepoMissingError {
  override readonly hint: string | undefined

  constructor (action: string, dir: string, problem = `there is no tar repository at ${dir}`) {
    super(tarContext(action, dir))
    this.message = `cannot ${action}: ${problem}`
    this.hint = 'check the path (a disk that is not mounted?), or create the repository with initTarRepository()'
  }
}

export class TarRepoExistsError extends RepoExistsError {
  override readonly hint: string | undefined

  constructor (dir: string) {
    super(tarContext('create a tar repository', dir))
    this.message = `cannot create a tar repository: ${dir} already holds a repository (it has a config)`
    this.hint = 'use the existing repository, or choose another path'
  }
}

export class TarRepoCorruptError extends RepoCorruptError {
  override readonly hint: string | undefined

  constructor (action: string, dir: string, details: string[], hint?: string) {
    super(tarContext(action, dir), details)
    this.message = `cannot ${action}: the tar repository at ${dir} is damaged${details.length > 0 ? `: ${details.slice(0, 5).join('; ')}` : ''}`
    this.hint = hint ?? 'restore from another copy of the snapshot (pull the app\'s snapshots from a peer), or restore another snapshot; nothing was restored from this one'
  }
}

export class TarSnapshotNotFoundError extends SnapshotNotFoundError {
  override readonly hint: string | undefined

  constructor (id: string, dir: string) {
    super(id, dir)
    this.message = `no snapshot ${id} in the tar repository at ${dir}`
    this.hint = '`dcloud snapshot ls APP` lists the snapshots held here; give 8 or more hex digits of one of their ids'
  }
}

// ---------------------------------------------------------------------------
// The repository

export interface TarRepoConfig {
  format: typeof TAR_REPO_FORMAT
  version: number
  /** 32 random hex digits: the repository's identity, shared by its replicas. */
  id: string
}

/** The config's bytes when it is ours (whatever its version); null when absent or not ours (a restic repository's config is ciphertext). */
async function readConfig (dir: string): Promise<TarRepoConfig | null> {
  let bytes: Buffer
  try {
    bytes = await readSmall(join(dir, 'config'), MAX_CONFIG_BYTES)
  } catch {
    return null
  }
  let raw: unknown
  try {
    raw = JSON.parse(bytes.toString('utf8'))
  } catch {
    return null
  }
  if (!isRecord(raw) || raw.format !== TAR_REPO_FORMAT) return null
  return { format: TAR_REPO_FORMAT, version: typeof raw.version === 'number' ? raw.version : NaN, id: typeof raw.id === 'string' ? raw.id : '' }
}

/** Whether `dir` holds a tar repository (its config says so, whatever its version). */
export async function isTarRepository (dir: string): Promise<boolean> {
  return await readConfig(resolve(dir)) !== null
}

/** The repository's absolute path once its config is ours and of a version we read. */
async function openRepo (dirIn: string, action: string): Promise<string> {
  const dir = resolve(dirIn)
  const st = await lstat(dir).catch(() => null)
  if (st === null) throw new TarRepoMissingError(action, dir)
  if (!st.isDirectory()) throw new TarRepoMissingError(action, dir, `${dir} is ${st.isSymbolicLink() ? 'a symlink (not followed)' : 'not a directory'}, not a tar repository`)
  const cfg = await readConfig(dir)
  if (cfg === null) {
    const hasConfig = await lstat(join(dir, 'config')).then(() => true, () => false)
    throw new TarRepoMissingError(action, dir, hasConfig ? `${join(dir, 'config')} is not a tar repository's config (a restic repository?)` : undefined)
  }
  if (cfg.version !== TAR_REPO_VERSION) {
    throw new UserError(`cannot ${action}: the tar repository at ${dir} has format version ${String(cfg.version)}; this dcloud reads version ${TAR_REPO_VERSION}`, {
      exitCode: EXIT.dataError,
      hint: cfg.version > TAR_REPO_VERSION ? 'it was made by a newer dcloud: upgrade this one' : 'its config is damaged; restore it from a replica (the config of every replica is the same)'
    })
  }
  if (!CONFIG_ID.test(cfg.id)) throw new TarRepoCorruptError(action, dir, ['config has no valid id'], 'copy the config from a replica (every replica holds the same one)')
  return dir
}

/**
 * Creates a tar repository at `dir` (made if absent): the directories
 * first, the config last, so a config means a whole layout. Refuses a
 * directory that already has a config, ours or restic's.
 */
export async function initTarRepository (dirIn: string, opts: SignalOptions): Promise<TarRepoConfig> {
  opts.signal.throwIfAborted()
  const dir = resolve(dirIn)
  const configPath = join(dir, 'config')
  if (await exists(configPath)) throw new TarRepoExistsError(dir)
  await mkdir(dir, { recursive: true, mode: DIR_MODE })
  for (const sub of SUBDIRS) await mkdir(join(dir, sub), { recursive: true, mode: DIR_MODE })
  await syncDir(dir)
  const config: TarRepoConfig = { format: TAR_REPO_FORMAT, version: TAR_REPO_VERSION, id: randomBytes(16).toString('hex') }
  const bytes = Buffer.from(JSON.stringify(config) + '\n', 'utf8')
  const temp = await writeTemp(dir, bytes, opts.signal)
  try {
    await fsyncReadOnly(temp)
    // link(): a config that appeared meanwhile is not replaced (two replicas' configs must stay identical).
    await link(temp, configPath).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EEXIST') throw new TarRepoExistsError(dir)
      throw err
    })
  } finally {
    await unlink(temp).catch(() => {})
  }
  await syncDir(dir)
  return config
}

// ---------------------------------------------------------------------------
// Snapshot records

interface SnapshotRecord {
  format: typeof TAR_SNAPSHOT_FORMAT
  version: typeof TAR_SNAPSHOT_VERSION
  /** ISO 8601: when the backup started, as restic records it. */
  time: string
  hostname: string
  username: string
  tags: string[]
  /** `within/NAME` for each top-level entry, absolute, sorted by name, as restic records a relative backup. */
  paths: string[]
  /** Digest of the content (see tarTreeDigest): equal data, equal tree. */
  tree: string
  /** SHA-256 of the archive, its name under data/. */
  archive: string
  archiveBytes: number
  /** Entries in the archive, and bytes of file content. */
  entries: number
  bytes: number
}

function decodeRecord (raw: unknown): SnapshotRecord {
  const r = record(raw, 'snapshot')
  if (r.format !== TAR_SNAPSHOT_FORMAT) throw new ValidationError('snapshot.format', `is not "${TAR_SNAPSHOT_FORMAT}"`)
  if (r.version !== TAR_SNAPSHOT_VERSION) throw new ValidationError('snapshot.version', `${JSON.stringify(r.version)}: this dcloud reads version ${TAR_SNAPSHOT_VERSION}${typeof r.version === 'number' && r.version > TAR_SNAPSHOT_VERSION ? ' (made by a newer dcloud)' : ''}`)
  const time = string(r.time, 'snapshot.time', { max: 64, pattern: TIME })
  if (Number.isNaN(Date.parse(time))) throw new ValidationError('snapshot.time', 'is not a date')
  const paths = array(r.paths, 'snapshot.paths', MAX_NAMES, (v, f) => {
    const p = string(v, f, { min: 2, max: 4096 })
    if (!p.startsWith('/') || !isPlainName(basename(p))) throw new ValidationError(f, 'is not an absolute path ending in a plain name')
    return p
  })
  if (paths.length === 0) throw new ValidationError('snapshot.paths', 'is empty')
  if (new Set(paths.map(p => basename(p))).size !== paths.length) throw new ValidationError('snapshot.paths', 'names an entry twice')
  const count = (v: unknown, f: string, min = 0): number => number(v, f, { min, max: Number.MAX_SAFE_INTEGER, integer: true })
  return {
    format: TAR_SNAPSHOT_FORMAT,
    version: TAR_SNAPSHOT_VERSION,
    time,
    hostname: string(r.hostname, 'snapshot.hostname', { max: 255 }),
    username: string(r.username ?? '', 'snapshot.username', { max: 255 }),
    tags: array(r.tags, 'snapshot.tags', MAX_TAGS, (v, f) => string(v, f, { max: 128, pattern: SNAPSHOT_TAG })),
    paths,
    tree: string(r.tree, 'snapshot.tree', { max: 64, pattern: HEX64 }),
    archive: string(r.archive, 'snapshot.archive', { max: 64, pattern: HEX64 }),
    // The smallest tar archive is its end marker: two 512-byte blocks.
    archiveBytes: count(r.archiveBytes, 'snapshot.archiveBytes', 1024),
    entries: count(r.entries, 'snapshot.entries'),
    bytes: count(r.bytes, 'snapshot.bytes')
  }
}

function toSnapshot (id: string, r: SnapshotRecord): Snapshot {
  return { id, shortId: id.slice(0, 8), time: r.time, hostname: r.hostname, username: r.username, paths: [...r.paths], tags: [...r.tags], parent: null, tree: r.tree }
}

const archivePath = (hash: string): string => join('data', hash.slice(0, 2), hash)

interface LoadedRecord {
  id: string
  record: SnapshotRecord
  /** Whether data/ holds the archive, of the size the record says. */
  archivePresent: boolean
}

interface Loaded {
  records: LoadedRecord[]
  /** Snapshot files that could not be read or did not validate: what each is, and why. */
  unreadable: Array<{ id: string, path: string, reason: string }>
}

/**
 * Every snapshot record, each checked against its name. A record that does
 * not verify is set aside with the reason, never thrown: a replica a pull
 * left incomplete, or one damaged file, must not hide the other snapshots.
 */
async function loadRecords (dir: string, signal: AbortSignal): Promise<Loaded> {
  const out: Loaded = { records: [], unreadable: [] }
  let files: Dirent[]
  try {
    files = await readdir(join(dir, 'snapshots'), { withFileTypes: true })
  } catch (err) {
    // A replica only gets the directories that hold files: no snapshots yet.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return out
    throw err
  }
  files.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  for (const f of files) {
    signal.throwIfAborted()
    // Temp files and anything else repo-sync would not copy either.
    if (!HEX64.test(f.name)) continue
    const path = join('snapshots', f.name)
    const bad = (reason: string): void => { out.unreadable.push({ id: f.name, path, reason }) }
    if (!f.isFile()) {
      bad('is not a regular file')
      continue
    }
    let bytes: Buffer
    try {
      bytes = await readSmall(join(dir, path), MAX_RECORD_BYTES)
    } catch (err) {
      bad(`cannot be read (${(err as Error).message})`)
      continue
    }
    if (sha256(bytes) !== f.name) {
      bad('its content does not match its name (damaged)')
      continue
    }
    let rec: SnapshotRecord
    try {
      rec = decodeRecord(JSON.parse(bytes.toString('utf8')))
    } catch (err) {
      bad(err instanceof ValidationError ? `is not a valid snapshot record (${err.message})` : 'is not JSON')
      continue
    }
    const st = await lstat(join(dir, archivePath(rec.archive))).catch(() => null)
    out.records.push({ id: f.name, record: rec, archivePresent: st !== null && st.isFile() && st.size === rec.archiveBytes })
  }
  return out
}

export interface TarSnapshotsOptions extends SnapshotsOptions {
  /** Told about each snapshot left out of the listing (damaged record, archive missing): its file and why. */
  onSkip?: (path: string, reason: string) => void
}

/**
 * The snapshots in the repository, oldest first; `tags` keeps those holding
 * all of them, `host` those taken on it. A snapshot whose record does not
 * verify, or whose archive is missing (a partial replica), is left out and
 * reported through `onSkip`.
 */
export async function tarSnapshots (dirIn: string, opts: TarSnapshotsOptions): Promise<Snapshot[]> {
  opts.signal.throwIfAborted()
  const tags = (opts.tags ?? []).map(checkTag)
  const host = opts.host === undefined ? undefined : checkHost(opts.host)
  const dir = await openRepo(dirIn, 'list snapshots')
  const { records, unreadable } = await loadRecords(dir, opts.signal)
  for (const u of unreadable) opts.onSkip?.(u.path, u.reason)
  const out: Snapshot[] = []
  for (const r of records) {
    if (!r.archivePresent) {
      opts.onSkip?.(join('snapshots', r.id), `its archive ${archivePath(r.record.archive)} is missing or incomplete (a partial replica?)`)
      continue
    }
    if (host !== undefined && r.record.hostname !== host) continue
    if (!tags.every(t => r.record.tags.includes(t))) continue
    out.push(toSnapshot(r.id, r.record))
  }
  return out.sort((a, b) => (Date.parse(a.time) - Date.parse(b.time)) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
}

/** The one record whose id starts with `id` (8 or more hex digits); any other count is "not found". */
async function findRecord (dir: string, id: string, signal: AbortSignal): Promise<LoadedRecord> {
  const found = (await loadRecords(dir, signal)).records.filter(r => r.id.startsWith(id))
  if (found.length !== 1) throw new TarSnapshotNotFoundError(id, dir)
  return found[0] as LoadedRecord
}

/** One snapshot by id or unique id prefix (8+ hex digits), as listed (its archive must be here). */
export async function tarGetSnapshot (dirIn: string, id: string, opts: SignalOptions): Promise<Snapshot> {
  checkSnapshotId(id)
  const dir = await openRepo(dirIn, `find snapshot ${id}`)
  const r = await findRecord(dir, id, opts.signal)
  if (!r.archivePresent) throw missingArchive(`find snapshot ${id}`, dir, r)
  return toSnapshot(r.id, r.record)
}

function missingArchive (action: string, dir: string, r: LoadedRecord): TarRepoCorruptError {
  return new TarRepoCorruptError(action, dir, [`the archive ${archivePath(r.record.archive)} of snapshot ${r.id.slice(0, 8)} is missing or incomplete`],
    'this copy of the repository is incomplete (an interrupted pull?): pull the app\'s snapshots from a peer again, or restore another snapshot')
}

// ---------------------------------------------------------------------------
// Backing up

export interface TarBackupResult extends BackupResult {
  /** Sockets, fifos and device nodes found and not archived (they hold no data). */
  skipped: string[]
  /** SHA-256 of the archive: its name under data/. */
  archive: string
}

/**
 * Backs up directories into a new snapshot: `{ within, names }` (each name a
 * directory in `within`, side by side in the snapshot) or `{ dir }` (the
 * same with one name). `{ paths }` (absolute paths kept whole) is restic's
 * only. Options as restic.ts's backup; `limitUploadKiB` and `describe` have
 * nothing to do here (the record is always complete).
 *
 * Each directory is walked twice: once to count and to refuse what the
 * restore would refuse, before anything is written; once to write. A
 * directory that changes in between fails the backup ("stop the app"): its
 * data would be inconsistent. An archive equal to one already in the
 * repository is not stored twice (`dataAdded` 0).
 */
export async function tarBackup (dirIn: string, source: BackupSource, opts: BackupOptions): Promise<TarBackupResult> {
  const { signal } = opts
  signal.throwIfAborted()
  const tags = (opts.tags ?? []).map(checkTag)
  if (tags.length > MAX_TAGS) throw new UserError(`more than ${MAX_TAGS} tags`, { exitCode: EXIT.usage })
  const host = opts.host !== undefined ? checkHost(opts.host) : hostname()
  const { within, names } = backupSource(source)
  const dir = await openRepo(dirIn, `back up ${names.join(', ')} in ${within}`)
  const time = new Date().toISOString()
  const started = performance.now()

  // Pass 1: every refusal before a byte is written.
  const skipped: string[] = []
  const scans: TreeScan[] = []
  for (const name of names) {
    const path = join(within, name)
    const st = await lstat(path).catch(() => null)
    if (st === null) throw new UserError(`${path} does not exist`, { exitCode: EXIT.noInput, hint: 'check the path; nothing was backed up' })
    if (!st.isDirectory()) throw new UserError(`${path} is not a directory${st.isSymbolicLink() ? ' (a symlink, not followed)' : ''}`, { exitCode: EXIT.usage, hint: 'the tar fallback backs up directories only (an app\'s volume directories)' })
    scans.push(await scanTree({ dir: path, prefix: `${name}/`, label: `top-level directory ${name}`, noun: 'top-level directory' }, signal, skipped))
  }
  const bytesTotal = scans.reduce((n, s) => n + s.bytes, 0)
  const entriesTotal = scans.reduce((n, s) => n + s.entries, 0)
  const dirsTotal = scans.reduce((n, s) => n + s.dirs, 0)

  let bytesDone = 0
  let entriesDone = 0
  let lastReport = 0
  const report = (force = false): void => {
    if (opts.progress === undefined) return
    const now = performance.now()
    if (!force && now - lastReport < PROGRESS_MS) return
    lastReport = now
    const p: BackupProgress = {
      percent: bytesTotal === 0 ? (entriesTotal === 0 ? 100 : Math.round(entriesDone / entriesTotal * 10_000) / 100) : Math.round(bytesDone / bytesTotal * 10_000) / 100,
      bytesDone,
      bytesTotal,
      filesDone: entriesDone,
      filesTotal: entriesTotal,
      secondsElapsed: Math.floor((now - started) / 1000)
    }
    opts.progress(p)
  }

  // Pass 2: the archive, hashed as it is written, into a temp file of the repository.
  await removeStaleTemps(dir)
  await ensureLayout(dir)
  const temp = join(dir, `.dcloud-tar-${randomBytes(8).toString('hex')}.tmp`)
  let fh: FileHandle | null = null
  let archive: string
  let archiveBytes: number
  const listings: TreeResult[] = []
  try {
    fh = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
    const file = new FileSink(fh)
    const hash = createHash('sha256')
    const sink = hashingSink(file, hash)
    for (const scan of scans) {
      let before = 0
      const digest = await writeTree(sink, scan, signal, (entries, moved) => {
        entriesDone += entries - before
        before = entries
        bytesDone += moved
        report()
      })
      listings.push({ name: scan.prefix.slice(0, -1), entries: scan.entries, bytes: scan.bytes, listingSha256: digest })
    }
    await sink.write(endOfArchive())
    await file.flush()
    signal.throwIfAborted()
    await fh.chmod(FILE_MODE)
    await fh.sync()
    archiveBytes = file.size
    archive = hash.digest('hex')
    await fh.close()
    fh = null
  } catch (err) {
    await fh?.close().catch(() => {})
    await rm(temp, { force: true })
    throw diskFull(err, dir, 'writing a snapshot') ?? err
  }
  const added = await install(dir, temp, archivePath(archive), archive)

  const record: SnapshotRecord = {
    format: TAR_SNAPSHOT_FORMAT,
    version: TAR_SNAPSHOT_VERSION,
    time,
    hostname: host,
    username: currentUser(),
    tags,
    paths: names.map(n => join(within, n)),
    tree: treeOf(listings),
    archive,
    archiveBytes,
    entries: entriesTotal,
    bytes: bytesTotal
  }
  const recordBytes = Buffer.from(JSON.stringify(record) + '\n', 'utf8')
  const id = sha256(recordBytes)
  try {
    const recordTemp = await writeTemp(dir, recordBytes, signal)
    await fsyncReadOnly(recordTemp).catch(async (err: unknown) => { await unlink(recordTemp).catch(() => {}); throw err })
    await install(dir, recordTemp, join('snapshots', id), id)
  } catch (err) {
    throw diskFull(err, dir, 'writing a snapshot') ?? err
  }
  entriesDone = entriesTotal
  bytesDone = bytesTotal
  report(true)

  const files = entriesTotal - dirsTotal
  return {
    snapshotId: id,
    filesNew: added ? files : 0,
    filesChanged: 0,
    filesUnmodified: added ? 0 : files,
    dirsNew: added ? dirsTotal : 0,
    dirsChanged: 0,
    dirsUnmodified: added ? 0 : dirsTotal,
    dataAdded: added ? archiveBytes : 0,
    bytesProcessed: bytesTotal,
    filesProcessed: files,
    durationMs: Math.round(performance.now() - started),
    snapshot: toSnapshot(id, record),
    skipped,
    archive
  }
}

/** The names to archive, sorted (archives are deterministic) and checked as restic.ts checks them. */
function backupSource (source: BackupSource): { within: string, names: string[] } {
  let within: string
  let names: string[]
  if ('dir' in source) {
    const dir = resolve(source.dir)
    if (dir === '/') throw new UserError('refusing to back up / as one directory', { exitCode: EXIT.usage })
    within = dirname(dir)
    names = [basename(dir)]
  } else if ('within' in source) {
    within = resolve(source.within)
    names = [...source.names]
  } else {
    throw new UserError('the tar repository backs up directories by name ({ within, names } or { dir }), not absolute paths', { exitCode: EXIT.usage, hint: 'give the directory that holds them and their names' })
  }
  if (names.length === 0) throw new UserError('nothing to back up: no names given', { exitCode: EXIT.usage })
  if (names.length > MAX_NAMES) throw new UserError(`more than ${MAX_NAMES} names to back up`, { exitCode: EXIT.usage })
  for (const n of names) if (!isPlainName(n)) throw new UserError(`'${n}' is not a plain entry name`, { exitCode: EXIT.usage })
  if (new Set(names).size !== names.length) throw new UserError('a name is given twice', { exitCode: EXIT.usage })
  names.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
  return { within, names }
}

/**
 * The `tree` of a snapshot: one line per top-level entry, sorted by name,
 * with the sha256 of its content listing (tree.ts's listingLine: types,
 * modes, owners, sizes and content hashes; no times). Equal data, equal tree,
 * like restic's tree id.
 */
function treeOf (listings: Array<{ name: string, listingSha256: string }>): string {
  const h = createHash('sha256')
  const sorted = [...listings].sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)))
  for (const l of sorted) h.update(`${JSON.stringify(l.name)} ${l.listingSha256}\n`)
  return h.digest('hex')
}

/**
 * The tree a backup of these directories would record now, without writing
 * anything: compares live data (or a restore) with a snapshot's `tree`.
 */
export async function tarTreeDigest (within: string, names: string[], opts: SignalOptions): Promise<string> {
  const listings: Array<{ name: string, listingSha256: string }> = []
  for (const name of names) {
    if (!isPlainName(name)) throw new UserError(`'${name}' is not a plain entry name`, { exitCode: EXIT.usage })
    listings.push({ name, listingSha256: (await listingDigest(join(resolve(within), name), opts)).sha256 })
  }
  return treeOf(listings)
}

function hashingSink (inner: TarSink, hash: Hash): TarSink {
  return {
    write: async (b: Buffer): Promise<void> => {
      hash.update(b)
      await inner.write(b)
    }
  }
}

// ---------------------------------------------------------------------------
// Restoring

/**
 * Restores a snapshot as restic lays out a `{ within, names }` backup:
 * `target/NAME/...` for each name (restoreAsIs). `target` must not exist or
 * be empty. The archive is extracted into a fresh directory next to it
 * (tree.ts's safe extractor) while its SHA-256 is computed, and renamed
 * into place only once the hash matches the archive's name and the content
 * matches the record's tree: a damaged or hostile archive leaves nothing
 * behind. Returns the snapshot restored.
 */
export async function tarRestore (dirIn: string, snapshotId: string, targetDir: string, opts: RestoreOptions): Promise<Snapshot> {
  const { signal } = opts
  signal.throwIfAborted()
  checkSnapshotId(snapshotId)
  const target = resolve(targetDir)
  const action = `restore snapshot ${snapshotId} into ${target}`
  const dir = await openRepo(dirIn, action)
  await mustBeEmptyOrAbsent(target)
  const r = await findRecord(dir, snapshotId, signal)
  if (!r.archivePresent) throw missingArchive(action, dir, r)
  const rel = archivePath(r.record.archive)
  const file = join(dir, rel)
  const names = r.record.paths.map(p => basename(p))

  const staging = await mkdtemp(join(dirname(target), `.${basename(target)}.restore-`))
  try {
    const hash = createHash('sha256')
    const trees = new TreeExtractor(names, staging, { base: [], noun: 'top-level directory', declaredIn: 'the snapshot record' })
    let results: TreeResult[]
    try {
      const fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW)
      const input = fh.createReadStream({ highWaterMark: CHUNK, autoClose: false, signal })
      const tar = new TarReader(hashed(input, hash), { notTar: 'not a tar archive' })
      try {
        await trees.begin()
        for (let e = await tar.next(); e !== null; e = await tar.next()) {
          signal.throwIfAborted()
          await trees.entry(tar, e)
        }
        results = trees.finish()
      } finally {
        await tar.close().catch(() => {})
        await fh.close().catch(() => {})
      }
    } catch (err) {
      if (signal.aborted || !(err instanceof ArchiveError)) throw err
      // Damage (bytes that changed since the archive was named) or an archive dcloud would never write: say which.
      const actual = await fileSha256(file, signal).catch(() => null)
      if (actual !== r.record.archive) throw new TarRepoCorruptError(action, dir, [`the archive ${rel} does not match its name (${err.message})`])
      throw new TarRepoCorruptError(action, dir, [`the archive ${rel} holds what a restore must refuse: ${err.message}`], 'this archive was not written by dcloud; forget the snapshot, and restore another one or a peer\'s copy')
    }
    // The reader consumed the file to its end: the hash covers every byte.
    const actual = hash.digest('hex')
    if (actual !== r.record.archive) throw new TarRepoCorruptError(action, dir, [`the archive ${rel} does not match its name (its SHA-256 is ${actual})`])
    if (treeOf(results) !== r.record.tree) throw new TarRepoCorruptError(action, dir, [`the archive ${rel} does not hold the content snapshot ${r.id.slice(0, 8)} records (its tree differs)`])
    await trees.settle()
    try {
      await rename(staging, target)
    } catch (err) {
      throw renameError(err, target)
    }
    return toSnapshot(r.id, r.record)
  } catch (err) {
    await rm(staging, { recursive: true, force: true })
    throw diskFull(err, target, 'restoring a snapshot') ?? err
  }
}

async function * hashed (input: AsyncIterable<unknown>, hash: Hash): AsyncGenerator<Uint8Array> {
  for await (const c of input) {
    const b = c as Buffer
    hash.update(b)
    yield b
  }
}

// ---------------------------------------------------------------------------
// Forgetting

export interface TarForgetResult {
  /** Full ids of the snapshots removed. */
  removed: string[]
  /** Archives removed with them (data/XX/HASH): those no remaining snapshot uses. */
  archivesRemoved: string[]
}

/**
 * Removes snapshots (by id or unique prefix; any unknown id fails before
 * anything is removed), then the archives that no remaining snapshot uses.
 * Only ever called explicitly. A damaged record can be forgotten too (by its
 * file name); while any remaining record cannot be read, no archive is
 * removed, since it might be that record's.
 */
export async function tarForget (dirIn: string, ids: string[], opts: SignalOptions): Promise<TarForgetResult> {
  const { signal } = opts
  signal.throwIfAborted()
  for (const id of ids) checkSnapshotId(id)
  const dir = await openRepo(dirIn, `forget ${ids.length} snapshot(s)`)
  if (ids.length === 0) return { removed: [], archivesRemoved: [] }
  const loaded = await loadRecords(dir, signal)
  const all = [...loaded.records.map(r => r.id), ...loaded.unreadable.map(u => u.id)]
  const full = new Set<string>()
  for (const id of ids) {
    const found = all.filter(x => x.startsWith(id))
    if (found.length !== 1) throw new TarSnapshotNotFoundError(id, dir)
    full.add(found[0] as string)
  }
  // Records first: a crash in between leaves an archive nobody uses, never a snapshot without its archive.
  for (const id of full) await unlink(join(dir, 'snapshots', id)).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err })
  await syncDir(join(dir, 'snapshots'))

  const archivesRemoved: string[] = []
  const stillUnreadable = loaded.unreadable.some(u => !full.has(u.id))
  if (!stillUnreadable) {
    const used = new Set(loaded.records.filter(r => !full.has(r.id)).map(r => r.record.archive))
    const orphans = new Set(loaded.records.filter(r => full.has(r.id) && !used.has(r.record.archive)).map(r => r.record.archive))
    for (const a of orphans) {
      const path = join(dir, archivePath(a))
      const st = await lstat(path).catch(() => null)
      if (st === null || !st.isFile()) continue
      await unlink(path)
      await syncDir(dirname(path))
      archivesRemoved.push(archivePath(a))
    }
  }
  return { removed: [...full], archivesRemoved }
}

// ---------------------------------------------------------------------------
// Files

function sha256 (b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

async function fileSha256 (path: string, signal: AbortSignal): Promise<string> {
  const h = createHash('sha256')
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    for await (const c of fh.createReadStream({ highWaterMark: CHUNK, autoClose: false, signal })) h.update(c as Buffer)
  } finally {
    await fh.close()
  }
  return h.digest('hex')
}

/** A small regular file, whole, never through a symlink. */
async function readSmall (path: string, max: number): Promise<Buffer> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    const st = await fh.stat()
    if (!st.isFile()) throw new Error('not a regular file')
    if (st.size > max) throw new Error(`${st.size} bytes, more than ${max}`)
    const buf = Buffer.alloc(st.size)
    let at = 0
    while (at < st.size) {
      const { bytesRead } = await fh.read(buf, at, st.size - at, at)
      if (bytesRead === 0) break
      at += bytesRead
    }
    return buf.subarray(0, at)
  } finally {
    await fh.close()
  }
}

/** A new temp file in the repository directory holding `bytes`. */
async function writeTemp (dir: string, bytes: Buffer, signal: AbortSignal): Promise<string> {
  signal.throwIfAborted()
  const temp = join(dir, `.dcloud-tar-${randomBytes(8).toString('hex')}.tmp`)
  const fh = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
  try {
    await fh.writeFile(bytes)
    await fh.close()
  } catch (err) {
    await fh.close().catch(() => {})
    await unlink(temp).catch(() => {})
    throw err
  }
  return temp
}

async function fsyncReadOnly (path: string): Promise<void> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    await fh.chmod(FILE_MODE)
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/**
 * Gives a complete, fsynced temp file its hash name: a hard link, which
 * never replaces a file. A file already there under that name holds the same
 * bytes unless it was damaged since: it is checked, and a damaged one is
 * replaced. Returns whether the content was added. The temp file is gone
 * afterwards, whatever happened.
 */
async function install (dir: string, temp: string, rel: string, hash: string): Promise<boolean> {
  const final = join(dir, rel)
  try {
    await mkdir(dirname(final), { recursive: true, mode: DIR_MODE })
    let added = true
    try {
      await link(temp, final)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // Filesystems without hard links: the same decision, with a small race, then rename.
      const noLinks = code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOSYS'
      if (code !== 'EEXIST' && !noLinks) throw err
      const existing = await lstat(final).catch(() => null)
      if (existing === null && noLinks) {
        await rename(temp, final)
      } else if (existing === null) {
        throw err
      } else if (existing.isFile() && await fileSha256(final, AbortSignal.timeout(10 * 60_000)).catch(() => null) === hash) {
        added = false
      } else if (existing.isFile()) {
        await rename(temp, final)
      } else {
        throw new UserError(`${final} exists and is not a regular file; not replacing it`, { exitCode: EXIT.cantCreate, hint: 'move it away; nothing of this repository is ever a directory or a link there' })
      }
    }
    await syncDir(dirname(final))
    return added
  } finally {
    await unlink(temp).catch(() => {})
  }
}

async function ensureLayout (dir: string): Promise<void> {
  // A replica made by repo-sync has only the directories that held files.
  for (const sub of SUBDIRS) {
    const path = join(dir, sub)
    const st = await lstat(path).catch(() => null)
    if (st === null) {
      await mkdir(path, { mode: DIR_MODE })
      continue
    }
    if (!st.isDirectory()) throw new UserError(`${path} is not a directory${st.isSymbolicLink() ? ' but a symlink' : ''}; refusing to write through it`, { exitCode: EXIT.cantCreate })
  }
}

/** Temp files of crashed backups (a backup writes into its own temp file continuously, so a stale one is nobody's). */
async function removeStaleTemps (dir: string): Promise<void> {
  const now = Date.now()
  for (const name of await readdir(dir)) {
    if (!TEMP.test(name)) continue
    const path = join(dir, name)
    const st = await lstat(path).catch(() => null)
    if (st !== null && st.isFile() && now - st.mtimeMs > STALE_TEMP_MS) await unlink(path).catch(() => {})
  }
}

async function syncDir (path: string): Promise<void> {
  const fh = await open(path, constants.O_RDONLY | constants.O_DIRECTORY)
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

async function exists (path: string): Promise<boolean> {
  return await lstat(path).then(() => true, () => false)
}

function currentUser (): string {
  try {
    return userInfo().username.slice(0, 255)
  } catch {
    // A container's uid with no passwd entry.
    return ''
  }
}

// ---------------------------------------------------------------------------
// Checks (restic.ts's rules and words)

function isPlainName (n: string): boolean {
  return n !== '' && n !== '.' && n !== '..' && !n.includes('/') && !n.includes('\0') && !n.startsWith('-') && Buffer.byteLength(n) <= 255
}

