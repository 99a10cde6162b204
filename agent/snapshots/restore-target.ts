/**
 * Where a restore may write: a new or empty directory, filled through a
 * staging directory beside it and renamed into place only when everything
 * arrived. Shared by restic restores and backup-file extraction.
 */
import { readdir, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { UserError, EXIT } from '../util/errors.ts'

/** Refuses a target that holds anything: a restore never writes over data. */
export async function mustBeEmptyOrAbsent (target: string): Promise<void> {
  let entries: string[]
  try {
    entries = await readdir(target)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') {
      const parent = await stat(dirname(target)).catch(() => null)
      if (parent === null || !parent.isDirectory()) throw new UserError(`${dirname(target)} does not exist`, { exitCode: EXIT.cantCreate, hint: 'create it first' })
      return
    }
    if (code === 'ENOTDIR') throw new UserError(`${target} is a file, not a directory`, { exitCode: EXIT.cantCreate, hint: 'restore into a new or empty directory' })
    throw err
  }
  if (entries.length > 0) throw new UserError(`${target} is not empty; refusing to restore over it`, { exitCode: EXIT.cantCreate, hint: 'restore into a new or empty directory, then move what you need' })
}

/** The error for a failed final rename of the staging directory onto the target. */
export function renameError (err: unknown, target: string): unknown {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ENOTEMPTY' || code === 'EEXIST') return new UserError(`${target} was filled by someone else during the restore; nothing was restored`, { exitCode: EXIT.cantCreate, hint: 'restore into a new or empty directory' })
  return err
}
