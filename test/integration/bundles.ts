/** Builds agent bundles of this checkout with scripts/bundle.sh, as a user would. */
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { sh } from './rootfs.ts'

export const PROJECT_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)))

export async function buildBundle (arch: 'amd64' | 'arm64', dir: string): Promise<string> {
  const out = join(dir, `dcloud-${arch}.tar.gz`)
  const r = await sh(join(PROJECT_ROOT, 'scripts', 'bundle.sh'), ['--quiet', '--arch', arch, '-o', out], 600_000)
  if (r.code !== 0) throw new Error(`scripts/bundle.sh --arch ${arch} failed (exit ${r.code}):\n${r.out}`)
  return out
}
