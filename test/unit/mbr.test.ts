import { describe, it, expect } from 'vitest'
import fc from 'fast-check'
import { parseMbr, isFatBootSector, locateBootPartition, DiskLayoutError, SECTOR } from '../../agent/flash/mbr.ts'

interface Entry { type: number, start: number, sectors: number, boot?: boolean }

function mbr (entries: Entry[]): Uint8Array {
  const s = new Uint8Array(SECTOR)
  entries.forEach((e, i) => {
    const at = 446 + 16 * i
    s[at] = e.boot === true ? 0x80 : 0
    s[at + 4] = e.type
    new DataView(s.buffer).setUint32(at + 8, e.start, true)
    new DataView(s.buffer).setUint32(at + 12, e.sectors, true)
  })
  s[510] = 0x55
  s[511] = 0xaa
  return s
}

/** A FAT32 boot sector as mkfs.vfat writes it: jump, BPB, "FAT32   " at 82, 55 AA. */
function fatBootSector (fsType = 'FAT32   ', at = 82): Uint8Array {
  const s = new Uint8Array(SECTOR)
  s.set([0xeb, 0x58, 0x90], 0)
  new DataView(s.buffer).setUint16(11, 512, true) // bytes per sector
  s[13] = 4 // sectors per cluster
  new DataView(s.buffer).setUint16(14, 32, true) // reserved sectors
  s[16] = 2 // FATs
  s.set(new TextEncoder().encode(fsType), at)
  s[510] = 0x55
  s[511] = 0xaa
  return s
}

/** The layout of a Raspberry Pi OS image: FAT32 (LBA) boot at 8192, Linux root after it. */
const RASPIOS = mbr([{ type: 0x0c, start: 8192, sectors: 1048576 }, { type: 0x83, start: 1056768, sectors: 4194304 }])

describe('parseMbr', () => {
  it('reads the partitions of a Raspberry Pi OS image', () => {
    const parts = parseMbr(RASPIOS)
    expect(parts).toEqual([
      { number: 1, type: 0x0c, bootable: false, startSector: 8192, sectors: 1048576, offset: 8192 * 512, size: 1048576 * 512 },
      { number: 2, type: 0x83, bootable: false, startSector: 1056768, sectors: 4194304, offset: 1056768 * 512, size: 4194304 * 512 }
    ])
  })

  it('keeps Linux numbering when slots are empty', () => {
    const parts = parseMbr(mbr([{ type: 0, start: 0, sectors: 0 }, { type: 0x0b, start: 2048, sectors: 100, boot: true }]))
    expect(parts.map(p => [p.number, p.bootable])).toEqual([[2, true]])
  })

  it('reads sizes above 2 GiB sectors without sign errors', () => {
    const [p] = parseMbr(mbr([{ type: 0x83, start: 2048, sectors: 0xfffff000 }]))
    expect(p?.sectors).toBe(0xfffff000)
  })

  it.each([
    ['no 55 AA signature', (() => { const s = mbr([{ type: 0x0c, start: 8192, sectors: 10 }]); s[511] = 0; return s })(), /55 AA/],
    ['a GPT protective MBR', mbr([{ type: 0xee, start: 1, sectors: 0xffffffff }]), /GPT/],
    ['an empty table', mbr([]), /empty/],
    ['overlapping partitions', mbr([{ type: 0x0c, start: 2048, sectors: 4096 }, { type: 0x83, start: 4096, sectors: 10 }]), /overlap/],
    ['a partition over the table', mbr([{ type: 0x0c, start: 0, sectors: 10 }]), /sector 0/],
    ['an invalid status byte', (() => { const s = mbr([{ type: 0x0c, start: 8192, sectors: 10 }]); s[446] = 0x12; return s })(), /status/],
    ['less than a sector', new Uint8Array(100), /shorter/]
  ])('refuses %s', (_, sector, message) => {
    expect(() => parseMbr(sector)).toThrow(DiskLayoutError)
    expect(() => parseMbr(sector)).toThrow(message)
  })

  it('never fails with anything but DiskLayoutError, whatever the bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 0, maxLength: 600 }), fc.boolean(), (bytes, signed) => {
      const s = new Uint8Array(bytes)
      if (signed && s.length >= 512) { s[510] = 0x55; s[511] = 0xaa }
      try {
        for (const p of parseMbr(s)) {
          expect(p.offset).toBe(p.startSector * 512)
          expect(p.startSector).toBeGreaterThan(0)
        }
      } catch (err) {
        expect(err).toBeInstanceOf(DiskLayoutError)
      }
    }), { numRuns: 2000 })
  })

  it('gives back any valid table it is given', () => {
    const entry = fc.record({ type: fc.constantFrom(0x0c, 0x0b, 0x83, 0x82, 0x07), sectors: fc.integer({ min: 1, max: 1 << 20 }), gap: fc.integer({ min: 1, max: 1 << 16 }) })
    fc.assert(fc.property(fc.array(entry, { minLength: 1, maxLength: 4 }), (es) => {
      let next = 2048
      const entries = es.map(e => { const start = next + e.gap; next = start + e.sectors; return { type: e.type, start, sectors: e.sectors } })
      expect(parseMbr(mbr(entries)).map(p => [p.type, p.startSector, p.sectors])).toEqual(entries.map(e => [e.type, e.start, e.sectors]))
    }))
  })
})

describe('isFatBootSector', () => {
  it('knows FAT32 and FAT16 boot sectors', () => {
    expect(isFatBootSector(fatBootSector())).toBe(true)
    expect(isFatBootSector(fatBootSector('FAT16   ', 54))).toBe(true)
  })

  it('does not take an MBR for a FAT file system', () => {
    expect(isFatBootSector(RASPIOS)).toBe(false)
  })

  it('refuses a boot sector with an impossible geometry', () => {
    const s = fatBootSector()
    s[13] = 3 // sectors per cluster must be a power of two
    expect(isFatBootSector(s)).toBe(false)
  })
})

describe('locateBootPartition', () => {
  it('finds partition 1 of an image', () => {
    expect(locateBootPartition(RASPIOS, 3 * 1024 ** 3)).toEqual({ offset: 4194304, size: 536870912, partition: 1 })
  })

  it('takes a bare FAT file system as a whole', () => {
    expect(locateBootPartition(fatBootSector(), 64 * 1024 ** 2)).toEqual({ offset: 0, size: null, partition: null })
  })

  it('takes the first FAT partition when partition 1 is not FAT', () => {
    const loc = locateBootPartition(mbr([{ type: 0x83, start: 2048, sectors: 2048 }, { type: 0x0c, start: 8192, sectors: 2048 }]))
    expect(loc.partition).toBe(2)
  })

  it('refuses a disk without a FAT partition', () => {
    expect(() => locateBootPartition(mbr([{ type: 0x83, start: 2048, sectors: 2048 }]))).toThrow(/no FAT partition.*0x83/)
  })

  it('refuses a table that points past the end of the image (a truncated download)', () => {
    expect(() => locateBootPartition(RASPIOS, 100 * 1024 ** 2)).toThrow(/past the end/)
  })
})
