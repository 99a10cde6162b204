/**
 * The access log service of one node (docs/frontdoor.md, "Access log"):
 *
 * - reads this node's Caddy access log (tail.ts), keeps the lines of
 *   requests whose first front door was this one (lines.ts), and stores them
 *   (store.ts);
 * - pushes them, every PUSH_EVERY_MS, to REPLICAS other live nodes (the next
 *   ones in the ring of peer ids) over the mesh, so a node that dies loses at
 *   most its last push interval and a bit;
 * - stores the lines its peers push (each peer only its own: a peer cannot
 *   write lines in another node's name);
 * - answers a query across the cluster: asks every live node which origins
 *   it holds, has each origin's lines read by one holder only (the origin if
 *   it is up, else a replica), and merges them.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import { dirname, join } from 'node:path'
import { mkdir, readdir } from 'node:fs/promises'
import type { Mesh } from '../mesh/mesh.ts'
import { RpcError, rpcCall, type RpcServer } from '../mesh/rpc.ts'
import type { Logger } from '../util/log.ts'
import { decodeAccessAnswer, decodeAccessPush, decodeAccessPushReply, decodeAccessQuery, PUSH_MAX_LINES, type AccessAnswer, type AccessLine, type AccessQuery, type AccessLogCounters, type AccessRequest, type AccessView, type SummaryPart } from '../../proto/access.ts'
import { AccessStore, RECENT_IDS } from './store.ts'
import { CaddyLogTail } from './tail.ts'
import { assignOrigins, byTime, pushRefusal, decodeCaddyAccess, DEFAULT_RETENTION, mergeSummaries, replicaTargets, type RetentionLimits } from './lines.ts'

export const PUSH_PROTOCOL = '/dcloud/access-push/1'
export const QUERY_PROTOCOL = '/dcloud/access-query/1'

const PUSH_EVERY_MS = 500
const RETAIN_EVERY_MS = 60_000
/** Own lines kept in memory for replicas that have not taken them yet (about 2.5 MB at most); beyond, the oldest are dropped from it (still on this node's disk; counted in `dropped`). */
const QUEUE_MAX = 5000
/**
 * After a start, and to a node that becomes a replica, the own lines of this
 * last while are (re)sent, at most RESEND_MAX_LINES of them: what a replica
 * recognises by the ids it remembers (store.ts RECENT_IDS), so a re-sent line
 * is never stored twice.
 */
const RESEND_MS = 60_000
const RESEND_MAX_LINES = RECENT_IDS / 2
const QUERY_TIMEOUT_MS = 10_000
const ANSWER_MAX_BYTES = 16 * 1024 * 1024

export interface AccessLogInit {
  dataDir: string
  /** Caddy's access log file, as render.ts writes it into the configuration; null: this node logs none (it still holds replicas and answers queries). */
  caddyLog: string | null
  mesh: Mesh
  rpc: RpcServer
  log: Logger
  /** Live peers (not this node), by peer id: replicas and queries go to them. */
  peers: () => Array<{ id: string }>
  /**
   * The addresses of every other node heard of, dead ones too: a node whose
   * agent died still has a Caddy that forwards (found by the lab test: a
   * forwarded request counted twice while the forwarding node was dead).
   */
  nodeAddresses: () => Iterable<string>
  /** Any node's name by peer id (dead ones too), for display. */
  nodeName: (id: string) => string | null
  retention?: Partial<RetentionLimits>
  /** How many other nodes hold a copy of each line (default 2). */
  replicas?: number
}


export class AccessLog {
  readonly counters: AccessLogCounters = { logged: 0, forwarded: 0, invalid: 0, pushed: 0, pushFailures: 0, replicated: 0, dropped: 0, maxReplicationMs: 0, lastReplicationMs: null, storedBytes: 0 }
  readonly store: AccessStore
  private readonly init: AccessLogInit
  private readonly tail: CaddyLogTail | null
  private readonly self: string
  private readonly limits: RetentionLimits
  /** Own lines not yet taken by every replica; `base` is the sequence number of queue[0]. */
  private queue: AccessLine[] = []
  private base = 0
  private readonly cursors = new Map<string, number>()
  private timers: NodeJS.Timeout[] = []
  private pushing = false
  private started = false
  private lastInvalid: string | null = null
  /** Other nodes' addresses, as ever heard of in this agent's life (a few per node). */
  private readonly addresses = new Set<string>()

