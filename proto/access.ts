/**
 * The front door's access log (docs/frontdoor.md, "Access log"): one line per
 * request a client made to an app, written at the node whose front door the
 * client reached, replicated to other nodes, and asked for through the API
 * (`dcloud app access`). These are the wire shapes between agents and the
 * API's answer; every one that comes from a peer or a user is decoded here.
 */
import { PEER_ID, ValidationError, array, number, record, string } from './validate.ts'

/** One request, as the first front door it reached saw it. */
export interface AccessLine {
  /** Stable across re-reads and replicas (a digest of the origin and Caddy's raw line): replicas dedupe by it. */
  id: string
  /** The peer id of the node whose front door logged it (the origin). */
  node: string
  /** When Caddy logged it (ms since the epoch). */
  ts: number
  app: string
  /** The real client: the address the first front door saw. */
  client: string
  /** The signed-in user, once accounts exist; null until then. */
  user: string | null
  method: string
  host: string
  /** The path, without the query string (queries carry tokens more often than not). */
  path: string
  status: number
  /** Bytes of the response body sent. */
  bytes: number
  durationMs: number
}

const ID = /^[0-9a-f]{24}$/
const APP = /^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/
/** The longest path kept; a longer one is cut (a line stays small). */
export const PATH_MAX = 2048

export function decodeAccessLine (raw: unknown, field = 'line'): AccessLine {
  const r = record(raw, field)
  const user = r.user === null || r.user === undefined ? null : string(r.user, `${field}.user`, { max: 200 })
  return {
    id: string(r.id, `${field}.id`, { max: 24, pattern: ID }),
    node: string(r.node, `${field}.node`, { max: 60, pattern: PEER_ID }),
    ts: number(r.ts, `${field}.ts`, { min: 0, max: 8.64e15, integer: true }),
    app: string(r.app, `${field}.app`, { max: 40, pattern: APP }),
    client: string(r.client, `${field}.client`, { min: 1, max: 64 }),
    user,
    method: string(r.method, `${field}.method`, { min: 1, max: 32, pattern: /^[A-Za-z-]+$/ }),
    host: string(r.host, `${field}.host`, { max: 260 }),
    path: string(r.path, `${field}.path`, { max: PATH_MAX }),
    status: number(r.status, `${field}.status`, { min: 0, max: 999, integer: true }),
    bytes: number(r.bytes, `${field}.bytes`, { min: 0, max: 2 ** 53, integer: true }),
    durationMs: number(r.durationMs, `${field}.durationMs`, { min: 0, max: 1e10 })
  }
}

/** A push of the sender's own new lines to a replica: at most this many per call. */
export const PUSH_MAX_LINES = 500

export interface AccessPush { lines: AccessLine[] }

export function decodeAccessPush (raw: unknown): AccessPush {
  const r = record(raw, 'push')
  return { lines: array(r.lines, 'push.lines', PUSH_MAX_LINES, (v, f) => decodeAccessLine(v, f)) }
}

export function decodeAccessPushReply (raw: unknown): { stored: number } {
  return { stored: number(record(raw, 'reply').stored, 'reply.stored', { min: 0, max: PUSH_MAX_LINES, integer: true }) }
}

/** The most lines one answer carries (a node's, or the API's). */
export const QUERY_MAX_LINES = 5000

/**
 * A question to one node's store. `holdings`: which origins it holds lines of
 * for the app since `since`. `read`: the lines (newest `limit`) and, with
 * `summary`, the summary part of the given origins only, so that the asking
 * node counts every line once however many replicas hold it.
 */
export type AccessQuery =
  | { kind: 'holdings', app: string, since: number }
  | { kind: 'read', app: string, since: number, origins: string[], limit: number, summary: boolean }

export function decodeAccessQuery (raw: unknown): AccessQuery {
  const r = record(raw, 'query')
  const app = string(r.app, 'query.app', { max: 40, pattern: APP })
  const since = number(r.since, 'query.since', { min: 0, max: 8.64e15, integer: true })
  if (r.kind === 'holdings') return { kind: 'holdings', app, since }
  if (r.kind !== 'read') throw new ValidationError('query.kind', 'must be holdings or read')
  return {
    kind: 'read',
    app,
    since,
    origins: array(r.origins, 'query.origins', 1000, (v, f) => string(v, f, { max: 60, pattern: PEER_ID })),
    limit: number(r.limit, 'query.limit', { min: 0, max: QUERY_MAX_LINES, integer: true }),
    summary: r.summary === true
  }
}

/** Per day (UTC, YYYY-MM-DD), the distinct client addresses; counts by path and by address. Parts of disjoint line sets merge exactly. */
export interface SummaryPart {
  lines: number
  days: Record<string, string[]>
  paths: Record<string, number>
  clients: Record<string, number>
  /** A cap was reached: the counts are a lower bound. */
  truncated: boolean
}

/** Entries kept per map of a summary part (distinct paths, addresses, addresses per day). */
export const SUMMARY_MAX_KEYS = 10_000

