/**
 * The compose spec's units: byte sizes ("128M", "1gb"), Go durations
 * ("1m30s") and CPU counts ("0.5"). Each parser names the field it read, so
 * a bad value in a 300-line compose file can be found.
 */
import { ValidationError } from '../proto/validate.ts'

const BYTE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kb: 1024, kib: 1024,
  m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1024 ** 4, tib: 1024 ** 4
}

/** No node has a petabyte of memory; anything above is a typo. */
const MAX_BYTES = 1024 ** 5

/**
 * Compose byte sizes: a number of bytes, or a string with a binary unit
 * (compose, like Docker, reads "1g" and "1gb" as 1024³).
 */
export function parseBytes (value: unknown, field: string): number {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0 || value > MAX_BYTES) throw new ValidationError(field, `${value} is not a byte count`)
    return value
  }
  if (typeof value !== 'string') throw new ValidationError(field, 'must be a size such as "128M" or "1G"')
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(value)
  const unit = BYTE_UNITS[(m?.[2] ?? '').toLowerCase()]
  if (m === null || unit === undefined) throw new ValidationError(field, `"${value}" is not a size such as "128M" or "1G"`)
  const bytes = Math.round(Number(m[1]) * unit)
  if (bytes > MAX_BYTES) throw new ValidationError(field, `"${value}" is larger than any node`)
  return bytes
}

const DURATION_UNITS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** Go durations as compose writes them: "30s", "1m30s", "500ms". Returns milliseconds. */
export function parseDuration (value: unknown, field: string): number {
  if (typeof value !== 'string') throw new ValidationError(field, 'must be a duration such as "30s" or "1m30s"')
  if (value === '0') return 0
  if (value.length === 0) throw new ValidationError(field, 'must be a duration such as "30s" or "1m30s"')
  const part = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/y
  let ms = 0
  let at = 0
  while (at < value.length) {
    part.lastIndex = at
    const m = part.exec(value)
    if (m === null) throw new ValidationError(field, `"${value}" is not a duration such as "30s" or "1m30s"`)
    ms += Number(m[1]) * (DURATION_UNITS[m[2] as string] as number)
    at = part.lastIndex
  }
  // A day is far beyond any healthcheck or grace period anyone means.
  if (ms > 86_400_000) throw new ValidationError(field, `"${value}" is longer than a day`)
  return Math.round(ms)
}

/** CPUs as a number or numeric string ("0.5"); fractions of a core are normal on a Pi. */
export function parseCpus (value: unknown, field: string): number {
  const n = typeof value === 'string' && /^\s*\d+(\.\d+)?\s*$/.test(value) ? Number(value) : value
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0 || n > 1024) throw new ValidationError(field, 'must be a number of CPUs such as 0.5')
  return n
}

/** Formats bytes the way compose files write them, for generated files and messages. */
export function formatBytes (bytes: number): string {
  for (const [unit, size] of [['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`
  }
  return String(bytes)
}

/** Formats milliseconds as a Go duration ("1m30s"), the inverse of parseDuration for whole milliseconds. */
export function formatDuration (ms: number): string {
  if (ms === 0) return '0s'
  let out = ''
  let rest = ms
  for (const [unit, size] of [['h', 3_600_000], ['m', 60_000], ['s', 1000], ['ms', 1]] as const) {
    const n = Math.floor(rest / size)
    if (n > 0) out += `${n}${unit}`
    rest -= n * size
  }
  return out
}
