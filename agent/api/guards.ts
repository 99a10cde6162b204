/**
 * The checks every request passes before a handler runs, as pure functions of
 * headers (and an injected clock), so each is unit-tested on its own and
 * wired once in `ApiServer`.
 *
 * - Host: a page on evil.example whose DNS name is re-pointed at 127.0.0.1
 *   (DNS rebinding) is same-origin with the API in the browser's eyes and
 *   could read it; the Host header still says evil.example, so only names
 *   the agent serves are accepted.
 * - Origin: a page of another site can send (not read) a POST to the API with
 *   `mode: 'no-cors'`; browsers name the page in `Origin`, which must be the
 *   API's own origin for anything that changes state.
 * - Content-Type: the `no-cors` requests a browser lets any page send carry
 *   only text/plain, form or multipart bodies, so insisting on
 *   application/json shuts that door even where Origin is missing.
 */
import { hostname as osHostname, networkInterfaces } from 'node:os'
import type { IncomingHttpHeaders } from 'node:http'
import { API_REFUSALS, type ApiMetrics, type ApiRefusal } from '../../proto/api.ts'
import type { Logger } from '../util/log.ts'

export function splitHostPort (value: string): { host: string, port: number } {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(value)
  if (m === null) throw new Error(`expected HOST:PORT, got ${value}`)
  return { host: m[1] ?? '', port: Number(m[2]) }
}

/** A Host header (`name`, `name:port`, `1.2.3.4:port`, `[::1]:port`) as a lower-case host without brackets and a port; null when malformed. */
export function parseHostHeader (value: string | undefined): { host: string, port: number | null } | null {
  if (value === undefined || value === '' || value.length > 300) return null
  let host: string
  let port: number | null = null
  if (value.startsWith('[')) {
    const m = /^\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?$/.exec(value)
    if (m === null) return null
    host = m[1] as string
    port = m[2] === undefined ? null : Number(m[2])
  } else if (value.includes(':')) {
    if (!/^[^:]+:\d{1,5}$/.test(value)) return null
    const hp = splitHostPort(value)
    host = hp.host
    port = hp.port
  } else {
    host = value
  }
  host = host.toLowerCase().replace(/\.$/, '')
  if (!/^[a-z0-9._:-]+$/.test(host) || (port !== null && port > 65535)) return null
  return { host, port }
}

export interface HostPolicyInit {
  /** The host of the TCP bind (`--api HOST:PORT`); a wildcard (0.0.0.0, ::) adds nothing. */
  bindHost: string | null
  /** Extra names (`--api-host`), e.g. the front door's domain. */
  names?: readonly string[]
  /** The node's name in the cluster. */
  nodeName?: string
  hostname?: () => string
  /** The addresses of the node's interfaces; default os.networkInterfaces(). */
  interfaces?: () => string[]
  now?: () => number
}

/** Interfaces change (DHCP, a new VPN): on a miss they are read again, at most this often. */
const INTERFACES_REFRESH_MS = 10_000

/** The Host names the agent serves over TCP. */
export class HostPolicy {
  private readonly fixed = new Set<string>(['localhost', '127.0.0.1', '::1'])
  private addresses = new Set<string>()
  private readAt = -Infinity
  private readonly interfaces: () => string[]
  private readonly now: () => number

  constructor (init: HostPolicyInit) {
    const add = (n: string | undefined): void => {
      const h = parseHostHeader(n)?.host
      if (h !== undefined) this.fixed.add(h)
    }
    if (init.bindHost !== null && init.bindHost !== '0.0.0.0' && init.bindHost !== '::' && init.bindHost !== '') add(init.bindHost.includes(':') ? `[${init.bindHost}]` : init.bindHost)
    for (const n of init.names ?? []) add(n)
    const hostname = (init.hostname ?? osHostname)()
    for (const n of [init.nodeName, hostname, hostname.split('.')[0]]) {
      if (n === undefined || n === '') continue
      add(n)
      add(`${n}.local`)
    }
    this.interfaces = init.interfaces ?? interfaceAddresses
    this.now = init.now ?? Date.now
  }

