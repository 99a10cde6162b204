/**
 * `dcloud lab chaos`: runs a seeded fault schedule (schedule.ts) against a
 * lab while the notes writers and the PostgreSQL ledger and pgbench run,
 * watches every node's Docker and the agents throughout, and judges
 * (checks.ts): one copy, writes against the RPO, divergent copies kept,
 * convergence.
 */
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Lab, isRunning } from '../lab.ts'
import { apiGet } from '../../../agent/cli/client.ts'
import { PROJECT_ROOT } from '../../../agent/config.ts'
import { UserError, EXIT } from '../../../agent/util/errors.ts'
import type { AppView, SnapshotView, StatusResponse } from '../../../proto/api.ts'
import { chaosSchedule, checkScheduleInput, ScheduleError, FAULT_KINDS, CUTS_OFF, formatFault, type ChaosPlan, type Fault, type FaultKind } from './schedule.ts'
import { containerRuns, convergenceViolations, findOverlaps, findUnkeptCopies, groupLosses, inferRelocations, judgeConvergence, judgeWrites, placementProblem, type Ack, type Overlap, type PlacementSample, type Relocation, type WritesVerdict, type CutOff } from './checks.ts'
import { DockerObserver, type ContainerNow } from './observe.ts'
import { FaultInjector } from './faults.ts'
import { NotesWorkload, PostgresWorkload, type PgTargetNow } from './workloads.ts'
import { parseLine, readNotesInLab } from '../notes-client.ts'
import { verifyLedger } from '../pg-workload.ts'
import { LAB_IMAGE_CACHE, POSTGRES_IMAGE, buildPostgresRootfs, loadPostgresImage } from '../postgres-image.ts'
import { parseDuration } from '../../../apps/units.ts'

export type Workload = 'notes' | 'postgres'

export interface ChaosOptions {
  lab: Lab
  minutes: number
  seed: number
  workloads: Workload[]
  /** The snapshot interval the workloads are installed with: their RPO. */
  snapshotEvery: string
  /** Convergence budget after the faults stop. */
  convergeMs?: number
  /** Live lines for people (stderr). */
  progress: (line: string) => void
}

export type TimelineKind = 'fault' | 'repair' | 'leader' | 'placement' | 'relocation' | 'violation' | 'note'
export interface TimelineEntry { at: number, kind: TimelineKind, text: string }
export type CheckName = 'one-copy' | 'writes' | 'kept' | 'convergence' | 'integrity'
export interface Violation { check: CheckName, at: number | null, text: string }

export interface FaultOutcome extends Fault {
  /** ms after the start, as done (late when the lab was slow). */
  injectedAt: number | null
  repairedAt: number | null
  note: string | null
}

export interface ChaosResult {
  lab: string
  seed: number
  minutes: number
  nodes: string[]
  workloads: Workload[]
  startedAt: string
  rpoMs: number
  plan: ChaosPlan
  faults: FaultOutcome[]
  timeline: TimelineEntry[]
  violations: Violation[]
  checks: Array<{ name: CheckName, what: string, samples: number, violations: number }>
  summary: {
    faultsByKind: Partial<Record<FaultKind, number>>
    skipped: Array<{ id: number, kind: FaultKind, note: string }>
    convergedAfterMs: number | null
    writes: Array<Omit<WritesVerdict, 'allowed' | 'lost'> & { allowed: number, lost: number }>
    overlaps: Overlap[]
    violations: number
  }
}

const DCLOUD_BIN = join(PROJECT_ROOT, 'bin', 'dcloud')
const APP_DIRS: Record<Workload, string> = { notes: join(PROJECT_ROOT, 'apps', 'examples', 'notes'), postgres: join(PROJECT_ROOT, 'apps', 'examples', 'postgres') }

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, Math.max(0, ms))) }

