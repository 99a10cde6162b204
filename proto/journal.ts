/**
 * The journal of a long operation (a move, a failover, a rollback): its
 * steps, as data, and how far it got. It is kept with the app in the
 * replicated desired state, so a new leader resumes it (scheduler/procedure.ts
 * runs it; docs/design.md, "Long operations").
 */
import type { Relocation } from './plan.ts'
import { APP_NAME } from './cluster.ts'
import { MAX_INT, PEER_ID, SNAPSHOT_ID, ValidationError, array, number, record, string } from './validate.ts'

export interface SnapshotRef { id: string, time: number }

export type ProcedureKind = 'move' | 'failover' | 'rollback'

/** Where a restore's or a record's snapshot comes from: one known when planned, or the move's final one. */
export type SnapshotSource = SnapshotRef | 'final'

export type Step =
  /** Snapshot the app where it runs, while it runs (the bulk of a move): `results.copy`. */
  | { do: 'copy', node: string }
  /** The target pulls the app's repository from `from`, staging the copy when it is big. */
  | { do: 'sync', node: string, from: string }
  /** The app stops for good where it runs and its final snapshot is taken: `results.final`. */
  | { do: 'handoff', node: string }
  /** The target pulls the final increment: from here the data no longer depends on the source. */
  | { do: 'fetch', node: string, from: string }
  /** A failover waits until the dead node's copy has fenced itself. */
  | { do: 'fence-wait', until: number }
  /** Commits the new data generation: from here on, any older copy is stale wherever it is found. */
  | { do: 'generation', generation: number }
  /** Restores the snapshot on `node` (fetching it from `from` when missing) and starts the app. */
  | { do: 'restore', node: string, snapshot: SnapshotSource, from: string | null }
  /** Commits what the user is shown: where the data came from. */
  | { do: 'record', kind: Relocation['kind'], from: string | null, to: string, snapshot: SnapshotSource }
  /** Removes the old copy once its final snapshot is held there (best effort: a copy left is only disk). */
  | { do: 'purge', node: string }
  /** Recovery: starts the app again where it was stopped, on its own data (same generation). */
  | { do: 'start', node: string }

export interface Journal {
  /** `move-notes-1733600000000`: the kind, the app, when it began. */
  id: string
  kind: ProcedureKind
  app: string
  steps: Step[]
  /** How many steps are finished and recorded. */
  done: number
  startedAt: number
  /** What the steps produced, by name. */
  results: {
    copy?: SnapshotRef & { bytes: number }
    final?: SnapshotRef
    /** When the app stopped answering (the handoff), for the move's downtime. */
    stoppedAt?: number
  }
  /** Set once the plan was replaced by a recovery: why. */
  recovery?: string
}


/** At most this many steps: a move has 8, a recovery replaces the rest with 1. */
const MAX_STEPS = 16

export function decodeJournal (raw: unknown, field = 'journal'): Journal {
  const r = record(raw, field)
  const kind = r.kind
  if (kind !== 'move' && kind !== 'failover' && kind !== 'rollback') throw new ValidationError(`${field}.kind`, 'must be move, failover or rollback')
  const steps = array(r.steps, `${field}.steps`, MAX_STEPS, decodeStep)
  const results = record(r.results, `${field}.results`)
  const j: Journal = {
    id: string(r.id, `${field}.id`, { max: 100, pattern: /^[a-z]+-[a-z0-9-]+-\d+$/ }),
    kind,
    app: string(r.app, `${field}.app`, { max: 40, pattern: APP_NAME }),
    steps,
    done: number(r.done, `${field}.done`, { min: 0, max: steps.length, integer: true }),
    startedAt: time(r.startedAt, `${field}.startedAt`),
    results: {
      ...(results.copy !== undefined ? { copy: { ...snapshotRef(results.copy, `${field}.results.copy`), bytes: number(record(results.copy, `${field}.results.copy`).bytes, `${field}.results.copy.bytes`, { min: 0, max: MAX_INT, integer: true }) } } : {}),
      ...(results.final !== undefined ? { final: snapshotRef(results.final, `${field}.results.final`) } : {}),
      ...(results.stoppedAt !== undefined ? { stoppedAt: time(results.stoppedAt, `${field}.results.stoppedAt`) } : {})
    }
  }
  if (r.recovery !== undefined) j.recovery = string(r.recovery, `${field}.recovery`, { max: 2000 })
  return j
}

function time (v: unknown, field: string): number {
  return number(v, field, { min: 0, max: MAX_INT, integer: true })
}

function peer (v: unknown, field: string): string {
  return string(v, field, { max: 64, pattern: PEER_ID })
}

function snapshotRef (raw: unknown, field: string): SnapshotRef {
  const r = record(raw, field)
  return { id: string(r.id, `${field}.id`, { max: 64, pattern: SNAPSHOT_ID }), time: time(r.time, `${field}.time`) }
}

function snapshotSource (raw: unknown, field: string): SnapshotSource {
  return raw === 'final' ? 'final' : snapshotRef(raw, field)
}

function decodeStep (raw: unknown, field: string): Step {
  const r = record(raw, field)
  switch (r.do) {
    case 'copy': case 'handoff': case 'purge': case 'start': return { do: r.do, node: peer(r.node, `${field}.node`) }
    case 'sync': case 'fetch': return { do: r.do, node: peer(r.node, `${field}.node`), from: peer(r.from, `${field}.from`) }
    case 'fence-wait': return { do: 'fence-wait', until: time(r.until, `${field}.until`) }
    case 'generation': return { do: 'generation', generation: number(r.generation, `${field}.generation`, { min: 1, max: MAX_INT, integer: true }) }
    case 'restore': return { do: 'restore', node: peer(r.node, `${field}.node`), snapshot: snapshotSource(r.snapshot, `${field}.snapshot`), from: r.from === null ? null : peer(r.from, `${field}.from`) }
    case 'record': {
      const kind = r.kind
      if (kind !== 'failover' && kind !== 'move' && kind !== 'rollback' && kind !== 'restore') throw new ValidationError(`${field}.kind`, 'must be failover, move, rollback or restore')
      return { do: 'record', kind, from: r.from === null ? null : peer(r.from, `${field}.from`), to: peer(r.to, `${field}.to`), snapshot: snapshotSource(r.snapshot, `${field}.snapshot`) }
    }
    default: throw new ValidationError(`${field}.do`, 'must be copy, sync, handoff, fetch, fence-wait, generation, restore, record, purge or start')
  }
}
