/**
 * A restic repository from one node to another: `/dcloud/repo-pull/1`
 * (messages in proto/snapshots.ts).
 *
 * Every node keeps one repository per app at ROOT/<app>, and all replicas of
 * an app's repository are the same restic repository (same config, keys and
 * password). restic's files are immutable and named by the SHA-256 of their
 * bytes (`keys/ID`, `snapshots/ID`, `index/ID`, `data/XX/ID`; `config` is the
 * only exception), so replicating is copying the files one side lacks, and
 * every file can be checked against its own name.
 *
 * Pull model: a node only ever writes files it asked for. The puller asks for
 * an app, gets the server's listing, answers with the paths it lacks (or whose
 * size differs from its own copy), and receives them in the order config,
 * keys, data, index, snapshots. Whatever prefix of that order has arrived is a
 * consistent restic repository: an interrupted pull leaves at most packs no
 * index mentions yet, which `restic check` calls harmless and the next pull
 * completes. The directories are fsynced at each step of that order, so the
 * same holds after a power cut.
 *
 * The puller checks every name and size before a byte of a file reaches its
 * disk, and every file's hash before it gets its name: a file is written to a
 * temp file in the repository directory, hashed on the way, fsynced, and
 * hard-linked into place, which never replaces an existing file. A failure
 * or an abort removes the temp file; the files completed before it stay (each
 * is valid content). `config` is the one file that cannot be checked by its
 * name: it is accepted only into a new repository, and a replica whose config
 * differs from the server's is another repository that happens to have the
 * same name ("diverged"): nothing is written then.
 *
 * Backpressure as in image-transfer.ts: the server sends only while the
 * muxer has room (else it waits for drain); the puller pauses the stream
 * while it writes to disk, which stops yamux granting the server window.
 */
import { createHash, randomBytes } from 'node:crypto'
import { constants, type Dirent } from 'node:fs'
import { link, lstat, mkdir, open, readdir, rename, stat, statfs, unlink, type FileHandle } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { byteStream, type ByteStream } from '@libp2p/utils'
import type { PeerId, Stream } from '@libp2p/interface'
import {
  REPO_FRAME_MAX_BYTES, REPO_LISTING_MAX_BYTES, REPO_PULL_PROTOCOL, REPO_REQUEST_MAX_BYTES,
  compareRepoPaths, decodeRepoListingBytes, decodeRepoPullRequestBytes, decodeRepoStreamFrameBytes, decodeRepoWantBytes,
  encodeRepoFrame, isRepoApp, parseRepoPath, repoFileLimit,
  type RepoErrorCode, type RepoFile, type RepoFileKind, type RepoListing, type RepoStreamFrame
} from '../../proto/snapshots.ts'
import { ValidationError } from '../../proto/validate.ts'
import type { Mesh } from '../mesh/mesh.ts'
import { StreamService, readFrame, readerOf, refuse, sendAll } from '../mesh/stream-service.ts'
import { Watchdog, sleep } from '../util/async.ts'
import type { Logger } from '../util/log.ts'

export { REPO_PULL_PROTOCOL }
export type { RepoFile }

/** Largest single file a puller accepts unless told otherwise (restic's packs are 16 MiB by default, 128 MiB at most). */
export const DEFAULT_MAX_FILE_BYTES = 4 * 1024 ** 3
/** Largest pull unless told otherwise; the free space of the replica's disk is checked as well. */
export const DEFAULT_MAX_PULL_BYTES = 1024 ** 4
/** A pull with no bytes moving for this long is dead. */
export const DEFAULT_IDLE_TIMEOUT_MS = 30_000
/** Pulls a node serves at once; more are answered `busy`. */
export const DEFAULT_MAX_CONCURRENT = 2
/** How long a server waits for its owner's lock (a backup running) before answering `busy`. */
export const DEFAULT_LOCK_WAIT_MS = 10_000
/** The server reads files in pieces of this size; each is handed to the muxer as is (never reused). */
const SEND_CHUNK = 256 * 1024
/** The puller reads and writes in pieces of at most this size. */
const RECEIVE_CHUNK = 1024 * 1024
/** Bytes either side may hold unread: a listing frame, or a yamux window (at most 16 MiB) landing while paused. */
const RECEIVE_BUFFER_BYTES = 64 * 1024 * 1024
/** Progress is reported at most this often. */
const PROGRESS_MS = 250
/** Space left free on the replica's disk after a pull. */
const FREE_SPACE_RESERVE = 64 * 1024 * 1024
/** restic leaves its files read-only and its directories private; replicas look the same. */
const FILE_MODE = 0o400
const DIR_MODE = 0o700
const TEMP_PATTERN = /^\.dcloud-pull-[0-9a-f]{16}\.tmp$/

export type RepoSyncErrorCode = RepoErrorCode | 'diverged' | 'protocol' | 'hash' | 'too_large' | 'no_space' | 'idle' | 'unreachable'

export class RepoSyncError extends Error {
  override name = 'RepoSyncError'
  readonly code: RepoSyncErrorCode

