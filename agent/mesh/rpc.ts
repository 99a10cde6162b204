/**
 * Request/response between agents over libp2p streams: one length-prefixed
 * JSON request, one length-prefixed JSON response, then the stream closes.
 * Protocols that stream bulk data (images) use `openStream` and frame the rest
 * themselves.
 *
 * The server validates every request with the protocol's own decoder before
 * the handler sees it; a bad or oversized request gets an error response (or
 * a reset) and is counted, never thrown.
 */
import { lpStream } from '@libp2p/utils'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import type { Mesh } from './mesh.ts'
import { ThrottledLog, type Logger } from '../util/log.ts'
import { EXIT, UserError } from '../util/errors.ts'

export const RPC_MAX_BYTES = 1024 * 1024

export class RpcError extends Error {
  override name = 'RpcError'
  readonly code: string
  /** What the user can do about it, when the node that failed said. */
  readonly hint: string | undefined

  constructor (code: string, message: string, hint?: string) {
    super(message)
    this.code = code
    this.hint = hint
  }
}

/** An RPC's error answer: a code (`not_found`, `exists`, `failed`, ...), a message and maybe a hint. */
export interface RpcFailure { code: string, message: string, hint?: string }

/** A UserError's RPC code, by its sysexits code; any other is `failed`. */
const EXIT_TO_RPC: Partial<Record<number, string>> = {
  [EXIT.usage]: 'bad_request',
  [EXIT.dataError]: 'bad_request',
  [EXIT.noInput]: 'not_found',
  [EXIT.cantCreate]: 'exists',
  [EXIT.tempFail]: 'unavailable',
  [EXIT.unavailable]: 'unavailable'
}

/**
 * What a handler's error answers: the one classification of the agent's
 * errors, which the API uses too (agent/api/errors.ts). A UserError keeps its
 * meaning and its hint across the cluster, so an error a user can act on
 * reaches them from whichever node it happened on. A full disk is `no_space`
 * (the API answers 507 with the error's advice): without this, a snapshot
 * asked of another node whose disk is full (test/lab/full-disk.test.ts)
 * reached the CLI as `internal`, exit 70, with no advice.
 */
export function rpcFailureOf (err: unknown): RpcFailure {
  const e = err as Error & { code?: unknown, hint?: unknown }
  const hint = typeof e.hint === 'string' ? { hint: e.hint } : {}
  if (err instanceof RpcError) return { code: err.code, message: err.message, ...hint }
  if (e.name === 'DiskFullError' || e.name === 'NoSpaceError' || (e.name === 'RepoSyncError' && e.code === 'no_space')) {
    return { code: 'no_space', message: e.message, ...hint }
  }
  if (err instanceof UserError) return { code: EXIT_TO_RPC[err.exitCode] ?? 'failed', message: err.message, ...hint }
  return { code: 'failed', message: e.message }
}

/** The RpcError for an error answer as it came off the wire (untrusted: anything not a string is replaced). */
export function rpcErrorOf (raw: unknown): RpcError {
  const e = typeof raw === 'object' && raw !== null ? raw as Record<string, unknown> : {}
  const text = (v: unknown, max: number): string | undefined => typeof v === 'string' ? v.slice(0, max) : undefined
  return new RpcError(text(e.code, 64) ?? 'failed', text(e.message, 4000) ?? 'the peer refused', text(e.hint, 2000))
}

export type RpcResult<T> = { ok: true, value: T } | { ok: false, error: RpcFailure }

export interface RpcHandler<Req, Res> {
  protocol: string
  /** Validates untrusted input; throws with a message naming the field. */
  decode: (raw: unknown) => Req
  handle: (req: Req, from: PeerId, signal: AbortSignal) => Promise<Res>
  maxRequestBytes?: number
  timeoutMs?: number
}

export interface RpcCounters { served: number, rejected: number, failed: number }

export class RpcServer {
  readonly counters: RpcCounters = { served: 0, rejected: 0, failed: 0 }
  private readonly mesh: Mesh
  private readonly log: Logger
  /** Requests refused for their content, logged with their sender (throttled: a peer's flood must not flood the journal). */
  private readonly refusals: ThrottledLog
  private readonly protocols: string[] = []

  constructor (mesh: Mesh, log: Logger) {
    this.mesh = mesh
    this.log = log
    this.refusals = new ThrottledLog(log)
  }

