/**
 * The agent's local HTTP API: response shapes and the catalogue of error codes.
 * The CLI and the dashboard speak only this.
 */
import type { DropReason } from './status.ts'
import type { AccessLogCounters } from './access.ts'
import type { Reach } from './frontdoor.ts'

export const API_VERSION_PREFIX = '/v1'

export type NodeState = 'alive' | 'suspect' | 'dead'

export interface NodeView {
  id: string
  name: string
  state: NodeState
  /** CPU load in percent of all cores, as the node last reported it. */
  cpu: number
  cores: number
  memTotal: number
  memFree: number
  diskFree: number
  arch: string
  dockerVersion: string | null
  agentVersion: string
  labels: Record<string, string>
  apps: string[]
  /** The user drained it (`dcloud node drain`): it takes no apps. */
  drained: boolean
  /** True for the node that answered this request. */
  self: boolean
  /** Milliseconds since this node was last heard from (0 for self). */
  lastSeenMs: number
}

export interface StatusResponse {
  self: string
  /** The elected scheduler's peer id; null until a leader is elected. */
  leader: string | null
  nodes: NodeView[]
}

export interface BackupCounters {
  uploads: number
  uploadsRefused: number
  downloads: number
  downloadsFailed: number
}

export interface MetricsResponse {
  peerId: string
  name: string
  /** Wall-clock times (ms since epoch) of the agent's start and of its first listening address. */
  startedAt: number
  listeningAt: number | null
  /** When each peer was first heard from (ms since epoch), by peer id. */
  firstHeardAt: Record<string, number>
  statusPublished: number
  statusAccepted: number
  statusDropped: Record<DropReason, number>
  /** Outbound connection attempts that failed (wrong key, unreachable, refused). */
  dialFailures: number
  lastDialError: string | null
  connections: number
  /** The election term this node is in, and the leader it follows. */
  term: number
  leader: string | null
  /** Operations run and refused (a refusal: not from the leader of this node's term). */
  ops: { opsExecuted: number, opsRefused: number, opsFailed: number, plans: number }
  /** This node's copy of the replicated desired state: committed revision and term, log end, and a digest equal on nodes holding the same state. */
  state: { revision: number, term: number, lastIndex: number, commitIndex: number, digest: string }
  /** The replicated log: appends sent, appends this node refused by reason, and refusals its followers sent back. */
  replication: {
    appendsSent: number
    snapshotsSent: number
    refused: Record<'gap' | 'mismatch' | 'conflicts_committed' | 'stale_term' | 'not_leader' | 'bad_request', number>
    refusedByFollowers: number
    commits: number
  } | null
  rpc: { served: number, rejected: number, failed: number }
  /**
   * Backup files through the API: uploads restored (`POST /v1/backups/restore`
   * with a body), uploads refused (no length, no room, truncated, not a
   * backup, or the restore failed; nothing kept of them), backups downloaded
   * in full (`GET /v1/apps/:name/backup`) and downloads that failed (the build) or were cut short.
   */
  backups: BackupCounters
  rssBytes: number
  /** V8 heap in use, and memory outside it (Buffers): where the RSS goes. */
  heapUsedBytes: number
  externalBytes: number
  cpuSeconds: number
  /** This node's front door (docs/frontdoor.md): null when it runs without one (`--caddy-admin off`). */
  frontDoor: FrontDoorView | null
  /** This node's ACME issuer (it orders only while it leads): absent on an agent without a front door. */
  acme?: AcmeView | null
  /** This node's access log (docs/frontdoor.md, "Access log"): null when it keeps none. Optional: an older agent has none. */
  accessLog?: AccessLogCounters | null
  /** Names in the home (docs/frontdoor.md): the private DNS zone this node writes, the `.local` name it announces per app (null with --no-mdns). */
  names?: { dnsZone: string | null, mdns: Record<string, string> | null }
  /** The local API's own counters. */
  api: ApiMetrics
}

