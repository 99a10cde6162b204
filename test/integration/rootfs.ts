/**
 * A clean Debian for install tests: `debootstrap --variant=minbase bookworm`
 * (plus systemd, which every real Debian server has) built once into
 * /var/cache/dcloud-test and copied for each test. Commands run in it through
 * `unshare --mount` (and `--net` when asked), so the /proc and apt-cache
 * mounts vanish with the process: nothing can be left mounted under a
 * directory we later delete, and nothing in the chroot touches this
 * machine's network namespace.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { need } from './need.ts'

export const CACHE = '/var/cache/dcloud-test'
const BASE = join(CACHE, 'debian-bookworm-minbase')
export const APT_ARCHIVES = join(CACHE, 'apt-archives')

export interface Result { code: number, out: string }

export async function sh (cmd: string, args: string[], timeoutMs = 600_000): Promise<Result> {
  return await new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 127
      resolve({ code, out: `${String(stdout)}${String(stderr)}` })
    })
  })
}

/** The cached base root file system; built on first use (about 30 s with a warm network). */
export async function baseRootfs (): Promise<string> {
  if (existsSync(join(BASE, 'etc', 'os-release'))) return BASE
  await need(['debootstrap'])
  await mkdir(CACHE, { recursive: true })
  const tmp = `${BASE}.tmp-${process.pid}`
  await rm(tmp, { recursive: true, force: true })
  // debootstrap's default mirror; the test names none.
  const r = await sh('debootstrap', ['--variant=minbase', '--include=systemd,systemd-sysv', 'bookworm', tmp], 900_000)
  if (r.code !== 0) throw new Error(`debootstrap failed (exit ${r.code}):\n${r.out.split('\n').slice(-20).join('\n')}`)
  await rename(tmp, BASE)
  return BASE
}

/** A fresh copy of the base, to install into and throw away. */
export async function freshRootfs (name: string): Promise<string> {
  const base = await baseRootfs()
  const root = join(CACHE, `${name}-${process.pid}`)
  await removeRootfs(root)
  const r = await sh('cp', ['-a', base, root])
  if (r.code !== 0) throw new Error(`cp -a ${base} ${root} failed: ${r.out}`)
  await mkdir(APT_ARCHIVES, { recursive: true })
  await mkdir(join(APT_ARCHIVES, 'partial'), { recursive: true })
  return root
}

export async function removeRootfs (root: string): Promise<void> {
  if (!root.startsWith(`${CACHE}/`)) throw new Error(`refusing to remove ${root}`)
  // --one-file-system: even if something were mounted inside, rm would not descend into it.
  await sh('rm', ['-rf', '--one-file-system', root])
}

const ENTER = `set -e
root=$1; net=$2; shift 2
mount -t proc proc "$root/proc"
mount --bind "${APT_ARCHIVES}" "$root/var/cache/apt/archives"
if [ "$net" = 1 ]; then ip link set lo up; fi
exec chroot "$root" "$@"`

function enterArgs (root: string, argv: string[], net: boolean): string[] {
  return ['--mount', '--propagation', 'private', ...(net ? ['--net'] : []), '--', 'sh', '-c', ENTER, 'enter', root, net ? '1' : '0', ...argv]
}

/** Runs a command inside the root file system and waits for it. */
export async function inChroot (root: string, argv: string[], opts: { net?: boolean, timeoutMs?: number } = {}): Promise<Result> {
  return await sh('unshare', enterArgs(root, argv, opts.net ?? false), opts.timeoutMs)
}

/**
 * Starts a long-running command in the root file system, in a network
 * namespace of its own. Every step execs the next, so the pid we get is the
 * command's own and killing it by pid ends it.
 */
export function spawnInChroot (root: string, argv: string[]): ChildProcess {
  return spawn('unshare', enterArgs(root, argv, true), { stdio: ['ignore', 'pipe', 'pipe'] })
}
