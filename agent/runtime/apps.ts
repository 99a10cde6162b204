/**
 * The app runtime: turns a DesiredApp into Docker objects on this node, and
 * reads back what runs from Docker alone.
 *
 * An app is one bridge network `dcloud-<app>`, its named volumes
 * `dcloud-<app>-<volume>` and one container `dcloud-<app>-<service>` per
 * service, every object labelled `dcloud.*` (proto/runtime.ts LABELS). The
 * labels are the only record: an agent that restarts rebuilds its view with
 * `list()`, and a deploy of what already runs finds equal spec hashes and
 * touches nothing.
 *
 * Data is sacred: only `removeVolumes` removes a volume, and only the old
 * copy of a moved app, once its final snapshot is safe.
 */
import { createHash } from 'node:crypto'
import { chmod, mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type Docker from 'dockerode'
import { withoutWebPort, type ComposeProject, type ComposeService, type ConfigMount, type PortMapping } from '../../proto/app.ts'
import type { DesiredApp } from '../../proto/plan.ts'
import {
  LABELS, appState, isImageRef, isRegistryRef,
  type AppActual, type PortActual, type ServiceActual, type ServiceHealth, type ServiceRunState
} from '../../proto/runtime.ts'
import { DOCKER_NAME } from '../../proto/validate.ts'
import { KeyedMutex } from '../util/async.ts'
import { UserError, EXIT } from '../util/errors.ts'
import type { Logger } from '../util/log.ts'
import { dockerStatus, hasImage, pullImage } from './images.ts'
import { checkHostPaths, checkStoragePath } from './host-paths.ts'
import { checkGrants, effectiveManifest } from '../../proto/permissions.ts'
import { ValidationError } from '../../proto/validate.ts'

/** Docker's rule for container, network and volume names, kept short enough to combine. */
/** After a snapshot's pause, healthchecks failed while frozen are forgiven this long (the next passing one clears them). */
const RESUME_GRACE_MS = 30_000
/** How long a container gets to stop before Docker kills it. */
const STOP_TIMEOUT_S = 10
/** A pull that sees no progress for this long is given up: the peers are asked next. */
const PULL_IDLE_MS = 15_000

export interface AppRuntimeInit {
  docker: Docker
  log: Logger
  /**
   * Whether this node may start a stateful app's container now (the node
   * holds its fencing lease: agent/fence/lease.ts); null to allow, or why not.
   * Absent: always allowed (tests of the runtime alone).
   */
  mayStartStateful?: () => string | null
  /**
   * Where the node writes the files of apps' configs (ComposeProject.configs),
   * one folder per app: the agent's data folder's `configs/`. dockerd binds
   * them, so it must see the same path (it runs on the same machine).
   */
  configDir: string
  /** The agent's own directories on this node (its data directory): binding them takes a dangerous_path grant. */
  ownDirs?: string[]
}

/** A stateful container was not started: this node does not hold its fencing lease. */
export class FencedError extends UserError {
  override name = 'FencedError'

  constructor (app: string, why: string) {
    super(`${app} is not started here: ${why}`, { exitCode: EXIT.tempFail, hint: 'the node starts it again once it sees the cluster\'s majority (or the app runs elsewhere by then)' })
  }
}

export interface DeployOptions {
  /** The leader's term; stamped on new containers, and a deploy from a term older than the app's is refused. */
  term: number
  /** Gets an image from a peer when the engine lacks it and no registry has it (image-transfer.ts). */
  fetchImage: (ref: string, signal: AbortSignal) => Promise<void>
  signal: AbortSignal
  progress?: (line: string) => void
  /** The volumes were just restored for this generation: containers of an older one are replaced, not refused. */
  restored?: boolean
}

export interface LogsOptions {
  /** Lines per container. */
  tail: number
  signal: AbortSignal
}

/** The image is on no registry we could reach and no peer had it. */
export class ImageUnavailableError extends UserError {
  override name = 'ImageUnavailableError'
  readonly ref: string
  readonly tried: string[]

  constructor (ref: string, tried: string[]) {
    super(`image ${ref} is not on this node and could not be obtained (${tried.join('; ')})`, {
      exitCode: EXIT.unavailable,
      hint: `put the image on any node of the cluster (\`docker load\`, or \`docker pull ${ref}\` where a registry is reachable): peers then share it`
    })
    this.ref = ref
    this.tried = tried
  }
}

/** A deploy stamped with a term older than the one that last touched the app: a deposed leader. */
export class StaleTermError extends UserError {
  override name = 'StaleTermError'

  constructor (app: string, term: number, seen: number) {
    super(`refusing to deploy ${app} for term ${term}: its containers were created in term ${seen}`, {
      exitCode: EXIT.tempFail,
      hint: 'the operation came from a leader that has been replaced; the current leader will send its own'
    })
  }
}

export function networkName (app: string): string {
  return `dcloud-${app}`
}

/**
 * Where a volume's data is: the directory a local volume binds (its
 * `device`), or Docker's own directory. A bound volume's mountpoint is empty
 * while no container uses it, so snapshots and restores go to the device.
 */
export function dataDirOf (v: { Mountpoint: string, Options?: Record<string, string> | null }): string {
  const o = v.Options ?? {}
  const bind = (o.o ?? '').split(',').includes('bind')
  if (bind && typeof o.device === 'string' && o.device.startsWith('/')) return o.device
  return v.Mountpoint
}

/** A bound directory dcloud made for this volume: `.../dcloud-APP-VOL/_data` (never someone's own directory). */
function isOwnHostDir (dir: string, volume: string): boolean {
  return basename(dir) === '_data' && basename(dirname(dir)) === volume
}

export function volumeName (app: string, volume: string): string {
  return `dcloud-${app}-${volume}`
}

export function containerName (app: string, service: string): string {
  return `dcloud-${app}-${service}`
}

/**
 * The part of a service that decides what its container is, in a canonical
 * form: key order, environment order and port order do not change the hash,
 * and neither do depends_on or the revision (they change no container).
 */
export function normaliseService (app: string, svc: ComposeService, configs: ComposeProject['configs'] = {}): Record<string, unknown> {
  const sortedEntries = (o: Record<string, string>): Array<[string, string]> => Object.entries(o).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
  const base = {
    image: svc.image,
    command: svc.command,
    entrypoint: svc.entrypoint,
    environment: sortedEntries(svc.environment),
    ports: [...svc.ports].map(p => [p.container, p.protocol, p.host]).sort((a, b) => JSON.stringify(a) < JSON.stringify(b) ? -1 : 1),
    mounts: [...svc.volumes]
      .map(v => [v.kind, v.kind === 'volume' ? volumeName(app, v.source) : v.source, v.target, v.readOnly])
      .sort((a, b) => String(a[2]) < String(b[2]) ? -1 : 1),
    healthcheck: svc.healthcheck === null ? null : [svc.healthcheck.test, svc.healthcheck.intervalMs, svc.healthcheck.timeoutMs, svc.healthcheck.retries, svc.healthcheck.startPeriodMs],
    restart: svc.restart,
    labels: sortedEntries(svc.labels),
    user: svc.user,
    network: networkName(app)
  }
  // The keys added later join the hash only when they ask for something: a
  // container made before they existed keeps its hash, and is not recreated
  // by the agent's upgrade.
  const extras: Record<string, unknown> = {
    workingDir: svc.workingDir,
    tty: svc.tty || null,
    stdinOpen: svc.stdinOpen || null,
    shmSize: svc.shmSizeBytes,
    tmpfs: svc.tmpfs.length === 0 ? null : [...svc.tmpfs].map(t => [t.target, t.options]).sort((a, b) => String(a[0]) < String(b[0]) ? -1 : 1),
    readOnly: svc.readOnly || null,
    capDrop: svc.capDrop.length === 0 ? null : [...svc.capDrop].sort(),
    ulimits: Object.keys(svc.ulimits).length === 0 ? null : Object.entries(svc.ulimits).map(([n, l]) => [n, l.soft, l.hard]).sort((a, b) => String(a[0]) < String(b[0]) ? -1 : 1),
    extraHosts: svc.extraHosts.length === 0 ? null : svc.extraHosts.map(h => `${h.host}:${h.address}`),
    noNewPrivileges: svc.noNewPrivileges || null,
    // A config's content, by digest: a new text makes a new container, which mounts the new file.
    configs: svc.configs.length === 0 ? null : [...svc.configs].map(c => [c.target, configDigest(configContent(configs, c)), c.mode]).sort((a, b) => String(a[0]) < String(b[0]) ? -1 : 1),
    // Powers, as granted (the service is the effective one): a grant or a revoke makes a new container.
    capAdd: svc.capAdd.length === 0 ? null : [...svc.capAdd].sort(),
    devices: svc.devices.length === 0 ? null : svc.devices.map(d => [d.host, d.container, d.permissions]).sort((a, b) => String(a[1]) < String(b[1]) ? -1 : 1),
    networkMode: svc.networkMode === 'host' ? 'host' : null,
    privileged: svc.privileged || null,
    sysctls: Object.keys(svc.sysctls).length === 0 ? null : sortedEntries(svc.sysctls)
  }
  return { ...base, ...Object.fromEntries(Object.entries(extras).filter(([, v]) => v !== null)) }
}

function configContent (configs: ComposeProject['configs'], c: ConfigMount): string {
  const config = Object.hasOwn(configs, c.source) ? configs[c.source] : undefined
  // decodeManifest and validateApp refuse a manifest like this; reaching here is a bug of ours.
  if (config === undefined) throw new Error(`config ${c.source} is mounted but not part of the app`)
  return config.content
}

function configDigest (content: string): string {
  return createHash('sha256').update(content).digest('hex')
}

/** The `dcloud.spec` label: sha256 of the normalised spec. */
export function specHash (app: string, svc: ComposeService, configs: ComposeProject['configs'] = {}): string {
  return createHash('sha256').update(JSON.stringify(normaliseService(app, svc, configs))).digest('hex')
}

/** The spec hash every service of `app` should carry (with the powers granted: a revoke changes it); compare with `AppActual.services[].spec`. */
export function desiredSpecs (app: DesiredApp): Record<string, string> {
  const manifest = withoutWebPort(effectiveManifest(app.manifest, app.grants))
  return Object.fromEntries(Object.entries(manifest.compose.services).map(([name, svc]) => [name, specHash(app.name, svc, manifest.compose.configs)]))
}

/** Services in an order where every service comes after those it depends on. */
export function startOrder (services: Record<string, ComposeService>): string[] {
  const order: string[] = []
  const state = new Map<string, 'visiting' | 'done'>()
  const visit = (name: string, path: string[]): void => {
    if (state.get(name) === 'done') return
    if (state.get(name) === 'visiting') {
      throw new UserError(`services depend on each other in a cycle: ${[...path, name].join(' -> ')}`, { exitCode: EXIT.dataError, hint: 'remove one of these depends_on entries' })
    }
    const svc = services[name]
    if (svc === undefined) {
      throw new UserError(`service ${path[path.length - 1] ?? '?'} depends on ${name}, which the app does not define`, { exitCode: EXIT.dataError, hint: 'fix the depends_on entry or add the service' })
    }
    state.set(name, 'visiting')
    for (const dep of [...svc.dependsOn].sort()) visit(dep, [...path, name])
    state.set(name, 'done')
    order.push(name)
  }
  for (const name of Object.keys(services).sort()) visit(name, [])
  return order
}

/** What Docker's container state means for the app. */
/**
 * A container's state for the scheduler. `justResumed`: it was unpaused or
 * restarted after a snapshot moments ago; the healthchecks that timed out
 * while it was frozen still count against it until the next one passes, and
 * an unhealthy verdict from them is not a failure to restart it for.
 */
export function serviceState (s: Docker.ContainerInspectInfo['State'], justResumed = false): { state: ServiceRunState, health: ServiceHealth } {
  const h = s.Health?.Status
  const health: ServiceHealth = h === 'starting' || h === 'healthy' || h === 'unhealthy' ? h : 'none'
  switch (s.Status) {
    case 'running':
      if (health === 'unhealthy' && justResumed) return { state: 'running', health }
      return { state: health === 'unhealthy' ? 'failed' : health === 'starting' ? 'starting' : 'running', health }
    case 'created':
      // A container that could not start (a port already taken) stays 'created' with an error.
      return { state: s.Error !== '' ? 'failed' : 'starting', health }
    case 'restarting':
      return { state: 'failed', health }
    case 'paused':
      // Frozen for a snapshot's final pass, a second or so: still the running copy (the leader must not restart it).
      return { state: 'running', health }
    case 'removing':
      return { state: 'stopped', health }
    case 'exited': {
      // 0 is a clean exit; 130/137/143 are SIGINT/SIGKILL/SIGTERM, what `docker stop` sends.
      const clean = !s.OOMKilled && s.Error === '' && [0, 130, 137, 143].includes(s.ExitCode)
      return { state: clean ? 'stopped' : 'failed', health }
    }
    default:
      return { state: 'failed', health }
  }
}

/** The data generation a container was started with; containers made before generations existed count as 1. */
function generationOf (labels: Record<string, string> | undefined): number {
  return Math.max(1, labelInt(labels, LABELS.generation))
}

function isStatefulApp (app: DesiredApp): boolean {
  return Object.keys(app.manifest.compose.volumes).length > 0
}

function labelInt (labels: Record<string, string> | undefined, key: string): number {
  const n = Number(labels?.[key])
  return Number.isSafeInteger(n) && n >= 0 ? n : 0
}

function portsOf (info: Docker.ContainerInspectInfo): PortActual[] {
  const configured = info.HostConfig.PortBindings as Record<string, Array<{ HostPort?: string }> | null> | undefined ?? {}
  const live = (info.NetworkSettings.Ports ?? {}) as Record<string, Array<{ HostPort: string }> | null>
  const out: PortActual[] = []
  for (const key of Object.keys(configured).sort()) {
    const [port, proto] = key.split('/')
    const protocol = proto === 'udp' ? 'udp' : 'tcp'
    // IPv4 and IPv6 bindings of one port share the host port: one entry.
    const hostPorts = [...new Set((live[key] ?? configured[key] ?? []).map(b => Number(b.HostPort)).filter(p => Number.isInteger(p) && p > 0))]
    if (hostPorts.length === 0) out.push({ container: Number(port), host: null, protocol })
    for (const host of hostPorts) out.push({ container: Number(port), host, protocol })
  }
  return out
}

function isNotFound (err: unknown): boolean {
  return dockerStatus(err) === 404
}

function message (err: unknown): string {
  // dockerode prefixes "(HTTP code 409) unexpected - "; the engine's own words are what helps.
  return (err as Error).message.replace(/^\(HTTP code \d+\) [^-]*- /, '').trim()
}

export class AppRuntime {
  private readonly docker: Docker
  /** Containers resumed after a snapshot, and when (see serviceState). */
  private readonly resumedAt = new Map<string, number>()
  private readonly log: Logger
  /** One operation per app at a time: a deploy and a remove of the same app must not interleave. */
  private readonly locks = new KeyedMutex()

  private readonly mayStartStateful: () => string | null
  private readonly configDir: string
  private readonly ownDirs: string[]

  constructor (init: AppRuntimeInit) {
    this.docker = init.docker
    this.log = init.log
    this.configDir = init.configDir
    this.ownDirs = init.ownDirs ?? []
    this.mayStartStateful = init.mayStartStateful ?? (() => null)
  }

  /** Throws FencedError when a stateful app may not start here now. */
  private checkFence (app: string, stateful: boolean): void {
    if (!stateful) return
    const refusal = this.mayStartStateful()
    if (refusal !== null) throw new FencedError(app, refusal)
  }

  /**
   * Makes the node run `app`: idempotent. Containers whose spec hash matches
   * are kept (started if stopped); others are replaced; services the app no
   * longer has are removed. Images come first, so an image that cannot be had
   * leaves what runs untouched.
   */
  async deploy (app: DesiredApp, opts: DeployOptions): Promise<AppActual> {
    validateApp(app)
    const granted = await this.withGrants(app)
    return await this.locks.run(app.name, async () => await this.deployLocked(granted, opts))
  }

  /**
   * Refuses to write an app's data into its storage directory (a restore, a
   * staged move) unless that directory is granted and is, on this node, not
   * the node's own files: checked before the data lands, not only at deploy.
   */
  async checkStorage (app: DesiredApp): Promise<void> {
    try {
      await checkStoragePath(app.storage, app.grants ?? [], this.ownDirs)
    } catch (err) {
      if (!(err instanceof ValidationError)) throw err
      throw new UserError(`${app.name}'s data is not restored here: ${err.message}`, { exitCode: EXIT.dataError })
    }
  }

  /**
   * The app as it runs here: with exactly the powers granted (the rest taken
   * out of its services before any container is made), after checking that
   * every grant is one the app asks for and that no granted host path leads,
   * through a symlink on this node, into the node's own files.
   */
  private async withGrants (app: DesiredApp): Promise<DesiredApp> {
    const grants = app.grants ?? []
    try {
      checkGrants(app.manifest, grants, 'grants', false, app.storage)
      await checkHostPaths(app.manifest, grants, this.ownDirs)
      await checkStoragePath(app.storage, grants, this.ownDirs)
    } catch (err) {
      if (!(err instanceof ValidationError)) throw err
      throw new UserError(`${app.name} is not deployed: ${err.message}`, { exitCode: EXIT.dataError, hint: `see \`dcloud app why ${app.name}\`; \`dcloud app revoke\` takes a permission away` })
    }
    // Its web UI's port unpublished: the front door reaches it on the app's network.
    return { ...app, manifest: withoutWebPort(effectiveManifest(app.manifest, grants)) }
  }

  private async deployLocked (app: DesiredApp, opts: DeployOptions): Promise<AppActual> {
    const { signal } = opts
    const say = (line: string): void => { opts.progress?.(line) }
    const services = app.manifest.compose.services
    const order = startOrder(services)

    const existing = await this.containersOf(app.name, signal)
    const seenTerm = Math.max(0, ...existing.map(c => labelInt(c.Labels, LABELS.term)))
    if (opts.term < seenTerm) throw new StaleTermError(app.name, opts.term, seenTerm)
    const generation = app.generation ?? 1
    const seenGeneration = Math.max(0, ...existing.map(c => generationOf(c.Labels)))
    if (seenGeneration > generation) {
      throw new UserError(`${app.name} here runs data generation ${seenGeneration}, newer than the ${generation} asked for`, { exitCode: EXIT.tempFail, hint: 'the leader\'s view is behind; it plans again once it catches up' })
    }
    if (opts.restored !== true && isStatefulApp(app) && existing.length > 0 && seenGeneration < generation) {
      throw new UserError(`${app.name} here holds data generation ${seenGeneration}, older than the live ${generation}: it is restored from a snapshot, never started as it is`, { exitCode: EXIT.tempFail })
    }

    for (const ref of [...new Set(order.map(s => services[s]?.image ?? ''))]) await this.ensureImage(ref, opts)

    const net = await this.ensureNetwork(app.name, signal, say)
    for (const [volume, spec] of Object.entries(app.manifest.compose.volumes)) {
      await this.ensureVolume(app, volume, spec.labels, signal, say)
    }
    // Before any container starts: a kept container binds its config files again when it starts.
    const configFiles = await this.writeConfigs(app)

    // Services the app no longer has go first: they may hold ports the new ones want.
    for (const c of existing) {
      const service = c.Labels[LABELS.service] ?? ''
      if (services[service] === undefined) {
        say(`removing ${c.Names[0]?.slice(1) ?? c.Id} (service ${service} is no longer part of ${app.name})`)
        await this.stopAndRemove(c.Id, signal)
      }
    }

    for (const service of order) {
      const svc = services[service] as ComposeService
      const hash = specHash(app.name, svc, app.manifest.compose.configs)
      const mine = existing.filter(c => c.Labels[LABELS.service] === service)
      // Prefer a running container with the right spec; everything else of this service goes.
      // A container of another data generation is made again: its label must say which data it runs.
      const keep = mine.filter(c => c.Labels[LABELS.spec] === hash && generationOf(c.Labels) === generation).sort((a, b) => Number(b.State === 'running') - Number(a.State === 'running'))[0]
      for (const c of mine) {
        if (c === keep) continue
        say(`replacing ${service}: ${c.Labels[LABELS.spec] === hash ? 'duplicate container' : 'its spec changed'}`)
        await this.stopAndRemove(c.Id, signal)
      }
      if (keep !== undefined) {
        if (keep.State === 'running' || keep.State === 'restarting') {
          say(`${service}: unchanged`)
          continue
        }
        say(`${service}: unchanged, starting it`)
        this.checkFence(app.name, isStatefulApp(app))
        // Containers made before stateful apps were started only by the agent carry a restart policy: drop it.
        if (isStatefulApp(app)) await this.docker.getContainer(keep.Id).update({ RestartPolicy: { Name: 'no', MaximumRetryCount: 0 }, abortSignal: signal } as object)
        try {
          await this.startContainer(app.name, service, keep.Id, keep.State === 'paused', signal)
          continue
        } catch (err) {
          // An engine that crashed can lose a network its containers still name
          // (its network store is rebuilt). A container holds no data of its
          // own here, only volumes, which are kept: make it again.
          say(`${service}: the existing container does not start (${message(err)}); making it again`)
          await this.stopAndRemove(keep.Id, signal)
        }
      }
      say(`${service}: creating ${containerName(app.name, service)}`)
      const id = await this.createContainer(app, service, svc, hash, net, configFiles, opts)
      this.checkFence(app.name, isStatefulApp(app))
      await this.startContainer(app.name, service, id, false, signal)
    }
    // Every container now mounts the current files; those of an older content serve none.
    await this.pruneConfigs(app.name, new Set(configFiles.values()))
    const actual = (await this.list(signal)).find(a => a.app === app.name)
    if (actual === undefined) throw new Error(`deployed ${app.name} but Docker lists none of its containers`)
    return actual
  }

  /**
   * Writes the app's config files: `configDir/APP/DIGEST-MODE`, bound
   * read-only into each container that mounts the config. A bind mount rather
   * than copying into the container (putArchive) because Docker refuses to
   * copy into a read-only root filesystem (read_only: true, common beside
   * configs), a copy into a path below a volume would write into the app's
   * data, and a bound file the app cannot change is what compose gives too.
   * Named by digest, a file never changes once written (it is written beside,
   * then renamed): a running container keeps seeing the text it was made
   * with, and a changed text is a changed spec, so a new container.
   * Returns each mount's host file, keyed by `source:mode`.
   */
  private async writeConfigs (app: DesiredApp): Promise<Map<string, string>> {
    const files = new Map<string, string>()
    const mounts = Object.values(app.manifest.compose.services).flatMap(s => s.configs)
    if (mounts.length === 0) return files
    const dir = join(this.configDir, app.name)
    await mkdir(dir, { recursive: true, mode: 0o755 })
    for (const c of mounts) {
      const key = `${c.source}:${c.mode}`
      if (files.has(key)) continue
      const content = configContent(app.manifest.compose.configs, c)
      const file = join(dir, `${configDigest(content)}-${c.mode.toString(8)}`)
      const exists = await stat(file).then(s => s.isFile(), () => false)
      if (!exists) {
        const tmp = `${file}.${process.pid}.tmp`
        await writeFile(tmp, content, { mode: 0o600 })
        // chmod after the write: the process's umask must not take bits the app asked for.
        await chmod(tmp, c.mode)
        await rename(tmp, file)
      }
      files.set(key, file)
    }
    return files
  }

  /** Removes the app's config files no container of the current spec mounts. */
  private async pruneConfigs (appName: string, keep: Set<string>): Promise<void> {
    const dir = join(this.configDir, appName)
    const names = await readdir(dir).catch(() => [] as string[])
    for (const name of names) {
      const file = join(dir, name)
      if (!keep.has(file)) await rm(file, { force: true })
    }
    if (keep.size === 0) await rm(dir, { recursive: true, force: true })
  }

  /**
   * Stops and removes the app's containers and network. Volumes are kept,
   * always: returns their names so the caller can tell the user where the
   * data is.
   */
  async remove (appName: string, signal: AbortSignal): Promise<string[]> {
    if (!DOCKER_NAME.test(appName)) throw new UserError(`'${appName}' is not a valid app name`, { exitCode: EXIT.usage })
    return await this.locks.run(appName, async () => {
      for (const c of await this.containersOf(appName, signal)) await this.stopAndRemove(c.Id, signal)
      // Config files are copies of the manifest's text (the desired state keeps it), not the app's data.
      await this.pruneConfigs(appName, new Set())
      const networks = await this.docker.listNetworks({ filters: { label: [`${LABELS.app}=${appName}`] }, abortSignal: signal })
      for (const n of networks) {
        try {
          await this.docker.getNetwork(n.Id).remove({ abortSignal: signal })
        } catch (err) {
          if (!isNotFound(err)) throw new UserError(`cannot remove network ${n.Name} of ${appName}: ${message(err)}`, { hint: 'a container outside dcloud may still be attached to it: `docker network inspect ' + n.Name + '`' })
        }
      }
      const volumes = await this.docker.listVolumes({ filters: { label: [`${LABELS.app}=${appName}`] }, abortSignal: signal } as object)
      const kept = (volumes.Volumes ?? []).map(v => v.Name).sort()
      this.log.info('removed app', { app: appName, volumesKept: kept })
      return kept
    })
  }

  /** Every managed app on this node, rebuilt from Docker's labels alone. */
  async list (signal: AbortSignal): Promise<AppActual[]> {
    const containers = await this.docker.listContainers({ all: true, filters: { label: [LABELS.app] }, abortSignal: signal })
    const inspected = await Promise.all(containers.map(async c => {
      try {
        return await this.docker.getContainer(c.Id).inspect({ abortSignal: signal })
      } catch (err) {
        if (isNotFound(err)) return null // removed between list and inspect
        throw err
      }
    }))
    const apps = new Map<string, ServiceActual[]>()
    for (const info of inspected) {
      if (info === null) continue
      const labels = info.Config.Labels ?? {}
      const app = labels[LABELS.app]
      const service = labels[LABELS.service]
      if (app === undefined || service === undefined) continue // labelled by hand, not ours
      const resumed = this.resumedAt.get(info.Id)
      if (resumed !== undefined && Date.now() - resumed > RESUME_GRACE_MS) this.resumedAt.delete(info.Id)
      const { state, health } = serviceState(info.State, resumed !== undefined && Date.now() - resumed <= RESUME_GRACE_MS)
      const list = apps.get(app) ?? []
      list.push({
        service,
        containerId: info.Id,
        state,
        health,
        ports: portsOf(info),
        revision: labelInt(labels, LABELS.revision),
        term: labelInt(labels, LABELS.term),
        generation: generationOf(labels),
        spec: labels[LABELS.spec] ?? ''
      })
      apps.set(app, list)
    }
    // An app whose deploy stopped after creating its network still exists here.
    const networks = await this.docker.listNetworks({ filters: { label: [LABELS.app] }, abortSignal: signal })
    for (const n of networks) {
      const app = n.Labels?.[LABELS.app]
      if (app !== undefined && !apps.has(app)) apps.set(app, [])
    }
    return [...apps.entries()].sort(([a], [b]) => a < b ? -1 : 1).map(([app, services]) => {
      services.sort((a, b) => a.service < b.service ? -1 : 1)
      return {
        app,
        revision: Math.max(0, ...services.map(s => s.revision)),
        term: Math.max(0, ...services.map(s => s.term)),
        generation: services.length === 0 ? 1 : Math.min(...services.map(s => s.generation)),
        state: appState(services),
        services
      }
    })
  }

  /**
   * The last `tail` lines of every container of the app, merged by time and
   * prefixed with the service name (`web | ...`).
   */
  async logs (appName: string, opts: LogsOptions): Promise<string> {
    if (!DOCKER_NAME.test(appName)) throw new UserError(`'${appName}' is not a valid app name`, { exitCode: EXIT.usage })
    const containers = await this.containersOf(appName, opts.signal)
    if (containers.length === 0) throw new UserError(`no containers of app ${appName} on this node`, { exitCode: EXIT.noInput, hint: '`dcloud status` shows which node runs it' })
    const width = Math.max(...containers.map(c => (c.Labels[LABELS.service] ?? '').length))
    const lines: Array<{ at: string, order: number, text: string }> = []
    let order = 0
    for (const c of containers.sort((a, b) => (a.Labels[LABELS.service] ?? '') < (b.Labels[LABELS.service] ?? '') ? -1 : 1)) {
      const service = c.Labels[LABELS.service] ?? '?'
      const raw = await this.docker.getContainer(c.Id).logs({ stdout: true, stderr: true, tail: opts.tail, timestamps: true, follow: false, abortSignal: opts.signal }) as unknown
      for (const { text } of demuxDockerLog(toBuffer(raw))) {
        for (const line of text.split('\n')) {
          if (line === '') continue
          // Docker prefixes each line with an RFC 3339 time of fixed width: it sorts as text.
          const space = line.indexOf(' ')
          const at = space > 0 ? line.slice(0, space) : ''
          lines.push({ at, order: order++, text: `${service.padEnd(width)} | ${space > 0 ? line.slice(space + 1) : line}` })
        }
      }
    }
    lines.sort((a, b) => a.at < b.at ? -1 : a.at > b.at ? 1 : a.order - b.order)
    return lines.map(l => l.text).join('\n') + (lines.length > 0 ? '\n' : '')
  }

  /** The engine's data directory (`/var/lib/docker`): work directories beside its volumes share their file system. */
  async dataRoot (signal: AbortSignal): Promise<string> {
    const info = await (this.docker.info as (o: object) => Promise<{ DockerRootDir?: string }>)({ abortSignal: signal })
    if (typeof info.DockerRootDir !== 'string' || !info.DockerRootDir.startsWith('/')) throw new UserError('the Docker engine did not say where its data lives (DockerRootDir)', { exitCode: EXIT.software })
    return info.DockerRootDir
  }

  /**
   * The app's Docker volumes on this node: compose name, Docker name and where
   * its data is (`mountpoint`: Docker's own directory, or the node's
   * directory a volume of an app with a storage binds).
   */
  async volumes (appName: string, signal: AbortSignal): Promise<Array<{ volume: string, name: string, mountpoint: string, hostBound: boolean }>> {
    const list = await this.docker.listVolumes({ filters: { label: [`${LABELS.app}=${appName}`] }, abortSignal: signal } as object)
    const out: Array<{ volume: string, name: string, mountpoint: string, hostBound: boolean }> = []
    for (const v of list.Volumes ?? []) {
      const volume = v.Labels?.[LABELS.volume]
      if (volume === undefined || v.Name !== volumeName(appName, volume)) continue
      const mountpoint = dataDirOf(v)
      out.push({ volume, name: v.Name, mountpoint, hostBound: mountpoint !== v.Mountpoint && isOwnHostDir(mountpoint, v.Name) })
    }
    return out.sort((a, b) => a.volume < b.volume ? -1 : 1)
  }

  /** Makes the app's volume if it does not exist (a restore fills it before the app starts); returns its mountpoint. */
  async createVolume (app: DesiredApp, volume: string, signal: AbortSignal): Promise<string> {
    await this.ensureVolume(app, volume, app.manifest.compose.volumes[volume]?.labels ?? {}, signal, () => {})
    const info = await this.docker.getVolume(volumeName(app.name, volume)).inspect({ abortSignal: signal })
    return dataDirOf(info)
  }

  /**
   * Freezes (pause) or stops the app's running containers, keeping them:
   * nothing writes to its volumes until `resume` (or a deploy). Returns the
   * containers it froze.
   */
  async quiesce (appName: string, how: 'pause' | 'stop', signal: AbortSignal, stopTimeoutS = STOP_TIMEOUT_S): Promise<string[]> {
    return await this.locks.run(appName, async () => {
      const done: string[] = []
      for (const c of await this.containersOf(appName, signal)) {
        if (c.State !== 'running' && !(how === 'stop' && c.State === 'paused')) continue
        const container = this.docker.getContainer(c.Id)
        try {
          if (how === 'pause') await container.pause({ abortSignal: signal })
          else {
            if (c.State === 'paused') await container.unpause({ abortSignal: signal })
            await container.stop({ t: stopTimeoutS, abortSignal: signal })
          }
          done.push(c.Id)
        } catch (err) {
          const status = dockerStatus(err)
          if (status !== 304 && status !== 404 && status !== 409) throw err
        }
      }
      return done
    })
  }

  /**
   * Unpauses (or starts again) the containers `quiesce` froze: only apps with
   * volumes are quiesced, so a start needs the fencing lease. Without it they
   * stay stopped, and the leader decides where the app runs next.
   */
  async resume (appName: string, ids: string[], how: 'pause' | 'stop', signal: AbortSignal): Promise<void> {
    if (how === 'stop') {
      const refusal = this.mayStartStateful()
      if (refusal !== null) {
        this.log.warn('not starting a stateful app again after its snapshot: this node is fenced', { app: appName, reason: refusal })
        return
      }
    }
    for (const id of ids) {
      try {
        if (how === 'pause') await this.docker.getContainer(id).unpause({ abortSignal: signal })
        else await this.docker.getContainer(id).start({ abortSignal: signal })
        this.resumedAt.set(id, Date.now())
      } catch (err) {
        const status = dockerStatus(err)
        if (status !== 304 && status !== 404 && status !== 409) this.log.warn('could not unpause a container after a snapshot', { app: appName, container: id, error: message(err) })
      }
    }
  }

  /** Runs a command in the app's service container (a pre-snapshot hook); throws with its output when it fails. */
  async exec (appName: string, service: string, command: string[], signal: AbortSignal): Promise<string> {
    const c = (await this.containersOf(appName, signal)).find(x => x.Labels[LABELS.service] === service && x.State === 'running')
    if (c === undefined) throw new UserError(`service ${service} of ${appName} is not running here`, { exitCode: EXIT.unavailable })
    const exec = await this.docker.getContainer(c.Id).exec({ Cmd: command, AttachStdout: true, AttachStderr: true, abortSignal: signal } as Docker.ExecCreateOptions)
    const stream = await exec.start({ hijack: true, stdin: false, abortSignal: signal } as Docker.ExecStartOptions)
    const chunks: Buffer[] = []
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (b: Buffer) => { chunks.push(b) })
      stream.on('end', resolve)
      stream.on('error', reject)
    })
    const out = demuxDockerLog(Buffer.concat(chunks)).map(f => f.text).join('')
    const info = await exec.inspect({ abortSignal: signal } as object)
    if (info.ExitCode !== 0) throw new UserError(`\`${command.join(' ')}\` in ${service} of ${appName} exited ${info.ExitCode}: ${out.trim().slice(-500)}`, { exitCode: EXIT.software })
    return out
  }

  /**
   * Removes the app's volumes. Only for a copy whose data is already in a
   * snapshot the caller checked (the old copy after a move): every other path
   * keeps volumes.
   */
  async removeVolumes (appName: string, signal: AbortSignal): Promise<string[]> {
    return await this.locks.run(appName, async () => {
      if ((await this.containersOf(appName, signal)).length > 0) throw new UserError(`${appName} still has containers here: its volumes stay`, { exitCode: EXIT.software })
      const removed: string[] = []
      for (const v of await this.volumes(appName, signal)) {
        try {
          await this.docker.getVolume(v.name).remove({ abortSignal: signal } as object)
          removed.push(v.name)
          // A bound directory outlives its Docker volume: it is the data, and it goes with it (only ever
          // the `dcloud-APP-VOL` directory dcloud made for this volume).
          if (v.hostBound) await rm(dirname(v.mountpoint), { recursive: true, force: true })
        } catch (err) {
          if (!isNotFound(err)) throw err
        }
      }
      return removed
    })
  }

  // -------------------------------------------------------------------------

  private async containersOf (app: string, signal: AbortSignal): Promise<Docker.ContainerInfo[]> {
    return await this.docker.listContainers({ all: true, filters: { label: [`${LABELS.app}=${app}`] }, abortSignal: signal })
  }

  private async ensureImage (ref: string, opts: DeployOptions): Promise<void> {
    const { signal } = opts
    if (await hasImage(this.docker, ref, signal)) return
    const tried: string[] = []
    if (isRegistryRef(ref)) {
      opts.progress?.(`${ref}: not on this node, pulling`)
      try {
        await pullImage(this.docker, ref, { signal, idleMs: PULL_IDLE_MS })
        if (await hasImage(this.docker, ref, signal)) return
        tried.push('docker pull finished without the image')
      } catch (err) {
        signal.throwIfAborted()
        tried.push(`docker pull failed: ${message(err)}`)
      }
    } else {
      tried.push('not pulled: a local-only name no registry serves')
    }
    opts.progress?.(`${ref}: asking peers`)
    try {
      await opts.fetchImage(ref, signal)
      if (await hasImage(this.docker, ref, signal)) return
      tried.push('peers: the transfer finished without the image')
    } catch (err) {
      signal.throwIfAborted()
      // A transfer can fail after docker load already tagged a whole image (the error came late).
      if (await hasImage(this.docker, ref, signal)) return
      tried.push(`peers: ${(err as Error).message}`)
    }
    this.log.warn('image unavailable', { image: ref, tried })
    throw new ImageUnavailableError(ref, tried)
  }

  private async ensureNetwork (app: string, signal: AbortSignal, say: (line: string) => void): Promise<string> {
    const name = networkName(app)
    // The name filter matches substrings: compare exactly.
    const found = (await this.docker.listNetworks({ filters: { name: [name] }, abortSignal: signal })).filter(n => n.Name === name)
    for (const n of found) {
      if (n.Labels?.[LABELS.app] === app) return name
      throw new UserError(`a network named ${name} exists and is not dcloud's`, { exitCode: EXIT.cantCreate, hint: `rename or remove it (\`docker network rm ${name}\`) and deploy again` })
    }
    say(`creating network ${name}`)
    try {
      await this.docker.createNetwork({ Name: name, Driver: 'bridge', CheckDuplicate: true, Labels: { [LABELS.app]: app }, abortSignal: signal } as Docker.NetworkCreateOptions)
    } catch (err) {
      if (dockerStatus(err) !== 409) throw err // 409: created meanwhile by another deploy; fine
    }
    return name
  }

  private async ensureVolume (app: DesiredApp, volume: string, labels: Record<string, string>, signal: AbortSignal, say: (line: string) => void): Promise<void> {
    const name = volumeName(app.name, volume)
    const hostDir = app.storage == null ? null : join(app.storage.hostPath, name, '_data')
    try {
      const info = await this.docker.getVolume(name).inspect({ abortSignal: signal })
      // Reused as it is, whoever made it (a restore may have): recreating would lose data.
      if (info.Labels?.[LABELS.app] !== app.name) this.log.warn('reusing a volume dcloud did not create', { volume: name, app: app.name })
      if (hostDir !== null && dataDirOf(info) !== hostDir) this.log.warn('the app\'s volume keeps its data elsewhere than its storage asks; it stays where it is', { volume: name, data: dataDirOf(info), asked: hostDir })
      return
    } catch (err) {
      if (!isNotFound(err)) throw err
    }
    if (hostDir === null) {
      say(`creating volume ${name}`)
      await this.docker.createVolume({ Name: name, Labels: { ...labels, [LABELS.app]: app.name, [LABELS.volume]: volume }, abortSignal: signal } as object)
      return
    }
    // The local driver binding a directory of the node: Docker mounts it where the volume is used, and
    // never removes what is in it. The directory must exist before anything mounts it.
    say(`creating volume ${name} with its data in ${hostDir}`)
    await mkdir(hostDir, { recursive: true, mode: 0o755 })
    await this.docker.createVolume({
      Name: name,
      Driver: 'local',
      DriverOpts: { type: 'none', o: 'bind', device: hostDir },
      Labels: { ...labels, [LABELS.app]: app.name, [LABELS.volume]: volume, [LABELS.hostPath]: app.storage!.hostPath },
      abortSignal: signal
    } as object)
  }


  private async createContainer (app: DesiredApp, service: string, svc: ComposeService, hash: string, network: string, configFiles: Map<string, string>, opts: DeployOptions): Promise<string> {
    const name = containerName(app.name, service)
    const exposed: Record<string, object> = {}
    const bindings: Record<string, Array<{ HostIp: string, HostPort: string }>> = {}
    for (const p of svc.ports) {
      const key = `${p.container}/${p.protocol}`
      exposed[key] = {}
      bindings[key] = [...(bindings[key] ?? []), { HostIp: '', HostPort: p.host === null ? '' : String(p.host) }]
    }
    const mounts: Array<{ Type: 'volume' | 'bind', Source: string, Target: string, ReadOnly: boolean }> = svc.volumes.filter(v => v.kind === 'volume').map(v => ({ Type: 'volume' as const, Source: volumeName(app.name, v.source), Target: v.target, ReadOnly: v.readOnly }))
    for (const c of svc.configs) {
      const file = configFiles.get(`${c.source}:${c.mode}`)
      if (file === undefined) throw new Error(`config ${c.source} of ${service} was not written before its container`)
      // A Mount, not a Binds entry: a missing file must fail the create, not become a directory Docker makes.
      mounts.push({ Type: 'bind', Source: file, Target: c.target, ReadOnly: true })
    }
    // Binds (not Mounts) for host paths: Docker creates a missing host directory, as compose does.
    const binds = svc.volumes.filter(v => v.kind === 'bind').map(v => `${v.source}:${v.target}${v.readOnly ? ':ro' : ''}`)
    const hc = svc.healthcheck
    const ms = (n: number): number => n * 1_000_000
    // On the node's network (granted host_network) the container has no network of the app's, no port mappings and no alias.
    const hostNet = svc.networkMode === 'host'
    const spec: Docker.ContainerCreateOptions = {
      name,
      Image: svc.image,
      ...(svc.command !== null ? { Cmd: svc.command } : {}),
      ...(svc.entrypoint !== null ? { Entrypoint: svc.entrypoint } : {}),
      ...(svc.user !== null ? { User: svc.user } : {}),
      ...(svc.workingDir !== null ? { WorkingDir: svc.workingDir } : {}),
      Tty: svc.tty,
      OpenStdin: svc.stdinOpen,
      Env: Object.entries(svc.environment).sort(([a], [b]) => a < b ? -1 : 1).map(([k, v]) => `${k}=${v}`),
      Labels: {
        ...svc.labels,
        [LABELS.app]: app.name,
        [LABELS.service]: service,
        [LABELS.revision]: String(app.revision),
        [LABELS.term]: String(opts.term),
        [LABELS.spec]: hash,
        [LABELS.generation]: String(app.generation ?? 1),
        // The watchdog kills these when the agent's lease lapses (agent/fence/watchdog.ts).
        ...(isStatefulApp(app) ? { [LABELS.fence]: '1' } : {})
      },
      ...(hostNet ? {} : { ExposedPorts: exposed }),
      ...(hc !== null
        ? {
            Healthcheck: {
              Test: ['CMD', 'CMD-SHELL', 'NONE'].includes(hc.test[0] ?? '') ? hc.test : ['CMD', ...hc.test],
              Interval: ms(hc.intervalMs),
              Timeout: ms(hc.timeoutMs),
              Retries: hc.retries,
              StartPeriod: ms(hc.startPeriodMs)
            }
          }
        : {}),
      HostConfig: {
        NetworkMode: hostNet ? 'host' : network,
        // A stateful app's container is started only by the agent, after it confirmed it still owns
        // the app's data (Docker restarting it on its own could make a second copy: docs/snapshots.md).
        RestartPolicy: { Name: isStatefulApp(app) ? 'no' : svc.restart },
        ...(hostNet ? {} : { PortBindings: bindings }),
        Mounts: mounts,
        Binds: binds,
        ...(svc.shmSizeBytes !== null ? { ShmSize: svc.shmSizeBytes } : {}),
        ...(svc.tmpfs.length > 0 ? { Tmpfs: Object.fromEntries(svc.tmpfs.map(t => [t.target, t.options.join(',')])) } : {}),
        ReadonlyRootfs: svc.readOnly,
        ...(svc.capDrop.length > 0 ? { CapDrop: svc.capDrop } : {}),
        ...(Object.keys(svc.ulimits).length > 0 ? { Ulimits: Object.entries(svc.ulimits).map(([Name, l]) => ({ Name, Soft: l.soft, Hard: l.hard })) } : {}),
        // Docker's own form; it replaces "host-gateway" with the node's address itself.
        ...(svc.extraHosts.length > 0 ? { ExtraHosts: svc.extraHosts.map(h => `${h.host}:${h.address}`) } : {}),
        ...(svc.noNewPrivileges ? { SecurityOpt: ['no-new-privileges:true'] } : {}),
        // The powers granted, and only those: withGrants took the rest out of svc.
        ...(svc.capAdd.length > 0 ? { CapAdd: svc.capAdd } : {}),
        ...(svc.devices.length > 0 ? { Devices: svc.devices.map(d => ({ PathOnHost: d.host, PathInContainer: d.container, CgroupPermissions: d.permissions })) } : {}),
        ...(svc.privileged ? { Privileged: true } : {}),
        ...(Object.keys(svc.sysctls).length > 0 ? { Sysctls: svc.sysctls } : {})
      },
      ...(hostNet ? {} : { NetworkingConfig: { EndpointsConfig: { [network]: { Aliases: [service] } } } }),
      abortSignal: opts.signal
    }
    try {
      const container = await this.docker.createContainer(spec)
      this.log.info('created container', { app: app.name, service, container: name, revision: app.revision, term: opts.term })
      return container.id
    } catch (err) {
      if (dockerStatus(err) === 409) {
        throw new UserError(`cannot create ${name}: a container of that name exists and does not belong to service ${service} of ${app.name}`, {
          exitCode: EXIT.cantCreate,
          hint: `see \`docker inspect ${name}\`; remove or rename it if it is not needed`
        })
      }
      throw new UserError(`cannot create the container of service ${service} of ${app.name}: ${message(err)}`, { exitCode: EXIT.software })
    }
  }

  private async startContainer (app: string, service: string, id: string, paused: boolean, signal: AbortSignal): Promise<void> {
    const c = this.docker.getContainer(id)
    try {
      if (paused) await c.unpause({ abortSignal: signal })
      else await c.start({ abortSignal: signal })
    } catch (err) {
      if (dockerStatus(err) === 304) return // already running
      const why = message(err)
      const port = /port is already allocated|address already in use/.test(why)
      throw new UserError(`service ${service} of ${app} failed to start: ${why}`, {
        exitCode: EXIT.unavailable,
        hint: port ? 'another app or program holds that host port: free it, or give the app another port' : `see \`docker logs ${containerName(app, service)}\``
      })
    }
  }

  private async stopAndRemove (id: string, signal: AbortSignal): Promise<void> {
    const c = this.docker.getContainer(id)
    try {
      await c.stop({ t: STOP_TIMEOUT_S, abortSignal: signal })
    } catch (err) {
      const status = dockerStatus(err)
      if (status === 404) return
      if (status !== 304) throw err // 304: already stopped
    }
    try {
      // v: false. Anonymous volumes stay too: nothing here deletes data.
      await c.remove({ force: true, v: false, abortSignal: signal } as object)
    } catch (err) {
      if (!isNotFound(err)) throw err
    }
  }
}

