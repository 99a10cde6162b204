/**
 * Directory trees in tar archives, written and read safely: the part of the
 * archive formats that touches the disk. Backup files (archive.ts: one tree
 * per volume, `volumes/NAME/...`) and a tar repository's snapshot archives
 * (tar-repo.ts: `NAME/...` side by side) both write with scanTree/writeTree
 * and read with TreeExtractor, so both obey one set of rules:
 *
 * - Writing walks each tree twice (scanTree counts and refuses what a reader
 *   would refuse, writeTree writes and fails when the tree changed since),
 *   never follows a symlink, and skips sockets, fifos and device nodes.
 * - Reading is the security boundary of a restore (docs/snapshots.md,
 *   "Reading: the safety rules"): every rule about an entry is checked before
 *   its bytes reach the disk, nothing is written through a symlink or over
 *   anything, no symlink may leave its tree, and setuid/setgid bits are
 *   dropped.
 * - Each tree has a content listing (listingLine) whose sha256 the writer
 *   returns and the reader recomputes: equal content, equal checksum.
 */
import { createHash, type Hash } from 'node:crypto'
import { constants, type Stats } from 'node:fs'
import { chmod, chown, link, lchown, lstat, lutimes, mkdir, open, readdir, readlink, symlink, utimes, type FileHandle } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { NoSpaceError, UserError, EXIT } from '../util/errors.ts'
import { ArchiveError, MAX_PATH_BYTES, encodeEntry, padding, type TarEntry, type TarReader } from './tar.ts'

const MAX_NAME_BYTES = 255
/** Files are read in pieces of this size. */
export const CHUNK = 256 * 1024
const FLUSH_AT = 1024 * 1024
const IS_ROOT = process.getuid?.() === 0

/** Decodes UTF-8, refusing anything that is not. */
export const strictUtf8 = new TextDecoder('utf-8', { fatal: true })

// ---------------------------------------------------------------------------
// The content listing

export type ListingKind = 'd' | 'f' | 'l' | 'h'

/**
 * One line of a volume's content listing; the listing's sha256 is recorded in
 * the metadata and recomputed by the reader. The lines follow the archive's
 * order (the writer walks each directory sorted by name). Modification times
 * are left out: equal content gives an equal checksum.
 *
 *   TYPE MODE UID GID SIZE SHA256 "PATH" ["TARGET"]
 *
 * TYPE is d, f, l (symlink) or h (hardlink); MODE four octal digits; SHA256 the
 * file's content hash, or - for the others; PATH relative to the volume ("."
 * for its root) and TARGET (symlinks and hardlinks) JSON-quoted.
 */
export function listingLine (kind: ListingKind, rel: string, mode: number, uid: number, gid: number, size: number, sha256: string | null, target: string | null): string {
  const m = (mode & 0o7777).toString(8).padStart(4, '0')
  return `${kind} ${m} ${uid} ${gid} ${size} ${sha256 ?? '-'} ${JSON.stringify(rel)}${target === null ? '' : ` ${JSON.stringify(target)}`}\n`
}

/**
 * Whether a symlink, followed from where it is, leaves its volume: through
 * `..`, an absolute target, or other symlinks of the volume (`links` maps every
 * symlink's volume-relative path to its target). Components that are not in
 * `links` are taken as directories, the cautious reading.
 */
export function symlinkEscapes (rel: string, links: ReadonlyMap<string, string>): boolean {
  const target = links.get(rel)
  if (target === undefined) return false
  if (target.startsWith('/')) return true
  const stack = rel.split('/').slice(0, -1)
  let queue = target.split('/')
  let hops = 0
  for (let i = 0; i < queue.length; i++) {
    const c = queue[i] as string
    if (c === '' || c === '.') continue
    if (c === '..') {
      if (stack.length === 0) return true
      stack.pop()
      continue
    }
    stack.push(c)
    const next = links.get(stack.join('/'))
    if (next === undefined) continue
    // The kernel gives up after 40 links (ELOOP): nothing past that is reached.
    if (++hops > 40) return false
    if (next.startsWith('/')) return true
    stack.pop()
    queue = [...next.split('/'), ...queue.slice(i + 1)]
    i = -1
  }
  return false
}

