/**
 * What this node has: CPU, memory, disk where Docker keeps its data, arch,
 * Docker version and the managed apps running here.
 *
 * Cheap things are sampled on a timer (`sampleLoad`: CPU, memory, disk);
 * Docker is asked only when it says something changed (its event stream) and
 * on a slow safety-net timer. Heartbeats send the latest sample, so a slow
 * Docker never delays a heartbeat.
 */
import memory from 'systeminformation/lib/memory.js'
import { statfs } from 'node:fs/promises'
import { availableParallelism, arch as nodeArch, cpus } from 'node:os'
import type { DockerRuntime } from '../runtime/docker.ts'
import { readDevices } from './devices.ts'
import type { AppReport } from '../../proto/status.ts'
import type { Logger } from '../util/log.ts'

export interface ResourceSample {
  cores: number
  load: number
  memTotal: number
  memFree: number
  diskFree: number
  arch: string
  dockerVersion: string | null
  apps: string[]
  appStates: AppReport[]
  containers: number
  images: string[]
  /** Device paths of the node (devices.ts). */
  devices: string[]
}

/** Where the collector learns which apps run here (the app runtime, from Docker's labels). */
export type AppReporter = (signal?: AbortSignal) => Promise<AppReport[]>

/** Docker's names for CPU architectures, which images and manifests use. */
export function dockerArch (arch: string = nodeArch()): string {
  const names: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' }
  return names[arch] ?? arch
}

interface CpuTimes { busy: number, total: number }

/** Total busy and total time of all cores since boot, from the kernel's counters. */
function cpuTimes (): CpuTimes {
  let busy = 0
  let total = 0
  for (const c of cpus()) {
    const t = c.times
    busy += t.user + t.nice + t.sys + t.irq
    total += t.user + t.nice + t.sys + t.irq + t.idle
  }
  return { busy, total }
}

/** Load in percent between two readings of the counters. */
export function loadBetween (a: CpuTimes, b: CpuTimes): number {
  const total = b.total - a.total
  if (total <= 0) return 0
  return Math.round(Math.min(100, Math.max(0, (b.busy - a.busy) / total * 100)) * 10) / 10
}

export class ResourceCollector {
  private sample: ResourceSample
  private dockerRoot: string | null = null
  private dockerWasReachable: boolean | null = null
  private readonly docker: DockerRuntime
  private readonly log: Logger
  private reportApps: AppReporter | null = null
  private refreshing: Promise<void> | null = null
  private lastCpu: CpuTimes = cpuTimes()
  private events: NodeJS.ReadableStream | null = null
  private debounce: NodeJS.Timeout | undefined

  /** The devices the user gave (`--devices`), or null to read them from /sys at every refresh (a USB device comes and goes). */
  private readonly givenDevices: string[] | null

  constructor (docker: DockerRuntime, log: Logger, devices: string[] | null = null) {
    this.docker = docker
    this.log = log
    this.givenDevices = devices
    this.sample = { cores: availableParallelism(), load: 0, memTotal: 0, memFree: 0, diskFree: 0, arch: dockerArch(), dockerVersion: null, apps: [], appStates: [], containers: 0, images: [], devices: devices ?? [] }
  }

  /** Lets the app runtime report apps in detail (state, revision, web port) instead of bare container labels. */
  useAppReporter (reporter: AppReporter): void {
    this.reportApps = reporter
  }

  latest (): ResourceSample {
    return this.sample
  }

  /**
   * CPU load, memory and disk: cheap, no process spawned. (systeminformation's
   * currentLoad runs a shell pipeline synchronously on Linux at every call,
   * which stalls the event loop; the kernel's counters via os.cpus() do not.)
   */
  async sampleLoad (): Promise<void> {
    const now = cpuTimes()
    const load = loadBetween(this.lastCpu, now)
    this.lastCpu = now
    const mem = await memory.mem()
    this.sample = {
      ...this.sample,
      load,
      memTotal: mem.total,
      memFree: Math.min(mem.available, mem.total),
      diskFree: await this.freeBytes(this.dockerRoot ?? '/')
    }
  }

  /** Asks Docker everything again (apps, images, version); concurrent callers share one round. */
  async refresh (signal?: AbortSignal): Promise<ResourceSample> {
    this.refreshing ??= this.askDocker(signal).finally(() => { this.refreshing = null })
    await this.refreshing
    return this.sample
  }

  /**
   * Follows Docker's event stream: a container or image changed, so the apps
   * and images are read again (debounced) and `onChange` announces them.
   * Reconnects after the engine restarts.
   */
  watchDocker (onChange: () => void, signal: AbortSignal): void {
    const connect = async (): Promise<void> => {
      if (signal.aborted) return
      try {
        const stream = await this.docker.events({ type: ['container', 'image'] }, signal)
        this.events = stream
        stream.on('data', () => {
          clearTimeout(this.debounce)
          this.debounce = setTimeout(() => {
            void this.refresh(AbortSignal.timeout(10_000)).then(onChange, () => {})
          }, 200)
        })
        stream.on('error', () => {})
        stream.on('end', () => { if (!signal.aborted) setTimeout(() => { void connect() }, 2000) })
      } catch {
        if (!signal.aborted) setTimeout(() => { void connect() }, 5000)
      }
    }
    signal.addEventListener('abort', () => {
      clearTimeout(this.debounce)
      const s = this.events as (NodeJS.ReadableStream & { destroy?: () => void }) | null
      s?.destroy?.()
    }, { once: true })
    void connect()
  }

  private async askDocker (signal?: AbortSignal): Promise<void> {
    const next = { ...this.sample }
    try {
      const facts = await this.docker.facts(signal)
      this.dockerRoot = facts.rootDir
      next.dockerVersion = facts.version
      const containers = await this.docker.managedContainers(signal)
      next.containers = containers.length
      next.appStates = this.reportApps !== null ? await this.reportApps(signal) : []
      next.apps = [...new Set([...containers.map(c => c.app), ...next.appStates.filter(a => a.state === 'running').map(a => a.name)].filter(a => a !== ''))].sort()
      next.images = await this.docker.imageTags(signal)
      if (this.dockerWasReachable !== true) this.log.info('docker engine reachable', { version: facts.version, root: facts.rootDir })
      this.dockerWasReachable = true
    } catch (err) {
      if (this.dockerWasReachable !== false) this.log.warn('docker engine unreachable; reporting its apps as failed until it answers', { error: (err as Error).message })
      this.dockerWasReachable = false
      next.dockerVersion = null
      next.apps = []
      // Their containers are down with the engine, but their data is here: reporting them gone would
      // have the leader restore a stateful app elsewhere from an older snapshot, losing what was
      // written since. Failed, they wait for this engine (scheduler/plan.ts).
      next.appStates = this.sample.appStates.map(a => ({ ...a, state: 'failed' as const }))
      next.containers = 0
    }
    next.diskFree = await this.freeBytes(this.dockerRoot ?? '/')
    next.devices = this.givenDevices ?? await readDevices()
    // Load and memory may have been sampled meanwhile: keep the newer ones.
    this.sample = { ...next, load: this.sample.load, memTotal: this.sample.memTotal, memFree: this.sample.memFree }
  }

  private async freeBytes (path: string): Promise<number> {
    try {
      const fs = await statfs(path)
      return fs.bavail * fs.bsize
    } catch {
      return 0
    }
  }
}
