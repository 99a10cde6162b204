/**
 * Helpers for tests that run in the lab: real namespaces, dockerds and agents,
 * driven through the product's own CLI (`dcloud lab ...`) and observed through
 * each agent's API socket.
 */
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { cp, mkdir, rm } from 'node:fs/promises'
import { Lab } from '../../scripts/lab/lab.ts'
import { apiGet } from '../../agent/cli/client.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import type { MetricsResponse, StatusResponse } from '../../proto/api.ts'

export const DCLOUD = join(PROJECT_ROOT, 'bin', 'dcloud')

export interface Run { code: number, stdout: string, stderr: string }

export async function dcloud (args: string[], opts: { env?: NodeJS.ProcessEnv, timeoutMs?: number } = {}): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(DCLOUD, args, { env: { ...process.env, ...opts.env }, timeout: opts.timeoutMs ?? 300_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

/** Runs `dcloud` and fails the test with its output when it does not exit 0. */
export async function dcloudOk (args: string[], opts: { env?: NodeJS.ProcessEnv, timeoutMs?: number } = {}): Promise<string> {
  const r = await dcloud(args, opts)
  if (r.code !== 0) throw new Error(`dcloud ${args.join(' ')} exited ${r.code}\n${r.stderr}\n${r.stdout}`)
  return r.stdout
}

export class LabHandle {
  readonly lab: Lab
  readonly name: string

  constructor (name: string) {
    this.name = name
    this.lab = new Lab(name)
  }

  /** `diskSize`: each node's data disk (`lab up --disk-size`), for tests that hold more than the default 4 GiB. */
  async up (nodes: number, agentArgs: string[] = [], opts: { diskSize?: string } = {}): Promise<void> {
    await dcloud(['lab', '--lab', this.name, 'down'])
    await dcloudOk(['lab', '--lab', this.name, 'up', '--nodes', String(nodes), ...(opts.diskSize !== undefined ? ['--disk-size', opts.diskSize] : []), ...(agentArgs.length > 0 ? ['--', ...agentArgs] : [])])
  }

  /** Takes the lab down, keeping its agents' and dockerds' logs in /tmp/dcloud-lab-logs/LAB/ for whoever reads a failure. */
  async down (): Promise<void> {
    if (this.lab.exists()) {
      const keep = join('/tmp/dcloud-lab-logs', this.name)
      await rm(keep, { recursive: true, force: true })
      for (const n of (await this.lab.state()).nodes) {
        await mkdir(join(keep, n.name), { recursive: true })
        for (const f of ['agent.log', 'dockerd.log', 'watchdog.log', 'caddy.log', 'dns.log']) await cp(join(this.lab.nodeDir(n.name), f), join(keep, n.name, f)).catch(() => {})
      }
    }
    await dcloudOk(['lab', '--lab', this.name, 'down'])
  }

  async cmd (...args: string[]): Promise<string> {
    return await dcloudOk(['lab', '--lab', this.name, ...args])
  }

  async exec (node: string, cmd: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
    return await dcloud(['lab', '--lab', this.name, 'exec', node, '--', ...cmd], { env })
  }

  async status (node: string): Promise<StatusResponse> {
    return await apiGet<StatusResponse>('/v1/status', { socketPath: this.lab.agentSocket(node), describe: node }, 3000)
  }

  async metrics (node: string): Promise<MetricsResponse> {
    return await apiGet<MetricsResponse>('/v1/metrics', { socketPath: this.lab.agentSocket(node), describe: node }, 3000)
  }

  /**
   * The cluster CA's root as a file (`dcloud domain ca` on `node`), for curl's
   * --cacert: apps are reached at https://NAME.DOMAIN through a front door.
   * Written again each call (the domain, hence the root, may have changed).
   */
  async caFile (node = 'n1'): Promise<string> {
    const file = join(this.lab.stateDir, 'cluster-ca.pem')
    await dcloudOk(['lab', '--lab', this.name, 'exec', node, '--', 'dcloud', 'domain', 'ca', '-o', file])
    return file
  }

  /** Node name -> state, as `node` sees the cluster. */
  async view (node: string): Promise<Record<string, string>> {
    const s = await this.status(node)
    return Object.fromEntries(s.nodes.map(n => [n.name, n.state]))
  }
}

/**
 * curl's arguments for `url` (https://NAME.DOMAIN/...) through the front door
 * at `address` (a node's, or 127.0.0.1 for the node curl runs on), trusting
 * only the cluster's root: what a browser does once the name resolves.
 */
export function viaFrontDoor (url: string, address: string, caFile: string): string[] {
  return ['--resolve', `${new URL(url).hostname}:443:${address}`, '--cacert', caFile, url]
}

/** Polls `check` until it returns a value other than undefined; returns it and how long it took. */
export async function waitFor<T> (check: () => Promise<T | undefined>, timeoutMs: number, what: string, everyMs = 100): Promise<{ value: T, ms: number }> {
  const start = performance.now()
  let lastError: unknown
  while (performance.now() - start < timeoutMs) {
    try {
      const value = await check()
      if (value !== undefined) return { value, ms: performance.now() - start }
    } catch (err) {
      lastError = err
    }
    await new Promise(resolve => setTimeout(resolve, everyMs))
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError !== undefined ? `; last error: ${String(lastError)}` : ''}`)
}
