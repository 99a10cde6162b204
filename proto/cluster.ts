/**
 * The cluster's own protocols: elections, the replicated desired state, and
 * operations the leader sends to agents. Every message is validated by the
 * decoders here before use; every operation carries the leader's term.
 */
import { CONFIG_LIMITS, HOST_NAME, KEEP_MAX, TMPFS_OPTION, ULIMIT_NAMES, isIpAddress, serviceDefaults, type AppManifest, type ComposeService, type SnapshotPolicy } from './app.ts'
import type { AppStorage, DesiredApp, Relocation } from './plan.ts'
import { DEVICE_PATH, SYSCTL_NAME, decodeGrants, grandfatheredGrants } from './permissions.ts'
import type { WhyView } from './api.ts'
import { decodeClusterDomain, decodeReach, type Reach } from './frontdoor.ts'
import { decodeJournal, type Journal } from './journal.ts'
import { decodeAcmeChange, decodeAcmeFailure, decodeAcmeSettings, decodeChallenges, type AcmeFailure, type AcmeSettings } from './acme.ts'
import { decodeSecrets, type SealedSecret } from './secrets.ts'
import { DOCKER_NAME, LABEL_KEY, MAX_INT, PEER_ID, SNAPSHOT_ID, ValidationError, array, number, record, string, stringMap } from './validate.ts'

export const VOTE_PROTOCOL = '/dcloud/vote/1'
export const HEARTBEAT_PROTOCOL = '/dcloud/leader-heartbeat/1'
/** The replicated log of desired-state changes: only the leader of the current term appends (Raft's AppendEntries). */
export const APPEND_PROTOCOL = '/dcloud/append/1'
export const CHANGE_PROTOCOL = '/dcloud/change/1'
export const OP_PROTOCOL = '/dcloud/op/1'
export const APP_QUERY_PROTOCOL = '/dcloud/app-query/1'
export const SNAPSHOT_QUERY_PROTOCOL = '/dcloud/snapshot-query/1'

export const APP_NAME = /^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$|^[a-z0-9]$/

/**
 * `preVote`: only asks whether the voter would vote in `term`; the voter changes nothing.
 * `lastLogTerm`/`lastLogIndex`: the candidate's log, which must be at least as
 * up to date as the voter's (Raft's election restriction).
 */
export interface VoteRequest { term: number, candidate: string, lastLogTerm: number, lastLogIndex: number, preVote: boolean }
export interface VoteResponse { term: number, granted: boolean, reason: string }
/** The leader's heartbeat; `sentAt` is the leader's clock, echoed in the ack so it can time its lease. */
export interface LeaderHeartbeat { term: number, leader: string, sentAt: number }
export interface HeartbeatAck { term: number, ok: boolean, sentAt: number }

/** The replicated desired state: every app the user asked for. */
export interface DesiredState {
  /** Increases with every change; a node with a higher revision knows more. */
  revision: number
  /** The term of the leader that made the last change. */
  term: number
  apps: DesiredApp[]
  /** Nodes the user drained: they take no apps. Absent means none. */
  drained?: string[]
  /** The cluster's domain (`dcloud domain set`): apps are NAME.DOMAIN. Absent: the LAN default (proto/frontdoor.ts). */
  domain?: string
  /** Certificates from this ACME CA (`dcloud domain set --acme`); absent: the cluster CA's only (proto/acme.ts). */
  acme?: AcmeSettings
  /** HTTP-01 answers every node's front door serves while an order is open: token -> key authorization. */
  challenges?: Record<string, string>
  /** The last ACME failure; absent once an order succeeds. */
  acmeFailure?: AcmeFailure
  /** Replicated secrets, sealed with a key derived from the cluster key (agent/secrets/secrets.ts). */
  secrets?: Record<string, SealedSecret>
}

export type DesiredChange =
  | { kind: 'install', app: { name: string, manifest: AppManifest, pinnedNode: string | null, seed?: DesiredApp['seed'], storage?: AppStorage | null, grants?: string[] } }
  /** The cluster's domain (`dcloud domain set`); null: back to the LAN default. */
  | { kind: 'domain', domain: string | null }
  /** Certificates from an ACME CA (null: the cluster CA's only). */
  | { kind: 'acme', acme: AcmeSettings | null }
  /** A replicated secret put (sealed) or deleted (null). */
  | { kind: 'secret', name: string, sealed: SealedSecret | null }
  /** An HTTP-01 answer every front door serves (null: the order is over). */
  | { kind: 'challenge', token: string, keyAuthorization: string | null }
  /** The ordering node's last failure (null: the last order succeeded). */
  | { kind: 'acme-failure', failure: AcmeFailure | null }
  /** The owner grants or revokes permissions of an installed app (`dcloud app grant`, `app revoke`). */
  | { kind: 'grants', name: string, grant: string[], revoke: string[] }
  /** Who reaches the app at its name (`dcloud app expose NAME lan|internet`); the front door of every node applies it on commit. */
  | { kind: 'expose', name: string, reach: Reach }
  | { kind: 'remove', name: string }
  | { kind: 'move', name: string, node: string }
  | { kind: 'drain', node: string, drained: boolean }
  /** Made by the leader itself: the app's data now lives in a new generation (restored from a snapshot). */
  | { kind: 'relocate', name: string, generation: number, relocation: Relocation | null }
  /**
   * Made by the leader itself: how far a long operation on the app got (null:
   * it is over), in place of the journal with id `replaces` (null: none);
   * refused when the app holds another.
   */
  | { kind: 'journal', name: string, journal: Journal | null, replaces: string | null }

/** `revision`: the log index the change was committed at; `replicatedTo`: how many nodes held it then (this one included). */
export interface ChangeResponse { revision: number, replicatedTo: number }

/**
 * One entry of the replicated log. Applying the entries in order to the empty
 * state gives the desired state; a state's `revision` is the index of the
 * last entry applied and its `term` that entry's term. `change` is null for
 * the no-op a new leader appends to commit what earlier terms left (Raft §8).
 */
export interface LogEntry { index: number, term: number, change: DesiredChange | null }

