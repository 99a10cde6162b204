/**
 * Whole-app backups to one file, and back (`dcloud backup`, `dcloud restore`).
 *
 * Backup: a fresh snapshot where the app runs (quiesced like any snapshot),
 * fetched to this node, restored into a scratch directory and written as a
 * backup archive (archive.ts): manifest, settings and every volume.
 *
 * Restore: the archive is verified and extracted into a scratch directory
 * (the strict reader writes nothing outside it), imported as a snapshot of
 * the new app name in this node's repository, and the app is installed with
 * that snapshot as its seed: its first placement restores it, on any node,
 * over the cluster's own connections.
 */
import { mkdir, mkdtemp, rename, rm } from 'node:fs/promises'
import { isAbsolute, join } from 'node:path'
import { isStateful } from '../../proto/app.ts'
import type { DesiredApp } from '../../proto/plan.ts'
import type { SnapshotInfo } from '../../proto/cluster.ts'
import { UserError, EXIT } from '../util/errors.ts'
import { extractArchive, readArchiveMeta, verifyArchive, writeArchive, type BackupMeta } from './archive.ts'
import type { SnapshotService } from './service.ts'

export interface BackupFileResult {
  file: string
  bytes: number
  snapshot: string | null
  volumes: Array<{ name: string, entries: number, bytes: number }>
}

export interface BackupDeps {
  snapshots: SnapshotService
  /** Takes a snapshot where the app runs and makes sure this node holds it. */
  snapshotHere: (app: DesiredApp, signal: AbortSignal) => Promise<SnapshotInfo>
}

export async function backupToFile (app: DesiredApp, file: string, deps: BackupDeps, signal: AbortSignal): Promise<BackupFileResult> {
  if (!isAbsolute(file)) throw new UserError(`the backup file must be an absolute path, not ${file}`, { exitCode: EXIT.usage })
  const settings = { pinnedNode: app.pinnedNode, generation: app.generation ?? 1 }
  if (!isStateful(app.manifest)) {
    const r = await writeArchive(file, { app: app.name, manifest: app.manifest, settings, volumes: [], signal })
    return { file: r.file, bytes: r.bytes, snapshot: null, volumes: [] }
  }
  const snap = await deps.snapshotHere(app, signal)
  const scratch = await scratchDir(deps.snapshots)
  try {
    const dirs = await deps.snapshots.restoreToDirs(app.name, snap.id, scratch, signal)
    const volumes = Object.keys(app.manifest.compose.volumes).filter(v => dirs[v] !== undefined).map(v => ({ name: v, dir: dirs[v]! }))
    const r = await writeArchive(file, { app: app.name, manifest: app.manifest, settings: { ...settings, snapshot: snap.id }, volumes, signal })
    return { file: r.file, bytes: r.bytes, snapshot: snap.id, volumes: r.meta.volumes.map(v => ({ name: v.name, entries: v.entries, bytes: v.bytes })) }
  } finally {
    await rm(scratch, { recursive: true, force: true })
  }
}

/** Reads and checks a backup file end to end without writing anything: what `dcloud restore` shows before asking. */
export async function inspectBackup (file: string, signal: AbortSignal): Promise<BackupMeta> {
  return await verifyArchive(file, { signal })
}

/** Only the metadata of a backup file (a bad start is refused; the rest is not read). */
export async function readBackupMeta (file: string, signal: AbortSignal): Promise<BackupMeta> {
  return await readArchiveMeta(file, { signal })
}

/** Extracts a verified backup and imports it as a snapshot of `name` here; returns the snapshot (null for an app without volumes). */
export async function importBackup (file: string, name: string, snapshots: SnapshotService, signal: AbortSignal): Promise<{ meta: BackupMeta, snapshot: SnapshotInfo | null }> {
  const scratch = await scratchDir(snapshots)
  try {
    const { meta, dirs } = await extractArchive(file, join(scratch, 'extracted'), { signal })
    if (meta.volumes.length === 0) return { meta, snapshot: null }
    const stage = join(scratch, 'stage')
    await mkdir(stage)
    for (const [volume, dir] of Object.entries(dirs)) {
      await mkdir(join(stage, `dcloud-${name}-${volume}`))
      await rename(dir, join(stage, `dcloud-${name}-${volume}`, '_data'))
    }
    const snapshot = await snapshots.importStaged(name, stage, 'imported', signal)
    return { meta, snapshot }
  } finally {
    await rm(scratch, { recursive: true, force: true })
  }
}

async function scratchDir (snapshots: SnapshotService): Promise<string> {
  const base = join(snapshots.root, 'scratch')
  await mkdir(base, { recursive: true, mode: 0o700 })
  return await mkdtemp(join(base, 'work-'))
}
