/**
 * What restic prints, turned into typed values and errors a user can act on.
 * Pure: no process is spawned here, so every parser and every error mapping
 * is tested against restic's real output (test/unit/restic-output.test.ts).
 *
 * restic's output is input like any other: each JSON line is validated before
 * use. Progress lines that do not fit are dropped (progress is cosmetic); a
 * summary or a snapshot list that does not fit is an error, because a wrong
 * snapshot id would be worse than none.
 *
 * Written against restic 0.14 (Debian bookworm), whose errors are only text on
 * stderr; the exit codes and JSON errors of newer releases (0.17: 10 no
 * repository, 11 locked, 12 wrong password) are understood too.
 */
import { UserError, EXIT } from '../util/errors.ts'
import { SNAPSHOT_ID, ValidationError, array, isRecord, number, record, string } from '../../proto/validate.ts'

/** A snapshot as `restic snapshots --json` lists it. */
export interface Snapshot {
  /** Full id, 64 hex digits. */
  id: string
  shortId: string
  /** RFC 3339, as restic wrote it (nanoseconds kept). */
  time: string
  hostname: string
  username: string
  paths: string[]
  tags: string[]
  /** The snapshot this one was made incrementally against, if any. */
  parent: string | null
  tree: string
}

export interface BackupProgress {
  /** 0 to 100. */
  percent: number
  bytesDone: number
  /** Null while restic is still counting. */
  bytesTotal: number | null
  filesDone: number
  filesTotal: number | null
  secondsElapsed: number
}

export interface BackupSummary {
  /** As restic printed it: 8 hex digits in 0.14, 64 in newer releases. */
  snapshotId: string
  filesNew: number
  filesChanged: number
  filesUnmodified: number
  dirsNew: number
  dirsChanged: number
  dirsUnmodified: number
  /** Bytes added to the repository (after deduplication and compression). */
  dataAdded: number
  bytesProcessed: number
  filesProcessed: number
  durationMs: number
}

/** A file restic could not read during a backup (`message_type: error`). */
export interface BackupFileError {
  item: string
  during: string
  message: string
}

export type BackupLine =
  | { kind: 'status', progress: BackupProgress }
  | { kind: 'summary', summary: BackupSummary }
  | { kind: 'error', error: BackupFileError }
  | { kind: 'other' }

const HEX_ID = /^[0-9a-f]{64}$/
const MAX_COUNT = Number.MAX_SAFE_INTEGER
const count = (v: unknown, f: string): number => number(v, f, { min: 0, max: MAX_COUNT, integer: true })
const optionalCount = (v: unknown, f: string): number | null => v === undefined ? null : count(v, f)

/**
 * One line of `restic backup --json`. Throws ValidationError for a line that
 * says it is a status or summary but does not fit; returns `other` for
 * message types we do not use (verbose_status) and for non-JSON lines.
 */