/**
 * The leader's append (Raft's AppendEntries, with InstallSnapshot folded in):
 * `entries` follow the entry at `prevIndex`, whose term must be `prevTerm` on
 * the follower (the log-matching rule). `snapshot`, when present, is a state
 * the leader committed: a follower whose log ends before it takes it whole.
 * `commit`: the leader's commit index. With no entries it only carries that.
 */
export interface AppendRequest {
  term: number
  leader: string
  prevIndex: number
  prevTerm: number
  entries: LogEntry[]
  commit: number
  snapshot?: { index: number, term: number, state: DesiredState }
}
/** `lastIndex`: the follower's last log index after the call, a hint for where the leader resumes after a refusal. */
export interface AppendResponse { term: number, ok: boolean, lastIndex: number, reason: string }

/** Entries per append: a follower far behind catches up in batches (or from a snapshot). */
export const APPEND_MAX_ENTRIES = 64
/** The largest append on the wire: a snapshot of the whole state, or a batch of entries. */
export const APPEND_MAX_BYTES = 16 * 1024 * 1024

export type SnapshotPurpose = 'scheduled' | 'manual' | 'pre-move' | 'final' | 'fenced' | 'divergent' | 'replaced' | 'backup' | 'imported'

export type Op =
  | { kind: 'deploy', app: DesiredApp }
  | { kind: 'remove', name: string }
  /** Snapshot the app's volumes here now (it keeps running, quiesced for the final pass) and replicate. */
  | { kind: 'snapshot', name: string, purpose: SnapshotPurpose }
  /**
   * Fetch the app's snapshot repository from `from` (the bulk of a move, while
   * the app runs there), and restore `snapshot` into a stage directory so the
   * move's restore only applies the last increment.
   */
  | {
    kind: 'sync', name: string, from: string, snapshot: string | null
    /**
     * Bytes a restore of the app's data will write here (the copy's size).
     * The target refuses the sync when its disk cannot hold them: the move
     * then stops before the source stops the app, not after.
     */
    restoreBytes?: number
  }
  /** Stop the app here for good and take its final snapshot (the last increment of a move). */
  | { kind: 'handoff', name: string }
  /** Restore `snapshot` into the app's volumes here (fetching it from `from` when missing), then run the app. */
  | { kind: 'restore', app: DesiredApp, snapshot: string, from: string | null }
  /** A stale copy: keep its data as a named snapshot, then remove its containers (its volumes stay). */
  | { kind: 'retire', name: string, liveSnapshot: string | null }
  /** After a move: remove the old copy, containers and volumes, once its final snapshot `snapshot` is in the repository here. */
  | { kind: 'purge', name: string, snapshot: string }

export interface OpRequest { term: number, leader: string, op: Op }
/** `snapshot`: the snapshot an operation took or restored. */
export interface OpResponse { done: true, detail: string, snapshot?: SnapshotInfo }

/** A snapshot as the cluster talks about it. */
export interface SnapshotInfo {
  /** restic's short id. */
  id: string
  app: string
  /** ms since epoch. */
  time: number
  purpose: SnapshotPurpose | 'unknown'
  /** The node that took it (name). */
  node: string
  generation: number
  /** A name for snapshots the user should notice (divergent copies). */
  label: string | null
  /** Bytes of the volumes, and bytes the snapshot added to the repository (0 when unknown). */
  bytes: number
  added: number
  /** restic's tree id: equal trees hold equal data. */
  tree: string
}

export type AppQuery = { kind: 'logs', name: string, tail: number } | { kind: 'why', name: string } | { kind: 'rollback', name: string, snapshot: string }

/**
 * Asked of any node: its copies of an app's snapshots (`list`), to take one
 * now if it runs the app (`take`), or to pull the app's repository from the
 * asker (`replicate`: never from a third node).
 */
export type SnapshotQuery = { kind: 'list', name: string } | { kind: 'take', name: string } | { kind: 'replicate', name: string }

export function decodeVoteRequest (raw: unknown): VoteRequest {
  const r = record(raw, 'vote')
  return {
    term: number(r.term, 'vote.term', { min: 0, max: MAX_INT, integer: true }),
    candidate: string(r.candidate, 'vote.candidate', { max: 64, pattern: PEER_ID }),
    lastLogTerm: number(r.lastLogTerm, 'vote.lastLogTerm', { min: 0, max: MAX_INT, integer: true }),
    lastLogIndex: number(r.lastLogIndex, 'vote.lastLogIndex', { min: 0, max: MAX_INT, integer: true }),
    preVote: r.preVote === undefined ? false : bool(r.preVote, 'vote.preVote')
  }
}

export function decodeLeaderHeartbeat (raw: unknown): LeaderHeartbeat {
  const r = record(raw, 'heartbeat')
  return {
    term: number(r.term, 'heartbeat.term', { min: 0, max: MAX_INT, integer: true }),
    leader: string(r.leader, 'heartbeat.leader', { max: 64, pattern: PEER_ID }),
    sentAt: number(r.sentAt, 'heartbeat.sentAt', { min: 0, max: MAX_INT })
  }
}

export function decodeHeartbeatAck (raw: unknown): HeartbeatAck {
  const r = record(raw, 'ack')
  return {
    term: number(r.term, 'ack.term', { min: 0, max: MAX_INT, integer: true }),
    ok: bool(r.ok, 'ack.ok'),
    sentAt: number(r.sentAt, 'ack.sentAt', { min: 0, max: MAX_INT })
  }
}

export function decodeVoteResponse (raw: unknown): VoteResponse {
  const r = record(raw, 'vote')
  return {
    term: number(r.term, 'vote.term', { min: 0, max: MAX_INT, integer: true }),
    granted: bool(r.granted, 'vote.granted'),
    reason: string(r.reason, 'vote.reason', { max: 200 })
  }
}

