/**
 * Who is calling the API: credentials, the client's address, and the brake on
 * guessing credentials.
 *
 * `authenticate` turns a request into a *principal*, or a refusal. Each kind
 * of credential is a `CredentialVerifier`; today there is the node's API
 * token, and user sessions (cookies, per-user tokens) will be further
 * verifiers returning a `user` principal. The Unix socket needs no credential:
 * whoever can open it (root and the `dcloud` group) administers the node.
 * Over TCP nothing is trusted for where it comes from, loopback included: on a
 * shared machine every local user, and every web page a local browser opens,
 * can reach 127.0.0.1.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { BlockList, isIP } from 'node:net'
import type { IncomingHttpHeaders } from 'node:http'

/** Who a request acts as; handlers see it as `Request.principal`. */
export type Principal =
  /** Opened the Unix socket: the node's administrator (root or the `dcloud` group). */
  | { kind: 'admin-socket' }
  /** Presented the node's API token (DATA_DIR/api.token): the node's administrator. */
  | { kind: 'token', token: 'node' }
  /** No credential, on a route open to anyone (GET /v1/health). */
  | { kind: 'anonymous' }

export type Transport = 'unix' | 'tcp'

export interface CredentialRequest {
  transport: Transport
  headers: IncomingHttpHeaders
  /** The client's address (see `TrustedProxies.clientAddress`). */
  client: string
}

export type Verdict = { ok: true, principal: Principal } | { ok: false, code: 'unauthorized' | 'forbidden', reason: string }

/**
 * One kind of credential. `verify` answers null when the request carries no
 * credential of its kind (the next verifier is asked), a principal when it
 * carries a good one, and a `forbidden` refusal when it carries a bad one.
 */
export interface CredentialVerifier {
  readonly kind: string
  verify: (req: CredentialRequest) => Verdict | null | Promise<Verdict | null>
}

/** The bearer token of an Authorization header, or null for none or another scheme. */
export function bearerToken (authorization: string | undefined): string | null {
  if (authorization === undefined) return null
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization)
  return m === null ? null : (m[1] as string)
}

/** The node's API token, compared in constant time (digests, so the length does not leak either). */
export function apiTokenVerifier (token: string): CredentialVerifier {
  if (token === '') throw new Error('the API token must not be empty')
  const expected = digest(token)
  return {
    kind: 'api-token',
    verify: ({ headers }) => {
      const given = bearerToken(headers.authorization)
      if (given === null) return null
      return timingSafeEqual(digest(given), expected)
        ? { ok: true, principal: { kind: 'token', token: 'node' } }
        : { ok: false, code: 'forbidden', reason: 'wrong bearer token' }
    }
  }
}

function digest (s: string): Buffer {
  return createHash('sha256').update(s).digest()
}

/** The Unix socket's file permissions are its access control; over TCP the first verifier that recognises a credential decides. */
export async function authenticate (req: CredentialRequest, verifiers: readonly CredentialVerifier[]): Promise<Verdict> {
  if (req.transport === 'unix') return { ok: true, principal: { kind: 'admin-socket' } }
  for (const v of verifiers) {
    const verdict = await v.verify(req)
    if (verdict !== null) return verdict
  }
  return { ok: false, code: 'unauthorized', reason: 'no credential' }
}

export function isLoopback (address: string | undefined): boolean {
  if (address === undefined) return false
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.')
}

/** An IPv4-mapped IPv6 address (how a dual-stack socket shows an IPv4 peer) as plain IPv4; lower case. */
export function normalizeAddress (address: string): string {
  const a = address.trim().toLowerCase()
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(a)
  return m !== null ? (m[1] as string) : a
}

/**
 * The proxies whose `X-Forwarded-For` we believe (`dcloud agent
 * --trusted-proxy ADDRESS|CIDR`; none by default). The front door (Caddy) on
 * this node will be one: behind it every request's socket peer is Caddy, and
 * rate limits and logs need the browser's address instead.
 */
export class TrustedProxies {
  private readonly list = new BlockList()
  readonly size: number

  constructor (entries: readonly string[]) {
    for (const e of entries) {
      const [addr, bits, ...rest] = e.split('/')
      const ip = normalizeAddress(addr ?? '')
      const family = isIP(ip)
      if (family === 0 || rest.length > 0) throw new Error(`trusted proxy ${e}: expected an IP address or CIDR, e.g. 127.0.0.1 or 10.0.0.0/8`)
      const type = family === 4 ? 'ipv4' : 'ipv6'
      if (bits === undefined) { this.list.addAddress(ip, type); continue }
      const prefix = Number(bits)
      if (!/^\d+$/.test(bits) || prefix > (family === 4 ? 32 : 128)) throw new Error(`trusted proxy ${e}: bad prefix length`)
      this.list.addSubnet(ip, prefix, type)
    }
    this.size = entries.length
  }

