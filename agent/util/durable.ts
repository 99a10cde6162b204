/**
 * Files that must survive a power cut once written: the replicated state's
 * log and snapshot, the election's term and vote. "Durable" here means the
 * data is fsynced, and so is the directory that names it, before the caller
 * goes on to acknowledge anything that depends on it.
 */
import { constants } from 'node:fs'
import { open, rename, unlink } from 'node:fs/promises'
import { dirname } from 'node:path'

/** fsync of a directory: makes a create, rename or unlink in it durable. */
export async function fsyncDir (dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY)
  try { await fh.sync() } finally { await fh.close() }
}

/**
 * Replaces `path` with `data` atomically and durably: a temp file beside it,
 * written and fsynced, renamed over it, then the directory fsynced. A crash
 * leaves the old file or the new one, never half of one.
 */
export async function writeFileDurable (path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const temp = `${path}.tmp`
  const fh = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, mode)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } catch (err) {
    await fh.close().catch(() => {})
    await unlink(temp).catch(() => {})
    throw err
  }
  await fh.close()
  await rename(temp, path)
  await fsyncDir(dirname(path))
}