export async function runChaos (opts: ChaosOptions): Promise<ChaosResult> {
  const { lab, progress } = opts
  const convergeMs = opts.convergeMs ?? 30_000
  const rpoMs = parseDuration(opts.snapshotEvery, '--snapshot-every')
  if (rpoMs < 10_000) throw new UserError('--snapshot-every must be at least 10s', { exitCode: EXIT.usage })
  // The arguments first, before the lab is touched.
  const argProblems = checkScheduleInput({ seed: opts.seed, minutes: opts.minutes, nodes: ['a', 'b', 'c'] })
  if (argProblems.length > 0) throw new UserError(argProblems.join('; '), { exitCode: EXIT.usage })
  const state = await lab.state()
  const nodes = state.nodes.map(n => n.name)
  const notReady = state.nodes.filter(n => n.state !== 'running' || n.agentPid === null || !isRunning(n.agentPid) || n.dockerdPid === null || !isRunning(n.dockerdPid))
  if (notReady.length > 0) throw new UserError(`lab '${lab.name}' is not whole: ${notReady.map(n => n.name).join(', ')} not running`, { exitCode: EXIT.unavailable, hint: `\`dcloud lab --lab ${lab.name} start NODE\`, or a fresh lab: \`dcloud lab --lab ${lab.name} down && dcloud lab --lab ${lab.name} up --nodes 3\`` })
  if (state.partition !== null) throw new UserError(`lab '${lab.name}' is partitioned`, { exitCode: EXIT.unavailable, hint: `\`dcloud lab --lab ${lab.name} heal\`` })
  let plan: ChaosPlan
  try {
    plan = chaosSchedule({ seed: opts.seed, minutes: opts.minutes, nodes })
  } catch (err) {
    if (err instanceof ScheduleError) throw new UserError(err.message, { exitCode: EXIT.usage })
    throw err
  }
  const ipToNode = new Map(state.nodes.map(n => [n.ip, n.name]))
  const socket = (n: string): { socketPath: string, describe: string } => ({ socketPath: lab.agentSocket(n), describe: n })

  // Kept with absolute times; offsets from the first fault (t0) are computed at the end, so the setup shows as negative.
  const timeline: TimelineEntry[] = []
  const violations: Violation[] = []
  let t0 = Date.now()
  const rel = (t: number): number => t - t0
  const say = (kind: TimelineKind, text: string, at = Date.now()): void => {
    timeline.push({ at, kind, text })
    progress(`${fmtAt(rel(at))}  ${kind.padEnd(10)} ${text}`)
  }
  const violate = (check: CheckName, text: string, at: number | null): void => {
    violations.push({ check, at, text })
    say('violation', `[${check}] ${text}`, at ?? Date.now())
  }

  progress(`lab '${lab.name}': ${nodes.join(', ')}; seed ${opts.seed}, ${opts.minutes} min, ${plan.faults.length} faults; workloads ${opts.workloads.join(', ')} (snapshots every ${opts.snapshotEvery})`)

  const observer = new DockerObserver(lab, nodes)
  observer.start()
  const injector = new FaultInjector(lab, line => { progress(`  ${line}`) })
  const outcomes: FaultOutcome[] = plan.faults.map(f => ({ ...f, injectedAt: null, repairedAt: null, note: null }))
  const notes = opts.workloads.includes('notes') ? new NotesWorkload(lab, ipToNode, line => { say('note', line) }) : null
  let pg: PostgresWorkload | null = null
  const relocations: Relocation[] = []
  const samples: PlacementSample[] = []
  let monitoring = true
  let monitor: Promise<void> = Promise.resolve()

  try {
    // ---- preparation: a leader, the apps, the writers ----
    await waitUntil(async () => (await apiGet<StatusResponse>('/v1/status', socket(nodes[0] as string), 2000)).leader !== null, 60_000, 'a leader')
    if (opts.workloads.includes('postgres')) await preparePostgresImage(lab, nodes, progress)
    for (const w of opts.workloads) await installApp(lab, nodes[0] as string, w, opts.snapshotEvery, progress)
    const nodeUp = async (): Promise<Set<string>> => {
      const s = await lab.state().catch(() => null)
      if (s === null) return new Set()
      return new Set(s.nodes.filter(n => n.state === 'running' && n.dockerdPid !== null && isRunning(n.dockerdPid)).map(n => n.name))
    }

    // ---- the monitor: Docker truth, the agents' view, the workloads ----
    let lastPlacement = ''
    let lastLeaders = ''
    const seenRelocations = new Set<string>()
    const reportedOverlaps = new Set<string>()
    let tick = 0
    const observeOnce = async (): Promise<void> => {
      tick++
      const up = await nodeUp()
      const poll = await observer.poll()
      const running: Record<string, string[]> = {}
      // Placed copies, paused ones included (a snapshot pauses its app for a second): the one-copy check judges pauses itself.
      for (const c of poll.containers) if (c.running) running[c.app] = [...new Set([...(running[c.app] ?? []), c.node])].sort()
      const s = await lab.state().catch(() => null)
      if (s === null) return // the state file was being rewritten: next tick
      const live = s.nodes.filter(n => n.state === 'running' && n.agentPid !== null && isRunning(n.agentPid) && !isStopped(n.agentPid) && n.dockerdPid !== null && isRunning(n.dockerdPid)).map(n => n.name)
      samples.push({ at: poll.at, running, live })
      const placement = opts.workloads.map(a => `${a}: ${(running[a] ?? []).join('+') || 'nowhere'}`).join('; ')
      if (placement !== lastPlacement) { say('placement', placement, poll.at); lastPlacement = placement }
      // The database's address for the clients: only when exactly one copy runs.
      if (pg !== null) {
        const db = poll.containers.filter(c => c.app === 'postgres' && c.running && !c.paused)
        const only = db.length === 1 ? db[0] as ContainerNow : null
        const node = only === null ? null : s.nodes.find(n => n.name === only.node)
        const target: PgTargetNow | null = only !== null && node !== undefined && node !== null && only.hostPort !== null ? { node: node.name, host: node.ip, port: only.hostPort } : null
        void pg.supervise(target, async (n, name) => await observer.isRunning(n, name), () => {
          const dbNode = target?.node
          const cands = [...up].filter(n => live.includes(n))
          return cands.find(n => n !== dbNode) ?? cands[0] ?? null
        })
      }
      notes?.supervise(n => up.has(n), nodes)
      // One copy, continuously: report an overlap as soon as Docker shows it.
      const acks = [...(notes?.acks() ?? []), ...(pg?.acks() ?? [])]
      for (const o of findOverlaps(containerRuns(observer.events, observer.inspections, injector.deaths), acks, Date.now())) {
        const key = `${o.a.container}/${o.b.container}/${o.a.start}/${o.b.start}`
        if (reportedOverlaps.has(key) || o.excused !== null) continue
        reportedOverlaps.add(key)
        say('note', `two copies of ${o.app} are running: ${o.a.node} and ${o.b.node}, since ${fmtAt(rel(o.from))} (judged at the end)`)
      }
      if (tick % 2 === 0) {
        // The agents' view: leaders and relocations.
        const leaders: string[] = []
        let apps: AppView[] | null = null
        for (const n of nodes) {
          if (!live.includes(n)) { leaders.push(`${n}:-`); continue }
          try {
            const st = await apiGet<StatusResponse>('/v1/status', socket(n), 1000)
            const name = st.leader === null ? 'none' : st.nodes.find(x => x.id === st.leader)?.name ?? st.leader.slice(-6)
            leaders.push(`${n}:${name}`)
            if (apps === null) apps = await apiGet<AppView[]>('/v1/apps', socket(n), 2000).catch(() => null)
          } catch {
            leaders.push(`${n}:?`)
          }
        }
        const ls = leaders.join(' ')
        if (ls !== lastLeaders) { say('leader', `leader as each node sees it: ${ls}`); lastLeaders = ls }
        for (const a of apps ?? []) {
          const r = a.relocation
          if (r === null || r === undefined) continue
          const key = `${a.name} ${r.at}`
          if (seenRelocations.has(key)) continue
          seenRelocations.add(key)
          const at = Date.parse(r.at)
          relocations.push({ app: a.name, kind: r.kind, at, snapshotTime: Date.parse(r.snapshotTime), from: r.from, to: r.to })
          if (at >= t0 - 5000) say('relocation', `${a.name}: ${r.kind} ${r.from ?? '?'} -> ${r.to} from snapshot ${r.snapshot} of ${new Date(Date.parse(r.snapshotTime)).toISOString().slice(11, 19)}${r.downtimeMs !== null ? `, downtime ${r.downtimeMs} ms` : ''}`, at)
        }
      }
    }
    monitor = (async () => {
      while (monitoring) {
        const started = Date.now()
        try { await observeOnce() } catch (err) { progress(`monitor: ${(err as Error).message}`) }
        await sleep(1500 - (Date.now() - started))
      }
    })()

    if (notes !== null) {
      notes.supervise(() => true, nodes)
      await waitUntil(async () => notes.acks().length > 10, 60_000, 'the notes writers to get acknowledgements')
    }
    if (opts.workloads.includes('postgres')) {
      pg = new PostgresWorkload(lab, ipToNode, Date.now() + plan.endMs + 10_000, line => { say('note', line) })
      await waitUntil(async () => pg?.currentTarget() !== null, 120_000, 'postgres to run once, with a published port')
    }
    // A first snapshot of each, so a failover has something to start from.
    for (const w of opts.workloads) await apiRequestSnapshot(lab, nodes[0] as string, w).catch(err => { progress(`snapshot of ${w}: ${(err as Error).message}`) })

    // ---- the schedule ----
    t0 = Date.now()
    say('note', `faults start (seed ${opts.seed}); quiet from ${fmtAt(plan.quietFromMs)}, end at ${fmtAt(plan.endMs)}`)
    const actions = plan.faults.flatMap((f, i) => [{ at: f.at, i, repair: false }, { at: f.repairAt, i, repair: true }])
      .sort((a, b) => a.at - b.at || Number(b.repair) - Number(a.repair))
    for (const a of actions) {
      await sleep(t0 + a.at - Date.now())
      const o = outcomes[a.i] as FaultOutcome
      try {
        if (!a.repair) {
          o.injectedAt = rel(Date.now())
          const note = await injector.inject(o)
          if (note !== null) { o.note = note; o.injectedAt = null }
          say('fault', `${formatFault(o).replace(/^#\d+\s+[\d.]+ s \.\.\s+[\d.]+ s\s+/, `#${o.id} `)}${note !== null ? ` — ${note}` : ''}`)
        } else if (o.injectedAt !== null) {
          await injector.repair(o)
          o.repairedAt = rel(Date.now())
          say('repair', `#${o.id} ${o.kind} ${o.nodes.join(',')}${o.repairedAt - o.repairAt > 5000 ? ` (done ${((o.repairedAt - o.repairAt) / 1000).toFixed(1)} s after its time: the lab was slow to bring it back)` : ''}`)
        }
      } catch (err) {
        o.note = `${a.repair ? 'repair' : 'injection'} failed: ${(err as Error).message}`
        say('note', `#${o.id} ${o.kind}: ${o.note}`)
      }
    }
    // Whatever failed to repair is repaired now: the quiet period needs a whole lab.
    await injector.repairAll()
    const faultsEndedAt = Math.max(t0 + plan.quietFromMs, Date.now())
    say('note', 'faults over: the cluster must converge')
    await sleep(t0 + plan.endMs - Date.now())
    // At least the convergence budget and a little after it, even when repairs ran late.
    await sleep(faultsEndedAt + convergeMs + 5000 - Date.now())

    // ---- the end: stop the writers, read everything back ----
    monitoring = false
    await monitor
    await observeOnce().catch(() => {})
    const endAt = Date.now()
    say('note', 'stopping the workloads and reading everything back')
    await notes?.stop()
    const pgDone = pg !== null ? await (pg as PostgresWorkload).stop() : null

    const acks: Ack[] = [...(notes?.acks() ?? []), ...(pg?.acks() ?? [])]
    const checks: ChaosResult['checks'] = []
    const writes: WritesVerdict[] = []
    const snapshotsOf = new Map<string, SnapshotView[]>()
    const finalNode = (app: string): string | null => samples.at(-1)?.running[app]?.[0] ?? null

    // One copy.
    const runs = containerRuns(observer.events, observer.inspections, injector.deaths)
    const overlaps = findOverlaps(runs, acks, endAt)
    for (const o of overlaps) {
      if (o.excused !== null) { say('note', `${o.app} on ${o.a.node} and ${o.b.node} at once for ${(o.ms / 1000).toFixed(1)} s, excused: ${o.excused}`, o.from); continue }
      violate('one-copy', `${o.app} ran on ${o.a.node} and ${o.b.node} at once for ${(o.ms / 1000).toFixed(1)} s (${fmtAt(rel(o.from))} .. ${fmtAt(rel(o.to))}); writes acknowledged meanwhile: ${o.acksA} by ${o.a.node}, ${o.acksB} by ${o.b.node}`, o.from)
    }
    checks.push({ name: 'one-copy', what: `${runs.length} container runs from ${observer.events.length} Docker events and ${observer.inspections.length} inspections on ${nodes.length} nodes`, samples: samples.length, violations: overlaps.filter(o => o.excused === null).length })

    // Writes: notes.
    if (notes !== null) {
      const from = finalNode('notes') ?? nodes.find(n => samples.at(-1)?.live.includes(n)) ?? nodes[0] as string
      let present = new Set<string>()
      try {
        const text = await readNotesInLab(lab.name, from, { app: 'notes' }, 60_000)
        const lines = text.split('\n')
        const tail = lines.pop()
        let corrupt = tail !== undefined && tail !== '' ? 1 : 0
        let dups = 0
        for (const l of lines) {
          const p = parseLine(l)
          if (p === null) { corrupt++; continue }
          const id = `${p.clientId} ${p.seq}`
          if (present.has(id)) dups++
          present.add(id)
        }
        if (corrupt > 0 || dups > 0) violate('integrity', `notes log: ${corrupt} corrupt or torn line(s), ${dups} duplicated`, null)
        checks.push({ name: 'integrity', what: `notes log read back through ${from}: ${lines.length} lines`, samples: 1, violations: corrupt > 0 || dups > 0 ? 1 : 0 })
      } catch (err) {
        violate('writes', `the notes log could not be read back at the end: ${(err as Error).message}`, null)
        present = new Set()
      }
      snapshotsOf.set('notes', await listSnapshots(lab, nodes, 'notes'))
      writes.push(judgeWrites('notes', acks, id => present.has(id), withInferred('notes'), rpoMs, cutOffs()))
      keptCheck('notes', id => present.has(id))
    }

    // Writes: postgres.
    if (pg !== null && pgDone !== null) {
      const target = (pg as PostgresWorkload).currentTarget()
      const client = nodes.find(n => samples.at(-1)?.live.includes(n)) ?? nodes[0] as string
      if (target === null) {
        violate('writes', 'postgres had no single running copy at the end: nothing to read back', null)
      } else {
        try {
          const v = await verifyLedger(lab, client, target, pgDone.ledgers, pgDone.bench)
          const missing = new Set(v.missing.map(m => `${m.client}/${m.seq}`))
          snapshotsOf.set('postgres', await listSnapshots(lab, nodes, 'postgres'))
          writes.push(judgeWrites('postgres', acks, id => !missing.has(id), withInferred('postgres'), rpoMs, cutOffs()))
          const failedOver = relocations.some(r => r.app === 'postgres' && (r.kind === 'failover' || r.kind === 'restore') && r.at >= t0)
          if (v.pgbench !== null && !v.pgbench.balanced) violate('integrity', `pgbench's sums disagree (a transaction applied in part): ${JSON.stringify(v.pgbench.sums)}`, null)
          if (v.pgbench !== null && !v.pgbench.historyOk) {
            const text = `pgbench history holds ${v.pgbench.historyRows} rows, fewer than the ${v.pgbench.processed} transactions pgbench saw commit`
            if (failedOver) say('note', `${text}; postgres failed over during the run, so this may be the RPO's loss (pgbench gives no times to judge it)`)
            else violate('writes', text, null)
          }
          checks.push({ name: 'integrity', what: `postgres read back from ${target.node}: ${v.committed} ledger rows acknowledged, ${v.unacknowledged} unacknowledged present; pgbench ${v.pgbench?.processed ?? 0} transactions, history ${v.pgbench?.historyRows ?? 0}, balanced ${String(v.pgbench?.balanced)}`, samples: 1, violations: v.pgbench !== null && !v.pgbench.balanced ? 1 : 0 })
          keptCheck('postgres', id => !missing.has(id))
        } catch (err) {
          violate('writes', `the postgres ledger could not be read back at the end: ${(err as Error).message}`, null)
        }
      }
    }
    for (const w of writes) {
      const describeR = (r: Relocation): string => `the ${r.inferred === true ? 'unrecorded restore (inferred from Docker)' : r.kind} ${r.from ?? '?'} -> ${r.to} at ${fmtAt(rel(r.at))}, from a snapshot of ${fmtAt(rel(r.snapshotTime))}`
      for (const g of groupLosses(w.allowed)) {
        const why = g.verdict === 'cut-off' ? 'acknowledged after its node was cut off: the divergent copy\'s (the kept check requires a snapshot of it)' : `within the RPO (the snapshot was ${((g.maxAgeMs ?? 0) / 1000).toFixed(1)} s old at most when the copy was lost)`
        say('note', `${w.app}: ${g.count} record(s) acknowledged by ${g.node ?? '?'} (${fmtAt(rel(g.first))} .. ${fmtAt(rel(g.last))}) not in the live copy after ${describeR(g.relocation as Relocation)}: ${why}`, g.first)
      }
      for (const g of groupLosses(w.lost)) {
        const why = g.verdict === 'beyond-rpo' ? `lost to ${describeR(g.relocation as Relocation)}: that snapshot was ${((g.maxAgeMs ?? 0) / 1000).toFixed(1)} s old when the copy was lost, beyond the RPO of ${rpoMs / 1000} s` : 'lost, and no failover or restore explains it'
        violate('writes', `${w.app}: ${g.count} record(s) acknowledged by ${g.node ?? '?'} (${fmtAt(rel(g.first))} .. ${fmtAt(rel(g.last))}, e.g. ${g.ids.slice(0, 2).join(', ')}) ${why}`, g.first)
      }
      checks.push({ name: 'writes', what: `${w.app}: ${w.acked} acknowledged, ${w.present} present, ${w.allowed.filter(x => x.verdict.kind === 'within-rpo').length} lost to a failover within the RPO, ${w.allowed.filter(x => x.verdict.kind === 'cut-off').length} acknowledged by a cut-off copy, ${w.lost.length} lost otherwise`, samples: w.acked, violations: w.lost.length })
    }

    // Convergence.
    const conv = judgeConvergence(samples, opts.workloads, faultsEndedAt)
    for (const v of convergenceViolations(conv, convergeMs)) violate('convergence', v, null)
    checks.push({ name: 'convergence', what: conv.convergedAfterMs === null ? 'never converged' : `every app ran once on a live node ${(conv.convergedAfterMs / 1000).toFixed(1)} s after the faults stopped`, samples: samples.filter(s => s.at >= faultsEndedAt).length, violations: convergenceViolations(conv, convergeMs).length })
    const last = samples.at(-1)
    if (last !== undefined) say('note', `at the end: ${placementProblem(last, opts.workloads) ?? opts.workloads.map(a => `${a} on ${last.running[a]?.[0] ?? '?'}`).join(', ')}`)

    const faultsByKind: Partial<Record<FaultKind, number>> = {}
    for (const k of FAULT_KINDS) {
      const n = outcomes.filter(o => o.kind === k && o.injectedAt !== null).length
      if (n > 0) faultsByKind[k] = n
    }
    return {
      lab: lab.name,
      seed: opts.seed,
      minutes: opts.minutes,
      nodes,
      workloads: opts.workloads,
      startedAt: new Date(t0).toISOString(),
      rpoMs,
      plan,
      faults: outcomes,
      timeline: timeline.map(e => ({ ...e, at: rel(e.at) })).sort((a, b) => a.at - b.at),
      violations: violations.map(v => ({ ...v, at: v.at === null ? null : rel(v.at) })),
      checks,
      summary: {
        faultsByKind,
        skipped: outcomes.filter(o => o.injectedAt === null).map(o => ({ id: o.id, kind: o.kind, note: o.note ?? 'not injected' })),
        convergedAfterMs: conv.convergedAfterMs,
        writes: writes.map(w => ({ app: w.app, acked: w.acked, present: w.present, allowed: w.allowed.length, lost: w.lost.length })),
        overlaps,
        violations: violations.length
      }
    }

    function withInferred (app: string): Relocation[] {
      const snaps = (snapshotsOf.get(app) ?? []).map(x => ({ app, id: x.id, node: x.node, time: x.time, purpose: x.purpose, label: x.label }))
      const inferred = inferRelocations(runs.filter(r => r.app === app), relocations, snaps)
      for (const r of inferred) {
        say('note', `${app}: started on ${r.to} at ${fmtAt(rel(r.at))} after running on ${r.from ?? '?'}, with no relocation recorded by the agents (\`dcloud app ls\` does not say it came from a snapshot); taken to be a restore of the snapshot of ${fmtAt(rel(r.snapshotTime))}`, r.at)
      }
      return [...relocations, ...inferred]
    }

    /** When injected faults cut nodes off from the majority (checks.ts CutOff), in absolute times. */
    function cutOffs (): CutOff[] {
      return outcomes.filter(o => o.injectedAt !== null && CUTS_OFF[o.kind])
        .flatMap(o => o.nodes.map(node => ({ node, from: t0 + (o.injectedAt as number), to: t0 + (o.repairedAt ?? Date.now() - t0) })))
    }

    function keptCheck (app: string, present: (id: string) => boolean): void {
      const snaps = (snapshotsOf.get(app) ?? []).map(s => ({ id: s.id, node: s.node, time: s.time, purpose: s.purpose, label: s.label }))
      const unkept = findUnkeptCopies(app, acks, present, snaps)
      for (const u of unkept) violate('kept', `${app}: the copy on ${u.node} acknowledged ${u.missing} record(s) the live copy lacks (the last at ${fmtAt(rel(u.lastAckAt))}), and no listed snapshot from ${u.node} taken after them keeps them`, u.lastAckAt)
      const divergent = snaps.filter(s => s.purpose === 'divergent')
      checks.push({ name: 'kept', what: `${app}: ${snaps.length} listed snapshots (${divergent.length} divergent: ${divergent.map(s => s.label ?? s.id).join(', ') || 'none'})`, samples: snaps.length, violations: unkept.length })
    }
  } finally {
    monitoring = false
    await monitor.catch(() => {})
    await injector.repairAll()
    await notes?.stop().catch(() => {})
    if (pg !== null) await (pg as PostgresWorkload).stop().catch(() => {})
    observer.stop()
  }
}

/** A process frozen by SIGSTOP (state T): its agent answers nothing. */
function isStopped (pid: number): boolean {
  let text = ''
  try { text = readFileSync(`/proc/${pid}/stat`, 'utf8') } catch { return false }
  const state = text.slice(text.lastIndexOf(')') + 2, text.lastIndexOf(')') + 3)
  return state === 'T' || state === 't'
}

export function fmtAt (ms: number): string {
  return `${ms < 0 ? '-' : '+'}${(Math.abs(ms) / 1000).toFixed(1).padStart(6)} s`
}

async function waitUntil (check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  while (Date.now() < deadline) {
    try { if (await check()) return } catch (err) { last = err }
    await sleep(500)
  }
  throw new UserError(`timed out after ${timeoutMs / 1000} s waiting for ${what}${last !== undefined ? `: ${(last as Error).message}` : ''}`, { exitCode: EXIT.unavailable })
}

async function dcloudOn (lab: Lab, node: string, args: string[], timeoutMs = 300_000): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    execFile(DCLOUD_BIN, args, { env: lab.nodeEnv(node), timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

/** Installs a workload (unless it is there), with the run's snapshot interval: the RPO the writes are judged by. */
async function installApp (lab: Lab, node: string, app: Workload, every: string, progress: (line: string) => void): Promise<void> {
  const apps = await apiGet<AppView[]>('/v1/apps', { socketPath: lab.agentSocket(node), describe: node }, 5000)
  if (apps.some(a => a.name === app)) {
    progress(`${app} is installed already: its snapshot interval is taken to be ${every}`)
  } else {
    const dir = await mkdtemp(join(tmpdir(), `dcloud-chaos-${app}-`))
    try {
      await cp(APP_DIRS[app], dir, { recursive: true })
      // x-dcloud is the last block of both example files: the snapshot interval goes into it.
      const compose = await readFile(join(dir, 'compose.yaml'), 'utf8')
      if (!/\nx-dcloud:\n(?:(?: {2}.*)?\n)*$/.test(compose.endsWith('\n') ? compose : `${compose}\n`)) throw new Error(`${app}'s compose.yaml does not end with its x-dcloud block`)
      await writeFile(join(dir, 'compose.yaml'), `${compose.endsWith('\n') ? compose : `${compose}\n`}  snapshots:\n    every: ${every}\n`)
      progress(`installing ${app} (snapshots every ${every})`)
      const r = await dcloudOn(lab, node, ['app', 'install', dir])
      if (r.code !== 0) throw new UserError(`installing ${app} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`, { exitCode: EXIT.unavailable })
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }
  await waitUntil(async () => (await apiGet<AppView[]>('/v1/apps', { socketPath: lab.agentSocket(node), describe: node }, 3000)).find(a => a.name === app)?.state === 'running', 180_000, `${app} to run`)
}

async function preparePostgresImage (lab: Lab, nodes: string[], progress: (line: string) => void): Promise<void> {
  let tar: string | null = null
  for (const n of nodes) {
    const r = await new Promise<number>((resolve) => { execFile('docker', ['-H', `unix://${lab.dockerSocket(n)}`, 'image', 'inspect', POSTGRES_IMAGE], (err) => { resolve(err === null ? 0 : 1) }) })
    if (r === 0) continue
    if (tar === null) {
      progress('building the postgres test image (a minute or more the first time)')
      try {
        tar = await buildPostgresRootfs(LAB_IMAGE_CACHE, line => { progress(`postgres image: ${line}`) })
      } catch (err) {
        throw new UserError(`the postgres test image could not be built: ${(err as Error).message}`, { exitCode: EXIT.unavailable, hint: 'it needs debootstrap (scripts/setup.sh installs it); or run with --workloads notes' })
      }
    }
    progress(`loading ${POSTGRES_IMAGE} into ${n}`)
    await loadPostgresImage(lab.dockerSocket(n), tar)
  }
}

async function apiRequestSnapshot (lab: Lab, node: string, app: string): Promise<void> {
  const r = await dcloudOn(lab, node, ['snapshot', 'create', app], 300_000)
  if (r.code !== 0) throw new Error(r.stderr.trim() || r.stdout.trim())
}

/** The app's snapshots as any answering agent lists them. */
async function listSnapshots (lab: Lab, nodes: string[], app: string): Promise<SnapshotView[]> {
  for (const n of nodes) {
    try {
      return await apiGet<SnapshotView[]>(`/v1/apps/${encodeURIComponent(app)}/snapshots`, { socketPath: lab.agentSocket(n), describe: n }, 120_000)
    } catch {}
  }
  return []
}

// ---- output ----

export function formatResult (r: ChaosResult): string {
  const out: string[] = []
  out.push(`chaos run on lab '${r.lab}': seed ${r.seed}, ${r.minutes} min, nodes ${r.nodes.join(',')}, workloads ${r.workloads.join(',')}, RPO ${r.rpoMs / 1000} s, started ${r.startedAt}`)
  out.push('', `faults (${r.faults.length}; quiet from ${fmtAt(r.plan.quietFromMs)}):`)
  for (const f of r.faults) out.push(`  ${formatFault(f)}${f.injectedAt === null ? `  [not injected: ${f.note ?? '?'}]` : f.note !== null ? `  [${f.note}]` : ''}`)
  out.push('', 'timeline:')
  for (const e of r.timeline) out.push(`  ${fmtAt(e.at)}  ${e.kind.padEnd(10)} ${e.text}`)
  out.push('', `violations (${r.violations.length}):`)
  if (r.violations.length === 0) out.push('  none')
  for (const v of r.violations) out.push(`  [${v.check}]${v.at !== null ? ` ${fmtAt(v.at)}` : ''} ${v.text}`)
  out.push('', ...formatSummary(r))
  return out.join('\n') + '\n'
}

export function formatSummary (r: ChaosResult): string[] {
  const out: string[] = ['summary:']
  const kinds = Object.entries(r.summary.faultsByKind).map(([k, n]) => `${k} ${n}`).join(', ')
  const injected = Object.values(r.summary.faultsByKind).reduce((a, b) => a + (b ?? 0), 0)
  out.push(`  seed ${r.seed}, ${r.minutes} min, ${r.nodes.length} nodes`)
  out.push(`  faults injected: ${injected} (${kinds || 'none'})${r.summary.skipped.length > 0 ? `; skipped ${r.summary.skipped.length}: ${r.summary.skipped.map(s => `#${s.id} ${s.kind}`).join(', ')}` : ''}`)
  for (const c of r.checks) out.push(`  check ${c.name.padEnd(11)} ${c.violations === 0 ? 'ok  ' : 'FAIL'} ${c.what}`)
  const byCheck = new Map<string, number>()
  for (const v of r.violations) byCheck.set(v.check, (byCheck.get(v.check) ?? 0) + 1)
  out.push(`  violations: ${r.violations.length}${byCheck.size > 0 ? ` (${[...byCheck].map(([k, n]) => `${k} ${n}`).join(', ')})` : ''}`)
  return out
}
