/**
 * The agent's local HTTP API.
 *
 * Two listeners serve the same routes: a Unix socket (file permissions are
 * the access control, as with docker.sock: root and the `dcloud` group) and
 * TCP, on 127.0.0.1 by default, where every request needs a credential,
 * loopback included. Before any handler runs, a request passes the guards in
 * this order (each refusal is counted, see /v1/metrics, and logged):
 *
 *   Host (421) → Origin of a state-changing request (403 bad_origin) →
 *   credential (429 while the address is blocked, 401, 403) → route (404, 405)
 *   → Content-Type of the body (415) → JSON body (413, 400) → handler.
 *
 * Routes are one table (`Routes`, built in routes.ts). A route takes a JSON
 * body by default; one that declares `rawBody` media types gets the request
 * stream unread and uncapped. A handler answers with a JSON-serialisable
 * value or a `StreamResponse`.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { chmod, chown, mkdir, readFile, rm } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { dirname } from 'node:path'
import { pipeline } from 'node:stream/promises'
import type { Readable } from 'node:stream'
import { API_ERRORS, type ApiErrorCode, type ApiMetrics, type ApiRefusal } from '../../proto/api.ts'
import type { Logger } from '../util/log.ts'
import { EXIT, UserError } from '../util/errors.ts'
import { apiTokenVerifier, authenticate, FailureLimiter, TrustedProxies, type CredentialVerifier, type FailureLimiterInit, type Principal, type Transport } from './auth.ts'
import { HostPolicy, RefusalRecorder, STATE_CHANGING, hasBody, mediaType, originRefusal, splitHostPort, type RefusalContext } from './guards.ts'
import { apiFailureOf } from './errors.ts'

export { isLoopback } from './auth.ts'
export { splitHostPort } from './guards.ts'

export interface Request {
  req: IncomingMessage
  /** Path parameters, from `:name` segments of the route. */
  params: Record<string, string>
  query: URLSearchParams
  /** The parsed JSON body, or undefined (no body, or a `rawBody` route: read `req` instead). */
  body: unknown
  /** Who calls (see auth.ts). */
  principal: Principal
  /** The client's address: the socket peer, or what a trusted proxy forwarded; 'unix' on the socket. */
  client: string
  /** Aborted when the client goes away before the answer is complete. */
  signal: AbortSignal
}

export type Handler = (r: Request) => Promise<unknown> | unknown

export interface RouteSpec {
  handler: Handler
  /**
   * The route takes its body as a stream of one of these media types (e.g.
   * `['application/octet-stream']`) instead of JSON: the server neither reads
   * nor caps it, and the handler reads `req` (honouring `signal`). A request
   * with a body of another type is refused with 415.
   */
  rawBody?: readonly string[]
  /** Served without a credential: only GET /v1/health and GET /v1/ca.pem (public by nature) are. */
  public?: boolean
}

/** "METHOD /path/:param" → a handler, or a spec for a raw-body or public route. */
export type Routes = Record<string, Handler | RouteSpec>

export interface StreamResponseInit {
  contentType: string
  /** Bytes, sent as Content-Length when known. */
  length?: number
  /** Sent as `Content-Disposition: attachment`; a download's file name. */
  filename?: string
}

/**
 * A handler's streamed answer (200): piped to the client with backpressure.
 * Open whatever can fail (the file, the archive) before returning it: once
 * the status is sent, an error can only cut the response short (the
 * connection is destroyed, so the client sees an incomplete body, never a
 * complete-looking one). The stream is destroyed if the client goes away.
 */
export class StreamResponse {
  readonly body: Readable
  readonly contentType: string
  readonly length: number | undefined
  readonly filename: string | undefined

  constructor (body: Readable, init: StreamResponseInit) {
    this.body = body
    this.contentType = init.contentType
    this.length = init.length
    this.filename = init.filename
  }
}

/** An error a handler throws to answer with one of the catalogued codes. */
export class ApiError extends Error {
  override name = 'ApiError'
  readonly code: ApiErrorCode
  /** Extra response headers, e.g. Retry-After. */
  readonly headers: Record<string, string>
  /** What the caller can do about it; sent as `error.hint`. */
  readonly hint: string | undefined

  constructor (code: ApiErrorCode, message?: string, headers: Record<string, string> = {}, hint?: string) {
    super(message ?? API_ERRORS[code].message)
    this.code = code
    this.headers = headers
    this.hint = hint
  }
}

