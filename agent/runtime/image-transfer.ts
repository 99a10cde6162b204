/**
 * Images from peer to peer: `/dcloud/image/1`. A node that lacks an image and
 * has no registry (an offline homelab) gets it from a node that has it, as
 * the bytes of `docker save` streamed into `docker load`, nothing on disk in
 * between.
 *
 *   requester                               server
 *   ---- varint length + {"ref":"..."} --->
 *   <--- varint length + {"ok":true,"size":N} (or {"ok":false,"error":...})
 *   <--- raw tar bytes ... FIN
 *
 * Backpressure runs end to end: the server sends only while `stream.send()`
 * says the muxer has room (else it waits for `onDrain()`), and the requester
 * pauses the stream (which stops yamux window updates, so the server's window
 * runs dry) whenever `docker load` is slower than the network.
 *
 * Both sides frame the JSON themselves on one `byteStream` each. The
 * requester cannot use `lpStream(...).unwrap()` for the header: it hands back
 * bytes read ahead with `stream.unshift()`, which throws once the server has
 * already sent everything and closed (a small image arrives in one TCP read).
 * The server cannot use `lpStream` to read the request: its reader keeps
 * waiting on a varint that never ends instead of refusing it.
 */
import { PassThrough } from 'node:stream'
import { byteStream } from '@libp2p/utils'
import type { PeerId, Stream } from '@libp2p/interface'
import type Docker from 'dockerode'
import {
  IMAGE_HEADER_MAX_BYTES, IMAGE_PROTOCOL, IMAGE_REQUEST_MAX_BYTES, decodeImageHeaderBytes, decodeImageRequestBytes, encodeJson, isImageRef,
  type ImageErrorCode, type ImageHeader
} from '../../proto/runtime.ts'
import { ValidationError, lengthPrefixed } from '../../proto/validate.ts'
import type { Mesh } from '../mesh/mesh.ts'
import { StreamService, readFrame, readerOf, refuse, sendAll } from '../mesh/stream-service.ts'
import { Watchdog, sleep } from '../util/async.ts'
import type { Logger } from '../util/log.ts'
import { hasImage, imageSize, loadImage, saveImage } from './images.ts'

export { IMAGE_PROTOCOL, lengthPrefixed }

/** Largest image a node accepts from a peer unless told otherwise. */
export const DEFAULT_MAX_IMAGE_BYTES = 8 * 1024 ** 3
/** A transfer with no bytes moving for this long is dead. */
export const DEFAULT_IDLE_TIMEOUT_MS = 30_000
/** Transfers a node serves at once; more are answered `busy` and the requester tries another peer. */
export const DEFAULT_MAX_CONCURRENT = 2
/** Bytes the requester may hold unread (the yamux window is at most 16 MiB). */
const RECEIVE_BUFFER_BYTES = 64 * 1024 * 1024
/** Progress is reported at most this often, by bytes or by time. */
const PROGRESS_BYTES = 1024 * 1024
const PROGRESS_MS = 1000

export type TransferErrorCode = ImageErrorCode | 'unreachable' | 'idle' | 'protocol'

export class ImageTransferError extends Error {
  override name = 'ImageTransferError'
  readonly code: TransferErrorCode
  /** The peer that failed, when one did. */
  readonly peer: string | undefined

  constructor (code: TransferErrorCode, message: string, peer?: string) {
    super(message)
    this.code = code
    this.peer = peer
  }
}

/** One progress report of one transfer (the ref is the caller's: it asked for it). */
export interface ImageTransferProgress {
  peer: string
  bytes: number
  /** The server's estimate of the archive's size (the image's size), when it sent one. */
  total: number | null
  ms: number
  done: boolean
}

export interface FetchImageOptions {
  signal: AbortSignal
  progress?: (p: ImageTransferProgress) => void
  /** Refuse archives larger than this. Default 8 GiB. */
  maxBytes?: number
  /** Give a peer up after this long without a byte. Default 30 s. */
  idleTimeoutMs?: number
  /** Rounds of retries when every peer that has the image is busy. Default 5. */
  busyRounds?: number
}

