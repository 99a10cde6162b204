/**
 * What a chaos run sees of every node's Docker: each dockerd's event stream
 * (container start, die, pause, unpause, destroy of app containers, kept even
 * for containers that are removed later) and a poll of `docker inspect`
 * (State.StartedAt, FinishedAt, Running, Paused) every second or two. Read
 * over each node's own socket from this machine, so partitions of the lab's
 * switch do not blind it; a dockerd that is down is simply not heard from
 * until it is back (the stream reconnects, asking for what it missed).
 */
import Docker from 'dockerode'
import type { Lab } from '../lab.ts'
import { LABELS } from '../../../proto/runtime.ts'
import type { DockerEvent, DockerInspection } from './checks.ts'

/** Docker's zero time ("0001-01-01T00:00:00Z") and unparsable times are null. */
export function dockerTime (iso: string | undefined): number | null {
  if (iso === undefined || iso.startsWith('0001-')) return null
  const t = Date.parse(iso)
  return Number.isFinite(t) ? t : null
}

export interface ContainerNow {
  node: string
  id: string
  app: string
  running: boolean
  paused: boolean
  /** The host port published for the app's first exposed container port, if any. */
  hostPort: number | null
}

interface RawEvent {
  Type?: string
  Action?: string
  status?: string
  id?: string
  time?: number
  timeNano?: number
  Actor?: { ID?: string, Attributes?: Record<string, string> }
}

const RUN_ACTIONS = new Set(['create', 'start', 'restart', 'die', 'kill', 'stop', 'oom', 'pause', 'unpause', 'destroy'])

export class DockerObserver {
  readonly events: DockerEvent[] = []
  readonly inspections: DockerInspection[] = []
  private readonly seen = new Set<string>()
  private readonly lab: Lab
  private readonly nodes: string[]
  private readonly clients = new Map<string, Docker>()
  private readonly streams = new Map<string, NodeJS.ReadableStream | null>()
  private readonly lastEventSec = new Map<string, number>()
  private stopped = false
  private readonly startSec = Math.floor(Date.now() / 1000)
  private readonly onEvent: (e: DockerEvent) => void

  constructor (lab: Lab, nodes: string[], onEvent: (e: DockerEvent) => void = () => {}) {
    this.lab = lab
    this.nodes = nodes
    this.onEvent = onEvent
    for (const n of nodes) this.clients.set(n, new Docker({ socketPath: lab.dockerSocket(n), timeout: 5000 }))
  }

  docker (node: string): Docker {
    const d = this.clients.get(node)
    if (d === undefined) throw new Error(`no node ${node}`)
    return d
  }

  start (): void {
    for (const n of this.nodes) void this.follow(n)
  }

  stop (): void {
    this.stopped = true
    for (const s of this.streams.values()) (s as unknown as { destroy?: () => void } | null)?.destroy?.()
  }

  /** Keeps one event stream open per node, reconnecting (from the last second it saw) whenever it breaks. */
  private async follow (node: string): Promise<void> {
    while (!this.stopped) {
      try {
        const since = this.lastEventSec.get(node) ?? this.startSec
        // A client without a request timeout: the stream is quiet for long stretches.
        const stream = await new Docker({ socketPath: this.lab.dockerSocket(node) }).getEvents({ since, filters: JSON.stringify({ type: ['container'], label: [LABELS.app] }) } as object)
        this.streams.set(node, stream)
        await new Promise<void>((resolve) => {
          let buf = ''
          stream.on('data', (chunk: Buffer) => {
            buf += chunk.toString('utf8')
            let nl: number
            while ((nl = buf.indexOf('\n')) >= 0) {
              const line = buf.slice(0, nl).trim()
              buf = buf.slice(nl + 1)
              if (line !== '') this.record(node, line)
            }
          })
          stream.on('end', () => { resolve() })
          stream.on('close', () => { resolve() })
          stream.on('error', () => { resolve() })
        })
      } catch {}
      this.streams.set(node, null)
      if (!this.stopped) await new Promise(resolve => setTimeout(resolve, 1000))
    }
  }

  private record (node: string, line: string): void {
    let raw: RawEvent
    try { raw = JSON.parse(line) as RawEvent } catch { return }
    const action = (raw.Action ?? raw.status ?? '').split(':')[0] ?? ''
    // Only what starts, stops or freezes a container (not healthcheck execs).
    if (!RUN_ACTIONS.has(action)) return
    const container = raw.Actor?.ID ?? raw.id ?? ''
    const app = raw.Actor?.Attributes?.[LABELS.app]
    if (app === undefined || container === '' || raw.Actor?.Attributes?.[LABELS.service] === undefined) return
    const time = raw.timeNano !== undefined ? Math.round(raw.timeNano / 1e6) : (raw.time ?? 0) * 1000
    const key = `${node} ${container} ${action} ${time}`
    if (this.seen.has(key)) return
    this.seen.add(key)
    this.lastEventSec.set(node, Math.floor(time / 1000))
    const ev: DockerEvent = { node, container, app, action, time }
    this.events.push(ev)
    this.onEvent(ev)
  }

  /**
   * Inspects every app container of every node now; returns what runs
   * (nodes whose dockerd does not answer are left out, and listed).
   */
  async poll (): Promise<{ at: number, containers: ContainerNow[], unreachable: string[] }> {
    const at = Date.now()
    const containers: ContainerNow[] = []
    const unreachable: string[] = []
    await Promise.all(this.nodes.map(async (node) => {
      try {
        const list = await this.docker(node).listContainers({ all: true, filters: JSON.stringify({ label: [LABELS.app, LABELS.service] }) } as object)
        for (const c of list) {
          try {
            const info = await this.docker(node).getContainer(c.Id).inspect()
            const app = info.Config.Labels?.[LABELS.app] ?? ''
            const i: DockerInspection = {
              node,
              container: info.Id,
              app,
              startedAt: dockerTime(info.State.StartedAt),
              finishedAt: dockerTime(info.State.FinishedAt),
              running: info.State.Running,
              paused: info.State.Paused,
              observedAt: Date.now()
            }
            this.inspections.push(i)
            const ports = Object.values(info.NetworkSettings?.Ports ?? {}).flat().filter(p => p !== null && p !== undefined) as Array<{ HostPort?: string }>
            const hostPort = ports.length > 0 ? Number(ports[0]?.HostPort) : null
            containers.push({ node, id: info.Id, app, running: info.State.Running, paused: info.State.Paused, hostPort: Number.isFinite(hostPort) ? hostPort : null })
          } catch {}
        }
      } catch {
        unreachable.push(node)
      }
    }))
    return { at, containers, unreachable }
  }

  /** Whether a plain container (a workload client) runs on a node. */
  async isRunning (node: string, name: string): Promise<boolean | null> {
    try {
      return (await this.docker(node).getContainer(name).inspect()).State.Running
    } catch (err) {
      return (err as { statusCode?: number }).statusCode === 404 ? false : null
    }
  }
}
