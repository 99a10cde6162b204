/**
 * What this node has: CPU, memory, disk where Docker keeps its data, arch,
 * Docker version and the managed apps running here. Sampled on its own
 * schedule; heartbeats send the latest sample, so a slow Docker never delays
 * a heartbeat.
 */
import cpu from 'systeminformation/lib/cpu.js'
import memory from 'systeminformation/lib/memory.js'
import { statfs } from 'node:fs/promises'
import { availableParallelism, arch as nodeArch } from 'node:os'
import type { DockerRuntime } from '../runtime/docker.ts'
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
  containers: number
}

/** Docker's names for CPU architectures, which images and manifests use. */
export function dockerArch (arch: string = nodeArch()): string {
  const names: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' }
  return names[arch] ?? arch
}

export class ResourceCollector {
  private sample: ResourceSample
  private dockerRoot: string | null = null
  private dockerWasReachable: boolean | null = null
  private readonly docker: DockerRuntime
  private readonly log: Logger

  constructor (docker: DockerRuntime, log: Logger) {
    this.docker = docker
    this.log = log
    this.sample = { cores: availableParallelism(), load: 0, memTotal: 0, memFree: 0, diskFree: 0, arch: dockerArch(), dockerVersion: null, apps: [], containers: 0 }
  }

  latest (): ResourceSample {
    return this.sample
  }

  async refresh (signal?: AbortSignal): Promise<ResourceSample> {
    const [load, mem] = await Promise.all([cpu.currentLoad(), memory.mem()])
    const next: ResourceSample = {
      ...this.sample,
      load: Math.round(Math.min(100, Math.max(0, load.currentLoad)) * 10) / 10,
      memTotal: mem.total,
      memFree: Math.min(mem.available, mem.total)
    }
    try {
      const facts = await this.docker.facts(signal)
      this.dockerRoot = facts.rootDir
      next.dockerVersion = facts.version
      const containers = await this.docker.managedContainers(signal)
      next.containers = containers.length
      next.apps = [...new Set(containers.map(c => c.app).filter(a => a !== ''))].sort()
      if (this.dockerWasReachable !== true) this.log.info('docker engine reachable', { version: facts.version, root: facts.rootDir })
      this.dockerWasReachable = true
    } catch (err) {
      if (this.dockerWasReachable !== false) this.log.warn('docker engine unreachable; reporting no apps', { error: (err as Error).message })
      this.dockerWasReachable = false
      next.dockerVersion = null
      next.apps = []
      next.containers = 0
    }
    next.diskFree = await this.freeBytes(this.dockerRoot ?? '/')
    this.sample = next
    return next
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
