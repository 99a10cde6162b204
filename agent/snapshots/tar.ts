/**
 * The tar format, as much of it as dcloud backups use: POSIX ustar headers,
 * with pax extended headers (`x`) for what ustar cannot hold (long or
 * non-ASCII names, sizes of 8 GiB and more, large ids). GNU tar, bsdtar and
 * Python's tarfile all read what `encodeEntry` writes.
 *
 * Our own code and not a library, because the reader is the security
 * boundary of a restore: it must refuse a hostile archive before a single
 * byte reaches the disk, and a reader we can read end to end is one we can
 * trust. `TarReader` parses strictly and never touches the file system; what
 * an entry may be is decided by tree.ts.
 */
import { UserError, EXIT } from '../util/errors.ts'

export const BLOCK = 512

export type EntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo' | 'other'

export interface TarEntry {
  path: string
  type: EntryType
  /** The raw type flag, for messages about types we refuse. */
  flag: string
  mode: number
  uid: number
  gid: number
  /** Bytes of content that follow the header (files only; 0 for the others). */
  size: number
  /** Seconds since the epoch. */
  mtime: number
  /** Target of a symlink or hardlink; '' otherwise. */
  linkpath: string
}

/** A refusal to read an archive. `entry` names the entry at fault, when there is one. */
export class ArchiveError extends UserError {
  override name = 'ArchiveError'
  readonly entry: string | null

  constructor (problem: string, entry: string | null = null, hint = 'the file is damaged or was not made by dcloud; nothing was restored from it') {
    super(entry === null ? problem : `entry ${JSON.stringify(entry)}: ${problem}`, { exitCode: EXIT.dataError, hint })
    this.entry = entry
  }
}

/** Longest path or link target we write or accept, in UTF-8 bytes (Linux's PATH_MAX). */
export const MAX_PATH_BYTES = 4096
/** A pax header is a few short records; anything larger is not ours. */
export const MAX_PAX_BYTES = 64 * 1024
/** The largest number an 11-digit octal size field holds; larger sizes go into a pax record. */
const MAX_OCTAL_11 = 0o77777777777
const MAX_OCTAL_7 = 0o7777777

const FLAGS: Record<string, EntryType> = { 0: 'file', '\0': 'file', 1: 'hardlink', 2: 'symlink', 3: 'char', 4: 'block', 5: 'dir', 6: 'fifo' }
const TYPE_FLAG: Record<'file' | 'dir' | 'symlink' | 'hardlink', string> = { file: '0', hardlink: '1', symlink: '2', dir: '5' }

const utf8 = new TextEncoder()
const strictUtf8 = new TextDecoder('utf-8', { fatal: true })

// ---------------------------------------------------------------------------
// Writing

export interface EntryToWrite {
  path: string
  type: 'file' | 'dir' | 'symlink' | 'hardlink'
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  linkpath?: string
}

/** The header blocks of one entry: a pax header first when ustar cannot hold it. Content and padding are the caller's. */
export function encodeEntry (e: EntryToWrite): Buffer {
  const path = e.type === 'dir' && !e.path.endsWith('/') ? `${e.path}/` : e.path
  const linkpath = e.linkpath ?? ''
  const pax: Array<[string, string]> = []
  const pathBytes = utf8.encode(path)
  const linkBytes = utf8.encode(linkpath)
  if (pathBytes.length > 100 || !isAscii(path)) pax.push(['path', path])
  if (linkBytes.length > 100 || !isAscii(linkpath)) pax.push(['linkpath', linkpath])
  if (e.size > MAX_OCTAL_11) pax.push(['size', String(e.size)])
  if (e.uid > MAX_OCTAL_7) pax.push(['uid', String(e.uid)])
  if (e.gid > MAX_OCTAL_7) pax.push(['gid', String(e.gid)])
  const mtime = Math.max(0, Math.min(Math.floor(e.mtime), MAX_OCTAL_11))

  const main = header({
    name: asciiPrefix(path, 100),
    mode: e.mode & 0o7777,
    uid: Math.min(e.uid, MAX_OCTAL_7),
    gid: Math.min(e.gid, MAX_OCTAL_7),
    size: e.type === 'file' ? Math.min(e.size, MAX_OCTAL_11) : 0,
    mtime,
    flag: TYPE_FLAG[e.type],
    linkname: asciiPrefix(linkpath, 100)
  })
  if (pax.length === 0) return main
  const body = Buffer.from(pax.map(([k, v]) => paxRecord(k, v)).join(''), 'utf8')
  const paxHeader = header({ name: asciiPrefix(`PaxHeaders/${path}`, 100), mode: 0o644, uid: 0, gid: 0, size: body.length, mtime, flag: 'x', linkname: '' })
  return Buffer.concat([paxHeader, body, Buffer.alloc(padding(body.length)), main])
}

