/**
 * The judgements of a chaos run, as pure functions over what was observed:
 * no I/O, no clock. The runner (run.ts) collects the facts (Docker's
 * container times from every node, the writers' acknowledgements, the
 * agents' relocations and snapshot lists); these decide what is a violation.
 *
 * Times are ms since the epoch: the lab is one machine with one clock, so
 * Docker timestamps of different nodes compare directly.
 */

// ---- one copy: container runs from Docker's own times ----------------------

/** A container event as `docker events` reports it (times in ms). */
export interface DockerEvent {
  node: string
  container: string
  app: string
  action: string
  time: number
}

/** What `docker inspect` said about a container at `observedAt`. */
export interface DockerInspection {
  node: string
  container: string
  app: string
  /** State.StartedAt, or null when never started (Docker's zero time). */
  startedAt: number | null
  /** State.FinishedAt, or null (zero time). Only meaningful when not running. */
  finishedAt: number | null
  running: boolean
  paused: boolean
  observedAt: number
}

/**
 * A time when every process of a node died at once (`lab kill`): Docker
 * cannot tell, since its daemon died too; when it comes back it stamps the
 * dead containers' FinishedAt with its own restart time, far too late.
 */
export interface NodeDeath { node: string, at: number }

/** One run of one container: from a start to its end (null: still running when observation ended). */
export interface ContainerRun {
  app: string
  node: string
  container: string
  start: number
  end: number | null
  /** Spans in which it was paused (frozen: it answers nothing). */
  paused: Array<{ start: number, end: number | null }>
}

interface Point { t: number, kind: 'start' | 'end' | 'pause' | 'unpause' }

/**
 * Rebuilds every run of every container from events, inspections and node
 * deaths. A start seen twice (the event and StartedAt) is one run; an end
 * with no run open is ignored (a late FinishedAt after a node death).
 */
export function containerRuns (events: DockerEvent[], inspections: DockerInspection[], deaths: NodeDeath[]): ContainerRun[] {
  const keyOf = (node: string, container: string): string => `${node}\u0000${container}`
  const points = new Map<string, { app: string, node: string, container: string, points: Point[], runningAt: number | null }>()
  const entry = (node: string, container: string, app: string): { points: Point[], runningAt: number | null } => {
    const k = keyOf(node, container)
    let e = points.get(k)
    if (e === undefined) points.set(k, e = { app, node, container, points: [], runningAt: null })
    return e
  }
  for (const ev of events) {
    const e = entry(ev.node, ev.container, ev.app)
    if (ev.action === 'start' || ev.action === 'restart') e.points.push({ t: ev.time, kind: 'start' })
    else if (ev.action === 'die' || ev.action === 'destroy' || ev.action === 'oom') e.points.push({ t: ev.time, kind: 'end' })
    else if (ev.action === 'pause') e.points.push({ t: ev.time, kind: 'pause' })
    else if (ev.action === 'unpause') e.points.push({ t: ev.time, kind: 'unpause' })
  }
  for (const i of inspections) {
    const e = entry(i.node, i.container, i.app)
    if (i.startedAt !== null) e.points.push({ t: i.startedAt, kind: 'start' })
    if (!i.running && i.finishedAt !== null && i.startedAt !== null && i.finishedAt >= i.startedAt) e.points.push({ t: i.finishedAt, kind: 'end' })
    if (i.running && i.startedAt !== null) e.runningAt = Math.max(e.runningAt ?? 0, i.observedAt)
    if (i.paused) e.points.push({ t: i.observedAt, kind: 'pause' })
  }
  for (const d of deaths) {
    for (const e of points.values()) if (e.node === d.node) e.points.push({ t: d.at, kind: 'end' })
  }
  const order: Record<Point['kind'], number> = { end: 0, unpause: 1, start: 2, pause: 3 }
  const runs: ContainerRun[] = []
  for (const e of points.values()) {
    const pts = e.points.sort((a, b) => a.t - b.t || order[a.kind] - order[b.kind])
    let open: ContainerRun | null = null
    let pausedSince: number | null = null
    for (const p of pts) {
      if (p.kind === 'start') {
        if (open === null) open = { app: e.app, node: e.node, container: e.container, start: p.t, end: null, paused: [] }
        // A second start inside a run is the same start seen twice; a start while paused is no unpause.
      } else if (p.kind === 'end') {
        if (open === null) continue
        if (pausedSince !== null) open.paused.push({ start: pausedSince, end: p.t })
        pausedSince = null
        open.end = p.t
        runs.push(open)
        open = null
      } else if (p.kind === 'pause') {
        if (open !== null && pausedSince === null) pausedSince = p.t
      } else if (open !== null && pausedSince !== null) {
        open.paused.push({ start: pausedSince, end: p.t })
        pausedSince = null
      }
    }
    if (open !== null) {
      if (pausedSince !== null) open.paused.push({ start: pausedSince, end: null })
      runs.push(open)
    }
  }
  return runs.sort((a, b) => a.start - b.start || (a.node < b.node ? -1 : 1))
}