  constructor (code: RepoSyncErrorCode, message: string) {
    super(message)
    this.code = code
  }
}

export interface SyncProgress {
  peer: string
  app: string
  /** Files and bytes received of those asked for (config included: it is always fetched, to compare). */
  files: number
  filesTotal: number
  bytes: number
  bytesTotal: number
  ms: number
  done: boolean
}

export type RepoLock = (app: string) => Promise<() => void>

export interface PullOptions {
  signal: AbortSignal
  /** Called at most 4 times a second, and once with done: true. */
  progress?: (p: SyncProgress) => void
  /** Refuse a pull that needs more than this many bytes. Default 1 TiB (and the disk's free space). */
  maxBytes?: number
  /** Refuse any file larger than this (config and keys: 1 MiB at most). Default 4 GiB. */
  maxFileBytes?: number
  /** Give the peer up after this long without a byte. Default 30 s. */
  idleTimeoutMs?: number
  /** Held around the whole pull, so that nothing else (a restore, a prune) uses the replica meanwhile. */
  lock?: RepoLock
}

export interface PullResult {
  /** Files written into the replica, and their bytes. */
  files: number
  bytes: number
  /** Files the replica already had (the config when identical, which is always fetched to compare). */
  skipped: number
  ms: number
}

export interface RepoServerInit {
  /** Repositories are ROOT/<app>. */
  root: string
  log: Logger
  /** Taken around listing and sending, so that a backup into the same repository never overlaps a pull (see KeyedMutex). */
  lock?: RepoLock
  maxConcurrent?: number
  idleTimeoutMs?: number
  /** How long to wait for `lock` before answering busy. Default 10 s. */
  lockWaitMs?: number
  /** Caps each pull's sending rate (spares a Pi's SD card or a slow link). */
  maxBytesPerSecond?: number
}

export interface RepoServerCounters {
  /** Pulls served to the end, the files and bytes sent. */
  served: number
  files: number
  bytes: number
  notFound: number
  busy: number
  rejected: number
  failed: number
}

// ---------------------------------------------------------------------------
// The owner's lock (a KeyedMutex's acquire, agent/util/async.ts)

/**
 * Takes `lock(app)`, giving up after `ms` (null: never) or on abort. A lock
 * that arrives after we gave up is released at once.
 */
async function acquireWithin (lock: RepoLock, app: string, ms: number | null, signal: AbortSignal): Promise<(() => void) | null> {
  signal.throwIfAborted()
  return await new Promise((resolve, reject) => {
    let settled = false
    let timer: NodeJS.Timeout | undefined
    const settle = (fn: () => void): void => {
      settled = true
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      fn()
    }
    const onAbort = (): void => { if (!settled) settle(() => { reject(signal.reason) }) }
    signal.addEventListener('abort', onAbort, { once: true })
    if (ms !== null) timer = setTimeout(() => { if (!settled) settle(() => { resolve(null) }) }, ms)
    lock(app).then(release => {
      if (settled) release()
      else settle(() => { resolve(release) })
    }, (err: unknown) => {
      if (!settled) settle(() => { reject(err) })
    })
  })
}

// ---------------------------------------------------------------------------
// Listing

/**
 * The repository files in `dir`, in pull order: `config` and the
 * content-addressed files under restic's directories, regular files only
 * (symlinks are neither listed nor followed), `locks/` and anything else
 * left out. An absent `dir` lists nothing; `dir` itself must not be a symlink.
 */