// ---------------------------------------------------------------------------
// Walking a volume

interface WalkEntry {
  /** Volume-relative path, "." for the root. */
  rel: string
  abs: string
  kind: ListingKind | 'skip'
  st: Stats
  /** Symlink target, or the volume-relative path a hardlink shares its inode with. */
  target: string | null
  skipReason?: string
}

/**
 * Every entry under `root`, depth first, each directory's names sorted by
 * bytes. Never follows a symlink. Names that are not UTF-8, or that no archive
 * could carry, are errors naming the directory.
 */
async function * walk (root: string, prefixBytes: number, signal: AbortSignal): AsyncGenerator<WalkEntry> {
  const rootSt = await lstat(root).catch(() => null)
  if (rootSt === null || !rootSt.isDirectory()) {
    throw new UserError(`${root} is not a directory`, { exitCode: EXIT.noInput, hint: 'give the directory that holds the volume\'s data (a Docker volume\'s _data)' })
  }
  yield { rel: '.', abs: root, kind: 'd', st: rootSt, target: null }
  const inodes = new Map<string, string>()
  async function * dir (abs: string, rel: string): AsyncGenerator<WalkEntry> {
    signal.throwIfAborted()
    const names = (await readdir(abs, { encoding: 'buffer' })).sort(Buffer.compare)
    for (const raw of names) {
      let name: string
      try {
        name = strictUtf8.decode(raw)
      } catch {
        throw new UserError(`a file name in ${abs} is not UTF-8 (${JSON.stringify(raw.toString('latin1'))})`, { exitCode: EXIT.dataError, hint: 'rename it; backup files carry UTF-8 names only' })
      }
      const childRel = rel === '.' ? name : `${rel}/${name}`
      const childAbs = join(abs, name)
      if (raw.length > MAX_NAME_BYTES || prefixBytes + Buffer.byteLength(childRel) > MAX_PATH_BYTES - 1) {
        throw new UserError(`${childAbs}: the path is too long for a backup file`, { exitCode: EXIT.dataError, hint: `keep paths inside a volume under ${MAX_PATH_BYTES - prefixBytes - 1} bytes` })
      }
      const st = await lstat(childAbs)
      if (st.isDirectory()) {
        yield { rel: childRel, abs: childAbs, kind: 'd', st, target: null }
        yield * dir(childAbs, childRel)
      } else if (st.isFile()) {
        const key = `${st.dev}:${st.ino}`
        const first = st.nlink > 1 ? inodes.get(key) : undefined
        if (first !== undefined) {
          yield { rel: childRel, abs: childAbs, kind: 'h', st, target: first }
        } else {
          if (st.nlink > 1) inodes.set(key, childRel)
          yield { rel: childRel, abs: childAbs, kind: 'f', st, target: null }
        }
      } else if (st.isSymbolicLink()) {
        const target = await readlink(childAbs)
        if (Buffer.byteLength(target) > MAX_PATH_BYTES - 1) throw new UserError(`${childAbs}: the symlink's target is too long for a backup file`, { exitCode: EXIT.dataError })
        yield { rel: childRel, abs: childAbs, kind: 'l', st, target }
      } else {
        const what = st.isSocket() ? 'socket' : st.isFIFO() ? 'fifo' : 'device node'
        yield { rel: childRel, abs: childAbs, kind: 'skip', st, target: null, skipReason: what }
      }
    }
  }
  yield * dir(root, '.')
}

/** Refuses a tree whose symlinks lead outside it: the archive could not be restored safely. */
function checkLinks (tree: TreeSpec, links: Map<string, string>): void {
  for (const [rel, target] of links) {
    if (symlinkEscapes(rel, links)) {
      throw new UserError(`${tree.label}: symlink ${join(tree.dir, rel)} points outside the ${tree.noun} (${JSON.stringify(target)})`, {
        exitCode: EXIT.dataError,
        hint: `an archive may only hold symlinks that stay inside their ${tree.noun} (restores refuse the others); make it relative to the ${tree.noun}, or remove it`
      })
    }
  }
}

