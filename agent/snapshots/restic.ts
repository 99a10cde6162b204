/**
 * A small typed wrapper around the `restic` command line, driven through its
 * `--json` output where it has one.
 *
 * Why the CLI and not a library: restic has none outside Go, and a repository
 * made by the CLI stays a plain restic repository that a user can list and
 * restore with `restic` alone, on any machine, without dcloud. That is the
 * promise of a snapshot: the data outlives this program.
 *
 * Rules kept here:
 * - The password only ever travels in a file (RESTIC_PASSWORD_FILE), never on
 *   a command line (visible in `ps`) nor in an environment variable holding
 *   the password itself. No RESTIC_* variable of our own environment leaks in.
 * - The repository is `--repo`, made absolute, so a backup that runs in another
 *   working directory still finds it.
 * - Nothing destructive runs implicitly: `forget` and `prune` happen only when
 *   called. `unlock` removes only locks whose process is gone, so it is run
 *   after we had to kill restic, and otherwise only when called.
 * - An AbortSignal stops restic the way Ctrl-C does (SIGINT: it removes its
 *   lock and saves no snapshot), and kills it if it has not stopped after a
 *   grace period.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { lstat, mkdtemp, readdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { UserError, EXIT } from '../util/errors.ts'
import { SNAPSHOT_ID } from '../../proto/validate.ts'
import { mustBeEmptyOrAbsent, renameError } from './restore-target.ts'
import {
  PasswordFileError, ResticError, ResticMissingError, IncompleteBackupError,
  classifyFailure, parseBackupLine, parseForget, parseSnapshots,
  type BackupFileError, type BackupProgress, type BackupSummary, type FailureContext, type Snapshot
} from './restic-output.ts'

export * from './restic-output.ts'

export interface ResticRepo {
  /** A local path (made absolute), or a restic backend URL such as `sftp:host:/srv/restic`. */
  repo: string
  /** A file holding the repository's password; mode 0600 (see newPasswordFile). */
  passwordFile: string
  /** restic's cache directory; default: restic's own (~/.cache/restic). */
  cacheDir?: string
  /** The restic program; default `restic` from PATH. */
  binary?: string
}

export interface SignalOptions {
  signal: AbortSignal
}

export type BackupSource =
  /** One directory: the snapshot holds it as its single top-level entry, its own mode and owner included. */
  | { dir: string }
  /** Any absolute paths, recorded by restic with their full path. */
  | { paths: string[] }
  /**
   * Several entries of one directory, named relatively: the snapshot holds
   * each as a top-level entry (an app's volume directories, side by side).
   */
  | { within: string, names: string[] }

export interface BackupOptions extends SignalOptions {
  /** Tags to find the snapshot by later, e.g. volumeTags(app, volume). No commas. */
  tags?: string[]
  /** The host recorded in the snapshot (restic picks the parent of an incremental backup by host and paths); default: this machine's hostname. */
  host?: string
  /** Called a few times a second while restic works. */
  progress?: (p: BackupProgress) => void
  /** Caps restic's writes to the repository, in KiB/s (spares a Pi's SD card, or the network to a remote repository). */
  limitUploadKiB?: number
  /**
   * false: skip the lookup of the full snapshot record (restic 0.14 prints
   * only the short id), one restic run less on a critical path such as the
   * last increment of a move. The record then has the short id, the time the
   * backup ended, the tags and host given, and no tree or paths.
   */
  describe?: boolean
}

export interface BackupResult extends BackupSummary {
  snapshot: Snapshot
}

export interface SnapshotsOptions extends SignalOptions {
  /** Only snapshots holding every one of these tags. */
  tags?: string[]
  host?: string
}

export interface RestoreOptions extends SignalOptions {
  /** Have restic read every restored file back and compare it (`--verify`): slower, and certain. */
  verify?: boolean
}

export interface KeepPolicy {
  last?: number
  hourly?: number
  daily?: number
  weekly?: number
  monthly?: number
  yearly?: number
  /** Keep everything newer than this, in restic's duration syntax: `7d`, `1y6m`, `12h`. */
  within?: string
}

