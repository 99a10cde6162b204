/**
 * The thing `dcloud flash` writes to: a mounted boot partition (a directory),
 * or the FAT boot partition inside an image file or a whole SD card, reached
 * with mtools at the partition's offset (no loop device, no mount, so no root
 * needed for image files).
 *
 * Before anything is written we make sure the target is what we think it is:
 * a block device must be a whole disk none of whose partitions is mounted or
 * used as swap, and an `.img.xz` is decompressed to a new `.img` beside it,
 * never over an existing file.
 */
import { constants, existsSync, readFileSync, readdirSync, realpathSync, statSync } from 'node:fs'
import { mkdir, open, readFile, readdir, rename, rm, stat, writeFile, copyFile } from 'node:fs/promises'
import { spawn } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { locateBootPartition, DiskLayoutError, SECTOR, type BootLocation } from './mbr.ts'
import { parseProcMounts, parseProcSwaps, usesOf } from './mounts.ts'
import { run, tryRun } from '../install/run.ts'
import { UserError, EXIT } from '../util/errors.ts'

export interface BootTarget {
  /** For messages: "/dev/sdb partition 1", "pi.img partition 1", "/media/me/bootfs". */
  describe: string
  /** Names at the root of the partition. */
  list: () => Promise<string[]>
  /** A file's text, or null when it does not exist. */
  readText: (path: string) => Promise<string | null>
  /** Writes a file (creating its directory); `from` copies a local file. */
  write: (path: string, data: { text: string } | { from: string }) => Promise<void>
}

/** A mounted boot partition, or any directory holding one's files. */
export function dirTarget (dir: string): BootTarget {
  return {
    describe: dir,
    list: async () => await readdir(dir),
    readText: async (path) => {
      try { return await readFile(join(dir, path), 'utf8') } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
        throw err
      }
    },
    write: async (path, data) => {
      const dest = join(dir, path)
      await mkdir(dirname(dest), { recursive: true })
      const tmp = `${dest}.dcloud-tmp`
      if ('text' in data) await writeFile(tmp, data.text)
      else await copyFile(data.from, tmp)
      // fsync before the rename: a card pulled out right after must not hold half a file.
      const h = await open(tmp, 'r+')
      try { await h.sync() } finally { await h.close() }
      await rename(tmp, dest)
    }
  }
}

const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1', MTOOLS_NO_VFAT: '' }

