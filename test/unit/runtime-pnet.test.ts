/**
 * The guard image-transfer.ts puts on pnet's xsalsa20 cipher: big batches,
 * alternating between ciphers as connections do, must neither exhaust the
 * shared wasm memory nor change a single byte of the stream cipher.
 */
import { describe, expect, it } from 'vitest'
import { randomBytes } from 'node:crypto'
// @ts-expect-error xsalsa20 ships no types
import XSalsa20 from 'xsalsa20'
import { chunkPnetCipher } from '../../agent/mesh/pnet-guard.ts'

interface Cipher { update: (input: Uint8Array, output?: Uint8Array) => Uint8Array }
const cipher = (nonce: Uint8Array, key: Uint8Array): Cipher => (XSalsa20 as (n: Uint8Array, k: Uint8Array) => Cipher)(nonce, key)

describe('pnet cipher guard', () => {
  it('is applied when image-transfer.ts loads, and applying it again changes nothing', () => {
    const before = (XSalsa20 as { prototype: Cipher }).prototype.update
    chunkPnetCipher()
    expect((XSalsa20 as { prototype: Cipher }).prototype.update).toBe(before)
  })

  it('survives 16 MiB batches alternating between four ciphers (two connections), past the 64 MB wasm limit', () => {
    const key = randomBytes(32)
    const ciphers = [0, 1, 2, 3].map(() => cipher(randomBytes(24), key))
    const batch = new Uint8Array(16 * 1024 * 1024)
    for (let round = 0; round < 3; round++) {
      for (const c of ciphers) expect(c.update(batch).length).toBe(batch.length)
    }
  })

  it('is the same stream cipher: chunked encryption decrypts with small updates, across odd boundaries', () => {
    const key = randomBytes(32)
    const nonce = randomBytes(24)
    const plain = randomBytes(3 * 1024 * 1024 + 37)
    const enc = cipher(nonce, key)
    // Odd sizes, so block boundaries (64 bytes) and chunk boundaries (16 KiB) fall everywhere.
    const secret = Buffer.concat([enc.update(plain.subarray(0, 1_000_001)), enc.update(plain.subarray(1_000_001, 1_000_013)), enc.update(plain.subarray(1_000_013))])
    const dec = cipher(nonce, key)
    const out: Uint8Array[] = []
    for (let i = 0; i < secret.length; i += 4099) out.push(dec.update(secret.subarray(i, i + 4099)))
    expect(Buffer.concat(out).equals(plain)).toBe(true)
  })
})