export type ForgetWhat =
  | { ids: string[] }
  /** restic's retention policy, applied to each group of snapshots (by default: same host and paths). */
  | { keep: KeepPolicy, tags?: string[], host?: string, groupBy?: 'host' | 'paths' | 'tags' | 'host,paths' | 'host,tags' | 'paths,tags' | 'host,paths,tags' }

export interface CheckOptions extends SignalOptions {
  /** Read and verify every pack (`--read-data`); otherwise only the structure is checked. */
  readData?: boolean
}

export class SnapshotNotFoundError extends ResticError {
  override name = 'SnapshotNotFoundError'

  constructor (id: string, repo: string) {
    super(`no snapshot ${id} in the restic repository at ${repo}`, null, {
      exitCode: EXIT.noInput,
      hint: `list the snapshots with \`restic -r ${repo} snapshots\``
    })
  }
}

/** Grace between SIGINT (restic removes its lock and stops) and SIGKILL. */
const KILL_GRACE_MS = 15_000
/** How often restic prints a status line with --json (its default is 60 a second). */
const PROGRESS_FPS = '4'
const MAX_STDOUT = 64 * 1024 * 1024
const MAX_STDERR = 256 * 1024
const MAX_LINE = 1024 * 1024
/** Tags restic reads back as written: no comma (it splits tag lists on commas). Shared with tar-repo.ts. */
export const SNAPSHOT_TAG = /^[A-Za-z0-9_.:=/@+-]{1,128}$/
const HOST = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/
const DURATION = /^(\d+[ymdh])+$/

/** The tags a volume's snapshots carry, after the Docker labels (`dcloud.app`, `dcloud.volume`). */
export function volumeTags (app: string, volume: string): string[] {
  return [`dcloud.app=${app}`, `dcloud.volume=${volume}`]
}

/** Writes a new random repository password, mode 0600. Never overwrites: a lost password is lost data. */
export async function newPasswordFile (path: string): Promise<void> {
  try {
    await writeFile(path, randomBytes(32).toString('base64url') + '\n', { mode: 0o600, flag: 'wx' })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new UserError(`${path} already exists; refusing to replace a repository password`, { exitCode: EXIT.cantCreate, hint: 'use the existing file, or choose another path' })
    }
    throw err
  }
}

export async function initRepo (repo: ResticRepo, opts: SignalOptions): Promise<void> {
  await runOrThrow(repo, ['init'], 'create a repository', opts)
}

/**
 * Backs up a directory or paths into a new snapshot. Incremental by restic's
 * own rule: the latest snapshot with the same host and paths is the parent,
 * so unchanged files add nothing.
 */
