/**
 * `dcloud flash`: turns a Raspberry Pi OS image, SD card or mounted boot
 * partition into one that comes up as a cluster node. Checks everything it
 * can before writing anything: the settings, the key, the bundle, and that the
 * target is a Raspberry Pi OS boot partition (and, for a disk, that nothing
 * of it is mounted). Then writes our files, the cmdline.txt hook last, and
 * reads the text files back.
 */
import { readFileSync, existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { tmpdir } from 'node:os'
import { parseClusterKey } from '../mesh/cluster-key.ts'
import { recognisePiBoot, withFirstrunHook, NotAPiBootPartitionError, type FirstBootMethod, type PiBootPartition } from './pi-boot.ts'
import { provisionFiles, parseSshPublicKeys, checkHostname, checkUser, checkWifi, ProvisionError, BUNDLE_NAME, DCLOUD_DIR, FIRSTBOOT_NAME, type WifiSettings } from './provision.ts'
import { dirTarget, isDirectory, resolveImage, type BootTarget } from './target.ts'
import { makeBundle, readBundleInfo, type BundleInfo } from '../install/bundle.ts'
import { PROJECT_ROOT } from '../config.ts'
import { UserError, UsageError, EXIT } from '../util/errors.ts'

export interface FlashRequest {
  image?: string
  boot?: string
  hostname: string
  user: string
  sshKeyFile: string
  keyFile: string
  wifi?: WifiSettings
  /** The arm64 agent bundle; made from this installation when absent. */
  bundle?: string
  /** Overrides what the card's files say. */
  method?: FirstBootMethod
  agentArgs?: string[]
  dryRun?: boolean
  progress?: (line: string) => void
}

export interface FlashReport {
  target: string
  partition: PiBootPartition
  method: FirstBootMethod
  /** Files written (or that would be, with dryRun), relative to the boot partition. */
  files: string[]
  /** The .img made from an .img.xz, which is what should go on the card. */
  decompressedTo: string | null
  bundle: BundleInfo
}

const FIRSTBOOT_SCRIPT = join(PROJECT_ROOT, 'scripts', 'firstboot', 'firstboot.sh')
const FIRSTBOOT_UNIT = join(PROJECT_ROOT, 'scripts', 'firstboot', 'dcloud-firstboot.service')

function readInput (path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    throw new UserError(`cannot read ${what} ${path}: ${(err as Error).message}`, { exitCode: EXIT.noInput })
  }
}

function asUserError (err: unknown): never {
  if (err instanceof ProvisionError) throw new UserError(err.message, { exitCode: EXIT.usage, hint: err.hint })
  throw err
}

