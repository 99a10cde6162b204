/**
 * Injecting and repairing the faults of a chaos schedule in a real lab,
 * through the Lab class: the same kills, starts and partitions `dcloud lab`
 * offers, plus signals to one node's agent or dockerd.
 */
import { Lab, isRunning } from '../lab.ts'
import type { Fault } from './schedule.ts'

export interface FaultLog {
  (line: string): void
}

export class FaultInjector {
  private readonly lab: Lab
  private readonly log: FaultLog
  private readonly flapping = new Map<number, { stop: boolean, done: Promise<void> }>()
  private readonly pending = new Map<number, Promise<void>>()
  /** Agents frozen by this run, so that an interrupted run thaws them. */
  private readonly frozen = new Set<number>()
  /** Faults injected and not repaired yet. */
  readonly active = new Map<number, Fault>()
  /** Node deaths (`lab kill`), for the one-copy judgement: Docker cannot know of them. */
  readonly deaths: Array<{ node: string, at: number }> = []

  constructor (lab: Lab, log: FaultLog) {
    this.lab = lab
    this.log = log
  }

  /** Injects `f`. Returns a note when it was skipped (the lab cannot do it), else null. */
  async inject (f: Fault): Promise<string | null> {
    const node = f.nodes[0] as string
    switch (f.kind) {
      case 'kill-node':
        await this.lab.kill(node)
        this.deaths.push({ node, at: Date.now() })
        break
      case 'kill-agent': {
        const pid = (await this.lab.node(node)).agentPid
        if (pid === null || !isRunning(pid)) return `${node}'s agent is not running`
        process.kill(pid, 'SIGKILL')
        break
      }
      case 'restart-dockerd': {
        // Lab.restartDockerd stops it (SIGTERM: it stops its containers), keeps it down, starts it again;
        // the repair waits for that. Stopping takes a few seconds, counted in the time down.
        const restart = this.lab.restartDockerd(node, { downMs: Math.max(0, f.repairAt - f.at - 3000) })
        restart.catch(() => {}) // awaited, and reported, by the repair
        this.pending.set(f.id, restart)
        break
      }
      case 'partition-2-1':
      case 'partition-1-1-1':
        await this.lab.partition(f.groups ?? [])
        break
      case 'flap-link': {
        const state = { stop: false, done: Promise.resolve() }
        state.done = this.flap(f, state)
        this.flapping.set(f.id, state)
        break
      }
      case 'fill-disk':
        await this.lab.fill(node, 0)
        break
      case 'pause-agent': {
        const pid = (await this.lab.node(node)).agentPid
        if (pid === null || !isRunning(pid)) return `${node}'s agent is not running`
        process.kill(pid, 'SIGSTOP')
        this.frozen.add(pid)
        break
      }
    }
    this.active.set(f.id, f)
    return null
  }

  /** Repairs `f` (only if it was injected). */
  async repair (f: Fault): Promise<void> {
    if (!this.active.has(f.id)) return
    const node = f.nodes[0] as string
    switch (f.kind) {
      case 'kill-node':
        await this.lab.start(node, { progress: this.log })
        break
      case 'kill-agent':
        await this.lab.start(node, { agentOnly: true, progress: this.log })
        break
      case 'restart-dockerd': {
        const p = this.pending.get(f.id)
        this.pending.delete(f.id)
        await p
        break
      }
      case 'partition-2-1':
      case 'partition-1-1-1':
        await this.lab.heal()
        break
      case 'flap-link': {
        const s = this.flapping.get(f.id)
        if (s !== undefined) { s.stop = true; await s.done }
        this.flapping.delete(f.id)
        await this.lab.heal()
        break
      }
      case 'fill-disk':
        await this.lab.unfill(node)
        break
      case 'pause-agent': {
        const pid = (await this.lab.node(node)).agentPid
        if (pid !== null) { process.kill(pid, 'SIGCONT'); this.frozen.delete(pid) }
        break
      }
    }
    this.active.delete(f.id)
  }

  /** Cuts and heals one node's links every period until told to stop. */
  private async flap (f: Fault, state: { stop: boolean }): Promise<void> {
    let cut = false
    while (!state.stop) {
      cut = !cut
      try {
        if (cut) await this.lab.partition(f.groups ?? [])
        else await this.lab.heal()
      } catch (err) {
        this.log(`flap-link #${f.id}: ${(err as Error).message}`)
      }
      const until = Date.now() + (f.flapPeriodMs ?? 1500)
      while (!state.stop && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 100))
    }
  }

  /** Repairs whatever is still active (an interrupted or failed run), best effort, and thaws frozen agents first. */
  async repairAll (): Promise<void> {
    for (const pid of this.frozen) { try { process.kill(pid, 'SIGCONT') } catch {} }
    this.frozen.clear()
    for (const f of [...this.active.values()].reverse()) {
      try { await this.repair(f) } catch (err) { this.log(`repairing #${f.id} ${f.kind}: ${(err as Error).message}`) }
    }
  }
}
