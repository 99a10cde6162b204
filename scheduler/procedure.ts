/**
 * Long operations as journalled steps: a move, a failover and a rollback are
 * lists of steps, data like the plan's operations, run by one executor that
 * records each finished step in a journal. The journal lives with the app in
 * the replicated desired state, so whoever leads next (the same leader after
 * a restart, or another) resumes from the step reached, or rolls back from it.
 *
 * Pure: the executor reaches the world only through a ProcedurePort (the
 * leader's sends and commits in agent/cluster/procedures.ts; a simulated
 * cluster in test/unit/procedure-harness.test.ts that interrupts every step).
 *
 * Every step may run twice (done, then the leader died before recording it):
 * each is idempotent where it runs. A copy or a sync again only costs time; a
 * handoff again snapshots the same stopped data; a commit again sets the same
 * value; a restore again is refused by the node once it runs the generation
 * (agent/cluster/stateful.ts): restoring over a copy that took writes would
 * lose them.
 */
import type { Journal, ProcedureKind, SnapshotRef, SnapshotSource, Step } from '../proto/journal.ts'

/** The node a step runs on, or null for the leader's own steps (commits, waits). */
export function nodeOf (step: Step): string | null {
  return 'node' in step ? step.node : null
}

function begin (kind: ProcedureKind, app: string, steps: Step[], now: number): Journal {
  return { id: `${kind}-${app}-${now}`, kind, app, steps, done: 0, startedAt: now, results: {} }
}

/**
 * A planned move: copy while the app runs, the target pulls it, the source
 * stops and takes the final increment, the target pulls that too, then the
 * new generation is committed, the target restores and starts, and only then
 * is the source's copy removed. The target holds the final snapshot before
 * the commit: a source that dies after it loses nothing.
 */
export function moveSteps (app: string, from: string, to: string, generation: number, now: number): Journal {
  return begin('move', app, [
    { do: 'copy', node: from },
    { do: 'sync', node: to, from },
    { do: 'handoff', node: from },
    { do: 'fetch', node: to, from },
    { do: 'generation', generation },
    { do: 'restore', node: to, snapshot: 'final', from: null },
    { do: 'record', kind: 'move', from, to, snapshot: 'final' },
    { do: 'purge', node: from }
  ], now)
}

/** The app's node is dead: once its copy has fenced, a new generation is restored from `snapshot` on `node`. */
export function failoverSteps (app: string, opts: { node: string, snapshot: SnapshotRef, source: string, previous: string | null, generation: number, fencedBy: number, kind: 'failover' | 'restore' }, now: number): Journal {
  return begin('failover', app, [
    { do: 'fence-wait', until: opts.fencedBy },
    { do: 'generation', generation: opts.generation },
    { do: 'restore', node: opts.node, snapshot: opts.snapshot, from: opts.source === opts.node ? null : opts.source },
    { do: 'record', kind: opts.kind, from: opts.previous, to: opts.node, snapshot: opts.snapshot }
  ], now)
}

/**
 * `dcloud snapshot restore`: where the app runs (`where`), its current data
 * first becomes a snapshot (a rollback loses nothing), then `snapshot` is
 * restored on `node` as a new generation.
 */
export function rollbackSteps (app: string, opts: { where: string | null, node: string, snapshot: SnapshotRef, source: string | null, generation: number }, now: number): Journal {
  return begin('rollback', app, [
    ...(opts.where !== null ? [{ do: 'handoff', node: opts.where } as const] : []),
    { do: 'generation', generation: opts.generation },
    { do: 'restore', node: opts.node, snapshot: opts.snapshot, from: opts.source },
    { do: 'record', kind: 'rollback', from: opts.where, to: opts.node, snapshot: opts.snapshot }
  ], now)
}

/** The snapshot a step names, once the steps before it produced it. */
export function snapshotOf (j: Journal, source: SnapshotSource): SnapshotRef {
  if (source !== 'final') return source
  if (j.results.final === undefined) throw new Error(`${j.id}: no final snapshot recorded before the step that needs it`)
  return j.results.final
}