/** The front door of a node: what its Caddy was last given, and how that went. */
export interface FrontDoorView {
  /** The digest (`@id`) of the configuration last loaded into Caddy; null before the first load. */
  loaded: string | null
  loadedAt: number | null
  loads: number
  /** Loads because Caddy had lost its configuration (it was restarted). */
  reloadsAfterLoss: number
  failures: number
  lastError: string | null
  /** Where each app's requests go from this node: `local` (its container here), `remote` (another node's front door, `node`), `down`, `skipped`. */
  routes: Array<{ name: string, host: string, kind: 'local' | 'remote' | 'down' | 'skipped', node?: string, reason?: string }>
}

/** What this node's ACME issuer did since it started (agent/frontdoor/acme.ts). */
export interface AcmeView {
  /** Orders started, certificates stored, attempts failed, by this node. */
  orders: number
  issued: number
  failures: number
  lastError: string | null
  /** What it does for each host now: keep (until renewAt), order, wait (backoff). Empty on a follower. */
  plan: Array<{ host: string, action: 'keep' | 'order' | 'wait', renewAt?: number, until?: number, reason?: string }>
}

/** A public certificate the front doors serve: from the replicated secrets, the same on every node. */
export interface PublicCertificateView {
  host: string
  issuer: string
  serial: string
  notBefore: number
  notAfter: number
  /** When the leader orders its successor (two thirds of its lifetime). */
  renewAt: number
}

/** `GET /v1/domain`: the cluster's names. */
export interface DomainView {
  domain: string
  /** No domain was set: the LAN default under home.arpa. */
  isDefault: boolean
  /** Where the dashboard will be, and where each app is (NAME replaced). */
  url: string
  apps: string
  /** The cluster CA's root: SHA-256 fingerprint, and where to download it (also `GET /v1/ca.pem`). */
  caFingerprint: string
  caUrl: string
  /** The ACME CA certificates come from (`domain set --acme`), or null: the cluster CA's only. */
  acme?: { directory: string, email: string | null, customRoot: boolean } | null
  /** Public certificates held for the domain's hosts; a host without one is served the cluster CA's. */
  certificates?: PublicCertificateView[]
  /** The last ACME failure (from the replicated state): what, when, for which host. */
  acmeFailure?: { message: string, at: number, host: string } | null
}

/** Why the API refused a request before any handler ran: one counter per guard. */
export type ApiRefusal = 'unauthorized' | 'forbidden' | 'rateLimited' | 'badHost' | 'badOrigin' | 'badContentType' | 'tooLarge' | 'badJson'

export const API_REFUSALS: readonly ApiRefusal[] = ['unauthorized', 'forbidden', 'rateLimited', 'badHost', 'badOrigin', 'badContentType', 'tooLarge', 'badJson']

export interface ApiMetrics {
  /** Requests refused by a guard, by kind, since the agent started. */
  refused: Record<ApiRefusal, number>
  /** Refusals not written to the log because their kind had already logged its share in that minute. */
  refusalsNotLogged: number
}

/** Every error the API returns, with the HTTP status it maps to. Documented in docs/api.md. */
export const API_ERRORS = {
  bad_request: { status: 400, message: 'the request is not valid' },
  unauthorized: { status: 401, message: 'a credential is required: send Authorization: Bearer TOKEN (the token is in the agent data directory\'s api.token), or use the Unix socket' },
  forbidden: { status: 403, message: 'the credential is not valid' },
  bad_origin: { status: 403, message: 'this request comes from a web page of another origin; the agent refuses changes from other sites' },
  unsupported_media_type: { status: 415, message: 'send the body as JSON with Content-Type: application/json' },
  misdirected: { status: 421, message: 'this agent does not serve that Host name; use http://127.0.0.1:7371, the node\'s address, or add the name with `dcloud agent --api-host NAME`' },
  too_many_attempts: { status: 429, message: 'too many failed credentials from this address; wait and try again' },
  payload_too_large: { status: 413, message: 'the request body is too large' },
  insufficient_storage: { status: 507, message: 'not enough free disk space on the node for this request' },
  not_found: { status: 404, message: 'no such endpoint' },
  method_not_allowed: { status: 405, message: 'method not allowed on this endpoint' },
  conflict: { status: 409, message: 'the request conflicts with the current state' },
  length_required: { status: 411, message: 'this endpoint needs a Content-Length: send the body with its length' },
  no_leader: { status: 503, message: 'no scheduler is elected right now (no majority of nodes reachable); try again shortly' },
  unavailable: { status: 503, message: 'a node needed for this request cannot be reached' },
  failed: { status: 500, message: 'the operation failed' },
  peer_failed: { status: 502, message: 'another node, doing its part of the request, failed' },
  bad_response: { status: 502, message: 'another node answered something this agent cannot read: are the agents of one version?' },
  internal: { status: 500, message: 'the agent failed to answer; see its log' }
} as const

