/**
 * Caddy's admin API over its Unix socket: the only way the front door is
 * configured. Never a network address: any local user (and any web page a
 * browser on the node opens) could reach one.
 *
 * Caddy 2.6 checks the Host header of admin requests; on a Unix socket the
 * only allowed origin is the empty one, so requests go with `Host:` empty
 * (Node would otherwise put `localhost` there).
 */
import { request } from 'node:http'

export class CaddyAdminError extends Error {
  override name = 'CaddyAdminError'
  /** HTTP status, or null when Caddy could not be reached at all (not running, socket missing). */
  readonly status: number | null

  constructor (message: string, status: number | null) {
    super(message)
    this.status = status
  }
}

/** Largest answer read from Caddy (the config of one server, an error). */
const MAX_ANSWER = 4 * 1024 * 1024

export class CaddyAdmin {
  readonly socketPath: string

  constructor (socketPath: string) {
    this.socketPath = socketPath
  }

  /** `unix//PATH`, as Caddy's `admin.listen` spells it. */
  get listen (): string { return `unix/${this.socketPath.startsWith('/') ? '' : '/'}${this.socketPath}` }

  /** Replaces Caddy's whole configuration (POST /load); Caddy keeps the old one if the new one fails. */
  async load (config: unknown, signal: AbortSignal): Promise<void> {
    await this.call('POST', '/load', JSON.stringify(config), signal)
  }

  /** Whether the object with this `@id` is in the running configuration (GET /id/ID). */
  async has (id: string, signal: AbortSignal): Promise<boolean> {
    try {
      await this.call('GET', `/id/${encodeURIComponent(id)}`, null, signal)
      return true
    } catch (err) {
      // Caddy 2.6 answers an unknown id with 404, or 400 "unknown object ID" in some paths.
      if (err instanceof CaddyAdminError && (err.status === 404 || err.status === 400)) return false
      throw err
    }
  }

  async config (signal: AbortSignal): Promise<unknown> {
    return JSON.parse(await this.call('GET', '/config/', null, signal)) as unknown
  }

  private async call (method: string, path: string, body: string | null, signal: AbortSignal): Promise<string> {
    return await new Promise((resolve, reject) => {
      const req = request({
        socketPath: this.socketPath,
        path,
        method,
        setHost: false,
        headers: { Host: '', ...(body !== null ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } : {}) },
        signal
      }, res => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (c: Buffer) => {
          size += c.length
          if (size > MAX_ANSWER) { res.destroy(new CaddyAdminError(`Caddy's answer to ${method} ${path} is over ${MAX_ANSWER} bytes`, res.statusCode ?? null)); return }
          chunks.push(c)
        })
        res.on('error', reject)
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          const status = res.statusCode ?? 0
          if (status >= 200 && status < 300) { resolve(text); return }
          let reason = text.trim()
          try { reason = (JSON.parse(text) as { error?: string }).error ?? reason } catch {}
          reject(new CaddyAdminError(`Caddy refused ${method} ${path} (${status}): ${reason.slice(0, 2000)}`, status))
        })
      })
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.name === 'AbortError') { reject(err); return }
        reject(new CaddyAdminError(`cannot reach Caddy's admin socket ${this.socketPath}: ${err.code ?? err.message}`, null))
      })
      req.end(body ?? undefined)
    })
  }
}