/** Zero bytes that bring `size` bytes of content to a whole block. */
export function padding (size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK
}

/** The end of an archive: two zero blocks. */
export function endOfArchive (): Buffer {
  return Buffer.alloc(2 * BLOCK)
}

/** "LEN key=value\n", where LEN counts the whole record including its own digits. */
function paxRecord (key: string, value: string): string {
  const rest = ` ${key}=${value}\n`
  const restLen = Buffer.byteLength(rest)
  let len = restLen + 1
  while (String(len).length + restLen !== len) len = String(len).length + restLen
  return `${len}${rest}`
}

function isAscii (s: string): boolean {
  return /^[\x01-\x7f]*$/.test(s)
}

/** The ustar field of a name a pax record carries in full: an ASCII stand-in that fits. */
function asciiPrefix (s: string, max: number): string {
  const ascii = s.replace(/[^\x01-\x7f]/g, '_')
  return ascii.length <= max ? ascii : ascii.slice(0, max)
}

interface HeaderFields { name: string, mode: number, uid: number, gid: number, size: number, mtime: number, flag: string, linkname: string }

function header (f: HeaderFields): Buffer {
  const b = Buffer.alloc(BLOCK)
  b.write(f.name, 0, 100, 'latin1')
  octal(b, 100, 8, f.mode)
  octal(b, 108, 8, f.uid)
  octal(b, 116, 8, f.gid)
  octal(b, 124, 12, f.size)
  octal(b, 136, 12, f.mtime)
  b.write(f.flag, 156, 1, 'latin1')
  b.write(f.linkname, 157, 100, 'latin1')
  b.write('ustar\0', 257, 6, 'latin1')
  b.write('00', 263, 2, 'latin1')
  octal(b, 329, 8, 0)
  octal(b, 337, 8, 0)
  b.write('        ', 148, 8, 'latin1')
  let sum = 0
  for (const byte of b) sum += byte
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1')
  return b
}

/** An octal number in `len` bytes: len-1 digits and a NUL. */
function octal (b: Buffer, at: number, len: number, value: number): void {
  b.write(`${Math.floor(value).toString(8).padStart(len - 1, '0')}\0`, at, len, 'latin1')
}

// ---------------------------------------------------------------------------
// Reading

/**
 * Exact reads over a stream of chunks. Running out of bytes in the middle of
 * something is a truncated archive, said as such.
 */
export class ByteSource {
  private readonly iter: AsyncIterator<Uint8Array>
  private buf: Buffer = Buffer.alloc(0)
  private done = false
  /** Bytes consumed so far. */
  offset = 0

  constructor (source: AsyncIterable<Uint8Array>) {
    this.iter = source[Symbol.asyncIterator]()
  }

