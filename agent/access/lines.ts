/**
 * The access log's decisions, apart from any I/O (store.ts, tail.ts and
 * service.ts do that): what a line of Caddy's JSON access log means, which
 * lines are counted where, what the summary says, which segments retention
 * deletes, and which nodes hold replicas.
 */
import { createHash } from 'node:crypto'
import { PATH_MAX, SUMMARY_MAX_KEYS, type AccessLine, type AccessSummary, type SummaryPart } from '../../proto/access.ts'
import { HOP_HEADER } from '../frontdoor/render.ts'

/** Caddy's access loggers are `http.log.access.NAME`, NAME the log name render.ts gives each app's host: the app's name. */
export const ACCESS_LOGGER = 'http.log.access'

export type CaddyDecoded =
  | { kind: 'line', line: AccessLine }
  /** Forwarded by another node's front door: the first front door logged it already. */
  | { kind: 'forwarded' }
  | { kind: 'invalid', reason: string }

/** A line's id: the same whoever reads the same bytes again (a restarted tail, a replica), different for any two requests (Caddy's line has the time to the nanosecond and the client's port). */
export function lineId (origin: string, raw: string): string {
  return createHash('sha256').update(origin).update('\n').update(raw).digest('hex').slice(0, 24)
}

const obj = (v: unknown): Record<string, unknown> | null => typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Record<string, unknown> : null

/**
 * One line of Caddy's JSON access log, as logged by this node (`origin`).
 * A request that came from another node's front door (its address in
 * `peerAddresses`, with the hop header the forwarding front door adds) is
 * not counted here: the front door the client reached logged it, so N
 * requests give N lines whichever way they were forwarded. Both conditions:
 * a client cannot hide its request by sending the header itself (its address
 * is not a node's), and a client on a node is still logged (it sends no hop).
 */
export function decodeCaddyAccess (raw: string, origin: string, peerAddresses: ReadonlySet<string>): CaddyDecoded {
  let v: unknown
  try { v = JSON.parse(raw) } catch { return { kind: 'invalid', reason: 'not JSON' } }
  const e = obj(v)
  if (e === null) return { kind: 'invalid', reason: 'not an object' }
  const logger = e.logger
  if (typeof logger !== 'string' || !logger.startsWith(`${ACCESS_LOGGER}.`)) return { kind: 'invalid', reason: `not an app's access log (logger ${String(logger).slice(0, 60)})` }
  const app = logger.slice(ACCESS_LOGGER.length + 1)
  if (!/^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/.test(app)) return { kind: 'invalid', reason: `not an app name: ${app.slice(0, 60)}` }
  const req = obj(e.request)
  if (req === null) return { kind: 'invalid', reason: 'no request' }
  const client = req.remote_ip
  const method = req.method
  const host = req.host
  const uri = req.uri
  if (typeof client !== 'string' || client === '' || client.length > 64) return { kind: 'invalid', reason: 'no client address' }
  if (typeof method !== 'string' || !/^[A-Za-z-]{1,32}$/.test(method)) return { kind: 'invalid', reason: 'no method' }
  if (typeof host !== 'string' || typeof uri !== 'string') return { kind: 'invalid', reason: 'no host or URI' }
  const headers = obj(req.headers) ?? {}
  const hop = Object.keys(headers).some(h => h.toLowerCase() === HOP_HEADER.toLowerCase())
  if (hop && peerAddresses.has(client)) return { kind: 'forwarded' }
  const ts = e.ts
  const status = e.status
  const size = e.size
  const duration = e.duration
  if (typeof ts !== 'number' || !Number.isFinite(ts) || ts < 0) return { kind: 'invalid', reason: 'no time' }
  if (typeof status !== 'number' || !Number.isInteger(status) || status < 0 || status > 999) return { kind: 'invalid', reason: 'no status' }
  const userId = typeof e.user_id === 'string' && e.user_id !== '' ? e.user_id.slice(0, 200) : null
  const q = uri.indexOf('?')
  return {
    kind: 'line',
    line: {
      id: lineId(origin, raw),
      node: origin,
      ts: Math.round(ts * 1000),
      app,
      client,
      user: userId,
      method: method.toUpperCase(),
      host: host.slice(0, 260),
      path: (q < 0 ? uri : uri.slice(0, q)).slice(0, PATH_MAX),
      status,
      bytes: typeof size === 'number' && Number.isInteger(size) && size >= 0 ? size : 0,
      durationMs: typeof duration === 'number' && Number.isFinite(duration) && duration >= 0 ? Math.round(duration * 1e6) / 1e3 : 0
    }
  }
}

