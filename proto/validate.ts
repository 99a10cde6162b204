/**
 * Small, dependency-free validators for data that crosses a trust boundary
 * (peers, files, HTTP). Each check names the offending field so the error a
 * user or a log reader sees says exactly what was wrong.
 */

export class ValidationError extends Error {
  override name = 'ValidationError'
  readonly field: string

  constructor (field: string, problem: string) {
    super(`${field}: ${problem}`)
    this.field = field
  }
}

/**
 * Docker's rule for the names of containers, volumes, networks and configs
 * (a letter or digit, then letters, digits, `_`, `.`, `-`), at most 63
 * characters: also the names of compose services and of nodes.
 */
export const DOCKER_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/

/** A label's key on a container or volume (Docker's, with `/`), at most 128 characters. */
export const LABEL_KEY = /^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,127}$/

/** A node label's key (`dcloud agent --label KEY=VALUE`, a manifest's constraints), at most 63 characters. */
export const NODE_LABEL_KEY = /^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,62}$/

/** A libp2p peer id as libp2p prints it (base58btc): a node's id. */
export const PEER_ID = /^[1-9A-HJ-NP-Za-km-z]{40,60}$/
/** A snapshot's id as restic prints it: the short id (8 hex digits) or the full one. */
export const SNAPSHOT_ID = /^[0-9a-f]{8,64}$/
/** The largest integer a JSON number carries exactly. */
export const MAX_INT = 2 ** 53 - 1

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

export function isRecord (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

export function record (value: unknown, field: string): Record<string, unknown> {
  if (!isRecord(value)) throw new ValidationError(field, 'must be an object')
  return value
}

export function string (value: unknown, field: string, opts: { max: number, min?: number, pattern?: RegExp }): string {
  if (typeof value !== 'string') throw new ValidationError(field, 'must be a string')
  if (value.length > opts.max) throw new ValidationError(field, `longer than ${opts.max} characters`)
  if (value.length < (opts.min ?? 0)) throw new ValidationError(field, `shorter than ${opts.min ?? 0} characters`)
  if (opts.pattern != null && !opts.pattern.test(value)) throw new ValidationError(field, `does not match ${String(opts.pattern)}`)
  return value
}

export function number (value: unknown, field: string, opts: { min: number, max: number, integer?: boolean }): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new ValidationError(field, 'must be a finite number')
  if (opts.integer === true && !Number.isSafeInteger(value)) throw new ValidationError(field, 'must be an integer')
  if (value < opts.min || value > opts.max) throw new ValidationError(field, `must be between ${opts.min} and ${opts.max}`)
  return value
}

export function array<T> (value: unknown, field: string, maxItems: number, item: (v: unknown, f: string) => T): T[] {
  if (!Array.isArray(value)) throw new ValidationError(field, 'must be an array')
  if (value.length > maxItems) throw new ValidationError(field, `more than ${maxItems} items`)
  return value.map((v, i) => item(v, `${field}[${i}]`))
}

export function stringMap (value: unknown, field: string, opts: { maxEntries: number, key: RegExp, maxValue: number }): Record<string, string> {
  const input = record(value, field)
  const entries = Object.entries(input)
  if (entries.length > opts.maxEntries) throw new ValidationError(field, `more than ${opts.maxEntries} entries`)
  const out: Record<string, string> = {}
  for (const [k, v] of entries) {
    if (!opts.key.test(k)) throw new ValidationError(`${field}.${k}`, `key does not match ${String(opts.key)}`)
    out[k] = string(v, `${field}.${k}`, { max: opts.maxValue })
  }
  return out
}

/** Parses JSON from bytes with a size bound checked before any parsing work. */
export function parseJsonBytes (bytes: Uint8Array, maxBytes: number, field = 'message'): unknown {
  if (bytes.byteLength > maxBytes) throw new OversizedError(field, bytes.byteLength, maxBytes)
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes)
  } catch {
    throw new ValidationError(field, 'is not valid UTF-8')
  }
  try {
    return JSON.parse(text)
  } catch {
    throw new ValidationError(field, 'is not valid JSON')
  }
}

export class OversizedError extends ValidationError {
  override name = 'OversizedError'

  constructor (field: string, size: number, max: number) {
    super(field, `is ${size} bytes, more than the limit of ${max}`)
  }
}

/** An unsigned varint (as libp2p's length prefixes) followed by the bytes. */
export function lengthPrefixed (data: Uint8Array): Uint8Array {
  const prefix: number[] = []
  let n = data.byteLength
  while (n >= 0x80) {
    prefix.push((n & 0x7f) | 0x80)
    n = Math.floor(n / 128)
  }
  prefix.push(n)
  const out = new Uint8Array(prefix.length + data.byteLength)
  out.set(prefix, 0)
  out.set(data, prefix.length)
  return out
}
