/**
 * Is any part of a disk in use? Pure parsing of /proc/mounts and /proc/swaps;
 * the caller supplies how to turn a device path into its major:minor number,
 * which is how we match /dev/mmcblk0p2, /dev/disk/by-uuid/… and
 * /dev/mapper/… alike.
 */

export interface MountEntry {
  source: string
  target: string
  fstype: string
}

/** /proc/mounts escapes spaces and the like as octal (\040). */
function unescapeMount (field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

export function parseProcMounts (text: string): MountEntry[] {
  const entries: MountEntry[] = []
  for (const line of text.split('\n')) {
    const [source, target, fstype] = line.split(' ')
    if (source === undefined || target === undefined || fstype === undefined) continue
    entries.push({ source: unescapeMount(source), target: unescapeMount(target), fstype })
  }
  return entries
}

/** Active swap devices from /proc/swaps (first column, after the header). */
export function parseProcSwaps (text: string): string[] {
  return text.split('\n').slice(1).map(l => l.split(/\s+/)[0] ?? '').filter(s => s.startsWith('/'))
}

/**
 * The mounts (and swaps, as target "[swap]") whose device is one of `devNumbers`
 * ("major:minor" of the disk and each of its partitions).
 */
export function usesOf (
  mounts: readonly MountEntry[],
  swaps: readonly string[],
  devNumbers: ReadonlySet<string>,
  devNumberOf: (path: string) => string | null
): MountEntry[] {
  const found: MountEntry[] = []
  for (const m of mounts) {
    if (!m.source.startsWith('/')) continue
    const dev = devNumberOf(m.source)
    if (dev !== null && devNumbers.has(dev)) found.push(m)
  }
  for (const s of swaps) {
    const dev = devNumberOf(s)
    if (dev !== null && devNumbers.has(dev)) found.push({ source: s, target: '[swap]', fstype: 'swap' })
  }
  return found
}
