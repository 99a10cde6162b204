/**
 * The fault schedule of a chaos run (`dcloud lab chaos`): a pure function of
 * (seed, minutes, nodes). No I/O, no clock, no randomness but the seeded one:
 * the same arguments always give the same faults at the same offsets, so a run
 * that found something can be run again.
 *
 * The rules the schedule keeps:
 * - at most a minority of the nodes is affected at any instant (a killed node,
 *   a killed or paused agent, a restarting dockerd, a full disk, the small
 *   side of a partition, a flapping link), so the rest can elect and converge;
 *   the one exception is the three-way partition, which takes every node out
 *   of its majority on purpose, briefly, and overlaps nothing;
 * - one partition at a time (the lab's switch holds one);
 * - every fault has its repair, before the quiet period;
 * - nothing happens in the first `warmupMs` (the workloads get going) nor in
 *   the last `quietMs` (the cluster converges, and is judged).
 */
import { mulberry32 } from '../../../scheduler/random.ts'

export const FAULT_KINDS = [
  'kill-node',
  'kill-agent',
  'restart-dockerd',
  'partition-2-1',
  'partition-1-1-1',
  'flap-link',
  'fill-disk',
  'pause-agent'
] as const

export type FaultKind = typeof FAULT_KINDS[number]

export const FAULT_DESCRIPTIONS: Record<FaultKind, string> = {
  'kill-node': 'every process of the node killed at once, its link down (`lab kill`), then `lab start`',
  'kill-agent': 'only the agent SIGKILLed (dockerd, containers and link stay), then restarted',
  'restart-dockerd': 'only dockerd stopped with SIGTERM (it stops its containers), then started again',
  'partition-2-1': 'a minority of nodes cut off from the majority, then healed',
  'partition-1-1-1': 'the nodes cut into three groups, none a majority, then healed',
  'flap-link': "one node's link cut and healed every 1.5 s",
  'fill-disk': "the node's data disk filled, then emptied",
  'pause-agent': 'the agent frozen with SIGSTOP, then SIGCONT'
}

/**
 * Whether a fault cuts its nodes off from the majority: from its start, what
 * a copy there acknowledges reaches no peer (the writes check counts the RPO
 * up to that instant). A dockerd restart or a full disk leaves the node in
 * the cluster.
 */
export const CUTS_OFF: Record<FaultKind, boolean> = {
  'kill-node': true,
  'kill-agent': true,
  'restart-dockerd': false,
  'partition-2-1': true,
  'partition-1-1-1': true,
  'flap-link': true,
  'fill-disk': false,
  'pause-agent': true
}

export interface Fault {
  /** 1, 2, ... in order of `at`. */
  id: number
  kind: FaultKind
  /** When it is injected, ms from the start of the schedule. */
  at: number
  /** When it is repaired, ms from the start; always after `at` and at most `quietFromMs`. */
  repairAt: number
  /** The nodes it takes out of the majority (for partitions, the minority sides). */
  nodes: string[]
  /** Partitions: the groups of the lab's switch. Flapping: the groups while the link is cut. */
  groups?: string[][]
  /** Flapping: cut and heal every this many ms. */
  flapPeriodMs?: number
}

export interface ChaosPlan {
  seed: number
  minutes: number
  nodes: string[]
  /** At most this many nodes affected at once (a minority). */
  maxAffected: number
  warmupMs: number
  /** No fault is active from here on: the cluster must converge. */
  quietFromMs: number
  endMs: number
  faults: Fault[]
}

export interface ScheduleInput {
  seed: number
  minutes: number
  nodes: string[]
  /** Defaults: 20 s of warm-up, 60 s of quiet at the end. */
  warmupMs?: number
  quietMs?: number
}

/** How long each kind lasts, ms: [min, max]. */
export const DURATIONS: Record<FaultKind, [number, number]> = {
  'kill-node': [15_000, 40_000],
  'kill-agent': [5_000, 20_000],
  'restart-dockerd': [3_000, 15_000],
  'partition-2-1': [10_000, 40_000],
  'partition-1-1-1': [8_000, 20_000],
  'flap-link': [10_000, 30_000],
  'fill-disk': [15_000, 40_000],
  'pause-agent': [3_000, 20_000]
}

/** Between the end of one fault and the next start, ms. */
export const GAP_MS: [number, number] = [5_000, 20_000]
export const FLAP_PERIOD_MS = 1500

export class ScheduleError extends Error {
  override name = 'ScheduleError'
}

/** Checks the input; returns what is wrong, or [] when it can be scheduled. */
export function checkScheduleInput (input: ScheduleInput): string[] {
  const problems: string[] = []
  if (!Number.isSafeInteger(input.seed) || input.seed < 0 || input.seed > 0xffffffff) problems.push('--seed must be an integer from 0 to 4294967295')
  if (!Number.isFinite(input.minutes) || input.minutes < 2 || input.minutes > 24 * 60) problems.push('--minutes must be from 2 to 1440 (the last minute is quiet, for convergence)')
  if (input.nodes.length < 3) problems.push(`a chaos run needs at least 3 nodes, so that one can fail while a majority remains (the lab has ${input.nodes.length})`)
  if (new Set(input.nodes).size !== input.nodes.length) problems.push('node names must be distinct')
  return problems
}

