/**
 * The CLI's way to the agent: its Unix socket (the default data directory's,
 * else an installed node's /run/dcloud/api.sock, which the `dcloud` group
 * reaches), or DCLOUD_API (unix:/path or http://host:port). Over TCP every
 * request carries the token: DCLOUD_TOKEN, else the data directory's
 * api.token when this user can read it (root on the node).
 */
import { request } from 'node:http'
import { existsSync, readFileSync } from 'node:fs'
import { defaultDataDir, paths, API_PORT, SYSTEM_DATA_DIR } from '../config.ts'
import { isLoopback } from '../api/auth.ts'
import { AgentUnreachableError, UserError, EXIT } from '../util/errors.ts'

/** The agent answered with one of the API's error codes. */
export class ApiCallError extends UserError {
  override name = 'ApiCallError'
  readonly code: string

  constructor (message: string, code: string, exitCode: number, hint?: string) {
    super(message, { exitCode, ...(hint !== undefined ? { hint } : {}) })
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
  const dataDir = defaultDataDir()
  // The local token file goes only to this machine's agent, never to a remote DCLOUD_API.
  const token = (local: boolean): string | undefined => env.DCLOUD_TOKEN !== undefined && env.DCLOUD_TOKEN !== '' ? env.DCLOUD_TOKEN : local ? readToken(paths(dataDir, env).token) : undefined
  if (api !== undefined && api !== '') {
    if (api.startsWith('unix:')) {
      const socketPath = api.replace(/^unix:(\/\/)?/, '')
      return { socketPath, describe: api }
    }
    const url = new URL(api)
    const host = url.hostname.replace(/^\[|\]$/g, '')
    return withToken({ host, port: Number(url.port || API_PORT), describe: api }, token(host === 'localhost' || isLoopback(host)))
  }
  // This user's own agent first; then the node's, for a member of the dcloud group
  // (whose default data directory is in their home).
  for (const socket of new Set([paths(dataDir, env).socket, paths(SYSTEM_DATA_DIR, env).socket])) {
    if (existsSync(socket)) return { socketPath: socket, describe: `unix:${socket}` }
  }
  return withToken({ host: '127.0.0.1', port: API_PORT, describe: `http://127.0.0.1:${API_PORT}` }, token(true))
}

function withToken (target: ApiTarget, token: string | undefined): ApiTarget {
  return token === undefined ? target : { ...target, token }
}

/** The token file, when this user may read it; else undefined (the agent then says what is missing). */
function readToken (file: string): string | undefined {
  try {
    const t = readFileSync(file, 'utf8').trim()
    return t === '' ? undefined : t
  } catch {
    return undefined
  }
}

/** What to do about a refused credential: the agent's message says what is wrong, this says how to get in. */
function credentialHint (status: number, target: ApiTarget, retryAfter: string | undefined): string {
  if (status === 429) return `wait ${retryAfter ?? 'a minute'} s before trying again, with the right token`
  const socket = paths(SYSTEM_DATA_DIR).socket
  if (status === 403) return `check DCLOUD_TOKEN: it must be the content of the agent's DATA_DIR/api.token${target.socketPath !== undefined ? '' : ` (or use the socket ${socket})`}`
  return `on the node, run dcloud as root, or join the dcloud group (sudo usermod -aG dcloud $USER, then log in again) to use ${socket}; from elsewhere set DCLOUD_TOKEN to the node's DATA_DIR/api.token`
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
          const credential = status === 401 || status === 403 || status === 429
          const exitCode = credential ? EXIT.noPermission : status === 400 || status === 413 || status === 415 ? EXIT.dataError : status === 503 ? EXIT.tempFail : status === 404 ? EXIT.noInput : EXIT.failure
          const retryAfter = res.headers['retry-after']
          reject(new ApiCallError(`the agent refused: ${err?.message ?? 'unknown error'} (${err?.code ?? status})`, err?.code ?? String(status), exitCode,
            credential && err?.code !== 'bad_origin' ? credentialHint(status, target, retryAfter) : undefined))
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