export async function listRepoFiles (dir: string): Promise<RepoFile[]> {
  let top: Dirent[]
  try {
    const s = await lstat(dir)
    if (!s.isDirectory()) throw new Error(`${dir} is not a directory${s.isSymbolicLink() ? ' (a symlink, not followed)' : ''}`)
    top = await readdir(dir, { withFileTypes: true })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  const out: RepoFile[] = []
  const add = async (path: string): Promise<void> => {
    if (parseRepoPath(path) === null) return
    try {
      const s = await lstat(join(dir, path))
      // A zero-length file is a crash's leftover, never restic's: treat it as missing.
      if (s.isFile() && s.size > 0) out.push({ path, size: s.size })
    } catch {
      // Gone since readdir (a prune): not there.
    }
  }
  const entries = async (sub: string): Promise<Dirent[]> => {
    try {
      return await readdir(join(dir, sub), { withFileTypes: true })
    } catch {
      return []
    }
  }
  // Dirent types come from readdir, which does not follow symlinks: a symlinked file or directory is neither.
  for (const e of top) {
    if (e.name === 'config' && e.isFile()) await add('config')
    else if ((e.name === 'keys' || e.name === 'snapshots' || e.name === 'index') && e.isDirectory()) {
      for (const f of await entries(e.name)) if (f.isFile()) await add(`${e.name}/${f.name}`)
    } else if (e.name === 'data' && e.isDirectory()) {
      for (const sub of await entries('data')) {
        if (!sub.isDirectory() || !/^[0-9a-f]{2}$/.test(sub.name)) continue
        for (const f of await entries(`data/${sub.name}`)) if (f.isFile()) await add(`data/${sub.name}/${f.name}`)
      }
    }
  }
  out.sort((a, b) => compareRepoPaths(a.path, b.path))
  return out
}

// ---------------------------------------------------------------------------
// Server

/** A failure found before a file's header went out: the puller gets an error frame rather than a reset. */
class ServeRefusal extends Error {
  override name = 'ServeRefusal'
}

export class RepoServer extends StreamService<RepoServerCounters> {
  private readonly root: string
  private readonly lock: RepoLock | undefined
  private readonly idleTimeoutMs: number
  private readonly lockWaitMs: number
  private readonly maxBytesPerSecond: number | null

  constructor (mesh: Mesh, init: RepoServerInit) {
    super(mesh, { protocol: REPO_PULL_PROTOCOL, log: init.log, maxConcurrent: init.maxConcurrent ?? DEFAULT_MAX_CONCURRENT, what: 'repo-pull' }, { served: 0, files: 0, bytes: 0, notFound: 0, busy: 0, rejected: 0, failed: 0 })
    this.root = resolve(init.root)
    this.lock = init.lock
    this.idleTimeoutMs = init.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS
    this.lockWaitMs = init.lockWaitMs ?? DEFAULT_LOCK_WAIT_MS
    this.maxBytesPerSecond = init.maxBytesPerSecond ?? null
  }

  get activePulls (): number {
    return this.active
  }

  protected async serve (stream: Stream, from: PeerId): Promise<void> {
    const peer = from.toString()
    // The want frame may be as long as the listing.
    stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, RECEIVE_BUFFER_BYTES)
    const bytes = byteStream(stream, { maxBufferSize: REPO_LISTING_MAX_BYTES + 64 * 1024 })
    const request = await this.readRequest(stream, bytes, peer, REPO_REQUEST_MAX_BYTES, decodeRepoPullRequestBytes, (message) => encodeRepoFrame({ ok: false, error: { code: 'bad_request', message } }))
    if (request === null) return
    const { app } = request
    const freeSlot = await this.takeSlot(stream, (active) => encodeRepoFrame({ ok: false, error: { code: 'busy', message: `already serving ${active} repository pulls; try again shortly` } }))
    if (freeSlot === null) return
    const idle = new Watchdog(this.idleTimeoutMs, () => new Error(`no progress for ${this.idleTimeoutMs / 1000} s`))
    const signal = AbortSignal.any([idle.signal, this.controller.signal])
    const started = performance.now()
    let release: (() => void) | null = null
    const pace = { started, sent: 0 }
    let files = 0
    try {
      if (this.lock !== undefined) {
        // Waiting for the owner is not idleness: bounded by lockWaitMs alone.
        release = await acquireWithin(this.lock, app, this.lockWaitMs, this.controller.signal)
        if (release === null) {
          this.counters.busy++
          freeSlot()
          await refuse(stream, encodeRepoFrame({ ok: false, error: { code: 'busy', message: `the repository of ${app} is in use here (a backup?); try again shortly` } }))
          return
        }
      }
      idle.touch()
      const dir = join(this.root, app)
      const listing = await this.list(dir)
      if (listing === null) {
        this.counters.notFound++
        release?.()
        release = null
        freeSlot()
        await refuse(stream, encodeRepoFrame({ ok: false, error: { code: 'not_found', message: `no restic repository of ${app} on this node` } }))
        return
      }
      const answer: RepoListing = { ok: true, files: listing }
      await sendAll(stream, encodeRepoFrame(answer), signal)
      idle.touch()

      let want: RepoFile[]
      try {
        want = checkWant(decodeRepoWantBytes(await readFrame(readerOf(bytes, signal), REPO_LISTING_MAX_BYTES, 'want')).want, listing)
      } catch (err) {
        if (signal.aborted) throw err
        this.counters.rejected++
        this.log.debug('rejected repo-pull want', { from: peer, app, error: (err as Error).message })
        release?.()
        release = null
        freeSlot()
        await refuse(stream, encodeRepoFrame({ error: { code: 'bad_request', message: `bad request: ${(err as Error).message}` } }))
        return
      }
      idle.touch()
      this.log.info('sending repository', { app, to: peer, files: want.length, bytes: want.reduce((n, f) => n + f.size, 0) })
      for (const f of want) {
        await this.sendFile(dir, f, stream, signal, idle, pace)
        files++
      }
      const end: RepoStreamFrame = { end: { files, bytes: pace.sent } }
      await sendAll(stream, encodeRepoFrame(end), signal)
      await stream.close({ signal })
      this.counters.served++
      this.counters.files += files
      this.counters.bytes += pace.sent
      this.log.info('sent repository', { app, to: peer, files, bytes: pace.sent, ms: Math.round(performance.now() - started) })
    } catch (err) {
      const reason = signal.aborted ? signal.reason as Error : err as Error
      if (err instanceof ServeRefusal && !signal.aborted) {
        // Nothing of this file went out: say why, instead of a bare reset.
        this.counters.failed++
        this.log.warn('repository pull stopped', { app, to: peer, files, bytes: pace.sent, error: err.message })
        release?.()
        release = null
        freeSlot()
        await refuse(stream, encodeRepoFrame({ error: { code: 'failed', message: err.message } }))
        return
      }
      this.counters.failed++
      this.log.warn('repository pull failed', { app, to: peer, files, bytes: pace.sent, error: reason.message })
      stream.abort(reason)
    } finally {
      idle.stop()
      release?.()
      freeSlot()
    }
  }

  /** The files of the repository in `dir`, or null when there is none (absent, a symlink, no config). */
  private async list (dir: string): Promise<RepoFile[] | null> {
    try {
      const s = await lstat(dir)
      if (!s.isDirectory()) return null
    } catch {
      return null
    }
    const files = await listRepoFiles(dir)
    return files.some(f => f.path === 'config') ? files : null
  }

  /** Sends one file's header and bytes. Throws ServeRefusal only before the header went out. */
  private async sendFile (dir: string, file: RepoFile, stream: Stream, signal: AbortSignal, idle: Watchdog, pace: { started: number, sent: number }): Promise<void> {
    let fd: FileHandle
    try {
      // O_NOFOLLOW: a file swapped for a symlink since the listing is not followed out of the repository.
      fd = await open(join(dir, file.path), constants.O_RDONLY | constants.O_NOFOLLOW)
    } catch (err) {
      throw new ServeRefusal(`the repository changed during the pull (${file.path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); pull again`)
    }
    try {
      const s = await fd.stat()
      if (!s.isFile() || s.size !== file.size) throw new ServeRefusal(`the repository changed during the pull (${file.path} is now ${s.size} bytes, listed ${file.size}); pull again`)
      const header: RepoStreamFrame = { file }
      await sendAll(stream, encodeRepoFrame(header), signal)
      let pos = 0
      while (pos < file.size) {
        const n = Math.min(SEND_CHUNK, file.size - pos)
        // A fresh buffer each time: the muxer keeps a reference until the bytes are out.
        const buf = Buffer.allocUnsafe(n)
        const { bytesRead } = await fd.read(buf, 0, n, pos)
        // The header promised `size` bytes: a file that shrinks now can only end the stream.
        if (bytesRead === 0) throw new Error(`${file.path} shrank while being sent`)
        pos += bytesRead
        idle.touch()
        pace.sent += bytesRead
        await sendAll(stream, buf.subarray(0, bytesRead), signal)
        if (this.maxBytesPerSecond !== null) {
          // Not ahead of the rate: the pull's bytes so far, at maxBytesPerSecond, are due at this time.
          const ahead = pace.started + pace.sent / this.maxBytesPerSecond * 1000 - performance.now()
          if (ahead > 1) {
            await sleep(ahead, signal)
            idle.touch()
          }
        }
      }
    } finally {
      await fd.close().catch(() => {})
    }
  }
}

