/**
 * The replicated desired state on this node's disk: every app the user asked
 * for, as a log of changes (Raft's log) and the state those changes make.
 * Every node keeps a copy so any survivor can lead with nothing lost.
 *
 * On disk, in DATA_DIR/state/:
 * - `snapshot.json`: the committed state at some index (its `revision`);
 * - `log.jsonl`: the entries after it, one JSON object a line, and commit
 *   marks (`{"commit": N}`) recording how far the log is known committed.
 *
 * Appends are fsynced before they are acknowledged; the snapshot is rewritten
 * only at compaction (every COMPACT_AFTER entries), so a change costs one
 * appended line, not a rewrite of the whole state. Readers see only the
 * committed state (`current()`); the leader validates new changes against the
 * tip (`tip()`), committed or not.
 */
import { createHash } from 'node:crypto'
import { constants } from 'node:fs'
import { copyFile, mkdir, open, readFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import { decodeDesiredState, decodeLogEntry, type DesiredChange, type DesiredState, type LogEntry } from '../../proto/cluster.ts'
import type { Journal } from '../../proto/journal.ts'
import type { DesiredApp } from '../../proto/plan.ts'
import { appReach, reservedNameReason } from '../../proto/frontdoor.ts'
import { CHALLENGES_MAX } from '../../proto/acme.ts'
import { SECRETS_MAX_COUNT, SECRETS_MAX_TOTAL, sealedSize } from '../../proto/secrets.ts'
import { checkGrants, grandfatheredGrants, storagePermission } from '../../proto/permissions.ts'
import { ValidationError } from '../../proto/validate.ts'
import { lastIndex, lastTerm, termAt, type LogView } from '../../scheduler/replication.ts'
import { RpcError } from '../mesh/rpc.ts'
import { KeyedMutex } from '../util/async.ts'
import { fsyncDir, writeFileDurable } from '../util/durable.ts'
import type { Logger } from '../util/log.ts'

export const EMPTY_STATE: DesiredState = { revision: 0, term: 0, apps: [] }

/** After this many entries past the snapshot, the committed ones are folded into a new snapshot. */
export const COMPACT_AFTER = 64

/**
 * Applies a change to the desired state, as the entry at `at`; pure. Throws
 * RpcError with a code a client can act on when the change does not fit.
 */
export function applyChange (state: DesiredState, change: DesiredChange, at: { index: number, term: number }, opts: { committed?: boolean } = {}): DesiredState {
  const revision = at.index
  const term = at.term
  switch (change.kind) {
    case 'install': {
      if (state.apps.some(a => a.name === change.app.name)) {
        throw new RpcError('exists', `an app named ${change.app.name} is already installed; pick another --name`)
      }
      // Its host would be one the cluster needs (proto/frontdoor.ts). Checked by the leader, whoever sent it;
      // an entry committed before this rule is replayed (a committed install is never skipped).
      const reserved = reservedNameReason(change.app.name)
      if (reserved !== null && opts.committed !== true) throw new RpcError('bad_request', `change.app.name: ${reserved}`)
      if (opts.committed === true && change.app.grants === undefined) {
        // An entry the leader of its day committed before permissions existed: replayed with the
        // grants that day implied, never skipped (skipping it would uninstall the app).
        const grants = grandfatheredGrants(change.app.manifest, change.app.storage)
        return { ...state, revision, term, apps: [...state.apps, { ...change.app, ...(grants.length > 0 ? { grants } : {}), revision }] }
      }
      // Whatever the client did: an app is installed only with every power it requests granted.
      grantsOrRefuse(() => { checkGrants(change.app.manifest, change.app.grants ?? [], 'grants', true, change.app.storage) })
      return { ...state, revision, term, apps: [...state.apps, { ...change.app, revision }] }
    }
    case 'grants': {
      const app = state.apps.find(a => a.name === change.name)
      if (app === undefined) throw new RpcError('not_found', `no app named ${change.name}`)
      const both = change.grant.filter(g => change.revoke.includes(g))
      if (both.length > 0) throw new RpcError('bad_request', `revoke: ${both.join(', ')} is also granted by the same change`)
      grantsOrRefuse(() => { checkGrants(app.manifest, change.grant, 'grant', false, app.storage) })
      grantsOrRefuse(() => { checkGrants(app.manifest, change.revoke, 'revoke', false, app.storage) })
      const kept = storagePermission(app.storage)
      if (kept !== null && change.revoke.includes(kept)) throw new RpcError('bad_request', `revoke: ${change.name} keeps its data in ${app.storage?.hostPath ?? ''}; ${kept} cannot be revoked while it does (back it up and restore it elsewhere, or remove it)`)
      const before = app.grants ?? []
      const grants = [...new Set([...before, ...change.grant])].filter(g => !change.revoke.includes(g)).sort()
      // Refused, not a no-op: a change of grants redeploys the app, which must then change a container.
      if (grants.join('\n') === before.join('\n')) throw new RpcError('bad_request', `${change.name} already runs with ${change.grant.length > 0 ? `${change.grant.join(', ')} granted` : `${change.revoke.join(', ')} not granted`}: nothing to change`)
      // A new revision, and the one the grants changed at: the copy running is deployed again (scheduler/reconcile.ts), its containers with exactly these powers.
      return { ...state, revision, term, apps: state.apps.map(a => a.name === change.name ? { ...a, grants, revision, grantsRevision: revision } : a) }
    }
    case 'expose': {
      const app = state.apps.find(a => a.name === change.name)
      if (app === undefined) throw new RpcError('not_found', `no app named ${change.name}`)
      if (appReach(app) === change.reach) throw new RpcError('bad_request', `${change.name} is reachable from ${change.reach === 'lan' ? 'the LAN only' : 'the internet'} already: nothing to change`)
      // Not the app's revision: its containers stay as they are; only the front doors change (on commit).
      const { reach: _old, ...rest } = app
      return { ...state, revision, term, apps: state.apps.map(a => a.name === change.name ? { ...rest, ...(change.reach === 'internet' ? { reach: 'internet' as const } : {}) } : a) }
    }
    case 'remove': {
      if (!state.apps.some(a => a.name === change.name)) throw new RpcError('not_found', `no app named ${change.name}`)
      return { ...state, revision, term, apps: state.apps.filter(a => a.name !== change.name) }
    }
    case 'move': {
      const app = state.apps.find(a => a.name === change.name)
      if (app === undefined) throw new RpcError('not_found', `no app named ${change.name}`)
      return { ...state, revision, term, apps: state.apps.map(a => a.name === change.name ? { ...a, pinnedNode: change.node, revision } : a) }
    }
    case 'drain': {
      const drained = new Set(state.drained ?? [])
      if (change.drained) drained.add(change.node)
      else drained.delete(change.node)
      return { ...state, revision, term, drained: [...drained].sort() }
    }
    case 'domain': {
      if ((state.domain ?? null) === change.domain) throw new RpcError('bad_request', `the cluster's domain is ${change.domain ?? 'the default'} already: nothing to change`)
      const { domain: _old, ...rest } = state
      return { ...rest, revision, term, ...(change.domain !== null ? { domain: change.domain } : {}) }
    }
    case 'acme': {
      const { acme: _old, acmeFailure: _failure, ...rest } = state
      return { ...rest, revision, term, ...(change.acme !== null ? { acme: change.acme } : {}) }
    }
    case 'secret': {
      const { [change.name]: had, ...others } = state.secrets ?? {}
      if (change.sealed === null && had === undefined) throw new RpcError('not_found', `no secret named ${change.name}`)
      if (change.sealed !== null && had === undefined && Object.keys(others).length >= SECRETS_MAX_COUNT) throw new RpcError('bad_request', `the cluster holds ${SECRETS_MAX_COUNT} secrets already`)
      const secrets = change.sealed === null ? others : { ...others, [change.name]: change.sealed }
      if (change.sealed !== null && sealedSize(secrets) > SECRETS_MAX_TOTAL) throw new RpcError('bad_request', `the cluster's secrets would take more than ${SECRETS_MAX_TOTAL} bytes`)
      const { secrets: _old, ...rest } = state
      return { ...rest, revision, term, ...(Object.keys(secrets).length > 0 ? { secrets } : {}) }
    }
    case 'challenge': {
      const { [change.token]: _had, ...others } = state.challenges ?? {}
      if (change.keyAuthorization !== null && Object.keys(others).length >= CHALLENGES_MAX) throw new RpcError('bad_request', `${CHALLENGES_MAX} ACME challenges are open already`)
      const challenges = change.keyAuthorization === null ? others : { ...others, [change.token]: change.keyAuthorization }
      const { challenges: _old, ...rest } = state
      return { ...rest, revision, term, ...(Object.keys(challenges).length > 0 ? { challenges } : {}) }
    }
    case 'acme-failure': {
      const { acmeFailure: _old, ...rest } = state
      return { ...rest, revision, term, ...(change.failure !== null ? { acmeFailure: change.failure } : {}) }
    }
    case 'relocate': {
      const app = state.apps.find(a => a.name === change.name)
      if (app === undefined) throw new RpcError('not_found', `no app named ${change.name}`)
      if (change.generation < (app.generation ?? 1)) throw new RpcError('conflict', `${change.name} is at data generation ${app.generation ?? 1} already`)
      // Not a user's change: the app's revision (what its containers are labelled with) stays.
      return { ...state, revision, term, apps: state.apps.map(a => a.name === change.name ? { ...a, generation: change.generation, relocation: change.relocation } : a) }
    }
    case 'journal': {
      const app = state.apps.find(a => a.name === change.name)
      if (app === undefined) throw new RpcError('not_found', `no app named ${change.name}`)
      if (change.journal !== null && change.journal.app !== change.name) throw new RpcError('bad_request', `the journal of ${change.journal.app} cannot be kept with ${change.name}`)
      // Compare-and-set: an executor whose app was removed and installed again, or whose journal another leader took over, writes nothing.
      const held = app.journal?.id ?? null
      if (held !== change.replaces) throw new RpcError('conflict', `${change.name} holds ${held === null ? 'no journal' : `journal ${held}`}, not ${change.replaces ?? 'none'}`)
      // Not a user's change either: the revision its containers carry stays.
      return { ...state, revision, term, apps: state.apps.map(a => a.name !== change.name ? a : withJournal(a, change.journal)) }
    }
  }
}

function withJournal (app: DesiredApp, journal: Journal | null): DesiredApp {
  const { journal: _old, ...rest } = app
  return journal === null ? rest : { ...rest, journal }
}

/** A grant check's ValidationError as the RPC error a client sees (bad_request, naming the field). */
function grantsOrRefuse (check: () => void): void {
  try {
    check()
  } catch (err) {
    if (err instanceof ValidationError) throw new RpcError('bad_request', err.message)
    throw err
  }
}

/**
 * Applies a committed log entry. The leader checked the change against the
 * same state before appending it, so it fits; should it not (a bug), the
 * entry still takes its index, so every node stays at the same revision.
 */
export function applyEntry (state: DesiredState, entry: LogEntry, log?: Logger): DesiredState {
  if (entry.change === null) return { ...state, revision: entry.index, term: entry.term }
  try {
    return applyChange(state, entry.change, entry, { committed: true })
  } catch (err) {
    log?.error('a committed log entry does not apply; skipped it', { index: entry.index, change: entry.change.kind, error: (err as Error).message })
    return { ...state, revision: entry.index, term: entry.term }
  }
}

/** A digest of the state that is the same on every node holding the same state (for tests and `dcloud status --json`). */
export function stateDigest (state: DesiredState): string {
  return createHash('sha256').update(JSON.stringify(state)).digest('hex').slice(0, 16)
}

export class DesiredStore {
  private readonly dir: string
  private readonly legacyPath: string
  private readonly log: Logger
  /** The committed, applied state. */
  private state: DesiredState = EMPTY_STATE
  /** The snapshot on disk covers the log up to here. */
  private snapshotIndex = 0
  private snapshotTerm = 0
  /** Entries after the snapshot, in memory as on disk. */
  private entries: LogEntry[] = []
  private commitIndex = 0
  private readonly writes = new KeyedMutex()
  private readonly onCommit: Array<(state: DesiredState) => void> = []

  constructor (dataDir: string, log: Logger) {
    this.dir = join(dataDir, 'state')
    this.legacyPath = join(dataDir, 'desired.json')
    this.log = log
  }

  private get snapshotPath (): string { return join(this.dir, 'snapshot.json') }
  private get logPath (): string { return join(this.dir, 'log.jsonl') }

  /** Called after every commit, with the new committed state. */
  onCommitted (fn: (state: DesiredState) => void): void {
    this.onCommit.push(fn)
  }

  async load (): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 })
    let snapshot = await this.readSnapshot()
    if (snapshot === null) snapshot = await this.migrateLegacy()
    if (snapshot !== null) {
      this.state = snapshot
      this.snapshotIndex = snapshot.revision
      this.snapshotTerm = snapshot.term
      this.commitIndex = snapshot.revision
    }
    const { entries, commit, damaged } = await this.readLog()
    this.entries = entries
    const upTo = Math.min(commit, lastIndex(this.view()))
    if (upTo > this.commitIndex) this.applyUpTo(upTo)
    if (damaged) await this.rewriteLog()
    this.log.debug('replicated state loaded', { revision: this.state.revision, lastIndex: this.lastIndex, commitIndex: this.commitIndex })
  }

  /** The committed desired state: what the cluster has agreed on. */
  current (): DesiredState {
    return this.state
  }

  /** The log as the replication rules see it. */
  view (): LogView {
    return { snapshotIndex: this.snapshotIndex, snapshotTerm: this.snapshotTerm, entries: this.entries, commitIndex: this.commitIndex }
  }

  get lastIndex (): number { return lastIndex(this.view()) }
  get lastTerm (): number { return lastTerm(this.view()) }
  get committed (): number { return this.commitIndex }

  termAt (index: number): number | null {
    return termAt(this.view(), index)
  }

  /** Up to `max` entries from `index` on; empty when `index` is past the end or compacted away. */
  entriesFrom (index: number, max: number): LogEntry[] {
    if (index <= this.snapshotIndex) return []
    return this.entries.slice(index - this.snapshotIndex - 1, index - this.snapshotIndex - 1 + max)
  }

  /** The state with every entry applied, committed or not: what a new change must fit. */
  tip (): DesiredState {
    let s = this.state
    for (const e of this.entries) if (e.index > this.commitIndex) s = applyEntry(s, e)
    return s
  }

  /**
   * Drops the entries after `truncateAfter` (when given; never committed
   * ones) and appends `append`, durably: returns once they are on disk.
   */
  async appendEntries (truncateAfter: number | null, append: LogEntry[]): Promise<void> {
    await this.writes.run('log', async () => {
      if (truncateAfter !== null && truncateAfter < this.lastIndex) {
        if (truncateAfter < this.commitIndex) throw new Error(`refusing to drop committed entries after ${truncateAfter} (committed up to ${this.commitIndex})`)
        const dropped = this.lastIndex - truncateAfter
        this.entries = this.entries.slice(0, truncateAfter - this.snapshotIndex)
        await this.rewriteLog()
        this.log.info('dropped uncommitted log entries of an older term', { after: truncateAfter, dropped })
      }
      if (append.length === 0) return
      if ((append[0] as LogEntry).index !== this.lastIndex + 1) throw new Error(`entry ${(append[0] as LogEntry).index} does not follow the log's last entry ${this.lastIndex}`)
      await this.appendLines(append.map(e => JSON.stringify(e)))
      this.entries.push(...append)
    })
  }

  /** Marks the log committed up to `index` and applies the entries that became committed. */
  async commit (index: number): Promise<void> {
    const advanced = await this.writes.run('log', async () => {
      const upTo = Math.min(index, this.lastIndex)
      if (upTo <= this.commitIndex) return false
      // The mark is fsynced too: a node that restarts serves what it knew was committed.
      await this.appendLines([JSON.stringify({ commit: upTo })])
      this.applyUpTo(upTo)
      if (this.entries.length >= COMPACT_AFTER) await this.compact()
      return true
    })
    if (advanced) for (const fn of this.onCommit) fn(this.state)
  }

  /**
   * Takes a state the leader committed at `index` in place of the log up to
   * there (a follower that was away longer than the leader keeps entries).
   */
  async installSnapshot (index: number, term: number, state: DesiredState): Promise<void> {
    await this.writes.run('log', async () => {
      if (index <= this.commitIndex) return
      // Entries past the snapshot survive only if they continue it.
      const keep = this.termAt(index) === term ? this.entries.filter(e => e.index > index) : []
      await writeFileDurable(this.snapshotPath, JSON.stringify({ ...state, revision: index, term }))
      this.state = state
      this.snapshotIndex = index
      this.snapshotTerm = term
      this.commitIndex = index
      this.entries = keep
      await this.rewriteLog()
      this.log.info('took a snapshot of the replicated state from the leader', { revision: index, term })
    })
    for (const fn of this.onCommit) fn(this.state)
  }

  private applyUpTo (upTo: number): void {
    for (const e of this.entries) {
      if (e.index <= this.commitIndex) continue
      if (e.index > upTo) break
      this.state = applyEntry(this.state, e, this.log)
    }
    this.commitIndex = upTo
  }

  /** Folds the committed entries into a new snapshot; the uncommitted tail stays in the log. */
  private async compact (): Promise<void> {
    const term = this.termAt(this.commitIndex) ?? this.state.term
    await writeFileDurable(this.snapshotPath, JSON.stringify(this.state))
    this.entries = this.entries.filter(e => e.index > this.commitIndex)
    this.snapshotIndex = this.commitIndex
    this.snapshotTerm = term
    await this.rewriteLog()
  }

  private async rewriteLog (): Promise<void> {
    const lines = this.entries.map(e => JSON.stringify(e))
    if (this.commitIndex > this.snapshotIndex) lines.push(JSON.stringify({ commit: this.commitIndex }))
    await writeFileDurable(this.logPath, lines.length > 0 ? lines.join('\n') + '\n' : '')
  }

  private async appendLines (lines: string[]): Promise<void> {
    const fh = await open(this.logPath, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT, 0o600)
    let created = false
    try {
      created = (await fh.stat()).size === 0
      await fh.writeFile(lines.join('\n') + '\n')
      await fh.sync()
    } finally {
      await fh.close()
    }
    if (created) await fsyncDir(this.dir)
  }

  private async readSnapshot (): Promise<DesiredState | null> {
    let text: string
    try { text = await readFile(this.snapshotPath, 'utf8') } catch { return null }
    try {
      return decodeDesiredState(JSON.parse(text))
    } catch (err) {
      // Never throw away what the user asked for: keep the unreadable file beside.
      const keep = `${this.snapshotPath}.unreadable-${Date.now()}`
      await copyFile(this.snapshotPath, keep)
      this.log.error('the replicated state on disk is unreadable; kept it, and starting empty until the leader sends its copy', { kept: keep, error: (err as Error).message })
      return null
    }
  }

  /** A node upgraded from the whole-document format: its desired.json becomes the first snapshot (kept, renamed). */
  private async migrateLegacy (): Promise<DesiredState | null> {
    let state: DesiredState
    try {
      state = decodeDesiredState(JSON.parse(await readFile(this.legacyPath, 'utf8')))
    } catch {
      return null
    }
    await writeFileDurable(this.snapshotPath, JSON.stringify(state))
    await rename(this.legacyPath, `${this.legacyPath}.migrated`)
    this.log.info('moved the desired state into the replicated log', { revision: state.revision })
    return state
  }

  /**
   * Reads the log: entries continuing the snapshot, and the highest commit
   * mark. A torn last line (a crash mid-append, never acknowledged) is
   * dropped; anything else unreadable is kept aside and the log ends before
   * it. Either way the caller rewrites the log as it now stands.
   */
  private async readLog (): Promise<{ entries: LogEntry[], commit: number, damaged: boolean }> {
    let text: string
    try { text = await readFile(this.logPath, 'utf8') } catch { return { entries: [], commit: 0, damaged: false } }
    // The piece after the last newline is empty, or a torn append.
    const complete = text.split('\n').slice(0, -1)
    const entries: LogEntry[] = []
    let commit = 0
    let damaged = false
    for (const line of complete) {
      try {
        const raw = JSON.parse(line) as Record<string, unknown>
        if (typeof raw.commit === 'number' && Object.keys(raw).length === 1) { commit = Math.max(commit, raw.commit); continue }
        const e = decodeLogEntry(raw)
        if (e.index <= this.snapshotIndex) continue // left by a compaction cut short: the snapshot has it
        const expected = this.snapshotIndex + entries.length + 1
        if (e.index !== expected) throw new Error(`entry ${e.index} where ${expected} was expected`)
        entries.push(e)
      } catch (err) {
        damaged = true
        const keep = `${this.logPath}.unreadable-${Date.now()}`
        await copyFile(this.logPath, keep)
        this.log.error('the replicated log on disk is damaged; kept it and using the entries before the damage', { kept: keep, error: (err as Error).message })
        break
      }
    }
    return { entries, commit, damaged: damaged || (text !== '' && !text.endsWith('\n')) }
  }
}