const countMap = (raw: unknown, field: string): Record<string, number> => {
  const r = record(raw, field)
  const keys = Object.keys(r)
  if (keys.length > SUMMARY_MAX_KEYS) throw new ValidationError(field, `has more than ${SUMMARY_MAX_KEYS} entries`)
  const out: Record<string, number> = {}
  for (const k of keys) { if (k.length <= PATH_MAX) out[k] = number(r[k], `${field}[]`, { min: 0, max: 2 ** 53, integer: true }) }
  return out
}

export function decodeSummaryPart (raw: unknown, field = 'summary'): SummaryPart {
  const r = record(raw, field)
  const d = record(r.days, `${field}.days`)
  const dayKeys = Object.keys(d)
  if (dayKeys.length > 4000) throw new ValidationError(`${field}.days`, 'has too many days')
  const days: Record<string, string[]> = {}
  for (const k of dayKeys) {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(k)) throw new ValidationError(`${field}.days`, `${JSON.stringify(k.slice(0, 20))} is not a day (YYYY-MM-DD)`)
    days[k] = array(d[k], `${field}.days[${k}]`, SUMMARY_MAX_KEYS, (v, f) => string(v, f, { max: 64 }))
  }
  return {
    lines: number(r.lines, `${field}.lines`, { min: 0, max: 2 ** 53, integer: true }),
    days,
    paths: countMap(r.paths, `${field}.paths`),
    clients: countMap(r.clients, `${field}.clients`),
    truncated: r.truncated === true
  }
}

export type AccessAnswer =
  | { kind: 'holdings', origins: string[] }
  | { kind: 'read', lines: AccessLine[], summary: SummaryPart | null }

export function decodeAccessAnswer (raw: unknown): AccessAnswer {
  const r = record(raw, 'answer')
  if (r.kind === 'holdings') return { kind: 'holdings', origins: array(r.origins, 'answer.origins', 1000, (v, f) => string(v, f, { max: 60, pattern: PEER_ID })) }
  if (r.kind !== 'read') throw new ValidationError('answer.kind', 'must be holdings or read')
  return { kind: 'read', lines: array(r.lines, 'answer.lines', QUERY_MAX_LINES, (v, f) => decodeAccessLine(v, f)), summary: r.summary === null || r.summary === undefined ? null : decodeSummaryPart(r.summary) }
}

/** The summary as the API shows it. */
export interface AccessSummary {
  lines: number
  /** Distinct client addresses per day (UTC), oldest first. */
  visitorsPerDay: Array<{ day: string, visitors: number }>
  topPaths: Array<{ path: string, requests: number }>
  topAddresses: Array<{ address: string, requests: number }>
  truncated: boolean
}

/** What `GET /v1/apps/NAME/access` asks: `local`, only this node's store (its lines and its replicas), no peer asked. */
export interface AccessRequest { since: number, limit: number, summary: boolean, local: boolean }

/** `GET /v1/apps/NAME/access`. */
export interface AccessView {
  app: string
  since: number
  /** Oldest first; the newest `limit` of the window. */
  lines: Array<AccessLine & { nodeName: string | null }>
  /** More lines matched than were returned. */
  more: boolean
  summary: AccessSummary | null
  /** Nodes that could not be asked (their lines may still be shown from a replica). */
  unreachable: string[]
}

/** `/v1/metrics` → `accessLog`: one node's access log service. */
export interface AccessLogCounters {
  /** Lines of this node's Caddy stored here. */
  logged: number
  /** Lines left to the front door the client reached (forwarded here by another node). */
  forwarded: number
  /** Lines of Caddy's log that are not an app's request (should stay 0). */
  invalid: number
  /** Lines pushed to replicas, and refused or failed pushes. */
  pushed: number
  pushFailures: number
  /** Lines stored for peers. */
  replicated: number
  /** Own lines dropped from the queue before every replica took them. */
  dropped: number
  /** The longest time, from Caddy's log time to a replica's acknowledgement, seen for a line (ms); and the last push's. */
  maxReplicationMs: number
  lastReplicationMs: number | null
  /** Bytes on disk (own and replicas), as of the last retention pass. */
  storedBytes: number
}

const AGE_UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000 }

/** `--since`: an age (`90s`, `15m`, `1h`, `7d`, `2w`) or a date (`2026-12-07`, `2026-12-07T18:00:00Z`); the time it names, ms since the epoch. */
export function parseSince (text: string, now: number, field = '--since'): number {
  const m = /^(\d{1,6})([smhdw])$/.exec(text)
  if (m !== null) return now - Number(m[1]) * (AGE_UNITS[m[2] as string] as number)
  if (/^\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(text)) {
    const t = Date.parse(text)
    if (Number.isFinite(t)) return t
  }
  throw new ValidationError(field, `"${text}" is neither an age (90s, 15m, 1h, 7d, 2w) nor a date (2026-12-07, 2026-12-07T18:00:00Z)`)
}
