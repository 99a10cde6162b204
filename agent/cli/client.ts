/**
 * The CLI's way to the agent: the Unix socket of the data directory, or
 * DCLOUD_API (unix:/path or http://host:port, with DCLOUD_TOKEN for remote agents).
 */
import { request } from 'node:http'
import { existsSync } from 'node:fs'
import { defaultDataDir, paths, API_PORT } from '../config.ts'
import { AgentUnreachableError, UserError, EXIT } from '../util/errors.ts'

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
  return await new Promise<T>((resolve, reject) => {
    const req = request({
      socketPath: target.socketPath,
      host: target.host,
      port: target.port,
      path,
      method: 'GET',
      headers: target.token !== undefined ? { authorization: `Bearer ${target.token}` } : {},
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
          reject(new UserError(`the agent refused: ${err?.message ?? 'unknown error'} (${err?.code ?? res.statusCode ?? '?'})`, { exitCode: res.statusCode === 401 || res.statusCode === 403 ? EXIT.noPermission : EXIT.failure }))
          return
        }
        resolve(body as T)
      })
      res.on('error', (e) => { reject(new AgentUnreachableError(target.describe, e.message)) })
    })
    req.on('error', (e) => { reject(new AgentUnreachableError(target.describe, e.message)) })
    req.end()
  })
}
