/**
 * The image the example apps run (`dcloud/busybox:lab`, apps/examples/),
 * built into this machine's Docker engine when it lacks it: Debian's static
 * busybox in an otherwise empty root filesystem, the same image the lab
 * builds for its nodes. No registry is needed, so the README's quick start
 * works on a machine that reaches none. `scripts/setup.sh --docker` (what
 * `npm start` runs) calls it; exit 0 when the image is there.
 */
import { execFileSync } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BUSYBOX_IMAGE, buildBusyboxRootfs, loadImageTar } from './lab/images.ts'

const socket = (process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock').replace(/^unix:\/\//, '')

function has (image: string): boolean {
  try {
    execFileSync('docker', ['-H', `unix://${socket}`, 'image', 'inspect', image], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

if (!has(BUSYBOX_IMAGE)) {
  process.stderr.write(`setup: building ${BUSYBOX_IMAGE} for the example apps (Debian's static busybox, no registry needed)\n`)
  const tar = await buildBusyboxRootfs(join(tmpdir(), 'dcloud-images'))
  await loadImageTar(socket, tar)
  if (!has(BUSYBOX_IMAGE)) {
    process.stderr.write(`setup: ${BUSYBOX_IMAGE} is still missing after the import\n`)
    process.exit(69)
  }
}