export const MAX_JSON_BODY_BYTES = 4 * 1024 * 1024
/** A JSON body must arrive within this; raw streams (uploads) have no such limit. */
const JSON_BODY_TIMEOUT_MS = 30_000
/** How long the rest of a refused body is drained before the connection is cut. */
const UNREAD_BODY_GRACE_MS = 5000

export interface ApiServerInit {
  socketPath: string | null
  /** The group given the socket (and its directory when the server creates it), when that group exists; e.g. 'dcloud'. */
  socketGroup?: string | null
  /** host:port, or null for no TCP listener. */
  tcp: string | null
  /** The node's API token (DATA_DIR/api.token). */
  token: string
  /** Further credentials (user sessions), asked after the API token. */
  verifiers?: readonly CredentialVerifier[]
  routes: Routes
  log: Logger
  /** Extra Host names served over TCP (`--api-host`). */
  hostNames?: readonly string[]
  /** The node's name, served as a Host name (and NAME.local). */
  nodeName?: string
  /** Proxies whose X-Forwarded-For is believed (`--trusted-proxy`, addresses or CIDRs). */
  trustedProxies?: readonly string[]
  limiter?: Omit<FailureLimiterInit, 'now'>
  now?: () => number
  /** The node's interface addresses; default os.networkInterfaces(). For tests. */
  interfaces?: () => string[]
}

/** The code a guard answers with, and the counter it bumps. */
const REFUSAL_OF: Partial<Record<ApiErrorCode, ApiRefusal>> = {
  unauthorized: 'unauthorized',
  forbidden: 'forbidden',
  too_many_attempts: 'rateLimited',
  misdirected: 'badHost',
  bad_origin: 'badOrigin',
  unsupported_media_type: 'badContentType',
  payload_too_large: 'tooLarge'
}

/** Thrown by guards: answered like an ApiError, and counted and logged as a refusal. */
class Refusal extends ApiError {
  readonly kind: ApiRefusal
  readonly reason: string

  constructor (code: ApiErrorCode, kind: ApiRefusal, reason: string, message?: string, headers?: Record<string, string>) {
    super(code, message, headers)
    this.kind = kind
    this.reason = reason
  }
}

export class ApiServer {
  private readonly servers: Server[] = []
  private readonly init: ApiServerInit
  private readonly verifiers: readonly CredentialVerifier[]
  private readonly hosts: HostPolicy
  private readonly proxies: TrustedProxies
  private readonly limiter: FailureLimiter
  private readonly refusals: RefusalRecorder
  private readonly routeKeys: string[]

  constructor (init: ApiServerInit) {
    this.init = init
    const now = init.now ?? Date.now
    this.verifiers = [apiTokenVerifier(init.token), ...(init.verifiers ?? [])]
    this.proxies = new TrustedProxies(init.trustedProxies ?? [])
    this.limiter = new FailureLimiter({ ...init.limiter, now })
    this.refusals = new RefusalRecorder({ log: init.log, now })
    this.hosts = new HostPolicy({
      bindHost: init.tcp === null ? null : splitHostPort(init.tcp).host,
      names: init.hostNames ?? [],
      ...(init.nodeName !== undefined ? { nodeName: init.nodeName } : {}),
      ...(init.interfaces !== undefined ? { interfaces: init.interfaces } : {}),
      now
    })
    this.routeKeys = Object.keys(init.routes)
  }

  /** The TCP listener's port (useful with port 0), or null. */
  get tcpPort (): number | null {
    for (const s of this.servers) {
      const a = s.address()
      if (a !== null && typeof a === 'object') return a.port
    }
    return null
  }

  metrics (): ApiMetrics {
    return this.refusals.metrics()
  }

  async start (): Promise<void> {
    if (this.servers.length > 0) return
    if (this.init.socketPath !== null) {
      const path = this.init.socketPath
      await this.prepareSocketDir(dirname(path))
      await rm(path, { force: true })
      const server = this.createServer('unix')
      await listen(server, { path })
      await chmod(path, 0o660)
      await this.giveToGroup(path)
      this.servers.push(server)
    }
    if (this.init.tcp !== null) {
      const { host, port } = splitHostPort(this.init.tcp)
      const server = this.createServer('tcp')
      await listen(server, { host, port })
      this.servers.push(server)
    }
  }