export function decodeDesiredState (raw: unknown): DesiredState {
  const r = record(raw, 'desired')
  const apps = array(r.apps, 'desired.apps', 1000, (v, f) => decodeDesiredApp(v, f))
  const names = new Set<string>()
  for (const a of apps) {
    if (names.has(a.name)) throw new ValidationError('desired.apps', `app ${a.name} appears twice`)
    names.add(a.name)
  }
  const state: DesiredState = {
    revision: number(r.revision, 'desired.revision', { min: 0, max: MAX_INT, integer: true }),
    term: number(r.term, 'desired.term', { min: 0, max: MAX_INT, integer: true }),
    apps
  }
  if (r.drained !== undefined) state.drained = array(r.drained, 'desired.drained', 1000, (v, f) => string(v, f, { max: 64, pattern: PEER_ID }))
  if (r.domain !== undefined && r.domain !== null) state.domain = decodeClusterDomain(r.domain, 'desired.domain')
  if (r.acme !== undefined && r.acme !== null) state.acme = decodeAcmeSettings(r.acme, 'desired.acme')
  if (r.challenges !== undefined && r.challenges !== null) state.challenges = decodeChallenges(r.challenges)
  if (r.acmeFailure !== undefined && r.acmeFailure !== null) state.acmeFailure = decodeAcmeFailure(r.acmeFailure, 'desired.acmeFailure')
  if (r.secrets !== undefined && r.secrets !== null) state.secrets = decodeSecrets(r.secrets)
  return state
}

const PURPOSES = ['scheduled', 'manual', 'pre-move', 'final', 'fenced', 'divergent', 'replaced', 'backup', 'imported'] as const

function decodeRelocation (raw: unknown, field: string): Relocation {
  const r = record(raw, field)
  const kind = r.kind
  if (kind !== 'failover' && kind !== 'move' && kind !== 'rollback' && kind !== 'restore') throw new ValidationError(`${field}.kind`, 'must be failover, move, rollback or restore')
  return {
    kind,
    snapshot: string(r.snapshot, `${field}.snapshot`, { max: 64, pattern: SNAPSHOT_ID }),
    snapshotTime: number(r.snapshotTime, `${field}.snapshotTime`, { min: 0, max: MAX_INT, integer: true }),
    from: r.from === null ? null : string(r.from, `${field}.from`, { max: 64, pattern: PEER_ID }),
    to: string(r.to, `${field}.to`, { max: 64, pattern: PEER_ID }),
    at: number(r.at, `${field}.at`, { min: 0, max: MAX_INT, integer: true }),
    downtimeMs: r.downtimeMs === null ? null : number(r.downtimeMs, `${field}.downtimeMs`, { min: 0, max: MAX_INT, integer: true })
  }
}

function decodeSeed (raw: unknown, field: string): NonNullable<DesiredApp['seed']> {
  const r = record(raw, field)
  return {
    snapshot: string(r.snapshot, `${field}.snapshot`, { max: 64, pattern: SNAPSHOT_ID }),
    time: number(r.time, `${field}.time`, { min: 0, max: MAX_INT, integer: true }),
    node: string(r.node, `${field}.node`, { max: 64, pattern: PEER_ID })
  }
}

export function decodeSnapshotInfo (raw: unknown, field = 'snapshot'): SnapshotInfo {
  const r = record(raw, field)
  const purpose = r.purpose === 'unknown' || PURPOSES.includes(r.purpose as typeof PURPOSES[number]) ? r.purpose as SnapshotInfo['purpose'] : null
  if (purpose === null) throw new ValidationError(`${field}.purpose`, `must be one of ${PURPOSES.join(', ')} or unknown`)
  return {
    id: string(r.id, `${field}.id`, { max: 64, pattern: SNAPSHOT_ID }),
    app: string(r.app, `${field}.app`, { max: 40, pattern: APP_NAME }),
    time: number(r.time, `${field}.time`, { min: 0, max: MAX_INT, integer: true }),
    purpose,
    node: string(r.node, `${field}.node`, { max: 128 }),
    generation: number(r.generation, `${field}.generation`, { min: 0, max: MAX_INT, integer: true }),
    label: r.label === null ? null : string(r.label, `${field}.label`, { max: 200 }),
    bytes: number(r.bytes, `${field}.bytes`, { min: 0, max: MAX_INT, integer: true }),
    added: number(r.added, `${field}.added`, { min: 0, max: MAX_INT, integer: true }),
    tree: string(r.tree, `${field}.tree`, { max: 64, pattern: /^[0-9a-f]{0,64}$/ })
  }
}

export function decodeSnapshotQuery (raw: unknown): SnapshotQuery {
  const r = record(raw, 'query')
  const name = string(r.name, 'query.name', { max: 40, pattern: APP_NAME })
  if (r.kind === 'list' || r.kind === 'take' || r.kind === 'replicate') return { kind: r.kind, name }
  throw new ValidationError('query.kind', 'must be list, take or replicate')
}

/** State written before permissions existed has no grants: its plain host paths stay granted (grandfatheredGrants). */
function grandfathered (manifest: AppManifest, storage: unknown): { grants?: string[] } {
  const grants = grandfatheredGrants(manifest, storage === undefined || storage === null ? null : decodeStorage(storage))
  return grants.length === 0 ? {} : { grants }
}

export function decodeDesiredApp (raw: unknown, field = 'app'): DesiredApp {
  const r = record(raw, field)
  const manifest = decodeManifest(r.manifest, `${field}.manifest`)
  return {
    name: string(r.name, `${field}.name`, { max: 40, pattern: APP_NAME }),
    manifest,
    pinnedNode: r.pinnedNode === null ? null : string(r.pinnedNode, `${field}.pinnedNode`, { max: 64, pattern: PEER_ID }),
    revision: number(r.revision, `${field}.revision`, { min: 0, max: MAX_INT, integer: true }),
    ...(r.generation !== undefined ? { generation: number(r.generation, `${field}.generation`, { min: 1, max: MAX_INT, integer: true }) } : {}),
    ...(r.relocation !== undefined ? { relocation: r.relocation === null ? null : decodeRelocation(r.relocation, `${field}.relocation`) } : {}),
    ...(r.journal !== undefined && r.journal !== null ? { journal: decodeJournal(r.journal, `${field}.journal`) } : {}),
    ...(r.seed !== undefined && r.seed !== null ? { seed: decodeSeed(r.seed, `${field}.seed`) } : {}),
    ...(r.storage !== undefined && r.storage !== null ? { storage: decodeStorage(r.storage, `${field}.storage`) } : {}),
    ...(r.grants !== undefined && r.grants !== null ? { grants: decodeGrants(r.grants, `${field}.grants`) } : grandfathered(manifest, r.storage)),
    ...(r.grantsRevision !== undefined ? { grantsRevision: number(r.grantsRevision, `${field}.grantsRevision`, { min: 0, max: MAX_INT, integer: true }) } : {}),
    // Only `internet` is kept: absent is lan.
    ...(r.reach !== undefined && r.reach !== null && decodeReach(r.reach, `${field}.reach`) === 'internet' ? { reach: 'internet' as const } : {})
  }
}