export async function flash (req: FlashRequest): Promise<FlashReport> {
  const progress = req.progress ?? (() => {})
  if ((req.image === undefined) === (req.boot === undefined)) {
    throw new UsageError('give exactly one of --image FILE and --boot DIR', 'e.g. dcloud flash --image raspios.img.xz ... or --boot /media/$USER/bootfs ...')
  }
  // Settings first: a typo should cost nothing, least of all a decompressed image.
  let sshKeys: string[]
  try {
    checkHostname(req.hostname)
    checkUser(req.user)
    sshKeys = parseSshPublicKeys(readInput(req.sshKeyFile, 'the SSH key'), req.sshKeyFile)
    if (req.wifi !== undefined) checkWifi(req.wifi)
  } catch (err) { asUserError(err) }
  const keyText = readInput(req.keyFile, 'the cluster key')
  const clusterKey = new TextDecoder().decode(parseClusterKey(keyText, req.keyFile))
  for (const f of [FIRSTBOOT_SCRIPT, FIRSTBOOT_UNIT]) {
    if (!existsSync(f)) throw new UserError(`this installation lacks ${f}`, { exitCode: EXIT.software, hint: 'reinstall dcloud' })
  }

  let bundle = req.bundle !== undefined ? resolve(req.bundle) : undefined
  let scratch: string | null = null
  try {
    let bundleInfo: BundleInfo
    if (bundle !== undefined) {
      if (!existsSync(bundle)) throw new UserError(`cannot read the bundle ${bundle}`, { exitCode: EXIT.noInput })
      bundleInfo = await readBundleInfo(bundle)
      if (bundleInfo.arch !== 'arm64') throw new UserError(`${bundle} is for ${bundleInfo.arch}; a Raspberry Pi needs an arm64 bundle`, { exitCode: EXIT.dataError, hint: 'make one with scripts/bundle.sh --arch arm64 -o FILE' })
    } else {
      scratch = await mkdtemp(join(tmpdir(), 'dcloud-flash-'))
      bundle = join(scratch, 'bundle.tar.gz')
      progress('making the arm64 agent bundle (scripts/bundle.sh; --bundle FILE skips this)')
      bundleInfo = await makeBundle({ arch: 'arm64', out: bundle, progress: (l) => { progress(`  ${l}`) } })
    }

    let target: BootTarget
    let decompressedTo: string | null = null
    if (req.boot !== undefined) {
      if (!(await isDirectory(req.boot))) throw new UsageError(`--boot ${req.boot} is not a directory`, 'give the mount point of the card\'s boot partition (e.g. /media/$USER/bootfs), or --image for an image or a whole card')
      target = dirTarget(resolve(req.boot))
    } else {
      const resolved = await resolveImage(req.image!, progress)
      target = resolved.target
      if (resolved.decompressedFrom !== null) decompressedTo = resolved.path
    }

    const names = await target.list()
    let partition: PiBootPartition
    try {
      partition = recognisePiBoot(names, names.some(n => n.toLowerCase() === 'issue.txt') ? await target.readText('issue.txt') : null)
    } catch (err) {
      if (err instanceof NotAPiBootPartitionError) {
        throw new UserError(`${target.describe} is ${err.message}`, { exitCode: EXIT.dataError, hint: 'nothing was written; give a Raspberry Pi OS image, card or boot partition' })
      }
      throw err
    }
    if (partition.userland === 'armhf') {
      throw new UserError(`${target.describe} holds a 32-bit Raspberry Pi OS`, { exitCode: EXIT.dataError, hint: 'nothing was written; the agent needs the 64-bit Raspberry Pi OS (arm64)' })
    }
    const method = req.method ?? partition.method

    let files
    try {
      files = provisionFiles({ method, hostname: req.hostname, user: req.user, sshKeys, clusterKey, wifi: req.wifi, agentArgs: req.agentArgs })
    } catch (err) { asUserError(err) }
    let cmdline: string | null = null
    if (method === 'firstrun') {
      const current = await target.readText('cmdline.txt')
      if (current === null) throw new UserError(`${target.describe} has no cmdline.txt`, { exitCode: EXIT.dataError })
      cmdline = withFirstrunHook(current)
    }
    const written = [FIRSTBOOT_NAME, `${DCLOUD_DIR}/dcloud-firstboot.service`, BUNDLE_NAME, ...files.map(f => f.path), ...(cmdline !== null ? ['cmdline.txt'] : [])]
    const report: FlashReport = { target: target.describe, partition, method, files: written, decompressedTo, bundle: bundleInfo }
    if (req.dryRun === true) return report

    // Ours first, then what the first boot reads (user-data, firstrun.sh), the hook last:
    // a write that fails half-way leaves a card that boots as it would have without us.
    progress(`writing to ${target.describe} (${method})`)
    await target.write(FIRSTBOOT_NAME, { from: FIRSTBOOT_SCRIPT })
    await target.write(`${DCLOUD_DIR}/dcloud-firstboot.service`, { from: FIRSTBOOT_UNIT })
    await target.write(BUNDLE_NAME, { from: bundle })
    const ordered = [...files.filter(f => f.path.startsWith(`${DCLOUD_DIR}/`)), ...files.filter(f => !f.path.startsWith(`${DCLOUD_DIR}/`))]
    for (const f of ordered) await target.write(f.path, { text: f.content })
    if (cmdline !== null) await target.write('cmdline.txt', { text: cmdline })

    for (const f of [...files, ...(cmdline !== null ? [{ path: 'cmdline.txt', content: cmdline }] : [])]) {
      const back = await target.readText(f.path)
      if (back !== f.content) throw new UserError(`${f.path} on ${target.describe} does not read back as written`, { exitCode: EXIT.ioError, hint: 'the card may be failing; try another one' })
    }
    return report
  } finally {
    if (scratch !== null) await rm(scratch, { recursive: true, force: true })
  }
}