  /** Fills the buffer to at least `n` bytes if the source has them; returns how many are buffered. */
  private async fill (n: number): Promise<number> {
    while (this.buf.length < n && !this.done) {
      const r = await this.iter.next()
      if (r.done === true) {
        this.done = true
        break
      }
      const chunk = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength)
      this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk])
    }
    return this.buf.length
  }

  /** Exactly `n` bytes, or null at a clean end of input (no byte left). Throws on a partial read. */
  async read (n: number, what: string): Promise<Buffer | null> {
    const have = await this.fill(n)
    if (have === 0) return null
    if (have < n) throw new ArchiveError(`the archive is truncated: it ends inside ${what} (offset ${this.offset + have})`)
    const out = Buffer.from(this.buf.subarray(0, n))
    this.buf = this.buf.subarray(n)
    this.offset += n
    return out
  }

  /** Up to `max` bytes (at least 1), for streaming content; throws if the input ends first. */
  async chunk (max: number, what: string): Promise<Buffer> {
    const have = await this.fill(1)
    if (have === 0) throw new ArchiveError(`the archive is truncated: it ends inside ${what} (offset ${this.offset})`)
    const n = Math.min(max, have)
    const out = this.buf.subarray(0, n)
    this.buf = this.buf.subarray(n)
    this.offset += n
    return out
  }

  /** Whatever is left, chunk by chunk; null at the end. */
  async rest (): Promise<Buffer | null> {
    const have = await this.fill(1)
    if (have === 0) return null
    const out = this.buf
    this.buf = Buffer.alloc(0)
    this.offset += out.length
    return out
  }

  async close (): Promise<void> {
    await this.iter.return?.()
  }
}

export interface TarReaderOptions {
  /** Called once for the first block: lets the caller say "not a dcloud backup" rather than "bad checksum". */
  notTar?: string
}

/**
 * Reads entries one by one: `next()` returns the next header (pax records
 * applied), then the caller must consume its content with `content()` (or
 * `skip()`) before calling `next()` again. Returns null after the
 * end-of-archive marker, once it has checked that nothing but zeros follows.
 */
export class TarReader {
  private readonly src: ByteSource
  private remaining = 0
  private pad = 0
  private first = true
  private readonly notTar: string

  constructor (source: AsyncIterable<Uint8Array>, opts: TarReaderOptions = {}) {
    this.src = new ByteSource(source)
    this.notTar = opts.notTar ?? 'this is not a tar archive'
  }

  get offset (): number {
    return this.src.offset
  }

  async next (): Promise<TarEntry | null> {
    if (this.remaining > 0 || this.pad > 0) await this.skip()
    let pax: Map<string, string> | null = null
    for (;;) {
      const at = this.src.offset
      const block = await this.src.read(BLOCK, 'a header')
      if (block === null) {
        if (this.first) throw new ArchiveError(`${this.notTar}: the file is empty`)
        throw new ArchiveError(`the archive is truncated: it ends after offset ${at} without the end-of-archive marker`)
      }
      if (isZero(block)) {
        if (this.first) throw new ArchiveError(`${this.notTar}: it starts with an empty block`)
        if (pax !== null) throw new ArchiveError('the archive ends right after an extended header')
        await this.trailer()
        return null
      }
      const h = this.parseHeader(block, at)
      this.first = false
      if (h.flag === 'x') {
        if (pax !== null) throw new ArchiveError(`two extended headers in a row at offset ${at}`)
        if (h.size > MAX_PAX_BYTES) throw new ArchiveError(`extended header at offset ${at} is ${h.size} bytes, more than the limit of ${MAX_PAX_BYTES}`)
        const body = await this.src.read(h.size, 'an extended header')
        if (body === null && h.size > 0) throw new ArchiveError('the archive is truncated: it ends inside an extended header')
        await this.readPadding(padding(h.size), 'an extended header')
        pax = parsePax(body ?? Buffer.alloc(0), at)
        continue
      }
      if (h.flag === 'g') throw new ArchiveError(`global extended header at offset ${at}: not used by dcloud backups`)
      if (h.flag === 'L' || h.flag === 'K') throw new ArchiveError(`GNU long-name header at offset ${at}: dcloud backups use pax headers`)
      const entry = this.applyPax(h, pax)
      if ((entry.type === 'dir' || entry.type === 'symlink' || entry.type === 'hardlink') && entry.size !== 0) {
        throw new ArchiveError(`a ${entry.type} entry cannot carry ${entry.size} bytes of content`, entry.path)
      }
      // Types the caller refuses keep their size, so that the reader stays aligned until it does.
      this.remaining = entry.size
      this.pad = padding(this.remaining)
      return entry
    }
  }