export async function backup (repo: ResticRepo, source: BackupSource, opts: BackupOptions): Promise<BackupResult> {
  const args = ['backup', '--json']
  for (const t of opts.tags ?? []) args.push('--tag', checkTag(t))
  if (opts.host !== undefined) args.push('--host', checkHost(opts.host))
  if (opts.limitUploadKiB !== undefined) {
    if (!Number.isSafeInteger(opts.limitUploadKiB) || opts.limitUploadKiB < 1) throw new UserError(`limitUploadKiB must be a positive integer, not ${opts.limitUploadKiB}`, { exitCode: EXIT.usage })
    args.push('--limit-upload', String(opts.limitUploadKiB))
  }
  let cwd: string | undefined
  let action: string
  if ('dir' in source) {
    const dir = resolve(source.dir)
    if (dir === '/') throw new UserError('refusing to back up / as one directory', { exitCode: EXIT.usage, hint: 'back up the directories that matter with { paths }' })
    await mustBe(dir, 'directory')
    // Run from the parent and name the directory relatively: the snapshot then
    // holds the directory itself (its mode and owner, which a database's data
    // directory needs), and not the chain of parents of an absolute path.
    cwd = dirname(dir)
    args.push('--', basename(dir))
    action = `back up ${dir}`
  } else if ('within' in source) {
    const within = resolve(source.within)
    if (source.names.length === 0) throw new UserError('nothing to back up: no names given', { exitCode: EXIT.usage })
    for (const n of source.names) {
      if (n === '' || n === '.' || n === '..' || n.includes('/') || n.startsWith('-')) throw new UserError(`'${n}' is not a plain entry name`, { exitCode: EXIT.usage })
      await mustBe(join(within, n), 'any')
    }
    cwd = within
    args.push('--', ...source.names)
    action = `back up ${source.names.join(', ')} in ${within}`
  } else {
    if (source.paths.length === 0) throw new UserError('nothing to back up: no paths given', { exitCode: EXIT.usage })
    const paths = source.paths.map(p => resolve(p))
    for (const p of paths) await mustBe(p, 'any')
    args.push('--', ...paths)
    action = `back up ${paths.join(', ')}`
  }

  let summary: BackupSummary | null = null
  const fileErrors: BackupFileError[] = []
  const r = await run(repo, args, {
    signal: opts.signal,
    cwd,
    onLine: (line) => {
      let parsed
      try {
        parsed = parseBackupLine(line)
      } catch (err) {
        // A summary that does not validate must not be mistaken for success; a bad status line is only lost progress.
        if (/"message_type"\s*:\s*"summary"/.test(line)) throw err
        return
      }
      if (parsed.kind === 'status') opts.progress?.(parsed.progress)
      else if (parsed.kind === 'summary') summary = parsed.summary
      else if (parsed.kind === 'error' && fileErrors.length < 1000) fileErrors.push(parsed.error)
    }
  })
  const ctx = context(repo, action, r)
  const done = summary as BackupSummary | null
  // 3: the snapshot was saved, but some files could not be read.
  if (r.code === 3) throw new IncompleteBackupError(ctx, done?.snapshotId ?? null, fileErrors)
  if (r.code !== 0) throw classifyFailure(ctx)
  if (done === null) throw new ResticError(`${action}: restic finished without reporting a snapshot`, r.code, { hint: 'check the repository with `restic check`; this restic may be too old or too new for dcloud' })
  // 0.14 reports the short id: look the snapshot up for its full record.
  if (opts.describe === false) {
    const id = (done as BackupSummary).snapshotId
    return { ...done, snapshot: { id, shortId: id.slice(0, 8), time: new Date().toISOString(), hostname: opts.host ?? '', username: '', paths: [], tags: opts.tags ?? [], parent: null, tree: '' } }
  }
  return { ...done, snapshot: await getSnapshot(repo, done.snapshotId, opts) }
}

/** The snapshots in the repository, oldest first; `tags` keeps those holding all of them. */
export async function snapshots (repo: ResticRepo, opts: SnapshotsOptions): Promise<Snapshot[]> {
  const args = ['snapshots', '--json']
  if (opts.tags !== undefined && opts.tags.length > 0) args.push('--tag', opts.tags.map(checkTag).join(','))
  if (opts.host !== undefined) args.push('--host', checkHost(opts.host))
  const stdout = await runOrThrow(repo, args, 'list snapshots', opts)
  return parseResticJson(repo, 'list snapshots', () => parseSnapshots(stdout))
}

/** restic's output is input: one that does not validate is an error naming the field, never a wrong answer. */
function parseResticJson<T> (repo: ResticRepo, action: string, parse: () => T): T {
  try {
    return parse()
  } catch (err) {
    throw new ResticError(`cannot ${action}: restic's output did not validate (${(err as Error).message})`, 0, { hint: `this ${repo.binary ?? 'restic'} may be too new or too old for dcloud (\`restic version\`)` })
  }
}