/** System directories (and, but for `/`, what lies below them) that no app's data may go in: a typo must not spread volumes over /etc. */
const SYSTEM_DIRS = ['/', '/bin', '/boot', '/dev', '/etc', '/lib', '/lib64', '/proc', '/run', '/sbin', '/sys', '/usr', '/var/lib/docker']

export function decodeStorage (raw: unknown, field = 'storage'): AppStorage {
  const r = record(raw, field)
  const hostPath = string(r.hostPath, `${field}.hostPath`, { max: 1024 })
  if (!hostPath.startsWith('/')) throw new ValidationError(`${field}.hostPath`, 'must be an absolute path')
  if (hostPath.split('/').some(c => c === '.' || c === '..') || hostPath.includes('//') || (hostPath.length > 1 && hostPath.endsWith('/')) || /[\0-\x1f]/.test(hostPath)) throw new ValidationError(`${field}.hostPath`, 'must be a plain absolute path (no ".", "..", "//", trailing "/" or control characters)')
  if (SYSTEM_DIRS.some(d => hostPath === d || (d !== '/' && hostPath.startsWith(d + '/')))) throw new ValidationError(`${field}.hostPath`, `${hostPath} is a system directory; choose a directory of its own, such as /srv/dcloud`)
  return { hostPath }
}

export function decodeChange (raw: unknown): DesiredChange {
  const r = record(raw, 'change')
  switch (r.kind) {
    case 'install': {
      const a = record(r.app, 'change.app')
      return {
        kind: 'install',
        app: {
          name: string(a.name, 'change.app.name', { max: 40, pattern: APP_NAME }),
          manifest: decodeManifest(a.manifest, 'change.app.manifest'),
          pinnedNode: a.pinnedNode === null || a.pinnedNode === undefined ? null : string(a.pinnedNode, 'change.app.pinnedNode', { max: 64, pattern: PEER_ID }),
          ...(a.seed !== undefined && a.seed !== null ? { seed: decodeSeed(a.seed, 'change.app.seed') } : {}),
          ...(a.storage !== undefined && a.storage !== null ? { storage: decodeStorage(a.storage, 'change.app.storage') } : {}),
          ...(a.grants !== undefined && a.grants !== null ? { grants: decodeGrants(a.grants, 'change.app.grants') } : {})
        }
      }
    }
    case 'grants': return {
      kind: 'grants',
      name: string(r.name, 'change.name', { max: 40, pattern: APP_NAME }),
      grant: r.grant === undefined ? [] : decodeGrants(r.grant, 'change.grant'),
      revoke: r.revoke === undefined ? [] : decodeGrants(r.revoke, 'change.revoke')
    }
    case 'expose': return { kind: 'expose', name: string(r.name, 'change.name', { max: 40, pattern: APP_NAME }), reach: decodeReach(r.reach, 'change.reach') }
    case 'remove': return { kind: 'remove', name: string(r.name, 'change.name', { max: 40, pattern: APP_NAME }) }
    case 'move': return { kind: 'move', name: string(r.name, 'change.name', { max: 40, pattern: APP_NAME }), node: string(r.node, 'change.node', { max: 64, pattern: PEER_ID }) }
    case 'drain': return { kind: 'drain', node: string(r.node, 'change.node', { max: 64, pattern: PEER_ID }), drained: bool(r.drained, 'change.drained') }
    case 'domain': return { kind: 'domain', domain: r.domain === null ? null : decodeClusterDomain(r.domain, 'change.domain') }
    case 'relocate': return {
      kind: 'relocate',
      name: string(r.name, 'change.name', { max: 40, pattern: APP_NAME }),
      generation: number(r.generation, 'change.generation', { min: 1, max: MAX_INT, integer: true }),
      relocation: r.relocation === null ? null : decodeRelocation(r.relocation, 'change.relocation')
    }
    case 'journal': return {
      kind: 'journal',
      name: string(r.name, 'change.name', { max: 40, pattern: APP_NAME }),
      journal: r.journal === null ? null : decodeJournal(r.journal, 'change.journal'),
      replaces: r.replaces === null || r.replaces === undefined ? null : string(r.replaces, 'change.replaces', { max: 100 })
    }
    case 'acme': case 'secret': case 'challenge': case 'acme-failure': return decodeAcmeChange(r)
    default: throw new ValidationError('change.kind', 'must be install, remove, move, drain, relocate, journal, grants, expose, domain, acme, secret, challenge or acme-failure')
  }
}

export function decodeChangeResponse (raw: unknown): ChangeResponse {
  const r = record(raw, 'response')
  return {
    revision: number(r.revision, 'response.revision', { min: 0, max: MAX_INT, integer: true }),
    replicatedTo: number(r.replicatedTo, 'response.replicatedTo', { min: 0, max: 10_000, integer: true })
  }
}

export function decodeLogEntry (raw: unknown, field = 'entry'): LogEntry {
  const r = record(raw, field)
  return {
    index: number(r.index, `${field}.index`, { min: 1, max: MAX_INT, integer: true }),
    term: number(r.term, `${field}.term`, { min: 0, max: MAX_INT, integer: true }),
    change: r.change === null ? null : decodeChange(r.change)
  }
}

/**
 * Decodes an append and checks its shape: entries contiguous after
 * `prevIndex`, their terms never decreasing and never past the request's.
 * Whether it fits the receiver's log is the replication rules' business.
 */
