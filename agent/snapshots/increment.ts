/**
 * The last increment of a move, applied to a copy restored earlier.
 *
 * restic 0.14 restores every file of a snapshot, changed or not (the
 * `--overwrite if-changed --delete` of later versions is not in Debian's
 * package). A move restores the bulk while the app still runs (a "stage"),
 * and once the app is stopped and its final snapshot taken, only what
 * `restic diff` reports between the two snapshots is touched: removed
 * entries go, added and changed files are restored whole, directories whose
 * own metadata changed get it back. The app's downtime then depends on how
 * much changed, not on the volume's size.
 */
import { chmod, chown, rm, utimes } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { diff, ls, restorePaths, type ResticRepo } from './restic.ts'

export interface IncrementOptions {
  signal: AbortSignal
  /** More changed paths than this throws (they go on restic's command line): restore in full instead. */
  maxPaths: number
}

/**
 * Makes `dir`, a restore of snapshot `from` laid out as restic lays it out,
 * equal to a restore of snapshot `to`. Returns the number of changes applied.
 * On a throw `dir` is neither copy: drop it and restore in full.
 */
export async function applyIncrement (repo: ResticRepo, from: string, to: string, dirPath: string, opts: IncrementOptions): Promise<number> {
  const dir = resolve(dirPath)
  const changes = await diff(repo, from, to, opts)
  const files: string[] = []
  const dirs = new Set<string>()
  for (const c of changes) {
    const isDir = c.path.endsWith('/')
    const path = isDir ? c.path.slice(0, -1) : c.path
    const local = join(dir, path)
    if (!local.startsWith(dir + '/')) throw new Error(`restic named a path outside the snapshot: ${JSON.stringify(c.path)}`)
    const retyped = c.modifier.includes('T')
    if (c.modifier === '-' || retyped) await rm(local, { recursive: true, force: true })
    if (c.modifier === '+' || retyped || c.modifier.includes('M')) files.push(path)
    else if (c.modifier.includes('U')) {
      // Including a directory would restore everything below it: only its own metadata is applied.
      if (isDir) dirs.add(path)
      else files.push(path)
    }
  }
  if (files.length > opts.maxPaths) throw new Error(`${files.length} paths changed, more than the ${opts.maxPaths} restored one by one`)
  await restorePaths(repo, to, dir, files, opts)
  if (dirs.size > 0) {
    for (const node of await ls(repo, to, opts)) {
      if (node.type !== 'dir' || !dirs.has(node.path)) continue
      const local = join(dir, node.path)
      await chown(local, node.uid, node.gid)
      await chmod(local, unixMode(node.mode))
      const mtime = Date.parse(node.mtime)
      if (Number.isFinite(mtime)) await utimes(local, mtime / 1000, mtime / 1000)
    }
  }
  return changes.length
}

/** Go's file mode bits (what restic records) as a Unix mode: permissions, setuid, setgid, sticky. */
export function unixMode (goMode: number): number {
  let mode = goMode & 0o777
  if ((goMode & (1 << 23)) !== 0) mode |= 0o4000
  if ((goMode & (1 << 22)) !== 0) mode |= 0o2000
  if ((goMode & (1 << 20)) !== 0) mode |= 0o1000
  return mode
}