/** An acknowledged write: which app, which node's copy answered it, when. */
export interface Ack {
  app: string
  /** The record: for notes "CLIENT SEQ", for the ledger "CLIENT/SEQ". */
  id: string
  /** The node whose copy answered, or null when unknown. */
  node: string | null
  at: number
}

export interface Overlap {
  app: string
  a: { node: string, container: string, start: number, end: number | null }
  b: { node: string, container: string, start: number, end: number | null }
  from: number
  to: number
  /** Unpaused overlap, ms. */
  ms: number
  acksA: number
  acksB: number
  /** Excused: one copy was fenced by a pause and answered no write in the overlap. */
  excused: string | null
}

/**
 * Two runs of one app on different nodes, both running and not paused at
 * the same time. `until` closes runs still open. An overlap is excused only
 * when one copy was paused during it (fenced) and the writers got no
 * acknowledgement from that copy in it. "Fenced" means frozen and never thawed
 * until it stopped: a snapshot's brief pause does not count.
 */
export function findOverlaps (runs: ContainerRun[], acks: Ack[], until: number, toleranceMs = 0): Overlap[] {
  const out: Overlap[] = []
  const byApp = new Map<string, ContainerRun[]>()
  for (const r of runs) byApp.set(r.app, [...(byApp.get(r.app) ?? []), r])
  for (const [app, list] of byApp) {
    for (let i = 0; i < list.length; i++) {
      for (let j = i + 1; j < list.length; j++) {
        const a = list[i] as ContainerRun
        const b = list[j] as ContainerRun
        if (a.node === b.node) continue
        const from = Math.max(a.start, b.start)
        const to = Math.min(a.end ?? until, b.end ?? until)
        if (to <= from) continue
        const ms = unpausedOverlap(a, b, from, to, until)
        if (ms <= toleranceMs) continue
        const acksIn = (node: string): number => acks.filter(k => k.app === app && k.node === node && k.at >= from && k.at <= to).length
        const acksA = acksIn(a.node)
        const acksB = acksIn(b.node)
        let excused: string | null = null
        if (fencedByPause(a, to) && acksA === 0) excused = `the copy on ${a.node} was fenced (paused until it stopped) and answered no write`
        else if (fencedByPause(b, to) && acksB === 0) excused = `the copy on ${b.node} was fenced (paused until it stopped) and answered no write`
        out.push({ app, a: describeRun(a), b: describeRun(b), from, to, ms, acksA, acksB, excused })
      }
    }
  }
  return out.sort((x, y) => x.from - y.from)
}

/**
 * Fenced by a pause: frozen before `by` and never thawed again (stopped
 * while paused, or still paused). A pause that was lifted, such as a
 * snapshot's, fences nothing.
 */
function fencedByPause (r: ContainerRun, by: number): boolean {
  return r.paused.some(p => p.start <= by && (p.end === null || (r.end !== null && p.end >= r.end)))
}

function describeRun (r: ContainerRun): Overlap['a'] {
  return { node: r.node, container: r.container, start: r.start, end: r.end }
}