/** The UTC day of a time, `YYYY-MM-DD`: visitors are counted per day. */
export function dayOf (ts: number): string {
  return new Date(ts).toISOString().slice(0, 10)
}

/** Adds lines one at a time into a summary part, with bounded memory: each map stops growing at SUMMARY_MAX_KEYS (then `truncated`). */
export class SummaryBuilder {
  private lines = 0
  private truncated = false
  private readonly days = new Map<string, Set<string>>()
  private readonly paths = new Map<string, number>()
  private readonly clients = new Map<string, number>()

  add (l: Pick<AccessLine, 'ts' | 'client' | 'path'>): void {
    this.lines++
    const day = dayOf(l.ts)
    let set = this.days.get(day)
    if (set === undefined) { set = new Set(); this.days.set(day, set) }
    if (set.size < SUMMARY_MAX_KEYS || set.has(l.client)) set.add(l.client)
    else this.truncated = true
    this.count(this.paths, l.path)
    this.count(this.clients, l.client)
  }

  private count (m: Map<string, number>, key: string): void {
    const n = m.get(key)
    if (n !== undefined) m.set(key, n + 1)
    else if (m.size < SUMMARY_MAX_KEYS) m.set(key, 1)
    else this.truncated = true
  }

  part (): SummaryPart {
    return {
      lines: this.lines,
      days: Object.fromEntries([...this.days].map(([d, s]) => [d, [...s]])),
      paths: Object.fromEntries(this.paths),
      clients: Object.fromEntries(this.clients),
      truncated: this.truncated
    }
  }
}

/** How many top paths and addresses the summary shows. */
export const SUMMARY_TOP = 10

/** Summary parts of disjoint sets of lines (each origin counted by one node), merged: visitors are distinct addresses per day across all parts. */
export function mergeSummaries (parts: SummaryPart[], top = SUMMARY_TOP): AccessSummary {
  const days = new Map<string, Set<string>>()
  const paths = new Map<string, number>()
  const clients = new Map<string, number>()
  let lines = 0
  let truncated = false
  for (const p of parts) {
    lines += p.lines
    truncated ||= p.truncated
    for (const [d, cs] of Object.entries(p.days)) {
      let set = days.get(d)
      if (set === undefined) { set = new Set(); days.set(d, set) }
      for (const c of cs) set.add(c)
    }
    for (const [k, n] of Object.entries(p.paths)) paths.set(k, (paths.get(k) ?? 0) + n)
    for (const [k, n] of Object.entries(p.clients)) clients.set(k, (clients.get(k) ?? 0) + n)
  }
  // Ties by name: the same lines give the same summary.
  const topOf = (m: Map<string, number>): Array<[string, number]> => [...m].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).slice(0, top)
  return {
    lines,
    visitorsPerDay: [...days].sort((a, b) => a[0] < b[0] ? -1 : 1).map(([day, s]) => ({ day, visitors: s.size })),
    topPaths: topOf(paths).map(([path, requests]) => ({ path, requests })),
    topAddresses: topOf(clients).map(([address, requests]) => ({ address, requests })),
    truncated
  }
}

/** Keeps the newest `limit` lines of those added (any order), in bounded memory. */
export class NewestLines {
  private buf: AccessLine[] = []
  private readonly limit: number
  /** More lines were added than kept. */
  more = false

  constructor (limit: number) { this.limit = limit }

  add (l: AccessLine): void {
    this.buf.push(l)
    if (this.buf.length >= Math.max(2 * this.limit, 64)) this.trim()
  }

  private trim (): void {
    this.buf.sort(byTime)
    if (this.buf.length > this.limit) { this.more = true; this.buf = this.buf.slice(this.buf.length - this.limit) }
  }

  /** Oldest first. */
  lines (): AccessLine[] { this.trim(); return this.buf }
}

