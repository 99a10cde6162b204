/**
 * Public certificates from an ACME CA (Let's Encrypt, or Pebble in the lab),
 * as the replicated state keeps them: the user's choice of CA, the HTTP-01
 * answers every node's front door serves while an order is open, and the
 * last failure, so `dcloud domain show` says the same on every node. The
 * certificates and their keys are replicated secrets (proto/secrets.ts).
 */
import type { DesiredChange } from './cluster.ts'
import { decodeSealedSecret, decodeSecretName } from './secrets.ts'
import { ValidationError, number, record, string } from './validate.ts'

/** `dcloud domain set DOMAIN --acme URL --email ADDR [--acme-ca-root FILE]`. */
export interface AcmeSettings {
  /** The CA's directory URL (https). */
  directory: string
  /** The account's contact, or null (Let's Encrypt accepts none). */
  email: string | null
  /** A root to trust for the directory's own HTTPS (a test CA like Pebble's), PEM; null: the system's roots. */
  caRootPem: string | null
}

/** The last ACME failure, as the node ordering saw it; null once an order succeeds. */
export interface AcmeFailure { message: string, at: number, host: string }

const MAX_INT = 2 ** 53 - 1
/** RFC 8555 §8.1: a token is base64url, at least 128 bits of entropy. */
export const ACME_TOKEN = /^[A-Za-z0-9_-]{22,128}$/
/** token.thumbprint: both base64url. */
const KEY_AUTHORIZATION = /^[A-Za-z0-9_-]{22,128}\.[A-Za-z0-9_-]{43}$/
const EMAIL = /^[^\s@<>()"',;:\\]{1,64}@[a-z0-9.-]{1,190}$/i
const PEM_CERTS = /^(-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\s*)+$/
/** Open orders of one node at a time, a few authorizations each: a bound, not a tuning knob. */
export const CHALLENGES_MAX = 256

/** The prefix of the secrets holding certificates (`tls/HOST`: `{certPem, keyPem}`) and the account key. */
export const ACME_CERT_SECRET = 'tls/'
export const ACME_ACCOUNT_SECRET = 'acme/account-key'
export const certSecretName = (host: string): string => `${ACME_CERT_SECRET}${host}`

export function decodeAcmeSettings (raw: unknown, field = 'acme'): AcmeSettings {
  const r = record(raw, field)
  const directory = string(r.directory, `${field}.directory`, { min: 9, max: 2048 })
  let url: URL
  try { url = new URL(directory) } catch { throw new ValidationError(`${field}.directory`, `${JSON.stringify(directory)} is not a URL; give the CA's directory, like https://acme-v02.api.letsencrypt.org/directory`) }
  if (url.protocol !== 'https:') throw new ValidationError(`${field}.directory`, 'must be an https:// URL (RFC 8555 requires HTTPS)')
  if (url.username !== '' || url.password !== '') throw new ValidationError(`${field}.directory`, 'must not carry a user name or password')
  const email = r.email === undefined || r.email === null ? null : string(r.email, `${field}.email`, { max: 254, pattern: EMAIL })
  const caRootPem = r.caRootPem === undefined || r.caRootPem === null ? null : string(r.caRootPem, `${field}.caRootPem`, { min: 60, max: 64 * 1024, pattern: PEM_CERTS })
  return { directory: url.toString(), email, caRootPem }
}

export function decodeAcmeFailure (raw: unknown, field = 'acmeFailure'): AcmeFailure {
  const r = record(raw, field)
  return {
    message: string(r.message, `${field}.message`, { max: 2000 }),
    at: number(r.at, `${field}.at`, { min: 0, max: MAX_INT, integer: true }),
    host: string(r.host, `${field}.host`, { max: 253 })
  }
}

/** The HTTP-01 answers, token -> key authorization. */
export function decodeChallenges (raw: unknown, field = 'desired.challenges'): Record<string, string> {
  const r = record(raw, field)
  if (Object.keys(r).length > CHALLENGES_MAX) throw new ValidationError(field, `more than ${CHALLENGES_MAX} open challenges`)
  const out: Record<string, string> = {}
  for (const [token, auth] of Object.entries(r)) {
    if (!ACME_TOKEN.test(token)) throw new ValidationError(`${field}.${token.slice(0, 40)}`, 'is not an ACME token (base64url)')
    out[token] = keyAuthorization(auth, `${field}.${token}`, token)
  }
  return out
}

function keyAuthorization (raw: unknown, field: string, token: string): string {
  const auth = string(raw, field, { max: 200, pattern: KEY_AUTHORIZATION })
  if (!auth.startsWith(`${token}.`)) throw new ValidationError(field, 'does not start with its token')
  return auth
}

/** The changes of this module, from `decodeChange` (proto/cluster.ts). */
export function decodeAcmeChange (r: Record<string, unknown>): DesiredChange {
  switch (r.kind) {
    case 'acme': return { kind: 'acme', acme: r.acme === null ? null : decodeAcmeSettings(r.acme, 'change.acme') }
    case 'secret': {
      const name = decodeSecretName(r.name, 'change.name')
      return { kind: 'secret', name, sealed: r.sealed === null ? null : decodeSealedSecret(r.sealed, 'change.sealed') }
    }
    case 'challenge': {
      const token = string(r.token, 'change.token', { max: 128, pattern: ACME_TOKEN })
      return { kind: 'challenge', token, keyAuthorization: r.keyAuthorization === null ? null : keyAuthorization(r.keyAuthorization, 'change.keyAuthorization', token) }
    }
    case 'acme-failure': return { kind: 'acme-failure', failure: r.failure === null ? null : decodeAcmeFailure(r.failure, 'change.failure') }
    default: throw new ValidationError('change.kind', 'is not an ACME or secret change')
  }
}

/** A certificate as its replicated secret holds it: the chain the CA returned and its key. */
export interface StoredCertificate { certPem: string, keyPem: string }

export function decodeStoredCertificate (raw: unknown, field = 'certificate'): StoredCertificate {
  const r = record(raw, field)
  return {
    certPem: string(r.certPem, `${field}.certPem`, { min: 60, max: 32 * 1024, pattern: PEM_CERTS }),
    keyPem: string(r.keyPem, `${field}.keyPem`, { min: 60, max: 8 * 1024, pattern: /^-----BEGIN (EC |RSA )?PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]+-----END (EC |RSA )?PRIVATE KEY-----\s*$/ })
  }
}
