/**
 * Hostile backup files, built byte by byte here (not with our writer), each
 * refused with a message naming the problem, and nothing written outside the
 * target directory: the parent's listing is the same before and after.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createHash } from 'node:crypto'
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { ArchiveError, extractArchive, readArchiveMeta, verifyArchive } from '../../agent/snapshots/archive.ts'
import { listingLine } from '../../agent/snapshots/tree.ts'
import { UserError } from '../../agent/util/errors.ts'
import { mockManifest } from '../builders.ts'

// ---------------------------------------------------------------------------
// A tar builder of our own, independent of agent/snapshots/tar.ts.

interface Header {
  name: string
  type?: string
  size?: number
  mode?: number
  uid?: number
  gid?: number
  mtime?: number
  linkname?: string
  magic?: string
  version?: string
  /** Adds this to the correct checksum. */
  checksumOff?: number
}

function header (h: Header): Buffer {
  const b = Buffer.alloc(512)
  const put = (s: string, at: number, len: number): void => { Buffer.from(s, 'utf8').copy(b, at, 0, len) }
  const oct = (n: number, at: number, len: number): void => { put(`${n.toString(8).padStart(len - 1, '0')}\0`, at, len) }
  put(h.name, 0, 100)
  oct(h.mode ?? 0o644, 100, 8)
  oct(h.uid ?? 0, 108, 8)
  oct(h.gid ?? 0, 116, 8)
  oct(h.size ?? 0, 124, 12)
  oct(h.mtime ?? 1_700_000_000, 136, 12)
  put(h.type ?? '0', 156, 1)
  put(h.linkname ?? '', 157, 100)
  put(h.magic ?? 'ustar\0', 257, 6)
  put(h.version ?? '00', 263, 2)
  b.fill(0x20, 148, 156)
  let sum = 0
  for (const x of b) sum += x
  put(`${(sum + (h.checksumOff ?? 0)).toString(8).padStart(6, '0')}\0 `, 148, 8)
  return b
}

const pad = (n: number): Buffer => Buffer.alloc((512 - (n % 512)) % 512)
function file (name: string, content: string | Buffer, h: Partial<Header> = {}): Buffer {
  const c = Buffer.isBuffer(content) ? content : Buffer.from(content)
  return Buffer.concat([header({ name, size: c.length, ...h }), c, pad(c.length)])
}
const dir = (name: string, h: Partial<Header> = {}): Buffer => header({ name, type: '5', mode: 0o755, ...h })
const symlink = (name: string, target: string): Buffer => header({ name, type: '2', mode: 0o777, linkname: target })
const hardlink = (name: string, target: string): Buffer => header({ name, type: '1', linkname: target })
function pax (records: Record<string, string>): Buffer {
  const body = Buffer.from(Object.entries(records).map(([k, v]) => {
    const rest = ` ${k}=${v}\n`
    let len = Buffer.byteLength(rest) + 1
    while (String(len).length + Buffer.byteLength(rest) !== len) len = String(len).length + Buffer.byteLength(rest)
    return `${len}${rest}`
  }).join(''))
  return Buffer.concat([header({ name: 'PaxHeaders/x', type: 'x', size: body.length }), body, pad(body.length)])
}
const END = Buffer.alloc(1024)

interface VolumeSpec { name: string, entries: number, bytes: number, listingSha256: string }
const someVolume: VolumeSpec = { name: 'data', entries: 2, bytes: 1, listingSha256: 'a'.repeat(64) }

function metaJson (over: Record<string, unknown> = {}, volumes: VolumeSpec[] = [someVolume]): string {
  return JSON.stringify({ format: 'dcloud-backup', version: 1, app: 'notes', createdAt: '2025-01-01T00:00:00.000Z', manifest: mockManifest('notes', { stateful: true }), settings: {}, volumes, ...over })
}
const meta = (over: Record<string, unknown> = {}, volumes?: VolumeSpec[]): Buffer => file('dcloud-backup.json', metaJson(over, volumes))
const archive = (...parts: Buffer[]): Buffer => Buffer.concat([...parts, END])
const root = dir('volumes/data/', { mode: 0o700 })

