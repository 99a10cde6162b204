/**
 * The node's devices, for apps granted one (`device:/dev/dri`): the scheduler
 * places those only on nodes that report it.
 *
 * Read from /sys, not /dev: the installed agent runs with systemd's
 * `PrivateDevices=yes`, which gives it a /dev of its own holding only null,
 * zero, random and the like, while /sys (read-only under the unit's
 * hardening) still lists every device the kernel has. Each character device
 * is a directory of /sys/dev/char whose `uevent` names it (`DEVNAME=dri/card0`);
 * that name under /dev is where udev makes the node and what Docker maps.
 * Docker, which runs outside the unit, sees the machine's real /dev.
 *
 * A node may be given its list instead (`dcloud agent --devices`,
 * `DCLOUD_DEVICES`): the lab's nodes share one machine's /dev, and a test
 * tells them apart this way.
 */
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { MAX_DEVICES } from '../../proto/status.ts'
import { DEVICE_PATH, normaliseHostPath } from '../../proto/permissions.ts'

/** Devices every machine has many of and no app is granted: terminals, pseudo-terminals, virtual consoles. */
const NOISE = /^\/dev\/(tty[A-Za-z]?\d+|pty.*|vcsa?u?\d*|ptmx|console|tty|pts\/.*|cpu\/.*|hidraw\d+|bsg\/.*|sg\d+|watchdog\d*|mem|kmem|port|full|null|zero|random|urandom|kmsg)$/

/** Reads the node's character devices from `sys` (/sys): sorted, noise left out, at most MAX_DEVICES. */
export async function readDevices (sys = '/sys'): Promise<string[]> {
  const dir = join(sys, 'dev', 'char')
  let entries: string[]
  try {
    entries = await readdir(dir)
  } catch {
    return []
  }
  const names = await Promise.all(entries.map(async (e) => {
    const text = await readFile(join(dir, e, 'uevent'), 'utf8').catch(() => '')
    const name = /^DEVNAME=(.+)$/m.exec(text)?.[1]
    return name === undefined ? null : normaliseHostPath(`/dev/${name}`)
  }))
  return [...new Set(names.filter((n): n is string => n !== null && DEVICE_PATH.test(n) && !NOISE.test(n)))].sort().slice(0, MAX_DEVICES)
}

/**
 * A device list given by the user: comma separated paths below /dev, or
 * "none". Throws an Error naming `what` for anything else.
 */
export function parseDeviceList (text: string, what: string): string[] {
  if (text.trim() === 'none') return []
  const out = text.split(',').map(d => d.trim()).filter(d => d !== '')
  for (const d of out) {
    if (normaliseHostPath(d) !== d || !DEVICE_PATH.test(d)) throw new Error(`${what}: "${d}" is not a device path such as /dev/dri (a comma-separated list, or none)`)
  }
  if (out.length > MAX_DEVICES) throw new Error(`${what}: more than ${MAX_DEVICES} devices`)
  return [...new Set(out)].sort()
}