/** Checks a want list against the listing: listed paths only, each once. */
function checkWant (want: string[], listing: RepoFile[]): RepoFile[] {
  const byPath = new Map(listing.map(f => [f.path, f]))
  return want.map((path, i) => {
    const f = byPath.get(path)
    if (f === undefined) throw new ValidationError(`want[${i}]`, `${path} is not in the listing`)
    return f
  })
}

/**
 * Serves this node's repositories (ROOT/<app>) to its peers on
 * `/dcloud/repo-pull/1`. Any member of the cluster (it holds the cluster
 * key) may pull any app's repository: the content is encrypted with the
 * repository password, which the cluster shares anyway.
 */
export async function serveRepos (mesh: Mesh, init: RepoServerInit): Promise<RepoServer> {
  const server = new RepoServer(mesh, init)
  await server.start()
  return server
}

// ---------------------------------------------------------------------------
// Puller

/** Repositories this process is pulling into: a second pull into the same one would remove the first's temp file. */
const pulling = new Set<string>()

/**
 * Pulls the repository of `app` from `peer` into ROOT/<app>: every file the
 * replica lacks, checked by name, size and hash. Throws RepoSyncError (or the
 * signal's reason when aborted); files completed before a failure stay.
 */
export async function pullRepo (mesh: Mesh, peer: PeerId, app: string, root: string, opts: PullOptions): Promise<PullResult> {
  opts.signal.throwIfAborted()
  if (!isRepoApp(app)) throw new RepoSyncError('bad_request', `${JSON.stringify(app)} is not an app name`)
  const limits = {
    maxBytes: positive(opts.maxBytes, DEFAULT_MAX_PULL_BYTES, 'maxBytes'),
    maxFileBytes: positive(opts.maxFileBytes, DEFAULT_MAX_FILE_BYTES, 'maxFileBytes'),
    idleMs: positive(opts.idleTimeoutMs, DEFAULT_IDLE_TIMEOUT_MS, 'idleTimeoutMs')
  }
  const rootDir = resolve(root)
  const rs = await stat(rootDir).catch(() => null)
  if (rs === null || !rs.isDirectory()) throw new RepoSyncError('failed', `${rootDir} is not a directory; create it first`)
  const dir = join(rootDir, app)
  if (pulling.has(dir)) throw new RepoSyncError('busy', `a pull into ${dir} is already running`)
  pulling.add(dir)
  let release: (() => void) | null = null
  try {
    if (opts.lock !== undefined) release = await acquireWithin(opts.lock, app, null, opts.signal)
    return await new Puller(mesh, peer, app, rootDir, dir, opts, limits).run()
  } finally {
    release?.()
    pulling.delete(dir)
  }
}

