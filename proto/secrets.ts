/**
 * Replicated secrets on the wire: a named value sealed with a key every
 * member derives from the cluster key (agent/secrets/secrets.ts seals and
 * opens them). What travels, and what the replicated state stores, is only
 * the sealed form: a follower, a snapshot on disk or a backup of the state
 * never holds a secret in clear.
 */
import { ValidationError, record, string } from './validate.ts'

/**
 * A secret's name: lowercase path segments (`tls/notes.example.org`,
 * `acme/account-key`, `people/alice/totp`). The name is the AEAD's
 * associated data, so a sealed value moved under another name does not open.
 */
export const SECRET_NAME = /^[a-z0-9][a-z0-9._@-]{0,99}(\/[a-z0-9][a-z0-9._@-]{0,99}){0,7}$/
export const SECRET_NAME_MAX = 240
/** At most 48 KiB of plain bytes a secret (a certificate chain and its key fit many times). */
export const SECRET_MAX_BYTES = 48 * 1024
/** Every secret of the state together: it is replicated to every node and kept in each one's snapshot. */
export const SECRETS_MAX_COUNT = 4096
/** ... and their sealed bytes together, so that a snapshot of the state stays well within an append (APPEND_MAX_BYTES, 16 MiB). */
export const SECRETS_MAX_TOTAL = 4 * 1024 * 1024

/** The sealed size of the secrets, as counted against SECRETS_MAX_TOTAL. */
export function sealedSize (secrets: Record<string, SealedSecret>): number {
  return Object.entries(secrets).reduce((n, [name, s]) => n + name.length + s.data.length + s.nonce.length, 0)
}

/** The sealed form: AES-256-GCM, `nonce` 12 bytes, `data` the ciphertext with its 16-byte tag; all base64. */
export interface SealedSecret {
  /** The format's version: a later one can change the cipher without guessing. */
  v: 1
  /** Which key sealed it (16 hex digits, derived apart from the key itself): "another cluster's key" is told apart from "altered". */
  key: string
  nonce: string
  data: string
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/

export function decodeSecretName (raw: unknown, field = 'secret.name'): string {
  return string(raw, field, { min: 1, max: SECRET_NAME_MAX, pattern: SECRET_NAME })
}

export function decodeSealedSecret (raw: unknown, field = 'secret'): SealedSecret {
  const r = record(raw, field)
  if (r.v !== 1) throw new ValidationError(`${field}.v`, 'must be 1 (a newer agent sealed it? upgrade this one)')
  const nonce = string(r.nonce, `${field}.nonce`, { min: 16, max: 16, pattern: B64 })
  if (Buffer.from(nonce, 'base64').length !== 12) throw new ValidationError(`${field}.nonce`, 'must be 12 bytes')
  const data = string(r.data, `${field}.data`, { min: 24, max: Math.ceil((SECRET_MAX_BYTES + 16) / 3) * 4, pattern: B64 })
  if (Buffer.from(data, 'base64').length < 16) throw new ValidationError(`${field}.data`, 'is shorter than its authentication tag')
  return { v: 1, key: string(r.key, `${field}.key`, { min: 16, max: 16, pattern: /^[0-9a-f]{16}$/ }), nonce, data }
}

/** The state's secrets, by name. */
export function decodeSecrets (raw: unknown, field = 'desired.secrets'): Record<string, SealedSecret> {
  const r = record(raw, field)
  const names = Object.keys(r)
  if (names.length > SECRETS_MAX_COUNT) throw new ValidationError(field, `holds ${names.length} secrets; at most ${SECRETS_MAX_COUNT}`)
  const out: Record<string, SealedSecret> = {}
  for (const name of names.sort()) out[decodeSecretName(name, `${field} name`)] = decodeSealedSecret(r[name], `${field}.${name}`)
  if (sealedSize(out) > SECRETS_MAX_TOTAL) throw new ValidationError(field, `hold more than ${SECRETS_MAX_TOTAL} bytes sealed`)
  return out
}