function finished (j: Journal, what: Step['do']): boolean {
  return j.steps.slice(0, j.done).some(s => s.do === what)
}

export type Recovery =
  | { then: 'abandon', why: string }
  | { then: 'replace', steps: Step[], why: string }

/**
 * What to do when the next step failed, or its node is not alive. The one
 * rule: the app must end with exactly one copy and its newest data.
 * - Before the source stopped: nothing to undo; the move is dropped.
 * - The source stopped, no new generation yet (the one step left before it
 *   is the target's fetch of the final increment, which needs the source):
 *   start the app again on the source's own data, whose generation is still
 *   the live one. The source dead: dropped; the scheduler restores the newest
 *   snapshot a live node holds once the source is declared dead, and retires
 *   the stopped copy into a kept snapshot when it returns.
 * - The new generation committed: the restore must happen; if it cannot
 *   (its node dead, its disk full), dropped: the scheduler restores the
 *   newest snapshot a live node holds, the final one included, elsewhere.
 * - Recorded: only the purge is left; a failure leaves the old copy's disk.
 */
export function recover (j: Journal, alive: (node: string) => boolean, failure: string): Recovery {
  const step = j.steps[j.done]
  if (step === undefined) return { then: 'abandon', why: 'nothing left to do' }
  if (j.recovery !== undefined) return { then: 'abandon', why: `${failure} (while recovering: ${j.recovery})` }
  if (finished(j, 'record')) return { then: 'abandon', why: `the old copy stays: ${failure}` }
  if (finished(j, 'generation')) return { then: 'abandon', why: `the new generation is committed but ${failure}; the scheduler restores the newest snapshot elsewhere` }
  if (!finished(j, 'handoff')) return { then: 'abandon', why: `${failure}; the app still runs where it was` }
  const handoff = j.steps.find(s => s.do === 'handoff') as Extract<Step, { do: 'handoff' }>
  if (alive(handoff.node)) return { then: 'replace', steps: [{ do: 'start', node: handoff.node }], why: `${failure}; the app starts again on its own data` }
  return { then: 'abandon', why: `${failure}; neither copy can go on now: the scheduler takes it from here` }
}

/** Everything the executor does to the world. */
export interface ProcedurePort {
  /** Runs a node's step (an operation sent with the leader's term); returns the snapshot it took, if any. */
  perform: (step: Step, j: Journal) => Promise<(SnapshotRef & { bytes: number }) | undefined>
  /** Commits the new generation, or the relocation record; throws when no majority holds it. */
  commit: (step: Extract<Step, { do: 'generation' | 'record' }>, j: Journal) => Promise<void>
  /**
   * Commits the app's journal (null: the procedure is over) in place of the
   * one with id `replaces` (null: none), compare-and-set: refused when the
   * app holds another (removed and installed again, or taken over). Throws
   * when refused or when no majority holds it.
   */
  save: (app: string, j: Journal | null, replaces: string | null) => Promise<void>
  alive: (node: string) => boolean
  /**
   * Whether the committed state still holds this journal with its app: false
   * once the app was removed (and perhaps installed again under the same
   * name) or another leader replaced the journal. The executor then stops
   * without touching anything: the steps are no longer its to take.
   */
  holds: (j: Journal) => boolean
  now: () => number
  sleep: (ms: number) => Promise<void>
  log?: (line: string, j: Journal) => void
}

export interface ProcedureOutcome { journal: Journal, outcome: 'done' | 'abandoned', why: string | null }

/** Thrown when a commit fails: this leader cannot go on; the journal stays for the next one. */
export class LeadershipLost extends Error {}

/**
 * Runs the steps from `j.done` on. A new procedure is saved before its first
 * step; one resumed from the replicated state is already there. A failed
 * commit throws (LeadershipLost's cause): the next leader resumes.
 */