export function decodeAppendRequest (raw: unknown): AppendRequest {
  const r = record(raw, 'append')
  const req: AppendRequest = {
    term: number(r.term, 'append.term', { min: 0, max: MAX_INT, integer: true }),
    leader: string(r.leader, 'append.leader', { max: 64, pattern: PEER_ID }),
    prevIndex: number(r.prevIndex, 'append.prevIndex', { min: 0, max: MAX_INT, integer: true }),
    prevTerm: number(r.prevTerm, 'append.prevTerm', { min: 0, max: MAX_INT, integer: true }),
    entries: array(r.entries, 'append.entries', APPEND_MAX_ENTRIES, (v, f) => decodeLogEntry(v, f)),
    commit: number(r.commit, 'append.commit', { min: 0, max: MAX_INT, integer: true })
  }
  let term = req.prevTerm
  for (const [i, e] of req.entries.entries()) {
    if (e.index !== req.prevIndex + 1 + i) throw new ValidationError(`append.entries.${i}.index`, `entries must follow prevIndex ${req.prevIndex} without gaps (expected ${req.prevIndex + 1 + i}, got ${e.index})`)
    if (e.term < term || e.term > req.term) throw new ValidationError(`append.entries.${i}.term`, `entry terms must not decrease and not exceed the request's term ${req.term}`)
    term = e.term
  }
  if (r.snapshot !== undefined) {
    const s = record(r.snapshot, 'append.snapshot')
    const snapshot = {
      index: number(s.index, 'append.snapshot.index', { min: 0, max: MAX_INT, integer: true }),
      term: number(s.term, 'append.snapshot.term', { min: 0, max: req.term, integer: true }),
      state: decodeDesiredState(s.state)
    }
    if (snapshot.state.revision !== snapshot.index || snapshot.state.term !== snapshot.term) throw new ValidationError('append.snapshot', 'the state\'s revision and term must be the snapshot\'s index and term')
    if (req.prevIndex !== snapshot.index || req.prevTerm !== snapshot.term) throw new ValidationError('append.snapshot', 'entries sent with a snapshot follow it')
    req.snapshot = snapshot
  }
  return req
}

export function decodeAppendResponse (raw: unknown): AppendResponse {
  const r = record(raw, 'response')
  return {
    term: number(r.term, 'response.term', { min: 0, max: MAX_INT, integer: true }),
    ok: bool(r.ok, 'response.ok'),
    lastIndex: number(r.lastIndex, 'response.lastIndex', { min: 0, max: MAX_INT, integer: true }),
    reason: string(r.reason, 'response.reason', { max: 500 })
  }
}

export function decodeOpRequest (raw: unknown): OpRequest {
  const r = record(raw, 'op')
  const op = record(r.op, 'op.op')
  const name = (): string => string(op.name, 'op.op.name', { max: 40, pattern: APP_NAME })
  const snap = (v: unknown, f: string): string => string(v, f, { max: 64, pattern: SNAPSHOT_ID })
  let decoded: Op
  switch (op.kind) {
    case 'deploy': decoded = { kind: 'deploy', app: decodeDesiredApp(op.app, 'op.op.app') }; break
    case 'remove': decoded = { kind: 'remove', name: name() }; break
    case 'snapshot': {
      if (!PURPOSES.includes(op.purpose as typeof PURPOSES[number])) throw new ValidationError('op.op.purpose', `must be one of ${PURPOSES.join(', ')}`)
      decoded = { kind: 'snapshot', name: name(), purpose: op.purpose as SnapshotPurpose }
      break
    }
    case 'sync': decoded = {
      kind: 'sync',
      name: name(),
      from: string(op.from, 'op.op.from', { max: 64, pattern: PEER_ID }),
      snapshot: op.snapshot === undefined || op.snapshot === null ? null : snap(op.snapshot, 'op.op.snapshot'),
      ...(op.restoreBytes !== undefined && op.restoreBytes !== null ? { restoreBytes: number(op.restoreBytes, 'op.op.restoreBytes', { min: 0, max: MAX_INT, integer: true }) } : {})
    }; break
    case 'handoff': decoded = { kind: 'handoff', name: name() }; break
    case 'restore': decoded = {
      kind: 'restore',
      app: decodeDesiredApp(op.app, 'op.op.app'),
      snapshot: snap(op.snapshot, 'op.op.snapshot'),
      from: op.from === null ? null : string(op.from, 'op.op.from', { max: 64, pattern: PEER_ID })
    }; break
    case 'retire': decoded = { kind: 'retire', name: name(), liveSnapshot: op.liveSnapshot === null ? null : snap(op.liveSnapshot, 'op.op.liveSnapshot') }; break
    case 'purge': decoded = { kind: 'purge', name: name(), snapshot: snap(op.snapshot, 'op.op.snapshot') }; break
    default: throw new ValidationError('op.op.kind', 'must be deploy, remove, snapshot, sync, handoff, restore, retire or purge')
  }
  return {
    term: number(r.term, 'op.term', { min: 0, max: MAX_INT, integer: true }),
    leader: string(r.leader, 'op.leader', { max: 64, pattern: PEER_ID }),
    op: decoded
  }
}

export function decodeOpResponse (raw: unknown): OpResponse {
  const r = record(raw, 'response')
  const out: OpResponse = { done: true, detail: string(r.detail, 'response.detail', { max: 4096 }) }
  if (r.snapshot !== undefined) out.snapshot = decodeSnapshotInfo(r.snapshot, 'response.snapshot')
  return out
}

export function decodeAppQuery (raw: unknown): AppQuery {
  const r = record(raw, 'query')
  const name = string(r.name, 'query.name', { max: 40, pattern: APP_NAME })
  if (r.kind === 'logs') return { kind: 'logs', name, tail: number(r.tail, 'query.tail', { min: 1, max: 10_000, integer: true }) }
  if (r.kind === 'why') return { kind: 'why', name }
  if (r.kind === 'rollback') return { kind: 'rollback', name, snapshot: string(r.snapshot, 'query.snapshot', { max: 64, pattern: SNAPSHOT_ID }) }
  throw new ValidationError('query.kind', 'must be logs, why or rollback')
}