/**
 * The content listing of a directory as a backup of it would record it: its
 * sha256, entry count and byte count. Compares a restored volume with the
 * archive's metadata, or two directories with each other.
 */
export async function listingDigest (dir: string, opts: { signal: AbortSignal }): Promise<{ sha256: string, entries: number, bytes: number, skipped: string[] }> {
  const hash = createHash('sha256')
  let entries = 0
  let bytes = 0
  const skipped: string[] = []
  for await (const e of walk(resolve(dir), 0, opts.signal)) {
    if (e.kind === 'skip') {
      skipped.push(e.abs)
      continue
    }
    entries++
    let sha: string | null = null
    if (e.kind === 'f') {
      const h = createHash('sha256')
      const fh = await open(e.abs, constants.O_RDONLY | constants.O_NOFOLLOW)
      try {
        for await (const c of fh.createReadStream({ highWaterMark: CHUNK, autoClose: false, signal: opts.signal })) h.update(c as Buffer)
      } finally {
        await fh.close()
      }
      sha = h.digest('hex')
      bytes += e.st.size
    }
    hash.update(listingLine(e.kind, e.rel, e.st.mode, e.st.uid, e.st.gid, e.kind === 'f' ? e.st.size : 0, sha, e.target))
  }
  return { sha256: hash.digest('hex'), entries, bytes, skipped }
}

// ---------------------------------------------------------------------------
// Writing

/** Where tree writers put their bytes. */
export interface TarSink {
  write: (b: Buffer) => Promise<void>
}

/** Buffers small writes into fewer system calls; tracks the position. */
export class FileSink implements TarSink {
  private chunks: Buffer[] = []
  private buffered = 0
  position = 0
  private readonly fh: FileHandle

  constructor (fh: FileHandle) {
    this.fh = fh
  }

  async write (b: Buffer): Promise<void> {
    this.chunks.push(b)
    this.buffered += b.length
    if (this.buffered >= FLUSH_AT) await this.flush()
  }

  async flush (): Promise<void> {
    if (this.chunks.length === 0) return
    const chunks = this.chunks
    const at = this.position
    this.chunks = []
    this.position += this.buffered
    this.buffered = 0
    let written = 0
    const total = chunks.reduce((n, c) => n + c.length, 0)
    while (written < total) {
      const { bytesWritten } = await this.fh.writev(written === 0 ? chunks : [Buffer.concat(chunks).subarray(written)], at + written)
      written += bytesWritten
    }
  }

  /** Bytes in the file once flushed. */
  get size (): number {
    return this.position + this.buffered
  }
}

class ChangedError extends UserError {
  override name = 'VolumeChangedError'

  constructor (label: string, what: string) {
    super(`${label} changed while it was being archived (${what})`, { exitCode: EXIT.tempFail, hint: 'stop the app (or let dcloud stop it) and back it up again; nothing was written' })
  }
}

/**
 * One directory written into an archive as a tree of entries under `prefix`.
 * Backup files hold one per volume (`volumes/NAME/`); a tar repository's
 * archives one per top-level entry (`NAME/`).
 */
export interface TreeSpec {
  dir: string
  /** Archive path of the tree's root directory, ending in '/'. */
  prefix: string
  /** The tree in messages: "volume data". */
  label: string
  /** What a tree is, in messages: "volume". */
  noun: string
}

export interface TreeScan extends TreeSpec {
  entries: number
  /** Directories among the entries, the root included. */
  dirs: number
  /** Bytes of file content. */
  bytes: number
}

/**
 * Pass 1 over a tree: counts what pass 2 must find again (and progress
 * totals), and refuses what the reader would refuse, before a byte is
 * written. Sockets, fifos and device nodes are appended to `skipped`.
 */
