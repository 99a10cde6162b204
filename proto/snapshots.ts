/**
 * Restic repositories from node to node: `/dcloud/repo-pull/1`, its messages
 * and their validators (agent/snapshots/repo-sync.ts drives it).
 *
 *   puller                                                  server
 *   ---- frame {"app":"notes"} ----------------------------->
 *   <--- frame {"ok":true,"files":[{"path","size"},...]} ----   (or {"ok":false,"error":{code,message}})
 *   ---- frame {"want":["config","keys/..",...]} ----------->
 *   <--- frame {"file":{"path","size"}} + exactly size bytes    (once per wanted path, in the wanted order)
 *   <--- frame {"end":{"files":N,"bytes":B}} ----------------   (or {"error":{code,message}} instead of any file)
 *
 * A frame is an unsigned varint length and that many bytes of UTF-8 JSON.
 *
 * Everything here is about names, because names are what a hostile peer can
 * use against the puller's disk: a repository file is `config` or a restic
 * id (the SHA-256 of the file's bytes, 64 lowercase hex) in one of restic's
 * directories, and nothing else: no `..`, no other directory, no `locks/`.
 */
import { ValidationError, array, lengthPrefixed, number, parseJsonBytes, record, string } from './validate.ts'

export const REPO_PULL_PROTOCOL = '/dcloud/repo-pull/1'

/** App names as repositories are stored under: one path component, never `.`/`..`, never a flag. */
export const REPO_APP_PATTERN = /^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$|^[a-z0-9]$/

/** The request is `{"app":"..."}`: 40 characters of name and a little JSON. */
export const REPO_REQUEST_MAX_BYTES = 1024
/** A listing entry is about 90 bytes: 250 000 packs are several TB of repository. */
export const REPO_LISTING_MAX_FILES = 250_000
export const REPO_LISTING_MAX_BYTES = 32 * 1024 * 1024
/** The frames around file contents (header, end, error) are small; more is a broken or hostile peer. */
export const REPO_FRAME_MAX_BYTES = 4096
/** config and keys/ files are a few hundred bytes (restic's key holds scrypt parameters and a wrapped key). */
export const REPO_SMALL_FILE_MAX_BYTES = 1024 * 1024

export type RepoFileKind = 'config' | 'keys' | 'data' | 'index' | 'snapshots'

/**
 * The order files are sent in. Whatever prefix of it has arrived is a
 * consistent repository: a snapshot only after the index that lists its
 * packs, an index only after the packs it lists.
 */
export const REPO_PULL_ORDER: readonly RepoFileKind[] = ['config', 'keys', 'data', 'index', 'snapshots']

export interface RepoFile {
  /** `config`, `keys/ID`, `snapshots/ID`, `index/ID` or `data/XX/ID`. */
  path: string
  size: number
}

export interface RepoPath {
  path: string
  kind: RepoFileKind
  /** The SHA-256 of the content, hex; null for `config` (the only file not named by its hash). */
  id: string | null
}

const HASHED_PATH = /^(keys|snapshots|index)\/([0-9a-f]{64})$/
const DATA_PATH = /^data\/([0-9a-f]{2})\/([0-9a-f]{64})$/

export function isRepoApp (app: string): boolean {
  return REPO_APP_PATTERN.test(app)
}

/** What a repository path names, or null when it is not one we ever read or write. */
export function parseRepoPath (path: string): RepoPath | null {
  if (path === 'config') return { path, kind: 'config', id: null }
  const h = HASHED_PATH.exec(path)
  if (h !== null) return { path, kind: h[1] as RepoFileKind, id: h[2] as string }
  const d = DATA_PATH.exec(path)
  // restic's local layout: data/ plus the first two hex digits of the id.
  if (d !== null && (d[2] as string).startsWith(d[1] as string)) return { path, kind: 'data', id: d[2] as string }
  return null
}

/** Sort key: kind in pull order, then path. */
export function compareRepoPaths (a: string, b: string): number {
  const ka = REPO_PULL_ORDER.indexOf(parseRepoPath(a)?.kind ?? 'snapshots')
  const kb = REPO_PULL_ORDER.indexOf(parseRepoPath(b)?.kind ?? 'snapshots')
  if (ka !== kb) return ka - kb
  return a < b ? -1 : a > b ? 1 : 0
}

/** The largest size a file of this kind may have, given the caller's cap for packs and indexes. */
export function repoFileLimit (kind: RepoFileKind, maxFileBytes: number): number {
  return kind === 'config' || kind === 'keys' ? Math.min(REPO_SMALL_FILE_MAX_BYTES, maxFileBytes) : maxFileBytes
}

// ---------------------------------------------------------------------------
// Messages

export type RepoErrorCode = 'not_found' | 'busy' | 'bad_request' | 'failed'
const ERROR_CODES: readonly string[] = ['not_found', 'busy', 'bad_request', 'failed']

export interface RepoError {
  code: RepoErrorCode
  message: string
}

export interface RepoPullRequest {
  app: string
}

export type RepoListing =
  | { ok: true, files: RepoFile[] }
  | { ok: false, error: RepoError }

