/**
 * The CLI's way to the agent: its Unix socket (the default data directory's,
 * else an installed node's /run/dcloud/api.sock, which the `dcloud` group
 * reaches), or DCLOUD_API (unix:/path or http://host:port). Over TCP every
 * request carries the token: DCLOUD_TOKEN, else the data directory's
 * api.token when this user can read it (root on the node).
 *
 * `apiRequest` sends and receives JSON; `apiDownload` saves a streamed answer
 * into a file and `apiUpload` sends a file as the body. All three go through
 * `exchange`: one place for the target, the token and turning the agent's
 * error answers into errors the user can act on.
 */
import { request, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http'
import { createReadStream, existsSync, readFileSync } from 'node:fs'
import { link, open, rm, stat, unlink } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { defaultDataDir, paths, API_PORT, SYSTEM_DATA_DIR } from '../config.ts'
import { isLoopback } from '../api/auth.ts'
import { AgentUnreachableError, UserError, EXIT } from '../util/errors.ts'

/** The agent answered with one of the API's error codes. */
export class ApiCallError extends UserError {
  override name = 'ApiCallError'
  readonly code: string
  readonly status: number

  constructor (message: string, code: string, status: number, hint?: string) {
    super(message, { exitCode: code === 'bad_response' ? EXIT.protocol : exitCodeOf(status), ...(hint !== undefined ? { hint } : {}) })
    this.code = code
    this.status = status
  }
}

/** The sysexits code for an HTTP error status. */
function exitCodeOf (status: number): number {
  switch (status) {
    case 400: case 411: case 413: case 415: return EXIT.dataError
    case 401: case 403: case 429: return EXIT.noPermission
    case 404: return EXIT.noInput
    case 409: return EXIT.cantCreate
    case 503: return EXIT.tempFail
    case 507: return EXIT.ioError
    default: return EXIT.failure
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
  const headers: OutgoingHttpHeaders = payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': payload.length }
  const signal = AbortSignal.timeout(timeoutMs)
  const res = await exchange({ method, path, headers, target, signal, send: (req) => { req.end(payload) } })
  return await readJson<T>(res, target)
}

/** A GET whose answer is text, not JSON (the CA's root, PEM). */
export async function apiText (path: string, target: ApiTarget = resolveApi(), timeoutMs = 5000): Promise<string> {
  const res = await exchange({ method: 'GET', path, headers: {}, target, signal: AbortSignal.timeout(timeoutMs), send: (req) => { req.end() } })
  const chunks: Buffer[] = []
  try {
    for await (const c of res) chunks.push(c as Buffer)
  } catch (e) {
    throw new AgentUnreachableError(target.describe, (e as Error).message)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** How a transfer is going: bytes so far and the total (null when the agent did not say). */
export type TransferProgress = (done: number, total: number | null) => void

export interface TransferResult {
  bytes: number
  ms: number
  /** Content-Disposition's file name, if the agent offered one. */
  filename: string | null
}

/**
 * GETs `path` into `file`, which must not exist: written to `FILE.part-XXXX`
 * (mode 0600), checked against Content-Length, fsynced and linked into place,
 * so the file either is the whole answer or does not exist. `onAnswer` is
 * called when the agent starts answering (a backup is built first, which
 * takes a while).
 */
export async function apiDownload (path: string, file: string, opts: { target?: ApiTarget, progress?: TransferProgress, onAnswer?: () => void, idleMs?: number } = {}): Promise<TransferResult> {
  const target = opts.target ?? resolveApi()
  if (existsSync(file)) throw fileExists(file)
  const controller = new AbortController()
  const res = await exchange({ method: 'GET', path, headers: {}, target, signal: controller.signal, idleMs: opts.idleMs, send: (req) => { req.end() } })
  opts.onAnswer?.()
  const started = Date.now()
  const type = (res.headers['content-type'] ?? '').split(';')[0]?.trim() ?? ''
  if (type === 'application/json') {
    res.resume()
    throw new UserError(`the agent at ${target.describe} answered ${path} with JSON, not a file: it is older than this dcloud`, { exitCode: EXIT.unavailable, hint: 'upgrade the agent' })
  }
  const total = res.headers['content-length'] === undefined ? null : Number(res.headers['content-length'])
  let done = 0
  const count = new Transform({ transform (chunk: Buffer, _e, cb) { done += chunk.length; opts.progress?.(done, total); cb(null, chunk) } })
  const part = `${file}.part-${randomBytes(4).toString('hex')}`
  const out = await open(part, 'wx', 0o600)
  try {
    try {
      // flush: fsync before the stream closes the file.
      await pipeline(res, count, out.createWriteStream({ highWaterMark: 1024 * 1024, flush: true }))
    } catch (err) {
      throw cutShort(target, done, total, err)
    }
    if (!res.complete || (total !== null && done !== total)) throw cutShort(target, done, total, null)
    try {
      await link(part, file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw fileExists(file)
      throw err
    }
    await unlink(part)
  } catch (err) {
    controller.abort()
    await out.close().catch(() => {})
    await rm(part, { force: true })
    throw err
  }
  return { bytes: done, ms: Date.now() - started, filename: filenameOf(res) }
}

/**
 * POSTs `file` as the body of `path` (application/octet-stream, with its
 * Content-Length) and returns the JSON answer. An answer that comes before
 * the whole file was sent (the agent refused it: no room, a name taken) stops
 * the upload and is what this throws.
 */
export async function apiUpload<T> (path: string, file: string, opts: { target?: ApiTarget, progress?: TransferProgress, onSent?: () => void, idleMs?: number } = {}): Promise<{ answer: T } & TransferResult> {
  const target = opts.target ?? resolveApi()
  const size = (await stat(file)).size
  const started = Date.now()
  let done = 0
  let sentAt = started
  const res = await exchange({
    method: 'POST',
    path,
    headers: { 'content-type': 'application/octet-stream', 'content-length': size },
    target,
    idleMs: opts.idleMs,
    send: (req) => {
      const input = createReadStream(file, { highWaterMark: 1024 * 1024 })
      input.on('data', (chunk) => { done += chunk.length; opts.progress?.(done, size) })
      input.on('end', () => { sentAt = Date.now(); opts.onSent?.() })
      input.on('error', (err) => { req.destroy(err) })
      input.pipe(req)
      // An early answer ends the upload: stop reading the file.
      req.once('response', () => { input.unpipe(req); input.destroy() })
      req.once('close', () => { input.destroy() })
    }
  })
  const answer = await readJson<T>(res, target)
  return { answer, bytes: done, ms: sentAt - started, filename: null }
}

interface ExchangeInit {
  method: string
  path: string
  headers: OutgoingHttpHeaders
  target: ApiTarget
  /** Aborts the whole exchange (apiRequest's timeout). */
  signal?: AbortSignal
  /** Cuts the connection when nothing moves for this long (default 1 hour: the agent may work that long before answering). */
  idleMs?: number | undefined
  /** Writes the body and ends the request. */
  send: (req: ReturnType<typeof request>) => void
}

/**
 * Sends a request and resolves with the response once it is known to be a
 * success (its body not read yet); an error status rejects with the agent's
 * code, message and hint.
 */
async function exchange (x: ExchangeInit): Promise<IncomingMessage> {
  const { target } = x
  return await new Promise<IncomingMessage>((resolve, reject) => {
    const headers: OutgoingHttpHeaders = { ...x.headers }
    if (target.token !== undefined) headers.authorization = `Bearer ${target.token}`
    let answered = false
    const req = request({
      socketPath: target.socketPath,
      host: target.host,
      port: target.port,
      path: x.path,
      method: x.method,
      headers,
      ...(x.signal !== undefined ? { signal: x.signal } : {})
    }, (res) => {
      answered = true
      const status = res.statusCode ?? 500
      if (status < 400) { resolve(res); return }
      readJson<unknown>(res, target).then((body) => {
        const err = (body as { error?: { code?: string, message?: string, hint?: string } }).error
        const credential = status === 401 || status === 403 || status === 429
        const hint = credential && err?.code !== 'bad_origin' ? credentialHint(status, target, res.headers['retry-after']) : err?.hint
        reject(new ApiCallError(`the agent refused: ${err?.message ?? 'unknown error'} (${err?.code ?? status})`, err?.code ?? String(status), status, hint))
      }, reject).finally(() => { req.destroy() })
    })
    req.setTimeout(x.idleMs ?? 60 * 60_000, () => { req.destroy(new Error(`nothing moved for ${Math.round((x.idleMs ?? 3_600_000) / 1000)} s`)) })
    req.on('error', (e) => {
      // Once an answer came, it is what counts (a refused upload's connection is cut after the answer).
      if (!answered) reject(x.signal?.aborted === true && e.name === 'AbortError' ? new AgentUnreachableError(target.describe, 'no answer in time') : new AgentUnreachableError(target.describe, e.message))
    })
    x.send(req)
  })
}

async function readJson<T> (res: IncomingMessage, target: ApiTarget): Promise<T> {
  const chunks: Buffer[] = []
  try {
    for await (const c of res) chunks.push(c as Buffer)
  } catch (e) {
    throw new AgentUnreachableError(target.describe, (e as Error).message)
  }
  const text = Buffer.concat(chunks).toString('utf8')
  try {
    return JSON.parse(text) as T
  } catch {
    throw new UserError(`the agent answered ${res.statusCode ?? '?'} with something that is not JSON`, { exitCode: EXIT.software })
  }
}

function fileExists (file: string): UserError {
  return new UserError(`${file} already exists; refusing to replace it`, { exitCode: EXIT.cantCreate, hint: 'choose another file name, or move the old backup away first' })
}

function cutShort (target: ApiTarget, done: number, total: number | null, err: unknown): UserError {
  const full = (err as NodeJS.ErrnoException | null)?.code === 'ENOSPC'
  if (full) return new UserError(`no space left on this disk after ${done} bytes`, { exitCode: EXIT.ioError, hint: 'free space and try again; the partial file was removed' })
  return new UserError(`the download from ${target.describe} stopped after ${done}${total !== null ? ` of ${total}` : ''} bytes${err !== null ? ` (${(err as Error).message})` : ''}`, { exitCode: EXIT.ioError, hint: 'try again; the partial file was removed' })
}

function filenameOf (res: IncomingMessage): string | null {
  const m = /filename="([^"]*)"/.exec(res.headers['content-disposition'] ?? '')
  return m?.[1] ?? null
}