export interface FetchImageResult {
  /** The peer id the image came from. */
  from: string
  bytes: number
  ms: number
}

export interface ImageServerOptions {
  maxConcurrent?: number
  idleTimeoutMs?: number
}

export interface ImageServerCounters {
  served: number
  bytes: number
  notFound: number
  busy: number
  rejected: number
  failed: number
}


// ---------------------------------------------------------------------------
// Server

export class ImageServer extends StreamService<ImageServerCounters> {
  private readonly docker: Docker
  private readonly idleTimeoutMs: number

  constructor (mesh: Mesh, docker: Docker, log: Logger, opts: ImageServerOptions = {}) {
    super(mesh, { protocol: IMAGE_PROTOCOL, log, maxConcurrent: opts.maxConcurrent ?? DEFAULT_MAX_CONCURRENT, what: 'image' }, { served: 0, bytes: 0, notFound: 0, busy: 0, rejected: 0, failed: 0 })
    this.docker = docker
    this.idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS
  }

  protected async serve (stream: Stream, from: PeerId): Promise<void> {
    const peer = from.toString()
    const lp = byteStream(stream, { maxBufferSize: 64 * 1024 })
    const request = await this.readRequest(stream, lp, peer, IMAGE_REQUEST_MAX_BYTES, decodeImageRequestBytes, (message) => refusal('bad_request', message))
    if (request === null) return
    const { ref } = request
    const release = await this.takeSlot(stream, (active) => refusal('busy', `already serving ${active} image transfers; try another peer or again shortly`))
    if (release === null) return
    const idle = new Watchdog(this.idleTimeoutMs, () => new ImageTransferError('idle', `no progress for ${this.idleTimeoutMs / 1000} s`))
    const signal = AbortSignal.any([idle.signal, this.controller.signal])
    const started = performance.now()
    let sent = 0
    try {
      const size = await imageSize(this.docker, ref, signal)
      if (size === null) {
        this.counters.notFound++
        // The slot is free again before a slow requester gets its answer.
        idle.stop()
        release()
        await refuse(stream, refusal('not_found', `no image ${ref} on this node`))
        return
      }
      this.log.info('sending image', { ref, to: peer, size })
      const header: ImageHeader = { ok: true, size }
      await sendAll(stream, lengthPrefixed(encodeJson(header)), signal)
      const tar = await saveImage(this.docker, ref, signal)
      for await (const chunk of tar as AsyncIterable<Buffer>) {
        sent += chunk.byteLength
        idle.touch()
        // send() says false when the muxer's window is full: wait for the requester to read.
        await sendAll(stream, chunk, signal)
      }
      await stream.close({ signal })
      this.counters.served++
      this.counters.bytes += sent
      this.log.info('sent image', { ref, to: peer, bytes: sent, ms: Math.round(performance.now() - started) })
    } catch (err) {
      this.counters.failed++
      const reason = signal.aborted ? signal.reason as Error : err as Error
      this.log.warn('image transfer failed', { ref, to: peer, bytes: sent, error: reason.message })
      stream.abort(reason)
    } finally {
      idle.stop()
      release()
    }
  }
}

/** An error header: the requester learns why, rather than seeing a reset. */
function refusal (code: ImageErrorCode, message: string): Uint8Array {
  const header: ImageHeader = { ok: false, error: { code, message: message.slice(0, 2000) } }
  return lengthPrefixed(encodeJson(header))
}

/**
 * Serves this node's images to its peers on `/dcloud/image/1`. Any member of
 * the cluster (it holds the cluster key) may fetch any image present.
 */
export async function serveImages (mesh: Mesh, docker: Docker, log: Logger, opts: ImageServerOptions = {}): Promise<ImageServer> {
  const server = new ImageServer(mesh, docker, log, opts)
  await server.start()
  return server
}