export interface RepoWant {
  want: string[]
}

export type RepoStreamFrame =
  | { file: RepoFile }
  | { end: { files: number, bytes: number } }
  | { error: RepoError }

export function decodeRepoPullRequest (raw: unknown): RepoPullRequest {
  const r = record(raw, 'request')
  const app = string(r.app, 'request.app', { min: 1, max: 40 })
  if (!isRepoApp(app)) throw new ValidationError('request.app', 'is not an app name (lowercase letters, digits and -, at most 40)')
  return { app }
}

export function decodeRepoPullRequestBytes (bytes: Uint8Array): RepoPullRequest {
  return decodeRepoPullRequest(parseJsonBytes(bytes, REPO_REQUEST_MAX_BYTES, 'request'))
}

function decodeError (raw: unknown, field: string): RepoError {
  const e = record(raw, field)
  const code = string(e.code, `${field}.code`, { max: 32 })
  return {
    // An unknown code from a newer peer is still a failure we can report.
    code: ERROR_CODES.includes(code) ? code as RepoErrorCode : 'failed',
    message: string(e.message, `${field}.message`, { max: 2048 })
  }
}

function decodeRepoFile (raw: unknown, field: string): RepoFile {
  const f = record(raw, field)
  const path = string(f.path, `${field}.path`, { min: 1, max: 80 })
  if (parseRepoPath(path) === null) throw new ValidationError(`${field}.path`, `${JSON.stringify(path)} is not a restic repository file (config, keys/ID, snapshots/ID, index/ID or data/XX/ID)`)
  // restic never writes an empty file; sizes beyond 2^53 cannot be counted exactly.
  const size = number(f.size, `${field}.size`, { min: 1, max: Number.MAX_SAFE_INTEGER, integer: true })
  return { path, size }
}

/** A listing: valid paths, each once, `config` among them. Sizes against limits are the puller's business. */
export function decodeRepoListing (raw: unknown): RepoListing {
  const r = record(raw, 'listing')
  if (r.ok === false) return { ok: false, error: decodeError(r.error, 'listing.error') }
  if (r.ok !== true) throw new ValidationError('listing.ok', 'must be true or false')
  const files = array(r.files, 'listing.files', REPO_LISTING_MAX_FILES, decodeRepoFile)
  const seen = new Set<string>()
  for (const f of files) {
    if (seen.has(f.path)) throw new ValidationError('listing.files', `${f.path} is listed twice`)
    seen.add(f.path)
  }
  if (!seen.has('config')) throw new ValidationError('listing.files', 'has no config: not a restic repository')
  return { ok: true, files }
}

export function decodeRepoListingBytes (bytes: Uint8Array): RepoListing {
  return decodeRepoListing(parseJsonBytes(bytes, REPO_LISTING_MAX_BYTES, 'listing'))
}

/** The paths a puller wants: valid names, each once. Whether they were listed is the server's check. */
export function decodeRepoWant (raw: unknown): RepoWant {
  const r = record(raw, 'want')
  const want = array(r.want, 'want.want', REPO_LISTING_MAX_FILES, (v, f) => {
    const path = string(v, f, { min: 1, max: 80 })
    if (parseRepoPath(path) === null) throw new ValidationError(f, `${JSON.stringify(path)} is not a restic repository file`)
    return path
  })
  if (new Set(want).size !== want.length) throw new ValidationError('want.want', 'names a path twice')
  return { want }
}

export function decodeRepoWantBytes (bytes: Uint8Array): RepoWant {
  return decodeRepoWant(parseJsonBytes(bytes, REPO_LISTING_MAX_BYTES, 'want'))
}

export function decodeRepoStreamFrame (raw: unknown): RepoStreamFrame {
  const r = record(raw, 'frame')
  const keys = Object.keys(r)
  if (keys.length !== 1) throw new ValidationError('frame', 'must have exactly one of file, end, error')
  if (r.file !== undefined) return { file: decodeRepoFile(r.file, 'frame.file') }
  if (r.end !== undefined) {
    const e = record(r.end, 'frame.end')
    return {
      end: {
        files: number(e.files, 'frame.end.files', { min: 0, max: REPO_LISTING_MAX_FILES, integer: true }),
        bytes: number(e.bytes, 'frame.end.bytes', { min: 0, max: Number.MAX_SAFE_INTEGER, integer: true })
      }
    }
  }
  if (r.error !== undefined) return { error: decodeError(r.error, 'frame.error') }
  throw new ValidationError('frame', 'must have exactly one of file, end, error')
}

export function decodeRepoStreamFrameBytes (bytes: Uint8Array): RepoStreamFrame {
  return decodeRepoStreamFrame(parseJsonBytes(bytes, REPO_FRAME_MAX_BYTES, 'frame'))
}

/** A frame: unsigned varint length (as libp2p's length prefixes), then the JSON. */
export function encodeRepoFrame (value: unknown): Uint8Array {
  return lengthPrefixed(new TextEncoder().encode(JSON.stringify(value)))
}
