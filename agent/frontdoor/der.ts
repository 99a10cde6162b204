/**
 * The few DER (ASN.1 Distinguished Encoding Rules) encoders an X.509
 * certificate needs. Node's crypto signs and verifies but cannot build a
 * certificate; the rest of a certificate is these tag-length-value bytes.
 * Pure functions of their arguments: the same input, the same bytes (the
 * cluster CA depends on that: every node must build the same certificate).
 */

function length (n: number): Buffer {
  if (n < 0x80) return Buffer.from([n])
  const bytes: number[] = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff)
  return Buffer.from([0x80 | bytes.length, ...bytes])
}

/** One TLV: `tag`, then the definite length, then the contents. */
export function tlv (tag: number, ...contents: Buffer[]): Buffer {
  const body = Buffer.concat(contents)
  return Buffer.concat([Buffer.from([tag]), length(body.length), body])
}

export const sequence = (...items: Buffer[]): Buffer => tlv(0x30, ...items)
export const set = (...items: Buffer[]): Buffer => tlv(0x31, ...items)
export const nullValue = (): Buffer => Buffer.from([0x05, 0x00])
export const boolean = (v: boolean): Buffer => Buffer.from([0x01, 0x01, v ? 0xff : 0x00])
export const octetString = (b: Buffer): Buffer => tlv(0x04, b)
/** A BIT STRING with no unused bits (keys, signatures). */
export const bitString = (b: Buffer): Buffer => tlv(0x03, Buffer.from([0]), b)
export const utf8String = (s: string): Buffer => tlv(0x0c, Buffer.from(s, 'utf8'))
export const ia5String = (s: string): Buffer => tlv(0x16, Buffer.from(s, 'ascii'))
/** `[n]` EXPLICIT, constructed: wraps a whole encoding. */
export const explicit = (n: number, inner: Buffer): Buffer => tlv(0xa0 | n, inner)

/** A non-negative INTEGER from big-endian bytes (a leading 0 added when the top bit is set, leading zeros removed). */
export function unsignedInteger (bytes: Buffer): Buffer {
  let i = 0
  while (i < bytes.length - 1 && bytes[i] === 0) i++
  const trimmed = bytes.subarray(i)
  return tlv(0x02, (trimmed[0] ?? 0) >= 0x80 ? Buffer.concat([Buffer.from([0]), trimmed]) : trimmed)
}

export const smallInteger = (n: number): Buffer => unsignedInteger(Buffer.from([n >> 24 & 0xff, n >> 16 & 0xff, n >> 8 & 0xff, n & 0xff]))

/** An OBJECT IDENTIFIER from its dotted form. */
export function oid (dotted: string): Buffer {
  const parts = dotted.split('.').map(Number)
  const first = parts[0] ?? 0
  const second = parts[1] ?? 0
  const out: number[] = [first * 40 + second]
  for (const p of parts.slice(2)) {
    const bytes: number[] = [p & 0x7f]
    for (let v = Math.floor(p / 128); v > 0; v = Math.floor(v / 128)) bytes.unshift(0x80 | (v & 0x7f))
    out.push(...bytes)
  }
  return tlv(0x06, Buffer.from(out))
}

/** UTCTime up to 2049, GeneralizedTime after (RFC 5280 §4.1.2.5); whole seconds, UTC. */
export function time (d: Date): Buffer {
  const iso = d.toISOString() // 2026-01-02T03:04:05.000Z
  const digits = iso.slice(0, 19).replace(/[-:T]/g, '') + 'Z' // 20260102030405Z
  return d.getUTCFullYear() < 2050 ? tlv(0x17, Buffer.from(digits.slice(2), 'ascii')) : tlv(0x18, Buffer.from(digits, 'ascii'))
}
