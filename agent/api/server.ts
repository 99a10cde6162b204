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
import { API_ERRORS, type ApiErrorCode } from '../../proto/api.ts'
import type { Logger } from '../util/log.ts'

export interface Request {
  req: IncomingMessage
  /** Path parameters, from `:name` segments of the route. */
  params: Record<string, string>
  query: URLSearchParams
  /** The parsed JSON body (POST, PUT, DELETE), or undefined. */
  body: unknown
}

export type Handler = (r: Request) => Promise<unknown> | unknown

/** An error a handler throws to answer with one of the catalogued codes. */
export class ApiError extends Error {
  override name = 'ApiError'
  readonly code: ApiErrorCode

  constructor (code: ApiErrorCode, message?: string) {
    super(message ?? API_ERRORS[code].message)
    this.code = code
  }
}

const MAX_BODY_BYTES = 4 * 1024 * 1024

export interface ApiServerInit {
  socketPath: string | null
  /** host:port, or null for no TCP listener. */
  tcp: string | null
  token: string
  routes: Record<string, Handler>
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
      const server = createServer((req, res) => { void this.handle(req, res, false) })
      await listen(server, { path: this.init.socketPath })
      await chmod(this.init.socketPath, 0o660)
      this.servers.push(server)
    }
    if (this.init.tcp !== null) {
      const { host, port } = splitHostPort(this.init.tcp)
      const server = createServer((req, res) => { void this.handle(req, res, true) })
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
      if (denied !== null) { sendError(res, denied); return }
      const url = new URL(req.url ?? '/', 'http://agent')
      const method = req.method ?? 'GET'
      const match = matchRoute(Object.keys(this.init.routes), method, url.pathname)
      if (match === null) {
        const otherMethod = ['GET', 'POST', 'PUT', 'DELETE'].some(m => m !== method && matchRoute(Object.keys(this.init.routes), m, url.pathname) !== null)
        sendError(res, otherMethod ? 'method_not_allowed' : 'not_found')
        return
      }
      const body = method === 'GET' ? undefined : await readJsonBody(req)
      const handler = this.init.routes[match.route] as Handler
      const result = await handler({ req, params: match.params, query: url.searchParams, body })
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(result))
    } catch (err) {
      if (err instanceof ApiError) {
        sendError(res, err.code, err.message)
        return
      }
      this.init.log.error('api handler failed', { url: req.url, error: (err as Error).stack })
      if (!res.headersSent) sendError(res, 'internal')
    }
  }
}

function sendError (res: ServerResponse, code: ApiErrorCode, message?: string): void {
  const { status } = API_ERRORS[code]
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify({ error: { code, message: message ?? API_ERRORS[code].message } }))
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

async function readJsonBody (req: IncomingMessage): Promise<unknown> {
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