export type ApiErrorCode = keyof typeof API_ERRORS

export type AppState = 'running' | 'starting' | 'pending' | 'stopped' | 'failed' | 'waiting'

export interface AppView {
  name: string
  /** The catalog id of the app, e.g. "hello". */
  app: string
  version: string
  /** Name of the node it runs on, or null. */
  node: string | null
  nodeId: string | null
  /** running: every container runs and answers its healthcheck. */
  state: AppState
  stateful: boolean
  /**
   * The raw TCP/UDP ports the app publishes on the node running it, as
   * `tcp://ADDRESS:PORT` / `udp://ADDRESS:PORT` (DNS, a game server). The web
   * UI is never one: it is at `url`, through any node's front door.
   */
  endpoints: string[]
  /** Who reaches it at `url`: `lan` (private and link-local clients only, the default) or `internet` (`dcloud app expose`). */
  reach: Reach
  revision: number
  /** Stateful apps: the live data generation, and the last time the data came from a snapshot. */
  generation?: number
  relocation?: RelocationView | null
  /** A long operation under way on its data (a move, a failover, a rollback), as far as it got; absent: none. */
  operation?: OperationView
  /** The node directory its data is kept in, when not Docker's volumes (`dcloud restore --data-dir`). */
  hostPath?: string
  /** Where it answers: `https://NAME.DOMAIN/` at any node's front door (docs/frontdoor.md); null when it has no web UI. */
  url: string | null
  /** Permissions its manifest requests, and those the owner granted (proto/permissions.ts names). */
  permissions: string[]
  grants: string[]
}

export interface OperationView {
  kind: 'move' | 'failover' | 'rollback'
  /** The journal's id: `move-notes-1733600000000`. */
  id: string
  /** Steps finished, of how many. */
  done: number
  of: number
  /** Every step in plain words, the finished ones marked `[x]`. */
  steps: string[]
  /** Set once it gave up its plan and recovers: why. */
  recovery: string | null
}

export interface RelocationView {
  kind: 'failover' | 'move' | 'rollback' | 'restore'
  snapshot: string
  /** ISO time the snapshot was taken. */
  snapshotTime: string
  from: string | null
  to: string
  at: string
  downtimeMs: number | null
}

/** One snapshot of an app, as `dcloud snapshot ls` shows it. */
export interface SnapshotView {
  id: string
  app: string
  /** ms since epoch. */
  time: number
  purpose: string
  /** The node that took it. */
  node: string
  generation: number
  /** Set on snapshots the user should look at: a divergent copy kept after a partition. */
  label: string | null
  bytes: number
  added: number
  tree: string
  /** Live nodes holding a copy. */
  holders: string[]
}

export interface WhyView {
  app: string
  node: string | null
  /** Every node considered, with why it was not chosen. */
  rejections: Array<{ node: string, reason: string }>
  planTerm: number | null
  planAt: number | null
  detail: string
  /** What the app runs with: the permissions granted, and those it requests that are not (revoked, or from before permissions existed). */
  grants?: string[]
  ungranted?: string[]
}

export interface ApiErrorBody {
  /** `hint`: what the caller can do about it, when the agent knows. */
  error: { code: ApiErrorCode, message: string, hint?: string }
}

/** What `GET /v1/apps/:name/backup` sends in headers besides the file (the body). */
export const BACKUP_CONTENT_TYPE = 'application/x-tar'

/** A backup file restored or written through the API (`POST /v1/backups/restore`, `POST /v1/apps/:name/backup`). */
export interface BackupFileView {
  file: string
  bytes: number
  snapshot: string | null
  volumes: Array<{ name: string, entries: number, bytes: number }>
}

export interface RestoreView {
  name: string
  snapshot: string | null
  revision: number
  /** Bytes of the upload, when the file came as the request's body. */
  uploaded?: number
}