  async stop (): Promise<void> {
    const servers = this.servers.splice(0)
    await Promise.all(servers.map(async s => { await new Promise<void>(resolve => { s.close(() => { resolve() }); s.closeAllConnections() }) }))
  }

  private createServer (transport: Transport): Server {
    // No whole-request deadline: uploads of backups (raw-body routes) take as long as they take;
    // JSON bodies have their own (JSON_BODY_TIMEOUT_MS). Headers must still come within a minute.
    const server = createServer({ requestTimeout: 0, headersTimeout: 60_000 }, (req, res) => { void this.handle(req, res, transport) })
    // A client that sends garbage gets a 400 from Node and is dropped; nothing reaches us to crash on.
    server.on('clientError', (_err, socket) => { socket.destroy() })
    return server
  }

  /**
   * The socket's directory: created when missing (mode 0750, the group's), so
   * members of the group can reach the socket in it; an existing directory
   * (systemd's RuntimeDirectory, a lab node's) is left as it is.
   */
  private async prepareSocketDir (dir: string): Promise<void> {
    if (existsSync(dir)) return
    try {
      await mkdir(dir, { recursive: true, mode: 0o750 })
    } catch (err) {
      throw new UserError(`cannot create ${dir} for the API socket: ${(err as Error).message}`, {
        exitCode: EXIT.cantCreate,
        hint: 'systemd makes it for dcloud.service (RuntimeDirectory=dcloud); otherwise run the agent as root, or set DCLOUD_RUNTIME_DIR to a directory it may write'
      })
    }
    await this.giveToGroup(dir)
  }

  /** chgrp to the socket group when it exists; never fatal: the socket then serves root and the agent's own user. */
  private async giveToGroup (path: string): Promise<void> {
    const group = this.init.socketGroup
    if (group === undefined || group === null) return
    const gid = await groupId(group)
    if (gid === null) { this.init.log.debug('socket group does not exist; only root and the agent user reach the socket', { group, path }); return }
    // Only root and members may give a file to a group: an agent a user runs for themself does not try.
    if (process.getegid?.() === gid) return // made with that group already
    if (process.getuid?.() !== 0 && !(process.getgroups?.() ?? []).includes(gid)) { this.init.log.debug('not in the socket group; the socket stays the agent user\'s', { group, path }); return }
    try {
      await chown(path, -1, gid)
    } catch (err) {
      this.init.log.warn('could not give the API socket to its group; only root and the agent user reach it', { group, path, error: (err as Error).message })
    }
  }

