/**
 * The harness for long operations (scheduler/procedure.ts): a simulated
 * cluster (named as such: nodes are records, a snapshot is a copy of an
 * array, no Docker and no libp2p) behind the executor's port, and every step
 * of a move, a failover and a rollback interrupted, by the leader's death
 * (before or after the step took effect, before or after it was recorded) or
 * by the death of the node the step runs on. Each run ends with exactly one
 * copy of the app, never two at any moment, and every acknowledged record
 * either in that copy or on a dead node's disk (kept, never deleted).
 *
 * The model of the real agent it relies on (agent/cluster/stateful.ts): a
 * restore on a node that already runs the generation does not restore again;
 * a purge needs the final snapshot present; a handoff stops the app for good.
 */
import { describe, expect, it } from 'vitest'
import {
  LeadershipLost, failoverSteps, moveSteps, rollbackSteps, runProcedure,
  type ProcedurePort
} from '../../scheduler/procedure.ts'
import type { Journal, Step } from '../../proto/journal.ts'
import { decodeJournal } from '../../proto/journal.ts'
import { applyChange, EMPTY_STATE } from '../../agent/cluster/desired-store.ts'
import { decodeChange } from '../../proto/cluster.ts'
import { parseManifest } from '../../apps/manifest.ts'

interface SimSnapshot { id: string, time: number, data: number[] }
interface SimNode {
  alive: boolean
  /** The app's volume here (its data), or null. */
  volume: number[] | null
  /** The generation of the app's container here, running or not; null: none. */
  container: number | null
  running: boolean
  repo: Map<string, SimSnapshot>
}

class Crash extends Error {}

/** Node ids as the journal's decoder wants them (peer ids): a, b and c. */
const [A, B, C] = ['a', 'b', 'c'].map(l => `12D3KooW${l.repeat(44)}`) as [string, string, string]

/** A simulated cluster of three nodes and one stateful app. */
class World {
  nodes = new Map<string, SimNode>()
  desired: { generation: number, journal: Journal | null, relocation: string | null } = { generation: 1, journal: null, relocation: null }
  acked: number[] = []
  private seq = 0
  private clock = 1_000_000
  twoCopies = 0

  constructor (running: string, names = [A, B, C]) {
    for (const n of names) this.nodes.set(n, { alive: true, volume: null, container: null, running: false, repo: new Map() })
    const home = this.node(running)
    home.volume = []
    home.container = 1
    home.running = true
    this.write()
    // A replicated snapshot, as the schedule leaves one.
    const s = this.snapshot(home)
    for (const n of names) this.node(n).repo.set(s.id, s)
    this.write()
  }

  node (n: string): SimNode {
    const node = this.nodes.get(n)
    if (node === undefined) throw new Error(`no node ${n}`)
    return node
  }

  now (): number {
    return (this.clock += 10)
  }

  /** A client writes one record to whichever copy runs, and it is acknowledged. */
  write (): void {
    for (const node of this.nodes.values()) {
      if (node.alive && node.running && node.volume !== null) {
        node.volume.push(++this.seq)
        this.acked.push(this.seq)
      }
    }
  }

  runningCopies (): string[] {
    return [...this.nodes].filter(([, n]) => n.alive && n.running).map(([k]) => k)
  }

  private snapshot (node: SimNode): SimSnapshot {
    const s = { id: (0x10000000 + ++this.seq * 7919).toString(16), time: this.now(), data: [...(node.volume ?? [])] }
    node.repo.set(s.id, s)
    return s
  }

  private start (name: string, node: SimNode): void {
    node.running = true
    if (this.runningCopies().length > 1) this.twoCopies++
    void name
  }

  private pull (to: SimNode, from: string): void {
    const src = this.node(from)
    if (!src.alive) throw new Error(`${from} does not answer`)
    for (const [id, s] of src.repo) to.repo.set(id, s)
  }

