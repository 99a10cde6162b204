/**
 * The agent's local HTTP API.
 *
 * Two listeners serve the same routes: a Unix socket in the data directory
 * (file permissions are the access control, as with docker.sock) and TCP,
 * on 127.0.0.1 by default. Over TCP a request from another machine needs
 * `Authorization: Bearer <token>`, the token being in the data directory.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { timingSafeEqual } from 'node:crypto'
import { chmod, rm } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { API_ERRORS, type ApiErrorCode } from '../../proto/api.ts'
import type { Logger } from '../util/log.ts'
import { apiFailureOf } from './errors.ts'

export interface Request {
  req: IncomingMessage
  /** Path parameters, from `:name` segments of the route. */
  params: Record<string, string>
  query: URLSearchParams
  /** The parsed JSON body (POST, PUT, DELETE), or undefined; always undefined for a raw-body route, which reads `req` itself. */
  body: unknown
}

export type Handler = (r: Request) => Promise<unknown> | unknown

/** A route whose handler reads the request body itself (`req`), with no size cap: uploads. */
export interface RawBodyRoute {
  rawBody: true
  handler: Handler
}

export type Route = Handler | RawBodyRoute

/** What a handler returns to answer with a stream of bytes instead of JSON. */
export interface StreamResponse {
  stream: Readable
  contentType: string
  /** Content-Length, when known. */
  length?: number
  /** Offered to the client as the name to save it under (Content-Disposition). */
  filename?: string
}

const STREAM = Symbol('dcloud.streamResponse')

/** Marks a handler's result as a stream response. */
export function streamResponse (r: StreamResponse): StreamResponse {
  return Object.assign(r, { [STREAM]: true })
}

function isStreamResponse (v: unknown): v is StreamResponse {
  return typeof v === 'object' && v !== null && (v as Record<symbol, unknown>)[STREAM] === true
}

/** An error a handler throws to answer with one of the catalogued codes. */
export class ApiError extends Error {
  override name = 'ApiError'
  readonly code: ApiErrorCode
  readonly hint: string | undefined

  constructor (code: ApiErrorCode, message?: string, hint?: string) {
    super(message ?? API_ERRORS[code].message)
    this.code = code
    this.hint = hint
  }
}

const MAX_BODY_BYTES = 4 * 1024 * 1024

export interface ApiServerInit {
  socketPath: string | null
  /** host:port, or null for no TCP listener. */
  tcp: string | null
  token: string
  routes: Record<string, Route>
  log: Logger
}

export function isLoopback (address: string | undefined): boolean {
  if (address === undefined) return false
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.')
}

/**
 * Who may call: anyone who can open the Unix socket, anything on loopback, and
 * others only with the token. Returns the error to answer with, or null.
 */
export function authorize (req: { overTcp: boolean, remoteAddress: string | undefined, authorization: string | undefined, token: Buffer }): ApiErrorCode | null {
  if (!req.overTcp || isLoopback(req.remoteAddress)) return null
  if (req.authorization === undefined || !req.authorization.startsWith('Bearer ')) return 'unauthorized'
  const given = Buffer.from(req.authorization.slice('Bearer '.length))
  if (given.length !== req.token.length || !timingSafeEqual(given, req.token)) return 'forbidden'
  return null
}

export function splitHostPort (value: string): { host: string, port: number } {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(value)
  if (m === null) throw new Error(`expected HOST:PORT, got ${value}`)
  return { host: m[1] ?? '', port: Number(m[2]) }
}

export class ApiServer {
  private readonly servers: Server[] = []
  private readonly init: ApiServerInit
  private readonly token: Buffer

  constructor (init: ApiServerInit) {
    this.init = init
    this.token = Buffer.from(init.token)
  }

  async start (): Promise<void> {
    if (this.servers.length > 0) return
    if (this.init.socketPath !== null) {
      await rm(this.init.socketPath, { force: true })
      const server = createServer(SERVER_OPTIONS, (req, res) => { void this.handle(req, res, false) })
      await listen(server, { path: this.init.socketPath })
      await chmod(this.init.socketPath, 0o660)
      this.servers.push(server)
    }
    if (this.init.tcp !== null) {
      const { host, port } = splitHostPort(this.init.tcp)
      const server = createServer(SERVER_OPTIONS, (req, res) => { void this.handle(req, res, true) })
      await listen(server, { host, port })
      this.servers.push(server)
    }
  }