export function parseBackupLine (line: string): BackupLine {
  let raw: unknown
  try {
    raw = JSON.parse(line)
  } catch {
    return { kind: 'other' }
  }
  if (!isRecord(raw)) return { kind: 'other' }
  switch (raw.message_type) {
    case 'status': {
      // 0.14 reports percent_done as a fraction of 1.
      const fraction = number(raw.percent_done ?? 0, 'status.percent_done', { min: 0, max: 1 })
      return {
        kind: 'status',
        progress: {
          percent: Math.round(fraction * 10_000) / 100,
          bytesDone: optionalCount(raw.bytes_done, 'status.bytes_done') ?? 0,
          bytesTotal: optionalCount(raw.total_bytes, 'status.total_bytes'),
          filesDone: optionalCount(raw.files_done, 'status.files_done') ?? 0,
          filesTotal: optionalCount(raw.total_files, 'status.total_files'),
          secondsElapsed: optionalCount(raw.seconds_elapsed, 'status.seconds_elapsed') ?? 0
        }
      }
    }
    case 'summary':
      return {
        kind: 'summary',
        summary: {
          snapshotId: string(raw.snapshot_id, 'summary.snapshot_id', { max: 64, pattern: SNAPSHOT_ID }),
          filesNew: count(raw.files_new, 'summary.files_new'),
          filesChanged: count(raw.files_changed, 'summary.files_changed'),
          filesUnmodified: count(raw.files_unmodified, 'summary.files_unmodified'),
          dirsNew: count(raw.dirs_new, 'summary.dirs_new'),
          dirsChanged: count(raw.dirs_changed, 'summary.dirs_changed'),
          dirsUnmodified: count(raw.dirs_unmodified, 'summary.dirs_unmodified'),
          dataAdded: count(raw.data_added, 'summary.data_added'),
          bytesProcessed: count(raw.total_bytes_processed, 'summary.total_bytes_processed'),
          filesProcessed: count(raw.total_files_processed, 'summary.total_files_processed'),
          durationMs: Math.round(number(raw.total_duration, 'summary.total_duration', { min: 0, max: 1e9 }) * 1000)
        }
      }
    case 'error': {
      // The error object's shape depends on the Go error type; only its text is useful.
      const e = raw.error
      const message = typeof e === 'string' ? e : isRecord(e) && typeof e.message === 'string' ? e.message : JSON.stringify(e ?? null)
      return {
        kind: 'error',
        error: {
          item: typeof raw.item === 'string' ? raw.item.slice(0, 4096) : '',
          during: typeof raw.during === 'string' ? raw.during.slice(0, 64) : '',
          message: message.slice(0, 1024)
        }
      }
    }
    default:
      return { kind: 'other' }
  }
}

/** `restic snapshots --json`: an array of snapshots, validated field by field. */
export function parseSnapshots (text: string): Snapshot[] {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    throw new ValidationError('snapshots', 'restic did not print JSON')
  }
  // restic prints `null` for an empty list in some versions.
  if (raw === null) return []
  return array(raw, 'snapshots', 1_000_000, (v, f) => parseSnapshot(v, f))
}

export function parseSnapshot (raw: unknown, field = 'snapshot'): Snapshot {
  const r = record(raw, field)
  const id = string(r.id, `${field}.id`, { max: 64, pattern: HEX_ID })
  const time = string(r.time, `${field}.time`, { max: 64, pattern: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/ })
  if (Number.isNaN(Date.parse(time))) throw new ValidationError(`${field}.time`, 'is not a date')
  const shortId = r.short_id === undefined ? id.slice(0, 8) : string(r.short_id, `${field}.short_id`, { max: 64, pattern: SNAPSHOT_ID })
  if (!id.startsWith(shortId)) throw new ValidationError(`${field}.short_id`, 'is not a prefix of the id')
  return {
    id,
    shortId,
    time,
    hostname: string(r.hostname ?? '', `${field}.hostname`, { max: 255 }),
    username: string(r.username ?? '', `${field}.username`, { max: 255 }),
    paths: array(r.paths, `${field}.paths`, 10_000, (v, f) => string(v, f, { min: 1, max: 4096 })),
    tags: r.tags === undefined || r.tags === null ? [] : array(r.tags, `${field}.tags`, 1000, (v, f) => string(v, f, { max: 255 })),
    parent: r.parent === undefined || r.parent === null ? null : string(r.parent, `${field}.parent`, { max: 64, pattern: HEX_ID }),
    tree: string(r.tree, `${field}.tree`, { max: 64, pattern: HEX_ID })
  }
}

/** `restic forget --json` with a policy: per group, the snapshots it removed. */
export function parseForget (text: string): string[] {
  if (text.trim() === '') return []
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    throw new ValidationError('forget', 'restic did not print JSON')
  }
  if (raw === null) return []
  const groups = array(raw, 'forget', 100_000, (v, f) => record(v, f))
  return groups.flatMap((g, i) => g.remove === undefined || g.remove === null ? [] : array(g.remove, `forget[${i}].remove`, 1_000_000, (v, f) => parseSnapshot(v, f).id))
}

// ---------------------------------------------------------------------------
// Errors