/** Structural checks the manifest decoder cannot make: names must fit Docker's, mounts must name declared volumes. */
function validateApp (app: DesiredApp): void {
  const bad = (what: string, hint: string): never => { throw new UserError(what, { exitCode: EXIT.dataError, hint }) }
  if (!DOCKER_NAME.test(app.name)) bad(`'${app.name}' is not a valid app name`, 'use letters, digits, dots, dashes and underscores, starting with a letter or digit')
  const services = Object.entries(app.manifest.compose.services)
  if (services.length === 0) bad(`app ${app.name} has no services`, 'a compose file needs at least one service')
  for (const volume of Object.keys(app.manifest.compose.volumes)) {
    if (!DOCKER_NAME.test(volume)) bad(`volume name '${volume}' of ${app.name} is not valid`, 'use letters, digits, dots, dashes and underscores')
  }
  for (const [name, svc] of services) {
    if (!DOCKER_NAME.test(name)) bad(`service name '${name}' of ${app.name} is not valid`, 'use letters, digits, dots, dashes and underscores')
    if (!isImageRef(svc.image)) bad(`service ${name} of ${app.name}: '${svc.image}' is not a Docker image reference`, 'write it like "nginx:1.27" or "ghcr.io/owner/app:tag"')
    const published = new Set<string>()
    for (const p of svc.ports) checkPort(app.name, name, p, published)
    for (const v of svc.volumes) {
      if (v.kind === 'volume' && app.manifest.compose.volumes[v.source] === undefined) {
        bad(`service ${name} of ${app.name} mounts volume ${v.source}, which the app does not declare`, 'add it under the top-level volumes: of the compose file')
      }
      if (v.kind === 'bind' && (!v.source.startsWith('/') || v.source.includes(':'))) bad(`service ${name} of ${app.name} binds '${v.source}': host paths must be absolute and contain no ':'`, 'use an absolute path, or a named volume')
      if (v.target.includes(':')) bad(`service ${name} of ${app.name} mounts at '${v.target}': targets must contain no ':'`, 'use another path')
    }
    for (const c of svc.configs) {
      if (!Object.hasOwn(app.manifest.compose.configs, c.source)) bad(`service ${name} of ${app.name} mounts config ${c.source}, which the app does not have`, 'add it under the top-level configs: of the compose file, with content:')
    }
    for (const t of svc.tmpfs) {
      // Docker's Tmpfs map is "path" → "options": a ":" or "," in the path would be read as options.
      if (!t.target.startsWith('/') || /[:,]/.test(t.target)) bad(`service ${name} of ${app.name} mounts a tmpfs at '${t.target}': it must be an absolute path without ':' or ','`, 'use another path')
    }
  }
}

