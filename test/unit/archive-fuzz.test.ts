/**
 * Property tests of the backup reader: whatever the bytes, it answers with a
 * UserError (or a ValidationError) or a correct extraction, never a crash, and
 * never a byte outside its target.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { link, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve, sep } from 'node:path'
import { Readable } from 'node:stream'
import { extractArchive, verifyArchive, writeArchive } from '../../agent/snapshots/archive.ts'
import { listingDigest } from '../../agent/snapshots/tree.ts'
import { UserError } from '../../agent/util/errors.ts'
import { ValidationError } from '../../proto/validate.ts'
import { mockManifest } from '../builders.ts'

const signal = (): AbortSignal => AbortSignal.timeout(20_000)
let base: string
let good: Buffer
let goodDigest: string

/** Raw ustar headers with any field we like (a copy of the builder in archive-hostile.test.ts). */
function header (name: string, type: string, size: number, linkname = '', mode = 0o644): Buffer {
  const b = Buffer.alloc(512)
  const put = (s: string, at: number, len: number): void => { Buffer.from(s, 'utf8').copy(b, at, 0, len) }
  const oct = (n: number, at: number, len: number): void => { put(`${n.toString(8).padStart(len - 1, '0')}\0`, at, len) }
  put(name, 0, 100)
  oct(mode, 100, 8)
  oct(0, 108, 8)
  oct(0, 116, 8)
  oct(size, 124, 12)
  oct(1_700_000_000, 136, 12)
  put(type, 156, 1)
  put(linkname, 157, 100)
  put('ustar\0', 257, 6)
  put('00', 263, 2)
  b.fill(0x20, 148, 156)
  let sum = 0
  for (const x of b) sum += x
  put(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8)
  return b
}
const pad = (n: number): Buffer => Buffer.alloc((512 - (n % 512)) % 512)

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'dcloud-fuzz-'))
  const data = join(base, 'src', 'data')
  await mkdir(join(data, 'sub'), { recursive: true })
  await writeFile(join(data, 'a.txt'), 'alpha\n')
  await writeFile(join(data, 'sub', 'b.bin'), Buffer.alloc(1500, 0x42))
  await symlink('sub/b.bin', join(data, 'link'))
  const file = join(base, 'src', 'good.tar')
  await writeArchive(file, { app: 'notes', manifest: mockManifest('notes', { stateful: true }), settings: { k: 'v' }, volumes: [{ name: 'data', dir: data }], signal: signal() })
  good = await readFile(file)
  goodDigest = (await listingDigest(data, { signal: signal() })).sha256
})

afterAll(async () => {
  await rm(base, { recursive: true, force: true })
})

const acceptable = (err: unknown): boolean => err instanceof UserError || err instanceof ValidationError

/** Extracts; on refusal the parent is as it was, on success it holds only the target and no symlink leads out. */
async function extractChecked (bytes: Buffer): Promise<{ ok: boolean, target: string, err?: unknown }> {
  const parent = await mkdtemp(join(base, 'p-'))
  const target = join(parent, 'target')
  try {
    await extractArchive(Readable.from([bytes]), target, { signal: signal() })
  } catch (err) {
    expect(acceptable(err), String((err as Error)?.stack)).toBe(true)
    expect(await readdir(parent)).toEqual([])
    await rm(parent, { recursive: true })
    return { ok: false, target, err }
  }
  expect(await readdir(parent)).toEqual(['target'])
  await assertContained(target, target)
  return { ok: true, target }
}

async function assertContained (dir: string, root: string): Promise<void> {
  for (const name of await readdir(dir)) {
    const p = join(dir, name)
    const st = await lstat(p)
    if (st.isSymbolicLink()) {
      const to = resolve(dirname(p), await readlink(p))
      expect(to === root || to.startsWith(root + sep), `${p} -> ${to}`).toBe(true)
    } else if (st.isDirectory()) {
      await assertContained(p, root)
    } else {
      expect(st.isFile()).toBe(true)
    }
  }
}