export interface FailureContext {
  /** What we asked restic to do, for the message: "back up /srv/x", "list snapshots". */
  action: string
  repo: string
  passwordFile: string
  /** restic's exit code, or null when it died of a signal. */
  code: number | null
  stderr: string
}

/** The base of every error restic's failures turn into; `code` is restic's exit code. */
export class ResticError extends UserError {
  override name = 'ResticError'
  readonly code: number | null

  constructor (message: string, code: number | null, opts: { exitCode?: number, hint?: string } = {}) {
    super(message, { exitCode: opts.exitCode ?? EXIT.software, hint: opts.hint })
    this.code = code
  }
}

export class ResticMissingError extends ResticError {
  override name = 'ResticMissingError'

  constructor (binary: string) {
    super(`${binary} is not installed (snapshots need restic)`, null, { exitCode: EXIT.unavailable, hint: 'install it: apt-get install restic' })
  }
}

export class WrongPasswordError extends ResticError {
  override name = 'WrongPasswordError'

  constructor (ctx: FailureContext) {
    super(`cannot ${ctx.action}: the password in ${ctx.passwordFile} does not open the repository ${ctx.repo}`, ctx.code, {
      exitCode: EXIT.noPermission,
      hint: 'use the password file the repository was created with; a restic repository cannot be opened without it'
    })
  }
}

export class PasswordFileError extends ResticError {
  override name = 'PasswordFileError'

  constructor (passwordFile: string, problem: string) {
    super(`restic password file ${passwordFile} ${problem}`, null, {
      exitCode: EXIT.config,
      hint: 'restore the password file from where you keep it safe; for a new repository create one with newPasswordFile()'
    })
  }
}

export class RepoMissingError extends ResticError {
  override name = 'RepoMissingError'

  constructor (ctx: FailureContext) {
    super(`cannot ${ctx.action}: there is no restic repository at ${ctx.repo}`, ctx.code, {
      exitCode: EXIT.noInput,
      hint: 'check the path (a disk that is not mounted?), or create the repository with `restic init`'
    })
  }
}

export class RepoExistsError extends ResticError {
  override name = 'RepoExistsError'

  constructor (ctx: FailureContext) {
    super(`cannot ${ctx.action}: ${ctx.repo} already holds a restic repository`, ctx.code, {
      exitCode: EXIT.cantCreate,
      hint: 'use the existing repository with its password file, or choose another path'
    })
  }
}

export class RepoCorruptError extends ResticError {
  override name = 'RepoCorruptError'
  readonly details: string[]

  constructor (ctx: FailureContext, details: string[]) {
    super(`cannot ${ctx.action}: the restic repository at ${ctx.repo} is damaged${details.length > 0 ? `: ${details.slice(0, 5).join('; ')}` : ''}`, ctx.code, {
      exitCode: EXIT.dataError,
      hint: `run \`restic -r ${ctx.repo} check --read-data\` to see what is damaged; restore from another copy of the snapshot (a peer's), then \`restic repair\` or a new repository`
    })
    this.details = details
  }
}

export class RepoLockedError extends ResticError {
  override name = 'RepoLockedError'

  constructor (ctx: FailureContext) {
    super(`cannot ${ctx.action}: the restic repository at ${ctx.repo} is locked by another restic process`, ctx.code, {
      exitCode: EXIT.tempFail,
      hint: `retry when it has finished; if no restic runs any more (a crash, a reboot), \`restic -r ${ctx.repo} unlock\` removes its stale lock`
    })
  }
}

export class DiskFullError extends ResticError {
  override name = 'DiskFullError'

  constructor (ctx: FailureContext) {
    super(`cannot ${ctx.action}: no space left on the disk holding ${ctx.repo} (or restic's cache or temporary directory)`, ctx.code, {
      exitCode: EXIT.ioError,
      hint: 'free space there and retry; no snapshot was saved, and `restic prune` later removes the partial data this attempt left'
    })
  }
}

/** A backup that finished but could not read some files: the snapshot exists and is incomplete. */
export class IncompleteBackupError extends ResticError {
  override name = 'IncompleteBackupError'
  readonly snapshotId: string | null
  readonly files: BackupFileError[]