export async function scanTree (spec: TreeSpec, signal: AbortSignal, skipped: string[]): Promise<TreeScan> {
  const dir = resolve(spec.dir)
  const tree = { ...spec, dir }
  let entries = 0
  let dirs = 0
  let bytes = 0
  const links = new Map<string, string>()
  for await (const e of walk(dir, Buffer.byteLength(spec.prefix), signal)) {
    if (e.kind === 'skip') {
      skipped.push(`${e.abs} (${e.skipReason ?? '?'})`)
      continue
    }
    entries++
    if (e.kind === 'd') dirs++
    if (e.kind === 'f') bytes += e.st.size
    if (e.kind === 'l' && e.target !== null) links.set(e.rel, e.target)
  }
  checkLinks(tree, links)
  return { ...tree, entries, dirs, bytes }
}

/**
 * Pass 2: writes a scanned tree's entries (each directory sorted by name)
 * and returns its listing's sha256. A tree that no longer matches its scan
 * fails: its data would be inconsistent. `progress` is called after each
 * entry and as file content moves, with the entries written so far and the
 * bytes just moved.
 */
export async function writeTree (sink: TarSink, tree: TreeScan, signal: AbortSignal, progress: (entries: number, moved: number) => void = () => {}): Promise<string> {
  const hash = createHash('sha256')
  const links = new Map<string, string>()
  let entries = 0
  let bytes = 0
  const prefix = tree.prefix
  for await (const e of walk(tree.dir, Buffer.byteLength(prefix), signal)) {
    if (e.kind === 'skip') continue
    entries++
    const path = e.rel === '.' ? prefix : `${prefix}${e.rel}`
    const base = { mode: e.st.mode, uid: e.st.uid, gid: e.st.gid, mtime: Math.floor(e.st.mtimeMs / 1000) }
    if (e.kind === 'd') {
      await sink.write(encodeEntry({ ...base, path, type: 'dir', size: 0 }))
      hash.update(listingLine('d', e.rel, e.st.mode, e.st.uid, e.st.gid, 0, null, null))
    } else if (e.kind === 'l') {
      const target = e.target ?? ''
      links.set(e.rel, target)
      await sink.write(encodeEntry({ ...base, path, type: 'symlink', size: 0, linkpath: target }))
      hash.update(listingLine('l', e.rel, e.st.mode, e.st.uid, e.st.gid, 0, null, target))
    } else if (e.kind === 'h') {
      await sink.write(encodeEntry({ ...base, path, type: 'hardlink', size: 0, linkpath: `${prefix}${e.target ?? ''}` }))
      hash.update(listingLine('h', e.rel, e.st.mode, e.st.uid, e.st.gid, 0, null, e.target))
    } else {
      await sink.write(encodeEntry({ ...base, path, type: 'file', size: e.st.size }))
      const sha = await copyFile(e, sink, tree.label, signal, (n) => { progress(entries, n) })
      await sink.write(Buffer.alloc(padding(e.st.size)))
      hash.update(listingLine('f', e.rel, e.st.mode, e.st.uid, e.st.gid, e.st.size, sha, null))
      bytes += e.st.size
    }
    progress(entries, 0)
  }
  if (entries !== tree.entries || bytes !== tree.bytes) throw new ChangedError(tree.label, `${tree.entries} entries and ${tree.bytes} bytes when counted, ${entries} and ${bytes} when written`)
  checkLinks(tree, links)
  return hash.digest('hex')
}

/** Copies exactly the size lstat saw, hashing it; a file that changes meanwhile fails the backup. */
async function copyFile (e: WalkEntry, sink: TarSink, label: string, signal: AbortSignal, moved: (n: number) => void): Promise<string> {
  const h = createHash('sha256')
  // O_NOFOLLOW: a file swapped for a symlink since the walk is not followed.
  const fh = await open(e.abs, constants.O_RDONLY | constants.O_NOFOLLOW).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ELOOP') throw new ChangedError(label, `${e.abs} disappeared`)
    throw err
  })
  try {
    const before = await fh.stat()
    if (before.ino !== e.st.ino || before.size !== e.st.size) throw new ChangedError(label, `${e.abs} was replaced or resized`)
    let pos = 0
    while (pos < e.st.size) {
      signal.throwIfAborted()
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, e.st.size - pos))
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos)
      if (bytesRead === 0) throw new ChangedError(label, `${e.abs} shrank`)
      const chunk = buf.subarray(0, bytesRead)
      h.update(chunk)
      await sink.write(chunk)
      pos += bytesRead
      moved(bytesRead)
    }
    const after = await fh.stat()
    if (after.size !== e.st.size || after.mtimeMs !== e.st.mtimeMs) throw new ChangedError(label, `${e.abs} was written to`)
  } finally {
    await fh.close()
  }
  return h.digest('hex')
}