  /** What a node does with a step's operation (the agent's DataPlane.runOp, modelled). */
  perform (step: Step, j: Journal): { id: string, time: number, bytes: number } | undefined {
    const name = (step as { node: string }).node
    const node = this.node(name)
    if (!node.alive) throw new Error(`${name} does not answer`)
    switch (step.do) {
      case 'copy': {
        if (node.volume === null) throw new Error('no data here')
        const s = this.snapshot(node)
        return { id: s.id, time: s.time, bytes: s.data.length }
      }
      case 'sync': case 'fetch':
        this.pull(node, step.from)
        return undefined
      case 'handoff': {
        if (node.volume === null) throw new Error('no data here')
        node.running = false
        const s = this.snapshot(node)
        return { id: s.id, time: s.time, bytes: s.data.length }
      }
      case 'restore': {
        const generation = this.desired.generation
        if (node.container !== null && node.container >= generation) {
          if (!node.running) this.start(name, node)
          return undefined
        }
        if (step.from !== null) this.pull(node, step.from)
        const id = step.snapshot === 'final' ? j.results.final?.id : step.snapshot.id
        const s = id === undefined ? undefined : node.repo.get(id)
        if (s === undefined) throw new Error(`snapshot ${id ?? '?'} is not here`)
        node.running = false
        node.volume = [...s.data]
        node.container = generation
        this.start(name, node)
        return undefined
      }
      case 'purge': {
        const final = j.results.final
        if (final === undefined || !node.repo.has(final.id)) throw new Error('the final snapshot is not here')
        node.running = false
        node.container = null
        node.volume = null
        return undefined
      }
      case 'start': {
        if (node.volume === null) throw new Error('no data here')
        if (node.container !== this.desired.generation) throw new Error('a stale copy is never started')
        this.start(name, node)
        return undefined
      }
      default: throw new Error(`not a node's step: ${step.do}`)
    }
  }

  /**
   * A leader's port. `crashAt`: the effect (perform, commit or save) at which
   * the leader dies, `after` it took effect or before; every call from then on
   * fails as a dead leader's would: nothing more reaches the world.
   */
  port (crash?: { at: number, after: boolean }, kill?: { at: number, node: string }): ProcedurePort {
    let effects = 0
    let dead = false
    const effect = <T>(fn: () => T): T => {
      if (dead) throw new Crash('the leader is dead')
      const n = effects++
      if (kill !== undefined && n === kill.at) this.kill(kill.node)
      if (crash !== undefined && n === crash.at && !crash.after) { dead = true; throw new Crash('the leader died') }
      const r = fn()
      if (crash !== undefined && n === crash.at && crash.after) { dead = true; throw new Crash('the leader died') }
      this.write()
      return r
    }
    return {
      perform: async (step, j) => effect(() => this.perform(step, j)),
      commit: async (step) => {
        effect(() => {
          if (step.do === 'generation') this.desired.generation = Math.max(this.desired.generation, step.generation)
          else this.desired.relocation = step.kind
        })
      },
      save: async (_app, j, replaces) => {
        effect(() => {
          if ((this.desired.journal?.id ?? null) !== replaces) throw new Error('conflict: the app holds another journal')
          this.desired.journal = j === null ? null : decodeJournal(JSON.parse(JSON.stringify(j)))
        })
      },
      alive: (n) => this.node(n).alive,
      holds: (j) => this.desired.journal?.id === j.id,
      now: () => this.now(),
      sleep: async () => {}
    }
  }

  kill (n: string): void {
    const node = this.node(n)
    node.alive = false
    node.running = false
  }

  /**
   * The scheduler after an operation was given up (scheduler/reconcile.ts,
   * modelled): nothing runs the live generation, so the newest snapshot a
   * live node holds is restored on a live node; stopped copies of the live
   * generation on a live node are started instead.
   */
  async settle (): Promise<void> {
    if (this.runningCopies().length > 0) return
    const stopped = [...this.nodes].find(([, n]) => n.alive && n.volume !== null && n.container === this.desired.generation)
    if (stopped !== undefined) {
      this.start(stopped[0], stopped[1])
      return
    }
    const held = [...this.nodes].filter(([, n]) => n.alive).flatMap(([k, n]) => [...n.repo.values()].map(s => ({ node: k, s })))
    const newest = held.sort((x, y) => y.s.time - x.s.time)[0]
    if (newest === undefined) throw new Error('no snapshot on a live node')
    const j = failoverSteps('notes', { node: newest.node, snapshot: { id: newest.s.id, time: newest.s.time }, source: newest.node, previous: null, generation: this.desired.generation + 1, fencedBy: 0, kind: 'failover' }, this.now())
    await runProcedure(j, this.port(), { fresh: true })
  }

  /**
   * Every acknowledged record is in the running copy, or on a dead node's
   * disk (kept there, retired into a snapshot when it returns). A rollback
   * leaves the records written since its snapshot on purpose: those must be
   * in a snapshot a node holds (the one taken of the data it replaced).
   */
  lost (rollback = false): number[] {
    const running = this.runningCopies()
    const live = running.length === 1 ? this.node(running[0] as string).volume ?? [] : []
    const kept = new Set([...this.nodes.values()].filter(n => rollback || !n.alive).flatMap(n => [...(n.alive ? [] : n.volume ?? []), ...[...n.repo.values()].flatMap(s => s.data)]))
    return this.acked.filter(r => !live.includes(r) && !kept.has(r))
  }
}

type Make = (w: World) => Journal