export async function runProcedure (j: Journal, port: ProcedurePort, opts: { fresh: boolean }): Promise<ProcedureOutcome> {
  let cur = j
  if (opts.fresh) await saveOrLose(port, cur.app, cur, null)
  let why: string | null = null
  while (cur.done < cur.steps.length) {
    if (!port.holds(cur)) throw new LeadershipLost(`${cur.id} is no longer the journal of ${cur.app}: stopped`)
    const step = cur.steps[cur.done] as Step
    const node = nodeOf(step)
    let taken: (SnapshotRef & { bytes: number }) | undefined
    try {
      if (node !== null && !port.alive(node)) throw new Error(`${node} is not alive`)
      if (step.do === 'generation' || step.do === 'record') {
        try {
          await port.commit(step, cur)
        } catch (err) {
          throw new LeadershipLost((err as Error).message)
        }
      } else if (step.do === 'fence-wait') {
        const wait = step.until - port.now()
        if (wait > 0) await port.sleep(wait)
      } else {
        if (step.do === 'handoff' && cur.results.stoppedAt === undefined) {
          // Recorded before the stop: the downtime counts from the first attempt, not a resumed one.
          cur = { ...cur, results: { ...cur.results, stoppedAt: port.now() } }
        }
        taken = await port.perform(step, cur)
      }
    } catch (err) {
      if (err instanceof LeadershipLost) throw err
      const r = recover(cur, port.alive, `${step.do}${node !== null ? ` on ${node}` : ''} failed: ${(err as Error).message}`)
      port.log?.(`recovery: ${r.then}: ${r.why}`, cur)
      why = r.why
      if (r.then === 'abandon') {
        await saveOrLose(port, cur.app, null, cur.id)
        return { journal: cur, outcome: 'abandoned', why }
      }
      cur = { ...cur, steps: [...cur.steps.slice(0, cur.done), ...r.steps], recovery: r.why }
      await saveOrLose(port, cur.app, cur, cur.id)
      continue
    }
    cur = advance(cur, step, taken)
    await saveOrLose(port, cur.app, cur.done === cur.steps.length ? null : cur, cur.id)
  }
  return { journal: cur, outcome: cur.recovery === undefined ? 'done' : 'abandoned', why }
}

async function saveOrLose (port: ProcedurePort, app: string, j: Journal | null, replaces: string | null): Promise<void> {
  try {
    await port.save(app, j, replaces)
  } catch (err) {
    throw new LeadershipLost((err as Error).message)
  }
}

/** The journal after `step` finished with `taken`. */
export function advance (j: Journal, step: Step, taken: (SnapshotRef & { bytes: number }) | undefined): Journal {
  const results = { ...j.results }
  if (step.do === 'copy' && taken !== undefined) results.copy = taken
  if (step.do === 'handoff') {
    if (taken === undefined) throw new Error(`${j.id}: the handoff took no final snapshot`)
    results.final = { id: taken.id, time: taken.time }
  }
  return { ...j, done: j.done + 1, results }
}

/** One line per step, for `--dry-run` and `dcloud app why`: the done ones marked. */
export function formatProcedure (j: Journal, name: (node: string) => string = n => n): string[] {
  return j.steps.map((s, i) => `${i < j.done ? '[x]' : '[ ]'} ${formatStep(s, name)}`)
}

export function formatStep (s: Step, name: (node: string) => string = n => n): string {
  const snap = (src: SnapshotSource): string => src === 'final' ? 'the final snapshot' : `snapshot ${src.id}`
  switch (s.do) {
    case 'copy': return `snapshot the app on ${name(s.node)} while it runs`
    case 'sync': return `${name(s.node)} fetches the snapshots from ${name(s.from)}`
    case 'handoff': return `stop the app on ${name(s.node)} and take its final snapshot`
    case 'fetch': return `${name(s.node)} fetches the final snapshot from ${name(s.from)}`
    case 'fence-wait': return `wait until ${new Date(s.until).toISOString()}, when the lost copy has fenced itself`
    case 'generation': return `commit data generation ${s.generation} (any older copy is stale from here)`
    case 'restore': return `restore ${snap(s.snapshot)} on ${name(s.node)}${s.from !== null ? ` (fetched from ${name(s.from)})` : ''} and start it`
    case 'record': return `record the ${s.kind} from ${snap(s.snapshot)}`
    case 'purge': return `remove the old copy on ${name(s.node)}`
    case 'start': return `start the app again on ${name(s.node)}, on its own data`
  }
}
