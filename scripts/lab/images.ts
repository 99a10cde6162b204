/**
 * Test images, built here: no registry is reachable from the lab (or from
 * many homelabs). `dcloud/busybox:lab` is Debian's static busybox in an
 * otherwise empty root filesystem, imported with `docker import`.
 */
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, symlink, copyFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import { run } from './sh.ts'

export const BUSYBOX_IMAGE = 'dcloud/busybox:lab'
const APPLETS = ['sh', 'ash', 'httpd', 'nc', 'wget', 'sleep', 'cat', 'echo', 'ls', 'mkdir', 'rm', 'cp', 'mv', 'sync', 'date', 'env', 'id', 'ps', 'kill', 'grep', 'sed', 'awk', 'head', 'tail', 'wc', 'sha256sum', 'tee', 'touch', 'true', 'false', 'test', '[', 'printf', 'ip', 'hostname', 'df', 'du', 'find', 'tar', 'gzip', 'vi',
  // for the notes example app (apps/examples/notes): Debian's busybox has no flock or fsync applet
  'cut', 'tr', 'expr', 'stat', 'sort', 'uniq', 'basename', 'dirname', 'xargs', 'seq', 'od', 'dd', 'md5sum', 'truncate', 'usleep', 'mktemp', 'chmod', 'rmdir', 'ln', 'timeout']

/** Builds (once, cached in `cacheDir`) the root filesystem tarball of the busybox test image. */
export async function buildBusyboxRootfs (cacheDir: string): Promise<string> {
  // The name changes with APPLETS: a cached tarball from an older list would lack applets.
  const tar = join(cacheDir, 'busybox-rootfs-v2.tar')
  if (existsSync(tar)) return tar
  await mkdir(cacheDir, { recursive: true })
  const root = await mkdtemp(join(cacheDir, 'busybox-'))
  try {
    for (const d of ['bin', 'tmp', 'etc', 'data', 'www']) await mkdir(join(root, d), { recursive: true })
    await copyFile('/bin/busybox', join(root, 'bin', 'busybox'))
    for (const applet of APPLETS) await symlink('busybox', join(root, 'bin', applet))
    await run('tar', ['-C', root, '--owner=0', '--group=0', '-cf', `${tar}.tmp`, '.'])
    await rename(`${tar}.tmp`, tar)
  } finally {
    await rm(root, { recursive: true, force: true })
  }
  return tar
}

/** Imports a root filesystem tarball into the engine behind `socket` as `image`. */
export async function loadImageTar (socket: string, tar: string, image = BUSYBOX_IMAGE): Promise<void> {
  await run('docker', ['-H', `unix://${socket}`, 'import', '--change', 'ENV PATH=/bin', '--change', 'CMD ["sh"]', tar, image], { timeoutMs: 120_000 })
}