const procedures: Array<{ name: string, make: Make, from: string, to: string, kind: string }> = [
  { name: 'move', from: A, to: B, kind: 'move', make: (w) => moveSteps('notes', A, B, w.desired.generation + 1, w.now()) },
  {
    name: 'failover',
    from: A,
    to: C,
    kind: 'failover',
    make: (w) => {
      // The app's node died; the newest snapshot is on c.
      w.kill(A)
      const s = [...w.node(C).repo.values()][0] as SimSnapshot
      return failoverSteps('notes', { node: C, snapshot: { id: s.id, time: s.time }, source: C, previous: A, generation: w.desired.generation + 1, fencedBy: 0, kind: 'failover' }, w.now())
    }
  },
  {
    name: 'rollback',
    from: A,
    to: A,
    kind: 'rollback',
    make: (w) => {
      const s = [...w.node(A).repo.values()][0] as SimSnapshot
      return rollbackSteps('notes', { where: A, node: A, snapshot: { id: s.id, time: s.time }, source: null, generation: w.desired.generation + 1 }, w.now())
    }
  }
]

/** How many effects (performs, commits, saves) a run makes uninterrupted. */
async function effectsOf (make: Make): Promise<number> {
  const w = new World(A)
  let n = 0
  const port = w.port()
  const counted: ProcedurePort = { ...port, perform: async (s, j) => { n++; return await port.perform(s, j) }, commit: async (s, j) => { n++; await port.commit(s, j) }, save: async (a, j, r) => { n++; await port.save(a, j, r) } }
  await runProcedure(make(w), counted, { fresh: true })
  return n
}

async function runToEnd (w: World, j: Journal, port: ProcedurePort): Promise<void> {
  try {
    await runProcedure(j, port, { fresh: true })
  } catch (err) {
    if (!(err instanceof LeadershipLost) && !(err instanceof Crash) && !/did not complete/.test((err as Error).message)) throw err
  }
}

describe('long operations interrupted at every step (simulated cluster)', () => {
  for (const p of procedures) {
    it(`${p.name}: uninterrupted, one copy on ${p.to}, nothing lost, recorded`, async () => {
      const w = new World(A)
      await runProcedure(p.make(w), w.port(), { fresh: true })
      expect(w.runningCopies()).toEqual([p.to])
      expect(w.lost(p.kind === 'rollback')).toEqual([])
      expect(w.desired.journal).toBeNull()
      expect(w.desired.relocation).toBe(p.kind)
      expect(w.twoCopies).toBe(0)
    })

    it(`${p.name}: the leader dies at every effect, before or after it; the next leader resumes from the journal`, async () => {
      const total = await effectsOf(p.make)
      expect(total).toBeGreaterThan(4)
      for (let at = 0; at < total; at++) {
        for (const after of [false, true]) {
          const w = new World(A)
          const j = p.make(w)
          await runToEnd(w, j, w.port({ at, after }))
          // The next leader: the journal it finds with the app, if any was saved.
          const found = w.desired.journal
          if (found !== null) await runProcedure(found, w.port(), { fresh: false })
          await w.settle()
          const where = `${p.name}, leader dead ${after ? 'after' : 'before'} effect ${at}`
          expect(w.runningCopies(), where).toHaveLength(1)
          expect(w.lost(p.kind === 'rollback'), where).toEqual([])
          expect(w.desired.journal, where).toBeNull()
          expect(w.twoCopies, where).toBe(0)
        }
      }
    })

    it(`${p.name}: each node involved dies at every effect; the executor recovers and the scheduler takes over`, async () => {
      const total = await effectsOf(p.make)
      for (const victim of [A, B, C]) {
        for (let at = 0; at < total; at++) {
          const w = new World(A)
          const j = p.make(w)
          await runToEnd(w, j, w.port(undefined, { at, node: victim }))
          await w.settle()
          const where = `${p.name}, ${victim.slice(8, 9)} dead at effect ${at}`
          expect(w.runningCopies(), where).toHaveLength(1)
          expect(w.lost(p.kind === 'rollback'), where).toEqual([])
          expect(w.desired.journal, where).toBeNull()
          expect(w.twoCopies, where).toBe(0)
        }
      }
    })
  }

  it('a move whose source dies after the handoff, before the target fetched the final snapshot, keeps the records on the dead source', async () => {
    const w = new World(A)
    const j = moveSteps('notes', A, B, 2, w.now())
    // Effects: save(0) copy(1) save(2) sync(3) save(4) handoff(5) save(6) fetch(7): a dies as the fetch begins.
    await runToEnd(w, j, w.port(undefined, { at: 7, node: A }))
    await w.settle()
    expect(w.runningCopies()).toHaveLength(1)
    const onSource = w.node(A).volume ?? []
    const live = w.node(w.runningCopies()[0] as string).volume ?? []
    // Written after the pre-move copy, before the stop: only on the dead source, kept there.
    const only = onSource.filter(r => !live.includes(r))
    expect(only.length).toBeGreaterThan(0)
    expect(w.lost()).toEqual([])
  })
})