function positive (value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback
  if (!Number.isSafeInteger(value) || value < 1) throw new RepoSyncError('bad_request', `${name} must be a positive integer, not ${value}`)
  return value
}

interface LocalRepo {
  exists: boolean
  config: Buffer | null
  files: Map<string, number>
}

class Puller {
  private readonly mesh: Mesh
  private readonly peerId: PeerId
  private readonly peer: string
  private readonly app: string
  private readonly root: string
  private readonly dir: string
  private readonly opts: PullOptions
  private readonly limits: { maxBytes: number, maxFileBytes: number, idleMs: number }
  private readonly idle: Watchdog
  private readonly signal: AbortSignal
  private readonly started = performance.now()
  private stream: Stream | null = null
  private bytes: ByteStream<Stream> | null = null
  /** The temp file being written, removed on any failure. */
  private temp: string | null = null
  /** Directories whose entries changed since their last fsync. */
  private readonly dirty = new Set<string>()
  /** Directories checked (real directories, no symlinks) during this pull. */
  private readonly checked = new Set<string>()
  private readonly progress = { files: 0, filesTotal: 0, bytes: 0, bytesTotal: 0, at: 0 }
  private readonly result: PullResult = { files: 0, bytes: 0, skipped: 0, ms: 0 }

  constructor (mesh: Mesh, peer: PeerId, app: string, root: string, dir: string, opts: PullOptions, limits: Puller['limits']) {
    this.mesh = mesh
    this.peerId = peer
    this.peer = peer.toString()
    this.app = app
    this.root = root
    this.dir = dir
    this.opts = opts
    this.limits = limits
    // Armed when the peer is dialled: reading a big replica's listing from a slow disk is not the peer's silence.
    this.idle = new Watchdog(limits.idleMs, () => new RepoSyncError('idle', `no bytes from ${shortPeer(this.peer)} for ${limits.idleMs / 1000} s`), false)
    this.signal = AbortSignal.any([opts.signal, this.idle.signal])
  }