/** How a TreeExtractor places entries and names things in its messages. */
export interface TreeRules {
  /** Path components before each tree's name: ['volumes'] in a backup file, none in a tar repository's archive. */
  base: string[]
  /** What a tree is, in messages: "volume". */
  noun: string
  /** Where the trees are declared, in messages: "dcloud-backup.json". */
  declaredIn: string
  /** Paths that may appear only once, before the trees (a backup file's metadata): a second one is refused. */
  reserved?: string[]
  /** The refusal of an entry outside `base/<name>/` (only possible with a base). */
  outside?: string
}

/** What an extractor read of one tree: compare it with what the archive's owner recorded. */
export interface TreeResult {
  name: string
  entries: number
  bytes: number
  /** sha256 of the tree's content listing (see listingLine). */
  listingSha256: string
}

interface TreeState {
  name: string
  /** Archive path of the tree's root, ending in '/'. */
  prefix: string
  /** Where the tree is extracted to; null when only verifying. */
  dir: string | null
  hash: Hash
  entries: number
  bytes: number
  /** Every entry seen, by tree-relative path; the value is its kind. */
  tree: Map<string, ListingKind>
  links: Map<string, string>
  /** Directories to give their mode, owner and time once their content is in (deepest last). */
  dirs: Array<{ abs: string, e: TarEntry }>
}

/**
 * The safe reader of trees side by side (`BASE/NAME/...` for each declared
 * NAME), shared by backup files and tar repositories: every rule of
 * docs/snapshots.md ("Reading: the safety rules") about entries, checked
 * before an entry's bytes reach the disk. Writes into `root/NAME/`, or
 * nothing when `root` is null.
 *
 * Use: begin(), entry() for each archive entry, finish() once the archive
 * ended, then the caller's own checks of the results, and settle() last:
 * directories get their final (possibly read-only) modes only once nothing
 * can fail any more, so a refused archive can always be removed.
 */
export class TreeExtractor {
  private readonly trees: Map<string, TreeState>
  private readonly rules: TreeRules

  constructor (names: string[], root: string | null, rules: TreeRules) {
    this.rules = rules
    this.trees = new Map(names.map(name => [name, {
      name,
      prefix: [...rules.base, name].join('/') + '/',
      dir: root === null ? null : join(root, name),
      hash: createHash('sha256'),
      entries: 0,
      bytes: 0,
      tree: new Map(),
      links: new Map(),
      dirs: []
    }]))
  }

  /** Entries read so far, all trees together. */
  get entries (): number {
    let n = 0
    for (const t of this.trees.values()) n += t.entries
    return n
  }

  /** Creates each tree's directory (mode 0700 until settle()). */
  async begin (): Promise<void> {
    for (const t of this.trees.values()) {
      const dir = t.dir
      if (dir !== null) await fsStep(t.prefix, async () => { await mkdir(dir, { mode: 0o700 }) })
    }
  }

  /** Places and reads (or writes) one entry, consuming its content; returns its tree's name. */
  async entry (tar: TarReader, e: TarEntry): Promise<string> {
    const { t, rel } = this.place(e)
    await this.read(tar, e, t, rel, t.dir === null ? null : join(t.dir, ...(rel === '.' ? [] : rel.split('/'))))
    return t.name
  }