describe('an executor whose journal is gone', () => {
  it('stops without another effect once the app was removed (or reinstalled) under it', async () => {
    const w = new World(A)
    const port = w.port()
    let effects = 0
    const counted: ProcedurePort = {
      ...port,
      perform: async (s, j) => {
        effects++
        const r = await port.perform(s, j)
        // The user removes the app after the copy: its journal goes with it.
        if (s.do === 'copy') w.desired.journal = null
        return r
      }
    }
    await expect(runProcedure(moveSteps('notes', A, B, 2, w.now()), counted, { fresh: true })).rejects.toThrow(/holds another journal/)
    expect(effects).toBe(1)
    expect(w.runningCopies()).toEqual([A])
  })
})

describe('journals on the wire', () => {
  it('decode what they encode, and refuse a malformed step with its field', () => {
    const j = moveSteps('notes', A, B, 2, 1_700_000_000_000)
    const done = { ...j, done: 3, results: { copy: { id: 'abcdef12', time: 1, bytes: 10 }, final: { id: '12345678', time: 2 }, stoppedAt: 5 } }
    expect(decodeJournal(JSON.parse(JSON.stringify(done)))).toEqual(done)
    expect(() => decodeJournal({ ...done, steps: [{ do: 'explode', node: 'x' }] })).toThrow(/journal.steps\[0\].do/)
    expect(() => decodeJournal({ ...done, done: 99 })).toThrow(/journal.done/)
    expect(() => decodeJournal({ ...done, steps: [{ do: 'copy', node: 'not a peer' }] })).toThrow(/journal.steps\[0\].node/)
  })
})

describe('the journal change on the replicated state (agent/cluster/desired-store.ts)', () => {
  const manifest = parseManifest('services: {db: {image: busybox, volumes: ["data:/data"]}}\nvolumes: {data: {}}\nx-dcloud: {id: notes}\n', 'notes.yaml').manifest
  const installed = applyChange(EMPTY_STATE, { kind: 'install', app: { name: 'notes', manifest, pinnedNode: null } }, { index: 1, term: 1 })
  const j = moveSteps('notes', A, B, 2, 1_700_000_000_000)

  it('keeps a journal, replaces it by id, clears it, and leaves the revision its containers carry', () => {
    const started = applyChange(installed, { kind: 'journal', name: 'notes', journal: j, replaces: null }, { index: 2, term: 1 })
    expect(started.apps[0]?.journal?.id).toBe(j.id)
    expect(started.apps[0]?.revision).toBe(installed.apps[0]?.revision)
    const stepped = applyChange(started, { kind: 'journal', name: 'notes', journal: { ...j, done: 1 }, replaces: j.id }, { index: 3, term: 1 })
    expect(stepped.apps[0]?.journal?.done).toBe(1)
    const over = applyChange(stepped, { kind: 'journal', name: 'notes', journal: null, replaces: j.id }, { index: 4, term: 1 })
    expect(over.apps[0]?.journal).toBeUndefined()
  })

  it('refuses a journal that does not replace the one held, another app\'s journal, an unknown app, and a malformed change', () => {
    const started = applyChange(installed, { kind: 'journal', name: 'notes', journal: j, replaces: null }, { index: 2, term: 1 })
    expect(() => applyChange(started, { kind: 'journal', name: 'notes', journal: null, replaces: 'move-notes-1' }, { index: 3, term: 1 })).toThrow(/holds journal move-notes-1700000000000, not move-notes-1/)
    expect(() => applyChange(installed, { kind: 'journal', name: 'notes', journal: { ...j, done: 1 }, replaces: j.id }, { index: 3, term: 1 })).toThrow(/holds no journal/)
    expect(() => applyChange(installed, { kind: 'journal', name: 'notes', journal: { ...j, app: 'other' }, replaces: null }, { index: 3, term: 1 })).toThrow(/journal of other cannot be kept with notes/)
    expect(() => applyChange(installed, { kind: 'journal', name: 'ghost', journal: null, replaces: null }, { index: 3, term: 1 })).toThrow(/no app named ghost/)
    expect(() => decodeChange({ kind: 'journal', name: 'notes', journal: { ...j, kind: 'teleport' }, replaces: null })).toThrow(/journal.kind/)
    expect(decodeChange(JSON.parse(JSON.stringify({ kind: 'journal', name: 'notes', journal: j, replaces: null })))).toEqual({ kind: 'journal', name: 'notes', journal: j, replaces: null })
  })
})
