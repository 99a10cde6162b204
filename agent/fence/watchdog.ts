/**
 * The fencing watchdog: a small process of its own (its own systemd unit on
 * installed nodes, its own process in the lab) that stops the node's stateful
 * containers when the agent's lease (lease.ts) lapses. It needs no agent, no
 * mesh and no clock but the machine's monotonic one: only the lease file and
 * the Docker socket. It talks to Docker's HTTP API directly, without
 * dockerode, to stay a few megabytes on a Pi.
 *
 * A container is stopped with SIGKILL: the point is that it writes nothing
 * more, at once (like a power cut, which every database survives). A paused
 * one (frozen for a snapshot) is unpaused and killed in the same breath.
 */
import { request } from 'node:http'
import { readFile } from 'node:fs/promises'
import { LABELS } from '../../proto/runtime.ts'
import { WATCHDOG_POLL_MS, monotonicMs, parseLease, type LeaseRecord } from './lease.ts'

export interface WatchdogInit {
  leaseFile: string
  dockerSocket: string
  log: (line: string, fields?: Record<string, unknown>) => void
  pollMs?: number
}

/** What the watchdog does now: nothing while the lease holds, otherwise stop the fenced containers. */
export function leaseVerdict (lease: LeaseRecord | null, now: number): { holds: true } | { holds: false, reason: string } {
  if (lease === null) return { holds: false, reason: 'no lease: the agent has not written one, or it is unreadable' }
  if (now < lease.until) return { holds: true }
  return { holds: false, reason: `the lease of ${lease.node}'s agent (pid ${lease.pid}) lapsed ${now - lease.until} ms ago` }
}

interface DockerContainer { Id: string, Names?: string[], State: string, Labels?: Record<string, string> }

export class Watchdog {
  private readonly init: WatchdogInit
  private timer: NodeJS.Timeout | undefined
  private busy = false
  private lapsed = false
  /** Containers stopped, for the log and the tests. */
  stopped = 0

  constructor (init: WatchdogInit) {
    this.init = init
  }

  start (): void {
    if (this.timer !== undefined) return
    this.timer = setInterval(() => { void this.check() }, this.init.pollMs ?? WATCHDOG_POLL_MS)
    void this.check()
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  async check (): Promise<void> {
    if (this.busy) return
    this.busy = true
    try {
      const text = await readFile(this.init.leaseFile, 'utf8').catch(() => '')
      const verdict = leaseVerdict(parseLease(text), monotonicMs())
      if (verdict.holds) {
        if (this.lapsed) this.init.log('lease renewed: stateful apps may run again (the agent starts them)')
        this.lapsed = false
        return
      }
      if (!this.lapsed) this.init.log('lease lapsed', { reason: verdict.reason })
      this.lapsed = true
      const running = await this.fencedContainers()
      for (const c of running) await this.kill(c, verdict.reason)
    } catch (err) {
      // Docker may be restarting: its containers then stop anyway; look again next time.
      this.init.log('watchdog check failed', { error: (err as Error).message })
    } finally {
      this.busy = false
    }
  }

  private async fencedContainers (): Promise<DockerContainer[]> {
    const filters = encodeURIComponent(JSON.stringify({ label: [`${LABELS.fence}=1`], status: ['running', 'paused', 'restarting'] }))
    const { status, body } = await this.docker('GET', `/containers/json?all=1&filters=${filters}`)
    if (status !== 200) throw new Error(`docker answered ${status} listing containers`)
    return JSON.parse(body) as DockerContainer[]
  }

  private async kill (c: DockerContainer, reason: string): Promise<void> {
    const name = c.Names?.[0]?.replace(/^\//, '') ?? c.Id.slice(0, 12)
    if (c.State === 'paused') await this.docker('POST', `/containers/${c.Id}/unpause`)
    const { status, body } = await this.docker('POST', `/containers/${c.Id}/kill?signal=SIGKILL`)
    // 404: gone already; 409: not running any more. Either way it writes nothing.
    if (status === 204 || status === 404 || status === 409) {
      if (status === 204) this.stopped++
      this.init.log('stopped a stateful container: its node\'s agent no longer holds the lease', { container: name, app: c.Labels?.[LABELS.app], reason })
      return
    }
    throw new Error(`docker answered ${status} killing ${name}: ${body.slice(0, 200)}`)
  }

  private async docker (method: string, path: string): Promise<{ status: number, body: string }> {
    return await new Promise((resolve, reject) => {
      const req = request({ socketPath: this.init.dockerSocket, path: `/v1.41${path}`, method, timeout: 5000 }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (b: Buffer) => chunks.push(b))
        res.on('end', () => { resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }) })
        res.on('error', reject)
      })
      req.on('timeout', () => { req.destroy(new Error('docker did not answer within 5 s')) })
      req.on('error', reject)
      req.end()
    })
  }
}
