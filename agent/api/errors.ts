/**
 * What a failure inside an API handler answers: the one mapping from the
 * agent's errors (the cluster's RpcErrors, UserErrors with their sysexits
 * code) to the API's catalogued codes, so a caller sees the message and the
 * hint of an error it can act on, never a bare `internal`.
 */
import type { ApiErrorCode } from '../../proto/api.ts'
import { RpcError, rpcFailureOf } from '../mesh/rpc.ts'
import { UserError } from '../util/errors.ts'
import { ApiError } from './server.ts'
import { ValidationError } from '../../proto/validate.ts'

export interface ApiFailure {
  code: ApiErrorCode
  message: string
  hint?: string
}

/** The cluster's error codes (rpcFailureOf's), as the API answers them. */
const RPC_TO_API: Record<string, ApiErrorCode> = {
  not_found: 'not_found',
  exists: 'conflict',
  conflict: 'conflict',
  stale_term: 'conflict',
  no_leader: 'no_leader',
  not_leader: 'no_leader',
  unreachable: 'unavailable',
  unavailable: 'unavailable',
  bad_request: 'bad_request',
  no_space: 'insufficient_storage',
  // The other node tried and failed; its message says why.
  failed: 'peer_failed',
  // Its answer did not decode: another version, or a bug.
  bad_response: 'bad_response'
}

/**
 * The API's answer for an error a handler threw; null for a bug (answered
 * `internal`, logged with its stack). An error the agent can name (a
 * UserError, the cluster's RpcError, a full disk) keeps its message and hint
 * and gets the code that fits it: the classification is rpcFailureOf's, the
 * one the RPC server answers peers with, so an error means the same from this
 * node and from another. A UserError with no more specific code is `failed`.
 */
export function apiFailureOf (err: unknown): ApiFailure | null {
  const f = rpcFailureOf(err)
  const hint = f.hint !== undefined ? { hint: f.hint } : {}
  // A code this node does not know came from a peer (a newer one, say): its message is the peer's.
  if (err instanceof RpcError) return { code: RPC_TO_API[f.code] ?? 'peer_failed', message: f.message, ...hint }
  if (f.code === 'failed' && !(err instanceof UserError)) return null
  return { code: f.code === 'failed' ? 'failed' : RPC_TO_API[f.code] ?? 'failed', message: f.message, ...hint }
}

/** Runs a decoder of request input; its ValidationError is the caller's mistake: 400 naming the field. */
export function decodeOrBadRequest<T> (decode: () => T): T {
  try {
    const out = decode()
    // An async check (a host path resolved on this node): its ValidationError is a bad request too.
    if (out instanceof Promise) return out.catch((err: Error) => { throw err instanceof ValidationError ? new ApiError('bad_request', err.message) : err }) as T
    return out
  } catch (err) {
    throw new ApiError('bad_request', (err as Error).message)
  }
}