/** ms within [from, to) when neither run was paused. */
function unpausedOverlap (a: ContainerRun, b: ContainerRun, from: number, to: number, until: number): number {
  const cuts = [...a.paused, ...b.paused]
    .map(p => ({ start: Math.max(p.start, from), end: Math.min(p.end ?? until, to) }))
    .filter(p => p.end > p.start)
    .sort((x, y) => x.start - y.start)
  let covered = 0
  let reach = from
  for (const c of cuts) {
    const s = Math.max(c.start, reach)
    if (c.end > s) { covered += c.end - s; reach = c.end }
  }
  return to - from - covered
}

// ---- writes: acknowledged records lost, and the RPO ------------------------

export interface ListedSnapshot { id: string, node: string, time: number, purpose: string, label: string | null }

/** A relocation of an app as the agents report it (`dcloud app ls`). */
export interface Relocation {
  app: string
  kind: 'failover' | 'move' | 'rollback' | 'restore'
  at: number
  /** When the snapshot it started from was taken. */
  snapshotTime: number
  from: string | null
  to: string
  /** Not recorded by the agents: inferred from Docker's runs and the snapshot list. */
  inferred?: boolean
}

/**
 * Restores the agents did not record as a relocation (an operation that
 * restored and started the app but then failed, say): a run of an app that
 * starts on another node than the run before it, with no recorded
 * relocation within `windowMs` of its start. Its snapshot is taken to be
 * the newest listed one before that start. Marked `inferred`.
 */
export function inferRelocations (runs: ContainerRun[], recorded: Relocation[], snapshots: Array<ListedSnapshot & { app: string }>, windowMs = 20_000): Relocation[] {
  const out: Relocation[] = []
  const byApp = new Map<string, ContainerRun[]>()
  for (const r of runs) byApp.set(r.app, [...(byApp.get(r.app) ?? []), r])
  for (const [app, list] of byApp) {
    const sorted = [...list].sort((a, b) => a.start - b.start)
    for (let i = 1; i < sorted.length; i++) {
      const cur = sorted[i] as ContainerRun
      const before = sorted.slice(0, i).filter(r => r.node !== cur.node)
      if (before.length === 0 || sorted.slice(0, i).at(-1)?.node === cur.node) continue
      if (recorded.some(r => r.app === app && Math.abs(r.at - cur.start) <= windowMs)) continue
      const source = snapshots.filter(s => s.app === app && s.time < cur.start && s.purpose !== 'divergent').sort((a, b) => b.time - a.time)[0]
      if (source === undefined) continue
      out.push({ app, kind: 'failover', at: cur.start, snapshotTime: source.time, from: sorted[i - 1]?.node ?? null, to: cur.node, inferred: true })
    }
  }
  return out
}

export type LossVerdict =
  | { kind: 'within-rpo', relocation: Relocation, ageMs: number }
  | { kind: 'cut-off', relocation: Relocation, cutAt: number }
  | { kind: 'beyond-rpo', relocation: Relocation, ageMs: number }
  | { kind: 'unexplained' }

/**
 * A span in which a node was cut off from the majority by an injected fault
 * (killed, its agent killed or frozen, on the small side of a partition, its
 * link flapping). From its start, nothing the node's copy acknowledges can
 * reach a peer: the RPO is counted up to that instant, and what the copy
 * acknowledged after it belongs to a divergent copy (which the `kept` check
 * requires to be kept in a snapshot).
 */
export interface CutOff { node: string, from: number, to: number }

/**
 * Why an acknowledged record is missing from the live copy. It is allowed
 * only when a failover (or restore from a snapshot) after it started from a
 * snapshot taken before it, and that snapshot was at most `rpoMs` old when the
 * copy that acknowledged the record was lost: the instant its node was cut
 * off, or (no fault known) the record's own time. That is what the app's
 * snapshot interval promises: lose at most that much. A record the copy
 * acknowledged after it was cut off is the divergent copy's, not lost to the
 * RPO. A planned move loses nothing, so a loss across one is never explained.
 */