  /** After the last entry: every tree present, no symlink leaving its tree through others. */
  finish (): TreeResult[] {
    const { noun, declaredIn } = this.rules
    const out: TreeResult[] = []
    for (const t of this.trees.values()) {
      if (!t.tree.has('.')) throw new ArchiveError(`${noun} ${t.name} is declared in ${declaredIn} but not in the archive`)
      for (const rel of t.links.keys()) {
        if (symlinkEscapes(rel, t.links)) throw new ArchiveError(`symlink points outside its ${noun} through other symlinks (${JSON.stringify(t.links.get(rel))})`, `${t.prefix}${rel}`)
      }
      out.push({ name: t.name, entries: t.entries, bytes: t.bytes, listingSha256: t.hash.digest('hex') })
    }
    return out
  }

  /** Gives directories their mode, owner and time, deepest first (a read-only directory is closed after its children are in). */
  async settle (): Promise<void> {
    for (const t of this.trees.values()) {
      for (const d of t.dirs.reverse()) {
        await fsStep(d.e.path, async () => {
          if (IS_ROOT) await chown(d.abs, d.e.uid, d.e.gid)
          await chmod(d.abs, d.e.mode & 0o7777)
          await utimes(d.abs, d.e.mtime, d.e.mtime)
        })
      }
      t.dirs = []
    }
  }

  /**
   * Where an entry belongs, refusing any path that could land outside its
   * tree or anything but a tree's content.
   */
  private place (e: TarEntry): { t: TreeState, rel: string } {
    const { base, noun, declaredIn } = this.rules
    if (e.type === 'char' || e.type === 'block') throw new ArchiveError(`${e.type === 'char' ? 'character' : 'block'} device entries are not allowed`, e.path)
    if (e.type === 'fifo') throw new ArchiveError('fifo entries are not allowed', e.path)
    if (e.type === 'other') throw new ArchiveError(`entry type ${JSON.stringify(e.flag)} is not allowed`, e.path)
    if (this.rules.reserved?.includes(e.path) === true) throw new ArchiveError('appears twice', e.path)
    const parts = splitPath(e.path, e.type === 'dir', e.path)
    const k = base.length
    if (parts.length < k + 1 || base.some((b, i) => parts[i] !== b)) throw new ArchiveError(this.rules.outside ?? `is outside ${base.join('/')}/<name>/`, e.path)
    const t = this.trees.get(parts[k] as string)
    if (t === undefined) throw new ArchiveError(`${noun} ${JSON.stringify(parts[k])} is not in ${declaredIn}`, e.path)
    const rel = parts.length === k + 1 ? '.' : parts.slice(k + 1).join('/')
    if (t.tree.has(rel)) throw new ArchiveError('appears twice', e.path)
    if (rel === '.') {
      if (e.type !== 'dir') throw new ArchiveError(`a ${noun}'s root must be a directory`, e.path)
    } else {
      if (!t.tree.has('.')) throw new ArchiveError(`comes before its ${noun}'s directory entry`, e.path)
      const parent = rel.includes('/') ? rel.slice(0, rel.lastIndexOf('/')) : '.'
      // Only directories we created ourselves are ever walked through: never a symlink.
      if (t.tree.get(parent) !== 'd') throw new ArchiveError(`its directory ${JSON.stringify(parent)} is not a directory earlier in the archive`, e.path)
    }
    return { t, rel }
  }

