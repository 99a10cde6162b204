/**
 * The front door's driver: keeps this node's Caddy running exactly the
 * configuration rendered (render.ts) from what the node knows now.
 *
 * Once a second, and at once when poked (a committed change, a container
 * event), it gathers the inputs, renders, and compares the digest with the
 * one it last loaded. It loads (POST /load) when they differ, and also when
 * Caddy no longer has it (GET /id/DIGEST fails: Caddy was restarted, by
 * systemd or the lab, and came back with its bootstrap configuration only).
 * Every failure is logged and retried at the next tick; nothing here throws
 * into the agent.
 */
import type Docker from 'dockerode'
import { LABELS } from '../../proto/runtime.ts'
import { networkName } from '../runtime/apps.ts'
import type { FrontDoorView } from '../../proto/api.ts'
import type { Logger } from '../util/log.ts'
import type { CaddyAdmin } from './caddy-admin.ts'
import type { ClusterTls } from './ca.ts'
import { render, type PublicCertificate, type RenderApp, type RenderInput, type RenderNode, type RouteDecision } from './render.ts'

export interface FrontDoorInputs {
  domain: string
  apps: RenderApp[]
  nodes: RenderInput['nodes']
  local: Record<string, string>
  /** Public (ACME) certificates valid now, from the replicated secrets. */
  public?: PublicCertificate[]
  /** Open ACME orders' HTTP-01 answers, from the replicated state. */
  challenges?: Record<string, string>
  /** The `.local` host this node announces for each app (mdns-names.ts). */
  mdnsHosts?: Record<string, string>
}

export interface FrontDoorInit {
  admin: CaddyAdmin
  tls: ClusterTls
  listen: RenderInput['listen']
  peerHttpsPort: number
  /** The file Caddy writes the access log to (agent/access/ tails it); absent: none. */
  accessLog?: string | null
  self: () => RenderNode
  /** What the node knows now: the desired state, the nodes' reports, its own web containers. */
  gather: (signal: AbortSignal) => Promise<FrontDoorInputs>
  log: Logger
  intervalMs?: number
  now?: () => number
}

/** What the API shows (proto/api.ts FrontDoorView), with the full route decisions. */
export interface FrontDoorStatus extends Omit<FrontDoorView, 'routes'> {
  routes: RouteDecision[]
}

const DEFAULT_INTERVAL_MS = 1000
const STEP_TIMEOUT_MS = 10_000
/** A withdrawn app whose copy Docker still lists this long after its stop ended is routed by what runs again. */
const RELEASE_MS = 10_000

export class FrontDoor {
  private readonly init: FrontDoorInit
  private readonly controller = new AbortController()
  private timer: NodeJS.Timeout | undefined
  private running: Promise<void> | null = null
  private again = false
  private started = false
  private lastLoggedError: string | null = null
  readonly status: FrontDoorStatus = { loaded: null, loadedAt: null, loads: 0, reloadsAfterLoss: 0, failures: 0, lastError: null, routes: [] }
  /**
   * Apps whose local copy is about to stop (withdraw): routed to another
   * node's copy as soon as one is known, by the value: null while the stop
   * runs, the time it ended (release) after.
   */
  private readonly withdrawn = new Map<string, number | null>()

  constructor (init: FrontDoorInit) {
    this.init = init
  }

  start (): void {
    if (this.started) return
    this.started = true
    this.poke()
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    clearTimeout(this.timer)
    this.controller.abort()
    await this.running?.catch(() => {})
  }

  /**
   * Before this node stops its copy of an app while another node runs one (a
   * stateless move starts the new copy first): its requests go to the other
   * copy first, so none meets a stopped container (found by bench:ingress:
   * the old node answered 502 for 0.4 to 0.8 s, until a container event's
   * refresh reached the front door). Resolves once a configuration routing
   * the app to another node is loaded, or after `timeoutMs` (no other copy
   * known yet, Caddy down): stopping is never held longer.
   */
  async withdraw (app: string, timeoutMs = 3000): Promise<void> {
    if (!this.started) return
    this.withdrawn.set(app, null)
    const until = Date.now() + timeoutMs
    for (;;) {
      await this.settled()
      const route = this.status.routes.find(r => r.name === app)
      if (route === undefined || route.kind === 'remote' || Date.now() >= until) return
      await new Promise(resolve => setTimeout(resolve, 100))
    }
  }

  /**
   * The stop ended. The app is routed by what runs again once Docker no
   * longer lists the copy here (its address is cached for a few seconds: a
   * route back to a stopped container was the second source of 502s), or
   * after RELEASE_MS should the copy stay (the stop failed).
   */
  release (app: string): void {
    if (!this.withdrawn.has(app)) return
    this.withdrawn.set(app, Date.now())
    this.poke()
  }

  /**
   * The local addresses to route to: a withdrawn app's is left out once
   * another node's copy can take its requests (never for an answer that it
   * runs nowhere), and until Docker no longer lists it.
   */
  private routable (inputs: Pick<FrontDoorInputs, 'local' | 'nodes'>): Record<string, string> {
    const self = this.init.self().id
    const out: Record<string, string> = {}
    for (const [app, address] of Object.entries(inputs.local)) {
      if (!this.withdrawn.has(app)) { out[app] = address; continue }
      const elsewhere = inputs.nodes.some(n => n.id !== self && n.address !== null && n.apps.includes(app))
      if (!elsewhere) out[app] = address
    }
    for (const [app, releasedAt] of this.withdrawn) {
      if (releasedAt !== null && (!(app in inputs.local) || Date.now() - releasedAt > RELEASE_MS)) this.withdrawn.delete(app)
    }
    return out
  }

