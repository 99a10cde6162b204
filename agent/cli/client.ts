/**
 * The CLI's way to the agent: the Unix socket of the data directory, or
 * DCLOUD_API (unix:/path or http://host:port, with DCLOUD_TOKEN for remote agents).
 */
import { request } from 'node:http'
import { existsSync } from 'node:fs'
import { defaultDataDir, paths, API_PORT } from '../config.ts'
import { AgentUnreachableError, UserError, EXIT } from '../util/errors.ts'

/** The agent answered with one of the API's error codes. */
export class ApiCallError extends UserError {
  override name = 'ApiCallError'
  readonly code: string

  constructor (message: string, code: string, exitCode: number) {
    super(message, { exitCode })
    this.code = code
  }
}

export interface ApiTarget {
  socketPath?: string
  host?: string
  port?: number
  token?: string
  describe: string
}

export function resolveApi (env: NodeJS.ProcessEnv = process.env): ApiTarget {
  const api = env.DCLOUD_API
  const token = env.DCLOUD_TOKEN
  if (api !== undefined && api !== '') {
    if (api.startsWith('unix:')) {
      const socketPath = api.replace(/^unix:(\/\/)?/, '')
      return { socketPath, describe: api }
    }
    const url = new URL(api)
    return { host: url.hostname, port: Number(url.port || API_PORT), token, describe: api }
  }
  const socket = paths(defaultDataDir()).socket
  if (existsSync(socket)) return { socketPath: socket, describe: `unix:${socket}` }
  return { host: '127.0.0.1', port: API_PORT, token, describe: `http://127.0.0.1:${API_PORT}` }
}

export async function apiGet<T> (path: string, target: ApiTarget = resolveApi(), timeoutMs = 5000): Promise<T> {
  return await apiRequest<T>('GET', path, undefined, target, timeoutMs)
}

export async function apiRequest<T> (method: string, path: string, body: unknown, target: ApiTarget = resolveApi(), timeoutMs = 5000): Promise<T> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
  return await new Promise<T>((resolve, reject) => {
    const headers: Record<string, string> = {}
    if (target.token !== undefined) headers.authorization = `Bearer ${target.token}`
    if (payload !== undefined) { headers['content-type'] = 'application/json'; headers['content-length'] = String(payload.length) }
    const req = request({
      socketPath: target.socketPath,
      host: target.host,
      port: target.port,
      path,
      method,
      headers,
      signal: AbortSignal.timeout(timeoutMs)
    }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        let body: unknown
        try { body = JSON.parse(text) } catch { reject(new UserError(`the agent answered ${res.statusCode ?? '?'} with something that is not JSON`, { exitCode: EXIT.software })); return }
        if ((res.statusCode ?? 500) >= 400) {
          const err = (body as { error?: { code?: string, message?: string } }).error
          const status = res.statusCode ?? 500
          const exitCode = status === 401 || status === 403 ? EXIT.noPermission : status === 400 ? EXIT.dataError : status === 503 ? EXIT.tempFail : status === 404 ? EXIT.noInput : EXIT.failure
          reject(new ApiCallError(`the agent refused: ${err?.message ?? 'unknown error'} (${err?.code ?? status})`, err?.code ?? String(status), exitCode))
          return
        }
        resolve(body as T)
      })
      res.on('error', (e) => { reject(new AgentUnreachableError(target.describe, e.message)) })
    })
    req.on('error', (e) => { reject(new AgentUnreachableError(target.describe, e.message)) })
    req.end(payload)
  })
}
