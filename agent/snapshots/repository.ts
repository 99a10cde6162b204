/**
 * An app's snapshot repository, whatever keeps it: restic (restic.ts), or
 * the tar fallback of nodes without restic (tar-repo.ts). The snapshot
 * service (service.ts) talks to this interface only; which backend a
 * repository has is decided once, when it is opened (`openRepository`): its
 * config says (a replica keeps its origin's format), and a repository not
 * made yet is restic's where this node has restic, else tar's.
 *
 * Both keep the same folder layout (config, keys/, index/, locks/, data/XX/,
 * snapshots/, every file but config named by its content's SHA-256), so
 * repo-sync.ts replicates either unchanged.
 */
import { lstat } from 'node:fs/promises'
import { join } from 'node:path'
import {
  backup, forget, initRepo, prune, restore, restoreAsIs, snapshots,
  type BackupOptions, type BackupResult, type BackupSource, type ResticRepo, type SignalOptions, type Snapshot, type SnapshotsOptions
} from './restic.ts'
import { applyIncrement, type IncrementOptions } from './increment.ts'
import { initTarRepository, isTarRepository, tarBackup, tarForget, tarRestore, tarSnapshots } from './tar-repo.ts'
import { UserError, EXIT } from '../util/errors.ts'

/** restic's repository format, or the tar fallback's where restic is missing. */
export type RepoFormat = 'restic' | 'tar'

export interface ListOptions extends SnapshotsOptions {
  /** A snapshot that cannot be read here is skipped and reported (tar); restic fails the listing instead. */
  onSkip?: (path: string, reason: string) => void
}

export interface SnapshotRepository {
  readonly format: RepoFormat
  /** The repository's directory. */
  readonly dir: string
  /**
   * Whether snapshots share data (restic): a backup reads only what changed
   * since this host's last one (so a pass while the app runs makes the
   * quiesced pass short), a restored copy can be brought up to a later
   * snapshot (`increment`), and forgetting frees nothing until `prune`. A tar
   * repository is none of these: every snapshot is a whole archive, and
   * forgetting one removes the archives no snapshot uses.
   */
  readonly incremental: boolean
  /** Creates the repository (its directory may exist, empty). */
  init: (opts: SignalOptions) => Promise<void>
  backup: (source: BackupSource, opts: BackupOptions) => Promise<BackupResult>
  /** The snapshots, in the repository's order. */
  snapshots: (opts: ListOptions) => Promise<Snapshot[]>
  /**
   * Restores a snapshot as laid out in it: its top-level entries under
   * `target`. With `lookup` the snapshot's record is returned (restic looks
   * it up first: one run more); without, restic may answer null.
   */
  restore: (snapshotId: string, target: string, opts: SignalOptions & { lookup?: boolean }) => Promise<Snapshot | null>
  forget: (ids: string[], opts: SignalOptions) => Promise<void>
  /** Removes data no snapshot uses any more (nothing to do where forget did it). */
  prune: (opts: SignalOptions) => Promise<void>
  /** Brings a copy restored from `from` in `dir` up to `to`; the number of changes applied. Incremental repositories only. */
  increment: (from: string, to: string, dir: string, opts: IncrementOptions) => Promise<number>
}

/** The repository at `repo.repo`, kept by restic. */
export class ResticRepository implements SnapshotRepository {
  readonly format = 'restic'
  readonly incremental = true
  readonly dir: string
  private readonly repo: ResticRepo

  constructor (repo: ResticRepo) {
    this.repo = repo
    this.dir = repo.repo
  }

  async init (opts: SignalOptions): Promise<void> { await initRepo(this.repo, opts) }
  async backup (source: BackupSource, opts: BackupOptions): Promise<BackupResult> { return await backup(this.repo, source, opts) }
  async snapshots ({ onSkip: _, ...opts }: ListOptions): Promise<Snapshot[]> { return await snapshots(this.repo, opts) }

  async restore (snapshotId: string, target: string, opts: SignalOptions & { lookup?: boolean }): Promise<Snapshot | null> {
    if (opts.lookup === true) return await restore(this.repo, snapshotId, target, { signal: opts.signal })
    await restoreAsIs(this.repo, snapshotId, target, { signal: opts.signal })
    return null
  }

  async forget (ids: string[], opts: SignalOptions): Promise<void> { await forget(this.repo, { ids }, opts) }
  async prune (opts: SignalOptions): Promise<void> { await prune(this.repo, opts) }
  async increment (from: string, to: string, dir: string, opts: IncrementOptions): Promise<number> { return await applyIncrement(this.repo, from, to, dir, opts) }
}

/** The repository at `dir`, kept as tar archives (tar-repo.ts). */
export class TarRepository implements SnapshotRepository {
  readonly format = 'tar'
  readonly incremental = false
  readonly dir: string

  constructor (dir: string) {
    this.dir = dir
  }

  async init (opts: SignalOptions): Promise<void> { await initTarRepository(this.dir, opts) }
  async backup (source: BackupSource, opts: BackupOptions): Promise<BackupResult> { return await tarBackup(this.dir, source, opts) }
  async snapshots (opts: ListOptions): Promise<Snapshot[]> { return await tarSnapshots(this.dir, opts) }
  async restore (snapshotId: string, target: string, opts: SignalOptions): Promise<Snapshot> { return await tarRestore(this.dir, snapshotId, target, { signal: opts.signal }) }
  async forget (ids: string[], opts: SignalOptions): Promise<void> { await tarForget(this.dir, ids, opts) }
  async prune (): Promise<void> {}
  async increment (): Promise<number> {
    throw new UserError(`${this.dir} is a tar repository: a copy is restored in full, never brought up to date`, { exitCode: EXIT.software })
  }
}

/**
 * The repository of `repo.repo`, with its backend chosen once: what its
 * config says when it has one, else restic where `resticFound`, else tar.
 */
export async function openRepository (repo: ResticRepo, resticFound: boolean): Promise<SnapshotRepository> {
  const hasConfig = await lstat(join(repo.repo, 'config')).then(() => true, () => false)
  const tar = hasConfig ? await isTarRepository(repo.repo) : !resticFound
  return tar ? new TarRepository(repo.repo) : new ResticRepository(repo)
}
