/**
 * The cluster's own certificate authority, derived from the cluster key.
 *
 * Every node holds the cluster key, so every node derives the same CA key,
 * the same root certificate and the same serving certificate for the
 * cluster's domain, without asking anyone: no coordination, nothing to
 * replicate, and a node that joins or fails over issues nothing new.
 *
 * Why RSA and not ECDSA: a certificate is the same on every node only if its
 * signature is, and Node's crypto signs ECDSA with a random nonce (it has no
 * RFC 6979 option). RSA PKCS#1 v1.5 signatures are deterministic. The RSA
 * keys are derived deterministically too: primes searched from an HKDF
 * stream of the key, tested by OpenSSL's `checkPrime`.
 *
 * The root is name-constrained to the cluster's domain (RFC 5280 §4.2.1.10):
 * a phone that trusts it trusts it for `*.DOMAIN` only, so whoever holds the
 * cluster key cannot impersonate a bank to the people who installed the root.
 * The root therefore changes with the domain (`dcloud domain set`); its key
 * does not.
 *
 * No I/O; pure but for the CPU cost (~0.1 s per key on a PC, seconds on a
 * Raspberry Pi), so callers cache, and the prime tests run on libuv's thread
 * pool (`checkPrime`, not `checkPrimeSync`): the agent's event loop keeps
 * answering heartbeats meanwhile.
 */
import { checkPrime, createHash, createPrivateKey, createPublicKey, hkdfSync, sign, type KeyObject } from 'node:crypto'
import { bitString, boolean, explicit, ia5String, nullValue, octetString, oid, sequence, set, smallInteger, time, tlv, unsignedInteger, utf8String } from './der.ts'

/** The 32 secret bytes of a cluster key file's text (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits). */
export function clusterSecret (keyFile: Uint8Array): Buffer {
  const hex = new TextDecoder().decode(keyFile).trim().split(/\r?\n/)[2] ?? ''
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new Error('not a cluster key: expected 64 hex digits on its third line')
  return Buffer.from(hex, 'hex')
}

const E = 65537n
const SALT = 'dcloud front door CA v1'

function toBig (b: Buffer): bigint { return BigInt('0x' + b.toString('hex')) }
function toBytes (n: bigint, size?: number): Buffer {
  let hex = n.toString(16)
  if (hex.length % 2 === 1) hex = '0' + hex
  const b = Buffer.from(hex, 'hex')
  return size !== undefined && b.length < size ? Buffer.concat([Buffer.alloc(size - b.length), b]) : b
}
const b64url = (n: bigint): string => toBytes(n).toString('base64url')
function modInverse (a: bigint, m: bigint): bigint {
  let [r0, r1] = [a % m, m]
  let [s0, s1] = [1n, 0n]
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1]
  }
  if (r0 !== 1n) throw new Error('not invertible')
  return ((s0 % m) + m) % m
}
function gcd (a: bigint, b: bigint): bigint { while (b !== 0n) [a, b] = [b, a % b]; return a }

async function isPrime (c: bigint): Promise<boolean> {
  return await new Promise((resolve, reject) => { checkPrime(c, { checks: 64 }, (err, prime) => { if (err != null) reject(err); else resolve(prime) }) })
}

/** A 1024-bit prime p with gcd(e, p-1) = 1, the first after a start point taken from the HKDF stream. */
async function derivePrime (secret: Buffer, info: string): Promise<bigint> {
  const seed = Buffer.from(hkdfSync('sha256', secret, SALT, info, 128))
  seed[0] = (seed[0] ?? 0) | 0xc0 // top two bits: p*q has exactly 2048 bits
  seed[127] = (seed[127] ?? 0) | 1
  for (let c = toBig(seed); ; c += 2n) {
    if (gcd(E, c - 1n) === 1n && await isPrime(c)) return c
  }
}

