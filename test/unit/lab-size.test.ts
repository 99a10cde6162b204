/** `dcloud lab up --disk-size` and `lab fill --leave`: sizes as people write them. */
import { describe, expect, it } from 'vitest'
import { formatBytes, parseSize } from '../../scripts/lab/lab.ts'

describe('lab sizes', () => {
  it.each([
    ['0', 0], ['4096', 4096], ['4G', 4 * 1024 ** 3], ['512M', 512 * 1024 ** 2], ['100k', 100 * 1024],
    ['1.5GiB', 1.5 * 1024 ** 3], ['2MB', 2 * 1024 ** 2], [' 1T ', 1024 ** 4]
  ])('%s is %d bytes', (text, bytes) => {
    expect(parseSize(text, '--leave')).toBe(bytes)
  })

  it.each(['', 'G', '-1', '4X', '1e9', '4 G B', '0x10'])('refuses %j, naming the option', (text) => {
    expect(() => parseSize(text, '--disk-size')).toThrow(/--disk-size .* is not a size/)
  })

  it('prints sizes in binary units', () => {
    expect(formatBytes(0)).toBe('0 B')
    expect(formatBytes(4 * 1024 ** 3)).toBe('4.00 GiB')
    expect(formatBytes(100 * 1024 ** 2)).toBe('100.0 MiB')
  })
})