  has (address: string): boolean {
    const ip = normalizeAddress(address)
    const family = isIP(ip)
    return family !== 0 && this.list.check(ip, family === 4 ? 'ipv4' : 'ipv6')
  }

  /**
   * The client's address: the socket peer, unless the peer is a trusted proxy;
   * then the right-most hop of `X-Forwarded-For` that is not itself a trusted
   * proxy. Hops to the left of that one were written by the client, who may
   * write anything, so they are never believed. A trusted proxy that forwards
   * nothing usable is taken as the client itself.
   */
  clientAddress (peer: string | undefined, forwardedFor: string | string[] | undefined): string {
    const self = normalizeAddress(peer ?? 'unknown')
    if (this.size === 0 || forwardedFor === undefined || !this.has(self)) return self
    // Repeated headers are one list, in order (RFC 9110, 5.3).
    const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor).split(',').map(h => normalizeAddress(h)).filter(h => h !== '')
    let client = self
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i] as string
      if (isIP(hop) === 0) break
      client = hop
      if (!this.has(hop)) break
    }
    return client
  }
}

export interface FailureLimiterInit {
  /** Failures within `windowMs` that block the address. */
  maxFailures?: number
  windowMs?: number
  /** The first block; each further block of the same address doubles it, up to `maxBlockMs`. */
  blockMs?: number
  maxBlockMs?: number
  /** Addresses remembered at most; beyond, the stalest are forgotten. */
  maxEntries?: number
  now?: () => number
}

interface Entry {
  /** Failures in the current window, which started at `windowStart`. */
  failures: number
  windowStart: number
  /** How many times this address was blocked; the next block lasts blockMs * 2^strikes. */
  strikes: number
  blockedUntil: number
  lastFailure: number
}

/**
 * Failed credentials per client address. After `maxFailures` failures in a
 * window the address is blocked (429 with Retry-After), each new block twice
 * as long as the last. A success does not clear anything: on loopback every
 * local user shares 127.0.0.1, and one user's good token must not wipe the
 * record of another's guesses. Pure and clock-injected; memory is bounded by
 * `maxEntries`.
 */
export class FailureLimiter {
  private readonly entries = new Map<string, Entry>()
  private readonly maxFailures: number
  private readonly windowMs: number
  private readonly blockMs: number
  private readonly maxBlockMs: number
  private readonly maxEntries: number
  private readonly now: () => number

  constructor (init: FailureLimiterInit = {}) {
    this.maxFailures = init.maxFailures ?? 5
    this.windowMs = init.windowMs ?? 60_000
    this.blockMs = init.blockMs ?? 30_000
    this.maxBlockMs = init.maxBlockMs ?? 30 * 60_000
    this.maxEntries = init.maxEntries ?? 10_000
    this.now = init.now ?? Date.now
  }

  get size (): number { return this.entries.size }

  /** Milliseconds the address must still wait, or 0. */
  blockedFor (address: string): number {
    const e = this.entries.get(address)
    return e === undefined ? 0 : Math.max(0, e.blockedUntil - this.now())
  }

  /** Records a failed credential; returns how long the address is now blocked (0: not blocked). */
  fail (address: string): number {
    const now = this.now()
    let e = this.entries.get(address)
    if (e !== undefined && this.forgettable(e, now)) e = undefined
    if (e === undefined) {
      this.makeRoom(now)
      e = { failures: 0, windowStart: now, strikes: 0, blockedUntil: 0, lastFailure: now }
    }
    // Re-inserted, so the Map's order is least recently failed first: what `makeRoom` drops first.
    this.entries.delete(address)
    this.entries.set(address, e)
    if (now - e.windowStart >= this.windowMs) { e.failures = 0; e.windowStart = now }
    e.failures++
    e.lastFailure = now
    if (e.failures >= this.maxFailures) {
      e.blockedUntil = now + Math.min(this.maxBlockMs, this.blockMs * 2 ** e.strikes)
      e.strikes = Math.min(e.strikes + 1, 30)
      e.failures = 0
      e.windowStart = now
    }
    return Math.max(0, e.blockedUntil - now)
  }

  /**
   * An address is forgotten once it has been quiet (no failure, no block)
   * for as long as the longest block: its strikes no longer say anything.
   */
  private forgettable (e: Entry, now: number): boolean {
    return now - Math.max(e.lastFailure, e.blockedUntil) >= Math.max(this.windowMs, this.maxBlockMs)
  }

  private makeRoom (now: number): void {
    if (this.entries.size < this.maxEntries) return
    for (const [k, e] of this.entries) if (this.forgettable(e, now)) this.entries.delete(k)
    // Still full (a flood from many addresses): drop the least recently failing.
    for (const k of this.entries.keys()) {
      if (this.entries.size < this.maxEntries) break
      this.entries.delete(k)
    }
  }
}