/** Oldest first; the id breaks ties, so every node orders alike. */
export function byTime (a: AccessLine, b: AccessLine): number {
  return a.ts - b.ts || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
}

export interface RetentionLimits {
  /** Lines older than this are deleted (by segment). */
  maxAgeMs: number
  /** Bytes kept per app (its own and its replicas' lines together). */
  maxBytesPerApp: number
  /** Bytes kept in all. */
  maxBytesTotal: number
}

/** 30 days, 32 MiB per app, 256 MiB in all (a Pi's SD card: documented in docs/frontdoor.md). */
export const DEFAULT_RETENTION: RetentionLimits = { maxAgeMs: 30 * 86_400_000, maxBytesPerApp: 32 * 1024 * 1024, maxBytesTotal: 256 * 1024 * 1024 }

export interface Segment {
  app: string
  origin: string
  name: string
  bytes: number
  /** Its last write: every line in it is older. */
  mtimeMs: number
}

/**
 * The segments to delete: every one whose newest line is older than the
 * maximum age, then the oldest of each app over its share, then the oldest
 * of all while the total is over. Whole segments (a segment is small): the
 * bounds are kept to within one segment per app.
 */
export function retentionPlan (segments: Segment[], limits: RetentionLimits, now: number): Segment[] {
  const gone = new Set<Segment>()
  const live = (): Segment[] => segments.filter(s => !gone.has(s))
  for (const s of segments) if (s.mtimeMs < now - limits.maxAgeMs) gone.add(s)
  const oldestFirst = (a: Segment, b: Segment): number => a.mtimeMs - b.mtimeMs || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  const apps = new Map<string, Segment[]>()
  for (const s of live()) {
    const list = apps.get(s.app)
    if (list === undefined) apps.set(s.app, [s])
    else list.push(s)
  }
  for (const list of apps.values()) {
    let total = list.reduce((n, s) => n + s.bytes, 0)
    for (const s of list.sort(oldestFirst)) {
      if (total <= limits.maxBytesPerApp) break
      gone.add(s)
      total -= s.bytes
    }
  }
  let total = live().reduce((n, s) => n + s.bytes, 0)
  for (const s of live().sort(oldestFirst)) {
    if (total <= limits.maxBytesTotal) break
    gone.add(s)
    total -= s.bytes
  }
  return segments.filter(s => gone.has(s))
}

/**
 * Where this node's lines are replicated: the next `count` live nodes after
 * it in the ring of peer ids. Every node picks alike, and the replicas of a
 * cluster's lines spread over its nodes.
 */
export function replicaTargets (self: string, live: string[], count: number): string[] {
  const ring = [...new Set(live)].filter(id => id !== self).sort()
  const after = ring.filter(id => id > self)
  return [...after, ...ring.filter(id => id < self)].slice(0, count)
}

/**
 * Who answers for each origin's lines in a query, so that each is counted
 * once however many replicas hold it: the origin itself when it answered,
 * else the asking node when it holds them, else the first holder by id.
 * `holdings` maps each node that answered to the origins it holds.
 */
export function assignOrigins (holdings: ReadonlyMap<string, readonly string[]>, self: string): Map<string, string[]> {
  const origins = new Set<string>()
  for (const list of holdings.values()) for (const o of list) origins.add(o)
  const out = new Map<string, string[]>()
  const give = (node: string, origin: string): void => {
    const list = out.get(node)
    if (list === undefined) out.set(node, [origin])
    else list.push(origin)
  }
  for (const origin of [...origins].sort()) {
    if (holdings.get(origin)?.includes(origin) === true) give(origin, origin)
    else if (holdings.get(self)?.includes(origin) === true) give(self, origin)
    else {
      const holder = [...holdings.keys()].sort().find(n => holdings.get(n)?.includes(origin) === true)
      if (holder !== undefined) give(holder, origin)
    }
  }
  return out
}

/**
 * Why a peer's push is refused, or null: a node pushes only its own lines
 * (each names its origin), so no peer can put lines in another node's name.
 */
export function pushRefusal (lines: readonly AccessLine[], sender: string): string | null {
  const foreign = lines.find(l => l.node !== sender)
  return foreign === undefined ? null : `a node pushes only its own access lines; this push has a line of ${foreign.node}`
}
