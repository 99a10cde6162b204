/**
 * What the agent's bulk-stream protocols share: images
 * (agent/runtime/image-transfer.ts, `/dcloud/image/1`) and restic
 * repositories (agent/snapshots/repo-sync.ts, `/dcloud/repo-pull/1`). Each
 * opens with varint-length-prefixed JSON frames and then streams raw bytes,
 * so both need the same pieces, written here once:
 *
 * - `StreamService`: the server's skeleton. start/stop (safe twice), the
 *   protocol's handler that never throws at libp2p (a stream that fails is
 *   logged, counted and reset), a bounded number of transfers at once (the
 *   extra streams get a quick `busy`, not a reset) and the first frame read
 *   within a deadline;
 * - `readFrame`: one frame, its length refused before any of it is read;
 * - `sendAll`: bytes handed to the muxer with backpressure;
 * - `refuse`: an error frame, then the stream closed, and cut off if the
 *   other side keeps it open.
 */
import type { ByteStream } from '@libp2p/utils'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { ValidationError } from '../../proto/validate.ts'
import type { Logger } from '../util/log.ts'
import type { Mesh } from './mesh.ts'

/** How long a server waits for the first frame (the request) after a stream opens. */
export const REQUEST_TIMEOUT_MS = 10_000
/** How long a refusal may take to send, and the other side to close after it. */
const REFUSE_MS = 5000

/** A reader of exactly `n` bytes (throws on a stream that ends first). */
export type ReadBytes = (n: number) => Promise<Uint8Array>

/** `bytes.read` as a ReadBytes, under `signal`. */
export function readerOf (bytes: ByteStream<Stream>, signal: AbortSignal): ReadBytes {
  return async (n) => (await bytes.read({ bytes: n, signal })).subarray()
}

/**
 * Reads one varint-length-prefixed frame of at most `max` bytes; a prefix of
 * more than 4 bytes (256 MiB and up) or a length over `max` is refused
 * (ValidationError naming `what`) before any of the frame is read.
 */
export async function readFrame (read: ReadBytes, max: number, what: string): Promise<Uint8Array> {
  let length = 0
  for (let i = 0; ; i++) {
    if (i >= 4) throw new ValidationError(what, 'has a length prefix that is too long')
    const b = (await read(1))[0] as number
    length += (b & 0x7f) * 2 ** (7 * i)
    if ((b & 0x80) === 0) break
  }
  if (length > max) throw new ValidationError(what, `is ${length} bytes, more than ${max} (too long)`)
  if (length === 0) return new Uint8Array(0)
  return await read(length)
}

/** Sends bytes when the muxer has room, else after it drains. */
export async function sendAll (stream: Stream, data: Uint8Array, signal: AbortSignal): Promise<void> {
  if (!stream.send(data)) await stream.onDrain({ signal })
}

/**
 * Sends an error frame and closes our side. A peer that keeps its side open
 * (or keeps sending) is cut off after a few seconds.
 */
export async function refuse (stream: Stream, frame: Uint8Array): Promise<void> {
  try {
    await sendAll(stream, frame, AbortSignal.timeout(REFUSE_MS))
    await stream.close({ signal: AbortSignal.timeout(REFUSE_MS) })
  } catch (err) {
    stream.abort(err as Error)
    return
  }
  if (stream.status === 'closed') return
  await new Promise<void>(resolve => {
    const timer = setTimeout(resolve, REFUSE_MS)
    timer.unref()
    stream.addEventListener('close', () => { clearTimeout(timer); resolve() }, { once: true })
  })
  // (Re-read: the await above may have changed it.)
  if ((stream.status as string) !== 'closed') stream.abort(new Error('peer kept the stream open after an error'))
}

/** The counters every stream service keeps. */
export interface StreamServiceCounters {
  /** Streams refused for their request (malformed, too long, too slow). */
  rejected: number
  /** Streams answered `busy`: every transfer slot taken. */
  busy: number
  /** Streams that failed once serving. */
  failed: number
}

export interface StreamServiceInit {
  protocol: string
  log: Logger
  /** Transfers served at once. */
  maxConcurrent: number
  /** What a transfer is called in logs: `image`, `repo-pull`. */
  what: string
}

/**
 * A server of one bulk-stream protocol. A subclass implements `serve`, which
 * reads the request with `readRequest`, takes a slot with `takeSlot` (or
 * refuses `busy`), and frees it when done; `controller` aborts when the
 * service stops.
 */
export abstract class StreamService<C extends StreamServiceCounters> {
  readonly counters: C
  protected readonly mesh: Mesh
  protected readonly log: Logger
  protected readonly maxConcurrent: number
  protected readonly controller = new AbortController()
  protected active = 0
  private readonly init: StreamServiceInit
  private started = false

  constructor (mesh: Mesh, init: StreamServiceInit, counters: C) {
    this.mesh = mesh
    this.init = init
    this.log = init.log
    this.maxConcurrent = init.maxConcurrent
    this.counters = counters
  }

  /** Transfers under way. */
  get activeTransfers (): number {
    return this.active
  }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    // More inbound streams than transfers: the extra ones get a quick `busy`, not a reset.
    await this.mesh.host.handle(this.init.protocol, (stream: Stream, connection: Connection) => {
      void this.serve(stream, connection.remotePeer).catch((err: Error) => {
        // Never thrown at libp2p: log, count, drop.
        this.counters.failed++
        this.log.warn(`${this.init.what} stream failed`, { error: err.message })
        stream.abort(err)
      })
    }, { maxInboundStreams: this.maxConcurrent + 8 })
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    this.controller.abort(new Error(`${this.init.what} server stopped`))
    await this.mesh.host.unhandle(this.init.protocol).catch(() => {})
  }

  protected abstract serve (stream: Stream, from: PeerId): Promise<void>

  /**
   * The request: the first frame, of at most `max` bytes, decoded, within
   * REQUEST_TIMEOUT_MS. Null when it is refused: then it has been counted,
   * logged and answered with `refusal(message)`.
   */
  protected async readRequest<T> (stream: Stream, bytes: ByteStream<Stream>, from: string, max: number, decode: (bytes: Uint8Array) => T, refusal: (message: string) => Uint8Array): Promise<T | null> {
    try {
      const signal = AbortSignal.any([AbortSignal.timeout(REQUEST_TIMEOUT_MS), this.controller.signal])
      return decode(await readFrame(readerOf(bytes, signal), max, 'request'))
    } catch (err) {
      this.counters.rejected++
      this.log.debug(`rejected ${this.init.what} request`, { from, error: (err as Error).message })
      await refuse(stream, refusal(`bad request: ${(err as Error).message}`))
      return null
    }
  }

  /**
   * A transfer slot, as its release (calling it twice is harmless), or null
   * when every slot is taken: then it has been counted and answered with
   * `busy(active)`.
   */
  protected async takeSlot (stream: Stream, busy: (active: number) => Uint8Array): Promise<(() => void) | null> {
    if (this.active >= this.maxConcurrent) {
      this.counters.busy++
      await refuse(stream, busy(this.active))
      return null
    }
    this.active++
    let held = true
    return () => {
      if (held) this.active--
      held = false
    }
  }
}