export function judgeLoss (ack: Ack, relocations: Relocation[], rpoMs: number, cutOffs: CutOff[] = []): LossVerdict {
  const covering = relocations
    .filter(r => r.app === ack.app && (r.kind === 'failover' || r.kind === 'restore') && r.snapshotTime < ack.at && ack.at <= r.at)
    .sort((x, y) => x.at - y.at)
  const first = covering[0]
  if (first === undefined) return { kind: 'unexplained' }
  for (const r of covering) {
    const cut = lostAt(r, ack, cutOffs)
    if (cut !== null && ack.at >= cut) return { kind: 'cut-off', relocation: r, cutAt: cut }
  }
  const age = (r: Relocation): number => (lostAt(r, ack, cutOffs) ?? ack.at) - r.snapshotTime
  const within = covering.find(r => age(r) <= rpoMs)
  if (within !== undefined) return { kind: 'within-rpo', relocation: within, ageMs: age(within) }
  return { kind: 'beyond-rpo', relocation: first, ageMs: age(first) }
}

/** When the copy that acknowledged `ack` was cut off, on the way to relocation `r`: the latest cut of its node begun before `r`. */
function lostAt (r: Relocation, ack: Ack, cutOffs: CutOff[]): number | null {
  const node = ack.node ?? r.from
  if (node === null) return null
  const cuts = cutOffs.filter(c => c.node === node && c.from <= r.at && c.to >= r.snapshotTime).map(c => c.from)
  return cuts.length === 0 ? null : Math.max(...cuts)
}

export interface WritesVerdict {
  app: string
  acked: number
  present: number
  /** Lost to a failover within the RPO, or acknowledged by a copy already cut off (kept by the divergent snapshot): allowed. */
  allowed: Array<{ ack: Ack, verdict: LossVerdict }>
  /** Violations. */
  lost: Array<{ ack: Ack, verdict: LossVerdict }>
}

export function judgeWrites (app: string, acks: Ack[], present: (id: string) => boolean, relocations: Relocation[], rpoMs: number, cutOffs: CutOff[] = []): WritesVerdict {
  const mine = acks.filter(a => a.app === app)
  const out: WritesVerdict = { app, acked: mine.length, present: 0, allowed: [], lost: [] }
  for (const ack of mine) {
    if (present(ack.id)) { out.present++; continue }
    const verdict = judgeLoss(ack, relocations, rpoMs, cutOffs)
    if (verdict.kind === 'within-rpo' || verdict.kind === 'cut-off') out.allowed.push({ ack, verdict })
    else out.lost.push({ ack, verdict })
  }
  return out
}

/** Lost records grouped for people: one line per (app, node that acknowledged them, verdict, relocation). */
export interface LossGroup { app: string, node: string | null, verdict: LossVerdict['kind'], relocation: Relocation | null, count: number, first: number, last: number, maxAgeMs: number | null, ids: string[] }

export function groupLosses (losses: Array<{ ack: Ack, verdict: LossVerdict }>): LossGroup[] {
  const groups = new Map<string, LossGroup>()
  for (const { ack, verdict } of losses) {
    const r = verdict.kind === 'unexplained' ? null : verdict.relocation
    const key = `${ack.app} ${ack.node ?? '?'} ${verdict.kind} ${r?.at ?? ''}`
    let g = groups.get(key)
    if (g === undefined) groups.set(key, g = { app: ack.app, node: ack.node, verdict: verdict.kind, relocation: r, count: 0, first: ack.at, last: ack.at, maxAgeMs: null, ids: [] })
    g.count++
    g.first = Math.min(g.first, ack.at)
    g.last = Math.max(g.last, ack.at)
    if (verdict.kind === 'within-rpo' || verdict.kind === 'beyond-rpo') g.maxAgeMs = Math.max(g.maxAgeMs ?? 0, verdict.ageMs)
    if (g.ids.length < 5) g.ids.push(ack.id)
  }
  return [...groups.values()].sort((a, b) => a.first - b.first)
}