// ---------------------------------------------------------------------------
// Requester

/**
 * Fetches `ref` into this node's engine from the first candidate that has it,
 * trying them in order. Peers that are busy are retried after the others, a
 * few rounds at most. Throws ImageTransferError: `not_found` when no
 * candidate had the image, otherwise the last failure, with every peer's
 * answer in the message.
 */
export async function fetchImageFromPeers (mesh: Mesh, docker: Docker, ref: string, candidates: PeerId[], opts: FetchImageOptions): Promise<FetchImageResult> {
  if (!isImageRef(ref)) throw new ImageTransferError('bad_request', `'${ref}' is not a Docker image reference`)
  if (candidates.length === 0) throw new ImageTransferError('not_found', `no peer to ask for ${ref}`)
  const failures: ImageTransferError[] = []
  let pending = [...candidates]
  const rounds = opts.busyRounds ?? 5
  for (let round = 0; round < rounds && pending.length > 0; round++) {
    if (round > 0) await sleep(Math.min(1000 * 2 ** (round - 1), 8000), opts.signal)
    const busy: PeerId[] = []
    for (const peer of pending) {
      opts.signal.throwIfAborted()
      try {
        return await fetchFrom(mesh, docker, ref, peer, opts)
      } catch (err) {
        opts.signal.throwIfAborted()
        const e = err instanceof ImageTransferError ? err : new ImageTransferError('failed', (err as Error).message, peer.toString())
        if (e.code === 'busy') busy.push(peer)
        else failures.push(e)
      }
    }
    pending = busy
  }
  for (const peer of pending) failures.push(new ImageTransferError('busy', 'still busy after retries', peer.toString()))
  const detail = failures.map(f => `${shortPeer(f.peer)}: ${f.message}`).join('; ')
  const code: TransferErrorCode = failures.every(f => f.code === 'not_found') ? 'not_found' : failures[failures.length - 1]?.code ?? 'failed'
  throw new ImageTransferError(code, `no peer could send ${ref} (${detail})`)
}