  async run (): Promise<PullResult> {
    const onAbort = (): void => { this.stream?.abort(this.signal.reason as Error) }
    this.signal.addEventListener('abort', onAbort, { once: true })
    try {
      const local = await this.localRepo()
      await this.removeStaleTemps(local)
      this.idle.touch()
      try {
        this.stream = await this.mesh.host.dialProtocol(this.peerId, REPO_PULL_PROTOCOL, { signal: this.signal })
      } catch (err) {
        if (this.signal.aborted) throw err
        throw new RepoSyncError('unreachable', `cannot open ${REPO_PULL_PROTOCOL} to ${shortPeer(this.peer)}: ${(err as Error).message}`)
      }
      const stream = this.stream
      stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, RECEIVE_BUFFER_BYTES)
      this.bytes = byteStream(stream, { maxBufferSize: RECEIVE_BUFFER_BYTES })
      // Paused except while a read waits (see read()).
      stream.pause()

      await this.bytes.write(encodeRepoFrame({ app: this.app }), { signal: this.signal })
      const listing = decodeRepoListingBytes(await readFrame(async (n) => await this.read(n), REPO_LISTING_MAX_BYTES, 'listing'))
      this.idle.touch()
      if (!listing.ok) throw new RepoSyncError(listing.error.code, `${shortPeer(this.peer)}: ${listing.error.message}`)
      const want = this.plan(listing.files, local)
      await this.checkSpace(want)
      await this.bytes.write(encodeRepoFrame({ want: want.map(f => f.path) }), { signal: this.signal })

      let kind: RepoFileKind = 'config'
      for (let i = 0; i < want.length; i++) {
        const f = want[i] as RepoFile
        const k = parseRepoPath(f.path)?.kind ?? 'config'
        // Each step of the pull order reaches the disk before the next: a power cut keeps the order too.
        if (k !== kind) await this.syncDirs()
        kind = k
        await this.receive(f, i, want.length, local)
      }
      const end = await this.readStreamFrame()
      if ('error' in end) throw new RepoSyncError(end.error.code, `${shortPeer(this.peer)}: ${end.error.message}`)
      if (!('end' in end)) throw new RepoSyncError('protocol', `${shortPeer(this.peer)} sent ${end.file.path} after the ${want.length} file(s) asked for`)
      const total = want.reduce((n, f) => n + f.size, 0)
      if (end.end.files !== want.length || end.end.bytes !== total) throw new RepoSyncError('protocol', `${shortPeer(this.peer)} ended claiming ${end.end.files} files and ${end.end.bytes} bytes, not ${want.length} and ${total}`)
      if (!await this.atEnd()) throw new RepoSyncError('protocol', `${shortPeer(this.peer)} sent more after the end`)
      await this.syncDirs()
      await stream.close({ signal: this.signal }).catch(() => {})
      this.result.ms = performance.now() - this.started
      this.report(true)
      return this.result
    } catch (err) {
      const reason = this.opts.signal.aborted ? this.opts.signal.reason as Error : this.signal.aborted ? this.signal.reason as Error : err as Error
      this.stream?.abort(reason)
      await this.dropTemp()
      await this.syncDirs().catch(() => {})
      if (this.opts.signal.aborted) throw reason
      throw asSyncError(reason, this.peer)
    } finally {
      this.idle.stop()
      this.signal.removeEventListener('abort', onAbort)
    }
  }

  /** What the replica has: nothing when absent; refuses a repository reached through symlinks. */
  private async localRepo (): Promise<LocalRepo> {
    try {
      await lstat(this.dir)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { exists: false, config: null, files: new Map() }
      throw err
    }
    await this.realDir(this.dir, false)
    for (const sub of ['keys', 'snapshots', 'index', 'data', 'locks']) {
      try {
        await this.realDir(join(this.dir, sub), false)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      }
    }
    const files = new Map((await listRepoFiles(this.dir)).map(f => [f.path, f.size]))
    let config: Buffer | null = null
    if (files.has('config')) config = await readSmall(join(this.dir, 'config'), repoFileLimit('config', this.limits.maxFileBytes))
    return { exists: true, config, files }
  }

  /** Removes temp files a crashed pull left (no other pull into this repository runs in this process). */
  private async removeStaleTemps (local: LocalRepo): Promise<void> {
    if (!local.exists) return
    for (const name of await readdir(this.dir)) {
      if (!TEMP_PATTERN.test(name)) continue
      const path = join(this.dir, name)
      if ((await lstat(path)).isFile()) {
        await unlink(path)
        this.dirty.add(this.dir)
      }
    }
  }

  /** The files to ask for, in pull order: config always (to compare), the rest when missing or of another size. */
  private plan (listed: RepoFile[], local: LocalRepo): RepoFile[] {
    const want: RepoFile[] = []
    for (const f of listed) {
      const kind = parseRepoPath(f.path)?.kind ?? 'config'
      const limit = repoFileLimit(kind, this.limits.maxFileBytes)
      if (f.size > limit) throw new RepoSyncError('too_large', `${shortPeer(this.peer)} lists ${f.path} of ${f.size} bytes, more than the limit of ${limit}`)
      if (kind === 'config' || local.files.get(f.path) !== f.size) want.push(f)
    }
    want.sort((a, b) => compareRepoPaths(a.path, b.path))
    this.result.skipped = listed.length - want.length
    const total = want.reduce((n, f) => n + f.size, 0)
    if (total > this.limits.maxBytes) throw new RepoSyncError('too_large', `the pull needs ${total} bytes, more than the limit of ${this.limits.maxBytes}`)
    this.progress.filesTotal = want.length
    this.progress.bytesTotal = total
    this.report(false)
    return want
  }

  private async checkSpace (want: RepoFile[]): Promise<void> {
    const needed = want.reduce((n, f) => n + (f.path === 'config' ? 0 : f.size), 0)
    if (needed === 0) return
    const s = await statfs(this.root)
    const free = s.bavail * s.bsize
    if (needed > free - FREE_SPACE_RESERVE) {
      throw new RepoSyncError('no_space', `no space for the replica: the pull needs ${needed} bytes and ${this.root} has ${free} free (keeping ${FREE_SPACE_RESERVE} spare)`)
    }
  }

  private async readStreamFrame (): Promise<RepoStreamFrame> {
    const frame = decodeRepoStreamFrameBytes(await readFrame(async (n) => await this.read(n), REPO_FRAME_MAX_BYTES, 'file header'))
    this.idle.touch()
    return frame
  }

  private async receive (f: RepoFile, i: number, n: number, local: LocalRepo): Promise<void> {
    const frame = await this.readStreamFrame()
    if ('error' in frame) throw new RepoSyncError(frame.error.code, `${shortPeer(this.peer)}: ${frame.error.message}`)
    if ('end' in frame) throw new RepoSyncError('protocol', `${shortPeer(this.peer)} ended after ${i} of the ${n} file(s) asked for`)
    if (frame.file.path !== f.path) throw new RepoSyncError('protocol', `${shortPeer(this.peer)} sent ${JSON.stringify(frame.file.path)}, which was not asked for at this point (expected ${f.path})`)
    if (frame.file.size !== f.size) throw new RepoSyncError('protocol', `${shortPeer(this.peer)} sends ${f.path} as ${frame.file.size} bytes, listed as ${f.size}`)
    if (f.path === 'config') await this.receiveConfig(f.size, local)
    else await this.receiveFile(f)
  }

  /**
   * The config is the repository's identity (its id, its chunker): into a
   * replica that has one, only the identical config fits; otherwise another
   * repository has the same name, and nothing may be mixed into it.
   */
  private async receiveConfig (size: number, local: LocalRepo): Promise<void> {
    const body = Buffer.from(await this.readBody(size))
    this.advance(size)
    if (local.config !== null) {
      if (!local.config.equals(body)) {
        throw new RepoSyncError('diverged', `diverged: another repository with the same name; ${this.dir} has a different restic config than ${shortPeer(this.peer)}'s repository of ${this.app}, nothing was written`)
      }
      this.result.skipped++
      this.progress.files++
      return
    }
    // A new replica: restic's layout (as `restic init` makes it), then the config.
    await this.realDir(this.dir, true)
    for (const sub of ['keys', 'snapshots', 'index', 'locks', 'data']) await this.realDir(join(this.dir, sub), true)
    for (let b = 0; b < 256; b++) await this.realDir(join(this.dir, 'data', b.toString(16).padStart(2, '0')), true)
    const temp = await this.openTemp()
    try {
      await writeAll(temp.fd, body)
    } finally {
      await this.closeTemp(temp.fd)
    }
    await this.install(temp.path, 'config', size, body)
  }

  private async receiveFile (f: RepoFile): Promise<void> {
    const parsed = parseRepoPath(f.path)
    if (parsed === null || parsed.id === null) throw new RepoSyncError('protocol', `${f.path} is not a content-addressed file`)
    const target = join(this.dir, f.path)
    await this.realDir(this.dir, false)
    if (parsed.kind === 'data') await this.realDir(join(this.dir, 'data'), true)
    await this.realDir(dirname(target), true)
    const hash = createHash('sha256')
    const temp = await this.openTemp()
    try {
      let remaining = f.size
      while (remaining > 0) {
        const chunk = await this.readChunk(Math.min(remaining, RECEIVE_CHUNK), f.path, f.size - remaining)
        remaining -= chunk.byteLength
        hash.update(chunk)
        await writeAll(temp.fd, chunk)
        // A slow disk is not a silent peer.
        this.idle.touch()
        this.advance(chunk.byteLength)
      }
      const digest = hash.digest('hex')
      if (digest !== parsed.id) throw new RepoSyncError('hash', `${shortPeer(this.peer)} sent content for ${f.path} whose SHA-256 is ${digest}: not that file`)
    } finally {
      await this.closeTemp(temp.fd)
    }
    await this.install(temp.path, f.path, f.size, null)
    this.idle.touch()
  }

  private async readBody (size: number): Promise<Uint8Array> {
    try {
      return await this.read(size)
    } catch (err) {
      throw truncated(err, 'config', 0, this.peer)
    }
  }

  private async readChunk (n: number, path: string, at: number): Promise<Buffer> {
    let data: Uint8Array
    try {
      data = await this.read(n)
    } catch (err) {
      throw truncated(err, path, at, this.peer)
    }
    return Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  }

  /**
   * Reads exactly `n` bytes, letting the stream flow only while waiting.
   * yamux grants the server more window as soon as data arrives, not when it
   * is consumed: a stream left flowing while we hash, write or fsync would
   * buffer without bound (64 MiB gone in one fsync of a pack). Paused, at
   * most one window (16 MiB) is in flight. And it resumes only when what is
   * buffered already does not hold the `n` bytes: each resume hands the
   * stream's paused window over to the byte reader, and reading 1 MiB pieces
   * while resuming every time would pile windows up there (an overflow seen
   * on a slow disk).
   */
  private async read (n: number): Promise<Uint8Array> {
    const stream = this.stream as Stream
    const bytes = this.bytes as ByteStream<Stream> & { readBuffer?: { byteLength: number } }
    if (stream.readStatus === 'paused' && (bytes.readBuffer?.byteLength ?? 0) < n) stream.resume()
    try {
      const list = await bytes.read({ bytes: n, signal: this.signal })
      this.idle.touch()
      return list.subarray()
    } finally {
      if (stream.readStatus === 'readable') stream.pause()
    }
  }

  /** Whether the server closed its side with nothing more to read. */
  private async atEnd (): Promise<boolean> {
    const stream = this.stream as Stream
    if (stream.readStatus === 'paused') stream.resume()
    return await (this.bytes as ByteStream<Stream>).read({ signal: this.signal }) === null
  }

  private advance (n: number): void {
    this.progress.bytes += n
    this.report(false)
  }

  private report (done: boolean): void {
    if (this.opts.progress === undefined) return
    const now = performance.now()
    if (!done && this.progress.at !== 0 && now - this.progress.at < PROGRESS_MS) return
    this.progress.at = now
    try {
      this.opts.progress({
        peer: this.peer,
        app: this.app,
        files: this.progress.files,
        filesTotal: this.progress.filesTotal,
        bytes: this.progress.bytes,
        bytesTotal: this.progress.bytesTotal,
        ms: now - this.started,
        done
      })
    } catch {
      // A progress display that fails is not a reason to fail the pull.
    }
  }

  private async openTemp (): Promise<{ path: string, fd: FileHandle }> {
    // In the repository's top directory, where restic looks for nothing: a leftover never shows up as a pack.
    const path = join(this.dir, `.dcloud-pull-${randomBytes(8).toString('hex')}.tmp`)
    const fd = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
    this.temp = path
    this.dirty.add(this.dir)
    return { path, fd }
  }

  private async closeTemp (fd: FileHandle): Promise<void> {
    await fd.close().catch(() => {})
  }

  /**
   * Gives a verified temp file its name: read-only and fsynced first, then a
   * hard link, which fails rather than replace an existing file. An existing
   * file of the same size is the same content (or a crash's damage we cannot
   * tell from it; `restic check --read-data` can) and stays; one of another
   * size cannot be the content its name promises and is replaced.
   */
  private async install (temp: string, path: string, size: number, config: Buffer | null): Promise<void> {
    const fd = await open(temp, constants.O_RDONLY | constants.O_NOFOLLOW)
    try {
      await fd.chmod(FILE_MODE)
      await fd.sync()
    } finally {
      await fd.close()
    }
    const target = join(this.dir, path)
    let placed = true
    try {
      await link(temp, target)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // Filesystems without hard links: the same check, with a small race, then rename.
      const noLinks = code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOSYS'
      if (code !== 'EEXIST' && !noLinks) throw err
      const existing = await lstat(target).catch((e: NodeJS.ErrnoException) => { if (e.code === 'ENOENT') return null; throw e })
      if (existing === null && noLinks) {
        await rename(temp, target)
      } else if (existing === null) {
        throw err
      } else if (!existing.isFile()) {
        throw new RepoSyncError('failed', `${target} exists and is not a regular file; not replacing it`)
      } else if (existing.size === size) {
        if (config !== null) {
          const there = await readSmall(target, size)
          if (!there.equals(config)) throw new RepoSyncError('diverged', `diverged: another repository with the same name appeared at ${this.dir} during the pull`)
        }
        placed = false
      } else {
        await rename(temp, target)
      }
    }
    await unlink(temp).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err })
    this.temp = null
    this.dirty.add(dirname(target))
    this.progress.files++
    if (placed) {
      this.result.files++
      this.result.bytes += size
    } else {
      this.result.skipped++
    }
  }

  private async dropTemp (): Promise<void> {
    if (this.temp === null) return
    await unlink(this.temp).catch(() => {})
    this.temp = null
  }

  /**
   * Checks that `path` is a real directory (not a symlink: nothing is written
   * through one), making it when `create` and absent.
   */
  private async realDir (path: string, create: boolean): Promise<void> {
    if (this.checked.has(path)) return
    let s
    try {
      s = await lstat(path)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !create) throw err
      await mkdir(path, { mode: DIR_MODE })
      this.dirty.add(dirname(path))
      s = await lstat(path)
    }
    if (!s.isDirectory()) throw new RepoSyncError('failed', `${path} is not a directory${s.isSymbolicLink() ? ' but a symlink' : ''}; refusing to write through it`)
    this.checked.add(path)
  }

  private async syncDirs (): Promise<void> {
    for (const d of [...this.dirty]) {
      this.dirty.delete(d)
      const fd = await open(d, constants.O_RDONLY | constants.O_DIRECTORY)
      try {
        await fd.sync()
      } finally {
        await fd.close()
      }
    }
  }
}