/** The app's node's answer to a `logs` query: its id and the containers' last lines. */
export interface LogsReply { node: string, text: string }

/** Logs travel in an answer of at most 8 MiB (rpcCall's maxResponseBytes there). */
export const LOGS_MAX_CHARS = 8 * 1024 * 1024

export function decodeLogsReply (raw: unknown): LogsReply {
  const r = record(raw, 'logs')
  return { node: string(r.node, 'logs.node', { max: 64, pattern: PEER_ID }), text: string(r.text, 'logs.text', { max: LOGS_MAX_CHARS }) }
}

/** The leader's answer to a `why` query: the API's WhyView, checked field by field. */
export function decodeWhyReply (raw: unknown): WhyView {
  const r = record(raw, 'why')
  const nullable = <T>(v: unknown, decode: (v: unknown) => T): T | null => v === null ? null : decode(v)
  return {
    app: string(r.app, 'why.app', { max: 40, pattern: APP_NAME }),
    node: nullable(r.node, v => string(v, 'why.node', { max: 128 })),
    rejections: array(r.rejections, 'why.rejections', 1024, (v, f) => {
      const x = record(v, f)
      return { node: string(x.node, `${f}.node`, { max: 128 }), reason: string(x.reason, `${f}.reason`, { max: 4096 }) }
    }),
    planTerm: nullable(r.planTerm, v => number(v, 'why.planTerm', { min: 0, max: MAX_INT, integer: true })),
    planAt: nullable(r.planAt, v => number(v, 'why.planAt', { min: 0, max: MAX_INT, integer: true })),
    detail: string(r.detail, 'why.detail', { max: 16 * 1024 }),
    // What the app runs with (the permissions granted, and those it asks for but runs without): kept, not dropped, on the way from the leader.
    ...(r.grants !== undefined ? { grants: array(r.grants, 'why.grants', 1024, (v, f) => string(v, f, { max: 4096 })) } : {}),
    ...(r.ungranted !== undefined ? { ungranted: array(r.ungranted, 'why.ungranted', 1024, (v, f) => string(v, f, { max: 4096 })) } : {})
  }
}

/** A node's answer to a snapshot `list` query: its snapshots of the app. */
export function decodeSnapshotList (raw: unknown): SnapshotInfo[] {
  return array(raw, 'snapshots', 100_000, (v, f) => decodeSnapshotInfo(v, f))
}

/** The app's node's answer to `take`: the snapshot, and the nodes (by name) it was replicated to (none said: none). */
export function decodeTakeReply (raw: unknown): SnapshotInfo & { replicatedTo: string[] } {
  const r = record(raw, 'snapshot')
  return { ...decodeSnapshotInfo(r), replicatedTo: r.replicatedTo === undefined ? [] : array(r.replicatedTo, 'snapshot.replicatedTo', 1024, (v, f) => string(v, f, { max: 128 })) }
}

/** A peer's answer to `replicate`: what its pull of the app's repository fetched. */
export interface ReplicateReply { files: number, bytes: number }

export function decodeReplicateReply (raw: unknown): ReplicateReply {
  const r = record(raw, 'replicate')
  return {
    files: number(r.files, 'replicate.files', { min: 0, max: MAX_INT, integer: true }),
    bytes: number(r.bytes, 'replicate.bytes', { min: 0, max: MAX_INT, integer: true })
  }
}

function bool (value: unknown, field: string): boolean {
  if (typeof value !== 'boolean') throw new ValidationError(field, 'must be true or false')
  return value
}

const ARCH = /^[a-z0-9_]{1,16}$/

/**
 * Structural validation of a normalised manifest received from a peer: types,
 * sizes and names. What a user wrote is validated, with friendlier messages,
 * by apps/ before it ever becomes one of these.
 */
export function decodeManifest (raw: unknown, field: string): AppManifest {
  const r = record(raw, field)
  const req = record(r.requests, `${field}.requests`)
  const compose = record(r.compose, `${field}.compose`)
  const servicesRaw = record(compose.services, `${field}.compose.services`)
  const serviceNames = Object.keys(servicesRaw)
  if (serviceNames.length === 0 || serviceNames.length > 32) throw new ValidationError(`${field}.compose.services`, 'must hold 1 to 32 services')
  const services: Record<string, ComposeService> = {}
  for (const name of serviceNames) {
    if (!DOCKER_NAME.test(name)) throw new ValidationError(`${field}.compose.services.${name}`, 'is not a valid service name')
    services[name] = decodeService(servicesRaw[name], `${field}.compose.services.${name}`)
  }
  const volumesRaw = record(compose.volumes, `${field}.compose.volumes`)
  const volumes: AppManifest['compose']['volumes'] = {}
  for (const [name, v] of Object.entries(volumesRaw)) {
    if (!DOCKER_NAME.test(name)) throw new ValidationError(`${field}.compose.volumes.${name}`, 'is not a valid volume name')
    volumes[name] = { labels: stringMap(record(v, `${field}.compose.volumes.${name}`).labels ?? {}, `${field}.compose.volumes.${name}.labels`, { maxEntries: 64, key: LABEL_KEY, maxValue: 1024 }) }
  }
  const web = r.web === null ? null : record(r.web, `${field}.web`)
  return {
    id: string(r.id, `${field}.id`, { max: 64, pattern: /^[a-z0-9][a-z0-9._-]*$/ }),
    name: string(r.name, `${field}.name`, { max: 128 }),
    version: string(r.version, `${field}.version`, { max: 64 }),
    description: string(r.description, `${field}.description`, { max: 16_384 }),
    icon: r.icon === null ? null : string(r.icon, `${field}.icon`, { max: 2048 }),
    category: r.category === null ? null : string(r.category, `${field}.category`, { max: 64 }),
    architectures: array(r.architectures, `${field}.architectures`, 16, (v, f) => string(v, f, { max: 16, pattern: ARCH })),
    requests: {
      memoryBytes: number(req.memoryBytes, `${field}.requests.memoryBytes`, { min: 0, max: MAX_INT, integer: true }),
      cpus: number(req.cpus, `${field}.requests.cpus`, { min: 0, max: 1024 })
    },
    web: web === null ? null : decodeWeb(web, `${field}.web`),
    constraints: stringMap(r.constraints ?? {}, `${field}.constraints`, { maxEntries: 32, key: LABEL_KEY, maxValue: 128 }),
    compose: { services, volumes, configs: decodeConfigs(compose.configs, `${field}.compose.configs`, services) },
    ...(r.snapshots !== undefined ? { snapshots: decodeSnapshotPolicy(r.snapshots, `${field}.snapshots`) } : {})
  }
}