  private async read (tar: TarReader, e: TarEntry, t: TreeState, rel: string, abs: string | null): Promise<void> {
    const { noun } = this.rules
    let sha: string | null = null
    let kind: ListingKind
    let target: string | null = null
    switch (e.type) {
      case 'dir':
        kind = 'd'
        if (abs !== null) {
          if (rel !== '.') await fsStep(e.path, async () => { await mkdir(abs, { mode: 0o700 }) })
          t.dirs.push({ abs, e })
        }
        break
      case 'symlink': {
        kind = 'l'
        target = e.linkpath
        if (target === '') throw new ArchiveError('symlink has no target', e.path)
        t.links.set(rel, target)
        // The obvious escapes are refused at once; chains through other symlinks once all are known.
        if (symlinkEscapes(rel, new Map([[rel, target]]))) throw new ArchiveError(`symlink points outside its ${noun} (${JSON.stringify(target)})`, e.path)
        if (abs !== null) {
          await fsStep(e.path, async () => {
            await symlink(target as string, abs)
            if (IS_ROOT) await lchown(abs, e.uid, e.gid)
            await lutimes(abs, e.mtime, e.mtime)
          })
        }
        break
      }
      case 'hardlink': {
        kind = 'h'
        if (e.linkpath.startsWith('/') || !e.linkpath.startsWith(t.prefix)) throw new ArchiveError(`hardlink points outside its ${noun} (${JSON.stringify(e.linkpath)})`, e.path)
        const linkParts = splitPath(e.linkpath, false, e.path)
        target = linkParts.slice(this.rules.base.length + 1).join('/')
        const to = t.tree.get(target)
        if (to !== 'f' && to !== 'h') throw new ArchiveError(`hardlink target ${JSON.stringify(e.linkpath)} is not a file earlier in the archive`, e.path)
        if (abs !== null && t.dir !== null) {
          const from = join(t.dir, ...target.split('/'))
          await fsStep(e.path, async () => { await link(from, abs) })
        }
        break
      }
      case 'file': {
        kind = 'f'
        const h = createHash('sha256')
        if (abs === null) {
          for await (const c of tar.content(e.path)) h.update(c)
        } else {
          // O_EXCL and O_NOFOLLOW: never through a symlink, never over anything.
          const fh = await fsStep(e.path, async () => await open(abs, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600))
          try {
            for await (const c of tar.content(e.path)) {
              h.update(c)
              await fsStep(e.path, async () => { await fh.write(c) })
            }
            await fsStep(e.path, async () => {
              if (IS_ROOT) await fh.chown(e.uid, e.gid)
              await fh.chmod(e.mode & 0o1777)
              await fh.utimes(e.mtime, e.mtime)
            })
          } finally {
            await fh.close()
          }
        }
        sha = h.digest('hex')
        t.bytes += e.size
        break
      }
      default:
        throw new ArchiveError(`entry type ${JSON.stringify(e.flag)} is not allowed`, e.path)
    }
    t.tree.set(rel, kind)
    t.entries++
    t.hash.update(listingLine(kind, rel, e.mode, e.uid, e.gid, kind === 'f' ? e.size : 0, sha, target))
  }
}

/** Path components, refusing absolute paths, `..`, `.` and empty components. */
function splitPath (path: string, isDir: boolean, entry: string): string[] {
  if (path.startsWith('/')) throw new ArchiveError('absolute paths are not allowed', entry)
  const trimmed = isDir && path.endsWith('/') ? path.slice(0, -1) : path
  const parts = trimmed.split('/')
  for (const p of parts) {
    if (p === '..') throw new ArchiveError('".." components are not allowed', entry)
    if (p === '' || p === '.') throw new ArchiveError('empty or "." path components are not allowed', entry)
    if (Buffer.byteLength(p) > MAX_NAME_BYTES) throw new ArchiveError(`a name is longer than ${MAX_NAME_BYTES} bytes`, entry)
  }
  return parts
}

/** A file-system step of an extraction: its failure names the entry (and a full disk says so). */
async function fsStep<T> (entry: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    if (err instanceof UserError || (err as Error).name === 'AbortError') throw err
    throw diskFull(err, null, 'extracting the backup') ?? new UserError(`cannot extract entry ${JSON.stringify(entry)}: ${(err as Error).message}`, { exitCode: EXIT.cantCreate, hint: 'nothing was restored; check the target directory\'s file system and permissions' })
  }
}

export function diskFull (err: unknown, where: string | null, doing: string): UserError | null {
  const code = (err as NodeJS.ErrnoException | null)?.code
  if (code !== 'ENOSPC' && code !== 'EDQUOT') return null
  return new NoSpaceError(`no space left on the disk${where === null ? '' : ` holding ${where}`} while ${doing}`)
}