/** The FAT file system at `offset` bytes into `file` (an image or a block device), through mtools. */
export function mtoolsTarget (file: string, offset: number, describe: string): BootTarget {
  const drive = `${file}@@${offset}`
  const m = async (cmd: string, args: string[]): Promise<string> => await run(cmd, ['-i', drive, ...args], { env: MTOOLS_ENV, package: 'mtools', timeoutMs: 600_000 })
  const made = new Set<string>()
  return {
    describe,
    list: async () => (await m('mdir', ['-b', '::/'])).split('\n').map(l => l.trim().replace(/^::\//, '').replace(/\/$/, '')).filter(n => n !== '' && !n.includes('/')),
    readText: async (path) => {
      const r = await tryRun('mtype', ['-i', drive, `::/${path}`], { env: MTOOLS_ENV })
      if (r.code !== 0) {
        if (/not found/i.test(r.stderr)) return null
        throw new UserError(`cannot read ${path} from ${describe}: ${r.stderr.trim()}`, { exitCode: EXIT.ioError })
      }
      return r.stdout
    },
    write: async (path, data) => {
      const parts = path.split('/')
      for (let i = 1; i < parts.length; i++) {
        const d = parts.slice(0, i).join('/')
        if (made.has(d)) continue
        const r = await tryRun('mmd', ['-i', drive, `::/${d}`], { env: MTOOLS_ENV })
        if (r.code !== 0 && !/exists/i.test(r.stderr)) throw new UserError(`cannot create ${d} on ${describe}: ${r.stderr.trim()}`, { exitCode: EXIT.ioError })
        made.add(d)
      }
      let from: string
      let cleanup: string | null = null
      if ('text' in data) {
        cleanup = join(process.env.TMPDIR ?? '/tmp', `dcloud-flash-${process.pid}-${basename(path)}`)
        await writeFile(cleanup, data.text, { mode: 0o600 })
        from = cleanup
      } else {
        from = data.from
      }
      try {
        const r = await tryRun('mcopy', ['-o', '-i', drive, from, `::/${path}`], { env: MTOOLS_ENV, timeoutMs: 600_000 })
        if (r.code !== 0) {
          const full = /full|no free/i.test(r.stderr)
          throw new UserError(`cannot write ${path} to ${describe}: ${r.stderr.trim()}`, {
            exitCode: EXIT.ioError,
            hint: full ? 'the boot partition is full; the agent bundle needs about 50 MB free' : undefined
          })
        }
      } finally {
        if (cleanup !== null) await rm(cleanup, { force: true })
      }
    }
  }
}

export interface ResolvedImage {
  target: BootTarget
  location: BootLocation
  /** The file actually written: the .img made from an .img.xz, or the image or device itself. */
  path: string
  /** Set when we decompressed an .img.xz first. */
  decompressedFrom: string | null
  isDevice: boolean
}

/**
 * Resolves `--image`: an image file (.img, or .img.xz which we decompress
 * beside it) or a whole-disk block device. Refuses everything else.
 */
export async function resolveImage (image: string, progress: (line: string) => void): Promise<ResolvedImage> {
  let info
  try {
    info = statSync(image)
  } catch (err) {
    throw new UserError(`cannot open ${image}: ${(err as Error).message}`, { exitCode: EXIT.noInput })
  }
  if (info.isBlockDevice()) {
    checkWholeDiskNotInUse(image, info.rdev)
    const location = await locateIn(image, null)
    return { target: mtoolsTarget(image, location.offset, partLabel(image, location)), location, path: image, decompressedFrom: null, isDevice: true }
  }
  if (!info.isFile()) {
    throw new UserError(`${image} is neither an image file nor a disk`, { exitCode: EXIT.usage, hint: 'give a Raspberry Pi OS .img or .img.xz, the SD card\'s disk (e.g. /dev/sdb), or --boot with its mounted boot partition' })
  }
  let path = image
  let decompressedFrom: string | null = null
  if (image.endsWith('.xz')) {
    path = image.slice(0, -'.xz'.length)
    if (!path.endsWith('.img')) path += '.img'
    if (existsSync(path)) {
      throw new UserError(`${path} already exists; not overwriting it with ${basename(image)} decompressed`, {
        exitCode: EXIT.cantCreate,
        hint: `flash that file instead (--image ${path}), or remove it to start from the compressed image again`
      })
    }
    progress(`decompressing ${basename(image)} to ${path} (the .xz is kept)`)
    await decompressXz(image, path)
    decompressedFrom = image
  }
  const location = await locateIn(path, statSync(path).size)
  return { target: mtoolsTarget(path, location.offset, partLabel(path, location)), location, path, decompressedFrom, isDevice: false }
}

function partLabel (path: string, loc: BootLocation): string {
  return loc.partition === null ? path : `${path} partition ${loc.partition}`
}

async function locateIn (path: string, size: number | null): Promise<BootLocation> {
  const h = await open(path, constants.O_RDONLY)
  const sector = Buffer.alloc(SECTOR)
  try {
    const { bytesRead } = await h.read(sector, 0, SECTOR, 0)
    try {
      return locateBootPartition(sector.subarray(0, bytesRead), size ?? undefined)
    } catch (err) {
      if (err instanceof DiskLayoutError) {
        throw new UserError(`${path} is not a Raspberry Pi OS image: ${err.message}`, { exitCode: EXIT.dataError, hint: 'nothing was written; give a Raspberry Pi OS .img or .img.xz, or the SD card it was written to' })
      }
      throw err
    }
  } finally {
    await h.close()
  }
}

async function decompressXz (from: string, to: string): Promise<void> {
  const part = `${to}.part`
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn('xz', ['-dc', '--', from], { stdio: ['ignore', 'pipe', 'pipe'] })
      const out = createWriteStream(part, { flags: 'wx' })
      let stderr = ''
      child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
      child.stdout.pipe(out)
      child.on('error', (err) => {
        reject((err as NodeJS.ErrnoException).code === 'ENOENT'
          ? new UserError('xz is not installed', { exitCode: EXIT.unavailable, hint: 'install it: apt-get install xz-utils' })
          : err)
      })
      child.on('close', (code) => {
        out.close((err) => {
          if (err !== null && err !== undefined) reject(err)
          else if (code !== 0) reject(new UserError(`xz could not decompress ${from}: ${stderr.trim()}`, { exitCode: EXIT.dataError }))
          else resolve()
        })
      })
    })
    await rename(part, to)
  } catch (err) {
    await rm(part, { force: true })
    throw err
  }
}

