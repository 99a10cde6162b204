/**
 * A guard for @libp2p/pnet, applied when the mesh module loads (before any
 * connection exists). Remove it once a pnet release carries js-libp2p PR #3585.
 */
// @ts-expect-error xsalsa20 ships no types; only its prototype's update() is touched, below.
import XSalsa20 from 'xsalsa20'

// @libp2p/pnet 3.0.27 is the newest published.
//
// pnet xors each batch the layers above hand it in one call to xsalsa20's
// WebAssembly cipher. One wasm memory (max 1000 pages, 64 MB) serves every
// cipher of the process, and a cipher whose view went stale when another grew
// the memory grows it again by its whole input. Bulk streams make batches of
// up to a yamux window (16 MiB): a few of them, alternating between
// connections, exceed the limit and every connection of the process is
// aborted ("WebAssembly.Memory.grow(): Maximum memory size exceeded"; seen
// after 71 MB of a 100 MB stream). Xoring in 16 KiB pieces is the same
// stream cipher, byte for byte, and keeps the memory at its initial 640 KiB,
// so it never grows.

const PNET_CHUNK = 16 * 1024
const patched = Symbol.for('dcloud.xsalsa20.chunked')

interface CipherProto { update: (input: Uint8Array, output?: Uint8Array) => Uint8Array, [patched]?: true }

/** Applies the guard (once per process). */
export function chunkPnetCipher (): void {
  const proto = (XSalsa20 as { prototype: CipherProto }).prototype
  if (proto[patched] === true) return
  const update = proto.update
  proto.update = function (this: unknown, input: Uint8Array, output?: Uint8Array): Uint8Array {
    if (input.length <= PNET_CHUNK) return update.call(this, input, output)
    const out = output ?? new Uint8Array(input.length)
    for (let i = 0; i < input.length; i += PNET_CHUNK) update.call(this, input.subarray(i, i + PNET_CHUNK), out.subarray(i, i + PNET_CHUNK))
    return out
  }
  proto[patched] = true
}
chunkPnetCipher()