  private async handle (req: IncomingMessage, res: ServerResponse, transport: Transport): Promise<void> {
    const method = req.method ?? 'GET'
    const client = transport === 'unix' ? 'unix' : this.proxies.clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'])
    const path = (req.url ?? '/').split('?')[0] ?? '/'
    const who: RefusalContext = { client, method, path, userAgent: req.headers['user-agent'] }
    const controller = new AbortController()
    res.on('close', () => { if (!res.writableFinished) controller.abort() })
    try {
      const { route, params, query, principal } = await this.guard(req, transport, client, method)
      const spec = route === null ? null : toSpec(this.init.routes[route] as Handler | RouteSpec)
      if (spec === null) {
        const otherMethod = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].some(m => m !== method && matchRoute(this.routeKeys, m, path) !== null)
        throw new ApiError(otherMethod ? 'method_not_allowed' : 'not_found')
      }
      const body = await this.bodyOf(req, spec)
      const result = await spec.handler({ req, params, query, body, principal, client, signal: controller.signal })
      if (result instanceof StreamResponse) { await this.sendStream(res, result, who); return }
      const text = JSON.stringify(result ?? null)
      res.writeHead(200, { ...BASE_HEADERS, 'content-type': 'application/json' })
      res.end(text)
    } catch (err) {
      if (err instanceof Refusal) this.refusals.record(err.kind, who, err.reason)
      if (err instanceof ApiError) {
        sendError(req, res, err.code, err.message, err.headers, err.hint)
        return
      }
      // The cluster's errors and UserErrors reach the caller with their message and hint (errors.ts).
      const failure = apiFailureOf(err)
      if (failure === null || failure.code === 'internal') this.init.log.error('api handler failed', { method, path, error: (err as Error).stack })
      else if (failure.code === 'failed') this.init.log.warn('api request failed', { method, path, error: failure.message })
      if (failure !== null) sendError(req, res, failure.code, failure.message, {}, failure.hint)
      else sendError(req, res, 'internal')
    }
  }

  /** Host, Origin, credential and route: everything decided from the request line and headers. */
  private async guard (req: IncomingMessage, transport: Transport, client: string, method: string): Promise<{ route: string | null, params: Record<string, string>, query: URLSearchParams, principal: Principal }> {
    const headers = req.headers
    // The socket is not reachable from a browser; curl sends Host: localhost there.
    if (transport === 'tcp' && !this.hosts.allows(headers.host)) {
      throw new Refusal('misdirected', 'badHost', `Host ${JSON.stringify(headers.host ?? '')}`)
    }
    if (STATE_CHANGING.has(method)) {
      const reason = originRefusal(headers.origin, headers.host ?? 'localhost', { httpsAllowed: transport === 'tcp' && this.proxies.has(req.socket.remoteAddress ?? '') })
      if (reason !== null) throw new Refusal('bad_origin', 'badOrigin', reason)
    }
    let url: URL
    try { url = new URL(req.url ?? '/', 'http://agent') } catch { throw new ApiError('bad_request', 'the request target is not a valid path') }
    const match = matchRoute(this.routeKeys, method, url.pathname)
    const route = match?.route ?? null
    const spec = route === null ? null : toSpec(this.init.routes[route] as Handler | RouteSpec)
    let principal: Principal = { kind: 'anonymous' }
    if (spec?.public !== true) {
      const wait = transport === 'tcp' ? this.limiter.blockedFor(client) : 0
      if (wait > 0) throw tooMany(wait, 'address blocked after failed credentials')
      const verdict = await authenticate({ transport, headers, client }, this.verifiers)
      if (!verdict.ok) {
        if (verdict.code === 'forbidden') {
          const blocked = this.limiter.fail(client)
          // The attempt that crosses the limit is told to wait already.
          if (blocked > 0) throw tooMany(blocked, `${verdict.reason}; address now blocked`)
          throw new Refusal('forbidden', 'forbidden', verdict.reason)
        }
        throw new Refusal('unauthorized', 'unauthorized', verdict.reason)
      }
      principal = verdict.principal
    }
    return { route, params: match?.params ?? {}, query: url.searchParams, principal }
  }

  /** The parsed JSON body, or undefined (no body; or a raw-body route, whose handler reads the stream). */
  private async bodyOf (req: IncomingMessage, spec: RouteSpec): Promise<unknown> {
    if (!hasBody(req.headers)) return undefined
    const type = mediaType(req.headers['content-type'])
    if (spec.rawBody !== undefined) {
      if (type === null || !spec.rawBody.includes(type)) {
        throw new Refusal('unsupported_media_type', 'badContentType', `Content-Type ${type ?? 'none'}`, `send the body with Content-Type: ${spec.rawBody.join(' or ')}`)
      }
      return undefined
    }
    if (type !== 'application/json') {
      throw new Refusal('unsupported_media_type', 'badContentType', `Content-Type ${type ?? 'none'}`, `send the body as JSON with Content-Type: application/json (got ${type ?? 'none'})`)
    }
    return await readJsonBody(req)
  }

  private async sendStream (res: ServerResponse, r: StreamResponse, who: RefusalContext): Promise<void> {
    const headers: Record<string, string> = { ...BASE_HEADERS, 'content-type': r.contentType }
    if (r.length !== undefined) headers['content-length'] = String(r.length)
    if (r.filename !== undefined) headers['content-disposition'] = contentDisposition(r.filename)
    res.writeHead(200, headers)
    try {
      await pipeline(r.body, res)
    } catch (err) {
      // pipeline destroyed both ends: the client sees a cut connection, not a short "complete" body.
      if (res.destroyed && (err as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE') this.init.log.debug('client left during a stream', { path: who.path })
      else this.init.log.warn('stream response failed', { path: who.path, client: who.client, error: (err as Error).message })
      res.destroy()
    }
  }
}

const BASE_HEADERS = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff'
}

function toSpec (route: Handler | RouteSpec): RouteSpec {
  return typeof route === 'function' ? { handler: route } : route
}

function tooMany (waitMs: number, reason: string): Refusal {
  const seconds = Math.max(1, Math.ceil(waitMs / 1000))
  return new Refusal('too_many_attempts', 'rateLimited', reason, `too many failed credentials from this address; try again in ${seconds} s`, { 'retry-after': String(seconds) })
}