  /** Whether a request's Host header names this agent (any port: the port does not make a name ours or not). */
  allows (hostHeader: string | undefined): boolean {
    const h = parseHostHeader(hostHeader)
    if (h === null) return false
    if (this.fixed.has(h.host) || this.addresses.has(h.host)) return true
    if (this.now() - this.readAt < INTERFACES_REFRESH_MS) return false
    this.readAt = this.now()
    this.addresses = new Set(this.interfaces().map(a => a.toLowerCase()))
    return this.addresses.has(h.host)
  }
}

function interfaceAddresses (): string[] {
  return Object.values(networkInterfaces()).flatMap(list => (list ?? []).map(i => i.address.replace(/%.*$/, '')))
}

export const STATE_CHANGING = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])

/**
 * Whether a state-changing request's `Origin` (when a browser sent one) is
 * the API's own origin: scheme http (https too behind a trusted TLS proxy),
 * and the same host and port as the (already checked) Host header. Returns
 * the reason to refuse, or null.
 */
export function originRefusal (origin: string | undefined, hostHeader: string | undefined, opts: { httpsAllowed: boolean }): string | null {
  if (origin === undefined) return null
  if (origin === 'null') return 'Origin: null (a sandboxed frame, a file: page or a redirect across sites)'
  let url: URL
  try { url = new URL(origin) } catch { return 'Origin is not a URL' }
  const https = url.protocol === 'https:'
  if (url.protocol !== 'http:' && !(https && opts.httpsAllowed)) return `Origin scheme ${url.protocol} is not the API's`
  const host = parseHostHeader(hostHeader)
  if (host === null) return 'no valid Host header'
  const defaultPort = https ? 443 : 80
  const originHost = url.hostname.replace(/^\[|\]$/g, '').toLowerCase()
  const originPort = url.port === '' ? defaultPort : Number(url.port)
  if (originHost !== host.host || originPort !== (host.port ?? defaultPort)) return `Origin ${url.origin} is not this API's origin`
  return null
}

/** The media type of a Content-Type header (`application/json; charset=utf-8` → `application/json`), lower case; null when absent. */
export function mediaType (contentType: string | undefined): string | null {
  if (contentType === undefined) return null
  return (contentType.split(';')[0] ?? '').trim().toLowerCase()
}

/** Whether a request carries a body at all (a GET, or a POST with Content-Length: 0, does not). */
export function hasBody (headers: IncomingHttpHeaders): boolean {
  if (headers['transfer-encoding'] !== undefined) return true
  const length = headers['content-length']
  return length !== undefined && length !== '0'
}

/** What a refusal's log line says about who sent it. */
export interface RefusalContext {
  client: string
  method: string
  path: string
  userAgent: string | undefined
}

/**
 * Counts refusals by kind (shown in /v1/metrics) and logs them, but only the
 * first `perMinute` of each kind per minute: a flood of bad requests must not
 * flood the journal. The next logged line of a kind says how many were left
 * out before it.
 */
export class RefusalRecorder {
  readonly refused: Record<ApiRefusal, number> = Object.fromEntries(API_REFUSALS.map(k => [k, 0])) as Record<ApiRefusal, number>
  notLogged = 0
  private readonly windows = new Map<ApiRefusal, { start: number, logged: number, skipped: number }>()
  private readonly log: Logger
  private readonly perMinute: number
  private readonly now: () => number

  constructor (init: { log: Logger, perMinute?: number, now?: () => number }) {
    this.log = init.log
    this.perMinute = init.perMinute ?? 10
    this.now = init.now ?? Date.now
  }

  record (kind: ApiRefusal, who: RefusalContext, reason: string): void {
    this.refused[kind]++
    const now = this.now()
    let w = this.windows.get(kind)
    if (w === undefined || now - w.start >= 60_000) {
      w = { start: now, logged: 0, skipped: w?.skipped ?? 0 }
      this.windows.set(kind, w)
    }
    if (w.logged >= this.perMinute) { w.skipped++; this.notLogged++; return }
    w.logged++
    const fields: Record<string, unknown> = { kind, reason, client: who.client, method: who.method, path: who.path.slice(0, 200), userAgent: (who.userAgent ?? '').slice(0, 120) }
    if (w.skipped > 0) { fields.notLoggedBefore = w.skipped; w.skipped = 0 }
    this.log.warn('api request refused', fields)
  }

  metrics (): ApiMetrics {
    return { refused: { ...this.refused }, refusalsNotLogged: this.notLogged }
  }
}