/** One snapshot by id or unique id prefix (8+ hex digits). */
export async function getSnapshot (repo: ResticRepo, id: string, opts: SignalOptions): Promise<Snapshot> {
  checkSnapshotId(id)
  const stdout = await runOrThrow(repo, ['snapshots', '--json', '--', id], `find snapshot ${id}`, opts)
  const found = parseResticJson(repo, `find snapshot ${id}`, () => parseSnapshots(stdout)).filter(s => s.id.startsWith(id))
  if (found.length !== 1) throw new SnapshotNotFoundError(id, repo.repo)
  return found[0] as Snapshot
}

/**
 * Restores a snapshot so that `targetDir` becomes its content. A snapshot of
 * one directory (backup({ dir })) becomes that directory, with its own mode
 * and owner; any other snapshot is laid out as restic does (full paths).
 *
 * `targetDir` must not exist or be empty. restic writes into a fresh
 * directory next to it, renamed into place only once restic succeeded: a
 * failed or aborted restore leaves no half-restored target. Returns the
 * snapshot restored.
 */
export async function restore (repo: ResticRepo, snapshotId: string, targetDir: string, opts: RestoreOptions): Promise<Snapshot> {
  const target = resolve(targetDir)
  await mustBeEmptyOrAbsent(target)
  const snap = await getSnapshot(repo, snapshotId, opts)
  const staging = await mkdtemp(join(dirname(target), `.${basename(target)}.restore-`))
  try {
    const args = ['restore', snap.id, '--target', staging]
    if (opts.verify === true) args.push('--verify')
    await runOrThrow(repo, args, `restore snapshot ${snap.shortId} into ${target}`, opts)
    const top = await readdir(staging)
    const only = snap.paths.length === 1 ? basename(snap.paths[0] as string) : null
    if (only !== null && top.length === 1 && top[0] === only && (await lstat(join(staging, only))).isDirectory()) {
      await rename(join(staging, only), target)
      await rmdir(staging)
    } else {
      await rename(staging, target)
    }
    return snap
  } catch (err) {
    await rm(staging, { recursive: true, force: true })
    throw renameError(err, target)
  }
}

/**
 * Restores a snapshot as restic lays it out (its top-level entries under
 * `targetDir`, which must not exist or be empty), in one restic run: no
 * lookup first. Fails with SnapshotNotFoundError when the id is unknown.
 */
export async function restoreAsIs (repo: ResticRepo, snapshotId: string, targetDir: string, opts: RestoreOptions): Promise<void> {
  checkSnapshotId(snapshotId)
  const target = resolve(targetDir)
  await mustBeEmptyOrAbsent(target)
  const args = ['restore', snapshotId, '--target', target]
  if (opts.verify === true) args.push('--verify')
  try {
    await runOrThrow(repo, args, `restore snapshot ${snapshotId} into ${target}`, opts)
  } catch (err) {
    if (/no matching ID found|no snapshot found|invalid id/i.test((err as Error).message)) throw new SnapshotNotFoundError(snapshotId, repo.repo)
    throw err
  }
}

/**
 * One entry of `restic diff`: `+` added, `-` removed, or one or more of `T`
 * type changed, `M` content changed, `U` metadata changed (`TU`, `MU`).
 * Directories end in `/`.
 */
export interface DiffEntry {
  path: string
  modifier: string
}

/** What changed from snapshot `from` to snapshot `to` (metadata changes included), as restic compares their trees. */
export async function diff (repo: ResticRepo, from: string, to: string, opts: SignalOptions): Promise<DiffEntry[]> {
  checkSnapshotId(from)
  checkSnapshotId(to)
  const stdout = await runOrThrow(repo, ['diff', '--json', '--metadata', '--', from, to], `compare snapshots ${from} and ${to}`, opts)
  return parseResticJson(repo, `compare snapshots ${from} and ${to}`, () => {
    const out: DiffEntry[] = []
    for (const line of stdout.split('\n')) {
      if (line.trim() === '') continue
      const v = JSON.parse(line) as { message_type?: unknown, path?: unknown, modifier?: unknown }
      if (v.message_type !== 'change') continue
      if (typeof v.path !== 'string' || !v.path.startsWith('/') || v.path.split('/').includes('..')) throw new Error(`change.path ${JSON.stringify(v.path)} is not an absolute path`)
      if (typeof v.modifier !== 'string' || !/^(\+|-|T?M?U?)$/.test(v.modifier) || v.modifier === '') throw new Error(`change.modifier ${JSON.stringify(v.modifier)} is unknown`)
      out.push({ path: v.path, modifier: v.modifier })
    }
    return out
  })
}