function truncated (err: unknown, path: string, at: number, peer: string): Error {
  if (err instanceof Error && err.name === 'UnexpectedEOFError') return new RepoSyncError('protocol', `${shortPeer(peer)} closed the stream ${at} bytes into ${path} (truncated)`)
  return err as Error
}

function asSyncError (err: Error, peer: string): RepoSyncError {
  if (err instanceof RepoSyncError) return err
  if (err instanceof ValidationError) return new RepoSyncError('protocol', `${shortPeer(peer)} sent a bad message: ${err.message}`)
  if (err.name === 'UnexpectedEOFError') return new RepoSyncError('protocol', `${shortPeer(peer)} closed the stream early: ${err.message}`)
  if (err.name === 'StreamBufferError') return new RepoSyncError('protocol', `${shortPeer(peer)} sent more than we buffer: ${err.message}`)
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ENOSPC' || code === 'EDQUOT') return new RepoSyncError('no_space', `no space left for the replica: ${err.message}`)
  return new RepoSyncError('failed', `pull from ${shortPeer(peer)} failed: ${err.message}`)
}

// ---------------------------------------------------------------------------
// Helpers

/** Reads a small regular file without following a symlink. */
async function readSmall (path: string, max: number): Promise<Buffer> {
  const fd = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    const s = await fd.stat()
    if (!s.isFile() || s.size > max) throw new RepoSyncError('failed', `${path} is not a restic config (${s.size} bytes)`)
    return await fd.readFile()
  } finally {
    await fd.close()
  }
}

async function writeAll (fd: FileHandle, data: Uint8Array): Promise<void> {
  let off = 0
  while (off < data.byteLength) {
    const { bytesWritten } = await fd.write(data, off, data.byteLength - off)
    off += bytesWritten
  }
}

function shortPeer (peer: string): string {
  return `peer …${peer.slice(-8)}`
}