function decodeSnapshotPolicy (raw: unknown, field: string): SnapshotPolicy {
  const r = record(raw, field)
  const quiesce = r.quiesce
  if (quiesce !== 'pause' && quiesce !== 'stop' && quiesce !== 'none') throw new ValidationError(`${field}.quiesce`, 'must be pause, stop or none')
  const hook = r.hook === null ? null : record(r.hook, `${field}.hook`)
  return {
    everyMs: number(r.everyMs, `${field}.everyMs`, { min: 0, max: MAX_INT, integer: true }),
    replicas: number(r.replicas, `${field}.replicas`, { min: 0, max: 16, integer: true }),
    quiesce,
    hook: hook === null ? null : { service: string(hook.service, `${field}.hook.service`, { max: 63, pattern: DOCKER_NAME }), command: array(hook.command, `${field}.hook.command`, 64, (x, g) => string(x, g, { max: 4096 })) },
    ...(r.keep !== undefined ? { keep: decodeKeep(r.keep, `${field}.keep`) } : {})
  }
}

function decodeKeep (raw: unknown, field: string): NonNullable<SnapshotPolicy['keep']> {
  const r = record(raw, field)
  const count = (k: 'last' | 'hourly' | 'daily' | 'weekly'): number => number(r[k], `${field}.${k}`, { min: 0, max: KEEP_MAX, integer: true })
  return { last: count('last'), hourly: count('hourly'), daily: count('daily'), weekly: count('weekly') }
}

