/**
 * Snapshots of apps on this node: taking them (quiesced), listing them,
 * restoring them into an app's volumes, and replicating them to peers.
 *
 * Layout, under DATA_DIR/snapshots:
 *
 *   restic.pw             the repositories' password, derived from the cluster key:
 *                         every node of the cluster computes the same one
 *   repos/APP/            one plain restic repository per app; every node that
 *                         holds the app's snapshots holds a copy of the same
 *                         repository (repo-sync.ts copies its files)
 *   cache/                restic's cache
 *
 * A snapshot holds the app's Docker volume directories side by side
 * (`dcloud-APP-VOL/_data/...`), taken from Docker's volumes directory, tagged
 * `dcloud.app=APP`, `dcloud.purpose=...`, `dcloud.gen=N` and, for copies
 * the user must notice, `dcloud.label=...`; the host is the node's name.
 *
 * Every restic call on an app's repository and every pull into it or from it
 * holds the app's lock: a peer never copies a half-written file, and two
 * restic processes never race on one repository.
 */
import { execFile } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import { createHmac } from 'node:crypto'
import { chmod, chown, lstat, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, statfs, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type { PeerId } from '@libp2p/interface'
import type { AppStorage, DesiredApp } from '../../proto/plan.ts'
import { SNAPSHOT_DEFAULTS, isStateful, type SnapshotPolicy } from '../../proto/app.ts'
import type { SnapshotInfo, SnapshotPurpose } from '../../proto/cluster.ts'
import { NoSpaceError, UserError, EXIT } from '../util/errors.ts'
import type { Logger } from '../util/log.ts'
import type { AppRuntime } from '../runtime/apps.ts'
import { volumeName } from '../runtime/apps.ts'
import { RepoMissingError, type ResticRepo, type Snapshot } from './restic.ts'
import { openRepository, type SnapshotRepository } from './repository.ts'
import { snapshotsToForget, type KeepRule } from '../../scheduler/retention.ts'
import { RepoSyncError } from './repo-sync.ts'

/** Purposes whose snapshots are never restored automatically: they hold a copy the user decides about. */
const NOT_RESTORABLE = new Set<string>(['divergent', 'replaced', 'prepass', 'fenced'])
/** restic's prune rewrites packs and reads the whole index: at most this often per repository. */
const PRUNE_EVERY_MS = 24 * 3600_000
/** A pull answered `busy` is tried again this many times (about 40 s in all). */
const PULL_BUSY_RETRIES = 12
/** An increment with more changed paths than this is restored in full (the paths go on restic's command line). */
const MAX_INCREMENT_PATHS = 4000
/**
 * What a restore must leave free beside the data it writes: file system
 * overhead (directories, inodes of many small files) and room for the app to
 * keep writing once it runs. The same margin a replica pull keeps (repo-sync.ts).
 */
export const RESTORE_SPARE_BYTES = 64 * 1024 * 1024

export interface SnapshotServiceInit {
  dataDir: string
  clusterKey: Uint8Array
  nodeName: () => string
  runtime: AppRuntime
  /** Serialises everything that touches one app's repository (restic runs, pulls, serving pulls). */
  lock: (app: string) => Promise<() => void>
  /** Pulls the app's repository from a peer into `reposRoot` (repo-sync.ts). */
  pull: (peer: PeerId | string, app: string, signal: AbortSignal) => Promise<{ files: number, bytes: number }>
  log: Logger
  /** restic's binary; default `restic` from PATH. */
  restic?: string
}

export interface TakeOptions {
  purpose: SnapshotPurpose
  generation: number
  signal: AbortSignal
  /** How the app is quiesced for the pass that counts; default the app's policy. */
  quiesce?: SnapshotPolicy['quiesce']
  hook?: SnapshotPolicy['hook']
  label?: string | null
  progress?: (line: string) => void
  /** false: do not look up the snapshot's full record afterwards (saves a restic run; the info has no tree). */
  describe?: boolean
}

export class NoVolumesError extends UserError {
  override name = 'NoVolumesError'
  constructor (app: string) {
    super(`${app} has no volumes on this node: nothing to snapshot`, { exitCode: EXIT.noInput, hint: '`dcloud app ls` shows which node runs it' })
  }
}

export class SnapshotService {
  readonly root: string
  readonly reposRoot: string
  readonly passwordFile: string
  private readonly cacheDir: string
  private readonly init: SnapshotServiceInit
  /** Listings by app, dropped whenever the repository changes (a restic call costs about half a second). */
  private readonly listings = new Map<string, SnapshotInfo[]>()
  /** Copies restored ahead of a move, by app: which snapshot, in which stage directory. */
  private readonly stages = new Map<string, { snapshot: string, dir: string }>()
  /** When each app's repository was last pruned here, and which have forgotten snapshots not pruned yet. */
  private readonly prunedAt = new Map<string, number>()
  private readonly unpruned = new Set<string>()
  /** Whether this node has restic (found at start); without it new repositories are tar repositories. */
  private resticFound = true
  /** Each app's repository here, once it exists (a repository never changes format). */
  private readonly repos = new Map<string, SnapshotRepository>()

  constructor (init: SnapshotServiceInit) {
    this.init = init
    this.root = join(init.dataDir, 'snapshots')
    this.reposRoot = join(this.root, 'repos')
    this.passwordFile = join(this.root, 'restic.pw')
    this.cacheDir = join(this.root, 'cache')
  }

  /** Creates the directories and writes the password derived from the cluster key (every node derives the same). */
  async start (): Promise<void> {
    this.resticFound = await hasProgram(this.init.restic ?? 'restic')
    if (!this.resticFound) this.init.log.warn('restic is missing: new snapshot repositories here are tar repositories (full copies, not encrypted at rest); install restic for incremental, encrypted ones', { restic: this.init.restic ?? 'restic' })
    await mkdir(this.reposRoot, { recursive: true, mode: 0o700 })
    await mkdir(this.cacheDir, { recursive: true, mode: 0o700 })
    const password = repositoryPassword(this.init.clusterKey) + '\n'
    let current: string | null = null
    try { current = await readFile(this.passwordFile, 'utf8') } catch {}
    if (current !== password) {
      if (current !== null) this.init.log.warn('the repository password changed with the cluster key; repositories made with the old key need the old password', { file: this.passwordFile })
      await writeFile(`${this.passwordFile}.tmp`, password, { mode: 0o600 })
      await rename(`${this.passwordFile}.tmp`, this.passwordFile)
    }
  }

  private resticRepo (app: string): ResticRepo {
    return { repo: join(this.reposRoot, app), passwordFile: this.passwordFile, cacheDir: this.cacheDir, ...(this.init.restic !== undefined ? { binary: this.init.restic } : {}) }
  }

  /**
   * The app's repository here, its backend chosen once (repository.ts): what
   * its config says when it exists (a replica keeps its origin's format),
   * else restic where this node has it and tar where it does not. Kept once
   * it exists; until then a pull may still bring a replica of either format.
   */
  private async repository (app: string): Promise<SnapshotRepository> {
    const known = this.repos.get(app)
    if (known !== undefined) return known
    const repo = await openRepository(this.resticRepo(app), this.resticFound)
    if (await exists(join(repo.dir, 'config'))) this.repos.set(app, repo)
    return repo
  }

  private async withLock<T> (app: string, fn: () => Promise<T>): Promise<T> {
    const release = await this.init.lock(app)
    try {
      return await fn()
    } finally {
      release()
    }
  }

  /** Apps with a repository here. */
  async apps (): Promise<string[]> {
    try {
      return (await readdir(this.reposRoot)).filter(n => !n.startsWith('.')).sort()
    } catch {
      return []
    }
  }

  /** Forget the cached listing of an app (after a pull changed its repository). */
  changed (app: string): void {
    this.listings.delete(app)
  }

  // ---- taking ------------------------------------------------------------

  /**
   * Snapshots the app's volumes on this node. A running app is quiesced for
   * the pass that counts (paused, or stopped and started again, or not at all,
   * as its policy says), after its hook ran; the first snapshot on a node is
   * preceded by a pass while the app runs, so the quiesced pass only copies
   * what changed meanwhile.
   */
  async take (app: DesiredApp, opts: TakeOptions): Promise<SnapshotInfo> {
    const policy = app.manifest.snapshots ?? SNAPSHOT_DEFAULTS
    const { runtime, log } = this.init
    const say = (line: string): void => { opts.progress?.(line) }
    const volumes = await runtime.volumes(app.name, opts.signal)
    if (volumes.length === 0) throw new NoVolumesError(app.name)
    const within = volumesDir(volumes.map(v => v.mountpoint))
    const names = volumes.map(v => basename(dirname(v.mountpoint)))
    const hook = opts.hook !== undefined ? opts.hook : policy.hook
    if (hook !== null) {
      say(`running the pre-snapshot hook in ${hook.service}`)
      await runtime.exec(app.name, hook.service, hook.command, opts.signal)
    }
    const tags = [`dcloud.app=${app.name}`, `dcloud.purpose=${opts.purpose}`, `dcloud.gen=${opts.generation}`]
    if (opts.label != null) tags.push(`dcloud.label=${opts.label}`)
    const host = hostTag(this.init.nodeName())

    return await this.withLock(app.name, async () => {
      const repo = await this.ensureRepo(app.name, opts.signal)
      const quiesce = opts.quiesce ?? policy.quiesce
      const started = performance.now()
      // A repository that is not incremental copies everything at every pass: a prepass would only double the work.
      if (quiesce !== 'none' && repo.incremental) {
        const all = await repo.snapshots({ signal: opts.signal, tags: [`dcloud.app=${app.name}`] })
        // restic is incremental against this host's last snapshot of the same paths, and re-reads files
        // whose metadata changed: with none of its own yet, or when the newest snapshot came from another
        // node (its data was restored here by a move or a failover since), the quiesced pass would read
        // everything. Copy the bulk while the app runs; the paused pass then reads only what changed.
        const newest = all.at(-1)
        if (newest === undefined || newest.hostname !== host) {
          say('copying the bulk while the app runs')
          await repo.backup({ within, names }, { tags: [`dcloud.app=${app.name}`, 'dcloud.purpose=prepass', `dcloud.gen=${opts.generation}`], host, signal: opts.signal })
        }
      }
      const frozen = quiesce === 'none' ? [] : await runtime.quiesce(app.name, quiesce, opts.signal)
      const quiescedAt = performance.now()
      let result
      try {
        if (frozen.length > 0) say(`${quiesce === 'pause' ? 'paused' : 'stopped'} ${frozen.length} container(s) for the final pass`)
        const options = {
          tags,
          host,
          signal: opts.signal,
          ...(opts.describe === false ? { describe: false } : {}),
          progress: (p: { percent: number, bytesDone: number, bytesTotal: number | null }) => { say(`snapshot ${Math.round(p.percent)}% (${p.bytesDone} of ${p.bytesTotal ?? '?'} bytes)`) }
        }
        result = await repo.backup({ within, names }, options)
      } finally {
        if (frozen.length > 0 && quiesce !== 'none') await runtime.resume(app.name, frozen, quiesce, AbortSignal.timeout(60_000))
      }
      const quiescedMs = frozen.length > 0 ? Math.round(performance.now() - quiescedAt) : 0
      this.listings.delete(app.name)
      const info = infoOf(result.snapshot, app.name, result.bytesProcessed, result.dataAdded)
      log.info('snapshot taken', { app: app.name, id: info.id, purpose: opts.purpose, bytes: info.bytes, added: info.added, quiescedMs, ms: Math.round(performance.now() - started) })
      return info
    })
  }

  /** The app's repository here, created if there is none (restic where this node has it, else tar). */
  private async ensureRepo (app: string, signal: AbortSignal): Promise<SnapshotRepository> {
    const repo = await this.repository(app)
    if (this.repos.has(app)) return repo
    await repo.init({ signal })
    this.repos.set(app, repo)
    this.init.log.info('snapshot repository created', { app, repo: repo.dir, format: repo.format })
    return repo
  }

  /**
   * A snapshot of directories that are not (yet) Docker volumes: `stage`
   * holds one `dcloud-APP-VOL/_data` per volume, as a snapshot of the
   * running app would (a backup file being restored).
   */
  async importStaged (app: string, stage: string, purpose: SnapshotPurpose, signal: AbortSignal): Promise<SnapshotInfo> {
    const names = (await readdir(stage)).sort()
    if (names.length === 0) throw new UserError('nothing to import: no volumes', { exitCode: EXIT.dataError })
    return await this.withLock(app, async () => {
      const repo = await this.ensureRepo(app, signal)
      const r = await repo.backup({ within: stage, names }, { tags: [`dcloud.app=${app}`, `dcloud.purpose=${purpose}`, 'dcloud.gen=1'], host: hostTag(this.init.nodeName()), signal })
      this.listings.delete(app)
      return infoOf(r.snapshot, app, r.bytesProcessed, r.dataAdded)
    })
  }

  /**
   * Restores a snapshot into `target` laid out by volume: `target/VOL` holds
   * volume VOL's data (what a backup file is written from).
   */
  async restoreToDirs (app: string, snapshotId: string, target: string, signal: AbortSignal): Promise<Record<string, string>> {
    const restored = await this.withLock(app, async () => await this.restoreLaidOut(app, snapshotId, join(target, 'restic'), signal, true))
    const base = join(target, 'restic')
    const entries = await exists(join(base, '_data')) ? [[basename(restored?.paths[0] ?? ''), base] as const] : (await readdir(base)).map(e => [e, join(base, e)] as const)
    const prefix = `dcloud-${app}-`
    const dirs: Record<string, string> = {}
    for (const [name, dir] of entries) {
      if (!name.startsWith(prefix)) continue
      dirs[name.slice(prefix.length)] = join(dir, '_data')
    }
    return dirs
  }

  // ---- listing -----------------------------------------------------------

  /** The app's snapshots held here, oldest first (prepasses left out). */
  async list (app: string, signal: AbortSignal): Promise<SnapshotInfo[]> {
    return (await this.listAll(app, signal)).filter(s => s.purpose !== ('prepass' as string))
  }

  /** Every snapshot of the app held here, prepasses included, oldest first. */
  private async listAll (app: string, signal: AbortSignal): Promise<SnapshotInfo[]> {
    const cached = this.listings.get(app)
    if (cached !== undefined) return cached
    let snaps: Snapshot[]
    try {
      await stat(join(this.reposRoot, app, 'config'))
    } catch {
      return []
    }
    try {
      const repo = await this.repository(app)
      snaps = await this.withLock(app, async () => await repo.snapshots({ signal, tags: [`dcloud.app=${app}`], onSkip: (path, reason) => { this.init.log.warn(`a snapshot of the ${repo.format} repository is unreadable here; skipped`, { app, path, reason }) } }))
    } catch (err) {
      if (err instanceof RepoMissingError) return []
      throw err
    }
    const out = snaps.map(s => infoOf(s, app, 0, 0)).sort((a, b) => a.time - b.time)
    this.listings.set(app, out)
    return out
  }

  /** The newest snapshot of every app held here that may be restored automatically (for the status gossip). */
  async holdings (signal: AbortSignal): Promise<Array<{ app: string, id: string, time: number }>> {
    const out: Array<{ app: string, id: string, time: number }> = []
    for (const app of await this.apps()) {
      try {
        const newest = (await this.list(app, signal)).filter(s => !NOT_RESTORABLE.has(s.purpose)).at(-1)
        if (newest !== undefined) out.push({ app, id: newest.id, time: newest.time })
      } catch (err) {
        this.init.log.debug('cannot list snapshots', { app, error: (err as Error).message })
      }
    }
    return out
  }

  async find (app: string, id: string, signal: AbortSignal): Promise<SnapshotInfo | null> {
    return (await this.list(app, signal)).find(s => s.id === id || s.id.startsWith(id)) ?? null
  }

  // ---- restoring -----------------------------------------------------------

  /**
   * Makes the app's volumes here hold `snapshotId`. A volume that holds data
   * is snapshotted first (purpose `replaced`): nothing is overwritten that
   * is not kept. Volumes of the snapshot taken from an app of another name
   * (a backup restored under a new name) map by their compose volume name.
   */
  async restoreVolumes (app: DesiredApp, snapshotId: string, opts: { signal: AbortSignal, progress?: (line: string) => void }): Promise<void> {
    const { runtime } = this.init
    const say = (line: string): void => { opts.progress?.(line) }

    const existing = await runtime.volumes(app.name, opts.signal)
    const filled: string[] = []
    for (const v of existing) if ((await readdir(v.mountpoint)).length > 0) filled.push(v.volume)
    if (filled.length > 0) {
      say(`volumes ${filled.join(', ')} hold data: keeping it as a snapshot first`)
      const kept = await this.take(app, { purpose: 'replaced', generation: app.generation ?? 1, signal: opts.signal, quiesce: 'stop', hook: null })
      say(`kept as snapshot ${kept.id}`)
    }

    const mountpoints = new Map<string, string>()
    for (const volume of Object.keys(app.manifest.compose.volumes)) mountpoints.set(volume, await runtime.createVolume(app, volume, opts.signal))
    // Work directories go beside the data, on its file system, so that restored files are renamed into place:
    // Docker's data directory, or the storage's own directory (often a disk of its own).
    const dataRoot = app.storage != null ? app.storage.hostPath : dirname(volumesDir([...mountpoints.values()]))
    const staged = this.stages.get(app.name)
    this.stages.delete(app.name)
    const work = await mkdtemp(join(dataRoot, app.storage != null ? '.dcloud-restore-' : 'dcloud-restore-'))
    try {
      let target = join(work, 'out')
      let fromStage = false
      if (staged !== undefined && dirname(staged.dir) === dataRoot) {
        try {
          const started = performance.now()
          const changes = await this.applyIncrement(app.name, staged, snapshotId, opts.signal)
          target = join(staged.dir, 'out')
          fromStage = true
          say(`brought the copy staged from ${staged.snapshot} up to snapshot ${snapshotId}: ${changes} change(s) in ${Math.round(performance.now() - started)} ms`)
        } catch (err) {
          this.init.log.warn('the staged copy could not be brought up to date: restoring in full', { app: app.name, staged: staged.snapshot, snapshot: snapshotId, error: (err as Error).message })
        }
      }
      if (!fromStage) {
        say(`restoring snapshot ${snapshotId}`)
        // One restic run, no lookup: on a move this is the critical path.
        await this.withLock(app.name, async () => { await this.restoreLaidOut(app.name, snapshotId, target, opts.signal) })
      }
      // Each volume's directory, `dcloud-APP-VOL`, as a top-level entry (restic names relative entries by their name).
      const dirs = new Map<string, string>()
      for (const entry of await readdir(target)) dirs.set(entry, join(target, entry))
      const suffix = (volume: string): string => `-${volume}`
      for (const [volume, mountpoint] of mountpoints) {
        const from = dirs.get(volumeName(app.name, volume)) ?? [...dirs.entries()].find(([name]) => name.startsWith('dcloud-') && name.endsWith(suffix(volume)))?.[1]
        if (from === undefined) {
          say(`volume ${volume}: not in the snapshot, left empty`)
          continue
        }
        await emptyDir(mountpoint)
        const src = join(from, '_data')
        for (const entry of await readdir(src)) await rename(join(src, entry), join(mountpoint, entry))
        const st = await lstat(src)
        await chown(mountpoint, st.uid, st.gid)
        await chmod(mountpoint, st.mode & 0o7777)
      }
    } finally {
      await rm(work, { recursive: true, force: true })
      if (staged !== undefined) await rm(staged.dir, { recursive: true, force: true })
    }
  }

  /**
   * Restores a snapshot as restic lays it out, its top-level entries
   * (`dcloud-APP-VOL`) under `target`, in either format. `lookup`: restic
   * looks the snapshot up first (for its paths); on a move's critical path
   * it does not (one restic run less).
   */
  private async restoreLaidOut (app: string, snapshotId: string, target: string, signal: AbortSignal, lookup = false): Promise<Snapshot | null> {
    return await (await this.repository(app)).restore(snapshotId, target, { signal, lookup })
  }

  /**
   * Restores a snapshot beside Docker's volumes while the app still runs
   * elsewhere (a move's copy phase). The move's restore then applies only
   * what changed since (applyIncrement) instead of restoring everything
   * while the app is down. A stage is only a copy: dropping it loses nothing.
   */
  async stage (app: string, snapshotId: string, storage: AppStorage | null, signal: AbortSignal): Promise<void> {
    // Only an incremental repository can name what changed since: another restores in full anyway.
    if (!(await this.repository(app)).incremental) return
    let dir: string
    if (storage !== null) {
      await mkdir(storage.hostPath, { recursive: true, mode: 0o755 })
      dir = join(storage.hostPath, `.dcloud-stage-${app}`)
    } else {
      dir = join(await this.init.runtime.dataRoot(signal), `dcloud-stage-${app}`)
    }
    this.stages.delete(app)
    await rm(dir, { recursive: true, force: true })
    await mkdir(dir, { mode: 0o700 })
    const started = performance.now()
    try {
      await this.withLock(app, async () => { await this.restoreLaidOut(app, snapshotId, join(dir, 'out'), signal) })
    } catch (err) {
      await rm(dir, { recursive: true, force: true })
      throw err
    }
    this.stages.set(app, { snapshot: snapshotId, dir })
    this.init.log.info('staged a copy ahead of a move', { app, snapshot: snapshotId, ms: Math.round(performance.now() - started) })
  }

  /**
   * Refuses, with the figures, a restore of `bytes` of data that this node's
   * disk cannot hold (where the app's volumes go: Docker's data root, or its
   * storage directory). Called before a move stages its copy: a stage left
   * by an earlier attempt is only a copy, dropped first so its space counts
   * (the move stages again when there is room).
   */
  async checkRestoreRoom (app: string, storage: AppStorage | null, bytes: number, signal: AbortSignal): Promise<void> {
    const old = this.stages.get(app)
    if (old !== undefined) {
      this.stages.delete(app)
      await rm(old.dir, { recursive: true, force: true })
    }
    const dir = storage !== null ? storage.hostPath : await this.init.runtime.dataRoot(signal)
    let free: number
    try {
      const s = await statfs(dir)
      free = s.bavail * s.bsize
    } catch {
      return // a storage directory not made yet: the restore makes it, and says so if it fails
    }
    if (bytes + RESTORE_SPARE_BYTES > free) {
      throw new NoSpaceError(`${this.init.nodeName()} has no room for ${app}'s data: restoring it needs ${bytes} bytes and ${dir} has ${free} free (keeping ${RESTORE_SPARE_BYTES} spare)`,
        `free space on ${this.init.nodeName()}, or move ${app} to another node; it keeps running where it is`)
    }
  }

  /** Stage directories left by moves that never finished (an agent restart forgets its stages). */
  async dropStages (signal: AbortSignal): Promise<void> {
    const root = await this.init.runtime.dataRoot(signal)
    for (const entry of await readdir(root).catch(() => [] as string[])) {
      if (entry.startsWith('dcloud-stage-') && !this.stages.has(entry.slice('dcloud-stage-'.length))) await rm(join(root, entry), { recursive: true, force: true })
    }
  }

  /** Brings a staged copy up to `snapshotId` (increment.ts); the number of changes applied. */
  private async applyIncrement (app: string, staged: { snapshot: string, dir: string }, snapshotId: string, signal: AbortSignal): Promise<number> {
    if (staged.snapshot === snapshotId) return 0
    const repo = await this.repository(app)
    return await this.withLock(app, async () => await repo.increment(staged.snapshot, snapshotId, join(staged.dir, 'out'), { signal, maxPaths: MAX_INCREMENT_PATHS }))
  }

  // ---- retention -------------------------------------------------------------

  /**
   * Forgets the snapshots the retention rule lets go (scheduler/retention.ts)
   * and, at most once a day and only after forgetting, prunes the data no
   * snapshot needs any more. Returns the ids forgotten.
   */
  async applyRetention (app: string, rule: KeepRule, keepIds: ReadonlySet<string>, signal: AbortSignal): Promise<string[]> {
    const all = await this.listAll(app, signal)
    const forget = snapshotsToForget(all, rule, keepIds)
    const dueForPrune = (): boolean => this.unpruned.has(app) && Date.now() - (this.prunedAt.get(app) ?? 0) >= PRUNE_EVERY_MS
    if (forget.length === 0 && !dueForPrune()) return []
    const repo = await this.repository(app)
    await this.withLock(app, async () => {
      if (forget.length > 0) {
        await repo.forget(forget, { signal })
        // A repository that is not incremental freed the space as it forgot: nothing to prune.
        if (repo.incremental) this.unpruned.add(app)
      }
      if (dueForPrune()) {
        await repo.prune({ signal })
        this.prunedAt.set(app, Date.now())
        this.unpruned.delete(app)
        this.init.log.info('repository pruned', { app })
      }
    })
    this.listings.delete(app)
    if (forget.length === 0) return []
    this.init.log.info('snapshots forgotten by the retention rule', { app, forgotten: forget.length, ids: forget.slice(0, 20) })
    return forget
  }

  // ---- replication ---------------------------------------------------------

  /** Fetches the app's repository from a peer (only what is missing here). */
  async pullFrom (peer: PeerId | string, app: string, signal: AbortSignal): Promise<{ files: number, bytes: number }> {
    // `busy`: a pull of the same app is running here (a replication meeting a move's sync), or the peer's
    // repository is in use. Both end soon; two nodes pulling from each other back off at random.
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await this.init.pull(peer, app, signal)
        if (r.files > 0) this.listings.delete(app)
        return r
      } catch (err) {
        if (!(err instanceof RepoSyncError) || err.code !== 'busy' || attempt >= PULL_BUSY_RETRIES) throw err
        const wait = Math.min(4000, 250 * 2 ** attempt) * (0.5 + Math.random())
        this.init.log.debug('repository busy, pulling again shortly', { app, attempt, waitMs: Math.round(wait), error: err.message })
        await sleep(wait, undefined, { signal })
      }
    }
  }
}