  /** Syncs now and resolves when no sync is running or queued. */
  private async settled (): Promise<void> {
    this.poke()
    while (this.running !== null) await this.running.catch(() => {})
  }

  /** Syncs as soon as the running sync (if any) ends. */
  poke (): void {
    if (!this.started) return
    if (this.running !== null) { this.again = true; return }
    clearTimeout(this.timer)
    this.running = this.sync().finally(() => {
      this.running = null
      if (!this.started) return
      if (this.again) { this.again = false; this.poke(); return }
      this.timer = setTimeout(() => { this.poke() }, this.init.intervalMs ?? DEFAULT_INTERVAL_MS)
    })
  }

  /** One round: render, and load when Caddy does not run exactly that. Resolves whatever happens. */
  async sync (): Promise<void> {
    const signal = AbortSignal.any([this.controller.signal, AbortSignal.timeout(STEP_TIMEOUT_MS)])
    const { admin, log } = this.init
    try {
      const inputs = await this.init.gather(signal)
      const now = (this.init.now ?? Date.now)()
      const ca = await this.init.tls.root(inputs.domain)
      const cert = await this.init.tls.serve(inputs.domain, now)
      const { public: publicCerts, local, ...rest } = inputs
      const r = render({
        ...rest,
        local: this.routable({ local, nodes: rest.nodes }),
        self: this.init.self(),
        adminListen: admin.listen,
        listen: this.init.listen,
        peerHttpsPort: this.init.peerHttpsPort,
        accessLog: this.init.accessLog ?? null,
        tls: { certPem: cert.certPem, keyPem: cert.keyPem, rootPem: ca.rootPem, rootDer: ca.rootDer, ...(publicCerts !== undefined && publicCerts.length > 0 ? { public: publicCerts } : {}) }
      })
      if (r.id === this.status.loaded) {
        if (await admin.has(r.id, signal)) { this.recovered(); return }
        this.status.reloadsAfterLoss++
        log.warn('Caddy no longer runs the front door\'s configuration (restarted?); loading it again', { id: r.id })
      }
      await admin.load(r.config, signal)
      const changedRoutes = this.status.loaded === null || JSON.stringify(r.routes) !== JSON.stringify(this.status.routes)
      Object.assign(this.status, { loaded: r.id, loadedAt: Date.now(), loads: this.status.loads + 1, routes: r.routes })
      if (changedRoutes) log.info('front door configuration loaded', { id: r.id, domain: inputs.domain, routes: r.routes.map(summary).join(' ') || '(no apps)' })
      else log.debug('front door configuration loaded', { id: r.id })
      this.recovered()
    } catch (err) {
      if (this.controller.signal.aborted) return
      this.status.failures++
      const message = (err as Error).message
      this.status.lastError = message
      // Once per distinct error: Caddy down for a minute must not write 60 lines.
      if (message !== this.lastLoggedError) log.warn('front door: Caddy not configured; retrying every second', { error: message })
      this.lastLoggedError = message
    }
  }

  private recovered (): void {
    if (this.lastLoggedError !== null) this.init.log.info('front door: Caddy configured again')
    this.lastLoggedError = null
    this.status.lastError = null
  }
}

function summary (d: RouteDecision): string {
  switch (d.kind) {
    case 'local': return `${d.name}->local(${d.upstream})`
    case 'remote': return `${d.name}->${d.nodeName}`
    default: return `${d.name}:${d.kind}`
  }
}

/**
 * This node's running web containers, by app: their address on the app's
 * Docker network (127.0.0.1 for one on the host's network). From Docker's
 * labels, like everything about what runs.
 */
export async function localWebAddresses (docker: Docker, apps: ReadonlyArray<{ name: string, webService: string | null }>, signal: AbortSignal): Promise<Record<string, string>> {
  const wanted = new Map(apps.filter(a => a.webService !== null).map(a => [a.name, a.webService]))
  if (wanted.size === 0) return {}
  const containers = await docker.listContainers({ filters: { label: [LABELS.app], status: ['running'] }, abortSignal: signal })
  const out: Record<string, string> = {}
  for (const c of containers) {
    const app = c.Labels[LABELS.app]
    if (app === undefined || wanted.get(app) !== c.Labels[LABELS.service]) continue
    // A web service granted the host's network listens on the node itself.
    if (c.HostConfig?.NetworkMode === 'host') { out[app] = '127.0.0.1'; continue }
    const ip = c.NetworkSettings?.Networks?.[networkName(app)]?.IPAddress
    if (ip !== undefined && ip !== '') out[app] = ip
  }
  return out
}

/**
 * This node's web containers, asked of Docker when something may have
 * changed (a container event, other apps) and at most every `maxAgeMs`
 * otherwise: the driver renders every second on every node, and a Pi's
 * dockerd need not list its containers that often to learn nothing new.
 */
export class LocalWebAddresses {
  private readonly docker: Docker
  private readonly maxAgeMs: number
  private last: { at: number, apps: string, value: Record<string, string> } | null = null

  constructor (docker: Docker, maxAgeMs = 5000) {
    this.docker = docker
    this.maxAgeMs = maxAgeMs
  }

  /** A container started, stopped or died: ask Docker at the next call. */
  invalidate (): void { this.last = null }

  async get (apps: ReadonlyArray<{ name: string, webService: string | null }>, signal: AbortSignal, now = Date.now()): Promise<Record<string, string>> {
    const key = JSON.stringify(apps)
    if (this.last !== null && this.last.apps === key && now - this.last.at < this.maxAgeMs) return this.last.value
    const value = await localWebAddresses(this.docker, apps, signal)
    this.last = { at: now, apps: key, value }
    return value
  }
}
