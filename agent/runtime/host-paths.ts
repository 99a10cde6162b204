/**
 * The node's side of host-path permissions: what a bind source really is on
 * this node. A granted `path:/srv/music:ro` whose /srv/music is a symlink to
 * /etc would give the app /etc (Docker follows the link): the resolved path
 * is judged again, and refused unless it is as harmless as the one granted.
 */
import { lstat, realpath } from 'node:fs/promises'
import { dirname, join, basename } from 'node:path'
import type { AppManifest } from '../../proto/app.ts'
import { isDangerousPath, pathPermission, storagePermission } from '../../proto/permissions.ts'
import { ValidationError } from '../../proto/validate.ts'

/**
 * `path` with every symlink resolved, as Docker will see it. A path that does
 * not exist yet (Docker creates a missing bind directory) resolves through
 * its nearest existing ancestor, so a link above it still counts.
 */
export async function resolveHostPath (path: string): Promise<string> {
  const rest: string[] = []
  let at = path
  for (;;) {
    try {
      await lstat(at)
      return join(await realpath(at), ...rest)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || at === '/') throw err
      rest.unshift(basename(at))
      at = dirname(at)
    }
  }
}

/**
 * Throws a ValidationError naming the field when a bind of `manifest` that
 * `grants` allow resolves, on this node, to a path its permission does not
 * cover: an ordinary path granted that leads into the node's own files (or
 * `ownDirs`, the agent's data and program directories here).
 */
export async function checkHostPaths (manifest: AppManifest, grants: readonly string[], ownDirs: readonly string[] = []): Promise<void> {
  const granted = new Set(grants)
  for (const [service, svc] of Object.entries(manifest.compose.services)) {
    for (const [i, v] of svc.volumes.entries()) {
      if (v.kind !== 'bind') continue
      const name = pathPermission(v.source, v.readOnly)
      if (name === null || !granted.has(name) || !name.startsWith('path:')) continue
      const real = await resolveHostPath(v.source)
      if (isDangerousPath(real, ownDirs) || isDangerousPath(v.source, ownDirs)) {
        const through = real === v.source ? '' : ` (through a symlink, it is ${real})`
        throw new ValidationError(`services.${service}.volumes[${i}]`, `the host path ${v.source}${through} holds the node itself on this node, which ${name} does not grant; bind the directory itself, or ask for dangerous_path:${real}:${v.readOnly ? 'ro' : 'rw'}`)
      }
    }
  }
}

/**
 * The app's storage directory (`restore --data-dir`) as this node sees it:
 * granted, and not leading, through a symlink, into the node's own files.
 * Throws a ValidationError naming `storage.hostPath` otherwise.
 */
export async function checkStoragePath (storage: { hostPath: string } | null | undefined, grants: readonly string[], ownDirs: readonly string[] = []): Promise<void> {
  const name = storagePermission(storage)
  if (storage == null || name === null) return
  if (!grants.includes(name)) throw new ValidationError('storage.hostPath', `the app keeps its data in ${storage.hostPath}, which is not granted (${name})`)
  const real = await resolveHostPath(storage.hostPath)
  if (name.startsWith('path:') && (isDangerousPath(real, ownDirs) || isDangerousPath(storage.hostPath, ownDirs))) {
    throw new ValidationError('storage.hostPath', `${storage.hostPath}${real === storage.hostPath ? '' : ` (through a symlink, ${real})`} holds the node itself on this node; choose a directory of its own, such as /srv/dcloud`)
  }
}