/** One node of a snapshot's tree as `restic ls --json` describes it. */
export interface TreeNode {
  path: string
  type: string
  mode: number
  uid: number
  gid: number
  mtime: string
}

/** Every file and directory of a snapshot, with its metadata. */
export async function ls (repo: ResticRepo, snapshotId: string, opts: SignalOptions): Promise<TreeNode[]> {
  checkSnapshotId(snapshotId)
  const stdout = await runOrThrow(repo, ['ls', '--json', '--', snapshotId], `list the files of snapshot ${snapshotId}`, opts)
  return parseResticJson(repo, `list the files of snapshot ${snapshotId}`, () => {
    const out: TreeNode[] = []
    for (const line of stdout.split('\n')) {
      if (line.trim() === '') continue
      const v = JSON.parse(line) as Record<string, unknown>
      if (v.struct_type !== 'node') continue
      if (typeof v.path !== 'string' || typeof v.type !== 'string') throw new Error('node without path or type')
      out.push({ path: v.path, type: v.type, mode: Number(v.mode ?? 0), uid: Number(v.uid ?? 0), gid: Number(v.gid ?? 0), mtime: String(v.mtime ?? '') })
    }
    return out
  })
}

/** restic's include patterns treat `*`, `?`, `[`, `]` and `\\` as pattern syntax: a path names itself only escaped. */
export function literalPattern (path: string): string {
  return path.replace(/[*?[\]\\]/g, c => `\\${c}`)
}

/**
 * Restores only the given paths of a snapshot into `targetDir`, over what is
 * there: files are rewritten whole, others are left alone. The increment of a
 * move, applied on top of the copy restored while the app still ran.
 */
export async function restorePaths (repo: ResticRepo, snapshotId: string, targetDir: string, paths: string[], opts: RestoreOptions): Promise<void> {
  checkSnapshotId(snapshotId)
  if (paths.length === 0) return
  const args = ['restore', snapshotId, '--target', resolve(targetDir)]
  for (const p of paths) args.push('--include', literalPattern(p))
  if (opts.verify === true) args.push('--verify')
  await runOrThrow(repo, args, `restore ${paths.length} path(s) of snapshot ${snapshotId}`, opts)
}

/**
 * Removes snapshots from the index (their data stays until `prune`). Only ever
 * called explicitly. Returns the full ids of the snapshots removed.
 */
export async function forget (repo: ResticRepo, what: ForgetWhat, opts: SignalOptions): Promise<{ removed: string[] }> {
  if ('ids' in what) {
    if (what.ids.length === 0) return { removed: [] }
    const full: string[] = []
    for (const id of what.ids) full.push((await getSnapshot(repo, id, opts)).id)
    await runOrThrow(repo, ['forget', '--', ...full], `forget ${full.length} snapshot(s)`, opts)
    return { removed: full }
  }
  const args = ['forget', '--json']
  const k = what.keep
  const counts: Array<[keyof KeepPolicy, string]> = [['last', '--keep-last'], ['hourly', '--keep-hourly'], ['daily', '--keep-daily'], ['weekly', '--keep-weekly'], ['monthly', '--keep-monthly'], ['yearly', '--keep-yearly']]
  for (const [key, flag] of counts) {
    const n = k[key]
    if (n === undefined) continue
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1) throw new UserError(`keep.${key} must be a positive integer`, { exitCode: EXIT.usage })
    args.push(flag, String(n))
  }
  if (k.within !== undefined) {
    if (!DURATION.test(k.within)) throw new UserError(`keep.within ${JSON.stringify(k.within)} is not a restic duration`, { exitCode: EXIT.usage, hint: 'write it like 7d, 12h or 1y6m' })
    args.push('--keep-within', k.within)
  }
  if (args.length === 2) throw new UserError('a retention policy must keep something (keep.last, keep.daily, ...)', { exitCode: EXIT.usage, hint: 'to remove given snapshots, pass { ids }' })
  if (what.tags !== undefined && what.tags.length > 0) args.push('--tag', what.tags.map(checkTag).join(','))
  if (what.host !== undefined) args.push('--host', checkHost(what.host))
  if (what.groupBy !== undefined) args.push('--group-by', what.groupBy)
  const stdout = await runOrThrow(repo, args, 'apply a retention policy', opts)
  return { removed: parseResticJson(repo, 'apply a retention policy', () => parseForget(stdout)) }
}