function checkPort (app: string, service: string, p: PortMapping, seen: Set<string>): void {
  if (p.host === null) return
  const key = `${p.host}/${p.protocol}`
  if (seen.has(key)) throw new UserError(`service ${service} of ${app} publishes host port ${key} twice`, { exitCode: EXIT.dataError, hint: 'remove one of the port entries' })
  seen.add(key)
}

function toBuffer (raw: unknown): Buffer {
  if (Buffer.isBuffer(raw)) return raw
  if (typeof raw === 'string') return Buffer.from(raw)
  // dockerode parses a body that happens to be JSON; logs without a TTY never are, but be safe.
  return Buffer.from(JSON.stringify(raw ?? ''))
}

/**
 * Splits Docker's multiplexed log format: frames of an 8-byte header
 * (stream: 1 stdout, 2 stderr; three zero bytes; big-endian length) and the
 * payload. A container with a TTY sends raw text instead; so does anything
 * that does not parse as frames.
 */
export function demuxDockerLog (buf: Buffer): Array<{ stream: 'stdout' | 'stderr', text: string }> {
  const frames: Array<{ stream: 'stdout' | 'stderr', text: string }> = []
  let offset = 0
  while (offset < buf.length) {
    if (buf.length - offset < 8) break
    const kind = buf[offset]
    if ((kind !== 0 && kind !== 1 && kind !== 2) || buf[offset + 1] !== 0 || buf[offset + 2] !== 0 || buf[offset + 3] !== 0) break
    const size = buf.readUInt32BE(offset + 4)
    if (offset + 8 + size > buf.length) break
    frames.push({ stream: kind === 2 ? 'stderr' : 'stdout', text: buf.subarray(offset + 8, offset + 8 + size).toString('utf8') })
    offset += 8 + size
  }
  if (offset < buf.length) {
    // Not (or no longer) framed: keep the rest as raw text rather than lose it.
    frames.push({ stream: 'stdout', text: buf.subarray(offset).toString('utf8') })
  }
  return frames
}