/** The password of every repository of the cluster: a key derived from the cluster key, so any node can open any replica. */
export function repositoryPassword (clusterKey: Uint8Array): string {
  return createHmac('sha256', clusterKey).update('dcloud restic repository password v1').digest('hex')
}

/** The directory holding Docker's volume directories (`.../volumes`), the same for all of one engine's volumes. */
function volumesDir (mountpoints: string[]): string {
  const dirs = new Set(mountpoints.map(m => dirname(dirname(m))))
  if (dirs.size !== 1) throw new UserError(`the app's volumes live in several places (${[...dirs].join(', ')}): only Docker's local volume driver is supported`, { exitCode: EXIT.software })
  return [...dirs][0]!
}

/** restic hosts allow letters, digits, dots, dashes and underscores. */
function hostTag (name: string): string {
  const cleaned = name.replace(/[^A-Za-z0-9_.-]/g, '-').replace(/^[^A-Za-z0-9]+/, '')
  return cleaned === '' ? 'dcloud' : cleaned.slice(0, 128)
}

function tagValue (tags: string[], key: string): string | null {
  const t = tags.find(x => x.startsWith(`${key}=`))
  return t === undefined ? null : t.slice(key.length + 1)
}

export function infoOf (s: Snapshot, app: string, bytes: number, added: number): SnapshotInfo {
  const purpose = tagValue(s.tags, 'dcloud.purpose') ?? 'unknown'
  return {
    id: s.shortId,
    app,
    time: Math.floor(Date.parse(s.time)) || 0,
    purpose: purpose as SnapshotInfo['purpose'],
    node: s.hostname,
    generation: Number(tagValue(s.tags, 'dcloud.gen') ?? '1') || 1,
    label: tagValue(s.tags, 'dcloud.label'),
    bytes,
    added,
    tree: s.tree
  }
}

export function snapshotPolicy (app: DesiredApp): SnapshotPolicy | null {
  return isStateful(app.manifest) ? app.manifest.snapshots ?? SNAPSHOT_DEFAULTS : null
}

async function exists (path: string): Promise<boolean> {
  try {
    await lstat(path)
    return true
  } catch {
    return false
  }
}

/** Whether a program runs here (`PROGRAM version`); false when it is missing or not executable. */
async function hasProgram (program: string): Promise<boolean> {
  return await new Promise(resolve => {
    execFile(program, ['version'], { timeout: 10_000 }, (err) => {
      const code = (err as NodeJS.ErrnoException | null)?.code
      resolve(err === null || (code !== 'ENOENT' && code !== 'EACCES'))
    })
  })
}

/** Removes a directory's content (only called on a volume whose data a snapshot holds). */
async function emptyDir (dir: string): Promise<void> {
  for (const entry of await readdir(dir)) await rm(join(dir, entry), { recursive: true, force: true })
}
