/**
 * Where the boot partition of a Raspberry Pi image is, read from its first
 * sector. Pure: takes bytes, returns offsets. We parse the table ourselves so
 * that an image file needs neither a loop device nor a mount (mtools then
 * reads and writes the FAT file system at the offset we found).
 *
 * Raspberry Pi OS images use an MBR ("DOS") partition table: partition 1 is
 * the FAT boot partition, partition 2 the ext4 root. A GPT disk, an extended
 * partition holding the boot partition, or anything we cannot read is refused
 * rather than guessed at.
 */

export const SECTOR = 512

/** MBR partition types of FAT file systems (FAT12, FAT16 <32M, FAT16, FAT32 CHS, FAT32 LBA, FAT16 LBA). */
export const FAT_TYPES: ReadonlySet<number> = new Set([0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e])
const GPT_PROTECTIVE = 0xee
const EXTENDED_TYPES: ReadonlySet<number> = new Set([0x05, 0x0f, 0x85])

export interface MbrPartition {
  /** 1 to 4, as Linux numbers them (sdb1, mmcblk0p1). */
  number: number
  type: number
  bootable: boolean
  startSector: number
  sectors: number
  /** Byte offset of the partition in the disk. */
  offset: number
  /** Size in bytes. */
  size: number
}

export class DiskLayoutError extends Error {
  override name = 'DiskLayoutError'
}

function u16 (b: Uint8Array, at: number): number {
  return (b[at] ?? 0) | ((b[at + 1] ?? 0) << 8)
}

function u32 (b: Uint8Array, at: number): number {
  return ((b[at] ?? 0) | ((b[at + 1] ?? 0) << 8) | ((b[at + 2] ?? 0) << 16)) + (b[at + 3] ?? 0) * 0x1000000
}

function hasBootSignature (sector0: Uint8Array): boolean {
  return sector0[510] === 0x55 && sector0[511] === 0xaa
}

/**
 * True when the sector is the boot sector of a FAT file system (a "superfloppy":
 * a FAT file system with no partition table, as `mkfs.vfat` makes on a file).
 * An MBR also ends in 55 AA, so we look at the BIOS parameter block too.
 */
export function isFatBootSector (sector: Uint8Array): boolean {
  if (sector.length < SECTOR || !hasBootSignature(sector)) return false
  const jump = sector[0]
  if (!(jump === 0xeb || jump === 0xe9)) return false
  const bytesPerSector = u16(sector, 11)
  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) return false
  const sectorsPerCluster = sector[13] ?? 0
  if (sectorsPerCluster === 0 || (sectorsPerCluster & (sectorsPerCluster - 1)) !== 0) return false
  const reserved = u16(sector, 14)
  const fats = sector[16] ?? 0
  if (reserved === 0 || fats === 0 || fats > 4) return false
  const label = (from: number): string => new TextDecoder('latin1').decode(sector.subarray(from, from + 8))
  // FAT12/16 keep the type string at 54, FAT32 at 82; mkfs and every OS write one.
  return label(54).startsWith('FAT') || label(82).startsWith('FAT')
}

/** The primary partitions of an MBR. Throws DiskLayoutError for GPT and for sectors that are no MBR at all. */
export function parseMbr (sector0: Uint8Array): MbrPartition[] {
  if (sector0.length < SECTOR) throw new DiskLayoutError(`the disk is shorter than one sector (${sector0.length} bytes)`)
  if (!hasBootSignature(sector0)) throw new DiskLayoutError('no partition table (the first sector does not end in 55 AA)')
  const partitions: MbrPartition[] = []
  for (let i = 0; i < 4; i++) {
    const at = 446 + 16 * i
    const status = sector0[at] ?? 0
    const type = sector0[at + 4] ?? 0
    const startSector = u32(sector0, at + 8)
    const sectors = u32(sector0, at + 12)
    if (type === 0 || sectors === 0) continue
    if (status !== 0x00 && status !== 0x80) throw new DiskLayoutError(`partition ${i + 1} has an invalid status byte 0x${status.toString(16)}; this is not an MBR`)
    if (type === GPT_PROTECTIVE) throw new DiskLayoutError('the disk has a GPT partition table; Raspberry Pi OS images use MBR')
    if (startSector === 0) throw new DiskLayoutError(`partition ${i + 1} starts at sector 0, over the partition table itself`)
    partitions.push({ number: i + 1, type, bootable: status === 0x80, startSector, sectors, offset: startSector * SECTOR, size: sectors * SECTOR })
  }
  if (partitions.length === 0) throw new DiskLayoutError('the partition table is empty')
  const sorted = [...partitions].sort((a, b) => a.startSector - b.startSector)
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!
    const cur = sorted[i]!
    if (prev.startSector + prev.sectors > cur.startSector) throw new DiskLayoutError(`partitions ${prev.number} and ${cur.number} overlap`)
  }
  return partitions
}

export interface BootLocation {
  /** Byte offset of the FAT file system in the disk or image. */
  offset: number
  /** Its size in bytes, or null when the whole file is the file system. */
  size: number | null
  /** Partition number, or null for a bare FAT file system. */
  partition: number | null
}

/**
 * Finds the FAT file system that should be a Raspberry Pi boot partition:
 * the whole image when it is a bare FAT file system, else the first FAT
 * primary partition (partition 1 on every Raspberry Pi OS image).
 * `diskSize`, when known, lets us refuse a table that points past the end.
 */
export function locateBootPartition (sector0: Uint8Array, diskSize?: number): BootLocation {
  if (isFatBootSector(sector0)) return { offset: 0, size: null, partition: null }
  const partitions = parseMbr(sector0)
  if (diskSize !== undefined) {
    for (const p of partitions) {
      if (p.offset + p.size > diskSize) throw new DiskLayoutError(`partition ${p.number} ends at byte ${p.offset + p.size}, past the end of the disk (${diskSize} bytes); the image is truncated or not an image`)
    }
  }
  if (partitions.some(p => EXTENDED_TYPES.has(p.type)) && !partitions.some(p => FAT_TYPES.has(p.type))) {
    throw new DiskLayoutError('the FAT partition, if any, is inside an extended partition; Raspberry Pi OS keeps its boot partition as primary partition 1')
  }
  const fat = partitions.filter(p => FAT_TYPES.has(p.type)).sort((a, b) => a.number - b.number)[0]
  if (fat === undefined) {
    const types = partitions.map(p => `${p.number}: 0x${p.type.toString(16).padStart(2, '0')}`).join(', ')
    throw new DiskLayoutError(`no FAT partition (partition types ${types})`)
  }
  return { offset: fat.offset, size: fat.size, partition: fat.number }
}