  async register<Req, Res> (h: RpcHandler<Req, Res>): Promise<void> {
    this.protocols.push(h.protocol)
    await this.mesh.host.handle(h.protocol, (stream: Stream, connection: Connection) => {
      void this.serve(h, stream, connection.remotePeer)
    }, { maxInboundStreams: 64 })
  }

  async stop (): Promise<void> {
    for (const p of this.protocols.splice(0)) await this.mesh.host.unhandle(p).catch(() => {})
  }

  private async serve<Req, Res> (h: RpcHandler<Req, Res>, stream: Stream, from: PeerId): Promise<void> {
    const signal = AbortSignal.timeout(h.timeoutMs ?? 30_000)
    const lp = lpStream(stream, { maxDataLength: h.maxRequestBytes ?? 64 * 1024 })
    let response: RpcResult<Res>
    try {
      const bytes = await lp.read({ signal })
      let req: Req
      try {
        req = h.decode(JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray())))
      } catch (err) {
        this.counters.rejected++
        this.refusals.warn(h.protocol, 'refused a malformed request', { protocol: h.protocol, from: from.toString(), error: (err as Error).message })
        response = { ok: false, error: { code: 'bad_request', message: (err as Error).message } }
        await lp.write(encode(response), { signal })
        await stream.close({ signal }).catch(() => {})
        return
      }
      try {
        response = { ok: true, value: await h.handle(req, from, signal) }
        this.counters.served++
      } catch (err) {
        this.counters.failed++
        response = { ok: false, error: rpcFailureOf(err) }
      }
      await lp.write(encode(response), { signal })
      await stream.close({ signal }).catch(() => {})
    } catch (err) {
      // Oversized, truncated or too slow: nothing to answer on a broken stream.
      this.counters.rejected++
      this.log.debug('rpc stream failed', { protocol: h.protocol, from: from.toString(), error: (err as Error).message })
      stream.abort(err as Error)
    }
  }
}

function encode (value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value))
}

/**
 * Calls `protocol` on `peer`. Returns the decoded value or throws RpcError with
 * the remote's error code ('unreachable' when no stream could be opened).
 */
export async function rpcCall<Res> (mesh: Mesh, peer: PeerId, protocol: string, request: unknown, opts: { signal?: AbortSignal, decode: (raw: unknown) => Res, maxResponseBytes?: number, timeoutMs?: number }): Promise<Res> {
  const signal = AbortSignal.any([AbortSignal.timeout(opts.timeoutMs ?? 30_000), ...(opts.signal !== undefined ? [opts.signal] : [])])
  let stream: Stream
  try {
    stream = await mesh.host.dialProtocol(peer, protocol, { signal })
  } catch (err) {
    throw new RpcError('unreachable', `cannot reach ${peer.toString()} for ${protocol}: ${(err as Error).message}`)
  }
  const lp = lpStream(stream, { maxDataLength: opts.maxResponseBytes ?? RPC_MAX_BYTES })
  let bytes: Uint8Array
  try {
    await lp.write(encode(request), { signal })
    bytes = (await lp.read({ signal })).subarray()
    await stream.close({ signal }).catch(() => {})
  } catch (err) {
    stream.abort(err as Error)
    throw new RpcError('failed', `${protocol} with ${peer.toString()}: ${(err as Error).message}`)
  }
  return rpcAnswerOf(bytes, opts.decode, `${protocol} from ${peer.toString()}`)
}

/**
 * A response's bytes, read: the value the protocol's decoder accepts, or the
 * peer's error as an RpcError. An answer that is not JSON, not an RPC
 * result, or whose value the decoder refuses is `bad_response` (the API
 * answers 502): a peer's answer is checked like any input, never cast.
 */
export function rpcAnswerOf<Res> (bytes: Uint8Array, decode: (raw: unknown) => Res, from: string): Res {
  let raw: unknown
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch {
    throw new RpcError('bad_response', `${from}: the answer is not JSON`)
  }
  if (typeof raw !== 'object' || raw === null || typeof (raw as { ok?: unknown }).ok !== 'boolean') throw new RpcError('bad_response', `${from}: the answer is not an RPC result`)
  const result = raw as RpcResult<unknown>
  if (!result.ok) throw rpcErrorOf((result as { error?: unknown }).error)
  try {
    return decode(result.value)
  } catch (err) {
    throw new RpcError('bad_response', `${from}: ${(err as Error).message}`)
  }
}