  /** The current entry's content, in chunks of at most `max` bytes, then the padding (which must be zeros). */
  async * content (what: string, max = 256 * 1024): AsyncGenerator<Buffer> {
    while (this.remaining > 0) {
      const c = await this.src.chunk(Math.min(max, this.remaining), what)
      this.remaining -= c.length
      yield c
    }
    if (this.pad > 0) {
      const p = this.pad
      this.pad = 0
      await this.readPadding(p, what)
    }
  }

  async skip (): Promise<void> {
    for await (const _ of this.content('an entry')) { /* discard */ }
  }

  async close (): Promise<void> {
    await this.src.close()
  }

  private async readPadding (n: number, what: string): Promise<void> {
    if (n === 0) return
    const p = await this.src.read(n, `the padding after ${what}`)
    if (p === null) throw new ArchiveError(`the archive is truncated: it ends inside the padding after ${what}`)
    // Padding is zeros in every archive we write; bytes hidden there would be an unchecked channel.
    if (!isZero(p)) throw new ArchiveError(`non-zero padding after ${what} at offset ${this.src.offset - n}`)
  }

  /** After the first zero block: only zeros may follow (tar pads to a record size with them). */
  private async trailer (): Promise<void> {
    for (let rest = await this.src.rest(); rest !== null; rest = await this.src.rest()) {
      if (!isZero(rest)) throw new ArchiveError(`data after the end-of-archive marker (before offset ${this.src.offset})`)
    }
  }

  private parseHeader (b: Buffer, at: number): { path: string, flag: string, mode: number, uid: number, gid: number, size: number, mtime: number, linkpath: string } {
    const magic = b.toString('latin1', 257, 263)
    const version = b.toString('latin1', 263, 265)
    const stored = b.subarray(148, 156)
    let unsigned = 0
    let signed = 0
    for (let i = 0; i < BLOCK; i++) {
      const v = i >= 148 && i < 156 ? 0x20 : (b[i] as number)
      unsigned += v
      signed += v > 127 ? v - 256 : v
    }
    const want = parseOctal(stored)
    if (want === null || (want !== unsigned && want !== signed)) {
      if (this.first) throw new ArchiveError(`${this.notTar} (no valid tar header at the start)`)
      throw new ArchiveError(`header at offset ${at} has a bad checksum: the archive is damaged`)
    }
    if (magic !== 'ustar\0' || version !== '00') {
      if (this.first) throw new ArchiveError(`${this.notTar} (not a POSIX ustar archive)`)
      throw new ArchiveError(`header at offset ${at} is not a POSIX ustar header`)
    }
    const field = (from: number, len: number, name: string): number => {
      const n = parseOctal(b.subarray(from, from + len))
      if (n === null) throw new ArchiveError(`header at offset ${at}: field ${name} is not an octal number`)
      return n
    }
    const name = cString(b.subarray(0, 100), at, 'name')
    const prefix = cString(b.subarray(345, 500), at, 'prefix')
    return {
      path: prefix === '' ? name : `${prefix}/${name}`,
      flag: String.fromCharCode(b[156] as number),
      mode: field(100, 8, 'mode'),
      uid: field(108, 8, 'uid'),
      gid: field(116, 8, 'gid'),
      size: field(124, 12, 'size'),
      mtime: field(136, 12, 'mtime'),
      linkpath: cString(b.subarray(157, 257), at, 'linkname')
    }
  }