describe('backup reader properties', () => {
  it('random bytes are refused with a UserError or ValidationError, nothing else', async () => {
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 3000 }), async (bytes) => {
      const err = await verifyArchive(Readable.from([Buffer.from(bytes)]), { signal: signal() }).then(() => null, (e: unknown) => e)
      expect(err).not.toBeNull()
      expect(acceptable(err), String((err as Error)?.stack)).toBe(true)
    }), { numRuns: 300 })
  })

  it('random bytes after a valid start are refused the same way', async () => {
    // The metadata and the volume root, then noise: the parser gets past the first checks.
    const start = good.subarray(0, good.indexOf(Buffer.from('volumes/data/a.txt')))
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 2000 }), async (bytes) => {
      const { ok } = await extractChecked(Buffer.concat([start, Buffer.from(bytes)]))
      expect(ok).toBe(false)
    }), { numRuns: 150 })
  })

  it('random tar entries with tricky names, types and links never escape the target', async () => {
    // Mostly plausible entries, so that most archives get past the first checks and reach the disk (staging).
    const names = fc.constantFrom('volumes/data/a', 'volumes/data/b', 'volumes/data/a/', 'volumes/data/a/b', 'volumes/data/a/c', 'volumes/data/l', 'volumes/data/l/x', 'volumes/data/ü',
      'volumes/data/../x', '/tmp/x', 'volumes/other/', 'dcloud-backup.json', 'volumes/data/./a', 'volumes/data//a', 'volumes/data/', 'volumes/', '')
    const types = fc.constantFrom('0', '0', '0', '5', '5', '2', '2', '1', '1', '3', '6', '7', 'x', 'g', 'L', '\0')
    const links = fc.constantFrom('', 'a', 'b', 'a/b', '..', '../..', 'a/../..', 'l/..', 'l/../..', '/etc/passwd', 'volumes/data/a', 'volumes/data/b', 'volumes/data/a/b', 'volumes/data/../a', 'volumes/other/a', 'l', '.')
    const entry = fc.record({ name: names, type: types, link: links, content: fc.uint8Array({ maxLength: 600 }), mode: fc.integer({ min: 0, max: 0o7777 }) })
    // The real metadata (its header and content end where the volume's root header starts).
    const metadata = good.subarray(0, good.indexOf(Buffer.from('volumes/data/')))
    await fc.assert(fc.asyncProperty(fc.array(entry, { maxLength: 8 }), async (entries) => {
      const parts = entries.map(e => {
        const content = ['0', '\0', 'x', 'L', '7'].includes(e.type) ? Buffer.from(e.content) : Buffer.alloc(0)
        return Buffer.concat([header(e.name, e.type, content.length, e.link, e.mode), content, pad(content.length)])
      })
      const root = header('volumes/data/', '5', 0, '', 0o755)
      const { ok, target } = await extractChecked(Buffer.concat([metadata, root, ...parts, Buffer.alloc(1024)]))
      if (ok) await rm(dirname(target), { recursive: true })
    }), { numRuns: 200 })
  })

  it('any one-byte change or truncation of a good archive is refused or changes no volume data', async () => {
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), at: fc.integer({ min: 0, max: good.length - 1 }), xor: fc.integer({ min: 1, max: 255 }) }),
      fc.record({ kind: fc.constant('cut' as const), at: fc.integer({ min: 0, max: good.length - 1 }), xor: fc.constant(0) })
    )
    await fc.assert(fc.asyncProperty(mutation, async (m) => {
      const bytes = Buffer.from(good)
      let input = bytes
      if (m.kind === 'flip') bytes[m.at] = (bytes[m.at] as number) ^ m.xor
      else input = bytes.subarray(0, m.at)
      const { ok, target } = await extractChecked(input)
      if (ok) {
        expect((await listingDigest(join(target, 'data'), { signal: signal() })).sha256).toBe(goodDigest)
        await rm(dirname(target), { recursive: true })
      }
    }), { numRuns: 200 })
  })

  it('random directory trees round-trip exactly, or are refused before anything is written', async () => {
    const names = fc.constantFrom('a', 'b', 'c d', 'ü', '.hidden', 'x'.repeat(120))
    const op = fc.record({
      kind: fc.constantFrom('file', 'dir', 'symlink', 'hardlink'),
      where: fc.nat(),
      name: names,
      content: fc.uint8Array({ maxLength: 2000 }),
      mode: fc.constantFrom(0o644, 0o600, 0o755, 0o400),
      target: fc.constantFrom('a', '../a', '../../a', 'b/c d', '/etc/passwd', '..', '.', 'ü/../a', 'missing')
    })
    await fc.assert(fc.asyncProperty(fc.array(op, { maxLength: 12 }), async (ops) => {
      const dir = await mkdtemp(join(base, 'tree-'))
      const data = join(dir, 'data')
      await mkdir(data)
      const dirs = [data]
      const files: string[] = []
      for (const o of ops) {
        const at = join(dirs[o.where % dirs.length] as string, o.name)
        try {
          if (o.kind === 'dir') { await mkdir(at, { mode: o.mode | 0o700 }); dirs.push(at) }
          if (o.kind === 'file') { await writeFile(at, o.content, { mode: o.mode, flag: 'wx' }); files.push(at) }
          if (o.kind === 'symlink') await symlink(o.target, at)
          if (o.kind === 'hardlink' && files.length > 0) await link(files[o.where % files.length] as string, at)
        } catch {}
      }
      const file = join(dir, 'b.tar')
      const written = await writeArchive(file, { app: 'notes', manifest: mockManifest('notes', { stateful: true }), settings: {}, volumes: [{ name: 'data', dir: data }], signal: signal() }).catch((e: unknown) => e)
      if (written instanceof Error) {
        expect(written).toBeInstanceOf(UserError)
        expect(written.message).toMatch(/points outside the volume/)
        expect(await readdir(dir)).toEqual(['data'])
      } else {
        const { ok, target } = await extractChecked(await readFile(file))
        expect(ok).toBe(true)
        expect(await listingDigest(join(target, 'data'), { signal: signal() })).toEqual(await listingDigest(data, { signal: signal() }))
        await rm(dirname(target), { recursive: true })
      }
      await rm(dir, { recursive: true })
    }), { numRuns: 60 })
  })
})
