/**
 * The node's Docker engine, through dockerode. Everything the agent knows
 * about what runs comes back from Docker and its `dcloud.*` labels, never
 * from memory alone.
 */
import Docker from 'dockerode'

/** Label every managed object carries: the app it belongs to. */
export const APP_LABEL = 'dcloud.app'

export interface ManagedContainer {
  id: string
  app: string
  state: string
}

export interface DockerFacts {
  version: string
  rootDir: string
}

export function dockerFromEnv (host = process.env.DOCKER_HOST): Docker {
  if (host === undefined || host === '') return new Docker({ socketPath: '/var/run/docker.sock' })
  if (host.startsWith('unix://')) return new Docker({ socketPath: host.slice('unix://'.length) })
  const url = new URL(host.replace(/^tcp:/, 'http:'))
  return new Docker({ host: url.hostname, port: Number(url.port || 2375) })
}

export class DockerRuntime {
  readonly docker: Docker

  constructor (docker: Docker) {
    this.docker = docker
  }

  async facts (signal?: AbortSignal): Promise<DockerFacts> {
    // dockerode honours abortSignal here, though its typings omit it.
    const opts = { abortSignal: signal } as object
    const [version, info] = await Promise.all([
      (this.docker.version as (o: object) => Promise<{ Version: string }>)(opts),
      (this.docker.info as (o: object) => Promise<{ DockerRootDir: string }>)(opts)
    ])
    return { version: version.Version, rootDir: info.DockerRootDir }
  }

  /** Docker's event stream, filtered (e.g. { type: ['container', 'image'] }). */
  async events (filters: Record<string, string[]>, signal?: AbortSignal): Promise<NodeJS.ReadableStream> {
    return await this.docker.getEvents({ filters, abortSignal: signal } as object) as NodeJS.ReadableStream
  }

  /** Tags of the images present (bounded: a status report is not an image index). */
  async imageTags (signal?: AbortSignal, max = 256): Promise<string[]> {
    const images = await this.docker.listImages({ abortSignal: signal } as object)
    return images.flatMap(i => i.RepoTags ?? []).filter(t => t !== '<none>:<none>').sort().slice(0, max)
  }

  /** Running containers that carry our app label. */
  async managedContainers (signal?: AbortSignal): Promise<ManagedContainer[]> {
    const list = await this.docker.listContainers({ filters: { label: [APP_LABEL], status: ['running'] }, abortSignal: signal })
    return list.map(c => ({ id: c.Id, app: c.Labels[APP_LABEL] ?? '', state: c.State }))
  }
}