/** An RSA-2048 private key, a pure function of (secret, label). */
export async function deriveRsaKey (secret: Buffer, label: string): Promise<KeyObject> {
  const [p, q] = await Promise.all([derivePrime(secret, `${label}/p`), derivePrime(secret, `${label}/q`)])
  if (p === q) throw new Error('derived equal primes') // 2^-1000: a broken HKDF, not bad luck
  const n = p * q
  const d = modInverse(E, (p - 1n) * (q - 1n))
  return createPrivateKey({
    format: 'jwk',
    key: { kty: 'RSA', n: b64url(n), e: b64url(E), d: b64url(d), p: b64url(p), q: b64url(q), dp: b64url(d % (p - 1n)), dq: b64url(d % (q - 1n)), qi: b64url(modInverse(q, p)) }
  })
}

// ---- certificates -----------------------------------------------------------

const SHA256_RSA = sequence(oid('1.2.840.113549.1.1.11'), nullValue())
const name = (cn: string): Buffer => sequence(set(sequence(oid('2.5.4.10'), utf8String('Dentropy Cloud'))), set(sequence(oid('2.5.4.3'), utf8String(cn))))
const extension = (id: string, critical: boolean, value: Buffer): Buffer => sequence(oid(id), ...(critical ? [boolean(true)] : []), octetString(value))
const keyId = (key: KeyObject): Buffer => createHash('sha1').update(createPublicKey(key).export({ type: 'spki', format: 'der' })).digest()

interface CertSpec {
  serial: Buffer
  issuer: Buffer
  subject: Buffer
  notBefore: Date
  notAfter: Date
  subjectKey: KeyObject
  issuerKey: KeyObject
  extensions: Buffer[]
}

function certificate (s: CertSpec): Buffer {
  const tbs = sequence(
    explicit(0, smallInteger(2)), // v3
    unsignedInteger(s.serial),
    SHA256_RSA,
    s.issuer,
    sequence(time(s.notBefore), time(s.notAfter)),
    s.subject,
    createPublicKey(s.subjectKey).export({ type: 'spki', format: 'der' }),
    explicit(3, sequence(...s.extensions))
  )
  return sequence(tbs, SHA256_RSA, bitString(sign('sha256', tbs, s.issuerKey)))
}

const pem = (label: string, der: Buffer): string => `-----BEGIN ${label}-----\n${der.toString('base64').match(/.{1,64}/g)?.join('\n') ?? ''}\n-----END ${label}-----\n`
/** A positive 16-byte serial, a digest of what it names. */
const serial = (...parts: string[]): Buffer => { const h = createHash('sha256').update(parts.join('\0')).digest().subarray(0, 16); h[0] = (h[0] ?? 0) & 0x7f | 0x01; return h }

export interface ClusterCa {
  domain: string
  rootDer: Buffer
  rootPem: string
  /** SHA-256 of the root, as browsers show it (AA:BB:...). */
  fingerprint: string
  key: KeyObject
}

export interface ServingCertificate {
  certPem: string
  keyPem: string
  /** The names it covers: the domain and every name one label below it. */
  names: string[]
  notBefore: Date
  notAfter: Date
}

/** The root's validity: fixed, so every node derives the same bytes. */
const ROOT_NOT_BEFORE = new Date('2025-01-01T00:00:00Z')
const ROOT_NOT_AFTER = new Date('2045-01-01T00:00:00Z')

/** The root certificate of the cluster's CA for `domain`: its key from the secret alone, its name constraint the domain. */
export function clusterCa (domain: string, caKey: KeyObject): ClusterCa {
  const subject = name(`Dentropy Cloud CA for ${domain}`)
  const ski = keyId(caKey)
  const rootDer = certificate({
    serial: serial('root', domain, ski.toString('hex')),
    issuer: subject,
    subject,
    notBefore: ROOT_NOT_BEFORE,
    notAfter: ROOT_NOT_AFTER,
    subjectKey: caKey,
    issuerKey: caKey,
    extensions: [
      extension('2.5.29.19', true, sequence(boolean(true), smallInteger(0))), // CA, path length 0: it signs servers only
      extension('2.5.29.15', true, Buffer.from([0x03, 0x02, 0x01, 0x06])), // keyCertSign, cRLSign
      extension('2.5.29.14', false, octetString(ski)),
      extension('2.5.29.30', true, sequence(tlv(0xa0, sequence(tlv(0x82, Buffer.from(domain, 'ascii')))))) // permitted: dNSName domain
    ]
  })
  const fingerprint = (createHash('sha256').update(rootDer).digest('hex').toUpperCase().match(/../g) ?? []).join(':')
  return { domain, rootDer, rootPem: pem('CERTIFICATE', rootDer), fingerprint, key: caKey }
}