  constructor (ctx: FailureContext, snapshotId: string | null, files: BackupFileError[]) {
    const which = files.slice(0, 3).map(f => `${JSON.stringify(f.item)} (${f.message})`).join(', ')
    super(`${ctx.action}: ${files.length || 'some'} file(s) could not be read${which !== '' ? `: ${which}` : ''}; snapshot ${snapshotId ?? '?'} is incomplete`, ctx.code, {
      exitCode: EXIT.ioError,
      hint: 'fix the permissions or the disk errors and back up again; forget the incomplete snapshot if it must not be restored'
    })
    this.snapshotId = snapshotId
    this.files = files
  }
}

/** Strips terminal escapes and keeps the lines that say something (restic clears its status line with ESC[2K). */
export function cleanLines (text: string): string[] {
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').split(/\r?\n|\r/).map(l => l.trim()).filter(l => l !== '')
}

/** Newer restic prints `{"message_type":"exit_error","code":N,"message":"..."}` on stderr with --json. */
function exitErrorMessages (lines: string[]): string[] {
  const out: string[] = []
  for (const l of lines) {
    if (!l.startsWith('{')) continue
    try {
      const j = JSON.parse(l) as unknown
      if (isRecord(j) && j.message_type === 'exit_error' && typeof j.message === 'string') out.push(j.message)
    } catch {}
  }
  return out
}

/** The error a failed restic run means, from its exit code and what it printed on stderr. */
export function classifyFailure (ctx: FailureContext): ResticError {
  const lines = cleanLines(ctx.stderr)
  const text = [...lines, ...exitErrorMessages(lines)].join('\n')
  const has = (re: RegExp): boolean => re.test(text)

  if (ctx.code === 12 || has(/wrong password or no key found/i)) return new WrongPasswordError(ctx)
  if (has(/Resolving password failed|reading password from file|password file/i) && has(/does not exist|no such file|permission denied|cannot read/i)) {
    return new PasswordFileError(ctx.passwordFile, 'cannot be read')
  }
  if (has(/no space left on device|ENOSPC|disk quota exceeded/i)) return new DiskFullError(ctx)
  if (ctx.code === 10 || has(/unable to open config file|Is there a repository at the following location|repository does not exist/i)) return new RepoMissingError(ctx)
  if (has(/config file already exists|repository master key and config already initialized/i)) return new RepoExistsError(ctx)
  if (ctx.code === 11 || has(/repository is already locked|unable to create lock/i)) return new RepoLockedError(ctx)

  const damage = lines.filter(l => /invalid data returned|ciphertext verification failed|Pack ID does not match|LoadIndex returned errors|repository contains errors|unexpected end of JSON|config cannot be loaded|blob [0-9a-f]+ not found|tree .* could not be loaded|hash does not match|decrypting blob .* failed/i.test(l))
  if (damage.length > 0) return new RepoCorruptError(ctx, damage.map(l => l.replace(/^(Fatal|error):\s*/i, '')))
  // restic 0.14 panics on some damaged files (a config that is not ciphertext) instead of saying so.
  if (has(/^panic:/m)) {
    const at = lines.find(l => /LoadConfig|LoadIndex|LoadUnpacked|SearchKey/.test(l))
    return new RepoCorruptError(ctx, [`restic crashed reading the repository (${lines[0] ?? 'panic'}${at !== undefined ? `, in ${at.replace(/\(.*$/, '')}` : ''})`])
  }

  const fatal = lines.filter(l => /^Fatal:/i.test(l)).map(l => l.replace(/^Fatal:\s*/i, ''))
  const said = (fatal.length > 0 ? fatal : lines.slice(-3)).join('; ').slice(0, 2000)
  return new ResticError(`cannot ${ctx.action}: restic failed (${ctx.code === null ? 'killed' : `exit ${ctx.code}`})${said !== '' ? `: ${said}` : ''}`, ctx.code, {
    exitCode: EXIT.software,
    hint: `run the same restic command by hand to see all of its output: restic -r ${ctx.repo} ...`
  })
}
