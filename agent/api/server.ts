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

export type Handler = (req: IncomingMessage) => Promise<unknown> | unknown

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
      const path = new URL(req.url ?? '/', 'http://agent').pathname
      const handler = this.init.routes[`${req.method ?? 'GET'} ${path}`]
      if (handler === undefined) {
        const otherMethod = Object.keys(this.init.routes).some(k => k.endsWith(` ${path}`))
        sendError(res, otherMethod ? 'method_not_allowed' : 'not_found')
        return
      }
      const body = await handler(req)
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(body))
    } catch (err) {
      this.init.log.error('api handler failed', { url: req.url, error: (err as Error).stack })
      if (!res.headersSent) sendError(res, 'internal')
    }
  }
}

function sendError (res: ServerResponse, code: ApiErrorCode): void {
  const { status, message } = API_ERRORS[code]
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify({ error: { code, message } }))
}

async function listen (server: Server, opts: { path: string } | { host: string, port: number }): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts, () => { server.off('error', reject); resolve() })
  })
}