/** `attachment; filename="..."` with an ASCII fallback and the exact name in RFC 8187 form. */
export function contentDisposition (filename: string): string {
  const ascii = filename.replace(/[^\x20-\x7e]|["\\]/g, '_')
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(filename)}`
}

function sendError (req: IncomingMessage, res: ServerResponse, code: ApiErrorCode, message?: string, headers: Record<string, string> = {}, hint?: string): void {
  if (res.headersSent) { res.destroy(); return }
  const { status } = API_ERRORS[code]
  // A refused upload's connection is closed after the answer: the rest of its body is only drained.
  const close: Record<string, string> = req.complete ? {} : { connection: 'close' }
  res.writeHead(status, { ...BASE_HEADERS, ...headers, ...close, 'content-type': 'application/json' })
  res.end(JSON.stringify({ error: { code, message: message ?? API_ERRORS[code].message, ...(hint !== undefined ? { hint } : {}) } }))
  if (!req.complete && !req.destroyed) {
    // The body of a refused request is drained, not cut: closing a socket with unread data
    // resets it, and the client would lose our answer. A sender that keeps going is cut.
    req.resume()
    setTimeout(() => { if (!req.complete) req.socket.destroy() }, UNREAD_BODY_GRACE_MS).unref()
  }
}

/** Finds the route ("METHOD /path/:param") for a request; exact segments win over parameters by route order. */
export function matchRoute (routes: string[], method: string, path: string): { route: string, params: Record<string, string> } | null {
  const segments = path.split('/').filter(s => s !== '')
  for (const route of routes) {
    const [m, pattern] = route.split(' ')
    if (m !== method || pattern === undefined) continue
    const parts = pattern.split('/').filter(s => s !== '')
    if (parts.length !== segments.length) continue
    const params: Record<string, string> = {}
    let ok = true
    for (const [i, part] of parts.entries()) {
      const seg = segments[i] as string
      if (part.startsWith(':')) {
        try { params[part.slice(1)] = decodeURIComponent(seg) } catch { ok = false; break }
      } else if (part !== seg) { ok = false; break }
    }
    if (ok) return { route, params }
  }
  return null
}

/** Reads a JSON body of at most MAX_JSON_BODY_BYTES (undefined when empty); for raw-body routes that also take JSON. */
export async function readJsonBody (req: IncomingMessage): Promise<unknown> {
  const tooLarge = (): Refusal => new Refusal('payload_too_large', 'tooLarge', 'JSON body over the cap', `the JSON body is larger than ${MAX_JSON_BODY_BYTES} bytes`)
  if (Number(req.headers['content-length'] ?? 0) > MAX_JSON_BODY_BYTES) throw tooLarge()
  const text = await new Promise<string>((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const done = (err: ApiError | null): void => {
      clearTimeout(timer)
      req.off('data', onData).off('end', onEnd).off('error', onError)
      if (err !== null) reject(err)
      else resolve(Buffer.concat(chunks).toString('utf8'))
    }
    const onData = (chunk: Buffer): void => {
      size += chunk.length
      // Stop collecting; sendError drains (or cuts) the rest.
      if (size > MAX_JSON_BODY_BYTES) done(tooLarge())
      else chunks.push(chunk)
    }
    const onEnd = (): void => { done(null) }
    const onError = (e: Error): void => { done(new ApiError('bad_request', `the request body could not be read: ${e.message}`)) }
    const timer = setTimeout(() => { done(new ApiError('bad_request', `the request body did not arrive within ${JSON_BODY_TIMEOUT_MS / 1000} s`)) }, JSON_BODY_TIMEOUT_MS)
    req.on('data', onData).on('end', onEnd).on('error', onError)
  })
  if (text === '') return undefined
  try {
    return JSON.parse(text)
  } catch {
    throw new Refusal('bad_request', 'badJson', 'malformed JSON', 'the request body is not valid JSON')
  }
}

/** The id of a group from /etc/group, or null when it does not exist. */
async function groupId (name: string): Promise<number | null> {
  try {
    for (const line of (await readFile('/etc/group', 'utf8')).split('\n')) {
      const [n, , gid] = line.split(':')
      if (n === name && gid !== undefined && /^\d+$/.test(gid)) return Number(gid)
    }
  } catch {}
  return null
}

async function listen (server: Server, opts: { path: string } | { host: string, port: number }): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts, () => { server.off('error', reject); resolve() })
  })
}