function decodeService (raw: unknown, field: string): ComposeService {
  const r = record(raw, field)
  const strings = (v: unknown, f: string): string[] | null => v === null ? null : array(v, f, 256, (x, g) => string(x, g, { max: 4096 }))
  const restart = r.restart
  if (restart !== 'no' && restart !== 'always' && restart !== 'on-failure' && restart !== 'unless-stopped') throw new ValidationError(`${field}.restart`, 'must be no, always, on-failure or unless-stopped')
  const hc = r.healthcheck === null ? null : record(r.healthcheck, `${field}.healthcheck`)
  return {
    image: string(r.image, `${field}.image`, { min: 1, max: 255 }),
    command: strings(r.command, `${field}.command`),
    entrypoint: strings(r.entrypoint, `${field}.entrypoint`),
    environment: stringMap(r.environment, `${field}.environment`, { maxEntries: 512, key: /^[^=\0]{1,255}$/, maxValue: 65_536 }),
    ports: array(r.ports, `${field}.ports`, 128, (v, f) => {
      const p = record(v, f)
      const protocol = p.protocol
      if (protocol !== 'tcp' && protocol !== 'udp') throw new ValidationError(`${f}.protocol`, 'must be tcp or udp')
      return { host: p.host === null ? null : port(p.host, `${f}.host`), container: port(p.container, `${f}.container`), protocol }
    }),
    volumes: array(r.volumes, `${field}.volumes`, 128, (v, f) => {
      const m = record(v, f)
      if (m.kind !== 'volume' && m.kind !== 'bind') throw new ValidationError(`${f}.kind`, 'must be volume or bind')
      const target = string(m.target, `${f}.target`, { max: 4096, pattern: /^\// })
      return { source: string(m.source, `${f}.source`, { min: 1, max: 4096 }), target, kind: m.kind, readOnly: bool(m.readOnly, `${f}.readOnly`) }
    }),
    healthcheck: hc === null
      ? null
      : {
          test: array(hc.test, `${field}.healthcheck.test`, 64, (x, g) => string(x, g, { max: 4096 })),
          intervalMs: number(hc.intervalMs, `${field}.healthcheck.intervalMs`, { min: 0, max: 86_400_000, integer: true }),
          timeoutMs: number(hc.timeoutMs, `${field}.healthcheck.timeoutMs`, { min: 0, max: 86_400_000, integer: true }),
          retries: number(hc.retries, `${field}.healthcheck.retries`, { min: 0, max: 1000, integer: true }),
          startPeriodMs: number(hc.startPeriodMs, `${field}.healthcheck.startPeriodMs`, { min: 0, max: 86_400_000, integer: true })
        },
    dependsOn: array(r.dependsOn, `${field}.dependsOn`, 32, (x, g) => string(x, g, { max: 63, pattern: DOCKER_NAME })),
    restart,
    labels: stringMap(r.labels, `${field}.labels`, { maxEntries: 128, key: LABEL_KEY, maxValue: 4096 }),
    user: r.user === null ? null : string(r.user, `${field}.user`, { max: 64 }),
    ...decodeServiceExtras(r, field)
  }
}

/**
 * The service keys added after the first release. Each absent one takes its
 * default, so a manifest a peer of an older version replicated (or a
 * snapshot it wrote) still decodes, meaning what it meant then.
 */
function decodeServiceExtras (r: Record<string, unknown>, field: string): ReturnType<typeof serviceDefaults> {
  const d = serviceDefaults()
  const opt = <T>(key: keyof typeof d, read: (v: unknown, f: string) => T, fallback: T): T => r[key] === undefined ? fallback : read(r[key], `${field}.${key}`)
  const limit = (v: unknown, f: string): number => number(v, f, { min: -1, max: MAX_INT, integer: true })
  return {
    workingDir: opt('workingDir', (v, f) => v === null ? null : string(v, f, { min: 1, max: 4096, pattern: /^\// }), d.workingDir),
    tty: opt('tty', bool, d.tty),
    stdinOpen: opt('stdinOpen', bool, d.stdinOpen),
    shmSizeBytes: opt('shmSizeBytes', (v, f) => v === null ? null : number(v, f, { min: 0, max: MAX_INT, integer: true }), d.shmSizeBytes),
    tmpfs: opt('tmpfs', (v, f) => array(v, f, 128, (t, g) => {
      const m = record(t, g)
      return { target: string(m.target, `${g}.target`, { max: 4096, pattern: /^\/[^:,]*$/ }), options: array(m.options, `${g}.options`, 16, (o, h) => string(o, h, { max: 32, pattern: TMPFS_OPTION })) }
    }), d.tmpfs),
    readOnly: opt('readOnly', bool, d.readOnly),
    capDrop: opt('capDrop', (v, f) => array(v, f, 64, (c, g) => string(c, g, { max: 32, pattern: /^[A-Z][A-Z_]*$/ })), d.capDrop),
    ulimits: opt('ulimits', (v, f) => {
      const out: ComposeService['ulimits'] = {}
      for (const [name, l] of Object.entries(record(v, f))) {
        if (!ULIMIT_NAMES.includes(name)) throw new ValidationError(`${f}.${name}`, 'is not a resource limit Docker knows')
        const u = record(l, `${f}.${name}`)
        out[name] = { soft: limit(u.soft, `${f}.${name}.soft`), hard: limit(u.hard, `${f}.${name}.hard`) }
      }
      return out
    }, d.ulimits),
    extraHosts: opt('extraHosts', (v, f) => array(v, f, 256, (h, g) => {
      const e = record(h, g)
      const address = string(e.address, `${g}.address`, { max: 45 })
      if (address !== 'host-gateway' && !isIpAddress(address)) throw new ValidationError(`${g}.address`, 'must be an IP address or host-gateway')
      return { host: string(e.host, `${g}.host`, { max: 253, pattern: HOST_NAME }), address }
    }), d.extraHosts),
    noNewPrivileges: opt('noNewPrivileges', bool, d.noNewPrivileges),
    configs: opt('configs', (v, f) => array(v, f, CONFIG_LIMITS.maxConfigs, (c, g) => {
      const m = record(c, g)
      return {
        source: string(m.source, `${g}.source`, { max: 63, pattern: DOCKER_NAME }),
        target: string(m.target, `${g}.target`, { max: 4096, pattern: /^\/[^:]*[^/:]$/ }),
        mode: number(m.mode, `${g}.mode`, { min: 0, max: 0o7777, integer: true })
      }
    }), d.configs),
    capAdd: opt('capAdd', (v, f) => array(v, f, 64, (c, g) => string(c, g, { max: 32, pattern: /^[A-Z][A-Z_]*$/ })), d.capAdd),
    devices: opt('devices', (v, f) => array(v, f, 64, (x, g) => {
      const m = record(x, g)
      return {
        host: string(m.host, `${g}.host`, { max: 255, pattern: DEVICE_PATH }),
        container: string(m.container, `${g}.container`, { max: 255, pattern: /^\/[^:]*$/ }),
        permissions: string(m.permissions, `${g}.permissions`, { min: 1, max: 3, pattern: /^[rwm]+$/ })
      }
    }), d.devices),
    networkMode: opt('networkMode', (v, f) => {
      if (v !== 'bridge' && v !== 'host') throw new ValidationError(f, 'must be bridge or host')
      return v
    }, d.networkMode),
    privileged: opt('privileged', bool, d.privileged),
    sysctls: opt('sysctls', (v, f) => stringMap(v, f, { maxEntries: 64, key: SYSCTL_NAME, maxValue: 255 }), d.sysctls)
  }
}

/** The project's configs, within CONFIG_LIMITS; every config a service mounts must be one of them. */
function decodeConfigs (raw: unknown, field: string, services: Record<string, ComposeService>): Record<string, { content: string }> {
  const out: Record<string, { content: string }> = {}
  let total = 0
  if (raw !== undefined) {
    const r = record(raw, field)
    if (Object.keys(r).length > CONFIG_LIMITS.maxConfigs) throw new ValidationError(field, `more than ${CONFIG_LIMITS.maxConfigs} configs`)
    for (const [name, c] of Object.entries(r)) {
      if (!DOCKER_NAME.test(name)) throw new ValidationError(`${field}.${name}`, 'is not a valid config name')
      const content = string(record(c, `${field}.${name}`).content, `${field}.${name}.content`, { max: CONFIG_LIMITS.maxBytes })
      const bytes = new TextEncoder().encode(content).length
      if (bytes > CONFIG_LIMITS.maxBytes) throw new ValidationError(`${field}.${name}.content`, `longer than ${CONFIG_LIMITS.maxBytes} bytes`)
      total += bytes
      out[name] = { content }
    }
  }
  if (total > CONFIG_LIMITS.maxTotalBytes) throw new ValidationError(field, `configs hold more than ${CONFIG_LIMITS.maxTotalBytes} bytes`)
  for (const [name, svc] of Object.entries(services)) {
    for (const c of svc.configs) {
      if (!Object.hasOwn(out, c.source)) throw new ValidationError(field, `service ${name} mounts config ${c.source}, which the app does not have`)
    }
  }
  return out
}

function decodeWeb (web: Record<string, unknown>, field: string): NonNullable<AppManifest['web']> {
  const out: NonNullable<AppManifest['web']> = { service: string(web.service, `${field}.service`, { max: 63, pattern: DOCKER_NAME }), port: port(web.port, `${field}.port`) }
  if (web.path !== undefined) out.path = string(web.path, `${field}.path`, { max: 2048, pattern: /^\// })
  if (web.scheme !== undefined) {
    if (web.scheme !== 'http' && web.scheme !== 'https') throw new ValidationError(`${field}.scheme`, 'must be http or https')
    out.scheme = web.scheme
  }
  return out
}

function port (value: unknown, field: string): number {
  return number(value, field, { min: 1, max: 65_535, integer: true })
}

/** Whether log `a` is more up to date than log `b`: by the term of its last entry, then by its length (Raft §5.4.1). */
export function moreUpToDate (a: { lastTerm: number, lastIndex: number }, b: { lastTerm: number, lastIndex: number }): boolean {
  return a.lastTerm !== b.lastTerm ? a.lastTerm > b.lastTerm : a.lastIndex > b.lastIndex
}