/** A correct archive, hash and all: the builder is right, so refusals below are for what they say. */
function valid (): Buffer {
  const lines = [
    listingLine('d', '.', 0o700, 0, 0, 0, null, null),
    listingLine('f', 'a', 0o644, 0, 0, 1, createHash('sha256').update('x').digest('hex'), null)
  ]
  const volume = { name: 'data', entries: 2, bytes: 1, listingSha256: createHash('sha256').update(lines.join('')).digest('hex') }
  return archive(meta({}, [volume]), root, file('volumes/data/a', 'x'))
}

// ---------------------------------------------------------------------------

let base: string

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'dcloud-hostile-'))
})

afterAll(async () => {
  await rm(base, { recursive: true, force: true })
})

/** Extracts into parent/target and returns the error; asserts the parent holds exactly what it held before. */
async function refuse (bytes: Buffer): Promise<Error> {
  const parent = await mkdtemp(join(base, 'p-'))
  await writeFile(join(parent, 'sentinel'), 'untouched')
  const before = await readdir(parent)
  const outside = await readdir(base)
  const err = await extractArchive(Readable.from([bytes]), join(parent, 'target'), { signal: AbortSignal.timeout(10_000) }).catch((e: unknown) => e)
  expect(err).toBeInstanceOf(UserError)
  expect(await readdir(parent)).toEqual(before)
  expect(await readdir(base)).toEqual(outside)
  return err as Error
}