/** Deletes data no snapshot references any more. Only ever called explicitly; takes an exclusive lock. */
export async function prune (repo: ResticRepo, opts: SignalOptions): Promise<void> {
  await runOrThrow(repo, ['prune'], 'prune the repository', opts)
}

/** Checks the repository's structure (and with readData every byte); throws RepoCorruptError when damaged. */
export async function check (repo: ResticRepo, opts: CheckOptions): Promise<void> {
  await runOrThrow(repo, opts.readData === true ? ['check', '--read-data'] : ['check'], 'check the repository', opts)
}

/** Removes stale locks: those of restic processes that no longer run on this machine (or older than 30 minutes). */
export async function unlock (repo: ResticRepo, opts: SignalOptions): Promise<void> {
  await runOrThrow(repo, ['unlock'], 'remove stale locks', opts)
}

// ---------------------------------------------------------------------------

/** Tags, hosts and ids mean the same whichever format holds the snapshot (tar-repo.ts uses these too). */
export function checkTag (tag: string): string {
  if (!SNAPSHOT_TAG.test(tag)) throw new UserError(`snapshot tag ${JSON.stringify(tag)} is not allowed`, { exitCode: EXIT.usage, hint: 'tags are 1 to 128 letters, digits and _ . : = / @ + -, with no comma (restic splits tag lists on commas)' })
  return tag
}

export function checkHost (host: string): string {
  if (!HOST.test(host)) throw new UserError(`snapshot host ${JSON.stringify(host)} is not allowed`, { exitCode: EXIT.usage, hint: 'use letters, digits, _ . and -, starting with a letter or digit' })
  return host
}

export function checkSnapshotId (id: string): void {
  if (!SNAPSHOT_ID.test(id)) throw new UserError(`${JSON.stringify(id)} is not a snapshot id`, { exitCode: EXIT.usage, hint: 'give 8 to 64 hex digits, as `dcloud snapshot ls` or `restic snapshots` shows them' })
}

async function mustBe (path: string, kind: 'directory' | 'any'): Promise<void> {
  let s
  try {
    s = await stat(path)
  } catch {
    throw new UserError(`${path} does not exist`, { exitCode: EXIT.noInput, hint: 'check the path; nothing was backed up' })
  }
  if (kind === 'directory' && !s.isDirectory()) throw new UserError(`${path} is not a directory`, { exitCode: EXIT.usage })
}

function isRemote (repo: string): boolean {
  return /^[a-z0-9]+:/i.test(repo) && !repo.startsWith('local:')
}

function context (repo: ResticRepo, action: string, r: RunResult): FailureContext {
  return { action, repo: repo.repo, passwordFile: repo.passwordFile, code: r.code, stderr: r.stderr }
}

interface RunOptions {
  signal: AbortSignal
  cwd?: string
  /** Called with each line of stdout (then stdout is not collected). Throwing stops restic. */
  onLine?: (line: string) => void
}

interface RunResult {
  code: number | null
  stdout: string
  stderr: string
}