/** The fault schedule for (seed, minutes, nodes). Pure: the same input, the same plan. */
export function chaosSchedule (input: ScheduleInput): ChaosPlan {
  const problems = checkScheduleInput(input)
  if (problems.length > 0) throw new ScheduleError(problems.join('; '))
  // Sorted: the same set of nodes gives the same plan, whatever order they were listed in.
  const nodes = [...input.nodes].sort(byNodeName)
  const endMs = Math.round(input.minutes * 60_000)
  const warmupMs = input.warmupMs ?? 20_000
  const quietFromMs = endMs - (input.quietMs ?? 60_000)
  const maxAffected = Math.floor((nodes.length - 1) / 2)
  const rand = mulberry32(input.seed ^ 0x5eed_c4a0)
  const int = (lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1))
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T

  const faults: Fault[] = []
  let t = warmupMs
  // Every step draws the same values in the same order, whatever it then decides: determinism does not depend on branches.
  for (let guard = 0; guard < 100_000 && t < quietFromMs; guard++) {
    const kind = pick(FAULT_KINDS)
    const [lo, hi] = DURATIONS[kind]
    const duration = int(lo, hi)
    const shuffled = shuffle(nodes, rand)
    const gap = int(GAP_MS[0], GAP_MS[1])
    // How many nodes this fault takes out: one, or for partitions up to the largest minority.
    const minoritySize = kind === 'partition-2-1' ? 1 + Math.floor(rand() * maxAffected) : 1
    if (kind === 'partition-1-1-1') rand() // keeps the draws per step equal

    const active = faults.filter(f => f.repairAt > t)
    const exclusive = active.some(f => f.kind === 'partition-1-1-1')
    const partitioned = active.some(f => isPartition(f.kind))
    const busy = new Set(active.flatMap(f => f.nodes))
    const free = shuffled.filter(n => !busy.has(n))
    let fault: Omit<Fault, 'id'> | null = null
    const repairAt = t + duration
    if (repairAt <= quietFromMs && !exclusive) {
      if (kind === 'partition-1-1-1') {
        if (active.length === 0) fault = { kind, at: t, repairAt, nodes: [...nodes], groups: threeWays(shuffled) }
      } else if (kind === 'partition-2-1' || kind === 'flap-link') {
        const size = kind === 'flap-link' ? 1 : minoritySize
        if (!partitioned && free.length >= size && busy.size + size <= maxAffected) {
          const minority = free.slice(0, size).sort(byNodeName)
          const rest = nodes.filter(n => !minority.includes(n))
          fault = { kind, at: t, repairAt, nodes: minority, groups: [minority, rest] }
          if (kind === 'flap-link') fault.flapPeriodMs = FLAP_PERIOD_MS
        }
      } else if (free.length > 0 && busy.size + 1 <= maxAffected) {
        fault = { kind, at: t, repairAt, nodes: [free[0] as string] }
      }
    }
    if (fault !== null) {
      faults.push({ id: faults.length + 1, ...fault })
      // With room for more (5 nodes and up) the next fault may start while this one lasts.
      t = busy.size + fault.nodes.length < maxAffected && kind !== 'partition-1-1-1' ? t + Math.min(gap, duration) : repairAt + gap
    } else {
      // Not possible now: try again once the next active fault is repaired (or a moment later, when the quiet period cut it short).
      const nextRepair = Math.min(...active.map(f => f.repairAt).filter(r => r > t))
      t = Number.isFinite(nextRepair) ? nextRepair + gap : t + gap
    }
  }
  return { seed: input.seed, minutes: input.minutes, nodes, maxAffected, warmupMs, quietFromMs, endMs, faults }
}

export function isPartition (kind: FaultKind): boolean {
  return kind === 'partition-2-1' || kind === 'partition-1-1-1' || kind === 'flap-link'
}

/** Nodes affected at instant `t` (ms) by the plan's faults. */
export function affectedAt (plan: ChaosPlan, t: number): string[] {
  return [...new Set(plan.faults.filter(f => f.at <= t && t < f.repairAt).flatMap(f => f.nodes))].sort(byNodeName)
}

/** n2 before n10. */
export function byNodeName (a: string, b: string): number {
  const na = /^n(\d+)$/.exec(a)
  const nb = /^n(\d+)$/.exec(b)
  if (na !== null && nb !== null) return Number(na[1]) - Number(nb[1])
  return a < b ? -1 : a > b ? 1 : 0
}

function shuffle<T> (xs: readonly T[], rand: () => number): T[] {
  const out = [...xs]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    const tmp = out[i] as T
    out[i] = out[j] as T
    out[j] = tmp
  }
  return out
}

/** Three groups, as even as possible, none a majority (needs 3 nodes or more). */
function threeWays (shuffled: string[]): string[][] {
  const groups: string[][] = [[], [], []]
  shuffled.forEach((n, i) => { groups[i % 3]?.push(n) })
  return groups.map(g => g.sort(byNodeName))
}

/** One line per fault, for people. */
export function formatFault (f: Fault): string {
  const at = (ms: number): string => `${(ms / 1000).toFixed(1).padStart(6)} s`
  const what = f.kind === 'partition-2-1' || f.kind === 'partition-1-1-1'
    ? (f.groups ?? []).map(g => g.join(',')).join(' | ')
    : f.kind === 'flap-link' ? `${f.nodes.join(',')} every ${(f.flapPeriodMs ?? FLAP_PERIOD_MS) / 1000} s` : f.nodes.join(',')
  return `#${String(f.id).padEnd(3)} ${at(f.at)} .. ${at(f.repairAt)}  ${f.kind.padEnd(16)} ${what}`
}