  async stop (): Promise<void> {
    const servers = this.servers.splice(0)
    await Promise.all(servers.map(async s => { await new Promise<void>(resolve => { s.close(() => { resolve() }); s.closeAllConnections() }) }))
  }

  private async handle (req: IncomingMessage, res: ServerResponse, overTcp: boolean): Promise<void> {
    try {
      const denied = authorize({ overTcp, remoteAddress: req.socket.remoteAddress, authorization: req.headers.authorization, token: this.token })
      if (denied !== null) { sendError(req, res, denied); return }
      const url = new URL(req.url ?? '/', 'http://agent')
      const method = req.method ?? 'GET'
      const match = matchRoute(Object.keys(this.init.routes), method, url.pathname)
      if (match === null) {
        const otherMethod = ['GET', 'POST', 'PUT', 'DELETE'].some(m => m !== method && matchRoute(Object.keys(this.init.routes), m, url.pathname) !== null)
        sendError(req, res, otherMethod ? 'method_not_allowed' : 'not_found')
        return
      }
      const route = this.init.routes[match.route] as Route
      const raw = typeof route !== 'function'
      const body = method === 'GET' || raw ? undefined : await readJsonBody(req)
      const handler = raw ? route.handler : route
      const result = await handler({ req, params: match.params, query: url.searchParams, body })
      if (isStreamResponse(result)) { await this.sendStream(req, res, result); return }
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(result))
    } catch (err) {
      if (err instanceof ApiError) {
        sendError(req, res, err.code, err.message, err.hint)
        return
      }
      const failure = apiFailureOf(err)
      if (failure === null || failure.code === 'internal') this.init.log.error('api handler failed', { url: req.url, error: (err as Error).stack })
      if (res.headersSent) { res.destroy(); return }
      if (failure !== null) sendError(req, res, failure.code, failure.message, failure.hint)
      else sendError(req, res, 'internal')
    }
  }

  private async sendStream (req: IncomingMessage, res: ServerResponse, r: StreamResponse): Promise<void> {
    const headers: Record<string, string> = { 'content-type': r.contentType }
    if (r.length !== undefined) headers['content-length'] = String(r.length)
    if (r.filename !== undefined) headers['content-disposition'] = `attachment; filename="${r.filename.replace(/["\\\r\n]/g, '_')}"`
    res.writeHead(200, headers)
    try {
      await pipeline(r.stream, res)
    } catch (err) {
      // Headers are gone: only cutting the connection tells the client.
      this.init.log.warn('api stream cut', { url: req.url, error: (err as Error).message })
      res.destroy()
    }
  }
}

/**
 * Large uploads and downloads take as long as they take: no cap on the time to
 * receive a request (Node's default is 5 minutes); headers must still come
 * within a minute.
 */
const SERVER_OPTIONS = { requestTimeout: 0, headersTimeout: 60_000 }

/**
 * Answers with a catalogued error. When the request's body was not read (a
 * raw-body route refusing an upload), the connection is closed after the
 * answer and the rest of the body discarded meanwhile, so the client reads
 * the answer instead of a reset.
 */
function sendError (req: IncomingMessage, res: ServerResponse, code: ApiErrorCode, message?: string, hint?: string): void {
  const { status } = API_ERRORS[code]
  const headers: Record<string, string> = { 'content-type': 'application/json' }
  if (!req.complete) {
    headers.connection = 'close'
    req.resume()
    // A client that keeps sending after the answer is cut off.
    const cut = setTimeout(() => { req.socket.destroy() }, 10_000)
    cut.unref()
    req.once('end', () => { clearTimeout(cut) })
  }
  res.writeHead(status, headers)
  res.end(JSON.stringify({ error: { code, message: message ?? API_ERRORS[code].message, ...(hint !== undefined ? { hint } : {}) } }))
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

/** Reads a JSON body of at most 4 MiB (undefined when empty). */
export async function readJsonBody (req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > MAX_BODY_BYTES) throw new ApiError('bad_request', `the request body is larger than ${MAX_BODY_BYTES} bytes`)
    chunks.push(chunk as Buffer)
  }
  if (size === 0) return undefined
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new ApiError('bad_request', 'the request body is not valid JSON')
  }
}

async function listen (server: Server, opts: { path: string } | { host: string, port: number }): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts, () => { server.off('error', reject); resolve() })
  })
}