  constructor (init: AccessLogInit) {
    this.init = init
    this.self = init.mesh.peerId.toString()
    this.store = new AccessStore(join(init.dataDir, 'access'))
    this.limits = { ...DEFAULT_RETENTION, ...init.retention }
    this.tail = init.caddyLog === null ? null : new CaddyLogTail({ path: init.caddyLog, cursorFile: join(init.dataDir, 'access', 'caddy-cursor.json'), onLines: async (lines) => { await this.fromCaddy(lines) }, log: init.log })
  }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    await this.store.open()
    // Caddy writes there; the agent's directory for it exists before the first configuration names it.
    if (this.init.caddyLog !== null) await mkdir(dirname(this.init.caddyLog), { recursive: true }).catch(() => {})
    const { rpc } = this.init
    await rpc.register({ protocol: PUSH_PROTOCOL, decode: decodeAccessPush, handle: async (req, from) => await this.received(req.lines, from), maxRequestBytes: 2 * 1024 * 1024 })
    await rpc.register({ protocol: QUERY_PROTOCOL, decode: decodeAccessQuery, handle: async (q) => await this.answer(q), timeoutMs: QUERY_TIMEOUT_MS })
    await this.requeueRecent()
    this.tail?.start()
    this.timers.push(setInterval(() => { void this.push() }, PUSH_EVERY_MS))
    this.timers.push(setInterval(() => { void this.retain() }, RETAIN_EVERY_MS))
    void this.retain()
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    await this.tail?.stop()
  }

  /** Caddy's raw lines: this node's own requests are stored and queued for the replicas. */
  private async fromCaddy (raw: string[]): Promise<void> {
    for (const a of this.init.nodeAddresses()) this.addresses.add(a)
    const peerAddresses = this.addresses
    const lines: AccessLine[] = []
    for (const text of raw) {
      const d = decodeCaddyAccess(text, this.self, peerAddresses)
      if (d.kind === 'line') lines.push(d.line)
      else if (d.kind === 'forwarded') this.counters.forwarded++
      else {
        this.counters.invalid++
        if (d.reason !== this.lastInvalid) this.init.log.warn('access log: a line of Caddy\'s log is not an app\'s request; skipped', { reason: d.reason })
        this.lastInvalid = d.reason
      }
    }
    if (lines.length === 0) return
    const added = await this.store.append(lines)
    this.counters.logged += added
    this.enqueue(lines)
    // Not waiting for the next tick: the replicas' delay is what a dead node loses.
    void this.push()
  }

  private enqueue (lines: AccessLine[]): void {
    this.queue.push(...lines)
    if (this.queue.length > QUEUE_MAX) {
      const drop = this.queue.length - QUEUE_MAX
      this.queue = this.queue.slice(drop)
      this.base += drop
      this.counters.dropped += drop
    }
  }

  /** After a start: this node's lines of the last minute go to the replicas again (they may have missed them while the agent was down). */
  private async requeueRecent (): Promise<void> {
    const since = Date.now() - RESEND_MS
    const mine: AccessLine[] = []
    for (const app of await this.apps()) mine.push(...(await this.store.read(app, [this.self], since, RESEND_MAX_LINES, false)).lines)
    this.enqueue(mine.sort(byTime).slice(-RESEND_MAX_LINES))
  }

  private async apps (): Promise<string[]> {
    return (await readdir(this.store.dir, { withFileTypes: true }).catch(() => [])).filter(d => d.isDirectory()).map(d => d.name)
  }

  /** One round of pushes to the replicas; one round at a time. */
  private async push (): Promise<void> {
    if (this.pushing || !this.started) return
    this.pushing = true
    try {
      const targets = replicaTargets(this.self, this.init.peers().map(p => p.id), this.init.replicas ?? 2)
      for (const t of [...this.cursors.keys()]) if (!targets.includes(t)) this.cursors.delete(t)
      await Promise.all(targets.map(async t => { await this.pushTo(t) }))
      // Lines every replica has taken leave the queue.
      const low = Math.min(...targets.map(t => this.cursors.get(t) ?? this.base), this.base + this.queue.length)
      if (low > this.base) { this.queue = this.queue.slice(low - this.base); this.base = low }
    } finally {
      this.pushing = false
    }
  }

  private async pushTo (target: string): Promise<void> {
    if (!this.cursors.has(target)) {
      // A new replica: this node's last minute, then everything after.
      const recent = this.queue.findIndex(l => l.ts >= Date.now() - RESEND_MS)
      const from = recent < 0 ? this.queue.length : Math.max(recent, this.queue.length - RESEND_MAX_LINES)
      this.cursors.set(target, this.base + from)
    }
    for (;;) {
      const at = Math.max(this.cursors.get(target) ?? this.base, this.base)
      const batch = this.queue.slice(at - this.base, at - this.base + PUSH_MAX_LINES)
      if (batch.length === 0) return
      try {
        await rpcCall(this.init.mesh, peerIdFromString(target), PUSH_PROTOCOL, { lines: batch }, { decode: decodeAccessPushReply, timeoutMs: 5000 })
      } catch (err) {
        this.counters.pushFailures++
        this.init.log.debug('access log: push failed; retried', { to: target, error: (err as Error).message })
        return
      }
      const now = Date.now()
      const delay = now - Math.min(...batch.map(l => l.ts))
      this.counters.pushed += batch.length
      this.counters.lastReplicationMs = delay
      this.counters.maxReplicationMs = Math.max(this.counters.maxReplicationMs, delay)
      this.cursors.set(target, at + batch.length)
    }
  }

  /** A peer's push: only its own lines. */
  private async received (lines: AccessLine[], from: PeerId): Promise<{ stored: number }> {
    const refusal = pushRefusal(lines, from.toString())
    if (refusal !== null) throw new RpcError('forbidden', refusal)
    const stored = await this.store.append(lines)
    this.counters.replicated += stored
    return { stored }
  }

  private async answer (q: AccessQuery): Promise<AccessAnswer> {
    if (q.kind === 'holdings') return { kind: 'holdings', origins: await this.store.origins(q.app, q.since) }
    const r = await this.store.read(q.app, q.origins, q.since, q.limit, q.summary)
    return { kind: 'read', lines: r.lines, summary: r.summary }
  }

  private async ask (node: string, q: AccessQuery, signal: AbortSignal): Promise<AccessAnswer> {
    if (node === this.self) return await this.answer(q)
    return await rpcCall(this.init.mesh, peerIdFromString(node), QUERY_PROTOCOL, q, { decode: decodeAccessAnswer, signal, timeoutMs: QUERY_TIMEOUT_MS, maxResponseBytes: ANSWER_MAX_BYTES })
  }

  /** The app's access log across the cluster: every line once, the newest `limit` of them, and the summary if asked. */
  async query (app: string, { since, limit, summary, local }: AccessRequest, signal: AbortSignal): Promise<AccessView> {
    const nodes = local ? [this.self] : [this.self, ...this.init.peers().map(p => p.id)]
    const unreachable: string[] = []
    const holdings = new Map<string, string[]>()
    await Promise.all(nodes.map(async n => {
      try {
        const a = await this.ask(n, { kind: 'holdings', app, since }, signal)
        if (a.kind === 'holdings') holdings.set(n, a.origins)
      } catch (err) {
        unreachable.push(this.init.nodeName(n) ?? n)
        this.init.log.debug('access log: a node did not answer', { node: n, error: (err as Error).message })
      }
    }))
    const parts: SummaryPart[] = []
    const seen = new Set<string>()
    let lines: AccessLine[] = []
    let more = false
    // A node that fails its read (it died since it answered) has its origins read from another holder.
    let plan = assignOrigins(holdings, this.self)
    for (let round = 0; round < 2 && plan.size > 0; round++) {
      const retry = new Set<string>()
      await Promise.all([...plan].map(async ([node, origins]) => {
        try {
          const a = await this.ask(node, { kind: 'read', app, since, origins, limit, summary }, signal)
          if (a.kind !== 'read') return
          if (a.summary !== null) parts.push(a.summary)
          if (a.lines.length >= limit && limit > 0) more = true
          for (const l of a.lines) if (!seen.has(l.id)) { seen.add(l.id); lines.push(l) }
        } catch (err) {
          unreachable.push(this.init.nodeName(node) ?? node)
          holdings.delete(node)
          for (const o of origins) retry.add(o)
          this.init.log.debug('access log: a node did not answer', { node, error: (err as Error).message })
        }
      }))
      plan = assignOrigins(new Map([...holdings].map(([n, os]) => [n, os.filter(o => retry.has(o))])), this.self)
    }
    lines.sort(byTime)
    if (lines.length > limit) { more = true; lines = lines.slice(lines.length - limit) }
    return {
      app,
      since,
      lines: lines.map(l => ({ ...l, nodeName: this.init.nodeName(l.node) })),
      more,
      summary: summary ? mergeSummaries(parts) : null,
      unreachable: [...new Set(unreachable)].sort()
    }
  }

  private async retain (): Promise<void> {
    try {
      const gone = await this.store.retain(this.limits)
      if (gone.length > 0) this.init.log.info('access log: old lines deleted', { segments: gone.length })
      this.counters.storedBytes = await this.store.bytes()
    } catch (err) {
      this.init.log.warn('access log: retention failed; retried in a minute', { error: (err as Error).message })
    }
  }
}
