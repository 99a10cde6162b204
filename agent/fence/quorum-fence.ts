/**
 * Invariant 1, the agent's side: a node cut off from the majority stops its
 * stateful apps before the majority restores them elsewhere. The watchdog
 * (watchdog.ts, its own process) enforces the same through the lease when
 * this agent cannot: stopped, frozen or crashed.
 */
import { isStateful } from '../../proto/app.ts'
import type { DesiredApp } from '../../proto/plan.ts'
import type { Logger } from '../util/log.ts'

/** A node that stops seeing a quorum fences after this long (its peers went suspect seconds ago already). */
const FENCE_AFTER_MS = 500
/**
 * A starting agent has heard nobody yet: it gives its peers this long to show
 * up before it judges the quorum (its apps kept running while it restarted).
 */
const FENCE_START_GRACE_MS = 5000
const CHECK_EVERY_MS = 250

export interface QuorumFenceInit {
  /** Whether this node sees a quorum of the voters alive, itself included (ElectionDriver.seesQuorum). */
  seesQuorum: () => boolean
  /** The apps of the committed desired state. */
  desired: () => DesiredApp[]
  /** The local apps' states (from the last Docker refresh). */
  localApps: () => Array<{ name: string, state: string }>
  /** Pauses or stops an app's containers here (AppRuntime.quiesce). */
  quiesce: (app: string, how: 'pause' | 'stop', signal: AbortSignal, stopTimeoutS?: number) => Promise<unknown>
  /** Peers should hear at once that the apps stopped. */
  announce: () => void
  log: Logger
}

export class QuorumFence {
  /** How many times an app was stopped for want of a quorum. */
  fenced = 0
  private readonly init: QuorumFenceInit
  private quorumLostAt: number | null = null
  private readonly startedAt = Date.now()
  private fencing = false
  private timer: NodeJS.Timeout | null = null

  constructor (init: QuorumFenceInit) {
    this.init = init
  }

  start (): void {
    this.timer ??= setInterval(() => { void this.check() }, CHECK_EVERY_MS)
  }

  stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  /** Pausing first freezes every write at once; the stop that follows may take the app's grace period. */
  private async check (): Promise<void> {
    if (this.fencing) return
    const { log } = this.init
    const now = Date.now()
    if (this.init.seesQuorum()) {
      if (this.quorumLostAt !== null) log.info('quorum seen again')
      this.quorumLostAt = null
      return
    }
    if (this.quorumLostAt === null) this.quorumLostAt = now
    if (now - this.quorumLostAt < FENCE_AFTER_MS || now - this.startedAt < FENCE_START_GRACE_MS) return
    const desired = this.init.desired()
    const running = this.init.localApps().filter(a => a.state === 'running' || a.state === 'starting')
      .filter(a => { const d = desired.find(x => x.name === a.name); return d !== undefined && isStateful(d.manifest) })
    if (running.length === 0) return
    this.fencing = true
    try {
      for (const a of running) {
        log.warn('fencing: no quorum in sight, stopping a stateful app so two copies never write at once', { app: a.name })
        await this.init.quiesce(a.name, 'pause', AbortSignal.timeout(10_000)).catch(() => [])
        await this.init.quiesce(a.name, 'stop', AbortSignal.timeout(30_000), 2)
        this.fenced++
      }
      this.init.announce()
    } catch (err) {
      log.error('fencing failed', { error: (err as Error).message })
    } finally {
      this.fencing = false
    }
  }
}