describe('hostile backup files', () => {
  it('a correct hand-made archive is accepted (the builder is right)', async () => {
    const parent = await mkdtemp(join(base, 'ok-'))
    const { meta: m } = await extractArchive(Readable.from([valid()]), join(parent, 'target'), { signal: AbortSignal.timeout(10_000) })
    expect(m.app).toBe('notes')
    expect(await readdir(join(parent, 'target', 'data'))).toEqual(['a'])
  })

  const victim = join(tmpdir(), `dcloud-victim-${process.pid}`)
  it.each<[string, () => Buffer, RegExp]>([
    ['path traversal', () => archive(meta(), root, file('volumes/data/../../evil', 'x')), /^entry "volumes\/data\/\.\.\/\.\.\/evil": "\.\." components are not allowed$/],
    ['path traversal in a pax path', () => archive(meta(), root, pax({ path: 'volumes/data/../../../evil' }), file('volumes/data/innocent', 'x')), /^entry "volumes\/data\/\.\.\/\.\.\/\.\.\/evil": "\.\." components/],
    ['an absolute path', () => archive(meta(), root, file(victim, 'x')), /^entry "\/tmp\/dcloud-victim-\d+": absolute paths are not allowed$/],
    ['a symlink out of the volume', () => archive(meta(), root, symlink('volumes/data/etc', '../../../etc')), /^entry "volumes\/data\/etc": symlink points outside its volume \("\.\.\/\.\.\/\.\.\/etc"\)$/],
    ['an absolute symlink', () => archive(meta(), root, symlink('volumes/data/pw', '/etc/passwd')), /^entry "volumes\/data\/pw": symlink points outside its volume \("\/etc\/passwd"\)$/],
    ['a symlink escaping through another symlink', () => archive(meta(), root, dir('volumes/data/sub/'), symlink('volumes/data/sub/up', '..'), symlink('volumes/data/esc', 'sub/up/..')), /^entry "volumes\/data\/esc": symlink points outside its volume through other symlinks/],
    ['a file written through a symlink', () => archive(meta(), root, dir('volumes/data/sub/'), symlink('volumes/data/d', 'sub'), file('volumes/data/d/x', 'x')), /^entry "volumes\/data\/d\/x": its directory "d" is not a directory earlier in the archive$/],
    ['a hardlink to a host file', () => archive(meta(), root, hardlink('volumes/data/h', '/etc/shadow')), /^entry "volumes\/data\/h": hardlink points outside its volume \("\/etc\/shadow"\)$/],
    ['a hardlink climbing out', () => archive(meta(), root, hardlink('volumes/data/h', 'volumes/data/../../etc/shadow')), /^entry "volumes\/data\/h": "\.\." components are not allowed$/],
    ['a hardlink into another volume', () => archive(meta(), root, hardlink('volumes/data/h', 'volumes/other/x')), /hardlink points outside its volume \("volumes\/other\/x"\)/],
    ['a hardlink to nothing before it', () => archive(meta(), root, hardlink('volumes/data/h', 'volumes/data/later')), /hardlink target "volumes\/data\/later" is not a file earlier in the archive/],
    ['a character device', () => archive(meta(), root, header({ name: 'volumes/data/null', type: '3' })), /^entry "volumes\/data\/null": character device entries are not allowed$/],
    ['a block device', () => archive(meta(), root, header({ name: 'volumes/data/sda', type: '4' })), /^entry "volumes\/data\/sda": block device entries are not allowed$/],
    ['a fifo', () => archive(meta(), root, header({ name: 'volumes/data/pipe', type: '6' })), /^entry "volumes\/data\/pipe": fifo entries are not allowed$/],
    ['an entry outside volumes/', () => archive(meta(), file('etc/cron.d/evil', 'x')), /^entry "etc\/cron\.d\/evil": is outside volumes\/<name>\/ and is not dcloud-backup\.json$/],
    ['a volume the metadata does not declare', () => archive(meta(), dir('volumes/other/')), /^entry "volumes\/other\/": volume "other" is not in dcloud-backup\.json$/],
    ['a duplicate entry', () => archive(meta(), root, file('volumes/data/a', 'x'), file('volumes/data/a', 'y')), /^entry "volumes\/data\/a": appears twice$/],
    ['a second metadata file', () => archive(meta(), root, meta()), /^entry "dcloud-backup\.json": appears twice$/],
    ['the metadata not first', () => archive(root, meta()), /^not a dcloud backup: the archive starts with "volumes\/data\/", not dcloud-backup\.json$/],
    ['oversized metadata', () => archive(file('dcloud-backup.json', Buffer.alloc(1024 * 1024 + 1, 0x20))), /^entry "dcloud-backup\.json": dcloud-backup\.json is 1048577 bytes, more than the limit of 1048576 \(1 MiB\)$/],
    ['a newer format version', () => archive(meta({ version: 2 })), /^backup format version 2: this dcloud reads version 1$/],
    ['no format version', () => archive(meta({ version: undefined })), /^dcloud-backup\.json has no format version$/],
    ['a version that is a string', () => archive(meta({ version: '1' })), /^backup format version "1"/],
    ['metadata of another format', () => archive(meta({ format: 'something-else' })), /^not a dcloud backup: dcloud-backup\.json has no "format": "dcloud-backup"$/],
    ['metadata that is not JSON', () => archive(file('dcloud-backup.json', '{"format": "dcloud-backup", ')), /dcloud-backup\.json is not UTF-8 JSON/],
    ['metadata with a bad app name', () => archive(meta({ app: '../../x' })), /^dcloud-backup\.json: app: does not match/],
    ['metadata with a hostile volume name', () => archive(meta({}, [{ ...someVolume, name: '..' }])), /dcloud-backup\.json: volumes\[0\]\.name: does not match/],
    ['a declared volume that is missing', () => archive(meta()), /^volume data is declared in dcloud-backup\.json but not in the archive$/],
    ['content that does not match the listing', () => { const v = valid(); v[v.length - 1024 - 512] = 0x79; return v }, /^volume data's content does not match its checksum in dcloud-backup\.json: the archive was modified or damaged$/],
    ['an entry before its volume\'s root', () => archive(meta(), file('volumes/data/a', 'x')), /^entry "volumes\/data\/a": comes before its volume's directory entry$/],
    ['a file whose directory is missing', () => archive(meta(), root, file('volumes/data/no/such/x', 'x')), /its directory "no\/such" is not a directory earlier in the archive/],
    ['a truncated archive (inside a file)', () => valid().subarray(0, valid().length - 1024 - 512), /^the archive is truncated: it ends inside volumes\/data\/a/],
    ['a truncated archive (no end marker)', () => valid().subarray(0, valid().length - 1024), /^the archive is truncated: it ends after offset \d+ without the end-of-archive marker$/],
    ['a truncated header', () => valid().subarray(0, valid().length - 1024 - 512 - 300), /^the archive is truncated: it ends inside a header/],
    ['a damaged header', () => archive(meta(), root, file('volumes/data/a', 'x', { checksumOff: 1 })), /^header at offset \d+ has a bad checksum: the archive is damaged$/],
    ['garbage', () => Buffer.from('this is not a tar archive, just some text\n'.repeat(40)), /^not a dcloud backup \(no valid tar header at the start\)$/],
    ['a gzip file', () => Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]), Buffer.alloc(600, 7)]), /^not a dcloud backup/],
    ['an empty file', () => Buffer.alloc(0), /^not a dcloud backup: the file is empty$/],
    ['zeros', () => Buffer.alloc(4096), /^not a dcloud backup: it starts with an empty block$/],
    ['a GNU tar (old magic)', () => archive(file('dcloud-backup.json', metaJson(), { magic: 'ustar ', version: ' \0' })), /^not a dcloud backup \(not a POSIX ustar archive\)$/],
    ['a GNU long name', () => archive(meta(), root, file('././@LongLink', 'volumes/data/x', { type: 'L' })), /GNU long-name header/],
    ['a NUL byte in a pax path', () => archive(meta(), root, pax({ path: 'volumes/data/a\0b' }), file('volumes/data/a', 'x')), /a name contains a NUL byte/],
    ['a malformed pax record', () => archive(meta(), root, Buffer.concat([header({ name: 'PaxHeaders/x', type: 'x', size: 12 }), Buffer.from('99 path=abc\n'), pad(12)]), file('volumes/data/a', 'x')), /extended header at offset \d+ is malformed/],
    ['hidden bytes in padding', () => { const f = file('volumes/data/a', 'x'); f[600] = 1; return archive(meta(), root, f) }, /^non-zero padding after volumes\/data\/a/],
    ['data after the end marker', () => Buffer.concat([valid(), Buffer.from('surprise')]), /^data after the end-of-archive marker/],
    ['a directory with content', () => archive(meta(), root, header({ name: 'volumes/data/d/', type: '5', size: 10 }), Buffer.alloc(512)), /^entry "volumes\/data\/d\/": a dir entry cannot carry 10 bytes of content$/],
    ['an unknown entry type', () => archive(meta(), root, header({ name: 'volumes/data/c', type: '7' })), /^entry "volumes\/data\/c": entry type "7" is not allowed$/],
    ['an empty path component', () => archive(meta(), root, file('volumes/data//a', 'x')), /empty or "\." path components are not allowed/]
  ])('refuses %s', async (_what, make, message) => {
    const err = await refuse(make())
    expect(err).toBeInstanceOf(ArchiveError)
    expect(err.message).toMatch(message)
    expect((err as UserError).hint).toBeTruthy()
    expect((err as UserError).exitCode).toBe(65)
    expect(existsSync(victim)).toBe(false)
  })

  it('refuses before writing: verify and read-meta give the same answers', async () => {
    await expect(verifyArchive(Readable.from([archive(meta(), root, file('volumes/data/../../evil', 'x'))]), { signal: AbortSignal.timeout(10_000) })).rejects.toThrow(/"\.\." components/)
    await expect(readArchiveMeta(Readable.from([archive(meta({ version: 3 }))]), { signal: AbortSignal.timeout(10_000) })).rejects.toMatchObject({ hint: expect.stringMatching(/newer dcloud: upgrade/) })
  })

  it('leaves an existing empty target empty when it refuses', async () => {
    const parent = await mkdtemp(join(base, 'empty-'))
    await mkdir(join(parent, 'target'))
    await expect(extractArchive(Readable.from([archive(meta(), root, file('volumes/data/a', 'x'), file('volumes/data/a', 'x'))]), join(parent, 'target'), { signal: AbortSignal.timeout(10_000) })).rejects.toThrow(/appears twice/)
    expect(await readdir(parent)).toEqual(['target'])
    expect(await readdir(join(parent, 'target'))).toEqual([])
  })
})
