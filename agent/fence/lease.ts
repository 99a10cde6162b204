/**
 * The node's fencing lease: the agent's promise, renewed while it sees a
 * quorum, that its stateful apps may run here. The watchdog (watchdog.ts), a
 * process of its own that outlives the agent, stops them when the promise
 * lapses: the agent crashed, hangs (SIGSTOP, a stuck event loop), or was cut
 * off. So no copy keeps running by itself on a node whose agent the
 * majority has given up on (invariant 1).
 *
 * Time is CLOCK_MONOTONIC in milliseconds (`process.hrtime`), the same clock
 * for every process of the machine, and never set back by NTP.
 *
 * The timeline (docs/snapshots.md): the majority declares a silent node dead
 * after 4 s and restores its stateful apps no earlier than 2 s after that
 * (FAILOVER_MARGIN_MS); the lease lasts LEASE_MS = 2.5 s from its last
 * renewal and the watchdog looks every WATCHDOG_POLL_MS; so a node whose
 * agent died has its copies killed about 2.7 s after, at least 3 s before
 * another copy can start.
 */
import { mkdir, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from '../util/log.ts'

export const LEASE_MS = 2500
export const LEASE_RENEW_MS = 250
export const WATCHDOG_POLL_MS = 200
export const LEASE_FILE = 'fence.lease'

export interface LeaseRecord {
  v: 1
  /** CLOCK_MONOTONIC milliseconds until which stateful apps may run. */
  until: number
  /** Who wrote it, for the watchdog's log. */
  node: string
  pid: number
}

export function monotonicMs (): number {
  return Number(process.hrtime.bigint() / 1_000_000n)
}

/** Decodes a lease file's text; null when it is not one (the watchdog then treats the lease as lapsed). */
export function parseLease (text: string): LeaseRecord | null {
  try {
    const r = JSON.parse(text) as Partial<LeaseRecord>
    if (r.v !== 1 || typeof r.until !== 'number' || !Number.isFinite(r.until) || typeof r.node !== 'string' || typeof r.pid !== 'number') return null
    return { v: 1, until: r.until, node: r.node.slice(0, 64), pid: r.pid }
  } catch {
    return null
  }
}

export interface NodeLeaseInit {
  /** The runtime directory (a tmpfs under /run on installed nodes) where the lease file lives. */
  dir: string
  node: string
  /** Whether this node may keep stateful apps running now: it sees a quorum. */
  entitled: () => boolean
  /**
   * Until when (monotonic ms) a quorum is known to hear this node: the newest
   * time a quorum echoed our beats, plus `echoLeaseMs`. The lease never runs
   * past it, so a node that hears the others while they no longer hear it
   * (a link failing one way) lets its lease lapse before they declare it dead.
   * Absent: no bound (a single node).
   */
  heardUntil?: (monotonicNow: number) => number
  log: Logger
}

/**
 * How long an echo of our beat keeps the lease: less than the others' wait
 * before they declare a silent node dead (`deadAfterIntervals` heartbeats,
 * scheduler/liveness.ts), by ECHO_MARGIN_MS, and never less than LEASE_MS.
 * With 1 s heartbeats: 3.5 s after the echoed beat was sent, while the
 * others declare the node dead 4 s after they last received one, and restore
 * its apps 2 s after that.
 */
export const ECHO_MARGIN_MS = 500
export function echoLeaseMs (heartbeatMs: number, deadAfterIntervals: number): number {
  return Math.max(LEASE_MS, deadAfterIntervals * heartbeatMs - ECHO_MARGIN_MS)
}

/** Renews the lease file while the agent is entitled to it. */
export class NodeLease {
  private readonly init: NodeLeaseInit
  private timer: NodeJS.Timeout | undefined
  private heldUntil = 0
  private writing = false
  private lapsedLogged = false

  constructor (init: NodeLeaseInit) {
    this.init = init
  }

  get path (): string { return join(this.init.dir, LEASE_FILE) }

  /** Whether the lease holds now: a stateful container may be started here. */
  get holds (): boolean {
    return this.init.entitled() && monotonicMs() < this.heldUntil
  }

  start (): void {
    if (this.timer !== undefined) return
    this.timer = setInterval(() => { void this.renew() }, LEASE_RENEW_MS)
    void this.renew()
  }

  /** Stops renewing; the lease lapses by itself LEASE_MS later (a clean stop keeps no promise either). */
  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  private async renew (): Promise<void> {
    if (this.writing) return
    const now = monotonicMs()
    const heardUntil = this.init.heardUntil?.(now) ?? Infinity
    const entitled = this.init.entitled()
    if (!entitled || heardUntil <= now) {
      const why = !entitled ? 'no quorum in sight' : 'no quorum has echoed this node\'s beats lately (the others may not hear it)'
      if (!this.lapsedLogged && this.heldUntil > 0) this.init.log.warn(`not renewing the fencing lease: ${why}; the watchdog stops stateful apps when it lapses`, { lapsesInMs: Math.max(0, this.heldUntil - now) })
      this.lapsedLogged = true
      return
    }
    this.lapsedLogged = false
    this.writing = true
    const until = Math.min(now + LEASE_MS, heardUntil)
    const record: LeaseRecord = { v: 1, until, node: this.init.node, pid: process.pid }
    try {
      // Atomic, not fsynced: the file lives on a tmpfs and means nothing after a reboot.
      const temp = `${this.path}.tmp`
      // The directory is the API socket's (prepared for its group); made here only if there is none.
      await writeFile(temp, JSON.stringify(record), { mode: 0o640 }).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err
        await mkdir(this.init.dir, { recursive: true, mode: 0o750 })
        await writeFile(temp, JSON.stringify(record), { mode: 0o640 })
      })
      await rename(temp, this.path)
      this.heldUntil = until
    } catch (err) {
      this.init.log.warn('could not renew the fencing lease', { path: this.path, error: (err as Error).message })
    } finally {
      this.writing = false
    }
  }
}