/**
 * A block device must be a whole disk, and neither it nor any of its
 * partitions may be mounted or used for swap: writing under a mounted file
 * system corrupts it, and the disk we are running from is always mounted.
 */
function checkWholeDiskNotInUse (device: string, rdev: number): void {
  const num = `${major(rdev)}:${minor(rdev)}`
  const sys = `/sys/dev/block/${num}`
  if (existsSync(join(sys, 'partition'))) {
    throw new UserError(`${device} is a partition, not a whole disk`, { exitCode: EXIT.usage, hint: 'give the whole card (e.g. /dev/sdb, /dev/mmcblk0), or mount its boot partition and use --boot DIR' })
  }
  const devNumbers = new Set([num])
  let sysDir: string
  try { sysDir = realpathSync(sys) } catch { sysDir = sys }
  try {
    for (const entry of readdirSync(sysDir)) {
      const partFile = join(sysDir, entry, 'partition')
      if (existsSync(partFile)) devNumbers.add(readFileSync(join(sysDir, entry, 'dev'), 'utf8').trim())
    }
  } catch {}
  // Devices built on top of this disk (LVM, dm-crypt) show up as holders.
  const holders: string[] = []
  for (const d of [sysDir, ...[...devNumbers].slice(1).map(n => `/sys/dev/block/${n}`)]) {
    try { holders.push(...readdirSync(join(d, 'holders'))) } catch {}
  }
  const mounts = parseProcMounts(readFileSync('/proc/mounts', 'utf8'))
  let swaps: string[] = []
  try { swaps = parseProcSwaps(readFileSync('/proc/swaps', 'utf8')) } catch {}
  const used = usesOf(mounts, swaps, devNumbers, devNumberOf)
  if (used.length > 0 || holders.length > 0) {
    const what = [...used.map(u => `${u.source} on ${u.target}`), ...holders.map(h => `${h} (device mapper)`)].join(', ')
    throw new UserError(`${device} is in use: ${what}; refusing to write to it`, {
      exitCode: EXIT.tempFail,
      hint: `unmount its partitions first (e.g. \`udisksctl unmount -b ${device}1\`), or use --boot with the mounted boot partition`
    })
  }
}

function devNumberOf (path: string): string | null {
  try {
    const s = statSync(path)
    return s.isBlockDevice() ? `${major(s.rdev)}:${minor(s.rdev)}` : null
  } catch {
    return null
  }
}

// Linux's encoding of dev_t (glibc's gnu_dev_major/minor).
function major (dev: number): number { return Number((BigInt(dev) >> 8n) & 0xfffn) | Number((BigInt(dev) >> 32n) & ~0xfffn) }
function minor (dev: number): number { return Number(BigInt(dev) & 0xffn) | Number((BigInt(dev) >> 12n) & ~0xffn) }

/** Whether a path is a directory (for --boot). */
export async function isDirectory (path: string): Promise<boolean> {
  try { return (await stat(path)).isDirectory() } catch { return false }
}