  private applyPax (h: ReturnType<TarReader['parseHeader']>, pax: Map<string, string> | null): TarEntry {
    const num = (key: string, fallback: number, integer = true): number => {
      const v = pax?.get(key)
      if (v === undefined) return fallback
      const re = integer ? /^\d{1,16}$/ : /^-?\d{1,16}(\.\d{1,9})?$/
      if (!re.test(v)) throw new ArchiveError(`extended header: ${key}=${JSON.stringify(v.slice(0, 40))} is not a number`, h.path)
      const n = Number(v)
      if (!Number.isSafeInteger(Math.trunc(n))) throw new ArchiveError(`extended header: ${key} is out of range`, h.path)
      return n
    }
    const path = pax?.get('path') ?? h.path
    const linkpath = pax?.get('linkpath') ?? h.linkpath
    if (utf8.encode(path).length > MAX_PATH_BYTES) throw new ArchiveError(`path longer than ${MAX_PATH_BYTES} bytes`, path.slice(0, 200))
    if (utf8.encode(linkpath).length > MAX_PATH_BYTES) throw new ArchiveError(`link target longer than ${MAX_PATH_BYTES} bytes`, path)
    if (path.includes('\0') || linkpath.includes('\0')) throw new ArchiveError('a name contains a NUL byte', path.replace(/\0/g, '\\0'))
    return {
      path,
      type: FLAGS[h.flag] ?? 'other',
      flag: h.flag,
      mode: h.mode,
      uid: num('uid', h.uid),
      gid: num('gid', h.gid),
      size: num('size', h.size),
      mtime: Math.floor(num('mtime', h.mtime, false)),
      linkpath
    }
  }
}

/** Records of a pax extended header, strictly: each length must be exact, each value UTF-8. */
export function parsePax (body: Buffer, at: number): Map<string, string> {
  const out = new Map<string, string>()
  let i = 0
  while (i < body.length) {
    const space = body.indexOf(0x20, i)
    if (space < 0 || space - i > 7) throw new ArchiveError(`extended header at offset ${at} is malformed`)
    const lenText = body.toString('latin1', i, space)
    if (!/^[1-9]\d*$/.test(lenText)) throw new ArchiveError(`extended header at offset ${at} is malformed`)
    const len = Number(lenText)
    const end = i + len
    if (end > body.length || body[end - 1] !== 0x0a) throw new ArchiveError(`extended header at offset ${at} is malformed`)
    const rec = body.subarray(space + 1, end - 1)
    const eq = rec.indexOf(0x3d)
    if (eq <= 0) throw new ArchiveError(`extended header at offset ${at} is malformed`)
    let key: string
    let value: string
    try {
      key = strictUtf8.decode(rec.subarray(0, eq))
      value = strictUtf8.decode(rec.subarray(eq + 1))
    } catch {
      throw new ArchiveError(`extended header at offset ${at} is not UTF-8`)
    }
    if (out.has(key)) throw new ArchiveError(`extended header at offset ${at} sets ${JSON.stringify(key)} twice`)
    out.set(key, value)
    i = end
  }
  return out
}

/** A NUL-terminated header field as UTF-8 (names may be UTF-8 without a pax record). */
function cString (b: Buffer, at: number, name: string): string {
  const nul = b.indexOf(0)
  const bytes = nul < 0 ? b : b.subarray(0, nul)
  try {
    return strictUtf8.decode(bytes)
  } catch {
    throw new ArchiveError(`header at offset ${at}: ${name} is not UTF-8`)
  }
}

/** Octal digits with optional leading spaces and trailing NULs or spaces; null if anything else. */
function parseOctal (b: Buffer): number | null {
  const s = b.toString('latin1')
  const m = /^ *([0-7]*)[ \0]*$/.exec(s)
  if (m === null) return null
  const digits = m[1] as string
  return digits === '' ? 0 : parseInt(digits, 8)
}

function isZero (b: Buffer): boolean {
  for (const byte of b) if (byte !== 0) return false
  return true
}