/** Runs restic and throws the error its failure means; returns stdout. */
async function runOrThrow (repo: ResticRepo, args: string[], action: string, opts: RunOptions): Promise<string> {
  const r = await run(repo, args, opts)
  if (r.code !== 0) {
    // Commands without --json print their findings (check's damage) on stdout too.
    throw classifyFailure({ ...context(repo, action, r), stderr: `${r.stdout}\n${r.stderr}` })
  }
  return r.stdout
}

async function run (repo: ResticRepo, args: string[], opts: RunOptions): Promise<RunResult> {
  const { signal } = opts
  signal.throwIfAborted()
  const passwordFile = resolve(repo.passwordFile)
  try {
    const s = await stat(passwordFile)
    if (!s.isFile()) throw new PasswordFileError(passwordFile, 'is not a file')
  } catch (err) {
    if (err instanceof PasswordFileError) throw err
    throw new PasswordFileError(passwordFile, (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'cannot be read')
  }
  const binary = repo.binary ?? 'restic'
  const global = ['--repo', isRemote(repo.repo) ? repo.repo : resolve(repo.repo.replace(/^local:/, ''))]
  if (repo.cacheDir !== undefined) global.push('--cache-dir', resolve(repo.cacheDir))
  // Only what restic needs from our environment: a RESTIC_PASSWORD or
  // RESTIC_REPOSITORY of the agent's own must not redirect or unlock anything.
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/root',
    TMPDIR: process.env.TMPDIR,
    LANG: 'C.UTF-8',
    RESTIC_PASSWORD_FILE: passwordFile,
    RESTIC_PROGRESS_FPS: PROGRESS_FPS
  }

  return await new Promise<RunResult>((resolvePromise, reject) => {
    const child = spawn(binary, [...global, ...args], { cwd: opts.cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stdoutBytes = 0
    let stderr = ''
    let partial = ''
    let failure: unknown = null
    let killTimer: NodeJS.Timeout | undefined
    let killed = false
    let settled = false

    const stop = (): void => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGINT')
      killTimer ??= setTimeout(() => {
        killed = true
        child.kill('SIGKILL')
      }, KILL_GRACE_MS)
    }
    const onAbort = (): void => { stop() }
    signal.addEventListener('abort', onAbort, { once: true })

    const line = (l: string): void => {
      if (failure !== null || opts.onLine === undefined) return
      try {
        opts.onLine(l)
      } catch (err) {
        failure = err
        stop()
      }
    }
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk: string) => {
      if (opts.onLine === undefined) {
        stdoutBytes += chunk.length
        if (stdoutBytes > MAX_STDOUT) {
          failure ??= new ResticError(`restic printed more than ${MAX_STDOUT} bytes; giving up`, null)
          stop()
          return
        }
        stdout += chunk
        return
      }
      partial += chunk
      let nl: number
      while ((nl = partial.indexOf('\n')) >= 0) {
        line(partial.slice(0, nl))
        partial = partial.slice(nl + 1)
      }
      // A line longer than any restic prints is dropped rather than grown without bound.
      if (partial.length > MAX_LINE) partial = ''
    })
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', (chunk: string) => {
      stderr += chunk
      if (stderr.length > MAX_STDERR) stderr = stderr.slice(-MAX_STDERR)
    })

    const finish = (fn: () => void): void => {
      if (settled) return
      settled = true
      clearTimeout(killTimer)
      signal.removeEventListener('abort', onAbort)
      fn()
    }
    child.on('error', (err: NodeJS.ErrnoException) => {
      finish(() => { reject(err.code === 'ENOENT' ? new ResticMissingError(binary) : err) })
    })
    child.on('close', (code) => {
      if (partial !== '') line(partial)
      finish(() => {
        if (signal.aborted || failure !== null) {
          const why = failure ?? signal.reason
          // A killed restic leaves its lock behind; only stale locks are removed, so this is safe.
          if (killed) {
            unlock(repo, { signal: AbortSignal.timeout(KILL_GRACE_MS) }).then(() => { reject(why) }, () => { reject(why) })
          } else {
            reject(why)
          }
          return
        }
        resolvePromise({ code, stdout, stderr })
      })
    })
  })
}
