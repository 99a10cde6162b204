/**
 * Is this a Raspberry Pi OS boot partition, and which first-boot mechanism
 * does its image read? Pure: decides from the names of the files at the
 * partition's root and the text of `issue.txt`.
 *
 * Raspberry Pi OS has had two mechanisms:
 *  - `firstrun.sh`, started by `systemd.run=` on the kernel command line
 *    (Bookworm images, and the first Trixie image of 2025-10-01);
 *  - cloud-init's NoCloud `user-data`, `meta-data` and `network-config` on
 *    the boot partition (Trixie images after that). Those images ship the
 *    three files, commented out; older images have none of them, which is
 *    how we tell them apart without a table of release dates.
 */

export type FirstBootMethod = 'cloud-init' | 'firstrun'
export const FIRST_BOOT_METHODS: readonly FirstBootMethod[] = ['cloud-init', 'firstrun']

export interface PiBootPartition {
  method: FirstBootMethod
  /** The image's userland, from its kernels: 64-bit images ship no 32-bit kernel7*.img. */
  userland: 'arm64' | 'armhf' | 'unknown'
  /** The image's build date from issue.txt ("Raspberry Pi reference 2024-11-19"), if any. */
  release: string | null
}

export class NotAPiBootPartitionError extends Error {
  override name = 'NotAPiBootPartitionError'
  readonly missing: string[]

  constructor (missing: string[]) {
    super(`not a Raspberry Pi boot partition: ${missing.join('; ')}`)
    this.missing = missing
  }
}

const CLOUD_INIT_SEED = ['user-data', 'meta-data']

export function recognisePiBoot (names: readonly string[], issueTxt: string | null = null): PiBootPartition {
  const lower = new Set(names.map(n => n.toLowerCase()))
  const missing: string[] = []
  if (!lower.has('config.txt')) missing.push('no config.txt')
  if (!lower.has('cmdline.txt')) missing.push('no cmdline.txt')
  // The firmware or the device trees: what only a Pi's boot partition has.
  const firmware = [...lower].some(n => /^start[a-z0-9_]*\.elf$/.test(n) || /^bcm27[0-9a-z_-]*\.dtb$/.test(n))
  if (!firmware) missing.push('no Raspberry Pi firmware (start*.elf) or device tree (bcm27*.dtb)')
  if (missing.length > 0) throw new NotAPiBootPartitionError(missing)

  const method: FirstBootMethod = CLOUD_INIT_SEED.some(n => lower.has(n)) ? 'cloud-init' : 'firstrun'
  const has32 = lower.has('kernel7.img') || lower.has('kernel7l.img')
  const has64 = lower.has('kernel8.img') || lower.has('kernel_2712.img')
  const userland = has32 ? 'armhf' : has64 ? 'arm64' : 'unknown'
  const release = issueTxt?.match(/Raspberry Pi reference (\d{4}-\d{2}-\d{2})/)?.[1] ?? null
  return { method, userland, release }
}

/** Where Bookworm and later mount the boot partition; the first-boot files name paths under it. */
export const BOOT_MOUNT = '/boot/firmware'

const FIRSTRUN_HOOK = `systemd.run=${BOOT_MOUNT}/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target`

/**
 * cmdline.txt with our firstrun.sh hook at its end. The file is one line;
 * firstrun.sh removes everything from " systemd.run" on when it is done (as
 * Raspberry Pi Imager's does), so the hook must come last, and an earlier
 * hook (a second flash of the same card) is replaced, not doubled.
 */
export function withFirstrunHook (cmdline: string): string {
  const line = (cmdline.split(/\r?\n/)[0] ?? '').replace(/\s+systemd\.run.*$/, '').trimEnd()
  if (line === '') throw new NotAPiBootPartitionError(['cmdline.txt is empty'])
  return `${line} ${FIRSTRUN_HOOK}\n`
}

export function hasFirstrunHook (cmdline: string): boolean {
  return cmdline.includes(FIRSTRUN_HOOK)
}