async function fetchFrom (mesh: Mesh, docker: Docker, ref: string, peerId: PeerId, opts: FetchImageOptions): Promise<FetchImageResult> {
  const peer = peerId.toString()
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_IMAGE_BYTES
  const idleMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS
  const idle = new Watchdog(idleMs, () => new ImageTransferError('idle', `no bytes from the peer for ${idleMs / 1000} s`, peer))
  const signal = AbortSignal.any([opts.signal, idle.signal])
  const started = performance.now()
  let stream: Stream
  try {
    stream = await mesh.host.dialProtocol(peerId, IMAGE_PROTOCOL, { signal })
  } catch (err) {
    idle.stop()
    throw new ImageTransferError('unreachable', `cannot open ${IMAGE_PROTOCOL}: ${(err as Error).message}`, peer)
  }
  // Aborting (idle, caller) resets the stream, which ends any read in progress.
  const onAbort = (): void => { stream.abort(signal.reason as Error) }
  signal.addEventListener('abort', onAbort, { once: true })
  stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, RECEIVE_BUFFER_BYTES)
  const bytes = byteStream(stream, { maxBufferSize: RECEIVE_BUFFER_BYTES })

  let received = 0
  let total: number | null = null
  let lastReport = { bytes: 0, at: started }
  const report = (done: boolean): void => {
    const now = performance.now()
    if (!done && received - lastReport.bytes < PROGRESS_BYTES && now - lastReport.at < PROGRESS_MS) return
    lastReport = { bytes: received, at: now }
    opts.progress?.({ peer, bytes: received, total, ms: now - started, done })
  }

  let body: PassThrough | undefined
  let loading: Promise<string[]> | undefined
  try {
    await sendAll(stream, lengthPrefixed(encodeJson({ ref })), signal)
    const header = decodeImageHeaderBytes(await readFrame(readerOf(bytes, signal), IMAGE_HEADER_MAX_BYTES, 'header'))
    if (!header.ok) throw new ImageTransferError(header.error.code, header.error.message, peer)
    total = header.size ?? null
    if (total !== null && total > maxBytes) throw new ImageTransferError('too_large', `the image is ${total} bytes, more than the limit of ${maxBytes}`, peer)
    idle.touch()

    body = new PassThrough({ highWaterMark: 1024 * 1024 })
    const sink = body
    loading = loadImage(docker, sink, signal, ref)
    // Settles early only when the engine refuses the archive: stop sending it bytes then.
    let loadFailed: Error | undefined
    loading.catch((err: Error) => { loadFailed = err; sink.destroy(err) })

    while (true) {
      const chunk = await bytes.read({ signal })
      if (chunk === null) break
      if (loadFailed !== undefined) throw loadFailed
      received += chunk.byteLength
      if (received > maxBytes) throw new ImageTransferError('too_large', `the peer sent more than the limit of ${maxBytes} bytes`, peer)
      idle.touch()
      report(false)
      let room = true
      for (const buf of chunk) room = sink.write(buf)
      if (!room) {
        // docker load is behind: stop reading, so yamux stops granting the server window.
        // (Once the server has closed and everything arrived, there is nothing left to pause.)
        const pause = stream.readStatus === 'readable'
        if (pause) stream.pause()
        await drained(sink, signal)
        idle.touch()
        if (pause && stream.readStatus === 'paused') stream.resume()
      }
    }
    // read() returns null on a reset too: only a clean close means the archive is whole.
    if (stream.status === 'reset' || stream.status === 'aborted') throw new ImageTransferError('failed', `the peer broke off after ${received} bytes`, peer)
    sink.end()
    await loading
    await stream.close({ signal }).catch(() => {})
    report(true)
    return { from: peer, bytes: received, ms: performance.now() - started }
  } catch (err) {
    const reason = signal.aborted && !opts.signal.aborted ? signal.reason as Error : err as Error
    stream.abort(reason)
    if (body !== undefined && loading !== undefined) {
      body.destroy(reason)
      // Wait for the engine to drop the request: only then is "nothing was tagged" true.
      await loading.catch(() => {})
      const present = await hasImage(docker, ref, AbortSignal.timeout(10_000)).catch(() => false)
      const e = asTransferError(reason, peer)
      throw new ImageTransferError(e.code, `${e.message} after ${received} bytes; ${present ? `${ref} is on the engine all the same (docker load completed)` : 'docker load tagged nothing, no half-loaded image is left'}`, peer)
    }
    throw asTransferError(reason, peer)
  } finally {
    idle.stop()
    signal.removeEventListener('abort', onAbort)
  }
}

function asTransferError (err: Error, peer: string): ImageTransferError {
  if (err instanceof ImageTransferError) return err.peer === undefined ? new ImageTransferError(err.code, err.message, peer) : err
  if (err instanceof ValidationError) return new ImageTransferError('protocol', `the peer sent a bad message: ${err.message}`, peer)
  return new ImageTransferError('failed', err.message, peer)
}

// ---------------------------------------------------------------------------
// Helpers

async function drained (sink: PassThrough, signal: AbortSignal): Promise<void> {
  if (sink.destroyed) throw sink.errored ?? new Error('docker load stopped reading')
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error): void => {
      sink.off('drain', onDrain)
      sink.off('close', onClose)
      signal.removeEventListener('abort', onAbort)
      if (err !== undefined) reject(err)
      else resolve()
    }
    const onDrain = (): void => { done() }
    const onClose = (): void => { done(sink.errored ?? new Error('docker load stopped reading')) }
    const onAbort = (): void => { done(signal.reason as Error) }
    sink.once('drain', onDrain)
    sink.once('close', onClose)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

function shortPeer (peer: string | undefined): string {
  return peer === undefined ? 'peer' : `…${peer.slice(-8)}`
}