/**
 * Serving certificates live for SERVING_DAYS and are replaced every
 * SERVING_STEP_DAYS: a node derives the one of the current step from the
 * clock, so all nodes serve the same one (for a few seconds around a step,
 * clocks apart, two valid ones). iOS refuses TLS certificates valid for more
 * than 825 days, whoever issued them; a fixed validity would break phones.
 */
export const SERVING_DAYS = 400
export const SERVING_STEP_DAYS = 200
const DAY = 86_400_000

/**
 * The wildcard certificate `*.DOMAIN` + `DOMAIN` for the step of `now`,
 * signed by the cluster CA. `names` other than those only for tests (a
 * certificate the name constraint must refuse).
 */
export function servingCertificate (ca: ClusterCa, servingKey: KeyObject, now: number, names = [ca.domain, `*.${ca.domain}`]): ServingCertificate {
  const step = Math.floor((now - ROOT_NOT_BEFORE.getTime()) / (SERVING_STEP_DAYS * DAY))
  // Starts a day before the step, for clocks behind.
  const notBefore = new Date(ROOT_NOT_BEFORE.getTime() + step * SERVING_STEP_DAYS * DAY - DAY)
  const notAfter = new Date(notBefore.getTime() + SERVING_DAYS * DAY)
  const der = certificate({
    serial: serial('serving', names.join(','), String(step), ca.fingerprint),
    issuer: name(`Dentropy Cloud CA for ${ca.domain}`),
    subject: name(names[0] ?? ca.domain),
    notBefore,
    notAfter,
    subjectKey: servingKey,
    issuerKey: ca.key,
    extensions: [
      extension('2.5.29.19', true, sequence()), // not a CA
      extension('2.5.29.15', true, Buffer.from([0x03, 0x02, 0x05, 0xa0])), // digitalSignature, keyEncipherment
      extension('2.5.29.37', false, sequence(oid('1.3.6.1.5.5.7.3.1'))), // serverAuth
      extension('2.5.29.17', false, sequence(...names.map(n => tlv(0x82, Buffer.from(n, 'ascii'))))),
      extension('2.5.29.14', false, octetString(keyId(servingKey))),
      extension('2.5.29.35', false, sequence(tlv(0x80, keyId(ca.key))))
    ]
  })
  return { certPem: pem('CERTIFICATE', der), keyPem: servingKey.export({ type: 'pkcs8', format: 'pem' }).toString(), names, notBefore, notAfter }
}

/**
 * The CA and serving certificate of a cluster for a domain, derived once per
 * (domain, step) and kept: the keys are derived once, on first use.
 */
export class ClusterTls {
  private readonly secret: Buffer
  private keys: Promise<{ ca: KeyObject, serving: KeyObject }> | undefined
  private ca: ClusterCa | undefined
  private serving: { key: string, cert: ServingCertificate } | undefined

  constructor (secret: Buffer) { this.secret = secret }

  private async derived (): Promise<{ ca: KeyObject, serving: KeyObject }> {
    this.keys ??= Promise.all([deriveRsaKey(this.secret, 'ca'), deriveRsaKey(this.secret, 'serving')]).then(([ca, serving]) => ({ ca, serving }))
    return await this.keys
  }

  async root (domain: string): Promise<ClusterCa> {
    const { ca } = await this.derived()
    if (this.ca?.domain !== domain) this.ca = clusterCa(domain, ca)
    return this.ca
  }

  async serve (domain: string, now: number): Promise<ServingCertificate> {
    const ca = await this.root(domain)
    const step = Math.floor((now - ROOT_NOT_BEFORE.getTime()) / (SERVING_STEP_DAYS * DAY))
    const key = `${domain}\0${step}`
    if (this.serving?.key !== key) this.serving = { key, cert: servingCertificate(ca, (await this.derived()).serving, now) }
    return this.serving.cert
  }
}