// ---- no deleted data: divergent copies kept as listed snapshots ------------



export interface UnkeptCopy {
  app: string
  node: string
  /** Records that copy acknowledged which the live copy lacks. */
  missing: number
  lastAckAt: number
}

/**
 * A copy that acknowledged records the live copy lacks has diverged; its data
 * must be kept in a snapshot taken from its node after its last such record
 * (the `divergent` snapshot a retirement makes, or a move's `final`).
 */
export function findUnkeptCopies (app: string, acks: Ack[], present: (id: string) => boolean, snapshots: ListedSnapshot[]): UnkeptCopy[] {
  const missingByNode = new Map<string, Ack[]>()
  for (const a of acks) {
    if (a.app !== app || a.node === null || present(a.id)) continue
    missingByNode.set(a.node, [...(missingByNode.get(a.node) ?? []), a])
  }
  const out: UnkeptCopy[] = []
  for (const [node, missing] of missingByNode) {
    const lastAckAt = Math.max(...missing.map(a => a.at))
    if (!snapshots.some(s => s.node === node && s.time >= lastAckAt)) out.push({ app, node, missing: missing.length, lastAckAt })
  }
  return out.sort((a, b) => a.lastAckAt - b.lastAckAt)
}

// ---- convergence -----------------------------------------------------------

/** Where each app's containers run, as every node's Docker said at `at`. */
export interface PlacementSample {
  at: number
  /** app -> nodes running a copy (paused or not). */
  running: Record<string, string[]>
  /** Nodes whose agent and dockerd run and whose link is up. */
  live: string[]
}

export interface ConvergenceVerdict {
  /** ms after `from` when every app first ran exactly once on a live node; null if never. */
  convergedAfterMs: number | null
  /** Samples after convergence where it no longer held. */
  brokenAt: Array<{ at: number, why: string }>
  /** Why the last sample before the deadline was not converged. */
  lastProblem: string | null
}

export function placementProblem (s: PlacementSample, apps: string[]): string | null {
  const problems: string[] = []
  for (const app of apps) {
    const nodes = s.running[app] ?? []
    if (nodes.length === 0) problems.push(`${app} runs nowhere`)
    else if (nodes.length > 1) problems.push(`${app} runs on ${nodes.join(' and ')}`)
    else if (!s.live.includes(nodes[0] as string)) problems.push(`${app} runs on ${nodes[0] as string}, which is not live`)
  }
  return problems.length === 0 ? null : problems.join('; ')
}

/** When every app first ran exactly once, on a live node, after `from`, and whether it stayed so. */
export function judgeConvergence (samples: PlacementSample[], apps: string[], from: number): ConvergenceVerdict {
  const after = samples.filter(s => s.at >= from).sort((a, b) => a.at - b.at)
  let convergedAt: number | null = null
  let lastProblem: string | null = null
  const brokenAt: ConvergenceVerdict['brokenAt'] = []
  for (const s of after) {
    const problem = placementProblem(s, apps)
    if (convergedAt === null) {
      if (problem === null) convergedAt = s.at
      else lastProblem = problem
    } else if (problem !== null) {
      brokenAt.push({ at: s.at, why: problem })
    }
  }
  return { convergedAfterMs: convergedAt === null ? null : convergedAt - from, brokenAt, lastProblem: convergedAt === null ? lastProblem : null }
}

/** The violations a convergence verdict amounts to (none when it converged in time and stayed so). */
export function convergenceViolations (v: ConvergenceVerdict, budgetMs: number): string[] {
  const out: string[] = []
  if (v.convergedAfterMs === null) out.push(`did not converge: ${v.lastProblem ?? 'no placement observed'}`)
  else if (v.convergedAfterMs > budgetMs) out.push(`converged only after ${(v.convergedAfterMs / 1000).toFixed(1)} s (budget ${budgetMs / 1000} s)`)
  const first = v.brokenAt[0]
  if (first !== undefined) out.push(`after converging, ${v.brokenAt.length} sample(s) broke it, first: ${first.why}`)
  return out
}
