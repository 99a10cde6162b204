/**
 * What a failure inside an API handler answers: the one mapping from the
 * agent's errors (the cluster's RpcErrors, UserErrors with their sysexits
 * code) to the API's catalogued codes, so a caller sees the message and the
 * hint of an error it can act on, never a bare `internal`.
 */
import type { ApiErrorCode } from '../../proto/api.ts'
import { RpcError } from '../mesh/rpc.ts'
import { EXIT, UserError } from '../util/errors.ts'

export interface ApiFailure {
  code: ApiErrorCode
  message: string
  hint?: string
}

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
  no_space: 'insufficient_storage'
}

const EXIT_TO_API: Partial<Record<number, ApiErrorCode>> = {
  [EXIT.usage]: 'bad_request',
  [EXIT.dataError]: 'bad_request',
  [EXIT.noInput]: 'not_found',
  [EXIT.cantCreate]: 'conflict',
  [EXIT.tempFail]: 'unavailable',
  [EXIT.unavailable]: 'unavailable'
}

/** The API's answer for an error a handler threw; null for a bug (answered `internal`, logged). */
export function apiFailureOf (err: unknown): ApiFailure | null {
  if (err instanceof RpcError) return { code: RPC_TO_API[err.code] ?? 'internal', message: err.message }
  if (!(err instanceof UserError)) return null
  const hint = err.hint !== undefined ? { hint: err.hint } : {}
  // A full disk, ours (NoSpaceError) or restic's (DiskFullError).
  if (err.name === 'NoSpaceError' || err.name === 'DiskFullError') return { code: 'insufficient_storage', message: err.message, ...hint }
  return { code: EXIT_TO_API[err.exitCode] ?? 'internal', message: err.message, ...hint }
}
